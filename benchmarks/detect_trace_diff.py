"""Where two backends' detections part: every traced stage's outputs, side by side.

Runs :func:`ptnp_gpu.detect.detect_atoms` on a few maps twice — the NumPy backend, and the
CuPy backend (``--device cupy``, a GPU), the emulated CuPy path (``emulated``, no GPU) or the
NumPy path with perturbed FFT outputs (``perturbed``, the rounding of another FFT library) —
with the pipeline's stage functions (denoising, the noise spectrum and levels, Otsu, the
sweep, labelling, sharpening, the precision terms) wrapped so that each call records a small
summary of what it returned (shape, float64 sum and sum of squares, extremes of each array;
scalars as they are). The two call sequences are then walked in step: the first call whose
summary differs by more than ``--rtol`` is the stage where the backends part, and the report
says which, with both summaries, along with the final atoms (count, row order, matched shift)
and the detection parameters that differ.

    python benchmarks/detect_trace_diff.py [--device cupy|emulated|perturbed] [--maps very_blurred coarse_co]
        [--rtol 1e-5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from wrapping import wrapped  # noqa: E402

# (module, function): each is wrapped wherever the package bound it by name
TRACED = [("denoise", "denoise_map"), ("denoise", "noise_power_spectrum"), ("denoise", "hermitian_norm2"),
          ("solvent", "_noise_spectrum"), ("solvent", "_noise_levels"), ("solvent", "_solvent_mask"),
          ("solvent", "_robust_level"), ("solvent", "_near_particle_level"), ("solvent", "_mask_gain"),
          ("components", "otsu_threshold"), ("components", "map_mean_sd"),
          ("sweep", "sweep_scores"), ("sweep", "_crop_box"), ("sweep", "_crop_box_above"), ("sweep", "_dense_region"),
          ("deblur", "sharpened"), ("deblur", "excess_blur_A2"), ("deblur", "model_correlation"),
          ("precision", "filter_moments"), ("precision", "peak_hessians"), ("simulate", "render_atoms"),
          ("peaks", "rescue_rounds"), ("peaks", "_split"), ("peaks", "_residual_map"),
          ("components", "label26"), ("components", "label26_above"), ("components", "label_moments"),
          ("gpu_kernels", "mean_shift_centres"), ("peaks", "transfer_corrected_map"),
          ("gpu_kernels", "window_pearson"), ("lattice_sites", "vacant_sites")]


def _summary(x, depth=0):
    """A small, comparable digest of a return value (arrays of either backend)."""
    from ptnp_gpu import backend as _be
    if depth > 2:
        return "…"
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, (tuple, list)):
        return [_summary(v, depth + 1) for v in x[:8]]
    if isinstance(x, dict):
        return {str(k): _summary(v, depth + 1) for k, v in list(x.items())[:12]}
    if isinstance(x, slice):
        return [x.start, x.stop]
    try:
        a = np.asarray(_be.to_host(x))
    except Exception:  # noqa: BLE001 - an object we do not digest
        return type(x).__name__
    if a.ndim == 0 and a.dtype.kind in "biuf":
        return a.item()                     # a device scalar reads as the host's
    if a.dtype.kind == "c":
        a = np.abs(a)
    if a.dtype.kind not in "biuf" or a.size == 0:
        return {"shape": list(a.shape)}
    f = a.astype(np.float64)
    fin = np.isfinite(f)
    g = f[fin]
    return {"shape": list(a.shape), "sum": float(g.sum()), "sumsq": float((g * g).sum()),
            "min": float(g.min()) if g.size else None, "max": float(g.max()) if g.size else None,
            "nonfinite": int((~fin).sum())}


_CALLERS = threading.local()      # the traced calls open in this thread, outermost first


def traced(log):
    """Within the block, every ``TRACED`` call appends (key, digest of its output) to ``log``. The
    key is the stage's name after those of the traced calls it runs inside (``outer>inner``), so
    that a stage one backend calls from inside another (the device sweep labels its stacked
    thresholds with ``label26_above``; the host sweep does not) is not compared with the other
    backend's top-level calls of it. A call in a worker thread has no callers."""
    def make(orig, name):
        def wrapper(*a, **k):
            stack = getattr(_CALLERS, "names", None)
            if stack is None:
                stack = _CALLERS.names = []
            key = ">".join(stack + [name])
            stack.append(name)
            try:
                out = orig(*a, **k)
            finally:
                stack.pop()
            log.append((key, _summary(out)))
            return out
        return wrapper
    return wrapped(TRACED, make)


def _drop_calls_ahead(log_r, log_d, rtol):
    """``log_d`` without the calls a GPU run made ahead for a model that a later pass replaced (the
    first lattice round's vacant sites start in a worker thread when the first detection ends):
    where it holds more calls of a stage than ``log_r``, a call matching none of ``log_r``'s calls
    of it (within ``rtol``) is such a one."""
    ref = {}
    for n, sr in log_r:
        ref.setdefault(n, []).append(sr)
    extra = Counter(n for n, _ in log_d)
    extra.subtract({n: len(calls) for n, calls in ref.items()})
    out = []
    for n, sd in log_d:
        if n in ref and extra[n] > 0 and all(_differs(sr, sd, rtol) for sr in ref[n]):
            extra[n] -= 1
            continue
        out.append((n, sd))
    return out


def _differs(a, b, rtol):
    if isinstance(a, dict) and isinstance(b, dict):
        return any(_differs(a.get(k), b.get(k), rtol) for k in set(a) | set(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) != len(b) or any(_differs(x, y, rtol) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        if np.isnan(a) and np.isnan(b):
            return False
        return abs(a - b) > rtol * max(abs(a), abs(b), 1e-30)
    return a != b


def _maps(names):
    from test_deblur import _blurred, _coarse_noisy_co
    make = {"very_blurred": lambda: (_blurred(75.0, mask_A=7.0)[0], "Pt"),
            "coarse_co": lambda: (_coarse_noisy_co().map, "Co")}
    if "coarse_co_clean" in names:
        from test_detect import _coarse_co
        make["coarse_co_clean"] = lambda: (_coarse_co().map, "Co")
    if "sharpened" in names:
        from test_detect import _filtered_map
        make["sharpened"] = lambda: (_filtered_map(1.6, 50.0, 0.1, blur_A2=50.0)[0], "Pt")
    return {n: make[n]() for n in names}


def _run(m, el, device, eps, seed):
    from ptnp_gpu.detect import detect_atoms
    log = []
    with traced(log):
        if device == "numpy":
            det = detect_atoms(m, el, backend="numpy")
        elif device == "cupy":
            det = detect_atoms(m, el, backend="cupy")
        elif device == "perturbed":
            from emulated_parity import _perturbed_fft
            with _perturbed_fft(eps, np.random.default_rng(seed)):
                det = detect_atoms(m, el, backend="numpy")
        else:
            from ptnp_gpu.device_emulation import emulate
            with emulate():
                det = detect_atoms(m, el)
    return det, log


def compare(name, m, el, device, rtol, eps=1e-6, seed=0):
    ref, log_r = _run(m, el, "numpy", eps, seed)
    det, log_d = _run(m, el, device, eps, seed)
    log_d = _drop_calls_ahead(log_r, log_d, 100.0 * rtol)
    out = {"map": name, "device": device, "atoms": [len(ref.xyz_A), len(det.xyz_A)],
           "calls": [len(log_r), len(log_d)]}
    xr, xd = np.asarray(ref.xyz_A), np.asarray(det.xyz_A)
    if len(xr) == len(xd):
        out["row_max_diff_A"] = float(np.abs(xr - xd).max())
    if len(xr) and len(xd):
        out["matched_shift_A"] = float(max(cKDTree(xr).query(xd)[0].max(), cKDTree(xd).query(xr)[0].max()))
        if ref.position_sd_A is not None and len(xr) == len(xd):
            j = cKDTree(xd).query(xr)[1]
            out["position_sd_ratio_range"] = [float(np.min(det.position_sd_A[j] / ref.position_sd_A)),
                                              float(np.max(det.position_sd_A[j] / ref.position_sd_A))]
    out["params_differing"] = {k: [v, det.params.get(k)] for k, v in ref.params.items()
                               if isinstance(v, (int, float, bool)) and _differs(v, det.params.get(k), rtol)}
    # the k-th call of each stage against the other run's k-th call of it (a backend may call a
    # stage from inside another, e.g. the device sweep labels each batch: orders differ, not counts)
    by_name = {}
    for n, sd in log_d:
        by_name.setdefault(n, []).append(sd)
    names_r = {n for n, _ in log_r}
    out["stages_only_numpy"] = sorted(names_r - set(by_name))
    out["stages_only_" + device] = sorted(set(by_name) - names_r)
    # every call that differs by 100x rtol (up to 16): where a difference grows or shrinks again
    out["large_differences"] = []
    seen = {}
    for n, sr in log_r:
        k = seen.get(n, 0)
        seen[n] = k + 1
        if n in by_name and k < len(by_name[n]) and _differs(sr, by_name[n][k], 100.0 * rtol):
            if len(out["large_differences"]) < 16:
                out["large_differences"].append(f"{n}#{k}")
    for key, tol in (("first_difference", rtol), ("first_large_difference", 100.0 * rtol)):
        out[key] = None
        seen = {}
        for i, (n, sr) in enumerate(log_r):
            k = seen.get(n, 0)
            seen[n] = k + 1
            if n not in by_name:
                continue
            sd = by_name[n][k] if k < len(by_name[n]) else "(no such call)"
            if _differs(sr, sd, tol):
                out[key] = {"index": i, "stage": n, "call": k, "numpy": sr, device: sd,
                            "before": [m for m, _ in log_r[max(0, i - 5):i]]}
                break
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cupy", "emulated", "perturbed"), default="emulated")
    ap.add_argument("--maps", nargs="+", default=["very_blurred", "coarse_co"],
                    choices=("very_blurred", "coarse_co", "coarse_co_clean", "sharpened"))
    ap.add_argument("--rtol", type=float, default=1e-5)
    ap.add_argument("--fft-eps", type=float, default=1e-6)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    results = []
    for name, (m, el) in _maps(args.maps).items():
        r = compare(name, m, el, args.device, args.rtol, args.fft_eps)
        results.append(r)
        fd = r["first_difference"]
        print(f"{name}: atoms {r['atoms']}, row diff {r.get('row_max_diff_A')}, matched {r.get('matched_shift_A')}, "
              f"position_sd ratio {r.get('position_sd_ratio_range')}")
        print(f"  params differing: {r['params_differing']}")
        print(f"  first stage that differs (rtol {args.rtol:g}): "
              + ("none" if fd is None else json.dumps(fd, default=str)[:1500]))
        fl = r["first_large_difference"]
        print("  first stage that differs by 100x that: "
              + ("none" if fl is None else json.dumps(fl, default=str)[:1500]))
        print(f"  calls that differ by 100x rtol: {r['large_differences']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
