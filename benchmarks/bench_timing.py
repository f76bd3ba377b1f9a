"""Timing, memory and bandwidth helpers for the benchmark suite.

GPU timings use CUDA events on the current stream (``cupy.cuda.Event``);
CPU timings use ``time.perf_counter``. Every measurement is warm-up runs
(not recorded) followed by repeats, summarised by the median.
"""
from __future__ import annotations

import gc
import resource
import statistics
import time
import tracemalloc


class Timer:
    """Times callables on one backend (``ptnp_gpu.backend.Backend``)."""

    def __init__(self, be, warmup: int = 1, repeats: int = 3):
        self.be = be
        self.warmup = int(warmup)
        self.repeats = max(1, int(repeats))

    def once(self, fn):
        """(seconds, result) of one call; device time from CUDA events on the GPU."""
        if self.be.is_gpu:
            cp = self.be.xp
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            return cp.cuda.get_elapsed_time(start, end) / 1e3, out
        t = time.perf_counter()
        out = fn()
        return time.perf_counter() - t, out

    def run(self, fn, *, warmup=None, repeats=None, keep=None):
        """Warm up, repeat, and return a dict of median/min/all seconds (+ last result)."""
        for _ in range(self.warmup if warmup is None else warmup):
            fn()
        times, out, extra = [], None, []
        for _ in range(self.repeats if repeats is None else max(1, repeats)):
            t, out = self.once(fn)
            times.append(t)
            if keep is not None:
                extra.append(keep(out))
        res = {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}
        return res, out, extra


def peak_memory(be, fn):
    """Peak bytes allocated while ``fn`` runs (beyond what was held before).

    GPU: CuPy's default memory pool is emptied of cached blocks first; the
    growth of ``total_bytes()`` is the peak of the pool (what the run needed
    at its worst, rounded to the pool's block sizes; cuFFT work areas are
    included). CPU: ``tracemalloc`` peak (NumPy buffers are traced; Numba's
    own allocations inside compiled code are not), plus the process's
    lifetime ``ru_maxrss``.
    """
    gc.collect()
    if be.is_gpu:
        cp = be.xp
        pool = cp.get_default_memory_pool()
        cp.cuda.Device().synchronize()
        pool.free_all_blocks()
        before = pool.total_bytes()
        fn()
        cp.cuda.Device().synchronize()
        return {"peak_bytes": int(pool.total_bytes() - before), "method": "cupy pool total_bytes growth",
                "held_before_bytes": int(before)}
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_bytes": int(peak), "method": "tracemalloc peak", "process_maxrss_bytes": int(rss)}


def copy_bandwidth(be, nbytes: int = 1 << 30, repeats: int = 10):
    """Device (or host) memory copy bandwidth in GB/s: 2 × bytes / time of ``b[...] = a``."""
    xp = be.xp
    n = nbytes // 4
    a = xp.ones(n, dtype=xp.float32)
    b = xp.empty_like(a)
    timer = Timer(be, warmup=2, repeats=repeats)

    def copy():
        b[...] = a
    res, _, _ = timer.run(copy)
    gbps = 2 * a.nbytes / res["median_s"] / 1e9
    a = b = None                       # frees the buffers (the closure holds the cells)
    if be.is_gpu:
        be.xp.get_default_memory_pool().free_all_blocks()
    return {"bytes": int(2 * n * 4), "median_s": res["median_s"], "GBps": gbps}
