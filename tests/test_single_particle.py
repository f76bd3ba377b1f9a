"""Simulated single-particle reconstructions (ptnp_gpu.single_particle) and detection on them."""
from __future__ import annotations

import numpy as np
import pytest

from ptnp_gpu.detect import detect_atoms
from ptnp_gpu.errors import InputError
from ptnp_gpu.mapio import DensityMap
from ptnp_gpu.pairing import match_accuracy
from ptnp_gpu.single_particle import ctf, electron_wavelength_A, random_orientations, simulate_reconstruction
from ptnp_gpu.synth import make_particle


def test_wavelength_and_ctf():
    assert abs(electron_wavelength_A(300.0) - 0.01969) < 1e-4
    assert abs(electron_wavelength_A(200.0) - 0.02508) < 1e-4
    assert abs(float(ctf(np.array(0.0), 500.0, amplitude_contrast=0.1)) + 0.1) < 1e-12
    # first zero of −sin(π λ Δf s² + w) without Cs: s² = (π − w) / (π λ Δf)
    lam, df, w = electron_wavelength_A(300.0), 500.0, np.arctan(0.1 / np.sqrt(0.99))
    s0 = np.sqrt((np.pi - w) / (np.pi * lam * df))
    assert abs(float(ctf(np.array(s0), df))) < 1e-9
    assert float(ctf(np.array(0.5 * s0), df)) < 0                  # before the first zero: negative


def test_random_orientations_are_rotations_and_prefer_an_axis():
    R = random_orientations(2000, rng=0)
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", R, R), np.broadcast_to(np.eye(3), R.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-9)
    view = np.degrees(np.arccos(np.clip(np.abs(R[:, 2, 2]), 0, 1)))   # angle of the view axis to z
    assert abs((view < 20).mean() - (1 - np.cos(np.radians(20)))) < 0.03   # uniform: 6% within 20°
    Rp = random_orientations(2000, rng=1, preferred_axis_fraction=0.5)
    viewp = np.degrees(np.arccos(np.clip(np.abs(Rp[:, 2, 2]), 0, 1)))
    assert 0.5 <= (viewp < 20.0001).mean() < 0.6


def test_noise_free_reconstruction_returns_the_volume():
    n = 40
    z, y, x = np.mgrid[:n, :n, :n] - n / 2
    vol = (np.exp(-((x - 5) ** 2 + y ** 2 + (z + 3) ** 2) / 8.0)
           + 0.5 * np.exp(-((x + 7) ** 2 + (y - 4) ** 2 + (z - 5) ** 2) / 4.5)).astype(np.float32)
    rec = simulate_reconstruction(vol, 0.5, n_images=400, image_snr=1e8, defocus_range_A=(0.0, 0.0),
                                  wiener=1e-4, rng=0)
    assert np.corrcoef(rec.ravel(), vol.ravel())[0, 1] > 0.999
    assert 0.95 < rec.max() / vol.max() < 1.02
    with pytest.raises(InputError):
        simulate_reconstruction(vol[:-1], 0.5)
    with pytest.raises(InputError):
        simulate_reconstruction(vol, 0.5, image_snr=0.0)


def test_detect_on_a_single_particle_reconstruction():
    """150 Pt atoms imaged 1,000 times (per-image SNR 0.1, 100-600 Å underfocus, Cs-corrected 300 kV,
    envelope B 10 Å²) and reconstructed by Wiener-weighted Fourier inversion. Measured: recall
    1.000, precision 1.000."""
    p = make_particle(n_atoms=150, seed=3, margin_A=6, noise=0.0, background=0.0)
    rec = simulate_reconstruction(p.map.data.astype(np.float32), 0.358, n_images=1000, image_snr=0.1,
                                  b_factor_A2=10.0, rng=2)
    det = detect_atoms(DensityMap(rec, p.map.voxel_size_A, p.map.origin_A), "Pt", backend="numpy")
    a = match_accuracy(det.xyz_A, p.xyz_A, 1.0)
    assert a["recall"] >= 0.99 and a["precision"] >= 0.99, a


@pytest.mark.gpu
def test_single_particle_parity_cupy():
    """CuPy and NumPy reconstruct the same map from the same images (same seed)."""
    import cupy as cp
    vol = np.random.default_rng().random((24, 24, 24)).astype(np.float32)
    kw = dict(n_images=50, image_snr=0.5, b_factor_A2=5.0, rng=7)
    a = simulate_reconstruction(vol, 0.5, **kw)
    b = cp.asnumpy(simulate_reconstruction(cp.asarray(vol), 0.5, **kw))
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3 * float(np.abs(a).max()))


def test_simulate_command_writes_a_single_particle_reconstruction(tmp_path, capsys):
    """``ptnp simulate --single-particle`` writes the reconstruction and records the imaging in the truth.
    Measured: recall 1.000, precision 1.000."""
    import json

    from ptnp_gpu.cli import main
    from ptnp_gpu.mapio import read_map
    stem = tmp_path / "spa"
    assert main(["simulate", str(stem), "--atoms", "150", "--seed", "3", "--single-particle", "--images", "800",
                 "--image-snr", "0.2"]) == 0
    out = json.loads(capsys.readouterr().out)
    truth = json.loads((tmp_path / "spa_truth.json").read_text())
    assert truth["single_particle"] == out["single_particle"] and out["single_particle"]["n_images"] == 800
    m = read_map(stem.with_suffix(".mrc"))
    a = match_accuracy(detect_atoms(m, "Pt", backend="numpy").xyz_A, np.array(truth["xyz_A"]), 1.0)
    assert a["recall"] >= 0.99 and a["precision"] >= 0.99, a
    assert main(["simulate", str(tmp_path / "both"), "--tomogram", "fbp", "--single-particle"]) == 2
    assert "choose one" in capsys.readouterr().err                  # one imaging model at a time


def test_single_particle_on_the_emulated_device():
    """The CuPy code path (run on the host by ptnp_gpu.device_emulation, which refuses implicit
    host conversions) gives the NumPy path's reconstruction exactly."""
    from ptnp_gpu import backend as _be
    from ptnp_gpu.device_emulation import emulate
    vol = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    kw = dict(n_images=40, image_snr=0.5, b_factor_A2=5.0, preferred_axis_fraction=0.3, rng=7)
    ref = simulate_reconstruction(vol, 0.5, **kw)
    with emulate() as audit:
        got = _be.to_host(simulate_reconstruction(audit.backend.xp.asarray(vol), 0.5, **kw))
    np.testing.assert_array_equal(got, ref)
