"""The CuPy code path against the NumPy path on random reconstruction-like maps (no GPU needed).

Each trial draws a map as ``robustness_maps.py`` does (blur, noise, low-pass, sharpening,
masks; ``--harder`` for its wider ranges) and detects atoms twice: on the NumPy backend and
on the emulated CuPy backend (:mod:`ptnp_gpu.device_emulation`: the GPU branches, kernel
twins), or, with ``--device cupy``, on a real GPU. Prints per trial the atom counts, the
largest distance between matched atoms and whether both refused the map alike; exit
status 1 if any trial differs beyond 1e-3 Å.

    python benchmarks/emulated_parity.py [--seed 0] [--trials 12] [--harder] [--device cupy] [--json out.json]
"""
from __future__ import annotations

import argparse
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


def _on_device(m, device):
    """Detection on the emulated CuPy path (with its sync count) or on a real GPU (None)."""
    if device == "cupy":
        return (*_detect(m, "cupy"), None)
    with emulate() as audit:
        found, why = _detect(m)
        return found, why, audit.syncs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--harder", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", choices=("emulated", "cupy"), default="emulated",
                    help="compare NumPy with the emulated CuPy path (default) or with CuPy on a GPU")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    p = make_particle(n_atoms=500, seed=12, margin_A=10, noise=0.0, background=0.15)
    rows, bad = [], 0
    for _ in range(args.trials):
        spec, m, _ = _harder_map(rng) if args.harder else _standard_map(rng, p)
        host, why_h = _detect(m, "numpy")
        dev, why_d, syncs = _on_device(m, args.device)
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
