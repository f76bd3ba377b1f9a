"""Statistics of the experimental particles in ``../shared/data/experimental/``.

Each published model (PdPt core-shell, FePt, HEA_4) is rendered as a map with
the project's simulator (Pt scattering for every atom, isotropic U growing
from 0.02 Å² in the core to 0.10 Å² at the surface over 4 Å, smooth background
and white noise at 0.15 of a core atom's peak, as :mod:`ptnp_gpu.synth`),
then

1. :func:`compute_statistics` runs on the published positions, and
2. when ``--analyze`` is given, ``ptnp analyze`` (detection + statistics,
   :func:`ptnp_gpu.pipeline.run_analyze`) runs on the map written as MRC, and
   the detected model is matched to the published one.

The Table 1 row (atoms, diameter, median CN, median NN bond, median radial
strain, core ratio), the lattice fit and the CN penetration depth are printed.
Radial strain is measured against bulk Pt (3.924 Å) for every particle.

``--z-contrast`` renders the maps as a Z-contrast (HAADF-STEM) tomogram shows
them instead: each atom's density × (Z / 78)^1.7, so Pd at 0.41 and Fe at 0.15
of Pt (HEA_4's species are unnamed and stay at 1). The recall of the light
atoms is printed separately.

Usage::

    python benchmarks/experimental_stats.py [--analyze] [--only PdPt,FePt,HEA4] [--out FILE.json]
                                            [--keep DIR]

Skips (exit 0) when the data folder is absent.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "experimental"


def load_models(data: Path) -> dict:
    """name → (xyz_A (N, 3), element symbols (N,))."""
    from ptnp_gpu.models import read_model
    out = {}
    f = data / "PdPt_EPB_5377.xyz"
    if f.is_file():
        m = read_model(f)
        out["PdPt"] = (m.xyz_A, np.array(m.elements))
    f, g = data / "FePt_model.npy", data / "FePt_atoms.npy"
    if f.is_file() and g.is_file():
        xyz = np.load(f).T
        species = np.load(g).ravel()
        out["FePt"] = (xyz, np.where(species == 0, "Fe", "Pt"))
    f = data / "HEA4_final.mat"
    if f.is_file():
        from scipy.io import loadmat
        d = loadmat(f)
        xyz = np.asarray(d["model"], float).T
        out["HEA4"] = (xyz, np.array([f"species{int(s)}" for s in np.ravel(d["atoms"])]))
    return out


Z_NUMBERS = {"Fe": 26, "Pd": 46, "Pt": 78}
Z_EXPONENT = 1.7          # HAADF intensity ~ Z^1.5-2


def z_contrast_weights(elements) -> np.ndarray:
    """Per-atom density scale of a Z-contrast map, relative to Pt (unknown species: 1)."""
    return np.array([(Z_NUMBERS[e] / 78.0) ** Z_EXPONENT if e in Z_NUMBERS else 1.0 for e in elements])


def render_model(xyz_A, *, voxel_size_A=0.358, margin_A=7.0, noise=0.15, background=0.15, seed=0,
                 backend=None, weights=None):
    """Map of a model, synth style; returns (DensityMap, shifted xyz)."""
    from ptnp_gpu.backend import to_host
    from ptnp_gpu.mapio import DensityMap
    from ptnp_gpu.simulate import atom_peak_value, reference_blur_A2, render_atoms
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(seed)
    vs = float(voxel_size_A)
    lo = xyz_A.min(0) - margin_A
    shape_xyz = np.ceil((xyz_A.max(0) + margin_A - lo) / vs).astype(int) + 1
    shape = tuple(int(v) for v in shape_xyz[::-1])
    xyz = xyz_A - lo                                     # origin 0 at the box corner
    centre = xyz.mean(0)
    r = np.linalg.norm(xyz - centre, axis=1)
    depth = r.max() - r
    u = 0.02 + 0.08 * np.clip(1.0 - depth / 4.0, 0.0, 1.0)
    b = reference_blur_A2(vs)
    data = np.asarray(to_host(render_atoms(xyz, shape, vs, (0, 0, 0), "Pt", b_extra_A2=b, u_iso_A2=u,
                                           weights=weights, backend=backend)), float)
    peak = atom_peak_value("Pt", b, 0.02)
    bg = gaussian_filter(rng.normal(size=shape), 6.0 / vs, mode="wrap")
    bg = (bg - bg.min()) / max(bg.max() - bg.min(), 1e-12)
    data += background * peak * bg + rng.normal(scale=noise * peak, size=shape)
    return DensityMap(data.astype(np.float32), vs, (0.0, 0.0, 0.0)), xyz


def _row(p: dict, pen: dict) -> dict:
    keys = ("n_atoms", "diameter_A", "cn_median", "bond_nn_median_A", "strain_radial_median_pct", "core_ratio",
            "lattice_a_A", "lattice_b_A", "lattice_c_A", "lattice_inlier_fraction", "lattice_rms_A",
            "u_iso_median_A2", "doi_median")
    row = {k: p.get(k) for k in keys}
    cn = pen.get("cn") or {}
    row["cn_penetration_A"] = cn.get("delta_A")
    row["cn_penetration_err_A"] = cn.get("delta_err_A")
    row["gcn_penetration_A"] = (pen.get("gcn") or {}).get("delta_A")
    return row


def _print_row(name, how, row, extra=""):
    f = lambda v, d=3: "nan" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{d}f}"  # noqa: E731
    print(f"{name:5s} {how:8s} atoms {row['n_atoms']:6d}  diam {f(row['diameter_A'], 1)} Å  "
          f"CN med {f(row['cn_median'], 1)}  NN {f(row['bond_nn_median_A'])} Å  "
          f"strain {f(row['strain_radial_median_pct'], 2)} %  core {f(row['core_ratio'])}  "
          f"a,b,c {f(row['lattice_a_A'])} {f(row['lattice_b_A'])} {f(row['lattice_c_A'])} Å "
          f"(inliers {f(row['lattice_inlier_fraction'], 2)})  "
          f"δ_CN {f(row['cn_penetration_A'], 2)} ± {f(row['cn_penetration_err_A'], 2)} Å  "
          f"δ_GCN {f(row['gcn_penetration_A'], 2)} Å{extra}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--analyze", action="store_true", help="also run detection + statistics (ptnp analyze)")
    ap.add_argument("--only", default=None, help="comma-separated subset of PdPt,FePt,HEA4")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    ap.add_argument("--keep", type=Path, default=None, help="keep maps and result folders here")
    ap.add_argument("--z-contrast", action="store_true",
                    help="render as a Z-contrast tomogram: density x (Z/78)^1.7 (Pd 0.41, Fe 0.15 of Pt)")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"no experimental data at {args.data}; skipping")
        return 0
    from ptnp_gpu.mapio import write_map
    from ptnp_gpu.pairing import match_accuracy
    from ptnp_gpu.statistics import compute_statistics, write_statistics
    models = load_models(args.data)
    if args.only:
        keep = set(args.only.split(","))
        models = {k: v for k, v in models.items() if k in keep}
    results = {}
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ptnp_exp_"))
    work.mkdir(parents=True, exist_ok=True)
    for name, (xyz0, elements) in models.items():
        t = time.perf_counter()
        w = z_contrast_weights(elements) if args.z_contrast else None
        dmap, xyz = render_model(xyz0, weights=w)
        t_render = time.perf_counter() - t
        t = time.perf_counter()
        st = compute_statistics(dmap, xyz, "Pt")
        t_stats = time.perf_counter() - t
        row = _row(st.particle, st.penetration)
        row.update(render_s=t_render, stats_s=t_stats, map_shape_zyx=list(dmap.shape),
                   elements={str(e): int(c) for e, c in zip(*np.unique(elements, return_counts=True))})
        results[name] = {"truth_positions": row}
        _print_row(name, "truth", row, f"  [{t_stats:.1f} s, map {dmap.shape}]")
        if args.keep:
            write_statistics(work / f"{name}_truth_stats", dmap, st, model_extra={"element": elements})
        if args.analyze:
            from ptnp_gpu.pipeline import run_analyze
            mrc = work / f"{name}.mrc"
            write_map(mrc, dmap.data, dmap.voxel_size_A, dmap.origin_A)
            t = time.perf_counter()
            summ = run_analyze(mrc, out_dir=work / f"{name}_ptnp", element="Pt", force=True, quiet=True)
            t_an = time.perf_counter() - t
            from ptnp_gpu.models import read_model
            found = read_model(work / f"{name}_ptnp").xyz_A
            acc = match_accuracy(found, xyz, 1.0)
            r2 = _row(summ["particle"], summ["penetration"])
            r2.update(analyze_s=t_an, recall=acc["recall"], precision=acc["precision"], rmsd_A=acc["rmsd_A"])
            if w is not None and np.any(w < 1):
                from scipy.spatial import cKDTree
                d, _ = cKDTree(found).query(xyz)
                r2["recall_by_element"] = {str(e): float(np.mean(d[elements == e] < 1.0))
                                           for e in np.unique(elements)}
                print(f"      recall by element: {r2['recall_by_element']}")
            results[name]["analyze"] = r2
            _print_row(name, "analyze", r2, f"  [recall {acc['recall']:.3f}, precision {acc['precision']:.3f}, "
                                            f"rmsd {acc['rmsd_A']:.3f} Å, {t_an:.1f} s]")
        if not args.keep:
            for f in work.glob(f"{name}*.mrc"):
                f.unlink()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=lambda v: None if v is None else float(v)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
