"""The solvent's noise power spectrum: the host's compiled shell sums against the array code."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.fft

from ptnp_gpu import denoise
from ptnp_gpu.host_interp import interp_host


@pytest.mark.parametrize("shape,vs", [((24, 30, 27), (0.358, 0.358, 0.358)),
                                      ((31, 20, 26), (0.3, 0.35, 0.42)),
                                      ((17, 1, 40), (0.5, 0.5, 0.5))])
def test_shell_power_equals_bincount_of_rfft_shells(shape, vs):
    """Σ|F|² and counts per radial shell: bit for bit what rfft_shells and two bincounts give
    (same float32 arithmetic, same summation order), also for anisotropic voxels."""
    rng = np.random.default_rng(sum(shape))
    F = scipy.fft.rfftn(rng.normal(size=shape).astype(np.float32))
    vs = np.asarray(vs, float)
    shell, nb, ds = denoise.rfft_shells(shape, vs, np)
    pw = (F.real ** 2 + F.imag ** 2).astype(np.float32)
    tot = np.bincount(shell.ravel(), weights=pw.ravel().astype(np.float64), minlength=nb)
    cnt = np.bincount(shell.ravel(), minlength=nb).astype(np.float64)
    got_tot, got_cnt, got_ds = denoise._shell_power_host(F, shape, vs)
    assert got_ds == ds and len(got_tot) == nb
    np.testing.assert_array_equal(got_tot, tot)
    np.testing.assert_array_equal(got_cnt, cnt)
    assert got_cnt.sum() == F.size


def test_white_noise_spectrum_is_flat():
    """Uniform white noise in a full solvent mask: a flat profile at the noise variance."""
    rng = np.random.default_rng(3)
    data = rng.normal(0.0, 2.0, (40, 40, 40)).astype(np.float32)
    s, p = denoise.noise_power_spectrum(data, np.ones(data.shape, bool), 0.4)
    assert s[0] == 0.0 and np.all(np.diff(s) > 0)
    band = (s > 0.1) & (s < 1.0)
    np.testing.assert_allclose(p[band], 4.0, rtol=0.15)


def test_host_interp_equals_numpy_interp():
    """The prewhitening gain's interpolation: NumPy's values bit for bit, at the knots, between
    them, off both ends, on a smooth |s| grid and on scattered values; an unsorted table
    falls back to NumPy."""
    rng = np.random.default_rng(8)
    knots = np.sort(rng.uniform(0.0, 2.0, 150)).astype(np.float32)
    gain = rng.uniform(0.5, 3.0, 150).astype(np.float32)
    f = np.fft.fftfreq(40, 0.36).astype(np.float32)
    fx = np.fft.rfftfreq(40, 0.36).astype(np.float32)
    grid = np.sqrt((f[:, None] ** 2 + f[None, :] ** 2)[:, :, None] + (fx ** 2)[None, None, :])
    scattered = rng.uniform(-0.2, 2.3, (9, 11, 13)).astype(np.float32)
    scattered.ravel()[:150] = knots
    scattered.ravel()[150] = knots[-1]
    for x in (grid, scattered):
        got = interp_host(x, knots, gain)
        assert got.shape == x.shape and got.dtype == np.float64
        np.testing.assert_array_equal(got, np.interp(x, knots.astype(np.float64), gain.astype(np.float64)))
    shuffled = knots[::-1].copy()
    np.testing.assert_array_equal(interp_host(grid, shuffled, gain), np.interp(grid, shuffled, gain))


def test_host_interp_on_a_uniform_table_and_unordered_values():
    """The sweep's use: squared distances in no order on a uniform (linspace) table."""
    rng = np.random.default_rng(9)
    grid = np.linspace(0.0, 39.7, 8192)
    table = np.exp(-grid / 3.0) + 0.01 * np.sin(grid)
    d2 = rng.uniform(0.0, 39.7, 200_000)
    d2[:8192] = grid
    d2[8192:8200] = [39.7, 40.0, 0.0, -0.0, 1e-300, 39.7 - 1e-12, grid[1], np.nextafter(grid[5], 0)]
    np.testing.assert_array_equal(interp_host(d2, grid, table), np.interp(d2, grid, table))
    assert interp_host(np.zeros(0), grid, table).shape == (0,)


@pytest.mark.parametrize("nx", [128, 127])
def test_hermitian_norm2_is_parseval_in_float64(nx):
    """Σ|F|² over the full spectrum from the rfft half of a 128³ (and odd-x) random float32 map:
    Parseval's n·Σx², to 1e-10 relative (summed in float64; a complex64 vdot was 8e-6 off at
    this size), and the same for a real filter on the half grid against the full grid's sum."""
    rng = np.random.default_rng(nx)
    x = rng.normal(size=(128, 120, nx)).astype(np.float32)
    F = scipy.fft.rfftn(x)
    assert F.dtype == np.complex64
    got = float(denoise.hermitian_norm2(F, nx % 2 == 0))
    want = x.size * float((x.astype(np.float64) ** 2).sum())
    assert abs(got / want - 1) < 1e-6          # the transform's own float32 rounding
    exact = float((np.abs(F.astype(np.complex128)) ** 2).sum() * 2
                  - (np.abs(F[..., 0].astype(np.complex128)) ** 2).sum()
                  - ((np.abs(F[..., -1].astype(np.complex128)) ** 2).sum() if nx % 2 == 0 else 0.0))
    assert abs(got / exact - 1) < 1e-10
    full = np.fft.fftfreq(nx)
    K = np.exp(-np.abs(np.fft.rfftfreq(nx)))[None, None, :] * np.ones((4, 5, 1), np.float32)
    want_k = float((np.exp(-np.abs(full)) ** 2).sum() * 20)
    assert abs(float(denoise.hermitian_norm2(K.astype(np.float32), nx % 2 == 0)) / want_k - 1) < 1e-6
