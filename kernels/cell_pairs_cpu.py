"""CPU twin of ``cell_pairs.cu``: the hashed cell-list pair search in Numba.

The same launches as the kernels (cell keys; count; write from the prefix sum
of the counts), in the same order, with the same cells, buckets and rounding
of the squared distances, parallel over points; the output equals the kernels'.
"""
from __future__ import annotations

import numba as nb
import numpy as np
from ptnp_gpu.host_interp import interp_at
from ptnp_gpu.host_parallel import thread_safe

__all__ = ["cell_pairs_pass", "cell_keys", "pair_table_sums", "CELL_BAD"]

CELL_BAD = -(1 << 40)            # the count of a point with a non-finite coordinate
_CLAMP = 4.0e18
_H1 = np.uint64(0x9E3779B97F4A7C15)
_H2 = np.uint64(0xC2B2AE3D27D4EB4F)
_H3 = np.uint64(0x165667B19E3779F9)
_S32 = np.uint64(32)
_NO_TABLE = np.zeros(0)          # no tabulated function: count and write the pairs only


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


@nb.njit(cache=True, inline="always")
def _scan_cell(i, ax, ay, az, xyz, cell, order, start, hmask, r2, pos, out_i, out_j, out_d2, write, xg, yg,
               inv_h):
    """Partners j > i of point i in cell (ax, ay, az): how many (written from ``pos`` when
    ``write``), and the sum of ``np.interp(d2, xg, yg)`` over them (0 for an empty table;
    ``inv_h``: the table's (points − 1) / span)."""
    xi, yi, zi = xyz[i, 0], xyz[i, 1], xyz[i, 2]
    found = 0
    total = 0.0
    ng = xg.shape[0]
    b = _bucket(ax, ay, az, hmask)
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
                out_i[pos + found] = i
                out_j[pos + found] = j
                out_d2[pos + found] = d2
            if ng > 1:
                total += interp_at(d2, xg, yg, 0, inv_h)[0]
            found += 1
    return found, total


@nb.njit(cache=True)
def _scan(i, k, xyz, cell, order, start, hmask, r2, pos, out_i, out_j, out_d2, write):
    """Partners j > i of point i in its neighbour cell k (k = 9 (dx + 1) + 3 (dy + 1) + dz + 1,
    the kernels' order), or in all 27 in that order when k < 0: how many, written from ``pos``
    when ``write``."""
    cx, cy, cz = cell[i, 0], cell[i, 1], cell[i, 2]
    if k >= 0:
        return _scan_cell(i, cx + k // 9 - 1, cy + (k // 3) % 3 - 1, cz + k % 3 - 1, xyz, cell, order, start,
                          hmask, r2, pos, out_i, out_j, out_d2, write, _NO_TABLE, _NO_TABLE, 0.0)[0]
    found = 0
    for ax in range(cx - 1, cx + 2):
        for ay in range(cy - 1, cy + 2):
            for az in range(cz - 1, cz + 2):
                found += _scan_cell(i, ax, ay, az, xyz, cell, order, start, hmask, r2, pos + found, out_i, out_j,
                                    out_d2, write, _NO_TABLE, _NO_TABLE, 0.0)[0]
    return found


@thread_safe
@nb.njit(parallel=True, cache=True)
def _count(xyz, cell, order, start, hmask, r2, counts, per_cell):
    e = np.zeros(0, np.int64)
    f = np.zeros(0, np.float64)
    for i in nb.prange(xyz.shape[0]):
        finite = np.isfinite(xyz[i, 0]) and np.isfinite(xyz[i, 1]) and np.isfinite(xyz[i, 2])
        if not per_cell:
            counts[i] = _scan(i, -1, xyz, cell, order, start, hmask, r2, 0, e, e, f, False) if finite else CELL_BAD
            continue
        for k in range(27):
            if finite:
                counts[27 * i + k] = _scan(i, k, xyz, cell, order, start, hmask, r2, 0, e, e, f, False)
            else:
                counts[27 * i + k] = CELL_BAD if k == 0 else 0


@thread_safe
@nb.njit(parallel=True, cache=True)
def _write(xyz, cell, order, start, hmask, r2, counts, ends, out_i, out_j, out_d2, per_cell):
    for i in nb.prange(xyz.shape[0]):
        if not per_cell:
            _scan(i, -1, xyz, cell, order, start, hmask, r2, ends[i] - counts[i], out_i, out_j, out_d2, True)
            continue
        for k in range(27):
            t = 27 * i + k
            if counts[t] > 0:
                _scan(i, k, xyz, cell, order, start, hmask, r2, ends[t] - counts[t], out_i, out_j, out_d2, True)


def cell_pairs_pass(xyz, cell, order, start, hmask, r2, counts, ends=None, out=()):
    """One pass of the twin: without ``ends``, ``counts`` int64 is filled, one entry per point
    (n,) or, as the kernels do, per point and neighbour cell (27 n,) (``CELL_BAD`` in a point's
    first entry when a coordinate is not finite); with ``ends`` (the inclusive prefix sum of
    ``counts``) the pairs are written into ``out`` = (out_i, out_j, out_d2): the same pairs in
    the same order either way (per point: a 27-times smaller prefix sum on the host). Arguments
    as in ``cell_pairs.cu`` (``xyz`` (n, 3) float64, ``cell`` (n, 3) int64, ``hmask`` buckets - 1)."""
    hmask = np.uint64(hmask)
    per_cell = len(xyz) > 0 and counts.shape[0] == 27 * len(xyz)
    if ends is None:
        _count(xyz, cell, order, start, hmask, float(r2), counts, per_cell)
    else:
        _write(xyz, cell, order, start, hmask, float(r2), counts, ends, *out, per_cell)


@thread_safe
@nb.njit(parallel=True, cache=True)
def _table_sums(xyz, cell, order, start, hmask, r2, xg, yg, acc):
    e = np.zeros(0, np.int64)
    f = np.zeros(0, np.float64)
    inv_h = (xg.shape[0] - 1) / (xg[xg.shape[0] - 1] - xg[0])
    for i in nb.prange(xyz.shape[0]):
        total = 0.0
        for k in range(27):
            total += _scan_cell(i, cell[i, 0] + k // 9 - 1, cell[i, 1] + (k // 3) % 3 - 1, cell[i, 2] + k % 3 - 1,
                                xyz, cell, order, start, hmask, r2, 0, e, e, f, False, xg, yg, inv_h)[1]
        acc[i] = total


def pair_table_sums(xyz, cell, order, start, hmask, r2, xg, yg, acc):
    """Twin of ``ptnp_cell_pair_table_sums``: ``acc[i]`` = Σ over the partners j > i of point i
    within ``r2`` of ``np.interp(d2, xg, yg)``, each neighbour cell's sum added in cell order."""
    _table_sums(xyz, cell, order, start, np.uint64(hmask), float(r2), np.asarray(xg, np.float64),
                np.asarray(yg, np.float64), acc)
    return acc


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
