"""The CuPy code path against the NumPy path on random reconstruction-like maps (no GPU needed).

Each trial draws a map as ``robustness_maps.py`` does (blur, noise, low-pass, sharpening,
masks; ``--harder`` for its wider ranges) and detects atoms twice: on the NumPy backend and
on the emulated CuPy backend (:mod:`ptnp_gpu.device_emulation`: the GPU branches, kernel
twins), or, with ``--device cupy``, on a real GPU. Prints per trial the atom counts, the
largest distance between matched atoms and whether both refused the map alike; exit
status 1 if any trial differs beyond 1e-3 Å.

``--device perturbed`` asks how much of that parity rounding alone can break, before a GPU
run does: the second detection is the NumPy path again, with every FFT's output perturbed by
Gaussian noise of ``--fft-eps`` (default 1e-6) × the output's RMS, about the rounding error of
a float32 transform of these sizes (another FFT library, cuFFT, rounds differently). Atoms
that then differ sit at a decision boundary of the method (a threshold, a tie), where any
two implementations can part.

    python benchmarks/emulated_parity.py [--seed 0] [--trials 12] [--harder] [--device cupy|perturbed]
        [--fft-eps 1e-6] [--json out.json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from robustness_maps import _harder_map, _standard_map  # noqa: E402

from ptnp_gpu.detect import detect_atoms  # noqa: E402
from ptnp_gpu.device_emulation import emulate  # noqa: E402
from ptnp_gpu.errors import InputError  # noqa: E402
from ptnp_gpu.synth import make_particle  # noqa: E402


def _detect(m, backend=None):
    try:
        return np.asarray(detect_atoms(m, "Pt", backend=backend).xyz_A), None
    except InputError as exc:
        return None, str(exc).split("(")[0].strip()


_FFT_OUT = ("fft", "ifft", "rfft", "irfft", "fftn", "ifftn", "rfftn", "irfftn", "fft2", "ifft2", "rfft2", "irfft2")


@contextlib.contextmanager
def _perturbed_fft(eps, rng):
    """The NumPy backend's FFTs with their outputs perturbed by N(0, eps × RMS(output)) per
    element (real and imaginary parts alike) for the duration of the block."""
    from ptnp_gpu import backend as _be
    mod = _be.get("numpy").fft
    saved = {name: getattr(mod, name) for name in _FFT_OUT if hasattr(mod, name)}

    def wrap(fn):
        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            scale = eps * float(np.sqrt(np.mean(np.abs(out) ** 2)))
            noise = rng.normal(scale=scale, size=out.shape)
            if np.iscomplexobj(out):
                noise = noise + 1j * rng.normal(scale=scale, size=out.shape)
            return (out + noise).astype(out.dtype, copy=False)
        return call
    for name, fn in saved.items():
        setattr(mod, name, wrap(fn))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(mod, name, fn)


def _on_device(m, device, fft_eps=1e-6, seed=0):
    """Detection on the emulated CuPy path (with its sync count), on a real GPU (None), or on
    the NumPy path with perturbed FFTs (None)."""
    if device == "cupy":
        return (*_detect(m, "cupy"), None)
    if device == "perturbed":
        with _perturbed_fft(fft_eps, np.random.default_rng(seed)):
            return (*_detect(m, "numpy"), None)
    with emulate() as audit:
        found, why = _detect(m)
        return found, why, audit.syncs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--harder", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", choices=("emulated", "cupy", "perturbed"), default="emulated",
                    help="compare NumPy with the emulated CuPy path (default), with CuPy on a GPU, or with "
                         "NumPy whose FFT outputs carry rounding-sized noise (--fft-eps)")
    ap.add_argument("--fft-eps", type=float, default=1e-6,
                    help="--device perturbed: noise SD relative to each FFT output's RMS")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    p = make_particle(n_atoms=500, seed=12, margin_A=10, noise=0.0, background=0.15)
    rows, bad = [], 0
    for _ in range(args.trials):
        spec, m, _ = _harder_map(rng) if args.harder else _standard_map(rng, p)
        host, why_h = _detect(m, "numpy")
        dev, why_d, syncs = _on_device(m, args.device, args.fft_eps, args.seed + len(rows))
        row = {"spec": spec, "device": args.device, "n_numpy": None if host is None else len(host),
               "n_device": None if dev is None else len(dev), "refused": [why_h, why_d], "syncs": syncs}
        if host is not None and dev is not None and len(host) and len(dev):
            row["max_shift_A"] = float(max(cKDTree(dev).query(host)[0].max(), cKDTree(host).query(dev)[0].max()))
        same = (why_h == why_d) and row["n_numpy"] == row["n_device"] and row.get("max_shift_A", 0.0) < 1e-3
        bad += not same
        row["same"] = same
        rows.append(row)
        print(f"{'ok  ' if same else 'DIFF'} atoms {row['n_numpy']} / {row['n_device']}, max shift "
              f"{row.get('max_shift_A', float('nan')):.2e} Å, syncs {syncs}, refused {why_h!r} / {why_d!r}  {spec}",
              flush=True)
    print(f"{args.trials - bad} of {args.trials} trials identical within 1e-3 Å")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
