"""Connected components and per-label reductions (26-connectivity), on any backend."""
from __future__ import annotations

import numpy as np

from . import backend as _be

__all__ = ["label26", "label_moments", "otsu_threshold"]

_S26 = np.ones((3, 3, 3), dtype=bool)


def label26(mask):
    """Label 26-connected components of a boolean volume; returns (labels int32, n)."""
    be = _be.namespace(mask)
    lab, n = be.ndi.label(mask, structure=be.xp.asarray(_S26))
    return lab.astype(be.xp.int32, copy=False), int(n)  # int(n): one scalar sync on GPU


def label_moments(labels, n_labels: int, weights, peakmap=None):
    """Per-label voxel count, weight sum, weighted centre (voxel x, y, z) and peak.

    One fused pass over the volume (custom CUDA kernel on CuPy, its Numba twin
    on NumPy: :func:`ptnp_gpu.gpu_kernels.label_moments`).

    Returns
    -------
    dict with ``count`` (n+1,), ``wsum`` (n+1,), ``centre_vox`` (n+1, 3) xyz,
    ``peak_value`` (n+1,) the maximum of ``peakmap`` (default ``weights``) and
    ``peak_flat`` (n+1,) its flat index; row 0 (background) is zero / -inf / -1.
    """
    from .gpu_kernels import label_moments as _fused
    xp = _be.namespace(labels).xp
    m = _fused(labels, weights, weights if peakmap is None else peakmap, n_labels)

    def pad(a, fill):
        head = xp.full((1,) + a.shape[1:], fill, dtype=a.dtype)
        return xp.concatenate([head, a])
    centre = m.centres_vox_xyz() if n_labels else xp.zeros((0, 3))
    return {"count": pad(m.count, 0), "wsum": pad(m.sum_w, 0.0),
            "centre_vox": pad(xp.nan_to_num(centre, nan=0.0), 0.0),
            "peak_value": pad(m.peak_value, -np.inf), "peak_flat": pad(m.peak_index, -1)}


def otsu_threshold(values, nbins: int = 256) -> float:
    """Otsu's threshold of a 1-D array (histogram on the backend, 256 numbers to host)."""
    be = _be.namespace(values)
    xp = be.xp
    lo, hi = float(values.min()), float(values.max())
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
