"""Coordination statistics from atom positions: CN, GCN and nearest-neighbour bonds.

All functions take (N, 3) positions in Å (x, y, z, map frame) as NumPy or
CuPy arrays and compute on that array's backend: neighbour *pairs*
(:func:`ptnp_gpu.neighbors.pairs_within`: a cell list, the same pairs in the same
order on both backends) reduced onto the atoms with vectorised segment sums and maxima,
never a loop over atoms. Results are on the input's backend, except the
particle diameter (a host convex hull, one scalar).
"""
from __future__ import annotations

import numpy as np

from . import backend as _be
from .neighbors import pairs_within, segment_max, segment_sum

__all__ = ["neighbour_pairs", "coordination_numbers", "generalized_cn", "generalized_cn_pair", "nn_bond_lengths_A",
           "mean_bond_lengths_A", "particle_diameter_A"]


def _positions(xyz_A, xp):
    return xp.asarray(xyz_A, dtype=xp.float64).reshape(-1, 3)


def neighbour_pairs(xyz_A, cutoff_A: float):
    """All unordered pairs (i < j) closer than ``cutoff_A``.

    Returns
    -------
    (P, 2) int64 array on the backend of ``xyz_A``.
    """
    xp = _be.namespace(xyz_A).xp
    xyz = _positions(xyz_A, xp)
    if len(xyz) < 2:
        return xp.zeros((0, 2), dtype=xp.int64)
    i, j, _ = pairs_within(xyz, float(cutoff_A))
    return xp.stack([i, j], axis=1).astype(xp.int64)


def coordination_numbers(xyz_A, cutoff_A: float, pairs=None):
    """Number of other atoms within ``cutoff_A`` of each atom (CN).

    Parameters
    ----------
    xyz_A : (N, 3) array, Å
    cutoff_A : float
        Neighbour radius in Å (the paper: ``ā/2 · (1 + 1/√2)``).
    pairs : (P, 2) int array, optional
        Precomputed pairs from :func:`neighbour_pairs`.

    Returns
    -------
    (N,) int64 array on the backend of ``xyz_A`` (or of ``pairs``).

    Examples
    --------
    >>> import numpy as np
    >>> coordination_numbers(np.array([[0, 0, 0], [2.7, 0, 0], [9, 0, 0.]]), 3.3).tolist()
    [1, 1, 0]
    """
    be = _be.namespace(xyz_A, pairs)
    xp = be.xp
    n = len(_positions(xyz_A, xp))
    p = neighbour_pairs(xyz_A, cutoff_A) if pairs is None else xp.asarray(pairs)
    if p.size == 0:                       # cupy.bincount refuses empty input
        return xp.zeros(n, dtype=xp.int64)
    if be.is_gpu:                         # cupy.bincount reads two numbers back; this reads none
        return segment_sum(p.ravel(), [xp.ones(p.size)], n)[0].astype(xp.int64)
    return xp.bincount(p.ravel(), minlength=n).astype(xp.int64)


def _directed(pairs, xp):
    """Both directions of unordered pairs: centre atoms i and neighbours k."""
    p = xp.asarray(pairs).reshape(-1, 2)
    return xp.concatenate([p[:, 0], p[:, 1]]), xp.concatenate([p[:, 1], p[:, 0]])


def generalized_cn(cn, pairs, cn_bulk: float | None = None):
    """Generalized coordination number from CN and neighbour pairs.

    ``GCN_i = Σ_k CN_k / CN_max`` over the neighbours k of atom i. With
    ``cn_bulk=None``, CN_max is the largest CN among atom i's neighbours (the
    paper's definition); otherwise the fixed bulk value (12 for fcc: the usual
    catalysis definition).

    Parameters
    ----------
    cn : (N,) int array
    pairs : (P, 2) int array of neighbour pairs
    cn_bulk : float, optional

    Returns
    -------
    (N,) float64 array on the backend of ``cn`` / ``pairs`` (0 for atoms
    without neighbours).
    """
    if cn_bulk is not None:
        return _neighbour_cn_sums(cn, pairs)[3] / float(cn_bulk)
    return generalized_cn_pair(cn, pairs, None)[0]


def _neighbour_cn_sums(cn, pairs):
    """(xp, centre atom of each directed pair, the neighbour's CN, Σ neighbour CN per atom)."""
    xp = _be.namespace(cn, pairs).xp
    cn = xp.asarray(cn, dtype=xp.float64)
    i, k = _directed(pairs, xp)
    cnk = cn[k]
    return xp, i, cnk, segment_sum(i, [cnk], len(cn))[0]


def generalized_cn_pair(cn, pairs, cn_bulk: float | None):
    """Both generalized coordination numbers of :func:`generalized_cn` from one pass over the
    pairs: (the paper's, CN_max the largest neighbour CN; the bulk one, ``cn_bulk``, or None)."""
    xp, i, cnk, total = _neighbour_cn_sums(cn, pairs)
    cmax = segment_max(i, cnk, len(cn), empty=0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        gcn = xp.where(cmax > 0, total / xp.where(cmax > 0, cmax, 1.0), 0.0)
    return gcn, (None if cn_bulk is None else total / float(cn_bulk))


def _nearest_brute_force_A(xyz, rows, chunk_elements: int = 1 << 21):
    """Exact nearest-neighbour distance (Å) of the atoms ``rows`` against all atoms.

    A chunked all-against-all search on the array's backend (the device
    fallback for atoms without a neighbour inside the pair radius); the
    Python loop runs over chunks of ``chunk_elements // N`` rows, not atoms.
    """
    xp = _be.namespace(xyz).xp
    n = len(xyz)
    out = []
    step = max(1, chunk_elements // max(n, 1))
    for s in range(0, len(rows), step):
        r = rows[s:s + step]
        d = xyz[r][:, None, :] - xyz[None, :, :]
        d2 = (d * d).sum(-1)
        d2[xp.arange(len(r)), r] = xp.inf                # not the atom itself
        out.append(xp.sqrt(d2.min(axis=1)))
    return xp.concatenate(out) if out else xp.zeros(0)


def _nearest_A(xyz, rows):
    """Exact nearest-neighbour distance (Å) of the atoms ``rows``: k-d tree on NumPy, brute force on CuPy."""
    if _be.namespace(xyz).is_gpu:
        return _nearest_brute_force_A(xyz, rows)
    from scipy.spatial import cKDTree
    return cKDTree(xyz).query(xyz[rows], k=2)[0][:, 1]


def mean_bond_lengths_A(xyz_A, pairs):
    """Mean distance (Å) from each atom to its bonded neighbours (``pairs``, e.g. the CN pairs
    of :func:`neighbour_pairs`); NaN for an atom without one.

    The nearest-neighbour bond (:func:`nn_bond_lengths_A`, the paper's) is the shortest of
    about twelve noisy distances and reads short by about 1.6 × their noise; the mean of them
    is unbiased to first order (measured on an 800-atom Pt model detected with a 0.13 Å position
    RMSD: nearest-neighbour median 2.662 Å, mean 2.780 Å, true 2.775 Å).

    Examples
    --------
    >>> import numpy as np
    >>> xyz = np.array([[0, 0, 0], [2.7, 0, 0], [0, 2.9, 0.]])
    >>> mean_bond_lengths_A(xyz, neighbour_pairs(xyz, 3.0)).round(2).tolist()
    [2.8, 2.7, 2.9]
    """
    xp = _be.namespace(xyz_A, pairs).xp
    pos = _positions(xyz_A, xp)
    n = len(pos)
    p = xp.asarray(pairs).reshape(-1, 2)
    d = xp.linalg.norm(pos[p[:, 0]] - pos[p[:, 1]], axis=1)
    one = xp.ones_like(d)
    sums = segment_sum(xp.concatenate([p[:, 0], p[:, 1]]),
                       [xp.concatenate([d, d]), xp.concatenate([one, one])], n)
    return xp.where(sums[1] > 0, sums[0] / xp.maximum(sums[1], 1.0), xp.nan)


def nn_bond_lengths_A(xyz_A, pairs=None, *, search_A: float | None = None):
    """Distance from each atom to its nearest other atom (Å); NaN when there is no other atom.

    With ``pairs`` (all pairs within some cutoff, e.g. the CN pairs from
    :func:`neighbour_pairs`), the bond of every atom that has a pair is the
    shortest of its pair distances (exact: its nearest neighbour is inside
    the cutoff); atoms without a pair fall back to a k-d tree query on NumPy
    and to an exact brute-force search on CuPy. ``search_A`` finds such pairs
    here instead (e.g. 1.5 × the element's bond length). With neither, NumPy
    queries a k-d tree for every atom and CuPy searches by brute force.

    Parameters
    ----------
    xyz_A : (N, 3) array, Å
    pairs : (P, 2) int array, optional
    search_A : float, optional
        Pair-search radius (Å) when ``pairs`` is not given.

    Returns
    -------
    (N,) float64 array on the backend of ``xyz_A``.
    """
    be = _be.namespace(xyz_A, pairs)
    xp = be.xp
    xyz = _positions(xyz_A, xp)
    n = len(xyz)
    if n < 2:
        return xp.full(n, xp.nan)
    if pairs is None and search_A is not None:
        pairs = neighbour_pairs(xyz, search_A)
    if pairs is None:
        return _nearest_A(xyz, xp.arange(n))
    i, k = _directed(pairs, xp)
    d = xyz[i] - xyz[k]
    bond = xp.sqrt(-segment_max(i, -(d * d).sum(1), n))     # +inf: no pair; d² summed as the pair search does
    lonely = xp.nonzero(~xp.isfinite(bond))[0]
    if lonely.size:                                          # one sync
        bond[lonely] = _nearest_A(xyz, lonely)
    return bond


def particle_diameter_A(xyz_A) -> float:
    """Largest interatomic distance (Å), searched over the convex-hull vertices.

    Only atoms that can end a longest pair are searched: with c the centroid,
    r the largest |x - c| and L any distance found between two atoms, both ends
    a, b of the longest pair satisfy |a - c| >= |a - b| - |b - c| >= L - r.
    Runs on the host (Qhull): a CuPy input is copied once.
    """
    from scipy.spatial import ConvexHull, QhullError
    from scipy.spatial.distance import pdist
    xyz = np.asarray(_be.to_host(xyz_A), float).reshape(-1, 3)
    if len(xyz) > 64:
        rc = np.linalg.norm(xyz - xyz.mean(0), axis=1)
        far = xyz[int(np.argmax(rc))]                  # L: the farthest atom's farthest atom
        lower = float(np.linalg.norm(xyz - far, axis=1).max())
        xyz = xyz[rc >= lower - rc.max() - 1e-9 * max(lower, 1.0)]
    try:
        hull = xyz[ConvexHull(xyz).vertices] if len(xyz) > 4 else xyz
    except (QhullError, ValueError):   # flat or degenerate sets
        hull = xyz
    return float(pdist(hull).max()) if len(hull) > 1 else 0.0
