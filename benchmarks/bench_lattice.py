"""Time the crystal-domain lattice fit (host work in both backends' statistics).

Models: simulated Pt particles (sphere, decahedron with its twin domains, cuboctahedron,
truncated octahedron; rotated, 0.05 Å jitter) and, when ``../shared/data/experimental``
holds them, the measured PdPt (5,377 atoms) and FePt (23,196 atoms) models. Prints the best
of ``--repeats`` runs and a fingerprint of the result (domains and residuals), so that a
faster fit can be checked to give the same answer.

    python benchmarks/bench_lattice.py [--repeats 10] [--json out.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_maps import DATA_DIR  # noqa: E402
from experimental_stats import load_models  # noqa: E402

from ptnp_gpu.lattice import fit_lattice_domains  # noqa: E402
from ptnp_gpu.synth import fcc_particle, random_rotation  # noqa: E402


def models():
    rng = np.random.default_rng(0)
    out = {}
    for shape, n in (("sphere", 5775), ("decahedron", 3000), ("cuboctahedron", 1500),
                     ("truncated_octahedron", 800)):
        x = fcc_particle(n, 3.924, shape=shape)
        out[shape] = x @ random_rotation(rng).T + rng.normal(scale=0.05, size=x.shape)
    measured = load_models(DATA_DIR)                       # the measured particles, when present
    out.update({name: np.asarray(measured[name][0], np.float64) for name in ("PdPt", "FePt") if name in measured})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    res = {}
    for name, x in models().items():
        fit_lattice_domains(x, "Pt")                      # warm-up (Numba, imports)
        ts = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            d = fit_lattice_domains(x, "Pt")
            ts.append(time.perf_counter() - t)
        fp = np.round(np.concatenate([d.domain.astype(float), np.nan_to_num(d.residual_A)]), 6)
        res[name] = {"n_atoms": len(x), "best_ms": round(1e3 * min(ts), 1),
                     "median_ms": round(1e3 * float(np.median(ts)), 1), "domains": len(d.fits),
                     "fingerprint": hashlib.md5(fp.tobytes()).hexdigest()[:10],
                     "params_A": [np.round(f.params_A, 5).tolist() for f in d.fits]}
        print(f"{name:22s} {len(x):6d} atoms  best {res[name]['best_ms']:7.1f} ms  median "
              f"{res[name]['median_ms']:7.1f} ms  {len(d.fits)} domain(s)  {res[name]['fingerprint']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
