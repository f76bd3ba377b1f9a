"""Detection on simulated single-particle reconstructions (another imaging model than our rendered maps).

Each trial renders a Pt particle (our renderer, noise-free), images it many times in random
orientations with a CTF (300 kV, Cs-corrected, 100-600 Å underfocus), an envelope and white
noise, reconstructs it by Wiener-weighted direct Fourier inversion
(:func:`ptnp_gpu.single_particle.simulate_reconstruction`) and, in half the trials, sharpens
the map by part of the envelope's B and low-passes it at 1.0-1.6 Å (as post-processing does). Drawn per trial: 200-800 atoms,
surface U 0.1/0.2/0.4 Å², 800-4,000 images, per-image SNR 0.02-1, envelope B 0-40 Å², 0-60%
of the views within 20° of one axis. Prints one JSON line per trial (recall, precision
within 1 Å; refusals are recall 0) and the mean F1.

    python benchmarks/spa_maps.py [--seed 0] [--trials 10] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tomography_maps import score  # noqa: E402  (the same scoring row)

from ptnp_gpu.mapio import DensityMap  # noqa: E402
from ptnp_gpu.single_particle import simulate_reconstruction  # noqa: E402
from ptnp_gpu.synth import make_particle  # noqa: E402


def draw_spec(rng) -> dict:
    """One trial's imaging conditions."""
    b = round(float(rng.uniform(0, 40)), 1)
    return dict(n_atoms=int(rng.integers(200, 800)), u_surface_A2=float(rng.choice([0.1, 0.2, 0.4])),
                n_images=int(rng.integers(800, 4000)), image_snr=round(float(np.exp(rng.uniform(np.log(0.02), 0.0))), 4),
                b_factor_A2=b, preferred_axis_fraction=round(float(rng.uniform(0, 0.6)), 2),
                sharpen_A2=round(float(rng.uniform(0, b)), 1) if rng.random() < 0.5 else 0.0,
                res_A=round(float(rng.uniform(1.0, 1.6)), 2), seed=int(rng.integers(1 << 30)))


def sharpen(data, voxel_size_A, b_A2, res_A):
    """Post-processing: ``data`` × exp(+B s²/4) in Fourier space (B-factor sharpening), then a
    low-pass at ``res_A`` (cosine edge 0.1 Å⁻¹ wide), float32."""
    if not b_A2:
        return data
    F = np.fft.rfftn(data)
    f = [np.fft.fftfreq(k, voxel_size_A) for k in data.shape[:2]] + [np.fft.rfftfreq(data.shape[2], voxel_size_A)]
    s2 = f[0][:, None, None] ** 2 + f[1][None, :, None] ** 2 + f[2][None, None, :] ** 2
    edge = np.clip((np.sqrt(s2) - (1.0 / res_A - 0.05)) / 0.1, 0, 1)
    F *= np.exp(b_A2 * s2 / 4.0) * 0.5 * (1 + np.cos(np.pi * edge))
    return np.fft.irfftn(F, data.shape, axes=(0, 1, 2)).astype(np.float32)


def trial(rng) -> dict:
    spec = draw_spec(rng)
    p = make_particle(n_atoms=spec["n_atoms"], seed=spec["seed"], margin_A=8, noise=0.0, background=0.0,
                      u_surface_A2=spec["u_surface_A2"])
    vs = float(p.map.voxel_size_A[0])
    t = time.perf_counter()
    rec = simulate_reconstruction(p.map.data.astype(np.float32), vs, n_images=spec["n_images"],
                                  image_snr=spec["image_snr"], b_factor_A2=spec["b_factor_A2"],
                                  preferred_axis_fraction=spec["preferred_axis_fraction"], rng=spec["seed"])
    rec = sharpen(np.asarray(rec), vs, spec["sharpen_A2"], spec["res_A"])
    return score(spec, DensityMap(rec, vs, p.map.origin_A), p.xyz_A,
                 extra={"simulate_s": round(time.perf_counter() - t, 1)})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    rows = [trial(rng) for _ in range(args.trials)]
    f1 = [r["f1"] for r in rows]
    summary = {"trials": len(rows), "mean_f1": round(float(np.mean(f1)), 4), "min_f1": round(float(np.min(f1)), 4)}
    print(f"all: {summary}")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
