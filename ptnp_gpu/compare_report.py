"""Writing a model comparison: tables, JSON, PDB files and figures (paper Fig. 3 and 4).

The computation lives in :mod:`ptnp_gpu.compare`; this module turns a
:class:`~ptnp_gpu.compare.Comparison` into files, and draws the figures
(functions that take host arrays and return a matplotlib figure).
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import InputError
from .models import Model, atomic_write

__all__ = ["output_folder", "model_ids", "pairs_table", "write_comparison", "write_points_pdb", "write_json", "comparison_figure",
           "series_figure", "read_depth_curves", "STATUS_COLOURS", "SERIES_COLOURS"]

STATUS_COLOURS = {"common": "#9aa5b1", "moved": "#f28e2b", "lost": "#d62728", "gained": "#2ca02c"}
#: paper Fig. 4: part1 red, part2 green, merged black
SERIES_COLOURS = {"merged": "black", "part1": "#d62728", "part2": "#2ca02c"}
#: names of the radial-depth column R_NP − R (Å) in a result folder's atoms.csv, in order of preference
DEPTH_COLUMNS = ("depth_A", "radial_depth_A")


@contextlib.contextmanager
def output_folder(out_dir, *, force: bool = False):
    """Yield a temporary folder that replaces ``out_dir`` when the block succeeds.

    Raises
    ------
    InputError
        ``out_dir`` exists and ``force`` is false, or is a file.
    """
    out = Path(out_dir)
    if out.exists() and not force:
        raise InputError(f"{out}: output folder exists; use --force to replace it or --out to choose another")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_{out.name}_", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".old_{out.name}_{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def model_ids(model: Model) -> np.ndarray:
    """Atom ids of a model: its integer ``id`` column when present, else 1..N."""
    ids = model.columns.get("id") if model.columns else None
    if ids is not None:
        ids = np.asarray(ids, float)
        if len(ids) == len(model) and np.all(np.isfinite(ids)) and np.all(ids == np.round(ids)):
            return ids.astype(np.int64)
    return np.arange(1, len(model) + 1, dtype=np.int64)


def _stat_columns(model: Model) -> dict:
    skip = {"id", "x", "y", "z", "x_a", "y_a", "z_a"}
    return {k: np.asarray(v, float) for k, v in (model.columns or {}).items()
            if k.strip().lower() not in skip and len(np.asarray(v)) == len(model)}


def pairs_table(model_a: Model, model_b: Model, comp) -> dict:
    """One row per atom pair or unpartnered atom, as a dict of equal-length columns.

    Rows: common pairs, moved pairs, lost atoms of A, gained atoms of B, in
    that order. Columns: ``status``, ``id_a``, ``id_b`` (empty when absent),
    ``distance_A``, ``displacement_over_sd`` (when both models carry ``position_sd_A``: the
    distance over the two positions' combined per-axis error), positions ``x_a_A … z_b_A`` (B in
    A's frame), radial depths, and every per-atom statistic of either model prefixed ``a_`` / ``b_``.
    """
    ra = np.concatenate([comp.common_a, comp.moved_a, comp.lost_a, np.full(len(comp.gained_b), -1)])
    rb = np.concatenate([comp.common_b, comp.moved_b, np.full(len(comp.lost_a), -1), comp.gained_b])
    status = (["common"] * len(comp.common_a) + ["moved"] * len(comp.moved_a)
              + ["lost"] * len(comp.lost_a) + ["gained"] * len(comp.gained_b))
    dist = np.concatenate([comp.common_dist_A, comp.moved_dist_A, np.full(len(comp.lost_a) + len(comp.gained_b), np.nan)])
    ida, idb = model_ids(model_a), model_ids(model_b)
    has_a, has_b = ra >= 0, rb >= 0

    def take(values, rows, has):
        out = np.full(len(rows), np.nan)
        out[has] = np.asarray(values, float)[rows[has]]
        return out

    cols = {"status": np.array(status, dtype=object),
            "id_a": np.where(has_a, ida[np.maximum(ra, 0)] if len(ida) else 0, -1),
            "id_b": np.where(has_b, idb[np.maximum(rb, 0)] if len(idb) else 0, -1),
            "distance_A": dist}
    for k, ax in enumerate("xyz"):
        cols[f"{ax}_a_A"] = take(model_a.xyz_A[:, k], ra, has_a)
    for k, ax in enumerate("xyz"):
        cols[f"{ax}_b_A"] = take(model_b.xyz_A[:, k], rb, has_b)
    cols["radial_depth_a_A"] = take(comp.depth_a_A, ra, has_a)
    cols["radial_depth_b_A"] = take(comp.depth_b_A, rb, has_b)
    cols["element_a"] = np.array([model_a.elements[i] if i >= 0 else "" for i in ra], dtype=object)
    cols["element_b"] = np.array([model_b.elements[i] if i >= 0 else "" for i in rb], dtype=object)
    sd_a, sd_b = ((m.columns or {}).get("position_sd_A") for m in (model_a, model_b))
    if sd_a is not None and sd_b is not None:
        # the displacement in units of the two positions' combined per-axis error (pairs only)
        both = has_a & has_b
        s2 = take(sd_a, ra, has_a) ** 2 + take(sd_b, rb, has_b) ** 2
        cols["displacement_over_sd"] = np.where(both, dist / np.sqrt(np.where(both, s2, 1.0)), np.nan)
    for k, v in _stat_columns(model_a).items():
        cols[f"a_{k}"] = take(v, ra, has_a)
    for k, v in _stat_columns(model_b).items():
        cols[f"b_{k}"] = take(v, rb, has_b)
    return cols


def _write_csv(path, cols: dict):
    """Write equal-length columns as CSV; NaN and negative ids become empty cells.

    Rows are formatted with one ``%`` template each (fast for 10⁵ rows).
    """
    names = list(cols)
    fmts, lists = [], []
    for name in names:
        v = np.asarray(cols[name])
        if v.dtype.kind in "iu":
            fmts.append("%.0f")
            lists.append(np.where(v >= 0, v, np.nan).astype(float).tolist())
        elif v.dtype.kind in "fb":
            fmts.append("%.6g")
            lists.append(v.astype(float).tolist())
        else:
            fmts.append("%s")
            lists.append([str(x) for x in v])
    template = ",".join(fmts) + "\n"
    body = "".join(template % row for row in zip(*lists))
    body = re.sub(r"(?<=,)nan(?=[,\n])", "", body)  # NaN cells (never first: rows start with text)
    atomic_write(path, lambda fh: fh.write(",".join(names) + "\n" + body))


def _hy36(value: int, width: int) -> str:
    """Hybrid-36 number (PDB serials beyond 99,999 and residue numbers beyond 9,999)."""
    if value < 10 ** width:
        return str(value)
    value -= 10 ** width
    value += 10 * 36 ** (width - 1)
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = ""
    while value:
        value, r = divmod(value, 36)
        out = digits[r] + out
    if len(out) > width:
        raise ValueError(f"{value} too large for a hybrid-36 field of width {width}")
    return out


def write_points_pdb(path, xyz_A, elements, b_A2=None):
    """Minimal PDB (HETATM records only) of a point set for viewing, written fast and atomically.

    One residue per atom (name = element), chain A; serials beyond 99,999 and
    residue numbers beyond 9,999 use hybrid-36 like gemmi. B is ``b_A2`` (Å²,
    B = 8π²·U) where given, else 0. :func:`ptnp_gpu.models.write_pdb` writes
    the full model files; this one exists for the large status files.
    """
    x = np.asarray(xyz_A, float).reshape(-1, 3)
    b = np.zeros(len(x)) if b_A2 is None else np.nan_to_num(np.asarray(b_A2, float))
    lines = []
    for i in range(len(x)):
        el = str(elements[i]).strip().upper()[:2] or "X"
        name = el.ljust(4) if len(el) == 2 else (" " + el).ljust(4)
        lines.append(f"HETATM{_hy36(i + 1, 5):>5s} {name} {el:>3s} A{_hy36(i + 1, 4):>4s}    "
                     f"{x[i, 0]:8.3f}{x[i, 1]:8.3f}{x[i, 2]:8.3f}  1.00{min(b[i], 999.99):6.2f}          {el:>2s}\n")
    atomic_write(path, lambda fh: fh.write("".join(lines) + "END\n"))


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _finite(o):
    """Replace NaN/inf floats by None, recursively (JSON has no NaN)."""
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    return o


def write_json(path, obj):
    """Write ``obj`` as indented JSON atomically (NumPy scalars and paths allowed; NaN → null)."""
    text = json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False)
    atomic_write(path, lambda fh: fh.write(text + "\n"))


def write_comparison(folder, model_a: Model, model_b: Model, comp, *, summary: dict,
                     labels=("A", "B"), figure: bool = True) -> dict:
    """Write ``pairs.csv``, ``compare.json``, status PDB files and ``compare.png``.

    Parameters
    ----------
    folder : path
        Existing folder to write into.
    model_a, model_b : Model
        The two models, B already in A's frame.
    comp : Comparison
    summary : dict
        What goes into ``compare.json``.
    labels : (str, str)
        Names of A and B for the figure.
    figure : bool
        Draw ``compare.png``.

    Returns
    -------
    dict
        File name → path of what was written.
    """
    folder = Path(folder)
    files = {}
    _write_csv(folder / "pairs.csv", pairs_table(model_a, model_b, comp))
    files["pairs"] = folder / "pairs.csv"
    for name, model, rows in (("common", model_a, comp.common_a), ("lost", model_a, comp.lost_a),
                              ("gained", model_b, comp.gained_b), ("moved_a", model_a, comp.moved_a),
                              ("moved_b", model_b, comp.moved_b)):
        if len(rows):
            rows = np.asarray(rows, int)
            write_points_pdb(folder / f"{name}.pdb", model.xyz_A[rows], [model.elements[i] for i in rows],
                             None if model.b_A2 is None else np.asarray(model.b_A2, float)[rows])
            files[name] = folder / f"{name}.pdb"
    if figure:
        fig = comparison_figure(model_a.xyz_A, model_b.xyz_A, comp.status_a(), comp.status_b(),
                                comp.depth_a_A, comp.displacement_a_A(), labels=labels, summary=summary,
                                moved_pairs_xyz_A=(model_a.xyz_A[comp.moved_a], model_b.xyz_A[comp.moved_b]))
        fig.savefig(folder / "compare.png", dpi=130)
        _close(fig)
        files["figure"] = folder / "compare.png"
    summary = dict(summary)
    summary["files"] = {k: Path(v).name for k, v in files.items()} | {"summary": "compare.json"}
    write_json(folder / "compare.json", summary)
    files["summary"] = folder / "compare.json"
    return files


# --------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib
    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "cairo") and not os.environ.get("DISPLAY"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _close(fig):
    _pyplot().close(fig)


def _scatter3d(ax, xyz, colours, size, alpha=1.0):
    if len(xyz):
        ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=colours, s=size, alpha=alpha, depthshade=False, linewidths=0)


def _thin(idx, n_max):
    return idx if len(idx) <= n_max else idx[:: int(np.ceil(len(idx) / n_max))]


def comparison_figure(a_xyz_A, b_xyz_A, status_a, status_b, depth_a_A, displacement_a_A, *,
                      labels=("A", "B"), summary=None, moved_pairs_xyz_A=None, max_points: int = 20000):
    """The two models side by side coloured by status, the differences, and displacement vs depth.

    Parameters
    ----------
    a_xyz_A, b_xyz_A : (N, 3), (M, 3) ndarray
        Positions in Å (host arrays), B in A's frame.
    status_a, status_b : (N,), (M,) array of str
        ``common``/``moved``/``lost`` and ``common``/``moved``/``gained``.
    depth_a_A, displacement_a_A : (N,) ndarray
        Radial depth of A's atoms and distance to their partner (NaN if lost), Å.
    labels : (str, str)
    summary : dict, optional
        Output of :meth:`Comparison.summary`, for the titles.
    moved_pairs_xyz_A : ((K, 3), (K, 3)) tuple of ndarray, optional
        Positions in A and in B of the moved atoms; drawn as segments A → B.
    max_points : int
        Common atoms drawn at most (thinned evenly) in large models.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    a, b = np.asarray(a_xyz_A, float), np.asarray(b_xyz_A, float)
    sa, sb = np.asarray(status_a), np.asarray(status_b)
    n_all = len(a) + len(b)
    size = float(np.clip(3000.0 / max(np.sqrt(n_all), 1.0), 1.0, 40.0))
    fig = plt.figure(figsize=(18, 5.4))
    grid = fig.add_gridspec(1, 4, width_ratios=(1, 1, 1, 1.15), left=0.01, right=0.985, top=0.86,
                            bottom=0.16, wspace=0.12)
    lo = np.minimum(a.min(0) if len(a) else 0, b.min(0) if len(b) else 0)
    hi = np.maximum(a.max(0) if len(a) else 0, b.max(0) if len(b) else 0)
    axes = []
    for k, (xyz, st, lab) in enumerate(((a, sa, labels[0]), (b, sb, labels[1]))):
        ax = fig.add_subplot(grid[0, k], projection="3d")
        for name in ("common", "moved", "lost", "gained"):
            idx = np.flatnonzero(st == name)
            if name == "common":
                idx = _thin(idx, max_points)
            _scatter3d(ax, xyz[idx], STATUS_COLOURS[name], size, 0.55 if name == "common" else 1.0)
        counts = ", ".join(f"{np.sum(st == n)} {n}" for n in ("common", "moved", "lost", "gained") if np.sum(st == n))
        ax.set_title(f"{lab}: {len(xyz)} atoms\n{counts}", fontsize=9, pad=0)
        axes.append(ax)
    ax = fig.add_subplot(grid[0, 2], projection="3d")
    _scatter3d(ax, a[_thin(np.flatnonzero(sa == "common"), max_points)], STATUS_COLOURS["common"], size * 0.5, 0.08)
    _scatter3d(ax, a[sa == "lost"], STATUS_COLOURS["lost"], size, 1.0)
    _scatter3d(ax, b[sb == "gained"], STATUS_COLOURS["gained"], size, 1.0)
    _scatter3d(ax, a[sa == "moved"], STATUS_COLOURS["moved"], size, 1.0)
    if moved_pairs_xyz_A is not None and len(moved_pairs_xyz_A[0]):
        from mpl_toolkits.mplot3d.art3d import Line3DCollection
        seg = np.stack([np.asarray(moved_pairs_xyz_A[0], float), np.asarray(moved_pairs_xyz_A[1], float)], axis=1)
        ax.add_collection3d(Line3DCollection(seg, colors=STATUS_COLOURS["moved"], linewidths=1.2))
    if summary:
        ax.set_title(f"different: {summary.get('n_moved', 0)} moved > {summary['cutoff_A']:.2f} Å (A → B), "
                     f"{summary.get('n_lost', 0)} lost, {summary.get('n_gained', 0)} gained\ncommon "
                     f"{summary.get('percent_common_of_a', 0):.1f}% of {labels[0]}, "
                     f"{summary.get('percent_common_of_b', 0):.1f}% of {labels[1]}", fontsize=9)
    axes.append(ax)
    for ax in axes:
        ax.set_xlim(lo[0], hi[0]); ax.set_ylim(lo[1], hi[1]); ax.set_zlim(lo[2], hi[2])
        ax.set_box_aspect(np.maximum(hi - lo, 1e-6))
        ax.view_init(elev=20, azim=-60)
        ax.set_axis_off()
    handles = [plt.Line2D([], [], ls="", marker="o", color=c, label=n) for n, c in STATUS_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.37, 0.02), ncol=4, frameon=False, fontsize=9)
    ax = fig.add_subplot(grid[0, 3])
    d, disp = np.asarray(depth_a_A, float), np.asarray(displacement_a_A, float)
    for name in ("common", "moved"):
        sel = sa == name
        ax.plot(d[sel], disp[sel], ".", ms=2 if n_all > 5000 else 4, color=STATUS_COLOURS[name], label=name)
    if summary and summary.get("displacement_vs_depth"):
        rows = [r for r in summary["displacement_vs_depth"] if r["displacement_common_median_A"] is not None]
        ax.plot([0.5 * (r["depth_min_A"] + r["depth_max_A"]) for r in rows],
                [r["displacement_common_median_A"] for r in rows], "-o", color="black", ms=3,
                label="median (common)")
    if summary:
        ax.axhline(summary["cutoff_A"], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("radial depth $R_{NP}-R$ (Å)")
    ax.set_ylabel(f"displacement {labels[0]} → {labels[1]} (Å)")
    ax.legend(fontsize=8, frameon=False)
    return fig


def read_depth_curves(result_dir, statistics=("cn", "gcn")) -> dict:
    """Per-atom radial depth and statistics from a ptnp result folder's ``atoms.csv``.

    Returns
    -------
    dict
        ``radial_depth_A`` (from the ``depth_A`` or ``radial_depth_A`` column) and one
        array per statistic found (missing ones are omitted).

    Raises
    ------
    InputError
        No ``atoms.csv`` or no radial depth column.
    """
    path = Path(result_dir) / "atoms.csv"
    if not path.is_file():
        raise InputError(f"{result_dir}: no atoms.csv (analyse the map first)")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    depth_key = next((k for k in DEPTH_COLUMNS if rows and k in rows[0]), None)
    if depth_key is None:
        raise InputError(f"{path}: needs a radial depth column ({' or '.join(DEPTH_COLUMNS)})")

    def column(key):
        return np.array([float(r[key]) if r[key] not in ("", "nan") else np.nan for r in rows])
    out = {"radial_depth_A": column(depth_key)}
    out.update({k: column(k) for k in statistics if k in rows[0]})
    return out


def series_figure(curves: dict, fits: dict, statistics=("cn", "gcn"), *, block: int = 5):
    """Statistic vs radial depth for merged/part1/part2 with Eq. 1 fits (paper Fig. 4).

    Parameters
    ----------
    curves : dict
        label → output of :func:`read_depth_curves`.
    fits : dict
        label → statistic → dict with ``delta_A``, ``m``, ``c`` (NaN when no fit).
    statistics : tuple of str
    block : int
        Atoms averaged per point, in depth order (5 in the paper).

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    stats = [s for s in statistics if any(s in c for c in curves.values())]
    fig, axes = plt.subplots(1, max(len(stats), 1), figsize=(5.2 * max(len(stats), 1), 4.2), squeeze=False)
    for ax, st in zip(axes[0], stats):
        for label, c in curves.items():
            if st not in c:
                continue
            colour = SERIES_COLOURS.get(label, None)
            x, y = _block_means(c["radial_depth_A"], c[st], block)
            ax.plot(x, y, "o", ms=3, color=colour, label=label, alpha=0.8)
            f = fits.get(label, {}).get(st, {})
            if f and np.isfinite(f.get("delta_A", np.nan)):
                xx = np.linspace(min(x.min(), 0), x.max(), 200)
                ax.plot(xx, np.where(xx < f["delta_A"], f["c"] + f["m"] * (xx - f["delta_A"]), f["c"]), "--",
                        color=colour, lw=1)
                ax.axvline(f["delta_A"], ls=":", color=colour, lw=1)
                ax.plot([], [], " ", label=f"  δ = {f['delta_A']:.2f} Å")
        ax.set_xlabel("radial depth $R_{NP}-R$ (Å)")
        ax.set_ylabel(st.upper())
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def _block_means(depth_A, values, n):
    d, v = np.asarray(depth_A, float), np.asarray(values, float)
    ok = np.isfinite(d) & np.isfinite(v)
    o = np.argsort(d[ok], kind="stable")
    d, v = d[ok][o], v[ok][o]
    m = (len(d) // n) * n
    return d[:m].reshape(-1, n).mean(1), v[:m].reshape(-1, n).mean(1)
