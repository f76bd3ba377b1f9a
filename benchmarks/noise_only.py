"""Maps without a particle: every one should be refused, none turned into a model of noise.

Draws maps of noise alone with the traits of reconstructions: white noise, noise correlated
over 0.5-2 voxels, noise low-passed at 1.5-2.5 Å (blobs the size of atoms), the same sharpened
by 20-60 Å², with a smooth background, under a soft spherical mask, at 0.3-0.6 Å voxels. Runs
the default detection (with the blurred-map pass and the filter ladder, which detect the map
again at other filters) and prints, per map, whether it was refused and otherwise how many
"atoms" the model held and whether it carries the may-be-noise warning (a model without a
lattice whose hull holds no more density than the solvent, :mod:`ptnp_gpu.evidence`).

    python benchmarks/noise_only.py [--seed 0] [--trials 24] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from ptnp_gpu.deblur import sharpened
from ptnp_gpu.detect import detect_atoms
from ptnp_gpu.errors import InputError
from ptnp_gpu.mapio import DensityMap

KINDS = ("white", "correlated", "low-passed", "sharpened", "background", "masked")


def noise_map(rng, kind: str):
    """(spec, DensityMap) of one noise-only map of ``kind``."""
    vs = float(rng.choice([0.3, 0.358, 0.45, 0.6]))
    n = int(rng.integers(64, 129))
    d = rng.normal(size=(n, n, n))
    spec = {"kind": kind, "voxel_size_A": vs, "box": n}
    if kind == "correlated":
        spec["sigma_vox"] = round(float(rng.uniform(0.5, 2.0)), 2)
        d = gaussian_filter(d, spec["sigma_vox"])
    elif kind in ("low-passed", "sharpened", "masked"):
        spec["res_A"] = round(float(rng.uniform(1.5, 2.5)), 2)
        spec["sharpen_A2"] = round(float(rng.uniform(20, 60)), 1) if kind == "sharpened" else 0.0
        d = np.asarray(sharpened(d, vs, spec["sharpen_A2"], spec["res_A"]), dtype=np.float64)
        if kind == "masked":
            r = np.sqrt(((np.indices(d.shape) - (n - 1) / 2.0) ** 2).sum(0)) * vs
            radius = float(rng.uniform(0.25, 0.4)) * n * vs
            d = d * np.clip((radius + 3.0 - r) / 3.0, 0, 1)
            spec["mask_radius_A"] = round(radius, 1)
    elif kind == "background":
        spec["background"] = round(float(rng.uniform(0.3, 1.0)), 2)
        bg = gaussian_filter(rng.normal(size=d.shape), 6.0 / vs)
        d = d + spec["background"] * bg / bg.std()
    return spec, DensityMap((d / np.abs(d).max()).astype(np.float32), vs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    rows = []
    for k in range(args.trials):
        spec, m = noise_map(rng, KINDS[k % len(KINDS)])
        t = time.perf_counter()
        try:
            det = detect_atoms(m, "Pt")
            row = {"spec": spec, "refused": False, "n_atoms": int(len(det.xyz_A)),
                   "ladder": (det.params.get("ladder_pass") or {}).get("chosen_b_A2"),
                   "hull_contrast": det.params.get("hull_contrast"),
                   "warned": any("may be noise" in w for w in det.warnings)}
        except InputError as exc:
            row = {"spec": spec, "refused": True, "n_atoms": 0, "reason": str(exc).split("(")[0].strip()}
        row["seconds"] = round(time.perf_counter() - t, 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    n_ok = sum(r["refused"] for r in rows)
    n_warned = sum(bool(r.get("warned")) for r in rows)
    print(f"refused {n_ok} of {len(rows)} noise-only maps; the others ({[r['n_atoms'] for r in rows if not r['refused']]} "
          f"atoms) carry the may-be-noise warning: {n_warned} of {len(rows) - n_ok}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if n_ok + n_warned == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
