"""Displacements from the ideal bulk lattice and local strain.

The ideal lattice has the fitted orientation, the *bulk* lattice parameter,
and its centroid on the particle centre (:func:`ptnp_gpu.lattice.ideal_sites_A`),
so a uniform expansion ε appears as a displacement ``u = ε (x − centre)``.

* Radial strain ``ε_RR = ∂u_R/∂R`` per atom: slope of a Gaussian-weighted
  (h = 2 Å) local linear regression of the radial displacement u_R on the
  radius R over the atoms within 3h.
* Strain tensor per atom: symmetric part of the Gaussian-weighted local affine
  fit ``u_j − u_i ≈ E (x_j − x_i)`` over the same neighbourhood.

Both take NumPy or CuPy arrays and run on that backend, vectorised over
neighbour pairs (segment sums, :func:`ptnp_gpu.neighbors.segment_sum`, and
one batched 3×3 solve), not a loop over atoms. The neighbourhood (pair
search and weights) can be built once with :func:`strain_neighbourhood` and
shared by both estimates. Positions (x, y, z) Å, map frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backend as _be
from .neighbors import pairs_within
from .gpu_kernels import pair_affine_sums, radial_fit_sums

__all__ = ["radial_displacement_A", "radial_strain", "strain_tensor", "strain_neighbourhood",
           "StrainNeighbourhood"]


def radial_displacement_A(xyz_A, ideal_xyz_A, centre_A):
    """Displacement from the ideal lattice and its radial component.

    Returns
    -------
    u : (N, 3) array, Å
    u_r : (N,) array, Å (component along the outward radius)
    r : (N,) array, Å (distance from ``centre_A``)

    All on the backend of the inputs (CuPy if any is a CuPy array).
    """
    xp = _be.namespace(xyz_A, ideal_xyz_A, centre_A).xp
    xyz = xp.asarray(xyz_A, dtype=xp.float64)
    u = xyz - xp.asarray(ideal_xyz_A, dtype=xp.float64)
    rel = xyz - xp.asarray(centre_A, dtype=xp.float64)
    r = xp.linalg.norm(rel, axis=1)
    rhat = rel / xp.where(r > 1e-9, r, 1.0)[:, None]
    return u, (u * rhat).sum(axis=1), r             # the radial component (no einsum planning on CuPy)


@dataclass(frozen=True)
class StrainNeighbourhood:
    """Valid atoms within 3h of each other and their Gaussian weights (one backend).

    Attributes
    ----------
    a, b : (P,) int64 arrays
        Unordered pairs of distinct valid atoms (indices into all N atoms).
    w_ab : (P,) float64 array
        Weights ``exp(-d²/(2h²))`` of the pairs (d in Å).
    atoms : (M,) int64 array
        The valid atoms; each is also its own neighbour with weight 1.
    valid : (N,) bool array
        Atoms taking part (given mask and finite positions).
    h_A : float
        Kernel width (Å).
    """
    a: object
    b: object
    w_ab: object
    atoms: object
    valid: object
    h_A: float

    def directed(self):
        """Directed pairs ``(i, j, w)``: both directions of every pair, then i == j."""
        xp = _be.namespace(self.a).xp
        i = xp.concatenate([self.a, self.b, self.atoms])
        j = xp.concatenate([self.b, self.a, self.atoms])
        w = xp.concatenate([self.w_ab, self.w_ab, xp.ones(len(self.atoms))])
        return i, j, w


def strain_neighbourhood(xyz_A, *, h_A: float = 2.0, valid=None, domain=None) -> StrainNeighbourhood:
    """Pairs of valid atoms within 3·h_A and their Gaussian weights.

    Parameters
    ----------
    xyz_A : (N, 3) array
        Reference positions (Å), normally the ideal lattice sites.
    h_A : float
        Kernel width (Å).
    valid : (N,) bool array, optional
        Atoms to use; atoms with non-finite positions are always left out.
    domain : (N,) int array, optional
        Crystal domain of each atom (:class:`ptnp_gpu.lattice.LatticeDomains`): only atoms
        of one domain are neighbours, so no fit reaches across a twin boundary, where the
        displacements from two lattices jump.

    Returns
    -------
    StrainNeighbourhood on the backend of ``xyz_A``.
    """
    xp = _be.namespace(xyz_A, valid).xp
    xyz = xp.asarray(xyz_A, dtype=xp.float64).reshape(-1, 3)
    finite = xp.all(xp.isfinite(xyz), axis=1)
    valid = finite if valid is None else (xp.asarray(valid, dtype=bool) & finite)
    idx = xp.flatnonzero(valid)
    if len(idx) == 0:
        e = xp.zeros(0, dtype=xp.int64)
        return StrainNeighbourhood(e, e, xp.zeros(0), idx, valid, float(h_A))
    a, b, d2 = pairs_within(xyz[idx], 3.0 * h_A)
    if domain is not None:
        dom = xp.asarray(domain)[idx]
        keep = xp.flatnonzero(dom[a] == dom[b])         # one host read for the three arrays
        a, b, d2 = a[keep], b[keep], d2[keep]
    w = xp.exp(-0.5 * (xp.sqrt(d2) / h_A) ** 2)
    return StrainNeighbourhood(idx[a], idx[b], w, idx, valid, float(h_A))


def _matching(neighbourhood, xyz, h_A, valid) -> StrainNeighbourhood:
    """``neighbourhood`` if it was built for ``valid`` and ``h_A``, else a new one."""
    be = _be.namespace(valid)
    if neighbourhood is not None and neighbourhood.h_A == float(h_A) \
            and _be.namespace(neighbourhood.valid) is be and neighbourhood.valid.shape == valid.shape:
        if bool(be.xp.all(neighbourhood.valid == valid)):                # one sync
            return neighbourhood
    return strain_neighbourhood(xyz, h_A=h_A, valid=valid)


def radial_strain(r_A, u_r_A, xyz_A, *, h_A: float = 2.0, valid=None, min_weight: float = 2.0,
                  neighbourhood: StrainNeighbourhood | None = None):
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
    neighbourhood : StrainNeighbourhood, optional
        From :func:`strain_neighbourhood` on the same ``xyz_A``; used when
        its atoms and ``h_A`` match (else rebuilt), to share one pair search
        with :func:`strain_tensor`.

    Returns
    -------
    (N,) float64 array on the inputs' backend: dimensionless strain
    (multiply by 100 for %).
    """
    xp = _be.namespace(r_A, u_r_A, xyz_A, valid).xp
    r = xp.asarray(r_A, dtype=xp.float64)
    ur = xp.asarray(u_r_A, dtype=xp.float64)
    xyz = xp.asarray(xyz_A, dtype=xp.float64).reshape(-1, 3)
    n = len(r)
    finite = xp.isfinite(ur) & xp.isfinite(r) & xp.all(xp.isfinite(xyz), axis=1)
    valid = finite if valid is None else (xp.asarray(valid, dtype=bool) & finite)
    i, j, w = _matching(neighbourhood, xyz, h_A, valid).directed()
    # Σw, Σw·R, Σw·u_R per atom, then the spread about the means: two launches on a device
    s = radial_fit_sums(i, j, w, r, ur, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        sxx = s[0]
        out = s[1] / sxx
    return xp.where(valid & (sxx > 0.01 * min_weight), out, xp.nan)


def strain_tensor(xyz_A, u_A, *, h_A: float = 2.0, valid=None,
                  neighbourhood: StrainNeighbourhood | None = None):
    """Local strain tensor from a Gaussian-weighted affine fit of displacements.

    Solves ``u_j − u_i ≈ E (x_j − x_i)`` (x: reference positions, normally
    the ideal sites) for every atom i over its neighbours
    within 3·h_A (weights ``exp(-d²/(2h²))``) and returns ε = (E + Eᵀ)/2.
    ``neighbourhood`` as in :func:`radial_strain`.

    Returns
    -------
    (N, 3, 3) float64 array on the inputs' backend (map x, y, z axes,
    dimensionless); NaN where the neighbourhood is degenerate or the atom
    is not valid.
    """
    xp = _be.namespace(xyz_A, u_A, valid).xp
    xyz = xp.asarray(xyz_A, dtype=xp.float64).reshape(-1, 3)
    u = xp.asarray(u_A, dtype=xp.float64).reshape(-1, 3)
    n = len(xyz)
    finite = xp.all(xp.isfinite(u), axis=1) & xp.all(xp.isfinite(xyz), axis=1)
    valid = finite if valid is None else (xp.asarray(valid, dtype=bool) & finite)
    nb = _matching(neighbourhood, xyz, h_A, valid)
    # a pair adds the same w·dx dxᵀ and w·du dxᵀ to both its atoms (dx and du change
    # sign together, exactly); the atom itself adds nothing. On a device one kernel
    # launch; on the host a product table and a bincount per row, the summation order of
    # a plain directed-pair bincount
    sums = pair_affine_sums(xyz, u, nb.a, nb.b, nb.w_ab, n)                 # (18, N)
    a = sums[:9].T.reshape(n, 3, 3)                                          # Σ w dx dxᵀ
    b = sums[9:].T.reshape(n, 3, 3)                                          # Σ w du dxᵀ
    det = xp.linalg.det(a)
    scale = xp.trace(a, axis1=1, axis2=2) ** 3 / 27.0
    good = valid & (det > 1e-3 * xp.maximum(scale, 1e-30))
    # E A = B  →  Aᵀ Eᵀ = Bᵀ (A symmetric); degenerate atoms solve I x = Bᵀ and are masked
    a = xp.where(good[:, None, None], a, xp.eye(3))
    eg = xp.swapaxes(xp.linalg.solve(a, xp.swapaxes(b, 1, 2)), 1, 2)
    return xp.where(good[:, None, None], 0.5 * (eg + xp.swapaxes(eg, 1, 2)), xp.nan)
