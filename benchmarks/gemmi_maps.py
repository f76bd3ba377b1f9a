"""Detection and statistics on maps rendered by another program: gemmi's density calculators.

The maps are made by gemmi (``gemmi.DensityCalculatorE``: electron scattering factors of
International Tables C 4.3.2.2, or ``gemmi.DensityCalculatorX``: X-ray form factors (IT92), i.e.
atoms as their electron clouds, sharper than potentials), with every atom's own anisotropic U
(gemmi's ANISOU) and a global blur, point-sampled on a non-cubic grid. Nothing of ptnp_gpu's
simulator touches the map. Each trial draws:

- a particle: a synthetic fcc particle (Pt, Au, Pd, Ag or Ni; sphere, cuboctahedron, truncated
  octahedron, decahedron or (111) twin; 200-1,400 atoms) or, with ``--experimental``, one of the
  measured particles of ``../shared/data/experimental`` (PdPt rendered with its Pd and Pt, HEA_4 as
  Pt), randomly rotated;
- displacements: core U 0.01-0.03 Å², growing over the outer 3-5 Å to a surface U of 0.1-0.5 Å²,
  outermost atoms with DOI down to 0.2-1.0 (random principal axes);
- the map: voxel 0.28-0.5 Å, each box edge its own margin (5-14 Å), blur (8·voxel)² + 0-30 Å²,
  a smooth solvent background (0-0.5 × an atom's peak) on a constant liquid level, white or
  correlated noise 0.05-0.2 × the peak, and half of the maps low-passed at 1.2-2.0 Å.

Scored against the truth: recall, precision and RMSD within 1 Å; on matched atoms the statistics
of ``compute_statistics``: U_iso (Spearman with the true U over all atoms and over the mobile
shell, where the truth varies; the error of U_iso − the core's median against U − the true core
U, which cancels the atom's intrinsic width), DOI (Spearman with the true DOI in the shell), CN
and GCN (the truth's, counted on the true positions with the statistics' own cutoff: fraction
equal, mean |difference|), nearest-neighbour bond (median |error|) and the
U_iso penetration depth (Eq. 1) against the designed shell depth; the displacement scores also
for the paper's raw fits (``fit_baseline="none"``) on the same atoms.

    python benchmarks/gemmi_maps.py [--seed 0] [--trials 16] [--renderer E|X|both]
        [--experimental] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import gemmi
import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from gemmi_render import gemmi_map  # noqa: E402

from ptnp_gpu.coordination import coordination_numbers, generalized_cn, neighbour_pairs  # noqa: E402
from ptnp_gpu.coordination import nn_bond_lengths_A  # noqa: E402
from ptnp_gpu.detect import detect_atoms  # noqa: E402
from ptnp_gpu.elements import get_element  # noqa: E402
from ptnp_gpu.errors import InputError  # noqa: E402
from ptnp_gpu.mapio import DensityMap  # noqa: E402
from ptnp_gpu.pairing import match_accuracy  # noqa: E402
from ptnp_gpu.simulate import reference_blur_A2  # noqa: E402
from ptnp_gpu.statistics import compute_statistics  # noqa: E402
from ptnp_gpu.synth import ParticleSpec, _displacements, fcc_particle, random_rotation  # noqa: E402

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "experimental"
ELEMENTS = ("Pt", "Au", "Pd", "Ag", "Ni")
SHAPES = ("sphere", "cuboctahedron", "truncated_octahedron", "decahedron", "twin")


def displacements(rel_A, rng, u_core, u_surface, shell_A, min_doi):
    """(N, 3, 3) U growing from ``u_core`` to ``u_surface`` over the outer ``shell_A`` of radial
    depth, the outermost atoms' DOI drawn in [min_doi, 1] (``ptnp simulate``'s rule)."""
    r = np.linalg.norm(rel_A - rel_A.mean(0), axis=1)
    spec = ParticleSpec(u_core_A2=u_core, u_surface_A2=u_surface, shell_depth_A=shell_A, surface_min_doi=min_doi)
    return _displacements(rel_A, r.max() - r, spec, rng)


def draw_particle(rng, models):
    """(name, element for detection, positions centred at 0 (N, 3) Å, symbols (N,))."""
    if models and rng.uniform() < 0.5:
        name = sorted(models)[int(rng.integers(len(models)))]
        xyz, els = models[name]
        els = np.array([e if e in ("Pd", "Pt") else "Pt" for e in els])
        return name, "Pt", (xyz - xyz.mean(0)) @ random_rotation(rng).T, els
    el = ELEMENTS[int(rng.integers(len(ELEMENTS)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    n = int(rng.integers(200, 1400))
    a = get_element(el).lattice_param_A
    ideal = fcc_particle(n, a, "sphere" if shape == "twin" else shape, twin=shape == "twin")
    return f"{el} {shape}", el, (ideal - ideal.mean(0)) @ random_rotation(rng).T, np.array([el] * len(ideal))


def make_map(rng, rel_A, els, element, kind, margin_A=None):
    """Render one drawn map: (spec, DensityMap, true positions, true U, core U). ``margin_A``:
    (x, y, z) Å of solvent beyond the atoms in place of the drawn 5-14 Å (the draws are the same)."""
    spec = dict(renderer=kind, voxel_A=round(float(rng.uniform(0.28, 0.5)), 3),
                u_core_A2=round(float(rng.uniform(0.01, 0.03)), 3),
                u_surface_A2=round(float(rng.uniform(0.1, 0.5)), 3), shell_A=round(float(rng.uniform(3, 5)), 2),
                min_doi=round(float(rng.uniform(0.2, 1.0)), 2), blur_extra_A2=round(float(rng.uniform(0, 30)), 1),
                background=round(float(rng.uniform(0, 0.5)), 2), liquid=round(float(rng.uniform(0, 0.3)), 2),
                noise=round(float(rng.uniform(0.05, 0.2)), 3), noise_kind=str(rng.choice(["white", "correlated"])),
                lowpass_A=round(float(rng.uniform(1.2, 2.0)), 2) if rng.uniform() < 0.5 else None)
    U = displacements(rel_A, rng, spec["u_core_A2"], spec["u_surface_A2"], spec["shell_A"], spec["min_doi"])
    v = spec["voxel_A"]
    margin = rng.uniform(5, 14, 3)                       # per axis (x, y, z), Å
    if margin_A is not None:
        margin = np.broadcast_to(np.asarray(margin_A, dtype=np.float64), (3,))
    lo, hi = rel_A.min(0) - margin, rel_A.max(0) + margin
    nx, ny, nz = (int(np.ceil(e / v)) for e in hi - lo)
    xyz = rel_A - lo + rng.uniform(-0.5, 0.5, 3) * v
    blur = reference_blur_A2(v) + spec["blur_extra_A2"]
    spec.update(box_zyx=[nz, ny, nx], blur_A2=round(blur, 1), n_atoms=len(xyz))
    data = gemmi_map(xyz, els, U, (nz, ny, nx), v, kind, blur)
    # one core atom's peak (at a voxel centre) sets the noise and background scale
    one = gemmi_map(np.full((1, 3), 8 * v), [element], np.eye(3)[None] * spec["u_core_A2"], (16, 16, 16), v,
                    kind, blur)
    peak = float(one.max())
    bg = gaussian_filter(rng.normal(size=data.shape), 6.0 / v, mode="wrap")
    bg = (bg - bg.min()) / max(np.ptp(bg), 1e-12)
    data += peak * (spec["liquid"] + spec["background"] * bg)
    noise = rng.normal(size=data.shape)
    if spec["noise_kind"] == "correlated":
        noise = gaussian_filter(noise, 0.4 / v, mode="wrap")
        noise /= noise.std()
    data += spec["noise"] * peak * noise
    if spec["lowpass_A"]:
        F = np.fft.rfftn(data)
        f = [np.fft.fftfreq(k, v) for k in data.shape[:2]] + [np.fft.rfftfreq(data.shape[2], v)]
        s = np.sqrt(f[0][:, None, None] ** 2 + f[1][None, :, None] ** 2 + f[2][None, None, :] ** 2)
        edge = np.clip((s - (1 / spec["lowpass_A"] - 0.05)) / 0.1, 0, 1)
        data = np.fft.irfftn(F * 0.5 * (1 + np.cos(np.pi * edge)), data.shape, axes=(0, 1, 2))
    origin = np.round(rng.uniform(-40, 40, 3), 2)         # an arbitrary map origin (Å)
    return spec, DensityMap(data.astype(np.float32), v, origin), xyz + origin, U


def _spearman(a, b):
    ok = np.isfinite(a) & np.isfinite(b)
    return float(spearmanr(a[ok], b[ok])[0]) if ok.sum() >= 10 else None


def score(spec, dmap, truth_A, U, element):
    """Detect, compute the statistics and score both against the truth (one row)."""
    row = {"spec": spec}
    t = time.perf_counter()
    try:
        det = detect_atoms(dmap, element)
    except InputError as exc:
        row.update(recall=0.0, precision=None, f1=0.0, refused=str(exc))
        return row
    acc = match_accuracy(det.xyz_A, truth_A, 1.0)
    r, q = acc["recall"], acc["precision"]
    row.update(recall=round(r, 4), precision=round(q, 4), f1=round(2 * r * q / (r + q), 4) if r and q else 0.0,
               rmsd_A=round(acc["rmsd_A"], 4), n_found=acc["n_found"])
    st = compute_statistics(det.backend_map, det.xyz_A, element, labels=det.labels)
    row["seconds"] = round(time.perf_counter() - t, 2)
    c = st.columns
    fi, ti = acc["found_index"], acc["true_index"]
    row.update(_displacement_scores(st, fi, ti, U, spec))
    # the paper's raw fits (the map's own zero) on the same atoms, for comparison
    raw = compute_statistics(det.backend_map, det.xyz_A, element, labels=det.labels, fit_baseline="none")
    row["raw_fits"] = _displacement_scores(raw, fi, ti, U, spec)
    cn_cutoff_A = st.particle["cn_cutoff_A"]       # the statistics' own cutoff (from the fitted lattice)
    pairs = neighbour_pairs(truth_A, cn_cutoff_A)
    cn_true = np.asarray(coordination_numbers(truth_A, cn_cutoff_A, pairs=pairs))
    gcn_true = np.asarray(generalized_cn(cn_true, pairs))
    cn, gcn = c["cn"][fi], c["gcn"][fi]
    row["cn"] = {"equal_frac": round(float(np.mean(cn == cn_true[ti])), 4),
                 "mean_abs_diff": round(float(np.mean(np.abs(cn - cn_true[ti]))), 4)}
    row["gcn_mean_abs_diff"] = round(float(np.mean(np.abs(gcn - gcn_true[ti]))), 4)
    bond_true = np.asarray(nn_bond_lengths_A(truth_A))
    row["bond_nn_median_abs_err_A"] = round(float(np.nanmedian(np.abs(c["bond_nn_A"][fi] - bond_true[ti]))), 4)
    return row


def _displacement_scores(st, fi, ti, U, spec):
    """U_iso, DOI and U_iso penetration depth of the matched atoms against the truth."""
    out = {}
    c = st.columns
    u_true = np.trace(U, axis1=1, axis2=2)[ti] / 3.0
    u_meas = c["u_iso_A2"][fi]
    core = np.abs(u_true - spec["u_core_A2"]) < 1e-6
    shell = ~core                 # atoms in the mobile shell: the truth varies there (the core's is one value)
    ok = np.isfinite(u_meas)
    if core.sum() >= 10 and ok.sum() >= 10:
        excess = u_meas - np.nanmedian(u_meas[core])
        err = excess[ok] - (u_true[ok] - spec["u_core_A2"])
        out["u_iso"] = {"spearman": _spearman(u_meas, u_true), "spearman_shell": _spearman(u_meas[shell],
                        u_true[shell]), "median_abs_err_A2": round(float(np.median(np.abs(err))), 4),
                        "slope": round(float(np.polyfit(u_true[ok], u_meas[ok], 1)[0]), 3),
                        "core_median_A2": round(float(np.nanmedian(u_meas[core])), 4),
                        "failed_frac": round(float(1 - ok.mean()), 4)}
    ev = np.linalg.eigvalsh(U[ti])
    out["doi_spearman_shell"] = _spearman(c["doi"][fi][shell], (ev[:, 0] / ev[:, 2])[shell])
    pen = st.penetration.get("u_iso_A2", {})
    out["u_iso_penetration_A"] = {"fit": round(float(pen["delta_A"]), 2) if pen.get("ok") else None,
                                  "designed": spec["shell_A"]}
    return out


def summary(rows):
    def mean(vals):
        vals = [v for v in vals if v is not None and np.isfinite(v)]
        return round(float(np.mean(vals)), 4) if vals else None
    out = {"n": len(rows), "refused": sum("refused" in r for r in rows), "mean_f1": mean([r["f1"] for r in rows]),
           "mean_recall": mean([r["recall"] for r in rows]),
           "mean_precision": mean([r["precision"] for r in rows])}
    ok = [r for r in rows if "cn" in r]
    out.update(median_rmsd_A=round(float(np.median([r["rmsd_A"] for r in ok])), 4) if ok else None,
               mean_u_iso_spearman=mean([r.get("u_iso", {}).get("spearman") for r in ok]),
               mean_u_iso_spearman_shell=mean([r.get("u_iso", {}).get("spearman_shell") for r in ok]),
               mean_u_iso_err_A2=mean([r.get("u_iso", {}).get("median_abs_err_A2") for r in ok]),
               mean_doi_spearman_shell=mean([r["doi_spearman_shell"] for r in ok]),
               mean_cn_equal_frac=mean([r["cn"]["equal_frac"] for r in ok]),
               mean_gcn_abs_diff=mean([r["gcn_mean_abs_diff"] for r in ok]),
               mean_bond_err_A=mean([r["bond_nn_median_abs_err_A"] for r in ok]))
    for key, get in (("", lambda r: r), ("raw_fits_", lambda r: r["raw_fits"])):
        pens = [(get(r)["u_iso_penetration_A"]["fit"], get(r)["u_iso_penetration_A"]["designed"]) for r in ok
                if get(r)["u_iso_penetration_A"]["fit"] is not None]
        ratios = [f / d for f, d in pens]
        out[key + "u_iso_penetration_fits"] = len(pens)
        out[key + "u_iso_penetration_median_ratio"] = round(float(np.median(ratios)), 3) if pens else None
        out[key + "u_iso_penetration_median_abs_log_ratio"] = (round(float(np.median(np.abs(np.log(ratios)))), 3)
                                                                if pens else None)
    raw = [r["raw_fits"] for r in ok]
    out.update(raw_fits_mean_u_iso_spearman_shell=mean([r.get("u_iso", {}).get("spearman_shell") for r in raw]),
               raw_fits_mean_u_iso_err_A2=mean([r.get("u_iso", {}).get("median_abs_err_A2") for r in raw]),
               raw_fits_mean_doi_spearman_shell=mean([r["doi_spearman_shell"] for r in raw]),
               mean_u_iso_slope=mean([r.get("u_iso", {}).get("slope") for r in ok]),
               raw_fits_mean_u_iso_slope=mean([r.get("u_iso", {}).get("slope") for r in raw]),
               mean_u_iso_failed_frac=mean([r.get("u_iso", {}).get("failed_frac") for r in ok]),
               raw_fits_mean_u_iso_failed_frac=mean([r.get("u_iso", {}).get("failed_frac") for r in raw]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--renderer", choices=("E", "X", "both"), default="both",
                    help="gemmi's electron (E) or X-ray (X) calculator; both: alternate")
    ap.add_argument("--experimental", action="store_true",
                    help="half of the trials from the measured particles in ../shared/data/experimental")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    models = {}
    if args.experimental:
        import experimental_stats
        if DATA_DIR.is_dir():
            models = {k: v for k, v in experimental_stats.load_models(DATA_DIR).items() if k in ("PdPt", "HEA4")}
        if not models:
            print(f"no experimental models under {DATA_DIR}; synthetic particles only", file=sys.stderr)
    rng = np.random.default_rng(args.seed)
    rows = []
    for k in range(args.trials):
        kind = args.renderer if args.renderer != "both" else "EX"[k % 2]
        name, element, rel, els = draw_particle(rng, models)
        spec, dmap, truth, U = make_map(rng, rel, els, element, kind)
        spec["particle"] = name
        row = score(spec, dmap, truth, U, element)
        rows.append(row)
        print(json.dumps(row), flush=True)
    by = {kind: summary([r for r in rows if r["spec"]["renderer"] == kind]) for kind in "EX"
          if any(r["spec"]["renderer"] == kind for r in rows)}
    by.update({f"noise {k}": summary([r for r in rows if r["spec"]["noise_kind"] == k])
               for k in ("white", "correlated") if any(r["spec"]["noise_kind"] == k for r in rows)})
    out = {"command": "python benchmarks/gemmi_maps.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "gemmi": gemmi.__version__, "all": summary(rows), "by_renderer": by, "rows": rows}
    print(json.dumps({k: out[k] for k in ("all", "by_renderer")}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
