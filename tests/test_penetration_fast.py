"""The closed-form Eq. 1 fit against a direct scipy ``curve_fit`` reference, and its fallbacks."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.optimize import curve_fit

from ptnp_gpu import penetration as pen
from ptnp_gpu.penetration import block_means, eq1, fit_penetration


def _profile(seed, n_atoms, c_bounds=False, noise=0.3):
    """Depths of a ball of atoms and a noisy Eq. 1 statistic (CN-like, with a surface layer)."""
    rng = np.random.default_rng(seed)
    radius = rng.uniform(10, 22)
    depth = radius * (1.0 - rng.uniform(0, 1, n_atoms) ** (1 / 3))
    delta, m = rng.uniform(2.0, 6.0), rng.choice([-1, 1]) * rng.uniform(0.3, 2.0)
    c = {False: rng.normal(0, 5), True: 11.6, "clamp": 12.4}[c_bounds]     # "clamp": c ends on its bound
    values = eq1(depth, delta, m, c) + rng.normal(scale=noise * abs(m), size=n_atoms)
    return depth, values, ((10.0, 12.0) if c_bounds else None)


def _reference(depth, values, c_bounds):
    """Direct bounded curve_fit from the dense grid start, converged tightly.

    Where the minimum sits on a block's depth (a kink of the sum of squares in
    δ) curve_fit stalls next to it with (m, c) not quite optimal, so (m, c) are
    then refitted by linear least squares at curve_fit's δ.

    Returns
    -------
    p, err, sse, (x, y), kink : the parameters, curve_fit's standard errors,
    the squared error of p, the block means, whether δ is on a block's depth
    """
    x, y = block_means(depth, values)
    lo, hi = c_bounds or (-np.inf, np.inf)
    d0, m0, c0 = pen._profile_start(x, y, lo, hi)
    if c_bounds:
        c0 = float(np.clip(c0, lo + 1e-3 * (hi - lo), hi - 1e-3 * (hi - lo)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, cov = curve_fit(eq1, x, y, p0=[d0, m0, c0], bounds=([x.min(), -np.inf, lo], [x.max(), np.inf, hi]),
                           ftol=1e-14, xtol=1e-14, gtol=1e-14, maxfev=20000)
    kink = bool(np.min(np.abs(x - p[0])) < 1e-6)
    if kink:
        h = np.minimum(x - p[0], 0.0)
        A = np.stack([h, np.ones_like(h)], 1)
        m, c = np.linalg.lstsq(A, y, rcond=None)[0]
        if not lo <= c <= hi:
            c = float(np.clip(c, lo, hi))
            m = float(h @ (y - c) / (h @ h))
        p = np.array([p[0], m, c])
    return p, np.sqrt(np.diag(cov)), float(np.sum((eq1(x, *p) - y) ** 2)), (x, y), kink


@pytest.mark.parametrize("seed,n_atoms,bounded", [(0, 800, False), (1, 2000, True), (2, 6000, False),
                                                  (3, 6000, True), (4, 20000, False), (5, 3000, False),
                                                  (6, 1200, True), (7, 12000, False), (8, 4000, "clamp"),
                                                  (9, 20000, "clamp")])
def test_closed_form_matches_curve_fit_reference(seed, n_atoms, bounded):
    depth, values, cb = _profile(seed, n_atoms, bounded)
    f = fit_penetration(depth, values, c_bounds=cb, name="s")
    p, err, sse_ref, (x, y), kink = _reference(depth, values, cb)
    assert f["ok"] and f["message"] == ""
    got = np.array([f["delta_A"], f["m"], f["c"]])
    assert got == pytest.approx(p, rel=1e-5)
    # on a kink curve_fit's finite-difference ∂f/∂δ straddles the block at δ: that block's row differs
    assert np.array([f["delta_err_A"], f["m_err"], f["c_err"]]) == pytest.approx(err, rel=3e-2 if kink else 1e-3)
    sse = float(np.sum((eq1(x, *got) - y) ** 2))
    assert sse <= sse_ref * (1 + 1e-12)                     # the exact minimum is never worse
    assert f["rmse"] == pytest.approx(np.sqrt(sse / len(x)), rel=1e-12)
    if bounded == "clamp":
        assert f["c"] == 12.0                                # a clamped c is the bound, not 12 − 1e-10


def test_closed_form_path_is_taken_and_noise_free_profile_is_exact():
    x = np.linspace(0.0, 12.0, 2000)
    calls = []
    orig = pen._curve_fit
    try:
        pen._curve_fit = lambda *a: calls.append(a) or orig(*a)
        f = fit_penetration(x, eq1(x, 4.321, 1.5, 11.5), c_bounds=(10, 12))
    finally:
        pen._curve_fit = orig
    assert not calls                                         # no iterative fit needed
    assert f["delta_A"] == pytest.approx(4.321, abs=1e-9)
    assert f["m"] == pytest.approx(1.5, rel=1e-9) and f["c"] == pytest.approx(11.5, rel=1e-12)


def test_fast_grid_scan_matches_dense_profile_start():
    for seed in range(6):
        depth, values, cb = _profile(seed, 3000, seed % 2 == 1)
        x, y = block_means(depth, values)
        lo, hi = cb or (-np.inf, np.inf)
        _, start = pen._exact_fit(x, y, lo, hi)
        assert start == pytest.approx(pen._profile_start(x, y, lo, hi), rel=1e-9, abs=1e-12)


def _old_path(depth, values, c_bounds=None):
    """The previous implementation: dense grid start, then curve_fit (the fallback)."""
    x, y = block_means(depth, values)
    lo, hi = c_bounds or (-np.inf, np.inf)
    return pen._curve_fit(x, y, lo, hi, pen._profile_start(x, y, lo, hi))


@pytest.mark.parametrize("case", ["constant", "edge"])
def test_degenerate_profiles_fall_back_to_curve_fit(case):
    rng = np.random.default_rng(3)
    depth = rng.uniform(0, 10, 600)
    values = {"constant": np.full(600, 11.0),                 # every δ fits: the old grid tie-break decides
              "edge": 2.0 + 0.3 * depth + rng.normal(scale=0.01, size=600)}[case]   # no core: δ at the far edge
    f = fit_penetration(depth, values)
    p, cov, sse = _old_path(depth, values)
    assert f["ok"]
    tol = 0.0 if case == "constant" else 1e-9                # same start exactly / to rounding
    assert [f["delta_A"], f["m"], f["c"]] == pytest.approx(list(p), rel=tol, abs=tol)
    if case == "edge":
        assert "edge" in f["message"]


def test_too_few_points_and_nans_unchanged():
    bad = fit_penetration([1.0, 2.0, 3.0], [1.0, 2.0, np.nan])
    assert not bad["ok"] and "too few" in bad["message"]
    same = fit_penetration(np.full(40, 2.0), np.arange(40.0))
    assert not same["ok"] and "same depth" in same["message"]
    with pytest.raises(ValueError):
        fit_penetration(np.arange(40.0), np.arange(40.0), c_bounds=(2, 1))
    depth, values, cb = _profile(9, 3000, True)
    values[::7] = np.nan
    depth = depth.copy()
    depth[::11] = np.nan
    f = fit_penetration(depth, values, c_bounds=cb)
    ok = np.isfinite(depth) & np.isfinite(values)
    g = fit_penetration(depth[ok], values[ok], c_bounds=cb)
    assert f == g and f["n_points"] == ok.sum() // 5


def test_depth_sort_reuse_is_exact():
    rng = np.random.default_rng(5)
    depth = np.round(rng.uniform(0, 8, 3000), 1)              # many ties: order must stay stable
    a, b = rng.normal(size=3000), rng.normal(size=3000)
    b[::5] = np.nan

    def reference(d, v):
        ok = np.isfinite(d) & np.isfinite(v)
        order = np.argsort(d[ok], kind="stable")
        return d[ok][order], v[ok][order]

    for v in (a, b, a):
        got = pen._sorted_finite(depth, v)
        want = reference(depth, v)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    depth[:10] = 9.0                                           # changed in place: the stored order is not reused
    got, want = pen._sorted_finite(depth, a), reference(depth, a)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
