"""CuPy vs NumPy parity of the kernels and of the pipeline stages (marked ``gpu``).

Skipped without a usable GPU (see ``conftest.py``). The CuPy side runs the
CUDA kernels, the NumPy side their Numba twins; detection and statistics run
end to end on both backends on a simulated particle.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest

from ptnp_gpu import gpu_kernels as gk
from ptnp_gpu import simulate
from _seeds import fresh_seed

pytestmark = pytest.mark.gpu

# one fresh seed per session besides the fixed ones; the test id shows it and
# PTNP_PARITY_SEED=<seed> reproduces a failure
FRESH_SEED = fresh_seed()


@pytest.fixture(scope="module")
def cp():
    import cupy
    return cupy


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _random_atoms(seed, n=400, shape=(48, 52, 44), vs=0.358, aniso=False):
    rng = np.random.default_rng(seed)
    extent = np.array([shape[2], shape[1], shape[0]]) * vs
    xyz = rng.uniform(-1.0, extent + 1.0, (n, 3))       # some windows cross the edges
    kw = dict(weights=rng.uniform(0.5, 1.5, n))
    if aniso:
        M = rng.normal(scale=0.15, size=(n, 3, 3))
        kw["u_aniso_A2"] = M @ np.swapaxes(M, 1, 2) + 0.01 * np.eye(3)
    else:
        kw["u_iso_A2"] = rng.uniform(0.0, 0.1, n)
    return xyz, shape, vs, kw


@pytest.mark.parametrize("seed,aniso", [(1, False), (2, True), (FRESH_SEED, True)])
def test_render_atoms_parity(cp, seed, aniso):
    xyz, shape, vs, kw = _random_atoms(seed, aniso=aniso)
    g = simulate.render_atoms(xyz, shape, vs, backend="cupy", **kw)
    c = simulate.render_atoms(xyz, shape, vs, backend="numpy", **kw)
    r = simulate.render_atoms_reference(xyz, shape, vs, backend="cupy", **kw)
    assert isinstance(g, cp.ndarray) and g.dtype == cp.float32 and g.shape == shape
    scale = float(c.max())
    np.testing.assert_allclose(_host(g), c, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(_host(g), _host(r), rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("seed", [5, FRESH_SEED])
def test_render_atoms_weights_only_parity(cp, seed):
    """Without displacements the per-atom inputs are built on the device from device positions
    and weights: the same map as the NumPy path, and no host read of the positions."""
    rng = np.random.default_rng(seed)
    xyz, shape, vs, _ = _random_atoms(seed)
    w = rng.uniform(0.2, 2.0, len(xyz))
    c = simulate.render_atoms(xyz, shape, vs, (0.3, -0.2, 0.1), backend="numpy", weights=w, b_extra_A2=6.0)
    g = simulate.render_atoms(cp.asarray(xyz), shape, vs, (0.3, -0.2, 0.1), backend="cupy",
                              weights=cp.asarray(w), b_extra_A2=6.0)
    assert isinstance(g, cp.ndarray) and g.dtype == cp.float32
    np.testing.assert_allclose(_host(g), c, rtol=1e-5, atol=1e-5 * float(c.max()))
    g1 = simulate.render_atoms(cp.asarray(xyz), shape, vs, backend="cupy")      # unit weights
    np.testing.assert_allclose(_host(g1), simulate.render_atoms(xyz, shape, vs, backend="numpy"),
                               rtol=1e-5, atol=1e-5 * float(c.max()))


def test_render_windows_float64_parity(cp):
    """Before the float32 cast: float64 atomics agree with the twin to ~1e-12."""
    rng = np.random.default_rng(4)
    n, T = 300, 5
    base = rng.integers(-2, 40, (n, 3))
    frac = rng.uniform(-0.5, 0.5, (n, 3))
    M = rng.normal(size=(n, T, 3, 3))
    inv = M @ np.swapaxes(M, -1, -2) + 2 * np.eye(3)
    inv6 = np.stack([inv[..., 0, 0], inv[..., 1, 1], inv[..., 2, 2],
                     inv[..., 0, 1], inv[..., 0, 2], inv[..., 1, 2]], -1)
    norm = rng.uniform(0.1, 1.0, (n, T))
    off = simulate._window_offsets(2.5, np.full(3, 0.4))
    vs = np.array([0.4, 0.38, 0.42])
    host = gk.render_windows(np.zeros((37, 41, 39)), base, frac, inv6, norm, off, vs)
    dev = gk.render_windows(cp.zeros((37, 41, 39)), base, frac, inv6, norm, off, vs)
    np.testing.assert_allclose(_host(dev), host, rtol=1e-12, atol=1e-14 * host.max())


@pytest.mark.parametrize("seed", [10, FRESH_SEED])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_window_normal_equations_parity(cp, dtype, seed):
    rng = np.random.default_rng(seed)
    vol = rng.normal(0.5, 1.0, (40, 44, 36)).astype(dtype)
    centres = rng.uniform(-1.0, [36, 44, 40], (500, 3))
    vs = (0.36, 0.35, 0.37)
    base = rng.uniform(-0.3, 0.5, 500)      # per-atom baselines (the local solvent level)
    A, b, yy, n = gk.window_normal_equations(vol, centres, 3.1, voxel_size_A=vs, baseline=base)
    ne = gk.window_normal_equations(cp.asarray(vol), cp.asarray(centres), 3.1, voxel_size_A=vs,
                                    baseline=cp.asarray(base))
    Ag, bg, yg, ng = ne
    assert isinstance(Ag, cp.ndarray) and Ag.shape == (500, 7, 7) and Ag.dtype == cp.float64
    np.testing.assert_array_equal(_host(ng), n)
    np.testing.assert_allclose(_host(Ag), A, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_host(bg), b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_host(yg), yy, rtol=1e-10, atol=1e-12)
    beta_c, r2_c, ok_c = gk.solve_normal_equations(gk.NormalEquations(A, b, yy, n))
    beta_g, r2_g, ok_g = gk.solve_normal_equations(ne)
    np.testing.assert_array_equal(_host(ok_g), ok_c)
    np.testing.assert_allclose(_host(beta_g)[ok_c], beta_c[ok_c], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("seed", [11, FRESH_SEED])
def test_window_pearson_parity(cp, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(40, 38, 42)).astype(np.float32)
    b = (0.5 * a + rng.normal(size=a.shape)).astype(np.float32)
    centres = rng.uniform(0.0, [42, 38, 40], (700, 3))
    r, s = gk.window_pearson(a, b, centres, 4.6, return_sums=True)
    rg, sg = gk.window_pearson(cp.asarray(a), cp.asarray(b), cp.asarray(centres), 4.6, return_sums=True)
    np.testing.assert_allclose(_host(sg), s, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(_host(rg), r, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", [12, FRESH_SEED])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mean_shift_centres_parity(cp, dtype, seed):
    rng = np.random.default_rng(seed)
    shape = (40, 44, 36)
    vol = rng.normal(0.3, 1.0, shape)
    vol[:12, :12, :12] = -1.0                                  # windows without weight: no shift
    vol = vol.astype(dtype)
    hi = np.array([shape[2], shape[1], shape[0]], float)
    c = np.vstack([rng.uniform(-2.0, hi + 1.0, (900, 3)),                   # faces and beyond
                   rng.integers(0, hi.astype(int), (50, 3)) + 0.5,           # rint ties
                   rng.uniform(3.0, 5.0, (10, 3))])                          # empty corner
    base = float(rng.uniform(0.0, 0.2))
    for radius, sigma, n_iter in ((3.8, 1.45, 3), (2.3, 1.0, 6)):
        host = gk.mean_shift_centres(vol, c, base, radius, sigma, n_iter=n_iter)
        dev = gk.mean_shift_centres(cp.asarray(vol), cp.asarray(c), base, radius, sigma, n_iter=n_iter)
        assert isinstance(dev, cp.ndarray) and dev.dtype == cp.float64 and dev.shape == c.shape
        np.testing.assert_allclose(_host(dev), host, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(_host(dev)[-10:], c[-10:])
        assert np.abs(host - c).max() > 0.5


@pytest.mark.parametrize("seed", [25, FRESH_SEED])
def test_linear_at_parity(cp, seed):
    """Linear interpolation at points (ptnp_linear_at) against SciPy's map_coordinates (order 1,
    nearest) and the twin, float32 and float64, points beyond the edges included."""
    import scipy.ndimage as ndi
    from ptnp_gpu.kernels.window_fits_cpu import linear_at_cpu
    rng = np.random.default_rng(seed)
    for dt in (np.float32, np.float64):
        vol = rng.normal(size=(40, 33, 47)).astype(dt)
        pts = rng.uniform(-3.0, [50.0, 36.0, 43.0], (5000, 3))
        dev = _host(gk.linear_at(cp.asarray(vol), cp.asarray(pts)))
        assert dev.dtype == dt
        np.testing.assert_array_equal(dev, linear_at_cpu(vol, pts))
        np.testing.assert_allclose(dev, ndi.map_coordinates(vol, pts[:, ::-1].T, order=1, mode="nearest"),
                                   rtol=0, atol=1e-6 if dt == np.float32 else 1e-14)


@pytest.mark.parametrize("seed", [24, FRESH_SEED])
def test_outside_balls_parity(cp, seed):
    """The solvent mask's cleared balls (ptnp_clear_balls) against the host twin and SciPy's
    distance transform, on the statistics' ~1 Å grid."""
    import scipy.ndimage as ndi
    rng = np.random.default_rng(seed)
    shape, sp, r = (90, 86, 95), (1.074, 1.074, 1.074), 3.5
    c = np.stack([rng.integers(10, s - 10, 4000) for s in shape], 1)
    dev = gk.outside_balls(shape, cp.asarray(c), r, sp)
    host = gk.outside_balls(shape, c, r, sp)
    free = np.ones(shape, bool)
    free[tuple(c.T)] = False
    np.testing.assert_array_equal(_host(dev), host)
    np.testing.assert_array_equal(host, ndi.distance_transform_edt(free, sampling=sp) > r)


@pytest.mark.parametrize("seed", [23, FRESH_SEED])
def test_pair_table_sums_parity(cp, seed):
    """The sweep scorer's fused pair sums (ptnp_cell_pair_table_sums) against the host twin and
    the pair list: 3,000 points, the scorer's 8,192-point table."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 40.0, (3000, 3))
    r = 6.3
    xg = np.linspace(0.0, r * r, 8192)
    yg = np.exp(-xg / 3.0)
    host = gk.pair_table_sums(x, r, xg, yg)
    dev = gk.pair_table_sums(cp.asarray(x), r, cp.asarray(xg), cp.asarray(yg))
    assert isinstance(dev, cp.ndarray) and dev.shape == (3000,)
    np.testing.assert_allclose(_host(dev), host, rtol=1e-12, atol=1e-12)
    i, _, d2 = gk.cell_pairs(x, r)
    np.testing.assert_allclose(host, np.bincount(i, weights=np.interp(d2, xg, yg), minlength=3000),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [22, FRESH_SEED])
def test_device_ndimage_filters_parity(cp, seed):
    """The CuPy backend's Gaussian and uniform filters (ptnp_filter1d) against SciPy's, float32
    and float64, the modes the library uses."""
    import scipy.ndimage as ndi
    from ptnp_gpu import device_ndimage as dn
    rng = np.random.default_rng(seed)
    for dt, tol in ((np.float32, 2e-6), (np.float64, 1e-12)):
        v = rng.normal(size=(40, 37, 45)).astype(dt)
        for mode in ("reflect", "constant", "nearest"):
            np.testing.assert_allclose(_host(dn.gaussian_filter(cp.asarray(v), [1.4, 0.0, 2.2], mode=mode)),
                                       ndi.gaussian_filter(v, [1.4, 0.0, 2.2], mode=mode), rtol=tol, atol=tol)
            np.testing.assert_allclose(_host(dn.uniform_filter(cp.asarray(v), 4, mode=mode)),
                                       ndi.uniform_filter(v, 4, mode=mode), rtol=tol, atol=tol)
    # one pass against its Numba twin: the same sums in the same order, no fused multiply-add
    from ptnp_gpu.kernels.filter1d_cpu import filter1d_cpu
    v = rng.normal(size=(33, 29, 31)).astype(np.float32)
    w = dn.gaussian_weights(1.7)
    for axis in range(3):
        for mode in range(5):
            dev = gk.filter1d_pass(cp.asarray(v), cp.empty(v.shape, cp.float32), axis, cp.asarray(w),
                                   len(w) // 2, mode, 0.3)
            np.testing.assert_array_equal(_host(dev), filter1d_cpu(v, np.empty_like(v), axis, w, len(w) // 2,
                                                                   mode, 0.3))


@pytest.mark.parametrize("seed", [21, FRESH_SEED])
def test_connected_components_parity(cp, seed):
    """The union-find labelling kernels give scipy's labels: thresholds stacked with gap planes
    (float32 and float64 maps), one threshold without a gap, and a boolean mask."""
    import scipy.ndimage as ndi
    rng = np.random.default_rng(seed)
    vol = ndi.gaussian_filter(rng.normal(size=(61, 70, 58)), 1.2)
    ts = np.quantile(vol, [0.55, 0.7, 0.8, 0.9, 0.97])
    most = 0
    for v in (vol.astype(np.float32), vol):
        for thr, gap in ((ts, 1), (ts[:1], 0), (ts[2:], 2)):
            lab, n = gk.label_above(v, thr, gap)
            lg, ng = gk.label_above(cp.asarray(v), thr, gap)
            assert isinstance(lg, cp.ndarray) and lg.dtype == cp.int32 and lg.shape == lab.shape
            np.testing.assert_array_equal(_host(ng), n)
            assert int(n[0]) >= 1
            most = max(most, int(n[0]))
            np.testing.assert_array_equal(_host(lg), lab)
    assert most > 20                                        # many components in one labelling at least
    for v in (vol.astype(np.float32), vol):
        for t in ts[[0, 4]]:
            np.testing.assert_array_equal(_host(gk.occupancy_above(cp.asarray(v), t)), gk.occupancy_above(v, t))
    mask = rng.random((40, 45, 50)) < 0.3                   # one large component and many small
    lab, n = ndi.label(mask, structure=np.ones((3, 3, 3)))
    lg, ng = gk.label_mask(cp.asarray(mask))
    assert int(ng[0]) == n
    np.testing.assert_array_equal(_host(lg), lab)


@pytest.mark.parametrize("seed", [20, FRESH_SEED])
def test_label_moments_parity(cp, seed):
    import scipy.ndimage as ndi
    rng = np.random.default_rng(seed)
    mask = ndi.gaussian_filter(rng.normal(size=(64, 70, 60)), 1.0) > 0.15
    lab, n = ndi.label(mask, structure=np.ones((3, 3, 3)))
    lab = lab.astype(np.int32)
    w = rng.uniform(0.1, 2.0, lab.shape).astype(np.float32)
    p = np.round(rng.normal(size=lab.shape), 1).astype(np.float32)   # ties
    m = gk.label_moments(lab, w, p, n)
    mg = gk.label_moments(cp.asarray(lab), cp.asarray(w), cp.asarray(p), n)
    np.testing.assert_array_equal(_host(mg.count), m.count)
    np.testing.assert_allclose(_host(mg.sum_w), m.sum_w, rtol=1e-12)
    np.testing.assert_allclose(_host(mg.sum_w_xyz), m.sum_w_xyz, rtol=1e-12)
    np.testing.assert_array_equal(_host(mg.peak_value), m.peak_value)
    np.testing.assert_array_equal(_host(mg.peak_index), m.peak_index)
    np.testing.assert_allclose(_host(mg.centres_vox_xyz()), m.centres_vox_xyz(), rtol=1e-12)   # ptnp_label_finish
    mb = gk.label_moments(cp.asarray(lab), cp.asarray(w), cp.asarray(p), n, background_row=True)
    assert int(mb.count[0]) == 0 and int(mb.peak_index[0]) == -1 and bool(cp.isnan(mb.centre_vox[0]).all())
    # weights and peak map of 16 planes shared by the labels' four 16-plane slabs (stacked thresholds)
    mp = gk.label_moments(cp.asarray(lab), cp.asarray(w[:16]), cp.asarray(p[:16]), n)
    mt = gk.label_moments(lab, np.tile(w[:16], (4, 1, 1)), np.tile(p[:16], (4, 1, 1)), n)
    np.testing.assert_array_equal(_host(mp.count), mt.count)
    np.testing.assert_allclose(_host(mp.sum_w_xyz), mt.sum_w_xyz, rtol=1e-12)
    np.testing.assert_array_equal(_host(mp.peak_value), mt.peak_value)
    np.testing.assert_array_equal(_host(mp.peak_index), mt.peak_index)


@pytest.mark.parametrize("seed", [12, FRESH_SEED])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_local_maxima_parity(cp, dtype, seed):
    """The kernel against its twin on a smooth random volume with plateaus (ties), with and
    without a mask; the same voxels, exactly."""
    import scipy.ndimage as ndi
    rng = np.random.default_rng(seed)
    v = np.round(ndi.gaussian_filter(rng.normal(size=(37, 41, 45)), 1.2), 2).astype(dtype)
    m = v > np.quantile(v, 0.4)
    for mask in (None, m):
        host = gk.local_maxima(v, mask)
        dev = gk.local_maxima(cp.asarray(v), None if mask is None else cp.asarray(mask))
        assert isinstance(dev, cp.ndarray) and dev.dtype == cp.bool_
        np.testing.assert_array_equal(_host(dev), host)
        assert host.sum() > 10


@pytest.mark.parametrize("seed,r", [(21, 3.0), (FRESH_SEED, 5.5)])
def test_cell_pairs_parity(cp, seed, r):
    """The cell-list pair kernel writes the twin's pairs in the twin's order."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 40.0, (3000, 3))
    host = gk.cell_pairs(x, r)
    dev = gk.cell_pairs(cp.asarray(x), r)
    assert len(host[0]) > 1000
    for a, b in zip(dev, host):
        np.testing.assert_array_equal(_host(a), b)


@pytest.mark.parametrize("seed", [22, FRESH_SEED])
def test_fused_reductions_parity(cp, seed):
    """Segment sums of several columns (atomics on the device, bincount's order on the host),
    the shifted moments of a strided crop, and peak thinning: the kernels against the twins."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, 3000, 200_000)
    vals = rng.normal(size=(4, 200_000))
    np.testing.assert_allclose(_host(gk.segment_sum_columns(cp.asarray(idx), cp.asarray(vals), 3000)),
                               gk.segment_sum_columns(idx, vals, 3000), rtol=1e-10, atol=1e-10)
    for dtype in (np.float32, np.float64):
        vol = rng.normal(7.0, 2.0, (70, 81, 93)).astype(dtype)
        crop = (slice(3, 66), slice(None, None, 2), slice(5, 90))
        host = gk.shifted_moments(vol[crop], np.array(6.5))
        dev = gk.shifted_moments(cp.asarray(vol)[crop], cp.asarray(6.5))
        np.testing.assert_allclose(_host(dev), host, rtol=1e-10)
    xyz = rng.uniform(0.0, 60.0, (5000, 3))
    val = np.round(rng.normal(size=5000), 1)                    # ties
    group = rng.integers(0, 5, 5000)
    i, j, _ = gk.cell_pairs(xyz, 2.8)
    for g in (None, group):
        host = gk.thin_peaks(i, j, val, 5000, group=g)
        dev = gk.thin_peaks(cp.asarray(i), cp.asarray(j), cp.asarray(val), 5000,
                            group=None if g is None else cp.asarray(g))
        assert dev.dtype == cp.bool_
        np.testing.assert_array_equal(_host(dev), host)
        assert 0 < host.sum() < 5000


@pytest.mark.parametrize("seed,white", [(23, True), (FRESH_SEED, False)])
def test_fourier_kernels_parity(cp, seed, white):
    """The one-pass denoising filter and the shell index: the kernels (CUDA expf / cosf)
    against the array code (NumPy's) on a 96 x 90 x 49 rfft grid."""
    rng = np.random.default_rng(seed)
    vs = np.array([0.358, 0.36, 0.35])
    full = (96, 90, 96)
    fz = np.fft.fftfreq(full[0], d=vs[2]).astype(np.float32)
    fy = np.fft.fftfreq(full[1], d=vs[1]).astype(np.float32)
    fx = np.fft.rfftfreq(full[2], d=vs[0]).astype(np.float32)
    shape = (len(fz), len(fy), len(fx))
    F = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    a, m = rng.uniform(0.5, 3.0, 5), [-2.0 * np.pi ** 2 * v for v in rng.uniform(0.02, 0.4, 5)]
    ds = 1.0 / float((np.array(full) * vs[::-1]).max())
    wt = (np.linspace(0.0, 2.5, 120).astype(np.float32), rng.uniform(0.3, 5.0, 120).astype(np.float32)) if white else None
    args = (a, m, 1.0 / 1.1, 1.0 / (3 * ds))
    Fh = F.copy()
    Kh = gk.atom_filter(Fh, fz, fy, fx, *args, highpass=(0.5 / 8.0, 16.0), white=wt)
    Fd = cp.asarray(F)
    Kd = gk.atom_filter(Fd, fz, fy, fx, *args, highpass=(0.5 / 8.0, 16.0), white=wt)
    np.testing.assert_allclose(_host(Kd), Kh, rtol=1e-5, atol=1e-6 * float(np.abs(Kh).max()))
    np.testing.assert_allclose(_host(Fd), Fh, rtol=1e-5, atol=1e-6 * float(np.abs(Fh).max()))
    top = int(np.sqrt(fz.max() ** 2 + fy.max() ** 2 + fx.max() ** 2) / np.float32(ds))
    dev = gk.rfft_shell_index(cp.asarray(fz), cp.asarray(fy), cp.asarray(fx), ds, top)
    np.testing.assert_array_equal(_host(dev), gk.rfft_shell_index(fz, fy, fx, ds, top))


@pytest.mark.parametrize("seed,p", [(24, 7), (FRESH_SEED, 2)])
def test_solve_normal_parity(cp, seed, p):
    """``ptnp_solve_normal`` (one thread per atom) against the host's batched LAPACK solve."""
    rng = np.random.default_rng(seed)
    n = 3000
    X = rng.normal(size=(n, 20, p))
    X[:, :, 0] = 1.0
    w = rng.uniform(0.2, 1.0, (n, 20))
    y = X @ rng.normal(size=p) + rng.normal(scale=0.3, size=(n, 20))
    ne = gk.NormalEquations(np.einsum("nki,nk,nkj->nij", X, w, X), np.einsum("nki,nk,nk->ni", X, w, y),
                            np.einsum("nk,nk->n", w * y, y), rng.integers(p, 60, n).astype(np.int64))
    host = gk.solve_normal_equations(ne)
    dev = gk.solve_normal_equations(gk.NormalEquations(*(cp.asarray(a) for a in ne)))
    np.testing.assert_array_equal(_host(dev[2]), host[2])
    assert 0 < host[2].sum() < n
    np.testing.assert_allclose(_host(dev[0]), host[0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(_host(dev[1]), host[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", [25, FRESH_SEED])
def test_pair_affine_sums_parity(cp, seed):
    """The strain fit's pair sums: one kernel launch (atomics) against the host's bincounts."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(0.0, 40.0, (4000, 3))
    u = rng.normal(scale=0.05, size=(4000, 3))
    a, b, d2 = gk.cell_pairs(xyz, 6.0)
    w = np.exp(-d2 / 8.0)
    host = gk.pair_affine_sums(xyz, u, a, b, w, 4000)
    dev = gk.pair_affine_sums(*(cp.asarray(v) for v in (xyz, u, a, b, w)), 4000)
    np.testing.assert_allclose(_host(dev), host, rtol=1e-9, atol=1e-9 * float(np.abs(host).max()))
    r = np.linalg.norm(xyz - 20.0, axis=1)
    ur = rng.normal(scale=0.05, size=4000)
    ii, jj, ww = np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([w, w])
    host = gk.radial_fit_sums(ii, jj, ww, r, ur, 4000)
    dev = gk.radial_fit_sums(*(cp.asarray(v) for v in (ii, jj, ww, r, ur)), 4000)
    np.testing.assert_allclose(_host(dev), host, rtol=1e-8, atol=1e-9 * float(np.abs(host).max()))


# ---------------------------------------------------------------------- pipeline stages

@pytest.fixture(scope="module")
def particle():
    from ptnp_gpu.synth import make_particle
    return make_particle(n_atoms=400, seed=3, noise=0.1)


def _optional(name):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.skip(f"{name} is not available yet ({exc})")


def _match(a, b):
    """Distance from each atom of ``a`` to the nearest atom of ``b`` (Å)."""
    from scipy.spatial import cKDTree
    return cKDTree(b).query(a)[0]


def test_detect_atoms_parity(cp, particle):
    detect = _optional("ptnp_gpu.detect")
    dc = detect.detect_atoms(particle.map, "Pt", backend="numpy")
    dg = detect.detect_atoms(particle.map, "Pt", backend="cupy")
    xc, xg = _host(dc.xyz_A), _host(dg.xyz_A)
    assert len(xc) == len(xg) and len(xc) > 0.9 * len(particle.xyz_A)
    assert _match(xc, xg).max() < 1e-3
    assert _match(xg, xc).max() < 1e-3
    np.testing.assert_allclose(dg.threshold, dc.threshold, rtol=1e-4)
    # the per-atom significance and position error (ptnp_gpu.precision), atom for atom
    from scipy.spatial import cKDTree
    j = cKDTree(xg).query(xc)[1]
    np.testing.assert_allclose(dg.significance[j], dc.significance, rtol=1e-4)
    np.testing.assert_allclose(dg.position_sd_A[j], dc.position_sd_A, rtol=1e-4)
    # and the same atoms in the same order (stable sorts, one FFT padding on both backends)
    assert np.abs(xg - xc).max() < 1e-3
    # every stage timed on both (on the device from CUDA events: backend.StageClock)
    assert list(dg.times) == list(dc.times) and all(v >= 0 for v in dg.times.values())


@pytest.mark.parametrize("seed", [5, FRESH_SEED])
def test_precision_parity(cp, seed):
    """Peak Hessians and position errors on a fresh random smooth map at random points."""
    from scipy.ndimage import gaussian_filter

    from ptnp_gpu.precision import peak_hessians, position_sd_A
    rng = np.random.default_rng(seed)
    C = gaussian_filter(rng.normal(size=(40, 44, 48)), 2.0).astype(np.float32)
    C += 0.2                                             # mostly positive: the log fit; some not
    cen = rng.uniform(2, 38, (300, 3))
    vs = np.array([0.33, 0.36, 0.40])
    Hc, vc = peak_hessians(C, cen, vs)
    Hg, vg = peak_hessians(cp.asarray(C), cp.asarray(cen), vs)
    np.testing.assert_allclose(_host(Hg), Hc, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(_host(vg), vc, rtol=1e-6, atol=1e-9)
    g, h = np.array([1.7, 1.6, 1.5]), rng.uniform(0.0, 1.0, 300)
    sc = position_sd_A(Hc, 0.01, g, h, 2.8)
    sg = _host(position_sd_A(cp.asarray(Hc), 0.01, g, cp.asarray(h), 2.8))
    np.testing.assert_allclose(sg, sc, rtol=1e-6, equal_nan=True)


def test_compute_statistics_parity(cp, particle):
    stats = _optional("ptnp_gpu.statistics")
    xyz = particle.xyz_A
    sc = stats.compute_statistics(particle.map, xyz, "Pt", backend="numpy")
    sg = stats.compute_statistics(particle.map, xyz, "Pt", backend="cupy")
    assert sg.backend == "cupy" and sc.backend == "numpy"
    checked = 0
    for name, vc in sc.columns.items():
        vc = np.asarray(vc)
        if vc.dtype.kind not in "fiu":
            continue
        vg = np.asarray(sg.columns[name])
        np.testing.assert_array_equal(np.isfinite(vg), np.isfinite(vc), err_msg=name)
        ok = np.isfinite(vc)
        scale = np.abs(vc[ok]).max(initial=0.0)
        np.testing.assert_allclose(vg[ok], vc[ok], rtol=1e-4, atol=1e-6 * max(scale, 1e-12),
                                   err_msg=name)
        checked += 1
    assert checked > 20
    for key in ("u_iso_A2", "doi", "valid_corr", "intensity_peak_z"):
        assert np.isfinite(sc.columns[key]).mean() > 0.9, key


@pytest.mark.parametrize("seed", [3, FRESH_SEED])
def test_sweep_scores_parity(cp, seed):
    """GPU sweep (thresholds stacked along z, one labelling) vs host sweep (one union-find pass)."""
    from ptnp_gpu.denoise import AtomKernel, denoise_map
    from ptnp_gpu.sweep import _Scorer, sweep_scores
    xyz, shape, vs, kw = _random_atoms(seed, n=250, shape=(40, 44, 42))
    rng = np.random.default_rng(seed)
    vol = simulate.render_atoms(xyz, shape, vs, (0, 0, 0), "Pt", b_extra_A2=8.2, backend="numpy", **kw)
    vol = (vol + rng.normal(scale=0.1 * float(vol.max()), size=shape)).astype(np.float32)
    k = AtomKernel.for_element("Pt", 8.2, vs)
    C, G = denoise_map(vol, vs, k)
    w = np.clip(vol - np.median(vol), 0, None).astype(np.float32)
    ts = np.linspace(0.1, 0.8, 12) * float(C.max())
    r_host, n_host = sweep_scores(C, w, _Scorer(C, G, k, vs), ts, 3)
    Cg, Gg, wg = cp.asarray(C), cp.asarray(G), cp.asarray(w)
    r_dev, n_dev = sweep_scores(Cg, wg, _Scorer(Cg, Gg, k, vs), ts, 3, batch=12)
    np.testing.assert_array_equal(n_dev, n_host)
    np.testing.assert_allclose(r_dev, r_host, rtol=0, atol=1e-6)


@pytest.mark.parametrize("pad_A", [4.0, 10.0])
def test_masked_solvent_and_noise_level_parity(cp, particle, pad_A):
    """The masked-map path of the solvent (distance bands) on both backends."""
    from ptnp_gpu.solvent import _noise_level, _solvent_mask
    d = particle.map.data.astype(np.float32)
    idx = np.stack(np.indices(d.shape), -1)
    r = np.sqrt(((idx - np.array(d.shape) / 2) ** 2).sum(-1)) * 0.358
    radius = np.linalg.norm(particle.xyz_A - particle.center_A, axis=1).max() + pad_A
    d = (d * np.clip((radius + 3.0 - r) / 3.0, 0, 1)).astype(np.float32)
    vs = np.array([0.358] * 3)
    sc, lc, mc = _solvent_mask(d, vs, 6.0)
    sg, lg, mg = _solvent_mask(cp.asarray(d), vs, 6.0)
    assert mc and mg
    assert (_host(sc) != sc).mean() < 1e-3 and (_host(lg) != lc).mean() < 1e-3
    t = float(np.quantile(d, 0.99))
    nc = _noise_level(d, sc, lc, particle_threshold=t, voxel_size_A=vs)
    ng = _noise_level(cp.asarray(d), sg, lg, particle_threshold=t, voxel_size_A=vs)
    np.testing.assert_allclose(ng, nc, rtol=1e-3, atol=1e-9)


def test_map_transfer_parity(cp):
    """The residual rescue's transfer fit (peaks.MapTransfer) on both backends."""
    from ptnp_gpu.peaks import MapTransfer
    rng = np.random.default_rng(FRESH_SEED)
    data = rng.normal(size=(40, 44, 36)).astype(np.float32)
    model = (0.5 * data + rng.normal(size=data.shape)).astype(np.float32)
    vs = (0.36, 0.35, 0.4)
    c, g = MapTransfer(data, vs), MapTransfer(cp.asarray(data), vs)
    _, tc = c.fit(model)
    _, tg = g.fit(cp.asarray(model))
    np.testing.assert_array_equal(_host(g.shell), c.shell)
    np.testing.assert_allclose(g.s_shell, c.s_shell, rtol=1e-12)
    np.testing.assert_allclose(_host(tg), tc, rtol=1e-4, atol=1e-6)
    assert g.sharpened(tg) == c.sharpened(tc)


def test_transfer_corrected_map_parity(cp, particle):
    """The centring map of low-passed maps (peaks.transfer_corrected_map) on both backends."""
    from ptnp_gpu.peaks import MapTransfer, transfer_corrected_map
    raw = particle.map.data[10:60, 12:64, 8:56].astype(np.float32)
    rng = np.random.default_rng(FRESH_SEED)
    cen = rng.uniform(5, 40, (60, 3))
    base = float(np.median(raw))
    vs = np.broadcast_to(np.asarray(particle.map.voxel_size_A, float), (3,))
    c = transfer_corrected_map(raw, cen, base, "Pt", 8.2, MapTransfer(raw - np.float32(base), vs))
    rg = cp.asarray(raw)
    g = transfer_corrected_map(rg, cp.asarray(cen), base, "Pt", 8.2, MapTransfer(rg - np.float32(base), vs))
    scale = float(np.abs(c).max())
    np.testing.assert_allclose(_host(g), c, rtol=1e-4, atol=1e-5 * scale)


def test_array_mean_and_var_parity(cp):
    """The full-array mean and variance of the device path (one grid-wide float64 launch, in
    place on strided crops) against NumPy's on a fresh random map: a crop, a subsampled view,
    booleans, and the dtype NumPy gives each."""
    from ptnp_gpu.gpu_kernels import array_mean, array_var
    rng = np.random.default_rng(FRESH_SEED)
    vol = (rng.normal(size=(40, 36, 44)) * 3.0 + 100.0).astype(np.float32)
    dv = cp.asarray(vol)
    for view in (np.s_[...], np.s_[3:31, 2:30, 5:40], np.s_[::2, ::2, ::2]):
        for dt in (None, np.float64):
            want, got = array_mean(vol[view], dtype=dt), array_mean(dv[view], dtype=dt)
            assert got.dtype == want.dtype and got.ndim == 0
            assert abs(float(_host(got)) / float(want) - 1) < (1e-6 if dt is None else 1e-12)
        want, got = float(array_var(vol[view])), float(_host(array_var(dv[view])))
        assert abs(got / want - 1) < 1e-5 and abs(got / float(vol[view].astype(np.float64).var()) - 1) < 2e-7
    live = vol > 101.0
    assert float(_host(array_mean(cp.asarray(live)))) == pytest.approx(float(live.mean()), rel=1e-14)


@pytest.mark.parametrize("nx", [96, 95])
def test_hermitian_norm2_and_denoise_scale_parity(cp, nx):
    """The spectrum norms behind the denoised map's normalisation, in float64 on both backends:
    equal to 1e-10 relative on a fresh random map (a complex64 vdot summed them in float32, NumPy
    and cuBLAS apart), and so the denoised maps' scales."""
    import scipy.fft
    from ptnp_gpu.denoise import AtomKernel, denoise_map, hermitian_norm2
    rng = np.random.default_rng(FRESH_SEED)
    x = rng.normal(size=(100, 90, nx)).astype(np.float32)
    F = scipy.fft.rfftn(x)
    a = float(hermitian_norm2(F, nx % 2 == 0))
    b = float(_host(hermitian_norm2(cp.asarray(F), nx % 2 == 0)))
    assert abs(b / a - 1) < 1e-10
    k = AtomKernel.for_element("Pt", 8.2, 0.358)
    _, _, sc = denoise_map(x, 0.358, k, want_second=False, return_scale=True)
    _, _, sg = denoise_map(cp.asarray(x), 0.358, k, want_second=False, return_scale=True)
    assert abs(sg / sc - 1) < 1e-6                 # the FFTs' own float32 rounding


@pytest.mark.parametrize("exponent", [1.0, 0.5])
def test_prewhitened_denoise_parity(cp, exponent):
    """The prewhitened filter (full, or by the noise amplitude for sharpened maps) on fresh
    random data: CuPy equals NumPy to float32 FFT rounding (1e-6 of max|C| measured with every
    FFT output perturbed by 1e-6 of its RMS). The H200 run of 2026-11-29 found 1.2e-3 (full) /
    6.6e-4 (amplitude): not rounding but another padded box, as cupyx's next_fast_len takes
    factors of 7 (70 for this map's 68, not 72); the same figures come back on the CPU when the
    map is padded to 7-smooth sizes. The padding is now SciPy's on both backends."""
    from ptnp_gpu.denoise import AtomKernel, denoise_map
    rng = np.random.default_rng(FRESH_SEED)
    vol = rng.normal(size=(40, 44, 36)).astype(np.float32)
    vs = 0.358
    k = AtomKernel.for_element("Pt", 8.2, vs)
    s = np.linspace(0.0, 1.4, 60)
    psd = (s, np.exp(3.0 * s) + rng.uniform(0.0, 0.1, s.size))      # rising, like a sharpened map
    Cc, _ = denoise_map(vol, vs, k, noise_psd=psd, want_second=False, whiten_exponent=exponent)
    Cg, _ = denoise_map(cp.asarray(vol), vs, k, noise_psd=psd, want_second=False, whiten_exponent=exponent)
    np.testing.assert_allclose(_host(Cg), Cc, rtol=0, atol=2e-5 * float(np.abs(Cc).max()))


def test_sharpener_parity(cp):
    """The ladder's filter (one transform of the map, several B) on a fresh random map with a
    prime side: CuPy equals NumPy to float32 FFT rounding, B by B."""
    from ptnp_gpu.deblur import Sharpener
    rng = np.random.default_rng(FRESH_SEED)
    raw = (0.5 + rng.normal(size=(36, 41, 40))).astype(np.float32)
    hc, hg = Sharpener(raw, 0.4), Sharpener(cp.asarray(raw), 0.4)
    for b, res in ((40.0, 1.8), (-20.0, 1.0)):
        c, g = hc(b, res), hg(b, res)
        assert isinstance(g, cp.ndarray) and g.dtype == c.dtype == np.float32
        np.testing.assert_allclose(_host(g), c, rtol=0, atol=1e-5 * float(np.abs(c).max()))


def test_detect_sharpened_map_parity(cp):
    """A blurred map sharpened back (band edge against the highest noise power, half
    whitening): the same atoms on both backends."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from test_detect import _filtered_map
    detect = _optional("ptnp_gpu.detect")
    m, xyz = _filtered_map(1.6, 50.0, 0.1, blur_A2=50.0)
    dc = detect.detect_atoms(m, "Pt", backend="numpy")
    dg = detect.detect_atoms(m, "Pt", backend="cupy")
    assert dg.params["whiten_exponent"] == dc.params["whiten_exponent"] == 0.5
    xc, xg = _host(dc.xyz_A), _host(dg.xyz_A)
    assert len(xc) == len(xg) and len(xc) > 0.95 * len(xyz)
    assert _match(xc, xg).max() < 1e-3 and _match(xg, xc).max() < 1e-3


@pytest.mark.parametrize("seed", [12, FRESH_SEED])
def test_solvent_level_parity(cp, particle, seed):
    """The displacement fits' zero (``ptnp_gpu.baseline``) on a masked map with an offset and a
    gradient: same levels on both backends."""
    from ptnp_gpu.baseline import solvent_level_at_atoms
    rng = np.random.default_rng(seed)
    m = particle.map
    x = np.arange(m.shape[2])[None, None, :] * m.voxel_size_A[0]
    data = (m.data + rng.uniform(-1, 1) + rng.uniform(-0.02, 0.02) * x).astype(np.float32)
    if rng.uniform() < 0.5:
        data[:, :, : m.shape[2] // 6] = 0.0           # a masked slab
    vox = m.xyz_A_to_voxel(particle.xyz_A)
    lc, fc = solvent_level_at_atoms(data, vox, m.voxel_size_A)
    lg, fg = solvent_level_at_atoms(cp.asarray(data), cp.asarray(vox), m.voxel_size_A)
    assert isinstance(lg, cp.ndarray)
    np.testing.assert_allclose(float(fg), float(fc), rtol=1e-6)
    np.testing.assert_allclose(_host(lg), lc, rtol=1e-5, atol=1e-6 * float(np.abs(data).max()))


def test_detect_lattice_rescue_parity(cp):
    """A very mobile surface (U 0.6 Å², noise 0.15, background 0.3), where the lattice rescue seats
    some 27 atoms: the same atoms on both backends."""
    detect = _optional("ptnp_gpu.detect")
    from ptnp_gpu.synth import make_particle
    p = make_particle(n_atoms=500, seed=5, u_surface_A2=0.6, noise=0.15, background=0.3)
    dc = detect.detect_atoms(p.map, "Pt", backend="numpy")
    dg = detect.detect_atoms(p.map, "Pt", backend="cupy")
    assert dc.counts["rescued_lattice"] == dg.counts["rescued_lattice"] > 0
    xc, xg = _host(dc.xyz_A), _host(dg.xyz_A)
    assert len(xc) == len(xg) and _match(xc, xg).max() < 1e-3 and _match(xg, xc).max() < 1e-3
