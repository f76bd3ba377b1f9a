"""``scipy.ndimage`` for the NumPy backend, with its separable filters on several threads.

``gaussian_filter``, ``uniform_filter`` and ``spline_filter`` are runs of 1-D passes, one
axis after another, each pass independent along every line. For large 3-D volumes this
module cuts each pass into slabs across another axis and filters the slabs on
:func:`ptnp_gpu.backend.fft_workers` threads (SciPy's 1-D filters release the GIL). The
passes, their order, the intermediate dtype and each line's arithmetic are SciPy's own, so
the result is bit-identical; anything else (other arguments, small or non-3-D arrays, one
thread) is passed to SciPy unchanged. Every other name is ``scipy.ndimage``'s.
"""
from __future__ import annotations

import types

import numpy as np
import scipy.ndimage as _ndi

from .host_parallel import thread_pool

__all__ = ["module", "gaussian_filter", "uniform_filter", "spline_filter"]

_MIN_VOXELS = 1 << 18            # smaller volumes: one thread (slabs cost more than they save)


def _threads() -> int:
    from .backend import fft_workers
    return fft_workers()


def _pool(n: int):
    return thread_pool("ndimage", n)


def _passes(src, out, axes_args, one_pass, n):
    """Run ``one_pass(src_slab, axis, args, out_slab)`` for each (axis, args), in order, on
    slabs across the largest other axis; ``src`` becomes ``out`` after the first pass."""
    pool = _pool(n)
    for axis, args in axes_args:
        other = max((a for a in range(3) if a != axis), key=lambda a: out.shape[a])
        edges = np.linspace(0, out.shape[other], n + 1).astype(int)
        jobs = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            if hi > lo:
                sl = [slice(None)] * 3
                sl[other] = slice(lo, hi)
                sl = tuple(sl)
                jobs.append(pool.submit(one_pass, src[sl], axis, args, out[sl]))
        for j in jobs:
            j.result()
        src = out
    return out


def _threaded(input, output, ndim_ok=True):
    """How many threads to use for this call (1: leave it to SciPy)."""
    if not (isinstance(input, np.ndarray) and input.ndim == 3 and ndim_ok and input.size >= _MIN_VOXELS
            and input.dtype.kind in "fiub"):
        return 1
    if output is not None and (isinstance(output, np.ndarray) or not _is_dtype(output)):
        return 1
    return _threads()


def _is_dtype(x) -> bool:
    try:
        np.dtype(x)
    except TypeError:
        return False
    return True


def _seq(v, n=3):
    if np.ndim(v) == 0:
        return [v] * n
    v = list(v)
    if len(v) != n:
        raise RuntimeError("sequence argument must have length equal to input rank")
    return v


def gaussian_filter(input, sigma, order=0, output=None, mode="reflect", cval=0.0, truncate=4.0, *,
                    radius=None, axes=None):
    """:func:`scipy.ndimage.gaussian_filter`, its passes on several threads (same numbers)."""
    n = _threaded(input, output, ndim_ok=(order == 0 and radius is None and axes is None
                                          and isinstance(mode, str)))
    if n < 2:
        return _ndi.gaussian_filter(input, sigma, order=order, output=output, mode=mode, cval=cval,
                                    truncate=truncate, radius=radius, axes=axes)
    sig = _seq(sigma)
    out = np.zeros(input.shape, dtype=input.dtype if output is None else np.dtype(output))
    todo = [(ax, float(s)) for ax, s in enumerate(sig) if s > 1e-15]
    if not todo:
        out[...] = input
        return out

    def one(src, axis, s, dst):
        _ndi.gaussian_filter1d(src, s, axis=axis, output=dst, mode=mode, cval=cval, truncate=truncate)
    return _passes(input, out, todo, one, n)


def uniform_filter(input, size=3, output=None, mode="reflect", cval=0.0, origin=0, *, axes=None):
    """:func:`scipy.ndimage.uniform_filter`, its passes on several threads (same numbers)."""
    n = _threaded(input, output, ndim_ok=(axes is None and isinstance(mode, str) and np.ndim(origin) == 0))
    if n < 2:
        return _ndi.uniform_filter(input, size=size, output=output, mode=mode, cval=cval, origin=origin,
                                   axes=axes)
    out = np.zeros(input.shape, dtype=input.dtype if output is None else np.dtype(output))
    todo = [(ax, int(s)) for ax, s in enumerate(_seq(size)) if s > 1]
    if not todo:
        out[...] = input
        return out

    def one(src, axis, s, dst):
        _ndi.uniform_filter1d(src, s, axis=axis, output=dst, mode=mode, cval=cval, origin=origin)
    return _passes(input, out, todo, one, n)


def spline_filter(input, order=3, output=np.float64, mode="mirror"):
    """:func:`scipy.ndimage.spline_filter`, its passes on several threads (same numbers)."""
    n = _threaded(input, output, ndim_ok=(order in (2, 3, 4, 5) and input.dtype.kind in "fiu"
                                          if isinstance(input, np.ndarray) else False))
    if n < 2:
        return _ndi.spline_filter(input, order=order, output=output, mode=mode)
    out = np.zeros(input.shape, dtype=np.dtype(output))

    def one(src, axis, o, dst):
        _ndi.spline_filter1d(src, o, axis=axis, output=dst, mode=mode)
    return _passes(input, out, [(ax, order) for ax in range(3)], one, n)


def overlay(base, name: str, doc: str, **replaced) -> types.ModuleType:
    """A module holding every public name of ``base`` (an ndimage module), ``replaced`` over them."""
    mod = types.ModuleType(name, doc)
    for attr in dir(base):
        if not attr.startswith("_"):
            setattr(mod, attr, getattr(base, attr))
    for attr, fn in replaced.items():
        setattr(mod, attr, fn)
    return mod


def module() -> types.ModuleType:
    """A module with every ``scipy.ndimage`` name, the three filters above replaced."""
    return overlay(_ndi, "ptnp_gpu.host_ndimage.ndimage", "scipy.ndimage, separable filters threaded",
                   gaussian_filter=gaussian_filter, uniform_filter=uniform_filter, spline_filter=spline_filter)
