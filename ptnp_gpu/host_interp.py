"""``np.interp`` for large NumPy inputs: the same numbers, compiled and on every core.

Two hot interpolations of detection run on the host with the NumPy backend: the
prewhitening gain over the rfft grid (millions of |s| values, neighbours close together)
and the sweep's tabulated K⋆K over every atom pair (millions of squared distances in
no order, on a uniform table: :func:`interp_at` in the pair sums' Numba twin). NumPy's ``interp`` is single-threaded and, for values in
no order, binary-searches each one. :func:`interp_host` keeps NumPy's formula and edge
rules (so its output is bit-identical) and finds each value's interval from the previous
value's, then from the table's mean spacing, then by bisection.
"""
from __future__ import annotations

import numba as nb
import numpy as np
from .host_parallel import thread_safe

__all__ = ["interp_host", "interp_at"]


@nb.njit(cache=True, inline="always")
def interp_at(v, xp_, fp, j, inv_h):
    """``np.interp`` of one float64 ``v`` (its formula and edge rules: left of the table fp[0],
    at or right of its end fp[-1]), starting the interval search at ``j`` (a previous value's),
    then the uniform-table guess (``inv_h``: (m − 1) / the table's span), then bisection.
    Returns (value, interval)."""
    m = xp_.shape[0]
    if v < xp_[0]:
        return fp[0], j
    if v >= xp_[m - 1]:
        return fp[m - 1], j
    if not (xp_[j] <= v < xp_[j + 1]):
        j = min(max(np.int64((v - xp_[0]) * inv_h), 0), m - 2)   # exact on a uniform table
        if not (xp_[j] <= v < xp_[j + 1]):
            lo, hi = 0, m - 1                      # bisection: xp_[lo] <= v < xp_[hi]
            while hi - lo > 1:
                mid = (lo + hi) >> 1
                if xp_[mid] <= v:
                    lo = mid
                else:
                    hi = mid
            j = lo
    slope = (fp[j + 1] - fp[j]) / (xp_[j + 1] - xp_[j])
    r = slope * (v - xp_[j]) + fp[j]
    if np.isnan(r):
        r = slope * (v - xp_[j + 1]) + fp[j + 1]
        if np.isnan(r) and fp[j] == fp[j + 1]:
            r = fp[j]
    return r, j


@nb.njit(cache=True)
def _interp_run(x, xp_, fp, out, start, stop):
    """``np.interp`` of ``x[start:stop]``, each value's interval searched from the previous one's."""
    m = xp_.shape[0]
    inv_h = (m - 1) / (xp_[m - 1] - xp_[0])
    j = 0
    for i in range(start, stop):
        out[i], j = interp_at(np.float64(x[i]), xp_, fp, j, inv_h)


@thread_safe
@nb.njit(parallel=True, cache=True)
def _interp_chunks(x, xp_, fp, out, n_chunks):
    n = x.shape[0]
    for c in nb.prange(n_chunks):
        _interp_run(x, xp_, fp, out, c * n // n_chunks, (c + 1) * n // n_chunks)


def interp_host(x, xp, fp):
    """``np.interp(x, xp, fp)`` (float64, ``x``'s shape) for NumPy arrays, bit-identical.

    ``xp`` must be strictly increasing (else NumPy's own ``interp`` is used); ``fp`` real.

    Examples
    --------
    >>> import numpy as np
    >>> interp_host(np.array([-1.0, 0.5, 1.5, 9.0]), np.array([0.0, 1.0, 2.0]), np.array([1.0, 3.0, 2.0]))
    array([1. , 2. , 2.5, 2. ])
    """
    xs = np.asarray(xp, dtype=np.float64)
    fs = np.asarray(fp, dtype=np.float64)
    if xs.ndim != 1 or len(xs) < 2 or len(fs) != len(xs) or not np.all(np.diff(xs) > 0):
        return np.interp(x, xs, fs)
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty(flat.shape[0])
    if flat.shape[0]:
        _interp_chunks(flat, xs, fs, out, 64 if flat.shape[0] >= 65536 else 1)
    return out.reshape(np.shape(x))
