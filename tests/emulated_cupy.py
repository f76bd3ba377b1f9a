"""pytest plugin: the ``gpu`` tests on the emulated device, on a machine without a GPU.

    PYTHONPATH=tests python -m pytest -p emulated_cupy -m gpu tests/

While the session runs, :func:`ptnp_gpu.device_emulation.emulate` stands in for CuPy: the
library's CuPy path runs on the host (custom kernels through their CPU twins), ``import
cupy`` in a test gets the emulated namespace (``cupy.ndarray`` is the emulated array type)
and the ``gpu`` marker no longer skips. What this checks is the tests' own code and the CuPy
path's logic (argument handling, device/host boundaries, the pipeline's stages) before a
device session spends its time on them; it says nothing of the kernels themselves, which
``test_kernels.py`` builds for the host and NVRTC builds for sm_90.

Tests that need what the emulation does not have are skipped, with the reason (see
``UNSUPPORTED``). ``test_gpu_tests_emulated.py`` runs this in CI with a fixed fresh seed.
"""
from __future__ import annotations

import sys

import pytest

# test name (prefix) -> what the emulated device lacks
UNSUPPORTED = {
    "test_linear_at_parity": "the emulated linear_at is SciPy's map_coordinates, not the kernel's twin "
                             "(they differ in the last bit; test_kernels checks the kernel)",
    "test_upload_volume_equals_asarray_on_the_device": "pinned host memory (cupy.cuda.alloc_pinned_memory)",
    "test_gpu_batch_runs_on_the_gpu": "cupy.cuda.runtime (device queries)",
    "test_tomography_parity_cupy": "cupyx.scipy (the emulation provides only cupyx.scatter_*)",
}

_STATE: dict = {}


class _CupyModule:
    """``import cupy`` in a test: the emulated namespace. Not the backend's own ``xp`` object,
    so :func:`ptnp_gpu.backend.upload_volume` takes its plain ``xp.asarray`` path."""

    def __init__(self, xp):
        self._xp = xp

    def __getattr__(self, name):
        return getattr(self._xp, name)


def pytest_configure(config):
    from ptnp_gpu import backend as _be
    from ptnp_gpu import device_emulation as de
    ctx = de.emulate()
    audit = ctx.__enter__()
    xp = audit.backend.xp
    xp.ndarray = de.EmulatedArray
    xp.get_array_module = lambda *arrays: xp
    _STATE.update(ctx=ctx, cupy=sys.modules.get("cupy"), available=_be.cupy_available)
    _be.cupy_available = lambda: True
    sys.modules["cupy"] = _CupyModule(xp)


def pytest_unconfigure(config):
    if "ctx" not in _STATE:
        return
    from ptnp_gpu import backend as _be
    _STATE["ctx"].__exit__(None, None, None)
    _be.cupy_available = _STATE["available"]
    if _STATE["cupy"] is None:
        sys.modules.pop("cupy", None)
    else:
        sys.modules["cupy"] = _STATE["cupy"]
    _STATE.clear()


def pytest_collection_modifyitems(config, items):
    for it in items:
        for name, why in UNSUPPORTED.items():
            if it.name.startswith(name):
                it.add_marker(pytest.mark.skip(reason=f"emulated device: {why}"))
