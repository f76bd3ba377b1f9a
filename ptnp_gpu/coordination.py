"""Coordination statistics from atom positions: CN, GCN and nearest-neighbour bonds.

All functions take (N, 3) positions in Å (x, y, z, map frame) and work on
neighbour *pairs* (from a k-d tree) with vectorised reductions
(``np.bincount``), never a loop over atoms.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .neighbors import pairs_within

__all__ = ["neighbour_pairs", "coordination_numbers", "generalized_cn", "nn_bond_lengths_A",
           "particle_diameter_A"]


def neighbour_pairs(xyz_A, cutoff_A: float) -> np.ndarray:
    """All unordered pairs (i < j) closer than ``cutoff_A``.

    Returns
    -------
    (P, 2) int array.
    """
    xyz = np.asarray(xyz_A, float).reshape(-1, 3)
    if len(xyz) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    i, j, _ = pairs_within(xyz, float(cutoff_A))
    return np.stack([i, j], axis=1).astype(np.int64)


def coordination_numbers(xyz_A, cutoff_A: float, pairs=None) -> np.ndarray:
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
    (N,) int array.

    Examples
    --------
    >>> import numpy as np
    >>> coordination_numbers(np.array([[0, 0, 0], [2.7, 0, 0], [9, 0, 0.]]), 3.3).tolist()
    [1, 1, 0]
    """
    n = len(np.asarray(xyz_A).reshape(-1, 3))
    p = neighbour_pairs(xyz_A, cutoff_A) if pairs is None else np.asarray(pairs)
    return np.bincount(p.ravel(), minlength=n).astype(np.int64)


def generalized_cn(cn, pairs, cn_bulk: float | None = None) -> np.ndarray:
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
    (N,) float array (0 for atoms without neighbours).
    """
    cn = np.asarray(cn, dtype=np.float64)
    n = len(cn)
    p = np.asarray(pairs).reshape(-1, 2)
    i = np.concatenate([p[:, 0], p[:, 1]])
    k = np.concatenate([p[:, 1], p[:, 0]])
    total = np.bincount(i, weights=cn[k], minlength=n)
    if cn_bulk is not None:
        return total / float(cn_bulk)
    cmax = np.zeros(n)
    np.maximum.at(cmax, i, cn[k])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cmax > 0, total / np.where(cmax > 0, cmax, 1.0), 0.0)


def nn_bond_lengths_A(xyz_A) -> np.ndarray:
    """Distance from each atom to its nearest other atom (Å); NaN for a lone atom."""
    xyz = np.asarray(xyz_A, float).reshape(-1, 3)
    if len(xyz) < 2:
        return np.full(len(xyz), np.nan)
    return cKDTree(xyz).query(xyz, k=2)[0][:, 1]


def particle_diameter_A(xyz_A) -> float:
    """Largest interatomic distance (Å), searched over the convex-hull vertices."""
    from scipy.spatial import ConvexHull, QhullError
    from scipy.spatial.distance import pdist
    xyz = np.asarray(xyz_A, float).reshape(-1, 3)
    try:
        hull = xyz[ConvexHull(xyz).vertices] if len(xyz) > 4 else xyz
    except (QhullError, ValueError):   # flat or degenerate sets
        hull = xyz
    return float(pdist(hull).max()) if len(hull) > 1 else 0.0
