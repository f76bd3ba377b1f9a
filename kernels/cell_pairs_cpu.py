"""CPU twin of ``cell_pairs.cu``: the cell-list pair search in Numba.

The same two passes as the kernels (count, then write from the exclusive
prefix sum of the counts), in the same order, with the same rounding of the
squared distances, parallel over points; the output equals the kernels'.
"""
from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["cell_pairs_pass", "cell_keys"]


@nb.njit(cache=True)
def _scan(i, xyz, cell, order, start, dims, r2, pos, out_i, out_j, out_d2, write):
    xi, yi, zi = xyz[i, 0], xyz[i, 1], xyz[i, 2]
    cx, cy, cz = cell[i, 0], cell[i, 1], cell[i, 2]
    found = 0
    for ax in range(cx - 1, cx + 2):
        if ax < 0 or ax >= dims[0]:
            continue
        for ay in range(cy - 1, cy + 2):
            if ay < 0 or ay >= dims[1]:
                continue
            for az in range(cz - 1, cz + 2):
                if az < 0 or az >= dims[2]:
                    continue
                c = (np.int64(ax) * dims[1] + ay) * dims[2] + az
                for k in range(start[c], start[c + 1]):
                    j = order[k]
                    if j <= i:
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


@nb.njit(parallel=True, cache=True)
def _count(xyz, cell, order, start, dims, r2, counts):
    e = np.zeros(0, np.int64)
    f = np.zeros(0, np.float64)
    for i in nb.prange(xyz.shape[0]):
        counts[i] = _scan(i, xyz, cell, order, start, dims, r2, 0, e, e, f, False)


@nb.njit(parallel=True, cache=True)
def _write(xyz, cell, order, start, dims, r2, offsets, out_i, out_j, out_d2):
    for i in nb.prange(xyz.shape[0]):
        _scan(i, xyz, cell, order, start, dims, r2, offsets[i], out_i, out_j, out_d2, True)


def cell_pairs_pass(xyz, cell, order, start, dims, r2, counts=None, offsets=None, out=()):
    """One pass of the twin: ``counts`` (n,) int64 filled when given, else the pairs written
    into ``out`` = (out_i, out_j, out_d2) from ``offsets``. Arguments as in ``cell_pairs.cu``
    (``xyz`` (n, 3) float64, ``cell`` (n, 3) int32, ``dims`` (3,) int64)."""
    dims = np.asarray(dims, np.int64)
    if counts is not None:
        _count(xyz, cell, order, start, dims, float(r2), counts)
    else:
        _write(xyz, cell, order, start, dims, float(r2), offsets, *out)


@nb.njit(parallel=True, cache=True)
def _cell_keys(xyz, lo, edge, dy, dz, cell, key):
    n = xyz.shape[0]
    for i in nb.prange(n):
        cx = np.int32(np.floor((xyz[i, 0] - lo[0]) / edge))
        cy = np.int32(np.floor((xyz[i, 1] - lo[1]) / edge))
        cz = np.int32(np.floor((xyz[i, 2] - lo[2]) / edge))
        cell[i, 0] = cx
        cell[i, 1] = cy
        cell[i, 2] = cz
        key[i] = ((np.int64(cx) * dy + cy) * dz + cz) * n + i


def cell_keys(xyz, lo, edge, dims):
    """Twin of ``ptnp_cell_keys``: each point's cell (n, 3) int32 and its sort key
    cell_id * n + i (n,) int64, for ``xyz`` (n, 3) float64 and the grid origin ``lo`` (3,)."""
    n = xyz.shape[0]
    cell = np.empty((n, 3), np.int32)
    key = np.empty(n, np.int64)
    _cell_keys(xyz, np.asarray(lo, np.float64), float(edge), np.int64(dims[1]), np.int64(dims[2]), cell, key)
    return cell, key
