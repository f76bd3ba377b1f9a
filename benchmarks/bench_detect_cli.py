"""Wall time and peak memory of the whole ``ptnp detect`` / ``ptnp analyze`` command.

Reproduces the reference's two timing cases (160³ with ~561 atoms, 200³ with
~2,057 atoms, 0.358 Å/voxel) with ``ptnp simulate``-style maps, runs the
command in a fresh process each time (import, read, detect, write: what a
user waits for), and reports the median wall time, the child's peak resident
memory, and the accuracy against the truth.

    python benchmarks/bench_detect_cli.py [--repeats 3] [--command detect|analyze] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

CASES = (("160^3, 561 atoms", 561, 160), ("200^3, 2057 atoms", 2057, 200))
REFERENCE_S = {"160^3, 561 atoms": 33.0, "200^3, 2057 atoms": 225.0}   # reference on 2 CPU cores


def run_once(cmd):
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.execvp(cmd[0], cmd)
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed")
    return wall, ru.ru_maxrss / 1024.0   # MiB (Linux reports KiB)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--command", default="detect", choices=("detect", "analyze"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from ptnp_gpu.models import read_model
    from ptnp_gpu.pairing import match_accuracy
    from ptnp_gpu.synth import make_particle, write_particle
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, n_atoms, box in CASES:
            p = make_particle(n_atoms=n_atoms, box=(box, box, box), seed=3)
            paths = write_particle(p, Path(tmp) / f"b{box}")
            walls, rss = [], []
            for _ in range(args.repeats):
                res = Path(tmp) / f"r{box}"
                w, m = run_once([sys.executable, "-m", "ptnp_gpu", args.command, paths["map"], "--out", str(res),
                                 "--quiet", "--force"])
                walls.append(w)
                rss.append(m)
            summ = json.loads((res / "summary.json").read_text())
            acc = match_accuracy(read_model(res).xyz_A, p.xyz_A, 1.0)
            row = {"case": name, "command": args.command, "n_true": len(p.xyz_A), "n_found": summ["n_atoms"],
                   "recall": round(acc["recall"], 4), "precision": round(acc["precision"], 4),
                   "rmsd_A": round(acc["rmsd_A"], 4), "wall_s_median": round(statistics.median(walls), 2),
                   "wall_s_all": [round(w, 2) for w in walls], "peak_rss_MiB": round(max(rss), 1),
                   "stage_s": summ["times_s"], "backend": summ["backend"], "cpu_count": os.cpu_count(),
                   "reference_s": REFERENCE_S[name],
                   "speedup_vs_reference": round(REFERENCE_S[name] / statistics.median(walls), 1)}
            print(json.dumps(row))
            out.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.exit(main())
