"""Throughput of ``ptnp batch``: maps per minute for 1 and 2 CPU workers, and per GPU.

Makes ``--maps`` small simulated Pt particles (``--atoms`` atoms each, seeds
0..n-1), then runs :func:`ptnp_gpu.batch.run_batch` on them into a fresh
folder for each configuration. A short warm-up batch first fills Numba's
on-disk cache, so the timed runs measure analysis, not compilation.

Figures per configuration:

* ``maps_per_min``: maps / wall time of the whole ``run_batch`` call
  (cluster start, checksums, analysis, aggregation): what a user sees;
* ``maps_per_min_capacity``: workers × 60 / mean time of one map inside a
  worker: the rate of a long batch, without cluster start-up and tail;
* ``analyze_s_median``: median time of one map's analysis inside a worker;
* ``first_result_s``: from the call to the first finished map (start-up).

Usage::

    python benchmarks/bench_batch.py --maps 8 --out benchmarks/results/batch_cpu.json
    python benchmarks/bench_batch.py --configs gpu --out benchmarks/results/batch_gpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path


def make_maps(folder: Path, n: int, n_atoms: int) -> list[Path]:
    from ptnp_gpu.synth import make_particle, write_particle
    paths = []
    for i in range(n):
        stem = folder / f"np{i:03d}"
        write_particle(make_particle(n_atoms=n_atoms, seed=i, noise=0.08), stem)
        paths.append(stem.with_suffix(".mrc"))
    return paths


def _finish_times(out: Path) -> list[float]:
    man = json.loads((out / "manifest.json").read_text())["maps"]
    return [r.get("elapsed_s") for r in man.values() if r.get("status") == "done"]


def run_config(maps: list[Path], work: Path, label: str, **kw) -> dict:
    from ptnp_gpu import batch
    out = work / f"out-{label}"
    finished = []

    t0 = time.perf_counter()
    res = batch.run_batch(maps, out, callback=lambda p, rec: finished.append(time.perf_counter() - t0),
                          **kw)
    wall = time.perf_counter() - t0
    n = res.n_analysed
    analyze = [t for t in _finish_times(out) if t is not None]
    n_workers = res.cluster.get("n_workers") or 1
    capacity = n_workers * 60.0 / statistics.mean(analyze) if analyze else None
    backends = sorted({r.get("backend") for r in res.rows if r.get("backend")})
    return {"config": label, "n_maps": len(maps), "n_analysed": n, "n_failed": res.n_failed,
            "wall_s": round(wall, 2), "maps_per_min": round(n / wall * 60.0, 2),
            "maps_per_min_capacity": None if capacity is None else round(capacity, 2),
            "first_result_s": round(finished[0], 2) if finished else None,
            "analyze_s_median": round(statistics.median(analyze), 2) if analyze else None,
            "cluster": res.cluster, "backends": backends}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maps", type=int, default=8, help="maps per configuration (default 8)")
    ap.add_argument("--atoms", type=int, default=200, help="atoms per particle (default 200)")
    ap.add_argument("--configs", default="cpu1,cpu2",
                    help="comma list of cpuN (N CPU workers), gpu (one worker per GPU) and gpuN "
                         "(N workers shared round-robin over the GPUs); default cpu1,cpu2")
    ap.add_argument("--workdir", help="folder for maps and results (default: a temporary one)")
    ap.add_argument("--out", help="write the figures as JSON here")
    a = ap.parse_args(argv)

    from ptnp_gpu import __version__
    from ptnp_gpu.backend import info
    load0 = round(os.getloadavg()[0], 2)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench_batch_"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    maps = make_maps(work / "maps", a.maps, a.atoms)
    print(f"made {len(maps)} maps of {a.atoms} atoms in {time.perf_counter() - t:.1f} s ({work})")

    results = []
    for cfg in [c.strip() for c in a.configs.split(",") if c.strip()]:
        if cfg.startswith("gpu"):
            kw = {"gpus": "auto", "n_workers": int(cfg[3:]) if cfg[3:] else None}
            if os.environ.get("PTNP_BACKEND", "").lower() == "numpy" or \
                    batch_plan_kind(len(maps)) != "gpu":
                print(f"{cfg}: no usable GPU here; skipped")
                continue
        elif cfg.startswith("cpu"):
            kw = {"gpus": "none", "n_workers": int(cfg[3:] or 1)}
        else:
            ap.error(f"unknown configuration {cfg!r}")
        run_config(maps[:2], work, f"warmup-{cfg}", **kw)      # fill the Numba cache, start CUDA once
        r = run_config(maps, work, cfg, **kw)
        n_gpu = len(set(r["cluster"].get("devices") or [])) if cfg.startswith("gpu") else 0
        if n_gpu:
            r["maps_per_min_per_gpu"] = round(r["maps_per_min"] / n_gpu, 2)
        results.append(r)
        print(f"{cfg}: {r['maps_per_min']} maps/min end to end, {r['maps_per_min_capacity']} capacity, "
              f"median {r['analyze_s_median']} s per map ({r['wall_s']} s for {r['n_analysed']} maps; "
              f"backend {r['backends']})")

    doc = {"benchmark": "bench_batch", "date": datetime.now().isoformat(timespec="seconds"),
           "ptnp_gpu": __version__, "host": platform.node(), "cpu_count": os.cpu_count(),
           "usable_cores": len(os.sched_getaffinity(0)), "device": info().get("device"),
           "load_avg_1min": {"start": load0, "end": round(os.getloadavg()[0], 2)},
           "n_maps": a.maps, "n_atoms": a.atoms, "results": results}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(doc, indent=1))
        print(f"wrote {a.out}")
    return 0


def batch_plan_kind(n_maps: int) -> str:
    from ptnp_gpu.batch import plan_workers
    return plan_workers(n_maps, gpus="auto")["kind"]


if __name__ == "__main__":
    raise SystemExit(main())
