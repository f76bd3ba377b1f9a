"""CPU twin of ``label_sums.cu``: fused per-label reductions in Numba.

The volume is cut into z slabs, one per chunk of a ``prange``; each chunk
accumulates into its own row of private accumulators, and the rows are
combined at the end, so there are no races. The peak is the largest value of
``peakmap`` (compared as float32, like the kernel) with the lowest flat index
among ties.
"""
from __future__ import annotations

import numba as nb
import numpy as np
from ptnp_gpu.host_parallel import thread_safe

__all__ = ["label_moments_cpu"]


@nb.njit(cache=True)
def _slab(labels, weights, peakmap, z0, z1, n_labels, cnt, sums, pval, pidx):
    """Accumulate planes z0..z1-1 into one chunk's private rows (serial); the weights and
    peak map repeat along z with their own number of planes."""
    _, ny, nx = labels.shape
    wpz = weights.shape[0]
    for z in range(z0, z1):
        wz = z % wpz
        for y in range(ny):
            for x in range(nx):
                lab = np.int64(labels[z, y, x])
                if lab < 1 or lab > n_labels:
                    continue
                r = lab - 1
                w = np.float64(weights[wz, y, x])
                cnt[r] += 1
                sums[r, 0] += w
                sums[r, 1] += w * x
                sums[r, 2] += w * y
                sums[r, 3] += w * z
                p = np.float32(peakmap[wz, y, x])
                if pidx[r] < 0 or p > pval[r]:
                    pval[r] = p
                    pidx[r] = (z * ny + y) * nx + x


@thread_safe
@nb.njit(parallel=True, cache=True)
def _label_moments(labels, weights, peakmap, n_labels, n_chunks):
    nz = labels.shape[0]
    cnt = np.zeros((n_chunks, n_labels), np.int64)
    sums = np.zeros((n_chunks, n_labels, 4))
    pval = np.full((n_chunks, n_labels), -np.inf, np.float32)
    pidx = np.full((n_chunks, n_labels), -1, np.int64)
    for c in nb.prange(n_chunks):
        _slab(labels, weights, peakmap, (nz * c) // n_chunks, (nz * (c + 1)) // n_chunks,
              n_labels, cnt[c], sums[c], pval[c], pidx[c])
    count = np.zeros(n_labels, np.int64)
    tot = np.zeros((n_labels, 4))
    best = np.full(n_labels, -np.inf, np.float32)
    best_idx = np.full(n_labels, -1, np.int64)
    for c in range(n_chunks):          # chunks in raster order: first wins ties
        for r in range(n_labels):
            count[r] += cnt[c, r]
            for k in range(4):
                tot[r, k] += sums[c, r, k]
            if pidx[c, r] >= 0 and (best_idx[r] < 0 or pval[c, r] > best[r]):
                best[r] = pval[c, r]
                best_idx[r] = pidx[c, r]
    return count, tot, best, best_idx


def label_moments_cpu(labels, weights, peakmap, n_labels, n_chunks=None):
    """Per-label count, Σw, Σw·(x, y, z), peak value and flat peak index.

    Parameters
    ----------
    labels : (nz, ny, nx) integer ndarray
    weights : (pz, ny, nx) float ndarray, nz a multiple of pz: plane z of the labels reads
        plane z % pz (pz = nz: one plane each)
    peakmap : (pz, ny, nx) float ndarray (compared as float32)
    n_labels : int
        Labels 1..n_labels are measured; others are ignored.
    n_chunks : int, optional
        Number of z slabs (default: Numba's thread count, at most nz).

    Returns
    -------
    count : (n_labels,) int64
    sums : (n_labels, 4) float64
        Σw, Σw·x, Σw·y, Σw·z (voxel indices, x fastest).
    peak_value : (n_labels,) float32
        -inf for an empty label.
    peak_index : (n_labels,) int64
        Flat C-order index of the peak; -1 for an empty label.
    """
    nz = labels.shape[0]
    if n_chunks is None:
        n_chunks = nb.get_num_threads()
    n_chunks = int(max(1, min(n_chunks, nz)))
    return _label_moments(labels, weights, peakmap, int(n_labels), n_chunks)
