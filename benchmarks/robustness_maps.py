"""Detection on maps with random reconstruction traits: blur, low-pass, sharpening, masks.

Each trial takes the 500-atom Pt particle of ``tests/test_detect.py::_filtered_map`` and
draws: extra blur 0-60 Å² (measured maps are blurrer than our simulator's), noise 0.05-0.15 ×
the blurred atom's peak, a low-pass at 1.3-2.0 Å, sharpening by 0 to the blur + 20 Å², and no
mask, a soft spherical mask 4-10 Å beyond the atoms (3 Å edge) or a hard one. Prints one line
per trial (recall, precision within 1 Å; refusals are recall 0) and the mean F1 by mask kind.

    python benchmarks/robustness_maps.py [--seed 0] [--trials 24] [--json out.json] [--harder]

``--harder`` draws from wider ranges on particles of 200-1,500 atoms: blur 0-80 Å², noise
0.05-0.25, low-pass 1.3-2.4 Å, sharpening by 0 to the blur + 30 Å², surface U 0.1/0.2/0.4 Å²,
and no mask, a soft sphere (edge 1-6 Å), a hard sphere or the atoms' envelope, 2-10 Å out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_detect import _distance_to_atoms_A, _filtered_map, _solvent_mask_of  # noqa: E402

from ptnp_gpu.detect import detect_atoms  # noqa: E402
from ptnp_gpu.errors import InputError  # noqa: E402
from ptnp_gpu.mapio import DensityMap  # noqa: E402
from ptnp_gpu.pairing import match_accuracy  # noqa: E402
from ptnp_gpu.simulate import atom_peak_value, reference_blur_A2  # noqa: E402
from ptnp_gpu.synth import make_particle  # noqa: E402


def _standard_map(rng, p):
    """One map of the standard draw: (spec, map, true positions); ``p`` is the particle of
    ``_filtered_map`` (for its masks)."""
    blur = float(rng.uniform(0, 60))
    spec = dict(blur_A2=round(blur, 1), noise=round(float(rng.uniform(0.05, 0.15)), 3),
                res_A=round(float(rng.uniform(1.3, 2.0)), 2),
                sharpen_A2=round(float(rng.uniform(0, blur + 20)), 1),
                mask=str(rng.choice(["none", "soft", "hard"])), pad_A=round(float(rng.uniform(4, 10)), 1))
    m, xyz = _filtered_map(spec["res_A"], spec["sharpen_A2"], spec["noise"], seed=int(rng.integers(1 << 30)),
                           blur_A2=spec["blur_A2"])
    if spec["mask"] != "none":
        kind = "sphere" if spec["mask"] == "soft" else "hard"
        m = DensityMap((m.data * _solvent_mask_of(p, kind, spec["pad_A"])).astype(np.float32), 0.358)
    return spec, m, xyz


def _harder_map(rng):
    """One map of the ``--harder`` draw: (spec, map, true positions)."""
    blur = float(rng.uniform(0, 80))
    spec = dict(blur_A2=round(blur, 1), noise=round(float(rng.uniform(0.05, 0.25)), 3),
                res_A=round(float(rng.uniform(1.3, 2.4)), 2), sharpen_A2=round(float(rng.uniform(0, blur + 30)), 1),
                mask=str(rng.choice(["none", "soft", "hard", "envelope"])), pad_A=round(float(rng.uniform(2, 10)), 1),
                edge_A=round(float(rng.uniform(1, 6)), 1), u_surface_A2=float(rng.choice([0.1, 0.2, 0.4])),
                n_atoms=int(rng.integers(200, 1500)))
    b_extra = reference_blur_A2(0.358) + spec["blur_A2"]
    p = make_particle(n_atoms=spec["n_atoms"], seed=int(rng.integers(1 << 30)), margin_A=12, noise=0.0,
                      background=0.15, b_extra_A2=b_extra, u_surface_A2=spec["u_surface_A2"])
    d = p.map.data + rng.normal(scale=spec["noise"] * atom_peak_value("Pt", b_extra, 0.02), size=p.map.shape)
    F = np.fft.rfftn(d)
    f = [np.fft.fftfreq(k, 0.358) for k in d.shape[:2]] + [np.fft.rfftfreq(d.shape[2], 0.358)]
    s = np.sqrt(f[0][:, None, None] ** 2 + f[1][None, :, None] ** 2 + f[2][None, None, :] ** 2)
    edge = np.clip((s - (1 / spec["res_A"] - 0.05)) / 0.1, 0, 1)
    F *= 0.5 * (1 + np.cos(np.pi * edge)) * np.exp(spec["sharpen_A2"] / 4 * s * s)
    d = np.fft.irfftn(F, d.shape, axes=(0, 1, 2))
    if spec["mask"] == "envelope":
        d = d * np.clip((spec["pad_A"] + spec["edge_A"] - _distance_to_atoms_A(p)) / spec["edge_A"], 0, 1)
    elif spec["mask"] != "none":
        idx = np.stack(np.indices(p.map.shape), -1)
        r = np.sqrt(((idx - np.array(p.map.shape) / 2) ** 2).sum(-1)) * 0.358
        radius = np.linalg.norm(p.xyz_A - p.center_A, axis=1).max() + spec["pad_A"]
        d = d * ((r < radius).astype(float) if spec["mask"] == "hard"
                 else np.clip((radius + spec["edge_A"] - r) / spec["edge_A"], 0, 1))
    return spec, DensityMap((d / d.max()).astype(np.float32), 0.358), p.xyz_A


def _score(spec, m, xyz):
    """Detect Pt atoms in ``m`` and score them against ``xyz`` (one printed row)."""
    row = {"spec": spec}
    try:
        a = match_accuracy(detect_atoms(m, "Pt").xyz_A, xyz, 1.0)
        row.update(recall=float(a["recall"]), precision=float(a["precision"]))
    except InputError as exc:
        row.update(recall=0.0, precision=None, refused=str(exc))
    r, q = row["recall"], row["precision"]
    row["f1"] = 0.0 if not r or not q else 2 * r * q / (r + q)
    print(json.dumps(row), flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--json", default=None)
    ap.add_argument("--harder", action="store_true", help="wider ranges, mobile surfaces, envelope masks")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    p = make_particle(n_atoms=500, seed=12, margin_A=10, noise=0.0, background=0.15)   # _filtered_map's
    rows = []
    for _ in range(args.trials):
        if args.harder:
            spec, m, xyz = _harder_map(rng)
            rows.append(_score(spec, m, xyz))
            continue
        rows.append(_score(*_standard_map(rng, p)))
    for kind in ("none", "soft", "hard", "envelope"):
        f = [r["f1"] for r in rows if r["spec"]["mask"] == kind]
        if f:
            print(f"mask {kind:8s}: {len(f):2d} trials, mean F1 {np.mean(f):.3f}, min {np.min(f):.3f}")
    print(f"all: {len(rows)} trials, mean F1 {np.mean([r['f1'] for r in rows]):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
