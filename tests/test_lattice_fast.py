"""The compiled helpers of the lattice fit against plain NumPy formulations of the same steps,
and a ground-truth fit of a rotated, jittered fcc particle."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from ptnp_gpu.lattice import (
    _best_rows,
    _bonds,
    _columns,
    _count_matched,
    _first_k,
    _fit_sites,
    _half,
    _index_sites,
    _match_pass,
    _near_pairs,
    _site_residuals,
    fit_lattice,
    lattice_geometry,
)
from ptnp_gpu.synth import fcc_particle, random_rotation


def _cloud(rng, n=600, box=14.0):
    return rng.uniform(0.0, box, size=(n, 3))


def test_near_pairs_equals_numpy_and_knn():
    rng = np.random.default_rng(1)
    xyz = np.vstack([_cloud(rng), [[100.0, 100.0, 100.0]]])        # the last atom has no pair
    tree = cKDTree(xyz)
    p, d2, d = _near_pairs(xyz, 1.6)
    ref_p = tree.query_pairs(1.6, output_type="ndarray")
    np.testing.assert_array_equal(p, ref_p[np.lexsort((ref_p[:, 1], ref_p[:, 0]))])   # cKDTree's pairs, sorted
    v = xyz[p[:, 0]] - xyz[p[:, 1]]
    np.testing.assert_array_equal(d2, (v[:, 0] * v[:, 0] + v[:, 1] * v[:, 1]) + v[:, 2] * v[:, 2])
    ref = np.full(len(xyz), np.inf)                                  # the former np.minimum.at form
    np.minimum.at(ref, p[:, 0], np.sqrt(d2))
    np.minimum.at(ref, p[:, 1], np.sqrt(d2))
    paired = np.isfinite(ref)
    assert paired.sum() > 100 and not paired.all()
    np.testing.assert_array_equal(d[paired], ref[paired])
    np.testing.assert_allclose(d, tree.query(xyz, k=2)[0][:, 1], rtol=1e-12)   # lone atoms: k-nearest


def test_bonds_filter_and_unit_vectors_equal_numpy():
    rng = np.random.default_rng(2)
    xyz = _cloud(rng)
    p, d2, _ = _near_pairs(xyz, 1.8)
    pairs, bonds = _bonds(xyz, 1.3, (p, d2))
    keep = p[d2 <= 1.3 * 1.3]
    np.testing.assert_array_equal(pairs, keep)
    v = xyz[keep[:, 1]] - xyz[keep[:, 0]]
    np.testing.assert_array_equal(bonds, v / np.linalg.norm(v, axis=1, keepdims=True))
    pairs2, bonds2 = _bonds(xyz, 1.3)                                # a fresh search: the same
    np.testing.assert_array_equal(pairs2, pairs)
    np.testing.assert_array_equal(bonds2, bonds)
    empty_pairs, empty_bonds = _bonds(xyz, 1e-6, (p, d2))
    assert empty_pairs.shape == (0, 2) and empty_bonds.shape == (0, 3)


@pytest.mark.parametrize("lattice", ["fcc", "bcc"])
def test_direction_matching_equals_numpy(lattice):
    rng = np.random.default_rng(3)
    dirs = lattice_geometry(lattice)["bond_dirs"]
    h = len(dirs) // 2
    rot = random_rotation(rng)
    bonds = rng.normal(size=(2000, 3))
    bonds /= np.linalg.norm(bonds, axis=1, keepdims=True)
    bonds[:300] = (rot @ dirs[rng.integers(0, len(dirs), 300)].T).T + rng.normal(scale=0.05, size=(300, 3))
    M = np.ascontiguousarray(_half(dirs) @ rot.T)
    bt = _columns(bonds)
    # the same products, elementwise, in the same order: (h, N)
    c = (M[:, 0, None] * bt[0] + M[:, 1, None] * bt[1]) + M[:, 2, None] * bt[2]
    a = np.abs(c)
    best = a.max(axis=0)
    first = np.argmax(a == best, axis=0)
    ref_idx = first + h * (c[first, np.arange(len(bonds))] < 0)
    idx = np.empty(len(bonds), np.int64)
    np.testing.assert_array_equal(_best_rows(M, bt, idx), best)
    np.testing.assert_array_equal(idx, ref_idx)
    tol = np.cos(np.radians(12.0))
    rots = np.stack([rot] + [random_rotation(rng) for _ in range(4)])
    Ms = np.ascontiguousarray(_half(dirs)[None] @ np.swapaxes(rots, 1, 2))
    ref_counts = [int(np.count_nonzero(np.abs((m[:, 0, None] * bt[0] + m[:, 1, None] * bt[1])
                                              + m[:, 2, None] * bt[2]).max(0) > tol)) for m in Ms]
    np.testing.assert_array_equal(_count_matched(Ms, bt, tol), ref_counts)
    # one refinement pass: the matched directions and their Kabsch correlation matrix
    key = np.full(len(bonds), -2, np.int64)
    n_ok, changed, m = _match_pass(M, bt, dirs, tol, key)
    ok = best > tol
    np.testing.assert_array_equal(key, np.where(ok, ref_idx, -1))
    assert changed and n_ok == ok.sum() >= 300
    np.testing.assert_allclose(m, bonds[ok].T @ dirs[ref_idx[ok]], rtol=0, atol=1e-10)
    assert not _match_pass(M, bt, dirs, tol, key)[1]                 # the same matches again


@pytest.mark.parametrize("lattice", ["fcc", "bcc"])
def test_index_sites_equals_numpy(lattice):
    rng = np.random.default_rng(4)
    cells = np.ascontiguousarray(lattice_geometry(lattice)["basis"], dtype=np.float64)
    basis = random_rotation(rng).T * 3.9 + rng.normal(scale=0.05, size=(3, 3))
    origin = rng.normal(size=3)
    xyz = rng.uniform(-20, 20, size=(3000, 3))
    inv = np.linalg.inv(basis)
    got = _index_sites(xyz, origin, inv, cells)
    p = (xyz - origin) @ inv                                          # the former NumPy formulation
    cand = np.stack([np.rint(p - b) + b for b in cells], axis=1)
    ref = cand[np.arange(len(p)), ((cand - p[:, None, :]) ** 2).sum(-1).argmin(1)]
    np.testing.assert_array_equal(got, ref)


def test_site_fit_and_residuals_equal_lstsq():
    rng = np.random.default_rng(5)
    sites = rng.integers(-8, 9, size=(2000, 3)).astype(float)
    basis = random_rotation(rng).T * 3.92 + rng.normal(scale=0.02, size=(3, 3))
    xyz = 40.0 + sites @ basis + rng.normal(scale=0.1, size=sites.shape)
    inlier = rng.random(len(xyz)) < 0.8
    origin, fit = _fit_sites(xyz, sites, inlier)
    design = np.hstack([np.ones((len(xyz), 1)), sites])
    sol = np.linalg.lstsq(design[inlier], xyz[inlier], rcond=None)[0]
    np.testing.assert_allclose(origin, sol[0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(fit, sol[1:], rtol=0, atol=1e-10)
    np.testing.assert_allclose(_site_residuals(xyz, sites, origin, fit),
                               np.linalg.norm(design @ sol - xyz, axis=1), rtol=0, atol=1e-10)
    flat = sites.copy()
    flat[:, 2] = 0.0                                                  # on a plane: lstsq's minimum norm
    o2, b2 = _fit_sites(xyz, flat, inlier)
    sol2 = np.linalg.lstsq(np.hstack([np.ones((len(xyz), 1)), flat])[inlier], xyz[inlier], rcond=None)[0]
    np.testing.assert_array_equal(np.vstack([o2, b2]), sol2)


def test_first_k_equals_argsort():
    rng = np.random.default_rng(6)
    v = rng.random(500)
    np.testing.assert_array_equal(_first_k(v, 6), np.argsort(v)[:6])
    tied = np.round(v * 10)                                           # ties: by index, on every CPU
    np.testing.assert_array_equal(_first_k(tied, 6), np.argsort(tied, kind="stable")[:6])
    assert np.all(np.diff(_first_k(tied, 6)[tied[_first_k(tied, 6)] == 0]) > 0)
    np.testing.assert_array_equal(_first_k(v[:4], 6), np.argsort(v[:4]))


def test_fit_recovers_a_rotated_jittered_fcc_particle():
    rng = np.random.default_rng(8)
    rot = random_rotation(rng)
    xyz = fcc_particle(1500, 3.924, shape="cuboctahedron") @ rot.T + rng.normal(scale=0.05, size=(1, 3))
    xyz = xyz + rng.normal(scale=0.04, size=xyz.shape) + [30.0, -12.0, 7.0]
    fit = fit_lattice(xyz, "Pt")
    assert fit.ok and fit.inlier.mean() > 0.95
    assert abs(fit.mean_param_A - 3.924) < 0.005
    np.testing.assert_allclose(fit.params_A, 3.924, atol=0.01)
    # the cubic axes up to the cube's symmetry: rotᵀ · fitted rotation is a signed permutation
    q = rot.T @ fit.rotation
    np.testing.assert_allclose(q, np.round(q), atol=0.01)
    assert np.array_equal(np.sort(np.abs(np.round(q)), axis=None), np.r_[np.zeros(6), np.ones(3)])
    assert np.all(np.abs(np.round(q)).sum(0) == 1) and np.all(np.abs(np.round(q)).sum(1) == 1)
    np.testing.assert_allclose(fit.residual_A[fit.inlier].mean(), 0.04 * np.sqrt(3) * 0.92, rtol=0.25)
