"""Solvent and noise of a density map: where the solvent is, its noise level and spectrum.

The particle is found from the raw map smoothed over 2.5 Å (which averages the
noise away whatever its colour); the solvent lies beyond a margin from it.
Estimates run on a ``_STEP``-subsampled grid (every 8th voxel is plenty).

Masked maps (measured reconstructions are often multiplied by a soft solvent
mask) need more care: the mask may leave no solvent beyond the margin, its soft
edge scales the noise down towards it, and the smooth background inside it often
passes the smoothed map's Otsu threshold, so that the "particle" fills the mask.
There the spectrum comes from every live voxel 2 Å beyond that particle (its
shape survives a taper), and the noise level from bands of distance to the atoms
of the denoised map, keeping the bands whose noise is near the largest: the
noise before the mask (:func:`_noise_level`).
Used by :mod:`ptnp_gpu.detect` for the significance of atoms and for
prewhitening; every function works on NumPy and CuPy arrays.
"""
from __future__ import annotations

import math

import numpy as np

from . import backend as _be
from .components import otsu_threshold
from .denoise import noise_power_spectrum
from .gpu_kernels import array_mean, array_var

_STEP = 2   # subsampling of the solvent estimates (every 8th voxel is plenty)
_MIN_SOLVENT = 500   # solvent voxels (subsampled grid) for a noise level measured in the solvent
_MASKED_FRACTION = 0.01   # a map with more constant (masked) voxels than this is a masked map
_CLIPPED_SHARE = 0.35     # live voxels at the map's minimum beyond this share: a clipped map (_clipped)
_SOLVENT_PLATEAU = 0.05   # less solvent than this fraction of the map: look for a solvent plateau
_BAND_FROM_A = 2.0        # masked maps: the first noise band starts this far from the particle (Å);
_BAND_FROM_RES = 2.0      # a band-limited map's bands are also tried from this many resolutions out, and
                          # the lower noise taken (masked and low-passed at 2 Å, tight mask: recall 0.77
                          # with bands from 2 Å only, whose noise the atoms' tails raised; 1.00 now)
_BAND_A = 1.5             # ... the bands' width (Å)
_N_BANDS = 6
_MIN_BAND = 200           # voxels (subsampled grid) for a band's noise level
_BAND_KEEP = 0.8          # bands whose noise is at least this fraction of the largest are solvent
_DETAIL_A = 0.7           # masked maps: σ (Å) of the smoothing whose residual is a band's detail
_EDGE_A = 1.5             # ... shares are measured this far from masked-out (constant) voxels
_DETAIL_KEEP = 0.95       # ... bands whose detail share of the SD is below this × the highest hold
                          # atoms' tails or the mask's edge (measured on maps blurred by 41-54 Å² and
                          # masked: 0.56-0.71 beside the atoms, 0.58-0.63 at the edge, 0.73-0.82
                          # between), and are left out
_TAIL = 0.02              # ... a band's tail ratio compares its 2% and 98% quantiles with its median;
_TAIL_SYM = 1.35          # ... within this factor of 1 the band is symmetric (measured on 34 masked maps:
                          # 0.86-1.14 where a band held noise alone, 1.4-2.9 or 0.5-0.8 with atoms in it)
_GAIN_DETAIL_A = 1.0      # soft masks (_mask_gain): the detail is the raw map minus its smoothing over this (Å)
_GAIN_SIGMA_A = 3.0       # ... distance from the masked-out voxels, read through a Gaussian of this σ (Å)
_GAIN_SHELL_A = 0.5       # ... in shells this wide (Å)
_GAIN_SHELLS = 24         # ... out to 12 Å
_GAIN_RISE = 1.03         # ... the profile rises while a shell is this × the top so far (two shells' grace)
_GAIN_START = 0.5         # ... a ramp starts below this × the plateau at the edge (a hard mask: ~1)
_GAIN_MIN = 0.3           # ... voxels scaled below this are no noise sample
_NEAR_A = 3.0             # the residual rescue's own noise level: within this of the atoms found (Å)
_RISE = 1.5               # sharpened: the noise power's peak is this × its 4 Å level (_noise_rises)
_EDGE_DROP = 1e-2         # noise power below this fraction of its 4-2 Å median: beyond the map's band


def _phi(x: float) -> float:
    """Standard normal distribution function."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _distance_bands(near, live, sigma_A, from_A: float = _BAND_FROM_A, width_A: float = _BAND_A,
                    n_bands: int = _N_BANDS):
    """Bands of distance from a region: 0 inside, k = 1..``n_bands`` from ``from_A`` in ``width_A`` steps.

    ``near`` is the region's mask (the particle, or the masked-out voxels) blurred with
    σ = ``sigma_A``; at distance d from a flat boundary it is Φ(−d/σ). Voxels that are not
    ``live`` are 0.
    """
    xp = _be.namespace(near).xp
    bands = xp.zeros(near.shape, dtype=xp.int32)
    for k in range(n_bands):
        bands += near < _phi(-(from_A + k * width_A) / sigma_A)
    return bands * live


def _interior(live, r_vox: int):
    """The ``live`` voxels with no masked-out voxel within ``r_vox`` (a cube of side 2·r_vox + 1)."""
    be = _be.namespace(live)
    return live & (be.ndi.uniform_filter((~live).astype(be.xp.float32), 2 * r_vox + 1, mode="nearest") == 0)


def subsampled(raw, step: int = _STEP):
    """``raw`` on the solvent estimates' grid (every ``step``-th voxel), float32 and contiguous:
    full-array reductions of a strided view ran in one thread block on CuPy."""
    return _be.namespace(raw).xp.ascontiguousarray(raw[::step, ::step, ::step], dtype=np.float32)


def _solvent_mask(raw, voxel_size_A, margin_A, step: int = _STEP, sub=None):
    """Solvent voxels on a ``step``-subsampled grid, and the voxels that carry noise at all.

    The particle is where the raw map, smoothed over 2.5 Å (which averages the
    noise away whatever its colour), is above its Otsu threshold; the solvent is
    farther than ``margin_A`` from it. Constant regions (masked maps) are never solvent.

    When that leaves less than ``_SOLVENT_PLATEAU`` of the map as solvent (a
    liquid's density level around the particle passes the threshold), the
    particle is instead where the energy of the map's detail finer than 1 Å,
    averaged over 2.5 Å, is above its Otsu threshold, if that gives more solvent.

    In a masked map (more than ``_MASKED_FRACTION`` of constant voxels, and not a map
    clipped at its minimum, :func:`_clipped`) the
    solvent is every live voxel at least ``_BAND_FROM_A`` from the particle: for
    the noise spectrum, whose shape a soft mask edge hardly changes.

    ``sub``: :func:`subsampled` of ``raw`` when the caller has it already.

    Returns
    -------
    solvent, live : bool arrays on the subsampled grid
    masked : bool
    """
    be = _be.namespace(raw)
    xp, ndi = be.xp, be.ndi
    vox = step * float(np.min(voxel_size_A))
    if sub is None:
        sub = subsampled(raw, step)
    live = _live_voxels(sub)

    def near_particle(feature):
        """The particle (``feature`` above its Otsu threshold over the live voxels), blurred."""
        part = (feature > otsu_threshold(feature[live])).astype(xp.float32)
        return ndi.gaussian_filter(part, 0.5 * margin_A / vox, mode="constant")

    near = near_particle(ndi.gaussian_filter(sub, 2.5 / vox))
    if _mostly_constant(live) and not _clipped(sub, live):   # sync
        return _distance_bands(near, live, 0.5 * margin_A) > 0, live, True
    solvent = (near < 1e-3) & live
    if int(solvent.sum()) < _SOLVENT_PLATEAU * int(live.sum()):   # sync
        # hardly any solvent: a solvent plateau (liquid around the particle) passed the
        # smoothed map's threshold. The particle is then where the map has atomic detail.
        detail = sub - ndi.gaussian_filter(sub, 1.0 / vox)
        by_detail = (near_particle(ndi.gaussian_filter(detail * detail, 2.5 / vox)) < 1e-3) & live
        if int(by_detail.sum()) > int(solvent.sum()):         # sync
            solvent = by_detail
    return solvent, live, False


def _mask_gain(sub, live, solvent, voxel_size_A, step: int = _STEP):
    """How a soft mask scales the noise (subsampled grid, float32 in (0, 1]), or None where it
    does not (a hard mask, or too little solvent to tell).

    Masked maps are often masked softly: the map is multiplied by a ramp from 1 down to 0 over
    a few Å, noise included. The noise bands of :func:`_noise_levels` beyond the ramp's start
    hold noise scaled down, symmetric about its median, and they set the level low (envelope
    masks 5-9 Å out: 0.25-0.8x the unmasked map's, precision 0.66-0.76). Here the robust SD of
    the raw map's detail (minus its smoothing over 1 Å) is profiled over shells of distance from
    the masked-out voxels, in the solvent; up to where that profile stops rising, its running
    maximum over the plateau's level is the ramp's gain, and 1 beyond. A hard mask's first shell
    holds the step (all detail): the profile starts at its top, and there is no gain."""
    be = _be.namespace(sub)
    xp, ndi = be.xp, be.ndi
    vox = step * float(np.min(voxel_size_A))
    detail = sub - ndi.gaussian_filter(sub, _GAIN_DETAIL_A / vox)
    dead = ndi.gaussian_filter((~live).astype(xp.float32), _GAIN_SIGMA_A / vox, mode="nearest")
    shell = _distance_bands(dead, live, _GAIN_SIGMA_A, _GAIN_SHELL_A, _GAIN_SHELL_A, _GAIN_SHELLS - 1)
    # the masked-out voxels beside the edge read as live (their neighbours vary): left out
    sel = solvent & _interior(live, 1)
    counts, sds = _grouped_robust_sds(detail[sel], shell[sel].astype(xp.int64), _GAIN_SHELLS, xp)    # sync
    valid = np.flatnonzero(counts >= _MIN_BAND)
    if len(valid) < 3:
        return None
    prof = sds[valid]
    top, k_top = prof[0], 0
    for i in range(1, len(prof)):               # the first plateau: the profile stops rising
        if prof[i] >= _GAIN_RISE * top:
            top, k_top = prof[i], i
        elif i - k_top >= 2:
            break
    g = np.ones(_GAIN_SHELLS)
    g[valid[: k_top + 1]] = np.minimum(np.maximum.accumulate(prof[: k_top + 1]) / top, 1.0)
    g[: valid[0]] = g[valid[0]]
    if g[valid[0]] >= _GAIN_START:
        return None                             # the noise is whole at the edge: a hard mask
    return xp.asarray(g.astype(np.float32))[shell] * live


def _live_voxels(sub):
    """The voxels of ``sub`` that carry noise: their :func:`_local_variance` above 1e-6 of the
    grid's variance (one read)."""
    return _local_variance(sub) > 1e-6 * float(array_var(sub))


def _mostly_constant(live) -> bool:
    """More than ``_MASKED_FRACTION`` of the voxels carry no noise (``live`` False): a mask's
    constant region, or a clipping's (one read)."""
    return float(array_mean(live)) < 1.0 - _MASKED_FRACTION


def _local_variance(sub):
    """Variance of ``sub`` over each voxel's 3×3×3 neighbourhood: zero where a mask left the map
    constant (such voxels carry no noise)."""
    ndi = _be.namespace(sub).ndi
    return ndi.uniform_filter(sub * sub, 3) - ndi.uniform_filter(sub, 3) ** 2


def _noise_free(sub, live) -> bool:
    """A map (``sub``: subsampled) whose constant, masked-looking region is its minimum and whose
    other voxels never go below it: atoms rendered on a zero solvent without noise (noise reaches
    below a mask's level). Its "noise" spectrum is the atoms' own tails."""
    xp = _be.namespace(sub).xp
    dead = sub[~live]
    if dead.size == 0:
        return False
    lo, level = (float(v) for v in _be.to_host(xp.stack([sub.min(), xp.median(dead)])))   # sync
    return level <= lo


def _clipped(sub, live) -> bool:
    """The map was clipped at its minimum (a reconstruction with a positivity constraint): more
    than ``_CLIPPED_SHARE`` of the voxels that carry noise sit exactly at the minimum. Its
    constant patches are clipped solvent, not a mask (a masked map's live voxels touch its
    constant level only along the mask's edge: 10-17% measured, against 55-58% in SIRT
    tomograms)."""
    xp = _be.namespace(sub).xp
    at_min = ((sub == sub.min()) & live).sum(dtype=xp.float64)
    return float(at_min / xp.maximum(live.sum(dtype=xp.float64), 1.0)) > _CLIPPED_SHARE     # sync


def _noise_level(C, solvent, live, step: int = _STEP, **kwargs):
    """Median and robust SD of the denoised map in the solvent (subsampled masks): the first
    level of :func:`_noise_levels` (same arguments)."""
    return _noise_levels(C, solvent, live, step, **kwargs)[0]


def _noise_levels(C, solvent, live, step: int = _STEP, *, particle_threshold=None, voxel_size_A=None,
                  margin_A: float = 6.0, resolution_A: float = 1.0, gain=None):
    """Median and robust SD of the denoised map in the solvent (subsampled masks), twice:
    ``((median, sd), (median, sd untested))``.

    With ``particle_threshold`` (masked maps) the solvent is rebuilt around the
    atoms, ``C`` above that threshold: bands of distance (see :func:`_distance_bands`)
    each give a robust SD, and the bands within ``_BAND_KEEP`` of the largest are
    pooled; a mask's soft edge only lowers the noise. The bands start
    ``_BAND_FROM_A`` from the atoms and, for a band-limited map, also
    ``_BAND_FROM_RES`` × ``resolution_A``; the lower of the two noise levels is
    taken. Without enough solvent, the
    SD comes from the lower half of the map's live voxels, which the particle
    (positive density) hardly touches.

    The second level is that of the bands pooled without their tail test
    (:func:`_band_solvent`), never below the first; the same level twice where no bands
    were laid. The rescues keep it as their floor (:mod:`ptnp_gpu.detect`).

    ``gain`` (subsampled, :func:`_mask_gain`): a soft mask's scaling of the noise; the bands
    are measured on ``C`` / gain, and voxels with a gain below ``_GAIN_MIN`` are left out.
    """
    be = _be.namespace(C)
    xp, ndi = be.xp, be.ndi
    sub = C[::step, ::step, ::step]
    if particle_threshold is not None:
        vox = step * float(np.min(voxel_size_A))
        # detail of C (minus C smoothed over _DETAIL_A): noise keeps a fixed share of its variance
        # there, wide atoms' tails much less, so the share tells a clean band from a contaminated one
        detail = (C - ndi.gaussian_filter(C, _DETAIL_A / float(np.min(voxel_size_A))))[::step, ::step, ::step]
        # ... measured away from the masked-out voxels: a hard mask's step is all detail
        r_edge = int(np.ceil(_EDGE_A / vox))
        inner = _interior(live, r_edge)
        near = ndi.gaussian_filter((sub > particle_threshold).astype(xp.float32), 0.5 * margin_A / vox,
                                   mode="constant")
        if gain is not None:
            # a soft mask's ramp: C's noise there is scaled by the mask; measured in its own units
            ok = gain >= _GAIN_MIN
            live = live & ok
            inner = inner & ok
            g = xp.where(ok, gain, 1.0).astype(sub.dtype)
            sub, detail = sub / g, detail / g
        # bands from 2 Å and, for a band-limited map, from two resolutions: the lower noise wins.
        # Wide atoms contaminate the near bands either way (a low-pass's tails, or blurred weak
        # surface atoms): low-passed at 2 Å the later start is right, blurred by 40-60 Å² the
        # earlier one (benchmarks/robustness_maps.py)
        levels, plain = [], []
        for start in sorted({_BAND_FROM_A, max(_BAND_FROM_A, _BAND_FROM_RES * resolution_A)}):
            cands = _band_solvent(sub, _distance_bands(near, live, 0.5 * margin_A, start), xp, detail, inner)
            if cands is None:
                continue
            cand, cand_plain = cands
            solvent = cand                                 # too few voxels: the fallback below
            if int(cand.sum()) >= _MIN_SOLVENT:            # sync
                tested = _robust_level(sub[cand], xp)
                plain.append(tested if cand_plain is cand else _robust_level(sub[cand_plain], xp))
                # the tail test only takes atoms' bands out: it never raises the level (the symmetric
                # bands' lower share reference can admit a band of wide atoms' smooth tails: hard
                # mask 9.4 Å out, blur 31 Å², noise read 5.0x higher, every atom rejected)
                levels.append(min(tested, plain[-1], key=lambda level: level[1]))
        if levels:
            return min(levels, key=lambda level: level[1]), min(plain, key=lambda level: level[1])
    if int(solvent.sum()) >= _MIN_SOLVENT:                 # sync
        level = _robust_level(sub[solvent], xp)
        return level, level
    flat = sub[live] if int(live.sum()) >= 500 else sub.ravel()
    med = float(xp.median(flat))
    low = flat[flat <= med]
    level = (med, 1.4826 * float(xp.median(med - low)))
    return level, level


def _near_particle_level(Cr, occupied, voxel_size_A, reach_A: float = _NEAR_A, step: int = _STEP,
                         clear_A: float = 0.0):
    """Median and robust SD of ``Cr`` (a residual's denoised map) within ``reach_A`` of the
    ``occupied`` voxels (the atoms found), on a ``step``-subsampled grid; with ``clear_A``, only
    farther than that from them (the rim around the atoms, without what the model leaves in them).

    Reconstructions can be far noisier next to the particle than in the solvent (a
    tomogram's streaks and missing-wedge lobes fall off with distance from it), and the
    residual rescue searches exactly there; atoms it should still find are a minority of
    those voxels, which the median absolute deviation ignores."""
    be = _be.namespace(Cr)
    xp, ndi = be.xp, be.ndi
    vox = step * float(np.min(voxel_size_A))
    r = max(1, int(np.ceil(reach_A / vox)))
    occ = occupied[::step, ::step, ::step].astype(xp.float32)
    near = ndi.uniform_filter(occ, 2 * r + 1, mode="constant") > 0
    if clear_A > 0:
        rc = max(1, int(np.ceil(clear_A / vox)))
        near &= ndi.uniform_filter(occ, 2 * rc + 1, mode="constant") == 0
    return _robust_level(Cr[::step, ::step, ::step][near], xp)


def _robust_level(sample, xp):
    """Median and robust SD (1.4826 × median absolute deviation) of ``sample``: both medians
    on the backend, one host read."""
    med = xp.median(sample)
    med, mad = (float(v) for v in _be.to_host(xp.stack([med, xp.median(xp.abs(sample - med))])))
    return med, 1.4826 * mad


def _noise_rises(psd, resolution_A) -> bool:
    """The noise power rises with frequency over the band (from 4 Å to ``resolution_A``): its
    median over the band's upper third is above that over its lower third, or its peak beyond
    the lower third (3-shell running mean) is ``_RISE`` × that third's median (a sharpened map).

    The peak serves where the band reads too wide: a hard mask's step spreads the power beyond
    a low-pass, and the upper third then lies past the sharpened peak (measured: sharpened by
    28-32 Å², low-passed at 1.7-1.9 Å and hard-masked, the power peaked at 2.8× and the band
    read 1.33-1.37 Å)."""
    s_c, power = psd
    hi_s = 1.0 / resolution_A
    third = (hi_s - 0.25) / 3.0
    lo = power[(s_c >= 0.25) & (s_c < 0.25 + third)]
    hi = power[(s_c > hi_s - third) & (s_c <= hi_s)]
    if not (len(lo) and len(hi)):
        return False
    if np.median(hi) > np.median(lo):
        return True
    upper = np.convolve(power, np.ones(3) / 3.0, mode="same")[(s_c >= 0.25 + third) & (s_c <= hi_s)]
    return bool(len(upper) and upper.max() > _RISE * np.median(lo))


def _grouped_robust_sds(values, groups, n_groups: int, xp, tail: float | None = None):
    """Voxel counts and robust SDs (1.4826 × median absolute deviation, as
    :func:`_robust_level`) of ``values`` in each group ``0 .. n_groups - 1``: two sorts by
    (group, value) on the backend and one host transfer, instead of two syncs per group.
    Returns host float arrays (counts, sds); an empty group's SD is meaningless.

    With ``tail`` (a fraction, e.g. 0.02) also each group's tail ratio
    ``(q[1 − tail] − median) / (median − q[tail])`` from the same sort (1 for a
    symmetric distribution; a third host array, NaN where undefined)."""
    # group bounds from the sorted labels (cupy.bincount would read the device twice)
    bounds = xp.searchsorted(xp.sort(groups), xp.arange(n_groups + 1, dtype=groups.dtype))
    start, counts = bounds[:-1], bounds[1:] - bounds[:-1]
    last = max(int(values.shape[0]) - 1, 0)
    lo = xp.minimum(start + xp.maximum(counts - 1, 0) // 2, last)
    hi = xp.minimum(start + counts // 2, last)
    key = groups.astype(values.dtype)

    def ordered(v):
        return v[xp.lexsort(xp.stack([v, key]))]

    def medians(o):                    # numpy's median: the mean of the two middle values
        return (o[lo] + o[hi]) / 2

    o = ordered(values)
    med = medians(o)
    mad = medians(ordered(xp.abs(values - med[groups])))
    rows = [counts.astype(xp.float64), mad.astype(xp.float64)]
    if tail is not None:
        # the tails' order statistics (nearest rank) from the same sort
        top = xp.maximum(counts - 1, 0)
        q_lo = o[xp.minimum(start + (top * tail).astype(start.dtype), last)]
        q_hi = o[xp.minimum(start + (top * (1.0 - tail)).astype(start.dtype), last)]
        rows += [(q_hi - med).astype(xp.float64), (med - q_lo).astype(xp.float64)]
    host = _be.to_host(xp.stack(rows))                                           # sync
    if tail is None:
        return host[0], 1.4826 * host[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(host[3] > 0, host[2] / host[3], np.nan)
    return host[0], 1.4826 * host[1], ratio


def _band_solvent(sub, bands, xp, detail=None, inner=None):
    """The voxels of the distance bands whose noise (robust SD) is within ``_BAND_KEEP`` of the
    largest band's, with and without the tail test below (a pair of masks, the same object
    twice where the test leaves every band in), or None when no band has ``_MIN_BAND`` voxels.

    With ``detail`` (C minus C smoothed, same grid), bands whose detail holds a smaller share
    of their SD than the cleanest band's (by more than ``_DETAIL_KEEP``) are left out first:
    the tails of wide atoms beside the particle and the mask's edge beyond it add mostly
    smooth structure, while noise keeps its share (a taper scales both alike). Shares are
    taken over the ``inner`` voxels of a band (away from the masked-out region) with at least
    ``_MIN_BAND`` of them; bands without a share are not clean.

    Before that, where some bands' values are symmetric about their median (tail ratio,
    :func:`_grouped_robust_sds`, within ``_TAIL_SYM`` of 1) only those are considered: noise is
    symmetric, while atoms in a band make its upper tail long (and their wide tails past a
    high-pass its lower one). The share alone misses mobile surface atoms on a sharpened map:
    their detail share is the noise's own (a hard mask 6.7 Å out, surface U 0.4 Å²: the
    surface band read 4.4× the noise, recall 0.57).
    """
    n = _N_BANDS + 1
    g_all = bands.ravel().astype(xp.int64)
    values, groups = [sub.ravel()], [g_all]
    if detail is not None:
        # the band's voxels away from the mask (group 0, ignored, for the rest): C and its detail
        g_in = g_all if inner is None else xp.where(inner.ravel(), g_all, 0)
        values += [sub.ravel(), detail.ravel()]
        groups += [n + g_in, 2 * n + g_in]
    counts, sd, ratio = _grouped_robust_sds(xp.concatenate(values), xp.concatenate(groups), len(groups) * n, xp,
                                            tail=_TAIL)
    sds, shares = {}, {}
    for k in np.nonzero(counts[1:n] >= _MIN_BAND)[0] + 1:
        sds[int(k)] = float(sd[k])
        if detail is not None and counts[n + k] >= _MIN_BAND:
            shares[int(k)] = float(sd[2 * n + k]) / max(float(sd[n + k]), 1e-30)
    if not sds:
        return None
    # bands without a share (beside the masked-out region) never stand alone: a taper there
    # keeps the noise symmetric but lowers it
    symmetric = {k for k in (shares or sds) if 1.0 / _TAIL_SYM <= ratio[k] <= _TAIL_SYM}
    untested = _pooled_bands(bands, xp, sds, shares)
    if not symmetric:
        return untested, untested
    return _pooled_bands(bands, xp, {k: sds[k] for k in symmetric},
                         {k: shares[k] for k in symmetric if k in shares}), untested


def _pooled_bands(bands, xp, sds: dict, shares: dict):
    """The voxels of the bands (SDs ``sds``, detail shares ``shares``) that :func:`_band_solvent`
    pools: those within ``_DETAIL_KEEP`` of the highest share, then ``_BAND_KEEP`` of the largest SD."""
    if shares:
        ref = max(shares.values())                           # the cleanest band: noise alone
        clean = {k: v for k, v in sds.items() if shares.get(k, 0.0) >= _DETAIL_KEEP * ref}
        sds = clean or sds
    top = max(sds.values())
    keep = xp.asarray([False] + [sds.get(k, 0.0) >= _BAND_KEEP * top for k in range(1, _N_BANDS + 1)])
    return keep[bands]


def _noise_spectrum(raw, solvent, voxel_size_A, resolution_A, step: int = _STEP):
    """Noise power spectrum of the solvent, how coloured it is within the atoms' band, and the
    band the map really carries.

    Measured maps are often low-pass filtered (at their FSC resolution): beyond that
    the noise power falls to nothing, and a filter prewhitened there would amplify
    rounding errors a million times (measured: a map band-limited at 1.6 Å with noise
    was refused as 'no particle'). The band edge is the first frequency from 4 Å up
    where the noise power falls below ``_EDGE_DROP`` of its median between 4 and 2 Å.

    Returns
    -------
    psd : (s_A, power) host arrays, or None when there is too little solvent
    colour : max/min of the power between 4 Å and the band limit (≈ 1 for white noise)
    resolution_A : ``resolution_A``, or the band edge (Å) when the map carries less
    """
    be = _be.namespace(raw)
    xp, ndi = be.xp, be.ndi
    if int(solvent.sum()) < _MIN_SOLVENT:                  # sync
        return None, 1.0, resolution_A
    soft = ndi.gaussian_filter(solvent.astype(xp.float32), 1.0)
    for ax in range(3):
        soft = xp.repeat(soft, step, axis=ax)
    soft = soft[: raw.shape[0], : raw.shape[1], : raw.shape[2]]
    s_c, power = noise_power_spectrum(raw, soft, voxel_size_A)
    mid = (s_c >= 0.25) & (s_c <= 0.5)
    if mid.sum() >= 2 and np.median(power[mid]) > 0:
        # the reference is the 4-2 Å median, or the highest power met so far from 4 Å up: a
        # sharpened map's noise rises to its band edge, and the window's leakage beyond that
        # edge stays above 1% of the 4-2 Å level (a 1.6 Å map sharpened by 50 Å² read 1.04 Å)
        up = np.flatnonzero(s_c >= 0.25)
        ref = np.maximum(np.maximum.accumulate(power[up]), np.median(power[mid]))
        below = up[power[up] < _EDGE_DROP * ref]
        if len(below):
            resolution_A = max(resolution_A, 1.0 / s_c[below[0]])
    sel = (s_c >= 0.25) & (s_c <= 1.0 / resolution_A)
    if sel.sum() < 3 or not np.all(power[sel] > 0):
        return None, 1.0, resolution_A
    return (s_c, power), float(power[sel].max() / power[sel].min()), resolution_A
