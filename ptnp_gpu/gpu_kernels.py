"""Custom CUDA kernels and their CPU twins, behind backend-dispatching functions.

The CUDA sources live in the ``ptnp_gpu.kernels`` package (top-level
``kernels/`` in the repository) and are read with :mod:`importlib.resources`,
compiled by CuPy's :class:`cupy.RawModule` and memoised per device
(``cupy.memoize(for_each_device=True)``), keyed by file name and the
``#define`` preamble that specialises them (element types). Kernel names
start with ``ptnp_``. Each kernel has a Numba twin in the same folder
(``*_cpu.py``) that computes the same sums on the CPU; the public functions
below call the kernel for CuPy arrays and the twin for NumPy arrays, so the
twin is the test oracle of the kernel and the CPU fast path at once.

Public functions
----------------
window_normal_equations
    Weighted normal equations of the per-atom quadric fit of ln I (U_iso and
    anisotropic U), all atoms at once.
window_pearson
    Per-atom Pearson correlation of two maps within a sphere (validation
    correlation).
mean_shift_centres
    Sub-voxel refinement of atom centres: rounds of a Gaussian-weighted mean
    shift of the solvent-subtracted map, one launch for all atoms and rounds.
label_moments
    Per-label count, Σw, Σw·x, Σw·y, Σw·z, peak value and peak index, one pass.
iso_normal_equations, solve_normal_equations
    Reduce the 7-term normal equations to the isotropic 2-term ones; solve a
    batch with the weighted R² (one thread per atom on a device).
cell_pairs
    All pairs of points within a cutoff, from a hashed cell list.
local_maxima, thin_peaks
    Local maxima of a volume in one pass; non-maximum suppression of close
    peaks, every round in one launch.
segment_sum_columns, shifted_moments, pair_affine_sums, radial_fit_sums
    Fused reductions: per-segment sums of several columns, a map's shifted
    first and second moments, the strain fits' pair sums.
atom_filter, rfft_shell_index
    The denoising filter built and applied on an rfft grid in one pass; the
    radial shell of every coefficient.
"""
from __future__ import annotations

import functools
import importlib.util
import sys
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import backend as _be


def _ensure_kernels_package():
    """Make ``ptnp_gpu.kernels`` importable from a source checkout.

    An installed (or editable) package maps it to the top-level ``kernels/``
    folder; when the repository is only on ``PYTHONPATH`` (e.g. a machine
    without pip access), register that folder under the package name here.
    """
    try:
        importlib.import_module("ptnp_gpu.kernels")
        return
    except ImportError:
        pass
    src = Path(__file__).resolve().parents[1] / "kernels"
    init = src / "__init__.py"
    if not init.is_file():
        raise ImportError(f"ptnp_gpu.kernels is not installed and {src} is missing")
    spec = importlib.util.spec_from_file_location("ptnp_gpu.kernels", init,
                                                  submodule_search_locations=[str(src)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ptnp_gpu.kernels"] = mod
    spec.loader.exec_module(mod)


_ensure_kernels_package()

__all__ = ["kernel_source", "kernel_program", "get_function", "window_normal_equations", "NormalEquations",
           "solve_normal_equations", "iso_normal_equations", "window_pearson",
           "pearson_from_sums", "mean_shift_centres", "mean_shift_offsets", "label_moments", "LabelMoments", "render_windows",
           "label_mask", "label_above", "occupancy_above", "filter1d_pass", "pair_table_sums", "outside_balls", "linear_at",
           "cell_pairs", "local_maxima", "segment_sum_columns", "shifted_moments", "thin_peaks",
           "atom_filter", "rfft_shell_index", "pair_affine_sums", "radial_fit_sums",
           "array_mean", "array_var", "C_TYPES"]

#: NumPy dtype → C type used in the kernels' ``#define`` preambles.
C_TYPES = {
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.int32): "int",
    np.dtype(np.uint32): "unsigned int",
    np.dtype(np.int64): "long long",
    np.dtype(np.uint64): "unsigned long long",
    np.dtype(np.int16): "short",
    np.dtype(np.uint16): "unsigned short",
    np.dtype(np.uint8): "unsigned char",
}

_BLOCK = 128


def _grid(n: int, block: int = 256, cap: int = 65535) -> tuple:
    """Blocks for ``n`` threads of ``block`` (a grid-stride loop covers the rest past ``cap``)."""
    return (max(1, min(-(-int(n) // block), cap)),)


def _c_type(dtype, what: str) -> str:
    dt = np.dtype(dtype)
    if dt not in C_TYPES:
        raise ValueError(f"{what}: unsupported dtype {dt}; expected one of "
                         f"{', '.join(str(d) for d in C_TYPES)}")
    return C_TYPES[dt]


def kernel_source(filename: str) -> str:
    """Text of one ``.cu`` file shipped in ``ptnp_gpu.kernels``."""
    return resources.files("ptnp_gpu.kernels").joinpath(filename).read_text(encoding="utf-8")


KERNEL_OPTIONS = ("--std=c++17",)    # the compiler options of every module (CuPy adds the architecture)


def kernel_program(filename: str, defines: tuple = ()) -> str:
    """The text the loader compiles: ``defines`` ((name, value) pairs) as ``#define`` lines, then
    :func:`kernel_source` of ``filename``."""
    return "".join(f"#define {k} {v}\n" for k, v in defines) + kernel_source(filename)


@functools.lru_cache(maxsize=None)
def _module_builder():
    import cupy

    @cupy.memoize(for_each_device=True)
    def build(filename: str, defines: tuple):
        return cupy.RawModule(code=kernel_program(filename, defines), options=KERNEL_OPTIONS)

    @cupy.memoize(for_each_device=True)
    def function(filename: str, name: str, defines: tuple):
        # the module's own lookup costs ~9 µs a launch (120 launches per analyze)
        return build(filename, defines).get_function(name)
    return function


def get_function(filename: str, name: str, defines: tuple = ()):
    """Compiled kernel ``name`` from ``filename`` with ``defines``, for the current device.

    Parameters
    ----------
    filename : str
        A ``.cu`` file in ``ptnp_gpu.kernels``.
    name : str
        The ``extern "C"`` kernel name (``ptnp_...``).
    defines : tuple of (str, str)
        ``#define`` lines prepended to the source; part of the cache key.
    """
    return _module_builder()(filename, name, tuple(defines))


# --------------------------------------------------------------------------- render

def render_windows(out, base, frac, inv6, norm, offsets, voxel_size_A):
    """Add atom windows to the float64 map ``out`` (nz, ny, nx) in place.

    Backend follows ``out``: CuPy → ``ptnp_render_atoms`` (atomicAdd, one block
    per atom); NumPy → the Numba twin (parallel over z planes). The arguments
    are those documented in ``kernels/render_atoms.cu``; host arrays are fine
    for the small per-atom inputs.
    """
    be = _be.namespace(out)
    vs = np.broadcast_to(np.asarray(voxel_size_A, np.float64), (3,))
    if not be.is_gpu:
        from .kernels.render_atoms_cpu import render_planes
        return render_planes(base, frac, inv6, norm, offsets, vs, out)
    xp = be.xp
    n = int(len(base))
    n_terms = int(np.shape(norm)[1]) if n else 0
    if n == 0 or len(offsets) == 0:
        return out
    if n_terms > 8:
        raise ValueError(f"render_windows: at most 8 Gaussian terms per atom, got {n_terms}")
    if out.dtype != xp.float64 or not out.flags.c_contiguous:
        raise ValueError("render_windows: out must be a C-contiguous float64 array")
    nz, ny, nx = out.shape
    args_dev = [xp.ascontiguousarray(xp.asarray(base, dtype=xp.int32)),
                xp.ascontiguousarray(xp.asarray(frac, dtype=xp.float64)),
                xp.ascontiguousarray(xp.asarray(inv6, dtype=xp.float64)),
                xp.ascontiguousarray(xp.asarray(norm, dtype=xp.float64)),
                xp.ascontiguousarray(xp.asarray(offsets, dtype=xp.int32))]
    n_off = int(len(offsets))
    k = get_function("render_atoms.cu", "ptnp_render_atoms")
    grid_y = max(1, min(64, -(-n_off // 256)))
    k((n, grid_y), (256,), (*args_dev, np.int32(n), np.int32(n_terms), np.int32(n_off),
                            np.int32(nx), np.int32(ny), np.int32(nz),
                            np.float64(vs[0]), np.float64(vs[1]), np.float64(vs[2]), out))
    return out


@functools.lru_cache(maxsize=16)
def _ball_offsets(radius_A: float, spacing_zyx: tuple) -> np.ndarray:
    """Integer (z, y, x) steps within ``radius_A`` on a grid of ``spacing_zyx`` (Å), the distance
    computed as ``scipy.ndimage.distance_transform_edt`` computes it with that sampling (each
    step times its spacing, squared, summed over z, y, x, square root): (W, 3) int32, read-only."""
    s = np.asarray(spacing_zyx, dtype=np.float64)
    r = [int(np.floor(radius_A / v)) + 1 for v in s]
    g = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in r], indexing="ij"), 0).reshape(3, -1)
    d = g.astype(np.float64) * s[:, None]
    d *= d
    off = np.ascontiguousarray(g[:, np.sqrt(np.add.reduce(d, axis=0)) <= radius_A].T.astype(np.int32))
    off.flags.writeable = False
    return off


def outside_balls(shape, centres_zyx, radius_A: float, spacing_zyx):
    """Voxels of a ``shape`` grid farther than ``radius_A`` from every centre: exactly
    ``distance_transform_edt(grid without the centres' voxels, sampling=spacing_zyx) > radius_A``,
    by clearing each centre's ball of offsets instead of a distance transform.

    CuPy: one launch of ``ptnp_clear_balls`` (``kernels/render_atoms.cu``) over the (centre,
    offset) pairs; NumPy: its Numba twin. No host read.

    Parameters
    ----------
    shape : (nz, ny, nx)
    centres_zyx : (N, 3) int array (voxels z, y, x; outside the grid is allowed), NumPy or CuPy
    radius_A : float
    spacing_zyx : 3 floats, the grid's spacing along z, y, x (Å)

    Returns
    -------
    (nz, ny, nx) bool array on the centres' backend.

    Examples
    --------
    >>> import numpy as np
    >>> outside_balls((1, 1, 6), np.array([[0, 0, 1]]), 1.0, (1.0, 1.0, 1.0))[0, 0].tolist()
    [False, False, False, True, True, True]
    """
    be = _be.namespace(centres_zyx)
    xp = be.xp
    shape = tuple(int(v) for v in shape)
    off = _ball_offsets(float(radius_A), tuple(float(v) for v in spacing_zyx))
    mask = xp.ones(shape, dtype=bool)
    c = xp.ascontiguousarray(xp.asarray(centres_zyx).astype(xp.int64, copy=False).reshape(-1, 3))
    n = int(c.shape[0])
    if n == 0:
        return mask
    if not be.is_gpu:
        from .kernels.render_atoms_cpu import clear_balls
        return clear_balls(c, off, mask)
    get_function("render_atoms.cu", "ptnp_clear_balls")(
        _grid(n * len(off), _BLOCK), (_BLOCK,),
        (c, np.int64(n), xp.asarray(off), np.int32(len(off)), np.int32(shape[0]), np.int32(shape[1]),
         np.int32(shape[2]), mask))
    return mask


# --------------------------------------------------------------------------- window fits

def _centres(centres_vox_xyz, xp):
    c = xp.asarray(centres_vox_xyz, dtype=xp.float64)
    if c.ndim != 2 or c.shape[1] != 3:
        raise ValueError(f"centres_vox_xyz: expected shape (N, 3), got {tuple(c.shape)}")
    return xp.ascontiguousarray(c)


def _volume(vol, name, xp):
    if vol.ndim != 3:
        raise ValueError(f"{name}: expected a 3D (nz, ny, nx) array, got shape {tuple(vol.shape)}")
    if vol.dtype not in (np.float32, np.float64):
        vol = vol.astype(xp.float32)
    return xp.ascontiguousarray(vol)


def _positive(value, name, what="a positive radius in voxels"):
    """``value`` as a finite float > 0, else ValueError naming ``name``."""
    v = float(value)
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return v


class NormalEquations(NamedTuple):
    """Per-atom weighted sums of the quadric log fit (see :func:`window_normal_equations`).

    Attributes
    ----------
    A : (N, 7, 7) float64
        Σ I φ φᵀ (symmetric).
    rhs : (N, 7) float64
        Σ I φ ln I.
    yy : (N,) float64
        Σ I (ln I)², for the weighted R².
    count : (N,) int64
        Voxels used per atom.
    """
    A: object
    rhs: object
    yy: object
    count: object


def window_normal_equations(volume, centres_vox_xyz, r_fit_vox, *, voxel_size_A=1.0, baseline=None):
    """Weighted normal equations of ln I = β·φ for every atom window at once.

    φ = (1, x², y², z², xy, xz, yz); I is the map value minus the atom's
    ``baseline``; the weights are I; the voxels used are
    those with I > 0 (finite) within ``r_fit_vox`` of the atom centre. x, y,
    z are the voxel's offset from the (fractional) centre times
    ``voxel_size_A``, so with the voxel size in Å the β come out in Å⁻².

    Parameters
    ----------
    volume : (nz, ny, nx) float32 or float64 array, NumPy or CuPy
        The raw map (other dtypes are converted to float32).
    centres_vox_xyz : (N, 3) array
        Atom centres in voxel coordinates, x y z (fractional allowed).
    r_fit_vox : float
        Fit radius in voxels (distance measured in voxel units).
    voxel_size_A : float or (3,) floats, optional
        Scale of x, y, z (default 1: voxel units).
    baseline : (N,) array, optional
        Per-atom level subtracted from the map values of its window (map
        units; e.g. the local solvent level); default 0.

    Returns
    -------
    NormalEquations
        ``A`` (N, 7, 7), ``rhs`` (N, 7), ``yy`` (N,), ``count`` (N,), on the
        backend of ``volume``.

    Notes
    -----
    :func:`solve_normal_equations` solves them (batched, with the failure
    rules of :mod:`ptnp_gpu.displacement`) and gives the weighted R²; the
    isotropic fit ln I = β0 + β1 r² uses :func:`iso_normal_equations` on the
    same sums. CuPy runs ``ptnp_window_normal_eq`` (one block per atom,
    register accumulation, block reduction, no atomics); NumPy runs the
    Numba twin (parallel over atoms).

    Examples
    --------
    >>> import numpy as np
    >>> z, y, x = np.mgrid[:9, :9, :9] - 4.0
    >>> vol = np.exp(-(x**2 + y**2 + z**2) / (2 * 1.5)).astype(np.float32)
    >>> ne = window_normal_equations(vol, [[4.0, 4.0, 4.0]], 3.0)
    >>> beta = np.linalg.solve(ne.A[0], ne.rhs[0])
    >>> round(float(-1 / (2 * beta[1])), 3), int(ne.count[0])
    (1.5, 123)
    """
    be = _be.namespace(volume)
    xp = be.xp
    vol = _volume(xp.asarray(volume), "volume", xp)
    c = _centres(centres_vox_xyz, xp)
    r = _positive(r_fit_vox, "r_fit_vox")
    half = int(np.ceil(r))
    vs = np.broadcast_to(np.asarray(voxel_size_A, np.float64), (3,))
    n = int(c.shape[0])
    A = xp.zeros((n, 7, 7), dtype=xp.float64)
    rhs = xp.zeros((n, 7), dtype=xp.float64)
    yy = xp.zeros(n, dtype=xp.float64)
    count = xp.zeros(n, dtype=xp.int64)
    if n == 0:
        return NormalEquations(A, rhs, yy, count)
    if baseline is None:
        base = xp.zeros(n, dtype=xp.float64)
    else:
        base = xp.ascontiguousarray(xp.asarray(baseline, dtype=xp.float64).reshape(-1))
        if base.shape[0] != n:
            raise ValueError(f"baseline: expected {n} values (one per atom), got {base.shape[0]}")
    if not be.is_gpu:
        from .kernels.window_fits_cpu import normal_equations
        normal_equations(vol, c, base, half, r * r, np.ascontiguousarray(vs), A, rhs, yy, count)
        return NormalEquations(A, rhs, yy, count)
    nz, ny, nx = vol.shape
    k = get_function("window_fits.cu", "ptnp_window_normal_eq",
                     (("PTNP_MAP_T", _c_type(vol.dtype, "volume")),))
    k((n,), (_BLOCK,), (vol, np.int32(nx), np.int32(ny), np.int32(nz), c, base, np.int32(n),
                        np.int32(half), np.float64(r * r), np.float64(vs[0]),
                        np.float64(vs[1]), np.float64(vs[2]), A, rhs, yy, count))
    return NormalEquations(A, rhs, yy, count)


def iso_normal_equations(ne: NormalEquations) -> NormalEquations:
    """Isotropic normal equations (ln I = β0 + β1 r²) from the 7-term ones.

    Since r² = x² + y² + z², the 2-term design is φ_iso = Tᵀφ, so
    A_iso = Tᵀ A T and rhs_iso = Tᵀ rhs with T summing columns 1–3.

    Parameters
    ----------
    ne : NormalEquations
        From :func:`window_normal_equations`.

    Returns
    -------
    NormalEquations
        ``A`` (N, 2, 2), ``rhs`` (N, 2); ``yy`` and ``count`` unchanged.
    """
    xp = _be.namespace(ne.A).xp
    T = xp.zeros((7, 2), dtype=ne.A.dtype)
    T[0, 0] = 1.0
    T[1:4, 1] = 1.0
    # Tᵀ A T as two batched products (CuPy's einsum plans on the host for ~1 ms a call)
    return NormalEquations(xp.matmul(xp.matmul(T.T, ne.A), T), ne.rhs @ T, ne.yy, ne.count)


def solve_normal_equations(ne: NormalEquations, *, min_extra: int = 3, ridge: float = 1e-12):
    """Solve a batch of weighted normal equations; β, weighted R² and a success mask.

    Rows with fewer than P + ``min_extra`` voxels (P parameters) are not
    solved (β = NaN, ok False); the rest get a relative ridge
    ``ridge · max diag(A)`` for numerical safety (the rule of
    ``ptnp_gpu.displacement``). R² = 1 − SS_res/SS_tot with
    SS_res = Σw y² − 2βᵀb + βᵀAβ and SS_tot = Σw y² − (Σw y)²/Σw.

    Parameters
    ----------
    ne : NormalEquations
        7-term (or 2-term from :func:`iso_normal_equations`) sums.

    Returns
    -------
    beta : (N, P) float64
    r2 : (N,) float64
    ok : (N,) bool
    """
    if _be.namespace(ne.A).is_gpu and 0 < ne.A.shape[-1] <= 7:
        return _solve_normal_device(ne.A, ne.rhs, ne.yy, ne.count, min_extra, ridge)
    return _solve_normal_array(ne.A, ne.rhs, ne.yy, ne.count, min_extra, ridge)


def _solve_normal_array(A, b, yy, count, min_extra, ridge):
    """The array code of :func:`solve_normal_equations` (the host path, and the twin of
    ``ptnp_solve_normal``)."""
    xp = _be.namespace(A).xp
    p = A.shape[-1]
    eye = xp.eye(p, dtype=xp.float64)
    solvable = count >= p + min_extra
    scale = xp.einsum("npp->np", A).max(axis=1) if A.shape[0] else xp.zeros(0)
    A_r = A + (ridge * xp.maximum(scale, 1e-300))[:, None, None] * eye
    A_r = xp.where(solvable[:, None, None], A_r, eye)
    beta = xp.linalg.solve(A_r, xp.where(solvable[:, None], b, 0.0)[..., None])[..., 0]
    ok = solvable & xp.all(xp.isfinite(beta), axis=1)
    sw = xp.maximum(A[:, 0, 0], 1e-300)
    ss_tot = yy - b[:, 0] ** 2 / sw
    ss_res = yy - 2.0 * xp.einsum("np,np->n", beta, b) + xp.einsum("np,npq,nq->n", beta, A, beta)
    r2 = 1.0 - ss_res / xp.maximum(ss_tot, 1e-300)
    beta = xp.where(ok[:, None], beta, xp.nan)
    return beta, xp.where(ok, r2, xp.nan), ok


def _solve_normal_device(A, rhs, yy, count, min_extra: int, ridge: float):
    """:func:`solve_normal_equations` in one launch of ``ptnp_solve_normal`` (one thread per
    atom: ridged Gaussian elimination with partial pivoting, then R²); its twin, on NumPy
    arrays, is the array code."""
    be = _be.namespace(A)
    if not be.is_gpu:
        return _solve_normal_array(A, rhs, yy, count, min_extra, ridge)
    xp = be.xp
    n, p = int(A.shape[0]), int(A.shape[-1])
    beta = xp.empty((n, p), dtype=xp.float64)
    r2 = xp.empty(n, dtype=xp.float64)
    ok = xp.empty(n, dtype=xp.uint8)
    if n:
        f = get_function("window_fits.cu", "ptnp_solve_normal", (("PTNP_MAP_T", "float"),))
        f(_grid(n, _BLOCK), (_BLOCK,),
          (xp.ascontiguousarray(A, dtype=xp.float64), xp.ascontiguousarray(rhs, dtype=xp.float64),
           xp.ascontiguousarray(yy, dtype=xp.float64), xp.ascontiguousarray(count, dtype=xp.int64),
           np.int64(n), np.int32(p), np.int64(p + min_extra), np.float64(ridge), beta, r2, ok))
    return beta, r2, ok.view(xp.bool_)


def window_pearson(map_a, map_b, centres_vox_xyz, radius_vox, *, return_sums=False):
    """Per-atom Pearson correlation of two maps within a sphere.

    Parameters
    ----------
    map_a, map_b : (nz, ny, nx) arrays, NumPy or CuPy (same shape)
        E.g. the raw map and the map simulated from the model.
    centres_vox_xyz : (N, 3) array
        Sphere centres in voxel coordinates, x y z.
    radius_vox : float
        Sphere radius in voxels (e.g. 1.5 × r_th / voxel size).
    return_sums : bool, optional
        Also return the (N, 6) sums n, Σa, Σb, Σa², Σb², Σab.

    Returns
    -------
    r : (N,) float64
        Pearson correlation; NaN where a map is constant in the sphere or the
        sphere holds fewer than 3 voxels (as ``ptnp_gpu.displacement``).
    sums : (N, 6) float64, only if ``return_sums``

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(size=(12, 12, 12))
    >>> r = window_pearson(a, 2 * a + 1, [[6, 6, 6], [3.5, 4, 5]], 2.5)
    >>> np.round(r, 6).tolist()
    [1.0, 1.0]
    """
    be = _be.namespace(map_a, map_b)
    xp = be.xp
    a = xp.asarray(map_a)
    b = xp.asarray(map_b)
    if a.shape != b.shape:
        raise ValueError(f"map_a and map_b must have the same shape, got {a.shape} and {b.shape}")
    dt = np.result_type(a.dtype, b.dtype, np.float32)
    a = _volume(a.astype(dt, copy=False), "map_a", xp)
    b = _volume(b.astype(dt, copy=False), "map_b", xp)
    c = _centres(centres_vox_xyz, xp)
    r = _positive(radius_vox, "radius_vox")
    half = int(np.ceil(r))
    n = int(c.shape[0])
    sums = xp.zeros((n, 6), dtype=xp.float64)
    if n:
        if not be.is_gpu:
            from .kernels.window_fits_cpu import pearson_sums
            pearson_sums(a, b, c, half, r * r, sums)
        else:
            nz, ny, nx = a.shape
            k = get_function("window_fits.cu", "ptnp_window_pearson",
                             (("PTNP_MAP_T", _c_type(a.dtype, "map_a")),))
            k((n,), (_BLOCK,), (a, b, np.int32(nx), np.int32(ny), np.int32(nz), c,
                                np.int32(n), np.int32(half), np.float64(r * r), sums))
    corr = pearson_from_sums(sums)
    return (corr, sums) if return_sums else corr


def pearson_from_sums(sums):
    """Pearson r from (..., 6) sums n, Σa, Σb, Σa², Σb², Σab (NaN below 3 voxels or no variance)."""
    xp = _be.namespace(sums).xp
    n, sa, sb, saa, sbb, sab = (sums[..., i] for i in range(6))
    nn = xp.maximum(n, 1.0)
    cov = sab - sa * sb / nn
    va = saa - sa * sa / nn
    vb = sbb - sb * sb / nn
    den = xp.sqrt(xp.maximum(va, 0.0) * xp.maximum(vb, 0.0))
    ok = (n >= 3) & (den > 0)
    return xp.where(ok, cov / xp.where(ok, den, 1.0), xp.nan)


def mean_shift_offsets(radius_vox):
    """Integer window offsets (W, 3) x y z of :func:`mean_shift_centres`, int32.

    All (ox, oy, oz) in [-r, r]³, r = ceil(radius_vox), with
    ox² + oy² + oz² <= (radius_vox + 0.5)²; z slowest, x fastest.
    """
    r = int(np.ceil(radius_vox))
    g = np.arange(-r, r + 1)
    oz, oy, ox = np.meshgrid(g, g, g, indexing="ij")
    off = np.stack([ox.ravel(), oy.ravel(), oz.ravel()], 1)
    keep = (off.astype(np.float64) ** 2).sum(1) <= (float(radius_vox) + 0.5) ** 2
    return np.ascontiguousarray(off[keep], dtype=np.int32)


def mean_shift_centres(volume, centres_vox_xyz, base, radius_vox, sigma_vox, n_iter=3):
    """Refine atom centres by ``n_iter`` rounds of a Gaussian-weighted mean shift.

    Each round, for every centre c (voxel x y z): rc = rint(c) (half to even);
    the window is rc + o for the offsets o of :func:`mean_shift_offsets`
    (``radius_vox``), map indices clamped into the map (nearest voxel, as
    ``map_coordinates(order=0, mode="nearest")``); d = rc + o − c and the
    weights are max(v − base, 0) · exp(−½|d|²/σ²). The centre moves by
    Σw·d / Σw (0 where Σw = 0), each component clipped to ±1 voxel.

    Parameters
    ----------
    volume : (nz, ny, nx) float32 or float64 array, NumPy or CuPy
        The raw map (other dtypes are converted to float32).
    centres_vox_xyz : (N, 3) array
        Starting centres in voxel coordinates, x y z.
    base : float
        Solvent level subtracted from the map. The subtraction is done in the
        map's precision (``base`` rounded to its dtype), as ``volume - base``
        with a Python float is in NumPy and CuPy.
    radius_vox : float
        Window radius in voxels (> 0).
    sigma_vox : float
        Gaussian width in voxels (> 0).
    n_iter : int, optional
        Number of rounds (default 3; 0 returns the centres).

    Returns
    -------
    (N, 3) float64 array
        Refined centres on the backend of ``volume``.

    Notes
    -----
    CuPy runs ``ptnp_mean_shift`` (one block per atom, every round in one
    launch, deterministic block reductions); NumPy runs the Numba twin
    (parallel over atoms). Voxels that are NaN weigh nothing, and non-finite
    centres come back unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> z, y, x = np.mgrid[:16, :16, :16]
    >>> vol = np.exp(-((x - 7.3) ** 2 + (y - 8.6) ** 2 + (z - 7.9) ** 2) / 4.0)
    >>> c = mean_shift_centres(vol, [[7.0, 8.0, 8.0]], 0.0, 3.8, 1.45, n_iter=20)
    >>> np.round(c, 2).tolist()
    [[7.3, 8.6, 7.9]]
    """
    be = _be.namespace(volume)
    xp = be.xp
    vol = _volume(xp.asarray(volume), "volume", xp)
    c = _centres(centres_vox_xyz, xp)
    r = _positive(radius_vox, "radius_vox")
    sigma = _positive(sigma_vox, "sigma_vox", "a positive width in voxels")
    if int(n_iter) != n_iter or n_iter < 0:
        raise ValueError(f"n_iter: expected a non-negative integer, got {n_iter!r}")
    n_iter = int(n_iter)
    base_t = vol.dtype.type(float(base))          # v − base in the map's precision
    off = mean_shift_offsets(r)
    n = int(c.shape[0])
    if n == 0 or n_iter == 0:
        return c.copy()
    if vol.size == 0:
        raise ValueError(f"volume: empty map of shape {tuple(vol.shape)}")
    out = xp.empty((n, 3), dtype=xp.float64)
    if not be.is_gpu:
        from .kernels.window_fits_cpu import mean_shift
        mean_shift(vol, c, off, base_t, sigma * sigma, n_iter, out)
        return out
    nz, ny, nx = vol.shape
    k = get_function("window_fits.cu", "ptnp_mean_shift",
                     (("PTNP_MAP_T", _c_type(vol.dtype, "volume")),))
    k((n,), (_BLOCK,), (vol, np.int32(nx), np.int32(ny), np.int32(nz), c, np.int32(n),
                        xp.asarray(off), np.int32(len(off)), base_t, np.float64(sigma * sigma),
                        np.int32(n_iter), out))
    return out


def linear_at(volume, xyz_vox):
    """``volume`` at points, linearly interpolated with its edges extended: SciPy's
    ``map_coordinates(volume, xyz_vox[:, ::-1].T, order=1, mode="nearest")``.

    CuPy: one launch of ``ptnp_linear_at`` (``kernels/window_fits.cu``: coordinates clamped, the
    8 corners weighted in float64, rounded to the volume's type; a NaN coordinate gives NaN), in
    place of cupyx's ``map_coordinates`` and its Python layers; NumPy: SciPy's own (the twin,
    ``window_fits_cpu.linear_at_cpu``, is the kernel's reference in the tests). No host read.

    Parameters
    ----------
    volume : (nz, ny, nx) float32/float64 array, NumPy or CuPy
    xyz_vox : (M, 3) float array, voxel coordinates x, y, z

    Returns
    -------
    (M,) array of the volume's type on its backend.

    Examples
    --------
    >>> import numpy as np
    >>> v = np.arange(8.0).reshape(2, 2, 2)
    >>> linear_at(v, np.array([[0.5, 0.5, 0.5], [-3.0, 0.0, 9.0]])).tolist()
    [3.5, 4.0]
    """
    be = _be.namespace(volume, xyz_vox)
    xp = be.xp
    vol = _volume(xp.asarray(volume), "volume", xp)
    pts = xp.ascontiguousarray(xp.asarray(xyz_vox, dtype=xp.float64).reshape(-1, 3))
    if not be.is_gpu:
        return be.ndi.map_coordinates(vol, pts[:, ::-1].T, order=1, mode="nearest")
    m = int(pts.shape[0])
    out = xp.empty(m, dtype=vol.dtype)
    if m:
        nz, ny, nx = (int(s) for s in vol.shape)
        get_function("window_fits.cu", "ptnp_linear_at", (("PTNP_MAP_T", _c_type(vol.dtype, "volume")),))(
            _grid(m, _BLOCK), (_BLOCK,), (vol, np.int32(nx), np.int32(ny), np.int32(nz), pts, np.int64(m), out))
    return out


# --------------------------------------------------------------------------- label sums

class LabelMoments(NamedTuple):
    """Per-label reductions for labels 1..n (row i is label i + 1).

    Attributes
    ----------
    count : (n,) int64
    sum_w : (n,) float64
    sum_w_xyz : (n, 3) float64
        Σw·x, Σw·y, Σw·z with x, y, z voxel indices.
    peak_value : (n,) float32
        Largest ``peakmap`` value in the label (-inf if empty).
    peak_index : (n,) int64
        Flat (C-order) index of the first voxel holding it (-1 if empty).
    centre_vox : (n, 3) float64 or None
        Σw·(x, y, z) / Σw (NaN where Σw = 0), when the moments' pass wrote it
        (``ptnp_label_finish`` on a device, the same formula on the host);
        :meth:`centres_vox_xyz` returns it, or computes it.
    """
    count: object
    sum_w: object
    sum_w_xyz: object
    peak_value: object
    peak_index: object
    centre_vox: object = None          # the centres when a kernel wrote them with the sums

    def centres_vox_xyz(self):
        """Weighted centres of mass, (n, 3) voxel x y z (NaN where Σw = 0)."""
        if self.centre_vox is not None:
            return self.centre_vox
        return _weighted_centres(self.sum_w, self.sum_w_xyz, _be.namespace(self.sum_w).xp)


def _weighted_centres(sum_w, sum_w_xyz, xp):
    """Σw·x / Σw per row, NaN where Σw = 0 (what ``ptnp_label_finish`` writes)."""
    sw = sum_w[:, None]
    return xp.where(sw != 0, sum_w_xyz / xp.where(sw != 0, sw, 1.0), xp.nan)


def label_moments(labels, weights, peakmap, n_labels, *, background_row=False):
    """Count, Σw, Σw·(x, y, z), peak value and argmax of every label in one pass.

    Parameters
    ----------
    labels : (nz, ny, nx) integer array, NumPy or CuPy
        0 is background; labels above ``n_labels`` are ignored.
    weights : (nz, ny, nx) float32 or float64 array
        Weights of the centres of mass (the raw map). Also (pz, ny, nx) with nz a
        multiple of pz: plane z of the labels then reads plane z % pz (labels of
        several thresholds stacked along z share one copy of the weights).
    peakmap : array of the weights' shape
        Map whose per-label maximum is wanted (the denoised map); compared as
        float32, must be finite.
    n_labels : int
        Number of labels (e.g. from ``ndimage.label``); passing it avoids a
        device sync.
    background_row : bool
        Prepend a row for label 0 that holds nothing (count and sums 0, peak
        −inf at index −1): row i is then label i. On a device the kernel writes
        after that row, so it costs no extra launch.

    Returns
    -------
    LabelMoments
        Arrays on the backend of ``labels``, row i for label i + 1 (label i with
        ``background_row``).

    Raises
    ------
    ValueError
        Shape mismatch, unsupported dtype, or a volume with 2³² voxels or more.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((1, 2, 4), np.int32); lab[0, 0, 1:3] = 1; lab[0, 1, 3] = 2
    >>> w = np.ones(lab.shape, np.float32)
    >>> m = label_moments(lab, w, w * np.arange(8).reshape(lab.shape), 2)
    >>> m.count.tolist(), m.centres_vox_xyz().tolist(), m.peak_index.tolist()
    ([2, 1], [[1.5, 0.0, 0.0], [3.0, 1.0, 0.0]], [2, 7])
    """
    be = _be.namespace(labels, weights, peakmap)
    xp = be.xp
    lab = xp.asarray(labels)
    w = xp.asarray(weights)
    p = xp.asarray(peakmap)
    periodic = lab.ndim == w.ndim == 3 and (lab.shape[0] % w.shape[0] == 0 if w.shape[0] else lab.shape[0] == 0)
    if not periodic or p.shape != w.shape or w.shape[1:] != lab.shape[1:]:
        raise ValueError(f"labels, weights and peakmap must be 3D of one shape (or weights and peakmap "
                         f"of a number of planes that divides the labels'), got {lab.shape}, {w.shape}, "
                         f"{p.shape}")
    if lab.dtype.kind not in "iu":
        raise ValueError(f"labels: expected an integer array, got {lab.dtype}; "
                         "label the mask first (ndimage.label)")
    if lab.size >= 2 ** 32:
        raise ValueError(f"label_moments: volumes of 2**32 voxels or more are not supported "
                         f"(got {lab.size})")
    n_labels = int(n_labels)
    if n_labels < 0:
        raise ValueError(f"n_labels: expected >= 0, got {n_labels}")
    if w.dtype not in (np.float32, np.float64):
        w = w.astype(xp.float32)
    lab = xp.ascontiguousarray(lab)
    w = xp.ascontiguousarray(w)
    p = xp.ascontiguousarray(p.astype(xp.float32, copy=False))
    if not be.is_gpu:
        from .kernels.label_sums_cpu import label_moments_cpu
        count, sums, pv, pi = label_moments_cpu(lab, w, p, n_labels)
        if background_row:
            count, sums = np.concatenate([[0], count]), np.concatenate([np.zeros((1, 4)), sums])
            pv = np.concatenate([np.array([-np.inf], np.float32), pv])
            pi = np.concatenate([[-1], pi])
        return LabelMoments(count, sums[:, 0].copy(), sums[:, 1:].copy(), pv, pi,
                            _weighted_centres(sums[:, 0], sums[:, 1:], np))
    head = 1 if background_row else 0
    count_all = xp.zeros(head + n_labels, dtype=xp.uint64)
    sums_all = xp.zeros((head + n_labels, 4), dtype=xp.float64)
    key_all = xp.zeros(head + n_labels, dtype=xp.uint64)      # key 0 decodes as empty
    count, sums, key = count_all[head:], sums_all[head:], key_all[head:]   # contiguous views
    if n_labels and lab.size:
        nz, ny, nx = lab.shape
        run = 8
        n_threads = -(-nx // run) * ny * nz
        k = get_function("label_sums.cu", "ptnp_label_moments",
                         (("PTNP_LABEL_T", _c_type(lab.dtype, "labels")),
                          ("PTNP_WEIGHT_T", _c_type(w.dtype, "weights")),
                          ("PTNP_RUN", str(run))))
        k((-(-n_threads // 256),), (256,), (lab, w, p, np.int32(nx), np.int32(ny), np.int32(nz),
                                            np.int32(w.shape[0]), np.int64(n_labels), count, sums, key))
    m = head + n_labels
    out = (xp.empty(m, dtype=xp.int64), xp.empty(m, dtype=xp.float64), xp.empty((m, 3), dtype=xp.float64),
           xp.empty((m, 3), dtype=xp.float64), xp.empty(m, dtype=xp.float32), xp.empty(m, dtype=xp.int64))
    if m:
        k = get_function("label_sums.cu", "ptnp_label_finish")
        k(_grid(m), (256,), (count_all, sums_all, key_all, np.int64(m), *out))
    count_o, sw, sxyz, centre, pv, pi = out
    return LabelMoments(count_o, sw, sxyz, pv, pi, centre)


# --------------------------------------------------------------------------- connected components

# labelling launches: the count and numbering kernels give each block a tile of
# _CC_BLOCK * _CC_ITEMS consecutive voxels; flat indices are int32 in the kernels
_CC_BLOCK = 256
_CC_ITEMS = 16
_CC_MAX_VOXELS = 2 ** 31 - 1
_S26 = np.ones((3, 3, 3), dtype=bool)


def _cc_number(L, shape, defines, xp):
    """Merge, compress and number the forest ``L`` (flat int32, modified): the launches of
    ``label_cc.cu`` after its init. Returns labels (``shape``, int32) and their number as a
    (1,) int32 device array (read it with :func:`ptnp_gpu.backend.to_host`)."""
    n = int(L.shape[0])
    _, ny, nx = (int(s) for s in shape)
    tiles_n = -(-n // (_CC_BLOCK * _CC_ITEMS))
    if tiles_n == 0:
        return xp.zeros(shape, dtype=xp.int32), xp.zeros(1, dtype=xp.int32)
    fn = functools.partial(get_function, "label_cc.cu", defines=defines)
    fn("ptnp_cc_merge")(_grid(n, _CC_BLOCK), (_CC_BLOCK,), (L, np.int64(n), np.int32(ny), np.int32(nx)))
    tiles = xp.empty(tiles_n, dtype=xp.int32)
    fn("ptnp_cc_count")((tiles_n,), (_CC_BLOCK,), (L, np.int64(n), np.int32(_CC_ITEMS), tiles))
    ends = xp.cumsum(tiles, dtype=xp.int32)
    out = xp.empty(n, dtype=xp.int32)
    fn("ptnp_cc_number")((tiles_n,), (_CC_BLOCK,), (L, np.int64(n), np.int32(_CC_ITEMS), ends, out))
    fn("ptnp_cc_finish")(_grid(n, _CC_BLOCK), (_CC_BLOCK,), (L, np.int64(n), out))
    return out.reshape(shape), ends[-1:]


def _host_label(mask, be):
    """``ndimage.label`` with the 26-neighbourhood: (labels int32, (1,) count) on ``be``."""
    lab, n = be.ndi.label(mask, structure=_S26)
    return lab.astype(be.xp.int32, copy=False), be.xp.asarray(np.array([int(n)], dtype=np.int32))


def label_mask(mask):
    """26-connected components of a boolean volume, numbered as ``scipy.ndimage.label``.

    CuPy: union-find in ``kernels/label_cc.cu`` (five launches and a prefix sum
    of the tiles' root counts); NumPy: ``scipy.ndimage.label`` (structure all
    ones), which ``kernels/label_cc_cpu.py`` reproduces step by step for the tests.
    No host read: the number comes back as a device array.

    Parameters
    ----------
    mask : (nz, ny, nx) bool array, NumPy or CuPy

    Returns
    -------
    labels : (nz, ny, nx) int32, 0 for background, 1..n in raster order of each
        component's first voxel; n : (1,) int32 array on the mask's backend.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((1, 3, 5), bool); m[0, 0, 0] = m[0, 1, 1] = m[0, 2, 4] = True
    >>> lab, n = label_mask(m)
    >>> lab[0].tolist(), int(n[0])
    ([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 2]], 2)
    """
    be = _be.namespace(mask)
    xp = be.xp
    mask = xp.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask: expected a 3D (nz, ny, nx) array, got shape {tuple(mask.shape)}")
    mask = xp.ascontiguousarray(mask.astype(bool, copy=False))
    if not be.is_gpu or mask.size > _CC_MAX_VOXELS:
        return _host_label(mask, be)
    L = xp.empty(mask.size, dtype=xp.int32)
    defines = (("PTNP_MAP_T", "float"),)
    get_function("label_cc.cu", "ptnp_cc_init_mask", defines)(
        _grid(mask.size, _CC_BLOCK), (_CC_BLOCK,), (mask, np.int64(mask.size), L))
    return _cc_number(L, mask.shape, defines, xp)


def label_above(volume, thresholds, gap_planes: int = 1):
    """26-connected components of ``volume > t`` for several thresholds, stacked along z.

    The binary volume of threshold ``k`` fills planes ``k * (nz + gap_planes)``
    to ``k * (nz + gap_planes) + nz - 1`` of one stack of ``len(thresholds) *
    (nz + gap_planes)`` planes; the empty planes between them keep their
    components apart, so one labelling serves every threshold (labels count up
    through the stack, as ``scipy.ndimage.label`` numbers that stack). The
    comparison is made in the volume's type (thresholds rounded to it). CuPy:
    ``kernels/label_cc.cu`` thresholds while it starts the forest (no mask in
    memory); NumPy: the stacked mask and ``scipy.ndimage.label``. No host read.

    Parameters
    ----------
    volume : (nz, ny, nx) float array, NumPy or CuPy
    thresholds : sequence of float (host values)
    gap_planes : int
        Empty planes after each threshold's volume (>= 1 when there are several).

    Returns
    -------
    labels : (len(thresholds) * (nz + gap_planes), ny, nx) int32; n : (1,) int32 array on
        the volume's backend.

    Examples
    --------
    >>> import numpy as np
    >>> v = np.array([[[0.0, 2.0, 0.0, 1.0]]])
    >>> lab, n = label_above(v, [0.5, 1.5])
    >>> lab[:, 0].tolist(), int(n[0])
    ([[0, 1, 0, 2], [0, 0, 0, 0], [0, 3, 0, 0], [0, 0, 0, 0]], 3)
    """
    be = _be.namespace(volume)
    xp = be.xp
    vol = _volume(xp.asarray(volume), "volume", xp)
    t = np.asarray(thresholds, dtype=np.float64).ravel().astype(vol.dtype)
    gap = int(gap_planes)
    if gap < 0 or (len(t) > 1 and gap < 1):
        raise ValueError(f"gap_planes: expected >= 1 between {len(t)} thresholds (>= 0 for one), got {gap_planes!r}")
    nz, ny, nx = (int(s) for s in vol.shape)
    pz = nz + gap
    shape = (len(t) * pz, ny, nx)
    total = shape[0] * ny * nx
    if not be.is_gpu or total > _CC_MAX_VOXELS:
        mask = xp.zeros((len(t), pz, ny, nx), dtype=bool)
        xp.greater(vol[None], xp.asarray(t)[:, None, None, None], out=mask[:, :nz])
        return _host_label(mask.reshape(shape), be)
    L = xp.empty(total, dtype=xp.int32)
    defines = (("PTNP_MAP_T", _c_type(vol.dtype, "volume")),)
    get_function("label_cc.cu", "ptnp_cc_init_above", defines)(
        _grid(total, _CC_BLOCK), (_CC_BLOCK,),
        (vol, xp.asarray(t), np.int32(len(t)), np.int32(pz), np.int32(nz), np.int32(ny), np.int32(nx), L))
    return _cc_number(L, shape, defines, xp)


def occupancy_above(volume, threshold):
    """Which planes of ``volume > threshold`` hold a voxel, along z, y and x.

    CuPy: one pass of ``ptnp_occupancy_above`` (``kernels/label_cc.cu``), no
    mask in memory; NumPy: the mask's ``any`` over the other two axes. The
    comparison is made in the volume's type. No host read.

    Returns
    -------
    (nz + ny + nx,) int32 array of 0/1 on the volume's backend: the z profile,
    then y, then x.

    Examples
    --------
    >>> import numpy as np
    >>> v = np.zeros((2, 3, 4)); v[1, 2, 0] = 1.0
    >>> occupancy_above(v, 0.5).tolist()
    [0, 1, 0, 0, 1, 1, 0, 0, 0]
    """
    be = _be.namespace(volume)
    xp = be.xp
    vol = _volume(xp.asarray(volume), "volume", xp)
    nz, ny, nx = (int(s) for s in vol.shape)
    t = vol.dtype.type(threshold)
    if not be.is_gpu or vol.size > _CC_MAX_VOXELS:
        m = vol > t
        return xp.concatenate([m.any(axis=(1, 2)), m.any(axis=(0, 2)), m.any(axis=(0, 1))]).astype(xp.int32)
    prof = xp.zeros(nz + ny + nx, dtype=xp.int32)
    get_function("label_cc.cu", "ptnp_occupancy_above", (("PTNP_MAP_T", _c_type(vol.dtype, "volume")),))(
        _grid(vol.size, _CC_BLOCK), (_CC_BLOCK,), (vol, np.int32(nz), np.int32(ny), np.int32(nx), t, prof))
    return prof


# --------------------------------------------------------------------------- separable filters

def filter1d_pass(src, out, axis: int, weights, left: int, mode: int, cval: float = 0.0):
    """One pass of a separable filter along ``axis`` of a 3-D volume, into ``out``.

    ``out[i] = Σ_k weights[k] · src[i + (k − left) along axis]``, accumulated in
    float64 in ``k`` order without fused multiply-adds and rounded once to ``out``'s
    type (kernel and twin agree bit for bit; ``scipy.ndimage.correlate1d`` pairs
    symmetric taps first, so it agrees to rounding); samples beyond the axis by mode 0 reflect, 1 constant
    (``cval``), 2 nearest, 3 mirror, 4 wrap. CuPy: one launch of
    ``ptnp_filter1d`` (``kernels/filter1d.cu``); NumPy: its Numba twin. No host read.

    Parameters
    ----------
    src : (nz, ny, nx) float32/float64 array, C-contiguous
    out : array of ``src``'s shape, float32/float64, C-contiguous, not ``src``
    axis : 0, 1 or 2
    weights : (len,) float64 array on ``src``'s backend
    left : int
        Samples before the centre (``len // 2`` for a centred filter).
    """
    be = _be.namespace(src, out)
    if src.ndim != 3 or out.shape != src.shape:
        raise ValueError(f"filter1d_pass: 3-D src and out of one shape, got {tuple(src.shape)}, {tuple(out.shape)}")
    if not be.is_gpu:
        from .kernels.filter1d_cpu import filter1d_cpu
        return filter1d_cpu(src, out, axis, weights, left, mode, cval)
    nz, ny, nx = (int(s) for s in src.shape)
    defines = (("PTNP_IN_T", _c_type(src.dtype, "src")), ("PTNP_OUT_T", _c_type(out.dtype, "out")))
    get_function("filter1d.cu", "ptnp_filter1d", defines)(
        _grid(src.size, _BLOCK), (_BLOCK,),
        (src, out, np.int32(nz), np.int32(ny), np.int32(nx), np.int32(axis), weights,
         np.int32(weights.shape[0]), np.int32(left), np.int32(mode), np.float64(cval)))
    return out


# --------------------------------------------------------------------------- fused reductions

_SEG_SHARED = 4096          # PTNP_SEG_SHARED of reduce.cu: sums held in shared memory (32 KiB)
_SEG_SHARED_BLOCKS = 512    # blocks of the shared-memory variant (each adds its K * n sums to out once)


def segment_sum_columns(index, values, n: int):
    """Per-segment sums of K columns at once: ``out[c, s] = Σ values[c, index == s]``.

    One launch of ``ptnp_segment_sum`` (float64 atomics, no host read) on CuPy
    arrays, or of ``ptnp_segment_sum_shared`` when K × n ≤ 4096 (per-block sums in shared
    memory, added to the output once per block); the Numba twin (bincount's order, bincount's numbers) on NumPy arrays.
    Indices outside ``[0, n)`` are skipped.

    Parameters
    ----------
    index : (P,) int32 or int64 array
    values : (K, P) float64 array, same backend
    n : int
        Number of segments.

    Returns
    -------
    (K, n) float64 array on the inputs' backend.

    Examples
    --------
    >>> import numpy as np
    >>> segment_sum_columns(np.array([0, 2, 0]), np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]), 3).tolist()
    [[4.0, 0.0, 2.0], [2.0, 0.0, 1.0]]
    """
    be = _be.namespace(index, values)
    xp = be.xp
    index = xp.asarray(index)
    if index.dtype not in (xp.int32, xp.int64):
        index = index.astype(xp.int64)
    values = xp.ascontiguousarray(xp.asarray(values, dtype=xp.float64))
    if values.ndim != 2 or values.shape[1] != index.shape[0]:
        raise ValueError(f"segment_sum_columns: values must be (K, {index.shape[0]}), got {tuple(values.shape)}")
    index = xp.ascontiguousarray(index)
    if not be.is_gpu:
        from .kernels.reduce_cpu import segment_sum
        return segment_sum(index, values, int(n))
    k, p = values.shape
    out = xp.zeros((k, int(n)), dtype=xp.float64)
    if k * p and n:
        it = (("PTNP_INDEX_T", _c_type(index.dtype, "index")),)
        if k * int(n) <= _SEG_SHARED:
            # few sums (a radial profile): per-block copies in shared memory, then one add each
            f = get_function("reduce.cu", "ptnp_segment_sum_shared", it)
            f(_grid(p, cap=_SEG_SHARED_BLOCKS), (256,), (index, values, np.int64(p), np.int32(k), np.int64(n), out))
        else:
            f = get_function("reduce.cu", "ptnp_segment_sum", it)
            f(_grid(k * p, cap=1 << 16), (256,),
              (index, values, np.int64(p), np.int32(k), np.int64(n), out))
    return out


def shifted_moments(data, shift):
    """Σ(x − shift) and Σ(x − shift)² in float64 over an array of up to three dimensions.

    One launch of ``ptnp_shifted_moments`` on CuPy arrays (any element strides:
    a crop is read in place; ``shift`` stays on the device, no host read); the
    Numba twin on NumPy arrays. Other arrays are copied to contiguous first.

    Parameters
    ----------
    data : float32 or float64 array, NumPy or CuPy
    shift : 0-d or one-element float array on the same backend (or a float)

    Returns
    -------
    (2,) float64 array on the data's backend.

    Examples
    --------
    >>> import numpy as np
    >>> shifted_moments(np.array([[1.0, 2.0, 3.0]]), 2.0).tolist()
    [0.0, 2.0]
    """
    be = _be.namespace(data)
    xp = be.xp
    if data.ndim > 3:
        data = xp.ascontiguousarray(data).reshape(-1)
    data3 = data.reshape((1,) * (3 - data.ndim) + tuple(data.shape))
    if data3.dtype not in (xp.float32, xp.float64) or any(st < 0 or st % data3.itemsize
                                                          for st in data3.strides):
        data3 = xp.ascontiguousarray(data3, dtype=xp.float64)
    if not be.is_gpu:
        from .kernels.reduce_cpu import shifted_moments as twin
        return twin(data3, shift)
    n = int(data3.size)
    if isinstance(shift, xp.ndarray):
        out = xp.zeros(2, dtype=xp.float64)
        sh = shift.astype(xp.float64, copy=False).reshape(-1)
    else:
        # a host number: set on the device, beside the sums in one buffer (one memset; a
        # host-to-device copy could wait for the queue)
        buf = xp.zeros(3, dtype=xp.float64)
        value = float(np.asarray(shift).reshape(-1)[0])
        if value != 0.0:
            buf[2] = value
        out, sh = buf[:2], buf[2:]
    if n:
        st = [np.int64(s // data3.itemsize) for s in data3.strides]
        f = get_function("reduce.cu", "ptnp_shifted_moments", (("PTNP_MAP_T", _c_type(data3.dtype, "data")),))
        f(_grid(n, cap=2048), (256,),
          (data3, *(np.int64(v) for v in data3.shape), *st, sh, out))
    return out


def array_mean(data, dtype=None):
    """``data.mean(dtype=dtype)`` as a 0-d array on the data's backend, no host read.

    NumPy: exactly ``data.mean(dtype=dtype)``. CuPy: Σx in float64 by one launch of
    ``ptnp_shifted_moments`` over the whole grid (any strides, so a crop is read in place),
    divided by the count and cast as NumPy would type the mean (``dtype``, else float64 for
    integer and bool data, else the data's type). CuPy's own full-array mean ran as one
    thread block (H200, 256³: 3 ms a call, 30 ms of a warm analyze's 80 ms on the device).
    """
    be = _be.namespace(data)
    xp = be.xp
    if not be.is_gpu:
        return xp.asarray(data.mean(dtype=dtype))
    out = np.dtype(dtype) if dtype is not None else (
        np.dtype(np.float64) if data.dtype.kind in "biu" else data.dtype)
    return (shifted_moments(data, 0.0)[0] / max(int(data.size), 1)).astype(out, copy=False)


def array_var(data):
    """``data.var()`` (population) as a 0-d array on the data's backend, no host read.

    NumPy: exactly ``data.var()``. CuPy: one launch of ``ptnp_shifted_moments`` shifted by the
    data's first element (float64 sums; the shift keeps Σ(x − c)² from cancelling), typed as
    NumPy types the variance; CuPy's own ran in one thread block."""
    be = _be.namespace(data)
    xp = be.xp
    if not be.is_gpu:
        return xp.asarray(data.var())
    if data.size == 0:
        return data.var()
    n = int(data.size)
    m = shifted_moments(data, data[(0,) * data.ndim])
    d = m[0] / n
    out = np.dtype(np.float64) if data.dtype.kind in "biu" else data.dtype
    return xp.maximum(m[1] / n - d * d, 0.0).astype(out, copy=False)


def pair_affine_sums(xyz, u, pair_a, pair_b, w, n: int):
    """Per-atom sums of the local affine (strain) fit over neighbour pairs.

    For every pair (a, b) with weight w, dx = x_b − x_a and du = u_b − u_a: the 18
    products (w·dx_p)·dx_q (rows 3p + q) and (w·du_p)·dx_q (rows 9 + 3p + q), added to
    both atoms. One launch of ``ptnp_pair_affine_sums`` (float64 atomics) on CuPy arrays;
    the array code (``kernels/reduce_cpu.py``: a product table and one bincount per row) on
    NumPy arrays.

    Parameters
    ----------
    xyz, u : (n, 3) float64 arrays
        Reference positions and displacements (Å).
    pair_a, pair_b : (P,) int64 arrays
    w : (P,) float64 weights
    n : int

    Returns
    -------
    (18, n) float64 array on the inputs' backend.
    """
    be = _be.namespace(xyz, u, pair_a, pair_b, w)
    xp = be.xp
    if not be.is_gpu:
        from .kernels.reduce_cpu import pair_affine_sums as twin
        return twin(xyz, u, pair_a, pair_b, w, n)
    out = xp.zeros((18, int(n)), dtype=xp.float64)
    n_pairs = int(pair_a.shape[0])
    if n_pairs and n:
        f = get_function("reduce.cu", "ptnp_pair_affine_sums")
        f(_grid(n_pairs, cap=1 << 16), (256,),
          (xp.ascontiguousarray(xyz, dtype=xp.float64), xp.ascontiguousarray(u, dtype=xp.float64),
           xp.ascontiguousarray(pair_a, dtype=xp.int64), xp.ascontiguousarray(pair_b, dtype=xp.int64),
           xp.ascontiguousarray(w, dtype=xp.float64), np.int64(n_pairs), np.int64(n), out))
    return out


def radial_fit_sums(pair_i, pair_j, w, r, ur, n: int):
    """The local radial-strain regression's spread sums over directed pairs (i, j, w): with
    R̄_i, ū_i the weighted means of R_j and u_j, (2, n) float64 Σ(w·dR)·dR and
    Σ(w·dR)·(u_j − ū_i), dR = R_j − R̄_i. Two launches (``ptnp_radial_fit_means``,
    ``ptnp_radial_fit_spread``) on CuPy arrays; the array code (bincounts) on NumPy arrays."""
    be = _be.namespace(pair_i, pair_j, w, r, ur)
    xp = be.xp
    if not be.is_gpu:
        from .kernels.reduce_cpu import radial_fit_sums as twin
        return twin(pair_i, pair_j, w, r, ur, n)
    n = int(n)
    s = xp.zeros((3, n), dtype=xp.float64)
    t = xp.zeros((2, n), dtype=xp.float64)
    n_pairs = int(pair_i.shape[0])
    if n_pairs and n:
        args = [xp.ascontiguousarray(v, dtype=dt) for v, dt in
                ((pair_i, xp.int64), (pair_j, xp.int64), (w, xp.float64), (r, xp.float64), (ur, xp.float64))]
        grid = _grid(n_pairs, cap=1 << 16)
        get_function("reduce.cu", "ptnp_radial_fit_means")(grid, (256,), (*args, np.int64(n_pairs), np.int64(n), s))
        get_function("reduce.cu", "ptnp_radial_fit_spread")(grid, (256,),
                                                             (*args, s, np.int64(n_pairs), np.int64(n), t))
    return t


# --------------------------------------------------------------------------- peak thinning

def thin_peaks(pair_i, pair_j, values, n: int, group=None, max_rounds: int = 100):
    """Non-maximum suppression of ``n`` peaks over their close pairs.

    A peak is kept when no kept peak it pairs with (of the same ``group``, when
    groups are given) is higher; ties go to the lower index. The fixed point is
    found in rounds, each from the previous round's kept set (at most
    ``max_rounds``). One launch of ``ptnp_thin_peaks`` (one block, every round
    inside, no host read) on CuPy arrays; its Numba twin on NumPy arrays.

    Parameters
    ----------
    pair_i, pair_j : (P,) int64 arrays
        Pairs of peaks closer than the separation (e.g. from :func:`cell_pairs`).
    values : (n,) float array
        Peak heights.
    n : int
    group : (n,) int array, optional
        Pairs of different groups do not suppress each other.
    max_rounds : int

    Returns
    -------
    (n,) bool array on the inputs' backend.

    Examples
    --------
    >>> import numpy as np
    >>> thin_peaks(np.array([0, 1]), np.array([1, 2]), np.array([3.0, 2.0, 1.0]), 3).tolist()
    [True, False, True]
    """
    be = _be.namespace(pair_i, pair_j, values)
    xp = be.xp
    if not be.is_gpu:
        from .kernels.thin_peaks_cpu import thin_peaks as twin
        return twin(pair_i, pair_j, values, n, group, max_rounds)
    n = int(n)
    kept = xp.empty(n, dtype=xp.uint8)
    if n == 0:
        return kept.view(xp.bool_)
    sup = xp.empty(n, dtype=xp.uint8)
    pi = xp.ascontiguousarray(pair_i, dtype=xp.int64)
    pj = xp.ascontiguousarray(pair_j, dtype=xp.int64)
    v = xp.ascontiguousarray(values, dtype=xp.float64)
    g = pi[:1] if group is None else xp.ascontiguousarray(group, dtype=xp.int64)
    f = get_function("thin_peaks.cu", "ptnp_thin_peaks")
    f((1,), (1024,), (pi, pj, np.int64(pi.shape[0]), v, g, np.int32(group is not None), np.int64(n),
                      np.int32(max_rounds), kept, sup))
    return kept.view(xp.bool_)


# --------------------------------------------------------------------------- Fourier grids

def atom_filter(F, fz, fy, fx, term_a, term_m, band_lo: float, band_scale: float, highpass=None,
                white=None):
    """Build one atom's denoising filter on an rfft grid and apply it, in one pass.

    For every coefficient of ``F`` (complex64, rfft of shape (len(fz), len(fy),
    len(fx))) with |s|² = (fz² + fy²) + fx² (1/Å², float32): the atom's transform
    K = Σ a_i·exp(m_i·|s|²), a cosine band taper b = ½(1 + cos(π·clip((|s| − lo)·scale,
    0, 1))) times an optional high-pass rise (``highpass`` = (lo, scale)), then
    F ← F·b (·gain(|s|) when ``white`` = (s table, gain table) is given: NumPy's
    interp) and K ← K·b, both zero at DC. One launch of ``ptnp_atom_filter`` on
    CuPy arrays (F in place; the array code took ~45 launches and three rfft-sized
    temporaries), the array code (``kernels/fourier_cpu.py``) on NumPy arrays; the
    same float32 operations in the same order.

    Parameters
    ----------
    F : (nz, ny, nx) complex64 array, modified in place
    fz, fy, fx : 1-D float32 frequencies (1/Å) along z, y and the half axis x (host arrays)
    term_a, term_m : the Gaussian terms' weights and exponent factors −2π²·var (host)
    band_lo, band_scale : the band taper's start (1/Å) and 1 / its width
    highpass : (lo, scale) or None
    white : (s table, gain table) 1-D host arrays or None

    Returns
    -------
    K : (nz, ny, nx) float32 array on F's backend.
    """
    be = _be.namespace(F)
    xp = be.xp
    if not be.is_gpu:
        from .kernels.fourier_cpu import atom_filter as twin
        return twin(F, *(np.asarray(f, np.float32) for f in (fz, fy, fx)), term_a, term_m, band_lo, band_scale,
                    highpass, white)
    if F.dtype != xp.complex64 or not F.flags.c_contiguous:
        raise ValueError("atom_filter: F must be a C-contiguous complex64 array")
    nz, ny, nx = F.shape
    if (len(fz), len(fy), len(fx)) != (nz, ny, nx):
        raise ValueError(f"atom_filter: frequencies of lengths {(len(fz), len(fy), len(fx))} for F of shape {F.shape}")
    K = xp.empty(F.shape, dtype=xp.float32)
    nt = len(term_a)
    nw = 0 if white is None else len(white[0])
    parts = [fz, fy, fx, term_a, term_m] + ([white[0], white[1]] if white is not None else [])
    tab = xp.asarray(np.concatenate([np.asarray(v, np.float32).ravel() for v in parts]))   # one upload
    cuts = np.cumsum([0, nz, ny, nx, nt, nt, nw, nw])
    fz_d, fy_d, fx_d, a_d, m_d, ws_d, wg_d = (tab[cuts[k]:cuts[k + 1]] for k in range(7))
    hp_lo, hp_scale = (0.0, 0.0) if highpass is None else highpass
    f = get_function("fourier.cu", "ptnp_atom_filter")
    n = int(F.size)
    f(_grid(n, cap=1 << 16), (256,),
      (F.view(xp.float32), K, fz_d, fy_d, fx_d, np.int32(nz), np.int32(ny), np.int32(nx),
       a_d, m_d, np.int32(nt), np.float32(band_lo), np.float32(band_scale),
       np.int32(highpass is not None), np.float32(hp_lo), np.float32(hp_scale), ws_d, wg_d, np.int32(nw)))
    return K


def rfft_shell_index(fz, fy, fx, ds: float, top: int):
    """Radial shell of every rfft coefficient: min(int(|s| / ds), ``top``) (int64, shape
    (len(fz), len(fy), len(fx))), |s| and the division in float32. ``fz``, ``fy``, ``fx``:
    float32 frequencies (1/Å) on the backend wanted. One launch of ``ptnp_rfft_shells`` on
    CuPy; the array code on NumPy."""
    be = _be.namespace(fz, fy, fx)
    xp = be.xp
    if not be.is_gpu:
        from .kernels.fourier_cpu import rfft_shells
        return rfft_shells(fz, fy, fx, ds, top)
    shell = xp.empty((len(fz), len(fy), len(fx)), dtype=xp.int64)
    f = get_function("fourier.cu", "ptnp_rfft_shells")
    n = int(shell.size)
    f(_grid(n, cap=1 << 16), (256,),
      (*(xp.ascontiguousarray(f, dtype=xp.float32) for f in (fz, fy, fx)),
       np.int32(len(fz)), np.int32(len(fy)), np.int32(len(fx)),
       np.float32(ds), np.int64(top), shell))
    return shell


# --------------------------------------------------------------------------- local maxima

def local_maxima(volume, mask=None):
    """Voxels no larger neighbour of their 3×3×3 neighbourhood exceeds, in one pass.

    ``vol == maximum_filter(vol, size=3)`` (mode ``"nearest"``, or ``"constant"``
    with cval −inf: out-of-bounds neighbours never count) without its three
    filter passes and full-size temporaries; inside ``mask`` only when one is
    given. NaN voxels are never maxima; NaN neighbours are ignored. One kernel
    launch (``kernels/local_max.cu``) on CuPy arrays, its Numba twin on NumPy
    arrays; no host read.

    Parameters
    ----------
    volume : (nz, ny, nx) float array, NumPy or CuPy
        float32 or float64 (other types are compared as float32).
    mask : (nz, ny, nx) bool array, optional
        Where maxima may lie (e.g. the voxels of labelled components).

    Returns
    -------
    (nz, ny, nx) bool array on the volume's backend.

    Examples
    --------
    >>> import numpy as np
    >>> v = np.zeros((1, 3, 4), np.float32); v[0, 1, 1] = 2; v[0, 1, 3] = 1
    >>> np.argwhere(local_maxima(v)).tolist()
    [[0, 1, 1], [0, 1, 3]]
    >>> np.argwhere(local_maxima(v, mask=v < 2)).tolist()
    [[0, 1, 3]]
    """
    be = _be.namespace(volume) if mask is None else _be.namespace(volume, mask)
    xp = be.xp
    vol = _volume(xp.asarray(volume), "volume", xp)
    if mask is not None:
        mask = xp.asarray(mask)
        if mask.shape != vol.shape:
            raise ValueError(f"mask: expected the volume's shape {tuple(vol.shape)}, got {tuple(mask.shape)}")
        mask = xp.ascontiguousarray(mask.astype(bool, copy=False))
    if not be.is_gpu:
        from .kernels.local_max_cpu import local_max_cpu
        return local_max_cpu(vol, mask)
    out = xp.empty(vol.shape, dtype=bool)
    if vol.size:
        nz, ny, nx = vol.shape
        k = get_function("local_max.cu", "ptnp_local_max", (("PTNP_MAP_T", _c_type(vol.dtype, "volume")),))
        k(_grid(vol.size, cap=1 << 20), (256,),
          (vol, out if mask is None else mask, np.int32(nx), np.int32(ny), np.int32(nz),
           np.int32(mask is not None), out))
    return out


# --------------------------------------------------------------------------- pairs

# buckets of the hashed cell list: the next power of two >= _BUCKETS_PER_POINT * n (at least
# _MIN_BUCKETS); the cell edge: the cutoff widened by _EDGE_MARGIN (relative), so that two points
# within the cutoff never lie two cells apart through the rounding of x / edge, and at least
# _MIN_EDGE (a zero cutoff finds coincident points, which share every cell)
_BUCKETS_PER_POINT = 2
_MIN_BUCKETS = 64
_EDGE_MARGIN = 2.0 ** -30
_MIN_EDGE = 1e-6


def _cell_pairs_pass(xyz, cell, order, start, hmask, r2, counts, ends=None, out=()):
    """One pass of ``cell_pairs.cu`` (or its Numba twin): without ``ends``, each point's
    partners counted into ``counts`` (``ptnp_cell_pairs_count``); else the pairs written into
    ``out`` = (i, j, d2) from ``ends - counts`` (``ptnp_cell_pairs_write``); ``counts`` has
    one entry per point and neighbour cell (27 n; the twin also takes one per point, n)."""
    if not _be.namespace(xyz).is_gpu:
        from .kernels.cell_pairs_cpu import cell_pairs_pass
        return cell_pairs_pass(xyz, cell, order, start, hmask, r2, counts, ends=ends, out=out)
    n = int(xyz.shape[0])
    name, tail = (("ptnp_cell_pairs_count", (counts,)) if ends is None
                  else ("ptnp_cell_pairs_write", (counts, ends, *out)))
    k = get_function("cell_pairs.cu", name)
    k(_grid(27 * n, _BLOCK), (_BLOCK,),
      (xyz, cell, order, start, np.int64(n), np.uint64(hmask), np.float64(r2), *tail))


def _cell_edge(r_A: float) -> float:
    """The cell edge for the cutoff ``r_A``: a little wider (see ``_EDGE_MARGIN``)."""
    return max(float(r_A) * (1.0 + _EDGE_MARGIN), _MIN_EDGE)


def _cell_list(xyz, r_A: float):
    """The hashed cell list of ``cell_pairs``: (cell (N, 3) int64, order (N,), start
    (buckets + 1,), hmask = buckets - 1). Cells have the edge :func:`_cell_edge` and are
    counted from the origin; points are sorted by (bucket, index), unique keys, so every
    backend's sort gives the same order. No host read: nothing about the points sizes it."""
    xp = _be.namespace(xyz).xp
    n = int(xyz.shape[0])
    buckets = max(_MIN_BUCKETS, 1 << (_BUCKETS_PER_POINT * n - 1).bit_length())   # a power of two >= 2n
    hmask = buckets - 1
    cell, key = _cell_keys(xyz, _cell_edge(r_A), hmask)
    order = xp.argsort(key)
    return cell, order, _bucket_starts(key, order, buckets), hmask


def _bucket_starts(key, order, buckets: int):
    """start[b] = the first sorted place whose bucket (key // n) is >= b, b = 0..buckets: one
    launch of ``ptnp_bucket_starts`` on CuPy; a search of the sorted buckets on NumPy."""
    be = _be.namespace(key, order)
    xp = be.xp
    n = int(key.shape[0])
    if not be.is_gpu:
        return xp.searchsorted(key[order] // n, xp.arange(buckets + 1, dtype=xp.int64))
    start = xp.empty(buckets + 1, dtype=xp.int64)
    k = get_function("cell_pairs.cu", "ptnp_bucket_starts")
    k(_grid(n + 1, _BLOCK), (_BLOCK,), (key, order, np.int64(n), np.int64(buckets), start))
    return start


def _cell_keys(xyz, edge, hmask):
    """Each point's cell (n, 3) int64 and sort key bucket * n + i (n,) int64: one launch of
    ``ptnp_cell_keys`` (its Numba twin on the host)."""
    if not _be.namespace(xyz).is_gpu:
        from .kernels.cell_pairs_cpu import cell_keys
        return cell_keys(xyz, edge, hmask)
    xp = _be.namespace(xyz).xp
    n = int(xyz.shape[0])
    cell = xp.empty((n, 3), dtype=xp.int64)
    key = xp.empty(n, dtype=xp.int64)
    k = get_function("cell_pairs.cu", "ptnp_cell_keys")
    k(_grid(n, _BLOCK), (_BLOCK,),
      (xyz, np.int64(n), np.float64(edge), np.uint64(hmask), cell, key))
    return cell, key


def _points(xyz_A, r_A, what):
    """(backend, xp, contiguous (N, 3) float64 points, N, cutoff) of a pair search's arguments."""
    be = _be.namespace(xyz_A)
    xp = be.xp
    xyz = xp.ascontiguousarray(xp.asarray(xyz_A, dtype=xp.float64).reshape(-1, 3))
    r = float(r_A)
    if not r >= 0:
        raise ValueError(f"{what}: the cutoff must be >= 0, got {r_A!r}")
    return be, xp, xyz, int(xyz.shape[0]), r


def pair_table_sums(xyz_A, r_A: float, table_x, table_y):
    """Per point, the sum over its partners ``j > i`` within ``r_A`` of a tabulated function of
    the squared distance: ``out[i] = Σ_j np.interp(|x_i − x_j|², table_x, table_y)``.

    The pairs of :func:`cell_pairs` (the same cell list and cutoff rule) without listing them:
    one launch of ``ptnp_cell_pair_table_sums`` (one thread per point and neighbour cell, the
    interpolation NumPy's, each thread's sum added with a float64 atomic) after the cell
    list, and no host read; on NumPy arrays its Numba twin (each point's cells in order).
    Non-finite coordinates are not checked (the caller's points are finite).

    Parameters
    ----------
    xyz_A : (N, 3) float array, NumPy or CuPy
    r_A : float
        Cutoff, >= 0.
    table_x, table_y : (M,) float64 arrays on the points' backend, ``table_x`` strictly increasing

    Returns
    -------
    (N,) float64 array on the points' backend.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[0.0, 0, 0], [1.0, 0, 0], [5.0, 0, 0]])
    >>> pair_table_sums(x, 1.5, np.array([0.0, 4.0]), np.array([2.0, 0.0])).tolist()
    [1.5, 0.0, 0.0]
    """
    be, xp, xyz, n, r = _points(xyz_A, r_A, "pair_table_sums")
    acc = xp.zeros(n, dtype=xp.float64)
    if n < 2:
        return acc
    cell, order, start, hmask = _cell_list(xyz, r)
    _pair_table_pass(xyz, cell, order, start, hmask, r * r, table_x, table_y, acc)
    return acc


def _pair_table_pass(xyz, cell, order, start, hmask, r2, table_x, table_y, acc):
    """``ptnp_cell_pair_table_sums`` into ``acc`` (zeroed), or its Numba twin on NumPy arrays."""
    if not _be.namespace(xyz).is_gpu:
        from .kernels.cell_pairs_cpu import pair_table_sums as twin
        return twin(xyz, cell, order, start, hmask, r2, table_x, table_y, acc)
    n = int(xyz.shape[0])
    get_function("cell_pairs.cu", "ptnp_cell_pair_table_sums")(
        _grid(27 * n, _BLOCK), (_BLOCK,),
        (xyz, cell, order, start, np.int64(n), np.uint64(hmask), np.float64(r2), table_x, table_y,
         np.int32(table_x.shape[0]), acc))
    return acc


def cell_pairs(xyz_A, r_A: float):
    """All pairs ``i < j`` of points with ``|x_i - x_j| <= r_A``, from a cell list.

    The points are binned into cells of edge ``r_A`` (a hair wider) counted
    from the origin, the cells hashed into about two buckets per point, and
    the points sorted by bucket; one kernel pass counts each point's partners
    in the 27 cells around it, a prefix sum places them, a second pass writes
    them (``kernels/cell_pairs.cu``; the Numba twin on the host). Memory is the
    points, the buckets and the pairs, for any spread of the points. One host
    read: the number of pairs (sizes the output; it also flags non-finite
    coordinates).

    Parameters
    ----------
    xyz_A : (N, 3) float array, NumPy or CuPy
    r_A : float
        Cutoff (Å, or the points' unit), >= 0.

    Returns
    -------
    i, j : (P,) int64, d2 : (P,) float64 squared distances, on the points' backend; ordered
        by ``i``, then by cell and index: the same on every backend, launch shape and bucket
        count.

    Examples
    --------
    >>> import numpy as np
    >>> i, j, d2 = cell_pairs(np.array([[0.0, 0, 0], [1.0, 0, 0], [5.0, 0, 0]]), 1.5)
    >>> i.tolist(), j.tolist(), d2.tolist()
    ([0], [1], [1.0])
    """
    be, xp, xyz, n, r = _points(xyz_A, r_A, "cell_pairs")
    if n < 2:
        e = xp.zeros(0, dtype=xp.int64)
        return e, e.copy(), xp.zeros(0)
    cell, order, start, hmask = _cell_list(xyz, r)
    # per point and neighbour cell on a GPU (27 short scans a point); per point on the host
    counts = xp.empty((27 if be.is_gpu else 1) * n, dtype=xp.int64)
    _cell_pairs_pass(xyz, cell, order, start, hmask, r * r, counts)
    ends = xp.cumsum(counts)
    total = int(_be.to_host(ends[-1:])[0])                                      # the one host read
    if total < 0:                                # a point's count is CELL_BAD: a non-finite coordinate
        raise ValueError("cell_pairs: non-finite coordinates")
    out_i = xp.empty(total, dtype=xp.int64)
    out_j = xp.empty(total, dtype=xp.int64)
    out_d2 = xp.empty(total, dtype=xp.float64)
    if total:
        _cell_pairs_pass(xyz, cell, order, start, hmask, r * r, counts, ends=ends, out=(out_i, out_j, out_d2))
    return out_i, out_j, out_d2
