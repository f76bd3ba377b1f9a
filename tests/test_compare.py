"""Model comparison (paper Fig. 3), registration and ``ptnp compare`` against known truth."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from ptnp_gpu.cli import main
from ptnp_gpu.compare import compare_points, default_cutoff_A, max_pairwise_distance_A, radial_depth_A
from ptnp_gpu.errors import InputError
from ptnp_gpu.compare_report import _hy36
from ptnp_gpu.models import Model, read_model, write_pdb
from ptnp_gpu.pairing import pair_points
from ptnp_gpu.registration import kabsch, register_points, rmsd_between_transforms_A
from ptnp_gpu.synth import fcc_particle, random_rotation

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "experimental"
CUTOFF = 1.76
MOVE_A = 2.5


def asymmetric_particle(n, seed):
    """fcc particle without point symmetry: off-lattice centre, one flat cut, random orientation (Å)."""
    rng = np.random.default_rng(seed)
    x = fcc_particle(int(n * 1.35), 3.924, "sphere", shift=(0.21, 0.37, 0.11))
    r = np.linalg.norm(x, axis=1).max()
    x = x[x @ np.array([0.6, 0.3, 0.74]) < 0.45 * r]
    return x @ random_rotation(rng).T + rng.normal(0, 5, 3)


def split_truth(a, seed, frac_lost=0.05, frac_moved=0.03, frac_gained=0.02, jitter_A=0.05):
    """Model B from A: 5% removed, 3% moved by 2.5 Å, 2% gained, the rest jittered; shuffled.

    Moved atoms are surface atoms displaced outwards so that they land farther
    than 2 Å from every atom of A; removed atoms are farther than 3.8 Å from
    every moved position, and gained atoms farther than 4 Å from A, so each
    class is unambiguous at the default cutoff (1.76 Å) and moved radius (3.52 Å).
    """
    rng = np.random.default_rng(seed)
    n = len(a)
    n_lost, n_moved, n_gained = round(frac_lost * n), round(frac_moved * n), round(frac_gained * n)
    tree = cKDTree(a)
    c = a.mean(0)
    moved, new_pos = [], []
    for i in rng.permutation(n):
        if len(moved) == n_moved:
            break
        out = (a[i] - c) / np.linalg.norm(a[i] - c)
        for _ in range(20):
            u = out + 0.5 * rng.normal(size=3)
            p = a[i] + MOVE_A * u / np.linalg.norm(u)
            d, _ = tree.query(p, k=2)
            if d[0] > 2.0 and all(np.linalg.norm(p - q) > 2.0 for q in new_pos):
                moved.append(i)
                new_pos.append(p)
                break
    assert len(moved) == n_moved
    new_pos = np.array(new_pos)
    tnew = cKDTree(new_pos)
    rest = [i for i in rng.permutation(n) if i not in set(moved)]
    lost = [i for i in rest if tnew.query(a[i])[0] > 3.8][:n_lost]
    assert len(lost) == n_lost
    gained = []
    r_np = np.linalg.norm(a - c, axis=1).max()
    while len(gained) < n_gained:
        u = rng.normal(size=3)
        p = c + (r_np + 4.2) * u / np.linalg.norm(u)  # just outside the particle
        if tree.query(p)[0] > 4.0 and tnew.query(p)[0] > 4.0 and all(np.linalg.norm(p - q) > 3 for q in gained):
            gained.append(p)
    common = np.setdiff1d(np.arange(n), np.r_[moved, lost])
    b = np.vstack([a[common] + rng.normal(0, jitter_A, (len(common), 3)), new_pos, np.array(gained)])
    src = np.r_[common, moved, np.full(n_gained, -1)]  # row of A behind each row of B
    perm = rng.permutation(len(b))
    return b[perm], src[perm], {"common": len(common), "moved": n_moved, "lost": n_lost, "gained": n_gained}


@pytest.fixture(scope="module")
def truth():
    a = asymmetric_particle(1200, 1)
    b, src, counts = split_truth(a, 2)
    return a, b, src, counts


def test_counts_exact(truth):
    a, b, src, counts = truth
    comp = compare_points(a, b, CUTOFF)
    s = comp.summary()
    assert (s["n_common"], s["n_moved"], s["n_lost"], s["n_gained"]) == (
        counts["common"], counts["moved"], counts["lost"], counts["gained"])
    assert counts["lost"] == round(0.05 * len(a)) and counts["moved"] == round(0.03 * len(a))
    # the pairs are the true correspondences, and the moved distance is the applied move
    assert np.array_equal(src[comp.common_b], comp.common_a)
    assert np.array_equal(src[comp.moved_b], comp.moved_a)
    np.testing.assert_allclose(comp.moved_dist_A, MOVE_A, atol=1e-9)
    assert s["n_a"] == s["n_common"] + s["n_moved"] + s["n_lost"]
    assert s["n_b"] == s["n_common"] + s["n_moved"] + s["n_gained"]
    # jitter 0.05 Å per axis: RMS distance 0.05·√3
    assert s["displacement_common_rms_A"] == pytest.approx(0.05 * np.sqrt(3), rel=0.1)
    # swapping the roles of A and B swaps lost and gained and nothing else
    r = compare_points(b, a, CUTOFF).summary()
    assert (r["n_common"], r["n_moved"], r["n_lost"], r["n_gained"]) == (
        s["n_common"], s["n_moved"], s["n_gained"], s["n_lost"])
    rows = s["displacement_vs_depth"]
    assert sum(r["n_atoms"] for r in rows) == len(a)
    assert sum(r["n_lost"] for r in rows) == counts["lost"]


def test_order_independent(truth):
    a, b, _, _ = truth
    rng = np.random.default_rng(5)
    s1 = compare_points(a, b, CUTOFF).summary()
    s2 = compare_points(a[rng.permutation(len(a))], b[rng.permutation(len(b))], CUTOFF).summary()
    for k in ("n_common", "n_moved", "n_lost", "n_gained"):
        assert s1[k] == s2[k]
    assert s1["displacement_common_median_A"] == pytest.approx(s2["displacement_common_median_A"])


def test_pairing_is_optimal_not_greedy():
    # greedy nearest partner pairs a1 with b0 (0.7 Å) and leaves a0 alone; the optimum pairs both
    a = np.array([[0.0, 0, 0], [1.5, 0, 0]])
    b = np.array([[0.8, 0, 0], [2.4, 0, 0]])
    ia, ib, d = pair_points(a, b, 1.0)
    assert list(ia) == [0, 1] and list(ib) == [0, 1]
    np.testing.assert_allclose(d, [0.8, 0.9])


def test_pairing_matches_brute_force():
    """Exact optimum (most pairs, then least summed distance) on random clouds with crowded candidates."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist
    rng = np.random.default_rng(0)
    for _ in range(150):
        n, m = rng.integers(1, 25, 2)
        a, b = rng.uniform(0, 6, (n, 3)), rng.uniform(0, 6, (m, 3))
        cut = rng.uniform(0.5, 2.5)
        ia, ib, d = pair_points(a, b, cut)
        dm = cdist(a, b)
        cost = np.where(dm <= cut, dm - 1e6, 0.0)
        x, y = linear_sum_assignment(cost)
        ok = cost[x, y] < 0
        assert len(d) == ok.sum()
        assert d.sum() == pytest.approx(dm[x[ok], y[ok]].sum(), abs=1e-9)
        assert len(set(ia)) == len(ia) and len(set(ib)) == len(ib) and np.all(d <= cut)
        np.testing.assert_allclose(d, dm[ia, ib])


def test_registration_recovers_transform(truth):
    a, b, _, _ = truth
    rng = np.random.default_rng(11)
    rot, t = random_rotation(rng), np.array([12.0, -7.5, 30.0])
    reg = register_points(b @ rot.T + t, a, cutoff_A=CUTOFF)
    # truth maps moving (rotated B) back onto A: x -> rot.T (x - t)
    err = rmsd_between_transforms_A(b @ rot.T + t, reg.rotation, reg.translation_A, rot.T, -rot.T @ t)
    assert err <= 0.01
    assert reg.rmsd_A == pytest.approx(0.05 * np.sqrt(3), rel=0.15)
    assert np.linalg.det(reg.rotation) == pytest.approx(1.0)


def test_hybrid36_serials():
    # the PDB hybrid-36 convention (as gemmi writes it) beyond 99,999 atoms / 9,999 residues
    assert [_hy36(v, 5) for v in (99999, 100000, 100001, 100035)] == ["99999", "A0000", "A0001", "A000Z"]
    assert [_hy36(v, 4) for v in (9999, 10000, 10036)] == ["9999", "A000", "A010"]


def test_kabsch_exact():
    rng = np.random.default_rng(3)
    p = rng.normal(size=(20, 3))
    rot, t = random_rotation(rng), rng.normal(size=3)
    r, tt = kabsch(p, p @ rot.T + t)
    np.testing.assert_allclose(r, rot, atol=1e-12)
    np.testing.assert_allclose(tt, t, atol=1e-12)


def test_radial_depth_sphere():
    x = fcc_particle(400, 3.924, "sphere")
    d, c, r_np = radial_depth_A(x)
    assert r_np == pytest.approx(0.5 * np.max(np.linalg.norm(x[:, None] - x[None], axis=-1)))
    assert max_pairwise_distance_A(x) == pytest.approx(2 * r_np)
    assert d.min() == pytest.approx(r_np - np.linalg.norm(x - x.mean(0), axis=1).max())


def test_bad_arguments():
    with pytest.raises(InputError):
        compare_points(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(InputError):
        compare_points(np.zeros((3, 3)), np.zeros((3, 3)), 0.0)
    with pytest.raises(InputError):
        compare_points(np.zeros((3, 3)), np.zeros((3, 3)), 1.0, moved_radius_A=0.5)
    assert default_cutoff_A("Pt") == pytest.approx(1.76)


def _write_csv_model(path, xyz, extra=None):
    cols = {"id": np.arange(1, len(xyz) + 1), "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]} | (extra or {})
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(cols))
        for i in range(len(xyz)):
            w.writerow([cols[k][i] for k in cols])


def test_cli_outputs(truth, tmp_path, capsys):
    a, b, src, counts = truth
    rng = np.random.default_rng(4)
    rot, t = random_rotation(rng), np.array([3.0, 40.0, -2.0])
    pa, pb = tmp_path / "part1.csv", tmp_path / "part2.pdb"
    _write_csv_model(pa, a, {"cn": np.arange(len(a)) % 13})
    write_pdb(pb, Model(b @ rot.T + t))
    assert main(["compare", str(pa), str(pb), "--register", "--quiet"]) == 0
    out = tmp_path / "compare_part1_vs_part2"
    s = json.loads((out / "compare.json").read_text())
    assert (s["n_common"], s["n_moved"], s["n_lost"], s["n_gained"]) == (
        counts["common"], counts["moved"], counts["lost"], counts["gained"])
    assert s["registration"]["residual_rmsd_A"] < 0.15
    for name in ("pairs.csv", "common.pdb", "lost.pdb", "gained.pdb", "moved_a.pdb", "compare.png",
                 "b_registered.pdb"):
        assert (out / name).is_file(), name
    lost = read_model(out / "lost.pdb")  # status files are valid PDB in A's frame
    assert len(lost) == counts["lost"]
    assert cKDTree(a).query(lost.xyz_A)[0].max() < 1e-3
    with open(out / "pairs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == counts["common"] + counts["moved"] + counts["lost"] + counts["gained"]
    com = [r for r in rows if r["status"] == "common"]
    # ids of A are the CSV ids (1-based rows); ids of B are PDB order; both map to the truth
    assert all(src[int(r["id_b"]) - 1] == int(r["id_a"]) - 1 for r in com)
    assert all(float(r["a_cn"]) == (int(r["id_a"]) - 1) % 13 for r in com)
    # refuses to overwrite, then replaces with --force
    assert main(["compare", str(pa), str(pb), "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["compare", str(pa), str(pb), "--quiet", "--force", "--no-figure"]) == 0
    assert not (out / "compare.png").exists()
    assert not list(tmp_path.glob(".tmp_*"))


@pytest.mark.parametrize("content, suffix", [("", ".pdb"), ("x,y\n1,2\n", ".csv"), ("3\n\nPt 0 0\n", ".xyz"),
                                             ("garbage that is not a model\n", ".cif"), ("", ".mat")])
def test_cli_bad_model_files(tmp_path, capsys, content, suffix):
    good = tmp_path / "good.xyz"
    good.write_text("2\n\nPt 0 0 0\nPt 2.8 0 0\n")
    bad = tmp_path / f"bad{suffix}"
    bad.write_text(content)
    assert main(["compare", str(good), str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0] and "bad" in err[0]
    assert not (tmp_path / "o").exists()
    assert main(["compare", str(good), str(tmp_path / "missing.pdb"), "--out", str(tmp_path / "o")]) == 2


def test_cli_mat_models(tmp_path, capsys):
    from scipy.io import savemat
    a = asymmetric_particle(300, 12)
    savemat(tmp_path / "a.mat", {"model": a.T, "atoms": np.ones((1, len(a)))})
    savemat(tmp_path / "b.mat", {"model": a[10:].T})
    savemat(tmp_path / "bad.mat", {"coords": a.T})
    assert main(["compare", str(tmp_path / "a.mat"), str(tmp_path / "b.mat"), "--quiet", "--no-figure"]) == 0
    s = json.loads((tmp_path / "compare_a_vs_b" / "compare.json").read_text())
    assert (s["n_common"], s["n_lost"], s["n_gained"], s["displacement_common_max_A"]) == (len(a) - 10, 10, 0, 0.0)
    assert main(["compare", str(tmp_path / "a.mat"), str(tmp_path / "bad.mat"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'model'" in err[0]


def test_cli_series_from_result_folders(tmp_path):
    """Three result folders with CN built from Eq. 1 (known δ); part1 vs part2 also compared."""
    from ptnp_gpu.penetration import eq1
    a = asymmetric_particle(900, 7)
    b, _, counts = split_truth(a, 8)
    truth_delta = {"merged": 4.0, "part1": 4.6, "part2": 3.5}
    rng = np.random.default_rng(9)
    folders = []
    for label, xyz in (("merged", a), ("part1", a), ("part2", b)):
        depth = radial_depth_A(xyz)[0]
        cn = eq1(depth, truth_delta[label], 1.6, 11.6) + rng.normal(0, 0.3, len(xyz))
        gcn = eq1(depth, truth_delta[label] + 1.0, 1.2, 7.5) + rng.normal(0, 0.3, len(xyz))
        f = tmp_path / label
        f.mkdir()
        _write_csv_model(f / "atoms.csv", xyz, {"cn": cn, "gcn": gcn, "depth_A": depth})
        folders.append(str(f))
    # part2 carries its own penetration.csv, which must be used as is
    (tmp_path / "part2" / "penetration.csv").write_text("statistic,delta_A,m,c\ncn,3.25,1.5,11.5\n")
    assert main(["compare", "--series", *folders, "--quiet", "--out", str(tmp_path / "s")]) == 0
    s = json.loads((tmp_path / "s" / "series.json").read_text())
    for label in ("merged", "part1"):
        assert s["penetration"][label]["cn"]["delta_A"] == pytest.approx(truth_delta[label], abs=0.4)
        assert s["penetration"][label]["gcn"]["delta_A"] == pytest.approx(truth_delta[label] + 1.0, abs=0.6)
    assert s["penetration"]["part2"]["cn"]["delta_A"] == 3.25
    c = json.loads((tmp_path / "s" / "compare.json").read_text())
    assert (c["n_common"], c["n_moved"], c["n_lost"], c["n_gained"]) == (
        counts["common"], counts["moved"], counts["lost"], counts["gained"])
    assert (tmp_path / "s" / "series.png").is_file()
    assert main(["compare", "--series", folders[0], folders[1], "--quiet"]) == 2


@pytest.mark.skipif(not (DATA / "HEA4_final.mat").is_file(), reason="shared experimental data not present")
def test_hea4_real_pair(tmp_path):
    """The HEA_4 particle before and after the authors' final edits (same frame)."""
    out = tmp_path / "hea"
    assert main(["compare", str(DATA / "HEA4_before_final_edits.mat"), str(DATA / "HEA4_final.mat"),
                 "--register", "--quiet", "--no-figure", "--out", str(out)]) == 0
    s = json.loads((out / "compare.json").read_text())
    assert (s["n_a"], s["n_b"]) == (1502, 1501)
    assert s["n_a"] == s["n_common"] + s["n_moved"] + s["n_lost"]
    assert s["n_b"] == s["n_common"] + s["n_moved"] + s["n_gained"]
    # the two versions share a frame: registration must find (almost) the identity
    assert s["registration"]["rotation_angle_deg"] < 1.0
    assert np.linalg.norm(s["registration"]["translation_A"]) < 0.2
    assert s["percent_common_of_a"] > 95.0


def test_cli_maps_are_analysed_first(tmp_path):
    """Two noisy maps of one synthetic particle: each is analysed, then the models are compared."""
    pytest.importorskip("ptnp_gpu.pipeline")
    from ptnp_gpu.mapio import write_map
    from ptnp_gpu.synth import make_particle
    p = make_particle(n_atoms=80, seed=3, noise=0.05)
    rng = np.random.default_rng(4)
    for name in ("half1", "half2"):
        d = p.map.data + rng.normal(0, 0.05 * float(p.map.data.max()), p.map.data.shape)
        write_map(tmp_path / f"{name}.mrc", d.astype(np.float32), p.map.voxel_size_A, p.map.origin_A)
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "half1.mrc"), str(tmp_path / "half2.mrc"), "--quiet", "--no-figure",
                 "--out", str(out)]) == 0
    s = json.loads((out / "compare.json").read_text())
    for side in ("a_half1", "b_half2"):
        assert (out / side / "atoms.csv").is_file()
    # both maps show the same atoms: each detected model matches the truth, so A and B agree
    assert s["n_lost"] + s["n_gained"] + s["n_moved"] <= 0.05 * len(p.xyz_A)
    assert s["displacement_common_median_A"] < 0.2
    truth = compare_points(p.xyz_A, read_model(out / "a_half1").xyz_A, CUTOFF).summary()
    assert truth["percent_common_of_a"] >= 95.0
    # the results carry position errors: the comparison tests each common atom's displacement
    noise = s["displacement_beyond_noise"]
    assert noise["n_tested"] == s["n_common"] and noise["p_value"] == 0.001
    with open(out / "pairs.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["status"] == "common"]
    ratio = np.array([float(r["displacement_over_sd"]) for r in rows])
    assert np.all(np.isfinite(ratio)) and 0.8 < np.median(ratio) < 3.0


def _noisy_pair_detections(moved_A):
    """A 400-atom particle rendered twice with independent noise (0.1 × peak); in the second map a
    third of the outer-3 Å atoms moved by ``moved_A`` in random directions. Returns the two
    detections, the truth and the moved atoms' indices."""
    from ptnp_gpu.detect import detect_atoms
    from ptnp_gpu.mapio import DensityMap
    from ptnp_gpu.simulate import atom_peak_value, reference_blur_A2, render_atoms
    from ptnp_gpu.synth import make_particle
    p = make_particle(n_atoms=400, seed=9, noise=0.0, background=0.0)
    vs, b = 0.358, reference_blur_A2(0.358)
    rng = np.random.default_rng(4)
    rad = np.linalg.norm(p.xyz_A - p.xyz_A.mean(0), axis=1)
    outer = np.flatnonzero(rad > rad.max() - 3.0)
    moved = rng.choice(outer, len(outer) // 3, replace=False)
    xyz_b = p.xyz_A.copy()
    v = rng.normal(size=(len(moved), 3))
    xyz_b[moved] += moved_A * v / np.linalg.norm(v, axis=1)[:, None]
    dets = []
    for xyz, seed in ((p.xyz_A, 1), (xyz_b, 2)):
        d = np.asarray(render_atoms(xyz, p.map.shape, vs, p.map.origin_A, "Pt", b_extra_A2=b, u_aniso_A2=p.u_aniso_A2,
                                    backend="numpy"), float)
        d += np.random.default_rng(seed).normal(scale=0.1 * atom_peak_value("Pt", b, 0.02), size=d.shape)
        dets.append(detect_atoms(DensityMap(d.astype(np.float32), vs, p.map.origin_A), "Pt", backend="numpy"))
    return dets[0], dets[1], p.xyz_A, moved


@pytest.mark.parametrize("moved_A", [0.0, 0.35])
def test_displacement_beyond_noise_against_truth(moved_A):
    """Two maps of one particle that differ in their noise (and, in the second case, in 0.35 Å
    moves of surface atoms): the unmoved atoms are rarely flagged (measured 2.3% at p 0.001, the
    centres' error tails being heavier than Gaussian), every moved atom is."""
    from scipy.stats import chi2

    from ptnp_gpu.compare import displacement_beyond_noise
    da, db, truth, moved = _noisy_pair_detections(moved_A)
    comp = compare_points(da.xyz_A, db.xyz_A, CUTOFF)
    ratio, s = displacement_beyond_noise(comp, da.position_sd_A, db.position_sd_A)
    flagged = chi2.sf(ratio ** 2, 3) < s["p_value"]
    truly = np.isin(cKDTree(truth).query(da.xyz_A[comp.common_a])[1], moved)
    assert s["n_tested"] == len(comp.common_a) and s["n_beyond_noise"] == int(flagged.sum())
    assert (flagged & ~truly).sum() <= 0.04 * (~truly).sum()
    if moved_A:
        assert truly.sum() >= 50 and (flagged & truly).sum() >= 0.95 * truly.sum()
        assert s["by_depth"][-1]["n_beyond_noise"] >= 0 and sum(b["n_tested"] for b in s["by_depth"]) == s["n_tested"]
