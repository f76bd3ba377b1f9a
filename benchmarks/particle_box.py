"""Detection in the particle's box of maps that are mostly solvent, against the whole map.

Each trial draws a particle and renders it with a generous solvent margin on every side (25-45 Å
per axis by default: the particle holds a few % of the box, as in generously boxed
reconstructions), by gemmi's density calculator (``gemmi_maps.make_map``: another program's
atoms, anisotropic U, smooth background, white or correlated noise, half low-passed) or by our
own simulator (``ptnp_gpu.synth.make_particle``: noise 0.05-0.25, background 0-0.3, surface U
0.1-0.6 Å²). The map is detected twice, ``particle_box=True`` (the default: the particle's box
only, :mod:`ptnp_gpu.particle_box`) and ``particle_box=False`` (the whole map), and both are
scored against the truth (recall, precision, RMSD within 1 Å) and timed (wall seconds; NumPy
backend unless ``--backend cupy``). Prints a line per trial and the summary; ``--json`` writes every row.

    python benchmarks/particle_box.py [--renderer gemmi|ours|both] [--trials 8] [--seed 0]
        [--margin-A 25 45] [--backend numpy|cupy] [--json out.json]
    python benchmarks/particle_box.py --parity emulated|cupy [--trials 3] [--seed 1]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ptnp_gpu.detect import detect_atoms  # noqa: E402
from ptnp_gpu.errors import InputError  # noqa: E402
from ptnp_gpu.pairing import match_accuracy  # noqa: E402
from ptnp_gpu.synth import make_particle  # noqa: E402


def _gemmi_trial(rng, margin):
    import gemmi_maps
    name, element, rel, els = gemmi_maps.draw_particle(rng, None)
    kind = "E" if rng.uniform() < 0.5 else "X"
    spec, dmap, truth, _ = gemmi_maps.make_map(rng, rel, els, element, kind, margin_A=margin)
    spec["particle"] = name
    return spec, dmap, truth, element


def _our_trial(rng, margin):
    el = str(rng.choice(["Pt", "Au", "Pd", "Ag", "Ni"]))
    spec = dict(renderer="ptnp_gpu", element=el, n_atoms=int(rng.integers(150, 1500)),
                noise=round(float(rng.uniform(0.05, 0.25)), 3), background=round(float(rng.uniform(0, 0.3)), 2),
                u_surface_A2=round(float(rng.uniform(0.1, 0.6)), 2), voxel_A=round(float(rng.uniform(0.3, 0.5)), 3),
                margin_A=round(float(np.mean(margin)), 1))
    p = make_particle(n_atoms=spec["n_atoms"], element=el, noise=spec["noise"], background=spec["background"],
                      u_surface_A2=spec["u_surface_A2"], voxel_size_A=spec["voxel_A"], margin_A=spec["margin_A"],
                      seed=int(rng.integers(1 << 30)))
    spec["box_zyx"] = list(p.map.shape)
    return spec, p.map, p.xyz_A, el


def _detect(dmap, element, particle_box, backend="numpy"):
    t = time.perf_counter()
    try:
        det = detect_atoms(dmap, element, backend=backend, particle_box=particle_box)
    except InputError as exc:
        return None, time.perf_counter() - t, str(exc)
    return det, time.perf_counter() - t, None


def _score(det, truth):
    if det is None:
        return {"recall": 0.0, "precision": 0.0, "f1": 0.0, "rmsd_A": None, "n_found": 0}
    a = match_accuracy(det.xyz_A, truth)
    f1 = 2 * a["recall"] * a["precision"] / max(a["recall"] + a["precision"], 1e-12)
    return {"recall": a["recall"], "precision": a["precision"], "f1": f1, "rmsd_A": a["rmsd_A"],
            "n_found": a["n_found"]}


def _same_atoms(a, b, tol_A=1e-3):
    if a is None or b is None:
        return a is None and b is None
    if len(a.xyz_A) != len(b.xyz_A):
        return False
    m = match_accuracy(a.xyz_A, b.xyz_A, cutoff_A=tol_A)
    return m["n_matched"] == len(a.xyz_A)


def _parity(args, renderers) -> int:
    """NumPy against the emulated CuPy path or CuPy on each drawn map; prints a line per map."""
    import contextlib

    from ptnp_gpu.device_emulation import emulate
    same_all = n = 0
    for r in renderers:
        rng = np.random.default_rng([args.seed, renderers.index(r) if args.renderer == "both" else 0])
        for k in range(args.trials):
            margin = rng.uniform(*args.margin_A, 3)
            spec, dmap, truth, element = (_gemmi_trial if r == "gemmi" else _our_trial)(rng, margin)
            host = detect_atoms(dmap, element, backend="numpy")
            with emulate() if args.parity == "emulated" else contextlib.nullcontext():
                dev = detect_atoms(dmap, element, backend=None if args.parity == "emulated" else "cupy")
            same = _same_atoms(host, dev)
            shift = (float(np.abs(host.xyz_A - dev.xyz_A).max()) if len(host.xyz_A) == len(dev.xyz_A) else None)
            n += 1
            same_all += same
            print(f"{r:6s} {k:2d} {dmap.shape} atoms {len(host.xyz_A)} / {len(dev.xyz_A)}  same {same}  max shift "
                  f"{shift}  same box {host.params['particle_box'] == dev.params['particle_box']}  "
                  f"{host.params['particle_box']}", flush=True)
    print(f"{same_all} of {n} maps identical within 1e-3 Å")
    return 0 if same_all == n else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--renderer", choices=["gemmi", "ours", "both"], default="both")
    ap.add_argument("--trials", type=int, default=8, help="trials per renderer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--margin-A", type=float, nargs=2, default=(25.0, 45.0), help="solvent beyond the atoms, Å")
    ap.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    ap.add_argument("--parity", choices=["emulated", "cupy"],
                    help="instead: each map's detection (in its box) on NumPy against the emulated CuPy path "
                         "(no GPU needed) or CuPy, atoms matched within 1e-3 Å")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    make_particle(n_atoms=60, noise=0.1, seed=1)                 # warm-up: Numba compiles
    detect_atoms(make_particle(n_atoms=80, seed=1).map, "Pt", backend=args.backend)
    renderers = ["gemmi", "ours"] if args.renderer == "both" else [args.renderer]
    if args.parity:
        return _parity(args, renderers)
    rows = []
    for r in renderers:
        rng = np.random.default_rng([args.seed, renderers.index(r) if args.renderer == "both" else 0])
        for k in range(args.trials):
            margin = rng.uniform(*args.margin_A, 3)
            spec, dmap, truth, element = (_gemmi_trial if r == "gemmi" else _our_trial)(rng, margin)
            boxed, t_box, err_box = _detect(dmap, element, True, args.backend)
            whole, t_whole, err_whole = _detect(dmap, element, False, args.backend)
            row = {"renderer": r, "trial": k, "spec": spec, "voxels": int(np.prod(dmap.shape)),
                   "particle_box": None if boxed is None else boxed.params.get("particle_box"),
                   "box": {**_score(boxed, truth), "seconds": t_box, "refused": err_box},
                   "whole": {**_score(whole, truth), "seconds": t_whole, "refused": err_whole},
                   "same_atoms": _same_atoms(boxed, whole)}
            rows.append(row)
            pb = row["particle_box"]
            share = ("whole" if not pb else f"fallback ({pb['fallback']})" if "fallback" in pb
                     else f"box {pb['share_of_map']:.3f} of the map")
            b, w = row["box"], row["whole"]
            print(f"{r:6s} {k:2d} {dmap.shape} {len(truth):5d} atoms  box F1 {b['f1']:.4f} ({t_box:5.2f} s)  "
                  f"whole F1 {w['f1']:.4f} ({t_whole:5.2f} s)  same atoms {row['same_atoms']}  {share}", flush=True)
    f1b = np.array([r["box"]["f1"] for r in rows])
    f1w = np.array([r["whole"]["f1"] for r in rows])
    ratio = np.array([r["whole"]["seconds"] / r["box"]["seconds"] for r in rows])
    cut = [r for r in rows if r["particle_box"] and "fallback" not in r["particle_box"]]
    summary = {"trials": len(rows), "mean_f1_box": float(f1b.mean()), "mean_f1_whole": float(f1w.mean()),
               "better": int((f1b > f1w + 1e-9).sum()), "worse": int((f1b < f1w - 1e-9).sum()),
               "same_atoms": int(sum(r["same_atoms"] for r in rows)), "cut": len(cut),
               "fallbacks": sum(1 for r in rows if r["particle_box"] and "fallback" in r["particle_box"]),
               "median_speedup": float(np.median(ratio)), "min_speedup": float(ratio.min()),
               "max_speedup": float(ratio.max()),
               "median_box_share": float(np.median([r["particle_box"]["share_of_map"] for r in cut])) if cut else None}
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "summary": summary, "rows": rows}, indent=1,
                                              default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
