"""Per-atom statistics, the particle summary and the penetration depths (paper Methods).

:func:`compute_statistics` takes a map and atom positions and returns an
:class:`AtomStatistics`: per-atom columns (host 1-D arrays), the particle row
of the paper's Table 1, the lattice fit, statistics binned by CN and the
Eq. 1 penetration fits. :func:`write_statistics` writes all of it into a
result folder (CSV with a schema, PDB/mmCIF with B and ANISOU, ChimeraX
attribute files, particle JSON/CSV, CN bins, penetration fits, figures).

Positions are (x, y, z) Å in the map frame; map arrays are [z, y, x]. The
window measurements (Gaussian fits, validation correlation, peak intensity)
run on the backend of the map (NumPy or CuPy), and so do the neighbour
geometry (CN, GCN, bonds, depth) and the strain; only the lattice fit and the
particle diameter (convex hull) run on the host, and the per-atom columns come
back to the host in one copy.

Depth (the ``depth_A`` column and the abscissa of the penetration fits) is the
paper's radial depth ``R_NP − R`` by default (``depth="radial"``), or with
``depth="surface"`` the distance of each atom to the convex hull of all atoms
(:func:`ptnp_gpu.compare.surface_depth_A`, computed on the host), which does
not assume a spherical particle.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import backend as _be
from . import gpu_kernels as gk
from .baseline import solvent_level_at_atoms
from .components import map_mean_sd
from .coordination import (coordination_numbers, generalized_cn_pair, neighbour_pairs,
                           mean_bond_lengths_A, nn_bond_lengths_A, particle_diameter_A)
from .displacement import (DEFAULT_PRESMOOTH_A, displacements_from_fits, fit_radius_A, gather_windows,
                           map_blur_tensor_A2, window_offsets, window_peak)
from .elements import Element, get_element
from .errors import InputError
from .host_parallel import thread_pool
from .lattice import LatticeDomains, LatticeFit, fit_lattice_domains, lattice_geometry
from .models import atomic_write, format_cell, write_json, write_table
from .penetration import fit_penetration
from .scale import check_model_scale
from .strain import radial_displacement_A, radial_strain, strain_neighbourhood, strain_tensor

__all__ = ["AtomStatistics", "compute_statistics", "write_statistics", "SCHEMA", "TABLE1_COLUMNS",
           "PENETRATION_STATISTICS", "DEPTH_DEFINITIONS", "BLUR_CORRECTIONS", "FIT_BASELINES",
           "check_statistics_options",
           "summary_table"]

log = logging.getLogger(__name__)

EIGHT_PI2 = 8.0 * np.pi ** 2

# column → (unit, description); the order is the atoms.csv order
SCHEMA: dict[str, tuple[str, str]] = {
    "id": ("", "atom number, 1-based (PDB residue number)"),
    "element": ("", "chemical element"),
    "x": ("Å", "x position in the map frame"),
    "y": ("Å", "y position in the map frame"),
    "z": ("Å", "z position in the map frame"),
    "cn": ("", "coordination number: atoms within ā/2·(1+1/√2) (fcc) of the fitted lattice"),
    "gcn": ("", "generalized CN, paper: Σ CN_k / max CN_k over neighbours k"),
    "gcn_bulk": ("", "generalized CN with the bulk maximum: Σ CN_k / 12 (fcc; 8 for bcc)"),
    "bond_nn_A": ("Å", "distance to the nearest other atom"),
    "bond_mean_A": ("Å", "mean distance to the bonded neighbours (within the CN cutoff); unlike bond_nn_A "
                         "not shortened by position noise"),
    "radius_A": ("Å", "distance R from the particle centre (atom centroid)"),
    "depth_A": ("Å", "radial depth R_NP − R, R_NP = half the largest interatomic distance"),
    "lattice_resid_A": ("Å", "distance from the atom's site in its domain's fitted lattice"),
    "lattice_inlier": ("0/1", "1 if the atom sits on the lattice of a crystal domain (near its site)"),
    "lattice_domain": ("id", "crystal domain (twin) whose lattice holds the atom, 1 = the largest; 0: none"),
    "disp_radial_A": ("Å", "radial displacement u_R from the ideal lattice with the bulk parameter"),
    "strain_radial_pct": ("%", "radial strain ε_RR = ∂u_R/∂R (local regression, h = 2 Å)"),
    "strain_xx_pct": ("%", "local strain tensor ε_xx (map axes)"),
    "strain_yy_pct": ("%", "local strain tensor ε_yy"),
    "strain_zz_pct": ("%", "local strain tensor ε_zz"),
    "strain_xy_pct": ("%", "local strain tensor ε_xy"),
    "strain_xz_pct": ("%", "local strain tensor ε_xz"),
    "strain_yz_pct": ("%", "local strain tensor ε_yz"),
    "strain_vol_pct": ("%", "volumetric strain: trace of the local strain tensor"),
    "strain_failed": ("0/1", "1 if the strain could not be computed (outlier or too few neighbours); values NaN"),
    "intensity_peak_z": ("SD", "(peak raw value of the atom − map mean) / map SD"),
    "valid_corr": ("", "validation correlation: Pearson of raw and simulated map within 1.5·r_th"),
    "u_iso_A2": ("Å²", "isotropic variance σ_g² of the atom's intensity (paper U_iso; includes the intrinsic width)"),
    "u_iso_r2": ("", "weighted R² of the isotropic log-linear fit"),
    "u_iso_failed": ("0/1", "1 if the isotropic fit failed (β1 ≥ 0 or too few voxels); u_iso_A2 NaN"),
    "u11_A2": ("Å²", "anisotropic U, xx"),
    "u22_A2": ("Å²", "anisotropic U, yy"),
    "u33_A2": ("Å²", "anisotropic U, zz"),
    "u12_A2": ("Å²", "anisotropic U, xy"),
    "u13_A2": ("Å²", "anisotropic U, xz"),
    "u23_A2": ("Å²", "anisotropic U, yz"),
    "u_maj_A2": ("Å²", "largest eigenvalue of U"),
    "u_med_A2": ("Å²", "middle eigenvalue of U"),
    "u_min_A2": ("Å²", "smallest eigenvalue of U"),
    "u_maj_dir_x": ("", "x component of the unit principal direction of U_maj"),
    "u_maj_dir_y": ("", "y component of the unit principal direction of U_maj"),
    "u_maj_dir_z": ("", "z component of the unit principal direction of U_maj"),
    "doi": ("", "degree of isotropy U_min / U_maj"),
    "u_aniso_r2": ("", "weighted R² of the anisotropic log-linear fit"),
    "u_aniso_failed": ("0/1", "1 if the anisotropic fit failed (non-positive eigenvalue, or one above "
                              "(1.25·fit radius)²); U and DOI NaN"),
    "n_fit_voxels": ("", "voxels used in the displacement fits"),
    "fit_baseline": ("map units", "level subtracted from the map before the displacement fits: the local "
                                  "solvent level (fit_baseline='solvent') or 0 ('none', the paper's raw map)"),
}

# columns the detection adds to atoms.csv (write_statistics' ``model_extra``), with their meaning
DETECTION_SCHEMA: dict[str, tuple[str, str]] = {
    "n_voxels": ("voxels", "voxels of the atom's component in the detection's labels (labels.mrc)"),
    "significance_sd": ("noise SDs", "the atom's peak in the detection's denoised map above the solvent's "
                                     "level, in the solvent's noise SDs"),
    "position_sd_A": ("Å", "estimated RMS error of the atom's position per axis, from the noise of the "
                           "denoised map's gradient and its curvature at the atom (ptnp_gpu.precision); "
                           "NaN where that map has no peak"),
}

_SECOND_CLUSTER_MIN = 20          # a second bonded cluster this large (atoms) ...
_SECOND_CLUSTER_FRACTION = 0.02   # ... and this share of the model: two particles (a warning)
BLUR_CORRECTIONS = ("auto", "core", "none")   # compute_statistics' ``blur_correction``
FIT_BASELINES = ("solvent", "none")            # compute_statistics' ``fit_baseline``
BLUR_AUTO_DOI = 0.7   # blur_correction="auto": the core's median U tensor is this anisotropic or more

# depth definitions (compute_statistics' ``depth``) → description of the depth_A column
DEPTH_DEFINITIONS = {
    "radial": SCHEMA["depth_A"][1],
    "surface": "depth below the surface: distance to the convex hull of all atoms (0 on the hull)",
}

# statistics fitted with Eq. 1 (name → bounds of the core value c; for CN the
# paper's [10, 12] for fcc, i.e. [bulk CN − 2, bulk CN] for the lattice type)
PENETRATION_STATISTICS = {"cn": "bulk", "gcn": None, "u_iso_A2": None, "intensity_peak_z": None,
                          "doi": None, "valid_corr": None}
TABLE1_COLUMNS = ("n_atoms", "diameter_A", "cn_median", "bond_nn_median_A", "strain_radial_median_pct",
                  "core_ratio")
CN_BIN_STATISTICS = ("gcn", "bond_nn_A", "depth_A", "strain_radial_pct", "intensity_peak_z", "valid_corr",
                     "u_iso_A2", "doi")
ATTRIBUTE_STATISTICS = ("cn", "gcn", "gcn_bulk", "bond_nn_A", "strain_radial_pct", "u_iso_A2", "doi",
                        "valid_corr", "intensity_peak_z")


@dataclass
class AtomStatistics:
    """Result of :func:`compute_statistics` (all arrays on the host).

    Attributes
    ----------
    columns : dict of str → (N,) array
        Per-atom statistics, keyed as in :data:`SCHEMA`.
    particle : dict
        Particle summary: the paper's Table 1 columns, lattice parameters,
        medians and CN / GCN penetration depths.
    lattice : LatticeFit
        The main (largest) crystal domain's lattice.
    penetration : dict of str → dict
        Eq. 1 fit per statistic (:func:`ptnp_gpu.penetration.fit_penetration`).
    cn_bins : dict of str → array
        Statistics binned by CN (bins with ≥ 5 atoms): ``cn``, ``n_atoms``,
        ``<stat>_mean`` and ``<stat>_sem`` (S/√N).
    element : str
    centre_A : (3,) array
    fit_radius_A : float
    times_s : dict
    backend : str
    domains : LatticeDomains or None
        Every crystal domain (twins): :func:`ptnp_gpu.lattice.fit_lattice_domains`.
    depth_definition : str
        What ``columns["depth_A"]`` and the penetration fits use: ``"radial"``
        or ``"surface"`` (a key of :data:`DEPTH_DEFINITIONS`; also in
        ``particle["depth_definition"]``).
    warnings : list of str
        What the reader of the figures should know (two particles in one model, a map blur
        taken off the displacements); also logged.
    """
    columns: dict
    particle: dict
    lattice: LatticeFit
    penetration: dict
    cn_bins: dict
    element: str
    centre_A: np.ndarray
    fit_radius_A: float
    times_s: dict = field(default_factory=dict)
    backend: str = "numpy"
    domains: LatticeDomains | None = None
    depth_definition: str = "radial"
    warnings: list = field(default_factory=list)

    @property
    def n_atoms(self) -> int:
        return len(self.columns["x"])

    @property
    def xyz_A(self) -> np.ndarray:
        return np.stack([self.columns["x"], self.columns["y"], self.columns["z"]], axis=1)


def _on(be, a):
    """``a`` on backend ``be`` (device copy or host copy as needed; a large host volume goes to
    the device through :func:`ptnp_gpu.backend.upload_volume`, in its own dtype)."""
    if not be.is_gpu:
        return np.asarray(_be.to_host(a))
    if isinstance(a, np.ndarray):
        return _be.upload_volume(a, be.xp, dtype=a.dtype)
    return be.xp.asarray(a)


def _resolve_backend(backend, *arrays):
    if backend is None:
        for a in arrays:
            if a is not None and type(a).__module__.startswith("cupy"):
                return _be.namespace(a)
        return _be.default()
    return _be.get(backend) if isinstance(backend, str) else backend


def _crop(shape, vox, margin_vox):
    """Index bounds [lo, hi) per axis (x, y, z) of a box holding all atoms plus a margin."""
    dims = np.array([shape[2], shape[1], shape[0]])
    lo = np.clip(np.floor(vox.min(0) - margin_vox).astype(int), 0, dims)
    hi = np.clip(np.ceil(vox.max(0) + margin_vox).astype(int) + 1, 0, dims)
    return lo, np.maximum(hi, lo + 1)


def _host_geometry(xyz, el, voxel_size_A):
    """The statistics' host work on the positions alone: the lattice fit (iterative; N is small),
    the particle's diameter and the model's scale check (a wrong voxel size scales every length)."""
    return fit_lattice_domains(xyz, el), particle_diameter_A(xyz), check_model_scale(xyz, el, voxel_size_A)


def _lattice_pool():
    """Worker threads for the statistics' lattice fits (shared by the calling threads)."""
    return thread_pool("lattice", 2)


def _window_measurements(dmap, xyz, el, fit_r, labels, simulated, be, chunk=None, presmooth_A=0.0,
                         fit_baseline="solvent"):
    """Displacement fits, validation correlation and peak intensity for every atom.

    ``fit_baseline="solvent"`` fits ``ln(I − b)`` with b the solvent's level at the atom
    (:func:`ptnp_gpu.baseline.solvent_level_at_atoms`); ``"none"`` fits the raw values.

    Returns (host columns, map mean and SD, ``refit``): ``refit(psi)`` gives the displacement
    columns again from the same solved fits with the blur tensor ``psi`` taken off
    (:func:`ptnp_gpu.displacement.displacements_from_fits`), without a second pass over the map."""
    inp = _window_inputs(dmap, xyz, el, labels, simulated, be, presmooth_A=presmooth_A,
                         fit_baseline=fit_baseline, margin_radius_A=fit_r)
    return _window_fits(inp, el, fit_r, be, chunk=chunk, presmooth_A=presmooth_A)


def _window_inputs(dmap, xyz, el, labels, simulated, be, *, presmooth_A=0.0, fit_baseline="solvent",
                   margin_radius_A=0.0):
    """What the window fits need that does not depend on the fit radius: the map's mean and SD,
    the box around the atoms (a margin of 6 Å past the larger of the validation radius and
    ``margin_radius_A``), the simulated map, the labels, the solvent level at the atoms, the
    smoothed map the fits see, the validation correlation and the peak intensities (a dict)."""
    xp = be.xp
    vs = dmap.voxel_size_A
    data_full = _on(be, dmap.data)
    mean, sd = map_mean_sd(data_full)                    # synchronize (once)
    vox = dmap.xyz_A_to_voxel(xyz)
    r_val = 1.5 * el.radius_A
    reach = max(r_val, float(margin_radius_A))
    # crop to the particle: simulation and gathers only touch this box
    margin = (reach + 6.0) / vs.min()
    lo, hi = _crop(dmap.shape, vox, margin)
    sl = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    data = xp.ascontiguousarray(data_full[sl])
    if simulated is None:
        from .simulate import render_atoms
        sim = render_atoms(xyz, data.shape, vs, dmap.origin_A + lo * vs, el, backend=be)
    else:
        sim = xp.ascontiguousarray(_on(be, simulated)[sl])
    extra = []
    if labels is not None:
        lab = _on(be, labels)
        if tuple(lab.shape) != tuple(dmap.shape):
            raise InputError(f"labels shape {tuple(lab.shape)} differs from the map shape {dmap.shape}")
        extra.append(xp.ascontiguousarray(lab[sl]))
    vox_c = xp.asarray(vox - lo, dtype=xp.float64)
    # the fits see the map smoothed by a small Gaussian (less noise in the log-intensities),
    # whose variance is then subtracted from U: exact for Gaussian atoms (measured: DOI rank
    # correlation with the truth 0.48 → 0.55 at noise 0.15, 0.63 → 0.69 at 0.05)
    if fit_baseline == "solvent":        # the map's zero is arbitrary: fit above the solvent's level
        base, _ = solvent_level_at_atoms(data, vox_c, vs)
    else:
        base = xp.zeros(len(xyz), dtype=xp.float64)
    fit_data = data if not presmooth_A > 0 else be.ndi.gaussian_filter(data, presmooth_A / vs[::-1])
    valid_corr = gk.window_pearson(data, sim, vox_c, r_val / vs[0])
    del sim
    # peak intensity: the maximum raw value in the atom's own component (one fused
    # pass of the label-moments kernel); the atoms without one are measured by the fits' step
    n = len(xyz)
    peak = xp.full(n, xp.nan)
    if labels is not None:
        mom = gk.label_moments(extra[0], data, data, n)
        peak = xp.where(mom.count > 0, mom.peak_value.astype(xp.float64), xp.nan)
    return {"reach_A": reach, "data": data, "vox_c": vox_c, "base": base, "fit_data": fit_data,
            "valid_corr": valid_corr, "peak": peak, "mean": mean, "sd": sd, "voxel_size_A": vs}


def _window_fits(inp, el, fit_r, be, *, chunk=None, presmooth_A=0.0):
    """The displacement fits on :func:`_window_inputs` (made with a reach of at least
    ``fit_r``) and the per-atom columns: (host columns, map mean and SD, ``refit``)."""
    xp = be.xp
    data, vox_c, base, fit_data = inp["data"], inp["vox_c"], inp["base"], inp["fit_data"]
    mean, sd = inp["mean"], inp["sd"]
    vs = inp["voxel_size_A"]
    # displacement fits and validation correlation: the custom window kernels
    # (CUDA on CuPy, Numba twins on NumPy) accumulate per-atom sums in one pass
    ne = gk.window_normal_equations(fit_data, vox_c, fit_r / vs[0], voxel_size_A=vs, baseline=base)
    inp["fit_data"] = fit_data = None
    solved = (gk.solve_normal_equations(gk.iso_normal_equations(ne)), gk.solve_normal_equations(ne), ne.count)

    def refit(psi):
        return _columns_to_host(displacements_from_fits(*solved, fit_r, deconvolve_A2=presmooth_A ** 2,
                                                        blur_tensor_A2=psi))

    fits = displacements_from_fits(*solved, fit_r, deconvolve_A2=presmooth_A ** 2)
    fits["fit_baseline"] = base
    fits["valid_corr"] = inp["valid_corr"]
    # peak intensity of the atoms without a component: near the centre (gathered windows)
    peak = inp["peak"]
    todo = xp.nonzero(~xp.isfinite(peak))[0]
    if todo.size:                            # no component: the core sphere around the centre
        off_val = window_offsets(el.radius_A, vs)
        if chunk is None:      # big batches feed a GPU; cache-sized ones suit a CPU
            chunk = 16384 if be.is_gpu else 1024
        for s in range(0, int(todo.size), chunk):   # chunks bound memory; each is fully batched
            sel = todo[s:s + chunk]
            v2, d2, inside2, _ = gather_windows(data, vox_c[sel], off_val, vs)
            rr = xp.sum(d2 * d2, axis=2)
            core = inside2 & (rr <= xp.min(xp.where(inside2, rr, xp.inf), axis=1, keepdims=True))
            peak[sel] = window_peak(v2, core | (inside2 & (rr <= el.radius_A ** 2)))
    fits["intensity_peak_z"] = (peak - mean) / (sd if sd > 0 else 1.0)
    return _columns_to_host(fits), {"map_mean": mean, "map_sd": sd}, refit


def _columns_to_host(columns: dict) -> dict:
    """Per-atom (N, ...) backend arrays as host arrays, with one device → host copy.

    On CuPy the columns are flattened to (N, k), stacked as float64 (exact for
    the integer and boolean columns, which get their dtype and shape back) and
    copied in one transfer; NumPy arrays pass through unchanged.
    """
    if not any(_be.namespace(v).is_gpu for v in columns.values()):
        return {k: np.asarray(v) for k, v in columns.items()}
    xp = _be.namespace(*columns.values()).xp
    n = len(next(iter(columns.values())))
    flat = [xp.asarray(v, dtype=xp.float64).reshape(n, -1) for v in columns.values()]
    host = _be.to_host(xp.concatenate(flat, axis=1))
    out, at = {}, 0
    for (k, v), f in zip(columns.items(), flat):
        w = f.shape[1]
        out[k] = np.ascontiguousarray(host[:, at:at + w].reshape(v.shape), dtype=v.dtype)
        at += w
    return out


def _cn_bins(cols, min_atoms=5):
    """Mean and standard error of each ``CN_BIN_STATISTICS`` column per CN value held by at
    least ``min_atoms`` atoms (non-finite values left out). The atoms are sorted by CN once
    (stably: each bin keeps the atoms' order, so its sums are the same numbers) and each bin is
    a slice of the sorted columns."""
    cn = np.asarray(cols["cn"])
    vals, counts = np.unique(cn, return_counts=True)
    big = counts >= min_atoms
    out = {"cn": vals[big].astype(int), "n_atoms": counts[big].astype(int)}
    order = np.argsort(cn, kind="stable")
    ends = np.cumsum(counts)[big]
    bounds = list(zip(ends - counts[big], ends))
    for name in CN_BIN_STATISTICS:
        v = np.asarray(cols[name])[order]
        means, sems = [], []
        for a, b in bounds:       # ≤ 13 CN values, not atoms
            x = v[a:b]
            x = x[np.isfinite(x)]
            means.append(x.mean() if len(x) else np.nan)
            sems.append(x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else np.nan)
        out[f"{name}_mean"] = np.array(means, float)
        out[f"{name}_sem"] = np.array(sems, float)
    return out


def _median(v):
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if len(v) else float("nan")


def check_statistics_options(depth="radial", blur_correction="auto", fit_baseline="solvent") -> None:
    """Raise :class:`InputError` for a ``depth``, ``blur_correction`` or ``fit_baseline`` that
    :func:`compute_statistics` does not know (the pipeline checks before detecting)."""
    if fit_baseline not in FIT_BASELINES:
        raise InputError(f"fit_baseline must be one of {', '.join(map(repr, FIT_BASELINES))}; "
                         f"got {fit_baseline!r}")
    if blur_correction not in BLUR_CORRECTIONS:
        raise InputError(f"blur_correction must be one of {', '.join(map(repr, BLUR_CORRECTIONS))}; "
                         f"got {blur_correction!r}")
    if not isinstance(depth, str) or depth not in DEPTH_DEFINITIONS:
        raise InputError(f"depth must be one of {', '.join(map(repr, DEPTH_DEFINITIONS))}; got {depth!r}")


def _bonded_clusters(pairs, n: int) -> dict:
    """Sizes of the bonded clusters (connected components of the CN bonds) of ``n`` atoms.

    One particle is one cluster (stray atoms aside); a second large one means the model holds
    two particles, or a particle and a fragment of a neighbour, and every particle-level
    figure (diameter, depth, penetration) then mixes them."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    p = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    g = coo_matrix((np.ones(len(p)), (p[:, 0], p[:, 1])), shape=(n, n))
    k, lab = connected_components(g, directed=False)
    sizes = np.sort(np.bincount(lab, minlength=k))[::-1]
    second = int(sizes[1]) if k > 1 else 0
    warning = None
    if second >= max(_SECOND_CLUSTER_MIN, _SECOND_CLUSTER_FRACTION * n):
        warning = (f"the model holds more than one particle: bonded clusters of {int(sizes[0])} and {second} "
                   f"atoms (of {n}); particle-level figures mix them (crop or mask the map to one particle)")
        log.warning(warning)
    return {"n_clusters": int(k), "largest_cluster_fraction": float(sizes[0] / max(n, 1)),
            "second_cluster_atoms": second}, warning


def compute_statistics(dmap, xyz_A, element: str | Element = "Pt", *, labels=None, backend=None,
                       simulated=None, strain_h_A: float = 2.0,
                       presmooth_A: float | None = None, depth: str = "radial",
                       blur_correction: str = "auto", fit_baseline: str = "solvent") -> AtomStatistics:
    """Per-atom statistics, particle summary, lattice fit and penetration depths.

    Parameters
    ----------
    dmap : DensityMap
        The raw map (``data`` [z, y, x]; grey values for the window fits).
    xyz_A : (N, 3) array
        Atom positions (x, y, z) in Å, map frame.
    element : str or Element
        Scattering factors, theoretical radius, lattice type and the bulk
        lattice parameter (the strain reference).
    labels : (nz, ny, nx) int array, optional
        Connected components with id = atom index + 1 (detection output); the
        peak intensity is then taken over each atom's own component.
    backend : Backend or str, optional
        Where the window measurements run; default the backend of ``labels``
        or the import-time default.
    simulated : (nz, ny, nx) array, optional
        Simulated map of the model (detection output); rendered when absent.
    strain_h_A : float
        Kernel width of the strain estimates (Å).
    presmooth_A : float, optional
        σ (Å) of a Gaussian applied to the map before the displacement fits; its
        variance is subtracted from U_iso and U afterwards (0: fit the raw map;
        None: ``DEFAULT_PRESMOOTH_A``).
    depth : {"radial", "surface"}
        Depth of each atom (the ``depth_A`` column, Å) and the abscissa of the
        Eq. 1 penetration fits. ``"radial"`` (default, the paper's): ``R_NP − R``
        with R the distance from the atom centroid and R_NP half the largest
        interatomic distance, which assumes a roughly spherical particle.
        ``"surface"``: the distance to the convex hull of all atoms
        (:func:`ptnp_gpu.compare.surface_depth_A`; 0 on the hull), for
        elongated or strongly faceted particles. A model with no
        three-dimensional hull (fewer than 5 atoms, flat) gets the radial
        depth, and ``depth_definition`` then says ``"radial"``.

    blur_correction : {"auto", "core", "none"}
        Take the map's own anisotropic blur off every U tensor and U_iso
        (:func:`ptnp_gpu.displacement.map_blur_tensor_A2`: the elongation common
        to the fully coordinated atoms, e.g. a tomogram's missing wedge).
        ``"auto"`` (default) does so when the core's median tensor has a DOI
        below ``BLUR_AUTO_DOI`` (0.7; rendered maps measure 0.98, tomograms
        0.27-0.32), ``"core"`` always, ``"none"`` never.
    fit_baseline : {"solvent", "none"}
        The zero of the displacement fits. ``"solvent"`` (default) subtracts the
        solvent's level beside each atom (:mod:`ptnp_gpu.baseline`), so that U and
        DOI do not depend on the map's grey offset or a smooth solvent background;
        ``"none"`` fits the raw values as the paper does. The ``fit_baseline``
        column holds the level subtracted.

    Returns
    -------
    AtomStatistics
        ``particle["depth_definition"]`` and ``depth_definition`` record the
        depth actually used; ``particle["map_core_doi"]`` the core's DOI and
        ``particle["blur_corrected"]`` whether the blur was taken off.

    Raises
    ------
    InputError
        No atoms, non-finite positions, labels of the wrong shape, or a
        ``depth`` other than ``"radial"`` or ``"surface"``.
    """
    t_all = time.perf_counter()
    check_statistics_options(depth, blur_correction, fit_baseline)
    el = get_element(element) if isinstance(element, str) else element
    xyz = np.asarray(_be.to_host(xyz_A), dtype=np.float64).reshape(-1, 3)
    n = len(xyz)
    if n == 0:
        raise InputError("the model holds no atoms; nothing to analyse")
    if not np.all(np.isfinite(xyz)):
        raise InputError("the model holds non-finite coordinates")
    be = _resolve_backend(backend, labels, simulated, dmap.data)
    times = {}
    t0 = time.perf_counter()
    presmooth = float(DEFAULT_PRESMOOTH_A if presmooth_A is None else presmooth_A)
    inputs = None
    if be.is_gpu:
        # the lattice fit, diameter and scale check (host: Numba and NumPy on N positions, GIL
        # released in the compiled loops) run in a thread while this one queues the window inputs
        # on the device, which do not depend on them (their box reaches past the validation
        # radius, which exceeds the fit radius, 3/8 of a bond, for any metal; checked below)
        pending = _lattice_pool().submit(_host_geometry, xyz, el, dmap.voxel_size_A)
        try:
            inputs = _window_inputs(dmap, xyz, el, labels, simulated, be, presmooth_A=presmooth,
                                    fit_baseline=fit_baseline)
        finally:
            doms, diameter, scale = pending.result()
    else:
        doms, diameter, scale = _host_geometry(xyz, el, dmap.voxel_size_A)
    lat = doms.main
    geo = lattice_geometry(lat.lattice)
    cutoff = lat.cn_cutoff_A
    # neighbour geometry and strain run on ``be`` (on CuPy: positions copied once,
    # per-atom results back in one copy at the end); lattice fit and hull on the host
    xp = be.xp
    pos = _on(be, xyz)
    pairs = neighbour_pairs(pos, cutoff)
    cn = coordination_numbers(pos, cutoff, pairs)
    centre = xyz.mean(0)
    centre_b = _on(be, centre)
    clusters, cluster_warning = _bonded_clusters(_be.to_host(pairs), n)   # sync: the pairs come to the host once
    warnings = [cluster_warning] if cluster_warning else []
    if scale.message:
        log.warning(scale.message)
        warnings.append(scale.message)
    radius = xp.linalg.norm(pos - centre_b, axis=1)
    depth_used = "radial"
    if depth == "surface":                           # host: convex hull (Qhull)
        from .compare import _surface_depth
        surf, on_hull = _surface_depth(xyz)
        if on_hull:
            depth_col, depth_used = _on(be, surf), "surface"
        else:
            log.warning("surface depth: the %d atoms span no three-dimensional convex hull; "
                        "using the radial depth", n)
    if depth_used == "radial":
        depth_col = 0.5 * diameter - radius
    gcn, gcn_bulk = generalized_cn_pair(cn, pairs, geo["cn_bulk"])     # one pass for both
    per_atom = {
        "cn": cn, "gcn": gcn, "gcn_bulk": gcn_bulk,
        "bond_nn_A": nn_bond_lengths_A(pos, pairs),     # the nearest neighbour lies within the CN cutoff
        "bond_mean_A": mean_bond_lengths_A(pos, pairs),
        "radius_A": radius, "depth_A": depth_col,
    }
    _be.synchronize(be)
    times["geometry"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    bulk_param = el.nn_distance_A / geo["d1"]
    ideal = _on(be, doms.ideal_sites_A(bulk_param, centre))     # NaN where no lattice holds the atom
    u, u_r, _ = radial_displacement_A(pos, ideal, centre_b)
    # derivatives with respect to the reference (ideal-site) coordinates; one
    # neighbourhood (pair search and weights) serves both estimates
    r_ref = xp.linalg.norm(ideal - centre_b, axis=1)
    inlier = _on(be, doms.on_lattice)
    hood = strain_neighbourhood(ideal, h_A=strain_h_A, valid=inlier, domain=_on(be, doms.domain))
    eps_rr = radial_strain(r_ref, u_r, ideal, h_A=strain_h_A, valid=inlier, neighbourhood=hood)
    eps = strain_tensor(ideal, u, h_A=strain_h_A, valid=inlier, neighbourhood=hood)
    per_atom.update({
        "disp_radial_A": u_r, "strain_radial_pct": 100.0 * eps_rr,
        "strain_xx_pct": 100 * eps[:, 0, 0], "strain_yy_pct": 100 * eps[:, 1, 1],
        "strain_zz_pct": 100 * eps[:, 2, 2], "strain_xy_pct": 100 * eps[:, 0, 1],
        "strain_xz_pct": 100 * eps[:, 0, 2], "strain_yz_pct": 100 * eps[:, 1, 2],
        "strain_vol_pct": 100 * xp.trace(eps, axis1=1, axis2=2),
        "strain_failed": (~xp.isfinite(eps_rr)).astype(xp.int64),
    })
    per_atom = _columns_to_host(per_atom)
    cn, gcn, bond, depth = (per_atom[k] for k in ("cn", "gcn", "bond_nn_A", "depth_A"))
    times["strain"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit_r = fit_radius_A(lat.mean_param_A * geo["d1"])
    if inputs is not None and inputs["reach_A"] >= fit_r:
        win, map_stats, refit = _window_fits(inputs, el, fit_r, be, presmooth_A=presmooth)
    else:
        win, map_stats, refit = _window_measurements(dmap, xyz, el, fit_r, labels, simulated, be,
                                                     presmooth_A=presmooth, fit_baseline=fit_baseline)
    del inputs
    psi, core_doi = map_blur_tensor_A2(win["u_A2"], np.asarray(cn) == geo["cn_bulk"])
    corrected = psi is not None and (blur_correction == "core"
                                     or (blur_correction == "auto" and core_doi < BLUR_AUTO_DOI))
    if corrected:
        warnings.append(f"the map blurs its atoms anisotropically (core DOI {core_doi:.2f}): that blur is taken "
                        f"off every U (largest {float(np.linalg.eigvalsh(psi)[-1]):.3f} Å²)")
        log.warning(warnings[-1])
        win.update(refit(psi))
    times["windows"] = time.perf_counter() - t0

    U = win["u_A2"]
    ev = win["u_eig_A2"]
    cols = {
        "id": np.arange(1, n + 1), "element": np.array([el.symbol] * n),
        "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
        "cn": cn, "gcn": gcn, "gcn_bulk": per_atom["gcn_bulk"], "bond_nn_A": bond,
        "bond_mean_A": per_atom["bond_mean_A"],
        "radius_A": per_atom["radius_A"], "depth_A": depth,
        "lattice_resid_A": doms.residual_A, "lattice_inlier": doms.on_lattice.astype(int),
        "lattice_domain": doms.domain,
        **{k: per_atom[k] for k in ("disp_radial_A", "strain_radial_pct", "strain_xx_pct", "strain_yy_pct",
                                    "strain_zz_pct", "strain_xy_pct", "strain_xz_pct", "strain_yz_pct",
                                    "strain_vol_pct", "strain_failed")},
        "intensity_peak_z": win["intensity_peak_z"], "valid_corr": win["valid_corr"],
        "u_iso_A2": win["u_iso_A2"], "u_iso_r2": win["u_iso_r2"],
        "u_iso_failed": win["u_iso_failed"].astype(int),
        "u11_A2": U[:, 0, 0], "u22_A2": U[:, 1, 1], "u33_A2": U[:, 2, 2],
        "u12_A2": U[:, 0, 1], "u13_A2": U[:, 0, 2], "u23_A2": U[:, 1, 2],
        "u_maj_A2": ev[:, 0], "u_med_A2": ev[:, 1], "u_min_A2": ev[:, 2],
        "u_maj_dir_x": win["u_dir"][:, 0], "u_maj_dir_y": win["u_dir"][:, 1], "u_maj_dir_z": win["u_dir"][:, 2],
        "doi": win["doi"], "u_aniso_r2": win["u_aniso_r2"],
        "u_aniso_failed": win["u_aniso_failed"].astype(int), "n_fit_voxels": win["n_fit_voxels"].astype(int),
        "fit_baseline": win["fit_baseline"],
    }
    t0 = time.perf_counter()
    cn_bounds = (geo["cn_bulk"] - 2.0, float(geo["cn_bulk"]))
    order = np.argsort(depth, kind="stable")            # one sort for all the fits
    pen = {name: fit_penetration(depth, cols[name], c_bounds=cn_bounds if cb == "bulk" else cb, name=name,
                                 depth_order=order)
           for name, cb in PENETRATION_STATISTICS.items()}
    times["penetration"] = time.perf_counter() - t0
    particle = {
        "n_atoms": int(n),
        "diameter_A": float(diameter),
        "cn_median": _median(cn),
        "bond_nn_median_A": _median(bond),
        "bond_mean_median_A": _median(per_atom["bond_mean_A"]),
        "strain_radial_median_pct": _median(cols["strain_radial_pct"]),
        "core_ratio": float(np.mean(cn == geo["cn_bulk"])),
        "element": el.symbol,
        "lattice": lat.lattice,
        "lattice_a_A": float(lat.params_A[0]), "lattice_b_A": float(lat.params_A[1]),
        "lattice_c_A": float(lat.params_A[2]), "lattice_mean_A": float(lat.mean_param_A),
        "lattice_bulk_A": float(bulk_param),
        "lattice_expansion_pct": float(100.0 * (lat.mean_param_A / bulk_param - 1.0)),
        "lattice_rms_A": float(lat.rms_A), "lattice_inlier_fraction": float(doms.on_lattice.mean()),
        "lattice_domains": len(doms.fits),
        "lattice_fit_ok": bool(lat.ok),
        "orientation_euler_zyz_deg": [float(v) for v in lat.euler_zyz_deg],
        "cn_cutoff_A": float(cutoff),
        "centre_A": [float(v) for v in centre],
        "gcn_median": _median(gcn), "u_iso_median_A2": _median(cols["u_iso_A2"]),
        "doi_median": _median(cols["doi"]), "valid_corr_median": _median(cols["valid_corr"]),
        "intensity_peak_z_median": _median(cols["intensity_peak_z"]),
        "n_u_iso_failed": int(cols["u_iso_failed"].sum()),
        "n_u_aniso_failed": int(cols["u_aniso_failed"].sum()),
        "n_strain_failed": int(cols["strain_failed"].sum()),
        "depth_definition": depth_used, **clusters,
        "bond_first_shell_A": scale.bond_A, "bond_over_bulk": scale.ratio,
        "map_core_doi": core_doi, "blur_corrected": bool(corrected),
        "fit_baseline": fit_baseline, "fit_baseline_median": _median(win["fit_baseline"]),
        "cn_penetration_A": pen["cn"]["delta_A"], "cn_penetration_err_A": pen["cn"]["delta_err_A"],
        "gcn_penetration_A": pen["gcn"]["delta_A"], "gcn_penetration_err_A": pen["gcn"]["delta_err_A"],
        "fit_radius_A": float(fit_r),
        "map_mean": map_stats["map_mean"], "map_sd": map_stats["map_sd"],
    }
    times["total"] = time.perf_counter() - t_all
    return AtomStatistics(cols, particle, lat, pen, _cn_bins(cols), el.symbol, centre, float(fit_r),
                          times, be.name, doms, depth_used, warnings)


# ----------------------------------------------------------------------------- writing

def _write_defattr(path, name, values, elements):
    unit, desc = SCHEMA.get(name) or DETECTION_SCHEMA.get(name) or ("", name)

    def write(fh):
        fh.write(f"# ptnp_gpu per-atom statistic: {desc}" + (f" ({unit})" if unit else "") + "\n")
        fh.write("# open atoms.pdb (or atoms.cif), then: open THIS_FILE ; "
                 f"color byattribute {name} palette viridis\n")
        fh.write(f"attribute: {name}\nmatch mode: any\nrecipient: atoms\n")
        for i, v in enumerate(values):
            if np.isfinite(v):
                fh.write(f"\t/A:{i + 1}@{str(elements[i]).upper()}\t{format_cell(v)}\n")
    return atomic_write(path, write)


def summary_table(stats: AtomStatistics) -> str:
    """A short plain-text summary (Table 1 row, lattice, penetration depths) for the CLI."""
    p = stats.particle
    lines = [
        f"atoms {p['n_atoms']}   diameter {p['diameter_A']:.1f} Å   median CN {p['cn_median']:.1f}   "
        f"median NN bond {p['bond_nn_median_A']:.3f} Å   median radial strain "
        f"{p['strain_radial_median_pct']:.2f} %   core ratio {p['core_ratio']:.3f}",
        f"lattice ({p['lattice']}) a b c = {p['lattice_a_A']:.4f} {p['lattice_b_A']:.4f} "
        f"{p['lattice_c_A']:.4f} Å (mean {p['lattice_mean_A']:.4f}, bulk {p['lattice_bulk_A']:.4f}, "
        f"rms {p['lattice_rms_A']:.3f} Å, {p['lattice_inlier_fraction']:.0%} of atoms on the lattice"
        + (f" of {p['lattice_domains']} twin domains)" if p.get("lattice_domains", 1) > 1 else ")")
        + ("" if stats.lattice.ok else f"\n  note: {stats.lattice.message}"),
        f"median U_iso {p['u_iso_median_A2']:.4f} Å²   median DOI {p['doi_median']:.3f}   "
        f"median validation corr {p['valid_corr_median']:.3f}   failed fits: U_iso {p['n_u_iso_failed']}, "
        f"U_aniso {p['n_u_aniso_failed']}",
        "penetration depth δ (Eq. 1" + ("" if stats.depth_definition == "radial"
                                         else f", {stats.depth_definition} depth") + "):",
    ]
    for name, f in stats.penetration.items():
        if f["ok"]:
            lines.append(f"  {name:<17} δ = {f['delta_A']:5.2f} ± {f['delta_err_A']:.2f} Å   "
                         f"c = {f['c']:.4g} ± {f['c_err']:.2g}" + (f"   ({f['message']})" if f["message"] else ""))
        else:
            lines.append(f"  {name:<17} fit failed: {f['message']}")
    return "\n".join(lines)


def write_statistics(out_dir, dmap, stats: AtomStatistics, model_extra: dict | None = None,
                     *, figures: bool = True) -> dict:
    """Write the statistics of :func:`compute_statistics` into a result folder.

    Files: ``atoms.csv`` (id, element, x, y, z, the ``model_extra`` columns,
    then every statistic), ``atoms_schema.json`` (unit and meaning of each
    column), ``atoms.pdb`` / ``atoms.cif`` (B = 8π²·U_iso, ANISOU),
    ``chimerax_<stat>.defattr`` per statistic, ``particle.json`` /
    ``particle.csv`` (Table 1 row, lattice, penetration depths),
    ``cn_stats.csv``, ``penetration.csv`` and PNG figures
    (``fig_depth_profiles.png``, ``fig_cn_stats.png``, ``fig_slab.png``).

    Parameters
    ----------
    out_dir : path
        Created if needed; existing files of the same names are replaced.
    dmap : DensityMap
        The map (for the slab figure).
    stats : AtomStatistics
    model_extra : dict of str → (N,) array, optional
        Further per-atom columns to keep in atoms.csv (e.g. detection's
        ``n_voxels``); an ``element`` entry (N strings) sets the elements.
    figures : bool
        Write the PNG figures (matplotlib).

    Returns
    -------
    dict of name → Path of the files written.
    """
    from .models import Model, write_structure
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = stats.n_atoms
    cols = dict(stats.columns)
    schema = {k: {"unit": u, "description": d} for k, (u, d) in SCHEMA.items()}
    schema["depth_A"]["description"] = DEPTH_DEFINITIONS.get(getattr(stats, "depth_definition", "radial"),
                                                             SCHEMA["depth_A"][1])
    extra = dict(model_extra or {})
    if "element" in extra:
        el = np.asarray(extra.pop("element")).astype(str)
        if len(el) == n:
            cols["element"] = el
    ordered = {k: cols[k] for k in ("id", "element", "x", "y", "z")}
    for k, v in extra.items():
        v = np.asarray(_be.to_host(v))
        if k in cols or k.lower() in ("x", "y", "z", "id") or v.shape != (n,):
            continue
        ordered[k] = v
        unit, text = DETECTION_SCHEMA.get(k, ("", "column kept from the input model / detection"))
        schema[k] = {"unit": unit, "description": text}
    for k in cols:
        ordered.setdefault(k, cols[k])
    files = {"atoms_csv": write_table(out / "atoms.csv", ordered)}
    files["atoms_schema"] = write_json(out / "atoms_schema.json",
                                        {k: schema[k] for k in ordered if k in schema})
    u6 = np.stack([cols[k] for k in ("u11_A2", "u22_A2", "u33_A2", "u12_A2", "u13_A2", "u23_A2")], axis=1)
    model = Model(stats.xyz_A, list(ordered["element"]), EIGHT_PI2 * cols["u_iso_A2"], u6)
    write_structure(out, model)
    files["atoms_pdb"], files["atoms_cif"] = out / "atoms.pdb", out / "atoms.cif"
    for name in ATTRIBUTE_STATISTICS:
        files[f"defattr_{name}"] = _write_defattr(out / f"chimerax_{name}.defattr", name,
                                                  np.asarray(cols[name], float), ordered["element"])
    for name in DETECTION_SCHEMA:                 # the detection's per-atom figures, when given
        if name != "n_voxels" and name in ordered:
            files[f"defattr_{name}"] = _write_defattr(out / f"chimerax_{name}.defattr", name,
                                                      np.asarray(ordered[name], float), ordered["element"])
    part = dict(stats.particle)
    files["particle_json"] = write_json(out / "particle.json", {
        "particle": part, "table1_columns": list(TABLE1_COLUMNS), "lattice": stats.lattice.as_dict(),
        "lattice_domains": stats.domains.as_list() if stats.domains is not None else None,
        "penetration": stats.penetration, "times_s": stats.times_s, "backend": stats.backend})
    flat = {k: [v] for k, v in part.items() if not isinstance(v, (list, tuple))}
    row = {k: flat[k] for k in TABLE1_COLUMNS}
    row.update({k: v for k, v in flat.items() if k not in row})
    files["particle_csv"] = write_table(out / "particle.csv", row)
    files["cn_stats"] = write_table(out / "cn_stats.csv", stats.cn_bins)
    keys = ("statistic", "delta_A", "delta_err_A", "m", "m_err", "c", "c_err", "n_points", "rmse", "ok", "message")
    pen_cols = {k: [stats.penetration[s][k] for s in stats.penetration] for k in keys}
    files["penetration"] = write_table(out / "penetration.csv", pen_cols)
    if figures:
        from . import figures as _fig
        files.update(_fig.save_all(out, dmap, stats))
    return files
