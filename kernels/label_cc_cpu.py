"""CPU twin of ``label_cc.cu``: 26-connected components by union-find, in Numba.

The same steps as the kernels, run one voxel after another: foreground voxels
start as their own roots (``L[i] = i``, background ``-1``), each joins its 13
backward neighbours by linking the larger root to the smaller, and the roots,
numbered in raster order, give every voxel its label. Roots end as the smallest
flat index of their component, so the labels are ``scipy.ndimage.label``'s
(structure all ones) exactly. The library's host path labels with SciPy; this
twin is the reference the kernels are tested against.
"""
from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["cc_init_above", "cc_init_mask", "cc_label"]


@nb.njit(cache=True)
def _init_above(flat, nz, plane, t, pz, L):
    for b in range(t.shape[0]):
        for z in range(pz):
            base = (b * pz + z) * plane
            for r in range(plane):
                i = base + r
                L[i] = i if (z < nz and flat[z * plane + r] > t[b]) else -1


def cc_init_above(vol, t, pz: int):
    """Initial forest of the stacked thresholds (see ``ptnp_cc_init_above``): flat int32."""
    vol = np.ascontiguousarray(vol)
    L = np.empty(len(t) * pz * vol.shape[1] * vol.shape[2], dtype=np.int32)
    _init_above(vol.ravel(), vol.shape[0], vol.shape[1] * vol.shape[2], np.asarray(t, dtype=vol.dtype),
                int(pz), L)
    return L


def cc_init_mask(mask):
    """Initial forest of a boolean mask (see ``ptnp_cc_init_mask``): flat int32."""
    m = np.ascontiguousarray(mask, dtype=bool).ravel()
    return np.where(m, np.arange(m.size, dtype=np.int32), np.int32(-1)).astype(np.int32)


@nb.njit(cache=True)
def _root(L, a):
    while L[a] != a:
        a = L[a]
    return a


@nb.njit(cache=True)
def _union(L, a, b):
    while True:
        a = _root(L, a)
        b = _root(L, b)
        if a == b:
            return
        if a < b:                     # link the larger root (a) to the smaller
            a, b = b, a
        old = L[a]
        if b < old:
            L[a] = b
        if old == a:
            return
        a = old                       # a had been linked meanwhile: go on from its parent


@nb.njit(cache=True)
def _label(L, nzt, ny, nx, out):
    plane = ny * nx
    for z in range(nzt):
        for y in range(ny):
            for x in range(nx):
                i = (z * ny + y) * nx + x
                if L[i] < 0:
                    continue
                for dz in range(-1, 1):
                    if z + dz < 0:
                        continue
                    for dy in range(-1, 2):
                        if y + dy < 0 or y + dy >= ny or (dz == 0 and dy > 0):
                            continue
                        for dx in range(-1, 2):
                            if x + dx < 0 or x + dx >= nx or (dz == 0 and dy == 0 and dx >= 0):
                                continue
                            j = i + dz * plane + dy * nx + dx
                            if L[j] >= 0:
                                _union(L, i, j)
    n = 0
    for i in range(L.shape[0]):                 # roots in raster order: labels 1..n
        if L[i] == i:
            n += 1
            out[i] = n
    for i in range(L.shape[0]):
        p = L[i]
        if p < 0:
            out[i] = 0
        elif p != i:
            out[i] = out[_root(L, p)]
    return n


def cc_label(L, shape):
    """Labels (``shape``, int32) and their number from an initial forest ``L`` (modified)."""
    nzt, ny, nx = (int(s) for s in shape)
    out = np.empty(L.shape[0], dtype=np.int32)
    n = _label(L, nzt, ny, nx, out)
    return out.reshape(shape), int(n)
