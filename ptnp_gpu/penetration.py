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

import numba as nb
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


@nb.njit(cache=True, inline="always")
def _clip(v, lo, hi):
    """``np.clip`` of a scalar (NaN stays NaN)."""
    return lo if v < lo else hi if v > hi else v


@nb.njit(cache=True, error_model="numpy")
def _profile_at(t, kb, n, S1, S2, Sv, Suv, Svv, lo, hi):
    """Eq. 1 with δ fixed at ``t`` (centred): (m, c, sse, sh) by linear least squares.

    With δ fixed the model is linear in (c, m) with regressor ``h = min(x − δ, 0)``; c is
    clamped to its bounds and m refitted. All sums come from the prefix sums of the centred
    points ``(u, v)`` (``kb``: points below δ), so each δ costs O(1); sse is inf where not
    finite; ``sh = Σ h``."""
    kf = float(kb)
    sh = S1[kb] - kf * t
    shh = S2[kb] - 2.0 * t * S1[kb] + kf * t * t
    shy = Suv[kb] - t * Sv[kb]
    sy = Sv[n]
    det = n * shh - sh * sh
    c = _clip((shh * sy - sh * shy) / det if abs(det) > 1e-12 else sy / n, lo, hi)
    m = (shy - c * sh) / shh if shh > 1e-12 else 0.0
    sse = Svv[n] - 2.0 * c * sy - 2.0 * m * shy + n * c * c + 2.0 * c * m * sh + m * m * shh
    return m, c, (sse if np.isfinite(sse) else np.inf), sh


@nb.njit(cache=True, error_model="numpy")
def _exact_fit_core(x, u, v, deltas, xs, ys, lo, hi):
    """The body of :func:`_exact_fit` on centred points ``(u, v) = (x − xs, y − ys)`` and the
    grid ``deltas``. Returns (status, p (3,), start (3,)): status 0 no unique best grid δ,
    1 only the start, 2 both (c still centred in both)."""
    n = len(x)
    n_grid = len(deltas)
    p = np.full(3, np.nan)
    start = np.full(3, np.nan)
    S1 = np.zeros(n + 1)
    S2 = np.zeros(n + 1)
    Sv = np.zeros(n + 1)
    Suv = np.zeros(n + 1)
    Svv = np.zeros(n + 1)
    for i in range(n):                               # prefix sums with a leading 0
        S1[i + 1] = S1[i] + u[i]
        S2[i + 1] = S2[i] + u[i] * u[i]
        Sv[i + 1] = Sv[i] + v[i]
        Suv[i + 1] = Suv[i] + u[i] * v[i]
        Svv[i + 1] = Svv[i] + v[i] * v[i]
    span = u[n - 1] - u[0]
    # global profile scan over the δ grid
    mg = np.empty(n_grid)
    cg = np.empty(n_grid)
    sg = np.empty(n_grid)
    kb = np.searchsorted(x, deltas)
    for g in range(n_grid):
        mg[g], cg[g], sg[g], _ = _profile_at(deltas[g] - xs, kb[g], n, S1, S2, Sv, Suv, Svv, lo, hi)
    i0 = int(np.argmin(sg))
    tol = sg[i0] + 1e-10 * Svv[n] + n * (1e-13 * ys) ** 2
    ties = 0
    for g in range(n_grid):
        if sg[g] <= tol:
            ties += 1
    if ties > 1:
        return 0, p, start                          # no unique best δ (flat data)
    d0 = deltas[i0]
    start[0], start[1], start[2] = d0, mg[i0], cg[i0]
    # which way the profile falls at the start (one-sided slopes: a grid δ may sit on a point)
    kl0 = np.searchsorted(x, d0)
    kr0 = np.searchsorted(x, d0, side="right")
    m0, c0, _, sh0 = _profile_at(d0 - xs, kl0, n, S1, S2, Sv, Suv, Svv, lo, hi)
    right = m0 * (Sv[kr0] - c0 * kr0 - m0 * sh0)
    left = m0 * (Sv[kl0] - c0 * kl0 - m0 * sh0)
    if right < 0 and i0 < n_grid - 1:
        b_lo, b_hi = d0, deltas[i0 + 1]
    elif left > 0 and i0 > 0:
        b_lo, b_hi = deltas[i0 - 1], d0
    else:
        return 1, p, start                          # the start is a minimum already (or flat)
    jl = np.searchsorted(x, b_lo, side="right")
    jh = np.searchsorted(x, b_hi)
    # minima inside segments x[k−1] < δ ≤ x[k]
    n_seg = 0
    k_seg = -1
    for k in range(max(jl, 2), min(jh, n - 1) + 1):
        kf = float(k)
        mx = S1[k] / kf
        mv = Sv[k] / kf
        vxx = S2[k] - S1[k] * mx
        m = (Suv[k] - S1[k] * mv) / vxx
        c = _clip((Sv[n] - Sv[k]) / (n - kf), lo, hi)
        d = (c - (mv - m * mx)) / m + xs
        if vxx > 1e-12 * kf * span * span and x[k - 1] < d <= x[k] and b_lo < d < b_hi:
            n_seg += 1
            if k_seg < 0:
                k_seg = k
    # minima on points' depths x_j, b_lo < x_j < b_hi (distinct depths counted once)
    n_kink = 0
    j_kink = -1
    last = np.nan
    for j in range(jl, jh):
        kl = np.searchsorted(x, x[j])
        kr = np.searchsorted(x, x[j], side="right")
        mk, ck, sk, sh = _profile_at(u[j], kl, n, S1, S2, Sv, Suv, Svv, lo, hi)
        if (mk * (Sv[kl] - ck * kl - mk * sh) <= 0 and mk * (Sv[kr] - ck * kr - mk * sh) >= 0
                and np.isfinite(sk)):
            if j_kink < 0:
                j_kink = j
            if not x[j] == last:
                n_kink += 1
                last = x[j]
    if n_seg + n_kink != 1:
        return 1, p, start
    if n_seg:
        kk = k_seg
        mu = 0.0
        mvv = 0.0
        for i in range(kk):
            mu += u[i]
            mvv += v[i]
        mu /= kk
        mvv /= kk
        sxy = 0.0
        sxx = 0.0
        for i in range(kk):
            dx = u[i] - mu
            sxy += dx * v[i]
            sxx += dx * dx
        m_ = sxy / sxx
        a_ = mvv - m_ * mu
        cu = 0.0
        for i in range(kk, n):
            cu += v[i]
        cu /= n - kk
        c_ = _clip(cu, lo, hi)
        d_ = (c_ - a_) / m_ + xs
    else:
        d_ = x[j_kink]
        sh_ = 0.0
        shh_ = 0.0
        shy_ = 0.0
        sy = 0.0
        for i in range(n):
            h = min(x[i] - d_, 0.0)
            sh_ += h
            shh_ += h * h
            shy_ += h * v[i]
            sy += v[i]
        det_ = n * shh_ - sh_ * sh_
        cu = (shh_ * sy - sh_ * shy_) / det_ if abs(det_) > 1e-12 else sy / n
        c_ = _clip(cu, lo, hi)
        m_ = (shy_ - c_ * sh_) / shh_ if shh_ > 1e-12 else 0.0
    p[0], p[1] = d_, m_
    p[2] = -np.inf if cu <= lo else np.inf if cu >= hi else c_     # ±inf: c clamped to a bound
    return 2, p, start


def _exact_fit(x, y, lo_c, hi_c, n_grid: int = 256):
    """The Eq. 1 least-squares minimum reached from the best δ of a grid scan, in closed form.

    ``x`` must be sorted. First the global profile scan: for every δ on a grid
    of ``n_grid`` over the depth range, (m, c) in closed form
    (:func:`_profile_at`); the best grid δ is the start. The sum of squares
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
    steps) or the start is a minimum itself, only the start is returned. The
    scan and the search run compiled (:func:`_exact_fit_core`).

    Returns
    -------
    p : (delta, m, c) floats, or None
    start : (delta, m, c) floats, the best grid point, or None where grid points tie
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xs, ys = 0.5 * (float(x[0]) + float(x[-1])), float(y.mean())
    status, p, start = _exact_fit_core(x, x - xs, y - ys, np.linspace(x[0], x[-1], n_grid), xs, ys,
                                       lo_c - ys, hi_c - ys)
    if status == 0:
        return None, None
    st = (float(start[0]), float(start[1]), float(start[2]) + ys)
    if status == 1:
        return None, st
    c = lo_c if p[2] == -np.inf else hi_c if p[2] == np.inf else float(p[2]) + ys  # a clamped c: the bound
    return (float(p[0]), float(p[1]), float(c)), st


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
