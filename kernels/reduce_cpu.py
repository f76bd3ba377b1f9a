"""CPU twin of ``reduce.cu``: the fused reductions in Numba.

Sums run in a fixed order (the kernels' atomics have none): ``segment_sum`` in the
order of ``numpy.bincount`` (so its results equal bincount's), the moments in
C order of the array.
"""
from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["segment_sum", "shifted_moments"]


@nb.njit(cache=True)
def _segment_sum(index, values, n, out):
    k, p = values.shape
    for c in range(k):
        for q in range(p):
            s = index[q]
            if 0 <= s < n:
                out[c, s] += values[c, q]


def segment_sum(index, values, n):
    """Twin of ``ptnp_segment_sum``: (K, n) float64 sums of the rows of ``values`` (K, P)
    float64 by ``index`` (P,) (indices outside [0, n) are skipped)."""
    out = np.zeros((values.shape[0], int(n)))
    _segment_sum(index, values, np.int64(n), out)
    return out


@nb.njit(cache=True)
def _moments(data, shift):
    a = 0.0
    b = 0.0
    n0, n1, n2 = data.shape
    for i in range(n0):
        for j in range(n1):
            for k in range(n2):
                x = np.float64(data[i, j, k]) - shift
                a += x
                b += x * x
    return a, b


def shifted_moments(data, shift):
    """Twin of ``ptnp_shifted_moments``: (2,) float64 Σ(x − shift) and Σ(x − shift)² over a
    3-D array (any strides); ``shift`` a float or a one-element array."""
    a, b = _moments(data, float(np.asarray(shift).reshape(-1)[0]))
    return np.array([a, b])
