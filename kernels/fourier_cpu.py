"""CPU twin of ``fourier.cu``: the same per-coefficient work in NumPy array code.

This is the host path of :func:`ptnp_gpu.gpu_kernels.atom_filter` and
:func:`ptnp_gpu.gpu_kernels.rfft_shell_index` (and was the library's code on
both backends before the kernel): float32 operations in the kernel's order, in
place on rfft-sized buffers so the memory peak stays near the map's.
"""
from __future__ import annotations

import numpy as np

__all__ = ["atom_filter", "rfft_shells", "taper_down_inplace"]


def _s2(fz, fy, fx):
    return (fz[:, None] * fz[:, None] + fy[None, :] * fy[None, :])[:, :, None] + (fx * fx)[None, None, :]


def taper_down_inplace(s, lo, scale):
    """0.5 · (1 + cos(π · clip((s − lo) · scale, 0, 1))), overwriting the float32 array ``s``."""
    s -= np.float32(lo)
    s *= np.float32(scale)
    np.clip(s, 0.0, 1.0, out=s)
    s *= np.float32(np.pi)
    np.cos(s, out=s)
    s += np.float32(1.0)
    s *= np.float32(0.5)
    return s


def atom_filter(F, fz, fy, fx, term_a, term_m, band_lo, band_scale, highpass=None, white=None):
    """Twin of ``ptnp_atom_filter``: the atom's transform K (float32, F's shape) times the band
    (and high-pass) taper; F (complex64) multiplied by the same taper and, with ``white`` =
    (s table, gain table), by the interpolated gain; both zero at DC. ``highpass`` = (lo,
    scale) or None."""
    from ptnp_gpu.host_interp import interp_host
    s2 = _s2(fz, fy, fx)
    K = np.zeros_like(s2)
    tmp = np.empty_like(s2)
    for a, m in zip(term_a, term_m):
        np.multiply(s2, np.float32(m), out=tmp)
        np.exp(tmp, out=tmp)
        tmp *= np.float32(a)
        K += tmp
    band = np.sqrt(s2, out=s2)                     # s2 now holds |s|, then the band
    gain = None if white is None else interp_host(band, white[0], white[1])
    if highpass is not None:
        np.subtract(band, np.float32(highpass[0]), out=tmp)
        tmp *= np.float32(highpass[1])
        np.clip(tmp, 0.0, 1.0, out=tmp)
        tmp *= np.float32(np.pi)
        np.cos(tmp, out=tmp)
        np.subtract(np.float32(1.0), tmp, out=tmp)
        tmp *= np.float32(0.5)
    else:
        tmp.fill(1.0)
    band = taper_down_inplace(band, band_lo, band_scale)
    band *= tmp
    del tmp
    F *= band
    K *= band
    del band
    K[0, 0, 0] = 0.0
    F[0, 0, 0] = 0.0
    if gain is not None:
        F *= gain
    return K


def rfft_shells(fz, fy, fx, ds, top):
    """Twin of ``ptnp_rfft_shells``: min(int(|s| / ds), top) per coefficient (int64)."""
    s = np.sqrt(_s2(fz, fy, fx))
    return np.minimum((s / np.float32(ds)).astype(np.int64), top)     # a float32 division
