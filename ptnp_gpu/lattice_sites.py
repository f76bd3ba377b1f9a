"""Vacant lattice sites next to the atoms found: where missed, mobile surface atoms sit.

Atoms of a close-packed metal (fcc, hcp) sit on a lattice, mobile surface atoms included (their
mean positions stay near their sites while their density spreads over 1-2 Å). Their peaks in
the denoised map are low (our simulator's surface U of 0.8 Å²: 2.2-3.4 noise SDs, against 6
for the same atom alone), too low for a search of the whole map, where noise maxima pass 3.5
SDs by the hundred. At the few hundred sites the lattice leaves vacant beside the atoms found,
far fewer tests are made, and the empty ones read low: the particle's rim sits in the denoised
map's trough (empty sites one shell out: 99th percentile 1.6-1.7 SDs, maximum 2.0-2.2).

* :func:`vacant_sites` — candidate sites completed from triangles of mutually bonded atoms: the
  fourth corner of each rhombus in their close-packed plane (``j + k − i``) and the two apexes
  of the tetrahedra on the triangle (one is a lattice site, the other an octahedral hole, which
  the bonds rule out); candidates within 0.5 Å of each other are merged and counted as votes.
  Only the surface takes part: atoms with fewer than 12 bonded neighbours (a site beside a fully
  coordinated atom is taken). ``j + k − i`` is a lattice point of any Bravais lattice (bcc too,
  whose first and second shells both count as bonded here); the apexes are sites of close-packed
  lattices only, and elsewhere are tested against the map like any candidate.

Host NumPy/SciPy on the model's positions (a few thousand surface atoms at most); the map work
(the denoised map's maxima at the sites) is the detection's, on its backend.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["vacant_sites"]

_BOND_TOL = 0.25        # bonded: within (1 ± this) × the bulk bond
_MERGE_A = 0.5          # candidates this close are one site (Å)
_FULL_SHELL = 12        # close-packed: an atom with this many bonded neighbours has no vacant one (at least)


def _bonded_pairs(xyz_A, bond_A):
    tree = cKDTree(xyz_A)
    pairs = tree.query_pairs((1.0 + _BOND_TOL) * bond_A, output_type="ndarray")
    if len(pairs):
        d = np.linalg.norm(xyz_A[pairs[:, 0]] - xyz_A[pairs[:, 1]], axis=1)
        pairs = pairs[d > (1.0 - _BOND_TOL) * bond_A]
    return tree, pairs.reshape(-1, 2)


def _triangles(pairs, n):
    """(T, 3) index triples i < j < k of mutually bonded atoms, from the (P, 2) pairs i < j."""
    if len(pairs) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    deg = np.bincount(pairs.ravel(), minlength=n)
    width = int(deg.max())
    nbr = np.full((n, width), -1, dtype=np.int64)
    ends = np.concatenate([pairs, pairs[:, ::-1]])
    order = np.lexsort((ends[:, 1], ends[:, 0]))
    ends = ends[order]
    start = np.concatenate([[0], np.cumsum(np.bincount(ends[:, 0], minlength=n))[:-1]])
    slot = np.arange(len(ends)) - start[ends[:, 0]]
    nbr[ends[:, 0], slot] = ends[:, 1]
    a, b = pairs[:, 0], pairs[:, 1]
    common = (nbr[a][:, :, None] == nbr[b][:, None, :]) & (nbr[a][:, :, None] > b[:, None, None])
    p_idx, s_idx, _ = np.nonzero(common)
    return np.stack([a[p_idx], b[p_idx], nbr[a[p_idx], s_idx]], axis=1)


def vacant_sites(xyz_A, bond_A: float, *, min_votes: int = 2, min_bonds: int = 3, clear: float = 0.8):
    """Candidate vacant lattice sites beside a close-packed model (host arrays).

    Parameters
    ----------
    xyz_A : (N, 3) array, the atoms found (Å)
    bond_A : float, the bulk nearest-neighbour distance (Å)
    min_votes : int, completions that must agree on a site (within 0.5 Å)
    min_bonds : int, atoms within 1.25 × the bond that a site must have
    clear : float, a site is farther than this × the bond from every atom

    Returns
    -------
    sites : (M, 3) array (Å), votes : (M,) int array
    """
    xyz = np.asarray(xyz_A, float)
    empty = (np.zeros((0, 3)), np.zeros(0, dtype=np.int64))
    if len(xyz) < 4:
        return empty
    tree, pairs = _bonded_pairs(xyz, bond_A)
    deg = np.bincount(pairs.ravel(), minlength=len(xyz))
    # a full shell: 12 in a close-packed metal; bcc counts 14 (its second shell lies within the
    # bond range here), which the bulk atoms then show
    surface = deg < max(_FULL_SHELL, int(np.quantile(deg, 0.9)))
    # a completed site is bonded to the atoms it completes from: those must have a vacant neighbour
    pairs = pairs[surface[pairs[:, 0]] | surface[pairs[:, 1]]]
    tri = _triangles(pairs, len(xyz))
    if len(tri) == 0:
        return empty
    s3 = surface[tri]
    A, B, C = xyz[tri[:, 0]], xyz[tri[:, 1]], xyz[tri[:, 2]]
    centre = (A + B + C) / 3.0
    normal = np.cross(B - A, C - A)
    normal /= np.maximum(np.linalg.norm(normal, axis=1), 1e-12)[:, None]
    side = (np.linalg.norm(B - A, axis=1) + np.linalg.norm(C - A, axis=1) + np.linalg.norm(C - B, axis=1)) / 3.0
    apex = normal * (np.sqrt(2.0 / 3.0) * side)[:, None]
    # in plane: the corner opposite each vertex, beside the other two; apexes: beside all three
    cand = np.concatenate([(B + C - A)[s3[:, 1] & s3[:, 2]], (A + C - B)[s3[:, 0] & s3[:, 2]],
                           (A + B - C)[s3[:, 0] & s3[:, 1]], (centre + apex)[s3.all(1)], (centre - apex)[s3.all(1)]])
    if len(cand) == 0:
        return empty
    d, _ = tree.query(cand)
    cand = cand[d > clear * bond_A]
    if len(cand) == 0:
        return empty
    # merge: each candidate joins the densest group around it first (greedy, by group size)
    groups = cKDTree(cand).query_ball_point(cand, _MERGE_A)
    size = np.array([len(g) for g in groups])
    used = np.zeros(len(cand), bool)
    sites, votes = [], []
    for o in np.argsort(-size, kind="stable"):
        if used[o]:
            continue
        g = [x for x in groups[o] if not used[x]]
        used[g] = True
        sites.append(cand[g].mean(0))
        votes.append(len(g))
    sites, votes = np.array(sites), np.array(votes)
    keep = votes >= min_votes
    sites, votes = sites[keep], votes[keep]
    if len(sites) == 0:
        return empty
    nb = np.array([len(v) for v in tree.query_ball_point(sites, 1.25 * bond_A)])
    d, _ = tree.query(sites)
    keep = (nb >= min_bonds) & (d > clear * bond_A)
    return sites[keep], votes[keep]
