"""Simulated single-particle reconstructions: many noisy, CTF-modulated projections of a particle
in random orientations, put back together by direct Fourier inversion.

Graphene-liquid-cell EM reconstructs a particle from thousands of images of it tumbling in
liquid, each with its own orientation and defocus. Such a map differs from a rendered one:
every image's contrast transfer function (CTF) oscillates through the band that holds the
lattice, so the combined map's noise is coloured by how well the images cover each frequency
(1 / Σ CTF²), amplitudes are damped near CTF zeros, and orientations that are rare leave the
resolution anisotropic.

:func:`ctf` is the phase-contrast transfer function; :func:`simulate_reconstruction` takes a
density volume to images (central sections of its Fourier transform, by the projection-slice
theorem) and back (Wiener-weighted insertion into a twice-oversampled Fourier grid). It runs
on the backend of its input (NumPy or CuPy).
"""
from __future__ import annotations

import numpy as np

from . import backend as _be
from .errors import InputError
from .neighbors import segment_sum

__all__ = ["electron_wavelength_A", "ctf", "random_orientations", "simulate_reconstruction"]


def electron_wavelength_A(kv: float = 300.0) -> float:
    """Relativistic electron wavelength (Å) at ``kv`` kilovolts.

    Examples
    --------
    >>> round(electron_wavelength_A(300.0), 4)
    0.0197
    """
    v = float(kv) * 1e3
    return float(12.2643 / np.sqrt(v * (1.0 + 0.978476e-6 * v)))


def ctf(s_A, defocus_A, *, kv: float = 300.0, cs_mm: float = 0.0, amplitude_contrast: float = 0.1, xp=np):
    """Phase-contrast transfer function at spatial frequency ``s_A`` (1/Å) for underfocus
    ``defocus_A`` (Å, positive = underfocus), spherical aberration ``cs_mm`` (0: a corrected
    microscope) and the given amplitude contrast. Array in, array out (on ``xp``)."""
    lam = np.float64(electron_wavelength_A(kv))        # a NumPy scalar: the phase in float64
    s2 = s_A * s_A
    chi = np.pi * lam * defocus_A * s2 - 0.5 * np.pi * cs_mm * 1e7 * lam ** 3 * s2 * s2
    w = np.arctan(amplitude_contrast / np.sqrt(max(1.0 - amplitude_contrast ** 2, 1e-12)))
    return -xp.sin(chi + w)


def random_orientations(n: int, rng=None, *, preferred_axis_fraction: float = 0.0) -> np.ndarray:
    """``n`` rotation matrices (n, 3, 3), uniform over SO(3); with ``preferred_axis_fraction``
    > 0 that fraction of them looks down z to within 20° (a preferred orientation)."""
    rng = np.random.default_rng(rng)
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    n_pref = int(round(preferred_axis_fraction * n))
    if n_pref:
        ang = np.radians(20.0) * np.sqrt(rng.uniform(size=n_pref))      # tilt of the view axis
        az, spin = rng.uniform(0, 2 * np.pi, size=(2, n_pref))
        axis = np.stack([np.cos(az), np.sin(az), np.zeros(n_pref)], 1)
        # a spin about z, then a small tilt about an in-plane axis
        qs = np.stack([np.cos(spin / 2), np.zeros(n_pref), np.zeros(n_pref), np.sin(spin / 2)], 1)
        qt = np.concatenate([np.cos(ang / 2)[:, None], axis * np.sin(ang / 2)[:, None]], 1)
        q[:n_pref] = _qmul(qt, qs)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], 1)


def _qmul(a, b):
    aw, ax, ay, az = a.T
    bw, bx, by, bz = b.T
    return np.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], 1)


def simulate_reconstruction(volume, voxel_size_A: float, *, n_images: int = 2000, image_snr: float = 0.5,
                            defocus_range_A=(100.0, 600.0), kv: float = 300.0, cs_mm: float = 0.0,
                            b_factor_A2: float = 0.0, wiener: float = 0.05, preferred_axis_fraction: float = 0.0,
                            rng=None, batch: int = 64):
    """A reconstruction of ``volume`` from ``n_images`` simulated images.

    Each image is a projection in a random orientation (:func:`random_orientations`) with
    its own defocus (uniform in ``defocus_range_A``), the CTF, an envelope
    ``exp(−B s²/4)`` and white noise of variance ``signal variance / image_snr``.
    Reconstruction: ``F(k) = Σ CTFᵢ Pᵢ / (Σ CTFᵢ² + wiener · n_images)`` on a twice-oversampled
    Fourier grid (nearest-point insertion), back to real space and cropped.

    Parameters
    ----------
    volume : (n, n, n) array, the true density (a cube; pad a box to a cube first)
    voxel_size_A : float
    n_images : int
    image_snr : float, signal variance / noise variance per image (real space)
    defocus_range_A : (low, high) underfocus in Å
    kv, cs_mm : microscope (300 kV; Cs 0 = aberration-corrected)
    b_factor_A2 : float, the images' envelope (motion, drift, partial coherence)
    wiener : float, the regularisation, per image
    preferred_axis_fraction : float, share of views within 20° of z
    rng : Generator or int
    batch : int, images simulated together

    Returns
    -------
    (n, n, n) float32 reconstruction on the volume's backend, in the volume's units where
    every frequency is well covered.
    """
    be = _be.namespace(volume)
    xp, ndi = be.xp, be.ndi
    vol = xp.asarray(volume, dtype=xp.float32)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise InputError(f"simulate_reconstruction needs a cubic volume, got shape {tuple(vol.shape)}")
    if not (n_images >= 1 and image_snr > 0 and wiener > 0):
        raise InputError("n_images ≥ 1, image_snr > 0 and wiener > 0 are required")
    rng = np.random.default_rng(rng)
    n = vol.shape[0]
    m = 2 * n                                          # oversampled Fourier grid
    pad = xp.zeros((m, m, m), dtype=xp.float32)
    o = (m - n) // 2
    pad[o:o + n, o:o + n, o:o + n] = vol - vol.mean()
    F = xp.fft.fftshift(xp.fft.fftn(xp.fft.ifftshift(pad)))       # centred spectrum, complex64
    del pad
    # image grid: the central section's frequencies, in oversampled-grid units
    g = xp.arange(m, dtype=xp.float32) - m // 2
    ky, kx = xp.meshgrid(g, g, indexing="ij")
    kx, ky = kx.ravel(), ky.ravel()
    s_A = xp.sqrt(kx * kx + ky * ky) / (m * voxel_size_A)
    inside = s_A <= 0.5 / voxel_size_A                 # up to Nyquist
    kx, ky, s_A = kx[inside], ky[inside], s_A[inside]
    env = xp.exp(-b_factor_A2 * s_A * s_A / 4.0).astype(xp.float32)
    # image_snr is the signal's power over the noise's in the sampled band (as in real space, by
    # Parseval), measured on the first batch of sections
    Fre, Fim = xp.ascontiguousarray(F.real), xp.ascontiguousarray(F.imag)
    del F
    rots = random_orientations(n_images, rng, preferred_axis_fraction=preferred_axis_fraction)
    num_re = xp.zeros(m ** 3, dtype=xp.float64)
    num_im = xp.zeros(m ** 3, dtype=xp.float64)
    den = xp.zeros(m ** 3, dtype=xp.float64)
    sig_var = None
    for b0 in range(0, n_images, batch):
        R = xp.asarray(rots[b0:b0 + batch], dtype=xp.float32)                 # (b, 3, 3)
        # 3-D frequencies of the section: R applied to (kx, ky, 0), axes x, y, z -> array (z, y, x)
        kxyz = R[:, :, 0, None] * kx[None, None] + R[:, :, 1, None] * ky[None, None]   # (b, 3, p)
        coords = xp.stack([kxyz[:, 2], kxyz[:, 1], kxyz[:, 0]], 0).reshape(3, -1) + m // 2
        sec = (ndi.map_coordinates(Fre, coords, order=1, mode="constant")
               + 1j * ndi.map_coordinates(Fim, coords, order=1, mode="constant")).reshape(R.shape[0], -1)
        if sig_var is None:                        # the first batch sets the noise scale for all images
            sig_var = float(xp.mean(xp.abs(sec * env) ** 2))
        defocus = xp.asarray(rng.uniform(*defocus_range_A, size=R.shape[0]), dtype=xp.float32)
        c = ctf(s_A[None], defocus[:, None], kv=kv, cs_mm=cs_mm, xp=xp).astype(xp.float32)
        sd = np.sqrt(sig_var / image_snr / 2.0)
        noise = (xp.asarray(rng.normal(scale=sd, size=sec.shape), dtype=xp.float32)
                 + 1j * xp.asarray(rng.normal(scale=sd, size=sec.shape), dtype=xp.float32))
        img = c * env * sec + noise
        # insertion: nearest oversampled grid point, weights CTF·envelope (points off the grid
        # add zero weight to point 0: no data-sized mask, no device read per batch)
        idx = xp.rint(coords).astype(xp.int64)
        ok = xp.all((idx >= 0) & (idx < m), axis=0)
        flat = xp.where(ok, (idx[0] * m + idx[1]) * m + idx[2], 0)
        w = xp.where(ok, (c * env).ravel().astype(xp.float64), 0.0)
        sums = segment_sum(flat, [w * img.real.ravel(), w * img.imag.ravel(), w * w], m ** 3)
        num_re += sums[0]
        num_im += sums[1]
        den += sums[2]
    reg = wiener * float(xp.mean(den[den > 0]))
    Fr = ((num_re + 1j * num_im) / (den + reg)).reshape(m, m, m)
    del num_re, num_im, den
    out = xp.fft.fftshift(xp.fft.ifftn(xp.fft.ifftshift(Fr))).real
    return out[o:o + n, o:o + n, o:o + n].astype(xp.float32)
