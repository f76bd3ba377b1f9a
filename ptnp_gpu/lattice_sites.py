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

import numba as nb
import numpy as np
from scipy.spatial import cKDTree

from .backend import fft_workers

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


def _csr(rows, cols, n):
    """(start, cols) of the entries (rows, cols) grouped by row, each row's columns ascending."""
    order = np.argsort(rows.astype(np.int64) * n + cols, kind="stable")
    start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=start[1:])
    return start, np.ascontiguousarray(cols[order], dtype=np.int64)


@nb.njit(cache=True)
def _triangles_csr(start, cols, a, b):
    """Triangles (a, b, k) with k > b common to the sorted rows of a and b (a < b)."""
    cap = 4 * len(a) + 16
    out = np.empty((cap, 3), np.int64)
    t = 0
    for p in range(len(a)):
        i, j = a[p], b[p]
        x, xe = start[i], start[i + 1]
        y, ye = start[j], start[j + 1]
        while x < xe and y < ye:
            u, v = cols[x], cols[y]
            if u < v:
                x += 1
            elif v < u:
                y += 1
            else:
                if u > j:
                    if t == cap:
                        grown = np.empty((2 * cap, 3), np.int64)
                        grown[:t] = out[:t]
                        out = grown
                        cap *= 2
                    out[t, 0] = i
                    out[t, 1] = j
                    out[t, 2] = u
                    t += 1
                x += 1
                y += 1
    return out[:t]


def _triangles(pairs, n):
    """(T, 3) index triples i < j < k of mutually bonded atoms, from the (P, 2) pairs i < j."""
    if len(pairs) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    start, cols = _csr(np.concatenate([pairs[:, 0], pairs[:, 1]]), np.concatenate([pairs[:, 1], pairs[:, 0]]), n)
    return _triangles_csr(start, cols, np.ascontiguousarray(pairs[:, 0], dtype=np.int64),
                          np.ascontiguousarray(pairs[:, 1], dtype=np.int64))


@nb.njit(cache=True)
def _greedy_merge(cand, start, cols, order):
    """Each candidate, densest group first, joins the group around it with the candidates not yet
    taken (the group's mean is the site, its size the votes); rows of (start, cols) hold each
    candidate's neighbours within the merge radius, itself included, ascending."""
    n = len(cand)
    used = np.zeros(n, np.bool_)
    sites = np.empty((n, 3))
    votes = np.empty(n, np.int64)
    m = 0
    for o in order:
        if used[o]:
            continue
        sx = 0.0
        sy = 0.0
        sz = 0.0
        c = 0
        for q in range(start[o], start[o + 1]):
            x = cols[q]
            if not used[x]:
                used[x] = True
                sx += cand[x, 0]
                sy += cand[x, 1]
                sz += cand[x, 2]
                c += 1
        sites[m, 0] = sx / c
        sites[m, 1] = sy / c
        sites[m, 2] = sz / c
        votes[m] = c
        m += 1
    return sites[:m], votes[:m]


def _merge(cand):
    """Candidates within 0.5 Å merged (greedy, densest group first): sites and their votes."""
    n = len(cand)
    p = cKDTree(cand).query_pairs(_MERGE_A, output_type="ndarray").reshape(-1, 2).astype(np.int64)
    own = np.arange(n, dtype=np.int64)              # each row holds the candidate itself
    start, cols = _csr(np.concatenate([p[:, 0], p[:, 1], own]), np.concatenate([p[:, 1], p[:, 0], own]), n)
    size = np.diff(start)
    order = np.argsort(-size, kind="stable")
    return _greedy_merge(np.ascontiguousarray(cand, dtype=np.float64), start, cols, order)


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
    workers = fft_workers()            # the host threads this process may use (same answers)
    d, _ = tree.query(cand, distance_upper_bound=clear * bond_A, workers=workers)
    cand = cand[d > clear * bond_A]
    if len(cand) == 0:
        return empty
    # merge: each candidate joins the densest group around it first (greedy, by group size)
    sites, votes = _merge(cand)
    keep = votes >= min_votes
    sites, votes = sites[keep], votes[keep]
    if len(sites) == 0:
        return empty
    nbond = tree.query_ball_point(sites, 1.25 * bond_A, return_length=True, workers=workers)
    d, _ = tree.query(sites, distance_upper_bound=clear * bond_A, workers=workers)
    keep = (nbond >= min_bonds) & (d > clear * bond_A)
    return sites[keep], votes[keep]
