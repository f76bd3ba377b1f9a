"""How well the detection's per-atom position error (``position_sd_A``) predicts the true error.

For each map with known atoms: the atoms detected within 1 Å of a true one, their true RMS
position error per axis, and the estimate (:mod:`ptnp_gpu.precision`). Reported: the ratio
``RMS(true) / RMS(estimate)`` (1 is calibrated; above 1 the estimate is optimistic), the same
by bins of the estimate's significance (noise SDs) and of the true U, the rank correlation of
true and estimated errors, and how the estimate compares with the Cramér-Rao bound of the
map (our simulator's maps: each atom rendered alone, its Fisher information in white noise).

Maps: our simulator (core / mobile surfaces, noise, background), other renderers (plain
Gaussians, cusped Yukawa atoms, gemmi's density), coloured noise under a mask, low-passed and
sharpened maps, a missing wedge, simulated tomograms (FBP, SIRT), a map blurred by 50 Å² (the
blurred-map pass), and the measured Pd@Pt particle (when ``../shared/data`` is present).

    python benchmarks/position_precision.py [--json out.json] [--quick]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ptnp_gpu.detect import detect_atoms  # noqa: E402
from ptnp_gpu.mapio import DensityMap  # noqa: E402
from ptnp_gpu.synth import make_particle  # noqa: E402


def _crb_sd_A(p, idx):
    """Cramér-Rao bound (per-axis RMS, Å) of each atom ``idx`` of ``make_particle``'s ``p`` in its
    white noise: the atom rendered alone with its own U, Fisher information from its gradient."""
    from ptnp_gpu.simulate import atom_peak_value, reference_blur_A2, render_atoms
    vs = float(np.min(p.map.voxel_size_A))
    b = reference_blur_A2(vs) if p.spec.b_extra_A2 is None else p.spec.b_extra_A2
    sig = p.spec.noise * atom_peak_value(p.spec.element, b, p.spec.u_core_A2)
    box, c = (32, 32, 32), np.full((1, 3), 16 * vs)
    out = []
    for i in idx:
        a = np.asarray(render_atoms(c, box, vs, (0, 0, 0), p.spec.element, b_extra_A2=b,
                                    u_aniso_A2=p.u_aniso_A2[i:i + 1], backend="numpy"), float)
        g = np.gradient(a, vs)[::-1]                       # x, y, z
        F = np.array([[(ga * gb).sum() for gb in g] for ga in g]) / sig ** 2
        out.append(np.sqrt(np.trace(np.linalg.inv(F)) / 3.0))
    return np.array(out)


def _rms(v):
    return float(np.sqrt(np.mean(np.square(v)))) if len(v) else None


def score(name, dmap, truth, u_iso=None, particle=None, **opts):
    t = time.perf_counter()
    det = detect_atoms(dmap, opts.pop("element", "Pt"), **opts)
    d, j = cKDTree(det.xyz_A).query(truth)
    ok = d < 1.0
    err = np.sqrt(((det.xyz_A[j[ok]] - truth[ok]) ** 2).mean(1))
    est = det.position_sd_A[j[ok]]
    sig = det.significance[j[ok]]
    fin = np.isfinite(est)
    row = {"map": name, "n_true": int(len(truth)), "n_matched": int(ok.sum()), "n_nan": int((~fin).sum()),
           "rms_true_A": round(_rms(err[fin]), 4), "rms_estimate_A": round(_rms(est[fin]), 4),
           "ratio": round(_rms(err[fin]) / _rms(est[fin]), 3),
           "spearman": round(float(spearmanr(err[fin], est[fin])[0]), 3),
           "significance_median": round(float(np.median(sig)), 2)}
    bins = {}
    for lo, hi in ((0, 6), (6, 10), (10, 20), (20, np.inf)):
        m = fin & (sig >= lo) & (sig < hi)
        if m.sum() >= 10:
            bins[f"{lo}-{hi}"] = {"n": int(m.sum()), "ratio": round(_rms(err[m]) / _rms(est[m]), 3)}
    row["by_significance"] = bins
    if u_iso is not None:
        u = u_iso[ok]
        row["by_true_u"] = {f"{lo}-{hi}": {"n": int(m.sum()), "ratio": round(_rms(err[m]) / _rms(est[m]), 3)}
                            for lo, hi in ((0, 0.15), (0.15, 0.4), (0.4, 2.0))
                            for m in [fin & (u >= lo) & (u < hi)] if m.sum() >= 10}
    if particle is not None and particle.spec.noise and not particle.spec.background:
        crb = _crb_sd_A(particle, np.flatnonzero(ok)[fin])
        row.update(rms_cramer_rao_A=round(_rms(crb), 4), true_over_cramer_rao=round(_rms(err[fin]) / _rms(crb), 3),
                   estimate_over_cramer_rao=round(_rms(est[fin]) / _rms(crb), 3))
    row["seconds"] = round(time.perf_counter() - t, 2)
    print(json.dumps(row), flush=True)
    return row


def _u_iso(p):
    return np.trace(p.u_aniso_A2, axis1=1, axis2=2) / 3.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="our simulator's maps only")
    args = ap.parse_args(argv)
    rows = []
    for spec in (dict(u_surface_A2=0.1, noise=0.05), dict(u_surface_A2=0.1, noise=0.15),
                 dict(u_surface_A2=0.3, noise=0.1), dict(u_surface_A2=0.6, noise=0.15),
                 dict(u_surface_A2=0.3, noise=0.25, background=0.5), dict(u_surface_A2=0.6, noise=0.15, background=0.3)):
        spec = {"background": 0.0, **spec}
        p = make_particle(n_atoms=500, seed=5, **spec)
        rows.append(score("ptnp simulate " + ", ".join(f"{k}={v}" for k, v in spec.items()), p.map, p.xyz_A,
                          _u_iso(p), p))
    if not args.quick:
        from accuracy_detect import gaussian_map
        from test_detect import _filtered_map, _masked_map, _missing_wedge_map, _yukawa_map
        m, xyz = gaussian_map(0.40, 0.60, 0.358, 0.12)
        rows.append(score("plain Gaussians 0.40->0.60 A, noise 0.12", m, xyz))
        for noise in (0.05, 0.1):
            m, xyz = _yukawa_map(noise)
            rows.append(score(f"cusped (Yukawa) atoms, noise {noise} x cusp peak", m, xyz))
        m, xyz = _masked_map(None, 0.0, True)
        rows.append(score("coloured noise 0.15", m, xyz))
        m, xyz = _masked_map("sphere", 4.0, True)
        rows.append(score("coloured noise 0.15, soft mask 4 A out", m, xyz))
        for res_A, b, blur in ((2.0, 0.0, 0.0), (1.6, 30.0, 0.0), (1.6, 0.0, 50.0)):
            m, xyz = _filtered_map(res_A, b, 0.1, blur_A2=blur)
            rows.append(score(f"blurred +{blur:.0f} A^2, low-passed at {res_A} A, sharpened {b:.0f} A^2", m, xyz))
        m, xyz = _missing_wedge_map(60.0, 0.1)
        rows.append(score("missing wedge +-60 deg, noise 0.1", m, xyz))
        from ptnp_gpu.tomography import simulate_tomogram
        for method in ("fbp", "sirt"):
            p = make_particle(n_atoms=600, seed=8, margin_A=8, noise=0.0, background=0.0, u_surface_A2=0.2)
            rec = simulate_tomogram(p.map.data.astype(np.float32), max_tilt_deg=65, step_deg=2.5,
                                    counts_at_peak=3000, method=method, rng=3)
            rows.append(score(f"tomogram {method}, +-65 deg, 3000 counts", DensityMap(rec, p.map.voxel_size_A,
                                                                                   p.map.origin_A), p.xyz_A, _u_iso(p)))
        try:
            import gemmi_maps as G
            rng = np.random.default_rng(11)
            for _ in range(3):
                name, el, rel, els = G.draw_particle(rng, {})
                spec, m, xyz, U = G.make_map(rng, rel, els, el, "gemmi")
                rows.append(score(f"gemmi {name}, noise {spec['noise']} {spec['noise_kind']}, voxel {spec['voxel_A']}"
                                  f", low-pass {spec['lowpass_A']}", m, xyz, np.trace(U, axis1=1, axis2=2) / 3.0,
                                  element=el))
        except ImportError as exc:
            print(f"gemmi maps skipped: {exc}")
        from bench_maps import DATA_DIR, pdpt_case
        if (DATA_DIR / "PdPt_EPB_5377.xyz").exists():
            case = pdpt_case()
            rows.append(score("measured Pd@Pt particle (5,377 atoms) rendered, bench_maps noise", case.dmap, case.xyz_A))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
