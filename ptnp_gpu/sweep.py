"""The threshold sweep: which binarisation threshold of the denoised map C explains it best.

Each candidate threshold T gives a model (the centres of the components of
``C > T``); its score is the Pearson correlation between the map simulated
from the model and C over the particle's box, computed exactly without
rendering (:class:`_Scorer`). Many thresholds are evaluated at once: on the
host one union-find pass (:mod:`ptnp_gpu.threshold_components`), on a GPU one
labelling of the thresholded volumes stacked along z (:func:`_stacked_centres`).
"""
from __future__ import annotations

import numpy as np

from . import backend as _be
from .components import label26_above, label_moments, map_mean_sd
from .denoise import AtomKernel
from .gpu_kernels import occupancy_above, pair_table_sums
from .neighbors import segment_sum
from .solvent import _STEP
from .threshold_components import threshold_components

__all__ = ["sweep_scores"]


# GPU sweep: stack thresholds until the stacked volume holds this many voxels (8 bytes each: the
# labelling's forest and labels, int32; no mask, the weights shared), i.e. ~1.1 GB at most; a 256³
# map's crop takes all 16 coarse thresholds.
_GPU_SWEEP_VOXELS = 2 ** 27


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
    xp = _be.namespace(mask).xp
    # the three 1-D occupancy profiles, brought to the host in one transfer
    profs = xp.concatenate([xp.any(mask, axis=tuple(a for a in range(3) if a != ax)) for ax in range(3)])
    return _box_of_profiles(_be.to_host(profs), mask.shape, margin_vox)


def _crop_box_above(volume, threshold, margin_vox):
    """Bounding box (slices) of ``volume > threshold`` grown by ``margin_vox`` voxels (one pass
    on a GPU, no mask: :func:`ptnp_gpu.gpu_kernels.occupancy_above`; one host read)."""
    return _box_of_profiles(_be.to_host(occupancy_above(volume, threshold)), volume.shape, margin_vox)


def _box_of_profiles(profs, shape, margin_vox):
    """The slices of the occupied range of each host profile (z, y, x concatenated), grown by
    ``margin_vox`` and clipped to ``shape``; None where nothing is occupied."""
    sl = []
    for prof in np.split(np.asarray(profs), np.cumsum(shape)[:2]):
        nzi = np.flatnonzero(prof)
        if len(nzi) == 0:
            return None
        lo = max(0, int(nzi[0]) - margin_vox)
        hi = min(len(prof), int(nzi[-1]) + margin_vox + 1)
        sl.append(slice(lo, hi))
    return tuple(sl)


def _dense_region(crop, C, threshold, voxel_size_A, margin_A, window_A: float = 6.0,
                  min_fraction: float = 0.015, step: int = _STEP):
    """Shrink ``crop`` to where ``C > threshold`` is dense: the particle, not scattered noise.

    Solvent noise exceeds the Otsu threshold here and there, which stretches
    the box of ``C > threshold`` to the whole map (measured: the sweep of a 160³
    map ran on all its voxels for a 100³ particle). Atoms fill several % of the
    particle's volume above the threshold, noise a fraction of a %: the box
    keeps the voxels where more than ``min_fraction`` of a ``window_A`` cube
    (on the ``step``-subsampled grid) is above the threshold, plus ``margin_A``
    and the window's half-width.
    """
    be = _be.namespace(C)
    xp, ndi = be.xp, be.ndi
    vox = step * float(np.min(voxel_size_A))
    above = (C[::step, ::step, ::step] > threshold).astype(xp.float32)
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
        mean, sd = map_mean_sd(C_box)                  # Σ C and Σ C² over the box, one sync
        self.sc, self.scc = self.n * mean, self.n * (sd * sd + mean * mean)
        self.a0 = float(kernel.autocorr(np.zeros(1))[0])
        self.ksum = kernel.grid_sum()
        self.reach = kernel.reach_A(1e-5)
        # K⋆K tabulated against squared separation: one interpolation per call
        # instead of 25 Gaussian terms (relative error ~1e-5); built on the host (one
        # upload, not ~125 small launches) so every backend interpolates the same table
        d2_grid = np.linspace(0.0, self.reach ** 2, 8192)
        self.d2_grid = self.xp.asarray(d2_grid)
        self.a_table = self.xp.asarray(kernel.autocorr(d2_grid))

    def sums(self, centre_vox_xyz, group, n_groups: int):
        """Per-model sums of ``n_groups`` models at once (one model per threshold), on the
        backend: a (3, n_groups) float64 array of the atom counts, Σ G at the atoms and the
        atoms' pair sum Σ K⋆K. No host round trip; :meth:`correlations` turns them into
        the scores.

        ``centre_vox_xyz`` (N, 3) holds the atoms of every model; ``group`` (N,) says which
        model each atom belongs to. Pairs never cross models: each model is shifted along z
        by more than the pair reach.
        """
        xp = self.xp
        group = group.astype(xp.int64)
        coords = centre_vox_xyz[:, ::-1].T             # (3, N) z, y, x
        g = self.ndi.map_coordinates(self.G, coords, order=3, mode="nearest", prefilter=False)
        # per-model sums: bincounts on the host, one sync-free kernel launch on a GPU
        n_at, ssc = segment_sum(group, [xp.ones(g.shape[0]), g.astype(xp.float64)], n_groups)
        # models side by side along z, further apart than the reach: no cross pairs
        span = float(self.extent_A) + 2.0 * self.reach
        xyz = centre_vox_xyz * xp.asarray(self.vs)
        xyz[:, 2] += group * span                         # a fresh array: shifted in place
        # Σ K⋆K over each atom's pairs in one pass over the cell list (NumPy's interpolation of
        # the table; no pair list, no pair count read back), then per model
        cross = segment_sum(group, [pair_table_sums(xyz, self.reach, self.d2_grid, self.a_table)], n_groups)[0]
        return xp.stack([n_at, ssc, cross])

    def correlations(self, sums):
        """Host (r, n_atoms) from :meth:`sums` read back ((3, M) host array): the exact Pearson
        correlation of each model's simulated map with C (−1 for an empty model)."""
        n_at, ssc, cross = (np.asarray(v, dtype=np.float64) for v in sums)
        sss = n_at * self.a0 + 2.0 * cross
        ss = n_at * self.ksum
        cov = ssc - ss * self.sc / self.n
        var_s = sss - ss * ss / self.n
        var_c = self.scc - self.sc * self.sc / self.n
        with np.errstate(invalid="ignore", divide="ignore"):
            r = cov / np.sqrt(np.maximum(var_s * var_c, 1e-300))
        return np.where(n_at > 0, r, -1.0), n_at

    def scores(self, centre_vox_xyz, group, n_groups: int):
        """Scores of ``n_groups`` models at once: host arrays (r, n_atoms) (one host read)."""
        return self.correlations(_be.to_host(self.sums(centre_vox_xyz, group, n_groups)))

    def __call__(self, centre_vox_xyz):
        """Score of one model (host float; one sync)."""
        xp = self.xp
        r, _ = self.scores(centre_vox_xyz, xp.zeros(centre_vox_xyz.shape[0], dtype=xp.int64), 1)
        return float(r[0])


def _centres(C_box, weights_box, threshold, min_voxels):
    """Components of ``C > T`` → (labels, n, centres voxel xyz, counts): one threshold, one
    labelling; the reference the tests hold both sweeps to."""
    xp = _be.namespace(C_box).xp
    lab, n = label26_above(C_box, [threshold], gap_planes=0)
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
    # thresholds rounded to float32 (the sweep's grid), compared in the map's type
    lab, n = label26_above(C_box, np.asarray(thresholds, dtype=np.float32), gap_planes=1)
    if n == 0:
        return xp.zeros((0, 3)), xp.zeros(0, dtype=xp.int64)
    # one copy of the weights and a gap plane serves every threshold (the kernel reads plane
    # z % (nz + 1)): no stacked copy of them, ``b`` times the box
    w = xp.zeros((nz + 1,) + C_box.shape[1:], dtype=weights_box.dtype)
    w[:nz] = weights_box
    mom = label_moments(lab, n, w)
    del w, lab
    keep = (mom["count"][1:] >= min_voxels) & (mom["wsum"][1:] > 0)
    cen = mom["centre_vox"][1:][keep]
    k = xp.floor(cen[:, 2] / (nz + 1)).astype(xp.int64)   # components never straddle the gaps
    cen[:, 2] -= k * (nz + 1)                             # cen is a fresh array (mask-indexed)
    return cen, k


def sweep_scores(C_box, weights_box, scorer, thresholds, min_voxels, batch: int = 1):
    """Correlations and atom counts of the models built at ``thresholds`` (host arrays).

    On a GPU, ``batch`` thresholds are binarised, labelled and summed together
    (:func:`_stacked_centres`, :meth:`_Scorer.sums`); the sums of every batch come to the
    host in one transfer, where :meth:`_Scorer.correlations` makes the scores.
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
    out = []
    batch = max(1, int(batch))
    for s in range(0, len(thresholds), batch):
        ts = thresholds[s:s + batch]
        cen, k = _stacked_centres(C_box, weights_box, ts, min_voxels)
        out.append(scorer.sums(cen, k, len(ts)))
    r, n_at = scorer.correlations(_be.to_host(xp.concatenate(out, axis=1)))   # one transfer
    return np.asarray(r, float), np.asarray(n_at, float)
