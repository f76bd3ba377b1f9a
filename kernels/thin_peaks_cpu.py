"""CPU twin of ``thin_peaks.cu``: the peaks' non-maximum suppression in Numba.

The same rounds as the kernel (each from the previous round's kept set, at
most ``max_rounds``), run one after another; the result equals the kernel's.
"""
from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["thin_peaks"]


@nb.njit(cache=True)
def _thin(pi, pj, value, group, use_group, n, max_rounds, kept):
    sup = np.zeros(n, np.bool_)
    kept[:] = True
    for _ in range(max_rounds):
        sup[:] = False
        for p in range(pi.shape[0]):
            a, b = pi[p], pj[p]
            if use_group and group[a] != group[b]:
                continue
            a_lower = value[a] < value[b] or (value[a] == value[b] and a > b)
            lo, hi = (a, b) if a_lower else (b, a)
            if kept[hi]:
                sup[lo] = True
        changed = False
        for i in range(n):
            if (not sup[i]) != kept[i]:
                changed = True
                break
        if not changed:
            break
        for i in range(n):
            kept[i] = not sup[i]


def thin_peaks(pi, pj, value, n, group=None, max_rounds=100):
    """Twin of ``ptnp_thin_peaks``: (n,) bool, the peaks kept."""
    kept = np.empty(int(n), np.bool_)
    g = np.zeros(1, np.int64) if group is None else np.ascontiguousarray(group, dtype=np.int64)
    _thin(np.ascontiguousarray(pi, dtype=np.int64), np.ascontiguousarray(pj, dtype=np.int64),
          np.ascontiguousarray(value, dtype=np.float64), g, group is not None, np.int64(n), int(max_rounds), kept)
    return kept
