"""Command line: outputs of ``ptnp detect`` and one-line errors (exit 2) for bad input."""
from __future__ import annotations

import csv
import json

import mrcfile
import numpy as np
import pytest

from ptnp_gpu.cli import main
from ptnp_gpu.mapio import read_map, write_map
from ptnp_gpu.models import read_model
from ptnp_gpu.pairing import match_accuracy
from ptnp_gpu.synth import make_particle, write_particle


@pytest.fixture(scope="module")
def particle_map(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    p = make_particle(n_atoms=250, seed=7, box=(81, 90, 75), origin_A=(-10.0, 5.5, 3.25))
    paths = write_particle(p, d / "part")
    return p, d, paths


def test_detect_outputs_and_frame(particle_map, capsys):
    p, d, paths = particle_map
    out = d / "res"
    assert main(["detect", paths["map"], "--out", str(out), "--quiet"]) == 0
    for name in ("atoms.pdb", "atoms.cif", "atoms.csv", "labels.mrc", "denoised.mrc", "simulated.mrc",
                 "threshold_curve.csv", "threshold_curve.png", "summary.json"):
        assert (out / name).is_file(), name
    s = json.loads((out / "summary.json").read_text())
    assert s["n_atoms"] > 0 and s["backend"] == "numpy" and "total" in s["times_s"]
    # every output holds the same coordinates, in the map's frame
    pdb, cif, csvm = (read_model(out / n) for n in ("atoms.pdb", "atoms.cif", "atoms.csv"))
    assert np.allclose(pdb.xyz_A, csvm.xyz_A, atol=1e-3) and np.allclose(cif.xyz_A, csvm.xyz_A, atol=1e-4)
    acc = match_accuracy(csvm.xyz_A, p.xyz_A, 1.0)
    assert acc["recall"] >= 0.99 and acc["precision"] >= 0.99 and acc["rmsd_A"] <= 0.08
    # labels: component id k holds atom k
    lab = read_map(out / "labels.mrc")
    assert int(lab.data.max()) == s["n_atoms"]
    with open(out / "atoms.csv") as fh:
        rows = list(csv.DictReader(fh))
    k = 5
    z, y, x = np.nonzero(lab.data == k)
    centre = lab.voxel_to_xyz_A(np.stack([x, y, z], 1)).mean(0)
    xyz = np.array([float(rows[k - 1][c]) for c in "xyz"])
    assert np.linalg.norm(centre - xyz) < 0.5
    # each atom's significance and estimated position error, against the true errors
    sd = np.array([float(r["position_sd_A"]) for r in rows])
    sig = np.array([float(r["significance_sd"]) for r in rows])
    assert np.all(np.isfinite(sd)) and np.all(sig > 3.5)
    true_rms = np.sqrt(np.mean(np.linalg.norm(csvm.xyz_A[:, None] - p.xyz_A[None], axis=2).min(1) ** 2) / 3)
    assert 0.6 < true_rms / np.sqrt(np.mean(sd ** 2)) < 1.6, (true_rms, sd.mean())
    assert s["precision"]["position_sd_A_median"] == pytest.approx(np.median(sd), abs=1e-4)
    # no overwrite without --force; the input is never touched
    assert main(["detect", paths["map"], "--out", str(out), "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["detect", paths["map"], "--out", str(out), "--quiet", "--force"]) == 0


def _bad(tmp_path, kind):
    f = tmp_path / f"{kind}.mrc"
    if kind == "not_mrc":
        f.write_text("hello, I am not a map\n" * 50)
    elif kind == "truncated":
        write_map(f, np.random.default_rng(0).normal(size=(40, 40, 40)), 0.358)
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    elif kind == "two_d":
        with mrcfile.new(f) as m:
            m.set_data(np.zeros((30, 30), np.float32))
    elif kind == "nan":
        a = np.random.default_rng(0).normal(size=(32, 32, 32)).astype(np.float32)
        a[3, 4, 5] = np.nan
        write_map(f, a, 0.358)
    elif kind == "zero_voxel":
        with mrcfile.new(f) as m:
            m.set_data(np.random.default_rng(0).normal(size=(32, 32, 32)).astype(np.float32))
            m.voxel_size = 0.0
    elif kind == "constant":
        write_map(f, np.ones((32, 32, 32)), 0.358)
    elif kind == "no_particle":
        write_map(f, np.random.default_rng(1).normal(size=(48, 48, 48)), 0.358)
    elif kind == "missing":
        pass
    return f


@pytest.mark.parametrize("kind", ["not_mrc", "truncated", "two_d", "nan", "zero_voxel", "constant",
                                  "no_particle", "missing"])
def test_bad_input_one_line_exit_2(tmp_path, capsys, kind):
    f = _bad(tmp_path, kind)
    out = tmp_path / "out"
    rc = main(["detect", str(f), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err and err.startswith("ptnp detect: error:")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_negative_voxel_size_and_unknown_element(particle_map, capsys, tmp_path):
    _, _, paths = particle_map
    assert main(["detect", paths["map"], "--out", str(tmp_path / "a"), "--voxel-size", "-1", "--quiet"]) == 2
    assert "voxel size" in capsys.readouterr().err
    assert main(["detect", paths["map"], "--out", str(tmp_path / "b"), "--element", "Xx", "--quiet"]) == 2
    assert "unknown element" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_simulate_command_writes_truth(tmp_path, capsys):
    stem = tmp_path / "s"
    assert main(["simulate", str(stem), "--atoms", "150", "--seed", "2", "--box", "71", "64", "59"]) == 0
    m = read_map(stem.with_suffix(".mrc"))
    assert m.shape == (71, 64, 59)
    truth = json.loads((tmp_path / "s_truth.json").read_text())
    assert truth["n_atoms"] == len(read_model(tmp_path / "s_truth.pdb"))


def test_no_ladder_and_deblur_options_reach_the_detection(particle_map):
    p, d, paths = particle_map
    out = d / "noladder"
    assert main(["detect", paths["map"], "--out", str(out), "--quiet", "--no-figures", "--no-ladder",
                 "--deblur", "never"]) == 0
    par = json.loads((out / "summary.json").read_text())["parameters"]
    assert par["ladder"] is False and par["deblur"] == "never"
    out = d / "ladderwhiten"
    assert main(["detect", paths["map"], "--out", str(out), "--quiet", "--no-figures", "--ladder-whiten", "auto"]) == 0
    assert json.loads((out / "summary.json").read_text())["parameters"]["ladder_whiten"] == "auto"


def test_keep_detached_option_reaches_the_detection(particle_map):
    p, d, paths = particle_map
    for flag, expect in (([], True), (["--keep-detached"], False)):
        out = d / f"detached_{expect}"
        assert main(["detect", paths["map"], "--out", str(out), "--quiet", "--no-figures", *flag]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["parameters"]["reject_detached"] is expect


def test_lattice_rescue_options_reach_the_detection(particle_map):
    p, d, paths = particle_map
    for flag, on, sigma in (([], True, 2.5), (["--no-lattice-rescue"], False, 2.5), (["--lattice-sigma", "3.5"], True, 3.5)):
        out = d / f"lattice_{on}_{sigma}"
        assert main(["detect", paths["map"], "--out", str(out), "--quiet", "--no-figures", *flag]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["parameters"]["lattice_rescue"] is on and summary["parameters"]["lattice_sigma"] == sigma
        assert ("rescued_lattice" in summary["counts"]) is on


def test_analyze_without_figures(particle_map):
    p, d, paths = particle_map
    out = d / "nofig"
    assert main(["analyze", paths["map"], "--out", str(out), "--quiet", "--no-figures"]) == 0
    assert (out / "atoms.csv").is_file() and (out / "penetration.csv").is_file()
    assert not list(out.glob("*.png"))
    s = json.loads((out / "summary.json").read_text())
    assert s["particle"]["n_atoms"] == s["n_atoms"] == len(read_model(out).xyz_A)


def test_fit_baseline_option(particle_map):
    """``--fit-baseline none`` fits the raw map (the paper); the default subtracts the solvent's
    level, which the column and the particle summary record."""
    p, d, paths = particle_map
    cols = {}
    for how in ("solvent", "none"):
        out = d / f"baseline_{how}"
        args = ["analyze", paths["map"], "--out", str(out), "--quiet", "--no-figures"]
        assert main(args + ([] if how == "solvent" else ["--fit-baseline", how])) == 0
        s = json.loads((out / "summary.json").read_text())
        assert s["particle"]["fit_baseline"] == how
        with open(out / "atoms.csv") as fh:
            cols[how] = {k: np.array([float(r[k]) for r in csv.DictReader(fh)]) for k in ("fit_baseline",)}
    assert np.all(cols["none"]["fit_baseline"] == 0.0)
    # the simulated map's smooth background lies under the atoms: a positive level
    assert np.median(cols["solvent"]["fit_baseline"]) > 0
    with pytest.raises(SystemExit):
        main(["analyze", paths["map"], "--fit-baseline", "median"])


def test_inverted_map_error_and_invert_option(particle_map, capsys):
    """A negated map: one-line error naming --invert; with it, analyze and stats match the positive map."""
    p, d, paths = particle_map
    m = read_map(paths["map"])
    neg = d / "negated.mrc"
    write_map(neg, -m.data, m.voxel_size_A, m.origin_A)
    assert main(["detect", str(neg), "--out", str(d / "neg_res"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "inverted" in err and "--invert" in err and len(err.splitlines()) == 1
    assert not (d / "neg_res").exists()
    assert main(["analyze", paths["map"], "--out", str(d / "pos"), "--quiet", "--no-figures"]) == 0
    assert main(["analyze", str(neg), "--out", str(d / "neg"), "--quiet", "--no-figures", "--invert"]) == 0
    pos_csv, neg_csv = (list(csv.DictReader(open(d / n / "atoms.csv"))) for n in ("pos", "neg"))
    assert len(pos_csv) == len(neg_csv)
    for col in ("x", "u_iso_A2", "cn"):
        a = np.array([float(r[col]) for r in pos_csv])
        b = np.array([float(r[col]) for r in neg_csv])
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=col)   # float32 rounding
    # stats on an existing model reads the negated map the same way
    assert main(["stats", str(neg), str(d / "pos" / "atoms.csv"), "--out", str(d / "neg_stats"), "--quiet",
                 "--no-figures", "--invert"]) == 0
    st = list(csv.DictReader(open(d / "neg_stats" / "atoms.csv")))
    np.testing.assert_allclose([float(r["u_iso_A2"]) for r in st], [float(r["u_iso_A2"]) for r in pos_csv],
                               rtol=1e-4, atol=1e-5)


def _device_oom():
    """An exception shaped like CuPy's pool error (the pipeline tells it by module and name)."""
    cls = type("OutOfMemoryError", (MemoryError,), {"__module__": "cupy.cuda.memory"})
    return cls("Out of memory allocating 2,147,483,648 bytes (allocated so far: 21,474,836,480 bytes).")


def test_gpu_out_of_memory_falls_back_to_the_cpu(particle_map, tmp_path, monkeypatch, capsys):
    import ptnp_gpu.detect as detect_mod
    from ptnp_gpu.backend import is_device_out_of_memory
    from ptnp_gpu.pipeline import run_detect
    assert is_device_out_of_memory(_device_oom()) and not is_device_out_of_memory(MemoryError("host"))
    real = detect_mod.detect_atoms
    calls = []

    def detect_on_a_small_gpu(dmap, element, backend=None, **kw):
        calls.append(backend)
        if backend != "numpy":
            raise _device_oom()
        return real(dmap, element, backend=backend, **kw)
    monkeypatch.setattr(detect_mod, "detect_atoms", detect_on_a_small_gpu)
    monkeypatch.delenv("PTNP_BACKEND", raising=False)
    _, _, paths = particle_map
    s = run_detect(paths["map"], out_dir=tmp_path / "fallback", figures=False)
    assert calls == [None, "numpy"] and s["backend"] == "numpy" and s["n_atoms"] > 200
    assert "ran out of memory" in s["warnings"][0] and "81×90×75" in s["warnings"][0]
    assert json.loads((tmp_path / "fallback" / "summary.json").read_text())["warnings"] == s["warnings"]
    # asked for the GPU: a one-line error, no result folder
    assert main(["detect", paths["map"], "--backend", "cupy", "--out", str(tmp_path / "forced"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "ran out of memory" in err and "--backend numpy" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "forced").exists()
