"""Pairs of points within a distance, on the points' own backend.

NumPy points use SciPy's cKDTree; CuPy points use a chunked brute-force
search on the device (no host copy), which is fast for the tens of thousands
of atoms a particle holds.
"""
from __future__ import annotations

import numpy as np

from . import backend as _be

__all__ = ["pairs_within", "count_neighbors"]


def pairs_within(xyz_A, r_A: float, chunk: int = 4096):
    """All pairs ``i < j`` with ``|x_i - x_j| <= r_A``.

    Returns
    -------
    i, j : int arrays, d2 : squared distances (Å²), on the input's backend.
    """
    be = _be.namespace(xyz_A)
    xp = be.xp
    n = int(xyz_A.shape[0])
    if not be.is_gpu:
        from scipy.spatial import cKDTree
        p = cKDTree(np.asarray(xyz_A)).query_pairs(r_A, output_type="ndarray")
        if len(p) == 0:
            e = np.zeros(0, np.int64)
            return e, e, np.zeros(0)
        i, j = p[:, 0], p[:, 1]
        d = xyz_A[i] - xyz_A[j]
        return i, j, np.einsum("ij,ij->i", d, d)
    out_i, out_j, out_d = [], [], []
    r2 = r_A * r_A
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        d = xyz_A[s:e, None, :] - xyz_A[None, :, :]
        d2 = (d * d).sum(-1)
        ii, jj = xp.nonzero((d2 <= r2) & (xp.arange(s, e)[:, None] < xp.arange(n)[None, :]))
        out_i.append(ii + s)
        out_j.append(jj)
        out_d.append(d2[ii, jj])
    return xp.concatenate(out_i), xp.concatenate(out_j), xp.concatenate(out_d)


def count_neighbors(xyz_A, r_A: float):
    """Number of other points within ``r_A`` of each point (coordination number)."""
    xp = _be.namespace(xyz_A).xp
    i, j, _ = pairs_within(xyz_A, r_A)
    n = int(xyz_A.shape[0])
    return xp.bincount(i, minlength=n) + xp.bincount(j, minlength=n)
