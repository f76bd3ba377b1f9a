"""CPU twin of ``reduce.cu``: the fused reductions in Numba.

Sums run in a fixed order (the kernels' atomics have none): ``segment_sum`` in the
order of ``numpy.bincount`` (so its results equal bincount's), the moments in
C order of the array.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from ptnp_gpu.neighbors import segment_sum as _host_segment_sum

__all__ = ["segment_sum", "shifted_moments", "pair_affine_sums", "radial_fit_sums"]


@nb.njit(cache=True)
def _segment_sum(index, values, n, out):
    k, p = values.shape
    for c in range(k):
        for q in range(p):
            s = index[q]
            if 0 <= s < n:
                out[c, s] += values[c, q]


def segment_sum(index, values, n):
    """Twin of ``ptnp_segment_sum``: (K, n) float64 sums of the rows of ``values`` (K, P)
    float64 by ``index`` (P,) (indices outside [0, n) are skipped)."""
    out = np.zeros((values.shape[0], int(n)))
    _segment_sum(index, values, np.int64(n), out)
    return out


@nb.njit(cache=True)
def _moments(data, shift):
    a = 0.0
    b = 0.0
    n0, n1, n2 = data.shape
    for i in range(n0):
        for j in range(n1):
            for k in range(n2):
                x = np.float64(data[i, j, k]) - shift
                a += x
                b += x * x
    return a, b


def shifted_moments(data, shift):
    """Twin of ``ptnp_shifted_moments``: (2,) float64 Σ(x − shift) and Σ(x − shift)² over a
    3-D array (any strides); ``shift`` a float or a one-element array."""
    a, b = _moments(data, float(np.asarray(shift).reshape(-1)[0]))
    return np.array([a, b])


def pair_affine_sums(xyz, u, a, b, w, n):
    """Twin of ``ptnp_pair_affine_sums``: (18, n) sums of (w·dx_p)·dx_q and (w·du_p)·dx_q over
    each atom's pairs, in array code: the products of both directions in one (18, 2P) table,
    then one ``bincount`` per row (the host path of the strain fit, unchanged)."""
    dx = np.ascontiguousarray((xyz[b] - xyz[a]).T)                 # (3, P)
    wdx = w * dx
    wdu = w * np.ascontiguousarray((u[b] - u[a]).T)
    terms = [(wd[p], dx[q]) for wd in (wdx, wdu) for p in range(3) for q in range(3)]
    n_pairs = len(a)
    cols = np.empty((len(terms), 2 * n_pairs))
    for k, (left, right) in enumerate(terms):
        np.multiply(left, right, out=cols[k, :n_pairs])
    cols[:, n_pairs:] = cols[:, :n_pairs]                         # the second direction
    return _host_segment_sum(np.concatenate([a, b]), cols, int(n))


def radial_fit_sums(i, j, w, r, ur, n):
    """Twin of ``ptnp_radial_fit_means`` + ``ptnp_radial_fit_spread``: (2, n) sums Σ(w·dR)·dR
    and Σ(w·dR)·(u_j − ū_i) over the directed pairs, in array code (bincounts: the host path of
    the radial strain, unchanged: :func:`ptnp_gpu.neighbors.segment_sum`)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        s = _host_segment_sum(i, [w, w * r[j], w * ur[j]], int(n))
        rbar = s[1] / s[0]
        ubar = s[2] / s[0]
        dr = r[j] - rbar[i]
        return _host_segment_sum(i, [w * dr * dr, w * dr * (ur[j] - ubar[i])], int(n))
