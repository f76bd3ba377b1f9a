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
    """Per-label voxel count, weight sum and weighted centre (voxel x, y, z).

    Only labelled voxels are visited. ``weights`` is the grey-value map used for
    the centres of mass. With ``peakmap``, also returns the flat index of each
    label's maximum of ``peakmap``.

    Returns
    -------
    dict with ``count`` (n+1,), ``wsum`` (n+1,), ``centre_vox`` (n+1, 3) xyz,
    and ``argmax_flat`` (n+1,) when ``peakmap`` is given; row 0 is background.
    """
    be = _be.namespace(labels)
    xp = be.xp
    flat = labels.ravel()
    idx = xp.nonzero(flat)[0]
    lab = flat[idx]
    nz, ny, nx = labels.shape
    z, rem = xp.divmod(idx, ny * nx)
    y, x = xp.divmod(rem, nx)
    w = weights.ravel()[idx].astype(xp.float64)
    m = n_labels + 1
    count = xp.bincount(lab, minlength=m)
    wsum = xp.bincount(lab, weights=w, minlength=m)
    cx = xp.bincount(lab, weights=w * x, minlength=m)
    cy = xp.bincount(lab, weights=w * y, minlength=m)
    cz = xp.bincount(lab, weights=w * z, minlength=m)
    safe = xp.where(wsum > 0, wsum, 1.0)
    centre = xp.stack([cx / safe, cy / safe, cz / safe], axis=1)
    out = {"count": count, "wsum": wsum, "centre_vox": centre}
    if peakmap is not None:
        # argmax per label: sort by (label, value) and take each label's last entry
        v = peakmap.ravel()[idx].astype(xp.float64)
        order = xp.lexsort(xp.stack([v, lab.astype(xp.float64)]))
        lab_sorted = lab[order]
        last = xp.ones(lab_sorted.shape, dtype=bool)
        last[:-1] = lab_sorted[1:] != lab_sorted[:-1]
        arg = xp.zeros(m, dtype=xp.int64)
        arg[lab_sorted[last]] = idx[order][last]
        out["argmax_flat"] = arg
    return out


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
