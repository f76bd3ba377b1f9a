"""The pieced, pinned upload of host volumes (:func:`ptnp_gpu.backend.upload_volume`).

Without a GPU, :func:`ptnp_gpu.backend._staged_upload` runs against a stand-in for the
part of CuPy it uses (``empty``, pinned buffers, pointers that copy host memory with
``ctypes.memmove``), so the offsets of the pieces, the conversion to float32 and the
order of non-contiguous input are checked in CI; the ``gpu`` test compares the real
upload with ``cupy.asarray``.
"""
from __future__ import annotations

import ctypes
import types

import numpy as np
import pytest

from ptnp_gpu import backend as _be


class _Pinned(bytearray):
    @property
    def ptr(self) -> int:
        return ctypes.addressof(ctypes.c_char.from_buffer(self))


class _Ptr:
    def __init__(self, host: np.ndarray, offset: int = 0):
        self.host, self.offset = host, offset

    def __add__(self, k: int) -> "_Ptr":
        return _Ptr(self.host, self.offset + int(k))

    def copy_from_host_async(self, src_ptr, nbytes: int, stream) -> None:
        # as older CuPy: the source must be a ctypes pointer (newer versions also take an int)
        assert isinstance(src_ptr, ctypes.c_void_p)
        assert 0 <= self.offset and self.offset + nbytes <= self.host.nbytes
        stream.copies.append((self.offset, nbytes))
        ctypes.memmove(self.host.ctypes.data + self.offset, src_ptr.value, nbytes)


class _DeviceArray:
    def __init__(self, shape, dtype):
        self.host = np.full(shape, -1, dtype=dtype)
        self.data, self.size, self.dtype = _Ptr(self.host), self.host.size, self.host.dtype


class _Event:
    done = True


class _Stream:
    def __init__(self):
        self.copies = []

    def record(self):
        return _Event()


def _fake_cupy():
    stream = _Stream()
    cuda = types.SimpleNamespace(alloc_pinned_memory=_Pinned, get_current_stream=lambda: stream)
    return types.SimpleNamespace(empty=lambda shape, dtype: _DeviceArray(shape, dtype), cuda=cuda), stream


def test_finished_uploads_release_their_buffers(monkeypatch):
    """A buffer is held while its copies may run and let go at the next upload."""
    monkeypatch.setattr(_be, "_UPLOAD_KEEP", [])
    xp, _ = _fake_cupy()
    vol = np.ones((8, 8, 8), np.float32)
    _be._staged_upload(vol, xp, np.float32)
    assert len(_be._UPLOAD_KEEP) == 1
    _be._staged_upload(vol, xp, np.float32)
    assert len(_be._UPLOAD_KEEP) == 1          # the first one's copies are done: released


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_staged_upload_pieces_cover_the_volume(monkeypatch, dtype):
    monkeypatch.setattr(_be, "_UPLOAD_CHUNK_BYTES", 4 * 1000)     # 1,000 voxels a piece, a short last one
    rng = np.random.default_rng(3)
    vol = (rng.normal(size=(23, 17, 29)) * 100).astype(dtype)
    xp, stream = _fake_cupy()
    out = _be._staged_upload(vol, xp, np.float32)
    np.testing.assert_array_equal(out.host, vol.astype(np.float32))
    offsets = [o for o, _ in stream.copies]
    assert offsets == sorted(offsets) and len(offsets) == -(-vol.size // 1000)
    assert sum(n for _, n in stream.copies) == vol.size * 4


def test_staged_upload_keeps_c_order_of_a_strided_view(monkeypatch):
    monkeypatch.setattr(_be, "_UPLOAD_CHUNK_BYTES", 4 * 512)
    vol = np.arange(30 * 20 * 10, dtype=np.float32).reshape(30, 20, 10)
    view = np.swapaxes(vol, 0, 2)[::2]                     # neither C- nor F-contiguous
    xp, _ = _fake_cupy()
    out = _be._staged_upload(view, xp, np.float32)
    np.testing.assert_array_equal(out.host, np.ascontiguousarray(view))


def test_staged_upload_keeps_an_integer_dtype(monkeypatch):
    """Labels go up as they are (the statistics upload a host label volume in its own dtype)."""
    monkeypatch.setattr(_be, "_UPLOAD_CHUNK_BYTES", 4 * 700)
    lab = np.random.default_rng(4).integers(0, 2 ** 31 - 1, (21, 13, 17)).astype(np.int32)
    xp, _ = _fake_cupy()
    out = _be._staged_upload(lab, xp, lab.dtype)
    assert out.host.dtype == np.int32
    np.testing.assert_array_equal(out.host, lab)


def test_upload_without_cupy_is_asarray():
    vol = np.ones((40, 40, 40), np.float64)
    out = _be.upload_volume(vol, np)
    assert out.dtype == np.float32 and np.array_equal(out, vol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_upload_volume_equals_asarray_on_the_device(dtype):
    import cupy
    rng = np.random.default_rng()
    vol = rng.normal(size=(160, 170, 180)).astype(dtype)     # 19.6 MB as float32: 5 pieces
    assert vol.astype(np.float32).nbytes >= _be._UPLOAD_MIN_BYTES
    for _ in range(3):                                     # the pinned buffers are reused
        got = _be.upload_volume(vol, cupy)
        assert isinstance(got, cupy.ndarray) and got.dtype == cupy.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got.get(), vol.astype(np.float32))
