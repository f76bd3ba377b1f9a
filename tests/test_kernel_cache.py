"""The first GPU run is announced: CuPy's kernel cache is read (no CuPy needed)."""
from __future__ import annotations

import numpy as np

from ptnp_gpu import backend as _be
from ptnp_gpu.pipeline import _say_if_cold_gpu

GPU_LIKE = _be.Backend("cupy", np, None, None)     # what the message logic sees of a GPU backend


def _fill(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"k{i}.cubin").write_bytes(b"x")


def test_cache_folder_follows_cupy_rules(monkeypatch, tmp_path):
    monkeypatch.delenv("CUPY_CACHE_IN_MEMORY", raising=False)
    monkeypatch.setenv("CUPY_CACHE_DIR", str(tmp_path / "c"))
    assert _be.kernel_cache_dir() == str(tmp_path / "c")
    monkeypatch.delenv("CUPY_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _be.kernel_cache_dir() == str(tmp_path / ".cupy" / "kernel_cache")
    monkeypatch.setenv("CUPY_CACHE_IN_MEMORY", "1")
    assert _be.kernel_cache_dir() is None and _be.kernel_cache_is_cold()


def test_cold_until_the_cache_holds_enough_kernels(tmp_path):
    c = tmp_path / "cache"
    assert _be.kernel_cache_is_cold(str(c))                 # no folder yet
    _fill(c, _be.COLD_CACHE_FILES - 1)
    assert _be.kernel_cache_is_cold(str(c))
    _fill(c, _be.COLD_CACHE_FILES)
    assert not _be.kernel_cache_is_cold(str(c))


def test_first_gpu_run_is_announced_once_the_cache_is_warm_not(monkeypatch, tmp_path):
    monkeypatch.delenv("CUPY_CACHE_IN_MEMORY", raising=False)
    c = tmp_path / "cache"
    monkeypatch.setenv("CUPY_CACHE_DIR", str(c))
    said = []
    _say_if_cold_gpu(GPU_LIKE, said.append)
    assert len(said) == 1 and "compiled once" in said[0] and str(c) in said[0]
    _say_if_cold_gpu("numpy", said.append)                  # the CPU backend compiles nothing
    assert len(said) == 1
    _fill(c, _be.COLD_CACHE_FILES)
    _say_if_cold_gpu(GPU_LIKE, said.append)
    assert len(said) == 1
