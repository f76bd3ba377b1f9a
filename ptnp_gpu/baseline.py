"""The solvent level under each atom: the zero of the displacement fits.

The paper fits ``ln I`` of the raw map around each atom, which takes the map's zero
as the atom's zero. Reconstructions put their zero anywhere: a liquid's density
level, a smooth background from a varying liquid thickness, or an offset of the
grey values all add under the atoms, flatten ``ln I`` and inflate U (measured on a
600-atom Pt particle: an offset of 0.3 × an atom's peak raised the core's U_iso
0.21 → 0.54 Å² and the surface's 0.52 → 1.66 Å²; −0.3 made 43% of the fits fail).

:func:`solvent_level_at_atoms` measures the map's level in the solvent around
the particle (voxels farther than ``clear_A`` from every atom, on a grid of about
``step_A``) and carries it to each atom by a normalised Gaussian average of
width ``sigma_A``: surface atoms take the level of the solvent beside them, atoms
deep inside a large particle the particle-wide level. Constant voxels (a solvent
mask) are not solvent; a map clipped at its minimum (a positivity constraint)
keeps its clipped voxels, which are solvent at the clip level. Works on NumPy and
CuPy arrays without host reads.
"""
from __future__ import annotations

import numpy as np

from . import backend as _be
from .gpu_kernels import array_var, linear_at, outside_balls
from .solvent import _CLIPPED_SHARE, _local_variance

__all__ = ["solvent_level_at_atoms", "CLEAR_A", "SIGMA_A", "STEP_A"]

CLEAR_A = 3.5     # solvent: farther than this from every atom (Å): atoms' tails are < 1% of a peak there
SIGMA_A = 4.0     # width of the average that carries the solvent's level to the atoms (Å)
STEP_A = 1.0      # grid of the estimate (Å): the level varies over several Å
_FAR_WEIGHT = 0.02   # weight of the particle-wide level against the local average's solvent weight


def solvent_level_at_atoms(volume, centres_vox_xyz, voxel_size_A, *, clear_A: float = CLEAR_A,
                           sigma_A: float = SIGMA_A, step_A: float = STEP_A):
    """The solvent's level at every atom, in the map's units.

    Parameters
    ----------
    volume : (nz, ny, nx) array, NumPy or CuPy
        The map (or a crop of it holding the atoms and a few Å of solvent around them).
    centres_vox_xyz : (N, 3) array
        Atom centres in voxel coordinates of ``volume``, x y z.
    voxel_size_A : float or (3,) floats
        Voxel size along x, y, z (Å).
    clear_A, sigma_A, step_A : float
        Solvent distance from the atoms, width of the average and grid step (Å).

    Returns
    -------
    level : (N,) float64 array on the backend of ``volume``
        0 everywhere when no solvent voxel is found (the map's own zero is kept).
    solvent_fraction : 0-d float64 array on the backend
        Share of the grid's voxels used as solvent.
    """
    be = _be.namespace(volume)
    xp, ndi = be.xp, be.ndi
    vs = np.broadcast_to(np.asarray(voxel_size_A, np.float64), (3,))          # x y z
    step = np.maximum(1, np.rint(step_A / vs)).astype(int)                      # x y z
    sub = volume[::step[2], ::step[1], ::step[0]].astype(xp.float32)
    spacing = (vs * step)[::-1]                                                 # z y x, Å
    c = xp.asarray(centres_vox_xyz, dtype=xp.float64).reshape(-1, 3)
    idx = xp.rint(c[:, ::-1] / xp.asarray(step[::-1], dtype=xp.float64)).astype(xp.int64)   # z y x
    idx = xp.clip(idx, 0, xp.asarray(np.array(sub.shape) - 1))
    # farther than clear_A from every atom's voxel: the balls cleared directly (one launch; the same
    # voxels as a distance transform's > clear_A)
    far = outside_balls(sub.shape, idx, clear_A, tuple(float(s) for s in spacing))
    # a mask's constant region (0, or the map's minimum or maximum) is not solvent: a voxel at
    # such a value among neighbours mostly at it too (the mask's edge included; a quantised
    # map's noise, whose values repeat, is not)
    at_min = sub == sub.min()
    const = at_min | (sub == sub.max()) | (sub == 0)
    dead = const & (ndi.uniform_filter(const.astype(xp.float32), 3) > 0.5)
    # clipped, not masked (as solvent._clipped): most voxels that carry noise sit at the minimum
    # (a mask's constant region carries none: its voxels at the minimum are only along its edge)
    live = far & (_local_variance(sub) > 1e-6 * array_var(sub))                 # no read: a device 0-d bound
    share_min = (at_min & live).sum(dtype=xp.float64) / xp.maximum(live.sum(dtype=xp.float64), 1.0)
    solvent = far & (~dead | (at_min & (share_min > _CLIPPED_SHARE)))
    w = solvent.astype(xp.float32)
    n_solvent = w.sum(dtype=xp.float64)
    overall = (sub * w).sum(dtype=xp.float64) / xp.maximum(n_solvent, 1.0)      # 0 without solvent
    sig = tuple(float(sigma_A / s) for s in spacing)
    num = ndi.gaussian_filter(sub * w, sig, mode="constant")
    den = ndi.gaussian_filter(w, sig, mode="constant")
    level = (num + _FAR_WEIGHT * overall) / (den + _FAR_WEIGHT)
    at_atoms = linear_at(level.astype(xp.float64), c / xp.asarray(step, dtype=xp.float64))   # x y z on the grid
    return at_atoms, n_solvent / float(sub.size)
