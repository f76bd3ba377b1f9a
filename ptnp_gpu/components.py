"""Connected components, per-label reductions (26-connectivity) and whole-map moments, on any backend."""
from __future__ import annotations

import numpy as np

from . import backend as _be

__all__ = ["label26", "label26_above", "label_moments", "otsu_threshold", "map_mean_sd"]


def label26(mask):
    """Label 26-connected components of a boolean volume; returns (labels int32, n).

    Labels are ``scipy.ndimage.label``'s on every backend (CuPy: the union-find
    kernels of :func:`ptnp_gpu.gpu_kernels.label_mask`). One host read (n)."""
    from .gpu_kernels import label_mask
    lab, n = label_mask(mask)
    return lab, int(_be.to_host(n)[0])


def label26_above(volume, thresholds, gap_planes: int = 1):
    """Label 26-connected components of ``volume > t`` for each threshold, stacked along z
    with ``gap_planes`` empty planes after each (:func:`ptnp_gpu.gpu_kernels.label_above`:
    no mask in memory on a GPU). Returns (labels int32, n); one host read (n)."""
    from .gpu_kernels import label_above
    lab, n = label_above(volume, thresholds, gap_planes)
    return lab, int(_be.to_host(n)[0])


def label_moments(labels, n_labels: int, weights, peakmap=None):
    """Per-label voxel count, weight sum, weighted centre (voxel x, y, z) and peak.

    One fused pass over the volume (custom CUDA kernel on CuPy, its Numba twin
    on NumPy: :func:`ptnp_gpu.gpu_kernels.label_moments`). ``weights`` (and
    ``peakmap``) may hold fewer planes than ``labels``, repeating along z (a
    number of planes that divides the labels').

    Returns
    -------
    dict with ``count`` (n+1,), ``wsum`` (n+1,), ``centre_vox`` (n+1, 3) xyz,
    ``peak_value`` (n+1,) the maximum of ``peakmap`` (default ``weights``) and
    ``peak_flat`` (n+1,) its flat index; row 0 (background) is zero / -inf / -1.
    """
    from .gpu_kernels import label_moments as _fused
    xp = _be.namespace(labels).xp
    m = _fused(labels, weights, weights if peakmap is None else peakmap, n_labels, background_row=True)
    return {"count": m.count, "wsum": m.sum_w, "centre_vox": xp.nan_to_num(m.centres_vox_xyz(), nan=0.0),
            "peak_value": m.peak_value, "peak_flat": m.peak_index}


def otsu_threshold(values, nbins: int = 256) -> float:
    """Otsu's threshold of a 1-D array (histogram on the backend, 256 numbers to host)."""
    be = _be.namespace(values)
    xp = be.xp
    lo, hi = (float(v) for v in _be.to_host(xp.stack([values.min(), values.max()])))   # one read
    if not hi > lo:
        return lo
    hist = _be.to_host(xp.histogram(values, bins=nbins, range=(lo, hi))[0]).astype(np.float64)
    centres = lo + (np.arange(nbins) + 0.5) * (hi - lo) / nbins
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    k = int(np.argmax(between[:-1]))
    return float(0.5 * (centres[k] + centres[k + 1]))


def map_mean_sd(data, slab_voxels: int | None = None):
    """Mean and standard deviation (population, ddof 0) of a map, with float64 accuracy.

    One pass over slabs of whole planes (axis 0): each slab is widened to
    float64 into one reused buffer, shifted by the mean ``c`` of the first
    slab (so that Σ(x − c)² does not cancel when the mean is far from 0),
    and its Σ(x − c) and Σ(x − c)² are accumulated in float64. No full-size
    float64 temporaries, as ``xp.std(..., dtype=float64)`` makes; equal to
    it to ~1e-15 relative. Runs on the backend of ``data``; the two results
    come to the host in one copy.

    Parameters
    ----------
    data : array
        The map (any shape; float32 or float64).
    slab_voxels : int, optional
        Voxels per slab of the NumPy path: default 2¹⁸ (the buffer stays in
        cache). On CuPy (without ``slab_voxels``) the whole map is summed in
        one launch of ``ptnp_shifted_moments``
        (:func:`ptnp_gpu.gpu_kernels.shifted_moments`: float64 sums, no buffer),
        the shift being the mean of the first 2²² voxels' planes.

    Returns
    -------
    mean, sd : float
    """
    be = _be.namespace(data)
    xp = be.xp
    fused = be.is_gpu and slab_voxels is None
    if slab_voxels is None:
        slab_voxels = 1 << 22 if be.is_gpu else 1 << 18
    plane = int(np.prod(data.shape[1:]))                        # voxels per slice along axis 0
    step = max(1, slab_voxels // max(plane, 1))
    from .gpu_kernels import array_mean
    shift = array_mean(data[:step], dtype=xp.float64)          # 0-d on the backend: no sync
    if fused:                                                   # one launch, no float64 buffer
        from .gpu_kernels import shifted_moments
        sums = shifted_moments(data, shift)
        s1, s2 = sums[0], sums[1]
    else:
        s1, s2 = _slab_moments(data, shift, step, xp)
    m = s1 / data.size
    sd = xp.sqrt(xp.maximum(s2 / data.size - m * m, 0.0))
    mean, sd = _be.to_host(xp.stack([shift + m, sd]))
    return float(mean), float(sd)


def _slab_moments(data, shift, step, xp):
    """Σ(x − shift) and Σ(x − shift)² in float64 over slabs of ``step`` planes (axis 0), each
    widened into one reused float64 buffer."""
    buf = xp.empty((min(step, data.shape[0]),) + tuple(data.shape[1:]), dtype=xp.float64)
    s1 = s2 = 0.0
    for z in range(0, data.shape[0], step):                     # slabs bound the float64 buffer
        blk = data[z:z + step]                                  # views (crops) are read in place
        x = buf[:len(blk)]
        x[...] = blk                                            # exact widening to float64
        x -= shift                                              # float64 arithmetic on both backends
        s1 = s1 + x.sum()
        s2 = s2 + (x * x).sum()                                 # no BLAS dot: threads stall when busy
    return s1, s2
