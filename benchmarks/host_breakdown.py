"""Host time of the GPU code path, function by function, on a machine without a GPU.

Runs one warm ``analyze`` (detection + statistics) of a synthetic map on the emulated CuPy
path (:mod:`ptnp_gpu.device_emulation`) with chosen package functions wrapped: each call's wall
time less the time spent inside emulated device calls is the library's own host time there
(Python, NumPy and Numba on host arrays), with the device calls (launches), host reads (syncs)
and host-to-device copies it made. On a GPU that host time, plus CuPy's own cost per launch, is
most of a warm analyze (H200, 256³: device busy ~34 ms of 113). Nested functions count in
their callers too. Not a GPU timing: a ranking of where the GPU path spends host time.

    python benchmarks/host_breakdown.py [--size 256] [--repeats 3] [--top 40] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_maps import synthetic_case  # noqa: E402
from wrapping import wrapped  # noqa: E402

# (module, function) wrapped wherever the package bound it by name
WRAPPED = [
    ("detect", "_detect_once"), ("detect", "_lattice_pass"), ("detect", "_lattice_sites_rescue"),
    ("detect", "_deblur_pass"), ("detect", "_prepared_raw"), ("detect", "_detached_atoms"),
    ("detect", "_noise_warning"), ("solvent", "_solvent_mask"), ("solvent", "_noise_spectrum"),
    ("solvent", "_noise_levels"), ("solvent", "_robust_level"), ("solvent", "_near_particle_level"),
    ("denoise", "denoise_map"), ("sweep", "sweep_scores"), ("sweep", "_stacked_centres"),
    ("components", "label26"), ("components", "label26_above"), ("components", "label_moments"), ("peaks", "rescue_rounds"),
    ("peaks", "_split"), ("peaks", "_residual_map"), ("precision", "peak_hessians"),
    ("precision", "filter_moments"), ("precision", "position_sd_A"), ("simulate", "render_atoms"),
    ("lattice_sites", "vacant_sites"), ("lattice", "fit_lattice_domains"),
    ("statistics", "_window_inputs"), ("statistics", "_window_fits"), ("statistics", "_host_geometry"),
    ("statistics", "_bonded_clusters"), ("statistics", "_cn_bins"), ("statistics", "_columns_to_host"),
    ("penetration", "fit_penetration"), ("baseline", "solvent_level_at_atoms"),
    ("displacement", "displacements_from_fits"), ("strain", "strain_tensor"), ("strain", "radial_strain"),
    ("strain", "strain_neighbourhood"), ("coordination", "neighbour_pairs"), ("neighbors", "pairs_within"),
    ("evidence", "hull_contrast"), ("scale", "check_model_scale"), ("deblur", "excess_blur_A2"),
]


def _timed(audit, table):
    """A wrapper maker for :func:`wrapping.wrapped`: each call's host ms (wall less the time
    inside emulated device calls), launches, host reads and uploads, summed into ``table``."""
    def make(orig, key):
        def wrapper(*a, **k):
            m0 = audit.mark()
            try:
                return orig(*a, **k)
            finally:
                m1 = audit.mark()
                rec = table.setdefault(key, {"calls": 0, "host_ms": 0.0, "launches": 0, "syncs": 0, "h2d": 0})
                rec["calls"] += 1
                rec["host_ms"] += 1e3 * ((m1["t"] - m0["t"]) - (m1["inside_s"] - m0["inside_s"]))
                for c in ("launches", "syncs", "h2d"):
                    rec[c] += m1[c] - m0[c]
        return wrapper
    return make


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from ptnp_gpu.detect import detect_atoms
    from ptnp_gpu.device_emulation import emulate
    from ptnp_gpu.statistics import compute_statistics
    case = synthetic_case(args.size)
    runs = []
    with emulate() as audit:
        det = detect_atoms(case.dmap, case.element)                       # warm-up
        compute_statistics(det.backend_map, det.xyz_A, case.element, labels=det.labels)
        for _ in range(max(1, args.repeats)):
            table = {}
            with wrapped(WRAPPED, _timed(audit, table)):
                a = audit.mark()
                det = detect_atoms(case.dmap, case.element)
                b = audit.mark()
                compute_statistics(det.backend_map, det.xyz_A, case.element, labels=det.labels)
                c = audit.mark()
            table["(detect_atoms)"] = {"calls": 1, "host_ms": 1e3 * ((b["t"] - a["t"]) - (b["inside_s"] - a["inside_s"])),
                                       "launches": b["launches"] - a["launches"], "syncs": b["syncs"] - a["syncs"],
                                       "h2d": b["h2d"] - a["h2d"]}
            table["(compute_statistics)"] = {"calls": 1,
                                             "host_ms": 1e3 * ((c["t"] - b["t"]) - (c["inside_s"] - b["inside_s"])),
                                             "launches": c["launches"] - b["launches"],
                                             "syncs": c["syncs"] - b["syncs"], "h2d": c["h2d"] - b["h2d"]}
            runs.append(table)
    keys = set().union(*runs)
    med = {k: {**runs[0].get(k, {}), "host_ms": float(np.median([r.get(k, {}).get("host_ms", 0.0) for r in runs]))}
           for k in keys}
    print(f"{case.name}: host ms outside emulated device calls (median of {len(runs)}), nested counted in callers")
    print(f"{'host ms':>8} {'calls':>5} {'launches':>8} {'syncs':>5} {'h2d':>4}  function")
    for k, v in sorted(med.items(), key=lambda kv: -kv[1]["host_ms"])[:args.top]:
        print(f"{v['host_ms']:8.2f} {v['calls']:5d} {v['launches']:8d} {v['syncs']:5d} {v['h2d']:4d}  {k}")
    if args.json:
        Path(args.json).write_text(json.dumps({"case": case.name, "functions": med}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
