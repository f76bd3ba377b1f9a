"""Simulated tomograms (ptnp_gpu.tomography) and detection on them, against ground truth."""
from __future__ import annotations

import numpy as np
import pytest

from ptnp_gpu.detect import detect_atoms
from ptnp_gpu.errors import InputError
from ptnp_gpu.mapio import DensityMap
from ptnp_gpu.pairing import match_accuracy
from ptnp_gpu.synth import make_particle
from ptnp_gpu.tomography import (_back_project, _project, _projector, add_counting_noise, reconstruct_fbp,
                                 reconstruct_sirt, simulate_tomogram, tilt_angles_deg, tilt_series)
import ptnp_gpu.backend as _be


def _blobs(n=48):
    """Two Gaussian blobs (σ 2 and 1.5 voxels) well inside the inscribed cylinder."""
    z, y, x = np.mgrid[:n, :n, :n] - n / 2
    return (np.exp(-((x - 5) ** 2 + y ** 2 + (z + 3) ** 2) / (2 * 2.0 ** 2))
            + 0.5 * np.exp(-((x + 7) ** 2 + (y - 4) ** 2 + (z - 5) ** 2) / (2 * 1.5 ** 2))).astype(np.float32)


def test_tilt_angles_and_validation():
    assert tilt_angles_deg(6.0, 3.0).tolist() == [-6.0, -3.0, 0.0, 3.0, 6.0]
    assert len(tilt_angles_deg(70.0, 2.0)) == 71
    for bad in [(95.0, 2.0), (70.0, 0.0), (-1.0, 1.0)]:
        with pytest.raises(InputError):
            tilt_angles_deg(*bad)
    with pytest.raises(InputError):
        tilt_series(np.zeros((4, 4)), [0.0])
    with pytest.raises(InputError):
        simulate_tomogram(_blobs(16), method="art")


def test_projection_conserves_mass_and_matches_a_sum_at_zero_tilt():
    vol = _blobs()
    p = tilt_series(vol, [-60.0, -20.0, 0.0, 35.0, 70.0])
    np.testing.assert_allclose(p.sum(axis=(1, 2)), vol.sum(), rtol=1e-5)
    np.testing.assert_allclose(p[2], vol.sum(axis=0), rtol=1e-5, atol=1e-5)   # the beam along z


def test_back_projection_is_the_adjoint():
    rng = np.random.default_rng(0)
    nz, ny, nx, t = 20, 7, 24, tilt_angles_deg(60.0, 7.0)
    A = _projector(nz, nx, t, _be.get("numpy"))
    x = rng.normal(size=(nz, ny, nx)).astype(np.float32)
    y = rng.normal(size=(len(t), ny, nx)).astype(np.float32)
    lhs = float((_project(A, x, len(t), np) * y).sum(dtype=np.float64))
    rhs = float((x * _back_project(A, y, nz, np)).sum(dtype=np.float64))
    assert abs(lhs - rhs) <= 1e-4 * abs(lhs)


def test_fbp_full_range_reconstructs_and_sirt_beats_fbp_on_a_wedge():
    vol = _blobs()
    full = tilt_angles_deg(90.0, 1.0)[:-1]
    rec = reconstruct_fbp(tilt_series(vol, full), full, vol.shape[0])
    assert np.corrcoef(rec.ravel(), vol.ravel())[0, 1] > 0.98
    assert np.unravel_index(rec.argmax(), rec.shape) == np.unravel_index(vol.argmax(), vol.shape)
    wedge = tilt_angles_deg(70.0, 2.0)
    proj = tilt_series(vol, wedge)
    fbp = reconstruct_fbp(proj, wedge, vol.shape[0])
    sirt = reconstruct_sirt(proj, wedge, vol.shape[0], iterations=30)
    c_fbp = np.corrcoef(fbp.ravel(), vol.ravel())[0, 1]
    c_sirt = np.corrcoef(sirt.ravel(), vol.ravel())[0, 1]
    assert 0.85 < c_fbp < c_sirt, (c_fbp, c_sirt)          # measured 0.90 and 0.97
    assert sirt.min() >= 0.0                                # positivity
    support = np.zeros(vol.shape, np.float32)
    support[:, :, : vol.shape[2] // 2] = 1.0
    held = reconstruct_sirt(proj, wedge, vol.shape[0], iterations=5, support=support)
    assert np.all(held[support == 0] == 0) and held[support == 1].max() > 0
    with pytest.raises(InputError):
        reconstruct_sirt(proj, wedge, vol.shape[0], support=support[:-1])
    resid = [float(np.abs(tilt_series(reconstruct_sirt(proj, wedge, vol.shape[0], iterations=k), wedge)
                          - proj).mean()) for k in (2, 8)]
    assert resid[1] < 0.6 * resid[0], resid


def test_counting_noise_has_poisson_statistics():
    proj = np.full((4, 50, 50), 2.0, np.float32)
    proj[0, 0, 0] = 4.0                                     # the peak: 1,000 counts there
    noisy = add_counting_noise(proj, 1000.0, rng=1, background_counts=50.0)
    rel_sd = noisy[1:].std() / 2.0                          # 500 counts (+ 50 dark): SD √550 / 500
    assert abs(rel_sd - np.sqrt(550.0) / 500.0) < 0.003, rel_sd
    assert abs(noisy[1:].mean() - 2.0) < 0.01
    with pytest.raises(InputError):
        add_counting_noise(proj, 0.0)
    with pytest.raises(InputError):
        add_counting_noise(np.zeros_like(proj), 10.0)


@pytest.fixture(scope="module")
def particle():
    return make_particle(n_atoms=300, seed=12, margin_A=8, noise=0.0, background=0.0, u_surface_A2=0.2)


@pytest.mark.parametrize("method, min_precision", [("fbp", 0.97), ("sirt", 0.97)])
def test_detect_on_a_tomogram(particle, method, min_precision):
    """A 300-atom particle (surface U 0.2 Å²) imaged over ±65° in 2.5° steps with 2,000 counts at
    the brightest pixel (5% dark counts), reconstructed by FBP or by SIRT with positivity.
    SIRT's clipped solvent once read as a masked map and its noise as 6-40× too high
    (recall 0.01-0.5 on such maps; 0.85 here); measured now: recall 1.000, precision 0.997 (FBP) /
    1.000 (SIRT)."""
    rec = simulate_tomogram(particle.map.data.astype(np.float32), max_tilt_deg=65.0, step_deg=2.5,
                            counts_at_peak=2000.0, method=method, iterations=20, rng=3)
    det = detect_atoms(DensityMap(rec, particle.map.voxel_size_A, particle.map.origin_A), "Pt", backend="numpy")
    a = match_accuracy(det.xyz_A, particle.xyz_A, 1.0)
    assert a["recall"] >= 0.99 and a["precision"] >= min_precision, a


@pytest.mark.gpu
def test_tomography_parity_cupy():
    """CuPy and NumPy give the same projections and reconstructions on a random volume."""
    import cupy as cp
    rng = np.random.default_rng()
    vol = rng.random((24, 9, 30)).astype(np.float32)
    t = tilt_angles_deg(60.0, 4.0)
    p_np = tilt_series(vol, t)
    p_cp = tilt_series(cp.asarray(vol), t)
    np.testing.assert_allclose(cp.asnumpy(p_cp), p_np, rtol=1e-4, atol=1e-4)
    for f in (lambda p: reconstruct_fbp(p, t, 24), lambda p: reconstruct_sirt(p, t, 24, iterations=5)):
        np.testing.assert_allclose(cp.asnumpy(f(cp.asarray(p_np))), f(p_np), rtol=1e-3, atol=1e-4)


def test_simulate_command_writes_a_tomogram(tmp_path, capsys):
    """``ptnp simulate --tomogram sirt`` writes the reconstruction and records the imaging in the truth.
    Measured: recall 1.000, precision 0.948 (11 surface atoms rescued from SIRT's artefacts)."""
    import json

    from ptnp_gpu.cli import main
    from ptnp_gpu.mapio import read_map
    stem = tmp_path / "tomo"
    assert main(["simulate", str(stem), "--atoms", "200", "--seed", "4", "--tomogram", "sirt",
                 "--tilt-range", "65", "--tilt-step", "2.5", "--counts", "3000", "--sirt-iterations", "15"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tomogram"]["method"] == "sirt" and out["tomogram"]["max_tilt_deg"] == 65.0
    truth = json.loads((tmp_path / "tomo_truth.json").read_text())
    assert truth["tomogram"] == out["tomogram"] and truth["spec"]["noise"] == 0.0
    m = read_map(stem.with_suffix(".mrc"))
    assert float(m.data.min()) == 0.0                       # SIRT's positivity
    a = match_accuracy(detect_atoms(m, "Pt", backend="numpy").xyz_A, np.array(truth["xyz_A"]), 1.0)
    assert a["recall"] >= 0.99 and a["precision"] >= 0.93, a


def test_map_blur_tensor_recovers_a_known_elongation():
    from ptnp_gpu.displacement import map_blur_tensor_A2
    rng = np.random.default_rng(0)
    psi = np.diag([0.0, 0.05, 0.3])                               # stretched along z, a little along y
    u = np.eye(3)[None] * rng.uniform(0.02, 0.04, size=(300, 1, 1)) + psi[None]
    u += rng.normal(scale=0.002, size=u.shape)
    u = 0.5 * (u + u.transpose(0, 2, 1))
    est, doi = map_blur_tensor_A2(u, np.ones(300, bool))
    np.testing.assert_allclose(est, psi, atol=0.01)
    assert doi < 0.15
    assert map_blur_tensor_A2(u, np.zeros(300, bool))[0] is None   # no core atoms: nothing to say


def test_statistics_take_a_tomogram_blur_off_the_displacements():
    """A missing wedge stretches every atom along the beam: uncorrected, every atom's major axis
    points along z and the DOI ranks the atoms against the truth (rank correlation −0.31 on this
    400-atom particle); with the core's common elongation taken off, 0.63 (on an 800-atom
    particle 0.63, and 0.65 on its rendered map, whose core DOI of 0.98 leaves it untouched)."""
    from scipy.spatial import cKDTree
    from scipy.stats import spearmanr

    from ptnp_gpu.statistics import compute_statistics
    p = make_particle(n_atoms=400, seed=9, margin_A=8, noise=0.0, background=0.0, u_surface_A2=0.3,
                      surface_min_doi=0.4)
    ev = np.linalg.eigvalsh(p.u_aniso_A2)
    true_doi = ev[:, 0] / ev[:, 2]
    rec = simulate_tomogram(p.map.data.astype(np.float32), max_tilt_deg=70.0, step_deg=2.0, counts_at_peak=3000.0,
                            method="fbp", rng=1)
    m = DensityMap(rec, p.map.voxel_size_A, p.map.origin_A)
    det = detect_atoms(m, "Pt", backend="numpy")
    d, i = cKDTree(p.xyz_A).query(det.xyz_A)
    rho = {}
    for mode in ("none", "auto"):
        st = compute_statistics(det.backend_map, det.xyz_A, "Pt", labels=det.labels, blur_correction=mode)
        ok = (d < 1.0) & np.isfinite(st.columns["doi"])
        rho[mode] = spearmanr(st.columns["doi"][ok], true_doi[i[ok]]).correlation
        assert st.particle["blur_corrected"] == (mode == "auto")
        assert st.particle["map_core_doi"] < 0.5
    assert rho["none"] < 0.1 and rho["auto"] > 0.45, rho
    with pytest.raises(InputError):
        compute_statistics(det.backend_map, det.xyz_A, "Pt", blur_correction="yes")
    # a rendered (isotropic) map: auto leaves every column as it was
    p2 = make_particle(n_atoms=200, seed=4)
    det2 = detect_atoms(p2.map, "Pt", backend="numpy")
    a = compute_statistics(det2.backend_map, det2.xyz_A, "Pt", labels=det2.labels)
    b = compute_statistics(det2.backend_map, det2.xyz_A, "Pt", labels=det2.labels, blur_correction="none")
    assert not a.particle["blur_corrected"] and a.particle["map_core_doi"] > 0.8
    for k in ("u_iso_A2", "doi", "u11_A2", "u_maj_dir_z"):
        np.testing.assert_array_equal(a.columns[k], b.columns[k])
