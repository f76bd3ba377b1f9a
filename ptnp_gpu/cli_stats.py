"""``ptnp stats MAP MODEL``: per-atom statistics of an existing model on its map.

MODEL is a ptnp result folder or a PDB / mmCIF / CSV / XYZ / MAT file in the
map's frame (Å). With ``--center`` a model from elsewhere (e.g. coordinates
centred on 0) is first translated onto the particle in the map (centroid of
the strong density, then the peak of the map-model cross-correlation). Results go into ``--out`` (default: MODEL itself when it is a
result folder, else ``<map stem>_ptnp`` beside the map); ``summary.json`` is
written last.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

__all__ = ["register", "run_stats"]

_STATS_FILES = ("particle.json", "particle.csv", "cn_stats.csv", "penetration.csv")


def _positive(text):
    import argparse
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return v


def _register_to_map(dmap, xyz_A, element):
    """Translation (Å) that puts a model onto its particle in the map.

    Coarse: the model centroid goes to the centroid of the strong voxels
    (above mean + 2 SD). Fine: the peak of the FFT cross-correlation of the
    map with the model rendered there, with a parabolic sub-voxel estimate per
    axis. A one-off, host-side step for models from elsewhere.
    """
    import numpy as np
    import scipy.fft as sfft

    from .simulate import render_atoms
    d = np.asarray(dmap.data, dtype=np.float64)
    strong = d > d.mean() + 2.0 * d.std()
    if not strong.any():
        strong = d > d.mean()
    idx = np.argwhere(strong).mean(0)                      # z, y, x
    shift = dmap.voxel_to_xyz_A(idx[::-1]) - xyz_A.mean(0)
    sim = render_atoms(xyz_A + shift, d.shape, dmap.voxel_size_A, dmap.origin_A, element, backend="numpy")
    a = d - d.mean()
    b = np.asarray(sim, np.float64)
    b -= b.mean()
    xc = sfft.irfftn(sfft.rfftn(a) * np.conj(sfft.rfftn(b)), s=d.shape)
    peak = np.array(np.unravel_index(np.argmax(xc), xc.shape))
    sub = np.zeros(3)
    for ax in range(3):                                    # parabola through the peak and its neighbours
        lo, hi = peak.copy(), peak.copy()
        lo[ax] = (peak[ax] - 1) % d.shape[ax]
        hi[ax] = (peak[ax] + 1) % d.shape[ax]
        y0, y1, y2 = xc[tuple(lo)], xc[tuple(peak)], xc[tuple(hi)]
        den = y0 - 2 * y1 + y2
        sub[ax] = 0.5 * (y0 - y2) / den if den < 0 else 0.0
    n = np.array(d.shape)
    signed = np.where(peak > n // 2, peak - n, peak) + sub   # z, y, x voxels
    return shift + signed[::-1] * dmap.voxel_size_A


def run_stats(map_path, model_path, element="Pt", out_dir=None, voxel_size_A=None, force=False,
              center=False, figures=True, backend=None, presmooth_A=None, invert=False,
              depth="radial", blur_correction="auto", fit_baseline="solvent") -> dict:
    """Compute and write the statistics of ``model_path`` on ``map_path``.

    ``depth``: ``"radial"`` (default) or ``"surface"``, ``blur_correction``: ``"auto"``
    (default), ``"core"`` or ``"none"``, and ``fit_baseline``: ``"solvent"`` (default) or
    ``"none"``, as in :func:`ptnp_gpu.statistics.compute_statistics`.

    Returns
    -------
    dict: the summary written to ``summary.json``.

    Raises
    ------
    InputError
        Unreadable map or model, unknown element, a model that does not lie
        in the map, or an existing result without ``force``.
    """
    import numpy as np

    from . import __version__
    from .elements import get_element
    from .errors import InputError
    from .mapio import read_map
    from .models import atomic_write, read_model
    from .statistics import compute_statistics, write_statistics
    t0 = time.perf_counter()
    try:
        el = get_element(element)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    map_path, model_path = Path(map_path), Path(model_path)
    dmap = read_map(map_path, voxel_size_A)
    if invert:                                   # atoms dark: the statistics read bright atoms
        dmap.data = np.negative(dmap.data)
    model = read_model(model_path)
    if len(model) == 0:
        raise InputError(f"{model_path}: model holds no atoms")
    if out_dir is None:
        out = model_path if model_path.is_dir() else map_path.with_name(map_path.stem + "_ptnp")
    else:
        out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and not force:
        is_own_detect = out.resolve() == model_path.resolve() and not (out / "particle.json").exists()
        if any(out.iterdir()) and not is_own_detect:
            raise InputError(f"result folder {out} already holds results; use --force to replace them")
    xyz = model.xyz_A.copy()
    shift = np.zeros(3)
    if center:
        shift = _register_to_map(dmap, xyz, el)
        xyz = xyz + shift
    lo = dmap.origin_A - 0.5 * dmap.voxel_size_A
    hi = dmap.origin_A + (np.array(dmap.shape[::-1]) - 0.5) * dmap.voxel_size_A
    inside = np.all((xyz >= lo) & (xyz <= hi), axis=1)
    if inside.mean() < 0.5:
        raise InputError(
            f"{model_path}: only {int(inside.sum())} of {len(xyz)} atoms lie inside the map "
            f"(x {lo[0]:.1f}–{hi[0]:.1f}, y {lo[1]:.1f}–{hi[1]:.1f}, z {lo[2]:.1f}–{hi[2]:.1f} Å); "
            "the model is not in the map's frame (try --center)")
    st = compute_statistics(dmap, xyz, el, backend=backend,
                            presmooth_A=presmooth_A, depth=depth, blur_correction=blur_correction,
                            fit_baseline=fit_baseline)
    extra = {k: v for k, v in model.columns.items() if len(np.asarray(v)) == len(xyz)}
    extra["element"] = np.array([str(e).capitalize() for e in model.elements])
    out.mkdir(parents=True, exist_ok=True)
    write_statistics(out, dmap, st, model_extra=extra, figures=figures)
    summary_path = out / "summary.json"
    summary = {}
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError):
            summary = {}
    summary.update({
        "version": __version__, "command": summary.get("command", "stats") if summary else "stats",
        "stats_command": "stats", "input": summary.get("input", str(map_path.resolve())),
        "model": str(model_path.resolve()), "model_shift_A": [float(v) for v in shift],
        "out_dir": str(out.resolve()), "element": el.symbol, "n_atoms": int(len(xyz)),
        "n_atoms_outside_map": int((~inside).sum()),
        "particle": st.particle, "penetration": st.penetration, "lattice": st.lattice.as_dict(),
        "lattice_domains": st.domains.as_list() if st.domains is not None else None,
        "backend": st.backend,
    })
    warnings = []
    vc = st.particle.get("valid_corr_median")
    if vc is None or not vc > 0.2:
        warnings.append(f"median validation correlation {vc:.2f}: the model may not overlay the map "
                        "(wrong frame or voxel size? try --center or --voxel-size)")
    if not st.lattice.ok:
        warnings.append(st.lattice.message)
    summary["warnings"] = warnings + list(st.warnings)
    times = dict(summary.get("times_s") or {})
    times.update({"statistics": round(st.times_s["total"], 4), "stats_total": round(time.perf_counter() - t0, 4)})
    times.setdefault("total", times["stats_total"])
    summary["times_s"] = times
    from .models import json_safe
    atomic_write(summary_path, lambda fh: json.dump(json_safe(summary), fh, indent=2, allow_nan=False))
    summary["_stats"] = st
    return summary


def _cmd_stats(args) -> int:
    from .statistics import summary_table
    s = run_stats(args.map, args.model, element=args.element, out_dir=args.out, voxel_size_A=args.voxel_size,
                  force=args.force, center=args.center, figures=not args.no_figures,
                  presmooth_A=args.presmooth_A, invert=args.invert, depth=args.depth or "radial",
                  blur_correction=args.blur_correction or "auto", fit_baseline=args.fit_baseline or "solvent")
    st = s.pop("_stats")
    if not args.quiet:
        print(summary_table(st))
        for w in s.get("warnings", []):
            print(f"warning: {w}")
        print(f"results in {s['out_dir']} ({s['times_s']['stats_total']:.2f} s, backend {s['backend']})")
    return 0


def register(subparsers) -> None:
    """Add the ``stats`` command."""
    p = subparsers.add_parser("stats", help="per-atom statistics of an existing model on its map",
                              description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("map", type=Path, help="MRC map")
    p.add_argument("model", type=Path, help="ptnp result folder, or .pdb/.cif/.csv/.xyz model (Å, map frame)")
    p.add_argument("--element", default="Pt", help="element for scattering, radius and lattice (default Pt)")
    p.add_argument("--out", type=Path, default=None,
                   help="result folder (default: MODEL when it is a result folder, else <map stem>_ptnp)")
    p.add_argument("--voxel-size", type=_positive, default=None, metavar="A", help="override the header voxel size (Å)")
    p.add_argument("--center", action="store_true",
                   help="translate the model onto the particle in the map (density centroid, then cross-correlation)")
    p.add_argument("--force", action="store_true", help="replace existing statistics in the result folder")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--invert", action="store_true",
                   help="the atoms are dark (negative density): negate the map first")
    from .cli_detect import add_baseline_option, add_blur_option, add_depth_option, add_presmooth_option
    add_presmooth_option(p)
    add_depth_option(p)
    add_blur_option(p)
    add_baseline_option(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_stats)
