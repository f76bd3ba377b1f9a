"""Simulated electron tomograms: a tilt series of a density map and its reconstruction.

Atomic electron tomography measures projections of a particle over a limited
tilt range (a single axis, here y, over ±60–75° in steps of 1–3°) and
reconstructs the volume from them. The reconstruction differs from a rendered
map in ways a detector must survive: the missing wedge elongates atoms along
the beam, a finite number of projections leaves streaks, and the counting
noise of each projection comes out of filtered back-projection as noise that
rises with spatial frequency (iterative reconstruction smooths it again).

:func:`tilt_series` projects a volume, :func:`add_counting_noise` applies
Poisson noise to the projections, :func:`reconstruct_fbp` and
:func:`reconstruct_sirt` reconstruct, and :func:`simulate_tomogram` chains
them. Every function works on the backend of its input (NumPy or CuPy): the
projector is one sparse matrix per (z, x) slice shape and tilt scheme
(voxel-driven, linear interpolation on the detector) applied to all y slices at
once, and its transpose back-projects.

Geometry: arrays are [z, y, x]; the beam runs along z at tilt 0, and a tilt
of θ rotates the volume by θ in the (z, x) plane about the y axis.
"""
from __future__ import annotations

import functools

import numpy as np

from . import backend as _be
from .errors import InputError

__all__ = ["tilt_angles_deg", "tilt_series", "add_counting_noise", "reconstruct_fbp",
           "reconstruct_sirt", "simulate_tomogram"]


def tilt_angles_deg(max_tilt_deg: float = 70.0, step_deg: float = 2.0) -> np.ndarray:
    """Tilt angles (degrees) from −``max_tilt_deg`` to +``max_tilt_deg`` in ``step_deg`` steps.

    Examples
    --------
    >>> tilt_angles_deg(6.0, 3.0).tolist()
    [-6.0, -3.0, 0.0, 3.0, 6.0]
    """
    if not (0 < step_deg and 0 <= max_tilt_deg <= 90):
        raise InputError(f"tilt range must be 0-90° with a positive step (got ±{max_tilt_deg}°, {step_deg}°)")
    n = int(np.floor(max_tilt_deg / step_deg + 1e-9))
    return np.arange(-n, n + 1) * float(step_deg)


def _projector(nz: int, nx: int, tilt_deg, be):
    """Sparse (n_tilts·nx, nz·nx) matrix that projects one (z, x) slice at every tilt.

    Voxel-driven with linear interpolation on the detector: each voxel centre, rotated by the
    tilt, lands at detector coordinate ``u = x cos θ − z sin θ`` (centred) and its density is
    split between the two nearest detector pixels. Every y slice uses the same matrix, so a
    volume projects as one sparse product; its transpose is the exact back-projection. Built
    once per (slice shape, tilts, backend): a tilt series and its reconstruction share it.
    """
    return _projector_cached(int(nz), int(nx), tuple(float(a) for a in tilt_deg), be.name)


@functools.lru_cache(maxsize=4)
def _projector_cached(nz: int, nx: int, tilt_deg: tuple, backend_name: str):
    import scipy.sparse as sp
    t = np.radians(np.asarray(tilt_deg, float))
    zc = np.arange(nz) - 0.5 * (nz - 1)
    xc = np.arange(nx) - 0.5 * (nx - 1)
    Z, X = (a.ravel() for a in np.meshgrid(zc, xc, indexing="ij"))
    cols = np.arange(nz * nx)
    rows, cs, ws = [], [], []
    for i, th in enumerate(t):
        u = X * np.cos(th) - Z * np.sin(th) + 0.5 * (nx - 1)
        i0 = np.floor(u).astype(np.int64)
        f = u - i0
        for k, w in ((i0, 1.0 - f), (i0 + 1, f)):
            ok = (k >= 0) & (k < nx) & (w > 0)
            rows.append(i * nx + k[ok])
            cs.append(cols[ok])
            ws.append(w[ok])
    A = sp.csr_matrix((np.concatenate(ws).astype(np.float32), (np.concatenate(rows), np.concatenate(cs))),
                      shape=(len(t) * nx, nz * nx))
    if _be.get(backend_name).is_gpu:
        import cupyx.scipy.sparse as csp
        A = csp.csr_matrix(A)
    return A


def _project(A, vol, n_tilts, xp):
    """(n_tilts, ny, nx) projections of the (nz, ny, nx) ``vol`` with the matrix of :func:`_projector`."""
    nz, ny, nx = vol.shape
    cols = xp.ascontiguousarray(xp.moveaxis(vol, 1, 2)).reshape(nz * nx, ny)
    return xp.ascontiguousarray(xp.moveaxis((A @ cols).reshape(n_tilts, nx, ny), 2, 1)).astype(xp.float32)


def _back_project(A, proj, nz, xp):
    """The transpose of :func:`_project`: (n_tilts, ny, nx) projections to an (nz, ny, nx) volume."""
    n, ny, nx = proj.shape
    rows = xp.ascontiguousarray(xp.moveaxis(proj, 1, 2)).reshape(n * nx, ny)
    return xp.ascontiguousarray(xp.moveaxis((A.T @ rows).reshape(nz, nx, ny), 2, 1)).astype(xp.float32)


def tilt_series(volume, tilt_deg):
    """Projections of ``volume`` along z after tilting it about y.

    Parameters
    ----------
    volume : (nz, ny, nx) array (NumPy or CuPy), density per voxel
    tilt_deg : sequence of float, tilt angles in degrees

    Returns
    -------
    (n_tilts, ny, nx) float32 array on the volume's backend: line integrals in
    density × voxels (each voxel's density lands on the detector whole).
    """
    be = _be.namespace(volume)
    xp = be.xp
    vol = xp.asarray(volume, dtype=xp.float32)
    if vol.ndim != 3:
        raise InputError(f"tilt_series needs a 3-D volume, got shape {vol.shape}")
    A = _projector(vol.shape[0], vol.shape[2], tilt_deg, be)
    return _project(A, vol, len(tilt_deg), xp)


def add_counting_noise(projections, counts_at_peak: float, rng=None, *, background_counts: float = 0.0):
    """Poisson counting noise on projections scaled so their brightest pixel expects ``counts_at_peak``.

    Parameters
    ----------
    projections : (n, ny, nx) array of line integrals (≥ 0 where there is matter)
    counts_at_peak : float
        Expected electron counts at the brightest pixel of the series; the noise
        there is 1/√counts of the signal.
    rng : numpy.random.Generator or int, optional
    background_counts : float
        Expected counts everywhere in addition (a support or solvent film).

    Returns
    -------
    Noisy projections in the input's units (counts divided by the scale), float32,
    on the input's backend (noise drawn on the host).
    """
    if not counts_at_peak > 0:
        raise InputError(f"counts_at_peak must be positive, got {counts_at_peak}")
    rng = np.random.default_rng(rng)
    p = _be.to_host(projections).astype(np.float64)
    peak = float(p.max())
    if not peak > 0:
        raise InputError("the projections hold no positive signal")
    scale = counts_at_peak / peak
    lam = np.clip(p * scale, 0.0, None) + background_counts
    noisy = (rng.poisson(lam) - background_counts) / scale
    be = _be.namespace(projections)
    return be.xp.asarray(noisy.astype(np.float32))


def _ramp_filter(projections, be, cutoff: float = 1.0):
    """Filter each projection's rows (x) by |k| with a Hann window reaching zero at ``cutoff`` × Nyquist."""
    xp, fft = be.xp, be.fft
    nx = projections.shape[-1]
    n = int(2 ** np.ceil(np.log2(2 * nx)))             # zero-padded against wrap-around
    k = np.fft.rfftfreq(n)                             # cycles per voxel, 0-0.5
    ramp = k * np.where(k <= 0.5 * cutoff, 0.5 * (1.0 + np.cos(np.pi * k / (0.5 * cutoff))), 0.0)
    F = fft.rfft(projections, n=n, axis=-1)
    F *= xp.asarray(ramp.astype(np.float32))
    return fft.irfft(F, n=n, axis=-1)[..., :nx].astype(xp.float32)


def reconstruct_fbp(projections, tilt_deg, nz: int, *, filter_cutoff: float = 1.0):
    """Filtered back-projection (ramp × Hann filter) of a single-axis tilt series.

    Parameters
    ----------
    projections : (n_tilts, ny, nx) array
    tilt_deg : sequence of float, the tilts in degrees (any spacing)
    nz : int, thickness of the reconstructed volume (voxels)
    filter_cutoff : float
        Where the Hann window reaches zero, as a fraction of Nyquist (1: at Nyquist).

    Returns
    -------
    (nz, ny, nx) float32 volume; with full coverage (±90°) it approximates the
    projected volume.
    """
    be = _be.namespace(projections)
    t = np.asarray(tilt_deg, float)
    if projections.shape[0] != len(t):
        raise InputError(f"{projections.shape[0]} projections but {len(t)} tilt angles")
    # each tilt weighs the angular interval it covers (radians): half-way to its neighbours, a
    # whole step at the two ends, so an uneven scheme stays exact (np.gradient of the sorted tilts)
    order = np.argsort(t)
    w = np.full(len(t), np.pi)
    if len(t) > 1:
        w[order] = np.radians(np.gradient(t[order]))
    xp = be.xp
    filt = _ramp_filter(xp.asarray(projections, dtype=xp.float32), be, filter_cutoff)
    filt *= xp.asarray(w.astype(np.float32))[:, None, None]
    A = _projector(nz, projections.shape[2], t, be)
    return _back_project(A, filt, nz, xp)


def reconstruct_sirt(projections, tilt_deg, nz: int, *, iterations: int = 20, relaxation: float = 1.0,
                     positivity: bool = True, support=None, start=None):
    """Simultaneous iterative reconstruction (SIRT) of a single-axis tilt series.

    ``x ← x + λ · C · Aᵀ R (b − A x)`` with R and C the inverse row and column sums of the
    projector, optionally clipped at zero (density is non-negative), as in the iterative
    reconstructions used for atomic electron tomography.

    Parameters
    ----------
    projections : (n_tilts, ny, nx) array
    tilt_deg : sequence of float
    nz : int, thickness of the volume (voxels)
    iterations : int
    relaxation : float, λ (0 < λ < 2)
    positivity : bool, clip negative densities after every iteration
    support : (nz, ny, nx) bool or 0-1 array, optional
        Multiplied into the estimate after every iteration (a support constraint: zero
        outside the particle's envelope, as GENFIRE-like reconstructions impose).
    start : (nz, ny, nx) array, optional, first estimate (default zero)

    Returns
    -------
    (nz, ny, nx) float32 volume in the projections' density units.
    """
    be = _be.namespace(projections)
    xp = be.xp
    b = xp.asarray(projections, dtype=xp.float32)
    n, ny, nx = b.shape
    if n != len(tilt_deg):
        raise InputError(f"{n} projections but {len(tilt_deg)} tilt angles")
    if not (0 < relaxation < 2):
        raise InputError(f"relaxation must lie in (0, 2), got {relaxation}")
    A = _projector(nz, nx, tilt_deg, be)
    row = _project(A, xp.ones((nz, 1, nx), dtype=xp.float32), n, xp)      # ray lengths, (n, 1, nx)
    R = xp.where(row > 1e-3, 1.0 / xp.maximum(row, 1e-3), 0.0).astype(xp.float32)
    col = _back_project(A, xp.ones((n, 1, nx), dtype=xp.float32), nz, xp)  # (nz, 1, nx)
    C = xp.where(col > 1e-3, 1.0 / xp.maximum(col, 1e-3), 0.0).astype(xp.float32)
    del row, col
    x = xp.zeros((nz, ny, nx), dtype=xp.float32) if start is None else xp.asarray(start, dtype=xp.float32).copy()
    sup = None if support is None else xp.asarray(support, dtype=xp.float32)
    if sup is not None and sup.shape != x.shape:
        raise InputError(f"support of shape {sup.shape} for a volume of shape {x.shape}")
    for _ in range(int(iterations)):
        resid = (b - _project(A, x, n, xp)) * R
        x += xp.float32(relaxation) * C * _back_project(A, resid, nz, xp)
        if positivity:
            xp.maximum(x, 0.0, out=x)
        if sup is not None:
            x *= sup
    return x


def simulate_tomogram(volume, *, max_tilt_deg: float = 70.0, step_deg: float = 2.0,
                      counts_at_peak: float | None = 2000.0, background_fraction: float = 0.05,
                      method: str = "fbp", iterations: int = 20, support=None, rng=None):
    """A tomogram of ``volume``: tilt series, counting noise, reconstruction.

    Parameters
    ----------
    volume : (nz, ny, nx) array, the true density
    max_tilt_deg, step_deg : float, the tilt scheme (degrees), see :func:`tilt_angles_deg`
    counts_at_peak : float or None
        Counts at the brightest projection pixel (Poisson noise); None: noise-free.
    background_fraction : float
        Counts everywhere in addition, as a fraction of ``counts_at_peak`` (a support film or
        the detector's dark level; only their noise remains).
    method : "fbp" or "sirt"
    iterations : int, SIRT iterations
    support : array, optional, SIRT's support constraint (see :func:`reconstruct_sirt`)
    rng : Generator or int, optional

    Returns
    -------
    (nz, ny, nx) float32 reconstruction on the volume's backend.
    """
    if method not in ("fbp", "sirt"):
        raise InputError(f"method must be 'fbp' or 'sirt', got {method!r}")
    t = tilt_angles_deg(max_tilt_deg, step_deg)
    proj = tilt_series(volume, t)
    if counts_at_peak is not None:
        proj = add_counting_noise(proj, counts_at_peak, rng,
                                  background_counts=background_fraction * counts_at_peak)
    nz = volume.shape[0]
    if method == "fbp":
        return reconstruct_fbp(proj, t, nz)
    return reconstruct_sirt(proj, t, nz, iterations=iterations, support=support)
