"""Backend-generic geometry and strain (CN, GCN, NN bonds, radial strain, strain tensor).

The pair-based, vectorised functions of :mod:`ptnp_gpu.coordination` and
:mod:`ptnp_gpu.strain` are checked against straightforward references
(k-d tree look-ups and explicit per-atom loops) on small random sets and on
a synthetic fcc particle; the map mean/SD against ``np.mean``/``np.std`` in
float64. The test marked ``gpu`` runs the same functions on CuPy and NumPy
inputs (fresh random data each session) and asks for 1e-9 relative agreement.
"""
from __future__ import annotations


import numpy as np
import pytest
from scipy.spatial import cKDTree

from ptnp_gpu.coordination import (_nearest_brute_force_A, coordination_numbers, generalized_cn,
                                   nn_bond_lengths_A, neighbour_pairs)
from ptnp_gpu.neighbors import segment_max, segment_sum
from ptnp_gpu.components import map_mean_sd as _map_mean_sd
from ptnp_gpu.strain import radial_displacement_A, radial_strain, strain_neighbourhood, strain_tensor
from ptnp_gpu.synth import fcc_particle, random_rotation
from _seeds import fresh_seed

A_PT = 3.924                                     # Pt lattice parameter, Å
CN_CUTOFF_A = A_PT / 2 * (1 + 1 / np.sqrt(2))    # between the first and second fcc shells
FRESH_SEED = fresh_seed()


# ----------------------------------------------------------------------------- inputs

def _random_set(seed, n=180, box_A=16.0):
    """Random points in a box (≈ 4 neighbours within 3.35 Å) plus two far, lone atoms."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(0.0, box_A, (n, 3))
    return np.vstack([xyz, [[60.0, 0, 0], [0, 70.0, 5.0]]])


def _fcc_strained(seed, n=700):
    """Ideal sites, jittered positions with a radial strain ramp, centre, invalid mask."""
    rng = np.random.default_rng(seed)
    ideal = fcc_particle(n, A_PT) @ random_rotation(rng).T + rng.uniform(10, 30, 3)
    centre = ideal.mean(0)
    rel = ideal - centre
    r = np.linalg.norm(rel, axis=1)
    eps = 0.01 + 0.02 * r / r.max()                         # strain growing to the surface
    xyz = ideal + eps[:, None] * rel + rng.normal(scale=0.03, size=ideal.shape)
    valid = rng.uniform(size=len(ideal)) > 0.08
    return ideal, xyz, centre, valid


# ----------------------------------------------------------------------------- references

def _neighbour_lists(xyz, cutoff_A):
    tree = cKDTree(xyz)
    return [sorted(set(nb) - {i}) for i, nb in enumerate(tree.query_ball_point(xyz, cutoff_A))]


def _ref_cn_gcn(xyz, cutoff_A, cn_bulk):
    nbs = _neighbour_lists(xyz, cutoff_A)
    cn = np.array([len(nb) for nb in nbs])
    gcn = np.array([cn[nb].sum() / cn[nb].max() if nb else 0.0 for nb in nbs])
    gcn_bulk = np.array([cn[nb].sum() / cn_bulk for nb in nbs])
    return cn, gcn, gcn_bulk


def _ref_nn(xyz):
    d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return d.min(1)


def _ref_radial_strain(r, ur, x_ref, valid, h_A=2.0, min_weight=2.0):
    out = np.full(len(r), np.nan)
    for i in np.flatnonzero(valid):
        d = np.linalg.norm(x_ref - x_ref[i], axis=1)
        nb = valid & (d <= 3 * h_A)
        w = np.exp(-0.5 * (d[nb] / h_A) ** 2)
        rb = np.sum(w * r[nb]) / w.sum()
        ub = np.sum(w * ur[nb]) / w.sum()
        sxx = np.sum(w * (r[nb] - rb) ** 2)
        if sxx > 0.01 * min_weight:
            out[i] = np.sum(w * (r[nb] - rb) * (ur[nb] - ub)) / sxx
    return out


def _ref_strain_tensor(x_ref, u, valid, h_A=2.0):
    """Weighted least squares ``u_j − u_i ≈ E (x_j − x_i)`` atom by atom (lstsq)."""
    out = np.full((len(x_ref), 3, 3), np.nan)
    for i in np.flatnonzero(valid):
        d = np.linalg.norm(x_ref - x_ref[i], axis=1)
        nb = valid & (d <= 3 * h_A)
        sw = np.sqrt(np.exp(-0.5 * (d[nb] / h_A) ** 2))[:, None]
        X = sw * (x_ref[nb] - x_ref[i])
        Y = sw * (u[nb] - u[i])
        A = X.T @ X
        if np.linalg.det(A) <= 1e-3 * max(np.trace(A) ** 3 / 27.0, 1e-30):
            continue
        E = np.linalg.lstsq(X, Y, rcond=None)[0].T
        out[i] = 0.5 * (E + E.T)
    return out


def _close(a, b, rtol):
    """Equal NaN patterns and |a − b| ≤ rtol · max|b| (entries near 0 need no relative match)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert a.shape == b.shape
    assert np.array_equal(np.isnan(a), np.isnan(b))
    f = np.isfinite(b)
    scale = np.max(np.abs(b[f])) if f.any() else 1.0
    np.testing.assert_allclose(a[f], b[f], rtol=rtol, atol=rtol * scale)


# ----------------------------------------------------------------------------- reductions

def test_segment_reductions_match_ufunc_at():
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 50, 3000)
    cols = [rng.normal(size=3000) for _ in range(4)]
    ref = np.zeros((4, 60))
    for k, c in enumerate(cols):
        np.add.at(ref[k], idx, c)
    np.testing.assert_allclose(segment_sum(idx, cols, 60), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(segment_sum(idx, cols, 60, flat=True), ref, rtol=1e-12, atol=1e-12)
    mx = np.full(60, -np.inf)
    np.maximum.at(mx, idx, cols[0])
    assert np.array_equal(segment_max(idx, cols[0], 60), mx)
    assert np.array_equal(-segment_max(idx, -cols[1], 60)[:50],
                          [cols[1][idx == s].min() for s in range(50)])
    empty = np.zeros(0, np.int64)
    assert segment_sum(empty, [np.zeros(0)] * 2, 3, flat=True).tolist() == [[0.0] * 3] * 2
    assert segment_sum(empty, [np.zeros(0)], 3).dtype == np.float64
    assert segment_max(empty, np.zeros(0), 2, 0.0).tolist() == [0.0, 0.0]


# ----------------------------------------------------------------------------- coordination

@pytest.mark.parametrize("kind", ["random", "fcc"])
def test_cn_gcn_bonds_match_references(kind):
    if kind == "random":
        xyz = _random_set(3)
    else:
        xyz = _fcc_strained(4)[1]
    pairs = neighbour_pairs(xyz, CN_CUTOFF_A)
    cn = coordination_numbers(xyz, CN_CUTOFF_A, pairs)
    cn_ref, gcn_ref, gcn_bulk_ref = _ref_cn_gcn(xyz, CN_CUTOFF_A, 12)
    assert np.array_equal(cn, cn_ref)
    assert np.array_equal(coordination_numbers(xyz, CN_CUTOFF_A), cn_ref)
    np.testing.assert_allclose(generalized_cn(cn, pairs), gcn_ref, rtol=1e-14)
    np.testing.assert_allclose(generalized_cn(cn, pairs, 12), gcn_bulk_ref, rtol=1e-14)
    # nearest-neighbour bond: from the CN pairs (lone atoms: k-d tree fallback), from
    # a pair search, by k-d tree and by brute force: the same distances
    nn_tree = cKDTree(xyz).query(xyz, k=2)[0][:, 1]
    assert np.array_equal(nn_bond_lengths_A(xyz, pairs), nn_tree)       # bit-identical to the k-d tree
    assert np.array_equal(nn_bond_lengths_A(xyz, search_A=1.5 * 2.775), nn_tree)
    assert np.array_equal(nn_bond_lengths_A(xyz), nn_tree)
    np.testing.assert_allclose(nn_tree, _ref_nn(xyz), rtol=1e-14)
    brute = _nearest_brute_force_A(xyz, np.arange(len(xyz)), chunk_elements=5000)   # several chunks
    np.testing.assert_allclose(brute, nn_tree, rtol=1e-14)
    if kind == "random":
        assert np.any(cn == 0)                     # the lone atoms took the fallback


def test_bonds_of_degenerate_sets():
    assert np.isnan(nn_bond_lengths_A(np.zeros((1, 3)))).all()
    assert nn_bond_lengths_A(np.zeros((0, 3))).shape == (0,)
    two = np.array([[0, 0, 0], [0, 0, 9.0]])
    p = neighbour_pairs(two, 3.0)
    assert p.shape == (0, 2) and coordination_numbers(two, 3.0, p).tolist() == [0, 0]
    assert nn_bond_lengths_A(two, p).tolist() == [9.0, 9.0]
    assert generalized_cn(np.zeros(2, int), p).tolist() == [0.0, 0.0]
    dup = np.array([[1.0, 2, 3], [1.0, 2, 3], [5, 2, 3]])              # coincident atoms: bond 0
    assert nn_bond_lengths_A(dup, neighbour_pairs(dup, 3.0)).tolist() == [0.0, 0.0, 4.0]


# ----------------------------------------------------------------------------- strain

@pytest.mark.parametrize("seed", [5, 6])
def test_radial_strain_and_tensor_match_loops(seed):
    ideal, xyz, centre, valid = _fcc_strained(seed, n=500)
    u, ur, _ = radial_displacement_A(xyz, ideal, centre)
    r_ref = np.linalg.norm(ideal - centre, axis=1)
    eps = radial_strain(r_ref, ur, ideal, valid=valid)
    _close(eps, _ref_radial_strain(r_ref, ur, ideal, valid), 1e-10)
    assert np.isfinite(eps[valid]).mean() > 0.9 and np.all(np.isnan(eps[~valid]))
    e = strain_tensor(ideal, u, valid=valid)
    _close(e, _ref_strain_tensor(ideal, u, valid), 1e-9)
    # one shared neighbourhood gives the same numbers as each function's own
    hood = strain_neighbourhood(ideal, valid=valid)
    assert np.array_equal(radial_strain(r_ref, ur, ideal, valid=valid, neighbourhood=hood), eps, equal_nan=True)
    assert np.array_equal(strain_tensor(ideal, u, valid=valid, neighbourhood=hood), e, equal_nan=True)
    # a neighbourhood built for other atoms or another width is not used
    other = strain_neighbourhood(ideal, valid=np.ones(len(ideal), bool))
    assert np.array_equal(radial_strain(r_ref, ur, ideal, valid=valid, neighbourhood=other), eps, equal_nan=True)
    wide = strain_neighbourhood(ideal, h_A=3.0, valid=valid)
    assert np.array_equal(strain_tensor(ideal, u, valid=valid, neighbourhood=wide), e, equal_nan=True)


def test_strain_on_random_points_and_nan_inputs():
    rng = np.random.default_rng(7)
    x_ref = rng.uniform(0, 14, (220, 3))
    u = rng.normal(scale=0.05, size=x_ref.shape) + 0.01 * (x_ref - 7.0)
    u[3] = np.nan                                    # a non-finite displacement: that atom is left out
    valid = np.ones(len(x_ref), bool)
    finite = np.isfinite(u).all(1)
    _close(strain_tensor(x_ref, u), _ref_strain_tensor(x_ref, u, valid & finite), 1e-9)
    c = np.full(3, 7.0)
    r = np.linalg.norm(x_ref - c, axis=1)
    ur = np.einsum("ij,ij->i", np.nan_to_num(u), (x_ref - c) / r[:, None])
    ur[3] = np.nan
    _close(radial_strain(r, ur, x_ref), _ref_radial_strain(r, ur, x_ref, valid & finite), 1e-10)
    none = np.zeros(len(x_ref), bool)
    assert np.isnan(strain_tensor(x_ref, u, valid=none)).all()
    assert np.isnan(radial_strain(r, ur, x_ref, valid=none)).all()


def test_compute_statistics_geometry_columns_match_references():
    from ptnp_gpu.statistics import compute_statistics
    from ptnp_gpu.synth import make_particle
    p = make_particle(n_atoms=500, seed=3)
    xyz = p.xyz_A.copy()
    xyz[:2] += 25.0                        # two stray atoms: no neighbour within the CN cutoff
    s = compute_statistics(p.map, xyz, "Pt", backend="numpy")
    cn, gcn, gcn_bulk = _ref_cn_gcn(xyz, s.particle["cn_cutoff_A"], 12)
    assert s.columns["cn"].dtype == np.int64 and np.array_equal(s.columns["cn"], cn)
    assert s.columns["cn"][:2].tolist() == [0, 0]
    np.testing.assert_allclose(s.columns["gcn"], gcn, rtol=1e-14)
    np.testing.assert_allclose(s.columns["gcn_bulk"], gcn_bulk, rtol=1e-14)
    assert np.array_equal(s.columns["bond_nn_A"], cKDTree(xyz).query(xyz, k=2)[0][:, 1])
    radius = np.linalg.norm(xyz - xyz.mean(0), axis=1)
    assert np.array_equal(s.columns["radius_A"], radius)
    assert np.array_equal(s.columns["depth_A"], 0.5 * s.particle["diameter_A"] - radius)
    assert s.columns["strain_failed"].dtype == np.int64
    assert np.array_equal(s.columns["strain_failed"], (~np.isfinite(s.columns["strain_radial_pct"])).astype(int))


# ----------------------------------------------------------------------------- map mean and SD

@pytest.mark.parametrize("offset,shape,slab", [(0.0, (37, 23, 29), None), (1.0e3, (40, 31, 17), 2000),
                                               (-5.0e4, (9, 8, 7), 1), (2.5, (64, 64, 64), 1 << 14)])
def test_map_mean_sd_equals_float64_numpy(offset, shape, slab):
    rng = np.random.default_rng(8)
    data = (offset + rng.gamma(2.0, 1.5, shape)).astype(np.float32)
    mean, sd = _map_mean_sd(data, slab)
    assert mean == pytest.approx(float(np.mean(data, dtype=np.float64)), rel=1e-12, abs=1e-12)
    assert sd == pytest.approx(float(np.std(data, dtype=np.float64)), rel=1e-9)
    m64, s64 = _map_mean_sd(data.astype(np.float64)[:, ::2], slab)     # float64, strided
    assert s64 == pytest.approx(float(np.std(data.astype(np.float64)[:, ::2])), rel=1e-9)
    assert m64 == pytest.approx(float(np.mean(data.astype(np.float64)[:, ::2])), rel=1e-12, abs=1e-12)


# ----------------------------------------------------------------------------- device parity

def _run_all(xp, ideal, xyz, centre, valid):
    """Every geometry and strain function on ``xp`` arrays; results on the host."""
    from ptnp_gpu.backend import to_host
    X, I, C, V = (xp.asarray(a) for a in (xyz, ideal, centre, valid))
    pairs = neighbour_pairs(X, CN_CUTOFF_A)
    cn = coordination_numbers(X, CN_CUTOFF_A, pairs)
    u, ur, r = radial_displacement_A(X, I, C)
    r_ref = xp.linalg.norm(I - C, axis=1)
    hood = strain_neighbourhood(I, valid=V)
    out = {"cn": cn, "gcn": generalized_cn(cn, pairs), "gcn_bulk": generalized_cn(cn, pairs, 12),
           "nn_pairs": nn_bond_lengths_A(X, pairs), "nn_search": nn_bond_lengths_A(X, search_A=2.0),
           "nn_all": nn_bond_lengths_A(X), "u": u, "ur": ur, "r": r,
           "eps_rr": radial_strain(r_ref, ur, I, valid=V),
           "eps_rr_hood": radial_strain(r_ref, ur, I, valid=V, neighbourhood=hood),
           "eps": strain_tensor(I, u, valid=V), "eps_hood": strain_tensor(I, u, valid=V, neighbourhood=hood)}
    return {k: to_host(v) for k, v in out.items()}


@pytest.mark.gpu
@pytest.mark.parametrize("seed", [11, FRESH_SEED])
def test_geometry_and_strain_cupy_equal_numpy(seed):
    import cupy as cp
    ideal, xyz, centre, valid = _fcc_strained(seed, n=2500)
    rng = np.random.default_rng(seed)
    xyz = np.vstack([xyz, xyz.max(0) + rng.uniform(8, 12, (3, 3))])   # lone atoms: device fallback
    ideal = np.vstack([ideal, np.full((3, 3), np.nan)])
    valid = np.concatenate([valid, [True] * 3])
    host = _run_all(np, ideal, xyz, centre, valid)
    dev = _run_all(cp, ideal, xyz, centre, valid)
    for k in host:
        _close(dev[k], host[k], 1e-6)      # float rounding order differs on a GPU (3e-8 measured)
    assert np.array_equal(dev["cn"], host["cn"])
    sums = segment_sum(cp.asarray([0, 2, 2]), [cp.asarray([1.0, 2.0, 3.0])], 3)
    assert isinstance(sums, cp.ndarray) and sums.get().tolist() == [[1.0, 0.0, 5.0]]
    data = (50.0 + rng.gamma(2.0, 1.5, (70, 66, 61))).astype(np.float32)
    np.testing.assert_allclose(_map_mean_sd(cp.asarray(data)), _map_mean_sd(data), rtol=1e-9)


@pytest.mark.gpu
def test_compute_statistics_geometry_cupy_equal_numpy():
    from ptnp_gpu.statistics import compute_statistics
    from ptnp_gpu.synth import make_particle
    p = make_particle(n_atoms=900, seed=FRESH_SEED % 1000)
    s_np = compute_statistics(p.map, p.xyz_A, "Pt", backend="numpy")
    s_cp = compute_statistics(p.map, p.xyz_A, "Pt", backend="cupy")
    for k in ("cn", "gcn", "gcn_bulk", "bond_nn_A", "radius_A", "depth_A", "disp_radial_A", "strain_radial_pct",
              "strain_xx_pct", "strain_xy_pct", "strain_vol_pct", "strain_failed"):
        assert isinstance(s_cp.columns[k], np.ndarray) and s_cp.columns[k].dtype == s_np.columns[k].dtype
        _close(s_cp.columns[k], s_np.columns[k], 1e-6)
    assert s_cp.particle["map_sd"] == pytest.approx(s_np.particle["map_sd"], rel=1e-9)
