"""CPU twin of ``window_fits.cu``: per-atom window reductions in Numba.

``prange`` over atoms; each atom's sums are private, so there are no races.
The window, the voxel selection and the sums are the kernel's (see the
``.cu`` file), accumulated in float64.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

__all__ = ["normal_equations", "pearson_sums"]


@nb.njit(inline="always")
def _window_voxel(w, side, half, c, r2, shape):
    """Voxel ``w`` of the cube window around ``c`` (as in ``window_fits.cu``).

    Returns (inside, iz, iy, ix, ux, uy, uz); ``inside`` is False outside the
    map or farther than sqrt(r2) voxels from ``c``.
    """
    nz, ny, nx = shape
    ix = int(math.floor(c[0])) - half + w % side
    iy = int(math.floor(c[1])) - half + (w // side) % side
    iz = int(math.floor(c[2])) - half + w // (side * side)
    ux = ix - c[0]
    uy = iy - c[1]
    uz = iz - c[2]
    ok = (0 <= ix < nx) and (0 <= iy < ny) and (0 <= iz < nz) and (ux * ux + uy * uy + uz * uz <= r2)
    return ok, iz, iy, ix, ux, uy, uz


@nb.njit(parallel=True, cache=True)
def normal_equations(vol, centres, half, r2, vs, A, rhs, yy, count):
    """Fill ``A`` (N, 7, 7), ``rhs`` (N, 7), ``yy`` (N,), ``count`` (N,) for the quadric fit.

    ``vol`` is (nz, ny, nx); ``centres`` (N, 3) voxel x y z; ``half`` the cube
    half-width and ``r2`` the squared radius (voxels); ``vs`` (3,) scales the
    offsets (x y z) into the fit's length unit.
    """
    nz, ny, nx = vol.shape
    side = 2 * half + 2
    for a in nb.prange(centres.shape[0]):
        acc = np.zeros((7, 7))
        b = np.zeros(7)
        phi = np.empty(7)
        n = 0
        syy = 0.0
        for w in range(side * side * side):
            ok, iz, iy, ix, x, y, z = _window_voxel(w, side, half, centres[a], r2, vol.shape)
            if not ok:
                continue
            val = np.float64(vol[iz, iy, ix])
            if not (val > 0.0) or math.isinf(val):
                continue
            x *= vs[0]
            y *= vs[1]
            z *= vs[2]
            phi[0] = 1.0
            phi[1] = x * x
            phi[2] = y * y
            phi[3] = z * z
            phi[4] = x * y
            phi[5] = x * z
            phi[6] = y * z
            lv = math.log(val)
            syy += val * lv * lv
            for i in range(7):
                wi = val * phi[i]
                b[i] += wi * lv
                for j in range(i, 7):
                    acc[i, j] += wi * phi[j]
            n += 1
        for i in range(7):
            rhs[a, i] = b[i]
            for j in range(i, 7):
                A[a, i, j] = acc[i, j]
                A[a, j, i] = acc[i, j]
        count[a] = n
        yy[a] = syy


@nb.njit(parallel=True, cache=True)
def pearson_sums(vol_a, vol_b, centres, half, r2, sums):
    """Fill ``sums`` (N, 6) with n, Σa, Σb, Σa², Σb², Σab over each atom's sphere."""
    nz, ny, nx = vol_a.shape
    side = 2 * half + 2
    for a in nb.prange(centres.shape[0]):
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        s4 = 0.0
        s5 = 0.0
        for w in range(side * side * side):
            ok, iz, iy, ix, ux, uy, uz = _window_voxel(w, side, half, centres[a], r2, vol_a.shape)
            if not ok:
                continue
            va = np.float64(vol_a[iz, iy, ix])
            vb = np.float64(vol_b[iz, iy, ix])
            s0 += 1.0
            s1 += va
            s2 += vb
            s3 += va * va
            s4 += vb * vb
            s5 += va * vb
        sums[a, 0] = s0
        sums[a, 1] = s1
        sums[a, 2] = s2
        sums[a, 3] = s3
        sums[a, 4] = s4
        sums[a, 5] = s5
