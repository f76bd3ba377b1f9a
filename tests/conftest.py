"""Shared test configuration: the ``gpu`` marker skips without a usable GPU."""
from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    gpu_items = [it for it in items if it.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    from ptnp_gpu.backend import cupy_available
    if cupy_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA device (ptnp_gpu.backend.cupy_available() is False)")
    for it in gpu_items:
        it.add_marker(skip)
