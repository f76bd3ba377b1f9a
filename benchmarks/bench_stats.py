"""Benchmark: per-atom statistics for ~800 atoms on a 224³ map.

Times :func:`ptnp_gpu.statistics.compute_statistics` (lattice fit, CN/GCN,
strain, batched window fits, validation correlation, peak intensity, Eq. 1
fits) on a synthetic Pt particle, as the median of several repeats after one
warm-up, and, separately, :func:`write_statistics` (files and figures).

Usage::

    python benchmarks/bench_stats.py [--atoms 800] [--box 224] [--repeats 5] [--backend numpy|cupy]
                                     [--out benchmarks/results/bench_stats.json]

Target: under 5 s on 2 CPU cores (``taskset -c 0,1`` to pin).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--atoms", type=int, default=800)
    ap.add_argument("--box", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backend", default=None, help="numpy or cupy (default: the import-time backend)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)

    from ptnp_gpu import backend as be
    from ptnp_gpu.statistics import compute_statistics, write_statistics
    from ptnp_gpu.synth import make_particle
    backend = be.get(args.backend) if args.backend else be.default()
    t = time.perf_counter()
    p = make_particle(n_atoms=args.atoms, box=(args.box,) * 3, seed=0)
    t_make = time.perf_counter() - t
    dmap = p.map
    if backend.is_gpu:   # the map lives on the device, as after detection
        dmap = type(dmap)(backend.xp.asarray(dmap.data), dmap.voxel_size_A, dmap.origin_A)
    compute_statistics(dmap, p.xyz_A, "Pt", backend=backend)      # warm-up (imports, JIT, caches)
    times, parts = [], []
    for _ in range(args.repeats):
        be.synchronize(backend)
        t = time.perf_counter()
        st = compute_statistics(dmap, p.xyz_A, "Pt", backend=backend)
        be.synchronize(backend)
        times.append(time.perf_counter() - t)
        parts.append(st.times_s)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_statistics(tmp, p.map, st)
        t_write = time.perf_counter() - t
    res = {
        "benchmark": "compute_statistics", "n_atoms": int(len(p.xyz_A)), "box": [args.box] * 3,
        "backend": backend.name, "device": be.info().get("device"), "cpu_count": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "repeats": args.repeats, "median_s": float(np.median(times)), "min_s": float(np.min(times)),
        "all_s": [round(x, 4) for x in times],
        "stages_median_s": {k: float(np.median([pp[k] for pp in parts])) for k in parts[0]},
        "write_statistics_s": t_write, "make_particle_s": t_make,
        "target_s": 5.0,
    }
    print(f"compute_statistics: {res['n_atoms']} atoms, {args.box}³ map, backend {backend.name}, "
          f"{res['affinity_cores']} cores: median {res['median_s']:.3f} s (min {res['min_s']:.3f}, "
          f"{args.repeats} repeats; target < 5 s)")
    print("  stages (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in res["stages_median_s"].items()))
    print(f"  write_statistics (files + figures): {t_write:.2f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
        print(f"  written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
