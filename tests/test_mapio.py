"""MRC frame handling: voxel size, origin, nstart and axis order, as ChimeraX places a map."""
from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from ptnp_gpu.errors import InputError
from ptnp_gpu.mapio import read_map, write_map


def _volume(shape=(7, 9, 11)):
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return (100 * z + 10 * y + x).astype(np.float32)   # value encodes its own (z, y, x) index


def test_round_trip_origin_and_anisotropic_voxels(tmp_path):
    a = _volume()
    write_map(tmp_path / "m.mrc", a, (0.3, 0.4, 0.5), (1.5, -2.0, 3.25))
    m = read_map(tmp_path / "m.mrc")
    assert np.array_equal(m.data, a)
    assert np.allclose(m.voxel_size_A, (0.3, 0.4, 0.5)) and np.allclose(m.origin_A, (1.5, -2.0, 3.25))
    # voxel (i, j, k) = (x, y, z) lies at origin + (i, j, k) * voxel size
    assert np.allclose(m.voxel_to_xyz_A([[2, 3, 4]]), [[1.5 + 0.6, -2.0 + 1.2, 3.25 + 2.0]])
    assert np.allclose(m.xyz_A_to_voxel(m.voxel_to_xyz_A([[2, 3, 4]])), [[2, 3, 4]])
    assert np.allclose(read_map(tmp_path / "m.mrc", voxel_size_A=0.7).voxel_size_A, 0.7)


def test_nstart_gives_origin_when_header_origin_is_zero(tmp_path):
    with mrcfile.new(tmp_path / "n.mrc") as f:
        f.set_data(_volume())
        f.voxel_size = 0.5
        f.header.nxstart, f.header.nystart, f.header.nzstart = 4, -6, 10
    m = read_map(tmp_path / "n.mrc")
    assert np.allclose(m.origin_A, (2.0, -3.0, 5.0))


@pytest.mark.parametrize("axes", [(3, 2, 1), (2, 3, 1), (1, 3, 2)])
def test_axis_order_is_honoured(tmp_path, axes):
    """A file stored with permuted axes reads back as the same [z, y, x] volume."""
    a = _volume()                                    # canonical [z, y, x]
    mapc, mapr, maps = axes                         # labels of column, row, section axes
    label_of = {1: 2, 2: 1, 3: 0}                   # x, y, z label → canonical array axis
    stored = np.transpose(a, (label_of[maps], label_of[mapr], label_of[mapc]))
    with mrcfile.new(tmp_path / "p.mrc") as f:
        f.set_data(np.ascontiguousarray(stored))
        f.header.mapc, f.header.mapr, f.header.maps = mapc, mapr, maps
        f.voxel_size = 1.0
    m = read_map(tmp_path / "p.mrc")
    assert m.data.shape == a.shape
    assert np.array_equal(m.data, a)


def test_bad_axis_order_rejected(tmp_path):
    with mrcfile.new(tmp_path / "b.mrc") as f:
        f.set_data(_volume())
        f.header.mapc, f.header.mapr, f.header.maps = 1, 1, 3
        f.voxel_size = 1.0
    with pytest.raises(InputError, match="axis order"):
        read_map(tmp_path / "b.mrc")
