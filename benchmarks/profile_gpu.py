"""Where a warm ``analyze`` spends its host time: cProfile of detection + statistics.

On a GPU most of a warm analyze is host time (Python, launches, waits at syncs), not
device time; this writes the cProfile table (cumulative and own time) of one warm
run so the next change targets the right function. With ``--kernels`` (CuPy backend,
PyTorch installed) it also records one warm run's GPU activity with PyTorch's profiler
(CUPTI sees every kernel and copy in the process, CuPy's included): the device's busy
time against the wall time, and the kernels that take it.

    python benchmarks/profile_gpu.py --size 256 --out prof_256.txt [--backend cupy] [--kernels] [--dump prof_256.prof]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_maps import synthetic_case  # noqa: E402

from ptnp_gpu import backend as _be  # noqa: E402
from ptnp_gpu import detect, statistics  # noqa: E402


def _device_us(ev) -> float:
    """Own device time (µs) of a profiler event summary, across PyTorch versions."""
    for name in ("self_device_time_total", "self_cuda_time_total", "device_time_total", "cuda_time_total"):
        v = getattr(ev, name, None)
        if v is not None:
            return float(v)
    return 0.0


def kernel_profile(analyze, be, top: int = 30) -> str:
    """One warm ``analyze`` under PyTorch's profiler (CUDA activity only): device busy time,
    wall time and the busiest kernels and copies, as text. A line saying why when it cannot."""
    if not be.is_gpu:
        return "=== kernels: skipped (needs the cupy backend) ===\n\n"
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
        if not torch.cuda.is_available():
            return "=== kernels: skipped (PyTorch sees no CUDA device) ===\n\n"
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            t = time.perf_counter()
            analyze()
            wall = time.perf_counter() - t
        rows = sorted(prof.key_averages(), key=_device_us, reverse=True)
    except Exception as exc:  # noqa: BLE001 - a diagnostic: say why and go on
        return f"=== kernels: failed ({type(exc).__name__}: {exc}) ===\n\n"
    busy = sum(_device_us(r) for r in rows) / 1e3
    out = [f"=== kernels: one warm analyze under PyTorch's profiler: wall {wall * 1e3:.1f} ms, device busy "
           f"{busy:.1f} ms ({100 * busy / max(wall * 1e3, 1e-9):.0f}%; the rest the device waits for the host), "
           f"{sum(int(r.count) for r in rows)} kernels and copies of {len(rows)} kinds ===",
           f"{'device ms':>10} {'count':>6} {'mean us':>8}  name"]
    for r in rows[:top]:
        us = _device_us(r)
        out.append(f"{us / 1e3:10.3f} {int(r.count):6d} {us / max(int(r.count), 1):8.1f}  {r.key[:110]}")
    # by count: each launch costs host time whatever the kernel does (what to fuse next)
    out.append("\n--- the same, by count (launches and copies cost host time however short) ---")
    for r in sorted(rows, key=lambda r: int(r.count), reverse=True)[:top]:
        us = _device_us(r)
        out.append(f"{us / 1e3:10.3f} {int(r.count):6d} {us / max(int(r.count), 1):8.1f}  {r.key[:110]}")
    return "\n".join(out) + "\n\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--backend", default=None, choices=["numpy", "cupy"])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--top", type=int, default=70)
    p.add_argument("--out", required=True)
    p.add_argument("--dump", default=None,
                   help="also write the profile's raw statistics (pstats.Stats.dump_stats) to this file")
    p.add_argument("--kernels", action="store_true",
                   help="also the GPU's kernels and copies of one warm run (PyTorch's profiler)")
    args = p.parse_args(argv)
    be = _be.get(args.backend) if args.backend else _be.default()
    case = synthetic_case(args.size)

    def analyze():
        det = detect.detect_atoms(case.dmap, case.element, backend=be)
        statistics.compute_statistics(det.backend_map, det.xyz_A, case.element,
                                      labels=det.labels, backend=be)
        _be.synchronize(be)
        return det

    warm_s = []
    for _ in range(args.warmup):
        t = time.perf_counter()
        analyze()
        warm_s.append(time.perf_counter() - t)
    t = time.perf_counter()
    analyze()
    wall = time.perf_counter() - t
    prof = cProfile.Profile()
    prof.enable()
    det = analyze()
    prof.disable()
    if args.dump:
        prof.dump_stats(args.dump)
    buf = io.StringIO()
    buf.write(f"{case.name} on {be.name}: warm analyze {wall * 1e3:.1f} ms wall (unprofiled), "
              f"{len(det.xyz_A)} atoms; warm-up runs "
              f"{', '.join(f'{w:.2f}' for w in warm_s)} s (the first compiles what the kernel cache lacks)\n\n")
    if args.kernels:
        buf.write(kernel_profile(analyze, be, top=min(args.top, 30)))
    for key in ("cumulative", "tottime"):
        buf.write(f"=== sorted by {key} ===\n")
        pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(args.top)
    if be.is_gpu:
        # who uploads host data (cupy.array / asarray) and who reads the device back (.get): the
        # host-side costs that no kernel profile shows
        for pattern in ("from_data.py.*asarray", "core.array}", "method 'get' of 'cupy"):
            buf.write(f"=== callers of {pattern} ===\n")
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_callers(pattern)
    Path(args.out).write_text(buf.getvalue())
    print(buf.getvalue()[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
