"""Commands: detect, analyze, simulate, demo, info."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .errors import InputError


def _positive(v):
    x = float(v)
    if not x > 0:
        raise ValueError
    return x


def _voxel_size(v):
    """A number of Å (checked where the map is read) or 'auto'."""
    if v.strip().lower() == "auto":
        return "auto"
    return float(v)


def add_map_options(p):
    """Options shared by every command that analyses maps."""
    p.add_argument("--element", default="Pt", help="element the particle is made of (default Pt)")
    p.add_argument("--out", type=Path, default=None, help="result folder (default: <map>_ptnp beside the map)")
    p.add_argument("--voxel-size", type=_voxel_size, default=None, metavar="A",
                   help="voxel size in Å (overrides the map header), or 'auto': read it from the map's lattice "
                        "fringes and refine it by the detected bonds (lengths are then calibrated to the bulk "
                        "element). Without it, a model whose bonds are more than 10%% off bulk gets a warning")
    p.add_argument("--mask", type=Path, default=None, metavar="MRC",
                   help="solvent mask of the map's shape (0 solvent to 1 particle, soft edges fine): the "
                        "map is set to its level outside it first, e.g. to leave out a support film")
    p.add_argument("--force", action="store_true", help="replace an existing result folder")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.add_argument("--no-figures", dest="figures", action="store_false", default=None,
                   help="skip the PNG figures (faster for large batches)")
    p.add_argument("--backend", choices=("numpy", "cupy"), default=None,
                   help="array backend (default: CuPy when a GPU is usable, else NumPy)")
    g = p.add_argument_group("pipeline knobs")
    g.add_argument("--n-thresholds", type=int, default=None, help="uniform thresholds in the sweep (default 16, ≥ 15 advised)")
    g.add_argument("--refine-steps", type=int, default=None, help="fine sweep: coarse step / N over ±1 step (default 6)")
    g.add_argument("--min-voxels", type=int, default=None, help="drop components smaller than this (default 3)")
    g.add_argument("--no-split", dest="split", action="store_false", default=None, help="do not split merged atoms")
    g.add_argument("--no-rescue", dest="rescue", action="store_false", default=None,
                   help="do not add weak atoms missed by the global threshold")
    g.add_argument("--rescue-sigma", type=float, default=None, help="significance of an atom peak in the denoised map, in noise SDs (default 3.5)")
    g.add_argument("--no-reject-correlation", dest="reject_correlation", action="store_false", default=None,
                   help="keep atoms with a low validation correlation")
    g.add_argument("--correlation-rule", choices=("floor", "robust", "paper"), default=None,
                   help="outlier rule: floor (only --min-correlation, default), robust (median − k·MAD-SD) "
                        "or paper (mean − k·SD)")
    g.add_argument("--min-correlation", type=float, default=None,
                   help="reject atoms whose validation correlation is below this (default 0.15) at 0.358 Å "
                        "sampling; finer grids scale it by (voxel volume / 0.358³)^½")
    g.add_argument("--correlation-sd", type=float, default=None, help="k of the robust/paper outlier rule (default 3; the paper used 2)")
    g.add_argument("--rescue-rounds", type=int, default=None,
                   help="rescue rounds at most, each bonding to the atoms the previous added (default 12)")
    g.add_argument("--reject-close", dest="reject_close", action="store_true", default=None,
                   help="of two atoms closer than --close-fraction × the bond length drop the weaker "
                        "(ligand or solvent atoms on the surface; off by default)")
    g.add_argument("--close-fraction", type=float, default=None,
                   help="closer than this × the bond length, the weaker atom of a pair goes (default 0.85)")
    g.add_argument("--no-reject-cn", dest="reject_low_cn", action="store_false", default=None,
                   help="keep atoms with fewer than --min-cn neighbours")
    g.add_argument("--min-cn", type=int, default=None, help="minimum coordination number (default 3)")
    g.add_argument("--keep-detached", dest="reject_detached", action="store_false", default=None,
                   help="keep clusters of atoms apart from the particle (fewer than a tenth of its atoms, more "
                        "than 2.2 bonds from it; dropped by default as noise, e.g. at a mask's edge). Use it "
                        "for a map that holds several small particles")
    g.add_argument("--no-lattice-rescue", dest="lattice_rescue", action="store_false", default=None,
                   help="do not seat atoms at vacant lattice sites beside the atoms found (the rescue of weak, "
                        "mobile surface atoms of close-packed metals; on by default)")
    g.add_argument("--lattice-sigma", dest="lattice_sigma", type=float, default=None,
                   help="noise SDs the denoised map must reach within 0.6 Å of a vacant lattice site for an atom "
                        "there (default 2.5; raised by the rim's noise where it exceeds the solvent's)")
    g.add_argument("--no-particle-box", dest="particle_box", action="store_false", default=None,
                   help="denoise and detect the whole map even when it is mostly solvent (by default such a map "
                        "is denoised and detected in its particle's box, 16 Å of solvent around the particle, "
                        "its noise spectrum and level measured on the whole map and beside the box)")
    g.add_argument("--no-refine", dest="refine_centres", action="store_false", default=None,
                   help="plain grey-value centres of mass (no sub-voxel refinement)")
    g.add_argument("--resolution", dest="resolution_A", type=float, default=None, help="denoising band limit in Å (default 1)")
    g.add_argument("--whiten", choices=("auto", "always", "never"), default=None,
                   help="prewhiten the denoising filter by the solvent's noise spectrum "
                        "(auto: when the noise is coloured; default)")
    g.add_argument("--min-sweep-correlation", type=float, default=None,
                   help="refuse maps whose best atomic model correlates below this (default 0.2: no particle)")
    g.add_argument("--invert", action="store_true", default=None,
                   help="the atoms are dark (negative density): negate the map before anything else")
    g.add_argument("--b-extra", dest="b_extra_A2", type=float, default=None,
                   help="blur of the simulated atom in Å² (default 8.2, the reference value at 0.358 Å/voxel)")
    g.add_argument("--deblur", choices=("auto", "never"), default=None,
                   help="auto (default): a map blurred 40 Å² or more beyond the atom model is detected again "
                        "sharpened, and the model that explains the map better is kept; a model without a "
                        "lattice (or a refused map) goes through the filter ladder too. never: neither")
    g.add_argument("--no-ladder", dest="ladder", action="store_false", default=None,
                   help="no filter ladder: a model without a lattice (no atom with a full first shell) or a "
                        "refused map is not detected again on the map blurred and sharpened by -40..+60 Å²")
    g.add_argument("--ladder-whiten", dest="ladder_whiten", choices=("auto", "always", "never"), default=None,
                   help="prewhitening of the ladder's rungs on unmasked maps (masked maps: as --whiten). never "
                        "(default): each rung keeps its filter; auto: each rung's noise is measured and its "
                        "filter divided back out where that noise is coloured (the behaviour before stop 18)")
    g.add_argument("--ladder-highpass", dest="ladder_sharpen_highpass_A", type=float, default=None, metavar="A",
                   help="high-pass (Å) of the ladder's sharpening rungs (default 0: none; the first detection "
                        "high-passes at 8 Å, which on coarse noisy grids took a third of a sharpened rung's atoms)")


_KNOBS = ("n_thresholds", "refine_steps", "min_voxels", "split", "rescue", "rescue_sigma", "rescue_rounds",
          "reject_correlation", "correlation_rule", "correlation_sd", "min_correlation", "reject_close",
          "close_fraction", "reject_low_cn", "min_cn", "reject_detached", "lattice_rescue", "lattice_sigma",
          "refine_centres", "resolution_A", "b_extra_A2", "min_sweep_correlation", "whiten", "invert", "deblur",
          "ladder", "ladder_whiten", "ladder_sharpen_highpass_A", "particle_box")


def add_presmooth_option(p):
    from .displacement import DEFAULT_PRESMOOTH_A
    p.add_argument("--presmooth", dest="presmooth_A", type=float, default=None, metavar="A",
                   help=f"σ (Å) of the Gaussian smoothing before the displacement fits, subtracted from U "
                        f"afterwards (default {DEFAULT_PRESMOOTH_A}; 0 fits the raw map like the paper)")


def add_depth_option(p):
    p.add_argument("--depth", choices=("radial", "surface"), default=None,
                   help="depth of each atom for the depth column and the penetration fits: radial "
                        "(default, the paper's R_NP − R; assumes a roughly spherical particle) or surface "
                        "(distance to the convex hull of the atoms; for elongated or faceted particles)")


def add_blur_option(p):
    p.add_argument("--blur-correction", choices=("auto", "core", "none"), default=None,
                   help="take the map's own anisotropic blur (the elongation common to the fully coordinated "
                        "atoms, e.g. a tomogram's missing wedge) off every U and DOI: auto (default: when the "
                        "core's median U tensor has a DOI below 0.7), core (always) or none")


def add_baseline_option(p):
    p.add_argument("--fit-baseline", choices=("solvent", "none"), default=None,
                   help="zero of the displacement fits: solvent (default: the solvent's level beside each "
                        "atom is subtracted, so U and DOI do not depend on the map's grey offset or a smooth "
                        "background) or none (the raw map, as the paper)")


def pipeline_kwargs(args) -> dict:
    """Keyword arguments for :func:`ptnp_gpu.pipeline.run_detect` from parsed options."""
    kw = {k: getattr(args, k) for k in _KNOBS if getattr(args, k, None) is not None}
    if getattr(args, "figures", None) is not None:
        kw["figures"] = args.figures
    if getattr(args, "presmooth_A", None) is not None:   # analyze only; None keeps the default
        kw["presmooth_A"] = args.presmooth_A
    if getattr(args, "depth", None) is not None:         # analyze only; None keeps the default
        kw["depth"] = args.depth
    if getattr(args, "blur_correction", None) is not None:
        kw["blur_correction"] = args.blur_correction
    if getattr(args, "fit_baseline", None) is not None:
        kw["fit_baseline"] = args.fit_baseline
    if getattr(args, "mask", None) is not None:
        kw["mask"] = args.mask
    return dict(out_dir=args.out, element=args.element, voxel_size_A=args.voxel_size,
                force=args.force, quiet=args.quiet, backend=args.backend, **kw)


_TABLE_KEYS = (("diameter_A", "diameter (Å)"), ("cn_median", "median CN"),
               ("bond_nn_median_A", "median NN bond (Å)"), ("strain_radial_median_pct", "median radial strain (%)"),
               ("core_ratio", "core ratio (CN = 12)"), ("lattice_mean_A", "lattice parameter (Å)"),
               ("lattice_domains", "crystal domains (twins)"), ("lattice_inlier_fraction", "atoms on a lattice"),
               ("u_iso_median_A2", "median U_iso (Å²)"), ("doi_median", "median DOI"))


def _print_table(summary, stream=None):
    """Short end-of-run table: counts, paper Table 1 columns, penetration depths, warnings."""
    stream = sys.stdout if stream is None else stream
    part = summary.get("particle") or {}
    rows = [("atoms", summary["n_atoms"]), ("threshold", f"{summary['threshold']:.4g}"),
            ("sweep correlation", f"{summary['correlation']:.4f}")]
    for key, name in _TABLE_KEYS:
        v = part.get(key)
        if isinstance(v, (int, float)):
            rows.append((name, f"{v:.4g}"))
    pen = summary.get("penetration") or {}
    for stat, name in (("cn", "CN penetration depth (Å)"), ("gcn", "GCN penetration depth (Å)")):
        fit = pen.get(stat) if isinstance(pen, dict) else None
        if isinstance(fit, dict) and fit.get("ok") and fit.get("delta_A") is not None:
            rows.append((name, f"{fit['delta_A']:.2f} ± {fit.get('delta_err_A') or 0:.2f}"))
    if part.get("depth_definition", "radial") != "radial":
        rows.append(("depth definition", part["depth_definition"]))
    rows += [("backend", summary["backend"]), ("time (s)", f"{summary['times_s']['total']:.2f}"),
             ("results", summary["out_dir"])]
    vinfo = summary.get("voxel_size") or {}
    if vinfo.get("source") == "auto":
        rows.insert(3, ("voxel size (Å, auto)", f"{vinfo['voxel_size_A']:.4g}"))
    w = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"  {k:<{w}}  {v}", file=stream)
    for msg in summary.get("warnings") or []:
        print(f"warning: {msg}", file=stream)


def _cmd_detect(args):
    from .pipeline import run_detect
    s = run_detect(args.map, **pipeline_kwargs(args))
    if not args.quiet:
        _print_table(s)
    return 0


def _cmd_analyze(args):
    from .pipeline import run_analyze
    s = run_analyze(args.map, **pipeline_kwargs(args))
    if not args.quiet:
        _print_table(s)
    return 0


def _cmd_simulate(args):
    if args.tomogram and args.single_particle:
        raise InputError("choose one of --tomogram and --single-particle")
    from .synth import ParticleSpec, make_particle, write_particle
    spec = ParticleSpec(n_atoms=args.atoms, element=args.element, shape=args.shape,
                        voxel_size_A=args.voxel_size, box=tuple(args.box) if args.box else None,
                        origin_A=tuple(args.origin), expansion=args.expansion, rotate=not args.no_rotate,
                        u_core_A2=args.u_core, u_surface_A2=args.u_surface, shell_depth_A=args.shell_depth,
                        surface_min_doi=args.surface_min_doi, noise=args.noise, background=args.background,
                        twin=args.twin, core_element=args.core_element, core_radius_A=args.core_radius,
                        core_scale=args.core_scale,
                        seed=args.seed)
    if args.tomogram or args.single_particle:   # imaged: the noise comes from the imaging
        spec.noise, spec.background = 0.0, 0.0
    try:
        p = make_particle(spec)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    tomo = None
    if args.tomogram:
        from .mapio import DensityMap
        from .tomography import simulate_tomogram
        tomo = {"method": args.tomogram, "max_tilt_deg": args.tilt_range, "step_deg": args.tilt_step,
                "counts_at_peak": args.counts, "background_fraction": args.dark_fraction,
                "iterations": args.sirt_iterations}
        rec = simulate_tomogram(p.map.data.astype("float32"), rng=args.seed, **tomo)
        p.map = DensityMap(rec, p.map.voxel_size_A, p.map.origin_A)
    if args.single_particle:
        from .mapio import DensityMap
        from .single_particle import simulate_reconstruction
        if len(set(p.map.shape)) != 1:
            raise InputError(f"--single-particle needs a cubic box, got {p.map.shape} (leave --box out)")
        tomo = {"single_particle": True, "n_images": args.images, "image_snr": args.image_snr,
                "b_factor_A2": args.envelope_b, "defocus_range_A": list(args.defocus)}
        rec = simulate_reconstruction(p.map.data.astype("float32"), float(p.map.voxel_size_A[0]),
                                      n_images=args.images, image_snr=args.image_snr, b_factor_A2=args.envelope_b,
                                      defocus_range_A=tuple(args.defocus), rng=args.seed)
        p.map = DensityMap(rec, p.map.voxel_size_A, p.map.origin_A)
    stem = Path(args.out_stem)
    if stem.suffix == ".mrc":
        stem = stem.with_suffix("")
    if stem.with_suffix(".mrc").exists() and not args.force:
        raise InputError(f"{stem.with_suffix('.mrc')} exists; use --force to replace it")
    key = "single_particle" if args.single_particle else "tomogram"
    paths = write_particle(p, stem, extra={key: tomo} if tomo else None)
    print(json.dumps({"n_atoms": len(p.xyz_A), "shape_zyx": list(p.map.shape), **paths,
                      **({key: tomo} if tomo else {})}, indent=1))
    return 0


def _cmd_demo(args):
    import tempfile

    import numpy as np

    from .models import read_model
    from .pairing import match_accuracy
    from .pipeline import run_analyze
    from .synth import make_particle, write_particle
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ptnp_demo_"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"simulating a Pt particle of about {args.atoms} atoms (noise 0.15, background, random orientation)")
    p = make_particle(n_atoms=args.atoms, seed=args.seed)
    paths = write_particle(p, out / "demo_particle")
    s = run_analyze(paths["map"], out_dir=out / "demo_particle_ptnp", element="Pt", force=True,
                    quiet=args.quiet)
    _print_table(s)
    found = read_model(out / "demo_particle_ptnp").xyz_A
    acc = match_accuracy(found, p.xyz_A, 1.0)
    print(f"accuracy against the truth ({len(p.xyz_A)} atoms, matched within 1 Å): "
          f"recall {acc['recall']:.4f}, precision {acc['precision']:.4f}, RMSD {acc['rmsd_A']:.3f} Å")
    return 0 if np.isfinite(acc["rmsd_A"]) else 1


def _cmd_info(args):
    from . import __version__
    from .backend import info
    print(json.dumps({"ptnp_gpu": __version__, **info()}, indent=1))
    return 0


def register(sub):
    p = sub.add_parser("detect", help="build an atomic model from a map")
    p.add_argument("map", type=Path, help="MRC map")
    add_map_options(p)
    p.set_defaults(func=_cmd_detect)

    p = sub.add_parser("analyze", help="detect atoms and compute per-atom statistics (the main job)")
    p.add_argument("map", type=Path, help="MRC map")
    add_map_options(p)
    add_presmooth_option(p)
    add_depth_option(p)
    add_blur_option(p)
    add_baseline_option(p)
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser("simulate", help="write a synthetic particle map and its ground truth")
    p.add_argument("out_stem", help="output path without extension (writes STEM.mrc, STEM_truth.pdb/json)")
    p.add_argument("--atoms", type=int, default=500)
    p.add_argument("--element", default="Pt")
    p.add_argument("--shape", default="sphere", choices=("sphere", "cuboctahedron", "truncated_octahedron",
                                                         "decahedron"))
    p.add_argument("--voxel-size", type=_positive, default=0.358, metavar="A")
    p.add_argument("--box", type=int, nargs=3, metavar=("NZ", "NY", "NX"), default=None)
    p.add_argument("--origin", type=float, nargs=3, metavar=("X", "Y", "Z"), default=(0.0, 0.0, 0.0))
    p.add_argument("--expansion", type=float, default=0.0, help="uniform relative expansion (0.02 = 2%%)")
    p.add_argument("--no-rotate", action="store_true")
    p.add_argument("--twin", action="store_true", help="fcc twinned on a (111) plane through the centre")
    p.add_argument("--core-element", default=None, metavar="EL",
                   help="core-shell particle: atoms within --core-radius of the centre are EL")
    p.add_argument("--core-radius", type=float, default=0.0, metavar="A", help="core radius in Å")
    p.add_argument("--core-scale", type=float, default=1.0,
                   help="core atoms' density × this (Z-contrast tomograms: Pd in Pt ~0.41)")
    p.add_argument("--u-core", type=float, default=0.02, help="core U_iso in Å²")
    p.add_argument("--u-surface", type=float, default=0.10, help="outermost U_iso in Å²")
    p.add_argument("--shell-depth", type=float, default=4.0, help="depth (Å) over which U grows")
    p.add_argument("--surface-min-doi", type=float, default=1.0, help="lowest DOI of outermost atoms")
    p.add_argument("--noise", type=float, default=0.15, help="noise SD / core atom peak")
    p.add_argument("--background", type=float, default=0.15, help="smooth background amplitude / peak")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tomogram", choices=("fbp", "sirt"), default=None,
                   help="image the (noise-free) particle as an electron tomogram: single-axis tilt series with "
                        "Poisson noise, reconstructed by filtered back-projection or SIRT with positivity")
    p.add_argument("--tilt-range", type=_positive, default=70.0, metavar="DEG", help="tomogram: ± tilt (degrees)")
    p.add_argument("--tilt-step", type=_positive, default=2.0, metavar="DEG", help="tomogram: tilt step (degrees)")
    p.add_argument("--counts", type=_positive, default=2000.0,
                   help="tomogram: electron counts at the brightest projection pixel")
    p.add_argument("--dark-fraction", type=float, default=0.05,
                   help="tomogram: counts everywhere, as a fraction of --counts (support film, dark level)")
    p.add_argument("--sirt-iterations", type=int, default=20, help="tomogram: SIRT iterations")
    p.add_argument("--single-particle", action="store_true",
                   help="image the (noise-free) particle as a single-particle reconstruction: images in random "
                        "orientations with CTF, envelope and noise, put back by Wiener-weighted Fourier inversion")
    p.add_argument("--images", type=int, default=2000, help="single particle: number of images")
    p.add_argument("--image-snr", type=_positive, default=0.3,
                   help="single particle: signal / noise variance per image")
    p.add_argument("--envelope-b", type=float, default=15.0, metavar="A2",
                   help="single particle: the images' envelope B (Å²)")
    p.add_argument("--defocus", type=float, nargs=2, default=(100.0, 600.0), metavar=("LOW", "HIGH"),
                   help="single particle: underfocus range (Å)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("demo", help="simulate a Pt particle, analyse it and print the accuracy")
    p.add_argument("--out", default=None, help="folder for the demo files (default: a temporary folder)")
    p.add_argument("--atoms", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("info", help="backend, device and versions")
    p.set_defaults(func=_cmd_info)
