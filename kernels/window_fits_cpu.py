"""CPU twin of ``window_fits.cu``: per-atom window reductions in Numba.

``prange`` over atoms; each atom's sums (and, in :func:`mean_shift`, its
centre) are private, so there are no races.
The window, the voxel selection and the sums are the kernel's (see the
``.cu`` file), accumulated in float64.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np
from ptnp_gpu.host_parallel import thread_safe

__all__ = ["normal_equations", "pearson_sums", "mean_shift", "linear_at_cpu"]


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


@thread_safe
@nb.njit(parallel=True, cache=True)
def normal_equations(vol, centres, base, half, r2, vs, A, rhs, yy, count):
    """Fill ``A`` (N, 7, 7), ``rhs`` (N, 7), ``yy`` (N,), ``count`` (N,) for the quadric fit.

    ``vol`` is (nz, ny, nx); ``centres`` (N, 3) voxel x y z; ``base`` (N,) float64
    is subtracted from the map values of each atom's window; ``half`` the cube
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
            val = np.float64(vol[iz, iy, ix]) - base[a]
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


@thread_safe
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


@nb.njit(inline="always")
def _clip1(x):
    """x clipped to [-1, 1] (NaN stays NaN, as ``np.clip``)."""
    if x < -1.0:
        return -1.0
    if x > 1.0:
        return 1.0
    return x


@thread_safe
@nb.njit(parallel=True, cache=True)
def mean_shift(vol, centres, offsets, base, sigma2, n_iter, out):
    """Fill ``out`` (N, 3) with the centres after ``n_iter`` mean-shift rounds.

    The rounds of ``ptnp_mean_shift`` (see ``window_fits.cu``): windows at
    ``rint(c) + offsets`` ((W, 3) integers x y z), map indices clamped,
    weights ``max(v - base, 0) * exp(-0.5 |d|² / sigma2)`` with ``v - base``
    in the map's type (pass ``base`` as a scalar of ``vol.dtype``), shift
    clipped to ±1 voxel per component. NaN voxels weigh 0; a non-finite
    centre is left as it is.
    """
    nz, ny, nx = vol.shape
    hx = nx - 1.0
    hy = ny - 1.0
    hz = nz - 1.0
    zero = vol.dtype.type(0)
    for a in nb.prange(centres.shape[0]):
        cx = centres[a, 0]
        cy = centres[a, 1]
        cz = centres[a, 2]
        for _ in range(n_iter):
            if not (math.isfinite(cx) and math.isfinite(cy) and math.isfinite(cz)):
                break
            rx = np.rint(cx)
            ry = np.rint(cy)
            rz = np.rint(cz)
            s = 0.0
            sx = 0.0
            sy = 0.0
            sz = 0.0
            for w in range(offsets.shape[0]):
                px = rx + offsets[w, 0]
                py = ry + offsets[w, 1]
                pz = rz + offsets[w, 2]
                dx = px - cx
                dy = py - cy
                dz = pz - cz
                ix = int(min(max(px, 0.0), hx))
                iy = int(min(max(py, 0.0), hy))
                iz = int(min(max(pz, 0.0), hz))
                v = vol[iz, iy, ix] - base
                if not (v > zero):
                    continue
                g = np.float64(v) * math.exp(-0.5 * (dx * dx + dy * dy + dz * dz) / sigma2)
                s += g
                sx += g * dx
                sy += g * dy
                sz += g * dz
            if not (s > 0.0):
                s = 1.0
            cx += _clip1(sx / s)
            cy += _clip1(sy / s)
            cz += _clip1(sz / s)
        out[a, 0] = cx
        out[a, 1] = cy
        out[a, 2] = cz



@nb.njit(cache=True)
def _linear_at(vol, xyz, out):
    nz, ny, nx = vol.shape
    n = (nz, ny, nx)
    i0 = np.empty(3, np.int64)                  # per point, reused
    i1 = np.empty(3, np.int64)
    f = np.empty(3)
    for t in range(xyz.shape[0]):
        c0, c1, c2 = xyz[t, 2], xyz[t, 1], xyz[t, 0]
        if np.isnan(c0) or np.isnan(c1) or np.isnan(c2):
            out[t] = np.nan
            continue
        for d, cd in enumerate((c0, c1, c2)):
            cc = min(max(cd, 0.0), float(n[d] - 1))
            i0[d] = np.int64(np.floor(cc))
            f[d] = cc - i0[d]
            i1[d] = min(i0[d] + 1, n[d] - 1)
        acc = 0.0
        for dz in range(2):
            wz = f[0] if dz else 1.0 - f[0]
            z = i1[0] if dz else i0[0]
            for dy in range(2):
                wzy = wz * (f[1] if dy else 1.0 - f[1])
                y = i1[1] if dy else i0[1]
                for dx in range(2):
                    w = wzy * (f[2] if dx else 1.0 - f[2])
                    x = i1[2] if dx else i0[2]
                    acc += w * np.float64(vol[z, y, x])
        out[t] = acc


def linear_at_cpu(vol, xyz_vox):
    """Twin of ``ptnp_linear_at``: ``vol`` (nz, ny, nx) at points (M, 3) voxel x, y, z, linearly
    interpolated with clamped coordinates, in float64, rounded to ``vol``'s type."""
    out = np.empty(xyz_vox.shape[0], dtype=vol.dtype)
    _linear_at(np.ascontiguousarray(vol), np.ascontiguousarray(xyz_vox, dtype=np.float64).reshape(-1, 3), out)
    return out
