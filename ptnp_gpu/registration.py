"""Rigid registration of two atomic models of one particle (rotation + translation).

Two models of the same particle built in different frames (another program,
another map box, a rotated reconstruction) must be superposed before their
atoms can be paired. :func:`register_points` finds the proper rotation ``R``
and translation ``t`` that map the *moving* atoms onto the *fixed* atoms,
``fixed ≈ moving @ R.T + t``, from the atoms alone, without known
correspondences and with a few per cent of atoms present in only one model.

Method
------
1. **Candidate rotations.** (a) identity; (b) the four proper sign choices of
   the principal-axes frames (elongated particles); (c) for crystalline
   particles, the lattice orientation read from nearest-neighbour bond
   directions: the most populated bond lines of each model (e.g. the six
   <110> lines of fcc) are found, and every pair of lines of the fixed model
   whose angle matches the two strongest lines of the moving model gives one
   candidate (this enumerates the lattice's point-group ambiguities).
   Translations start from the centroids.
2. **Scoring.** Each distinct candidate is polished by nearest-neighbour ICP
   on a subsample and scored by a soft overlap, Σ exp(-d²/2s²) over the
   nearest-neighbour distances d within the cutoff, s = cutoff/4 (a hard count
   would favour lattices shifted by half a bond); the best one is kept.
3. **Refinement.** Iterated optimal one-to-one pairing within the cutoff
   (:func:`ptnp_gpu.pairing.pair_points`) and a weighted Kabsch fit on the
   pairs, with gross outliers trimmed, until the pair set stops changing.
   Atoms without a partner within the cutoff (lost, gained or moved atoms)
   therefore do not bias the fit.

The reported residual is the RMS distance of the pairs within the cutoff
after the final fit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .errors import InputError
from .pairing import pair_points

__all__ = ["Registration", "kabsch", "register_points", "rmsd_between_transforms_A"]


@dataclass
class Registration:
    """Result of :func:`register_points`.

    Attributes
    ----------
    rotation : (3, 3) ndarray
        Proper rotation matrix (det = +1).
    translation_A : (3,) ndarray
        Translation in Å; ``fixed ≈ moving @ rotation.T + translation_A``.
    rmsd_A : float
        RMS distance (Å) of the pairs within the cutoff after the fit.
    n_pairs : int
        Number of one-to-one pairs within the cutoff used in the last fit.
    n_moving, n_fixed : int
        Number of atoms in the two models.
    n_iterations : int
        Refinement iterations run.
    n_candidates : int
        Candidate starting rotations evaluated.
    """
    rotation: np.ndarray
    translation_A: np.ndarray
    rmsd_A: float
    n_pairs: int
    n_moving: int
    n_fixed: int
    n_iterations: int
    n_candidates: int

    def apply(self, xyz_A):
        """Map (N, 3) coordinates in Å from the moving frame into the fixed frame."""
        return np.asarray(xyz_A, float).reshape(-1, 3) @ self.rotation.T + self.translation_A

    @property
    def rotation_angle_deg(self) -> float:
        """Angle of the rotation in degrees."""
        c = (np.trace(self.rotation) - 1.0) / 2.0
        return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))

    def as_dict(self) -> dict:
        """JSON-ready summary."""
        return {
            "rotation": self.rotation.tolist(),
            "rotation_angle_deg": self.rotation_angle_deg,
            "translation_A": self.translation_A.tolist(),
            "residual_rmsd_A": self.rmsd_A,
            "n_pairs": self.n_pairs,
            "fraction_paired_of_moving": self.n_pairs / self.n_moving if self.n_moving else 0.0,
            "fraction_paired_of_fixed": self.n_pairs / self.n_fixed if self.n_fixed else 0.0,
            "n_iterations": self.n_iterations,
            "n_candidates": self.n_candidates,
        }


def kabsch(moving_xyz_A, fixed_xyz_A, weights=None):
    """Least-squares proper rotation and translation between paired points.

    Parameters
    ----------
    moving_xyz_A, fixed_xyz_A : (N, 3) array_like
        Paired coordinates in Å (row i of one matches row i of the other), N ≥ 3.
    weights : (N,) array_like, optional
        Non-negative weights.

    Returns
    -------
    rotation : (3, 3) ndarray
        Proper rotation (det = +1).
    translation_A : (3,) ndarray
        Translation in Å, such that ``fixed ≈ moving @ rotation.T + translation_A``.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([[0., 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3]])
    >>> r, t = kabsch(p, p + [1.0, 2.0, 3.0])
    >>> np.allclose(r, np.eye(3)), np.allclose(t, [1, 2, 3])
    (True, True)
    """
    p = np.asarray(moving_xyz_A, float).reshape(-1, 3)
    q = np.asarray(fixed_xyz_A, float).reshape(-1, 3)
    w = np.ones(len(p)) if weights is None else np.asarray(weights, float)
    w = w / w.sum()
    pc, qc = w @ p, w @ q
    h = (p - pc).T @ ((q - qc) * w[:, None])
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return r, qc - r @ pc


def rmsd_between_transforms_A(xyz_A, rotation_a, translation_a_A, rotation_b, translation_b_A) -> float:
    """RMS distance (Å) between the points moved by two rigid transforms."""
    x = np.asarray(xyz_A, float).reshape(-1, 3)
    d = x @ (np.asarray(rotation_a) - np.asarray(rotation_b)).T \
        + (np.asarray(translation_a_A) - np.asarray(translation_b_A))
    return float(np.sqrt(np.mean(np.sum(d * d, axis=1))))


# --------------------------------------------------------------------------- candidates


def _nn_distance_A(tree: cKDTree, xyz, rng, n_max=2000) -> float:
    sel = xyz if len(xyz) <= n_max else xyz[rng.choice(len(xyz), n_max, replace=False)]
    d, _ = tree.query(sel, k=2)
    return float(np.median(d[:, 1]))


def _bond_lines(xyz, tree, nn_A, rng, n_lines=6, n_max=500):
    """Most populated nearest-neighbour bond lines (unit vectors, sign arbitrary)."""
    sel = np.arange(len(xyz)) if len(xyz) <= n_max else rng.choice(len(xyz), n_max, replace=False)
    lists = tree.query_ball_point(xyz[sel], 1.2 * nn_A)
    src = np.repeat(sel, [len(x) for x in lists])
    dst = np.concatenate([np.asarray(x, int) for x in lists]) if len(src) else np.zeros(0, int)
    v = xyz[dst] - xyz[src]
    n = np.linalg.norm(v, axis=1)
    keep = n > 0.5 * nn_A
    if keep.sum() < 6:
        return np.zeros((0, 3))
    u = v[keep] / n[keep, None]
    counts = np.asarray(cKDTree(u).query_ball_point(u, 2 * np.sin(np.radians(4.0)), return_length=True))
    order = np.argsort(-counts, kind="stable")
    lines = []
    for i in order:
        if len(lines) == n_lines or counts[i] < max(3, 0.02 * len(u)):
            break
        if all(abs(u[i] @ l) < np.cos(np.radians(20.0)) for l in lines):
            # refine the line direction as the mean of the bonds near it
            near = u[np.abs(u @ u[i]) > np.cos(np.radians(6.0))]
            near = near * np.sign(near @ u[i])[:, None]
            m = near.mean(0)
            lines.append(m / np.linalg.norm(m))
    return np.array(lines).reshape(-1, 3)


def _frame(a, b):
    """Orthonormal frame (rows) from two non-parallel vectors."""
    e1 = a / np.linalg.norm(a)
    e3 = np.cross(a, b)
    e3 /= np.linalg.norm(e3)
    return np.stack([e1, np.cross(e3, e1), e3])


def _angle_deg(a, b):
    return float(np.degrees(np.arccos(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1))))


def _lattice_candidates(lines_m, lines_f, tol_deg=8.0):
    if len(lines_m) < 2 or len(lines_f) < 2:
        return []
    # anchor: the strongest line of the moving model and the next one not near-parallel
    p1 = lines_m[0]
    p2 = next((l for l in lines_m[1:] if 20.0 < _angle_deg(p1, l) < 160.0), None)
    if p2 is None:
        return []
    ang = _angle_deg(p1, p2)
    fm = _frame(p1, p2)
    out = []
    for i, qi in enumerate(lines_f):
        for j, qj in enumerate(lines_f):
            if i == j:
                continue
            for s1 in (1.0, -1.0):
                for s2 in (1.0, -1.0):
                    a, b = s1 * qi, s2 * qj
                    if abs(_angle_deg(a, b) - ang) < tol_deg:
                        out.append(_frame(a, b).T @ fm)
    return out


def _pca_candidates(xm, xf):
    def axes(x):
        w, v = np.linalg.eigh(np.cov((x - x.mean(0)).T))
        return v[:, ::-1]
    vm, vf = axes(xm), axes(xf)
    out = []
    for s in ([1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]):
        r = vf @ np.diag(s) @ vm.T
        if np.linalg.det(r) < 0:
            r = vf @ np.diag(np.array(s) * [1, 1, -1]) @ vm.T
        out.append(r)
    return out


def _unique_rotations(rots, tol_deg=3.0):
    out = []
    for r in rots:
        if all(np.degrees(np.arccos(np.clip((np.trace(r @ q.T) - 1) / 2, -1, 1))) > tol_deg for q in out):
            out.append(r)
    return out


def _icp_nn(xm, tree_f, xf, r, t, capture_A, n_iter):
    """Plain nearest-neighbour ICP (used to polish candidates)."""
    for _ in range(n_iter):
        d, j = tree_f.query(xm @ r.T + t, distance_upper_bound=capture_A)
        ok = np.isfinite(d)
        if ok.sum() < 3:
            break
        r_new, t_new = kabsch(xm[ok], xf[j[ok]])
        if np.allclose(r_new, r, atol=1e-9) and np.allclose(t_new, t, atol=1e-9):
            r, t = r_new, t_new
            break
        r, t = r_new, t_new
    return r, t


def _score(xm, tree_f, r, t, cutoff_A):
    """Soft overlap: Σ exp(-d²/2s²) over nearest distances, s = cutoff/4.

    A hard count within the cutoff cannot tell a true superposition from a
    lattice shifted by half a bond (every atom then has a site ~1.4 Å away).
    """
    d, _ = tree_f.query(xm @ r.T + t, distance_upper_bound=cutoff_A)
    ok = np.isfinite(d)
    s = cutoff_A / 4.0
    return float(np.sum(np.exp(-0.5 * (d[ok] / s) ** 2)))


# --------------------------------------------------------------------------- public


def register_points(moving_xyz_A, fixed_xyz_A, *, cutoff_A: float, max_iterations: int = 50,
                    n_polish: int = 15, n_sample: int = 2000, seed: int = 0) -> Registration:
    """Find the rigid transform that superposes ``moving`` onto ``fixed``.

    Parameters
    ----------
    moving_xyz_A, fixed_xyz_A : (N, 3), (M, 3) array_like
        Atom positions in Å, (x, y, z), in unrelated frames; no correspondence
        is needed and a few per cent of atoms may be present in one model only.
    cutoff_A : float
        Pairing cutoff in Å (atoms closer than this after superposition are
        considered the same atom), e.g. 0.8 × atomic diameter.
    max_iterations : int, optional
        Cap on pairing + Kabsch refinement iterations.
    n_polish : int, optional
        Nearest-neighbour ICP iterations that polish each starting rotation.
    n_sample : int, optional
        Atoms sub-sampled for candidate scoring in large models.
    seed : int, optional
        Seed of the sub-sampling (the result is deterministic for a seed).

    Returns
    -------
    Registration
        Rotation, translation (Å) and residual; ``registration.apply(moving)``
        maps moving atoms into the fixed frame.

    Raises
    ------
    InputError
        Fewer than 3 atoms in a model, a non-positive cutoff, or no
        superposition found with at least 3 atoms paired.
    """
    xm = np.asarray(moving_xyz_A, float).reshape(-1, 3)
    xf = np.asarray(fixed_xyz_A, float).reshape(-1, 3)
    if len(xm) < 3 or len(xf) < 3:
        raise InputError(f"registration needs at least 3 atoms per model; got {len(xm)} and {len(xf)}")
    if not (np.isfinite(cutoff_A) and cutoff_A > 0):
        raise InputError(f"cutoff_A must be a positive number of Å; got {cutoff_A!r}")
    rng = np.random.default_rng(seed)
    tree_f, tree_m = cKDTree(xf), cKDTree(xm)
    nn_f = _nn_distance_A(tree_f, xf, rng)
    nn_m = _nn_distance_A(tree_m, xm, rng)
    cm, cf = xm.mean(0), xf.mean(0)

    # precise lattice candidates first, so that de-duplication keeps them
    rots = _lattice_candidates(_bond_lines(xm, tree_m, nn_m, rng), _bond_lines(xf, tree_f, nn_f, rng))
    rots = _unique_rotations(rots + [np.eye(3)] + _pca_candidates(xm, xf))
    sub = xm if len(xm) <= n_sample else xm[rng.choice(len(xm), n_sample, replace=False)]
    best = None
    for r in rots:
        t = cf - r @ cm
        r, t = _icp_nn(sub, tree_f, xf, r, t, max(cutoff_A, 0.5 * nn_f), n_polish)
        sc = _score(sub, tree_f, r, t, cutoff_A)
        if best is None or sc > best[0]:
            best = (sc, r, t)
    _, r, t = best

    prev, converged = None, False
    n_iter = 0
    for n_iter in range(1, max_iterations + 1):
        ia, ib, d = pair_points(xm @ r.T + t, xf, cutoff_A)
        if len(d) < 3:
            raise InputError(f"registration failed: fewer than 3 atoms pair within {cutoff_A:.3g} Å "
                             "after the best superposition; the models may not show the same particle")
        # trim gross outliers among the pairs (robust to a few per cent of wrong pairs)
        thr = max(3.0 * 1.4826 * float(np.median(d)), 0.1 * cutoff_A)
        keep = d <= thr
        if keep.sum() < 3:
            keep[:] = True
        key = (ia[keep].tobytes(), ib[keep].tobytes())
        if key == prev:  # same pairs as the fit in use: (r, t) and these pairs are final
            converged = True
            break
        prev = key
        r, t = kabsch(xm[ia[keep]], xf[ib[keep]])
    if not converged:
        ia, ib, d = pair_points(xm @ r.T + t, xf, cutoff_A)
    rmsd = float(np.sqrt(np.mean(d ** 2))) if len(d) else float("nan")
    return Registration(r, t, rmsd, int(len(d)), len(xm), len(xf), n_iter, len(rots))
