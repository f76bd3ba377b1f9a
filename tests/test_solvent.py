"""The noise bands of masked maps (:mod:`ptnp_gpu.solvent`) against known noise levels."""
import numpy as np
import pytest

from ptnp_gpu.solvent import _TAIL, _TAIL_SYM, _band_solvent, _grouped_robust_sds


def _robust_sd(v):
    return 1.4826 * np.median(np.abs(v - np.median(v)))


def test_grouped_sds_and_tail_ratios_match_per_group_numpy():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1.0, 20000)
    atoms = rng.normal(0, 1.0, 20000)
    atoms[:2000] += rng.uniform(3, 8, 2000)          # a tenth of the band on atoms: a long upper tail
    values = np.concatenate([noise, atoms])
    groups = np.repeat([1, 2], 20000).astype(np.int64)
    counts, sd, tails = _grouped_robust_sds(values, groups, 3, np, tail=_TAIL)
    assert counts.tolist() == [0, 20000, 20000]
    assert sd[1] == pytest.approx(_robust_sd(noise), rel=1e-12)
    assert sd[2] == pytest.approx(_robust_sd(atoms), rel=1e-12)
    for k, v in ((1, noise), (2, atoms)):             # nearest-rank quantiles of each group
        o = np.sort(v)
        q_lo, q_hi = o[int((len(v) - 1) * _TAIL)], o[int((len(v) - 1) * (1 - _TAIL))]
        med = np.median(v)
        assert tails[k] == pytest.approx((q_hi - med) / (med - q_lo), rel=1e-12)
    assert abs(tails[1] - 1.0) < 0.1                    # Gaussian noise: symmetric
    assert tails[2] > _TAIL_SYM                          # atoms in the band
    # without ``tail`` the two-value form is unchanged
    c2, sd2 = _grouped_robust_sds(values, groups, 3, np)
    assert np.array_equal(c2, counts) and np.array_equal(sd2, sd)


def _bands_case(levels, atoms_in, shape=(40, 40, 60), seed=1):
    """Six bands of 10 planes along x (band k = planes 10(k-1)..10k-1), noise of SD
    ``levels[k-1]``; bands in ``atoms_in`` get a tenth of their voxels raised by atoms. The
    detail map is the noise's own (a fixed share of it), so the shares cannot tell them apart."""
    rng = np.random.default_rng(seed)
    bands = np.zeros(shape, np.int32)
    sub = np.zeros(shape)
    detail = np.zeros(shape)
    for k, sd in enumerate(levels, start=1):
        sl = (slice(None), slice(None), slice(10 * (k - 1), 10 * k))
        bands[sl] = k
        nz = rng.normal(0, sd, sub[sl].shape)
        sub[sl] = nz
        detail[sl] = 0.8 * nz
        if k in atoms_in:
            hit = rng.random(nz.shape) < 0.1
            sub[sl] += hit * rng.uniform(4 * sd, 10 * sd, nz.shape)
            detail[sl] += 0.8 * hit * rng.uniform(4 * sd, 10 * sd, nz.shape)
    return sub, bands, detail


def test_band_with_atoms_is_not_the_noise_level():
    """Atoms beside the particle (a sharpened map's mobile surface keeps the noise's detail
    share) raise their band's SD: the symmetric bands measure the noise."""
    sub, bands, detail = _bands_case([1.0, 1.0, 0.5, 0.5, 0.5, 0.5], atoms_in={1, 2})
    keep, _ = _band_solvent(sub, bands, np, detail, np.ones(sub.shape, bool))
    kept = sorted(np.unique(bands[keep]).tolist())
    assert kept == [3, 4, 5, 6]
    assert _robust_sd(sub[keep]) == pytest.approx(0.5, rel=0.05)


def test_taper_keeps_the_largest_symmetric_band():
    """A soft mask's edge lowers the noise of the outer bands: the largest symmetric one wins,
    as before the tail test."""
    sub, bands, detail = _bands_case([1.0, 1.0, 0.7, 0.4, 0.2, 0.1], atoms_in=set())
    keep, _ = _band_solvent(sub, bands, np, detail, np.ones(sub.shape, bool))
    assert sorted(np.unique(bands[keep]).tolist()) == [1, 2]
    assert _robust_sd(sub[keep]) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("tested_is_wide", [False, True])
def test_tail_test_never_raises_the_noise_level(monkeypatch, tested_is_wide):
    """The level of the tail-tested bands is used only where it is the lower one; the untested
    bands' level is returned as well (the rescues' floor)."""
    import ptnp_gpu.solvent as solvent
    rng = np.random.default_rng(2)
    C = rng.normal(0.0, 1.0, (48, 48, 48))
    C[:, :, :24] *= 4.0                                  # half the box: a band four times as wide
    sub_shape = C[::2, ::2, ::2].shape
    wide = np.zeros(sub_shape, bool)
    wide[:, :, :12] = True
    narrow = np.zeros(sub_shape, bool)
    narrow[:, :, 12:] = True
    pair = (wide, narrow) if tested_is_wide else (narrow, wide)
    monkeypatch.setattr(solvent, "_band_solvent", lambda *a, **k: pair)
    live = np.ones(sub_shape, bool)
    (_, sd), (_, sd_untested) = solvent._noise_levels(C, live, live, particle_threshold=10.0,
                                                      voxel_size_A=np.full(3, 0.358))
    assert sd == pytest.approx(1.0, rel=0.1)
    assert sd_untested == pytest.approx(1.0 if tested_is_wide else 4.0, rel=0.1)


def _masked_noise(ramp_A, vs=0.4, shape=(96, 96, 96), r_in_vox=30.0, seed=5):
    """White noise (SD 1) times a spherical mask: 1 inside ``r_in_vox``, a linear ramp to 0 over
    ``ramp_A`` beyond (0: a hard mask). Returns (data, mask value, subsampled data, live)."""
    from ptnp_gpu.solvent import _STEP, _local_variance
    rng = np.random.default_rng(seed)
    idx = np.indices(shape).astype(float)
    r = np.sqrt(((idx - (np.array(shape)[:, None, None, None] - 1) / 2) ** 2).sum(0))
    if ramp_A > 0:
        mask = np.clip(1.0 - (r - r_in_vox) * vs / ramp_A, 0.0, 1.0)
    else:
        mask = (r < r_in_vox).astype(float)
    data = (rng.normal(size=shape) * mask).astype(np.float32)
    sub = data[::_STEP, ::_STEP, ::_STEP]
    live = _local_variance(sub) > 1e-6 * float(sub.var())
    return data, mask, sub, live


def test_mask_gain_follows_a_soft_ramp_and_ignores_a_hard_mask():
    from ptnp_gpu.solvent import _STEP, _mask_gain
    vs = 0.4
    data, mask, sub, live = _masked_noise(4.0, vs)
    gain = _mask_gain(sub, live, live.copy(), vs)       # all of it solvent (no particle)
    assert gain is not None
    m = mask[::_STEP, ::_STEP, ::_STEP]
    ramp = live & (m > 0.35) & (m < 0.9)                  # on the ramp the gain tracks the mask
    err = np.abs(gain[ramp] - m[ramp])
    assert np.median(err) < 0.12, np.median(err)
    assert np.all(gain[live & (m == 1.0)] > 0.85)         # the plateau: ~1
    # a hard mask: the noise is whole up to the edge, no gain
    data, mask, sub, live = _masked_noise(0.0, vs)
    assert _mask_gain(sub, live, live.copy(), vs) is None
