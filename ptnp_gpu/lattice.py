"""Crystal lattice fit of an atomic model, for any particle orientation.

The orientation comes from the data: nearest-neighbour bond directions are
matched to the ideal bond directions of the lattice (fcc ⟨110⟩, bcc ⟨111⟩) by
a candidate search followed by Kabsch refinement. Every atom is then indexed
to its nearest lattice site, and a least-squares fit of the positions on the
sites (origin plus three free basis vectors) gives the three lattice
parameters. Atoms that sit far from their site (twin domains, mis-indexed
surface atoms) are excluded from the fit in a few robust passes and reported
as outliers.

Positions are (x, y, z) in Å in the map frame; the lattice basis is returned
as the rows of a 3×3 matrix in the same frame.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numba as nb
import numpy as np
from scipy.spatial import cKDTree

from .elements import Element, get_element
from .lattice_sites import _Grid
from .threshold_components import _find

__all__ = ["LatticeFit", "LatticeDomains", "fit_lattice", "fit_lattice_domains", "lattice_geometry",
           "kabsch_rotation", "ideal_sites_A"]

log = logging.getLogger(__name__)

_MIN_ON_LATTICE = 0.25   # fewer atoms on the lattice: the fit failed (amorphous, many grains)
_S2 = 1.0 / np.sqrt(2.0)
_S3 = 1.0 / np.sqrt(3.0)


def _signed(vs):
    v = np.asarray(vs, float)
    return np.concatenate([v, -v])


# lattice type → (bond directions, unit-cell basis in cell units,
#                 first and second neighbour distance / a, full-shell CN)
_GEOMETRY = {
    "fcc": (_signed([[1, 1, 0], [1, -1, 0], [1, 0, 1], [1, 0, -1], [0, 1, 1], [0, 1, -1]]) * _S2,
            np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]]),
            _S2, 1.0, 12),
    "bcc": (_signed([[1, 1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1]]) * _S3,
            np.array([[0, 0, 0], [.5, .5, .5]]),
            np.sqrt(3.0) / 2.0, 1.0, 8),
}


# _score and _n_matched rely on every direction set holding each direction and then its opposite
assert all(np.array_equal(g[0][len(g[0]) // 2:], -g[0][:len(g[0]) // 2]) for g in _GEOMETRY.values())


def lattice_geometry(lattice: str):
    """Geometry of a cubic lattice type.

    Parameters
    ----------
    lattice : {"fcc", "bcc", "hcp"}
        "hcp" is approximated by fcc (same first shell, 12 neighbours at the
        same distance); a warning is logged by :func:`fit_lattice`.

    Returns
    -------
    dict with keys ``bond_dirs`` (K, 3) unit vectors in cubic axes, ``basis``
    (M, 3) site offsets in cell units, ``d1`` and ``d2`` first and second
    neighbour distances in units of the lattice parameter, ``cn_bulk``.
    """
    key = "fcc" if lattice in ("fcc", "hcp") else lattice
    if key not in _GEOMETRY:
        raise ValueError(f"unsupported lattice type {lattice!r}; expected 'fcc', 'bcc' or 'hcp'")
    dirs, basis, d1, d2, cn = _GEOMETRY[key]
    return {"bond_dirs": dirs, "basis": basis, "d1": d1, "d2": d2, "cn_bulk": cn, "type": key}


def kabsch_rotation(src, dst, weights=None) -> np.ndarray:
    """Rotation R (3×3) minimising Σ w |dst_k − R src_k|².

    Parameters
    ----------
    src, dst : (K, 3) arrays of vectors
    weights : (K,) array, optional
    """
    src = np.asarray(src, float)
    dst = np.asarray(dst, float)
    m = (dst if weights is None else dst * np.asarray(weights, float)[:, None]).T @ src   # unit weights: exact
    return _rotation_of(m)


def _rotation_of(m):
    """The rotation R maximising trace(R^T m), m = Σ w dst_k src_k^T (Kabsch)."""
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    return u @ np.diag([1.0, 1.0, d]) @ vt


@dataclass
class LatticeFit:
    """Result of :func:`fit_lattice`.

    Attributes
    ----------
    lattice : str
        Lattice type fitted ("fcc" or "bcc"; "hcp" elements are fitted as fcc).
    basis_A : (3, 3) array
        Fitted basis vectors (rows) in the map frame, Å.
    params_A : (3,) array
        Fitted lattice parameters |a1|, |a2|, |a3| in Å.
    mean_param_A : float
        Arithmetic mean ā of the three parameters (Å).
    angles_deg : (3,) array
        Angles between the basis vectors (a2,a3), (a1,a3), (a1,a2) in degrees.
    rotation : (3, 3) array
        Closest rotation to the fitted basis; its columns are the cubic axes
        [100], [010], [001] in the map frame.
    euler_zyz_deg : (3,) array
        The same rotation as intrinsic z-y-z Euler angles (degrees).
    origin_A : (3,) array
        Fitted position of lattice site (0, 0, 0), Å.
    site_cells : (N, 3) array
        Lattice site of every atom, in cell units (multiples of 1/2).
    residual_A : (N,) array
        Distance of each atom from its fitted site, Å.
    inlier : (N,) bool array
        Atoms used in the final fit.
    rms_A : float
        RMS residual over inliers (Å).
    nn_distance_A : float
        Median nearest-neighbour distance of the model (Å).
    ok : bool
        False when the fit could not be made (too few atoms or bonds: the
        parameters fall back to the bulk value) or when too few atoms sit on
        one lattice (parameters from the median bond length); ``message``
        says why.
    """
    lattice: str
    basis_A: np.ndarray
    params_A: np.ndarray
    mean_param_A: float
    angles_deg: np.ndarray
    rotation: np.ndarray
    euler_zyz_deg: np.ndarray
    origin_A: np.ndarray
    site_cells: np.ndarray
    residual_A: np.ndarray
    inlier: np.ndarray
    rms_A: float
    nn_distance_A: float
    ok: bool = True
    message: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def cn_cutoff_A(self) -> float:
        """Neighbour cutoff: midway between first and second shells of ā.

        For fcc this is the paper's ``d = ā/2 · (1 + 1/√2)``.
        """
        g = lattice_geometry(self.lattice)
        return 0.5 * (g["d1"] + g["d2"]) * self.mean_param_A

    def as_dict(self) -> dict:
        """JSON-ready summary (no per-atom arrays)."""
        return {
            "lattice": self.lattice,
            "a_A": float(self.params_A[0]), "b_A": float(self.params_A[1]), "c_A": float(self.params_A[2]),
            "mean_param_A": float(self.mean_param_A),
            "angles_deg": [float(v) for v in self.angles_deg],
            "basis_A": np.round(self.basis_A, 6).tolist(),
            "rotation": np.round(self.rotation, 6).tolist(),
            "euler_zyz_deg": [float(v) for v in self.euler_zyz_deg],
            "origin_A": [float(v) for v in self.origin_A],
            "rms_residual_A": float(self.rms_A),
            "n_inliers": int(self.inlier.sum()),
            "fraction_inliers": float(self.inlier.mean()) if len(self.inlier) else float("nan"),
            "nn_distance_median_A": float(self.nn_distance_A),
            "cn_cutoff_A": float(self.cn_cutoff_A),
            "ok": bool(self.ok), "message": self.message,
        }


@nb.njit(cache=True, nogil=True)
def _pair_d2_nn(xyz, pairs):
    """Squared length of each pair, summed as cKDTree does ((dx² + dy²) + dz²), and each
    atom's shortest pair length (inf for an atom in no pair; a NaN sticks, as np.minimum's):
    the root of the shortest squared length, the same number (the rounded root is monotonic)."""
    d2 = np.empty(pairs.shape[0])
    d = np.full(xyz.shape[0], np.inf)
    for e in range(pairs.shape[0]):
        i, j = pairs[e, 0], pairs[e, 1]
        vx = xyz[i, 0] - xyz[j, 0]
        vy = xyz[i, 1] - xyz[j, 1]
        vz = xyz[i, 2] - xyz[j, 2]
        s = (vx * vx + vy * vy) + vz * vz
        d2[e] = s
        di = d[i]                      # branch-free minimum: the comparison is unpredictable
        d[i] = s if (s < di or np.isnan(s)) else di
        dj = d[j]
        d[j] = s if (s < dj or np.isnan(s)) else dj
    return d2, np.sqrt(d)


def _near_pairs(xyz, r0):
    """Pairs i < j within ``r0`` (lexicographic; a parallel Numba scan of a cell grid), their
    squared distances summed as cKDTree does, and each atom's nearest-neighbour distance: the
    shortest of its pairs, a k-nearest query (k-d tree) only for atoms with none."""
    p = _Grid(xyz, r0).pairs(-1.0, r0)
    d2, d = _pair_d2_nn(xyz, p)
    lone = ~np.isfinite(d)
    if lone.any():
        d[lone] = cKDTree(xyz).query(xyz[lone], k=2)[0][:, 1]
    return p, d2, d


@nb.njit(cache=True, nogil=True)
def _unit_bonds(xyz, pairs, d2, cut2):
    """The pairs with ``d2 <= cut2`` (in their order) and their unit vectors xyz[j] − xyz[i]
    as columns (3 × M), normalised as ``v / np.linalg.norm(v)`` ((x² + y²) + z²)."""
    m = 0
    for e in range(d2.shape[0]):
        if d2[e] <= cut2:
            m += 1
    out = np.empty((m, 2), np.int64)
    u = np.empty((3, m))
    k = 0
    for e in range(d2.shape[0]):
        if d2[e] <= cut2:
            i, j = pairs[e, 0], pairs[e, 1]
            out[k, 0], out[k, 1] = i, j
            vx = xyz[j, 0] - xyz[i, 0]
            vy = xyz[j, 1] - xyz[i, 1]
            vz = xyz[j, 2] - xyz[i, 2]
            r = np.sqrt((vx * vx + vy * vy) + vz * vz)
            u[0, k], u[1, k], u[2, k] = vx / r, vy / r, vz / r
            k += 1
    return out, u


def _bonds(xyz, cut, near=None):
    """Bonds (pairs within ``cut``) and their unit vectors; ``near`` = (pairs, squared
    distances) of a search at a radius >= ``cut``, filtered instead of searching again
    (the same pairs in the same order)."""
    if near is None:
        p = _Grid(xyz, cut).pairs(-1.0, cut)
        near = (p, np.zeros(len(p)))          # keep them all
    pairs, ut = _unit_bonds(xyz, near[0], near[1], cut * cut)
    return pairs, ut.T                        # (M, 3) rows, a view of the columns' layout


def _columns(bonds):
    """Bond vectors as three contiguous coordinate rows (3 × N), the compiled passes' layout."""
    return np.ascontiguousarray(np.asarray(bonds, dtype=np.float64).reshape(-1, 3).T)


@nb.njit(cache=True, nogil=True)
def _best_rows(M, bt, idx):
    """For each bond b (columns of ``bt``, 3 × N): the largest |M[r] · b| over the h rows of
    ``M`` (the half set of ideal directions, rotated into the map frame) and into ``idx`` the
    first row that reaches it, plus h when that row's cosine is negative (the opposite
    direction). Row by row over the bonds (a loop the compiler vectorises)."""
    h = M.shape[0]
    n = bt.shape[1]
    bx, by, bz = bt[0], bt[1], bt[2]
    best = np.empty(n)
    signed = np.empty(n)
    for j in range(n):
        c = M[0, 0] * bx[j] + M[0, 1] * by[j] + M[0, 2] * bz[j]
        signed[j] = c
        best[j] = abs(c)
        idx[j] = 0
    for r in range(1, h):
        mx, my, mz = M[r, 0], M[r, 1], M[r, 2]
        for j in range(n):
            c = mx * bx[j] + my * by[j] + mz * bz[j]
            a = abs(c)
            up = a > best[j]
            best[j] = a if up else best[j]
            signed[j] = c if up else signed[j]
            idx[j] = r if up else idx[j]
    for j in range(n):
        if signed[j] < 0:
            idx[j] += h
    return best


@nb.njit(cache=True, nogil=True)
def _count_matched(Ms, bt, cos_tol):
    """For each rotation's direction rows ``Ms[k]`` (K, h, 3): how many bonds (columns of
    ``bt``, 3 × N) lie within ``cos_tol`` of one of them (either sign): the largest |cos| of
    each bond, row by row over the bonds (a loop the compiler vectorises)."""
    K, h, _ = Ms.shape
    n = bt.shape[1]
    bx, by, bz = bt[0], bt[1], bt[2]
    big = np.empty(n)
    out = np.zeros(K, np.int64)
    for k in range(K):
        big[:] = 0.0
        for r in range(h):
            mx, my, mz = Ms[k, r, 0], Ms[k, r, 1], Ms[k, r, 2]
            for j in range(n):
                a = abs(mx * bx[j] + my * by[j] + mz * bz[j])
                big[j] = max(big[j], a)
        c = 0
        for j in range(n):
            if big[j] > cos_tol:
                c += 1
        out[k] = c
    return out


@nb.njit(cache=True, nogil=True)
def _match_pass(M, bt, dirs, cos_tol, key):
    """One refinement pass of :func:`_orientation` for the ideal directions ``M`` (h × 3,
    rotated into the map frame): every bond's (columns of ``bt``) closest ideal direction
    (:func:`_best_rows`), ``key`` set in place to its index in ``dirs`` or −1 beyond
    ``cos_tol``. Returns how many bonds match, whether ``key`` changed and Σ bond ⊗ ideal
    direction over the matched bonds (the Kabsch correlation matrix, from the sum of the bonds
    matched to each direction)."""
    n = bt.shape[1]
    idx = np.empty(n, np.int64)
    best = _best_rows(M, bt, idx)
    g = np.zeros((dirs.shape[0], 3))
    n_ok = 0
    changed = False
    for j in range(n):
        kj = idx[j] if best[j] > cos_tol else -1
        if kj != key[j]:
            changed = True
            key[j] = kj
        if kj >= 0:
            n_ok += 1
            g[kj, 0] += bt[0, j]
            g[kj, 1] += bt[1, j]
            g[kj, 2] += bt[2, j]
    m = np.zeros((3, 3))
    for d in range(dirs.shape[0]):
        for a in range(3):
            for b in range(3):
                m[a, b] += g[d, a] * dirs[d, b]
    return n_ok, changed, m


def _half(dirs):
    """The first half of a direction set: each direction once (the second half negates it)."""
    return dirs[: len(dirs) // 2]


def _score(rot, bonds, dirs, cos_tol):
    """Largest cosine of each bond with the ideal directions in the frame of ``rot`` (columns:
    cubic axes in the map frame), the direction it is closest to (index into ``dirs``), and
    how many bonds lie within ``cos_tol``. One compiled pass over the bonds: the ideal
    directions are rotated into the map frame (h × 3) instead of every bond into the cubic
    frame."""
    M = np.ascontiguousarray(_half(dirs) @ rot.T)
    bt = _columns(bonds)
    idx = np.empty(bt.shape[1], dtype=np.int64)
    best = _best_rows(M, bt, idx)
    return best, idx, int(np.count_nonzero(best > cos_tol))


def _kabsch_batch(src, dst):
    """:func:`kabsch_rotation` (unit weights) of K problems at once: (K, M, 3) → (K, 3, 3)."""
    u, _, vt = np.linalg.svd(np.swapaxes(dst, 1, 2) @ src)
    d = np.sign(np.linalg.det(u @ vt))
    u[:, :, 2] *= np.where(d == 0, 1.0, d)[:, None]        # u @ diag(1, 1, d)
    return u @ vt


def _n_matched(rots, bonds, dirs, cos_tol):
    """For each rotation (K, 3, 3): how many bonds lie within ``cos_tol`` of an ideal direction."""
    Ms = np.ascontiguousarray(_half(dirs)[None] @ np.swapaxes(rots, 1, 2))     # (K, h, 3)
    return _count_matched(Ms, _columns(bonds), float(cos_tol))


def _first_k(values, k):
    """``np.argsort(values, kind="stable")[:k]`` without sorting them all when the k + 1
    smallest values are distinct (then every sort puts the same k first, in the same order).
    Ties go by index: NumPy's default sort orders ties by its CPU-specific (SIMD) code path,
    so a symmetric model's central atoms came in a different order on different machines."""
    if len(values) > k:
        part = np.argpartition(values, k)[:k + 1]
        part = part[np.argsort(values[part])]
        v = values[part]
        if np.all(v[1:] > v[:-1]):
            return part[:k]
    return np.argsort(values, kind="stable")[:k]


def _orientation(xyz, bonds_pairs, bonds, dirs, n_centre=6, tol_deg=12.0, r_centre=None):
    """Rotation (columns = cubic axes in map frame) from bond directions; ``r_centre``: each
    atom's distance from the centroid, when already at hand."""
    cos_tol = np.cos(np.radians(tol_deg))
    # the angle of the first ideal pair that is neither parallel nor antiparallel
    dots = dirs @ dirs[0]
    j0 = int(np.argmax(np.where(np.abs(dots) < 0.99, dots, -2.0)))
    pair_cos = float(dots[j0])
    if r_centre is None:
        r_centre = np.linalg.norm(xyz - xyz.mean(0), axis=1)
    order = _first_k(r_centre, n_centre)
    # candidates: two bonds of a central atom at the ideal pair angle, matched to the first
    # ideal pair; all are scored at once on an evenly spread subset of bonds (the first of
    # the best wins); refinement uses every bond
    sample = bonds[::max(1, len(bonds) // 4000)]
    targets = []
    central = np.zeros(len(xyz), dtype=bool)
    central[order] = True
    near = np.flatnonzero(central[bonds_pairs[:, 0]] | central[bonds_pairs[:, 1]])   # their bonds, one scan
    for a in order:
        sel = near[(bonds_pairs[near, 0] == a) | (bonds_pairs[near, 1] == a)]
        b = bonds[sel]
        if len(b) < 2:
            continue
        cosm = b @ b.T
        ii, jj = np.nonzero(np.abs(cosm - pair_cos) < 0.15)
        if len(ii):
            targets.append(np.stack([b[ii[:8]], b[jj[:8]]], axis=1))     # (k, 2, 3): bond pairs
    if not targets:
        return None
    targets = np.concatenate(targets)
    src = np.broadcast_to(np.stack([dirs[0], dirs[j0]]), (len(targets), 2, 3))
    rots = _kabsch_batch(src, targets)
    rot = rots[int(np.argmax(_n_matched(rots, sample, dirs, cos_tol)))]
    bt = _columns(bonds)
    key = np.full(bt.shape[1], -2, dtype=np.int64)      # the ideal direction each bond matched (none yet)
    for _ in range(4):   # refine on every bond matched to an ideal direction
        M = np.ascontiguousarray(_half(dirs) @ rot.T)
        n_ok, changed, m = _match_pass(M, bt, dirs, float(cos_tol), key)
        if n_ok < 3 or not changed:
            break                   # the same matches give the same rotation: converged
        rot = _rotation_of(m)
    return rot


@nb.njit(cache=True, nogil=True)
def _index_sites(xyz, origin, inv_basis, cells):
    """Nearest lattice site (cell units) of every atom: its position in cell units
    p = (x − origin) @ inv_basis, then per sub-lattice offset b (rows of ``cells``) the site
    rint(p − b) + b; the closest one, the first on a tie."""
    n = xyz.shape[0]
    out = np.empty((n, 3))
    for i in range(n):
        x0, x1, x2 = xyz[i, 0] - origin[0], xyz[i, 1] - origin[1], xyz[i, 2] - origin[2]
        p0 = x0 * inv_basis[0, 0] + x1 * inv_basis[1, 0] + x2 * inv_basis[2, 0]
        p1 = x0 * inv_basis[0, 1] + x1 * inv_basis[1, 1] + x2 * inv_basis[2, 1]
        p2 = x0 * inv_basis[0, 2] + x1 * inv_basis[1, 2] + x2 * inv_basis[2, 2]
        best = np.inf
        for m in range(cells.shape[0]):
            b0, b1, b2 = cells[m, 0], cells[m, 1], cells[m, 2]
            c0 = np.rint(p0 - b0) + b0
            c1 = np.rint(p1 - b1) + b1
            c2 = np.rint(p2 - b2) + b2
            d2 = ((c0 - p0) ** 2 + (c1 - p1) ** 2) + (c2 - p2) ** 2
            if d2 < best:
                best = d2
                out[i, 0], out[i, 1], out[i, 2] = c0, c1, c2
    return out


_MAX_COND = 1e6    # normal equations only when well conditioned (their error ~ cond × 1e-16)


def _fit_sites(xyz, sites, inlier):
    """Least-squares ``xyz ≈ origin + sites @ basis`` over the ``inlier`` atoms: (origin, basis).
    Centred normal equations (3 × 3); an ill-conditioned fit (the atoms nearly on a plane)
    takes np.linalg.lstsq's minimum-norm solution."""
    s_in, x_in = sites[inlier], xyz[inlier]
    if len(s_in) >= 4:
        s_mean, x_mean = s_in.mean(0), x_in.mean(0)
        sc = s_in - s_mean
        sss = sc.T @ sc
        if np.linalg.cond(sss) < _MAX_COND:
            basis = np.linalg.solve(sss, sc.T @ (x_in - x_mean))
            return x_mean - s_mean @ basis, basis
    design = np.hstack([np.ones((len(xyz), 1)), sites])
    sol, *_ = np.linalg.lstsq(design[inlier], xyz[inlier], rcond=None)
    return sol[0], sol[1:]


@nb.njit(cache=True, nogil=True)
def _site_residuals(xyz, sites, origin, basis):
    """|origin + s @ basis − x| of every atom."""
    out = np.empty(xyz.shape[0])
    for i in range(xyz.shape[0]):
        s0, s1, s2 = sites[i, 0], sites[i, 1], sites[i, 2]
        r2 = 0.0
        for k in range(3):
            r = origin[k] + s0 * basis[0, k] + s1 * basis[1, k] + s2 * basis[2, k] - xyz[i, k]
            r2 += r * r
        out[i] = np.sqrt(r2)
    return out


@nb.njit(cache=True, nogil=True)
def _largest_cluster_uf(mask, pairs):
    n = mask.shape[0]
    parent = np.arange(n)
    for e in range(pairs.shape[0]):
        a, b = pairs[e, 0], pairs[e, 1]
        if mask[a] and mask[b]:
            ra, rb = _find(parent, a), _find(parent, b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    count = np.zeros(n, np.int64)
    for i in range(n):
        if mask[i]:
            count[_find(parent, i)] += 1
    best = count.max()
    root = -1
    for i in range(n):              # ties: the cluster holding the lowest atom index
        if mask[i] and count[_find(parent, i)] == best:
            root = _find(parent, i)
            break
    out = np.zeros(n, np.bool_)
    for i in range(n):
        out[i] = mask[i] and _find(parent, i) == root
    return out


def _largest_cluster(mask, pairs):
    """Keep the largest bonded cluster of ``mask`` atoms (one grain, not chance hits in others);
    ties go to the cluster holding the lowest atom index. Union-find over the bonds (Numba)."""
    mask = np.asarray(mask, dtype=np.bool_)
    if not mask.any():
        return mask
    return _largest_cluster_uf(mask, np.ascontiguousarray(pairs, dtype=np.int64).reshape(-1, 2))


def _fallback(xyz, el, lattice, nn, message):
    n = len(xyz)
    a = el.lattice_param_A
    basis = np.eye(3) * a
    return LatticeFit(lattice, basis, np.full(3, a), a, np.full(3, 90.0), np.eye(3), np.zeros(3),
                      xyz.mean(0) if n else np.zeros(3), np.full((n, 3), np.nan), np.full(n, np.nan),
                      np.zeros(n, bool), float("nan"), nn, ok=False, message=message)


def fit_lattice(xyz_A, element: Element | str = "Pt", *, outlier_A: float | None = None,
                n_iter: int = 4, min_inlier_fraction: float = _MIN_ON_LATTICE) -> LatticeFit:
    """Fit a cubic lattice (origin + three basis vectors) to atom positions.

    Parameters
    ----------
    xyz_A : (N, 3) array
        Atom positions (x, y, z) in Å, any orientation.
    element : str or Element
        Gives the lattice type ("fcc", "bcc"; "hcp" is fitted as fcc).
    outlier_A : float, optional
        Atoms farther than this from their fitted site are left out of the
        fit (default 0.3 × the nearest-neighbour distance).
    n_iter : int
        Index → fit passes.
    min_inlier_fraction : float
        When fewer atoms than this fraction sit on the fitted lattice (an
        amorphous or polycrystalline particle), ``ok`` is False and the
        parameters come from the median nearest-neighbour distance.

    Returns
    -------
    LatticeFit
        ``ok`` is False (and parameters fall back to bulk) when the model has
        fewer than 4 atoms or no bonds that match the lattice.

    Examples
    --------
    >>> from ptnp_gpu.synth import fcc_particle
    >>> fit = fit_lattice(fcc_particle(200, 3.924), "Pt")
    >>> round(fit.mean_param_A, 3)
    3.924
    """
    el = get_element(element) if isinstance(element, str) else element
    xyz = np.ascontiguousarray(np.asarray(xyz_A, dtype=np.float64).reshape(-1, 3))
    lattice = el.lattice
    if lattice == "hcp":
        log.warning("%s is hcp; fitting an fcc lattice (same first shell)", el.symbol)
    geo = lattice_geometry(lattice)
    n = len(xyz)
    if n < 4:
        return _fallback(xyz, el, geo["type"], float("nan"), f"too few atoms ({n}) for a lattice fit")
    r0 = 1.25 * el.nn_distance_A
    p0, d2_0, d_nn = _near_pairs(xyz, r0)
    nn = float(np.median(d_nn))
    cut = nn * 0.5 * (1.0 + geo["d2"] / geo["d1"])
    pairs, bonds = _bonds(xyz, cut, (p0, d2_0) if cut <= r0 else None)
    if len(bonds) < 3:
        return _fallback(xyz, el, geo["type"], nn, "no nearest-neighbour bonds found")
    r_centre = np.linalg.norm(xyz - xyz.mean(0), axis=1)
    rot = _orientation(xyz, pairs, bonds, geo["bond_dirs"], r_centre=r_centre)
    if rot is None:
        return _fallback(xyz, el, geo["type"], nn, "bond directions do not match the lattice")
    a0 = nn / geo["d1"]
    outlier = 0.3 * nn if outlier_A is None else float(outlier_A)
    o_atom = int(np.argmin(r_centre))
    origin = xyz[o_atom].copy()
    basis = rot.T * a0                                 # rows: a1, a2, a3 in map frame
    inlier = np.ones(n, bool)
    sites = None
    cells = np.ascontiguousarray(geo["basis"], dtype=np.float64)
    settled = False       # the last fit was made on the current inliers, and left them as they are
    last_near = None
    for _ in range(n_iter):
        new_sites = _index_sites(xyz, origin, np.linalg.inv(basis), cells)
        if settled and np.array_equal(new_sites, sites):
            break             # the same sites and inliers would give the same fit again: a fixed point
        sites = new_sites
        settled = False
        for _inner in range(3):
            fit_origin, fit_basis = _fit_sites(xyz, sites, inlier)
            resid = _site_residuals(xyz, sites, fit_origin, fit_basis)
            near_site = resid <= outlier
            if not np.array_equal(near_site, last_near):     # else: the same cluster as last time
                last_near, new = near_site, _largest_cluster(near_site, pairs)
            if new.sum() < 4 or np.array_equal(new, inlier):
                settled = True
                break
            inlier = new
        origin, basis = fit_origin, fit_basis
        if not np.all(np.isfinite(basis)) or abs(np.linalg.det(basis)) < 1e-3 * a0 ** 3:
            # the atoms left on the lattice do not span three dimensions (e.g. a noisy, sparse model)
            return _fallback(xyz, el, geo["type"], nn, "degenerate lattice fit: the atoms on the lattice "
                                                       "do not span three dimensions")
    params = np.linalg.norm(basis, axis=1)
    unit = basis / params[:, None]
    ang = np.degrees(np.arccos(np.clip([unit[1] @ unit[2], unit[0] @ unit[2], unit[0] @ unit[1]], -1, 1)))
    u, _, vt = np.linalg.svd(basis.T)
    r_fit = u @ vt
    if np.linalg.det(r_fit) < 0:      # left-handed basis: flip the third axis
        r_fit[:, 2] *= -1
    import warnings
    from scipy.spatial.transform import Rotation
    with warnings.catch_warnings():      # gimbal lock is harmless here: any valid triple will do
        warnings.simplefilter("ignore", UserWarning)
        euler = Rotation.from_matrix(r_fit).as_euler("ZYZ", degrees=True)
    rms = float(np.sqrt(np.mean(resid[inlier] ** 2))) if inlier.any() else float("nan")
    note = "" if lattice != "hcp" else "hcp element fitted as fcc"
    fit = LatticeFit(geo["type"], basis, params, float(params.mean()), ang, r_fit, euler, origin,
                     sites, resid, inlier, rms, nn, ok=True, message=note)
    return _demoted(fit, float(inlier.mean()), min_inlier_fraction)


def _demoted(fit: LatticeFit, on_fraction: float, min_fraction: float) -> LatticeFit:
    """``fit``, or, when only ``on_fraction`` < ``min_fraction`` of the atoms sit on a lattice (an
    amorphous particle, many small grains), a failed fit whose parameters come from the bonds."""
    if on_fraction >= min_fraction:
        return fit
    a0 = fit.nn_distance_A / lattice_geometry(fit.lattice)["d1"]
    message = (f"only {on_fraction:.0%} of atoms sit on a lattice (< {min_fraction:.0%}); "
               "lattice parameters taken from the median nearest-neighbour distance")
    return replace(fit, basis_A=fit.rotation.T * a0, params_A=np.full(3, a0), mean_param_A=float(a0),
                   angles_deg=np.full(3, 90.0), ok=False, message=message)


def ideal_sites_A(fit: LatticeFit, param_A: float, centre_A=None) -> np.ndarray:
    """Ideal lattice positions of every atom's site with lattice parameter ``param_A``.

    The ideal lattice has the fitted orientation (``fit.rotation``) and is
    the fitted lattice scaled about ``centre_A`` (default: the centroid of
    the fitted inlier positions) to the parameter ``param_A``: the point of
    the fitted lattice at the centre stays put. A uniform expansion about
    the particle centre thus shows as a radial displacement proportional to
    R, also when the fitted domain is off-centre (a twin domain).

    Returns
    -------
    (N, 3) array, Å (NaN rows where the fit failed).
    """
    sites = fit.site_cells
    if not fit.ok:
        return np.full_like(sites, np.nan)
    if centre_A is None:
        centre_A = fit.origin_A + sites[fit.inlier].mean(0) @ fit.basis_A
    centre_A = np.asarray(centre_A, float)
    # the centre in lattice (cell) coordinates of the fitted lattice
    s_c = np.linalg.solve(fit.basis_A.T, centre_A - fit.origin_A)
    return centre_A + (sites - s_c) @ (fit.rotation.T * float(param_A))


@dataclass
class LatticeDomains:
    """Crystal domains of one particle (twins, the five domains of a decahedron).

    Attributes
    ----------
    fits : list of LatticeFit
        One fit per domain, largest first; ``fits[k].site_cells`` etc. refer to
        the atoms ``atoms[k]`` only. ``fits[0]`` is the particle's main lattice.
    atoms : list of (M_k,) int arrays
        The atoms each fit was made on (indices into the model).
    domain : (N,) int array
        Domain of each atom: k + 1 for ``fits[k]``, 0 for atoms on no domain.
    residual_A : (N,) array
        Distance of each atom from its site in its own domain (in the main
        domain for atoms on none).
    """
    fits: list
    atoms: list
    domain: np.ndarray
    residual_A: np.ndarray

    @property
    def main(self) -> LatticeFit:
        return self.fits[0]

    @property
    def on_lattice(self) -> np.ndarray:
        """(N,) bool: the atom sits on the lattice of some domain."""
        return self.domain > 0

    def ideal_sites_A(self, param_A: float, centre_A) -> np.ndarray:
        """Every atom's site in its own domain (:func:`ideal_sites_A`, each domain scaled about
        ``centre_A``); NaN rows for atoms on no domain."""
        out = np.full((len(self.domain), 3), np.nan)
        for k, (fit, idx) in enumerate(zip(self.fits, self.atoms)):
            mine = self.domain[idx] == k + 1
            out[idx[mine]] = ideal_sites_A(fit, param_A, centre_A)[mine]
        return out

    def as_list(self) -> list:
        """JSON-ready summaries of the domains, each with its atom count."""
        return [{**fit.as_dict(), "n_atoms": int(np.sum(self.domain == k + 1))} for k, fit in enumerate(self.fits)]


_MAX_ANISOTROPY = 1.08   # a domain's largest / smallest lattice parameter (L1_0 FePt: 1.04)
_MAX_SHEAR_DEG = 6.0     # and its angles' largest departure from 90°
# × NN distance: the retries' site tolerances, in turn, when a domain's fit is distorted
_TIGHT_OUTLIERS = (0.2, 0.25, 0.15)


def _credible(fit: LatticeFit) -> bool:
    """A fit that looks like a (strained) crystal: nearly cubic. A distorted one has indexed
    atoms of several grains or of none (measured: a 16% anisotropic fit on a mostly
    disordered high-entropy-alloy particle)."""
    p = np.asarray(fit.params_A, float)
    return bool(np.all(np.isfinite(p)) and p.min() > 0 and p.max() <= _MAX_ANISOTROPY * p.min()
                and np.all(np.abs(np.asarray(fit.angles_deg) - 90.0) <= _MAX_SHEAR_DEG))


def fit_lattice_domains(xyz_A, element: Element | str = "Pt", *, max_domains: int = 6,
                        min_domain_atoms: int | None = None) -> LatticeDomains:
    """Fit a particle's crystal domains one after another.

    The first domain is :func:`fit_lattice` on every atom; each further domain is
    the same fit on the atoms no earlier domain holds. Twinned particles (a twin
    plane, the five domains of a decahedron or pentagonal bipyramid) thus get a
    lattice for every part, not only for the largest, so that their strain is
    measured everywhere. A domain is kept while its fit holds at least
    ``min_domain_atoms`` atoms on one bonded cluster (default: 5% of the atoms,
    at least 20) and is nearly cubic (parameters within 8% of each other, angles
    within 6° of 90°); further domains are sought only when the first is.

    Returns
    -------
    LatticeDomains
        ``fits[0]`` is :func:`fit_lattice`'s result on the whole model (with its
        ``ok`` and fallback rules). When several domains are found and together
        hold at least a quarter of the atoms, ``fits[0].ok`` is True even if the
        main domain alone holds fewer.

    Examples
    --------
    >>> from ptnp_gpu.synth import fcc_particle
    >>> doms = fit_lattice_domains(fcc_particle(200, 3.924), "Pt")
    >>> len(doms.fits), int(doms.domain.min())
    (1, 1)
    """
    el = get_element(element) if isinstance(element, str) else element
    xyz = np.asarray(xyz_A, dtype=np.float64).reshape(-1, 3)
    n = len(xyz)
    need = max(20, int(np.ceil(0.05 * n))) if min_domain_atoms is None else int(min_domain_atoms)
    main = fit_lattice(xyz, el, min_inlier_fraction=0.0)
    domain = np.zeros(n, dtype=np.int64)
    residual = main.residual_A.copy()
    fits, atoms = [main], [np.arange(n)]
    if main.inlier.any():
        domain[main.inlier] = 1
    while len(fits) < max_domains and main.inlier.sum() >= need and _credible(main):
        rest = np.flatnonzero(domain == 0)
        if len(rest) < need:
            break
        fit = fit_lattice(xyz[rest], el, min_inlier_fraction=0.0)
        if not _credible(fit) and np.isfinite(fit.nn_distance_A):
            # a compromise between two neighbouring domains (the wedges of a decahedron):
            # a tighter tolerance holds one of them. Whether a given tolerance settles on a
            # wedge or on a few sheared atoms of a shared twin plane can turn on rounding (the
            # bonds of a model without noise tie), so the next tolerance is tried after a
            # distorted or too small fit
            nn_rest = fit.nn_distance_A
            for tol in _TIGHT_OUTLIERS:
                fit = fit_lattice(xyz[rest], el, min_inlier_fraction=0.0, outlier_A=tol * nn_rest)
                if _credible(fit) and fit.inlier.sum() >= need:
                    break
        if fit.inlier.sum() < need or not np.isfinite(fit.rms_A) or not _credible(fit):
            break
        fits.append(fit)
        atoms.append(rest)
        domain[rest[fit.inlier]] = len(fits)
        residual[rest[fit.inlier]] = fit.residual_A[fit.inlier]
    # fit_lattice's rule for a failed fit, over all domains together
    on_fraction = float(np.mean(domain > 0)) if n else 0.0
    if on_fraction < _MIN_ON_LATTICE and len(fits) > 1:
        fits, atoms = fits[:1], atoms[:1]
        domain = main.inlier.astype(np.int64)
        residual = main.residual_A.copy()
        on_fraction = float(main.inlier.mean())
    if main.ok:
        fits[0] = _demoted(main, on_fraction, _MIN_ON_LATTICE)
    return LatticeDomains(fits, atoms, domain, residual)
