"""Wrong voxel sizes: are they caught, and does ``--voxel-size auto`` recover the right one?

Each trial makes a map whose true voxel size is known, then:

1. detects at the true voxel size: a scale warning there is a false alarm;
2. detects at a wrong one (the truth × 0.5-2.8, e.g. a header's "unknown" 1 Å): the run
   must warn (and its suggested voxel size is scored), or refuse with a hint naming the
   voxel size the map's lattice fringes suggest;
3. writes the map with a 1 Å header and runs ``run_detect(voxel_size_A="auto")``: the
   estimated voxel size against the truth, and recall / precision against the true atoms.

Kinds of map (``--kinds``): ``synth`` (any of the 14 elements, 0.2-0.75 Å voxels, noise,
background, surface U, lattice strain ±2%), ``tomo`` (simulated FBP / SIRT tomograms of Pt),
``spa`` (simulated single-particle reconstructions of Pt), ``experimental`` (the measured
PdPt and FePt models rendered as Pt, when ``../shared/data/experimental`` exists).

    python benchmarks/scale_check.py [--seed 0] [--trials 20] [--kinds synth tomo spa experimental] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ptnp_gpu.detect import detect_atoms  # noqa: E402
from ptnp_gpu.elements import get_element, known_elements  # noqa: E402
from ptnp_gpu.errors import InputError  # noqa: E402
from ptnp_gpu.mapio import DensityMap, write_map  # noqa: E402
from ptnp_gpu.pairing import match_accuracy  # noqa: E402
from ptnp_gpu.pipeline import run_detect  # noqa: E402
from ptnp_gpu.synth import make_particle  # noqa: E402

WRONG_FACTORS = (0.5, 0.7, 0.8, 1.25, 1.4, 2.0, 2.8)     # wrong header = truth × this


def _synth(rng):
    el = str(rng.choice(known_elements()))
    vs = round(float(rng.uniform(0.2, 0.75)), 3)
    spec = dict(element=el, n_atoms=int(rng.integers(100, 1500)), voxel_size_A=vs,
                noise=round(float(rng.uniform(0, 0.25)), 3), background=round(float(rng.uniform(0, 0.4)), 3),
                u_surface_A2=float(rng.choice([0.05, 0.1, 0.3])), expansion=round(float(rng.uniform(-0.02, 0.02)), 4),
                shape=str(rng.choice(["sphere", "cuboctahedron", "truncated_octahedron"]
                                     + ([] if get_element(el).lattice == "bcc" else ["decahedron"]))),
                seed=int(rng.integers(1 << 30)))
    p = make_particle(**spec)
    return {"kind": "synth", **spec}, p.map, p.xyz_A, el


def _tomo(rng):
    import tomography_maps
    spec = tomography_maps.draw_spec(rng)
    p = make_particle(n_atoms=spec["n_atoms"], seed=spec["seed"], margin_A=8, noise=0.0, background=0.0,
                      u_surface_A2=spec["u_surface_A2"])
    rec = tomography_maps.tomogram(p.map.data.astype(np.float32), spec)
    return {"kind": "tomo", **spec}, DensityMap(rec, p.map.voxel_size_A, p.map.origin_A), p.xyz_A, "Pt"


def _spa(rng):
    import spa_maps
    from ptnp_gpu.single_particle import simulate_reconstruction
    spec = spa_maps.draw_spec(rng)
    spec["image_snr"] = max(spec["image_snr"], 0.1)      # the scale check needs a map with atoms in it
    p = make_particle(n_atoms=spec["n_atoms"], seed=spec["seed"], margin_A=8, noise=0.0, background=0.0,
                      u_surface_A2=spec["u_surface_A2"])
    vs = float(p.map.voxel_size_A[0])
    rec = simulate_reconstruction(p.map.data.astype(np.float32), vs, n_images=spec["n_images"],
                                  image_snr=spec["image_snr"], b_factor_A2=spec["b_factor_A2"],
                                  preferred_axis_fraction=spec["preferred_axis_fraction"], rng=spec["seed"])
    rec = spa_maps.sharpen(np.asarray(rec), vs, spec["sharpen_A2"], spec["res_A"])
    return {"kind": "spa", **spec}, DensityMap(rec, vs, p.map.origin_A), p.xyz_A, "Pt"


def _experimental():
    import experimental_stats
    models = experimental_stats.load_models(experimental_stats.DATA)
    out = []
    for k, name in enumerate(("PdPt", "FePt")):
        if name in models:
            dmap, xyz = experimental_stats.render_model(models[name][0], noise=0.15, background=0.15, seed=k)
            out.append(({"kind": "experimental", "particle": name}, dmap, xyz, "Pt"))
    return out


def run_case(spec, dmap, truth, el, rng, tmp: Path) -> dict:
    vs = float(dmap.voxel_size_A[0])
    # truth in the frame of origin 0 so that a voxel-size change scales positions about the origin
    dmap = DensityMap(dmap.data, vs, (0.0, 0.0, 0.0))
    truth = truth - np.asarray(spec.get("_origin", (0.0, 0.0, 0.0)))
    row = {"spec": {k: v for k, v in spec.items() if not k.startswith("_")}, "voxel_size_A": vs, "element": el}
    t = time.perf_counter()
    # 1. the right voxel size
    try:
        det = detect_atoms(dmap, el)
        a = match_accuracy(det.xyz_A, truth, 1.0)
        row["right"] = {"recall": round(float(a["recall"]), 4), "precision": round(float(a["precision"]), 4),
                        "bond_over_bulk": round(float(det.scale.ratio), 4), "warned": bool(det.warnings)}
    except InputError as exc:
        row["right"] = {"refused": str(exc)}
    # 2. a wrong one
    f = float(rng.choice(WRONG_FACTORS))
    wrong = {"factor": f, "voxel_size_A": round(vs * f, 4)}
    path = tmp / "wrong.mrc"
    write_map(path, dmap.data, vs * f, (0.0, 0.0, 0.0))
    try:
        s = run_detect(path, out_dir=tmp / "wrong", element=el, force=True, figures=False)
        sc = s["scale"]
        wrong.update(warned=bool(s["warnings"]), suggested_A=round(sc["suggested_voxel_size_A"], 4),
                     suggested_error=round(sc["suggested_voxel_size_A"] / vs - 1.0, 4), n_atoms=s["n_atoms"])
    except InputError as exc:
        msg = str(exc)
        wrong.update(refused=msg[:120], hint="--voxel-size auto" in msg)
        if wrong["hint"]:
            sizes = [float(x) for x in msg.split(" at about " if " at about " in msg else " of about ")[1]
                     .split(" Å")[0].split(", ")]
            wrong["hinted_A"] = sizes
            wrong["hint_error"] = round(sizes[0] / vs - 1.0, 4)                       # the first named
            wrong["hint_best_error"] = round(min(sizes, key=lambda h: abs(h / vs - 1.0)) / vs - 1.0, 4)
    row["wrong"] = wrong
    # 3. auto from a header that says 1 Å
    path = tmp / "unknown.mrc"
    write_map(path, dmap.data, 1.0, (0.0, 0.0, 0.0))
    try:
        s = run_detect(path, out_dir=tmp / "auto", element=el, voxel_size_A="auto", force=True, figures=False)
        v = s["voxel_size"]
        est = float(v["voxel_size_A"])
        import csv
        with open(tmp / "auto" / "atoms.csv") as fh:
            xyz = np.array([[float(r["x"]), float(r["y"]), float(r["z"])] for r in csv.DictReader(fh)])
        a = match_accuracy(xyz * (vs / est), truth, 1.0)     # positions at the true scale
        spectral = [c for c in v["tried"] if c["source"] == "spectrum"]
        chosen = [c for c in v["tried"] if c["outcome"].startswith("converged")]
        row["auto"] = {"voxel_size_A": round(est, 5), "error": round(est / vs - 1.0, 4),
                       "spectral_error": round(spectral[0]["voxel_size_A"] / vs - 1.0, 4) if spectral else None,
                       "chosen_start": chosen[0]["source"] if chosen else None,
                       "starts": [(c["source"], round(c["voxel_size_A"] / vs - 1.0, 3), c["outcome"],
                                   round(c["steps"][-1]["voxel_size_A"] / vs - 1.0, 3) if c["steps"] else None,
                                   round(c["steps"][-1]["correlation"], 3) if c["steps"] else None)
                                  for c in v["tried"]],
                       "detections": sum(len(c["steps"]) for c in v["tried"]),
                       "recall": round(float(a["recall"]), 4), "precision": round(float(a["precision"]), 4)}
    except InputError as exc:
        row["auto"] = {"refused": str(exc)[:160]}
    row["seconds"] = round(time.perf_counter() - t, 1)
    print(json.dumps(row), flush=True)
    return row


def summary(rows) -> dict:
    right = [r["right"] for r in rows if "warned" in r["right"]]
    wrong = [r["wrong"] for r in rows]
    auto = [r["auto"] for r in rows if "error" in r["auto"]]
    caught = [w for w in wrong if w.get("warned") or w.get("hint")]
    return {
        "trials": len(rows),
        "false_alarms_at_right_voxel": sum(r["warned"] for r in right), "detected_at_right_voxel": len(right),
        "wrong_caught": len(caught), "wrong_total": len(wrong),
        "wrong_silent": [w for w in wrong if not (w.get("warned") or w.get("hint"))],
        "auto_ok": len(auto), "auto_refused": len(rows) - len(auto),
        "auto_abs_error_median": float(np.median([abs(a["error"]) for a in auto])) if auto else None,
        "auto_abs_error_max": float(np.max([abs(a["error"]) for a in auto])) if auto else None,
        "spectral_first_within_5pct": sum(a["spectral_error"] is not None and abs(a["spectral_error"]) < 0.05
                                          for a in auto),
        "auto_detections_mean": float(np.mean([a["detections"] for a in auto])) if auto else None,
        "auto_recall_mean": float(np.mean([a["recall"] for a in auto])) if auto else None,
        "right_recall_mean": float(np.mean([r["recall"] for r in right])) if right else None,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trials", type=int, default=20, help="trials per random kind")
    ap.add_argument("--kinds", nargs="+", default=["synth", "tomo", "spa", "experimental"],
                    choices=["synth", "tomo", "spa", "experimental"])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    rows = []
    makers = {"synth": _synth, "tomo": _tomo, "spa": _spa}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for kind in args.kinds:
            cases = _experimental() if kind == "experimental" else (makers[kind](rng) for _ in range(args.trials))
            for spec, dmap, truth, el in cases:
                spec = {**spec, "_origin": tuple(float(v) for v in dmap.origin_A)}
                rows.append(run_case(spec, dmap, truth, el, rng, tmp))
    s = summary(rows)
    print(json.dumps(s, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "summary": s, "trials": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
