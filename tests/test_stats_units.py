"""Unit tests of the statistics building blocks against hand-made answers."""
from __future__ import annotations

import numpy as np
import pytest

from ptnp_gpu.coordination import (coordination_numbers, generalized_cn, neighbour_pairs,
                                   nn_bond_lengths_A, particle_diameter_A)
from ptnp_gpu.displacement import fit_displacements, gather_windows, window_offsets, window_pearson
from ptnp_gpu.lattice import fit_lattice, ideal_sites_A
from ptnp_gpu.penetration import block_means, eq1, fit_penetration
from ptnp_gpu.strain import radial_displacement_A, radial_strain, strain_tensor
from ptnp_gpu.synth import fcc_particle, random_rotation


def _bcc_ball(a, radius):
    r = np.arange(-6, 7)
    g = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3).astype(float)
    g = np.concatenate([g, g + 0.5]) * a
    return g[np.linalg.norm(g, axis=1) <= radius]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lattice_fit_any_orientation_fcc(seed):
    rng = np.random.default_rng(seed)
    a = 3.924 * 1.013
    rot = random_rotation(rng)
    xyz = fcc_particle(400, a) @ rot.T + 25.0
    xyz = xyz + rng.normal(scale=0.04, size=xyz.shape)
    fit = fit_lattice(xyz, "Pt")
    assert fit.ok and fit.lattice == "fcc"
    assert np.allclose(fit.params_A, a, rtol=2e-3)
    assert np.sort(np.abs(fit.rotation.T @ rot), axis=1)[:, -1] == pytest.approx(np.ones(3), abs=5e-3)
    assert fit.inlier.mean() > 0.97
    assert fit.cn_cutoff_A == pytest.approx(fit.mean_param_A / 2 * (1 + 1 / np.sqrt(2)))
    ideal = ideal_sites_A(fit, a)
    assert np.sqrt(np.mean(np.sum((ideal - xyz) ** 2, 1))) < 0.1


def test_lattice_fit_bcc_and_degenerate_inputs():
    rng = np.random.default_rng(4)
    xyz = _bcc_ball(2.856, 10.0) @ random_rotation(rng).T
    fit = fit_lattice(xyz, "Fe")
    assert fit.ok and fit.lattice == "bcc"
    assert np.allclose(fit.params_A, 2.856, rtol=1e-6)
    assert coordination_numbers(xyz, fit.cn_cutoff_A).max() == 8
    # hcp elements are fitted as fcc (no crash); too few atoms give a flagged fallback
    assert fit_lattice(fcc_particle(100, 3.55), "Co").ok
    # an amorphous cluster: no dominant lattice → flagged, parameters from the median bond
    pts = rng.uniform(-12, 12, size=(6000, 3))
    keep = [0]
    from scipy.spatial import cKDTree
    for i in range(1, len(pts)):            # random sequential packing (test data only)
        if len(keep) > 600:
            break
        if np.min(np.linalg.norm(pts[keep] - pts[i], axis=1)) > 2.5:
            keep.append(i)
    glass = pts[keep]
    amo = fit_lattice(glass, "Pt")
    nn = np.median(cKDTree(glass).query(glass, k=2)[0][:, 1])
    assert not amo.ok and "nearest-neighbour" in amo.message and amo.inlier.mean() < 0.25
    assert amo.mean_param_A == pytest.approx(nn * np.sqrt(2))
    assert np.all(np.isnan(ideal_sites_A(amo, 3.924)))
    tiny = fit_lattice(np.zeros((2, 3)) + [[0, 0, 0], [2.7, 0, 0]], "Pt")
    assert not tiny.ok and "too few" in tiny.message and tiny.mean_param_A == pytest.approx(3.924)


@pytest.mark.parametrize("lattice", ["fcc", "bcc"])
def test_lattice_bond_matching_equals_the_array_formulation(lattice):
    """The compiled bond-direction matching (largest |cos| with an ideal direction, which one,
    how many within the tolerance, per candidate rotation) equals the plain array computation:
    bonds rotated into the cubic frame, |cos| over the half set, first row reaching the best,
    the opposite direction for a negative cosine."""
    from ptnp_gpu.lattice import _n_matched, _score, lattice_geometry
    rng = np.random.default_rng(7)
    dirs = lattice_geometry(lattice)["bond_dirs"]
    h = len(dirs) // 2
    rots = np.stack([random_rotation(rng) for _ in range(5)])
    bonds = rng.normal(size=(3000, 3))
    bonds /= np.linalg.norm(bonds, axis=1, keepdims=True)
    bonds[:40] = (rots[0] @ dirs[rng.integers(0, len(dirs), 40)].T).T     # exact matches, both signs
    tol = np.cos(np.radians(12.0))
    counts = []
    for rot in rots:
        c = dirs[:h] @ (rot.T @ bonds.T)                                   # (h, N)
        a = np.abs(c)
        best = a.max(axis=0)
        idx = np.argmax(a == best, axis=0)
        idx = idx + h * (np.take_along_axis(c, idx[None], 0)[0] < 0)
        got_best, got_idx, got_n = _score(rot, bonds, dirs, tol)
        np.testing.assert_allclose(got_best, best, rtol=0, atol=1e-12)
        sure = np.sort(a, axis=0)[-2] < best - 1e-9                        # no near-tie between rows
        np.testing.assert_array_equal(got_idx[sure], idx[sure])
        assert got_n == int(np.count_nonzero(best > tol))
        counts.append(got_n)
    np.testing.assert_array_equal(_n_matched(rots, bonds, dirs, tol), counts)
    assert counts[0] >= 40 and np.array_equal(_score(rots[0], bonds, dirs, tol)[1][:40] % h,
                                               np.argmax(np.abs(dirs[:h] @ (rots[0].T @ bonds[:40].T)), 0))


def test_cn_gcn_bonds_on_a_small_cluster():
    # a square of 4 atoms (side 2.7 Å) plus a distant atom
    xyz = np.array([[0, 0, 0], [2.7, 0, 0], [0, 2.7, 0], [2.7, 2.7, 0], [20, 0, 0]], float)
    pairs = neighbour_pairs(xyz, 3.0)
    cn = coordination_numbers(xyz, 3.0, pairs)
    assert cn.tolist() == [2, 2, 2, 2, 0]
    assert generalized_cn(cn, pairs).tolist() == [2.0, 2.0, 2.0, 2.0, 0.0]          # Σ 2/2
    assert generalized_cn(cn, pairs, 12).tolist() == pytest.approx([4 / 12] * 4 + [0])
    # a chain: CN 1, 2, 1 → paper GCN of the middle = (1 + 1)/1, ends = 2/2
    chain = np.array([[0, 0, 0], [2.7, 0, 0], [5.4, 0, 0]], float)
    pc = neighbour_pairs(chain, 3.0)
    assert generalized_cn(coordination_numbers(chain, 3.0, pc), pc).tolist() == [1.0, 2.0, 1.0]
    assert nn_bond_lengths_A(xyz)[:4] == pytest.approx([2.7] * 4)
    assert particle_diameter_A(xyz) == pytest.approx(np.hypot(20.0, 2.7))


def test_fcc_bulk_cn_and_surface():
    xyz = fcc_particle(2000, 3.924)
    cn = coordination_numbers(xyz, 3.924 / 2 * (1 + 1 / np.sqrt(2)))
    assert cn.max() == 12 and np.mean(cn == 12) > 0.5 and cn.min() >= 3


def test_radial_strain_of_uniform_expansion_and_tensor():
    ideal = fcc_particle(600, 3.924)
    xyz = 1.02 * ideal
    u, ur, _ = radial_displacement_A(xyz, ideal, np.zeros(3))
    r_ref = np.linalg.norm(ideal, axis=1)
    eps = radial_strain(r_ref, ur, ideal)
    assert np.nanmedian(eps) == pytest.approx(0.02, abs=1e-9)
    e = strain_tensor(ideal, u)
    assert np.allclose(e[np.isfinite(e[:, 0, 0])], 0.02 * np.eye(3), atol=1e-9)
    # invalid atoms give NaN, not 0
    valid = np.ones(len(ideal), bool)
    valid[:5] = False
    assert np.all(np.isnan(radial_strain(r_ref, ur, ideal, valid=valid)[:5]))


def test_eq1_fit_recovers_parameters_and_reports_failure():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 12, 800)
    y = eq1(x, 4.5, 1.4, 11.6) + rng.normal(scale=0.8, size=x.size)
    f = fit_penetration(x, y, c_bounds=(10, 12), name="cn")
    assert f["ok"] and f["statistic"] == "cn"
    assert f["delta_A"] == pytest.approx(4.5, abs=0.5)
    assert f["c"] == pytest.approx(11.6, abs=0.2) and 0 < f["delta_err_A"] < 0.5
    # a decreasing statistic (U_iso) with free c
    f2 = fit_penetration(x, eq1(x, 3.0, -0.05, 0.3))
    assert f2["delta_A"] == pytest.approx(3.0, abs=0.05) and f2["m"] == pytest.approx(-0.05, rel=0.02)
    bad = fit_penetration([1.0, 2.0, 3.0], [1.0, 2.0, np.nan])
    assert not bad["ok"] and np.isnan(bad["delta_A"]) and "too few" in bad["message"]
    bx, by = block_means(np.arange(12.0), np.arange(12.0), 5)
    assert bx.tolist() == [2.0, 8.0] and by.tolist() == [2.0, 8.0]   # last partial block merged


def _gaussian_map(shape, vs, centres_xyz, cov, amp=1.0):
    zz, yy, xx = np.indices(shape)
    pts = np.stack([xx, yy, zz], -1) * vs
    out = np.zeros(shape)
    inv = np.linalg.inv(cov)
    for c in centres_xyz:           # two test blobs, not a hot path
        d = pts - c
        out += amp * np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, inv, d))
    return out


def test_window_fits_recover_anisotropic_gaussian():
    vs = 0.3
    rng = np.random.default_rng(5)
    rot = random_rotation(rng)
    cov = rot @ np.diag([0.45, 0.3, 0.18]) @ rot.T
    centres = np.array([[4.0, 4.1, 3.95], [9.07, 8.9, 9.1]])
    data = _gaussian_map((45, 45, 45), vs, centres, cov)
    off = window_offsets(1.05, vs)
    v, d, inside, _ = gather_windows(data, centres / vs, off, vs)
    res = fit_displacements(v, d, inside, 1.05)
    assert not res["u_aniso_failed"].any() and not res["u_iso_failed"].any()
    assert np.allclose(res["u_A2"], cov[None], atol=1e-6)
    assert np.allclose(res["u_eig_A2"], [0.45, 0.3, 0.18], atol=1e-6)
    assert np.allclose(res["doi"], 0.18 / 0.45, atol=1e-6)
    assert np.allclose(np.abs(res["u_dir"] @ rot[:, 0]), 1.0, atol=1e-6)
    assert np.allclose(res["u_aniso_r2"], 1.0) and np.all(res["u_iso_r2"] < 0.95)   # iso misfits
    # isotropic blob: U_iso equals its variance, DOI 1
    data = _gaussian_map((30, 30, 30), vs, centres[:1], 0.25 * np.eye(3))
    v, d, inside, _ = gather_windows(data, centres[:1] / vs, off, vs)
    res = fit_displacements(v, d, inside, 1.05)
    assert res["u_iso_A2"][0] == pytest.approx(0.25, rel=1e-6) and res["doi"][0] == pytest.approx(1.0)


def test_window_fit_failures_are_flagged_not_zero():
    vs = 0.3
    data = np.full((20, 20, 20), -1.0)          # no positive voxel: nothing to fit
    data[10, 10, 10] = 1.0
    grow = _gaussian_map((20, 20, 20), vs, [[3.0, 3.0, 3.0]], 0.2 * np.eye(3))
    data2 = 1.0 - grow                           # a hole: β1 > 0
    off = window_offsets(1.05, vs)
    c = np.array([[3.0, 3.0, 3.0]]) / vs
    for vol in (data, data2):
        v, d, inside, _ = gather_windows(vol, c, off, vs)
        res = fit_displacements(v, d, inside, 1.05)
        assert res["u_iso_failed"][0] and res["u_aniso_failed"][0]
        assert np.isnan(res["u_iso_A2"][0]) and np.isnan(res["doi"][0]) and np.all(np.isnan(res["u_A2"][0]))


def test_window_gather_at_box_edge_and_pearson():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(10, 12, 14))
    off = window_offsets(1.0, 0.5)
    c = np.array([[0.0, 0.0, 0.0], [7.2, 5.1, 4.4]])
    v, d, inside, (b,) = gather_windows(a, c, off, 0.5, extra=[2 * a + 3])
    assert inside[0].sum() < inside[1].sum() == len(off)     # corner window is clipped
    iz, iy, ix = 4, 5, 7
    k = np.flatnonzero(np.all(off == [0, 0, 0], axis=1))[0]
    assert v[1, k] == a[iz, iy, ix]
    assert np.allclose(d[1, k], (np.array([7, 5, 4]) - c[1]) * 0.5)
    r = window_pearson(v, b, inside)
    assert np.allclose(r, 1.0)
    m = inside & (np.arange(len(off)) % 2 == 0)
    ref = np.corrcoef(v[1][m[1]], np.sin(v[1][m[1]]))[0, 1]
    assert window_pearson(v, np.sin(v), m)[1] == pytest.approx(ref)


def test_bcc_particle_statistics_use_bcc_bulk_values():
    from ptnp_gpu.mapio import DensityMap
    from ptnp_gpu.simulate import render_atoms
    from ptnp_gpu.statistics import compute_statistics
    rng = np.random.default_rng(8)
    x = _bcc_ball(2.856, 9.0) @ random_rotation(rng).T + 15.0
    data = render_atoms(x, (84, 84, 84), 0.358, 0.0, "Fe", u_iso_A2=0.03, backend="numpy")
    s = compute_statistics(DensityMap(np.asarray(data), 0.358), x, "Fe", backend="numpy")
    cn = coordination_numbers(x, 2.856 * (np.sqrt(3) / 2 + 1) / 2)
    assert s.lattice.lattice == "bcc" and np.array_equal(s.columns["cn"], cn) and cn.max() == 8
    assert s.particle["core_ratio"] == pytest.approx(np.mean(cn == 8))
    pairs = neighbour_pairs(x, s.lattice.cn_cutoff_A)
    assert np.allclose(s.columns["gcn_bulk"], generalized_cn(cn, pairs, 8)) and s.columns["gcn_bulk"].max() == 8
    assert s.penetration["cn"]["ok"] and 6.0 <= s.penetration["cn"]["c"] <= 8.0
    assert abs(s.particle["strain_radial_median_pct"]) < 1e-6
