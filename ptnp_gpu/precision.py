"""How precisely each atom is placed, and how far it stands out of the noise.

An atom is where the denoised map ``C`` peaks. Noise ``N`` in ``C`` moves that peak by
``δ ≈ −H⁻¹ ∇N`` (``H``: the Hessian of ``C`` at the atom), so the position's covariance is
``H⁻¹ Cov(∇N) H⁻¹``. ``Cov(∇N)`` follows from the noise level of ``C`` (measured in the
solvent by the detection) and the share of ``C``'s noise power at each frequency: ``C`` is the
map passed through a known radial filter (the atom kernel, band limit, high-pass and, on
prewhitened maps, the whitening gain), and the map's noise spectrum is measured in its solvent
(white where it was not). Per axis ``a``, ``Var(∂N/∂a) = σ_C² · Σ (2π s_a)² P_C(s) / Σ P_C(s)``.

This is the peak-location noise of a matched filter; where the kernel matches the atom and
the noise is white it is the Cramér–Rao bound, which the detection's centres reach on core
atoms (``benchmarks/position_precision.py``). Atoms wider than the kernel (mobile surface atoms)
are placed less precisely than that bound; the estimate here follows them, as their own
peaks in ``C`` are flatter.

* :func:`gradient_noise_ratio_per_A` — ``σ(∂N/∂a) / σ(N)`` (1/Å) for each axis ``a``.
* :func:`peak_curvature_per_A2` — the curvature of a well-resolved atom's peak in ``C`` per unit
  height, the floor under a weak peak's noisy Hessian.
* :func:`filter_moments` — both of the above from one evaluation of the filtered spectrum.
* :func:`peak_hessians` — the Hessian of ``C`` at each atom (a quadratic fitted to ``ln C``, Å⁻²).
* :func:`position_sd_A` — the per-axis RMS position error (Å) from these.

The spectra are sums on the host over a small frequency grid; the per-atom work runs on NumPy
and CuPy arrays alike without host round trips (one batched ``eigh`` of the Hessians).
"""
from __future__ import annotations

import functools

import numpy as np

from . import backend as _be
from .displacement import from_eigen

__all__ = ["filter_moments", "gradient_noise_ratio_per_A", "peak_curvature_per_A2", "peak_hessians", "position_sd_A"]

_GRID = 32          # frequency grid (per axis) on which the filtered noise spectrum is summed (64: within 0.2%)
_CURVATURE_FLOOR = 0.3   # a peak's curvature is taken as at least this × a well-resolved atom's of its height


def _taper_down(s, lo, scale):
    return 0.5 * (1.0 + np.cos(np.pi * np.clip((s - lo) * scale, 0.0, 1.0)))


@functools.lru_cache(maxsize=16)
def _kernel_grid(vs, a_terms, var_terms):
    """The ``_GRID``³ frequency grid of voxel size ``vs`` (x, y, z): its frequencies, their
    modulus and the kernel's transform there (Gaussian terms ``a_terms``, ``var_terms``): the
    same for every map of one voxel size and element, so made once (read-only arrays)."""
    f = [np.fft.fftfreq(_GRID, d=v) for v in (vs[2], vs[1], vs[0])]
    sz, sy, sx = np.meshgrid(*f, indexing="ij")
    s = np.sqrt(sx * sx + sy * sy + sz * sz)
    K = np.zeros_like(s)
    for a, v in zip(a_terms, var_terms):
        K += a * np.exp(-2.0 * np.pi ** 2 * v * s * s)
    for arr in (sx, sy, sz, s, K):
        arr.flags.writeable = False
    return (sx, sy, sz), s, K


def _filtered_spectrum(kernel, voxel_size_A, resolution_A, highpass_A, box_shape, noise_psd, whitened,
                       whiten_exponent):
    """On a ``_GRID``³ frequency grid of the map's voxel size (so that sums stay within the grid's
    own Nyquist cube): the frequencies (x, y, z, 1/Å), the kernel ``K``, the filter of
    :func:`ptnp_gpu.denoise.denoise_map` on the map's spectrum, ``K·band²`` (times the whitening
    gain when ``whitened``), and the map's noise power (``noise_psd`` interpolated; white when
    None). ``box_shape`` (z, y, x) sets the band taper's width, three shells of the box."""
    vs = np.broadcast_to(np.asarray(voxel_size_A, float), (3,))
    (sx, sy, sz), s, K = _kernel_grid(tuple(float(v) for v in vs), tuple(float(a) for a in kernel.a),
                                      tuple(float(v) for v in kernel.var))
    ds = 1.0 / max(float(n) * float(v) for n, v in zip(box_shape[::-1], vs))
    band = _taper_down(s, 1.0 / resolution_A, 1.0 / (3.0 * ds))
    if highpass_A and highpass_A > 0:
        band = band * (1.0 - _taper_down(s, 0.5 / highpass_A, highpass_A / 0.5))
    H = K * band * band
    power = np.ones_like(s)
    if noise_psd is not None:
        s_c, p = (np.asarray(x, float) for x in noise_psd)
        power = np.interp(s, s_c, p)
        if whitened:
            gain = (p.max() / np.maximum(p, p.max() / 1e3)) ** whiten_exponent
            H = H * np.interp(s, s_c, gain)
    H[0, 0, 0] = 0.0
    return (sx, sy, sz), K, H, power


def filter_moments(kernel, voxel_size_A, resolution_A: float, highpass_A: float, box_shape, noise_psd=None,
                   whitened: bool = False, whiten_exponent: float = 1.0):
    """:func:`gradient_noise_ratio_per_A` and :func:`peak_curvature_per_A2` from one evaluation
    of the filtered spectrum (the detection needs both)."""
    freqs, K, H, power = _filtered_spectrum(kernel, voxel_size_A, resolution_A, highpass_A, box_shape,
                                            noise_psd, whitened, whiten_exponent)
    k2 = [(2 * np.pi * f) ** 2 for f in freqs]
    pc, r = power * H * H, K * H
    tot_p, tot_r = pc.sum(), r.sum()
    ratio = np.array([np.sqrt((k * pc).sum() / tot_p) for k in k2]) if tot_p > 0 else np.full(3, np.nan)
    curvature = float(np.mean([(k * r).sum() / tot_r for k in k2])) if tot_r > 0 else float("nan")
    return ratio, curvature


def gradient_noise_ratio_per_A(kernel, voxel_size_A, resolution_A: float, highpass_A: float,
                               box_shape, noise_psd=None, whitened: bool = False,
                               whiten_exponent: float = 1.0) -> np.ndarray:
    """``σ(∂N/∂a) / σ(N)`` (1/Å, host array of 3, x/y/z) for the noise ``N`` of a map denoised by
    :func:`ptnp_gpu.denoise.denoise_map` with these arguments (``noise_psd``: the map's noise
    spectrum, white when None; ``box_shape``: the map's (z, y, x))."""
    return filter_moments(kernel, voxel_size_A, resolution_A, highpass_A, box_shape, noise_psd, whitened,
                          whiten_exponent)[0]


def peak_curvature_per_A2(kernel, voxel_size_A, resolution_A: float, highpass_A: float, box_shape,
                          noise_psd=None, whitened: bool = False, whiten_exponent: float = 1.0) -> float:
    """``−C''/C`` at the peak (1/Å², mean over x, y, z) of the denoised map of one atom shaped like
    the kernel (same arguments as :func:`gradient_noise_ratio_per_A`): the curvature of a
    well-resolved atom's peak per unit of its height."""
    return filter_moments(kernel, voxel_size_A, resolution_A, highpass_A, box_shape, noise_psd, whitened,
                          whiten_exponent)[1]


# the 27 voxels around an atom's nearest voxel (offsets x, y, z), and the least-squares fit of a
# quadratic q(δ) = c + b·δ + ½ δᵀ A δ to values there: (10, 27) host matrix, terms ordered as
# c, b_x, b_y, b_z, A_xx, A_yy, A_zz, A_xy, A_xz, A_yz
_CUBE = np.stack(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij"), -1).reshape(-1, 3)[:, ::-1]


def _quadratic_fit() -> np.ndarray:
    x, y, z = (_CUBE[:, k].astype(float) for k in range(3))
    design = np.stack([np.ones(27), x, y, z, 0.5 * x * x, 0.5 * y * y, 0.5 * z * z, x * y, x * z, y * z], 1)
    return np.linalg.pinv(design)


_QFIT = _quadratic_fit()


_SYM = np.array([[4, 7, 8], [7, 5, 9], [8, 9, 6]])    # the quadratic's terms as a symmetric 3×3


def peak_hessians(C, centres_vox, voxel_size_A):
    """Hessians (N, 3, 3; x/y/z; map units per Å²) of ``C`` at ``centres_vox`` ((N, 3) voxel x, y,
    z of ``C``'s grid, backend array), and ``C`` there.

    A peak of the denoised map is close to a Gaussian, whose logarithm is a quadratic: one is
    fitted to ``ln C`` on the 27 voxels around each centre's nearest voxel (exact for a Gaussian
    of any width, where finite differences of one voxel read a peak 0.65 Å wide 6-20% flat), and
    ``∇²C = C (∇²ln C + ∇ln C ∇ln Cᵀ)`` taken at the centre. Where a value there is not
    positive (a weak peak in noise), the quadratic is fitted to ``C`` itself. Both fits are one
    matrix product; the whole costs a few dozen launches on a GPU, none of them a sync."""
    be = _be.namespace(C)
    xp = be.xp
    vs = np.broadcast_to(np.asarray(voxel_size_A, float), (3,))
    base = xp.rint(centres_vox).astype(xp.int64)
    delta = centres_vox.astype(xp.float64) - base                     # (N, 3) voxels, |δ| ≤ ½
    hi = xp.asarray(np.array(C.shape[::-1]) - 1)
    idx = xp.clip(base[:, None, :] + xp.asarray(_CUBE)[None], 0, hi)   # (N, 27, 3) x, y, z
    v = C[idx[..., 2], idx[..., 1], idx[..., 0]].astype(xp.float64)
    positive = xp.all(v > 0, axis=1)
    # both fits at once: (N, 2, 27) values (ln C where all are positive, C) → (N, 2, 10) terms
    y = xp.stack([xp.log(xp.where(positive[:, None], v, 1.0)), v], axis=1)
    q = y @ xp.asarray(_QFIT.T)
    A = q[..., xp.asarray(_SYM)]                                        # (N, 2, 3, 3)
    d2 = delta[:, None, :]
    g = q[..., 1:4] + (A * d2[..., None, :]).sum(-1)                    # gradient at the centre
    val = q[..., 0] + ((q[..., 1:4] + 0.5 * (A * d2[..., None, :]).sum(-1)) * d2).sum(-1)
    c_log = xp.exp(val[:, 0])
    H_log = c_log[:, None, None] * (A[:, 0] + g[:, 0, :, None] * g[:, 0, None, :])
    H = xp.where(positive[:, None, None], H_log, A[:, 1]) / xp.asarray(np.outer(vs, vs))[None]
    return H, xp.where(positive, c_log, val[:, 1])


def position_sd_A(H, noise_sd: float, grad_ratio_per_A, height=None, curvature_per_A2: float | None = None,
                  floor: float = _CURVATURE_FLOOR):
    """Per-axis RMS position error (Å; backend array (N,)) of peaks with Hessians ``H`` (N, 3, 3,
    per Å²) in a map whose noise has SD ``noise_sd`` and gradient SDs ``noise_sd`` ×
    ``grad_ratio_per_A`` (x, y, z): ``√(trace(H⁻¹ D H⁻¹) / 3)`` with ``D`` the gradient noise's
    (diagonal) covariance.

    A weak peak's own curvature is mostly noise, and the linear estimate then runs far above
    the errors the centres make (measured: 10× for atoms 3-6 noise SDs high). With ``height``
    (N,; the peaks' heights above the solvent) and ``curvature_per_A2``
    (:func:`peak_curvature_per_A2`) each eigenvalue of ``H`` is kept at least ``floor`` × the
    curvature a well-resolved atom of that height would have (wide, mobile atoms keep their
    flatter peaks down to that). NaN where ``H`` (so capped) is not negative definite: no peak."""
    xp = _be.namespace(H).xp
    lam, V = xp.linalg.eigh(H)
    if height is not None and curvature_per_A2 is not None:
        lam = xp.minimum(lam, (-floor * curvature_per_A2) * height[:, None])
    peak = xp.all(lam < 0, axis=1)
    inv = 1.0 / xp.where(lam < 0, lam, -1.0)
    hinv = from_eigen(V, inv)
    g = xp.asarray(np.asarray(grad_ratio_per_A, float) * float(noise_sd))
    tr = ((hinv * hinv) * (g * g)[None, None, :]).sum(axis=(1, 2))
    return xp.where(peak, xp.sqrt(tr / 3.0), xp.nan)
