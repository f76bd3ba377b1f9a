"""Displacements from the ideal bulk lattice and local strain.

The ideal lattice has the fitted orientation, the *bulk* lattice parameter,
and its centroid on the particle centre (:func:`ptnp_gpu.lattice.ideal_sites_A`),
so a uniform expansion ε appears as a displacement ``u = ε (x − centre)``.

* Radial strain ``ε_RR = ∂u_R/∂R`` per atom: slope of a Gaussian-weighted
  (h = 2 Å) local linear regression of the radial displacement u_R on the
  radius R over the atoms within 3h.
* Strain tensor per atom: symmetric part of the Gaussian-weighted local affine
  fit ``u_j − u_i ≈ E (x_j − x_i)`` over the same neighbourhood.

Both are vectorised over neighbour pairs (``np.bincount`` sums and one batched
3×3 solve), not a loop over atoms. Positions (x, y, z) Å, map frame.
"""
from __future__ import annotations

import numpy as np
from .neighbors import pairs_within

__all__ = ["radial_displacement_A", "radial_strain", "strain_tensor"]


def radial_displacement_A(xyz_A, ideal_xyz_A, centre_A):
    """Displacement from the ideal lattice and its radial component.

    Returns
    -------
    u : (N, 3) array, Å
    u_r : (N,) array, Å (component along the outward radius)
    r : (N,) array, Å (distance from ``centre_A``)
    """
    xyz = np.asarray(xyz_A, float)
    u = xyz - np.asarray(ideal_xyz_A, float)
    rel = xyz - np.asarray(centre_A, float)
    r = np.linalg.norm(rel, axis=1)
    rhat = rel / np.where(r > 1e-9, r, 1.0)[:, None]
    return u, np.einsum("ij,ij->i", u, rhat), r


def _weighted_pairs(xyz, h_A, valid):
    """Directed pairs (i, j) incl. i == j within 3h, with Gaussian weights."""
    idx = np.flatnonzero(valid)
    if len(idx) == 0:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0)
    a, b, d2 = pairs_within(xyz[idx], 3.0 * h_A)          # i < j; both directions and self below
    i = np.concatenate([idx[a], idx[b], idx])
    j = np.concatenate([idx[b], idx[a], idx])
    d = np.sqrt(np.concatenate([d2, d2, np.zeros(len(idx))]))
    return i, j, np.exp(-0.5 * (d / h_A) ** 2)


def radial_strain(r_A, u_r_A, xyz_A, *, h_A: float = 2.0, valid=None, min_weight: float = 2.0):
    """Radial strain ε_RR = ∂u_R/∂R by local weighted linear regression.

    Parameters
    ----------
    r_A : (N,) array
        Reference radius of each atom (Å): distance of its ideal lattice site
        from the particle centre, so that a uniform expansion ε reads ε
        exactly (small-strain, reference-configuration derivative).
    u_r_A : (N,) array
        Radial displacement from the ideal bulk lattice (Å).
    xyz_A : (N, 3) array
        Reference positions (Å), normally the ideal sites; the neighbourhood
        of atom i is the atoms within 3·h_A, weighted by ``exp(-d²/(2 h²))``.
    h_A : float
        Kernel width (Å), default 2 Å (the reference's smoothing length).
    valid : (N,) bool array, optional
        Atoms to use (e.g. lattice inliers); others get NaN.
    min_weight : float
        Atoms whose neighbourhood spread Σw(R−R̄)² (Å²) is below
        ``min_weight · 0.01`` get NaN (no radial lever arm).

    Returns
    -------
    (N,) array: dimensionless strain (multiply by 100 for %).
    """
    r = np.asarray(r_A, float)
    ur = np.asarray(u_r_A, float)
    xyz = np.asarray(xyz_A, float).reshape(-1, 3)
    n = len(r)
    finite = np.isfinite(ur) & np.isfinite(r) & np.all(np.isfinite(xyz), axis=1)
    valid = finite if valid is None else (np.asarray(valid, bool) & finite)
    i, j, w = _weighted_pairs(xyz, h_A, valid)
    sw = np.bincount(i, w, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        rbar = np.bincount(i, w * r[j], n) / sw
        ubar = np.bincount(i, w * ur[j], n) / sw
        dr = r[j] - rbar[i]
        sxx = np.bincount(i, w * dr * dr, n)
        sxy = np.bincount(i, w * dr * (ur[j] - ubar[i]), n)
        out = sxy / sxx
    out[~valid | ~(sxx > 0.01 * min_weight)] = np.nan
    return out


def strain_tensor(xyz_A, u_A, *, h_A: float = 2.0, valid=None):
    """Local strain tensor from a Gaussian-weighted affine fit of displacements.

    Solves ``u_j − u_i ≈ E (x_j − x_i)`` (x: reference positions, normally
    the ideal sites) for every atom i over its neighbours
    within 3·h_A (weights ``exp(-d²/(2h²))``) and returns ε = (E + Eᵀ)/2.

    Returns
    -------
    (N, 3, 3) array (map x, y, z axes, dimensionless); NaN where the
    neighbourhood is degenerate or the atom is not valid.
    """
    xyz = np.asarray(xyz_A, float).reshape(-1, 3)
    u = np.asarray(u_A, float).reshape(-1, 3)
    n = len(xyz)
    finite = np.all(np.isfinite(u), 1) & np.all(np.isfinite(xyz), 1)
    valid = finite if valid is None else (np.asarray(valid, bool) & finite)
    i, j, w = _weighted_pairs(xyz, h_A, valid)
    dx = xyz[j] - xyz[i]
    du = u[j] - u[i]
    a = np.zeros((n, 3, 3))
    b = np.zeros((n, 3, 3))
    outer_xx = w[:, None, None] * dx[:, :, None] * dx[:, None, :]
    outer_ux = w[:, None, None] * du[:, :, None] * dx[:, None, :]
    for p in range(3):          # 9 bincounts per matrix: vectorised over pairs
        for q in range(3):
            a[:, p, q] = np.bincount(i, outer_xx[:, p, q], n)
            b[:, p, q] = np.bincount(i, outer_ux[:, p, q], n)
    det = np.linalg.det(a)
    scale = np.trace(a, axis1=1, axis2=2) ** 3 / 27.0
    good = valid & (det > 1e-3 * np.maximum(scale, 1e-30))
    e = np.full((n, 3, 3), np.nan)
    if good.any():
        # E A = B  →  E = B A⁻¹  →  Aᵀ Eᵀ = Bᵀ (A symmetric)
        et = np.linalg.solve(a[good], np.transpose(b[good], (0, 2, 1)))
        eg = np.transpose(et, (0, 2, 1))
        e[good] = 0.5 * (eg + np.transpose(eg, (0, 2, 1)))
    return e
