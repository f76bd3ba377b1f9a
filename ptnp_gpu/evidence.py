"""Is a model a particle? The map's density inside the model's hull, against the solvent.

A particle adds density: smoothed over a couple of ångström, the map inside the convex hull of
its atoms stands several of its own standard deviations above the solvent level (measured:
5.9-6.9 on the blurred, sharpened and masked maps of ``benchmarks/robustness_maps.py
--harder``). Noise taken for atoms does not: the blobs that pass the thresholds are peaks of a
field whose mean inside the hull is the solvent's, so the contrast reads within a few tenths of
zero (-0.17 to 0.20 on the masked noise maps of ``benchmarks/noise_only.py``, where detection
found 170-3,900 "atoms"; 0.57 in a mask of 10 Å radius, which holds fewer independent blobs).
:func:`hull_contrast` measures it; detection warns that a model without a lattice whose
contrast is below 1 may be noise (:mod:`ptnp_gpu.detect`). It does not refuse: smooth solvent
backgrounds lower the contrast of real particles too (0.1 on well-resolved maps at 0.25 Å
voxels with a background of 0.3-0.5 × the atom peak, whose lattice keeps them clear of the test).

Works on NumPy and CuPy maps (the smoothing runs on the map's backend; the hull test on the host).
"""
from __future__ import annotations

import numpy as np

from . import backend as _be

__all__ = ["hull_contrast"]

_MAX_POINTS = 200_000     # voxels tested against the hull (a regular subsample of the atoms' box)


def hull_contrast(raw, xyz_A, voxel_size_A, origin_A, smooth_A: float = 2.0) -> float:
    """(mean − solvent level) / SD of ``raw`` smoothed by a Gaussian of σ ``smooth_A`` (Å), over
    the voxels inside the convex hull of ``xyz_A`` (host, Å, map frame); the solvent level is the
    smoothed map's median. NaN for fewer than 5 atoms or a flat model (no 3-D hull).

    Parameters
    ----------
    raw : (nz, ny, nx) array, NumPy or CuPy
    xyz_A : (N, 3) atom positions in Å
    voxel_size_A : float or (3,) floats (x, y, z)
    origin_A : (3,) floats, the map's origin (x, y, z)
    smooth_A : σ of the smoothing in Å
    """
    from scipy.spatial import Delaunay, QhullError
    be = _be.namespace(raw)
    xp = be.xp
    xyz = np.asarray(xyz_A, dtype=np.float64).reshape(-1, 3)
    if len(xyz) < 5:
        return float("nan")
    vs = np.broadcast_to(np.asarray(voxel_size_A, float), (3,))
    ijk = (xyz - np.asarray(origin_A, float)) / vs               # voxel x, y, z
    try:
        hull = Delaunay(ijk)
    except QhullError:
        return float("nan")
    n_xyz = np.array(raw.shape[::-1])
    lo = np.clip(np.floor(ijk.min(0)).astype(int), 0, n_xyz - 1)
    hi = np.clip(np.ceil(ijk.max(0)).astype(int) + 1, 1, n_xyz)
    step = max(1, int(np.ceil((np.prod(hi - lo) / _MAX_POINTS) ** (1.0 / 3.0))))
    axes = [np.arange(lo[a], hi[a], step) for a in range(3)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    inside = pts[hull.find_simplex(pts.astype(np.float64)) >= 0]
    if len(inside) < 8:
        return float("nan")
    sm = be.ndi.gaussian_filter(raw.astype(xp.float32), (smooth_A / vs)[::-1].tolist(), mode="nearest")
    idx = xp.asarray(inside)
    vals = sm[idx[:, 2], idx[:, 1], idx[:, 0]].astype(xp.float64)
    level = xp.median(sm[::2, ::2, ::2])
    stats = _be.to_host(xp.stack([vals.mean() - level, vals.std()]))      # one read
    return float(stats[0] / stats[1]) if stats[1] > 0 else float("nan")
