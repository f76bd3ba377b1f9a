"""What the GPU path asks of a device, measured on the host (no GPU needed).

Runs ``analyze`` (detection + statistics) on the emulated CuPy backend
(:mod:`ptnp_gpu.device_emulation`) and reports, per detection stage and for
the statistics: host reads (synchronisations), launches, bytes the launches
read and write, and host seconds outside device work. The bytes over the
device's copy bandwidth give a floor for the memory-bound device time; the
syncs and launches are the counts that a real GPU pays latency for. Not a GPU
timing: ``run_suite.py`` on a device measures those.

    python benchmarks/device_audit.py --out benchmarks/results/<date>_cpu-emulated-device \
        [--sizes 128 192 256] [--no-experimental]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

# copy bandwidth measured on the NVIDIA H200 (2 × bytes / time of b[...] = a, 1 GiB buffer),
# benchmarks/results/2026-11-26_nvidia-h200/run1_128-256/results.md
H200_COPY_GBPS = 4160.8


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 192, 256], help="synthetic box edges")
    p.add_argument("--no-experimental", action="store_true", help="skip the measured particles' maps")
    p.add_argument("--top", type=int, default=8, help="busiest library lines listed per case")
    p.add_argument("--repeats", type=int, default=3, help="runs per case (host ms: their median)")
    return p.parse_args(argv)


def _delta(a, b):
    return {"syncs": b["syncs"] - a["syncs"], "launches": b["launches"] - a["launches"],
            "h2d": b["h2d"] - a["h2d"],
            "MB": (b["bytes"] - a["bytes"]) / 1e6,
            "host_ms": 1e3 * ((b["t"] - a["t"]) - (b["inside_s"] - a["inside_s"]))}


def _peak(audit, case):
    """The audit's memory peak since its last restart, in MiB and in maps."""
    mib = audit.peak_bytes / 2 ** 20
    return {"peak_MiB": mib, "peak_site": audit.peak_site,
            "peak_over_map": mib / (case.dmap.data.nbytes / 2 ** 20)}


def audit_case(case, top=8, repeats=3):
    """One map: per-stage counts of detection, totals of the statistics (counts are the same
    every run; host milliseconds are the median over ``repeats`` runs)."""
    runs = [_audit_once(case, top, warm=(k == 0)) for k in range(max(1, repeats))]
    out = runs[0]
    parts = [("detect",), ("statistics",)] + [("detect_stages", k) for k in out["detect_stages"]]
    for path in parts:
        recs = [r[path[0]] if len(path) == 1 else r[path[0]][path[1]] for r in runs]
        recs[0]["host_ms"] = float(np.median([rec["host_ms"] for rec in recs]))
    out["repeats"] = len(runs)
    return out


def _audit_once(case, top, warm=True):
    from ptnp_gpu.detect import detect_atoms
    from ptnp_gpu.device_emulation import emulate
    from ptnp_gpu.statistics import compute_statistics
    with emulate() as audit:
        if warm:
            first = detect_atoms(case.dmap, case.element)    # warm-up: Numba twins compile, imports
            compute_statistics(first.backend_map, first.xyz_A, case.element, labels=first.labels)
            del first
        audit.reset()
        start = audit.mark()
        det = detect_atoms(case.dmap, case.element)
        end = audit.mark()
        # the stage clock's events (ptnp_gpu.backend.StageClock): its start, then one per stage
        marks = audit.marks[2:]
        stages = {name: _delta(a, b) for name, a, b in zip(det.times, [start] + marks[:-1], marks)}
        detect = {**_delta(start, end), **_peak(audit, case)}     # the final reads included
        sites = dict(audit.sync_sites.most_common(top))
        audit.restart_peak()
        st0 = audit.mark()
        compute_statistics(det.backend_map, det.xyz_A, case.element, labels=det.labels)
        stats = {**_delta(st0, audit.mark()), **_peak(audit, case)}
        h2d_sites = dict(audit.h2d_sites.most_common(top))
    for rec in (detect, stats, *stages.values()):
        rec["floor_ms"] = rec["MB"] / H200_COPY_GBPS          # MB / (GB/s) = ms
    return {"case": case.name, "shape_zyx": list(case.shape), "n_atoms_true": case.n_atoms,
            "n_atoms_found": int(len(det.xyz_A)), "detect": detect, "detect_stages": stages,
            "statistics": stats, "busiest_sync_lines_detect": sites,
            "busiest_h2d_lines": h2d_sites}


def _table(res):
    rows = ["| part | syncs | host-to-device copies | launches | MB moved | floor at copy bandwidth (ms) "
            "| host ms |", "| --- | --- | --- | --- | --- | --- | --- |"]
    parts = [("**detect**", res["detect"])] + [(f"detect.{k}", v) for k, v in res["detect_stages"].items()]
    parts.append(("**statistics**", res["statistics"]))
    for name, r in parts:
        rows.append(f"| {name} | {r['syncs']} | {r['h2d']} | {r['launches']} | {r['MB']:.0f} | {r['floor_ms']:.2f} | "
                    f"{r['host_ms']:.0f} |")
    mem = ", ".join(f"{name} {res[name]['peak_MiB']:.0f} MiB ({res[name]['peak_over_map']:.1f}× the map, "
                    f"reached at `{res[name]['peak_site']}`)" for name in ("detect", "statistics"))
    return "\n".join(rows) + f"\n\nPeak device memory held by arrays (emulated): {mem}."


def main(argv=None) -> int:
    args = _parse(argv)
    import bench_maps
    from ptnp_gpu import __version__
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = [lambda s=s: bench_maps.synthetic_case(s) for s in args.sizes]
    if not args.no_experimental:
        if (bench_maps.DATA_DIR / "PdPt_EPB_5377.xyz").exists():
            cases.append(bench_maps.pdpt_case)
        if (bench_maps.DATA_DIR / "FePt_model.npy").exists():
            cases.append(bench_maps.fept_case)
    results = []
    t_all = time.perf_counter()
    for make in cases:
        case = make()
        t = time.perf_counter()
        res = audit_case(case, args.top, args.repeats)
        res["audit_wall_s"] = time.perf_counter() - t
        results.append(res)
        d, s = res["detect"], res["statistics"]
        print(f"{case.name}: detect {d['syncs']} syncs, {d['h2d']} copies in, {d['launches']} launches, {d['MB'] / 1e3:.1f} GB "
              f"(floor {d['floor_ms']:.1f} ms), host {d['host_ms']:.0f} ms; statistics {s['syncs']} syncs, "
              f"{s['h2d']} copies in, {s['launches']} launches, host {s['host_ms']:.0f} ms; peak device memory {d['peak_over_map']:.1f} / "
              f"{s['peak_over_map']:.1f}× the map", flush=True)
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ptnp_gpu": __version__,
            "python": platform.python_version(), "numpy": np.__version__,
            "cpu": f"{platform.machine()}, {__import__('os').cpu_count()} logical cores",
            "command": "python benchmarks/device_audit.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "copy_bandwidth_GBps": H200_COPY_GBPS, "wall_s": time.perf_counter() - t_all}
    (out / "results.json").write_text(json.dumps({"meta": meta, "cases": results}, indent=1))
    md = [f"# Device audit (emulated CuPy path on the host), {meta['date']}", "",
          f"Command: `{meta['command']}`; {meta['cpu']}; NumPy {meta['numpy']}.", "",
          "Counts of the GPU code path run on the host by `ptnp_gpu.device_emulation`: host reads "
          "(syncs), launches (library calls on device arrays and custom kernels), megabytes the "
          "launches read and write, the floor that puts on device time at the H200's measured copy "
          f"bandwidth ({H200_COPY_GBPS:.0f} GB/s), and the library's host milliseconds outside device "
          "calls (Python and NumPy on host data; median of the runs; an upper bound, as it includes "
          "freeing the NumPy arrays that stand for device memory, while CuPy adds its own per-call "
          "overhead on a GPU). Not GPU timings.", ""]
    for res in results:
        md += [f"## {res['case']}: {'×'.join(map(str, res['shape_zyx']))} voxels (z×y×x), "
               f"{res['n_atoms_true']} true atoms, {res['n_atoms_found']} found", "", _table(res), "",
               "Busiest host-read lines in detection: " +
               ", ".join(f"`{k}` {v}" for k, v in res["busiest_sync_lines_detect"].items()), "",
               "Busiest host-to-device copy lines (detection and statistics): " +
               ", ".join(f"`{k}` {v}" for k, v in res["busiest_h2d_lines"].items()), ""]
    (out / "results.md").write_text("\n".join(md))
    print(f"wrote {out / 'results.json'} and results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
