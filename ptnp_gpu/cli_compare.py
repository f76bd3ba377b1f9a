"""``ptnp compare``: common, moved, lost and gained atoms of two models (paper Fig. 3),
and ``ptnp compare --series MERGED PART1 PART2``: penetration depth of each (paper Fig. 4).
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

MAP_SUFFIXES = (".mrc", ".map", ".ccp4", ".mrcs", ".rec")
SERIES_LABELS = ("merged", "part1", "part2")
#: Eq. 1 bounds on the core value per statistic (the paper bounds CN to [10, 12])
C_BOUNDS = {"cn": (10.0, 12.0), "gcn": None}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="compare two models of one particle (common, moved, lost, gained atoms)",
        description="Pair the atoms of two models of one particle one-to-one (optimal assignment within "
                    "the cutoff) and report common, moved, lost and gained atoms (paper Fig. 3). Inputs are "
                    "models (ptnp result folders, PDB, mmCIF, CSV, XYZ, MATLAB .mat) or maps (analysed first). "
                    "With --series MERGED PART1 PART2: analyse the three maps of a split time series, report the "
                    "penetration depth of each (paper Fig. 4) and compare part1 with part2.",
)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="A B (two models or maps); with --series: MERGED PART1 PART2")
    p.add_argument("--series", action="store_true", help="inputs are the merged, part1 and part2 maps (or result folders)")
    p.add_argument("--cutoff", type=float, default=None, metavar="Å",
                   help="common-atom cutoff in Å (default 0.8 × atomic diameter of --element: 1.76 Å for Pt)")
    p.add_argument("--moved-radius", type=float, default=None, metavar="Å",
                   help="unpaired atoms closer than this count as moved, not lost + gained (default 2 × cutoff)")
    p.add_argument("--register", action="store_true",
                   help="superpose B onto A first (rigid rotation + translation found from the atoms)")
    p.add_argument("--element", default="Pt", help="element for the default cutoff and map analysis (default Pt)")
    p.add_argument("--voxel-size", type=float, default=None, metavar="Å", help="override the maps' voxel size")
    p.add_argument("--depth-bin", type=float, default=2.0, metavar="Å", help="radial-depth bin for displacement statistics (default 2 Å)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default compare_A_vs_B beside A, or compare_series_MERGED beside MERGED)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--no-figure", action="store_true", help="skip the PNG figures")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)


def _stem(path: Path) -> str:
    path = Path(path)
    return path.name if path.is_dir() else path.stem


def _is_map(path: Path) -> bool:
    return Path(path).suffix.lower() in MAP_SUFFIXES


def _analyse(map_path: Path, out_dir: Path, args) -> Path:
    from .errors import InputError
    if not map_path.is_file():
        raise InputError(f"{map_path}: no such file")
    try:
        from .pipeline import run_analyze
    except ImportError as exc:
        raise InputError(f"{map_path}: map analysis is not available in this installation ({exc})") from None
    res = run_analyze(map_path, out_dir=out_dir, element=args.element, voxel_size_A=args.voxel_size,
                      force=True, quiet=True)
    return Path(res.get("out_dir", out_dir))


def _load(path: Path, work: Path, label: str, args):
    """(Model, result folder or None) for a model file, result folder or map."""
    from .models import read_model
    if _is_map(path):
        folder = _analyse(path, work / label, args)
        return read_model(folder), folder
    return read_model(path), (path if path.is_dir() else None)


def _check_args(args):
    from .errors import InputError
    n = 3 if args.series else 2
    if len(args.inputs) != n:
        what = "MERGED PART1 PART2" if args.series else "A B"
        raise InputError(f"expected {n} inputs ({what}); got {len(args.inputs)}")
    for name in ("cutoff", "moved_radius", "voxel_size", "depth_bin"):
        v = getattr(args, name)
        if v is not None and not (v > 0 and v < float("inf")):
            raise InputError(f"--{name.replace('_', '-')} must be a positive number of Å; got {v}")
    from .elements import get_element
    try:
        get_element(args.element)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _compare(model_a, model_b, args, labels):
    """Register (optionally) and compare; returns (model_b in A's frame, comparison, summary)."""
    import numpy as np

    from .compare import compare_points, default_cutoff_A
    from .models import Model
    cutoff = args.cutoff if args.cutoff is not None else default_cutoff_A(args.element)
    registration = None
    if args.register:
        from .registration import register_points
        registration = register_points(model_b.xyz_A, model_a.xyz_A, cutoff_A=cutoff)
        r = registration.rotation
        u = None
        if model_b.u_aniso_A2 is not None:
            u6 = np.asarray(model_b.u_aniso_A2, float)
            m = u6[:, [0, 3, 4, 3, 1, 5, 4, 5, 2]].reshape(-1, 3, 3)
            m = r @ m @ r.T
            u = m.reshape(-1, 9)[:, [0, 4, 8, 1, 2, 5]]
        model_b = Model(registration.apply(model_b.xyz_A), list(model_b.elements), model_b.b_A2, u,
                        dict(model_b.columns))
    comp = compare_points(model_a.xyz_A, model_b.xyz_A, cutoff, moved_radius_A=args.moved_radius)
    summary = {"a": labels[0], "b": labels[1], "element": args.element} | comp.summary(depth_bin_A=args.depth_bin)
    summary["registration"] = registration.as_dict() if registration else None
    sd_a, sd_b = ((m.columns or {}).get("position_sd_A") for m in (model_a, model_b))
    if sd_a is not None and sd_b is not None:
        # both models carry their atoms' position errors (ptnp results): which common atoms moved
        # farther than the noise explains
        from .compare import displacement_beyond_noise
        summary["displacement_beyond_noise"] = displacement_beyond_noise(comp, sd_a, sd_b,
                                                                         bin_A=args.depth_bin)[1]
    return model_b, comp, summary


def _print_summary(s, labels, out):
    print(f"{labels[0]}: {s['n_a']} atoms   {labels[1]}: {s['n_b']} atoms   cutoff {s['cutoff_A']:.3g} Å")
    print(f"common {s['n_common']} ({s['percent_common_of_a']:.1f}% of {labels[0]}, "
          f"{s['percent_common_of_b']:.1f}% of {labels[1]}); moved > cutoff {s['n_moved']}; "
          f"lost {s['n_lost']}; gained {s['n_gained']}")
    if s["n_common"]:
        print(f"displacement of common atoms: median {s['displacement_common_median_A']:.3f} Å, "
              f"RMS {s['displacement_common_rms_A']:.3f} Å")
    noise = s.get("displacement_beyond_noise")
    if noise and noise["n_tested"]:
        print(f"displaced beyond their position noise (p < {noise['p_value']:g}): {noise['n_beyond_noise']} of "
              f"{noise['n_tested']} common atoms ({noise['percent_beyond_noise']:.1f}%; "
              f"{noise['expected_by_chance']:.1f} expected by chance)")
    if s.get("registration"):
        reg = s["registration"]
        print(f"registration: rotation {reg['rotation_angle_deg']:.3f}°, translation "
              f"{', '.join(f'{v:.3f}' for v in reg['translation_A'])} Å, residual RMSD {reg['residual_rmsd_A']:.3f} Å "
              f"over {reg['n_pairs']} pairs")
    print(f"results in {out}")


def _warn_frame(s):
    if not s.get("registration") and s["n_a"] and s["percent_common_of_a"] < 50.0:
        print(f"ptnp compare: warning: only {s['percent_common_of_a']:.1f}% of A's atoms are common; "
              "if the models are not in the same frame, add --register", file=sys.stderr)


def _run_pair(args) -> int:
    from .compare_report import output_folder, write_comparison
    pa, pb = Path(args.inputs[0]), Path(args.inputs[1])
    out = Path(args.out) if args.out else pa.parent / f"compare_{_stem(pa)}_vs_{_stem(pb)}"
    labels = (_stem(pa), _stem(pb)) if _stem(pa) != _stem(pb) else ("A", "B")
    with output_folder(out, force=args.force) as work:
        model_a, _ = _load(pa, work, f"a_{_stem(pa)}", args)
        model_b, _ = _load(pb, work, f"b_{_stem(pb)}", args)
        model_b, comp, summary = _compare(model_a, model_b, args, labels)
        summary["inputs"] = {"a": str(pa), "b": str(pb)}
        if args.register:
            from .compare_report import write_points_pdb
            write_points_pdb(work / "b_registered.pdb", model_b.xyz_A, model_b.elements, model_b.b_A2)
        write_comparison(work, model_a, model_b, comp, summary=summary, labels=labels, figure=not args.no_figure)
    _warn_frame(summary)
    if not args.quiet:
        _print_summary(summary, labels, out)
    return 0


def read_penetration_csv(path) -> dict:
    """Fits from a result folder's ``penetration.csv``: statistic → {delta_A, m, c, ...}.

    Tolerant of the column layout: a ``statistic`` (or ``stat``/``name``)
    column and numeric ``delta_A``, ``m`` and ``c`` columns; rows that lack
    them are skipped. Returns an empty dict when the file is absent.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for r in rows:
        key = next((r[k] for k in ("statistic", "stat", "name") if r.get(k)), None)
        try:
            vals = {k: float(r[k]) for k in ("delta_A", "m", "c")}
        except (KeyError, TypeError, ValueError):
            continue
        try:
            vals["delta_err_A"] = float(r["delta_err_A"])
        except (KeyError, TypeError, ValueError):
            pass
        if key:
            out.setdefault(key.strip().lower(), vals | {"source": str(path.name)})
    return out


def _fit(curve: dict, stat: str) -> dict:
    """Fallback Eq. 1 fit when a folder has no usable penetration.csv."""
    try:
        from .penetration import fit_penetration
    except ImportError:
        return {"delta_A": float("nan"), "m": float("nan"), "c": float("nan"), "source": "unavailable"}
    f = fit_penetration(curve["radial_depth_A"], curve[stat], c_bounds=C_BOUNDS.get(stat), name=stat)
    return {k: f[k] for k in ("delta_A", "m", "c")} | {"source": "fit_penetration", "message": f.get("message", "")}


def _final_path(path: Path, work: Path, out: Path) -> Path:
    """Where ``path`` (maybe inside the temporary folder ``work``) lies once ``work`` becomes ``out``."""
    path, work = Path(path).resolve(), Path(work).resolve()
    try:
        return out.resolve() / path.relative_to(work)
    except ValueError:
        return path


def _run_series(args) -> int:
    from .compare_report import output_folder, read_depth_curves, series_figure, write_comparison, write_json
    from .errors import InputError
    paths = [Path(p) for p in args.inputs]
    out = Path(args.out) if args.out else paths[0].parent / f"compare_series_{_stem(paths[0])}"
    with output_folder(out, force=args.force) as work:
        folders, curves, fits, models = {}, {}, {}, {}
        for label, p in zip(SERIES_LABELS, paths):
            if _is_map(p):
                folder = _analyse(p, work / label, args)
            elif p.is_dir():
                folder = p
            else:
                raise InputError(f"{p}: --series needs maps or ptnp result folders (with atoms.csv)")
            from .models import read_model
            models[label] = read_model(folder)
            folders[label] = folder
            curves[label] = read_depth_curves(folder)
            given = read_penetration_csv(folder / "penetration.csv")
            fits[label] = {st: given.get(st) or _fit(curves[label], st)
                           for st in ("cn", "gcn") if st in curves[label]}
        model_b, comp, summary = _compare(models["part1"], models["part2"], args, ("part1", "part2"))
        summary["inputs"] = {"a": str(paths[1]), "b": str(paths[2])}
        write_comparison(work, models["part1"], model_b, comp, summary=summary, labels=("part1", "part2"),
                         figure=not args.no_figure)
        series = {"inputs": {lab: str(p) for lab, p in zip(SERIES_LABELS, paths)},
                  "result_folders": {lab: str(_final_path(f, work, out)) for lab, f in folders.items()},
                  "n_atoms": {lab: len(m) for lab, m in models.items()},
                  "penetration": fits,
                  "compare_part1_part2": "compare.json"}
        write_json(work / "series.json", series)
        if not args.no_figure:
            fig = series_figure(curves, fits)
            fig.savefig(work / "series.png", dpi=130)
            import matplotlib.pyplot as plt
            plt.close(fig)
    _warn_frame(summary)
    if not args.quiet:
        for lab in SERIES_LABELS:
            deltas = ", ".join(f"δ_{st.upper()} = {f['delta_A']:.2f} Å" for st, f in fits[lab].items())
            print(f"{lab}: {series['n_atoms'][lab]} atoms; {deltas or 'no CN/GCN columns'}")
        _print_summary(summary, ("part1", "part2"), out)
    return 0


def run(args) -> int:
    _check_args(args)
    return _run_series(args) if args.series else _run_pair(args)
