"""Per-atom window measurements on the map: Gaussian displacement fits and shape statistics.

Every atom's neighbourhood is gathered at once: a fixed cube of voxel offsets
is added to each atom's nearest voxel, giving an (N, W) index array into the
raw map (on the backend: NumPy or CuPy). The paper's weighted log-linear fits

* isotropic:   ``ln I = β0 + β1 r²``                 (weights I)
* anisotropic: ``ln I = β0 + β1x² + β2y² + β3z² + β4xy + β5xz + β6yz``

are then solved for all atoms in one batched solve of their normal equations
((N, 7, 7) via einsum and ``xp.linalg.solve``), and the anisotropic precision
matrix is inverted and diagonalised in one batched ``xp.linalg.eigh``. Atoms
are processed in chunks of a few thousand only to bound memory.

Displacements are variances in Å² of the observed intensity (the paper's
U_iso = σ_g², which includes the atom's intrinsic width). Fits that fail are
flagged and their values set to NaN, never to zero.
"""
from __future__ import annotations

import numpy as np

from . import backend as _be

# Gaussian pre-smoothing of the map before the displacement fits (Å); its variance is then
# subtracted from U exactly (compute_statistics' default)
DEFAULT_PRESMOOTH_A = 0.2

__all__ = ["window_offsets", "gather_windows", "fit_displacements", "displacements_from_fits", "window_pearson",
           "map_blur_tensor_A2",
           "window_peak", "fit_radius_A"]


def fit_radius_A(nn_distance_A: float) -> float:
    """The paper's fit radius ``3/4 · a/(2√2)`` = 3/8 of the nearest-neighbour distance (Å)."""
    return 0.375 * float(nn_distance_A)


def window_offsets(radius_A: float, voxel_size_A) -> np.ndarray:
    """Integer voxel offsets (W, 3), x/y/z order, that can fall within ``radius_A`` of an atom.

    Windows are anchored on the atom's nearest voxel, so the atom sits at most
    half a voxel diagonal from the anchor: offsets farther than
    ``radius_A + ½·|voxel diagonal|`` can never be inside the sphere and are
    left out (a ball, not a cube: about 3× fewer voxels).
    """
    vs = np.broadcast_to(np.asarray(voxel_size_A, dtype=np.float64), (3,))
    reach = float(radius_A) + 0.5 * float(np.linalg.norm(vs))
    half = np.ceil(reach / vs).astype(int)
    gx, gy, gz = (np.arange(-h, h + 1) for h in half)
    oz, oy, ox = np.meshgrid(gz, gy, gx, indexing="ij")
    off = np.stack([ox.ravel(), oy.ravel(), oz.ravel()], axis=1)
    return off[np.linalg.norm(off * vs, axis=1) <= reach]


def gather_windows(data, xyz_vox, offsets, voxel_size_A, *, extra=()):
    """Gather the voxels around every atom at once.

    Parameters
    ----------
    data : (nz, ny, nx) array on the backend
    xyz_vox : (N, 3) array on the backend
        Atom positions in voxel coordinates, x/y/z order (may be fractional).
    offsets : (W, 3) int array (x, y, z), from :func:`window_offsets`
    voxel_size_A : (3,) Å along x, y, z
    extra : sequence of arrays shaped like ``data``
        Further maps gathered at the same voxels (e.g. a simulated map, labels).

    Returns
    -------
    values : (N, W) array (float64) of ``data``
    d_A : (N, W, 3) float64 array, voxel position minus atom position, Å (x, y, z)
    inside : (N, W) bool array, False for voxels outside the box
    extras : list of (N, W) arrays, one per ``extra`` map
    """
    xp = _be.namespace(data, xyz_vox).xp
    nz, ny, nx = data.shape
    off = xp.asarray(offsets, dtype=xp.int64)
    vox = xp.asarray(xyz_vox, dtype=xp.float64)
    base = xp.rint(vox).astype(xp.int64)
    idx = base[:, None, :] + off[None, :, :]                        # (N, W, 3)
    dims = xp.asarray([nx, ny, nz], dtype=xp.int64)
    inside = xp.all((idx >= 0) & (idx < dims), axis=2)
    idx = xp.clip(idx, 0, dims - 1)
    flat = (idx[..., 2] * ny + idx[..., 1]) * nx + idx[..., 0]
    vs = xp.asarray(np.broadcast_to(np.asarray(voxel_size_A, float), (3,)), dtype=xp.float64)
    d_a = (idx - vox[:, None, :]) * vs
    values = data.reshape(-1)[flat].astype(xp.float64)
    extras = [e.reshape(-1)[flat] for e in extra]
    return values, d_a, inside, extras


def _batched_wls(design, y, w, xp):
    """Weighted least squares for every row: design (N, W, P), y and w (N, W).

    Returns beta (N, P), weighted R² (N,), and a bool "solvable" mask.
    """
    p = design.shape[-1]
    wd = design * w[..., None]
    ata = xp.einsum("nwp,nwq->npq", wd, design)
    atb = xp.einsum("nwp,nw->np", wd, y)
    n_used = xp.sum(w > 0, axis=1)
    solvable = n_used >= p + 3
    # keep the batch solvable: identity for hopeless rows, a tiny ridge otherwise
    eye = xp.eye(p, dtype=xp.float64)
    diag_scale = xp.diagonal(ata, axis1=1, axis2=2).max(axis=1)
    ridge = 1e-12 * xp.maximum(diag_scale, 1e-300)
    ata = ata + ridge[:, None, None] * eye
    ata = xp.where(solvable[:, None, None], ata, eye)
    atb = xp.where(solvable[:, None], atb, 0.0)
    beta = xp.linalg.solve(ata, atb[..., None])[..., 0]
    fit = xp.einsum("nwp,np->nw", design, beta)
    sw = xp.maximum(xp.sum(w, axis=1), 1e-300)
    ybar = xp.sum(w * y, axis=1) / sw
    ss_res = xp.sum(w * (y - fit) ** 2, axis=1)
    ss_tot = xp.sum(w * (y - ybar[:, None]) ** 2, axis=1)
    r2 = 1.0 - ss_res / xp.maximum(ss_tot, 1e-300)
    ok = solvable & xp.all(xp.isfinite(beta), axis=1)
    return beta, r2, ok


def from_eigen(vec, vals):
    """``V diag(vals) Vᵀ`` per item ((N, 3, 3) eigenvectors in columns, (N, 3) values) as one
    batched product (CuPy's einsum plans on the host for each call: ~1 ms)."""
    xp = _be.namespace(vec).xp
    return (vec * vals[:, None, :]) @ xp.swapaxes(vec, 1, 2)


def fit_displacements(values, d_A, inside, radius_A: float, *, max_factor: float = 1.25) -> dict:
    """Isotropic and anisotropic Gaussian fits of every atom's intensity window.

    Parameters
    ----------
    values : (N, W) array of raw map values (from :func:`gather_windows`)
    d_A : (N, W, 3) offsets of the voxels from the atom centres, Å (x, y, z)
    inside : (N, W) bool array
    radius_A : float
        Fit radius (Å); voxels with ``|d| ≤ radius_A`` and ``I > 0`` are used.
    max_factor : float
        An anisotropic eigenvalue above ``(max_factor · radius_A)²`` marks the
        fit as failed (the paper rejects non-Gaussian intensity blobs).

    Returns
    -------
    dict of backend arrays:
      ``u_iso_A2`` (N,), ``u_iso_r2`` (N,) weighted R² of the log fit,
      ``u_iso_failed`` (N,) bool; ``u_A2`` (N, 3, 3) anisotropic U (map axes),
      ``u_eig_A2`` (N, 3) eigenvalues U_maj ≥ U_med ≥ U_min,
      ``u_dir`` (N, 3) unit principal direction of U_maj (x, y, z),
      ``doi`` (N,) U_min/U_maj, ``u_aniso_r2`` (N,), ``u_aniso_failed`` (N,) bool,
      ``n_fit_voxels`` (N,). Failed values are NaN.
    """
    xp = _be.namespace(values, d_A).xp
    r2 = xp.sum(d_A * d_A, axis=2)
    use = inside & (r2 <= float(radius_A) ** 2) & (values > 0)
    w = xp.where(use, values, 0.0)
    y = xp.log(xp.where(use, values, 1.0))
    x, yy, z = d_A[..., 0], d_A[..., 1], d_A[..., 2]
    ones = xp.ones_like(x)
    iso = _batched_wls(xp.stack([ones, r2], axis=-1), y, w, xp)
    design = xp.stack([ones, x * x, yy * yy, z * z, x * yy, x * z, yy * z], axis=-1)
    aniso = _batched_wls(design, y, w, xp)
    return displacements_from_fits(iso, aniso, xp.sum(use, axis=1), radius_A, max_factor=max_factor)


def displacements_from_fits(iso, aniso, n_fit_voxels, radius_A: float, *, max_factor: float = 1.25,
                            deconvolve_A2: float = 0.0, blur_tensor_A2=None) -> dict:
    """U_iso, anisotropic U, eigenvalues, direction and DOI from solved log-Gaussian fits.

    Parameters
    ----------
    iso : (beta (N, 2), r2 (N,), ok (N,)) of ln I = β0 + β1 r² (r in Å)
    aniso : (beta (N, 7), r2 (N,), ok (N,)) of ln I = β0 + β1x² + β2y² + β3z² + β4xy + β5xz + β6yz
    n_fit_voxels : (N,) voxels used per atom
    radius_A, max_factor : as in :func:`fit_displacements`
    deconvolve_A2 : float
        Isotropic variance (Å²) of a Gaussian the map was smoothed with before
        the fits: subtracted from U_iso and from every eigenvalue of U (exact for
        Gaussian atoms: smoothing adds it to their covariance). Fits left with a
        non-positive variance are failed.
    blur_tensor_A2 : (3, 3) array, optional
        The map's own anisotropic blur (:func:`map_blur_tensor_A2`), taken off every
        fitted covariance (and its trace / 3 off U_iso) before the fits are judged, so
        atoms that only the blur stretched past the fit window are kept.

    Returns
    -------
    dict as :func:`fit_displacements`.
    """
    xp = _be.namespace(iso[0]).xp
    b_iso, r2_iso, ok_iso = iso
    b, r2_an, ok_an = aniso
    ok_iso = ok_iso & (b_iso[:, 1] < 0)
    u_iso = -0.5 / xp.where(ok_iso, b_iso[:, 1], -1.0) - deconvolve_A2
    if blur_tensor_A2 is not None:
        psi = xp.asarray(np.asarray(blur_tensor_A2, dtype=np.float64))
        u_iso = u_iso - xp.trace(psi) / 3.0
    ok_iso = ok_iso & (u_iso > 0)
    u_iso = xp.where(ok_iso, u_iso, xp.nan)
    prec = xp.stack([
        xp.stack([-2 * b[:, 1], -b[:, 4], -b[:, 5]], axis=-1),
        xp.stack([-b[:, 4], -2 * b[:, 2], -b[:, 6]], axis=-1),
        xp.stack([-b[:, 5], -b[:, 6], -2 * b[:, 3]], axis=-1)], axis=-2)
    prec = xp.where(ok_an[:, None, None], prec, xp.eye(3, dtype=xp.float64))
    lam, vec = xp.linalg.eigh(prec)                      # ascending precision
    ok_an = ok_an & xp.all(lam > 0, axis=1)
    lam_safe = xp.where(lam > 0, lam, 1.0)
    if blur_tensor_A2 is not None:
        # covariance less the blur, then its axes again (descending variances, as below)
        cov = from_eigen(vec, 1.0 / lam_safe) - psi[None]
        w, v = xp.linalg.eigh(cov)                       # ascending variances
        ok_an = ok_an & xp.all(w > 0, axis=1)
        lam_safe, vec = 1.0 / xp.where(w > 0, w, 1.0)[:, ::-1], v[:, :, ::-1]
    ev = 1.0 / lam_safe - deconvolve_A2                  # descending variances: U_maj, U_med, U_min
    ok_an = ok_an & (ev[:, 0] <= (max_factor * float(radius_A)) ** 2) & (ev[:, 2] > 0)
    u = from_eigen(vec, ev)
    nan = xp.nan
    u = xp.where(ok_an[:, None, None], u, nan)
    ev = xp.where(ok_an[:, None], ev, nan)
    direction = vec[:, :, 0]
    # a sign convention for the axis: largest component positive
    sgn = xp.sign(xp.take_along_axis(direction, xp.argmax(xp.abs(direction), axis=1)[:, None], axis=1))
    direction = xp.where(ok_an[:, None], direction * xp.where(sgn == 0, 1.0, sgn), nan)
    return {
        "u_iso_A2": u_iso, "u_iso_r2": xp.where(ok_iso, r2_iso, nan), "u_iso_failed": ~ok_iso,
        "u_A2": u, "u_eig_A2": ev, "u_dir": direction, "doi": ev[:, 2] / ev[:, 0],
        "u_aniso_r2": xp.where(ok_an, r2_an, nan), "u_aniso_failed": ~ok_an,
        "n_fit_voxels": n_fit_voxels,
    }


def map_blur_tensor_A2(u_A2, core):
    """The anisotropic part of the map's own blur, from the U tensors of core atoms.

    Core atoms vibrate nearly isotropically, so an elongation common to all of them is the
    map's (a tomogram's missing wedge stretches every atom along the beam). Their
    component-wise median tensor M, less its smallest eigenvalue along every axis, is that
    blur: Ψ = M − λ_min(M)·I, positive semidefinite.

    Parameters
    ----------
    u_A2 : (N, 3, 3) host array of U tensors (Å², NaN where the fit failed)
    core : (N,) bool, the atoms to use (e.g. full coordination)

    Returns
    -------
    psi_A2 : (3, 3) array, or None with fewer than 10 usable core atoms
    core_doi : float, λ_min / λ_max of M (1 for an isotropic map; NaN without core atoms)
    """
    u = np.asarray(u_A2, float)
    sel = np.asarray(core, bool) & np.all(np.isfinite(u.reshape(len(u), 9)), axis=1)
    if sel.sum() < 10:
        return None, float("nan")
    m = np.median(u[sel], axis=0)
    m = 0.5 * (m + m.T)
    w, v = np.linalg.eigh(m)
    if not w[-1] > 0:
        return None, float("nan")
    return (v * (w - w[0])) @ v.T, float(w[0] / w[-1])


def window_pearson(a, b, mask):
    """Pearson correlation of ``a`` and ``b`` over ``mask`` for every row ((N, W) arrays).

    Rows with fewer than 3 voxels or no variance give NaN.
    """
    xp = _be.namespace(a, b).xp
    m = mask.astype(xp.float64)
    n = xp.sum(m, axis=1)
    ns = xp.maximum(n, 1.0)
    ma = xp.sum(a * m, axis=1) / ns
    mb = xp.sum(b * m, axis=1) / ns
    da = (a - ma[:, None]) * m
    db = (b - mb[:, None]) * m
    cov = xp.sum(da * db, axis=1)
    va = xp.sum(da * da, axis=1)
    vb = xp.sum(db * db, axis=1)
    den = xp.sqrt(va * vb)
    good = (n >= 3) & (den > 0)
    return xp.where(good, cov / xp.where(good, den, 1.0), xp.nan)


def window_peak(values, mask):
    """Maximum of ``values`` over ``mask`` per row; NaN for empty rows."""
    xp = _be.namespace(values).xp
    v = xp.where(mask, values, -xp.inf)
    peak = xp.max(v, axis=1)
    return xp.where(xp.isfinite(peak), peak, xp.nan)
