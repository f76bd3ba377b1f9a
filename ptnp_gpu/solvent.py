"""Solvent and noise of a density map: where the solvent is, its noise level and spectrum.

The particle is found from the raw map smoothed over 2.5 Å (which averages the
noise away whatever its colour); the solvent lies beyond a margin from it.
Estimates run on a ``_STEP``-subsampled grid (every 8th voxel is plenty).
Used by :mod:`ptnp_gpu.detect` for the significance of atoms and for
prewhitening; every function works on NumPy and CuPy arrays.
"""
from __future__ import annotations

import numpy as np

from . import backend as _be
from .components import otsu_threshold
from .denoise import noise_power_spectrum

_STEP = 2   # subsampling of the solvent estimates (every 8th voxel is plenty)
_MIN_SOLVENT = 500   # solvent voxels (subsampled grid) for a noise level measured in the solvent


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
