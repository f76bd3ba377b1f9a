"""Penetration depth: the paper's Eq. 1 fit of a statistic against radial depth.

Atoms are ordered by radial depth ``R_NP − R`` and every 5 consecutive atoms
are averaged. The block means are fitted with the continuous piecewise
function

    f(x) = c + m (x − δ)   for x < δ   (the surface layer)
    f(x) = c               for x ≥ δ   (the core)

by bounded non-linear least squares (:func:`scipy.optimize.curve_fit`),
started from the best δ of a global profile scan (for each δ on a grid the
model is linear in m and c, solved in closed form for all δ at once), so the
fit cannot stop in a local minimum. δ is the penetration depth (Å):
how far surface effects reach into the particle.
"""
from __future__ import annotations

import warnings

import numpy as np

__all__ = ["eq1", "block_means", "running_mean", "fit_penetration"]


def eq1(depth_A, delta_A, m, c):
    """Eq. 1: ``c + m·(x − δ)`` below δ, ``c`` beyond (x = radial depth, Å)."""
    x = np.asarray(depth_A, float)
    return np.where(x < delta_A, c + m * (x - delta_A), c)


def _sorted_finite(depth_A, values):
    """Finite (depth, value) pairs in increasing depth order."""
    d = np.asarray(depth_A, float)
    v = np.asarray(values, float)
    ok = np.isfinite(d) & np.isfinite(v)
    order = np.argsort(d[ok], kind="stable")
    return d[ok][order], v[ok][order]


def block_means(depth_A, values, n: int = 5):
    """Mean depth and value of every ``n`` consecutive atoms in depth order.

    Non-finite values are dropped first; a last incomplete block is merged
    into its predecessor.

    Returns
    -------
    x, y : (B,) arrays
    """
    d, v = _sorted_finite(depth_A, values)
    nb = len(d) // n
    if nb == 0:
        return np.zeros(0), np.zeros(0)
    blk = np.minimum(np.arange(len(d)) // n, nb - 1)
    cnt = np.bincount(blk, minlength=nb)
    return np.bincount(blk, d, nb) / cnt, np.bincount(blk, v, nb) / cnt


def running_mean(depth_A, values, n: int = 5):
    """Centred running mean over ``n`` atoms in depth order (for plots).

    Returns
    -------
    x, y : arrays of length ``len(valid) - n + 1``
    """
    d, v = _sorted_finite(depth_A, values)
    if len(d) < n:
        return np.zeros(0), np.zeros(0)
    k = np.ones(n) / n
    return np.convolve(d, k, "valid"), np.convolve(v, k, "valid")


def _profile_start(x, y, lo_c, hi_c, n_grid: int = 256):
    """Global start for the Eq. 1 fit: for every δ on a grid, (m, c) by linear least squares.

    With δ fixed, Eq. 1 is linear in (c, m) with regressor ``h = min(x − δ, 0)``;
    the closed-form solution is evaluated for all grid δ at once (c clamped to
    its bounds, m refitted), and the δ with the smallest squared error wins.
    """
    deltas = np.linspace(x.min(), x.max(), n_grid)
    h = np.minimum(x[None, :] - deltas[:, None], 0.0)          # (D, B)
    n = float(len(x))
    sh, shh = h.sum(1), (h * h).sum(1)
    sy, shy = float(y.sum()), h @ y
    det = n * shh - sh * sh
    safe = np.where(np.abs(det) > 1e-12, det, 1.0)
    c = np.where(np.abs(det) > 1e-12, (shh * sy - sh * shy) / safe, sy / n)
    c = np.clip(c, lo_c, hi_c)
    m = np.where(shh > 1e-12, (shy - c * sh) / np.where(shh > 1e-12, shh, 1.0), 0.0)
    sse = ((y[None, :] - c[:, None] - m[:, None] * h) ** 2).sum(1)
    k = int(np.argmin(sse))
    return float(deltas[k]), float(m[k]), float(c[k])


def fit_penetration(depth_A, values, *, c_bounds=None, block: int = 5, name: str = "") -> dict:
    """Fit Eq. 1 to a per-atom statistic against radial depth.

    Parameters
    ----------
    depth_A : (N,) array
        Radial depth ``R_NP − R`` of each atom (Å).
    values : (N,) array
        The statistic (NaN values are ignored).
    c_bounds : (float, float), optional
        Bounds on the core value c (the paper bounds CN to [10, 12]).
    block : int
        Atoms per averaged point (5 in the paper).
    name : str
        Statistic name, copied into the result.

    Returns
    -------
    dict with ``delta_A, delta_err_A, m, m_err, c, c_err`` (standard errors
    from the fit covariance), ``n_points``, ``rmse``, ``ok`` and ``message``
    (why a fit failed; values are then NaN). Never raises for bad data.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.linspace(0, 12, 400)
    >>> r = fit_penetration(x, eq1(x, 4.0, 1.5, 11.5), c_bounds=(10, 12))
    >>> round(r["delta_A"], 2), r["ok"]
    (4.0, True)
    """
    from scipy.optimize import curve_fit
    out = {"statistic": name, "delta_A": np.nan, "delta_err_A": np.nan, "m": np.nan, "m_err": np.nan,
           "c": np.nan, "c_err": np.nan, "n_points": 0, "rmse": np.nan, "ok": False, "message": ""}
    x, y = block_means(depth_A, values, block)
    out["n_points"] = int(len(x))
    if len(x) < 4:
        out["message"] = f"too few points ({len(x)} blocks of {block} atoms) for a 3-parameter fit"
        return out
    if np.ptp(x) <= 0:
        out["message"] = "all atoms at the same depth"
        return out
    lo_c, hi_c = (-np.inf, np.inf) if c_bounds is None else (float(c_bounds[0]), float(c_bounds[1]))
    if not lo_c < hi_c:
        raise ValueError(f"c_bounds must be (low, high) with low < high, got {c_bounds}")
    xmin, xmax = float(x.min()), float(x.max())
    bounds = ([xmin, -np.inf, lo_c], [xmax, np.inf, hi_c])
    d0, m0, c0 = _profile_start(x, y, lo_c, hi_c)
    if np.isfinite(hi_c - lo_c):          # strictly inside finite bounds
        c0 = float(np.clip(c0, lo_c + 1e-3 * (hi_c - lo_c), hi_c - 1e-3 * (hi_c - lo_c)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, cov = curve_fit(eq1, x, y, p0=[d0, m0, c0], bounds=bounds, maxfev=5000)
        best = (float(np.sum((eq1(x, *p) - y) ** 2)), p, cov)
    except (RuntimeError, ValueError) as exc:
        out["message"] = f"fit did not converge ({exc})"
        best = None
    if best is None:
        out["message"] = out["message"] or "fit failed"
        return out
    sse, p, cov = best
    err = np.sqrt(np.clip(np.diag(cov), 0, np.inf)) if np.all(np.isfinite(cov)) else np.full(3, np.nan)
    out.update(delta_A=float(p[0]), delta_err_A=float(err[0]), m=float(p[1]), m_err=float(err[1]),
               c=float(p[2]), c_err=float(err[2]), rmse=float(np.sqrt(sse / len(x))), ok=True, message="")
    if p[0] <= xmin + 1e-6 or p[0] >= xmax - 1e-6:
        out["message"] = "δ at the edge of the depth range: no clear surface layer"
    return out
