"""Pair search: the cell-list kernel path (both backends) and the array-code cell list equal
SciPy's k-d tree."""
from __future__ import annotations

import numpy as np
import pytest

from ptnp_gpu.neighbors import count_neighbors, pairs_within, pairs_within_grid
from ptnp_gpu.synth import fcc_particle


def _as_set(i, j):
    return set(zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist()))


@pytest.mark.parametrize("seed,r", [(0, 1.7), (1, 3.35), (2, 5.2)])
def test_grid_pairs_equal_kdtree(seed, r):
    rng = np.random.default_rng(seed)
    pts = np.vstack([fcc_particle(400, 3.924) + rng.normal(scale=0.1, size=(1, 3)),
                     rng.uniform(-15, 15, size=(150, 3))])
    from scipy.spatial import cKDTree
    i, j, d2 = pairs_within(pts, r)
    gi, gj, gd2 = pairs_within_grid(pts, r)
    ref = cKDTree(pts).query_pairs(r, output_type="ndarray")
    assert _as_set(i, j) == _as_set(gi, gj) == _as_set(ref[:, 0], ref[:, 1])
    assert np.all(gi < gj) and np.all(i < j) and np.all(np.diff(i) >= 0)
    assert np.allclose(np.sort(d2), np.sort(gd2))
    d = pts[i] - pts[j]
    np.testing.assert_array_equal(d2, (d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]) + d[:, 2] * d[:, 2])


def test_fcc_coordination_is_twelve_inside():
    pts = fcc_particle(800, 3.924)
    cn = count_neighbors(pts, 3.924 / 2 * (1 + 1 / np.sqrt(2)))
    centre = np.linalg.norm(pts, axis=1) < 5.0
    assert np.all(cn[centre] == 12)
    assert cn.min() >= 3


def test_grid_pairs_degenerate_inputs():
    e = np.zeros((0, 3))
    assert len(pairs_within_grid(e, 2.0)[0]) == 0
    assert len(pairs_within_grid(np.zeros((1, 3)), 2.0)[0]) == 0
    i, j, _ = pairs_within_grid(np.zeros((3, 3)), 1.0)     # coincident points pair up
    assert _as_set(i, j) == {(0, 1), (0, 2), (1, 2)}
