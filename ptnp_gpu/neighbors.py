"""Pairs of points within a distance, on the points' own backend.

Both backends use the cell-list search of :func:`ptnp_gpu.gpu_kernels.cell_pairs`
(a custom kernel that writes only the pairs, no host copy of the points, on CuPy;
its Numba twin on NumPy). :func:`pairs_within_grid` is the
same search in array code, kept as the kernel's cross-check.

:func:`segment_sum` and :func:`segment_max` reduce per-pair values onto the
atoms (CN, GCN, nearest-neighbour bonds, strain fits) on the same backend,
without a device sync.
"""
from __future__ import annotations

import numpy as np

from . import backend as _be

__all__ = ["pairs_within", "count_neighbors", "segment_sum", "segment_max"]


def pairs_within(xyz_A, r_A: float):
    """All pairs ``i < j`` with ``|x_i - x_j| <= r_A``.

    The cell-list search of :func:`ptnp_gpu.gpu_kernels.cell_pairs` on every backend (its
    kernels on CuPy, their Numba twin on NumPy: 2.3x faster than SciPy's k-d tree for the
    sweep's ~460,000 pairs on 2 cores), so both give the same pairs in the same order
    (ordered by ``i``) and every sum over them adds in the same order.

    Returns
    -------
    i, j : int arrays, d2 : squared distances (Å²), on the input's backend.
    """
    from .gpu_kernels import cell_pairs
    return cell_pairs(xyz_A, r_A)


def pairs_within_grid(xyz_A, r_A: float):
    """Cell-list pair search written against the array namespace (any backend).

    Points are binned into cubic cells of edge ``r_A``; each point is tested
    against the points of its 27 neighbouring cells through a padded
    cell → points table, so memory and work are O(N · 27 · K) with K the
    largest cell occupancy, instead of O(N²). Kept as an independent
    cross-check of the cell-list kernel (same pairs, any backend).
    """
    be = _be.namespace(xyz_A)
    xp = be.xp
    n = int(xyz_A.shape[0])
    if n < 2:
        e = xp.zeros(0, dtype=xp.int64)
        return e, e, xp.zeros(0)
    xyz = xyz_A.astype(xp.float64)
    cell = xp.floor((xyz - xyz.min(axis=0)) / r_A).astype(xp.int64)
    dims_dev = cell.max(axis=0) + 1
    cid = (cell[:, 0] * dims_dev[1] + cell[:, 1]) * dims_dev[2] + cell[:, 2]
    order = xp.argsort(cid, kind="stable")          # ties: points in input order, as CuPy sorts
    cs = cid[order]
    rank = xp.arange(n) - xp.searchsorted(cs, cs, side="left")    # place within its cell
    # the grid's dimensions and the table width (largest occupancy): one transfer
    dk = _be.to_host(xp.concatenate([dims_dev, rank.max(keepdims=True) + 1]))
    dims, k = dk[:3], int(dk[3])
    ncell = int(np.prod(dims))
    table = xp.full((ncell, k), -1, dtype=xp.int64)
    table[cs, rank] = order
    r2 = r_A * r_A
    dims_x = xp.asarray(dims)
    g = np.arange(-1, 2)
    offsets = xp.asarray(np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(27, 3))
    out_i, out_j, out_d = [], [], []
    chunk = max(1, (1 << 22) // (27 * k))           # bounds the (chunk, 27, K, 3) temporaries
    for s in range(0, n, chunk):                    # a few chunks, each fully vectorised
        e = min(n, s + chunk)
        nc = cell[s:e, None, :] + offsets[None]                      # (c, 27, 3)
        valid = xp.all((nc >= 0) & (nc < dims_x), axis=2)
        ncid = (nc[..., 0] * int(dims[1]) + nc[..., 1]) * int(dims[2]) + nc[..., 2]
        cand = xp.where(valid[..., None], table[xp.where(valid, ncid, 0)], -1)   # (c, 27, K)
        d = xyz[s:e, None, None, :] - xyz[xp.maximum(cand, 0)]
        d2 = (d * d).sum(-1)
        ok = (cand > xp.arange(s, e)[:, None, None]) & (d2 <= r2)
        ii, oo, kk = xp.nonzero(ok)
        out_i.append(ii + s)
        out_j.append(cand[ii, oo, kk])
        out_d.append(d2[ii, oo, kk])
    return xp.concatenate(out_i), xp.concatenate(out_j), xp.concatenate(out_d)


def count_neighbors(xyz_A, r_A: float):
    """Number of other points within ``r_A`` of each point (coordination number)."""
    xp = _be.namespace(xyz_A).xp
    i, j, _ = pairs_within(xyz_A, r_A)
    ends = xp.concatenate([i, j])          # both ends of every pair (no sync on a GPU)
    return segment_sum(ends, [xp.ones(ends.shape[0])], int(xyz_A.shape[0]))[0].astype(xp.int64)


# ----------------------------------------------------------------------------- reductions over pairs

def segment_sum(index, columns, n: int, *, flat: bool | None = None):
    """Per-segment sums of several value columns: ``out[k, s] = Σ columns[k][index == s]``.

    The reduction behind every per-atom sum over neighbour pairs (CN, GCN,
    strain fits). Two equivalent ways, chosen by ``flat`` (default: by backend):

    * per column (NumPy default): one ``bincount`` per column, contiguous
      weights: the fastest host path, in the summation order of a plain
      ``np.bincount``;
    * flat (CuPy default): every column in one launch of the
      ``ptnp_segment_sum`` kernel (:func:`ptnp_gpu.gpu_kernels.segment_sum_columns`:
      float64 atomics, no device sync; ``cupy.bincount`` syncs twice per call;
      on NumPy arrays its Numba twin, in bincount's order).

    Parameters
    ----------
    index : (P,) int array
        Segment (atom) of each entry, ``0 <= index < n``.
    columns : (K, P) float array or sequence of K (P,) float arrays
    n : int
        Number of segments.
    flat : bool, optional

    Returns
    -------
    (len(columns), n) float64 array on the backend of ``index``.
    """
    be = _be.namespace(index)
    xp = be.xp
    k = len(columns)
    if index.size == 0:                  # cupy.bincount refuses empty input
        return xp.zeros((k, n))
    if not (be.is_gpu if flat is None else flat):
        return xp.stack([xp.bincount(index, weights=c, minlength=n) for c in columns])
    if getattr(columns, "ndim", 0) == 2:                       # one (K, P) array: no stacking copy
        values = xp.ascontiguousarray(columns, dtype=xp.float64)
    elif k == 1:                                               # one column: a view, no stacking copy
        values = xp.ascontiguousarray(xp.asarray(columns[0], dtype=xp.float64)).reshape(1, -1)
    else:
        values = xp.stack([xp.asarray(c, dtype=xp.float64) for c in columns])
    from .gpu_kernels import segment_sum_columns
    return segment_sum_columns(index, values, n)


def _scatter(be, op: str, out, index, values):
    """``out[index] op= values`` with repeated indices, in place, on the backend of ``out``.

    ``np.add.at`` / ``np.maximum.at`` on NumPy, their documented device twins
    ``cupyx.scatter_add`` / ``cupyx.scatter_max`` (no sync) on CuPy.
    """
    if be.is_gpu:
        import cupyx
        {"add": cupyx.scatter_add, "max": cupyx.scatter_max}[op](out, index, values)
    else:
        {"add": np.add, "max": np.maximum}[op].at(out, index, values)


def segment_max(index, values, n: int, empty: float = -np.inf):
    """Per-segment maximum ``out[s] = max(values[index == s])`` (``empty`` for empty segments).

    ``np.maximum.at`` on NumPy, ``cupyx.scatter_max`` (no sync) on CuPy. A
    minimum is ``-segment_max(index, -values, n)`` (exact).

    Returns
    -------
    (n,) float64 array on the backend of ``values``.
    """
    be = _be.namespace(index, values)
    xp = be.xp
    out = xp.full(n, empty, dtype=xp.float64)
    if index.size:
        _scatter(be, "max", out, index, xp.asarray(values, dtype=xp.float64))
    return out
