"""The NumPy backend's threaded separable filters give SciPy's numbers, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from ptnp_gpu import backend as _be
from ptnp_gpu import host_ndimage as H

RNG = np.random.default_rng(12)
VOL = RNG.random((70, 66, 61)).astype(np.float32)          # above the threading floor
MASK = RNG.random((70, 66, 61)) > 0.7

CASES = {
    "gaussian": lambda m: m.gaussian_filter(VOL, 2.3),
    "gaussian_per_axis_constant": lambda m: m.gaussian_filter(VOL, (1.0, 0.0, 0.6), mode="constant", cval=0.5),
    "gaussian_to_float64": lambda m: m.gaussian_filter(VOL, 1.2, output=np.float64),
    "gaussian_no_axis": lambda m: m.gaussian_filter(VOL, 0.0),
    "uniform": lambda m: m.uniform_filter(VOL, 3),
    "uniform_nearest_sizes": lambda m: m.uniform_filter(VOL, (5, 1, 3), mode="nearest"),
    "uniform_bool": lambda m: m.uniform_filter(MASK, 3, mode="constant"),
    "spline_float32": lambda m: m.spline_filter(VOL, order=3, output=np.float32, mode="nearest"),
    "spline_default": lambda m: m.spline_filter(VOL, order=4),
    # passed to SciPy unchanged
    "gaussian_derivative": lambda m: m.gaussian_filter(VOL, 1.5, order=1),
    "gaussian_small": lambda m: m.gaussian_filter(VOL[:10], 1.5),
    "gaussian_2d": lambda m: m.gaussian_filter(VOL[0], 1.5),
    "uniform_into_array": lambda m: m.uniform_filter(VOL, 3, output=np.empty_like(VOL)),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_threaded_filters_equal_scipy(name, threads, monkeypatch):
    monkeypatch.setenv("PTNP_FFT_WORKERS", threads)
    want = CASES[name](ndi)
    got = CASES[name](H)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_numpy_backend_uses_them():
    nd = _be.get("numpy").ndi
    assert nd.gaussian_filter is H.gaussian_filter and nd.spline_filter is H.spline_filter
    assert nd.label is ndi.label and nd.map_coordinates is ndi.map_coordinates


def test_a_forked_child_filters_with_its_own_threads(monkeypatch):
    """After the parent used the pool, a forked child (multiprocessing's default start method on
    Linux) must not wait on the parent's threads, which it does not have."""
    import multiprocessing as mp
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork here")
    monkeypatch.setenv("PTNP_FFT_WORKERS", "2")
    want = H.gaussian_filter(VOL, 1.7)                    # the parent's pool now exists
    with mp.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_child_filter).get(timeout=60)
    np.testing.assert_array_equal(got, want)


def _child_filter():
    return H.gaussian_filter(VOL, 1.7)
