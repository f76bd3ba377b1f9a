"""GPU check of the statistics: CuPy vs NumPy parity and timing (needs a CUDA device).

Runs :func:`compute_statistics` on the same synthetic particle (about 800
atoms, 224³ map) with the NumPy and the CuPy backend, compares every
per-atom column (NaN pattern and values), exercises the ``labels`` path and
:func:`write_statistics` with a device map, and times both backends (median
of repeats after a warm-up).

Usage::

    python benchmarks/gpu_parity_stats.py [--atoms 800] [--box 224] [--repeats 5] [--out FILE.json]

Exit status 1 when a column differs beyond tolerance.
"""
from __future__ import annotations

import argparse
import json
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
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from ptnp_gpu import backend as be
    from ptnp_gpu.mapio import DensityMap
    from ptnp_gpu.statistics import compute_statistics, write_statistics
    from ptnp_gpu.synth import make_particle
    npb, cpb = be.get("numpy"), be.get("cupy")
    cp = cpb.xp
    p = make_particle(n_atoms=args.atoms, box=(args.box,) * 3, seed=0)
    dmap_gpu = DensityMap(cp.asarray(p.map.data), p.map.voxel_size_A, p.map.origin_A)
    res = {"n_atoms": int(len(p.xyz_A)), "box": [args.box] * 3, "device": be.info().get("device")}

    def timed(dm, backend, **kw):
        compute_statistics(dm, p.xyz_A, "Pt", backend=backend, **kw)     # warm-up
        ts = []
        for _ in range(args.repeats):
            be.synchronize(backend)
            t = time.perf_counter()
            st = compute_statistics(dm, p.xyz_A, "Pt", backend=backend, **kw)
            be.synchronize(backend)
            ts.append(time.perf_counter() - t)
        return st, ts

    s_np, t_np = timed(p.map, npb)
    s_cp, t_cp = timed(dmap_gpu, cpb)
    res["numpy_median_s"], res["cupy_median_s"] = float(np.median(t_np)), float(np.median(t_cp))
    res["cupy_stages_s"] = s_cp.times_s
    res["numpy_stages_s"] = s_np.times_s
    bad = {}
    diffs = {}
    for k, a in s_np.columns.items():
        b = s_cp.columns[k]
        if a.dtype.kind in "USO":
            if not np.array_equal(a, b):
                bad[k] = "strings differ"
            continue
        a, b = np.asarray(a, float), np.asarray(b, float)
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            bad[k] = f"NaN pattern differs ({int(np.isnan(a).sum())} vs {int(np.isnan(b).sum())})"
            continue
        ok = np.isfinite(a)
        d = float(np.max(np.abs(a[ok] - b[ok]))) if ok.any() else 0.0
        diffs[k] = d
        scale = float(np.max(np.abs(a[ok]))) if ok.any() else 1.0
        if d > 1e-6 * max(scale, 1.0):
            bad[k] = f"max |Δ| {d:.3g} (scale {scale:.3g})"
    res["max_abs_diff"] = diffs
    res["mismatches"] = bad
    # labels path on the device
    vox = np.rint(p.map.xyz_A_to_voxel(p.xyz_A)).astype(int)
    lab = np.zeros(p.map.shape, np.int32)
    lab[vox[:, 2], vox[:, 1], vox[:, 0]] = np.arange(1, len(vox) + 1)
    s_lab_np = compute_statistics(p.map, p.xyz_A, "Pt", labels=lab, backend=npb)
    s_lab_cp = compute_statistics(dmap_gpu, p.xyz_A, "Pt", labels=cp.asarray(lab))
    res["labels_backend_default"] = s_lab_cp.backend
    d = np.abs(s_lab_np.columns["intensity_peak_z"] - s_lab_cp.columns["intensity_peak_z"])
    res["labels_peak_max_abs_diff"] = float(np.nanmax(d))
    if s_lab_cp.backend != "cupy" or res["labels_peak_max_abs_diff"] > 1e-5:
        bad["labels"] = f"backend {s_lab_cp.backend}, peak diff {res['labels_peak_max_abs_diff']:.3g}"
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        files = write_statistics(tmp, dmap_gpu, s_cp)
        res["write_statistics_s"] = time.perf_counter() - t
        res["files_written"] = len(files)
    print(json.dumps(res, indent=2, default=float))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2, default=float))
    print("PARITY OK" if not bad else f"PARITY FAILED: {bad}")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
