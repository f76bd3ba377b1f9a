"""Depth below the surface: ``surface_depth_A`` (distance to the convex hull) against ground truth,
and ``compute_statistics(..., depth=...)`` / ``--depth`` on the command line.

The truth for a box of fcc atoms |x| ≤ Lx, |y| ≤ Ly, |z| ≤ Lz (faces on lattice planes) is
``min(Lx − |x|, Ly − |y|, Lz − |z|)``: the hull of the atoms is the box itself.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from ptnp_gpu.compare import _surface_depth, radial_depth_A, surface_depth_A
from ptnp_gpu.errors import InputError
from ptnp_gpu.mapio import DensityMap
from ptnp_gpu.penetration import fit_penetration
from ptnp_gpu.simulate import atom_peak_value, reference_blur_A2, render_atoms
from ptnp_gpu.statistics import DEPTH_DEFINITIONS, SCHEMA, compute_statistics, write_statistics
from ptnp_gpu.synth import (ParticleSpec, _displacements, _lattice_points, fcc_particle, make_particle,
                            random_rotation)

A_PT = 3.9242          # Pt lattice parameter (Å)


def _fcc_box(half_cells, a=A_PT):
    """fcc lattice points in the box |x_k| ≤ half_cells[k]·a and the true depth of each (Å)."""
    lim = np.asarray(half_cells, float) * a
    pts = _lattice_points(a, int(np.ceil(max(half_cells))) + 1, np.zeros(3))
    pts = pts[np.all(np.abs(pts) <= lim + 1e-9, axis=1)]
    return pts, np.min(lim - np.abs(pts), axis=1)


# ----------------------------------------------------------------------------- geometry


def test_cube_depths_are_exact():
    """Cube of side 4a: outer layer 0, inner layers at multiples of a/2, exact to 1e-9 Å."""
    xyz, truth = _fcc_box((2, 2, 2))
    d = surface_depth_A(xyz)
    assert np.abs(d - truth).max() < 1e-9
    assert np.all(d[truth == 0] == 0.0) and np.count_nonzero(truth == 0) > 100
    assert np.allclose(np.unique(np.round(d, 6)), np.arange(5) * A_PT / 2)
    # rotated and moved far from the origin: the same depths
    R = random_rotation(np.random.default_rng(3))
    d2 = surface_depth_A(xyz @ R.T + [120.0, -40.0, 75.5])
    assert np.abs(d2 - truth).max() < 1e-9
    # small chunks (many atom blocks against the facet planes) give the same numbers
    d3, used_hull = _surface_depth(xyz, chunk_elements=50)
    assert used_hull and np.array_equal(d3, d)


def test_rod_radial_depth_is_wrong_surface_depth_is_right():
    """3:1 rod: atoms mid-way along its side lie on the surface, yet read > 10 Å radial depth."""
    xyz, truth = _fcc_box((4.5, 1.5, 1.5))
    R = random_rotation(np.random.default_rng(11))
    moved = xyz @ R.T + [10.0, 20.0, 30.0]
    rad = radial_depth_A(moved)[0]
    surf = surface_depth_A(moved)
    side = (np.abs(xyz[:, 0]) < A_PT) & (truth == 0)          # middle third of the long faces
    assert side.sum() >= 20
    assert rad[side].min() > 10.0                              # radial: 10.7–12.8 Å below the "surface"
    assert np.all(surf[side] < 1e-9)                           # surface: on it
    assert np.abs(surf - truth).max() < 1e-9
    assert np.median(np.abs(rad - truth)) > 5.0


def test_sphere_surface_and_radial_depth_agree():
    """A round fcc particle: the hull's facets lie just inside R_NP, so the depths agree within 1 Å."""
    xyz = fcc_particle(800, A_PT) @ random_rotation(np.random.default_rng(4)).T
    rad = radial_depth_A(xyz)[0]
    surf = surface_depth_A(xyz)
    diff = rad - surf
    assert np.abs(diff).max() < 1.0 and np.median(np.abs(diff)) < 0.5
    assert diff.min() > -1e-9                       # the hull never pokes out of the R_NP sphere here
    assert np.corrcoef(rad, surf)[0, 1] > 0.99


@pytest.mark.parametrize("kind", ["three", "four", "flat", "line", "same", "empty"])
def test_degenerate_sets_fall_back_to_radial_depth(kind, caplog):
    rng = np.random.default_rng(0)
    xyz = {"three": rng.normal(size=(3, 3)),
           "four": rng.normal(size=(4, 3)),                               # < 5 atoms
           "flat": None,                                                      # built below
           "line": np.outer(np.arange(8.0), [1.0, 2.0, 0.5]),
           "same": np.ones((6, 3)),
           "empty": np.zeros((0, 3))}[kind]
    if kind == "flat":                                                    # one (001) layer, tilted
        pts = _fcc_box((2, 2, 2))[0]
        xyz = pts[np.abs(pts[:, 2]) < 1e-9] @ random_rotation(rng).T
    with caplog.at_level(logging.WARNING, logger="ptnp_gpu.compare"):
        d = surface_depth_A(xyz)
    assert d.shape == (len(xyz),)
    if kind == "empty":
        return
    assert np.all(np.isfinite(d))
    assert np.array_equal(d, radial_depth_A(xyz)[0])
    assert "no three-dimensional convex hull" in caplog.text


# ----------------------------------------------------------------------------- statistics


def _same(a, b):
    """Bit-equal columns (NaN equal to NaN in float columns)."""
    a, b = np.asarray(a), np.asarray(b)
    return np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


@pytest.fixture(scope="module")
def detected():
    """A small simulated particle, its detected atoms and the statistics with each depth."""
    from ptnp_gpu.detect import detect_atoms
    p = make_particle(n_atoms=250, noise=0.05, background=0.05, seed=2)
    det = detect_atoms(p.map, "Pt", backend="numpy")
    default = compute_statistics(p.map, det.xyz_A, "Pt", labels=det.labels, backend="numpy")
    radial = compute_statistics(p.map, det.xyz_A, "Pt", labels=det.labels, backend="numpy", depth="radial")
    surface = compute_statistics(p.map, det.xyz_A, "Pt", labels=det.labels, backend="numpy", depth="surface")
    return p, det, default, radial, surface


def test_statistics_surface_depth_column_and_fits(detected):
    p, det, default, _, s = detected
    assert len(det.xyz_A) >= 240
    assert np.array_equal(s.columns["depth_A"], surface_depth_A(det.xyz_A))
    assert s.particle["depth_definition"] == s.depth_definition == "surface"
    assert s.columns["depth_A"].min() == 0.0
    # the fits use that depth: refit CN against it
    f = fit_penetration(s.columns["depth_A"], s.columns["cn"], c_bounds=(10, 12))
    assert s.penetration["cn"]["delta_A"] == pytest.approx(f["delta_A"], rel=1e-12)
    assert s.particle["cn_penetration_A"] == s.penetration["cn"]["delta_A"]
    # nothing but the depth and the fits changes
    for k, v in default.columns.items():
        if k != "depth_A":
            assert _same(v, s.columns[k]), k


def test_statistics_default_depth_is_radial_and_unchanged(detected):
    p, det, default, radial, _ = detected
    xyz = det.xyz_A
    r = np.linalg.norm(xyz - xyz.mean(0), axis=1)
    assert np.array_equal(default.columns["depth_A"], 0.5 * default.particle["diameter_A"] - r)
    assert default.particle["depth_definition"] == default.depth_definition == "radial"
    for k, v in default.columns.items():
        assert _same(v, radial.columns[k]), k
    assert json.dumps(default.penetration, sort_keys=True) == json.dumps(radial.penetration, sort_keys=True)


def test_statistics_rejects_unknown_depth(detected):
    p, det, *_ = detected
    for bad in ("Surface", "hull", "", None, 1):
        with pytest.raises(InputError, match="depth must be one of 'radial', 'surface'"):
            compute_statistics(p.map, det.xyz_A, "Pt", backend="numpy", depth=bad)
    with pytest.raises(ValueError):                 # InputError is a ValueError
        compute_statistics(p.map, det.xyz_A, "Pt", backend="numpy", depth="spherical")


def test_written_schema_describes_the_depth_used(detected, tmp_path):
    p, _, default, _, s = detected
    write_statistics(tmp_path / "s", p.map, s, figures=False)
    write_statistics(tmp_path / "r", p.map, default, figures=False)
    sch_s = json.loads((tmp_path / "s" / "atoms_schema.json").read_text())
    sch_r = json.loads((tmp_path / "r" / "atoms_schema.json").read_text())
    assert sch_s["depth_A"]["description"] == DEPTH_DEFINITIONS["surface"]
    assert sch_r["depth_A"]["description"] == SCHEMA["depth_A"][1] == DEPTH_DEFINITIONS["radial"]
    part = json.loads((tmp_path / "s" / "particle.json").read_text())["particle"]
    assert part["depth_definition"] == "surface"


def _rod_map(seed, half_cells=(7.5, 2.5, 2.5), vacancy=0.35, shell_A=5.0, noise=0.05, vs=0.358):
    """A 3:1 Pt rod (58.9 × 19.6 × 19.6 Å, {100} faces), randomly turned, with a designed surface
    layer measured along the true depth below its faces: vacancies with probability
    ``vacancy·(1 − depth/shell_A)`` and U_iso growing from 0.02 to 0.15 Å² over the outer 4 Å.

    Returns the map, the kept atoms, their true depths, true CN and true U_iso."""
    from ptnp_gpu.coordination import coordination_numbers
    rng = np.random.default_rng(seed)
    ideal, depth = _fcc_box(half_cells)
    keep = rng.uniform(size=len(ideal)) >= vacancy * np.clip(1 - depth / shell_A, 0, 1)
    U = _displacements(ideal, depth, ParticleSpec(u_surface_A2=0.15, shell_depth_A=4.0), rng)
    R = random_rotation(rng)
    xyz = (ideal @ R.T)[keep]
    U = (R @ U @ R.T)[keep]
    ext = np.abs(xyz).max(0) + 7.0
    n_xyz = np.ceil(2 * ext / vs).astype(int)
    origin = -0.5 * (n_xyz - 1) * vs
    shape = tuple(int(v) for v in n_xyz[::-1])
    data = np.asarray(render_atoms(xyz, shape, vs, origin, "Pt", u_aniso_A2=U, backend="numpy"), float)
    data += rng.normal(scale=noise * atom_peak_value("Pt", reference_blur_A2(vs), 0.02), size=shape)
    cn = coordination_numbers(ideal[keep], 0.5 * (1 + 1 / np.sqrt(2)) * A_PT)
    return (DensityMap(data.astype(np.float32), vs, origin), xyz, depth[keep], cn,
            np.trace(U, axis1=1, axis2=2) / 3)


def test_rod_penetration_depths_against_truth():
    """Elongated particle: surface depth recovers the designed δ; radial depth stretches it.

    README "Known limits" quotes these fits (seeds 0–4 of ``_rod_map``; this test runs seed 1).
    """
    dmap, xyz, depth, cn, u_iso = _rod_map(1)
    rad = compute_statistics(dmap, xyz, "Pt", backend="numpy")
    surf = compute_statistics(dmap, xyz, "Pt", backend="numpy", depth="surface")
    assert np.abs(surf.columns["depth_A"] - depth).max() < 1.0    # the hull loses a few corner atoms
    assert np.median(np.abs(rad.columns["depth_A"] - depth)) > 8.0
    t_cn = fit_penetration(depth, cn, c_bounds=(10, 12))
    t_u = fit_penetration(depth, u_iso)
    assert t_u["delta_A"] == pytest.approx(4.0, abs=0.05)
    assert surf.penetration["cn"]["delta_A"] == pytest.approx(t_cn["delta_A"], abs=0.3)
    assert surf.penetration["u_iso_A2"]["delta_A"] == pytest.approx(4.0, abs=0.3)
    assert rad.penetration["cn"]["delta_A"] > 3 * t_cn["delta_A"]
    assert rad.penetration["u_iso_A2"]["delta_A"] > 5.0


# ----------------------------------------------------------------------------- command line


def test_cli_stats_and_analyze_depth_option(tmp_path, capsys):
    from ptnp_gpu.cli import build_parser, main
    from ptnp_gpu.cli_detect import pipeline_kwargs
    from ptnp_gpu.models import read_model
    from ptnp_gpu.pipeline import run_analyze
    from ptnp_gpu.synth import write_particle
    p = make_particle(n_atoms=150, noise=0.05, background=0.05, seed=4)
    paths = write_particle(p, tmp_path / "part")
    out = tmp_path / "surf"
    assert main(["stats", paths["map"], paths["truth_pdb"], "--out", str(out), "--no-figures",
                 "--depth", "surface"]) == 0
    assert "surface depth" in capsys.readouterr().out
    part = json.loads((out / "particle.json").read_text())["particle"]
    assert part["depth_definition"] == "surface"
    assert json.loads((out / "summary.json").read_text())["particle"]["depth_definition"] == "surface"
    schema = json.loads((out / "atoms_schema.json").read_text())
    assert schema["depth_A"]["description"] == DEPTH_DEFINITIONS["surface"]
    model = read_model(out / "atoms.csv")
    got = np.array(model.columns["depth_A"], float)
    assert np.allclose(got, surface_depth_A(read_model(paths["truth_pdb"]).xyz_A), atol=2e-3)
    # the default stays radial
    assert main(["stats", paths["map"], paths["truth_pdb"], "--out", str(tmp_path / "rad"), "--no-figures",
                 "--quiet"]) == 0
    assert json.loads((tmp_path / "rad" / "particle.json").read_text())["particle"]["depth_definition"] == "radial"
    # a bad value is refused by the parser (exit 2), for stats and analyze
    for cmd in (["stats", paths["map"], paths["truth_pdb"]], ["analyze", paths["map"]]):
        with pytest.raises(SystemExit) as exc:
            main(cmd + ["--depth", "hull", "--quiet"])
        assert exc.value.code == 2
        assert "invalid choice: 'hull'" in capsys.readouterr().err
    # analyze passes it to the statistics; the library refuses a bad value before detecting
    args = build_parser().parse_args(["analyze", paths["map"], "--depth", "surface"])
    assert pipeline_kwargs(args)["depth"] == "surface"
    assert "depth" not in pipeline_kwargs(build_parser().parse_args(["analyze", paths["map"]]))
    with pytest.raises(InputError, match="depth must be one of"):
        run_analyze(paths["map"], out_dir=tmp_path / "never", depth="hull")
    assert not (tmp_path / "never").exists()
