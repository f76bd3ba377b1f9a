"""CPU twin of ``filter1d.cu``: one separable-filter pass along one axis, in Numba.

``out[i] = Σ_k w[k] · in[i + (k − left) along the axis]`` accumulated in float64 and rounded
once to the output type, samples outside the axis by scipy.ndimage's modes (0 reflect,
1 constant, 2 nearest, 3 mirror, 4 wrap): the kernel's arithmetic, one z plane per thread.
The NumPy backend filters with SciPy (:mod:`ptnp_gpu.host_ndimage`); this twin is the
reference the kernel is tested against.
"""
from __future__ import annotations

import numba as nb
import numpy as np
from ptnp_gpu.host_parallel import thread_safe

__all__ = ["filter1d_cpu", "MODES"]

MODES = {"reflect": 0, "constant": 1, "nearest": 2, "mirror": 3, "wrap": 4}


@nb.njit(cache=True, inline="always")
def _index(j, L, mode):
    if mode == 1:
        return -1
    if mode == 2:
        return 0 if j < 0 else L - 1
    if L == 1:
        return 0
    if mode == 4:
        return j % L                      # Python's modulo: never negative
    period = 2 * L - 2 if mode == 3 else 2 * L
    j = j % period
    if j >= L:
        j = (2 * L - 2 if mode == 3 else 2 * L - 1) - j
    return j


@thread_safe
@nb.njit(parallel=True, cache=True)
def _pass(src, out, nz, ny, nx, axis, w, left, mode, cval):
    s = 1 if axis == 2 else (nx if axis == 1 else nx * ny)
    L = nx if axis == 2 else (ny if axis == 1 else nz)
    for z in nb.prange(nz):
        for r in range(ny * nx):
            i = z * ny * nx + r
            p = (i // s) % L
            line = i - p * s
            acc = 0.0
            for k in range(w.shape[0]):
                j = p + k - left
                if j < 0 or j >= L:
                    j = _index(j, L, mode)
                v = cval if j < 0 else np.float64(src[line + j * s])
                acc += w[k] * v
            out[i] = acc


def filter1d_cpu(src, out, axis: int, weights, left: int, mode: int, cval: float = 0.0):
    """One pass into ``out`` (same shape as ``src``; its dtype is the output type)."""
    nz, ny, nx = src.shape
    _pass(np.ascontiguousarray(src).ravel(), out.reshape(-1), nz, ny, nx, int(axis),
          np.asarray(weights, dtype=np.float64), int(left), int(mode), float(cval))
    return out
