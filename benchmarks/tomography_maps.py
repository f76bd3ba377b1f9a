"""Detection on simulated electron tomograms (another imaging model than our rendered maps).

Each trial renders a Pt particle (our renderer, noise-free), takes a single-axis tilt
series of it (:mod:`ptnp_gpu.tomography`: projections along the beam, Poisson counting
noise with a dark level, a limited tilt range), reconstructs it by filtered back-projection
or by SIRT with positivity (as atomic electron tomography does), and detects the atoms in
the reconstruction. Drawn per trial: 200-1,200 atoms, surface U 0.1/0.2/0.4 Å², tilt range
±55-75° in 1.5-3.5° steps, 300-20,000 counts at the brightest projection pixel, 2-10% dark
counts, FBP or SIRT (15-40 iterations; with ``--support-pad`` SIRT also zeroes everything beyond
that distance from the atoms, as GENFIRE-like reconstructions do). Prints one JSON line per trial (recall, precision
within 1 Å; refusals are recall 0) and the mean F1 by method.

    python benchmarks/tomography_maps.py [--seed 0] [--trials 16] [--json out.json]
        [--experimental]   # also the published PdPt particle (5,377 atoms), when ../shared has it
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
from ptnp_gpu.mapio import DensityMap  # noqa: E402
from ptnp_gpu.pairing import match_accuracy  # noqa: E402
from ptnp_gpu.synth import make_particle  # noqa: E402
from ptnp_gpu.tomography import simulate_tomogram  # noqa: E402


def draw_spec(rng) -> dict:
    """One trial's imaging conditions."""
    return dict(n_atoms=int(rng.integers(200, 1200)), u_surface_A2=float(rng.choice([0.1, 0.2, 0.4])),
                max_tilt_deg=round(float(rng.uniform(55, 75)), 1), step_deg=round(float(rng.uniform(1.5, 3.5)), 2),
                counts_at_peak=round(float(np.exp(rng.uniform(np.log(300), np.log(20000)))), 0),
                background_fraction=round(float(rng.uniform(0.02, 0.10)), 3),
                method=str(rng.choice(["fbp", "sirt"])), iterations=int(rng.integers(15, 41)),
                seed=int(rng.integers(1 << 30)))


def tomogram(volume, spec, support=None):
    """Reconstruction of ``volume`` (z, y, x) under ``spec`` (``support``: SIRT's support constraint)."""
    return simulate_tomogram(volume, max_tilt_deg=spec["max_tilt_deg"], step_deg=spec["step_deg"],
                             counts_at_peak=spec["counts_at_peak"], background_fraction=spec["background_fraction"],
                             method=spec["method"], iterations=spec["iterations"], support=support,
                             rng=spec["seed"])


def _support(p, pad_A):
    """A support 0/1 volume: within ``pad_A`` of the particle's atoms (its envelope)."""
    from scipy.ndimage import distance_transform_edt
    vs = float(p.map.voxel_size_A[0])
    occ = np.zeros(p.map.shape, bool)
    ijk = np.clip(np.round((p.xyz_A - p.map.origin_A) / vs).astype(int), 0, np.array(p.map.shape)[::-1] - 1)
    occ[ijk[:, 2], ijk[:, 1], ijk[:, 0]] = True
    return (distance_transform_edt(~occ) * vs < pad_A).astype(np.float32)


def score(spec, dmap, truth_A, extra=None, **opts) -> dict:
    """Detect Pt atoms in ``dmap`` and score them against ``truth_A`` (one printed row, with
    ``extra``'s items)."""
    row = {"spec": spec, **(extra or {})}
    t = time.perf_counter()
    try:
        a = match_accuracy(detect_atoms(dmap, "Pt", **opts).xyz_A, truth_A, 1.0)
        row.update(recall=round(float(a["recall"]), 4), precision=round(float(a["precision"]), 4),
                   rmsd_A=round(float(a["rmsd_A"]), 4))
    except InputError as exc:
        row.update(recall=0.0, precision=None, refused=str(exc))
    r, q = row["recall"], row["precision"]
    row["f1"] = 0.0 if not r or not q else round(2 * r * q / (r + q), 4)
    row["detect_s"] = round(time.perf_counter() - t, 2)
    print(json.dumps(row), flush=True)
    return row


def synthetic_trial(rng, support_pad_A=None) -> dict:
    spec = draw_spec(rng)
    p = make_particle(n_atoms=spec["n_atoms"], seed=spec["seed"], margin_A=8, noise=0.0, background=0.0,
                      u_surface_A2=spec["u_surface_A2"])
    support = None
    if support_pad_A and spec["method"] == "sirt":
        spec["support_pad_A"] = support_pad_A
        support = _support(p, support_pad_A)
    rec = tomogram(p.map.data.astype(np.float32), spec, support)
    return score(spec, DensityMap(rec, p.map.voxel_size_A, p.map.origin_A), p.xyz_A)


def experimental_trial(spec) -> dict | None:
    """The published PdPt particle rendered as Pt (our renderer) and imaged under ``spec``."""
    import bench_maps
    path = bench_maps.DATA_DIR / "PdPt_EPB_5377.xyz"
    if not path.exists():
        print(f"skipped: {path} not found", flush=True)
        return None
    from ptnp_gpu.simulate import reference_blur_A2, render_atoms
    case = bench_maps.pdpt_case()                       # its box and positions; rendered again noise-free
    vs = float(case.dmap.voxel_size_A[0])
    vol = render_atoms(case.xyz_A, case.dmap.shape, vs, case.dmap.origin_A, "Pt",
                       b_extra_A2=reference_blur_A2(vs), u_iso_A2=np.full(case.n_atoms, 0.04), backend="numpy")
    rec = tomogram(np.asarray(vol, np.float32), spec)
    return score({**spec, "particle": "PdPt_5377 rendered as Pt"},
                 DensityMap(rec, case.dmap.voxel_size_A, case.dmap.origin_A), case.xyz_A)


def summary(rows) -> dict:
    out = {}
    for method in ("fbp", "sirt"):
        f = [r["f1"] for r in rows if r["spec"]["method"] == method]
        if f:
            out[method] = {"trials": len(f), "mean_f1": round(float(np.mean(f)), 4), "min_f1": round(float(np.min(f)), 4)}
    if rows:
        out["all"] = {"trials": len(rows), "mean_f1": round(float(np.mean([r["f1"] for r in rows])), 4)}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--experimental", action="store_true", help="also image the published PdPt particle")
    ap.add_argument("--support-pad", type=float, default=None, metavar="A",
                    help="SIRT with a support constraint: zero beyond this distance from the atoms (Å)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    rows = [synthetic_trial(rng, args.support_pad) for _ in range(args.trials)]
    if args.experimental:
        for method in ("fbp", "sirt"):
            spec = dict(max_tilt_deg=70.0, step_deg=2.0, counts_at_peak=2000.0, background_fraction=0.05,
                        method=method, iterations=30, seed=args.seed, u_surface_A2=None, n_atoms=5377)
            row = experimental_trial(spec)
            if row is not None:
                rows.append(row)
    s = summary(rows)
    for k, v in s.items():
        print(f"{k}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": s, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
