"""The CuPy code path on the host (ptnp_gpu.device_emulation): CPU-only CI checks of it.

* The emulated device behaves like CuPy where the GPU path depends on it:
  implicit host conversion raises, host reads and data-sized outputs count as
  synchronisations.
* The pipeline-stage parity tests of ``test_gpu_parity.py`` run again with
  the emulated device in place of CuPy, so the CuPy branches (stacked sweep,
  cell-list pairs, flat scatter sums, device solvent bands...) are compared
  with the NumPy path in every CI run, not only when a GPU is lent.
* Synchronisation budget: detection and statistics keep their host reads
  few, and their number does not grow with the map or the atom count.
"""
from __future__ import annotations

import numpy as np
import pytest

from ptnp_gpu import backend as _be
from ptnp_gpu.device_emulation import EmulatedArray, emulate

import test_gpu_parity as _parity


@pytest.fixture
def cp():
    """Stands in for the ``cupy`` module in the parity tests."""
    with emulate() as audit:
        xp = audit.backend.xp
        xp.ndarray = EmulatedArray
        yield xp


# the pipeline-stage parity tests, re-run against the emulated device (the kernel tests
# would compare each CPU twin with itself, so they stay GPU-only)
particle = _parity.particle
test_detect_atoms_parity = _parity.test_detect_atoms_parity
test_compute_statistics_parity = _parity.test_compute_statistics_parity
test_sweep_scores_parity = _parity.test_sweep_scores_parity
test_masked_solvent_and_noise_level_parity = _parity.test_masked_solvent_and_noise_level_parity
test_map_transfer_parity = _parity.test_map_transfer_parity
test_render_atoms_weights_only_parity = _parity.test_render_atoms_weights_only_parity
test_transfer_corrected_map_parity = _parity.test_transfer_corrected_map_parity
test_prewhitened_denoise_parity = _parity.test_prewhitened_denoise_parity
test_detect_sharpened_map_parity = _parity.test_detect_sharpened_map_parity
test_solvent_level_parity = _parity.test_solvent_level_parity
test_array_mean_and_var_parity = _parity.test_array_mean_and_var_parity
test_hermitian_norm2_and_denoise_scale_parity = _parity.test_hermitian_norm2_and_denoise_scale_parity


def test_emulated_array_behaves_like_cupy():
    with emulate() as audit:
        xp = audit.backend.xp
        a = xp.arange(10.0)
        assert _be.namespace(a) is audit.backend and audit.backend.is_gpu
        with pytest.raises(TypeError, match="Implicit conversion"):
            np.asarray(a)
        assert audit.syncs == 0
        s = a.sum()                           # a 0-d device array, no host read yet
        assert isinstance(s, EmulatedArray) and audit.syncs == 0
        assert float(s) == 45.0 and audit.syncs == 1
        b = a[a > 4]                           # boolean mask: its count sizes the result
        assert audit.syncs == 2 and b.shape == (5,)
        xp.bincount(xp.asarray(np.array([0, 2, 2])), minlength=4)   # CuPy: x < 0 check, max(x)
        assert audit.syncs == 4
        np.testing.assert_array_equal(_be.to_host(b), np.arange(5.0, 10.0))
        assert audit.syncs == 5
        launches = audit.launches
        a.reshape(2, 5)[0]                     # views launch nothing
        assert audit.launches == launches
        assert "test_device_emulation" not in "".join(audit.sync_sites)   # sites name library lines
    assert _be.namespace(np.zeros(1)).name == "numpy"
    with pytest.raises(RuntimeError):
        _ = a + 1                              # outside the block the emulated device is gone


def test_emulated_sorts_are_stable_like_cupy():
    """CuPy sorts stably and takes no other kind: NumPy's default quicksort orders ties otherwise
    (a split component's seeds, so the atoms' order, differed on the H200). The emulated device
    sorts stably and refuses another kind."""
    keys = np.random.default_rng(7).integers(0, 3, 400)
    want = np.argsort(keys, kind="stable")
    assert not np.array_equal(np.argsort(keys), want)          # NumPy's default is not stable here
    with emulate() as audit:
        xp = audit.backend.xp
        k = xp.asarray(keys)
        np.testing.assert_array_equal(_be.to_host(xp.argsort(k)), want)
        np.testing.assert_array_equal(_be.to_host(k.argsort()), want)
        with pytest.raises(ValueError, match="kind"):
            xp.argsort(k, kind="quicksort")


def test_emulation_restores_the_backends():
    before = _be.default()
    from ptnp_gpu import detect, gpu_kernels
    kernels = gpu_kernels.window_pearson, detect.window_pearson
    with emulate():
        assert _be.default().is_gpu
        assert detect.window_pearson is not kernels[1]
    assert _be.default() is before
    assert (gpu_kernels.window_pearson, detect.window_pearson) == kernels


def _analysis_syncs(case):
    from ptnp_gpu.detect import detect_atoms
    from ptnp_gpu.statistics import compute_statistics
    with emulate() as audit:
        det = detect_atoms(case.map, "Pt")
        n_det, sites_det = audit.syncs, dict(audit.sync_sites)
        audit.reset()
        compute_statistics(det.backend_map, det.xyz_A, "Pt", labels=det.labels)
        return len(det.xyz_A), n_det, audit.syncs, sites_det, dict(audit.sync_sites)


def test_host_reads_are_few_and_do_not_grow_with_the_particle():
    """Syncs of the GPU path: a bounded number per analysis (measured 2026-11-27: detection
    111-113, statistics 18; 2026-11-28 after the hashed cell list, the one-launch peak thinning
    and the noise spectrum's single reads: detection 81-86, statistics 17, for 150 and 1,200
    atoms alike; 2026-11-29, CN by the segment-sum kernel and one read for the strain pairs'
    domain filter: statistics 13; stop 29, stage times from CUDA events instead of seven
    synchronisations, and one read for the detached-atom check: detection 83-88), not one per
    atom, threshold or pass."""
    from ptnp_gpu.synth import make_particle
    small = make_particle(n_atoms=150, seed=5, noise=0.08)
    large = make_particle(n_atoms=1200, seed=6, noise=0.08)
    n_s, det_s, st_s, _, _ = _analysis_syncs(small)
    n_l, det_l, st_l, sites, st_sites = _analysis_syncs(large)
    assert n_s > 0.9 * 150 and n_l > 0.9 * 1200
    assert det_l <= 95 and st_l <= 15, (det_l, st_l)
    assert det_l <= det_s + 15 and st_l <= st_s + 4, ((det_s, det_l), (st_s, st_l))
    # no single library line reads the device more than a bounded number of times
    assert max(sites.values()) <= 10 and max(st_sites.values()) <= 4, (sites, st_sites)


def _random_fits(xp, n=200, seed=0):
    """Solved displacement fits (iso, aniso, counts) of random SPD covariances, on ``xp``."""
    rng = np.random.default_rng(seed)
    a = rng.normal(scale=0.2, size=(n, 3, 3))
    cov = a @ a.transpose(0, 2, 1) + 0.02 * np.eye(3)
    P = np.linalg.inv(cov)
    beta = np.stack([np.zeros(n), -P[:, 0, 0] / 2, -P[:, 1, 1] / 2, -P[:, 2, 2] / 2, -P[:, 0, 1], -P[:, 0, 2],
                     -P[:, 1, 2]], 1)
    b_iso = np.stack([np.zeros(n), -0.5 / np.trace(cov, axis1=1, axis2=2) * 3], 1)
    ok = np.ones(n, bool)
    r2 = rng.uniform(0.8, 1.0, n)
    return ((xp.asarray(b_iso), xp.asarray(r2), xp.asarray(ok)), (xp.asarray(beta), xp.asarray(r2), xp.asarray(ok)),
            xp.asarray(np.full(n, 50)))


def test_blur_correction_parity_on_the_emulated_device():
    """The map-blur correction of the displacement fits takes the same values on the CuPy path."""
    from ptnp_gpu.displacement import displacements_from_fits
    psi = np.diag([0.0, 0.02, 0.15])
    ref = displacements_from_fits(*_random_fits(np), radius_A=2.0, deconvolve_A2=0.01, blur_tensor_A2=psi)
    with emulate() as audit:
        got = displacements_from_fits(*_random_fits(audit.backend.xp), radius_A=2.0, deconvolve_A2=0.01,
                                      blur_tensor_A2=psi)
        got = {k: _be.to_host(v) for k, v in got.items()}
    assert 0 < int(ref["u_aniso_failed"].sum()) < len(ref["doi"])      # some fits lose an axis to the blur
    plain = displacements_from_fits(*_random_fits(np), radius_A=2.0, deconvolve_A2=0.01)
    ok = ~ref["u_aniso_failed"]
    np.testing.assert_allclose(ref["u_A2"][ok], plain["u_A2"][ok] - psi, atol=1e-12)   # U − Ψ, exactly
    iso = plain["u_iso_A2"] - np.trace(psi) / 3
    np.testing.assert_allclose(ref["u_iso_A2"], np.where(iso > 0, iso, np.nan), atol=1e-12)   # failed when ≤ 0
    for k in ("u_iso_A2", "u_A2", "u_eig_A2", "u_dir", "doi", "u_aniso_failed"):
        np.testing.assert_allclose(np.asarray(got[k], float), np.asarray(ref[k], float), rtol=1e-10, atol=1e-12,
                                   equal_nan=True)


def test_weights_only_render_reads_nothing_back():
    """The device builds a weights-only render's inputs itself: no host read, and the same map
    as NumPy's bit for bit (the same operations; the emulated kernel is the Numba twin)."""
    from ptnp_gpu.simulate import render_atoms
    rng = np.random.default_rng(3)
    xyz = rng.uniform(0.0, 14.0, (150, 3))
    w = rng.uniform(0.2, 2.0, 150)
    want = render_atoms(xyz, (40, 42, 44), 0.36, (0.1, 0.2, -0.3), backend="numpy", weights=w)
    with emulate() as audit:
        xp = audit.backend.xp
        xyz_d, w_d = xp.asarray(xyz), xp.asarray(w)
        audit.reset()
        got = render_atoms(xyz_d, (40, 42, 44), 0.36, (0.1, 0.2, -0.3), backend=audit.backend, weights=w_d)
        assert audit.syncs == 0
        got = got.get()
    np.testing.assert_array_equal(got, want)


def test_launches_per_analysis_are_bounded():
    """Launches (library calls on device arrays and custom kernels) of the GPU path, counted on
    the emulated device: measured 2026-11-28 after the fused kernels of stop 22, detection 602
    and statistics 308 for a 1,200-atom particle (stop 21: ~1,000 and ~480); 656 in detection
    since the per-atom significance and position error (2026-11-29, ptnp_gpu.precision: 48 of
    them, the Hessians' two log-quadratic fits as one product); 681 since the lattice rescue (25 for
    its one round of site tests on this map, which adds no atom); 691 since the full-array
    means went through ptnp_shifted_moments (2026-11-29 stop 29: three launches where CuPy's
    mean took one, but each a grid-wide one where CuPy's ran in one thread block); 696 since the
    detached-atom check reads its four arrays in one transfer (three syncs fewer); 714 with the
    particle's box check (stop 33; no box on this map); 721 since that check labels the detailed
    regions holding the particle's core (stop 34: a particle filling much of its map was cut, and
    detected twice). Each launch costs the host tens of microseconds on a GPU, so a change that
    adds many must say why."""
    from ptnp_gpu.detect import detect_atoms
    from ptnp_gpu.statistics import compute_statistics
    from ptnp_gpu.synth import make_particle
    case = make_particle(n_atoms=1200, seed=6, noise=0.08)
    with emulate() as audit:
        det = detect_atoms(case.map, "Pt")
        n_det = audit.launches
        audit.reset()
        compute_statistics(det.backend_map, det.xyz_A, "Pt", labels=det.labels)
        n_st = audit.launches
    assert len(det.xyz_A) > 1100
    assert n_det <= 730 and n_st <= 350, (n_det, n_st)


def test_stage_clock_times_every_stage_without_host_reads():
    """backend.StageClock: on the (emulated) device a lap records an event and reads nothing;
    ``times()`` waits for the last event only (one read) and gives every stage a time, which
    add up to the span between the clock's start and its last lap."""
    import time as _time
    with emulate() as audit:
        xp = audit.backend.xp
        clock = _be.StageClock(audit.backend)
        a = xp.arange(1000.0)
        t0 = _time.perf_counter()
        for name in ("one", "two", "three"):
            a = a * 2.0
            clock.lap(name)
        span = _time.perf_counter() - t0
        assert audit.syncs == 0
        times = clock.times()
        assert audit.syncs == 1
    assert list(times) == ["one", "two", "three"] and all(v >= 0 for v in times.values())
    assert sum(times.values()) <= span + 0.05
    host = _be.StageClock(_be.get("numpy"))
    host.lap("a")
    host.lap("a")                                       # a repeated stage adds up
    assert list(host.times()) == ["a"]
