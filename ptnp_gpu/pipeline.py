"""End-to-end jobs: map file → result folder (``run_detect``, ``run_analyze``).

A result folder is built under a temporary name beside its destination and
renamed into place only when complete, so a failed or killed run leaves no
partial result, and ``summary.json`` inside a folder means it is complete.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from . import __version__
from . import backend as _be
from .errors import InputError
from .mapio import apply_mask, read_map, write_map
from .models import Model, json_safe, write_json, write_structure, write_table

__all__ = ["run_detect", "run_analyze", "default_out_dir", "Progress"]


class Progress:
    """Stage messages with elapsed time on stderr (silent when ``quiet``)."""

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()

    def __call__(self, msg: str):
        if not self.quiet:
            print(f"[ptnp {time.perf_counter() - self.t0:7.2f} s] {msg}", file=self.stream, flush=True)


def default_out_dir(map_path) -> Path:
    p = Path(map_path)
    return p.with_name(p.stem + "_ptnp")


def _prepare_out(map_path: Path, out_dir, force: bool) -> Path:
    out = default_out_dir(map_path) if out_dir is None else Path(out_dir)
    if out.resolve() == map_path.resolve():
        raise InputError(f"output folder {out} is the input map; choose another --out")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise InputError(f"result folder {out} already exists; use --force to replace it")
    if map_path.resolve().parent == out.resolve() or out.resolve() in map_path.resolve().parents:
        if force:
            raise InputError(f"--force would replace {out}, which holds the input map; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _commit_folder(tmp: Path, out: Path):
    """Move the finished temporary folder into place (replacing an old result)."""
    from .models import _umask
    os.chmod(tmp, 0o777 & ~_umask())     # mkdtemp makes 0700; give the usual folder mode
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _detection_columns(det) -> dict:
    xyz = det.xyz_A
    return {
        "id": np.arange(1, len(xyz) + 1), "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
        "n_voxels": det.n_voxels, "significance_sd": det.significance, "position_sd_A": det.position_sd_A,
        "valid_corr": det.validation_corr, "intensity_peak_z": det.peak_intensity,
    }


def _precision_summary(det) -> dict:
    """Medians and quantiles of the atoms' significance and estimated position error."""
    sd, sig = np.asarray(det.position_sd_A, float), np.asarray(det.significance, float)
    ok = np.isfinite(sd)

    def q(v, p):
        return round(float(np.quantile(v, p)), 4) if v.size else None
    return {"position_sd_A_median": q(sd[ok], 0.5), "position_sd_A_q90": q(sd[ok], 0.9),
            "position_sd_A_rms": round(float(np.sqrt(np.mean(sd[ok] ** 2))), 4) if ok.any() else None,
            "position_sd_nan": int((~ok).sum()),
            "significance_sd_median": q(sig, 0.5), "significance_sd_q10": q(sig, 0.1)}


def _write_curve(folder: Path, det, figure: bool = True):
    curve = det.curve
    write_table(folder / "threshold_curve.csv", {"threshold": curve[:, 0], "correlation": curve[:, 1]})
    if not figure:
        return
    try:        # the object API: no pyplot, so a caller's matplotlib backend is left as it is
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except Exception:  # noqa: BLE001 - figure is optional
        return
    fig = Figure(figsize=(5, 3.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(curve[:, 0], curve[:, 1], "o-", ms=3)
    ax.axvline(det.threshold, color="C3", ls="--", label=f"chosen {det.threshold:.4g}")
    ax.axvline(det.params["otsu_threshold"], color="0.5", ls=":", label="Otsu")
    ax.set_xlabel("threshold on denoised map")
    ax.set_ylabel("correlation (simulated vs denoised)")
    ax.legend(frameon=False, fontsize=8)
    from .figures import _fixed_layout
    _fixed_layout(fig, 0.82, 0.33, 0.6, 0.21)    # tight_layout's margins, without its extra pass
    fig.savefig(folder / "threshold_curve.png")


log = logging.getLogger(__name__)

# run_analyze options that are not detection options (``_run`` takes them out before detecting)
ANALYSIS_OPTIONS = ("presmooth_A", "depth", "blur_correction", "fit_baseline", "mask")
_HINT_RATIO = 0.10      # a refused map whose bonds or fringes put the voxel size this far off: say so


def _is_auto(voxel_size_A) -> bool:
    if isinstance(voxel_size_A, str):
        if voxel_size_A.strip().lower() != "auto":
            raise InputError(f"voxel size must be a number of Å or 'auto', got {voxel_size_A!r}")
        return True
    return False


def _read(map_path, mask_path, voxel_size_A, say):
    """The map (and its mask applied) at ``voxel_size_A`` (None: the header's)."""
    dmap = read_map(map_path, voxel_size_A)
    if mask_path is not None:
        say(f"applying the mask {mask_path}")
        dmap = apply_mask(dmap, read_map(mask_path, voxel_size_A))
    return dmap


def _scale_hint(dmap, el, backend, opts) -> str:
    """For a refused map: the voxel size that would give bulk bonds, when far from the one used.

    A detection without the CN < 3 rule (whose bulk bond cutoffs remove every atom of a map read
    too coarse) measures the bonds; if it finds no lattice, the map's fringe peaks are listed."""
    from .detect import _detect                 # unlogged: its scale warning would repeat the hint
    from .scale import MIN_FULL_SHELL, voxel_size_candidates
    vs = float(np.mean(dmap.voxel_size_A))
    try:
        det = _detect(dmap, el, backend, None, {**opts, "reject_low_cn": False, "ladder": False})
        ratio = float(det.scale.ratio)
        if (det.scale.full_shell_fraction >= MIN_FULL_SHELL and np.isfinite(ratio)
                and abs(ratio - 1.0) > _HINT_RATIO):                         # a lattice, at another scale
            return (f". Without the CN rule the atoms found have bonds {ratio:.2f}× bulk {el.symbol}'s: a voxel size "
                    f"of about {vs / ratio:.3g} Å, not the {vs:.3g} Å used, would give bulk bonds: check it, or pass "
                    "--voxel-size auto")
    except InputError:
        pass
    except Exception:  # noqa: BLE001 - a hint must never hide the refusal itself
        return ""
    try:                                   # no lattice found: the fringe peaks of the map's spectrum
        cands = [c["voxel_size_A"] for c in voxel_size_candidates(_be.asarray(dmap.data, backend), el)
                 if c["source"] == "spectrum"]
    except Exception:  # noqa: BLE001
        return ""
    if not cands or min(abs(v / vs - 1.0) for v in cands) <= _HINT_RATIO:
        return ""
    sizes = ", ".join(f"{v:.3g}" for v in cands[:3])
    return (f". The fringe peaks of the map's power spectrum put the voxel size at about {sizes} Å (strongest first; "
            f"a higher order or the particle's shape can stand out too), not the {vs:.3g} Å used: check it, or pass "
            "--voxel-size auto")


def _say_if_cold_gpu(backend, say) -> None:
    """Tell the user when this GPU run will first compile CuPy's kernels (minutes, once)."""
    try:
        be = _be.resolve(backend)
    except (RuntimeError, ValueError):
        return                      # the run itself reports an unusable backend
    if be.is_gpu and _be.kernel_cache_is_cold():
        where = _be.kernel_cache_dir()
        msg = ("first GPU run with this CuPy here: its kernels are compiled once before detection "
               "(about 2 minutes on an H200 workstation's host)"
               + (f" and kept in {where} for later runs" if where else "; CUPY_CACHE_IN_MEMORY keeps none"))
        log.info(msg)
        say(msg)


def _run(map_path, out_dir, element, voxel_size_A, force, quiet, progress, backend, stats: bool, figures: bool,
         opts, notes=()):
    t_start = time.perf_counter()
    say = progress or Progress(quiet)
    map_path = Path(map_path)
    opts = dict(opts)
    presmooth_A = opts.pop("presmooth_A", None)          # a statistics option, not a detection one
    depth = opts.pop("depth", "radial")                   # statistics too: radial or surface depth
    blur_correction = opts.pop("blur_correction", "auto")  # statistics too: the map's anisotropic blur
    fit_baseline = opts.pop("fit_baseline", "solvent")     # statistics too: the zero of the displacement fits
    if stats:                                             # before the detection runs
        from .statistics import check_statistics_options
        check_statistics_options(depth, blur_correction, fit_baseline)
    mask_path = opts.pop("mask", None)                    # applied to the map before anything else
    out = _prepare_out(map_path, out_dir, force)
    from .detect import detect_atoms
    from .elements import get_element
    try:
        el = get_element(element)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    auto = _is_auto(voxel_size_A)
    _say_if_cold_gpu(backend, say)
    say(f"reading {map_path}")
    t = time.perf_counter()
    dmap = _read(map_path, mask_path, 1.0 if auto else voxel_size_A, say)
    t_read = time.perf_counter() - t
    voxel_info = {"source": "auto" if auto else ("header" if voxel_size_A is None else "given")}
    if auto:
        from .scale import calibrate_voxel_size
        say("voxel size: trying the scales of the map's lattice fringes and local maxima")
        t_cal = time.perf_counter()
        det, cal = calibrate_voxel_size(lambda v: dmap if v == 1.0 else _read(map_path, mask_path, v, say), el,
                                        backend=backend, progress=say, **opts)
        dmap = det.map
        voxel_info.update(cal.as_dict(), seconds=round(time.perf_counter() - t_cal, 3),
                          note=f"voxel size found from the map, assuming bulk {el.symbol} bonds: absolute lengths "
                               "(lattice parameter, bond lengths, radial strain) are calibrated to bulk")
        say(f"voxel size {cal.voxel_size_A:.4g} Å (bonds {cal.bond_over_bulk:.3f}× bulk, correlation "
            f"{cal.correlation:.3f}; {len(cal.tried)} starting scales tried)")
    else:
        try:
            det = detect_atoms(dmap, el, backend=backend, progress=say, **opts)
        except InputError as exc:
            if not str(exc).startswith(("no particle found", "the map's contrast looks inverted")):
                raise
            raise InputError(f"{exc}{_scale_hint(dmap, el, backend, opts)}") from None
    say(f"{len(det.xyz_A)} atoms at threshold {det.threshold:.4g} (correlation {det.correlation:.4f})")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        t = time.perf_counter()
        say("writing results")
        vs, org = dmap.voxel_size_A, dmap.origin_A
        write_map(tmp / "labels.mrc", _be.to_host(det.labels).astype(np.float32), vs, org)
        write_map(tmp / "denoised.mrc", det.denoised, vs, org)
        write_map(tmp / "simulated.mrc", det.simulated, vs, org)
        _write_curve(tmp, det, figures)
        cols = _detection_columns(det)
        summary_extra = {"warnings": list(notes) + list(det.warnings)}
        if stats:
            from .statistics import compute_statistics, write_statistics
            say("per-atom statistics")
            ts = time.perf_counter()
            st = compute_statistics(det.backend_map, det.xyz_A, el, labels=det.labels, backend=backend,
                                    presmooth_A=presmooth_A, depth=depth, blur_correction=blur_correction,
                                    fit_baseline=fit_baseline)
            det.times["statistics"] = time.perf_counter() - ts
            # the statistics recompute validation correlation and peak intensity: keep one copy
            extra = {k: cols[k] for k in ("n_voxels", "significance_sd", "position_sd_A")}
            write_statistics(tmp, dmap, st, model_extra=extra, figures=figures)
            lat = getattr(st, "lattice", None)
            summary_extra = {"particle": getattr(st, "particle", None),
                             "warnings": list(dict.fromkeys(list(notes) + det.warnings
                                                            + list(getattr(st, "warnings", [])))),
                             "penetration": getattr(st, "penetration", None),
                             "lattice": lat.as_dict() if hasattr(lat, "as_dict") else None,
                             "lattice_domains": st.domains.as_list() if st.domains is not None else None}
        else:
            write_table(tmp / "atoms.csv", cols)
            write_structure(tmp, Model(det.xyz_A, [el.symbol] * len(det.xyz_A)))
        times = {"read": t_read, **det.times, "write": time.perf_counter() - t}
        times["total"] = time.perf_counter() - t_start
        summary = {
            "ptnp_gpu_version": __version__, "version": __version__,
            "command": "analyze" if stats else "detect",
            "input": str(map_path.resolve()), "out_dir": str(out.resolve()),
            "mask": None if mask_path is None else str(Path(mask_path).resolve()),
            "element": el.symbol, "n_atoms": int(len(det.xyz_A)),
            "threshold": det.threshold, "otsu_threshold": det.params["otsu_threshold"],
            "correlation": det.correlation, "counts": det.counts,
            "precision": _precision_summary(det),
            "map": {"shape_zyx": list(dmap.shape), "voxel_size_A": dmap.voxel_size_A.tolist(),
                    "origin_A": dmap.origin_A.tolist()},
            "voxel_size": voxel_info, "scale": det.scale.as_dict(),
            "parameters": {k: v for k, v in det.params.items() if k != "backend"},
            "backend": det.params["backend"], "backend_info": _be.info(),
            "times_s": {k: round(float(v), 4) for k, v in times.items()},
            **json_safe(summary_extra),
        }
        write_json(tmp / "summary.json", summary)
        _commit_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"done in {times['total']:.2f} s → {out}")
    return summary


def run_detect(map_path, out_dir=None, element="Pt", voxel_size_A=None, force=False, quiet=True,
               progress=None, backend=None, figures=True, **opts) -> dict:
    """Detect atoms in ``map_path`` and write the result folder; returns the summary.

    Parameters
    ----------
    map_path : path of an MRC map
    out_dir : folder for results; default ``<map stem>_ptnp`` beside the map
    element : element symbol
    voxel_size_A : overrides the header's voxel size (Å); ``"auto"`` finds it from the map, assuming
        bulk bonds of ``element`` (:func:`ptnp_gpu.scale.calibrate_voxel_size`; the summary's
        ``voxel_size`` records the scales tried)
    force : replace an existing result folder
    quiet : no progress messages
    figures : write the PNG figures (skip them for speed in large batches)
    **opts : detection options (:class:`ptnp_gpu.detect.DetectOptions`), and ``mask``: an MRC
        mask of the map's shape (0 solvent to 1 particle) applied first (:func:`ptnp_gpu.mapio.apply_mask`)

    Raises
    ------
    InputError
        Bad input, an existing result without ``force``, or no particle in the map.
    """
    return _run_or_cpu(map_path, out_dir, element, voxel_size_A, force, quiet, progress, backend, False, figures,
                        opts)


def run_analyze(map_path, out_dir=None, element="Pt", voxel_size_A=None, force=False, quiet=True,
                progress=None, backend=None, figures=True, **opts) -> dict:
    """Detection followed by per-atom statistics (same arguments as :func:`run_detect`, plus
    ``presmooth_A``: σ in Å of the Gaussian pre-smoothing of the displacement fits, and
    ``depth``: ``"radial"`` (default) or ``"surface"``, the depth, ``blur_correction`` and
    ``fit_baseline`` (``"solvent"``, default, or ``"none"``) of
    :func:`ptnp_gpu.statistics.compute_statistics`)."""
    return _run_or_cpu(map_path, out_dir, element, voxel_size_A, force, quiet, progress, backend, True, figures,
                        opts)


def _run_or_cpu(map_path, out_dir, element, voxel_size_A, force, quiet, progress, backend, stats, figures, opts):
    """``_run``, and when the GPU runs out of memory: again on the CPU (NumPy) with a warning, unless
    the GPU was asked for (``backend="cupy"`` or ``PTNP_BACKEND=cupy``); then a one-line error."""
    try:
        return _run(map_path, out_dir, element, voxel_size_A, force, quiet, progress, backend, stats, figures, opts)
    except Exception as exc:
        if not _be.is_device_out_of_memory(exc):
            raise
        _be.free_device_memory()
        shape, nbytes = _map_size(map_path)
        what = f"the GPU ran out of memory on this {shape} map ({nbytes / 2 ** 30:.2f} GiB as float32; " \
               f"detection holds about 15-35× that on the device)"
        forced = backend is not None or os.environ.get("PTNP_BACKEND", "").strip()
        if forced:
            raise InputError(f"{what}: crop the map around the particle, or run it with --backend numpy") from None
        log.warning("%s: running it on the CPU (NumPy) instead; crop the map to the particle to keep it on "
                    "the GPU", what)
        return _run(map_path, out_dir, element, voxel_size_A, force, quiet, progress, "numpy", stats, figures, opts,
                    notes=[f"{what}: analysed on the CPU (NumPy) instead"])


def _map_size(map_path):
    """'Z×Y×X' and float32 bytes of a map, from its header (no data read)."""
    import mrcfile
    try:
        with mrcfile.open(map_path, header_only=True, permissive=True) as m:
            n = [int(m.header.nz), int(m.header.ny), int(m.header.nx)]
        return "×".join(map(str, n)), 4 * int(np.prod(n))
    except Exception:  # noqa: BLE001 - only for a message
        return "", 0
