"""Markdown table and plot of a benchmark run (``results.json`` → ``results.md``, ``results.png``)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

MAIN_STAGES = ["analyze", "detect", "statistics", "h2d_copy", "h2d_copy_asarray", "render", "denoise", "threshold",
               "label", "label_moments_kernel", "label_moments_array_code", "window_fits_kernel",
               "window_pearson_kernel"]


def _ms(v):
    return "–" if v is None else (f"{v * 1e3:.1f}" if v < 10 else f"{v:.1f} s")


def _by_case(results):
    cases = {}
    for r in results["cases"]:
        cases.setdefault(r["case"], {})[r["backend"]] = r
    return cases


def _median(r, stage):
    s = r.get("stages", {}).get(stage) if r else None
    return s["median_s"] if s else None


def _targets(results):
    cases = _by_case(results)
    t = results["meta"].get("targets", {})
    rows = []

    def add(name, value, goal, ok):
        rows.append((name, value, goal, "n/a" if ok is None else ("yes" if ok else "**no**")))
    c256 = cases.get("pt_sphere_256", {})
    g, c = _median(c256.get("cupy"), "analyze"), _median(c256.get("numpy"), "analyze")
    add("GPU analyze 256³", _ms(g), f"≤ {t.get('gpu_analyze_256_s', 0.1) * 1e3:.0f} ms",
        None if g is None else g <= t.get("gpu_analyze_256_s", 0.1))
    sp = c / g if (g and c) else None
    add("GPU speed-up 256³ (same machine)", "–" if sp is None else f"{sp:.1f}×",
        f"≥ {t.get('gpu_speedup_256', 30):.0f}×", None if sp is None else sp >= t.get("gpu_speedup_256", 30))
    streams = [v["maps_per_s"] for k, v in results.get("stream", {}).items() if k.startswith("cupy") and v]
    s = max(streams) if streams else None
    add("GPU stream 160³", "–" if s is None else f"{s:.1f} maps/s (best of threads / processes)",
        f"≥ {t.get('stream_160_maps_per_s', 20):.0f} maps/s",
        None if s is None else s >= t.get("stream_160_maps_per_s", 20))
    f = _median(cases.get("FePt_23196", {}).get("cupy"), "analyze")
    add("GPU FePt 23,196 atoms", _ms(f), f"< {t.get('gpu_fept_s', 2):.0f} s",
        None if f is None else f < t.get("gpu_fept_s", 2))
    add("CPU analyze 256³", _ms(c), f"≤ {t.get('cpu_analyze_256_s', 20):.0f} s (2 cores)",
        None if c is None else c <= t.get("cpu_analyze_256_s", 20))
    m = (c256.get("numpy") or {}).get("memory")
    ratio = m.get("over_map_bytes") if m else None
    add("CPU peak memory 256³", "–" if ratio is None else f"{ratio:.1f}× map",
        f"≤ {t.get('cpu_peak_over_map', 10):.0f}× map",
        None if ratio is None else ratio <= t.get("cpu_peak_over_map", 10))
    return rows


def markdown(results) -> str:
    meta = results["meta"]
    v = meta.get("versions", {})
    lines = [f"# ptnp_gpu benchmark, {meta.get('date_utc', '?')}", "",
             f"Device: **{v.get('device', '?')}**; CPU: {v.get('cpu', '?')} "
             f"({v.get('cpu_logical_cores', '?')} logical cores, Numba threads {v.get('numba_threads', '?')}).",
             f"Versions: Python {v.get('python')}, NumPy {v.get('numpy')}, SciPy {v.get('scipy')}, "
             f"Numba {v.get('numba')}, CuPy {v.get('cupy')}"
             + (f", CUDA runtime {v.get('cuda_runtime')}, driver {v.get('cuda_driver')}" if v.get("cuda_runtime") else "")
             + ".", f"Command: `python benchmarks/run_suite.py {' '.join(meta.get('argv', []))}`"
             + (f"; wall {meta['wall_s']:.0f} s." if "wall_s" in meta else "."), "",
             "Times are medians in ms (or s) after warm-up; GPU times are CUDA-event times. "
             "`analyze` = detection + statistics in memory from a host map (no file I/O).", ""]
    lines += ["## Targets", "", "| target | measured | goal | met |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _targets(results)]
    lines += ["", "## Copy bandwidth", "", "| backend | buffer | GB/s |", "| --- | --- | --- |"]
    lines += [f"| {b} | {r['bytes'] / 2 / 2**20:.0f} MiB | {r['GBps']:.1f} |"
              for b, r in results.get("copy_bandwidth", {}).items()]
    lines += ["", "Copy bandwidth is 2 × buffer bytes / time of `b[...] = a`. Memory-bound stages "
                  "report bytes moved / time against it; inputs smaller than the last-level cache "
                  "can exceed it."]
    cases = _by_case(results)
    for name, per in cases.items():
        any_r = next(iter(per.values()))
        lines += ["", f"## {name}: {'×'.join(str(s) for s in any_r.get('shape_zyx', []))} voxels (z×y×x), "
                      f"{any_r.get('n_atoms_true', '?')} true atoms", ""]
        for b, r in per.items():
            for k in ("error", "error_analyze", "error_stages"):
                if k in r:
                    lines.append(f"- {b}: **{k.replace('error_', '') if k != 'error' else 'run'} "
                                 f"failed**: {r[k]}")
        stages = []
        for r in per.values():
            for s in r.get("stages", {}):
                if s not in stages:
                    stages.append(s)
        stages.sort(key=lambda s: (MAIN_STAGES.index(s) if s in MAIN_STAGES else
                                   len(MAIN_STAGES) + (0 if s.startswith("detect.") else 1), s))
        bes = [b for b in ("numpy", "cupy") if b in per]
        head = "| stage | " + " | ".join(bes) + (" | speed-up |" if len(bes) == 2 else " |")
        lines += [head, "|" + " --- |" * (len(bes) + 1 + (len(bes) == 2))]
        for s in stages:
            vals = [_median(per[b], s) for b in bes]
            row = f"| {s} | " + " | ".join(_ms(x) for x in vals)
            if len(bes) == 2:
                row += " | " + (f"{vals[0] / vals[1]:.1f}×" if all(vals) else "–")
            lines.append(row + " |")
        extra = []
        for b in bes:
            r = per[b]
            if r.get("memory"):
                m = r["memory"]
                extra.append(f"- {b}: peak memory of analyze {m['peak_bytes'] / 2**20:.0f} MiB = "
                             f"{m['over_map_bytes']:.1f}× the map ({m['method']})")
            if r.get("accuracy"):
                a = r["accuracy"]
                extra.append(f"- {b}: {a['n_found']} atoms found for {a['n_true']} true; recall "
                             f"{a['recall']:.3f}, precision {a['precision']:.3f} within "
                             f"{a.get('match_tolerance_A', 1.0)} Å; rms error {a.get('rms_error_A') or float('nan'):.3f} Å")
            cb = results.get("copy_bandwidth", {}).get(b, {}).get("GBps")
            for s, bw in r.get("bandwidth", {}).items():
                pct = f" = {100 * bw['GBps'] / cb:.0f}% of copy bandwidth" if cb and s != "h2d_copy" else ""
                extra.append(f"- {b}: {s} moves {bw['bytes'] / 2**20:.0f} MiB at {bw['GBps']:.1f} GB/s{pct}")
        if extra:
            lines += [""] + extra
    if results.get("stream"):
        lines += ["", "## Stream of 160³ maps (detection + statistics per map)", "",
                  "| backend | threads | processes | host threads per process | maps | seconds | maps/s |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for b, s in results["stream"].items():
            if not s:
                continue
            for r in s.get("by_workers", []) or s.get("by_processes", []) or [s]:
                per = r.get("threads_per_process", "uncapped" if "processes" in r else "–") or "uncapped"
                lines.append(f"| {b.split('_')[0]} | {r.get('workers', 1)} | {r.get('processes', 1)} | {per} "
                             f"| {s['n_maps']} | {r['seconds']:.2f} | {r['maps_per_s']:.2f} |")
    if results.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(
            f"{s['case']}{' (' + s['backend'] + ')' if 'backend' in s else ''}: {s['why']}"
            for s in results["skipped"])]
    return "\n".join(lines) + "\n"


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cases = _by_case(results)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for b, mk in (("numpy", "o-"), ("cupy", "s-")):
        pts = sorted((r["shape_zyx"][0], _median(r, "analyze")) for per in cases.values()
                     for bb, r in per.items() if bb == b and r.get("kind") == "synthetic"
                     and _median(r, "analyze"))
        if pts:
            ax1.plot([p[0] for p in pts], [p[1] for p in pts], mk, label=f"analyze ({b})")
    ax1.set_xlabel("box edge (voxels)")
    ax1.set_ylabel("median time (s)")
    ax1.set_yscale("log")
    ax1.set_title("Whole analysis, synthetic Pt spheres")
    if ax1.lines:
        ax1.legend(frameon=False)
    # stage breakdown of the largest case that ran on the most backends
    best = max(cases.items(), key=lambda kv: (len(kv[1]), max(r.get("map_bytes", 0) for r in kv[1].values())),
               default=None)
    if best:
        name, per = best
        stages = [s for s in MAIN_STAGES if any(_median(r, s) for r in per.values())]
        width = 0.8 / max(1, len(per))
        for i, (b, r) in enumerate(sorted(per.items())):
            vals = [(_median(r, s) or 0) * 1e3 for s in stages]
            ax2.bar([k + i * width for k in range(len(stages))], vals, width, label=b)
        ax2.set_xticks([k + 0.4 - width / 2 for k in range(len(stages))])
        ax2.set_xticklabels(stages, rotation=60, ha="right", fontsize=7)
        ax2.set_yscale("log")
        ax2.set_ylabel("median time (ms)")
        ax2.set_title(f"Stages, {name}")
        ax2.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results, out_dir):
    out_dir = Path(out_dir)
    (out_dir / "results.md").write_text(markdown(results))
    try:
        plot(results, out_dir / "results.png")
    except Exception as exc:  # noqa: BLE001 - a plot failure must not lose the tables
        print(f"plot failed: {exc}", file=sys.stderr)


if __name__ == "__main__":   # re-render a report: python benchmarks/bench_report.py DIR
    d = Path(sys.argv[1])
    write_report(json.loads((d / "results.json").read_text()), d)
