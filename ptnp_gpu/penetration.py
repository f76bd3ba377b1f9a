"""Penetration depth: the paper's Eq. 1 fit of a statistic against radial depth.

Atoms are ordered by radial depth ``R_NP − R`` and every 5 consecutive atoms
are averaged. The block means are fitted with the continuous piecewise
function

    f(x) = c + m (x − δ)   for x < δ   (the surface layer)
    f(x) = c               for x ≥ δ   (the core)

by bounded least squares. A global profile scan over a δ grid (for each δ
the model is linear in m and c, solved in closed form from prefix sums for all
δ at once) gives the start; the minimum reached from it is then found exactly
in closed form (:func:`_exact_fit`: the sum of squares is piecewise smooth in δ
and its local minima can all be listed), and the standard errors come from
the analytic Jacobian there as :func:`scipy.optimize.curve_fit` computes them
(``absolute_sigma=False``). Where that is ambiguous or degenerate (two minima
within a grid step, δ at the edge of the depth range, flat data) a bounded
``curve_fit`` from the same start decides, as it always did.
δ is the penetration depth (Å): how far surface effects reach into the particle.
"""
from __future__ import annotations

import warnings

import numpy as np

__all__ = ["eq1", "block_means", "running_mean", "fit_penetration"]


def eq1(depth_A, delta_A, m, c):
    """Eq. 1: ``c + m·(x − δ)`` below δ, ``c`` beyond (x = radial depth, Å)."""
    x = np.asarray(depth_A, float)
    return np.where(x < delta_A, c + m * (x - delta_A), c)


def _sorted_finite(depth_A, values, depth_order=None):
    """Finite (depth, value) pairs in increasing depth order (ties in input order).

    ``depth_order``: ``np.argsort(depth_A, kind="stable")`` when the caller already
    has it (one sort for all the statistics of a particle).
    """
    d = np.asarray(depth_A, float)
    v = np.asarray(values, float)
    ok = np.isfinite(d) & np.isfinite(v)
    if d.ndim != 1 or ok.shape != d.shape:
        order = np.argsort(d[ok], kind="stable")
        return d[ok][order], v[ok][order]
    order = np.argsort(d, kind="stable") if depth_order is None else depth_order
    idx = order[ok[order]]              # the stable sort of the finite subset
    return d[idx], v[idx]


def block_means(depth_A, values, n: int = 5, depth_order=None):
    """Mean depth and value of every ``n`` consecutive atoms in depth order.

    Non-finite values are dropped first; a last incomplete block is merged
    into its predecessor. ``depth_order``: the stable argsort of the depths, if known.

    Returns
    -------
    x, y : (B,) arrays
    """
    d, v = _sorted_finite(depth_A, values, depth_order)
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
    Dense (D × B); :func:`_exact_fit` computes the same scan from prefix sums
    and defers to this one only where grid points tie (flat data), so that the
    tie is broken as it always was.
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


def _cumsum0(a):
    """Prefix sums with a leading 0: ``out[k] = a[:k].sum()``."""
    out = np.empty(len(a) + 1)
    out[0] = 0.0
    np.cumsum(a, out=out[1:])
    return out


def _profile(t, kb, n, sums, lo, hi):
    """Eq. 1 with δ fixed at ``t``: (m, c) by linear least squares, for many δ at once.

    With δ fixed the model is linear in (c, m) with regressor
    ``h = min(x − δ, 0)``; c is clamped to its bounds and m refitted. All sums
    come from the prefix sums ``sums = (S1, S2, Sv, Suv, Svv)`` of the centred
    points ``(u, v)`` (``kb``: points below each δ), so each δ costs O(1).

    Returns
    -------
    m, c, sse, sh : arrays (sse inf where not finite; ``sh = Σ h``)
    """
    S1, S2, Sv, Suv, Svv = sums
    kf = kb.astype(float)
    sh = S1[kb] - kf * t
    shh = S2[kb] - 2.0 * t * S1[kb] + kf * t * t
    shy = Suv[kb] - t * Sv[kb]
    sy = Sv[n]
    with np.errstate(all="ignore"):
        det = n * shh - sh * sh
        big = np.abs(det) > 1e-12
        c = np.clip(np.where(big, (shh * sy - sh * shy) / np.where(big, det, 1.0), sy / n), lo, hi)
        m = np.where(shh > 1e-12, (shy - c * sh) / np.where(shh > 1e-12, shh, 1.0), 0.0)
        sse = Svv[n] - 2.0 * c * sy - 2.0 * m * shy + n * c * c + 2.0 * c * m * sh + m * m * shh
    return m, c, np.where(np.isfinite(sse), sse, np.inf), sh


def _exact_fit(x, y, lo_c, hi_c, n_grid: int = 256):
    """The Eq. 1 least-squares minimum reached from the best δ of a grid scan, in closed form.

    ``x`` must be sorted. First the global profile scan: for every δ on a grid
    of ``n_grid`` over the depth range, (m, c) in closed form
    (:func:`_profile`); the best grid δ is the start. The sum of squares
    profiled over (m, c), P(δ), is piecewise smooth, and its local minima are
    of two kinds, each found in O(1) from the prefix sums:

    * inside a segment ``x[k−1] < δ ≤ x[k]``: Eq. 1 is a free line ``a + m x``
      through the first k points and the constant c (clamped to its bounds)
      through the rest, with ``δ = (c − a)/m`` — a minimum where that δ falls
      inside the segment;
    * on a point's depth, δ = x_j, where the slope of P jumps: a minimum where
      P falls towards x_j from both sides (``dP/dδ = 2 m Σ_{x<δ} residuals``).

    The minimum sought is the first one downhill from the start, which lies
    before the next grid δ (P there is no lower than at the start), so only the
    segments and points in between are examined. It is recomputed directly
    from the points for full precision. Where that is ambiguous (more than one
    minimum there: which one an iterative optimiser reaches depends on its
    steps) or the start is a minimum itself, only the start is returned.

    Returns
    -------
    p : (delta, m, c) floats, or None
    start : (delta, m, c) floats, the best grid point, or None where grid points tie
    """
    n = len(x)
    xs, ys = 0.5 * (float(x[0]) + float(x[-1])), float(y.mean())
    u, v = x - xs, y - ys                      # centred: smaller cancellation in the sums
    lo, hi = lo_c - ys, hi_c - ys
    span = float(u[-1] - u[0])
    sums = tuple(_cumsum0(a) for a in (u, u * u, v, u * v, v * v))
    S1, S2, Sv, Suv, Svv = sums
    # global profile scan over a δ grid
    deltas = np.linspace(x[0], x[-1], n_grid)
    mg, cg, sse_g, _ = _profile(deltas - xs, np.searchsorted(x, deltas, "left"), n, sums, lo, hi)
    i0 = int(np.argmin(sse_g))
    if np.count_nonzero(sse_g <= sse_g[i0] + 1e-10 * Svv[n] + n * (1e-13 * ys) ** 2) > 1:
        return None, None                       # no unique best δ (flat data): see _profile_start
    d0 = float(deltas[i0])
    start = (d0, float(mg[i0]), float(cg[i0]) + ys)
    # which way P falls at the start (one-sided slopes: a grid δ may sit on a point's depth)
    kl0, kr0 = int(np.searchsorted(x, d0, "left")), int(np.searchsorted(x, d0, "right"))
    m0, c0, _, sh0 = _profile(np.array([d0 - xs]), np.array([kl0]), n, sums, lo, hi)
    m0, c0, sh0 = float(m0[0]), float(c0[0]), float(sh0[0])
    right = m0 * (Sv[kr0] - c0 * kr0 - m0 * sh0)
    left = m0 * (Sv[kl0] - c0 * kl0 - m0 * sh0)
    if right < 0 and i0 < n_grid - 1:
        b_lo, b_hi = d0, float(deltas[i0 + 1])
    elif left > 0 and i0 > 0:
        b_lo, b_hi = float(deltas[i0 - 1]), d0
    else:                                       # the start is a minimum already (or flat)
        return None, start
    # only the segments and points between b_lo and b_hi can hold it
    jl, jh = int(np.searchsorted(x, b_lo, "right")), int(np.searchsorted(x, b_hi, "left"))
    with np.errstate(all="ignore"):
        # minima inside segments x[k−1] < δ ≤ x[k]
        k = np.arange(max(jl, 2), min(jh, n - 1) + 1)
        kf = k.astype(float)
        mx, mv = S1[k] / kf, Sv[k] / kf
        vxx = S2[k] - S1[k] * mx
        m = (Suv[k] - S1[k] * mv) / vxx
        rest = n - kf
        c = np.clip((Sv[n] - Sv[k]) / rest, lo, hi)
        d = (c - (mv - m * mx)) / m + xs
        seg = ((vxx > 1e-12 * kf * span * span) & (d > x[k - 1]) & (d <= x[k])
               & (d > b_lo) & (d < b_hi))
    # minima on points' depths x_j, b_lo < x_j < b_hi
    j = np.arange(jl, jh)
    kl, kr = np.searchsorted(x, x[j], "left"), np.searchsorted(x, x[j], "right")
    mk, ck, sse_k, sh = _profile(u[j], kl, n, sums, lo, hi)
    kink = ((mk * (Sv[kl] - ck * kl - mk * sh) <= 0) & (mk * (Sv[kr] - ck * kr - mk * sh) >= 0)
            & np.isfinite(sse_k))
    i_s, i_k = k[seg], j[kink]
    if len(i_s) + len(np.unique(x[i_k])) != 1:
        return None, start
    if len(i_s):
        kk = int(i_s[0])
        uu, vv = u[:kk], v[:kk]
        dx = uu - uu.mean()
        m_ = float(dx @ vv) / float(dx @ dx)
        a_ = float(vv.mean()) - m_ * float(uu.mean())
        cu = float(v[kk:].mean())
        c_ = min(max(cu, lo), hi)
        d_ = (c_ - a_) / m_ + xs
    else:
        d_ = float(x[i_k[0]])
        h = np.minimum(x - d_, 0.0)
        sh_, shh_, shy_, sy = float(h.sum()), float(h @ h), float(h @ v), float(v.sum())
        det_ = n * shh_ - sh_ * sh_
        cu = (shh_ * sy - sh_ * shy_) / det_ if abs(det_) > 1e-12 else sy / n
        c_ = min(max(cu, lo), hi)
        m_ = (shy_ - c_ * sh_) / shh_ if shh_ > 1e-12 else 0.0
    c_out = lo_c if cu <= lo else hi_c if cu >= hi else c_ + ys    # a clamped c is the bound exactly
    return (float(d_), float(m_), float(c_out)), start


def _covariance(x, y, delta, m, c):
    """Parameter covariance as :func:`scipy.optimize.curve_fit` forms it (absolute_sigma=False).

    Moore–Penrose inverse of ``JᵀJ`` from the SVD of the Jacobian (analytic
    here: ∂f/∂δ = −m, ∂f/∂m = x − δ below δ, 0 beyond; ∂f/∂c = 1), scaled by
    ``SSR/(B − 3)``.

    Returns
    -------
    cov : (3, 3) array (inf where indeterminate), sse : float
    """
    below = x < delta
    r = y - np.where(below, c + m * (x - delta), c)
    sse = float(r @ r)
    J = np.empty((len(x), 3))
    J[:, 0] = np.where(below, -m, 0.0)
    J[:, 1] = np.where(below, x - delta, 0.0)
    J[:, 2] = 1.0
    _, s, VT = np.linalg.svd(J, full_matrices=False)
    keep = s > np.finfo(float).eps * max(J.shape) * s[0]
    s, VT = s[keep], VT[keep]
    cov = (VT.T / s ** 2) @ VT
    if np.isnan(cov).any():
        return np.full((3, 3), np.inf), sse
    return cov * (sse / (len(x) - 3)), sse


def _curve_fit(x, y, lo_c, hi_c, start):
    """Fallback: bounded :func:`scipy.optimize.curve_fit` from ``start`` (δ, m, c).

    Returns
    -------
    (p, cov, sse) or the error message.
    """
    from scipy.optimize import curve_fit
    bounds = ([float(x.min()), -np.inf, lo_c], [float(x.max()), np.inf, hi_c])
    d0, m0, c0 = start
    if np.isfinite(hi_c - lo_c):          # strictly inside finite bounds
        c0 = float(np.clip(c0, lo_c + 1e-3 * (hi_c - lo_c), hi_c - 1e-3 * (hi_c - lo_c)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, cov = curve_fit(eq1, x, y, p0=[d0, m0, c0], bounds=bounds, maxfev=5000)
    except (RuntimeError, ValueError) as exc:
        return f"fit did not converge ({exc})"
    return p, cov, float(np.sum((eq1(x, *p) - y) ** 2))


def fit_penetration(depth_A, values, *, c_bounds=None, block: int = 5, name: str = "",
                    depth_order=None) -> dict:
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
    depth_order : (N,) int array, optional
        ``np.argsort(depth_A, kind="stable")``: pass it when fitting several
        statistics of one particle, so the depths are sorted once.

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
    out = {"statistic": name, "delta_A": np.nan, "delta_err_A": np.nan, "m": np.nan, "m_err": np.nan,
           "c": np.nan, "c_err": np.nan, "n_points": 0, "rmse": np.nan, "ok": False, "message": ""}
    x, y = block_means(depth_A, values, block, depth_order)
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
    p, start = _exact_fit(x, y, lo_c, hi_c)
    if (p is not None and np.all(np.isfinite(p)) and p[1] != 0 and xmin + 1e-6 < p[0] < xmax - 1e-6
            and np.ptp(x[x < p[0]]) > 0):        # a line needs two depths below δ
        cov, sse = _covariance(x, y, *p)
    else:                                 # ambiguous, degenerate or at an edge: the iterative fit decides
        res = _curve_fit(x, y, lo_c, hi_c, start or _profile_start(x, y, lo_c, hi_c))
        if isinstance(res, str):
            out["message"] = res
            return out
        p, cov, sse = res
    err = np.sqrt(np.clip(np.diag(cov), 0, np.inf)) if np.all(np.isfinite(cov)) else np.full(3, np.nan)
    out.update(delta_A=float(p[0]), delta_err_A=float(err[0]), m=float(p[1]), m_err=float(err[1]),
               c=float(p[2]), c_err=float(err[2]), rmse=float(np.sqrt(sse / len(x))), ok=True, message="")
    if p[0] <= xmin + 1e-6 or p[0] >= xmax - 1e-6:
        out["message"] = "δ at the edge of the depth range: no clear surface layer"
    return out
