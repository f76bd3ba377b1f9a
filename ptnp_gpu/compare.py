"""Comparing two atomic models of one particle (paper Fig. 3): common, moved, lost, gained.

The paper splits a time series into two halves, builds a model from each and
reports the atoms common to both, the atoms lost between them and the atoms
displaced by more than 0.8 × the atomic diameter (1.76 Å for Pt). This module
does that on two arrays of positions in Å, with an optimal pairing rather than
the reference's greedy nearest-unused-partner search.

Definitions (model A is the reference, e.g. part1; B the other, e.g. part2)
--------------------------------------------------------------------------
common
    Atoms of A paired one-to-one with an atom of B closer than ``cutoff_A``.
    The pairing maximises the number of such pairs and, among maximal
    pairings, minimises the summed distance (:func:`ptnp_gpu.pairing.pair_points`).
moved
    Among the atoms left unpaired, an atom of A whose optimal one-to-one
    partner among the unpaired atoms of B lies between ``cutoff_A`` and
    ``moved_radius_A`` (default 2 × cutoff, 3.52 Å for Pt). Such an atom is
    counted once, as moved (displaced by more than the cutoff), and not as
    one lost plus one gained atom. No unpaired pair can be closer than the
    cutoff, because the first pairing is maximal.
lost
    Atoms of A with neither a common nor a moved partner.
gained
    Atoms of B with neither a common nor a moved partner.

So ``n_a = common + moved + lost`` and ``n_b = common + moved + gained``.
Radial depth is ``R_NP − R``: R the distance of an atom from the centroid of A,
R_NP half the largest interatomic distance in A (the paper's definition);
atoms of B are placed with A's centre and R_NP. :func:`surface_depth_A` gives
the shape-independent alternative (distance to the convex hull of the atoms)
that ``compute_statistics(..., depth="surface")`` uses; the comparison itself
keeps the radial depth.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from .errors import InputError
from .pairing import pair_points

__all__ = ["Comparison", "compare_points", "max_pairwise_distance_A", "radial_depth_A",
           "surface_depth_A", "displacement_by_depth", "displacement_beyond_noise", "default_cutoff_A",
           "STATUS_CODES"]

log = logging.getLogger(__name__)

#: status labels used in tables and figures
STATUS_CODES = ("common", "moved", "lost", "gained")


def default_cutoff_A(element: str = "Pt") -> float:
    """Paper cutoff for common atoms: 0.8 × atomic diameter (Å), 1.76 Å for Pt."""
    from .elements import get_element
    return 0.8 * 2.0 * get_element(element).radius_A


def max_pairwise_distance_A(xyz_A) -> float:
    """Largest distance (Å) between any two of the (N, 3) points (x, y, z in Å).

    Uses the convex hull, so it is fast for 10⁵ atoms.

    Examples
    --------
    >>> max_pairwise_distance_A([[0, 0, 0], [3, 4, 0], [1, 1, 0]])
    5.0
    """
    x = np.asarray(xyz_A, float).reshape(-1, 3)
    if len(x) < 2:
        return 0.0
    pts = x
    if len(x) > 4:
        try:
            pts = x[ConvexHull(x).vertices]
        except (QhullError, ValueError):  # flat or degenerate sets: fall back to all points
            pts = x
    best = 0.0
    for s in range(0, len(pts), 2048):
        d2 = np.sum((pts[s:s + 2048, None, :] - pts[None, :, :]) ** 2, axis=-1)
        best = max(best, float(d2.max()))
    return float(np.sqrt(best))


def radial_depth_A(xyz_A, *, center_A=None, radius_A=None):
    """Radial depth ``R_NP − R`` (Å) of each atom.

    Parameters
    ----------
    xyz_A : (N, 3) array_like
        Positions (x, y, z) in Å.
    center_A : (3,) array_like, optional
        Particle centre in Å; default the centroid of ``xyz_A``.
    radius_A : float, optional
        Particle radius R_NP in Å; default half the largest interatomic distance.

    Returns
    -------
    depth_A : (N,) ndarray
        Depth below the particle surface in Å (0 at the outermost atoms of a sphere).
    center_A : (3,) ndarray
    radius_A : float
    """
    x = np.asarray(xyz_A, float).reshape(-1, 3)
    c = x.mean(0) if center_A is None else np.asarray(center_A, float)
    r_np = 0.5 * max_pairwise_distance_A(x) if radius_A is None else float(radius_A)
    return r_np - np.linalg.norm(x - c, axis=1), c, r_np


def _hull_planes(x):
    """Distinct facet planes (F, 4) of the convex hull of ``x``, or None when it is degenerate.

    Each row is (n_x, n_y, n_z, d) with n the outward unit normal, so that
    ``n·p + d`` is the signed distance (Å) of p from the plane, ≤ 0 inside.
    Qhull triangulates the facets, so coplanar triangles repeat one plane;
    one row per plane is kept (planes whose coefficients agree to 1e-12).
    """
    if len(x) < 5:
        return None
    try:
        hull = ConvexHull(x)
    except (QhullError, ValueError):   # flat, collinear or coincident points
        return None
    if not hull.volume > 0:
        return None
    eq = hull.equations
    _, first = np.unique(np.round(eq, 12), axis=0, return_index=True)
    return eq[np.sort(first)]


def _surface_depth(x, chunk_elements: int = 1 << 22):
    """(depth_A, used_hull): :func:`surface_depth_A` and whether the hull was used."""
    planes = _hull_planes(x)
    if planes is None:
        return radial_depth_A(x)[0], False
    n, d = planes[:, :3], planes[:, 3]
    out = np.empty(len(x))
    step = max(1, chunk_elements // len(planes))      # bound the (atoms × planes) block
    for s in range(0, len(x), step):
        out[s:s + step] = np.min(-(x[s:s + step] @ n.T + d), axis=1)
    return np.maximum(out, 0.0), True    # atoms on the hull read 0, not −1e-15


def surface_depth_A(xyz_A) -> np.ndarray:
    """Depth (Å) of each atom below the particle surface: its distance to the convex hull.

    The surface is the boundary of the convex hull of all the atoms. An atom
    inside lies at distance ``min over facets of −(n·x + d)`` from it (n the
    outward unit normal and d the offset of a facet's plane, from Qhull): the
    largest ball around the atom that fits in every half-space of the hull
    touches the boundary. Unlike the radial depth ``R_NP − R``
    (:func:`radial_depth_A`) this does not assume a spherical particle: the
    outermost atoms of a rod, a plate or a faceted particle all read 0,
    wherever they are on its surface. Atoms in surface concavities (steps,
    re-entrant twin grooves) read the distance to the hull spanned over them.

    Parameters
    ----------
    xyz_A : (N, 3) array_like
        Atom positions (x, y, z) in Å.

    Returns
    -------
    depth_A : (N,) ndarray
        Distance in Å from each atom to the hull's boundary: 0 for hull
        vertices and atoms on its facets, positive inside.

    Notes
    -----
    Degenerate sets have no three-dimensional hull: fewer than 5 atoms, all
    atoms on one plane or one line, or any set Qhull refuses. For those the
    function returns the radial depth instead, ``radial_depth_A(xyz_A)[0]``
    (centroid and half the largest interatomic distance), and logs a warning;
    it never raises for them. The distances are computed for all atoms
    against all distinct facet planes in chunks of about 4·10⁶ atom-plane
    pairs (32 MiB), so memory stays bounded for 10⁵ atoms.

    Examples
    --------
    A 3 × 3 × 3 grid of points 1 Å apart: 26 lie on the cube's faces, the
    centre 1 Å below each face.

    >>> import numpy as np
    >>> g = np.stack(np.meshgrid(*[np.arange(3.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    >>> d = surface_depth_A(g)
    >>> float(d[13]), float(np.delete(d, 13).max())
    (1.0, 0.0)
    """
    x = np.asarray(xyz_A, float).reshape(-1, 3)
    if len(x) == 0:
        return np.zeros(0)
    depth, used_hull = _surface_depth(x)
    if not used_hull:
        log.warning("surface depth: %d atoms span no three-dimensional convex hull; "
                    "using the radial depth R_NP - R instead", len(x))
    return depth


def displacement_by_depth(depth_A, displacement_A, status, *, bin_A: float = 2.0) -> list:
    """Counts and displacement statistics of A's atoms in radial-depth bins.

    Parameters
    ----------
    depth_A : (N,) array_like
        Radial depth of each atom of A (Å).
    displacement_A : (N,) array_like
        Distance to its partner in B (Å); NaN for lost atoms.
    status : (N,) array_like of str
        ``"common"``, ``"moved"`` or ``"lost"`` for each atom of A.
    bin_A : float
        Bin width in Å; bins start at ``floor(min depth / bin_A) * bin_A``.

    Returns
    -------
    list of dict
        One entry per non-empty bin: ``depth_min_A``, ``depth_max_A``,
        ``n_atoms``, ``n_common``, ``n_moved``, ``n_lost``, ``percent_common``,
        ``displacement_common_median_A`` and ``displacement_common_rms_A``.
    """
    d = np.asarray(depth_A, float)
    disp = np.asarray(displacement_A, float)
    st = np.asarray(status)
    if len(d) == 0:
        return []
    if not (np.isfinite(bin_A) and bin_A > 0):
        raise InputError(f"depth bin must be a positive number of Å; got {bin_A!r}")
    k = np.floor(d / bin_A).astype(int)
    out = []
    for b in np.unique(k):
        sel = k == b
        com = sel & (st == "common")
        dc = disp[com]
        out.append({
            "depth_min_A": float(b * bin_A), "depth_max_A": float((b + 1) * bin_A),
            "n_atoms": int(sel.sum()), "n_common": int(com.sum()),
            "n_moved": int(np.sum(sel & (st == "moved"))), "n_lost": int(np.sum(sel & (st == "lost"))),
            "percent_common": float(100.0 * com.sum() / sel.sum()),
            "displacement_common_median_A": float(np.median(dc)) if len(dc) else None,
            "displacement_common_rms_A": float(np.sqrt(np.mean(dc ** 2))) if len(dc) else None,
        })
    return out


def displacement_beyond_noise(comp, sd_a_A, sd_b_A, *, p_value: float = 0.001, bin_A: float = 2.0):
    """Which common atoms moved farther than their positions' noise explains.

    With each model's per-axis position error (``position_sd_A`` of a ptnp result, Method step 9
    of the README), a common atom's displacement ``d`` between two independent models of one
    particle is, if the atom did not move, Gaussian with variance ``σa² + σb²`` per axis, so
    ``d² / (σa² + σb²)`` follows χ² with 3 degrees of freedom. An atom whose displacement has a
    chance below ``p_value`` under that is displaced beyond noise (by chance: ``p_value`` of them,
    were the errors exactly Gaussian and calibrated; measured on pairs of simulated maps that differ
    only in their noise, 1.6-2.3% of the common atoms at ``p_value`` 0.001: the centres' errors
    have heavier tails than the linear estimate, see ``tests/test_precision.py``).

    Parameters
    ----------
    comp : Comparison
    sd_a_A, sd_b_A : (n_a,), (n_b,) array_like
        Per-axis position errors (Å) of A's and B's atoms; NaN where unknown.
    p_value : float
        The test's level.
    bin_A : float
        Radial-depth bins (of A) for the per-depth counts.

    Returns
    -------
    ratio : (C,) ndarray
        ``d / √(σa² + σb²)`` of each common pair (NaN where an error is unknown).
    summary : dict
        ``n_tested``, ``n_beyond_noise``, ``percent_beyond_noise``, ``expected_by_chance``,
        ``ratio_median``, ``p_value`` and ``by_depth`` (the same per radial-depth bin).
    """
    from scipy.stats import chi2
    sa = np.asarray(sd_a_A, float)[comp.common_a]
    sb = np.asarray(sd_b_A, float)[comp.common_b]
    ratio = comp.common_dist_A / np.sqrt(sa * sa + sb * sb)
    tested = np.isfinite(ratio)
    beyond = tested & (chi2.sf(np.where(tested, ratio, 0.0) ** 2, 3) < p_value)

    def counts(sel):
        n, k = int((sel & tested).sum()), int((sel & beyond).sum())
        return {"n_tested": n, "n_beyond_noise": k, "percent_beyond_noise": float(100.0 * k / n) if n else None,
                "expected_by_chance": float(p_value * n)}
    summary = {"p_value": float(p_value), **counts(np.ones(len(ratio), bool)),
               "ratio_median": float(np.median(ratio[tested])) if tested.any() else None}
    depth = comp.depth_a_A[comp.common_a]
    if len(depth) and np.isfinite(bin_A) and bin_A > 0:
        k = np.floor(depth / bin_A).astype(int)
        summary["by_depth"] = [{"depth_min_A": float(b * bin_A), "depth_max_A": float((b + 1) * bin_A),
                                **counts(k == b)} for b in np.unique(k)]
    return ratio, summary


@dataclass
class Comparison:
    """Result of :func:`compare_points`; indices are 0-based rows of A and B.

    Attributes
    ----------
    common_a, common_b : (C,) int ndarray
        Paired rows of A and B closer than the cutoff.
    common_dist_A : (C,) ndarray
        Their distances in Å.
    moved_a, moved_b, moved_dist_A : ndarrays
        Pairs of unpaired atoms between the cutoff and the moved radius.
    lost_a : (L,) int ndarray
        Rows of A without a partner.
    gained_b : (G,) int ndarray
        Rows of B without a partner.
    n_a, n_b : int
    cutoff_A, moved_radius_A : float
    depth_a_A, depth_b_A : ndarray
        Radial depth (Å) of every atom of A and of B (B placed with A's centre and R_NP).
    center_A : (3,) ndarray
    radius_np_A : float
    """
    common_a: np.ndarray
    common_b: np.ndarray
    common_dist_A: np.ndarray
    moved_a: np.ndarray
    moved_b: np.ndarray
    moved_dist_A: np.ndarray
    lost_a: np.ndarray
    gained_b: np.ndarray
    n_a: int
    n_b: int
    cutoff_A: float
    moved_radius_A: float
    depth_a_A: np.ndarray
    depth_b_A: np.ndarray
    center_A: np.ndarray
    radius_np_A: float

    def status_a(self) -> np.ndarray:
        """(n_a,) array of "common", "moved" or "lost" for each atom of A."""
        s = np.full(self.n_a, "lost", dtype=object)
        s[self.common_a] = "common"
        s[self.moved_a] = "moved"
        return s

    def status_b(self) -> np.ndarray:
        """(n_b,) array of "common", "moved" or "gained" for each atom of B."""
        s = np.full(self.n_b, "gained", dtype=object)
        s[self.common_b] = "common"
        s[self.moved_b] = "moved"
        return s

    def displacement_a_A(self) -> np.ndarray:
        """(n_a,) distance (Å) of each atom of A to its partner in B; NaN when lost."""
        d = np.full(self.n_a, np.nan)
        d[self.common_a] = self.common_dist_A
        d[self.moved_a] = self.moved_dist_A
        return d

    def summary(self, *, depth_bin_A: float = 2.0) -> dict:
        """JSON-ready counts, percentages and displacement statistics."""
        def pct(n, of):
            return float(100.0 * n / of) if of else None

        def stat(fn, x):
            return float(fn(x)) if len(x) else None

        nc, nm, nl, ng = len(self.common_a), len(self.moved_a), len(self.lost_a), len(self.gained_b)
        dc = self.common_dist_A
        return {
            "n_a": self.n_a, "n_b": self.n_b,
            "n_common": nc, "percent_common_of_a": pct(nc, self.n_a), "percent_common_of_b": pct(nc, self.n_b),
            "n_lost": nl, "percent_lost_of_a": pct(nl, self.n_a),
            "n_gained": ng, "percent_gained_of_b": pct(ng, self.n_b),
            "n_moved": nm, "percent_moved_of_a": pct(nm, self.n_a),
            "displacement_common_median_A": stat(np.median, dc),
            "displacement_common_rms_A": stat(lambda x: np.sqrt(np.mean(x ** 2)), dc),
            "displacement_common_max_A": stat(np.max, dc),
            "displacement_moved_median_A": stat(np.median, self.moved_dist_A),
            "cutoff_A": self.cutoff_A, "moved_radius_A": self.moved_radius_A,
            "center_a_A": self.center_A.tolist(), "radius_np_a_A": self.radius_np_A,
            "displacement_vs_depth": displacement_by_depth(self.depth_a_A, self.displacement_a_A(),
                                                           self.status_a(), bin_A=depth_bin_A),
            "definitions": {
                "common": "atom of A paired one-to-one with an atom of B closer than cutoff_A "
                          "(optimal assignment: most pairs, then least summed distance)",
                "moved": "atom of A left unpaired whose optimal partner among the unpaired atoms of B "
                         "lies between cutoff_A and moved_radius_A (displaced by more than the cutoff)",
                "lost": "atom of A with no partner in B within moved_radius_A",
                "gained": "atom of B with no partner in A within moved_radius_A",
                "identity": "n_a = n_common + n_moved + n_lost; n_b = n_common + n_moved + n_gained",
                "radial_depth": "R_NP - R with R the distance from the centroid of A and R_NP half the "
                                "largest interatomic distance in A",
            },
        }


def _as_points(x, name):
    a = np.asarray(x, float)
    if a.ndim != 2 or a.shape[1] != 3:
        raise InputError(f"{name} must be an (N, 3) array of x, y, z in Å; got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name} holds non-finite coordinates")
    return a


def compare_points(a_xyz_A, b_xyz_A, cutoff_A: float = 1.76, *, moved_radius_A: float | None = None) -> Comparison:
    """Classify the atoms of two models as common, moved, lost or gained.

    Parameters
    ----------
    a_xyz_A : (N, 3) array_like
        Positions of model A (x, y, z in Å), the reference (e.g. part1).
    b_xyz_A : (M, 3) array_like
        Positions of model B in the same frame (register first if needed).
    cutoff_A : float
        Common-atom cutoff in Å; the paper uses 0.8 × atomic diameter
        (:func:`default_cutoff_A`, 1.76 Å for Pt).
    moved_radius_A : float, optional
        Largest distance at which an unpaired atom still counts as moved
        rather than lost + gained; default ``2 * cutoff_A``.

    Returns
    -------
    Comparison

    Raises
    ------
    InputError
        Badly shaped or non-finite coordinates, or a non-positive cutoff or a
        moved radius below the cutoff.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[0., 0, 0], [3, 0, 0], [6, 0, 0], [20, 0, 0]])
    >>> b = np.array([[0.1, 0, 0], [3, 2.5, 0], [6, 0, 0]])
    >>> s = compare_points(a, b, 1.76).summary()
    >>> s["n_common"], s["n_moved"], s["n_lost"], s["n_gained"]
    (2, 1, 1, 0)
    """
    a = _as_points(a_xyz_A, "model A")
    b = _as_points(b_xyz_A, "model B")
    if not (np.isfinite(cutoff_A) and cutoff_A > 0):
        raise InputError(f"cutoff must be a positive number of Å; got {cutoff_A!r}")
    moved_radius_A = 2.0 * cutoff_A if moved_radius_A is None else float(moved_radius_A)
    if not (np.isfinite(moved_radius_A) and moved_radius_A >= cutoff_A):
        raise InputError(f"moved radius must be ≥ the cutoff ({cutoff_A:g} Å); got {moved_radius_A!r}")
    ca, cb, cd = pair_points(a, b, cutoff_A)
    free_a = np.setdiff1d(np.arange(len(a)), ca)
    free_b = np.setdiff1d(np.arange(len(b)), cb)
    ma, mb, md = pair_points(a[free_a], b[free_b], moved_radius_A)
    ma, mb = free_a[ma], free_b[mb]
    depth_a, center, r_np = radial_depth_A(a) if len(a) else (np.zeros(0), np.zeros(3), 0.0)
    depth_b = radial_depth_A(b, center_A=center, radius_A=r_np)[0]
    return Comparison(ca, cb, cd, ma, mb, md, np.setdiff1d(free_a, ma), np.setdiff1d(free_b, mb),
                      len(a), len(b), float(cutoff_A), moved_radius_A, depth_a, depth_b,
                      np.asarray(center, float), float(r_np))
