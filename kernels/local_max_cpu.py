"""CPU twin of ``local_max.cu``: the local-maximum test in Numba.

A voxel is a local maximum when it is not NaN, lies in the mask (if one is
given) and no in-bounds voxel of its 3×3×3 neighbourhood is larger. One pass
with an early exit per voxel; z planes are shared among the threads
(``prange``), each voxel written once, so the result does not depend on the
thread count.
"""
from __future__ import annotations

import numba as nb
import numpy as np
from ptnp_gpu.host_parallel import thread_safe

__all__ = ["local_max_cpu"]


@thread_safe
@nb.njit(parallel=True, cache=True)
def _local_max(vol, mask, use_mask, out):
    nz, ny, nx = vol.shape
    for z in nb.prange(nz):
        for y in range(ny):
            for x in range(nx):
                if use_mask and not mask[z, y, x]:
                    out[z, y, x] = False
                    continue
                c = vol[z, y, x]
                is_max = c == c
                for dz in range(-1, 2):
                    zz = z + dz
                    if not is_max:
                        break
                    if zz < 0 or zz >= nz:
                        continue
                    for dy in range(-1, 2):
                        yy = y + dy
                        if not is_max:
                            break
                        if yy < 0 or yy >= ny:
                            continue
                        for dx in range(-1, 2):
                            xx = x + dx
                            if 0 <= xx < nx and vol[zz, yy, xx] > c:
                                is_max = False
                                break
                out[z, y, x] = is_max


def local_max_cpu(volume, mask=None):
    """(nz, ny, nx) bool: local maxima of ``volume`` (float32 or float64), inside ``mask``."""
    vol = np.ascontiguousarray(volume)
    use = mask is not None
    m = np.ascontiguousarray(mask, dtype=np.bool_) if use else np.zeros((1, 1, 1), np.bool_)
    out = np.empty(vol.shape, dtype=np.bool_)
    _local_max(vol, m, use, out)
    return out
