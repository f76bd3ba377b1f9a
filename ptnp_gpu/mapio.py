"""Density maps: MRC reading and writing through mrcfile, with the map's frame.

Arrays are indexed ``[z, y, x]`` (x fastest). Positions are Å in the map's own
frame, as ChimeraX places it: voxel ``(i, j, k)`` (0-based, i along x) lies at
``origin + (i, j, k) * voxel_size``. The origin is the header origin, or
``nstart * voxel_size`` when the header origin is zero; the axis order fields
(mapc, mapr, maps) are honoured.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["DensityMap", "read_map", "write_map", "apply_mask"]


@dataclass
class DensityMap:
    """A 3D map with its frame.

    Attributes
    ----------
    data : (nz, ny, nx) array, float32
    voxel_size_A : (3,) float array, Å per voxel along x, y, z
    origin_A : (3,) float array, Å position of voxel (0, 0, 0) as x, y, z
    """
    data: np.ndarray
    voxel_size_A: np.ndarray
    origin_A: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self):
        self.voxel_size_A = np.broadcast_to(np.asarray(self.voxel_size_A, dtype=np.float64), (3,)).copy()
        self.origin_A = np.broadcast_to(np.asarray(self.origin_A, dtype=np.float64), (3,)).copy()

    @property
    def shape(self):
        return tuple(self.data.shape)

    def voxel_to_xyz_A(self, vox_xyz):
        """(N, 3) voxel coordinates (x, y, z order, may be fractional) → Å."""
        return self.origin_A + np.asarray(vox_xyz, dtype=np.float64) * self.voxel_size_A

    def xyz_A_to_voxel(self, xyz_A):
        """(N, 3) Å positions → voxel coordinates in x, y, z order."""
        return (np.asarray(xyz_A, dtype=np.float64) - self.origin_A) / self.voxel_size_A


def _check_voxel_size(vs) -> np.ndarray:
    vs = np.broadcast_to(np.asarray(vs, dtype=np.float64), (3,)).copy()
    if not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise InputError(f"voxel size must be positive and finite, got {tuple(np.round(vs, 6))} Å; "
                         "pass --voxel-size to set it")
    return vs


def read_map(path, voxel_size_A=None) -> DensityMap:
    """Read an MRC map into a :class:`DensityMap`.

    Parameters
    ----------
    path : str or Path
    voxel_size_A : float or (3,) floats, optional
        Overrides the header's voxel size (Å).

    Raises
    ------
    InputError
        Missing, unreadable, truncated, non-3D or non-finite maps, bad voxel size.
    """
    import mrcfile
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=False) as m:
                data = np.asarray(m.data)
                h = m.header
                hdr_vs = np.array([float(m.voxel_size.x), float(m.voxel_size.y), float(m.voxel_size.z)])
                origin = np.array([float(h.origin.x), float(h.origin.y), float(h.origin.z)])
                nstart = np.array([int(h.nxstart), int(h.nystart), int(h.nzstart)], dtype=np.float64)
                axes = (int(h.mapc), int(h.mapr), int(h.maps))
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - mrcfile raises ValueError/OSError/...
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a readable MRC map ({msg})") from None
    if data is None or data.ndim != 3 or min(data.shape) < 2:
        shape = None if data is None else data.shape
        raise InputError(f"{path}: expected a 3D map, got data of shape {shape}")
    if sorted(axes) != [1, 2, 3]:
        raise InputError(f"{path}: invalid axis order (mapc, mapr, maps) = {axes}; should be a permutation of 1, 2, 3")
    # file data is [section, row, column] = axes (maps, mapr, mapc); make it [z, y, x]
    file_axes = (axes[2], axes[1], axes[0])          # axis label of each data dimension
    order = [file_axes.index(lbl) for lbl in (3, 2, 1)]
    data = np.ascontiguousarray(np.transpose(data, order), dtype=np.float32)
    # nstart is stored per column/row/section; map to x, y, z
    ns_xyz = np.zeros(3)
    for pos, lbl in enumerate(axes):
        ns_xyz[lbl - 1] = nstart[pos]
    if not np.all(np.isfinite(data)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise InputError(f"{path}: map holds {bad} NaN or infinite voxels")
    vs = _check_voxel_size(hdr_vs if voxel_size_A is None else voxel_size_A)
    if not np.all(np.isfinite(origin)):
        origin = np.zeros(3)
    if np.all(origin == 0):
        origin = ns_xyz * vs
    return DensityMap(data, vs, origin)


def apply_mask(dmap: DensityMap, mask) -> DensityMap:
    """The map with a solvent mask applied, as the map's own level outside it.

    Each voxel becomes ``level + (data − level) · mask``: 1 keeps it, 0 sets it to the
    level, values between taper. The level is the median of the map where the mask is 0
    (where it is below 0.5 if it never reaches 0), so a map with an offset keeps it and
    no step is cut at the mask's edge. Use it to keep a support film, a graphene sheet or a
    neighbouring particle out of the detection.

    Parameters
    ----------
    dmap : DensityMap
    mask : (nz, ny, nx) array or DensityMap, values in [0, 1] (a binary mask or a soft one)

    Raises
    ------
    InputError
        Shape or voxel size differing from the map's, non-finite values or values outside
        [0, 1], or a mask that keeps nothing.

    Examples
    --------
    >>> m = DensityMap(np.full((4, 4, 4), 5.0, np.float32), 0.5)
    >>> m.data[1, 1, 1] = 9.0
    >>> k = np.zeros((4, 4, 4)); k[1:3, 1:3, 1:3] = 1.0
    >>> out = apply_mask(m, k)
    >>> float(out.data[1, 1, 1]), float(out.data[0, 0, 0])
    (9.0, 5.0)
    """
    if isinstance(mask, DensityMap):
        if not np.allclose(mask.voxel_size_A, dmap.voxel_size_A, rtol=1e-3):
            raise InputError(f"the mask's voxel size {mask.voxel_size_A.tolist()} Å differs from the map's "
                             f"{dmap.voxel_size_A.tolist()} Å")
        mask = mask.data
    mask = np.asarray(mask, dtype=np.float32)
    if mask.shape != dmap.shape:
        raise InputError(f"the mask's shape {mask.shape} differs from the map's {dmap.shape} (z, y, x)")
    if not np.all(np.isfinite(mask)) or mask.min() < -1e-6 or mask.max() > 1.0 + 1e-6:
        raise InputError("the mask must hold values from 0 (solvent) to 1 (particle), finite")
    if not mask.max() > 0:
        raise InputError("the mask keeps no voxel (all zero)")
    mask = np.clip(mask, 0.0, 1.0)
    data = np.asarray(dmap.data, dtype=np.float32)
    outside = mask == 0.0
    if not outside.any():
        outside = mask < 0.5
    level = np.float32(np.median(data[outside])) if outside.any() else np.float32(np.median(data))
    return DensityMap((level + (data - level) * mask).astype(np.float32), dmap.voxel_size_A, dmap.origin_A)


def write_map(path, data, voxel_size_A, origin_A=(0.0, 0.0, 0.0), overwrite: bool = True) -> Path:
    """Write a ``[z, y, x]`` array as an MRC file (float32), atomically.

    The file is written beside its destination under a temporary name and
    renamed into place, so a reader never sees a half-written map.
    """
    import mrcfile
    from .backend import to_host
    from .models import atomic_path
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists; refusing to overwrite")
    arr = np.ascontiguousarray(to_host(data), dtype=np.float32)
    vs = _check_voxel_size(voxel_size_A)
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as m:
        m.set_data(arr)
        m.voxel_size = tuple(float(v) for v in vs)
        ox, oy, oz = (float(v) for v in np.broadcast_to(np.asarray(origin_A, float), (3,)))
        m.header.origin.x, m.header.origin.y, m.header.origin.z = ox, oy, oz
    return path
