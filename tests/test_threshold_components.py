"""The union-find sweep against one scipy labelling per threshold."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from ptnp_gpu.threshold_components import threshold_components


def _reference(C, w, thresholds, min_voxels):
    """Per threshold: scipy 26-connected labels, count, weighted centre (x, y, z)."""
    out = []
    for t in thresholds:
        lab, n = ndi.label(C > t, structure=np.ones((3, 3, 3), bool))
        rows = []
        for i in range(1, n + 1):
            z, y, x = np.nonzero(lab == i)
            ww = w[z, y, x].astype(np.float64)
            if len(z) >= min_voxels and ww.sum() > 0:
                rows.append([(ww * x).sum() / ww.sum(), (ww * y).sum() / ww.sum(), (ww * z).sum() / ww.sum()])
        out.append(np.array(sorted(map(tuple, rows))).reshape(-1, 3))
    return out


@pytest.mark.parametrize("seed,dtype", [(0, np.float32), (1, np.float64), (2, np.float32)])
def test_matches_scipy_labelling_per_threshold(seed, dtype):
    rng = np.random.default_rng(seed)
    C = ndi.gaussian_filter(rng.normal(size=(18, 21, 25)), 1.2).astype(dtype)
    w = np.clip(rng.normal(1.0, 0.7, size=C.shape), 0, None).astype(np.float32)
    w[:4] = 0.0                                   # some components without weight: no centre
    ts = np.quantile(C, [0.97, 0.6, 0.85, 0.75, 0.999, 0.9])     # any order
    for min_voxels in (1, 3):
        cen, grp = threshold_components(C, w, ts, min_voxels)
        ref = _reference(C, w, ts, min_voxels)
        for k in range(len(ts)):
            got = np.array(sorted(map(tuple, cen[grp == k]))).reshape(-1, 3)
            assert got.shape == ref[k].shape, (k, got.shape, ref[k].shape)
            np.testing.assert_allclose(got, ref[k], rtol=0, atol=1e-9)
    assert (grp == 4).sum() < (grp == 1).sum()     # fewer components high up


def test_edges_and_empty():
    C = np.zeros((5, 5, 5), np.float32)
    C[0, 0, 0] = C[4, 4, 4] = C[1, 1, 1] = 1.0    # diagonal touch: one component of two voxels
    w = np.ones_like(C)
    cen, grp = threshold_components(C, w, [0.5, 2.0], 1)
    assert list(grp) == [0, 0]
    np.testing.assert_allclose(sorted(map(tuple, cen)), [(0.5, 0.5, 0.5), (4.0, 4.0, 4.0)])
    cen, grp = threshold_components(C, w, [], 1)
    assert cen.shape == (0, 3) and grp.shape == (0,)
