"""Where a warm ``analyze`` spends its host time: cProfile of detection + statistics.

On a GPU most of a warm analyze is host time (Python, launches, waits at syncs), not
device time; this writes the cProfile table (cumulative and own time) of one warm
run so the next change targets the right function.

    python benchmarks/profile_gpu.py --size 256 --out prof_256.txt [--backend cupy]
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--backend", default=None, choices=["numpy", "cupy"])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--top", type=int, default=70)
    p.add_argument("--out", required=True)
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
    buf = io.StringIO()
    buf.write(f"{case.name} on {be.name}: warm analyze {wall * 1e3:.1f} ms wall (unprofiled), "
              f"{len(det.xyz_A)} atoms; warm-up runs "
              f"{', '.join(f'{w:.2f}' for w in warm_s)} s (the first compiles what the kernel cache lacks)\n\n")
    for key in ("cumulative", "tottime"):
        buf.write(f"=== sorted by {key} ===\n")
        pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(args.top)
    Path(args.out).write_text(buf.getvalue())
    print(buf.getvalue()[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
