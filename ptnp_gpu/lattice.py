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


def _near_pairs(xyz, tree, r0):
    """Pairs within ``r0`` (cKDTree's order), their squared distances summed as cKDTree
    does, and each atom's nearest-neighbour distance: the shortest of its pairs, a k-nearest
    query only for atoms with none (several times faster than querying every atom)."""
    d = np.full(len(xyz), np.inf)
    p = tree.query_pairs(r0, output_type="ndarray")
    v = xyz[p[:, 0]] - xyz[p[:, 1]]
    d2 = (v[:, 0] * v[:, 0] + v[:, 1] * v[:, 1]) + v[:, 2] * v[:, 2]
    if len(p):
        dist = np.sqrt(d2)
        np.minimum.at(d, p[:, 0], dist)
        np.minimum.at(d, p[:, 1], dist)
    lone = ~np.isfinite(d)
    if lone.any():
        d[lone] = tree.query(xyz[lone], k=2)[0][:, 1]
    return p, d2, d


def _bonds(xyz, tree, cut, near=None):
    """Bonds (pairs within ``cut``) and their unit vectors; ``near`` = (pairs, squared
    distances) of a search at a radius >= ``cut``, filtered instead of searching again
    (the same pairs in the same order)."""
    if near is not None:
        pairs = near[0][near[1] <= cut * cut]
    else:
        pairs = tree.query_pairs(cut, output_type="ndarray")
    if len(pairs) == 0:
        return pairs, np.zeros((0, 3))
    v = xyz[pairs[:, 1]] - xyz[pairs[:, 0]]
    return pairs, v / np.linalg.norm(v, axis=1, keepdims=True)


@nb.njit(cache=True)
def _best_rows(M, bonds, want_index, idx):
    """For each bond b (rows of ``bonds``, N × 3): the largest |M[r] · b| over the h rows of
    ``M`` (the half set of ideal directions, rotated into the map frame) and, when
    ``want_index``, into ``idx`` the first row that reaches it, plus h when that row's cosine
    is negative (the opposite direction)."""
    h = M.shape[0]
    n = bonds.shape[0]
    best = np.empty(n)
    for j in range(n):
        bx, by, bz = bonds[j, 0], bonds[j, 1], bonds[j, 2]
        c0 = M[0, 0] * bx + M[0, 1] * by + M[0, 2] * bz
        b = abs(c0)
        k = 0
        ck = c0
        for r in range(1, h):
            c = M[r, 0] * bx + M[r, 1] * by + M[r, 2] * bz
            if abs(c) > b:
                b = abs(c)
                k = r
                ck = c
        best[j] = b
        if want_index:
            idx[j] = k + h if ck < 0 else k
    return best


@nb.njit(cache=True)
def _count_matched(Ms, bonds, cos_tol):
    """For each rotation's direction rows ``Ms[k]`` (K, h, 3): how many bonds lie within
    ``cos_tol`` of one of them (either sign)."""
    K, h, _ = Ms.shape
    out = np.zeros(K, np.int64)
    for k in range(K):
        for j in range(bonds.shape[0]):
            bx, by, bz = bonds[j, 0], bonds[j, 1], bonds[j, 2]
            for r in range(h):
                if abs(Ms[k, r, 0] * bx + Ms[k, r, 1] * by + Ms[k, r, 2] * bz) > cos_tol:
                    out[k] += 1
                    break
    return out


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
    b = np.ascontiguousarray(bonds, dtype=np.float64)
    idx = np.empty(len(b), dtype=np.int64)
    best = _best_rows(M, b, True, idx)
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
    return _count_matched(Ms, np.ascontiguousarray(bonds, dtype=np.float64), float(cos_tol))


def _orientation(xyz, bonds_pairs, bonds, dirs, n_centre=6, tol_deg=12.0):
    """Rotation (columns = cubic axes in map frame) from bond directions."""
    cos_tol = np.cos(np.radians(tol_deg))
    # the angle of the first ideal pair that is neither parallel nor antiparallel
    dots = dirs @ dirs[0]
    j0 = int(np.argmax(np.where(np.abs(dots) < 0.99, dots, -2.0)))
    pair_cos = float(dots[j0])
    centre = xyz.mean(0)
    order = np.argsort(np.linalg.norm(xyz - centre, axis=1))[:n_centre]
    # candidates: two bonds of a central atom at the ideal pair angle, matched to the first
    # ideal pair; all are scored at once on an evenly spread subset of bonds (the first of
    # the best wins); refinement uses every bond
    sample = bonds[::max(1, len(bonds) // 4000)]
    targets = []
    near = np.flatnonzero(np.isin(bonds_pairs, order).any(axis=1))   # the central atoms' bonds, one scan
    for a in order:
        sel = near[(bonds_pairs[near, 0] == a) | (bonds_pairs[near, 1] == a)]
        b = bonds[sel]
        if len(b) < 2:
            continue
        cosm = b @ b.T
        ii, jj = np.nonzero(np.abs(cosm - pair_cos) < 0.15)
        targets.extend(np.stack([b[i], b[j]]) for i, j in zip(ii[:8], jj[:8]))
    if not targets:
        return None
    src = np.broadcast_to(np.stack([dirs[0], dirs[j0]]), (len(targets), 2, 3))
    rots = _kabsch_batch(src, np.stack(targets))
    rot = rots[int(np.argmax(_n_matched(rots, sample, dirs, cos_tol)))]
    matched = None
    for _ in range(4):   # refine on every bond matched to an ideal direction
        cbest, idx, _ = _score(rot, bonds, dirs, cos_tol)
        ok = cbest > cos_tol
        if ok.sum() < 3:
            break
        key = np.where(ok, idx, -1)
        if matched is not None and np.array_equal(key, matched):
            break                   # the same matches give the same rotation: converged
        matched = key
        rot = kabsch_rotation(dirs[idx[ok]], bonds[ok])
    return rot


def _index_sites(p_cells, basis):
    """Nearest lattice site (cell units) for positions in cell units."""
    cand = np.stack([np.rint(p_cells - b) + b for b in basis], axis=1)   # (N, M, 3)
    d2 = ((cand - p_cells[:, None, :]) ** 2).sum(-1)
    return cand[np.arange(len(p_cells)), d2.argmin(1)]


@nb.njit(cache=True)
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
    xyz = np.asarray(xyz_A, dtype=np.float64).reshape(-1, 3)
    lattice = el.lattice
    if lattice == "hcp":
        log.warning("%s is hcp; fitting an fcc lattice (same first shell)", el.symbol)
    geo = lattice_geometry(lattice)
    n = len(xyz)
    if n < 4:
        return _fallback(xyz, el, geo["type"], float("nan"), f"too few atoms ({n}) for a lattice fit")
    tree = cKDTree(xyz)
    r0 = 1.25 * el.nn_distance_A
    p0, d2_0, d_nn = _near_pairs(xyz, tree, r0)
    nn = float(np.median(d_nn))
    cut = nn * 0.5 * (1.0 + geo["d2"] / geo["d1"])
    pairs, bonds = _bonds(xyz, tree, cut, (p0, d2_0) if cut <= r0 else None)
    if len(bonds) < 3:
        return _fallback(xyz, el, geo["type"], nn, "no nearest-neighbour bonds found")
    rot = _orientation(xyz, pairs, bonds, geo["bond_dirs"])
    if rot is None:
        return _fallback(xyz, el, geo["type"], nn, "bond directions do not match the lattice")
    a0 = nn / geo["d1"]
    outlier = 0.3 * nn if outlier_A is None else float(outlier_A)
    centre = xyz.mean(0)
    o_atom = int(np.argmin(np.linalg.norm(xyz - centre, axis=1)))
    origin = xyz[o_atom].copy()
    basis = rot.T * a0                                 # rows: a1, a2, a3 in map frame
    inlier = np.ones(n, bool)
    sites = None
    for _ in range(n_iter):
        p_cells = np.linalg.solve(basis.T, (xyz - origin).T).T
        sites = _index_sites(p_cells, geo["basis"])
        for _inner in range(3):
            design = np.hstack([np.ones((n, 1)), sites])
            sol, *_ = np.linalg.lstsq(design[inlier], xyz[inlier], rcond=None)
            resid = np.linalg.norm(design @ sol - xyz, axis=1)
            new = _largest_cluster(resid <= outlier, pairs)
            if new.sum() < 4 or np.array_equal(new, inlier):
                break
            inlier = new
        origin, basis = sol[0], sol[1:]
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
_TIGHT_OUTLIER = 0.2     # × NN distance: the retry's site tolerance when a domain's fit is distorted


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
            # a tighter tolerance holds one of them
            fit = fit_lattice(xyz[rest], el, min_inlier_fraction=0.0, outlier_A=_TIGHT_OUTLIER * fit.nn_distance_A)
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
