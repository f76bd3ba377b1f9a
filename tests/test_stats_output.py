"""Result files of the statistics and the ``ptnp stats`` command."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ptnp_gpu.cli import main
from ptnp_gpu.models import read_model
from ptnp_gpu.statistics import TABLE1_COLUMNS, compute_statistics, write_statistics
from ptnp_gpu.synth import make_particle, write_particle


@pytest.fixture(scope="module")
def small():
    p = make_particle(n_atoms=250, noise=0.05, background=0.05, u_surface_A2=0.15, seed=21)
    return p, compute_statistics(p.map, p.xyz_A, "Pt", backend="numpy")


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_write_statistics_files(small, tmp_path):
    p, s = small
    n = len(p.xyz_A)
    extra = {"n_voxels": np.arange(n) + 3, "bad_length": np.zeros(3), "position_sd_A": np.full(n, 0.05)}
    files = write_statistics(tmp_path, p.map, s, model_extra=extra)
    rows = _rows(tmp_path / "atoms.csv")
    assert len(rows) == n
    head = list(rows[0])
    assert head[:5] == ["id", "element", "x", "y", "z"] and head[5] == "n_voxels" and "bad_length" not in head
    for k in ("cn", "gcn", "gcn_bulk", "bond_nn_A", "u_iso_A2", "doi", "valid_corr", "intensity_peak_z",
              "strain_radial_pct", "u11_A2", "u_maj_A2", "u_iso_failed", "u_aniso_failed"):
        assert k in head, k
    got = np.array([float(r["u_iso_A2"]) for r in rows])
    assert np.allclose(got, s.columns["u_iso_A2"], rtol=1e-5, equal_nan=True)
    assert [int(r["cn"]) for r in rows] == s.columns["cn"].tolist()
    schema = json.loads((tmp_path / "atoms_schema.json").read_text())
    assert set(schema) == set(head) and schema["u_iso_A2"]["unit"] == "Å²"
    # the folder reads back as a model in the same frame; PDB carries B = 8π²U and ANISOU
    m = read_model(tmp_path)
    assert np.allclose(m.xyz_A, p.xyz_A, atol=1e-4)
    pdb = read_model(tmp_path / "atoms.pdb")
    ok = np.isfinite(s.columns["u_iso_A2"])
    assert np.allclose(pdb.b_A2[ok], 8 * np.pi ** 2 * s.columns["u_iso_A2"][ok], atol=0.01)
    oka = np.isfinite(s.columns["u11_A2"])
    assert pdb.u_aniso_A2 is not None
    assert np.allclose(pdb.u_aniso_A2[oka, 0], s.columns["u11_A2"][oka], atol=1e-4)
    # ChimeraX attribute files: one line per finite value
    lines = (tmp_path / "chimerax_doi.defattr").read_text().splitlines()
    assert "attribute: doi" in lines and "recipient: atoms" in lines
    data = [ln for ln in lines if ln.startswith("\t")]
    assert len(data) == np.count_nonzero(np.isfinite(s.columns["doi"]))
    assert data[0].split("\t")[1] == "/A:1@PT"
    # the detection's columns get their own schema entries and attribute files
    assert schema["position_sd_A"]["unit"] == "Å" and schema["n_voxels"]["unit"] == "voxels"
    sd_lines = (tmp_path / "chimerax_position_sd_A.defattr").read_text().splitlines()
    assert sum(ln.startswith("\t") for ln in sd_lines) == n and "error of the atom's position" in sd_lines[0]
    # particle row, CN bins, penetration table
    prow = _rows(tmp_path / "particle.csv")[0]
    assert list(prow)[:len(TABLE1_COLUMNS)] == list(TABLE1_COLUMNS)
    assert int(prow["n_atoms"]) == n and float(prow["cn_median"]) == np.median(s.columns["cn"])
    pj = json.loads((tmp_path / "particle.json").read_text())
    assert pj["lattice"]["a_A"] == pytest.approx(s.lattice.params_A[0])
    bins = _rows(tmp_path / "cn_stats.csv")
    assert all(int(b["n_atoms"]) >= 5 for b in bins)
    cn12 = next(b for b in bins if b["cn"] == "12")
    sel = s.columns["cn"] == 12
    assert float(cn12["u_iso_A2_mean"]) == pytest.approx(np.nanmean(s.columns["u_iso_A2"][sel]), rel=1e-5)
    sem = np.nanstd(s.columns["u_iso_A2"][sel], ddof=1) / np.sqrt(sel.sum())
    assert float(cn12["u_iso_A2_sem"]) == pytest.approx(sem, rel=1e-4)
    pen = _rows(tmp_path / "penetration.csv")
    assert [r["statistic"] for r in pen] == ["cn", "gcn", "u_iso_A2", "intensity_peak_z", "doi", "valid_corr"]
    assert 10 <= float(pen[0]["c"]) <= 12
    for key in ("fig_depth_profiles", "fig_cn_stats", "fig_slab"):
        assert files[key].stat().st_size > 10_000


def test_labels_give_peak_over_own_component(small):
    p, s = small
    m = p.map
    vox = np.rint(m.xyz_A_to_voxel(p.xyz_A)).astype(int)
    labels = np.zeros(m.shape, np.int32)
    labels[vox[:, 2], vox[:, 1], vox[:, 0]] = np.arange(1, len(vox) + 1)    # one voxel per atom
    s2 = compute_statistics(m, p.xyz_A, "Pt", labels=labels, backend="numpy")
    expect = (m.data[vox[:, 2], vox[:, 1], vox[:, 0]] - s.particle["map_mean"]) / s.particle["map_sd"]
    assert np.allclose(s2.columns["intensity_peak_z"], expect, rtol=1e-5)
    assert np.all(s.columns["intensity_peak_z"] >= s2.columns["intensity_peak_z"] - 1e-9)


def test_compute_statistics_rejects_bad_input(small):
    from ptnp_gpu.errors import InputError
    p, _ = small
    with pytest.raises(InputError, match="no atoms"):
        compute_statistics(p.map, np.zeros((0, 3)), "Pt")
    with pytest.raises(InputError, match="non-finite"):
        compute_statistics(p.map, np.array([[np.nan, 0, 0]]), "Pt")


def test_cli_stats(tmp_path, capsys):
    p = make_particle(n_atoms=150, noise=0.05, background=0.05, seed=4)
    paths = write_particle(p, tmp_path / "np")
    out = tmp_path / "res"
    assert main(["stats", paths["map"], paths["truth_pdb"], "--out", str(out), "--no-figures"]) == 0
    text = capsys.readouterr().out
    assert "median CN" in text and "penetration" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_atoms"] == len(p.xyz_A) and summary["particle"]["n_atoms"] == len(p.xyz_A)
    assert summary["lattice"]["mean_param_A"] == pytest.approx(3.924, rel=1e-3)
    # existing results need --force
    assert main(["stats", paths["map"], paths["truth_pdb"], "--out", str(out), "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["stats", paths["map"], str(out), "--force", "--quiet", "--no-figures"]) == 0
    # --presmooth 0 fits the raw map: U_iso close to the default's (the smoothing is deconvolved)
    raw_fit = tmp_path / "raw_fit"
    assert main(["stats", paths["map"], paths["truth_pdb"], "--out", str(raw_fit), "--quiet", "--no-figures",
                 "--presmooth", "0"]) == 0
    u_default = json.loads((out / "summary.json").read_text())["particle"]["u_iso_median_A2"]
    u_raw = json.loads((raw_fit / "summary.json").read_text())["particle"]["u_iso_median_A2"]
    assert u_raw != u_default and u_raw == pytest.approx(u_default, abs=0.01)
    # a model centred on 0 is outside the map frame unless --center is given
    xyz0 = p.xyz_A - p.xyz_A.mean(0)
    xyz_file = tmp_path / "centred.xyz"
    xyz_file.write_text(f"{len(xyz0)}\nPt particle\n" + "".join(f"Pt {a:.4f} {b:.4f} {c:.4f}\n" for a, b, c in xyz0))
    assert main(["stats", paths["map"], str(xyz_file), "--out", str(tmp_path / "r2"), "--quiet"]) == 2
    assert "--center" in capsys.readouterr().err
    assert main(["stats", paths["map"], str(xyz_file), "--out", str(tmp_path / "r2"), "--quiet",
                 "--center", "--no-figures"]) == 0
    shift = json.loads((tmp_path / "r2" / "summary.json").read_text())["model_shift_A"]
    assert np.allclose(shift, p.xyz_A.mean(0), atol=0.05)
    assert json.loads((tmp_path / "r2" / "summary.json").read_text())["warnings"] == []
    # a model off its atoms (shifted by half a bond) is computed but flagged
    off = tmp_path / "off.xyz"
    off.write_text(f"{len(xyz0)}\nPt\n" + "".join(f"Pt {a + 1.39:.4f} {b:.4f} {c:.4f}\n" for a, b, c in p.xyz_A))
    assert main(["stats", paths["map"], str(off), "--out", str(tmp_path / "r3"), "--no-figures"]) == 0
    assert "may not overlay" in capsys.readouterr().out
    assert main(["stats", paths["map"], str(tmp_path / "missing.pdb"), "--quiet"]) == 2
    assert main(["stats", paths["map"], paths["truth_pdb"], "--element", "Xx", "--quiet"]) == 2


@pytest.mark.parametrize("n", [1, 3])
def test_tiny_models_are_reported_not_crashed(small, tmp_path, n):
    p, _ = small
    s = compute_statistics(p.map, p.xyz_A[:n], "Pt", backend="numpy")
    assert not s.lattice.ok and not s.penetration["cn"]["ok"]
    assert "too few" in s.penetration["cn"]["message"]
    files = write_statistics(tmp_path, p.map, s)
    pen = _rows(tmp_path / "penetration.csv")
    assert all(r["ok"] == "0" and r["delta_A"] == "nan" for r in pen)
    assert files["fig_slab"].is_file()


def _label_boxes_fit(fig):
    """Every visible axes with its ticks, labels and title lies inside the figure, and no two
    overlap (pixels, one of slack)."""
    r = fig.canvas.get_renderer()
    boxes = [ax.get_tightbbox(r) for ax in fig.axes if ax.get_visible() and ax.axison]
    w, h = fig.bbox.width, fig.bbox.height
    inside = all(b.x0 >= -1 and b.y0 >= -1 and b.x1 <= w + 1 and b.y1 <= h + 1 for b in boxes)
    overlaps = sum(min(a.x1, b.x1) - max(a.x0, b.x0) > 1 and min(a.y1, b.y1) - max(a.y0, b.y0) > 1
                   for i, a in enumerate(boxes) for b in boxes[i + 1:])
    return inside, overlaps


@pytest.mark.parametrize("model", ["small", "bcc"])
def test_figures_fixed_layout_fits_their_text(small, model):
    """The figures' margins are fixed (no tight_layout pass): on a Pt and a bcc Fe particle every
    axes' text stays inside the figure and clear of its neighbours, and the plots (colour bars
    aside) sit within 0.3 inch of where tight_layout would put them."""
    import matplotlib.pyplot as plt

    from ptnp_gpu import figures as F
    if model == "small":
        p, s = small
    else:
        p = make_particle(n_atoms=300, seed=4, noise=0.2, element="Fe", voxel_size_A=0.5)
        s = compute_statistics(p.map, p.xyz_A, "Fe", backend="numpy")
    for make in (lambda: F.plot_depth_profiles(s), lambda: F.plot_cn_stats(s), lambda: F.plot_slab(p.map, s)):
        fig = make()
        fig.canvas.draw()
        assert _label_boxes_fit(fig) == (True, 0)
        plots = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        fixed = [ax.get_position().bounds for ax in plots]
        fig.tight_layout()
        w, h = fig.get_size_inches()
        for a, b in zip(fixed, (ax.get_position().bounds for ax in plots)):
            assert max(abs(a[0] - b[0]) * w, abs(a[1] - b[1]) * h, abs(a[2] - b[2]) * w,
                       abs(a[3] - b[3]) * h) < 0.3
        plt.close(fig)
