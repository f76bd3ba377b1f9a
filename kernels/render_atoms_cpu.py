"""CPU twin of ``render_atoms.cu``: atoms → map, Numba, atomic-free.

The CUDA kernel scatters (one block per atom, atomicAdd). Here the output is
split by z plane instead: ``prange`` runs over planes, and each plane gathers
the atoms whose window reaches it (atoms sorted by z, so the candidates are
one contiguous range). Every voxel is written by exactly one thread, so there
are no races and the result does not depend on the thread count. The window
(offsets) and the per-term formula are the same as the kernel's and the
vectorised reference's, accumulated in float64. Atoms whose Gaussian terms are
axis-aligned (isotropic or diagonal U: every atom of a threshold-sweep
simulation) use precomputed 1D factors, exp(a + b + c) = exp(a)·exp(b)·exp(c),
which removes the per-voxel exponentials (same values to ~1e-15 relative).
"""
from __future__ import annotations

import numba as nb
import numpy as np
from ptnp_gpu.host_parallel import thread_safe

__all__ = ["render_planes", "clear_balls"]


@thread_safe
@nb.njit(parallel=True, cache=True)
def _axis_tables(base, frac, inv6, norm, hx, hy, hz, vs, sep):
    """Per-atom 1D factors exp(-½ c_kk d_k²) for atoms whose terms are axis-aligned."""
    n, n_terms = norm.shape
    tx = np.zeros((n, n_terms, 2 * hx + 1))
    ty = np.zeros((n, n_terms, 2 * hy + 1))
    tz = np.zeros((n, n_terms, 2 * hz + 1))
    for a in nb.prange(n):
        s = True
        for t in range(n_terms):
            if inv6[a, t, 3] != 0.0 or inv6[a, t, 4] != 0.0 or inv6[a, t, 5] != 0.0:
                s = False
        sep[a] = s
        if not s:
            continue
        for t in range(n_terms):
            for k in range(2 * hx + 1):
                d = (k - hx - frac[a, 0]) * vs[0]
                tx[a, t, k] = norm[a, t] * np.exp(-0.5 * inv6[a, t, 0] * d * d)
            for k in range(2 * hy + 1):
                d = (k - hy - frac[a, 1]) * vs[1]
                ty[a, t, k] = np.exp(-0.5 * inv6[a, t, 1] * d * d)
            for k in range(2 * hz + 1):
                d = (k - hz - frac[a, 2]) * vs[2]
                tz[a, t, k] = np.exp(-0.5 * inv6[a, t, 2] * d * d)
    return tx, ty, tz


@thread_safe
@nb.njit(parallel=True, cache=True)
def _render_planes(base, frac, inv6, norm, offsets, zptr, hx, hy, hz, vs, sep, tx, ty, tz, out):
    nz, ny, nx = out.shape
    n = base.shape[0]
    n_terms = norm.shape[1]
    bz = base[:, 2]                      # sorted ascending by the caller
    z_lo = max(0, bz[0] - hz)
    z_hi = min(nz - 1, bz[n - 1] + hz)
    for z in nb.prange(z_lo, z_hi + 1):
        a0 = np.searchsorted(bz, z - hz, side="left")
        a1 = np.searchsorted(bz, z + hz, side="right")
        for a in range(a0, a1):
            oz = z - bz[a]
            dz = (oz - frac[a, 2]) * vs[2]
            for w in range(zptr[oz + hz], zptr[oz + hz + 1]):
                ox = offsets[w, 0]
                oy = offsets[w, 1]
                ix = base[a, 0] + ox
                iy = base[a, 1] + oy
                if ix < 0 or iy < 0 or ix >= nx or iy >= ny:
                    continue
                v = 0.0
                if sep[a]:
                    # axis-aligned terms: exp of a sum = product of 1D factors
                    for t in range(n_terms):
                        v += tx[a, t, ox + hx] * ty[a, t, oy + hy] * tz[a, t, oz + hz]
                else:
                    dx = (ox - frac[a, 0]) * vs[0]
                    dy = (oy - frac[a, 1]) * vs[1]
                    for t in range(n_terms):
                        q = (inv6[a, t, 0] * dx * dx + inv6[a, t, 1] * dy * dy
                             + inv6[a, t, 2] * dz * dz
                             + 2.0 * (inv6[a, t, 3] * dx * dy + inv6[a, t, 4] * dx * dz
                                      + inv6[a, t, 5] * dy * dz))
                        v += norm[a, t] * np.exp(-0.5 * q)
                out[z, iy, ix] += v


def render_planes(base, frac, inv6, norm, offsets, voxel_size_A, out):
    """Add the atoms' windows to ``out`` in place (CPU, parallel over z planes).

    Parameters
    ----------
    base : (N, 3) int array
        Nearest voxel of each atom, x y z.
    frac : (N, 3) float64 array
        Atom position minus ``base``, in voxels, x y z.
    inv6 : (N, T, 6) float64 array
        Inverse covariance of each Gaussian term in 1/Å² (xx yy zz xy xz yz).
    norm : (N, T) float64 array
        Weight of each term at the atom centre, already normalised.
    offsets : (W, 3) int array
        Window offsets in voxels (x y z), the same for every atom.
    voxel_size_A : (3,) float
        Voxel size along x, y, z in Å.
    out : (nz, ny, nx) float64 ndarray
        Map to add to (modified in place).
    """
    base = np.ascontiguousarray(base, dtype=np.int64)
    n = len(base)
    if n == 0 or len(offsets) == 0:
        return out
    order = np.argsort(base[:, 2], kind="stable")
    offsets = np.asarray(offsets, dtype=np.int64)
    oorder = np.argsort(offsets[:, 2], kind="stable")
    offsets = np.ascontiguousarray(offsets[oorder])
    hx, hy, hz = (int(h) for h in np.abs(offsets).max(axis=0))
    zptr = np.searchsorted(offsets[:, 2], np.arange(-hz, hz + 2), side="left").astype(np.int64)
    base = np.ascontiguousarray(base[order])
    frac = np.ascontiguousarray(np.asarray(frac, np.float64)[order])
    inv6 = np.ascontiguousarray(np.asarray(inv6, np.float64)[order])
    norm = np.ascontiguousarray(np.asarray(norm, np.float64)[order])
    vs = np.ascontiguousarray(np.broadcast_to(np.asarray(voxel_size_A, np.float64), (3,)))
    sep = np.zeros(n, np.bool_)
    tx, ty, tz = _axis_tables(base, frac, inv6, norm, hx, hy, hz, vs, sep)
    _render_planes(base, frac, inv6, norm, offsets, zptr, hx, hy, hz, vs, sep, tx, ty, tz, out)
    return out


@nb.njit(cache=True)
def _clear_balls(centre, off, mask):
    nz, ny, nx = mask.shape
    for a in range(centre.shape[0]):
        for w in range(off.shape[0]):
            z = centre[a, 0] + off[w, 0]
            y = centre[a, 1] + off[w, 1]
            x = centre[a, 2] + off[w, 2]
            if 0 <= z < nz and 0 <= y < ny and 0 <= x < nx:
                mask[z, y, x] = False


def clear_balls(centre_zyx, offsets_zyx, mask):
    """Twin of ``ptnp_clear_balls``: ``mask[c + o] = False`` for every centre c (int (N, 3) z, y, x)
    and offset o (int (W, 3)) in bounds; ``mask`` (bool, C order) is changed in place."""
    _clear_balls(np.asarray(centre_zyx, np.int64).reshape(-1, 3), np.asarray(offsets_zyx, np.int64).reshape(-1, 3),
                 mask)
    return mask
