"""The NumPy backend's FFTs run on several threads and give SciPy's single-thread result."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.fft

from ptnp_gpu import backend as _be


def test_fft_workers_follow_the_environment(monkeypatch):
    monkeypatch.delenv("PTNP_FFT_WORKERS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert _be.fft_workers() >= 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert _be.fft_workers() == 3
    monkeypatch.setenv("PTNP_FFT_WORKERS", "2")              # ours wins over OpenMP's
    assert _be.fft_workers() == 2
    monkeypatch.setenv("PTNP_FFT_WORKERS", "0")
    assert _be.fft_workers() == 1
    monkeypatch.setenv("PTNP_FFT_WORKERS", "many")
    with pytest.raises(ValueError, match="PTNP_FFT_WORKERS"):
        _be.fft_workers()


def test_threaded_transforms_equal_scipy(monkeypatch):
    monkeypatch.setenv("PTNP_FFT_WORKERS", "2")
    fft = _be.get("numpy").fft
    rng = np.random.default_rng(5)
    a = rng.normal(size=(12, 10, 14)).astype(np.float32)
    A = fft.rfftn(a)
    np.testing.assert_array_equal(A, scipy.fft.rfftn(a, workers=1))
    np.testing.assert_array_equal(fft.irfftn(A, s=a.shape), scipy.fft.irfftn(A, s=a.shape, workers=1))
    np.testing.assert_array_equal(fft.fftn(a), scipy.fft.fftn(a, workers=1))
    assert fft.fftfreq is scipy.fft.fftfreq                  # helpers are SciPy's own
    calls = []
    monkeypatch.setattr(_be, "fft_workers", lambda: calls.append(1) or 2)
    fft.rfftn(a, workers=1)                                  # a caller's choice is kept
    fft.rfftn(a)
    assert len(calls) == 1


def test_info_reports_the_cpu_threads(monkeypatch):
    monkeypatch.setenv("PTNP_FFT_WORKERS", "3")
    monkeypatch.setattr(_be, "_DEFAULT", _be.get("numpy"))
    assert _be.info()["cpu_threads"] == 3
