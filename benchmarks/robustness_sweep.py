"""Detection on random particles: every element, sampling 0.25–0.75 Å, noise, background, mobile surfaces.

Each trial draws an element from the table, a shape and size, the voxel size,
white noise (0–0.3 × a core atom's peak), smooth background (0–0.5), surface
U (0, 0.1 or 0.3 Å²), box margin and origin; the map is made with
:func:`ptnp_gpu.synth.make_particle` (blur (8·voxel)², the reference's), then
detection and statistics run. Exceptions are failures; ``InputError`` (no
particle found) is recorded. Prints one line per trial and a summary by voxel
size; ``--json`` writes every trial.

    python benchmarks/robustness_sweep.py [--seed 0] [--trials 40] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from ptnp_gpu.detect import detect_atoms
from ptnp_gpu.elements import known_elements
from ptnp_gpu.errors import InputError
from ptnp_gpu.pairing import match_accuracy
from ptnp_gpu.statistics import compute_statistics
from ptnp_gpu.synth import make_particle


def _trial(rng):
    el = str(rng.choice(known_elements()))
    spec = dict(element=el, n_atoms=int(rng.integers(30, 900)), noise=float(rng.uniform(0, 0.3)),
                background=float(rng.uniform(0, 0.5)),
                voxel_size_A=float(rng.choice([0.25, 0.3, 0.358, 0.45, 0.6, 0.75])),
                u_surface_A2=float(rng.choice([0.0, 0.1, 0.3])), seed=int(rng.integers(1_000_000)),
                shape=str(rng.choice(["sphere", "cuboctahedron", "truncated_octahedron"])),
                margin_A=float(rng.uniform(4, 12)), origin_A=[float(v) for v in rng.uniform(-50, 50, 3)])
    row = {"spec": spec}
    t = time.perf_counter()
    try:
        p = make_particle(**spec)
        det = detect_atoms(p.map, el)
        acc = match_accuracy(det.xyz_A, p.xyz_A, 1.0)
        compute_statistics(det.backend_map, det.xyz_A, el, labels=det.labels)
        row.update(recall=float(acc["recall"]), precision=float(acc["precision"]), rmsd_A=float(acc["rmsd_A"]),
                   n_true=int(len(p.xyz_A)), n_found=int(len(det.xyz_A)))
    except InputError as exc:
        row.update(input_error=str(exc), recall=0.0, precision=float("nan"))
    except Exception:  # noqa: BLE001 - a crash is the finding
        row.update(exception=traceback.format_exc(limit=4), recall=0.0, precision=float("nan"))
    row["seconds"] = time.perf_counter() - t
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    rows = []
    for _ in range(args.trials):
        r = _trial(rng)
        s = r["spec"]
        res = (f"R {r['recall']:.3f} P {r['precision']:.3f} rmsd {r['rmsd_A']:.3f}" if "rmsd_A" in r
               else ("InputError: " + r["input_error"] if "input_error" in r else "EXCEPTION"))
        print(f"{s['element']:3s} n={s['n_atoms']:4d} voxel {s['voxel_size_A']:.3f} noise {s['noise']:.2f} "
              f"bg {s['background']:.2f} U {s['u_surface_A2']:.1f} {s['shape'][:5]} | {res} | {r['seconds']:.1f} s",
              flush=True)
        rows.append(r)
    print("\nvoxel (Å)  trials  median recall  min recall  median precision  crashes")
    for vs in sorted({r["spec"]["voxel_size_A"] for r in rows}):
        sel = [r for r in rows if r["spec"]["voxel_size_A"] == vs]
        rec = np.array([r["recall"] for r in sel])
        prec = np.array([r["precision"] for r in sel], float)
        print(f"{vs:9.3f}  {len(sel):6d}  {np.median(rec):13.3f}  {rec.min():10.3f}  "
              f"{np.nanmedian(prec) if np.isfinite(prec).any() else float('nan'):16.3f}  "
              f"{sum('exception' in r for r in sel):7d}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if any("exception" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
