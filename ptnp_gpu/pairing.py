"""Optimal one-to-one pairing of two point sets within a cutoff, and accuracy figures.

The pairing maximises the number of pairs closer than ``cutoff_A`` and, among
those, minimises the summed distance. Only candidate pairs within the cutoff
are considered: the candidate graph is split into connected components, and
each component is solved exactly: one edge or a star (one atom facing several
candidates) directly, vectorised; anything larger with the Hungarian algorithm.
The cost is near-linear for well-separated atoms.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

__all__ = ["pair_points", "match_accuracy"]


def pair_points(a_xyz_A, b_xyz_A, cutoff_A: float):
    """Pair rows of ``a`` with rows of ``b`` one-to-one within ``cutoff_A``.

    Returns
    -------
    ia, ib : (P,) int arrays of paired indices
    dist_A : (P,) distances in Å
    """
    a = np.asarray(a_xyz_A, float).reshape(-1, 3)
    b = np.asarray(b_xyz_A, float).reshape(-1, 3)
    if len(a) == 0 or len(b) == 0:
        e = np.zeros(0, int)
        return e, e, np.zeros(0)
    ta, tb = cKDTree(a), cKDTree(b)
    sdm = ta.sparse_distance_matrix(tb, cutoff_A, output_type="coo_matrix")
    r, c, d = sdm.row, sdm.col, sdm.data
    # exact zero distances are dropped by the sparse format: add them back
    zero = ta.query_ball_tree(tb, 1e-12)
    zr = [i for i, js in enumerate(zero) for _ in js]
    if zr:
        zc = [j for js in zero for j in js]
        r = np.concatenate([r, zr]).astype(int)
        c = np.concatenate([c, zc]).astype(int)
        d = np.concatenate([d, np.zeros(len(zr))])
        key = np.unique(np.stack([r, c], 1), axis=0, return_index=True)[1]
        r, c, d = r[key], c[key], d[key]
    if len(r) == 0:
        e = np.zeros(0, int)
        return e, e, np.zeros(0)
    na = len(a)
    g = coo_matrix((np.ones(len(r)), (r, c + na)), shape=(na + len(b), na + len(b)))
    _, lab = connected_components(g, directed=False)
    comp = lab[r]
    # trivial components: exactly one candidate edge
    counts = np.bincount(comp, minlength=lab.max() + 1)
    one = counts[comp] == 1
    ia, ib, dd = [r[one]], [c[one]], [d[one]]
    # star components (one atom of a side with several candidates): the shortest edge is optimal
    n_comp_a = np.bincount(lab[:na], minlength=lab.max() + 1)
    n_comp_b = np.bincount(lab[na:], minlength=lab.max() + 1)
    star = ~one & ((n_comp_a[comp] == 1) | (n_comp_b[comp] == 1))
    if star.any():
        e = np.flatnonzero(star)
        e = e[np.lexsort((d[e], comp[e]))]
        first = np.r_[True, comp[e][1:] != comp[e][:-1]]
        e = e[first]
        ia.append(r[e]), ib.append(c[e]), dd.append(d[e])
    multi = np.flatnonzero(~one & ~star)
    if len(multi):
        order = multi[np.argsort(comp[multi], kind="stable")]
        cs = comp[order]
        bounds = np.flatnonzero(np.diff(cs)) + 1
        big = 1e3 * (cutoff_A + 1.0)
        for grp in np.split(order, bounds):
            rr, cc, d0 = r[grp], c[grp], d[grp]
            ur, ri = np.unique(rr, return_inverse=True)
            uc, ci = np.unique(cc, return_inverse=True)
            cost = np.zeros((len(ur), len(uc)))
            cost[ri, ci] = d0 - big
            x, y = linear_sum_assignment(cost)
            ok = cost[x, y] < 0
            ia.append(ur[x[ok]])
            ib.append(uc[y[ok]])
            dd.append(cost[x[ok], y[ok]] + big)
    ia, ib, dd = np.concatenate(ia), np.concatenate(ib), np.concatenate(dd)
    o = np.argsort(ia, kind="stable")
    return ia[o].astype(int), ib[o].astype(int), dd[o]


def match_accuracy(found_xyz_A, true_xyz_A, cutoff_A: float = 1.0) -> dict:
    """Recall, precision and position RMSD of found atoms against the truth."""
    ia, ib, d = pair_points(found_xyz_A, true_xyz_A, cutoff_A)
    nf, nt = len(np.asarray(found_xyz_A).reshape(-1, 3)), len(np.asarray(true_xyz_A).reshape(-1, 3))
    return {
        "n_found": nf, "n_true": nt, "n_matched": int(len(d)),
        "recall": len(d) / nt if nt else float("nan"),
        "precision": len(d) / nf if nf else float("nan"),
        "rmsd_A": float(np.sqrt(np.mean(d ** 2))) if len(d) else float("nan"),
        "found_index": ia, "true_index": ib, "distance_A": d,
    }
