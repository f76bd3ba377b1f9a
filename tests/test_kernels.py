"""CPU-only checks of the custom kernels.

1. Every ``kernels/*.cu`` must compile (``nvcc -ptx -arch=sm_90``, with each
   dtype specialisation the loader can request).
2. Every CPU twin must match an independent NumPy/SciPy reference on small
   random inputs (numbers, not shapes).
3. The CUDA sources themselves are compiled for the host with g++ against
   ``kernels/host_emulation.h`` and run on the CPU; they must agree with the
   twins, so a change that breaks a kernel's indexing, reduction or packing
   fails here without a GPU. ``test_gpu_parity.py`` ties the kernels to the
   twins on a real device.
"""
from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi

from ptnp_gpu import gpu_kernels as gk
from ptnp_gpu import simulate

KERNEL_DIR = resources.files("ptnp_gpu.kernels")
CU_FILES = sorted(p.name for p in KERNEL_DIR.iterdir() if p.name.endswith(".cu"))

def _decode_peak_keys(key, xp):
    """Reference decode of the packed 64-bit peak keys of ``label_sums.cu``: (value float32,
    flat index int64); key 0 is an empty label (-inf, -1). ``ptnp_label_finish`` does this on
    the device."""
    hi = (key >> np.uint64(32)).astype(xp.uint32)
    lo = (key & np.uint64(0xFFFFFFFF)).astype(xp.uint32)
    neg = (hi & np.uint32(0x80000000)) == 0
    bits = xp.where(neg, ~hi, hi & np.uint32(0x7FFFFFFF)).astype(xp.uint32)
    val = bits.view(xp.float32)
    empty = key == 0
    val = xp.where(empty, xp.float32(-np.inf), val).astype(xp.float32)
    idx = xp.where(empty, -1, np.uint32(0xFFFFFFFF) - lo.astype(xp.int64)).astype(xp.int64)
    return val, idx


# every specialisation the loader can build (defines prepended by gpu_kernels)
SPECIALISATIONS = {
    "cell_pairs.cu": [()],
    "local_max.cu": [(("PTNP_MAP_T", "float"),), (("PTNP_MAP_T", "double"),)],
    "render_atoms.cu": [()],
    "reduce.cu": [(("PTNP_INDEX_T", it), ("PTNP_MAP_T", mt)) for it in ("int", "long long")
                  for mt in ("float", "double")],
    "thin_peaks.cu": [()],
    "fourier.cu": [()],
    "label_cc.cu": [(("PTNP_MAP_T", "float"),), (("PTNP_MAP_T", "double"),)],
    "filter1d.cu": [(("PTNP_IN_T", a), ("PTNP_OUT_T", b)) for a in ("float", "double") for b in ("float", "double")],
    "window_fits.cu": [(("PTNP_MAP_T", "float"),), (("PTNP_MAP_T", "double"),)],
    "label_sums.cu": [(("PTNP_LABEL_T", lt), ("PTNP_WEIGHT_T", wt), ("PTNP_RUN", "8"))
                      for lt, wt in (("int", "float"), ("long long", "double"),
                                     ("unsigned char", "float"))],
}


def test_every_kernel_file_has_specialisations():
    assert CU_FILES, "no .cu files found in ptnp_gpu.kernels"
    assert sorted(SPECIALISATIONS) == CU_FILES


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("cu", CU_FILES)
def test_cuda_sources_compile(cu, tmp_path):
    for defines in SPECIALISATIONS.get(cu, [()]):
        src = tmp_path / cu
        src.write_text(gk.kernel_program(cu, defines))
        res = subprocess.run(["nvcc", "-ptx", "-arch=sm_90", *gk.KERNEL_OPTIONS, str(src),
                              "-o", str(tmp_path / "out.ptx")], capture_output=True, text=True)
        assert res.returncode == 0, f"{cu} {defines}: nvcc failed\n{res.stderr}"
        ptx = (tmp_path / "out.ptx").read_text()
        names = [ln.split()[-1].rstrip("(") for ln in ptx.splitlines() if ".entry" in ln]
        assert names and all(n.startswith("ptnp_") for n in names), names



def _nvrtc_library():
    """libnvrtc, the compiler CuPy's RawModule uses: from the ``nvidia-cuda-nvrtc-cu12`` wheel
    (the test extra installs it on Linux x86-64) or the system; None when neither has it."""
    import ctypes
    import ctypes.util
    import glob
    import os
    import importlib
    candidates = []
    for name in ("nvidia.cuda_nvrtc", "nvidia.cu13"):        # the CUDA 12 and CUDA 13 wheels' layouts
        try:
            pkg = importlib.import_module(name)
        except ImportError:
            continue
        for root in getattr(pkg, "__path__", []):
            candidates += sorted(glob.glob(os.path.join(root, "lib", "libnvrtc.so*")))
    found = ctypes.util.find_library("nvrtc")
    if found:
        candidates.append(found)
    for path in candidates:
        if "builtins" in path or ".alt." in path:
            continue
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


@pytest.mark.parametrize("cu", CU_FILES)
def test_cuda_sources_compile_with_nvrtc(cu):
    """NVRTC, unlike nvcc, sees no host headers (no NAN, INFINITY, assert, std::): a kernel
    that builds with nvcc can still fail to load in CuPy. Compile every specialisation the way
    the loader does (its defines, ``--std=c++17``, sm_90)."""
    import ctypes
    lib = _nvrtc_library()
    if lib is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc-cu12)")
    for defines in SPECIALISATIONS.get(cu, [()]):
        src = gk.kernel_program(cu, defines).encode()
        prog = ctypes.c_void_p()
        assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, cu.encode(), 0, None, None) == 0
        # the loader's options, to a cubin: ptxas checks registers and shared memory
        opts = [o.encode() for o in gk.KERNEL_OPTIONS] + [b"-arch=sm_90"]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        ptx_size = ctypes.c_size_t()
        lib.nvrtcGetPTXSize(prog, ctypes.byref(ptx_size))
        ptx = ctypes.create_string_buffer(ptx_size.value)
        lib.nvrtcGetPTX(prog, ptx)
        cubin_size = ctypes.c_size_t()
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(cubin_size))
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
        assert rc == 0, f"{cu} {defines}: NVRTC failed\n{log.value.decode(errors='replace')}"
        assert cubin_size.value > 0, f"{cu} {defines}: no cubin for sm_90"
        names = [ln.split()[-1].rstrip("(") for ln in ptx.value.decode().splitlines() if ".entry" in ln]
        assert names and all(n.startswith("ptnp_") for n in names), names


# ---------------------------------------------------------------------- render

RENDER_CASES = {
    "iso": dict(u_iso=True),
    "aniso": dict(u_aniso=True),
    "edges_noncubic": dict(u_iso=True, edge=True),
    "anisotropic_voxels": dict(u_aniso=True, vs=(0.35, 0.4, 0.3)),
}


@pytest.mark.parametrize("case", sorted(RENDER_CASES))
def test_render_twin_matches_reference(case):
    cfg = RENDER_CASES[case]
    rng = np.random.default_rng(sorted(RENDER_CASES).index(case) + 11)
    shape = (30, 26, 34)
    vs = np.asarray(cfg.get("vs", (0.358,) * 3))
    extent = np.array([shape[2], shape[1], shape[0]]) * vs
    n = 60
    lo, hi = (-1.5, extent + 1.5) if cfg.get("edge") else (2.0, extent - 2.0)
    xyz = rng.uniform(lo, hi, (n, 3)) + np.array([0.3, -0.2, 0.1])
    kw = dict(origin_A=(0.3, -0.2, 0.1), element="Pt", weights=rng.uniform(0.5, 1.5, n))
    if cfg.get("u_iso"):
        kw["u_iso_A2"] = rng.uniform(0.0, 0.1, n)
    if cfg.get("u_aniso"):
        M = rng.normal(scale=0.15, size=(n, 3, 3))
        kw["u_aniso_A2"] = M @ np.swapaxes(M, 1, 2) + 0.01 * np.eye(3)
    fast = simulate.render_atoms(xyz, shape, vs, backend="numpy", **kw)
    ref = simulate.render_atoms_reference(xyz, shape, vs, backend="numpy", **kw)
    assert fast.dtype == np.float32 and fast.shape == shape
    assert ref.max() > 1.0
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5 * float(ref.max()))


def test_sym3_closed_forms_match_numpy():
    rng = np.random.default_rng(12)
    M = rng.normal(scale=0.3, size=(400, 3, 3))
    C = M @ np.swapaxes(M, 1, 2) + 0.05 * np.eye(3)
    C[:5] = np.diag([0.2, 0.2, 0.2])              # repeated eigenvalues
    C[5:10] = np.diag([0.1, 0.3, 0.2])
    c6 = np.stack([C[:, 0, 0], C[:, 1, 1], C[:, 2, 2], C[:, 0, 1], C[:, 0, 2], C[:, 1, 2]], -1)
    inv6, det = simulate._sym3_inverse(c6)
    inv = np.linalg.inv(C)
    np.testing.assert_allclose(det, np.linalg.det(C), rtol=1e-10)
    np.testing.assert_allclose(inv6, np.stack([inv[:, 0, 0], inv[:, 1, 1], inv[:, 2, 2], inv[:, 0, 1],
                                               inv[:, 0, 2], inv[:, 1, 2]], -1), rtol=1e-9, atol=1e-9)
    for sl in (slice(None), slice(0, 5), slice(5, 10), slice(10, 11)):
        np.testing.assert_allclose(simulate._sym3_max_eigenvalue(c6[sl]),
                                   np.linalg.eigvalsh(C[sl]).max(), rtol=1e-12)


def test_render_single_atom_peak_and_mass():
    vs = 0.3
    m = simulate.render_atoms([[6.0, 6.0, 6.0]], (40, 40, 40), vs, element="Pt",
                              b_extra_A2=8.0, backend="numpy")
    assert np.unravel_index(np.argmax(m), m.shape) == (20, 20, 20)
    np.testing.assert_allclose(m.max(), simulate.atom_peak_value("Pt", 8.0), rtol=1e-6)
    a, _ = simulate.gaussian_terms("Pt", 8.0)
    np.testing.assert_allclose(m.sum(dtype=np.float64) * vs ** 3, a.sum(), rtol=2e-3)


def _random_atom_terms(rng, n, base_range, diag=(1.0, 4.0), offdiag=0.0, T=5):
    """Random per-atom kernel inputs: base (n, 3), frac, inv6 (n, T, 6), norm (n, T)."""
    base = rng.integers(base_range[0], base_range[1], (n, 3))
    frac = rng.uniform(-0.5, 0.5, (n, 3))
    inv6 = np.zeros((n, T, 6))
    inv6[..., :3] = rng.uniform(diag[0], diag[1], (n, T, 3))
    inv6[..., 3:] = rng.uniform(-offdiag, offdiag, (n, T, 3))
    norm = rng.uniform(0.1, 1.0, (n, T))
    return base, frac, inv6, norm


def test_render_windows_is_additive():
    from ptnp_gpu.kernels.render_atoms_cpu import render_planes
    rng = np.random.default_rng(3)
    n = 7
    base, frac, inv6, norm = _random_atom_terms(rng, n, (2, 14))
    off = np.stack(np.meshgrid(*[np.arange(-3, 4)] * 3, indexing="ij"), -1).reshape(-1, 3)[:, ::-1]
    vs = np.array([0.4, 0.4, 0.4])
    whole = render_planes(base, frac, inv6, norm, off, vs, np.zeros((16, 16, 16)))
    parts = np.zeros((16, 16, 16))
    for i in range(n):
        render_planes(base[i:i + 1], frac[i:i + 1], inv6[i:i + 1], norm[i:i + 1], off, vs, parts)
    np.testing.assert_allclose(whole, parts, rtol=1e-13)
    # one atom, one voxel: the value is the formula
    i, w = 2, 100
    d = (off[w] - frac[i]) * vs
    expect = np.sum(norm[i] * np.exp(-0.5 * (inv6[i, :, :3] * d ** 2).sum(1)))
    single = render_planes(base[i:i + 1], frac[i:i + 1], inv6[i:i + 1], norm[i:i + 1], off, vs,
                           np.zeros((16, 16, 16)))
    x, y, z = base[i] + off[w]
    np.testing.assert_allclose(single[z, y, x], expect, rtol=1e-13)


# ---------------------------------------------------------------------- window fits

def _window_voxels(shape, c, r):
    """Voxel indices (z, y, x) and offsets (x, y, z) within r of c, inside the map."""
    zz, yy, xx = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    u = np.stack([xx - c[0], yy - c[1], zz - c[2]], -1)
    sel = (u ** 2).sum(-1) <= r * r
    return sel, u[sel]


def _ref_normal_equations(vol, centres, r, vs, base=None):
    n = len(centres)
    base = np.zeros(n) if base is None else base
    A = np.zeros((n, 7, 7))
    b = np.zeros((n, 7))
    yy = np.zeros(n)
    cnt = np.zeros(n, np.int64)
    for a, c in enumerate(centres):
        sel, u = _window_voxels(vol.shape, c, r)
        val = vol[sel].astype(np.float64) - base[a]
        ok = val > 0
        x, y, z = (u[ok] * vs).T
        phi = np.stack([np.ones_like(x), x * x, y * y, z * z, x * y, x * z, y * z], 1)
        w = val[ok]
        A[a] = (phi * w[:, None]).T @ phi
        b[a] = (phi * w[:, None]).T @ np.log(w)
        yy[a] = w @ np.log(w) ** 2
        cnt[a] = ok.sum()
    return A, b, yy, cnt


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_window_normal_equations_match_reference(dtype):
    rng = np.random.default_rng(5)
    vol = rng.normal(0.5, 1.0, (18, 20, 22)).astype(dtype)     # about 30 % non-positive
    centres = np.vstack([rng.uniform(-1, [22, 20, 18], (25, 3)), [[0.0, 0.0, 0.0], [21.5, 19.2, 17.9]]])
    vs = np.array([0.36, 0.33, 0.4])
    A, b, yy, cnt = gk.window_normal_equations(vol, centres, 2.7, voxel_size_A=vs)
    Ar, br, yr, cr = _ref_normal_equations(vol, centres, 2.7, vs)
    np.testing.assert_array_equal(cnt, cr)
    np.testing.assert_allclose(yy, yr, rtol=1e-10, atol=1e-12)
    assert cr.min() > 0 and cr.max() > 40
    np.testing.assert_allclose(A, Ar, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b, br, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(A, np.swapaxes(A, 1, 2))
    # a per-atom baseline is subtracted before the positivity test, the log and the weights
    base = rng.uniform(-0.5, 0.8, len(centres))
    A, b, yy, cnt = gk.window_normal_equations(vol, centres, 2.7, voxel_size_A=vs, baseline=base)
    Ar, br, yr, cr = _ref_normal_equations(vol, centres, 2.7, vs, base)
    np.testing.assert_array_equal(cnt, cr)
    np.testing.assert_allclose(A, Ar, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b, br, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(yy, yr, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="baseline"):
        gk.window_normal_equations(vol, centres, 2.7, baseline=base[:-1])


def test_window_fit_recovers_anisotropic_U():
    """Fit an exact anisotropic Gaussian: β gives back its covariance (Å²)."""
    rng = np.random.default_rng(8)
    vs = 0.3
    shape = (24, 24, 24)
    zz, yy, xx = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    vol = np.zeros(shape)
    centres = np.array([[7.3, 8.1, 7.6], [16.2, 15.7, 16.4]])
    Us = []
    for c in centres:
        M = rng.normal(scale=0.25, size=(3, 3))
        U = M @ M.T + 0.15 * np.eye(3)
        Us.append(U)
        d = np.stack([xx - c[0], yy - c[1], zz - c[2]], -1) * vs
        vol += 5.0 * np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, np.linalg.inv(U), d))
    ne = gk.window_normal_equations(vol, centres, 4.0, voxel_size_A=vs)
    beta, r2, ok = gk.solve_normal_equations(ne)
    assert ok.all()
    np.testing.assert_allclose(r2, 1.0, atol=1e-9)          # exact Gaussians: perfect log fit
    for k in range(2):
        P = -2.0 * np.diag(beta[k, 1:4])
        P[0, 1] = P[1, 0] = -beta[k, 4]
        P[0, 2] = P[2, 0] = -beta[k, 5]
        P[1, 2] = P[2, 1] = -beta[k, 6]
        np.testing.assert_allclose(np.linalg.inv(P), Us[k], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(np.exp(beta[k, 0]), 5.0, rtol=1e-3)
    # isotropic reduction: an isotropic Gaussian gives U_iso = its variance
    iso = np.exp(-0.5 * ((xx - 12.2) ** 2 + (yy - 11.9) ** 2 + (zz - 12.4) ** 2) * vs ** 2 / 0.07)
    ne = gk.window_normal_equations(iso, [[12.2, 11.9, 12.4], [0.2, 0.0, 0.0]], 3.5, voxel_size_A=vs)
    beta, r2, ok = gk.solve_normal_equations(gk.iso_normal_equations(ne))
    assert ok.tolist() == [True, True] and beta.shape == (2, 2)
    np.testing.assert_allclose(-1.0 / (2.0 * beta[0, 1]), 0.07, rtol=1e-8)
    # too few voxels (corner atom with I ≈ 0 everywhere is still > 0; force it): not solved
    few = gk.NormalEquations(ne.A, ne.rhs, ne.yy, np.array([3, 100]))
    beta, r2, ok = gk.solve_normal_equations(few)
    assert ok.tolist() == [False, True] and np.isnan(beta[0]).all() and np.isnan(r2[0])


def test_window_fits_match_displacement_module():
    """Same β-derived U_iso, U and R² as the gather-based fits of ptnp_gpu.displacement."""
    disp = pytest.importorskip("ptnp_gpu.displacement")
    from ptnp_gpu.synth import make_particle
    p = make_particle(n_atoms=60, seed=4, noise=0.05)
    m = p.map
    vox = m.xyz_A_to_voxel(p.xyz_A)
    r_A = disp.fit_radius_A(2.77)
    vs = m.voxel_size_A
    values, d_A, inside, _ = disp.gather_windows(m.data, vox, disp.window_offsets(r_A, vs), vs)
    ref = disp.fit_displacements(values, d_A, inside, r_A)
    ne = gk.window_normal_equations(m.data, vox, r_A / vs[0], voxel_size_A=vs)
    np.testing.assert_array_equal(ne.count, ref["n_fit_voxels"])
    b_iso, r2_iso, ok_iso = gk.solve_normal_equations(gk.iso_normal_equations(ne))
    ok_iso &= b_iso[:, 1] < 0
    np.testing.assert_array_equal(ok_iso, ~ref["u_iso_failed"])
    np.testing.assert_allclose(-0.5 / b_iso[ok_iso, 1], ref["u_iso_A2"][ok_iso], rtol=1e-6)
    np.testing.assert_allclose(r2_iso[ok_iso], ref["u_iso_r2"][ok_iso], rtol=1e-6, atol=1e-9)
    b, r2, ok = gk.solve_normal_equations(ne)
    P = np.stack([np.stack([-2 * b[:, 1], -b[:, 4], -b[:, 5]], -1),
                  np.stack([-b[:, 4], -2 * b[:, 2], -b[:, 6]], -1),
                  np.stack([-b[:, 5], -b[:, 6], -2 * b[:, 3]], -1)], -2)
    good = ~ref["u_aniso_failed"]
    assert good.mean() > 0.8
    np.testing.assert_allclose(np.linalg.inv(P[good]), ref["u_A2"][good], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(r2[good], ref["u_aniso_r2"][good], rtol=1e-6, atol=1e-9)


def test_window_pearson_matches_reference():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(16, 17, 15)).astype(np.float32)
    b = (0.6 * a + rng.normal(size=a.shape)).astype(np.float32)
    centres = np.vstack([rng.uniform(0, [15, 17, 16], (30, 3)), [[-0.4, 0.2, 0.3]]])
    r, sums = gk.window_pearson(a, b, centres, 3.2, return_sums=True)
    for k, c in enumerate(centres):
        sel, _ = _window_voxels(a.shape, c, 3.2)
        assert sums[k, 0] == sel.sum()
        np.testing.assert_allclose(r[k], np.corrcoef(a[sel].astype(float), b[sel].astype(float))[0, 1],
                                   rtol=1e-9)
        np.testing.assert_allclose(sums[k, 5], np.dot(a[sel].astype(float), b[sel]), rtol=1e-10)
    assert 0.3 < np.nanmean(r) < 0.8
    const = gk.window_pearson(np.ones_like(a), b, centres[:3], 2.0)
    assert np.isnan(const).all()


# ---------------------------------------------------------------------- mean shift

def _ref_mean_shift(raw_box, centre_vox, base, radius_vox, sigma_vox, n_iter=3):
    """The array code of ``ptnp_gpu.detect._refine_centres`` (NumPy, SciPy)."""
    r = int(np.ceil(radius_vox))
    g = np.arange(-r, r + 1)
    oz, oy, ox = np.meshgrid(g, g, g, indexing="ij")
    off = np.stack([ox.ravel(), oy.ravel(), oz.ravel()], 1).astype(np.float64)
    off = off[(off ** 2).sum(1) <= (radius_vox + 0.5) ** 2]
    c = np.asarray(centre_vox, dtype=np.float64)
    for _ in range(n_iter):
        rc = np.rint(c)
        pts = rc[:, None, :] + off[None]                        # (N, W, 3) xyz voxels
        d = pts - c[:, None, :]
        coords = pts.reshape(-1, 3)[:, ::-1].T
        v = ndi.map_coordinates(raw_box, coords, order=0, mode="nearest").reshape(pts.shape[:2])
        wgt = np.clip(v - base, 0.0, None) * np.exp(-0.5 * (d ** 2).sum(-1) / sigma_vox ** 2)
        s = wgt.sum(1)
        shift = (wgt[..., None] * d).sum(1) / np.where(s > 0, s, 1.0)[:, None]
        c = c + np.clip(shift, -1.0, 1.0)
    return c


def _mean_shift_case(rng, dtype, shape=(20, 22, 26), n=300):
    """Random map with an empty corner, and centres: random, near and beyond the faces,
    half-integer (rint ties), and inside the empty corner (no weight: no shift)."""
    vol = rng.normal(0.3, 1.0, shape)
    vol[:10, :10, :10] = -rng.uniform(0.0, 2.0, (10, 10, 10))        # all below base
    vol = vol.astype(dtype)
    hi = np.array([shape[2], shape[1], shape[0]], float)
    empty = rng.uniform(2.0, 3.5, (6, 3))        # windows of radius <= 4.3 stay in the corner
    c = np.vstack([rng.uniform(-2.0, hi + 1.0, (n, 3)),
                   rng.uniform(-0.6, 0.6, (20, 3)) + rng.choice([0.0, 1.0], (20, 3)) * (hi - 1),
                   rng.integers(0, hi.astype(int), (20, 3)) + 0.5,
                   [[0.0, 0.0, 0.0], hi - 1, [-5.0, 3.2, 40.0], [2.5, -0.5, 1.5]],
                   empty])
    return vol, c, len(empty)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("radius,sigma,n_iter", [(3.8, 1.45, 3), (2.0, 0.9, 1), (4.6, 2.2, 5)])
def test_mean_shift_twin_matches_reference(dtype, radius, sigma, n_iter):
    rng = np.random.default_rng(int(10 * radius) + n_iter)
    vol, c, n_empty = _mean_shift_case(rng, dtype)
    base = 0.0123456789123       # not a float32: the subtraction is in the map's type
    out = gk.mean_shift_centres(vol, c, base, radius, sigma, n_iter=n_iter)
    ref = _ref_mean_shift(vol, c, base, radius, sigma, n_iter)
    assert out.dtype == np.float64 and out.shape == c.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-9)
    moved = np.abs(ref - c).max(1)
    assert np.median(moved) > 0.05 and moved.max() > 0.5
    np.testing.assert_array_equal(out[-n_empty:], c[-n_empty:])   # zero weights: no shift
    np.testing.assert_array_equal(ref[-n_empty:], c[-n_empty:])


def test_mean_shift_edge_cases():
    rng = np.random.default_rng(14)
    vol = rng.normal(size=(12, 13, 14)).astype(np.float32)
    c = rng.uniform(0, 12, (15, 3))
    # no rounds, no atoms: the centres (a float64 copy)
    out = gk.mean_shift_centres(vol, c.astype(np.float32), 0.0, 3.0, 1.2, n_iter=0)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, c.astype(np.float32))
    assert gk.mean_shift_centres(vol, np.zeros((0, 3)), 0.0, 3.0, 1.2).shape == (0, 3)
    # base above the whole map: nothing moves
    np.testing.assert_array_equal(gk.mean_shift_centres(vol, c, 10.0, 3.0, 1.2), c)
    # integer maps are read as float32
    iv = rng.integers(0, 5, vol.shape).astype(np.int16)
    np.testing.assert_allclose(gk.mean_shift_centres(iv, c, 1.5, 3.0, 1.2),
                               _ref_mean_shift(iv.astype(np.float32), c, 1.5, 3.0, 1.2), atol=1e-9)
    # NaN voxels weigh nothing; non-finite centres stay as they are
    nan_vol = vol.copy()
    nan_vol[6, 6, 6] = np.nan
    low = vol.copy()
    low[6, 6, 6] = -np.inf
    cn = np.vstack([c, [[np.nan, 2.0, 3.0], [np.inf, 1.0, 1.0]]])
    a = gk.mean_shift_centres(nan_vol, cn, 0.0, 3.0, 1.2)
    np.testing.assert_array_equal(a, gk.mean_shift_centres(low, cn, 0.0, 3.0, 1.2))
    np.testing.assert_array_equal(a[-2:], cn[-2:])
    assert np.isfinite(a[:-2]).all()
    for bad in (dict(radius_vox=0.0), dict(sigma_vox=-1.0), dict(sigma_vox=np.nan),
                dict(n_iter=-1), dict(n_iter=1.5)):
        kw = dict(radius_vox=3.0, sigma_vox=1.2, n_iter=3) | bad
        with pytest.raises(ValueError):
            gk.mean_shift_centres(vol, c, 0.0, **kw)
    with pytest.raises(ValueError):
        gk.mean_shift_centres(vol, c[:, :2], 0.0, 3.0, 1.2)


def test_mean_shift_offsets_are_the_sphere():
    for radius in (0.4, 1.0, 2.5, 3.8):
        off = gk.mean_shift_offsets(radius)
        r = int(np.ceil(radius))
        cube = np.array([(x, y, z) for z in range(-r, r + 1) for y in range(-r, r + 1)
                         for x in range(-r, r + 1)])
        expect = cube[(cube ** 2).sum(1) <= (radius + 0.5) ** 2]
        assert off.dtype == np.int32
        np.testing.assert_array_equal(off, expect)


# ---------------------------------------------------------------------- label moments

@pytest.mark.parametrize("label_dtype", [np.int32, np.int64, np.uint8])
def test_label_moments_match_scipy(label_dtype):
    rng = np.random.default_rng(7)
    mask = ndi.gaussian_filter(rng.normal(size=(20, 24, 28)), 1.2) > 0.12
    lab, n = ndi.label(mask, structure=np.ones((3, 3, 3)))
    assert 5 < n < 250
    lab = lab.astype(label_dtype)
    w = rng.uniform(0.1, 2.0, lab.shape).astype(np.float32)
    peak = np.round(rng.normal(size=lab.shape), 1).astype(np.float32)   # many ties
    m = gk.label_moments(lab, w, peak, n)
    idx = np.arange(1, n + 1)
    np.testing.assert_array_equal(m.count, ndi.sum_labels(np.ones_like(w), lab, idx).astype(int))
    np.testing.assert_allclose(m.sum_w, ndi.sum_labels(w.astype(float), lab, idx), rtol=1e-12)
    com = np.array(ndi.center_of_mass(w.astype(float), lab, idx))[:, ::-1]       # → x y z
    np.testing.assert_allclose(m.centres_vox_xyz(), com, rtol=1e-12)
    np.testing.assert_array_equal(m.peak_value, ndi.maximum(peak, lab, idx).astype(np.float32))
    first = [np.ravel_multi_index(p, lab.shape) for p in ndi.maximum_position(peak, lab, idx)]
    np.testing.assert_array_equal(m.peak_index, first)
    # fewer labels requested: the rest are ignored, the first ones unchanged
    m2 = gk.label_moments(lab, w, peak, 3)
    np.testing.assert_array_equal(m2.count, m.count[:3])
    np.testing.assert_array_equal(m2.peak_index, m.peak_index[:3])


def test_label_moments_empty_label_and_chunking():
    from ptnp_gpu.kernels.label_sums_cpu import label_moments_cpu
    lab = np.zeros((6, 5, 4), np.int32)
    lab[1, 2, 3] = 1
    lab[4, 0, 0] = 1
    lab[5, 4, 3] = 3                      # label 2 is empty
    w = np.full(lab.shape, 2.0, np.float32)
    p = np.zeros(lab.shape, np.float32)   # tie between the two voxels of label 1
    m = gk.label_moments(lab, w, p, 3)
    assert m.count.tolist() == [2, 0, 1]
    assert m.peak_index.tolist() == [1 * 20 + 2 * 4 + 3, -1, 5 * 20 + 4 * 4 + 3]
    assert m.peak_value[1] == -np.inf
    assert np.isnan(m.centres_vox_xyz()[1]).all()
    np.testing.assert_allclose(m.centres_vox_xyz()[0], [1.5, 1.0, 2.5])
    for chunks in (1, 2, 6):
        c, s, pv, pi = label_moments_cpu(lab, w, p, 3, n_chunks=chunks)
        np.testing.assert_array_equal(pi, m.peak_index)
        np.testing.assert_array_equal(s[:, 0], m.sum_w)


def _encode_peak_keys(values, flat_index):
    """NumPy port of the kernel's packing (ptnp_ordered_key << 32 | ~index)."""
    u = np.asarray(values, np.float32).view(np.uint32).astype(np.uint64)
    key = np.where(u & 0x80000000, ~u & 0xFFFFFFFF, u | 0x80000000)
    return (key << np.uint64(32)) | (np.uint64(0xFFFFFFFF) - np.asarray(flat_index, np.uint64))


def test_peak_key_packing_orders_and_decodes():
    """The 64-bit atomicMax key used on the GPU: order and decoding, on the host."""
    vals = np.array([-3.5, -0.0, 0.0, 1e-30, 2.25, 2.25, np.float32(3.4e38), -np.inf], np.float32)
    idx = np.array([10, 11, 12, 13, 40, 7, 3, 0], np.int64)
    keys = _encode_peak_keys(vals, idx)
    # larger value wins; among equal values (2.25) the lower index wins
    order = np.argsort(keys)
    assert idx[order[-1]] == 3 and keys[5] > keys[4]
    assert (np.diff(vals[order[:-1]].astype(float)) >= 0).all()
    v, i = _decode_peak_keys(np.append(keys, np.uint64(0)), np)
    np.testing.assert_array_equal(v[:-1], vals)
    np.testing.assert_array_equal(i[:-1], idx)
    assert v[-1] == -np.inf and i[-1] == -1


# ---------------------------------------------------------------------- CUDA sources on the host
# The .cu files themselves, compiled with g++ against kernels/host_emulation.h
# (threads of a block as std::threads, barriers, emulated shuffles and
# atomics), run on the CPU and must agree with the Numba twins: the kernels'
# own indexing, reductions and packing are checked without a GPU.

import ctypes  # noqa: E402

_DRIVERS = {
    "cell_pairs.cu": ((), """
extern "C" void emu_cell_pairs(const double* xyz, const long long* cell, const long long* order,
    const long long* start, long long n, unsigned long long hmask, double r2, long long* counts,
    const long long* ends, long long* oi, long long* oj, double* od, int block, int grid) {
  if (!ends)
    ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_cell_pairs_count,
        xyz, cell, order, start, n, hmask, r2, counts);
  else
    ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_cell_pairs_write,
        xyz, cell, order, start, n, hmask, r2, counts, ends, oi, oj, od);
}
extern "C" void emu_pair_table_sums(const double* xyz, const long long* cell, const long long* order,
    const long long* start, long long n, unsigned long long hmask, double r2, const double* xg,
    const double* yg, int ng, double* acc, int block, int grid) {
  ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_cell_pair_table_sums,
      xyz, cell, order, start, n, hmask, r2, xg, yg, ng, acc);
}
extern "C" void emu_cell_keys(const double* xyz, long long n, double edge, unsigned long long hmask,
    long long* cell, long long* key, int block, int grid) {
  ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_cell_keys,
      xyz, n, edge, hmask, cell, key);
}"""),
    "local_max.cu": ((("PTNP_MAP_T", "float"),), """
extern "C" void emu_local_max(const float* vol, const bool* mask, int nx, int ny, int nz,
    int use_mask, bool* out, int block, int grid) {
  ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_local_max,
      vol, mask, nx, ny, nz, use_mask, out);
}"""),
    "render_atoms.cu": ((), """
extern "C" void emu_clear_balls(const long long* c, long long n, const int* off, int n_off, int nz, int ny,
    int nx, bool* mask, int block, int grid) {
  ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_clear_balls, c, n, off, n_off, nz, ny,
      nx, mask);
}
extern "C" void emu_render(const int* base, const double* frac, const double* inv6,
    const double* norm, const int* off, int n, int T, int W, int nx, int ny, int nz,
    double vx, double vy, double vz, double* out, int block, int grid_y) {
  ptnp_emu_launch({(unsigned)n, (unsigned)grid_y, 1}, {(unsigned)block, 1, 1}, ptnp_render_atoms,
      base, frac, inv6, norm, off, n, T, W, nx, ny, nz, vx, vy, vz, out);
}"""),
    "window_fits.cu": ((("PTNP_MAP_T", "float"),), """
extern "C" void emu_normal_eq(const float* map, int nx, int ny, int nz, const double* c,
    const double* base, int n, int half, double r2, double vx, double vy, double vz, double* A,
    double* rhs, double* yy, long long* cnt, int block) {
  ptnp_emu_launch({(unsigned)n, 1, 1}, {(unsigned)block, 1, 1}, ptnp_window_normal_eq,
      map, nx, ny, nz, c, base, n, half, r2, vx, vy, vz, A, rhs, yy, cnt);
}
extern "C" void emu_pearson(const float* a, const float* b, int nx, int ny, int nz,
    const double* c, int n, int half, double r2, double* sums, int block) {
  ptnp_emu_launch({(unsigned)n, 1, 1}, {(unsigned)block, 1, 1}, ptnp_window_pearson,
      a, b, nx, ny, nz, c, n, half, r2, sums);
}
extern "C" void emu_mean_shift(const float* map, int nx, int ny, int nz, const double* c, int n,
    const int* off, int n_off, float base, double sigma2, int n_iter, double* out, int block) {
  ptnp_emu_launch({(unsigned)n, 1, 1}, {(unsigned)block, 1, 1}, ptnp_mean_shift,
      map, nx, ny, nz, c, n, off, n_off, base, sigma2, n_iter, out);
}
extern "C" void emu_linear_at(const float* vol, int nx, int ny, int nz, const double* xyz, long long m,
    float* out, int block, int grid) {
  ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_linear_at, vol, nx, ny, nz, xyz, m, out);
}
extern "C" void emu_solve_normal(const double* A, const double* rhs, const double* yy,
    const long long* count, long long n, int p, long long min_count, double ridge, double* beta,
    double* r2, unsigned char* ok, int block, int grid) {
  ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_solve_normal,
      A, rhs, yy, count, n, p, min_count, ridge, beta, r2, ok);
}"""),
    "reduce.cu": ((("PTNP_INDEX_T", "int"), ("PTNP_MAP_T", "float")), """
extern "C" void emu_segment_sum(const int* index, const double* values, long long p, int k, long long n,
    double* out, int block, int grid) {
  ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_segment_sum,
      index, values, p, k, n, out);
}
extern "C" void emu_segment_sum_shared(const int* index, const double* values, long long p, int k,
    long long n, double* out, int block, int grid) {
  ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_segment_sum_shared,
      index, values, p, k, n, out);
}
extern "C" void emu_affine(const double* xyz, const double* u, const long long* a, const long long* b,
    const double* w, long long np_, long long n, double* out, int block, int grid) {
  ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_pair_affine_sums,
      xyz, u, a, b, w, np_, n, out);
}
extern "C" void emu_radial(const long long* i, const long long* j, const double* w, const double* r,
    const double* ur, long long np_, long long n, double* s, double* t, int block, int grid) {
  ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_radial_fit_means,
      i, j, w, r, ur, np_, n, s);
  ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_radial_fit_spread,
      i, j, w, r, ur, s, np_, n, t);
}
extern "C" void emu_moments(const float* data, long long n0, long long n1, long long n2, long long s0,
    long long s1, long long s2, const double* shift, double* out, int block, int grid) {
  ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_shifted_moments,
      data, n0, n1, n2, s0, s1, s2, shift, out);
}"""),
    "fourier.cu": ((), """
extern "C" void emu_atom_filter(float* F, float* K, const float* fz, const float* fy, const float* fx,
    int nz, int ny, int nx, const float* a, const float* m, int nt, float blo, float bsc, int hp,
    float hlo, float hsc, const float* ws, const float* wg, int nw, int block, int grid) {
  ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_atom_filter,
      F, K, fz, fy, fx, nz, ny, nx, a, m, nt, blo, bsc, hp, hlo, hsc, ws, wg, nw);
}
extern "C" void emu_rfft_shells(const float* fz, const float* fy, const float* fx, int nz, int ny,
    int nx, float ds, long long top, long long* shell, int block, int grid) {
  ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_rfft_shells,
      fz, fy, fx, nz, ny, nx, ds, top, shell);
}"""),
    "thin_peaks.cu": ((), """
extern "C" void emu_thin_peaks(const long long* pi, const long long* pj, long long n_pairs,
    const double* value, const long long* group, int use_group, long long n, int max_rounds,
    unsigned char* kept, unsigned char* sup, int block) {
  ptnp_emu_launch({1, 1, 1}, {(unsigned)block, 1, 1}, ptnp_thin_peaks,
      pi, pj, n_pairs, value, group, use_group, n, max_rounds, kept, sup);
}"""),
    "label_cc.cu": ((("PTNP_MAP_T", "float"),), """
static void emu_cc_rest(int* L, long long n, int ny, int nx, int* tiles, int* ends, int* out,
    int block, int grid, int items) {
  ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_cc_merge, L, n, ny, nx);
  const long long tiles_n = (n + (long long)block * items - 1) / ((long long)block * items);
  ptnp_emu_launch({(unsigned)tiles_n, 1, 1}, {(unsigned)block, 1, 1}, ptnp_cc_count, L, n, items, tiles);
  for (long long k = 0; k < tiles_n; ++k) ends[k] = tiles[k] + (k ? ends[k - 1] : 0);
  ptnp_emu_launch({(unsigned)tiles_n, 1, 1}, {(unsigned)block, 1, 1}, ptnp_cc_number, L, n, items,
      (const int*)ends, out);
  ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_cc_finish, (const int*)L, n, out);
}
extern "C" void emu_cc_above(const float* vol, const float* t, int nb, int pz, int nz, int ny, int nx,
    int* L, int* tiles, int* ends, int* out, int block, int grid, int items) {
  ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_cc_init_above, vol, t, nb, pz,
      nz, ny, nx, L);
  emu_cc_rest(L, (long long)nb * pz * ny * nx, ny, nx, tiles, ends, out, block, grid, items);
}
extern "C" void emu_occupancy(const float* vol, int nz, int ny, int nx, float t, int* prof, int block,
    int grid) {
  ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_occupancy_above, vol, nz, ny, nx,
      t, prof);
}
extern "C" void emu_cc_mask(const bool* mask, long long n, int ny, int nx, int* L, int* tiles,
    int* ends, int* out, int block, int grid, int items) {
  ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_cc_init_mask, mask, n, L);
  emu_cc_rest(L, n, ny, nx, tiles, ends, out, block, grid, items);
}"""),
    "filter1d.cu": ((("PTNP_IN_T", "float"), ("PTNP_OUT_T", "float")), """
extern "C" void emu_filter1d(const float* in, float* out, int nz, int ny, int nx, int axis, const double* w,
    int len, int left, int mode, double cval, int block, int grid) {
  ptnp_emu_launch({(unsigned)grid, 1, 1}, {(unsigned)block, 1, 1}, ptnp_filter1d, in, out, nz, ny, nx, axis,
      w, len, left, mode, cval);
}"""),
    "label_sums.cu": ((("PTNP_LABEL_T", "int"), ("PTNP_WEIGHT_T", "float"), ("PTNP_RUN", "4")), """
extern "C" void emu_label_moments(const int* lab, const float* w, const float* p, int nx, int ny,
    int nz, int wpz, long long n_labels, unsigned long long* count, double* sums,
    unsigned long long* key, int block) {
  const long long n_threads = (long long)((nx + PTNP_RUN - 1) / PTNP_RUN) * ny * nz;
  ptnp_emu_launch({(unsigned)((n_threads + block - 1) / block), 1, 1}, {(unsigned)block, 1, 1},
      ptnp_label_moments, lab, w, p, nx, ny, nz, wpz, n_labels, count, sums, key);
}"""),
}


def _build_host_lib(tmp, stem, defines, source):
    """Compile a kernel source (with ``defines``) after the emulation header; return the CDLL."""
    shim = KERNEL_DIR.joinpath("host_emulation.h")
    if not shim.is_file():   # not shipped as package data: use the source tree
        shim = Path(__file__).resolve().parents[1] / "kernels" / "host_emulation.h"
    cpp = tmp / f"{stem}.cpp"
    cpp.write_text(f'#include "{shim}"\n' + "".join(f"#define {k} {v}\n" for k, v in defines) + source)
    so = tmp / f"{stem}.so"
    res = subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", str(cpp),
                          "-o", str(so)], capture_output=True, text=True)
    assert res.returncode == 0, f"{stem}: host build failed\n{res.stderr}"
    return ctypes.CDLL(str(so))


def test_every_kernel_file_has_a_host_driver():
    assert sorted(_DRIVERS) == CU_FILES


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """ctypes handles of the .cu files built for the host (skip without g++)."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not installed")
    d = tmp_path_factory.mktemp("cuda_host")
    return {cu: _build_host_lib(d, cu.replace(".", "_"), defines, gk.kernel_source(cu) + "\n" + driver)
            for cu, (defines, driver) in _DRIVERS.items()}


def _ptr(a):
    assert a.flags.c_contiguous
    return ctypes.c_void_p(a.ctypes.data)


def test_render_kernel_on_host(emulated):
    rng = np.random.default_rng(30)
    n, T = 9, 5
    base = rng.integers(-1, 13, (n, 3)).astype(np.int32)
    frac = rng.uniform(-0.5, 0.5, (n, 3))
    M = rng.normal(size=(n, T, 3, 3))
    inv = M @ np.swapaxes(M, -1, -2) + 2 * np.eye(3)
    inv6 = np.ascontiguousarray(np.stack([inv[..., 0, 0], inv[..., 1, 1], inv[..., 2, 2],
                                          inv[..., 0, 1], inv[..., 0, 2], inv[..., 1, 2]], -1))
    norm = rng.uniform(0.1, 1.0, (n, T))
    off = simulate._window_offsets(1.6, np.full(3, 0.4)).astype(np.int32)
    vs = np.array([0.4, 0.38, 0.42])
    shape = (12, 13, 14)
    out = np.zeros(shape)
    emulated["render_atoms.cu"].emu_render(
        _ptr(base), _ptr(frac), _ptr(inv6), _ptr(norm), _ptr(off), n, T, len(off),
        shape[2], shape[1], shape[0], ctypes.c_double(vs[0]), ctypes.c_double(vs[1]),
        ctypes.c_double(vs[2]), _ptr(out), 32, 3)
    twin = gk.render_windows(np.zeros(shape), base, frac, inv6, norm, off, vs)
    assert twin.max() > 0.5
    np.testing.assert_allclose(out, twin, rtol=1e-12, atol=1e-14)


def test_window_kernels_on_host(emulated):
    rng = np.random.default_rng(31)
    vol = rng.normal(0.5, 1.0, (11, 12, 13)).astype(np.float32)
    b = (vol + rng.normal(size=vol.shape)).astype(np.float32)
    c = np.ascontiguousarray(rng.uniform(-1, [13, 12, 11], (7, 3)))
    vs = np.array([0.36, 0.33, 0.4])
    r = 2.4
    lib = emulated["window_fits.cu"]
    A = np.zeros((7, 7, 7))
    rhs = np.zeros((7, 7))
    yy = np.zeros(7)
    cnt = np.zeros(7, np.int64)
    base = rng.uniform(-0.3, 0.6, 7)
    lib.emu_normal_eq(_ptr(vol), 13, 12, 11, _ptr(c), _ptr(base), 7, 3, ctypes.c_double(r * r),
                      ctypes.c_double(vs[0]), ctypes.c_double(vs[1]), ctypes.c_double(vs[2]),
                      _ptr(A), _ptr(rhs), _ptr(yy), _ptr(cnt), 64)
    At, rt, yt, ct = gk.window_normal_equations(vol, c, r, voxel_size_A=vs, baseline=base)
    np.testing.assert_array_equal(cnt, ct)
    np.testing.assert_allclose(yy, yt, rtol=1e-12)
    assert ct.min() > 5
    np.testing.assert_allclose(A, At, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(rhs, rt, rtol=1e-12, atol=1e-13)
    sums = np.zeros((7, 6))
    lib.emu_pearson(_ptr(vol), _ptr(b), 13, 12, 11, _ptr(c), 7, 3, ctypes.c_double(r * r),
                    _ptr(sums), 96)
    _, st = gk.window_pearson(vol, b, c, r, return_sums=True)
    np.testing.assert_allclose(sums, st, rtol=1e-12, atol=1e-12)


def test_mean_shift_kernel_on_host(emulated):
    rng = np.random.default_rng(33)
    vol = rng.normal(0.2, 1.0, (11, 12, 13)).astype(np.float32)
    vol[:8, :8, :8] = -1.0             # zero weights in the window around (2.5, 2.5, 2.5)
    vol[5, 8, 9] = np.nan
    c = np.vstack([rng.uniform(-1.5, [14, 13, 12], (7, 3)), [[2.5, 2.5, 2.5], [6.5, 3.0, 0.5],
                                                             [np.nan, 1.0, 1.0]]])
    base, radius, sigma = 0.0123456789123, 3.8, 1.45
    off = gk.mean_shift_offsets(radius)
    out = np.zeros_like(c)
    for block in (64, 32):
        emulated["window_fits.cu"].emu_mean_shift(
            _ptr(vol), 13, 12, 11, _ptr(c), len(c), _ptr(off), len(off), ctypes.c_float(base),
            ctypes.c_double(sigma * sigma), 3, _ptr(out), block)
        twin = gk.mean_shift_centres(vol, c, base, radius, sigma)
        np.testing.assert_allclose(out, twin, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(out[-3], c[-3])
        assert np.isnan(out[-1, 0]) and np.abs(out[:-3] - c[:-3]).max() > 0.3
    ref = _ref_mean_shift(np.nan_to_num(vol, nan=-1.0), c[:-1], base, radius, sigma)
    np.testing.assert_allclose(out[:-1], ref, rtol=0, atol=1e-9)


def _stacked_scipy_labels(vol, t, pz):
    import scipy.ndimage as sndi
    nz, ny, nx = vol.shape
    mask = np.zeros((len(t), pz, ny, nx), bool)
    mask[:, :nz] = vol[None] > t[:, None, None, None]
    return sndi.label(mask.reshape(len(t) * pz, ny, nx), structure=np.ones((3, 3, 3)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_cc_twin_matches_scipy(seed):
    """The Numba twin of label_cc.cu numbers components exactly as scipy.ndimage.label does,
    for boolean masks of any density and for thresholds stacked with gap planes."""
    from ptnp_gpu.kernels.label_cc_cpu import cc_init_above, cc_init_mask, cc_label
    rng = np.random.default_rng(500 + seed)
    for _ in range(12):
        shape = tuple(int(s) for s in rng.integers(1, 13, 3))
        m = rng.random(shape) < rng.uniform(0.05, 0.7)
        lab, n = ndi.label(m, structure=np.ones((3, 3, 3)))
        out, n2 = cc_label(cc_init_mask(m), shape)
        assert n2 == n
        np.testing.assert_array_equal(out, lab)
        vol = ndi.gaussian_filter(rng.normal(size=shape), 0.7).astype(np.float32)
        t = np.sort(rng.normal(scale=0.3, size=3)).astype(np.float32)
        for pz in (shape[0] + 1, shape[0] + 2):
            lab, n = _stacked_scipy_labels(vol, t, pz)
            out, n2 = cc_label(cc_init_above(vol, t, pz), lab.shape)
            assert n2 == n
            np.testing.assert_array_equal(out, lab)


@pytest.mark.parametrize("block,grid,items", [(32, 2, 1), (64, 3, 3), (256, 4, 16)])
def test_label_cc_kernels_on_host(emulated, block, grid, items):
    """label_cc.cu itself (threads of a block concurrent; many tiles at small block x items)
    against scipy: stacked thresholds and a boolean mask with one large component."""
    rng = np.random.default_rng(510 + block)
    lib = emulated["label_cc.cu"]
    vol = ndi.gaussian_filter(rng.normal(size=(9, 11, 13)), 1.0).astype(np.float32)
    t = np.quantile(vol, [0.5, 0.75, 0.9]).astype(np.float32)
    pz = vol.shape[0] + 1
    ref, n = _stacked_scipy_labels(vol, t, pz)
    total = ref.size
    tiles_n = -(-total // (block * items))
    L = np.empty(total, np.int32)
    tiles, ends = np.zeros(tiles_n, np.int32), np.zeros(tiles_n, np.int32)
    out = np.full(total, -7, np.int32)
    lib.emu_cc_above(_ptr(vol), _ptr(t), len(t), pz, *vol.shape, _ptr(L), _ptr(tiles), _ptr(ends),
                     _ptr(out), block, grid, items)
    assert n > 10 and ends[-1] == n
    np.testing.assert_array_equal(out.reshape(ref.shape), ref)
    mask = rng.random((8, 10, 12)) < 0.35
    ref, n = ndi.label(mask, structure=np.ones((3, 3, 3)))
    tiles_n = -(-mask.size // (block * items))
    L = np.empty(mask.size, np.int32)
    tiles, ends = np.zeros(tiles_n, np.int32), np.zeros(tiles_n, np.int32)
    out = np.full(mask.size, -7, np.int32)
    lib.emu_cc_mask(_ptr(mask), ctypes.c_longlong(mask.size), 10, 12, _ptr(L), _ptr(tiles), _ptr(ends),
                    _ptr(out), block, grid, items)
    assert ends[-1] == n and np.bincount(ref.ravel())[1:].max() > 100
    np.testing.assert_array_equal(out.reshape(ref.shape), ref)


def _host_label_kernel_matches(emulated, lab, w, p, n, block, ref):
    """The host-built ``ptnp_label_moments`` on (lab, w, p) gives ``ref``'s moments; the
    decoded peak indices."""
    count = np.zeros(n, np.uint64)
    sums = np.zeros((n, 4))
    key = np.zeros(n, np.uint64)
    nz, ny, nx = lab.shape
    emulated["label_sums.cu"].emu_label_moments(_ptr(lab), _ptr(w), _ptr(p), nx, ny, nz, w.shape[0],
                                                ctypes.c_longlong(n), _ptr(count), _ptr(sums),
                                                _ptr(key), block)
    np.testing.assert_array_equal(count.astype(np.int64), ref.count)
    np.testing.assert_allclose(sums[:, 0], ref.sum_w, rtol=1e-12)
    np.testing.assert_allclose(sums[:, 1:], ref.sum_w_xyz, rtol=1e-12)
    pv, pi = _decode_peak_keys(key, np)
    np.testing.assert_array_equal(pi, ref.peak_index)
    np.testing.assert_array_equal(pv, ref.peak_value)
    return pi


def test_label_kernel_on_host(emulated):
    rng = np.random.default_rng(32)
    lab = rng.integers(0, 6, (5, 6, 11)).astype(np.int32)   # label 6.. absent, runs cross labels
    lab[lab == 3] = 0
    lab[0, 0, 0] = 9                                          # above n_labels: ignored
    w = rng.uniform(0.1, 2.0, lab.shape).astype(np.float32)
    p = np.round(rng.normal(size=lab.shape), 0).astype(np.float32)   # ties and negatives
    m = gk.label_moments(lab, w, p, 6)
    pi = _host_label_kernel_matches(emulated, lab, w, p, 6, 32, m)
    assert m.count[2] == 0 and pi[2] == -1


def test_label_kernel_signed_zeros_tie_on_host(emulated):
    """A label whose peak value is zero, held as -0.0 and +0.0 in different voxels: the two are
    equal (a tie, the lowest flat index wins), in the kernel as in its twin and numpy.argmax. The
    kernel's packed keys once ranked +0.0 above -0.0 (the H200 parity run's 1 label in 390)."""
    rng = np.random.default_rng(34)
    lab = rng.integers(1, 5, (4, 5, 9)).astype(np.int32)
    w = rng.uniform(0.1, 2.0, lab.shape).astype(np.float32)
    p = -rng.uniform(0.5, 2.0, lab.shape).astype(np.float32)
    for r in range(1, 5):
        idx = np.flatnonzero(lab.ravel() == r)
        p.ravel()[idx[1]] = np.float32(-0.0) if r % 2 else np.float32(0.0)
        p.ravel()[idx[-1]] = np.float32(0.0) if r % 2 else np.float32(-0.0)
    m = gk.label_moments(lab, w, p, 4)
    for r in range(1, 5):
        idx = np.flatnonzero(lab.ravel() == r)
        assert m.peak_index[r - 1] == idx[1] == idx[np.argmax(p.ravel()[idx])]
    _host_label_kernel_matches(emulated, lab, w, p, 4, 32, m)


def test_label_kernel_reads_periodic_weights_on_host(emulated):
    """Labels of three thresholds stacked along z (planes 0-4, 5-9, 10-14) with one copy of the
    weights and peak map (5 planes): the kernel, its twin and the wrapper all give what the
    weights tiled to the labels' size give."""
    rng = np.random.default_rng(33)
    lab = rng.integers(0, 8, (15, 6, 11)).astype(np.int32)
    w = rng.uniform(0.1, 2.0, (5, 6, 11)).astype(np.float32)
    p = np.round(rng.normal(size=w.shape), 0).astype(np.float32)
    n = 7
    tiled = gk.label_moments(lab, np.tile(w, (3, 1, 1)), np.tile(p, (3, 1, 1)), n)
    m = gk.label_moments(lab, w, p, n)
    for a, b in zip((m.count, m.sum_w, m.sum_w_xyz, m.peak_value, m.peak_index),
                    (tiled.count, tiled.sum_w, tiled.sum_w_xyz, tiled.peak_value, tiled.peak_index)):
        np.testing.assert_array_equal(a, b)
    _host_label_kernel_matches(emulated, lab, w, p, n, 64, tiled)
    with pytest.raises(ValueError, match="divides"):
        gk.label_moments(lab, w[:4], p[:4], n)


# ---------------------------------------------------------------------- CuPy branch, emulated device
# The public functions' CuPy branches (argument order, C types, launch
# geometry, output decoding) run here against the host-built kernels: a fake
# backend with ``is_gpu`` True and NumPy as ``xp``, and a ``get_function``
# that checks every launch argument against the kernel's C signature before
# running the emulated kernel.

import re  # noqa: E402

_C_SCALARS = {"int": np.int32, "long long": np.int64, "unsigned long long": np.uint64, "double": np.float64,
              "float": np.float32}
_C_POINTEES = {"int": np.int32, "long long": np.int64, "unsigned long long": np.uint64,
               "double": np.float64, "float": np.float32, "unsigned int": np.uint32,
               "unsigned char": np.uint8, "short": np.int16, "unsigned short": np.uint16, "bool": np.bool_}


def _kernel_signatures(src, defines):
    """{name: [(c type, is_pointer, is_const)]} of the extern "C" kernels, defines applied."""
    src = re.sub(r"//[^\n]*", "", src)
    out = {}
    for name, params in re.findall(r'extern "C" __global__ void (ptnp_\w+)\((.*?)\)\s*\{', src, re.S):
        sig = []
        for p in params.split(","):
            const = "const" in p.split()
            p = p.replace("__restrict__", "").replace("const", "").strip()
            ptr = "*" in p
            ctype = " ".join(p.replace("*", " ").split()[:-1])
            sig.append((dict(defines).get(ctype, ctype), ptr, const))
        out[name] = sig
    return out


# kernel arguments read through strides passed beside them (a view is fine)
_STRIDED_ARGS = {("ptnp_shifted_moments", 0)}


class _EmulatedDevice:
    def __init__(self, tmp):
        self.tmp = tmp
        self.libs = {}
        self.launches = []

    def get_function(self, filename, name, defines=()):
        key = (filename, tuple(defines))
        if key not in self.libs:
            src = gk.kernel_source(filename)
            sigs = _kernel_signatures(src, defines)
            drivers = []
            for kname, sig in sigs.items():
                params = ", ".join(f"{'const ' if c else ''}{t}{'*' if p else ''} a{i}"
                                   for i, (t, p, c) in enumerate(sig))
                args = ", ".join(f"a{i}" for i in range(len(sig)))
                drivers.append(f'extern "C" void emu_{kname}(unsigned gx, unsigned gy, unsigned bx, '
                               f"{params}) {{ ptnp_emu_launch({{gx, gy, 1}}, {{bx, 1, 1}}, "
                               f"{kname}, {args}); }}")
            lib = _build_host_lib(self.tmp, f"emu{len(self.libs)}", defines,
                                  src + "\n" + "\n".join(drivers) + "\n")
            self.libs[key] = (lib, sigs)
        lib, sigs = self.libs[key]
        sig = sigs[name]

        def launch(grid, block, args):
            assert len(args) == len(sig), f"{name}: {len(args)} arguments for {len(sig)} parameters"
            c_args = []
            for i, (a, (ctype, ptr, _)) in enumerate(zip(args, sig)):
                if ptr:
                    assert isinstance(a, np.ndarray), f"{name} arg {i}"
                    assert a.flags.c_contiguous or (name, i) in _STRIDED_ARGS, f"{name} arg {i}: not contiguous"
                    assert a.dtype == _C_POINTEES[ctype], f"{name} arg {i}: {a.dtype} for {ctype}*"
                    c_args.append(ctypes.c_void_p(a.ctypes.data))
                else:
                    assert type(a) is _C_SCALARS[ctype], f"{name} arg {i}: {type(a)} for {ctype}"
                    c_args.append({"int": ctypes.c_int, "long long": ctypes.c_longlong,
                                   "unsigned long long": ctypes.c_ulonglong, "double": ctypes.c_double,
                                   "float": ctypes.c_float}[ctype](a))
            grid = tuple(grid) + (1,) * (2 - len(grid))
            assert 0 < grid[0] < 2 ** 31 and 0 < grid[1] <= 65535 and 0 < block[0] <= 1024, (name, grid, block)
            self.launches.append((name, grid, block))
            getattr(lib, f"emu_{name}")(ctypes.c_uint(grid[0]), ctypes.c_uint(grid[1]),
                                       ctypes.c_uint(block[0]), *c_args)
        return launch


@pytest.fixture
def emulated_device(monkeypatch, tmp_path):
    if shutil.which("g++") is None:
        pytest.skip("g++ not installed")
    import scipy.fft
    from ptnp_gpu import backend as _be
    fake = _be.Backend("cupy", np, ndi, scipy.fft)     # is_gpu: True, arrays: NumPy
    dev = _EmulatedDevice(tmp_path)
    monkeypatch.setattr(gk._be, "namespace", lambda *arrays: fake)
    monkeypatch.setattr(gk, "get_function", dev.get_function)
    return dev


def test_cupy_branches_on_emulated_device(emulated_device):
    rng = np.random.default_rng(40)
    # render: GPU branch vs twin
    base, frac, inv6, norm = _random_atom_terms(rng, 5, (0, 10), (1.0, 3.0), 0.3)
    off = simulate._window_offsets(1.5, np.full(3, 0.4))
    vs = np.array([0.4, 0.41, 0.39])
    out = gk.render_windows(np.zeros((10, 11, 12)), base, frac, inv6, norm, off, vs)
    from ptnp_gpu.kernels.render_atoms_cpu import render_planes
    twin = render_planes(base, frac, inv6, norm, off, vs, np.zeros((10, 11, 12)))
    np.testing.assert_allclose(out, twin, rtol=1e-12, atol=1e-14)
    # window fits and Pearson, float64 map (the other specialisation than the host test)
    vol = rng.normal(0.6, 1.0, (10, 11, 12))
    b = vol + rng.normal(size=vol.shape)
    c = rng.uniform(0, [12, 11, 10], (6, 3))
    ne = gk.window_normal_equations(vol, c, 2.2, voxel_size_A=vs)
    r, sums = gk.window_pearson(vol, b, c, 2.2, return_sums=True)
    names = [x[0] for x in emulated_device.launches]
    assert names == ["ptnp_render_atoms", "ptnp_window_normal_eq", "ptnp_window_pearson"]
    from ptnp_gpu.kernels.window_fits_cpu import normal_equations, pearson_sums
    A = np.zeros((6, 7, 7)); rhs = np.zeros((6, 7)); yy = np.zeros(6); cnt = np.zeros(6, np.int64)
    normal_equations(vol, c, np.zeros(6), 3, 2.2 ** 2, vs, A, rhs, yy, cnt)
    np.testing.assert_array_equal(ne.count, cnt)
    np.testing.assert_allclose(ne.A, A, rtol=1e-12)
    np.testing.assert_allclose(ne.rhs, rhs, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ne.yy, yy, rtol=1e-12)
    s2 = np.zeros((6, 6))
    pearson_sums(vol, b, c, 3, 2.2 ** 2, s2)
    np.testing.assert_allclose(sums, s2, rtol=1e-12, atol=1e-12)
    # label moments, uint8 labels and float64 weights, peak decoding
    lab = rng.integers(0, 5, (6, 7, 9)).astype(np.uint8)
    w = rng.uniform(0.1, 2.0, lab.shape)
    p = np.round(rng.normal(size=lab.shape), 0).astype(np.float32)
    m = gk.label_moments(lab, w, p, 4)
    from ptnp_gpu.kernels.label_sums_cpu import label_moments_cpu
    count, s, pv, pi = label_moments_cpu(lab, w, p, 4)
    assert m.count.dtype == np.int64 and m.peak_index.dtype == np.int64
    np.testing.assert_array_equal(m.count, count)
    np.testing.assert_allclose(m.sum_w, s[:, 0], rtol=1e-12)
    np.testing.assert_allclose(m.sum_w_xyz, s[:, 1:], rtol=1e-12)
    np.testing.assert_array_equal(m.peak_value, pv)
    np.testing.assert_array_equal(m.peak_index, pi)
    # the finishing kernel's centres: Σw·x / Σw, NaN for an empty label (label 3 is made empty)
    ref = gk.LabelMoments(count, s[:, 0], s[:, 1:], pv, pi).centres_vox_xyz()
    np.testing.assert_allclose(m.centres_vox_xyz(), ref, rtol=1e-12)
    lab3 = np.where(lab == 3, 0, lab).astype(np.uint8)
    m3 = gk.label_moments(lab3, w, p, 4)
    assert np.all(np.isnan(m3.centres_vox_xyz()[2])) and m3.peak_index[2] == -1 and m3.peak_value[2] == -np.inf
    # weights and peak map of one plane period (labels of stacked thresholds)
    lab2 = np.concatenate([lab, lab3])
    mp, mt = gk.label_moments(lab2, w, p, 4), gk.label_moments(lab2, np.tile(w, (2, 1, 1)), np.tile(p, (2, 1, 1)), 4)
    np.testing.assert_allclose(mp.sum_w_xyz, mt.sum_w_xyz, rtol=1e-12)      # float64 atomics: any order
    np.testing.assert_array_equal(mp.peak_index, mt.peak_index)
    # with the background row: written after it by the same two launches (sums, finish)
    n_launch = len(emulated_device.launches)
    mb = gk.label_moments(lab, w, p, 4, background_row=True)
    assert [x[0] for x in emulated_device.launches[n_launch:]] == ["ptnp_label_moments", "ptnp_label_finish"]
    _assert_background_row(mb, m)


def _assert_background_row(mb, m):
    """``mb`` = ``m`` with a row for label 0 that holds nothing in front."""
    assert mb.count[0] == 0 and mb.sum_w[0] == 0 and np.all(mb.sum_w_xyz[0] == 0)
    assert mb.peak_value[0] == -np.inf and mb.peak_index[0] == -1
    assert np.all(np.isnan(mb.centre_vox[0]))
    for a, b in zip(mb, m):
        assert a.dtype == b.dtype
        if a.dtype == np.float64:           # the kernel's atomic sums may add in another order
            np.testing.assert_allclose(a[1:], b, rtol=1e-12)
        else:
            np.testing.assert_array_equal(a[1:], b)


def test_label_moments_background_row_twin():
    rng = np.random.default_rng(44)
    lab = rng.integers(0, 5, (6, 7, 9)).astype(np.int32)
    w = rng.uniform(0.1, 2.0, lab.shape).astype(np.float32)
    _assert_background_row(gk.label_moments(lab, w, w, 4, background_row=True), gk.label_moments(lab, w, w, 4))
    empty = gk.label_moments(lab, w, w, 0, background_row=True)
    assert len(empty.count) == 1 and empty.peak_index[0] == -1


def test_mean_shift_cupy_branch_on_emulated_device(emulated_device):
    """Float64 map (the other specialisation than the host test), launch arguments checked."""
    rng = np.random.default_rng(41)
    vol, c, n_empty = _mean_shift_case(rng, np.float64, shape=(14, 12, 13), n=12)
    out = gk.mean_shift_centres(vol, c, 0.05, 2.6, 1.1, n_iter=4)
    assert [x[0] for x in emulated_device.launches] == ["ptnp_mean_shift"]
    from ptnp_gpu.kernels.window_fits_cpu import mean_shift
    twin = np.zeros_like(c)
    mean_shift(vol, c, gk.mean_shift_offsets(2.6), np.float64(0.05), 1.1 ** 2, 4, twin)
    np.testing.assert_allclose(out, twin, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out, _ref_mean_shift(vol, c, 0.05, 2.6, 1.1, 4), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(out[-n_empty:], c[-n_empty:])
    f32 = gk.mean_shift_centres(vol.astype(np.float32), c, 0.05, 2.6, 1.1, n_iter=4)
    np.testing.assert_allclose(f32, _ref_mean_shift(vol.astype(np.float32), c, 0.05, 2.6, 1.1, 4),
                               rtol=0, atol=1e-9)


# ---------------------------------------------------------------------- cell-list pairs

def _pair_set(i, j):
    return set(zip(np.asarray(i).tolist(), np.asarray(j).tolist()))


@pytest.mark.parametrize("n,r,spread", [(1500, 3.0, 35.0), (400, 6.0, 20.0), (300, 0.8, 150.0),
                                        (60, 50.0, 10.0)])
def test_cell_pairs_twin_matches_kdtree(n, r, spread):
    """Every pair within the cutoff, once, i < j, with exact squared distances; dense sets,
    sparse ones (cells wider than the cutoff) and a cutoff larger than the box."""
    from scipy.spatial import cKDTree
    rng = np.random.default_rng(int(n + 10 * r))
    x = rng.uniform(0.0, spread, (n, 3))
    x[5] = x[3]                                      # coincident points pair up
    i, j, d2 = gk.cell_pairs(x, r)
    ref = cKDTree(x).query_pairs(r, output_type="ndarray")
    assert len(i) == len(ref) > 0 and np.all(i < j)
    assert _pair_set(i, j) == _pair_set(ref[:, 0], ref[:, 1])
    d = x[i] - x[j]
    np.testing.assert_array_equal(d2, (d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]) + d[:, 2] * d[:, 2])
    assert np.all(np.diff(i) >= 0)                   # ordered by the first point


def test_cell_pairs_edge_cases():
    for pts in (np.zeros((0, 3)), np.zeros((1, 3))):
        assert all(len(a) == 0 for a in gk.cell_pairs(pts, 2.0))
    i, j, d2 = gk.cell_pairs(np.zeros((3, 3)), 0.0)
    assert _pair_set(i, j) == {(0, 1), (0, 2), (1, 2)} and np.all(d2 == 0)
    with pytest.raises(ValueError):
        gk.cell_pairs(np.array([[0.0, 0, 0], [np.nan, 0, 0]]), 1.0)
    with pytest.raises(ValueError):
        gk.cell_pairs(np.zeros((3, 3)), -1.0)


def _twin_pairs(x, cell, order, start, hmask, r):
    """The twin's counts and pairs for a given cell list."""
    from ptnp_gpu.kernels.cell_pairs_cpu import cell_pairs_pass
    counts = np.zeros(27 * len(x), np.int64)
    cell_pairs_pass(x, cell, order, start, hmask, r * r, counts)
    ends = np.cumsum(counts)
    total = int(ends[-1])
    twin = [np.zeros(total, np.int64), np.zeros(total, np.int64), np.zeros(total)]
    cell_pairs_pass(x, cell, order, start, hmask, r * r, counts, ends=ends, out=twin)
    return counts, ends, twin


def _ref_bucket(c, hmask):
    """The kernels' cell hash in Python integers (64-bit wrapping arithmetic)."""
    m = (1 << 64) - 1
    h = (int(c[0]) * 0x9E3779B97F4A7C15 + int(c[1]) * 0xC2B2AE3D27D4EB4F + int(c[2]) * 0x165667B19E3779F9) & m
    return (h ^ (h >> 32)) & hmask


def test_cell_pairs_kernel_on_host(emulated):
    """The CUDA source itself (host build) writes the twin's pairs, in the twin's order,
    for several launch shapes (grid-stride loop), with coordinates on both sides of the
    origin (negative cells) and a bucket count small enough that buckets hold several cells."""
    rng = np.random.default_rng(34)
    x = np.ascontiguousarray(rng.uniform(-6.0, 7.0, (70, 3)))
    r = 2.5
    lib = emulated["cell_pairs.cu"]
    from ptnp_gpu.kernels.cell_pairs_cpu import CELL_BAD, cell_keys
    for hmask in (7, 255):
        cell, key = cell_keys(x, gk._cell_edge(r), hmask)
        order = np.argsort(key)
        start = np.searchsorted(key[order] // len(x), np.arange(hmask + 2))
        counts, ends, twin = _twin_pairs(x, cell, order, start, hmask, r)
        total = int(ends[-1])
        for block, grid in ((32, 1), (16, 3), (64, 2)):
            c = np.zeros(27 * len(x), np.int64)
            lib.emu_cell_pairs(_ptr(x), _ptr(cell), _ptr(order), _ptr(start), ctypes.c_longlong(len(x)),
                               ctypes.c_ulonglong(hmask), ctypes.c_double(r * r), _ptr(c),
                               None, None, None, None, block, grid)
            np.testing.assert_array_equal(c, counts)
            out = [np.full(total, -1, np.int64), np.full(total, -1, np.int64), np.zeros(total)]
            lib.emu_cell_pairs(_ptr(x), _ptr(cell), _ptr(order), _ptr(start), ctypes.c_longlong(len(x)),
                               ctypes.c_ulonglong(hmask), ctypes.c_double(r * r), _ptr(counts),
                               _ptr(ends), _ptr(out[0]), _ptr(out[1]), _ptr(out[2]), block, grid)
            for a, b in zip(out, twin):
                np.testing.assert_array_equal(a, b)
        assert total > 50
        # the cell keys: the source's cells and keys equal the twin's
        for block, grid in ((32, 1), (16, 3)):
            c = np.zeros((len(x), 3), np.int64)
            k = np.zeros(len(x), np.int64)
            lib.emu_cell_keys(_ptr(x), ctypes.c_longlong(len(x)), ctypes.c_double(gk._cell_edge(r)),
                              ctypes.c_ulonglong(hmask), _ptr(c), _ptr(k), block, grid)
            np.testing.assert_array_equal(c, cell)
            np.testing.assert_array_equal(k, key)
    # a non-finite coordinate: the count kernel flags the point (its count is negative)
    y = x.copy()
    y[4, 1] = np.nan
    cell, key = cell_keys(y, gk._cell_edge(r), 255)
    order = np.argsort(key)
    start = np.searchsorted(key[order] // len(y), np.arange(257))
    c = np.zeros(27 * len(y), np.int64)
    lib.emu_cell_pairs(_ptr(y), _ptr(cell), _ptr(order), _ptr(start), ctypes.c_longlong(len(y)),
                       ctypes.c_ulonglong(255), ctypes.c_double(r * r), _ptr(c), None, None, None, None, 32, 2)
    assert c[27 * 4] == CELL_BAD and np.all(np.delete(c, 27 * 4) >= 0) and c.sum() < 0
    np.testing.assert_array_equal(c[27 * 4 + 1:27 * 5], 0)


def test_cell_list_formula():
    """The cell list against its definition: cells floor(x / edge) with the edge a hair wider
    than the cutoff, buckets the 64-bit hash of the cell, points sorted by (bucket, index),
    bucket starts by search; about two buckets per point, a power of two."""
    rng = np.random.default_rng(36)
    x = np.ascontiguousarray(rng.uniform(-30.0, 25.0, (300, 3)))
    r = 2.7
    cell, order, start, hmask = gk._cell_list(x, r)
    edge = gk._cell_edge(r)
    assert r < edge < r * (1 + 1e-8)
    assert hmask + 1 == 1024
    np.testing.assert_array_equal(cell, np.floor(x / edge).astype(np.int64))
    bucket = np.array([_ref_bucket(c, hmask) for c in cell])
    np.testing.assert_array_equal(order, np.lexsort((np.arange(len(x)), bucket)))
    np.testing.assert_array_equal(start, np.searchsorted(np.sort(bucket), np.arange(hmask + 2)))
    assert gk._cell_list(x[:3], r)[3] + 1 == 64                  # the floor on the buckets


def test_cell_pairs_order_independent_of_buckets():
    """The pairs' order is a property of the points and the cutoff: any bucket count (hash
    collisions or none) writes the same arrays."""
    rng = np.random.default_rng(38)
    x = np.ascontiguousarray(rng.uniform(-10.0, 10.0, (400, 3)))
    r = 3.0
    from ptnp_gpu.kernels.cell_pairs_cpu import cell_keys
    runs = []
    for hmask in (0, 15, 1023, (1 << 16) - 1):
        cell, key = cell_keys(x, gk._cell_edge(r), hmask)
        order = np.argsort(key)
        start = np.searchsorted(key[order] // len(x), np.arange(hmask + 2))
        runs.append(_twin_pairs(x, cell, order, start, hmask, r)[2])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(runs[0], gk.cell_pairs(x, r)):
        np.testing.assert_array_equal(a, b)
    assert len(runs[0][0]) > 500


def test_cell_pairs_cupy_branch_on_emulated_device(emulated_device):
    """The CuPy branch end to end (cell keys, count, write: the kernels' C signatures checked
    at each launch) gives the twin's pairs in the twin's order."""
    rng = np.random.default_rng(37)
    x = np.ascontiguousarray(rng.uniform(-3.0, 9.0, (90, 3)))
    x[7] = x[2]
    r = 2.2
    i, j, d2 = gk.cell_pairs(x, r)
    assert [k[0] for k in emulated_device.launches] == ["ptnp_cell_keys", "ptnp_bucket_starts",
                                                          "ptnp_cell_pairs_count", "ptnp_cell_pairs_write"]
    emulated_device.launches.clear()
    cell, order, start, hmask = gk._cell_list(x, r)
    twin = _twin_pairs(x, cell, order, start, hmask, r)[2]
    for a, b in zip((i, j, d2), twin):
        np.testing.assert_array_equal(a, b)
    assert len(i) > 50 and (2, 7) in set(zip(i.tolist(), j.tolist()))
    with pytest.raises(ValueError, match="non-finite"):
        y = x.copy()
        y[3, 0] = np.inf
        gk.cell_pairs(y, r)


# ---------------------------------------------------------------------- local maxima

def _local_max_case(rng, shape, dtype):
    """Values rounded to one decimal (plateaus: ties between neighbours) and a random mask."""
    v = np.round(rng.normal(size=shape), 1).astype(dtype)
    return v, rng.random(shape) < 0.6


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 4, 5), (2, 1, 7), (6, 7, 8), (23, 19, 17)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_local_maxima_twin_matches_maximum_filter(shape, dtype):
    """The twin equals SciPy's 3×3×3 maximum filter test: edges 'nearest' without a mask, the
    mask and cval −inf with one (the two uses in peaks.py); ties count as maxima."""
    rng = np.random.default_rng(int(np.prod(shape)))
    v, m = _local_max_case(rng, shape, dtype)
    np.testing.assert_array_equal(gk.local_maxima(v), v == ndi.maximum_filter(v, size=3, mode="nearest"))
    ref = m & (v == ndi.maximum_filter(v, size=3, mode="constant", cval=-np.inf))
    np.testing.assert_array_equal(gk.local_maxima(v, m), ref)
    assert gk.local_maxima(v).sum() > 0


def test_local_maxima_nan_and_errors():
    v = np.zeros((3, 3, 3), np.float32)
    v[1, 1, 1] = np.nan
    out = gk.local_maxima(v)
    assert not out[1, 1, 1] and out.sum() == 26          # NaN: never a maximum, ignored as neighbour
    assert gk.local_maxima(np.zeros((3, 3, 3), np.int32)).all()   # other types compared as float32
    with pytest.raises(ValueError):
        gk.local_maxima(np.zeros((3, 3)))
    with pytest.raises(ValueError):
        gk.local_maxima(v, np.ones((3, 3, 2), bool))


def test_local_max_kernel_on_host(emulated):
    """The CUDA source itself (host build) equals the twin, with and without a mask, for
    several launch shapes (grid-stride loop)."""
    rng = np.random.default_rng(35)
    v, m = _local_max_case(rng, (5, 6, 9), np.float32)
    lib = emulated["local_max.cu"]
    for use_mask in (0, 1):
        want = gk.local_maxima(v, m if use_mask else None)
        for block, grid in ((32, 1), (64, 3), (128, 4)):
            out = np.zeros(v.shape, np.bool_)
            lib.emu_local_max(_ptr(v), _ptr(m), 9, 6, 5, use_mask, _ptr(out), block, grid)
            np.testing.assert_array_equal(out, want)
    assert want.sum() > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_local_maxima_cupy_branch_on_emulated_device(emulated_device, dtype):
    """The CuPy branch's launch (argument types against the C signature, both specialisations)."""
    rng = np.random.default_rng(36)
    v, m = _local_max_case(rng, (7, 8, 6), dtype)
    np.testing.assert_array_equal(gk.local_maxima(v), v == ndi.maximum_filter(v, size=3, mode="nearest"))
    np.testing.assert_array_equal(gk.local_maxima(v, m),
                                  m & (v == ndi.maximum_filter(v, size=3, mode="constant", cval=-np.inf)))
    assert [x[0] for x in emulated_device.launches] == ["ptnp_local_max"] * 2


# ---------------------------------------------------------------------- fused reductions, peak thinning

def test_segment_sum_twin_equals_bincount():
    """The twin adds in bincount's order: the same numbers, bit for bit; indices outside
    [0, n) are skipped."""
    rng = np.random.default_rng(50)
    idx = rng.integers(0, 40, 3000)
    vals = rng.normal(size=(3, 3000))
    out = gk.segment_sum_columns(idx, vals, 40)
    for c in range(3):
        np.testing.assert_array_equal(out[c], np.bincount(idx, weights=vals[c], minlength=40))
    bad = idx.copy()
    bad[:5] = [-1, 40, 41, -7, 100]
    out = gk.segment_sum_columns(bad.astype(np.int32), vals, 40)
    ok = (bad >= 0) & (bad < 40)
    np.testing.assert_allclose(out[1], np.bincount(bad[ok], weights=vals[1][ok], minlength=40), rtol=1e-12)
    with pytest.raises(ValueError):
        gk.segment_sum_columns(idx, vals[:, :10], 40)


def test_reduce_kernels_on_host(emulated):
    """The CUDA source (host build, atomics in thread order) against the twins: segment sums
    of three columns with int32 indices; shifted moments of a strided float32 crop."""
    rng = np.random.default_rng(51)
    lib = emulated["reduce.cu"]
    idx = rng.integers(-2, 30, 700).astype(np.int32)
    vals = np.ascontiguousarray(rng.normal(size=(3, 700)))
    twin = gk.segment_sum_columns(idx, vals, 28)
    for block, grid in ((64, 3), (32, 100)):
        out = np.zeros((3, 28))
        lib.emu_segment_sum(_ptr(idx), _ptr(vals), ctypes.c_longlong(700), 3, ctypes.c_longlong(28), _ptr(out),
                            block, grid)
        np.testing.assert_allclose(out, twin, rtol=1e-12, atol=1e-12)
        # the shared-memory variant (per-block partial sums, then one add each): same sums
        out = np.zeros((3, 28))
        lib.emu_segment_sum_shared(_ptr(idx), _ptr(vals), ctypes.c_longlong(700), 3, ctypes.c_longlong(28),
                                   _ptr(out), block, grid)
        np.testing.assert_allclose(out, twin, rtol=1e-12, atol=1e-12)
    vol = rng.normal(5.0, 2.0, (9, 14, 17)).astype(np.float32)
    crop = vol[2:8, ::3, 4:15]                              # a strided view, read in place
    shift = np.array([4.75])
    ref = (crop.astype(np.float64) - 4.75)
    t = gk.shifted_moments(crop, shift)
    np.testing.assert_allclose(t, [ref.sum(), (ref * ref).sum()], rtol=1e-12)
    st = [s // 4 for s in crop.strides]
    for block, grid in ((64, 2), (32, 7)):
        out = np.zeros(2)
        lib.emu_moments(ctypes.c_void_p(crop.ctypes.data), *(ctypes.c_longlong(v) for v in crop.shape),
                        *(ctypes.c_longlong(v) for v in st), _ptr(shift), _ptr(out), block, grid)
        np.testing.assert_allclose(out, t, rtol=1e-12)


def _thin_reference(i, j, val, n, group=None):
    """The suppression rounds in array code (the library's former NumPy path)."""
    if group is not None:
        same = group[i] == group[j]
        i, j = i[same], j[same]
    i_lower = (val[i] < val[j]) | ((val[i] == val[j]) & (i > j))
    lo, hi = np.where(i_lower, i, j), np.where(i_lower, j, i)
    kept = np.ones(n, bool)
    for _ in range(100):
        sup = np.zeros(n + 1, bool)
        sup[np.where(kept[hi], lo, n)] = True
        sup = sup[:n]
        if (~sup == kept).all():
            break
        kept = ~sup
    return kept


def _peak_case(rng, n=400):
    """Random peaks in a box, values with ties (rounded), groups, their close pairs."""
    xyz = rng.uniform(0, 25.0, (n, 3))
    val = np.round(rng.normal(size=n), 1)
    group = rng.integers(0, 4, n)
    i, j, _ = gk.cell_pairs(xyz, 2.6)
    return i, j, val, group


def test_thin_peaks_twin_matches_array_rounds():
    rng = np.random.default_rng(52)
    for _ in range(3):
        i, j, val, group = _peak_case(rng)
        assert len(i) > 300
        for g in (None, group):
            kept = gk.thin_peaks(i, j, val, len(val), group=g)
            np.testing.assert_array_equal(kept, _thin_reference(i, j, val, len(val), g))
            assert 0 < kept.sum() < len(val)
    # a chain a > b > c: b is suppressed, so c is kept (the fixed point, not one pass)
    assert gk.thin_peaks(np.array([0, 1]), np.array([1, 2]), np.array([3.0, 2.0, 1.0]), 3).tolist() == \
        [True, False, True]
    assert gk.thin_peaks(np.zeros(0, np.int64), np.zeros(0, np.int64), np.ones(2), 2).tolist() == [True, True]


def test_thin_peaks_kernel_on_host(emulated):
    rng = np.random.default_rng(53)
    i, j, val, group = _peak_case(rng, 300)
    lib = emulated["thin_peaks.cu"]
    n = len(val)
    for g, use in ((np.zeros(1, np.int64), 0), (group.astype(np.int64), 1)):
        twin = gk.thin_peaks(i, j, val, n, group=g if use else None)
        for block in (32, 96):
            kept = np.full(n, 7, np.uint8)
            sup = np.full(n, 7, np.uint8)
            lib.emu_thin_peaks(_ptr(i), _ptr(j), ctypes.c_longlong(len(i)), _ptr(val), _ptr(g), use,
                               ctypes.c_longlong(n), 100, _ptr(kept), _ptr(sup), block)
            np.testing.assert_array_equal(kept.astype(bool), twin)


def test_fused_cupy_branches_on_emulated_device(emulated_device):
    """The CuPy branches of the fused reductions and the thinning (C signatures checked at
    each launch) give the twins' results."""
    rng = np.random.default_rng(54)
    idx = rng.integers(0, 50, 900)
    vals = rng.normal(size=(2, 900))
    out = gk.segment_sum_columns(idx, vals, 50)                   # 100 sums: the shared-memory variant
    big = gk.segment_sum_columns(idx * 97, vals[:1], 5000)        # 5000 sums: global atomics
    vol = rng.normal(1.0, 3.0, (11, 12, 13))
    mom = gk.shifted_moments(vol[1:, 2:, ::2], np.array(0.5))
    i, j, val, group = _peak_case(rng, 200)
    kept = gk.thin_peaks(i, j, val, len(val), group=group)
    assert [k[0] for k in emulated_device.launches] == ["ptnp_segment_sum_shared", "ptnp_segment_sum",
                                                          "ptnp_shifted_moments",
                                                          "ptnp_cell_keys", "ptnp_bucket_starts",
                                                          "ptnp_cell_pairs_count", "ptnp_cell_pairs_write",
                                                          "ptnp_thin_peaks"]
    for c in range(2):
        np.testing.assert_allclose(out[c], np.bincount(idx, weights=vals[c], minlength=50), rtol=1e-12)
    np.testing.assert_allclose(big[0], np.bincount(idx * 97, weights=vals[0], minlength=5000), rtol=1e-12)
    ref = vol[1:, 2:, ::2] - 0.5
    np.testing.assert_allclose(mom, [ref.sum(), (ref * ref).sum()], rtol=1e-12)
    np.testing.assert_array_equal(kept, _thin_reference(i, j, val, len(val), group))


# ---------------------------------------------------------------------- Fourier-grid kernels

def _filter_case(rng, shape=(12, 10, 7), white=True, highpass=True):
    """A random complex64 rfft grid, its frequencies, five Gaussian terms, the tapers and a gain."""
    vs = np.array([0.36, 0.4, 0.38])
    full = (shape[0], shape[1], 2 * (shape[2] - 1))
    fz = np.fft.fftfreq(full[0], d=vs[2]).astype(np.float32)
    fy = np.fft.fftfreq(full[1], d=vs[1]).astype(np.float32)
    fx = np.fft.rfftfreq(full[2], d=vs[0]).astype(np.float32)
    F = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    a = rng.uniform(0.5, 3.0, 5)
    m = [-2.0 * np.pi ** 2 * v for v in rng.uniform(0.02, 0.4, 5)]
    ds = 1.0 / (np.array(full) * vs[::-1]).max()
    wt = None
    if white:
        s_tab = np.linspace(0.0, 2.0, 40).astype(np.float32)
        wt = (s_tab, rng.uniform(0.5, 4.0, 40).astype(np.float32))
    hp = (0.5 / 6.0, 12.0) if highpass else None
    return F, fz, fy, fx, a, m, 1.0 / 1.2, 1.0 / (3 * ds), hp, wt, ds


def test_atom_filter_twin_matches_formula():
    """The array code against the formula in float64: K = Σ a·exp(m·s²)·b, F·b·gain, zero at DC."""
    rng = np.random.default_rng(60)
    F, fz, fy, fx, a, m, blo, bsc, hp, wt, _ = _filter_case(rng)
    F0 = F.astype(np.complex128)
    K = gk.atom_filter(F, fz, fy, fx, a, m, blo, bsc, highpass=hp, white=wt)
    s2 = (fz[:, None, None].astype(float) ** 2 + fy[None, :, None] ** 2) + fx[None, None, :] ** 2
    s = np.sqrt(s2)
    band = 0.5 * (1 + np.cos(np.pi * np.clip((s - blo) * bsc, 0, 1)))
    rise = 0.5 * (1 - np.cos(np.pi * np.clip((s - hp[0]) * hp[1], 0, 1)))
    k_ref = sum(ai * np.exp(mi * s2) for ai, mi in zip(a, m)) * band * rise
    f_ref = F0 * band * rise * np.interp(s, wt[0], wt[1])
    k_ref[0, 0, 0] = f_ref[0, 0, 0] = 0.0
    assert K.dtype == np.float32 and K.shape == F.shape
    np.testing.assert_allclose(K, k_ref, rtol=2e-5, atol=1e-6 * np.abs(k_ref).max())
    np.testing.assert_allclose(F, f_ref, rtol=2e-5, atol=1e-5 * np.abs(f_ref).max())
    assert 0.05 < (band * rise)[1:].mean() < 0.95           # the tapers cut inside the grid


@pytest.mark.parametrize("white,highpass", [(True, True), (False, False), (True, False)])
def test_fourier_kernels_on_host(emulated, white, highpass):
    """The CUDA source (host build, the C library's expf/cosf) against the array code:
    float32 operations in the same order, so equal to a few ulp; the shells exactly."""
    rng = np.random.default_rng(61)
    F, fz, fy, fx, a, m, blo, bsc, hp, wt, ds = _filter_case(rng, white=white, highpass=highpass)
    lib = emulated["fourier.cu"]
    twin_F = F.copy()
    twin_K = gk.atom_filter(twin_F, fz, fy, fx, a, m, blo, bsc, highpass=hp, white=wt)
    a32, m32 = np.asarray(a, np.float32), np.asarray(m, np.float32)
    ws, wg = wt if wt is not None else (np.zeros(1, np.float32), np.zeros(1, np.float32))
    for block, grid in ((64, 3), (32, 40)):
        Fh = F.copy()
        Kh = np.full(F.shape, np.nan, np.float32)
        lib.emu_atom_filter(_ptr(Fh), _ptr(Kh), _ptr(fz), _ptr(fy), _ptr(fx), *F.shape, _ptr(a32), _ptr(m32), 5,
                            ctypes.c_float(blo), ctypes.c_float(bsc), int(hp is not None),
                            ctypes.c_float(hp[0] if hp else 0.0), ctypes.c_float(hp[1] if hp else 0.0),
                            _ptr(ws), _ptr(wg), len(ws) if wt is not None else 0, block, grid)
        np.testing.assert_allclose(Kh, twin_K, rtol=1e-5, atol=1e-6 * np.abs(twin_K).max())
        np.testing.assert_allclose(Fh, twin_F, rtol=1e-5, atol=1e-6 * np.abs(twin_F).max())
        assert Kh[0, 0, 0] == 0 and Fh[0, 0, 0] == 0
    top = 9
    twin_shell = gk.rfft_shell_index(fz, fy, fx, ds, top)
    sh = np.full(F.shape, -1, np.int64)
    lib.emu_rfft_shells(_ptr(fz), _ptr(fy), _ptr(fx), *F.shape, ctypes.c_float(ds), ctypes.c_longlong(top),
                        _ptr(sh), 64, 5)
    np.testing.assert_array_equal(sh, twin_shell)
    assert twin_shell.max() == top and twin_shell.min() == 0


def test_fourier_cupy_branches_on_emulated_device(emulated_device):
    """The CuPy branches (C signatures checked at each launch): one launch each, the twins'
    numbers to a few ulp (expf / cosf of the host C library against NumPy's)."""
    rng = np.random.default_rng(62)
    F, fz, fy, fx, a, m, blo, bsc, hp, wt, ds = _filter_case(rng)
    twin_F = F.copy()
    from ptnp_gpu.kernels.fourier_cpu import atom_filter, rfft_shells
    twin_K = atom_filter(twin_F, fz, fy, fx, a, m, blo, bsc, hp, wt)
    K = gk.atom_filter(F, fz, fy, fx, a, m, blo, bsc, highpass=hp, white=wt)
    shell = gk.rfft_shell_index(fz, fy, fx, ds, 7)
    assert [k[0] for k in emulated_device.launches] == ["ptnp_atom_filter", "ptnp_rfft_shells"]
    np.testing.assert_allclose(K, twin_K, rtol=1e-5, atol=1e-6 * np.abs(twin_K).max())
    np.testing.assert_allclose(F, twin_F, rtol=1e-5, atol=1e-6 * np.abs(twin_F).max())
    np.testing.assert_array_equal(shell, rfft_shells(fz, fy, fx, ds, 7))


def test_bucket_starts_kernel_on_emulated_device(emulated_device):
    """``ptnp_bucket_starts`` equals the left search of every bucket in the sorted buckets:
    empty buckets before, between and after the occupied ones, one point, every point in one
    bucket."""
    rng = np.random.default_rng(63)
    for n, buckets, hi in ((300, 64, 64), (300, 1024, 40), (1, 64, 64), (50, 64, 1), (200, 256, 256)):
        b = rng.integers(max(0, hi - 30) if hi < buckets else 0, hi, n)
        key = (b * n + np.arange(n)).astype(np.int64)
        order = np.argsort(key)
        got = gk._bucket_starts(key, order, buckets)
        ref = np.searchsorted(np.sort(b), np.arange(buckets + 1))
        np.testing.assert_array_equal(got, ref)
        assert got[-1] == n
    assert {x[0] for x in emulated_device.launches} == {"ptnp_bucket_starts"}



def _normal_case(rng, n, p):
    """Random weighted least-squares sums (A = XᵀWX, b = XᵀWy, yy = yᵀWy) with some rows too
    small to solve and one singular row."""
    X = rng.normal(size=(n, 12, p))
    w = rng.uniform(0.2, 1.0, (n, 12))
    y = X @ rng.normal(size=p) + rng.normal(scale=0.3, size=(n, 12))
    X[:, :, 0] = 1.0
    A = np.einsum("nki,nk,nkj->nij", X, w, X)
    b = np.einsum("nki,nk,nk->ni", X, w, y)
    yy = np.einsum("nk,nk->n", w * y, y)
    count = rng.integers(p - 1, 40, n).astype(np.int64)
    A[3] = 0.0                                          # singular: no finite solution
    count[3] = 40
    return gk.NormalEquations(np.ascontiguousarray(A), np.ascontiguousarray(b), yy, count)


@pytest.mark.parametrize("p", [7, 2])
def test_solve_normal_kernel_on_host(emulated, p):
    """``ptnp_solve_normal`` (host build) against the array code: β and R² to 1e-9, the same
    rows solved (too few voxels, a singular system: NaN, not ok)."""
    rng = np.random.default_rng(64 + p)
    ne = _normal_case(rng, 40, p)
    beta_ref, r2_ref, ok_ref = gk.solve_normal_equations(ne)
    assert 0 < ok_ref.sum() < 40 and not ok_ref[3]
    for block, grid in ((32, 1), (16, 3)):
        beta = np.zeros((40, p))
        r2 = np.zeros(40)
        ok = np.full(40, 7, np.uint8)
        emulated["window_fits.cu"].emu_solve_normal(
            _ptr(ne.A), _ptr(ne.rhs), _ptr(ne.yy), _ptr(ne.count), ctypes.c_longlong(40), p,
            ctypes.c_longlong(p + 3), ctypes.c_double(1e-12), _ptr(beta), _ptr(r2), _ptr(ok), block, grid)
        np.testing.assert_array_equal(ok.astype(bool), ok_ref)
        np.testing.assert_allclose(beta, beta_ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(r2, r2_ref, rtol=1e-9, atol=1e-12)


def test_solve_normal_cupy_branch_on_emulated_device(emulated_device):
    rng = np.random.default_rng(66)
    ne = _normal_case(rng, 30, 7)
    beta, r2, ok = gk.solve_normal_equations(ne)
    assert [x[0] for x in emulated_device.launches] == ["ptnp_solve_normal"]
    ref = gk._solve_normal_array(ne.A, ne.rhs, ne.yy, ne.count, 3, 1e-12)
    np.testing.assert_array_equal(ok, ref[2])
    np.testing.assert_allclose(beta, ref[0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r2, ref[1], rtol=1e-9, atol=1e-12)



def test_pair_affine_sums_kernel_on_host(emulated):
    """``ptnp_pair_affine_sums`` (host build, atomics in thread order) against the array code,
    which is the strain fit's former host path, on random pairs; and the formula."""
    rng = np.random.default_rng(67)
    n, P = 40, 300
    xyz = rng.normal(size=(n, 3)) * 5
    u = rng.normal(scale=0.05, size=(n, 3))
    a = rng.integers(0, n, P).astype(np.int64)
    b = rng.integers(0, n, P).astype(np.int64)
    w = rng.uniform(0.1, 1.0, P)
    twin = gk.pair_affine_sums(xyz, u, a, b, w, n)
    dx, du = xyz[b] - xyz[a], u[b] - u[a]
    ref = np.zeros((18, n))
    for k, (p, q) in enumerate((p, q) for p in range(3) for q in range(3)):
        np.add.at(ref[k], a, w * dx[:, p] * dx[:, q])
        np.add.at(ref[k], b, w * dx[:, p] * dx[:, q])
        np.add.at(ref[9 + k], a, w * du[:, p] * dx[:, q])
        np.add.at(ref[9 + k], b, w * du[:, p] * dx[:, q])
    np.testing.assert_allclose(twin, ref, rtol=1e-12, atol=1e-12)
    for block, grid in ((64, 2), (32, 7)):
        out = np.zeros((18, n))
        emulated["reduce.cu"].emu_affine(_ptr(xyz), _ptr(u), _ptr(a), _ptr(b), _ptr(w), ctypes.c_longlong(P),
                                         ctypes.c_longlong(n), _ptr(out), block, grid)
        np.testing.assert_allclose(out, twin, rtol=1e-12, atol=1e-12)


def test_pair_affine_sums_cupy_branch_on_emulated_device(emulated_device):
    rng = np.random.default_rng(68)
    xyz, u = rng.normal(size=(30, 3)), rng.normal(size=(30, 3))
    a, b = rng.integers(0, 30, 100), rng.integers(0, 30, 100)
    w = rng.uniform(size=100)
    out = gk.pair_affine_sums(xyz, u, a, b, w, 30)
    assert [x[0] for x in emulated_device.launches] == ["ptnp_pair_affine_sums"]
    from ptnp_gpu.kernels.reduce_cpu import pair_affine_sums
    np.testing.assert_allclose(out, pair_affine_sums(xyz, u, a, b, w, 30), rtol=1e-12, atol=1e-12)



def _radial_case(rng, n=40, P=400):
    i = rng.integers(0, n, P).astype(np.int64)
    j = rng.integers(0, n, P).astype(np.int64)
    i[:3] = 0                                         # atom n - 1 may have no pair: NaN means
    return i, j, rng.uniform(0.1, 1.0, P), rng.uniform(5.0, 15.0, n), rng.normal(scale=0.05, size=n)


def test_radial_fit_kernels_on_host(emulated):
    """``ptnp_radial_fit_means`` / ``_spread`` (host build) against the array code and the
    formula: per atom Σ w (R_j − R̄)² and Σ w (R_j − R̄)(u_j − ū)."""
    rng = np.random.default_rng(69)
    i, j, w, r, ur = _radial_case(rng)
    n = len(r)
    twin = gk.radial_fit_sums(i, j, w, r, ur, n)
    for k in (0, 5, 17):
        m = i == k
        rb, ub = np.sum(w[m] * r[j[m]]) / w[m].sum(), np.sum(w[m] * ur[j[m]]) / w[m].sum()
        np.testing.assert_allclose(twin[:, k], [np.sum(w[m] * (r[j[m]] - rb) ** 2),
                                                np.sum(w[m] * (r[j[m]] - rb) * (ur[j[m]] - ub))], rtol=1e-9)
    for block, grid in ((64, 2), (32, 9)):
        s_ = np.zeros((3, n))
        t = np.zeros((2, n))
        emulated["reduce.cu"].emu_radial(_ptr(i), _ptr(j), _ptr(w), _ptr(r), _ptr(ur), ctypes.c_longlong(len(i)),
                                         ctypes.c_longlong(n), _ptr(s_), _ptr(t), block, grid)
        np.testing.assert_allclose(t, twin, rtol=1e-9, atol=1e-12)


def test_radial_fit_cupy_branch_on_emulated_device(emulated_device):
    rng = np.random.default_rng(70)
    i, j, w, r, ur = _radial_case(rng)
    out = gk.radial_fit_sums(i, j, w, r, ur, len(r))
    assert [x[0] for x in emulated_device.launches] == ["ptnp_radial_fit_means", "ptnp_radial_fit_spread"]
    from ptnp_gpu.kernels.reduce_cpu import radial_fit_sums
    np.testing.assert_allclose(out, radial_fit_sums(i, j, w, r, ur, len(r)), rtol=1e-9, atol=1e-12)


def _ref_profiles(v, t):
    m = v > t
    return np.concatenate([m.any(axis=(1, 2)), m.any(axis=(0, 2)), m.any(axis=(0, 1))]).astype(np.int32)


def test_occupancy_kernel_on_host(emulated):
    """ptnp_occupancy_above (host build) gives the mask's any() along each axis pair, for
    several launch shapes; an empty result stays all zero."""
    rng = np.random.default_rng(530)
    v = rng.normal(size=(7, 9, 11)).astype(np.float32)
    v[2:5, 3:6, 1:4] += 5.0
    for t in (4.0, 2.0, 99.0):
        want = _ref_profiles(v, np.float32(t))
        for block, grid in ((32, 1), (64, 3)):
            prof = np.zeros(27, np.int32)
            emulated["label_cc.cu"].emu_occupancy(_ptr(v), 7, 9, 11, ctypes.c_float(t), _ptr(prof), block, grid)
            np.testing.assert_array_equal(prof, want)
    assert want.sum() == 0 and _ref_profiles(v, np.float32(4.0)).sum() >= 9


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_label_cupy_branches_on_emulated_device(emulated_device, dtype):
    """gpu_kernels.label_above / label_mask through their CuPy branches (launch geometry, C
    types, the tiles' prefix sum) on the host-built kernels: scipy's labels and count."""
    rng = np.random.default_rng(520)
    vol = ndi.gaussian_filter(rng.normal(size=(10, 12, 11)), 1.0).astype(dtype)
    t = np.quantile(vol, [0.6, 0.8, 0.95])
    for thr, gap in ((t, 1), (t[:1], 0), (t[1:], 3)):
        lab, n = gk.label_above(vol, thr, gap)
        ref, nr = _stacked_scipy_labels(vol, np.asarray(thr).astype(dtype), vol.shape[0] + gap)
        assert lab.dtype == np.int32 and int(n[0]) == nr > 3
        np.testing.assert_array_equal(lab, ref)
    mask = rng.random((7, 9, 30)) < 0.4
    lab, n = gk.label_mask(mask)
    ref, nr = ndi.label(mask, structure=np.ones((3, 3, 3)))
    assert int(n[0]) == nr
    np.testing.assert_array_equal(lab, ref)
    names = [x[0] for x in emulated_device.launches]
    assert names.count("ptnp_cc_init_above") == 3 and names.count("ptnp_cc_init_mask") == 1
    assert names.count("ptnp_cc_merge") == names.count("ptnp_cc_finish") == 4
    with pytest.raises(ValueError, match="gap_planes"):
        gk.label_above(vol, t, 0)
    thr = float(np.quantile(vol, 0.97))
    np.testing.assert_array_equal(gk.occupancy_above(vol, thr), _ref_profiles(vol, dtype(thr)))
    assert emulated_device.launches[-1][0] == "ptnp_occupancy_above"


# ---------------------------------------------------------------------- separable filters

_FILTER_MODES = ("reflect", "constant", "nearest", "mirror", "wrap")


def test_filter1d_twin_matches_correlate1d():
    """The twin of filter1d.cu is scipy.ndimage.correlate1d: every mode, axis, odd and even
    lengths, windows longer than the axis (repeated reflections) and axes of length 1."""
    from ptnp_gpu.kernels.filter1d_cpu import MODES, filter1d_cpu
    rng = np.random.default_rng(540)
    for shape in ((5, 6, 7), (1, 4, 3), (9, 1, 2)):
        v = rng.normal(size=shape)
        for axis in range(3):
            for n_w in (1, 2, 3, 4, 7, 12):
                w = rng.normal(size=n_w)
                for mode in _FILTER_MODES:
                    ref = ndi.correlate1d(v, w, axis=axis, mode=mode, cval=0.7)
                    out = filter1d_cpu(v, np.empty_like(v), axis, w, n_w // 2, MODES[mode], 0.7)
                    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12, err_msg=f"{shape} {axis} {n_w} {mode}")


def test_filter1d_kernel_on_host(emulated):
    """filter1d.cu itself (host build) equals its twin for every mode and axis and for several
    launch shapes (grid-stride loop)."""
    from ptnp_gpu.kernels.filter1d_cpu import MODES, filter1d_cpu
    rng = np.random.default_rng(541)
    v = rng.normal(size=(4, 5, 6)).astype(np.float32)
    lib = emulated["filter1d.cu"]
    for axis in range(3):
        for n_w in (3, 8):
            w = rng.uniform(0.1, 1.0, n_w)
            for mode in _FILTER_MODES:
                twin = filter1d_cpu(v, np.empty_like(v), axis, w, n_w // 2, MODES[mode], -0.3)
                for block, grid in ((32, 1), (64, 2)):
                    out = np.zeros_like(v)
                    lib.emu_filter1d(_ptr(v), _ptr(out), 4, 5, 6, axis, _ptr(w), n_w, n_w // 2, MODES[mode],
                                     ctypes.c_double(-0.3), block, grid)
                    np.testing.assert_array_equal(out, twin)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_ndimage_filters_on_emulated_device(emulated_device, dtype):
    """device_ndimage's Gaussian and uniform filters (the CuPy backend's) through the host-built
    kernel equal SciPy's: sigma per axis with a zero, every mode, float32 output of float64
    input, even and odd sizes; one launch per filtered axis, the weights uploaded once."""
    from ptnp_gpu import device_ndimage as dn
    rng = np.random.default_rng(542 + (dtype == np.float64))
    v = rng.normal(size=(9, 10, 11)).astype(dtype)
    tol = dict(rtol=2e-6, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for mode in _FILTER_MODES:
        np.testing.assert_allclose(dn.gaussian_filter(v, 1.3, mode=mode, cval=0.4),
                                   ndi.gaussian_filter(v, 1.3, mode=mode, cval=0.4), **tol)
        np.testing.assert_allclose(dn.uniform_filter(v, 3, mode=mode, cval=0.4),
                                   ndi.uniform_filter(v, 3, mode=mode, cval=0.4), **tol)
    g = dn.gaussian_filter(v, [0.8, 0.0, 2.1], truncate=3.0)
    np.testing.assert_allclose(g, ndi.gaussian_filter(v, [0.8, 0.0, 2.1], truncate=3.0), **tol)
    u = dn.uniform_filter(v, [4, 1, 2], mode="nearest")
    np.testing.assert_allclose(u, ndi.uniform_filter(v, [4, 1, 2], mode="nearest"), **tol)
    f = dn.gaussian_filter(v, 1.0, output=np.float32)
    assert f.dtype == np.float32
    np.testing.assert_allclose(f, ndi.gaussian_filter(v, 1.0, output=np.float32), rtol=2e-6, atol=2e-6)
    z = dn.gaussian_filter(v, 0.0)
    assert z is not v and z.dtype == v.dtype
    np.testing.assert_array_equal(z, v)
    names = [x[0] for x in emulated_device.launches]
    assert set(names) == {"ptnp_filter1d"} and len(names) == 5 * 6 + 2 + 2 + 3


def test_device_ndimage_falls_back_to_cupyx(emulated_device, monkeypatch):
    """Arguments the kernel does not take (derivative orders, per-axis modes, a uniform origin, an
    output array, 2-D input, a radius) go to cupyx's own filters (SciPy stands in here), unchanged."""
    from ptnp_gpu import device_ndimage as dn
    calls = []
    monkeypatch.setattr(dn, "_cupyx", lambda name: (lambda *a, **k: calls.append(name) or getattr(ndi, name)(*a, **k)))
    rng = np.random.default_rng(543)
    v = rng.normal(size=(6, 7, 8)).astype(np.float32)
    cases = [(dn.gaussian_filter, dict(sigma=1.0, order=1), ndi.gaussian_filter),
             (dn.gaussian_filter, dict(sigma=1.0, mode=["reflect", "nearest", "wrap"]), ndi.gaussian_filter),
             (dn.gaussian_filter, dict(sigma=1.0, radius=2), ndi.gaussian_filter),
             (dn.uniform_filter, dict(size=3, origin=1), ndi.uniform_filter),
             (dn.uniform_filter, dict(size=3, mode="grid-wrap"), ndi.uniform_filter)]
    for fn, kw, ref in cases:
        np.testing.assert_array_equal(fn(v, **kw), ref(v, **kw))
    out = np.zeros_like(v)
    dn.uniform_filter(v, 3, output=out)
    np.testing.assert_array_equal(out, ndi.uniform_filter(v, 3))
    np.testing.assert_array_equal(dn.gaussian_filter(v[0], 1.0), ndi.gaussian_filter(v[0], 1.0))
    assert len(calls) == len(cases) + 2 and not emulated_device.launches



# ---------------------------------------------------------------------- pair sums of a table

def _table_case(rng, n=120, lo=-6.0, hi=7.0, r=2.5):
    x = np.ascontiguousarray(rng.uniform(lo, hi, (n, 3)))
    x[5] = x[9]                                         # a coincident pair (d2 = 0: the table's start)
    xg = np.linspace(0.0, r * r, 257)
    yg = np.exp(-xg / 1.7) * rng.uniform(0.9, 1.1, xg.shape)
    return x, r, xg, yg


def _table_reference(x, r, xg, yg):
    i, _, d2 = gk.cell_pairs(x, r)
    return np.bincount(i, weights=np.interp(d2, xg, yg), minlength=len(x)), i, d2


def test_interp_at_is_numpy_interp():
    """The scalar interpolation the pair sums use is np.interp bit for bit: both edges, the
    table's own points, a non-uniform table (bisection) and any starting interval."""
    from ptnp_gpu.host_interp import interp_at
    rng = np.random.default_rng(550)
    for xg in (np.linspace(0.0, 9.0, 101), np.cumsum(rng.uniform(0.01, 1.0, 60))):
        yg = rng.normal(size=xg.shape)
        v = np.concatenate([rng.uniform(xg[0] - 1, xg[-1] + 1, 500), xg, [xg[-1], xg[0], -np.inf, np.inf]])
        inv_h = (len(xg) - 1) / (xg[-1] - xg[0])
        got = np.array([interp_at(float(t), xg, yg, int(rng.integers(0, len(xg) - 1)), inv_h)[0] for t in v])
        np.testing.assert_array_equal(got, np.interp(v, xg, yg))


def test_pair_table_sums_twin_matches_pairs():
    """Per point, the sum over its pairs of np.interp(d2) equals the pair list's (cell_pairs, then
    bincount) to rounding: the same pairs, the same interpolated values, summed per cell."""
    rng = np.random.default_rng(551)
    x, r, xg, yg = _table_case(rng, n=400)
    ref, i, _ = _table_reference(x, r, xg, yg)
    got = gk.pair_table_sums(x, r, xg, yg)
    assert len(i) > 300 and ref.max() > 1.0
    np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-13)
    assert not gk.pair_table_sums(x[:1], r, xg, yg).any()
    with pytest.raises(ValueError):
        gk.pair_table_sums(x, -1.0, xg, yg)


def test_pair_table_kernel_on_host(emulated):
    """ptnp_cell_pair_table_sums (host build; threads of a block concurrent, float64 atomics)
    gives the twin's sums for several launch shapes and bucket counts (buckets holding
    several cells)."""
    from ptnp_gpu.kernels.cell_pairs_cpu import cell_keys, pair_table_sums as twin
    rng = np.random.default_rng(552)
    x, r, xg, yg = _table_case(rng, n=90)
    lib = emulated["cell_pairs.cu"]
    for hmask in (7, 255):
        cell, key = cell_keys(x, gk._cell_edge(r), hmask)
        order = np.argsort(key)
        start = np.searchsorted(key[order] // len(x), np.arange(hmask + 2))
        want = twin(x, cell, order, start, hmask, r * r, xg, yg, np.zeros(len(x)))
        for block, grid in ((32, 1), (64, 3)):
            acc = np.zeros(len(x))
            lib.emu_pair_table_sums(_ptr(x), _ptr(cell), _ptr(order), _ptr(start), ctypes.c_longlong(len(x)),
                                    ctypes.c_ulonglong(hmask), ctypes.c_double(r * r), _ptr(xg), _ptr(yg),
                                    len(xg), _ptr(acc), block, grid)
            np.testing.assert_allclose(acc, want, rtol=1e-13, atol=1e-14)
    assert want.max() > 1.0


def test_pair_table_sums_cupy_branch_on_emulated_device(emulated_device):
    """The CuPy branch (cell keys, bucket starts, one table-sum launch: C types checked) gives the
    pair list's per-point sums."""
    rng = np.random.default_rng(553)
    x, r, xg, yg = _table_case(rng, n=80, lo=-3.0, hi=9.0)
    got = gk.pair_table_sums(x, r, xg, yg)
    assert [k[0] for k in emulated_device.launches] == ["ptnp_cell_keys", "ptnp_bucket_starts",
                                                          "ptnp_cell_pair_table_sums"]
    emulated_device.launches.clear()
    ref = _table_reference(x, r, xg, yg)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-13)
    assert ref.max() > 1.0



# ---------------------------------------------------------------------- balls cleared (solvent mask)

def _edt_far(shape, c, r, sp):
    free = np.ones(shape, bool)
    inside = np.all((c >= 0) & (c < np.array(shape)), axis=1)
    free[tuple(c[inside].T)] = False
    return ndi.distance_transform_edt(free, sampling=sp) > r


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_outside_balls_is_the_distance_transform(seed):
    """outside_balls == distance_transform_edt(...) > r exactly: anisotropic spacings, radii that
    hit grid distances exactly (unit spacing, integer r), centres repeated."""
    rng = np.random.default_rng(560 + seed)
    for t in range(20):
        shape = tuple(int(v) for v in rng.integers(4, 25, 3))
        sp = (1.0, 1.0, 1.0) if t % 4 == 0 else tuple(float(v) for v in rng.uniform(0.5, 1.5, 3))
        r = float(rng.integers(1, 4)) if t % 4 == 0 else float(rng.uniform(0.5, 5.0))
        n = int(rng.integers(1, 30))
        c = np.stack([rng.integers(0, s, n) for s in shape], 1)
        c = np.vstack([c, c[:2]])
        np.testing.assert_array_equal(gk.outside_balls(shape, c, r, sp), _edt_far(shape, c, r, sp))


def test_clear_balls_kernel_on_host(emulated):
    """ptnp_clear_balls (host build) clears what the twin clears, centres off the grid included,
    for several launch shapes."""
    rng = np.random.default_rng(563)
    shape, sp, r = (9, 10, 11), (1.07, 0.9, 1.2), 2.6
    c = np.ascontiguousarray(np.vstack([np.stack([rng.integers(0, s, 12) for s in shape], 1), [[-2, 3, 4], [9, 10, 12]]]))
    off = gk._ball_offsets(r, sp)
    want = gk.outside_balls(shape, c, r, sp)
    for block, grid in ((32, 1), (64, 3)):
        mask = np.ones(shape, bool)
        emulated["render_atoms.cu"].emu_clear_balls(_ptr(c), ctypes.c_longlong(len(c)), _ptr(np.ascontiguousarray(off)),
                                                    len(off), *shape, _ptr(mask), block, grid)
        np.testing.assert_array_equal(mask, want)
    assert 0 < want.sum() < want.size


def test_outside_balls_cupy_branch_on_emulated_device(emulated_device):
    rng = np.random.default_rng(564)
    shape, sp, r = (12, 9, 10), (1.1, 1.0, 0.95), 3.0
    c = np.stack([rng.integers(0, s, 7) for s in shape], 1)
    np.testing.assert_array_equal(gk.outside_balls(shape, c, r, sp), _edt_far(shape, c, r, sp))
    assert [k[0] for k in emulated_device.launches] == ["ptnp_clear_balls"]



# ---------------------------------------------------------------------- linear interpolation at points

def _linear_points(rng, shape, m=400):
    hi = np.array(shape[::-1], float)
    pts = np.vstack([rng.uniform(-2.0, hi + 1.0, (m, 3)),            # some beyond the edges
                     np.round(rng.uniform(0, hi - 1, (20, 3))),      # on voxels
                     [[hi[0] - 1, hi[1] - 1, hi[2] - 1], [0.0, 0.0, 0.0]]])
    return np.ascontiguousarray(pts)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_at_twin_matches_map_coordinates(dtype):
    """The kernel's twin (clamped coordinates, 8 corners in float64) is SciPy's map_coordinates
    (order 1, mode nearest): float32 results equal, float64 within 1e-15 of the values' scale."""
    from ptnp_gpu.kernels.window_fits_cpu import linear_at_cpu
    rng = np.random.default_rng(570)
    vol = rng.normal(size=(9, 7, 11)).astype(dtype)
    pts = _linear_points(rng, vol.shape)
    ref = ndi.map_coordinates(vol, pts[:, ::-1].T, order=1, mode="nearest")
    got = linear_at_cpu(vol, pts)
    assert got.dtype == vol.dtype
    if dtype == np.float32:
        np.testing.assert_array_equal(got, ref)
    else:
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-15 * np.abs(vol).max())
    np.testing.assert_array_equal(gk.linear_at(vol, pts), ref)        # the NumPy branch is SciPy's
    assert np.isnan(linear_at_cpu(vol, np.array([[np.nan, 1.0, 1.0]]))[0])


def test_linear_at_kernel_on_host(emulated):
    """ptnp_linear_at (host build) equals its twin bit for bit, for several launch shapes."""
    from ptnp_gpu.kernels.window_fits_cpu import linear_at_cpu
    rng = np.random.default_rng(571)
    vol = rng.normal(size=(6, 8, 5)).astype(np.float32)
    pts = _linear_points(rng, vol.shape, m=150)
    want = linear_at_cpu(vol, pts)
    for block, grid in ((32, 1), (64, 2)):
        out = np.zeros(len(pts), np.float32)
        emulated["window_fits.cu"].emu_linear_at(_ptr(vol), 5, 8, 6, _ptr(pts), ctypes.c_longlong(len(pts)),
                                                 _ptr(out), block, grid)
        np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_at_cupy_branch_on_emulated_device(emulated_device, dtype):
    from ptnp_gpu.kernels.window_fits_cpu import linear_at_cpu
    rng = np.random.default_rng(572)
    vol = rng.normal(size=(5, 6, 7)).astype(dtype)
    pts = _linear_points(rng, vol.shape, m=60)
    got = gk.linear_at(vol, pts)
    assert got.dtype == vol.dtype and [k[0] for k in emulated_device.launches] == ["ptnp_linear_at"]
    np.testing.assert_array_equal(got, linear_at_cpu(vol, pts))
