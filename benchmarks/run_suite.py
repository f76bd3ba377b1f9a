"""Benchmark suite: every stage and the whole analysis, NumPy and CuPy backends.

One command::

    python benchmarks/run_suite.py --out benchmarks/results/DATE_DEVICE \
        [--sizes 128 192 256 384] [--backends numpy cupy] [--numpy-sizes 128 256] [--quick]

Cases: synthetic Pt spheres (diameter 0.6 × box edge) in 128³…384³ boxes, and
maps rendered from the two experimental particles (PdPt 5,377 atoms, FePt
23,196 atoms). For every case and backend it times the stages (render,
denoise, threshold, 26-connected labelling, per-label moments with the
custom kernel and with the array code, per-atom window fits and validation
correlation), detection (with the per-stage times detection reports),
statistics, and the whole analysis (detection + statistics in memory, no
file I/O); warm-up runs, then repeats, medians. GPU times come from CUDA
events. It also measures the peak memory of the analysis, the device's copy
bandwidth and the bandwidth achieved by the memory-bound stages, the
throughput of a stream of 160³ maps, and how well the detected atoms match
the true ones. Writes ``results.json`` (after every case, so a run cut short
keeps what it measured), ``results.md`` and ``results.png``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib
import json
import os
import platform
import statistics as _stats
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FULL_SIZES = [128, 192, 256, 384]
TARGETS = {
    "gpu_analyze_256_s": 0.100,
    "gpu_speedup_256": 30.0,
    "stream_160_maps_per_s": 20.0,
    "gpu_fept_s": 2.0,
    "cpu_analyze_256_s": 20.0,
    "cpu_peak_over_map": 10.0,
}


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="synthetic box edges (voxels)")
    p.add_argument("--backends", nargs="+", default=None, choices=["numpy", "cupy"],
                   help="default: numpy, plus cupy when a GPU is usable")
    p.add_argument("--numpy-sizes", type=int, nargs="*", default=None,
                   help="sizes on which NumPy runs (default: 128 256; --quick: 128)")
    p.add_argument("--numpy-experimental", action="store_true",
                   help="also run NumPy on the experimental particles (slow on few cores)")
    p.add_argument("--no-experimental", action="store_true", help="skip the experimental particles")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 5 GPU, 2 CPU; quick 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--stream-maps", type=int, default=None,
                   help="maps in the 160³ stream (default 40 on the GPU; 3 on NumPy when it is "
                        "the only backend; quick 2; 0 skips)")
    p.add_argument("--stream-processes", type=int, nargs="*", default=[],
                   help="also stream with this many processes (e.g. 4 8: several CUDA contexts share the GPU)")
    p.add_argument("--stream-threads", type=int, default=None,
                   help="host threads (BLAS/OpenMP/Numba/FFT) per stream process (default: the cores "
                        "shared out as ptnp batch does; 0: uncapped)")
    p.add_argument("--stream-workers", type=int, nargs="+", default=[1, 4],
                   help="GPU stream: threads (each on its own CUDA stream) to try (default 1 4)")
    p.add_argument("--cpu-threads", type=int, default=None,
                   help="limit NumPy/Numba/BLAS threads (e.g. 2 for the 2-core CPU target)")
    p.add_argument("--max-seconds", type=float, default=0.0,
                   help="stop starting new cases after this many seconds (0: no limit)")
    p.add_argument("--stream-first", action="store_true",
                   help="run the 160³ stream before the single-map cases (so a time budget keeps it)")
    p.add_argument("--stream-only", action="store_true",
                   help="only the 160³ stream (no single-map cases; e.g. under CUDA MPS)")
    p.add_argument("--quick", action="store_true", help="small CPU smoke run (128³, 1 repeat)")
    return p.parse_args(argv)


def _limit_threads(n):
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def _optional(name):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _versions(backends):
    import numpy as np
    from ptnp_gpu import backend as _be
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("scipy", "numba", "cupy"):
        m = _optional(mod)
        out[mod] = getattr(m, "__version__", None) if m else None
    out["cpu"] = platform.processor() or platform.machine()
    out["cpu_logical_cores"] = os.cpu_count()
    try:
        import numba
        out["numba_threads"] = numba.get_num_threads()
    except Exception:  # noqa: BLE001
        pass
    if "cupy" in backends:
        import cupy
        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"]
        out["device"] = name.decode() if isinstance(name, bytes) else name
        out["device_memory_GiB"] = round(props["totalGlobalMem"] / 2 ** 30, 1)
        out["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        out["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        out["compute_capability"] = dev.compute_capability
    else:
        out["device"] = f"CPU ({os.cpu_count()} logical cores)"
    out["cupy_usable"] = _be.cupy_available()
    return out


# ------------------------------------------------------------------------- one case

def _accuracy(found, truth, tol_A=1.0):
    import numpy as np
    from scipy.spatial import cKDTree
    found = np.asarray(found, float).reshape(-1, 3)
    if len(found) == 0:
        return {"n_found": 0, "n_true": int(len(truth)), "recall": 0.0, "precision": 0.0}
    d_t, _ = cKDTree(found).query(truth)
    d_f, _ = cKDTree(truth).query(found)
    hit = d_t < tol_A
    return {"n_found": int(len(found)), "n_true": int(len(truth)),
            "recall": float(hit.mean()), "precision": float((d_f < tol_A).mean()),
            "rms_error_A": float(np.sqrt(np.mean(d_t[hit] ** 2))) if hit.any() else None,
            "match_tolerance_A": tol_A}


def _stage_table(res_list):
    """Median/min/all seconds of every stage named in any of the per-run dicts."""
    names = []
    for r in res_list:
        names += [n for n in r if n not in names]
    out = {}
    for n in names:
        v = [r[n] for r in res_list if n in r]
        out[n] = {"median_s": _stats.median(v), "min_s": min(v), "times_s": v}
    return out


def bench_case(case, be, timer, log, memory=True):
    """Time every stage of one case on one backend; returns a JSON-able dict.

    The whole analysis and the single stages are measured separately, and a
    failure in one part is recorded (``error_analyze`` / ``error_stages``)
    without losing the other.
    """
    out = {"case": case.name, "backend": be.name, "shape_zyx": list(case.shape),
           "n_atoms_true": case.n_atoms, "map_bytes": int(case.dmap.data.nbytes), "stages": {},
           "bandwidth": {}}
    for part, fn in (("analyze", lambda: _bench_analyze(case, be, timer, out, log, memory)),
                     ("stages", lambda: _bench_stages(case, be, timer, out))):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - record, keep the other part's numbers
            out[f"error_{part}"] = f"{type(exc).__name__}: {exc}"
            log(f"  {part} FAILED: {out[f'error_{part}']}")
        if be.is_gpu:
            be.xp.get_default_memory_pool().free_all_blocks()
    return out


def _bench_analyze(case, be, timer, out, log, memory):
    """Detection + statistics timings, accuracy and peak memory (adds to ``out``)."""
    dmap = case.dmap
    st = out["stages"]
    detect = _optional("ptnp_gpu.detect")
    statistics = _optional("ptnp_gpu.statistics")
    if detect is not None:
        def analyze():
            t_det, det = timer.once(lambda: detect.detect_atoms(dmap, case.element, backend=be))
            rec = {"detect": t_det, **{f"detect.{k}": v for k, v in det.times.items()}}
            if statistics is not None:
                t_st, s = timer.once(lambda: statistics.compute_statistics(
                    det.backend_map, det.xyz_A, case.element, labels=det.labels, backend=be))
                rec.update({"statistics": t_st,
                            **{f"statistics.{k}": v for k, v in s.times_s.items() if k != "total"}})
            rec["analyze"] = sum(v for k, v in rec.items() if k in ("detect", "statistics"))
            return rec, det
        for _ in range(timer.warmup):
            analyze()
        recs = []
        det = None
        for _ in range(timer.repeats):
            rec, det = analyze()
            recs.append(rec)
        st.update(_stage_table(recs))
        out["accuracy"] = _accuracy(det.xyz_A, case.xyz_A)
        msg = (f"  analyze {st['analyze']['median_s']:.3f} s, {out['accuracy']['n_found']} atoms "
               f"(recall {out['accuracy']['recall']:.3f})")
        if memory:
            out["memory"] = _peak(be, analyze)
            out["memory"]["over_map_bytes"] = out["memory"]["peak_bytes"] / dmap.data.nbytes
            msg += f", peak {out['memory']['peak_bytes'] / 2**20:.0f} MiB"
        log(msg)


def _bench_stages(case, be, timer, out):
    """Single stages on device-resident inputs (adds to ``out``)."""
    import numpy as np
    from ptnp_gpu import gpu_kernels as gk
    from ptnp_gpu.elements import get_element
    from ptnp_gpu.simulate import reference_blur_A2, render_atoms
    xp = be.xp
    dmap = case.dmap
    vs = np.asarray(dmap.voxel_size_A, float)
    el = get_element(case.element)
    nvox = int(dmap.data.size)
    st = out["stages"]
    host = dmap.data
    if be.is_gpu:
        # the library's upload (pieced, pinned) and, for comparison, cupy.asarray's
        upload = getattr(_optional("ptnp_gpu.backend"), "upload_volume", None)
        res, raw, _ = timer.run(lambda: xp.asarray(host))
        st["h2d_copy_asarray"] = res
        if upload is not None:
            res, raw, _ = timer.run(lambda: upload(host, xp))
        st["h2d_copy"] = res
        out["bandwidth"]["h2d_copy"] = {"bytes": int(host.nbytes),
                                        "GBps": host.nbytes / res["median_s"] / 1e9}
    else:
        raw = xp.asarray(host)
    b_extra = reference_blur_A2(float(vs.mean()))
    res, sim, _ = timer.run(lambda: render_atoms(case.xyz_A, case.shape, vs, dmap.origin_A, "Pt",
                                                 b_extra_A2=b_extra, backend=be))
    st["render"] = res
    denoise = _optional("ptnp_gpu.denoise")
    components = _optional("ptnp_gpu.components")
    C = None
    if denoise is not None:
        kernel = denoise.AtomKernel.for_element(el, b_extra, vs)
        res, CG, _ = timer.run(lambda: denoise.denoise_map(raw, vs, kernel))
        st["denoise"] = res
        C = CG[0]
        del CG
    if C is not None and components is not None:
        pos = C[C > 0]
        t = components.otsu_threshold(pos) if pos.size else 0.0
        t = 0.5 * (t + float(C.max()))   # mid-sweep threshold: separated atoms
        del pos
        res, mask, _ = timer.run(lambda: C > t)
        st["threshold"] = res
        out["bandwidth"]["threshold"] = {"bytes": nvox * 5, "GBps": nvox * 5 / res["median_s"] / 1e9}
        res, labn, _ = timer.run(lambda: components.label26(mask))
        st["label"] = res
        lab, n = labn
        w = raw.astype(xp.float32, copy=False)
        res, _, _ = timer.run(lambda: gk.label_moments(lab, w, C, n))
        st["label_moments_kernel"] = res
        nb = nvox * (lab.dtype.itemsize + w.dtype.itemsize + 4)
        out["bandwidth"]["label_moments_kernel"] = {"bytes": nb, "GBps": nb / res["median_s"] / 1e9}
        res, _, _ = timer.run(lambda: _label_moments_bincount(lab, n, w, C, xp))
        st["label_moments_array_code"] = res
        out["n_components"] = int(n)
        del mask, lab, labn
    # per-atom windows at the true atom positions
    centres = xp.asarray(dmap.xyz_A_to_voxel(case.xyz_A))
    r_fit_vox = 0.375 * el.nn_distance_A / float(vs.mean())
    r_val_vox = 1.5 * el.radius_A / float(vs.mean())

    def fits():
        ne = gk.window_normal_equations(raw, centres, r_fit_vox, voxel_size_A=vs)
        return gk.solve_normal_equations(ne), gk.solve_normal_equations(gk.iso_normal_equations(ne))
    res, _, _ = timer.run(fits)
    st["window_fits_kernel"] = res
    res, _, _ = timer.run(lambda: gk.window_pearson(raw, sim, centres, r_val_vox))
    st["window_pearson_kernel"] = res


def _label_moments_bincount(lab, n, w, peak, xp):
    """Array-code baseline for the fused kernel: bincount sums and a lexsort argmax."""
    flat = lab.ravel()
    idx = xp.nonzero(flat)[0]
    lb = flat[idx]
    ny, nx = lab.shape[1:]
    z, rem = xp.divmod(idx, ny * nx)
    y, x = xp.divmod(rem, nx)
    wv = w.ravel()[idx].astype(xp.float64)
    m = n + 1
    sums = [xp.bincount(lb, weights=v, minlength=m) for v in (wv, wv * x, wv * y, wv * z)]
    count = xp.bincount(lb, minlength=m)
    pv = peak.ravel()[idx]
    order = xp.lexsort(xp.stack([pv.astype(xp.float64), lb.astype(xp.float64)]))
    ls = lb[order]
    last = xp.ones(ls.shape, dtype=bool)
    last[:-1] = ls[1:] != ls[:-1]
    arg = xp.zeros(m, dtype=xp.int64)
    arg[ls[last]] = idx[order][last]
    return count, sums, arg


def _peak(be, analyze):
    from bench_timing import peak_memory
    return peak_memory(be, analyze)


def _analyze_case(case, be):
    """Detection + statistics of one stream map (what each stream measures); atoms found."""
    detect = _optional("ptnp_gpu.detect")
    statistics = _optional("ptnp_gpu.statistics")
    det = detect.detect_atoms(case.dmap, case.element, backend=be)
    if statistics is not None:
        statistics.compute_statistics(det.backend_map, det.xyz_A, case.element, labels=det.labels, backend=be)
    return len(det.xyz_A)


def bench_stream(be, n_maps, size=160, n_distinct=4, workers=(1,), log=print):
    """Throughput of detection + statistics over a stream of ``size``³ maps (host maps in).

    For every worker count, that many threads take maps from the stream; on a GPU
    each thread queues its work on its own non-blocking CUDA stream, so one map's
    host-side steps (Python, statistics on the host) overlap another's kernels.
    Returns the best throughput, with every worker count's figure in ``by_workers``.
    """
    from concurrent.futures import ThreadPoolExecutor
    from bench_maps import synthetic_case
    from ptnp_gpu import backend as _be
    detect = _optional("ptnp_gpu.detect")
    statistics = _optional("ptnp_gpu.statistics")
    if detect is None or n_maps <= 0:
        return None
    maps = [synthetic_case(size, seed=100 + i) for i in range(min(n_distinct, n_maps))]

    def one(case):
        return _analyze_case(case, be)

    def on_own_stream(case):
        if not be.is_gpu:
            return one(case)
        with be.xp.cuda.Stream(non_blocking=True) as stream:
            n = one(case)
            stream.synchronize()
        return n

    one(maps[0])                        # warm-up (plans, compilation) on one thread
    _be.synchronize(be)
    runs = []
    for w in workers:
        w = max(1, int(w))
        t = time.perf_counter()
        with ThreadPoolExecutor(max_workers=w) as pool:
            found = list(pool.map(on_own_stream, [maps[i % len(maps)] for i in range(n_maps)]))
        if be.is_gpu:
            be.xp.cuda.Device().synchronize()
        dt = time.perf_counter() - t
        runs.append({"workers": w, "seconds": dt, "maps_per_s": n_maps / dt,
                     "atoms_per_map": sorted(set(found))})
        log(f"  stream {size}³, {w} worker(s): {n_maps / dt:.2f} maps/s")
    best = max(runs, key=lambda r: r["maps_per_s"])
    return {"size": size, "n_maps": n_maps, "seconds": best["seconds"], "maps_per_s": best["maps_per_s"],
            "workers": best["workers"], "by_workers": runs, "includes_statistics": statistics is not None}


def _stream_process(backend_name, size, seeds, n_own, barrier):
    """One process of the multi-process stream: make its maps, warm up, wait, analyse.

    Returns (wall-clock start, wall-clock end, atoms per map) of its timed part.
    """
    sys.path.insert(0, str(HERE))
    from bench_maps import synthetic_case
    from ptnp_gpu import backend as _be
    be = _be.get(backend_name)
    maps = [synthetic_case(size, seed=s) for s in seeds]

    def one(case):
        return _analyze_case(case, be)
    one(maps[0])                                  # warm-up: kernels, FFT plans, Numba caches
    _be.synchronize(be)
    barrier.wait()
    t0 = time.time()
    found = [one(maps[i % len(maps)]) for i in range(n_own)]
    _be.synchronize(be)
    return t0, time.time(), sorted(set(found))


def _process_threads(n_proc, threads=None):
    """Host threads (BLAS, OpenMP, Numba, the host FFTs) each of ``n_proc`` stream processes
    gets: ``threads``, else the usable cores shared out as ``ptnp batch`` shares them
    (:func:`ptnp_gpu.batch.plan_workers`); 0 leaves the environment as it is."""
    if threads is not None:
        return int(threads)
    from ptnp_gpu.batch import plan_workers
    return plan_workers(n_proc, n_proc, gpus="none")["threads"]


@contextlib.contextmanager
def _thread_env(threads):
    """The thread variables ``ptnp batch`` sets for its workers, set to ``threads`` while the
    block runs (spawned children copy the environment when they start), then put back."""
    from ptnp_gpu.batch import _THREAD_VARS, _restore_environ
    if not threads:
        yield
        return
    old = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: str(threads) for k in _THREAD_VARS})
    try:
        yield
    finally:
        _restore_environ(old)


def bench_stream_processes(be, n_maps, processes=(4,), size=160, n_distinct=4, log=print, threads=None):
    """Throughput of a stream of ``size``³ maps shared by several processes (one CUDA
    context each on a GPU: the Python and host-side work of one map overlaps another's
    kernels, which threads cannot do under the GIL). Timed from the moment every process
    is warm to the last one's end. Each process's host threads are capped as ``ptnp batch``
    caps its workers' (``threads``: :func:`_process_threads`; uncapped, 16 processes on 16
    cores would each start a BLAS, OpenMP and Numba pool of 16). Returns the best count,
    every count in ``by_processes``."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    runs = []
    ctx = mp.get_context("spawn")                 # CUDA cannot be forked
    for n_proc in processes:
        n_proc = max(1, int(n_proc))
        share = [n_maps // n_proc + (1 if i < n_maps % n_proc else 0) for i in range(n_proc)]
        per = _process_threads(n_proc, threads)
        with _thread_env(per), ctx.Manager() as mgr, ProcessPoolExecutor(n_proc, mp_context=ctx) as pool:
            barrier = mgr.Barrier(n_proc)
            futs = [pool.submit(_stream_process, be.name, size,
                                [100 + (i + k) % n_distinct for k in range(min(n_distinct, max(share[i], 1)))],
                                share[i], barrier) for i in range(n_proc)]
            res = [f.result() for f in futs]
        dt = max(r[1] for r in res) - min(r[0] for r in res)
        runs.append({"processes": n_proc, "threads_per_process": per or None, "seconds": dt,
                     "maps_per_s": n_maps / dt, "atoms_per_map": sorted({a for r in res for a in r[2]})})
        log(f"  stream {size}³, {n_proc} process(es), {per or 'uncapped'} host thread(s) each: "
            f"{n_maps / dt:.2f} maps/s")
    best = max(runs, key=lambda r: r["maps_per_s"])
    return {"size": size, "n_maps": n_maps, "seconds": best["seconds"], "maps_per_s": best["maps_per_s"],
            "processes": best["processes"], "by_processes": runs}


# ------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = _parse(argv)
    if args.cpu_threads:
        _limit_threads(args.cpu_threads)
    import numpy as np  # noqa: F401  (after the thread limits)
    from bench_maps import DATA_DIR, fept_case, pdpt_case, synthetic_case
    from bench_report import write_report
    from bench_timing import Timer, copy_bandwidth
    from ptnp_gpu import backend as _be

    t_start = time.perf_counter()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    backends = args.backends or (["numpy", "cupy"] if _be.cupy_available() else ["numpy"])
    if "cupy" in backends and not _be.cupy_available():
        print("CuPy backend not usable here; running NumPy only", file=sys.stderr)
        backends = [b for b in backends if b != "cupy"]
    if not backends:
        print("no usable backend left to benchmark", file=sys.stderr)
        return 2
    sizes = args.sizes or ([128] if args.quick else FULL_SIZES)
    numpy_sizes = set(args.numpy_sizes if args.numpy_sizes is not None
                      else ([128] if args.quick else [128, 256]))
    on_gpu = "cupy" in backends

    def log(msg):
        print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", flush=True)

    results = {
        "meta": {"date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "argv": sys.argv[1:] if argv is None else list(argv),
                 "quick": args.quick, "versions": _versions(backends), "targets": TARGETS},
        "copy_bandwidth": {}, "cases": [], "stream": {}, "skipped": [],
    }
    json_path = out_dir / "results.json"

    def save():
        json_path.write_text(json.dumps(results, indent=1, default=float))

    for b in backends:
        be = _be.get(b)
        results["copy_bandwidth"][b] = copy_bandwidth(be, nbytes=(1 << 30) if be.is_gpu else (1 << 28))
        log(f"{b}: copy bandwidth {results['copy_bandwidth'][b]['GBps']:.1f} GB/s")
    save()

    def repeats_for(be):
        if args.repeats is not None:
            return args.repeats
        return 1 if args.quick else (5 if be.is_gpu else 2)

    specs = [] if args.stream_only else [("synthetic", s) for s in sizes]
    if not (args.no_experimental or args.stream_only):
        if (DATA_DIR / "PdPt_EPB_5377.xyz").is_file() and (DATA_DIR / "FePt_model.npy").is_file():
            specs += [("experimental", "pdpt"), ("experimental", "fept")]
        else:
            results["skipped"].append({"case": "experimental", "why": f"no shared data at {DATA_DIR}"})
            log(f"experimental particles skipped: no shared data at {DATA_DIR}")

    def run_streams():
        n_stream_default = 2 if args.quick else None
        for b in backends:
            be = _be.get(b)
            # NumPy streams only when it is the sole backend (on a GPU machine it would
            # spend minutes on a number nobody targets)
            if on_gpu and not be.is_gpu:
                continue
            n = args.stream_maps if args.stream_maps is not None else (
                n_stream_default or (40 if be.is_gpu else 3))
            if args.max_seconds and time.perf_counter() - t_start > args.max_seconds:
                results["skipped"].append({"case": "stream_160", "backend": b, "why": "time budget"})
                continue
            if n > 0:
                log(f"stream of 160³ maps on {b}")
                results["stream"][b] = bench_stream(be, n, workers=args.stream_workers if be.is_gpu else (1,),
                                                    log=log)
                if args.stream_processes:
                    try:
                        procs = bench_stream_processes(be, n, processes=args.stream_processes, log=log,
                                                       threads=args.stream_threads)
                        results["stream"][f"{b}_processes"] = procs
                        if procs["maps_per_s"] > results["stream"][b]["maps_per_s"]:
                            results["stream"][b].update(best_of_processes=procs["maps_per_s"])
                    except Exception as exc:  # noqa: BLE001 - keep the single-process figure
                        log(f"  multi-process stream FAILED: {type(exc).__name__}: {exc}")
                save()

    if args.stream_first or args.stream_only:
        run_streams()
    numpy_warm = False
    for kind, key in specs:
        if args.max_seconds and time.perf_counter() - t_start > args.max_seconds:
            results["skipped"].append({"case": str(key), "why": "time budget (--max-seconds)"})
            log(f"time budget reached; skipping {key}")
            continue
        todo = []
        for b in backends:
            if b == "numpy" and kind == "synthetic" and key not in numpy_sizes:
                results["skipped"].append({"case": f"pt_sphere_{key}", "backend": b, "why": "not in --numpy-sizes"})
                continue
            if b == "numpy" and kind == "experimental" and not args.numpy_experimental:
                if not (args.quick and key == "pdpt"):
                    results["skipped"].append({"case": key, "backend": b, "why": "NumPy experimental off"})
                    continue
            todo.append(b)
        if not todo:
            continue
        t = time.perf_counter()
        case = synthetic_case(key) if kind == "synthetic" else (pdpt_case() if key == "pdpt" else fept_case())
        log(f"{case.name}: {case.shape} map, {case.n_atoms} atoms (made in {time.perf_counter() - t:.1f} s)")
        for b in todo:
            be = _be.get(b)
            warm = args.warmup if (be.is_gpu or not numpy_warm) else 0
            timer = Timer(be, warmup=warm, repeats=repeats_for(be))
            log(f" {b}: warm-up {warm}, repeats {timer.repeats}")
            try:
                res = bench_case(case, be, timer, log,
                                 memory=not (args.quick and kind == "experimental"))
            except Exception as exc:  # noqa: BLE001 - record and go on to the next case
                res = {"case": case.name, "backend": b, "error": f"{type(exc).__name__}: {exc}"}
                log(f"  FAILED: {res['error']}")
            res["kind"] = kind
            results["cases"].append(res)
            if b == "numpy":
                numpy_warm = True
            save()
        del case
    if not (args.stream_first or args.stream_only):
        run_streams()
    results["meta"]["wall_s"] = time.perf_counter() - t_start
    save()
    write_report(results, out_dir)
    log(f"wrote {json_path}, results.md, results.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
