"""CPU twin of ``cell_pairs.cu``: the hashed cell-list pair search in Numba.

The same launches as the kernels (cell keys; count; write from the prefix sum
of the counts), in the same order, with the same cells, buckets and rounding
of the squared distances, parallel over points; the output equals the kernels'.
"""
from __future__ import annotations

import numba as nb
import numpy as np
from ptnp_gpu.host_parallel import thread_safe

__all__ = ["cell_pairs_pass", "cell_keys", "CELL_BAD"]

CELL_BAD = -(1 << 40)            # the count of a point with a non-finite coordinate
_CLAMP = 4.0e18
_H1 = np.uint64(0x9E3779B97F4A7C15)
_H2 = np.uint64(0xC2B2AE3D27D4EB4F)
_H3 = np.uint64(0x165667B19E3779F9)
_S32 = np.uint64(32)


@nb.njit(cache=True, inline="always")
def _coord(x, edge):
    v = np.floor(x / edge)
    if not v >= -_CLAMP:
        v = -_CLAMP
    if v > _CLAMP:
        v = _CLAMP
    return np.int64(v)


@nb.njit(cache=True, inline="always")
def _bucket(cx, cy, cz, hmask):
    h = np.uint64(cx) * _H1 + np.uint64(cy) * _H2 + np.uint64(cz) * _H3
    h ^= h >> _S32
    return np.int64(h & hmask)


@nb.njit(cache=True)
def _scan(i, k, xyz, cell, order, start, hmask, r2, pos, out_i, out_j, out_d2, write):
    xi, yi, zi = xyz[i, 0], xyz[i, 1], xyz[i, 2]
    ax = cell[i, 0] + k // 9 - 1
    ay = cell[i, 1] + (k // 3) % 3 - 1
    az = cell[i, 2] + k % 3 - 1
    b = _bucket(ax, ay, az, hmask)
    found = 0
    for q in range(start[b], start[b + 1]):
        j = order[q]
        if j <= i or cell[j, 0] != ax or cell[j, 1] != ay or cell[j, 2] != az:
            continue
        ex = xi - xyz[j, 0]
        ey = yi - xyz[j, 1]
        ez = zi - xyz[j, 2]
        d2 = (ex * ex + ey * ey) + ez * ez
        if d2 <= r2:
            if write:
                out_i[pos] = i
                out_j[pos] = j
                out_d2[pos] = d2
                pos += 1
            found += 1
    return found


@thread_safe
@nb.njit(parallel=True, cache=True)
def _count(xyz, cell, order, start, hmask, r2, counts):
    e = np.zeros(0, np.int64)
    f = np.zeros(0, np.float64)
    for i in nb.prange(xyz.shape[0]):
        finite = np.isfinite(xyz[i, 0]) and np.isfinite(xyz[i, 1]) and np.isfinite(xyz[i, 2])
        for k in range(27):
            if finite:
                counts[27 * i + k] = _scan(i, k, xyz, cell, order, start, hmask, r2, 0, e, e, f, False)
            else:
                counts[27 * i + k] = CELL_BAD if k == 0 else 0


@thread_safe
@nb.njit(parallel=True, cache=True)
def _write(xyz, cell, order, start, hmask, r2, counts, ends, out_i, out_j, out_d2):
    for i in nb.prange(xyz.shape[0]):
        for k in range(27):
            t = 27 * i + k
            if counts[t] > 0:
                _scan(i, k, xyz, cell, order, start, hmask, r2, ends[t] - counts[t], out_i, out_j, out_d2, True)


def cell_pairs_pass(xyz, cell, order, start, hmask, r2, counts, ends=None, out=()):
    """One pass of the twin: without ``ends``, ``counts`` (27 n,) int64 is filled, one entry per
    point and neighbour cell (``CELL_BAD`` in the first entry of a point with a non-finite
    coordinate); with ``ends`` (the inclusive prefix sum of ``counts``) the pairs are written
    into ``out`` = (out_i, out_j, out_d2). Arguments as in ``cell_pairs.cu`` (``xyz`` (n, 3)
    float64, ``cell`` (n, 3) int64, ``hmask`` buckets - 1)."""
    hmask = np.uint64(hmask)
    if ends is None:
        _count(xyz, cell, order, start, hmask, float(r2), counts)
    else:
        _write(xyz, cell, order, start, hmask, float(r2), counts, ends, *out)


@thread_safe
@nb.njit(parallel=True, cache=True)
def _cell_keys(xyz, edge, hmask, cell, key):
    n = xyz.shape[0]
    for i in nb.prange(n):
        cx = _coord(xyz[i, 0], edge)
        cy = _coord(xyz[i, 1], edge)
        cz = _coord(xyz[i, 2], edge)
        cell[i, 0] = cx
        cell[i, 1] = cy
        cell[i, 2] = cz
        key[i] = _bucket(cx, cy, cz, hmask) * n + i


def cell_keys(xyz, edge, hmask):
    """Twin of ``ptnp_cell_keys``: each point's cell (n, 3) int64 (floor(x / edge) per axis,
    clamped) and its sort key bucket * n + i (n,) int64, for ``xyz`` (n, 3) float64."""
    n = xyz.shape[0]
    cell = np.empty((n, 3), np.int64)
    key = np.empty(n, np.int64)
    _cell_keys(xyz, float(edge), np.uint64(hmask), cell, key)
    return cell, key
