"""Array backend: CuPy on a usable NVIDIA GPU, NumPy/SciPy otherwise.

The default backend is chosen once, at import: ``PTNP_BACKEND=numpy|cupy``
forces it; otherwise CuPy is used when it imports and a CUDA device answers.
Library functions never pick a backend themselves: they take the namespace of
their input arrays (:func:`namespace`), so the same code runs on both, and a
caller moves data to the device once (:func:`asarray`) and back once
(:func:`to_host`).
"""
from __future__ import annotations

import ctypes
import functools
import itertools
import os
import sys
import threading
import time
import types
from dataclasses import dataclass

import numpy as np

from .host_parallel import thread_pool

__all__ = ["Backend", "default", "fft_workers", "get", "resolve", "namespace", "asarray", "upload_volume",
           "to_host", "cupy_available", "info", "synchronize", "kernel_cache_dir", "kernel_cache_is_cold"]


@dataclass(frozen=True)
class Backend:
    """One array backend: array module, ndimage, fft and a name."""
    name: str
    xp: types.ModuleType
    ndi: types.ModuleType
    fft: types.ModuleType

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"


def fft_workers() -> int:
    """Threads of the NumPy backend's FFTs and separable filters (:mod:`ptnp_gpu.host_ndimage`):
    ``PTNP_FFT_WORKERS``, else ``OMP_NUM_THREADS`` (the limit batch workers and benchmarks set),
    else the cores this process may run on. Both split into independent 1-D passes, so the
    result does not depend on it."""
    for var in ("PTNP_FFT_WORKERS", "OMP_NUM_THREADS"):
        v = os.environ.get(var, "").strip()
        if v:
            try:
                return max(1, int(v))
            except ValueError:
                raise ValueError(f"{var}={v!r}: expected a whole number of threads") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                              # not Linux
        return max(1, os.cpu_count() or 1)


def _threaded_fft() -> types.ModuleType:
    """``scipy.fft`` whose transforms run on :func:`fft_workers` threads unless the caller
    passes ``workers`` (SciPy's own default is one thread); everything else is SciPy's."""
    import inspect

    import scipy.fft
    mod = types.ModuleType("ptnp_gpu.backend.fft", "scipy.fft on several threads (see fft_workers)")

    def threaded(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            if "workers" not in kwargs:
                kwargs["workers"] = fft_workers()
            return fn(*args, **kwargs)
        return call

    for name in scipy.fft.__all__:
        fn = getattr(scipy.fft, name)
        try:
            takes = callable(fn) and "workers" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            takes = False
        setattr(mod, name, threaded(fn) if takes else fn)
    return mod


def _numpy_backend() -> Backend:
    from .host_ndimage import module as threaded_ndimage
    return Backend("numpy", np, threaded_ndimage(), _threaded_fft())


_CUPY_ERROR: str | None = None


def _cupy_backend() -> Backend | None:
    global _CUPY_ERROR
    try:
        import cupy
        import cupyx.scipy.fft
        import cupyx.scipy.ndimage
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device")
        cupy.zeros(1).sum().item()  # a real allocation and kernel launch
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
        _CUPY_ERROR = f"{type(exc).__name__}: {exc}"
        return None
    # cupyx.scipy.ndimage, its Gaussian and uniform filters one custom launch per axis
    from .device_ndimage import module as fused_ndimage
    return Backend("cupy", cupy, fused_ndimage(), cupyx.scipy.fft)


_BACKENDS: dict[str, Backend | None] = {}


def get(name: str) -> Backend:
    """Return the backend called ``name`` ("numpy" or "cupy").

    Raises
    ------
    ValueError
        For an unknown name.
    RuntimeError
        When CuPy is asked for but no usable GPU is present.
    """
    name = name.lower()
    if name not in ("numpy", "cupy"):
        raise ValueError(f"unknown backend {name!r}; expected 'numpy' or 'cupy'")
    if name not in _BACKENDS:
        _BACKENDS[name] = _numpy_backend() if name == "numpy" else _cupy_backend()
    be = _BACKENDS[name]
    if be is None:
        raise RuntimeError(f"CuPy backend is not usable here ({_CUPY_ERROR})")
    return be


def cupy_available() -> bool:
    """True when CuPy imports and a CUDA device runs a kernel."""
    try:
        get("cupy")
    except RuntimeError:
        return False
    return True


def _choose_default() -> Backend:
    forced = os.environ.get("PTNP_BACKEND", "").strip().lower()
    if forced:
        return get(forced)
    return get("cupy") if cupy_available() else get("numpy")


_DEFAULT: Backend | None = None


def default() -> Backend:
    """The backend chosen at import (see module docstring)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = _choose_default()
    return _DEFAULT


def resolve(backend: Backend | str | None = None) -> Backend:
    """``backend`` as a :class:`Backend`: None is the import-time choice, a name goes
    through :func:`get`, a Backend is returned as it is."""
    if backend is None:
        return default()
    return get(backend) if isinstance(backend, str) else backend


def namespace(*arrays) -> Backend:
    """Backend that owns ``arrays`` (CuPy if any is a CuPy array)."""
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("cupy"):
            return get("cupy")
    return get("numpy")


def asarray(a, backend: Backend | str | None = None, dtype=None):
    """Move ``a`` to ``backend`` (default: the import-time choice)."""
    return resolve(backend).xp.asarray(a, dtype=dtype)


_UPLOAD_CHUNK_BYTES = 4 << 20     # staged and sent in pieces of this size
_UPLOAD_MIN_BYTES = 4 << 20       # below this (a 100³ float32 map), one staging copy costs little more
_UPLOAD_KEEP: list = []           # (event, pinned buffer) of uploads whose copies may still run
_UPLOAD_LOCK = threading.Lock()


def upload_volume(a, xp, dtype=np.float32):
    """A host volume on the device of ``xp`` as a C-ordered ``dtype`` array (``xp.asarray``
    for NumPy, device arrays and small arrays).

    ``cupy.asarray`` of a host array stages it whole into pinned memory on one thread, then
    starts one copy to the device: two passes in series (12 ms for a 256³ float32 map on the
    H200 machine, 5.5 GB/s). Here :func:`_staged_upload` stages it in pieces on a few threads
    (NumPy releases the GIL in the copy; a float64 map is converted on the way) and starts each
    piece's copy to the device as soon as that piece is staged, so staging and transfer overlap.
    The values are the same.
    """
    if sys.modules.get("cupy") is not xp or not isinstance(a, np.ndarray) or a.ndim == 0 \
            or a.nbytes < _UPLOAD_MIN_BYTES or a.dtype.kind not in "fiu":
        return xp.asarray(a, dtype=dtype)
    return _staged_upload(a, xp, dtype)


def _staged_upload(a, xp, dtype):
    """:func:`upload_volume`'s pinned, piecewise copy (``xp``: CuPy, or a stand-in with its
    ``empty``, ``cuda.alloc_pinned_memory``, ``cuda.get_current_stream`` and pointer API)."""
    _release_uploads()      # earlier uploads' buffers back to the pool first, to be reused here
    src = a.reshape(-1) if a.flags.c_contiguous else np.ravel(a, order="C")   # a view when it can
    out = xp.empty(a.shape, dtype=dtype)
    itemsize = np.dtype(dtype).itemsize
    mem = xp.cuda.alloc_pinned_memory(out.size * itemsize)     # CuPy's pinned pool: reused warm
    stage = np.frombuffer(mem, dtype=dtype, count=out.size)
    step = max(1, _UPLOAD_CHUNK_BYTES // itemsize)
    bounds = [(i, min(i + step, out.size)) for i in range(0, out.size, step)]
    pool = thread_pool("upload", min(4, max(1, (os.cpu_count() or 2) // 2)))
    fills = [pool.submit(np.copyto, stage[i:j], src[i:j], casting="unsafe") for i, j in bounds]
    stream = xp.cuda.get_current_stream()
    for (i, j), fill in zip(bounds, fills):
        fill.result()
        # a ctypes pointer: what every CuPy version takes (newer ones also take an int)
        (out.data + i * itemsize).copy_from_host_async(ctypes.c_void_p(mem.ptr + i * itemsize),
                                                       (j - i) * itemsize, stream)
    # the buffer returns to the pool (and may be staged into again) only after the copies read it
    done = stream.record()
    with _UPLOAD_LOCK:
        _UPLOAD_KEEP.append((done, mem))
    return out


def _release_uploads() -> None:
    """Drop the pinned buffers of uploads whose copies have finished."""
    with _UPLOAD_LOCK:
        _UPLOAD_KEEP[:] = [(ev, m) for ev, m in _UPLOAD_KEEP if not ev.done]


def to_host(a):
    """Return ``a`` as a NumPy array (a device-to-host copy for CuPy)."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


def is_device_out_of_memory(exc: BaseException) -> bool:
    """True for CuPy's out-of-memory errors (the memory pool's, and cuFFT / cuBLAS failing to
    allocate their work areas), told apart by type and message so CuPy need not be imported."""
    mod, name = type(exc).__module__, type(exc).__name__
    if not mod.startswith("cupy"):
        return False
    return name == "OutOfMemoryError" or "ALLOC_FAILED" in str(exc) or "out of memory" in str(exc).lower()


def free_device_memory() -> None:
    """Return the blocks CuPy's memory pools cache to the device (no-op without CuPy)."""
    cupy = sys.modules.get("cupy")
    if cupy is None:
        return
    try:
        cupy.get_default_memory_pool().free_all_blocks()
        cupy.get_default_pinned_memory_pool().free_all_blocks()
    except Exception:  # noqa: BLE001 - best effort after an error
        pass


def synchronize(backend: Backend | None = None) -> None:
    """Wait for the work queued on this thread's current CUDA stream (no-op on NumPy).

    For timing only. Only the current stream: threads that each run their own
    stream (the benchmark's stream of maps) do not wait for one another.
    """
    be = backend or default()
    if be.is_gpu:
        be.xp.cuda.get_current_stream().synchronize()


class StageClock:
    """Wall time per stage of a computation, without making the host wait for the device.

    ``lap(name)`` closes a stage; ``times()`` returns ``{name: seconds}``. On NumPy: host
    ``perf_counter`` deltas. On CuPy each lap records a CUDA event on the current stream and
    ``times()`` waits for the last one only: a stage's time is the device timeline between its
    events, which covers the stage's kernels and any wait for the host to queue them. A
    synchronising lap (the former way) made the host wait at every stage boundary, so none of
    its Python overlapped the device's queue (7 host reads of a detection).
    """

    def __init__(self, backend: Backend):
        self._gpu = backend.is_gpu
        self._xp = backend.xp
        self._names: list[str] = []
        self._marks: list = []
        self._start = self._mark()

    def _mark(self):
        if not self._gpu:
            return time.perf_counter()
        ev = self._xp.cuda.Event()
        ev.record()
        return ev

    def lap(self, name: str) -> None:
        self._names.append(name)
        self._marks.append(self._mark())

    def times(self) -> dict:
        if not self._marks:
            return {}
        if self._gpu:
            self._marks[-1].synchronize()
            ms = [self._xp.cuda.get_elapsed_time(a, b) for a, b in zip([self._start] + self._marks[:-1], self._marks)]
            dts = [v / 1e3 for v in ms]
        else:
            dts = list(np.diff([self._start] + self._marks))
        out = {}
        for name, dt in zip(self._names, dts):
            out[name] = out.get(name, 0.0) + float(dt)
        return out


# files in CuPy's kernel cache below which a GPU run is taken to be this machine's first
# (one warm analyze leaves several hundred: 125 s of compiling for a 128³ map on an H200's host)
COLD_CACHE_FILES = 50


def kernel_cache_dir() -> str | None:
    """Where CuPy keeps the kernels it compiles: ``CUPY_CACHE_DIR``, else
    ``~/.cupy/kernel_cache`` (CuPy's own rule); None with ``CUPY_CACHE_IN_MEMORY=1``
    (nothing is kept between processes)."""
    if os.environ.get("CUPY_CACHE_IN_MEMORY", "0") not in ("", "0"):
        return None
    return os.environ.get("CUPY_CACHE_DIR") or os.path.expanduser(os.path.join("~", ".cupy", "kernel_cache"))


def kernel_cache_is_cold(path: str | None = None, min_files: int = COLD_CACHE_FILES) -> bool:
    """True when CuPy's kernel cache (``path``, default :func:`kernel_cache_dir`) holds
    fewer than ``min_files`` files: the next GPU run compiles most of its kernels first
    (minutes, once per machine and CuPy version). Reads the folder only; no CuPy import."""
    path = kernel_cache_dir() if path is None else path
    if path is None:
        return True
    try:
        with os.scandir(path) as it:
            return sum(1 for _ in itertools.islice(it, min_files)) < min_files
    except OSError:             # no cache yet
        return True


def info() -> dict:
    """Backend, device and library versions, for ``ptnp info`` and summaries."""
    import scipy
    out = {"backend": default().name, "numpy": np.__version__, "scipy": scipy.__version__}
    for mod in ("numba", "mrcfile", "gemmi", "cupy"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except Exception:  # noqa: BLE001
            out[mod] = None
    if default().is_gpu:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        out["device"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        out["device_memory_GiB"] = round(props["totalGlobalMem"] / 2**30, 1)
        out["kernel_cache"] = kernel_cache_dir()
        out["kernel_cache_cold"] = kernel_cache_is_cold()
    else:
        out["device"] = f"CPU ({os.cpu_count()} logical cores)"
        out["cpu_threads"] = fft_workers()          # FFTs and separable filters of the NumPy backend
        if _CUPY_ERROR:
            out["cupy_unusable_because"] = _CUPY_ERROR
    return out
