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
from .host_parallel import thread_safe

__all__ = ["vacant_sites"]

_BOND_TOL = 0.25        # bonded: within (1 ± this) × the bulk bond
_MERGE_A = 0.5          # candidates this close are one site (Å)
_FULL_SHELL = 12        # close-packed: an atom with this many bonded neighbours has no vacant one (at least)


_ROW_CAP = 24              # partners of a point kept from the counting pass (a close-packed shell: 12)
_MAX_CELLS_PER_POINT = 64  # a sparser grid: binary search of the cell keys instead of a cell table


class _Grid:
    """Points binned in cubic cells of edge ``cell_A`` (host) and sorted by cell: every point
    within ``cell_A`` of a query lies in the 27 cells around the query's own (three cells along x
    are one run of the sorted points), which Numba scans find through a table of every cell's
    first point, or, where the cells would outnumber the points ``_MAX_CELLS_PER_POINT`` times (a
    few atoms in a big box, candidates binned at 0.5 Å), by binary search of the sorted cell keys."""

    def __init__(self, xyz, cell_A: float):
        self.xyz = np.ascontiguousarray(xyz, dtype=np.float64).reshape(-1, 3)
        self.lo = self.xyz.min(0) if len(self.xyz) else np.zeros(3)
        self.cell = float(cell_A)
        c = np.floor((self.xyz - self.lo) / self.cell).astype(np.int64)
        self.dims = c.max(0) + 1 if len(c) else np.ones(3, dtype=np.int64)
        key = (c[:, 2] * self.dims[1] + c[:, 1]) * self.dims[0] + c[:, 0]
        n_cells = float(np.prod(self.dims.astype(np.float64)))
        if n_cells <= _MAX_CELLS_PER_POINT * len(self.xyz) + 4096:
            self.start = np.zeros(int(n_cells) + 1, dtype=np.int64)
            np.cumsum(np.bincount(key, minlength=len(self.start) - 1), out=self.start[1:])
            self.order = _counting_order(key, self.start)      # argsort(key, "stable"), in O(N)
        else:
            self.start = np.zeros(0, dtype=np.int64)              # empty: binary search
            self.order = np.argsort(key, kind="stable")
        self.keys = np.ascontiguousarray(key[self.order])

    def _args(self):
        return self.xyz, self.lo, self.cell, self.dims, self.start, self.keys, self.order

    def pairs(self, r_lo: float, r_hi: float):
        """Pairs i < j with r_lo < distance ≤ r_hi (≤ the cell; r_lo < 0: every distance ≤ r_hi,
        coincident points included), lexicographic, (P, 2) int64."""
        return _pairs_in_shell(*self._args(), r_lo, r_hi)

    def near(self, points, r: float, count: bool = False):
        """Per point: whether a point of the grid lies within ``r`` (≤ the cell), or with
        ``count`` how many."""
        points = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3)
        out = _near_all(points, *self._args(), r, 1 if count else 0)
        return out if count else out > 0


@nb.njit(cache=True, nogil=True)
def _counting_order(key, start):
    """The stable sort of ``key`` by counting (``start``: each key's first place, a prefix sum)."""
    pos = start[:-1].copy()
    order = np.empty(len(key), np.int64)
    for i in range(len(key)):
        k = key[i]
        order[pos[k]] = i
        pos[k] += 1
    return order


@nb.njit(cache=True, nogil=True)
def _scan(p, xyz, lo, cell, dims, start, keys, order, lo2, hi2, above, buf, store, first):
    """Points ``j > above`` with ``lo2 < |x_j − p|² ≤ hi2`` (radius ≤ the cell) around point ``p``:
    how many (stopping at the first when ``first``), the indices of the first ``len(buf)`` of them
    written to ``buf`` when ``store``."""
    cnt = 0
    c0 = np.empty(3, np.int64)
    for a in range(3):
        c0[a] = np.int64(np.floor((p[a] - lo[a]) / cell))
    x0 = max(c0[0] - 1, 0)
    x1 = min(c0[0] + 2, dims[0])
    if x0 >= x1:
        return 0
    for cz in range(max(c0[2] - 1, 0), min(c0[2] + 2, dims[2])):
        for cy in range(max(c0[1] - 1, 0), min(c0[1] + 2, dims[1])):
            row = (cz * dims[1] + cy) * dims[0]
            if len(start):
                q0 = start[row + x0]
                q1 = start[row + x1]
            else:
                q0 = np.searchsorted(keys, row + x0)
                q1 = np.searchsorted(keys, row + x1)
            for q in range(q0, q1):
                j = order[q]
                if j <= above:
                    continue
                dx = xyz[j, 0] - p[0]
                dy = xyz[j, 1] - p[1]
                dz = xyz[j, 2] - p[2]
                d2 = dx * dx + dy * dy + dz * dz
                if d2 > lo2 and d2 <= hi2:
                    if store and cnt < len(buf):
                        buf[cnt] = j
                    cnt += 1
                    if first:
                        return cnt
    return cnt


@thread_safe
@nb.njit(cache=True, parallel=True, nogil=True)
def _near_all(points, xyz, lo, cell, dims, start, keys, order, r, mode):
    """Per point: 1 if a grid point lies within ``r`` (≤ the cell) else 0 (mode 0), or how many
    (mode 1)."""
    out = np.empty(len(points), np.int64)
    none = np.empty(0, np.int64)
    for i in nb.prange(len(points)):
        out[i] = _scan(points[i], xyz, lo, cell, dims, start, keys, order, -1.0, r * r, -1, none, False, mode == 0)
    return out


@thread_safe
@nb.njit(cache=True, parallel=True, nogil=True)
def _pairs_in_shell(xyz, lo, cell, dims, start, keys, order, r_lo, r_hi):
    """Pairs i < j with r_lo < |x_i − x_j| ≤ r_hi (r_hi ≤ the cell; r_lo < 0: from 0 on, equal
    points included), in lexicographic order. One parallel pass over the points counts each
    point's partners and keeps the first ``_ROW_CAP`` of them; a row with more is scanned again;
    then each row is written, sorted, at its offset (the same pairs and order on any number of
    threads)."""
    n = len(xyz)
    lo2 = r_lo * r_lo if r_lo >= 0.0 else -1.0
    hi2 = r_hi * r_hi
    cap = _ROW_CAP
    rows = np.empty((n, cap), np.int64)
    cnt = np.empty(n, np.int64)
    for i in nb.prange(n):
        cnt[i] = _scan(xyz[i], xyz, lo, cell, dims, start, keys, order, lo2, hi2, i, rows[i], True, False)
    off = np.zeros(n + 1, np.int64)
    for i in range(n):
        off[i + 1] = off[i] + cnt[i]
    out = np.empty((off[n], 2), np.int64)
    for i in nb.prange(n):
        c = cnt[i]
        if c <= cap:
            js = rows[i, :c].copy()
        else:
            js = np.empty(c, np.int64)
            _scan(xyz[i], xyz, lo, cell, dims, start, keys, order, lo2, hi2, i, js, True, False)
        js.sort()
        for t in range(c):
            out[off[i] + t, 0] = i
            out[off[i] + t, 1] = js[t]
    return out


def atom_grid(xyz_A, bond_A: float) -> _Grid:
    """The atoms' cell grid of :func:`vacant_sites` (cells of 1.25 bonds): it answers distance
    questions up to that radius (``near``, ``pairs``) for callers that also want the sites."""
    return _Grid(xyz_A, (1.0 + _BOND_TOL) * bond_A)


def _bonded_pairs(xyz_A, bond_A, grid=None):
    """The atoms' grid (cells of 1.25 bonds; ``grid`` when given) and their bonded pairs i < j,
    lexicographic."""
    grid = atom_grid(xyz_A, bond_A) if grid is None else grid
    return grid, grid.pairs((1.0 - _BOND_TOL) * bond_A, (1.0 + _BOND_TOL) * bond_A)


@nb.njit(cache=True, nogil=True)
def _symmetric_csr(pairs, n, with_self):
    """Neighbour lists (start, cols) of n points from their lexicographic pairs i < j: row r holds
    the i < r, then r itself when ``with_self``, then the j > r, so every row is ascending with no
    sort (the pairs come ordered by i, and by j within an i)."""
    low = np.zeros(n, np.int64)
    up = np.zeros(n, np.int64)
    for p in range(len(pairs)):
        low[pairs[p, 1]] += 1
        up[pairs[p, 0]] += 1
    own = 1 if with_self else 0
    start = np.zeros(n + 1, np.int64)
    for r in range(n):
        start[r + 1] = start[r] + low[r] + own + up[r]
    cols = np.empty(start[n], np.int64)
    cur_low = start[:n].copy()
    cur_up = start[:n] + low + own
    if with_self:
        for r in range(n):
            cols[start[r] + low[r]] = r
    for p in range(len(pairs)):
        i = pairs[p, 0]
        j = pairs[p, 1]
        cols[cur_low[j]] = i
        cur_low[j] += 1
        cols[cur_up[i]] = j
        cur_up[i] += 1
    return start, cols


@nb.njit(cache=True, nogil=True)
def _common_after(start, cols, i, j, out, t):
    """The k > j common to the sorted rows of i and j (i < j): how many, written as (i, j, k)
    rows of ``out`` from row ``t`` when ``out`` has rows."""
    x, xe = start[i], start[i + 1]
    y, ye = start[j], start[j + 1]
    c = 0
    while x < xe and y < ye:
        u, v = cols[x], cols[y]
        if u < v:
            x += 1
        elif v < u:
            y += 1
        else:
            if u > j:
                if len(out):
                    out[t + c, 0] = i
                    out[t + c, 1] = j
                    out[t + c, 2] = u
                c += 1
            x += 1
            y += 1
    return c


@thread_safe
@nb.njit(cache=True, parallel=True, nogil=True)
def _triangles_csr(start, cols, a, b):
    """Triangles (a, b, k) with k > b common to the sorted rows of a and b (a < b), in the
    pairs' order: a parallel count per pair, then each pair's rows written at its offset."""
    n_p = len(a)
    cnt = np.empty(n_p, np.int64)
    none = np.empty((0, 3), np.int64)
    for p in nb.prange(n_p):
        cnt[p] = _common_after(start, cols, a[p], b[p], none, 0)
    off = np.zeros(n_p + 1, np.int64)
    for p in range(n_p):
        off[p + 1] = off[p] + cnt[p]
    out = np.empty((off[n_p], 3), np.int64)
    for p in nb.prange(n_p):
        if cnt[p]:
            _common_after(start, cols, a[p], b[p], out, off[p])
    return out


def _triangles(pairs, n):
    """(T, 3) index triples i < j < k of mutually bonded atoms, from the (P, 2) pairs i < j."""
    if len(pairs) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    start, cols = _symmetric_csr(pairs, n, False)
    return _triangles_csr(start, cols, np.ascontiguousarray(pairs[:, 0], dtype=np.int64),
                          np.ascontiguousarray(pairs[:, 1], dtype=np.int64))


@nb.njit(cache=True, nogil=True)
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
    p = _Grid(cand, 2.0 * _MERGE_A).pairs(-1.0, _MERGE_A)   # within the radius, coincident ones included
    start, cols = _symmetric_csr(p, n, True)        # each row holds the candidate itself
    size = np.diff(start)
    order = np.argsort(-size, kind="stable")
    return _greedy_merge(np.ascontiguousarray(cand, dtype=np.float64), start, cols, order)


@thread_safe
@nb.njit(cache=True, parallel=True, nogil=True)
def _completions(xyz, tri, surface, lo, cell, dims, start, keys, order, clear_A):
    """The candidates of each triangle (i, j, k) of bonded atoms, farther than ``clear_A`` from
    every atom: in its plane the corner opposite each vertex (``j + k − i``; where the other two
    are surface atoms), and the apexes of the two tetrahedra on it (where all three are), at the
    height of a regular tetrahedron of its mean edge. Ordered by kind, then by triangle."""
    n_tri = len(tri)
    out = np.empty((5 * n_tri, 3))
    ok = np.zeros(5 * n_tri, np.bool_)
    none = np.empty(0, np.int64)
    h = np.sqrt(2.0 / 3.0)
    r2 = clear_A * clear_A
    for t in nb.prange(n_tri):
        i, j, k = tri[t, 0], tri[t, 1], tri[t, 2]
        si, sj, sk = surface[i], surface[j], surface[k]
        for a in range(3):
            if sj and sk:
                out[t, a] = xyz[j, a] + xyz[k, a] - xyz[i, a]
            if si and sk:
                out[n_tri + t, a] = xyz[i, a] + xyz[k, a] - xyz[j, a]
            if si and sj:
                out[2 * n_tri + t, a] = xyz[i, a] + xyz[j, a] - xyz[k, a]
        ok[t] = sj and sk
        ok[n_tri + t] = si and sk
        ok[2 * n_tri + t] = si and sj
        if si and sj and sk:
            bx, by, bz = xyz[j, 0] - xyz[i, 0], xyz[j, 1] - xyz[i, 1], xyz[j, 2] - xyz[i, 2]
            cx, cy, cz = xyz[k, 0] - xyz[i, 0], xyz[k, 1] - xyz[i, 1], xyz[k, 2] - xyz[i, 2]
            nx, ny, nz = by * cz - bz * cy, bz * cx - bx * cz, bx * cy - by * cx
            nn = max(np.sqrt(nx * nx + ny * ny + nz * nz), 1e-12)
            ex, ey, ez = xyz[k, 0] - xyz[j, 0], xyz[k, 1] - xyz[j, 1], xyz[k, 2] - xyz[j, 2]
            side = (np.sqrt(bx * bx + by * by + bz * bz) + np.sqrt(cx * cx + cy * cy + cz * cz)
                    + np.sqrt(ex * ex + ey * ey + ez * ez)) / 3.0
            up = h * side
            for a in range(3):
                c = (xyz[i, a] + xyz[j, a] + xyz[k, a]) / 3.0
                nrm = (nx, ny, nz)[a] / nn
                out[3 * n_tri + t, a] = c + nrm * up
                out[4 * n_tri + t, a] = c - nrm * up
            ok[3 * n_tri + t] = True
            ok[4 * n_tri + t] = True
        for q in range(5):
            m = q * n_tri + t
            if ok[m] and _scan(out[m], xyz, lo, cell, dims, start, keys, order, -1.0, r2, -1, none, False, True) > 0:
                ok[m] = False
    return out[ok]


def vacant_sites(xyz_A, bond_A: float, *, min_votes: int = 2, min_bonds: int = 3, clear: float = 0.8,
                 grid=None):
    """Candidate vacant lattice sites beside a close-packed model (host arrays).

    Parameters
    ----------
    xyz_A : (N, 3) array, the atoms found (Å)
    bond_A : float, the bulk nearest-neighbour distance (Å)
    min_votes : int, completions that must agree on a site (within 0.5 Å)
    min_bonds : int, atoms within 1.25 × the bond that a site must have
    clear : float, a site is farther than this × the bond from every atom
    grid : :func:`atom_grid` of ``xyz_A``, when the caller has it

    Returns
    -------
    sites : (M, 3) array (Å), votes : (M,) int array
    """
    xyz = np.asarray(xyz_A, float)
    empty = (np.zeros((0, 3)), np.zeros(0, dtype=np.int64))
    if len(xyz) < 4:
        return empty
    grid, pairs = _bonded_pairs(xyz, bond_A, grid)
    deg = np.bincount(pairs.ravel(), minlength=len(xyz))
    # a full shell: 12 in a close-packed metal; bcc counts 14 (its second shell lies within the
    # bond range here), which the bulk atoms then show
    surface = deg < max(_FULL_SHELL, int(np.quantile(deg, 0.9)))
    # a completed site is bonded to the atoms it completes from: those must have a vacant neighbour
    pairs = pairs[surface[pairs[:, 0]] | surface[pairs[:, 1]]]
    tri = _triangles(pairs, len(xyz))
    if len(tri) == 0:
        return empty
    cand = _completions(grid.xyz, tri, surface, *grid._args()[1:], clear * bond_A)   # no atom within the clearance
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
