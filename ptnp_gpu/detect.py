"""Unsupervised atom detection: denoise, threshold sweep, components, split, validate.

Follows the reference method (Wietfeldt et al. 2024, Methods) with the fixes
listed in the method notes. The stages:

1. Denoise: correlation with one simulated atom (:mod:`ptnp_gpu.denoise`).
2. Threshold: Otsu start ``T0``; ``n_thresholds`` uniform thresholds from
   ``T0`` to the maximum, every one evaluated; then a finer sweep (step/6 over
   ±1 step) around the best. Each evaluation binarises ``C > T``, labels
   26-connected components, drops those under ``min_voxels``, takes raw-map
   centres of mass and scores the Pearson correlation between the map
   simulated from those centres and ``C`` over the box. The score is computed
   exactly without rendering the map: ``Σ S·C = Σ_a (K⋆C)(r_a)``,
   ``Σ S = N·ΣK`` and ``Σ S² = Σ_ab (K⋆K)(r_a − r_b)`` (pairs within reach).
   All thresholds of a pass are evaluated together: on the host one union-find
   pass over the voxels in decreasing C gives every threshold's components
   (:mod:`ptnp_gpu.threshold_components`); on a GPU the thresholded volumes are
   stacked along z and labelled at once. The box is the region where ``C > T0``
   is dense (the particle), not the whole map.
3. Split merged atoms: seeds are local maxima of ``C`` inside a component,
   thinned so that no two seeds of one component are closer than 2·r_th
   (higher seed wins); components with several seeds are divided among them
   (each voxel to its nearest seed). Components whose peak in ``C`` is not
   significant (median + ``rescue_sigma`` noise SDs of ``C`` in the solvent) go.
   Rescue: significant local maxima of ``C`` outside every component, away
   from the atoms and bonded to at least 2 of them become atoms; a second
   round seats further maxima on at least 3 atoms (weak surface atoms, partly
   occupied sites).
4. Centres: grey-value centres of mass of the raw map (minus the solvent
   level) over the final components; sub-voxel mean-shift refinement (custom
   kernel, :func:`ptnp_gpu.gpu_kernels.mean_shift_centres`).
5. Reject outliers: validation correlation below ``min_correlation`` (and, on
   request, below mean − k·SD as in the paper, or a robust median/MAD form),
   then CN < 3. The paper's statistical rule removes ~2% of true atoms by
   construction and whole populations in mixed-element particles (Pd in Pd@Pt:
   recall 0.93), so the default rejects only densities that do not look like
   an atom.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import backend as _be
from .components import label26, label_moments, otsu_threshold
from .denoise import AtomKernel, denoise_map, noise_power_spectrum
from .elements import Element, get_element
from .errors import InputError
from .gpu_kernels import mean_shift_centres, window_pearson
from .mapio import DensityMap
from .neighbors import count_neighbors, pairs_within
from .simulate import render_atoms
from .threshold_components import threshold_components

__all__ = ["DetectOptions", "Detection", "detect_atoms", "sweep_score", "sweep_scores"]


# Blur of the simulated atom used for denoising and the sweep: the reference's (8·voxel)² at
# its 0.358 Å sampling. Not tied to the voxel size: (8·voxel)² grows to 23 Å² at 0.6 Å/voxel,
# which merges neighbours (measured recall 0.85 vs 1.00 with 8.2 Å² on such maps).
DEFAULT_KERNEL_BLUR_A2 = 8.2
_COARSE_FROM_A = 0.5          # grids coarser than this get a narrower kernel


def default_kernel_blur_A2(voxel_size_A) -> float:
    """Blur (Å²) of the simulated atom used to denoise: 8.2 Å² up to 0.5 Å/voxel, then
    narrower as (0.5 / voxel)², down to half at 0.71 Å and beyond. Coarse grids come with
    wide, overlapping atoms; a narrower kernel keeps neighbours apart (measured on random
    particles at 0.6–0.75 Å not used to choose it: mean recall 0.761 → 0.771, precision
    0.963 → 0.967; on those it was chosen with, 0.725 → 0.758)."""
    v = float(np.max(voxel_size_A))
    return DEFAULT_KERNEL_BLUR_A2 * float(np.clip((_COARSE_FROM_A / v) ** 2, 0.5, 1.0))

_STEP = 2   # subsampling of the solvent estimates (every 8th voxel is plenty)
_MIN_SOLVENT = 500   # solvent voxels (subsampled grid) for a noise level measured in the solvent


@dataclass
class DetectOptions:
    """Knobs of :func:`detect_atoms` (defaults follow the paper)."""
    n_thresholds: int = 16            # uniform coarse thresholds (≥ 15)
    refine_steps: int = 6             # fine step = coarse step / refine_steps, over ±1 step
    min_voxels: int = 3               # at 0.358 Å/voxel; the same volume on coarser grids (_min_voxels)
    split: bool = True
    reject_correlation: bool = True
    correlation_rule: str = "floor"   # "floor": only min_correlation; "robust": median − k·1.4826·MAD;
                                      # "paper": mean − k·SD (removes weak true atoms, see README)
    correlation_sd: float = 3.0       # k (the paper uses 2 with mean and SD)
    min_correlation: float = 0.15     # also reject atoms whose density does not look like an atom
    reject_low_cn: bool = True
    min_cn: int = 3
    refine_centres: bool = True       # sub-voxel refinement (measured, see tests)
    rescue: bool = True               # add weak atoms the global threshold missed
    rescue_sigma: float = 3.5         # significance of an atom's peak in C (noise SDs)
    otsu_floor: float = 0.3           # the significance threshold is at least this × the Otsu threshold:
                                      # at very low noise the filter's ripples next to atoms pass a pure noise
                                      # test (Pt, noise 0.02: precision 0.94 with 0, 1.00 with 0.3); 1.0 (before
                                      # 2026-11-26) dropped weak surface atoms (recall 0.90 / 0.89 / 0.80)
    residual_rescue: bool = True      # repeat the rescue on the map minus the atoms found so far
    residual_sigma: float = 4.0       # its significance (noise SDs of the residual's denoised map)
    rescue_rounds: int = 2            # rescue passes: each may bond to atoms the previous one added
    resolution_A: float = 1.0
    highpass_A: float = 8.0           # remove background coarser than this (0: paper's DC-only)
    b_extra_A2: float | None = None   # blur of the simulated atom (Å²); default default_kernel_blur_A2(voxel)
    crop_margin_A: float = 4.0
    solvent_margin_A: float = 6.0     # solvent for the noise level: this far from the particle
    whiten: str = "auto"              # prewhiten by the solvent's noise spectrum: auto | always | never
    whiten_ratio: float = 2.0         # "auto": whiten when the noise power varies more than this
    min_sweep_correlation: float = 0.2  # below this no model explains the map: "no particle"
    sweep_batch: int = 0              # thresholds labelled and scored together (0: auto, see _auto_sweep_batch)

    @classmethod
    def from_kwargs(cls, **kw):
        opts = cls()
        for k, v in kw.items():
            if v is None:
                continue
            if not hasattr(opts, k):
                raise InputError(f"unknown detection option {k!r}")
            setattr(opts, k, type(getattr(opts, k))(v) if getattr(opts, k) is not None else float(v))
        if opts.whiten not in ("auto", "always", "never"):
            raise InputError(f"whiten must be 'auto', 'always' or 'never', got {opts.whiten!r}")
        if opts.correlation_rule not in ("floor", "robust", "paper"):
            raise InputError(f"correlation_rule must be 'floor', 'robust' or 'paper', got {opts.correlation_rule!r}")
        if opts.n_thresholds < 2:
            raise InputError("n_thresholds must be at least 2")
        return opts


@dataclass
class Detection:
    """Result of :func:`detect_atoms`. Arrays marked (host) are NumPy."""
    xyz_A: np.ndarray                  # (N, 3) host, Å in the map frame
    labels: object                     # [z, y, x] int32 backend array, id = atom index + 1
    n_voxels: np.ndarray               # (N,) host
    validation_corr: np.ndarray        # (N,) host
    peak_intensity: np.ndarray         # (N,) host, (peak raw − map mean) / map SD
    threshold: float
    curve: np.ndarray                  # (K, 2) host: threshold, correlation (all evaluated)
    correlation: float                 # best sweep correlation
    denoised: object
    simulated: object
    map: DensityMap
    element: Element
    params: dict = field(default_factory=dict)
    times: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    raw: object = None                 # the map as float32 on the backend (device-resident on CuPy)

    @property
    def backend_map(self) -> DensityMap:
        """The input map with its data on the detection's backend: statistics on a GPU
        reuse it instead of copying the host map to the device again."""
        if self.raw is None:
            return self.map
        return DensityMap(self.raw, self.map.voxel_size_A, self.map.origin_A)


# GPU sweep: stack thresholds until the stacked volume holds this many voxels (~9 bytes each:
# mask, labels, weights), i.e. ~1.2 GB at most; a 256³ map's crop takes all 16 coarse thresholds.
_GPU_SWEEP_VOXELS = 2 ** 27


_REFERENCE_VOXEL_A = 0.358   # the paper's sampling, at which min_voxels is specified


def _min_voxels(min_voxels: int, voxel_size_A) -> int:
    """Smallest component kept, in voxels: ``min_voxels`` at the paper's 0.358 Å sampling,
    the same volume on coarser grids (never more voxels on finer ones). At 0.75 Å an atom
    above the threshold is one or two voxels: 3 voxels dropped 20% of the core atoms
    of a gold particle (recall 0.80 → 1.00)."""
    scaled = min_voxels * _REFERENCE_VOXEL_A ** 3 / float(np.prod(voxel_size_A))
    return int(max(1, min(min_voxels, round(scaled))))


def _rejection_cn_cutoff_A(el: Element) -> float:
    """Neighbour radius of the CN < 3 rejection: the CN cutoff, but for bcc up to midway
    between the second (a) and third (a√2) shells. bcc's second shell is only 15% beyond
    the first, and the vertices of faceted bcc particles have two first-shell neighbours:
    with the first shell alone the rule removed 24 true atoms of an 89-atom W particle."""
    if el.lattice == "bcc":
        return 0.5 * (1.0 + np.sqrt(2.0)) * el.lattice_param_A
    return el.cn_cutoff_A


def _auto_sweep_batch(be, box_voxels: int, n_thresholds: int) -> int:
    """Thresholds per sweep batch: all that fit the budget on a GPU (fewer launches and
    syncs), one at a time on the CPU (no gain there, and it keeps the peak memory low)."""
    if not be.is_gpu:
        return 1
    budget = _GPU_SWEEP_VOXELS
    try:   # smaller cards: at most a quarter of the free memory (~14 bytes per stacked voxel)
        pool = be.xp.get_default_memory_pool()
        free = be.xp.cuda.Device().mem_info[0] + pool.free_bytes()
        budget = min(budget, free // (4 * 14))
    except Exception:  # noqa: BLE001 - no memory query: keep the fixed budget
        pass
    return int(max(1, min(n_thresholds, budget // max(int(box_voxels), 1))))


def _crop_box(mask, margin_vox):
    """Bounding box (slices) of ``mask`` grown by ``margin_vox`` voxels."""
    be = _be.namespace(mask)
    xp = be.xp
    sl = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        prof = _be.to_host(xp.any(mask, axis=other))  # small 1-D arrays
        nzi = np.flatnonzero(prof)
        if len(nzi) == 0:
            return None
        lo = max(0, int(nzi[0]) - margin_vox)
        hi = min(mask.shape[ax], int(nzi[-1]) + margin_vox + 1)
        sl.append(slice(lo, hi))
    return tuple(sl)


def _dense_region(crop, C, t_otsu, voxel_size_A, margin_A, window_A: float = 6.0,
                  min_fraction: float = 0.015, step: int = _STEP):
    """Shrink ``crop`` to where ``C > t_otsu`` is dense: the particle, not scattered noise.

    Solvent noise exceeds the Otsu threshold here and there, which stretches
    the box of ``C > t_otsu`` to the whole map (measured: the sweep of a 160³
    map ran on all its voxels for a 100³ particle). Atoms fill several % of the
    particle's volume above the threshold, noise a fraction of a %: the box
    keeps the voxels where more than ``min_fraction`` of a ``window_A`` cube
    (on the ``step``-subsampled grid) is above the threshold, plus ``margin_A``
    and the window's half-width.
    """
    be = _be.namespace(C)
    xp, ndi = be.xp, be.ndi
    vox = step * float(np.min(voxel_size_A))
    above = (C[::step, ::step, ::step] > t_otsu).astype(xp.float32)
    dense = ndi.uniform_filter(above, max(3, int(round(window_A / vox))), mode="constant") > min_fraction
    box = _crop_box(dense, int(np.ceil((margin_A + 0.5 * window_A) / vox)) + 1)
    if box is None:
        return crop
    out = []
    for ax, (a, b) in enumerate(zip(crop, box)):
        lo, hi = max(a.start, b.start * step), min(a.stop, b.stop * step)
        if hi - lo < 3:
            return crop
        out.append(slice(lo, hi))
    return tuple(out)


class _Scorer:
    """Exact Pearson(simulated map, C) over the box from atom centres alone."""

    def __init__(self, C_box, G_box, kernel: AtomKernel, voxel_size_A):
        be = _be.namespace(C_box)
        self.xp, self.ndi = be.xp, be.ndi
        # cubic B-spline coefficients: exact enough at the peaks (trilinear is ~4% low)
        self.G = self.ndi.spline_filter(G_box, order=3, output=self.xp.float32, mode="nearest")
        self.kernel = kernel
        self.vs = np.broadcast_to(np.asarray(voxel_size_A, float), (3,))
        self.n = float(C_box.size)
        self.extent_A = float(np.max(np.asarray(C_box.shape) * self.vs[::-1]))
        sums = []
        for z in range(0, C_box.shape[0], 32):         # slabs: no full-size float64 copies
            blk = C_box[z:z + 32]
            sums.append(self.xp.stack([blk.sum(dtype=self.xp.float64),
                                       (blk * blk).sum(dtype=self.xp.float64)]))
        self.sc, self.scc = (float(v) for v in _be.to_host(self.xp.stack(sums).sum(0)))  # one sync
        self.a0 = float(kernel.autocorr(np.zeros(1))[0])
        self.ksum = kernel.grid_sum()
        self.reach = kernel.reach_A(1e-5)
        # K⋆K tabulated against squared separation: one interpolation per call
        # instead of 25 Gaussian terms (relative error ~1e-5)
        self.d2_grid = self.xp.linspace(0.0, self.reach ** 2, 8192)
        self.a_table = kernel.autocorr(self.d2_grid, self.xp)

    def scores(self, centre_vox_xyz, group, n_groups: int):
        """Scores of ``n_groups`` models at once (one model per threshold), on the backend.

        ``centre_vox_xyz`` (N, 3) holds the atoms of every model; ``group`` (N,)
        says which model each atom belongs to. Pairs never cross models: each
        model is shifted along z by more than the pair reach. Returns two
        backend arrays (n_groups,): the correlations (−1 for an empty model)
        and the atom counts. No host round trip.
        """
        xp = self.xp
        group = group.astype(xp.int64)
        n_at = xp.bincount(group, minlength=n_groups)[:n_groups].astype(xp.float64)
        coords = centre_vox_xyz[:, ::-1].T             # (3, N) z, y, x
        g = self.ndi.map_coordinates(self.G, coords, order=3, mode="nearest", prefilter=False)
        ssc = xp.bincount(group, weights=g.astype(xp.float64), minlength=n_groups)[:n_groups]
        xyz = centre_vox_xyz * xp.asarray(self.vs)
        if n_groups > 1:
            # models side by side along z, further apart than the reach: no cross pairs
            span = float(self.extent_A) + 2.0 * self.reach
            xyz = xyz + xp.stack([xp.zeros_like(group), xp.zeros_like(group), group], 1) * span
        i, _, d2 = pairs_within(xyz, self.reach)
        cross = xp.bincount(group[i], weights=xp.interp(d2, self.d2_grid, self.a_table),
                            minlength=n_groups)[:n_groups]
        sss = n_at * self.a0 + 2.0 * cross
        ss = n_at * self.ksum
        cov = ssc - ss * self.sc / self.n
        var_s = sss - ss * ss / self.n
        var_c = self.scc - self.sc * self.sc / self.n
        r = cov / xp.sqrt(xp.maximum(var_s * var_c, 1e-300))
        return xp.where(n_at > 0, r, -1.0), n_at

    def __call__(self, centre_vox_xyz):
        """Score of one model (host float; one sync)."""
        xp = self.xp
        r, _ = self.scores(centre_vox_xyz, xp.zeros(centre_vox_xyz.shape[0], dtype=xp.int64), 1)
        return float(r[0])


def _centres(C_box, weights_box, threshold, min_voxels):
    """Components of ``C > T`` → (labels, kept ids, centres voxel xyz, counts)."""
    xp = _be.namespace(C_box).xp
    lab, n = label26(C_box > threshold)
    if n == 0:
        return lab, n, xp.zeros((0, 3)), xp.zeros(0, dtype=xp.int64)
    mom = label_moments(lab, n, weights_box)
    keep = (mom["count"][1:] >= min_voxels) & (mom["wsum"][1:] > 0)   # no weight: no centre
    return lab, n, mom["centre_vox"][1:][keep], mom["count"][1:][keep]


def _stacked_centres(C_box, weights_box, thresholds, min_voxels):
    """Centres of the components of ``C > T`` for several thresholds in one pass.

    The binary volumes are stacked along z with one empty plane between them,
    so one 26-connected labelling and one fused moments pass serve them all
    (no host round trip per threshold). Returns the kept centres (voxel xyz
    in the box) and the threshold index of each, on the backend.
    """
    xp = _be.namespace(C_box).xp
    nz = C_box.shape[0]
    b = len(thresholds)
    if b == 1:
        _, _, cen, _ = _centres(C_box, weights_box, float(thresholds[0]), min_voxels)
        return cen, xp.zeros(cen.shape[0], dtype=xp.int64)
    t = xp.asarray(np.asarray(thresholds, dtype=np.float32))[:, None, None, None]
    mask = xp.zeros((b, nz + 1) + C_box.shape[1:], dtype=bool)
    mask[:, :nz] = C_box[None] > t
    lab, n = label26(mask.reshape((b * (nz + 1),) + C_box.shape[1:]))
    del mask
    if n == 0:
        return xp.zeros((0, 3)), xp.zeros(0, dtype=xp.int64)
    w = xp.zeros((b, nz + 1) + C_box.shape[1:], dtype=weights_box.dtype)
    w[:, :nz] = weights_box[None]
    mom = label_moments(lab, n, w.reshape(lab.shape))
    del w, lab
    keep = (mom["count"][1:] >= min_voxels) & (mom["wsum"][1:] > 0)
    cen = mom["centre_vox"][1:][keep]
    k = xp.floor(cen[:, 2] / (nz + 1)).astype(xp.int64)   # components never straddle the gaps
    cen = cen - xp.stack([xp.zeros_like(k), xp.zeros_like(k), k * (nz + 1)], 1)
    return cen, k


def sweep_scores(C_box, weights_box, scorer, thresholds, min_voxels, batch: int = 1):
    """Correlations and atom counts of the models built at ``thresholds`` (host arrays).

    On a GPU, ``batch`` thresholds are binarised, labelled and scored together
    (:func:`_stacked_centres`, :meth:`_Scorer.scores`); one host transfer per batch.
    On the host with ``batch == 1`` (its default) one union-find pass finds the
    components of all thresholds (:func:`ptnp_gpu.threshold_components.threshold_components`);
    a larger ``batch`` takes the stacked labelling there too (the tests compare the two).
    """
    be = _be.namespace(C_box)
    xp = be.xp
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if not be.is_gpu and batch == 1:
        # host: one union-find pass over the voxels gives the components of every threshold
        cen, k = threshold_components(C_box, weights_box, thresholds, min_voxels)
        r, n_at = scorer.scores(cen, k, len(thresholds))
        return np.asarray(r, float), np.asarray(n_at, float)
    out_r, out_n = [], []
    batch = max(1, int(batch))
    for s in range(0, len(thresholds), batch):
        ts = thresholds[s:s + batch]
        cen, k = _stacked_centres(C_box, weights_box, ts, min_voxels)
        r, n_at = scorer.scores(cen, k, len(ts))
        out_r.append(r)
        out_n.append(n_at)
    r = _be.to_host(xp.concatenate(out_r)) if out_r else np.zeros(0)
    n_at = _be.to_host(xp.concatenate(out_n)) if out_n else np.zeros(0)
    return np.asarray(r, float), np.asarray(n_at, float)


def sweep_score(C_box, weights_box, scorer, threshold, min_voxels):
    """Correlation of the model built at ``threshold`` (one sweep evaluation)."""
    r, n_at = sweep_scores(C_box, weights_box, scorer, [threshold], min_voxels)
    return float(r[0]), int(n_at[0])


def _split(lab, n, C_box, r_split_vox, vs):
    """Divide components holding several atoms among their seeds (see module doc)."""
    be = _be.namespace(lab)
    xp, ndi = be.xp, be.ndi
    mask = lab > 0
    peaks = mask & (C_box == ndi.maximum_filter(C_box, size=3, mode="constant", cval=-np.inf))
    pidx = xp.nonzero(peaks.ravel())[0]
    if pidx.size == 0:
        return lab, n, 0
    pxyz = _flat_to_xyz_A(pidx, lab.shape, vs)
    plab = lab.ravel()[pidx]
    pval = C_box.ravel()[pidx].astype(xp.float64)
    kept = _thin_peaks(pxyz, pval, r_split_vox, group=plab)
    seeds = xp.nonzero(kept)[0]
    slab = plab[seeds]
    per = xp.bincount(slab, minlength=n + 1)
    multi = per > 1
    n_multi = int(multi.sum())                       # sync
    if n_multi == 0:
        return lab, n, 0
    # voxels of multi-seed components go to their nearest seed of the same component
    ms = seeds[multi[slab]]
    ms_lab = plab[ms]
    order = xp.argsort(ms_lab)
    ms, ms_lab = ms[order], ms_lab[order]
    kmax = int(per[multi].max())                     # sync
    start = xp.searchsorted(ms_lab, xp.arange(n + 1))
    flat = lab.ravel()
    vidx = xp.nonzero(multi[flat])[0]
    vl = flat[vidx]
    vxyz = _flat_to_xyz_A(vidx, lab.shape, vs)
    best = xp.full(vidx.shape[0], np.inf)
    arg = xp.zeros(vidx.shape[0], dtype=xp.int64)
    for k in range(kmax):
        pos = start[vl] + k
        valid = (pos < ms_lab.shape[0]) & (ms_lab[xp.minimum(pos, ms_lab.shape[0] - 1)] == vl)
        sidx = ms[xp.minimum(pos, ms.shape[0] - 1)]
        d = vxyz - pxyz[sidx]
        d2 = xp.where(valid, (d * d).sum(1), np.inf)
        better = d2 < best
        best = xp.where(better, d2, best)
        arg = xp.where(better, k, arg)
    # new ids: the first seed keeps the old id, others get fresh ids
    # fresh ids numbered per (component, seed rank) from an offset table
    offs = xp.zeros(n + 1, dtype=xp.int64)
    offs[1:] = xp.cumsum(xp.where(multi, per - 1, 0))[:-1]
    newid = xp.where(arg > 0, n + offs[vl] + arg, vl)
    out = flat.copy()
    out[vidx] = newid.astype(out.dtype)
    n_new = n + int(xp.where(multi, per - 1, 0).sum())  # sync
    return out.reshape(lab.shape), n_new, n_multi


def _solvent_mask(raw, voxel_size_A, margin_A, step: int = _STEP):
    """Solvent voxels on a ``step``-subsampled grid, and the voxels that carry noise at all.

    The particle is where the raw map, smoothed over 2.5 Å (which averages the
    noise away whatever its colour), is above its Otsu threshold; the solvent is
    farther than ``margin_A`` from it. Constant regions (masked maps) are never solvent.

    Returns
    -------
    solvent, live : bool arrays on the subsampled grid
    """
    be = _be.namespace(raw)
    xp, ndi = be.xp, be.ndi
    vox = step * float(np.min(voxel_size_A))
    sub = raw[::step, ::step, ::step].astype(xp.float32)
    local_var = ndi.uniform_filter(sub * sub, 3) - ndi.uniform_filter(sub, 3) ** 2
    live = local_var > 1e-6 * float(sub.var())
    sm = ndi.gaussian_filter(sub, 2.5 / vox)
    part = (sm > otsu_threshold(sm[live])).astype(xp.float32)
    solvent = (ndi.gaussian_filter(part, 0.5 * margin_A / vox, mode="constant") < 1e-3) & live
    return solvent, live


def _noise_level(C, solvent, live, step: int = _STEP):
    """Median and robust SD of the denoised map in the solvent (subsampled masks).

    Without enough solvent, the SD comes from the lower half of the map's live
    voxels, which the particle (positive density) hardly touches.
    """
    xp = _be.namespace(C).xp
    sub = C[::step, ::step, ::step]
    if int(solvent.sum()) >= _MIN_SOLVENT:                 # sync
        sample = sub[solvent]
        med = float(xp.median(sample))
        return med, 1.4826 * float(xp.median(xp.abs(sample - med)))
    flat = sub[live] if int(live.sum()) >= 500 else sub.ravel()
    med = float(xp.median(flat))
    low = flat[flat <= med]
    return med, 1.4826 * float(xp.median(med - low))


def _noise_spectrum(raw, solvent, voxel_size_A, resolution_A, step: int = _STEP):
    """Noise power spectrum of the solvent and how coloured it is within the atoms' band.

    Returns ``(psd, colour)``; colour = max/min of the power between 4 Å and the
    band limit (≈ 1 for white noise). ``psd`` is None when there is too little solvent.
    """
    be = _be.namespace(raw)
    xp, ndi = be.xp, be.ndi
    if int(solvent.sum()) < _MIN_SOLVENT:                  # sync
        return None, 1.0
    soft = ndi.gaussian_filter(solvent.astype(xp.float32), 1.0)
    for ax in range(3):
        soft = xp.repeat(soft, step, axis=ax)
    soft = soft[: raw.shape[0], : raw.shape[1], : raw.shape[2]]
    s_c, power = noise_power_spectrum(raw, soft, voxel_size_A)
    sel = (s_c >= 0.25) & (s_c <= 1.0 / resolution_A)
    if sel.sum() < 3 or not np.all(power[sel] > 0):
        return None, 1.0
    return (s_c, power), float(power[sel].max() / power[sel].min())


def _flat_to_zyx(flat, shape):
    """(N, 3) integer z, y, x indices of flat (C-order) indices into ``shape``."""
    xp = _be.namespace(flat).xp
    z, rem = xp.divmod(flat, shape[1] * shape[2])
    y, x = xp.divmod(rem, shape[2])
    return xp.stack([z, y, x], 1)


def _flat_to_xyz_A(flat, shape, voxel_size_A):
    """(N, 3) positions in Å (x, y, z, relative to voxel 0) of flat indices into ``shape``."""
    xp = _be.namespace(flat).xp
    return _flat_to_zyx(flat, shape)[:, ::-1].astype(xp.float64) * xp.asarray(voxel_size_A)


def _thin_peaks(pxyz_A, pval, min_sep_A, group=None):
    """Keep peaks with no higher kept peak (of the same group) within ``min_sep_A``."""
    xp = _be.namespace(pxyz_A).xp
    i, j, _ = pairs_within(pxyz_A, min_sep_A)
    if group is not None:
        same = group[i] == group[j]
        i, j = i[same], j[same]
    i_lower = (pval[i] < pval[j]) | ((pval[i] == pval[j]) & (i > j))   # ties: lower index wins
    lo = xp.where(i_lower, i, j)
    hi = xp.where(i_lower, j, i)
    kept = xp.ones(pxyz_A.shape[0], dtype=bool)
    for _ in range(100):   # converges in a few rounds; each round is vectorised
        sup = xp.zeros_like(kept)
        sup[lo[kept[hi]]] = True
        if bool((~sup == kept).all()):  # sync: one flag per round
            break
        kept = ~sup
    return kept


def _residual_map(lab, n, raw_box, weights_box, base, el, b_extra_A2, vs, box_origin_A):
    """The box of the raw map minus the solvent level and the atoms found so far (simulated
    with amplitudes from their raw heights): weak atoms beside bright ones become peaks of
    their own instead of shoulders on a neighbour's flank."""
    from .simulate import atom_peak_value
    be = _be.namespace(raw_box)
    xp = be.xp
    mom = label_moments(lab, n, weights_box)
    ok = (mom["count"][1:] > 0) & (mom["wsum"][1:] > 0)
    cen = mom["centre_vox"][1:][ok]                                    # voxel x, y, z in the box
    idx = xp.clip(xp.rint(cen).astype(xp.int64), 0, xp.asarray(raw_box.shape[::-1]) - 1)
    height = raw_box[idx[:, 2], idx[:, 1], idx[:, 0]].astype(xp.float64) - base
    amp = xp.clip(height / atom_peak_value(el, b_extra_A2), 0.0, None)
    xyz = xp.asarray(box_origin_A) + cen * xp.asarray(vs)
    sim = render_atoms(xyz, raw_box.shape, vs, box_origin_A, el, b_extra_A2=b_extra_A2, weights=amp, backend=be)
    sim += xp.float32(base)
    return raw_box - sim


def _rescue(lab, n, C_box, t_low, vs, min_sep_A, r_claim_A, bond_A, min_bonds=2, centre_map=None):
    """Weak atoms missed by the global threshold: significant peaks of ``C`` away from atoms.

    A local maximum of ``C`` above ``t_low`` that lies outside every labelled
    component, at least ``min_sep_A`` from every existing atom centre and within
    ``bond_A`` of at least ``min_bonds`` of them (bonded to the particle: noise
    far from it is never rescued) becomes a new atom; it claims the unlabelled
    voxels above ``t_low`` within ``r_claim_A``.
    """
    be = _be.namespace(lab)
    xp, ndi = be.xp, be.ndi
    peaks = (lab == 0) & (C_box > t_low) & (C_box == ndi.maximum_filter(C_box, size=3, mode="nearest"))
    interior = xp.zeros(peaks.shape, dtype=bool)      # no rescue on the box faces (edge artefacts)
    interior[1:-1, 1:-1, 1:-1] = True
    peaks &= interior
    pidx = xp.nonzero(peaks.ravel())[0]
    if pidx.size == 0:
        return lab, n, 0
    _, ny, nx = lab.shape
    vsx = xp.asarray(vs)
    pxyz = _flat_to_xyz_A(pidx, lab.shape, vs)
    pval = C_box.ravel()[pidx].astype(xp.float64)
    kept = _thin_peaks(pxyz, pval, min_sep_A)
    pidx, pxyz = pidx[kept], pxyz[kept]
    # distance to existing atoms: voxels of labelled components near the peak
    mom = label_moments(lab, n, C_box if centre_map is None else centre_map)
    ex = mom["centre_vox"][1:][mom["count"][1:] > 0] * vsx
    allp = xp.concatenate([ex, pxyz])
    i, j, _ = pairs_within(allp, min_sep_A)
    ne = ex.shape[0]
    clash = xp.zeros(allp.shape[0], dtype=bool)
    cross = (i < ne) & (j >= ne)
    clash[j[cross]] = True
    # bonded to the particle: at least `min_bonds` existing atoms within bonding range
    i, j, _ = pairs_within(allp, bond_A)
    cross = (i < ne) & (j >= ne)
    bonds = xp.bincount(j[cross] - ne, minlength=pxyz.shape[0])
    new = xp.nonzero(~clash[ne:] & (bonds >= min_bonds))[0]
    n_new = int(new.shape[0])                      # sync
    if n_new == 0:
        return lab, n, 0
    pidx = pidx[new]
    r = int(np.ceil(r_claim_A / vs.min()))
    g = np.arange(-r, r + 1)
    oz, oy, ox = np.meshgrid(g, g, g, indexing="ij")
    off = np.stack([oz.ravel(), oy.ravel(), ox.ravel()], 1)
    off = off[((off * vs[::-1]) ** 2).sum(1) <= r_claim_A ** 2]
    off = off[np.argsort((off ** 2).sum(1))[::-1]]   # far voxels first, so centres win
    idx = _flat_to_zyx(pidx, lab.shape)[:, None, :] + xp.asarray(off)[None]
    shape = xp.asarray(lab.shape)
    ok = xp.all((idx >= 0) & (idx < shape), axis=2)
    idx = xp.clip(idx, 0, shape - 1)
    flat = ((idx[..., 0] * ny + idx[..., 1]) * nx + idx[..., 2])
    ids = (n + 1 + xp.arange(n_new))[:, None] * xp.ones(flat.shape[1], dtype=xp.int64)[None]
    ok &= (lab.ravel()[flat] == 0) & (C_box.ravel()[flat] > t_low)
    out = lab.ravel().copy()
    out[flat[ok]] = ids[ok].astype(out.dtype)
    return out.reshape(lab.shape), n + n_new, n_new


def detect_atoms(dmap: DensityMap, element="Pt", *, backend=None, progress=None, **opts) -> Detection:
    """Build an atomic model from a density map (see module docstring).

    Parameters
    ----------
    dmap : DensityMap
    element : str or Element
    backend : str or Backend, optional
        Where to compute; default the import-time choice.
    progress : callable(str), optional
        Called with a short message at the start of each stage.
    **opts
        Fields of :class:`DetectOptions`.

    Raises
    ------
    InputError
        Constant maps, or maps in which no particle is found.
    """
    o = opts if isinstance(opts, DetectOptions) else DetectOptions.from_kwargs(**opts)
    el = get_element(element) if isinstance(element, str) else element
    be = _be.default() if backend is None else (_be.get(backend) if isinstance(backend, str) else backend)
    xp, ndi = be.xp, be.ndi
    say = progress or (lambda msg: None)
    times = {}
    t0 = time.perf_counter()

    def lap(name):
        nonlocal t0
        _be.synchronize(be)
        t = time.perf_counter()
        times[name] = t - t0
        t0 = t

    vs = np.asarray(dmap.voxel_size_A, float)
    raw = xp.asarray(dmap.data, dtype=xp.float32)
    mean, sd = float(raw.mean()), float(raw.std())
    if not sd > 0:
        raise InputError("the map is constant: nothing to detect")
    b_extra = default_kernel_blur_A2(vs) if o.b_extra_A2 is None else float(o.b_extra_A2)
    kernel = AtomKernel.for_element(el, b_extra, vs)
    say("denoising (correlation with one simulated atom)")
    solvent, live = _solvent_mask(raw, vs, o.solvent_margin_A)
    psd, colour = (None, 1.0) if o.whiten == "never" else _noise_spectrum(raw, solvent, vs, o.resolution_A)
    whitened = psd is not None and (o.whiten == "always" or colour > o.whiten_ratio)
    lap("solvent_noise")
    C, G, c_scale = denoise_map(raw, vs, kernel, resolution_A=o.resolution_A, highpass_A=o.highpass_A,
                                noise_psd=psd if whitened else None, return_scale=True)
    lap("denoise")

    say("choosing the threshold")
    pos = C[C > 0]
    if pos.size < 27:
        raise InputError("no particle found in the map (no positive correlation with an atom)")
    t_otsu = otsu_threshold(pos)
    cmax = float(C.max())
    crop = _crop_box(C > t_otsu, int(np.ceil(o.crop_margin_A / vs.min())))
    if crop is None:
        raise InputError("no particle found in the map")
    crop = _dense_region(crop, C, t_otsu, vs, o.crop_margin_A)
    C_box, G_box, raw_box = C[crop], G[crop], raw[crop]
    base = float(xp.median(raw[::2, ::2, ::2]))          # solvent level (a subsample is enough)
    weights = xp.clip(raw_box - base, 0.0, None)
    scorer = _Scorer(C_box, G_box, kernel, vs)
    del G, G_box                                          # only the scorer's spline coefficients are needed
    lap("sweep_setup")
    coarse = np.linspace(t_otsu, cmax, o.n_thresholds + 1)[:-1]
    batch = o.sweep_batch or _auto_sweep_batch(be, C_box.size, len(coarse))
    min_vox = _min_voxels(o.min_voxels, vs)
    r, na = sweep_scores(C_box, weights, scorer, coarse, min_vox, batch)
    curve = list(zip(coarse, r, na))
    k = int(np.argmax(r))
    step = coarse[1] - coarse[0]
    fine = coarse[k] + step * np.arange(-o.refine_steps, o.refine_steps + 1) / o.refine_steps
    fine = fine[(fine > t_otsu - step) & (fine < cmax) & ~np.isin(fine, coarse)]
    if len(fine):
        r, na = sweep_scores(C_box, weights, scorer, fine, min_vox, batch)
        curve += list(zip(fine, r, na))
    del scorer                                            # frees the spline coefficients
    curve = np.array(sorted(curve))
    best = int(np.argmax(curve[:, 1]))
    threshold, best_corr = float(curve[best, 0]), float(curve[best, 1])
    if curve[best, 2] < 1:
        raise InputError("no particle found in the map (no atom at any threshold)")
    if best_corr < o.min_sweep_correlation:
        raise InputError(f"no particle found in the map (the best atomic model explains it with correlation "
                         f"{best_corr:.3f} < {o.min_sweep_correlation}; real particles give 0.4-0.9)")
    lap("threshold_sweep")

    say(f"labelling at threshold {threshold:.4f}")
    med, noise = _noise_level(C, solvent, live)
    t_sig = max(med + o.rescue_sigma * noise, o.otsu_floor * t_otsu)
    lab, n = label26(C_box > threshold)
    mom = label_moments(lab, n, weights, C_box)
    drop = (mom["count"] < min_vox) | (mom["peak_value"] < t_sig)
    drop[0] = False
    lab = xp.where(drop[lab], 0, lab).astype(xp.int32)
    counts = {"components": n, "small_or_insignificant_removed": int(drop.sum())}
    n_split = 0
    if o.split:
        # seeds closer than 2·r_th are one atom (paper), but never beyond 0.8 bond (Cu: 2r_th > bond)
        lab, n, n_split = _split(lab, n, C_box, min(2.0 * el.radius_A, 0.8 * el.nn_distance_A), vs)
    counts["split_components"] = n_split
    if o.rescue:
        n_res = 0
        for rnd in range(max(1, o.rescue_rounds)):
            # later rounds bond to rescued atoms only: ask for a seat on 3 atoms (a facet's hollow)
            lab, n, n_new = _rescue(lab, n, C_box, t_sig, vs, 0.7 * el.nn_distance_A, el.radius_A,
                                    1.25 * el.nn_distance_A, min_bonds=2 if rnd == 0 else 3)
            n_res += n_new
            if n_new == 0:
                break
        counts["rescued"] = n_res
    if o.rescue and o.residual_rescue and int(solvent.sum()) >= _MIN_SOLVENT:   # sync
        # the same search on the box of the map minus the atoms found so far, filtered with C's
        # own normalisation: the same linear filter, so C's solvent noise level holds for it
        res = _residual_map(lab, n, raw_box, weights, base, el, b_extra, vs,
                            np.asarray(dmap.origin_A) + np.array([crop[2].start, crop[1].start, crop[0].start]) * vs)
        Cr_box, _ = denoise_map(res, vs, kernel, resolution_A=o.resolution_A, highpass_A=o.highpass_A,
                                noise_psd=psd if whitened else None, want_second=False, output_scale=c_scale)
        del res
        t_r = max(med + o.residual_sigma * noise, o.otsu_floor * t_otsu)
        n_rr = 0
        for rnd in range(max(1, o.rescue_rounds)):
            lab, n, n_new = _rescue(lab, n, Cr_box, t_r, vs, 0.7 * el.nn_distance_A, el.radius_A,
                                    1.25 * el.nn_distance_A, min_bonds=2 if rnd == 0 else 3, centre_map=C_box)
            n_rr += n_new
            if n_new == 0:
                break
        counts["rescued_residual"] = n_rr
        del Cr_box
    lap("label_split")

    # compact ids 1..N
    mom = label_moments(lab, n, weights)
    present = (mom["count"] > 0) & (mom["wsum"] > 0)   # no positive density: no centre
    present[0] = False
    ids = xp.nonzero(present)[0]
    centre = mom["centre_vox"][ids]
    nvox = mom["count"][ids]
    remap = xp.zeros(n + 1, dtype=xp.int32)
    remap[ids] = xp.arange(1, ids.shape[0] + 1, dtype=xp.int32)
    lab = remap[lab]
    if o.refine_centres:
        # window from the bond length (Pt: 1.44 Å radius, σ 0.55 Å), so neighbours stay out
        # sub-voxel mean shift of the solvent-subtracted raw map (custom kernel; three rounds):
        # each centre moves to the centre of mass of max(raw − base, 0) × a Gaussian around it.
        # Against ground truth it lowers the position RMSD by ~10% (tests/test_detect.py).
        centre = mean_shift_centres(raw_box, centre, base, 0.52 * el.nn_distance_A / vs.min(),
                                    0.2 * el.nn_distance_A / vs.min())
    lap("centres")

    say("validating atoms")
    offset = xp.asarray([crop[2].start, crop[1].start, crop[0].start], dtype=xp.float64)
    centre_full = centre + offset
    xyz = xp.asarray(dmap.origin_A) + centre_full * xp.asarray(vs)
    # per-atom scale (mixed elements, partial occupancy): smoothed height at the centre
    height = ndi.map_coordinates(C, centre_full[:, ::-1].T, order=1, mode="nearest")
    scale = xp.clip(height / xp.maximum(xp.median(height), 1e-12), 0.2, 5.0)
    sim = render_atoms(xyz, raw.shape, vs, dmap.origin_A, el, b_extra_A2=b_extra, weights=scale, backend=be)
    vcorr = window_pearson(raw, sim, centre_full, 1.5 * el.radius_A / vs.min())
    vcorr = xp.nan_to_num(vcorr, nan=-1.0)
    keep = xp.ones(xyz.shape[0], dtype=bool)
    if o.reject_correlation and xyz.shape[0] > 2:
        thr = o.min_correlation
        if o.correlation_rule == "paper":
            thr = xp.maximum(vcorr.mean() - o.correlation_sd * vcorr.std(), thr)
        elif o.correlation_rule == "robust":
            med = xp.median(vcorr)
            thr = xp.maximum(med - o.correlation_sd * 1.4826 * xp.median(xp.abs(vcorr - med)), thr)
        keep &= vcorr >= thr
    counts["rejected_correlation"] = int((~keep).sum())
    if o.reject_low_cn:
        cn = count_neighbors(xyz[keep], _rejection_cn_cutoff_A(el))
        k2 = xp.ones_like(keep)
        k2[xp.nonzero(keep)[0][cn < o.min_cn]] = False
        counts["rejected_low_cn"] = int((~k2).sum())
        keep &= k2
    if not bool(keep.all()):
        kid = xp.nonzero(keep)[0]
        remap = xp.zeros(xyz.shape[0] + 1, dtype=xp.int32)
        remap[kid + 1] = xp.arange(1, kid.shape[0] + 1, dtype=xp.int32)
        lab = remap[lab]
        xyz, vcorr, nvox, centre_full, scale = xyz[kid], vcorr[kid], nvox[kid], centre_full[kid], scale[kid]
        del sim
        sim = render_atoms(xyz, raw.shape, vs, dmap.origin_A, el, b_extra_A2=b_extra, weights=scale, backend=be)
    if xyz.shape[0] == 0:
        raise InputError("no particle found in the map (every candidate atom was rejected)")
    labels = xp.zeros(raw.shape, dtype=xp.int32)
    labels[crop] = lab
    # peak intensity: maximum raw value in the atom's component
    pk = label_moments(labels, int(xyz.shape[0]), raw)["peak_value"][1:]
    peak = (pk.astype(xp.float64) - mean) / sd
    lap("validate")

    return Detection(
        xyz_A=_be.to_host(xyz), labels=labels, n_voxels=_be.to_host(nvox).astype(np.int64),
        validation_corr=_be.to_host(vcorr), peak_intensity=_be.to_host(peak),
        threshold=threshold, curve=curve[:, :2], correlation=best_corr, denoised=C,
        simulated=sim, map=dmap, element=el,
        params={**o.__dict__, "b_extra_A2": b_extra, "otsu_threshold": t_otsu,
                "noise_colour": colour, "whitened": bool(whitened),
                "element": el.symbol, "backend": be.name},
        times=times, counts={k: int(v) for k, v in counts.items()}, raw=raw,
    )
