"""Benchmark ``ptnp compare`` on two ~100,000-atom models (target: under 10 s on 2 CPU cores).

Model A is an fcc Pt sphere of ~100k atoms with one flat facet; model B removes 5% of its atoms,
moves 3% by 2.5 Å in random directions, jitters the rest (σ = 0.1 Å per axis)
and is shuffled. Timed stages:

* ``pair_points`` alone (optimal one-to-one pairing within 1.76 Å),
* ``compare_points`` (pairing + moved/lost/gained + radial depth),
* ``register_points`` of B rotated and translated (``--register``),
* the command line end to end from CSV files: read both, compare, write
  ``pairs.csv``, ``compare.json``, PDB files, with and without the figure.

Run with 2 cores, e.g.::

    taskset -c 0,1 python benchmarks/bench_compare.py [--atoms 100000] [--json benchmarks/results/compare.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _timed(fn, repeat=1):
    best, out = np.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def make_pair(n_atoms, seed=0):
    from ptnp_gpu.synth import fcc_particle
    rng = np.random.default_rng(seed)
    # a sphere off the lattice origin with one flat facet: no point symmetry, so the
    # registration has a unique answer to check
    a = fcc_particle(int(n_atoms * 1.125), 3.924, "sphere", shift=(0.21, 0.37, 0.11))
    r = np.linalg.norm(a, axis=1).max()
    a = a[a @ np.array([0.6, 0.3, 0.74]) < 0.6 * r]
    n = len(a)
    idx = rng.permutation(n)
    n_lost, n_moved = round(0.05 * n), round(0.03 * n)
    moved = idx[n_lost:n_lost + n_moved]
    keep = idx[n_lost:]
    b = a.copy() + rng.normal(0, 0.1, a.shape)
    u = rng.normal(size=(n_moved, 3))
    b[moved] = a[moved] + 2.5 * u / np.linalg.norm(u, axis=1, keepdims=True)
    b = b[keep]
    return a, b[rng.permutation(len(b))]


def _write_csv(path, xyz):
    np.savetxt(path, np.column_stack([np.arange(1, len(xyz) + 1), xyz]), delimiter=",",
               header="id,x,y,z", comments="", fmt=["%d", "%.4f", "%.4f", "%.4f"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--atoms", type=int, default=100_000)
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--skip-figure", action="store_true")
    args = p.parse_args(argv)

    from ptnp_gpu.cli import main as cli_main
    from ptnp_gpu.compare import compare_points
    from ptnp_gpu.pairing import pair_points
    from ptnp_gpu.registration import register_points, rmsd_between_transforms_A
    from ptnp_gpu.synth import random_rotation

    a, b = make_pair(args.atoms)
    res = {"n_a": len(a), "n_b": len(b), "cpus": len(os.sched_getaffinity(0)), "machine": platform.processor()
           or platform.machine(), "python": platform.python_version(),
           "load_average_1min_at_start": os.getloadavg()[0]}
    print(f"A {len(a)} atoms, B {len(b)} atoms, {res['cpus']} CPU cores available")

    res["pair_points_s"], (ia, _, _) = _timed(lambda: pair_points(a, b, 1.76), 3)
    res["compare_points_s"], comp = _timed(lambda: compare_points(a, b, 1.76), 3)
    s = comp.summary()
    res["counts"] = {k: s[k] for k in ("n_common", "n_moved", "n_lost", "n_gained")}
    print(f"pair_points      {res['pair_points_s']:.2f} s ({len(ia)} pairs)")
    print(f"compare_points   {res['compare_points_s']:.2f} s {res['counts']}")

    rng = np.random.default_rng(1)
    rot, t = random_rotation(rng), np.array([5.0, -3.0, 8.0])
    res["register_points_s"], reg = _timed(lambda: register_points(b @ rot.T + t, a, cutoff_A=1.76))
    res["register_error_A"] = rmsd_between_transforms_A(b @ rot.T + t, reg.rotation, reg.translation_A,
                                                        rot.T, -rot.T @ t)
    print(f"register_points  {res['register_points_s']:.2f} s (transform error {res['register_error_A']:.4f} Å, "
          f"residual {reg.rmsd_A:.3f} Å)")

    tmp = Path(tempfile.mkdtemp(prefix="bench_compare_"))
    try:
        pa, pb = tmp / "a.csv", tmp / "b.csv"
        _write_csv(pa, a)
        _write_csv(pb, b)
        variants = [("cli_no_figure_s", ["--no-figure"]), ("cli_register_no_figure_s", ["--no-figure", "--register"])]
        if not args.skip_figure:
            variants.append(("cli_with_figure_s", []))
        for key, extra in variants:
            res[key], rc = _timed(lambda: cli_main(["compare", str(pa), str(pb), "--quiet", "--force",
                                                    "--out", str(tmp / "out"), *extra]))
            assert rc == 0
            print(f"{key:24s} {res[key]:.2f} s (read 2 CSV, compare, write pairs.csv/JSON/PDB)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
