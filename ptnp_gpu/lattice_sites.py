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

__all__ = ["vacant_sites"]

_BOND_TOL = 0.25        # bonded: within (1 ± this) × the bulk bond
_MERGE_A = 0.5          # candidates this close are one site (Å)
_FULL_SHELL = 12        # close-packed: an atom with this many bonded neighbours has no vacant one (at least)


_MAX_CELLS_PER_ATOM = 64  # a sparser grid (atoms far apart in a big box): a k-d tree instead


class _Grid:
    """Atoms binned in cubic cells of edge ``cell_A`` (host), every atom within ``cell_A`` of a
    point in the 27 cells around the point's own: Numba scans of them. Where the cells would
    outnumber the atoms ``_MAX_CELLS_PER_ATOM`` times (a few atoms spread over a big box), a
    k-d tree answers instead, with the same answers."""

    def __init__(self, xyz, cell_A: float):
        self.xyz = np.ascontiguousarray(xyz, dtype=np.float64)
        self.lo = self.xyz.min(0) if len(self.xyz) else np.zeros(3)
        self.cell = float(cell_A)
        c = np.floor((self.xyz - self.lo) / self.cell).astype(np.int64)
        self.dims = c.max(0) + 1 if len(c) else np.ones(3, dtype=np.int64)
        n_cells = float(np.prod(self.dims.astype(np.float64)))
        self.tree = None
        if n_cells > _MAX_CELLS_PER_ATOM * len(self.xyz) + 4096:
            self.tree = cKDTree(self.xyz)
            return
        key = (c[:, 2] * self.dims[1] + c[:, 1]) * self.dims[0] + c[:, 0]
        self.order = np.argsort(key, kind="stable")
        self.start = np.zeros(int(n_cells) + 1, dtype=np.int64)
        np.cumsum(np.bincount(key, minlength=len(self.start) - 1), out=self.start[1:])

    def _args(self):
        return self.xyz, self.lo, self.cell, self.dims, self.start, self.order

    def pairs(self, r_lo: float, r_hi: float):
        """Pairs i < j with r_lo < distance ≤ r_hi (≤ the cell), lexicographic, (P, 2) int64."""
        if self.tree is None:
            return _pairs_in_shell(*self._args(), r_lo, r_hi)
        p = self.tree.query_pairs(r_hi, output_type="ndarray").astype(np.int64).reshape(-1, 2)
        if len(p):
            d = np.linalg.norm(self.xyz[p[:, 0]] - self.xyz[p[:, 1]], axis=1)
            p = p[d > r_lo]
        return p[np.lexsort((p[:, 1], p[:, 0]))]

    def near(self, points, r: float, count: bool = False):
        """Per point: whether an atom lies within ``r`` (≤ the cell), or with ``count`` how many."""
        points = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3)
        if self.tree is None:
            out = _near_all(points, *self._args(), r, 1 if count else 0)
        else:
            out = np.asarray(self.tree.query_ball_point(points, r, return_length=True), dtype=np.int64)
        return out if count else out > 0


@nb.njit(cache=True)
def _scan(p, xyz, lo, cell, dims, start, order, lo2, hi2, above, buf, store, first):
    """Atoms ``j > above`` with ``lo2 < |x_j − p|² ≤ hi2`` (radius ≤ the cell) around point ``p``:
    how many (stopping at the first when ``first``), their indices written to ``buf`` when
    ``store``."""
    cnt = 0
    c0 = np.empty(3, np.int64)
    for a in range(3):
        c0[a] = np.int64(np.floor((p[a] - lo[a]) / cell))
    for cz in range(max(c0[2] - 1, 0), min(c0[2] + 2, dims[2])):
        for cy in range(max(c0[1] - 1, 0), min(c0[1] + 2, dims[1])):
            for cx in range(max(c0[0] - 1, 0), min(c0[0] + 2, dims[0])):
                k = (cz * dims[1] + cy) * dims[0] + cx
                for q in range(start[k], start[k + 1]):
                    j = order[q]
                    if j <= above:
                        continue
                    dx = xyz[j, 0] - p[0]
                    dy = xyz[j, 1] - p[1]
                    dz = xyz[j, 2] - p[2]
                    d2 = dx * dx + dy * dy + dz * dz
                    if d2 > lo2 and d2 <= hi2:
                        if store:
                            buf[cnt] = j
                        cnt += 1
                        if first:
                            return cnt
    return cnt


@nb.njit(cache=True)
def _near_all(points, xyz, lo, cell, dims, start, order, r, mode):
    """Per point: 1 if an atom lies within ``r`` (≤ the cell) else 0 (mode 0), or how many (mode 1)."""
    out = np.empty(len(points), np.int64)
    none = np.empty(0, np.int64)
    for i in range(len(points)):
        out[i] = _scan(points[i], xyz, lo, cell, dims, start, order, -1.0, r * r, -1, none, False, mode == 0)
    return out


@nb.njit(cache=True)
def _pairs_in_shell(xyz, lo, cell, dims, start, order, r_lo, r_hi):
    """Pairs i < j with r_lo < |x_i − x_j| ≤ r_hi (r_hi ≤ the cell), in lexicographic order."""
    n = len(xyz)
    cap = 16 * n + 16
    out = np.empty((cap, 2), np.int64)
    m = 0
    buf = np.empty(n, np.int64)
    for i in range(n):
        nb_ = _scan(xyz[i], xyz, lo, cell, dims, start, order, r_lo * r_lo, r_hi * r_hi, i, buf, True, False)
        js = np.sort(buf[:nb_])
        if m + nb_ > cap:
            grown = np.empty((2 * (m + nb_), 2), np.int64)
            grown[:m] = out[:m]
            out = grown
            cap = len(out)
        for t in range(nb_):
            out[m, 0] = i
            out[m, 1] = js[t]
            m += 1
    return out[:m]


def _bonded_pairs(xyz_A, bond_A):
    """The atoms' grid (cells of 1.25 bonds) and their bonded pairs i < j, lexicographic."""
    grid = _Grid(xyz_A, (1.0 + _BOND_TOL) * bond_A)
    return grid, grid.pairs((1.0 - _BOND_TOL) * bond_A, (1.0 + _BOND_TOL) * bond_A)


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
    grid, pairs = _bonded_pairs(xyz, bond_A)
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
    cand = cand[~grid.near(cand, clear * bond_A)]        # no atom within the clearance
    if len(cand) == 0:
        return empty
    # merge: each candidate joins the densest group around it first (greedy, by group size)
    sites, votes = _merge(cand)
    keep = votes >= min_votes
    sites, votes = sites[keep], votes[keep]
    if len(sites) == 0:
        return empty
    sites = np.ascontiguousarray(sites)
    nbond = grid.near(sites, 1.25 * bond_A, count=True)
    keep = (nbond >= min_bonds) & ~grid.near(sites, clear * bond_A)
    return sites[keep], votes[keep]
