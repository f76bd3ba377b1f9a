"""Components of ``C > t`` for many thresholds in one union-find pass (CPU, Numba).

The threshold sweep needs, for every threshold ``t``, the 26-connected
components of ``C > t`` with their voxel count and weighted centre. The
components of a higher threshold are subsets of those of a lower one, so one
pass over the voxels in decreasing order of ``C`` (each voxel joins its
already-active neighbours in a union-find forest whose roots carry the
moments) yields all of them: the components of ``C > t`` are the forest's
trees when the first voxel with ``C <= t`` is reached. This costs one sort of
the voxels above the lowest threshold plus ~26 neighbour checks per voxel,
instead of one full labelling and one moments pass per threshold.

This is the NumPy backend's path; on a GPU the thresholds are stacked and
labelled together (:func:`ptnp_gpu.detect._stacked_centres`). Both give the
same components (``tests/test_detect.py`` compares them).
"""
from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["threshold_components"]


@nb.njit(cache=True)
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:                     # path compression
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@nb.njit(cache=True)
def _advance(flat, shape, t, start, act, parent, cnt, mom, values):
    """Activate voxels ``start…`` (sorted by decreasing C) while their value exceeds ``t``."""
    nz, ny, nx = shape
    pos = start
    n = flat.shape[0]
    while pos < n and values[pos] > t:
        f = flat[pos]
        z = f // (ny * nx)
        y = (f // nx) % ny
        x = f % nx
        act[f] = pos
        parent[pos] = pos
        for dz in range(-1, 2):
            zz = z + dz
            if zz < 0 or zz >= nz:
                continue
            for dy in range(-1, 2):
                yy = y + dy
                if yy < 0 or yy >= ny:
                    continue
                for dx in range(-1, 2):
                    xx = x + dx
                    if xx < 0 or xx >= nx or (dz == 0 and dy == 0 and dx == 0):
                        continue
                    other = act[(zz * ny + yy) * nx + xx]
                    if other < 0:
                        continue
                    ra = _find(parent, pos)
                    rb = _find(parent, other)
                    if ra == rb:
                        continue
                    if cnt[ra] < cnt[rb]:                # union by size: the big tree's root stays
                        ra, rb = rb, ra
                    parent[rb] = ra
                    cnt[ra] += cnt[rb]
                    for k in range(4):
                        mom[ra, k] += mom[rb, k]
        pos += 1
    return pos


@nb.njit(cache=True)
def _roots(pos, parent, cnt, mom, min_voxels):
    """Centres (voxel x, y, z) of the trees with at least ``min_voxels`` voxels and positive weight."""
    m = 0
    for i in range(pos):
        if parent[i] == i and cnt[i] >= min_voxels and mom[i, 0] > 0:
            m += 1
    out = np.empty((m, 3))
    m = 0
    for i in range(pos):
        if parent[i] == i and cnt[i] >= min_voxels and mom[i, 0] > 0:
            out[m, 0] = mom[i, 1] / mom[i, 0]
            out[m, 1] = mom[i, 2] / mom[i, 0]
            out[m, 2] = mom[i, 3] / mom[i, 0]
            m += 1
    return out


@nb.njit(cache=True)
def _init_moments(flat, weights_flat, shape, cnt, mom):
    _, ny, nx = shape
    for p in range(flat.shape[0]):
        f = flat[p]
        w = np.float64(weights_flat[f])
        cnt[p] = 1
        mom[p, 0] = w
        mom[p, 1] = w * (f % nx)
        mom[p, 2] = w * ((f // nx) % ny)
        mom[p, 3] = w * (f // (ny * nx))


def threshold_components(C, weights, thresholds, min_voxels: int = 1):
    """Centres of the 26-connected components of ``C > t`` for every ``t`` in ``thresholds``.

    Parameters
    ----------
    C : (nz, ny, nx) float array (NumPy)
        The map that is thresholded (the denoised map).
    weights : (nz, ny, nx) float array
        Grey values of the centres of mass (the solvent-subtracted raw map).
    thresholds : sequence of float
        Any order; components are strictly above each threshold (``C > t``).
    min_voxels : int
        Components with fewer voxels are left out, as are components whose
        weights sum to zero or less (no centre of mass).

    Returns
    -------
    centres : (M, 3) float64 array, voxel (x, y, z) coordinates of all components of all thresholds
    group : (M,) int64 array, index into ``thresholds`` of each centre
    """
    C = np.ascontiguousarray(C)
    t = np.asarray(thresholds, dtype=np.float64)
    if t.size == 0:
        return np.zeros((0, 3)), np.zeros(0, np.int64)
    # compare in C's precision, like ``C > t`` does (NEP 50: a Python float adopts C's dtype)
    t_c = t.astype(C.dtype)
    flat_all = C.ravel()
    flat = np.flatnonzero(flat_all > t_c.min())
    values = flat_all[flat]
    order = np.argsort(values, kind="stable")[::-1]
    flat = np.ascontiguousarray(flat[order]).astype(np.int64)
    values = np.ascontiguousarray(values[order])
    n = flat.shape[0]
    act = np.full(C.size, -1, np.int64 if C.size >= 2 ** 31 else np.int32)
    parent = np.empty(n, np.int64)
    cnt = np.zeros(n, np.int64)
    mom = np.zeros((n, 4))
    _init_moments(flat, np.ascontiguousarray(weights).ravel(), C.shape, cnt, mom)
    centres, groups = [], []
    pos = 0
    for k in np.argsort(t_c, kind="stable")[::-1]:               # decreasing thresholds
        pos = _advance(flat, C.shape, t_c[k], pos, act, parent, cnt, mom, values)
        c = _roots(pos, parent, cnt, mom, int(min_voxels))
        centres.append(c)
        groups.append(np.full(len(c), k, np.int64))
    return np.concatenate(centres), np.concatenate(groups)
