"""Vacant lattice sites (ptnp_gpu.lattice_sites) and the detection's lattice rescue, against truth."""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from ptnp_gpu.detect import detect_atoms
from ptnp_gpu.lattice_sites import vacant_sites
from ptnp_gpu.pairing import match_accuracy
from ptnp_gpu.synth import fcc_particle, make_particle


def test_vacant_sites_find_removed_surface_atoms():
    """An fcc particle with 25 surface atoms taken away: every one of their sites is proposed, no
    site lies on an atom, and every site is one of the lattice's (the removed, or the next shell
    out)."""
    a = 3.924
    xyz = fcc_particle(600, a, "sphere")
    rng = np.random.default_rng(2)
    r = np.linalg.norm(xyz - xyz.mean(0), axis=1)
    gone = rng.choice(np.flatnonzero(r > r.max() - 2.0), 25, replace=False)
    kept = np.delete(xyz, gone, axis=0)
    sites, votes = vacant_sites(kept, a / np.sqrt(2))
    assert len(sites) > 25 and np.all(votes >= 2)
    assert cKDTree(sites).query(xyz[gone])[0].max() < 0.3
    assert cKDTree(kept).query(sites)[0].min() > 0.8 * a / np.sqrt(2)
    # on the lattice: each site is a lattice point (fractional coordinates of the cubic cell
    # are multiples of 1/2 with an even sum)
    frac = 2.0 * (sites - xyz[0]) / a
    assert np.abs(frac - np.round(frac)).max() < 0.05 and np.all(np.round(frac).sum(1) % 2 == 0)


def test_vacant_sites_bcc_by_lattice_translations():
    """bcc is a Bravais lattice too: j + k − i of bonded atoms (first and second shells, both
    within 1.25 bonds) is a lattice point, so removed surface sites are proposed there as well."""
    a = 3.165                                      # W
    xyz = fcc_particle(500, a, "sphere", lattice="bcc")
    r = np.linalg.norm(xyz - xyz.mean(0), axis=1)
    gone = np.random.default_rng(3).choice(np.flatnonzero(r > r.max() - 2.0), 20, replace=False)
    sites, _ = vacant_sites(np.delete(xyz, gone, axis=0), a * np.sqrt(3) / 2)
    assert cKDTree(sites).query(xyz[gone])[0].max() < 0.3


def _acc(det, xyz):
    return match_accuracy(det.xyz_A, xyz, 1.0)


def test_lattice_rescue_recovers_mobile_surface_atoms():
    """Our simulator's very mobile surface (U 0.6 Å², noise 0.15, background 0.3): recall 0.834
    without the lattice rescue, 0.887 with it, precision 0.993-0.994 both. The new atoms are
    labelled like the others (their own voxels, ids after the rest)."""
    p = make_particle(n_atoms=500, seed=5, u_surface_A2=0.6, noise=0.15, background=0.3)
    off = _acc(detect_atoms(p.map, "Pt", backend="numpy", lattice_rescue=False), p.xyz_A)
    det = detect_atoms(p.map, "Pt", backend="numpy")
    on = _acc(det, p.xyz_A)
    assert on["recall"] >= off["recall"] + 0.03 and on["precision"] >= 0.985, (off, on)
    n_new = det.counts["rescued_lattice"]
    assert n_new >= 15
    labels = np.asarray(det.labels)
    assert labels.max() == len(det.xyz_A) and np.all(det.n_voxels[-n_new:] > 0)
    assert np.all(np.isfinite(det.validation_corr)) and det.position_sd_A.shape == (len(det.xyz_A),)


def test_lattice_rescue_adds_nothing_to_a_complete_model():
    """A map whose atoms are all found (surface U 0.1 Å², noise 0.15): the vacant sites one shell
    out lie in the denoised map's trough, and none becomes an atom."""
    p = make_particle(n_atoms=500, seed=5, u_surface_A2=0.1, noise=0.15, background=0.0)
    det = detect_atoms(p.map, "Pt", backend="numpy")
    assert det.counts["rescued_lattice"] == 0
    a = _acc(det, p.xyz_A)
    assert a["recall"] == 1.0 and a["precision"] == 1.0


def test_vacant_sites_same_on_the_sparse_path(monkeypatch):
    """Two particles 400 Å apart along each axis (a grid of 1.25-bond cells would hold ~2·10⁶
    cells for 1,160 atoms): the cell keys are binary-searched instead of a cell table, with the
    same sites and votes as the table gives for one particle (nothing crosses 690 Å)."""
    import ptnp_gpu.lattice_sites as ls
    a = 3.924
    rng = np.random.default_rng(9)
    one = fcc_particle(600, a, "sphere")
    one = one + rng.normal(0, 0.05, one.shape)
    r = np.linalg.norm(one - one.mean(0), axis=1)
    one = np.delete(one, rng.choice(np.flatnonzero(r > r.max() - 2.0), 20, replace=False), axis=0)
    two = one + 400.0
    bond = a / np.sqrt(2)
    grid = ls._Grid(np.concatenate([one, two]), 1.25 * bond)
    assert len(grid.start) == 0                                   # the sparse path
    s_both, v_both = vacant_sites(np.concatenate([one, two]), bond)
    s_one, v_one = vacant_sites(one, bond)
    assert len(ls._Grid(one, 1.25 * bond).start) > 0              # the dense path
    assert len(s_both) == 2 * len(s_one) > 20
    left = s_both[:, 0] < 200.0
    for sel, shift in ((left, 0.0), (~left, 400.0)):
        got = s_both[sel] - shift
        assert len(got) == len(s_one) and cKDTree(s_one).query(got)[0].max() < 1e-9
    assert sorted(v_both.tolist()) == sorted(2 * v_one.tolist())
    # and the two paths' primitives agree on one particle
    dense = ls._Grid(one, 1.25 * bond)
    monkeypatch.setattr(ls, "_MAX_CELLS_PER_POINT", -10**9)   # every grid sparse
    sparse = ls._Grid(one, 1.25 * bond)
    assert len(sparse.start) == 0
    np.testing.assert_array_equal(dense.pairs(0.75 * bond, 1.25 * bond), sparse.pairs(0.75 * bond, 1.25 * bond))
    pts = one[:50] + rng.normal(0, 1.5, (50, 3))
    np.testing.assert_array_equal(dense.near(pts, 0.8 * bond), sparse.near(pts, 0.8 * bond))
    np.testing.assert_array_equal(dense.near(pts, 1.25 * bond, count=True), sparse.near(pts, 1.25 * bond, count=True))
    # against a k-d tree: pairs in a shell (and from 0 on, coincident points included), counts
    tree = cKDTree(one)
    want = tree.query_pairs(1.25 * bond, output_type="ndarray")
    want = want[np.linalg.norm(one[want[:, 0]] - one[want[:, 1]], axis=1) > 0.75 * bond]
    np.testing.assert_array_equal(sparse.pairs(0.75 * bond, 1.25 * bond), want[np.lexsort((want[:, 1], want[:, 0]))])
    np.testing.assert_array_equal(sparse.near(pts, 1.25 * bond, count=True),
                                  tree.query_ball_point(pts, 1.25 * bond, return_length=True))
    dup = np.concatenate([one[:30], one[:10]])                     # coincident pairs (i, 30 + i)
    for g in (ls._Grid(dup, 0.5), sparse.__class__(dup, 0.5)):
        p = g.pairs(-1.0, 0.5)
        assert {(i, 30 + i) for i in range(10)} <= set(map(tuple, p.tolist()))
