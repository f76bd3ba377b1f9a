"""``cupyx.scipy.ndimage`` for the CuPy backend, its Gaussian and uniform filters one launch per axis.

cupyx runs each 1-D pass of a separable filter through several Python layers, builds its
weights on the host and uploads them on every call: about 0.2 ms of host time per pass on
the H200's host, 42 passes in a 256³ ``analyze``. Here a pass is one launch of
``ptnp_filter1d`` (:func:`ptnp_gpu.gpu_kernels.filter1d_pass`) with weights uploaded once per
device and kept. The passes, their order, the weights (SciPy's ``_gaussian_kernel1d``, and
``1/size`` for the uniform filter) and the intermediate rounding to the output type are
SciPy's; each sum is accumulated in float64 as SciPy's line buffers are (cupyx sums float32
input in float32). Arguments outside what the kernel does (``order`` > 0, ``radius``,
``axes``, an ``output`` array, mode ``grid-*``, a uniform ``origin``, other input types or
dimensions) go to cupyx unchanged. Every other name is cupyx's.
"""
from __future__ import annotations

import collections
import types

import numpy as np

from . import backend as _be
from .host_ndimage import _seq, overlay          # SciPy's per-axis argument rule; the module overlay

__all__ = ["module", "gaussian_filter", "uniform_filter", "gaussian_weights"]

_MODES = {"reflect": 0, "constant": 1, "nearest": 2, "mirror": 3, "wrap": 4}
_WEIGHTS: collections.OrderedDict = collections.OrderedDict()   # (device, kind, ...) → device array
_WEIGHTS_MAX = 64


def gaussian_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The correlation weights of SciPy's ``gaussian_filter1d`` (order 0): ``2 r + 1`` values,
    ``r = int(truncate * sigma + 0.5)``, float64."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    return (phi / phi.sum())[::-1].copy()


def _device_id(xp) -> int:
    try:
        return int(xp.cuda.Device().id)
    except Exception:  # noqa: BLE001 - no device query (an emulated device): one cache
        return -1


def _weights(xp, key, make):
    """Device weights for ``key``, made by ``make()`` (host) and uploaded once per device."""
    k = (_device_id(xp), id(xp)) + key
    w = _WEIGHTS.get(k)
    if w is None:
        w = xp.asarray(make())
        _WEIGHTS[k] = w
        if len(_WEIGHTS) > _WEIGHTS_MAX:
            _WEIGHTS.popitem(last=False)
    else:
        _WEIGHTS.move_to_end(k)
    return w


def _out_dtype(input, output):
    """The output dtype, or None where the kernel path does not apply."""
    if not (_be.namespace(input).is_gpu and input.ndim == 3 and input.dtype in (np.float32, np.float64)):
        return None
    if output is None:
        return input.dtype
    try:
        dt = np.dtype(output)
    except TypeError:               # an output array: cupyx writes into it
        return None
    return dt if dt in (np.float32, np.float64) else None


def _run(input, out_dtype, passes, mode, cval):
    """Apply ``passes`` = [(axis, weights, left)] in order; the last lands in the returned array."""
    from .gpu_kernels import filter1d_pass
    xp = _be.namespace(input).xp
    src = xp.ascontiguousarray(input)
    out = xp.empty(src.shape, dtype=out_dtype)
    if not passes:
        out[...] = src
        return out
    tmp = xp.empty_like(out) if len(passes) > 1 else None
    for i, (axis, w, left) in enumerate(passes):
        dst = out if (len(passes) - 1 - i) % 2 == 0 else tmp
        filter1d_pass(src, dst, axis, w, left, _MODES[mode], cval)
        src = dst
    return out


def _cupyx(name):
    import cupyx.scipy.ndimage
    return getattr(cupyx.scipy.ndimage, name)


def gaussian_filter(input, sigma, order=0, output=None, mode="reflect", cval=0.0, truncate=4.0, *,
                    radius=None, axes=None):
    """:func:`cupyx.scipy.ndimage.gaussian_filter`, one ``ptnp_filter1d`` launch per axis."""
    dt = _out_dtype(input, output)
    if (dt is None or radius is not None or axes is not None or np.ndim(order) or order != 0
            or not (isinstance(mode, str) and mode in _MODES)):
        return _cupyx("gaussian_filter")(input, sigma, order=order, output=output, mode=mode, cval=cval,
                                         truncate=truncate, radius=radius, axes=axes)
    xp = _be.namespace(input).xp
    passes = []
    for axis, s in enumerate(_seq(sigma)):
        s = float(s)
        if s > 1e-15:
            w = _weights(xp, ("gauss", s, float(truncate)), lambda s=s: gaussian_weights(s, truncate))
            passes.append((axis, w, int(w.shape[0]) // 2))
    return _run(input, dt, passes, mode, float(cval))


def uniform_filter(input, size=3, output=None, mode="reflect", cval=0.0, origin=0, *, axes=None):
    """:func:`cupyx.scipy.ndimage.uniform_filter`, one ``ptnp_filter1d`` launch per axis."""
    dt = _out_dtype(input, output)
    if (dt is None or axes is not None or np.ndim(origin) or origin != 0
            or not (isinstance(mode, str) and mode in _MODES)):
        return _cupyx("uniform_filter")(input, size=size, output=output, mode=mode, cval=cval, origin=origin,
                                        axes=axes)
    xp = _be.namespace(input).xp
    passes = []
    for axis, s in enumerate(_seq(size)):
        s = int(s)
        if s > 1:
            w = _weights(xp, ("uniform", s), lambda s=s: np.full(s, 1.0 / s))
            passes.append((axis, w, s // 2))
    return _run(input, dt, passes, mode, float(cval))


def module() -> types.ModuleType:
    """A module with every ``cupyx.scipy.ndimage`` name, the two filters above replaced."""
    import cupyx.scipy.ndimage as cndi
    return overlay(cndi, "ptnp_gpu.device_ndimage.ndimage", "cupyx.scipy.ndimage, separable filters fused",
                   gaussian_filter=gaussian_filter, uniform_filter=uniform_filter)
