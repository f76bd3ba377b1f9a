"""Stop 31's GPU replacements against the cupyx calls they replaced: time and equality, on a device.

On the 256³ synthetic Pt sphere (``bench_maps.synthetic_case``), per operation: the host time until
the call returns (what a host-bound pipeline pays) and the wall time to a synchronised device
(what a read right after it pays), medians of ``--repeats`` warm calls, and whether the outputs
agree (labels and counts exactly; filters to float32 rounding, cupyx summing float32 input in
float32):

* the sweep's labelling of 16 stacked thresholds of the particle's box, and of one threshold:
  cupyx ``label`` on the boolean stack (and the compare that builds it) against
  ``gpu_kernels.label_above`` (``kernels/label_cc.cu``);
* the crop box's three occupancy profiles of ``C > t`` on the whole map: three ``any`` reductions
  against ``gpu_kernels.occupancy_above``;
* Gaussian and uniform filters as the detection calls them: cupyx against
  ``ptnp_gpu.device_ndimage``;
* the pair search of the atoms within 1.2 bonds and within the sweep scorer's 6.3 Å (after only);
* the sweep scorer's pair sums of a table: the pair list, ``interp`` and ``bincount`` against
  ``gpu_kernels.pair_table_sums``;
* the baseline's solvent mask on its ~1 Å grid: cupyx ``distance_transform_edt`` > 3.5 Å against
  ``gpu_kernels.outside_balls``;
* the map at the atoms: cupyx ``map_coordinates`` (order 1, nearest) against ``gpu_kernels.linear_at``.

Needs CuPy and a GPU; prints a table and one JSON line (``--json`` writes it too).

    python benchmarks/bench_kernels_ab.py [--repeats 7] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _timed(cp, fn, repeats):
    """(median host ms to return, median wall ms to a synchronised device, last output)."""
    for _ in range(2):
        out = fn()
    cp.cuda.Device().synchronize()
    host, wall = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        t1 = time.perf_counter()
        cp.cuda.Device().synchronize()
        t2 = time.perf_counter()
        host.append(1e3 * (t1 - t0))
        wall.append(1e3 * (t2 - t0))
    return statistics.median(host), statistics.median(wall), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import cupy as cp
    import cupyx.scipy.ndimage as cndi

    from bench_maps import synthetic_case
    from ptnp_gpu import device_ndimage as dn
    from ptnp_gpu import gpu_kernels as gk

    case = synthetic_case(256)
    full = cp.asarray(case.dmap.data, dtype=cp.float32)
    C = dn.gaussian_filter(full, 1.0)                      # a smooth map, as the denoised one
    box = cp.ascontiguousarray(C[40:216, 40:216, 40:216])
    vals = cp.asnumpy(box[::4, ::4, ::4]).ravel()
    ts = np.quantile(vals, np.linspace(0.90, 0.99, 16)).astype(np.float32)
    s26 = np.ones((3, 3, 3), bool)
    rows = []

    def row(name, before, after, same):
        rec = {"op": name, "after_host_ms": after[0], "after_wall_ms": after[1], "same": bool(same)}
        if before is not None:
            rec.update(before_host_ms=before[0], before_wall_ms=before[1])
        rows.append(rec)

    def stacked_cupyx():
        nz = box.shape[0]
        mask = cp.zeros((len(ts), nz + 1) + box.shape[1:], dtype=bool)
        cp.greater(box[None], cp.asarray(ts)[:, None, None, None], out=mask[:, :nz])
        lab, n = cndi.label(mask.reshape((-1,) + box.shape[1:]), structure=s26)
        return lab, int(n)

    def stacked_ours():
        lab, n = gk.label_above(box, ts, 1)
        return lab, int(n[0])
    b = _timed(cp, stacked_cupyx, args.repeats)
    a = _timed(cp, stacked_ours, args.repeats)
    row("label 16 stacked thresholds", b[:2], a[:2],
        b[2][1] == a[2][1] and bool(cp.all(b[2][0] == a[2][0])))
    t0 = float(ts[3])
    b = _timed(cp, lambda: (lambda r: (r[0], int(r[1])))(cndi.label(box > np.float32(t0), structure=s26)),
               args.repeats)
    a = _timed(cp, lambda: (lambda r: (r[0], int(r[1][0])))(gk.label_above(box, [t0], 0)), args.repeats)
    row("label one threshold", b[:2], a[:2], b[2][1] == a[2][1] and bool(cp.all(b[2][0] == a[2][0])))

    def prof_cupyx():
        m = C > np.float32(t0)
        return cp.asnumpy(cp.concatenate([m.any(axis=(1, 2)), m.any(axis=(0, 2)), m.any(axis=(0, 1))]))
    b = _timed(cp, prof_cupyx, args.repeats)
    a = _timed(cp, lambda: cp.asnumpy(gk.occupancy_above(C, t0)), args.repeats)
    row("occupancy profiles (crop box)", b[:2], a[:2], np.array_equal(b[2].astype(int), a[2]))

    sub = cp.ascontiguousarray(full[::3, ::3, ::3])
    for name, fb, fa in [
            ("gaussian 256³ sigma 2.5 constant",
             lambda: cndi.gaussian_filter(full, 2.5, mode="constant"),
             lambda: dn.gaussian_filter(full, 2.5, mode="constant")),
            ("gaussian sub sigma (0.8,1.2,2.0)",
             lambda: cndi.gaussian_filter(sub, (0.8, 1.2, 2.0)),
             lambda: dn.gaussian_filter(sub, (0.8, 1.2, 2.0))),
            ("uniform sub size 3",
             lambda: cndi.uniform_filter(sub, 3),
             lambda: dn.uniform_filter(sub, 3)),
            ("uniform sub size 7 nearest",
             lambda: cndi.uniform_filter(sub, 7, mode="nearest"),
             lambda: dn.uniform_filter(sub, 7, mode="nearest"))]:
        b = _timed(cp, fb, args.repeats)
        a = _timed(cp, fa, args.repeats)
        scale = float(cp.abs(b[2]).max()) or 1.0
        row(name, b[:2], a[:2], float(cp.abs(b[2] - a[2]).max()) <= 2e-6 * scale)

    xyz = cp.asarray(case.xyz_A)
    for r in (1.2 * 2.775, 6.3):
        a = _timed(cp, lambda r=r: gk.cell_pairs(xyz, r), args.repeats)
        row(f"cell_pairs {len(case.xyz_A)} atoms r {r:.2f} Å ({int(a[2][0].shape[0])} pairs)", None, a[:2], True)
    # the sweep scorer's pair sums: the pair list, its interpolation and scatter, against one pass
    xg = cp.asarray(np.linspace(0.0, 6.3 ** 2, 8192))
    yg = cp.exp(-xg / 3.0)

    def listed():
        i, _, d2 = gk.cell_pairs(xyz, 6.3)
        return cp.bincount(i, weights=cp.interp(d2, xg, yg), minlength=xyz.shape[0])
    b = _timed(cp, listed, args.repeats)
    a = _timed(cp, lambda: gk.pair_table_sums(xyz, 6.3, xg, yg), args.repeats)
    row("pair sums of a table, r 6.3 Å", b[:2], a[:2], bool(cp.allclose(b[2], a[2], rtol=1e-12, atol=1e-12)))
    # the baseline's solvent mask on the ~1 Å grid: distance transform against cleared balls
    step = 3
    grid_shape = tuple(-(-n // step) for n in full.shape)
    vs_zyx = np.broadcast_to(np.asarray(case.dmap.voxel_size_A, float), (3,))[::-1] * step
    rel = (case.xyz_A - case.dmap.origin_A)[:, ::-1]
    idx = cp.asarray(np.clip(np.rint(rel / vs_zyx).astype(np.int64), 0, np.array(grid_shape) - 1))
    spacing = tuple(float(v) for v in vs_zyx)

    def edt():
        free = cp.ones(grid_shape, dtype=bool)
        free[idx[:, 0], idx[:, 1], idx[:, 2]] = False
        return cndi.distance_transform_edt(free, sampling=spacing) > 3.5
    b = _timed(cp, edt, args.repeats)
    a = _timed(cp, lambda: gk.outside_balls(grid_shape, idx, 3.5, spacing), args.repeats)
    row("solvent mask > 3.5 Å from every atom (~1 Å grid)", b[:2], a[:2], bool(cp.all(b[2] == a[2])))
    # the map at the atoms, linearly interpolated
    vox = cp.asarray((case.xyz_A - case.dmap.origin_A) / case.dmap.voxel_size_A)
    b = _timed(cp, lambda: cndi.map_coordinates(C, vox[:, ::-1].T, order=1, mode="nearest"), args.repeats)
    a = _timed(cp, lambda: gk.linear_at(C, vox), args.repeats)
    row("map at 5,775 atoms, linear", b[:2], a[:2], float(cp.abs(b[2] - a[2]).max()) <= 1e-6 * float(cp.abs(b[2]).max()))

    print(f"{'operation':<52} {'before host/wall ms':>20} {'after host/wall ms':>20} same")
    for r in rows:
        bef = (f"{r['before_host_ms']:8.3f} /{r['before_wall_ms']:8.3f}" if "before_host_ms" in r else " " * 18 + "-")
        print(f"{r['op']:<52} {bef:>20} {r['after_host_ms']:8.3f} /{r['after_wall_ms']:8.3f}  {r['same']}")
    rec = {"device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "cupy": cp.__version__,
           "repeats": args.repeats, "rows": rows}
    print("kernels_ab " + json.dumps(rec))
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=1))
    return 0 if all(r["same"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
