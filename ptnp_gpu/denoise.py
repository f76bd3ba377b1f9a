"""Denoising by correlation with one simulated atom, and the atom kernel's algebra.

The denoised map is the normalised cross-correlation of the (mean-removed)
map with a single simulated atom, computed in Fourier space with the DC term
removed and the band limited to 1 Å (cosine taper over 3 shells). The map is
padded with its mean before the transform, so atoms near an edge never see
the opposite side of the box. The result lies in [-1, 1].

The same transform also gives ``G = K ⋆ C`` (the denoised map correlated once
more with the atom), from which the threshold sweep obtains the correlation
of a simulated map with ``C`` without rendering it (see :mod:`ptnp_gpu.sweep`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np
import scipy.fft

from . import backend as _be
from .gpu_kernels import array_mean, atom_filter, rfft_shell_index, segment_sum_columns, shifted_moments
from .simulate import gaussian_terms

__all__ = ["AtomKernel", "denoise_map", "hermitian_norm2", "noise_power_spectrum", "rfft_shells"]

_MAX_WHITEN_GAIN = 1e3   # largest power ratio a prewhitened filter may boost


@dataclass(frozen=True)
class AtomKernel:
    """One atom as a sum of isotropic Gaussians (weights ``a``, variances ``var`` Å²)."""
    a: np.ndarray
    var: np.ndarray
    voxel_volume_A3: float

    @classmethod
    def for_element(cls, element, b_extra_A2, voxel_size_A):
        a, var = gaussian_terms(element, b_extra_A2)
        vs = np.broadcast_to(np.asarray(voxel_size_A, float), (3,))
        return cls(a, var, float(np.prod(vs)))

    def grid_sum(self) -> float:
        """Σ over grid voxels of one rendered atom (= integral / voxel volume)."""
        return float(self.a.sum() / self.voxel_volume_A3)

    def autocorr(self, d2_A2, xp=np):
        """Σ_x K(x) K(x + d) on the grid, at squared separations ``d2_A2`` (Å²)."""
        out = xp.zeros_like(d2_A2, dtype=xp.float64)
        for ai, vi in zip(self.a, self.var):
            for aj, vj in zip(self.a, self.var):
                v = vi + vj
                out += ai * aj * (2 * np.pi * v) ** -1.5 * xp.exp(-0.5 * d2_A2 / v)
        return out / self.voxel_volume_A3

    def reach_A(self, tol=1e-4) -> float:
        """Separation beyond which the autocorrelation is below ``tol`` of its peak."""
        v = 2 * self.var.max()
        return float(np.sqrt(-2 * v * np.log(tol)))


def _shell_grid(shape, vs):
    """Host float32 frequencies (1/Å) of an ``rfftn`` of ``shape`` along z, y, x, the shell
    width ``ds`` (one step of the longest box side) and the largest |s| (the grid's corner:
    each term is largest there, and float32 rounding is monotonic)."""
    fz = np.fft.fftfreq(shape[0], d=vs[2]).astype(np.float32)
    fy = np.fft.fftfreq(shape[1], d=vs[1]).astype(np.float32)
    fx = np.fft.rfftfreq(shape[2], d=vs[0]).astype(np.float32)
    ds = 1.0 / float((np.array(shape) * vs[::-1]).max())
    s_max = np.sqrt((np.max(fz * fz) + np.max(fy * fy)) + np.max(fx * fx))
    return fz, fy, fx, ds, s_max


def rfft_shells(shape, voxel_size_A, xp):
    """Radial Fourier shells of an ``rfftn`` of ``shape`` (z, y, x): the shell index of every
    coefficient (int64, the rfft's shape), the number of shells and their width (1/Å; one
    step of the longest box side). The number of shells comes from the host's frequencies
    (the outermost coefficient's shell), so a device computes the shells without a host
    read; indices are clipped to it."""
    vs = np.broadcast_to(np.asarray(voxel_size_A, float), (3,))
    fz, fy, fx, ds, s_max = _shell_grid(shape, vs)
    top = int(s_max / np.float32(ds))                   # the float32 division of the device's s / ds
    f = xp.asarray(np.concatenate([fz, fy, fx]))                                # one upload
    shell = rfft_shell_index(f[:len(fz)], f[len(fz):len(fz) + len(fy)], f[len(fz) + len(fy):], ds, top)
    return shell, top + 1, ds


@nb.njit(cache=True)
def _shell_power_loop(F, fz, fy, fx, ds, cap, tot, cnt):
    """Σ|F|² and count per shell of an rfft, in C order (the order of ``np.bincount``)."""
    nz, ny, nx = F.shape
    top = 0
    for z in range(nz):
        for y in range(ny):
            a = fz[z] * fz[z] + fy[y] * fy[y]
            for x in range(nx):
                k = np.int64(np.sqrt(a + fx[x] * fx[x]) / ds)
                if k > cap:
                    k = cap
                if k > top:
                    top = k
                f = F[z, y, x]
                tot[k] += np.float64(f.real * f.real + f.imag * f.imag)
                cnt[k] += 1.0
    return top


def _shell_power_host(F, shape, vs):
    """:func:`rfft_shells` and the two shell bincounts of :func:`noise_power_spectrum` in one
    compiled pass over a NumPy rfft, without the (rfft-sized) shell, power and weight arrays:
    the same float32 arithmetic and the same summation order, so the same numbers (5-10×
    faster on 2 cores). Returns (Σ|F|² per shell, count per shell, shell width 1/Å)."""
    fz, fy, fx, ds, s_max = _shell_grid(shape, vs)
    cap = int(s_max / np.float32(ds))                 # rfft_shells' number of shells - 1
    tot = np.zeros(cap + 1)
    cnt = np.zeros(cap + 1)
    top = _shell_power_loop(np.ascontiguousarray(F, dtype=np.complex64), fz, fy, fx, np.float32(ds), cap,
                            tot, cnt)
    return tot[: top + 1], cnt[: top + 1], ds


def noise_power_spectrum(data, solvent_mask, voxel_size_A, *, n_smooth: int = 3):
    """Radially averaged power spectrum of the map's solvent (the noise), against |s| (1/Å).

    Parameters
    ----------
    data : (nz, ny, nx) array
    solvent_mask : (nz, ny, nx) float or bool array, 1 in the solvent (soft edges are best)
    voxel_size_A : float or (3,)
    n_smooth : int
        Width (shells) of the moving average applied to the radial profile.

    Returns
    -------
    s_A, power : 1-D host arrays (shell centres in 1/Å, mean |F|² per shell normalised by
    the solvent fraction).
    """
    be = _be.namespace(data)
    xp, fft = be.xp, be.fft
    vs = np.broadcast_to(np.asarray(voxel_size_A, float), (3,))
    m = solvent_mask.astype(xp.float32)
    # one host read for the three sums (fraction, weighted sum, weight)
    if be.is_gpu:     # float64 sums in one grid-wide launch each (CuPy's full reductions: one block)
        msum = shifted_moments(m, 0.0)[0]
        dm = shifted_moments(data * m, 0.0)[0]
        frac, dm, msum = (float(v) for v in _be.to_host(xp.stack([msum / m.size, dm, msum])))
    else:
        frac, dm, msum = (float(v) for v in _be.to_host(xp.stack([m.mean().astype(xp.float64),
                                                                   (data * m).sum(dtype=xp.float64),
                                                                   m.sum(dtype=xp.float64)])))
    if frac <= 0:
        raise ValueError("noise_power_spectrum: the solvent mask is empty")
    mean = dm / msum
    F = fft.rfftn((data - xp.float32(mean)) * m)      # NumPy: on backend.fft_workers() threads
    shape = data.shape
    if be.is_gpu:
        pw = (F.real ** 2 + F.imag ** 2).astype(xp.float32)
        del F
        shell, nb, ds = rfft_shells(shape, vs, xp)
        # per-shell sums and counts in one launch (cupy.bincount reads the largest index back, a
        # sync each; scatter-adds into ~100 shells contend), both read back at once
        idx = shell.ravel()
        cols = xp.empty((2, idx.shape[0]), dtype=xp.float64)
        cols[0] = pw.ravel()
        cols[1] = 1.0
        del pw
        tot, cnt = _be.to_host(segment_sum_columns(idx, cols, nb))
    else:
        tot, cnt, ds = _shell_power_host(F, shape, vs)
        nb = len(tot)
    ok = cnt > 0
    prof = np.where(ok, tot / np.maximum(cnt, 1), 0.0) / (frac * float(np.prod(shape)))
    if n_smooth > 1:
        k = np.ones(n_smooth) / n_smooth
        prof = np.convolve(np.pad(prof, n_smooth // 2, mode="edge"), k, "valid")[:nb]
    s_c = (np.arange(nb) + 0.5) * ds
    s_c[0] = 0.0
    return s_c[ok], prof[ok]


def hermitian_norm2(half, even: bool):
    """Σ|a|² over a full Hermitian spectrum from its rfft half ``half`` (complex, or a real
    filter on the same grid), as a float64 scalar on the backend (no host read); ``even``:
    the real transform's last axis was even (its Nyquist column is not mirrored).

    Summed in float64 (:func:`ptnp_gpu.gpu_kernels.shifted_moments`, in place on the complex
    array's float view): a complex64 ``vdot`` sums in float32 (NumPy: 8e-6 off at 128³, 4e-4 at
    300³; cuBLAS otherwise), which set the two backends' normalisations apart."""
    w, k = (half.view(half.real.dtype), 2) if half.dtype.kind == "c" else (half, 1)

    def sq(v):
        return shifted_moments(v, 0.0)[1]
    tot = 2.0 * sq(w) - sq(w[..., :k])
    return tot - sq(w[..., -k:]) if even else tot


def denoise_map(data, voxel_size_A, kernel: AtomKernel, *, resolution_A: float = 1.0,
                highpass_A: float = 0.0, noise_psd=None, pad_vox: int | None = None,
                want_second: bool = True, output_scale: float | None = None, return_scale: bool = False,
                whiten_exponent: float = 1.0):
    """Correlate a map with one atom: the denoised map ``C`` (and ``G = K ⋆ C``).

    Parameters
    ----------
    data : (nz, ny, nx) array (NumPy or CuPy)
    voxel_size_A : float or (3,) Å (x, y, z)
    kernel : AtomKernel
    resolution_A : float
        Band limit in Å (cosine taper over 3 Fourier shells beyond it).
    highpass_A : float
        When > 0, also remove structure coarser than this (Å): smooth solvent
        background and the particle's overall envelope (cosine taper from
        1/highpass_A down to half that frequency).
    noise_psd : (s_A, power) pair of 1-D host arrays, optional
        Radially averaged noise power against spatial frequency (1/Å), from
        :func:`noise_power_spectrum`. The filter is then divided by it (a
        prewhitened matched filter, the optimal detector for coloured noise);
        ``G`` still uses the plain atom, so the sweep score stays exact.
    pad_vox : int, optional
        Padding (voxels) on each side against circular wrap; default covers
        the atom's reach.
    want_second : bool
        Also return ``G``, the correlation of ``C`` with the atom kernel.
    output_scale : float, optional
        Use this normalisation instead of the map's own, e.g. another map's
        ``scale`` so that two outputs share units (and noise levels).
    return_scale : bool
        Also return the normalisation used (``C = scale · (map ⋆ atom)``).
    whiten_exponent : float
        The filter is divided by the noise power to this exponent: 1 prewhitens (noise
        coloured on its own); 0.5 divides by the noise amplitude, which undoes a filter
        applied to atoms and noise alike (a sharpened map) and leaves the atoms' own width.

    Returns
    -------
    C : array like ``data``, float32, in [-1, 1] (with the map's own normalisation)
    G : array or None
    scale : float, only with ``return_scale``
    """
    be = _be.namespace(data)
    xp, fft = be.xp, be.fft
    vs = np.broadcast_to(np.asarray(voxel_size_A, float), (3,))
    if pad_vox is None:
        pad_vox = int(np.ceil(kernel.reach_A(1e-3) / vs.min()))
    shape = data.shape
    # one padded size on every backend (SciPy's 2·3·5-smooth lengths, fast for cuFFT too):
    # cupyx's next_fast_len also takes factors of 7, and another padded box is another filter
    # (its band taper is three shells of the box wide) and another wrap: on the H200 C differed
    # by 1.2e-3 of its maximum on a prewhitened map
    padded = [scipy.fft.next_fast_len(n + 2 * pad_vox, real=True) for n in shape]
    work = xp.zeros(padded, dtype=xp.float32)
    sl = tuple(slice(pad_vox, pad_vox + n) for n in shape)
    work[sl] = data
    work[sl] -= array_mean(work[sl], dtype=xp.float64)
    F = fft.rfftn(work)                  # NumPy: on backend.fft_workers() threads
    del work
    # the filter built and applied in one pass (CuPy: one kernel launch; NumPy: array code in
    # place on rfft-sized float32 buffers, the peak near 6× the map). Frequencies in 1/Å.
    fz, fy, fx, ds, _ = _shell_grid(padded, vs)
    white = None
    if noise_psd is not None:
        s_c, power = (np.asarray(v, dtype=np.float64) for v in noise_psd)
        # gain capped at _MAX_WHITEN_GAIN: no band where the map holds (nearly) nothing is blown up
        inv = (power.max() / np.maximum(power, power.max() / _MAX_WHITEN_GAIN)) ** whiten_exponent
        white = (s_c.astype(np.float32), inv.astype(np.float32))      # C from F·K/P; G below from C·K
    highpass = (0.5 / highpass_A, 1.0 / (0.5 / highpass_A)) if highpass_A and highpass_A > 0 else None
    K = atom_filter(F, fz, fy, fx, kernel.a, [-2.0 * np.pi ** 2 * v for v in kernel.var],
                    1.0 / resolution_A, 1.0 / (3 * ds), highpass=highpass, white=white)
    even = padded[2] % 2 == 0

    if output_scale is None:
        norm_m, norm_k = np.sqrt(_be.to_host(xp.stack([hermitian_norm2(F, even), hermitian_norm2(K, even)])))   # one read
        nvox = float(np.prod(padded))
        scale = nvox / max(norm_m * norm_k, 1e-300)     # Parseval: Σ|x|² = Σ|X|² / n
    else:
        scale = float(output_scale)
    F *= K
    C = fft.irfftn(F, s=padded)[sl].copy()
    C *= xp.float32(scale)
    G = None
    if want_second:
        F *= K
        # discrete correlation with the sampled atom: K_grid^ = K^ / voxel volume
        G = fft.irfftn(F, s=padded, overwrite_x=True)[sl].copy()
        G *= xp.float32(scale / kernel.voxel_volume_A3)
    return (C, G, scale) if return_scale else (C, G)
