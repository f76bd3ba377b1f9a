"""Benchmark inputs: synthetic Pt particle maps and maps rendered from experimental models.

Maps are built on the host with the project's simulator (Numba fast path) and
a cheap smooth background (coarse noise, Gaussian-filtered, linearly
upsampled) plus white noise scaled to the peak of one core atom, so that the
384³ and experimental maps are quick to make even on a 2-core machine.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VOXEL_SIZE_A = 0.358
PT_ATOMS_PER_A3 = 4.0 / 3.924 ** 3
# ``PTNP_EXPERIMENTAL_DATA`` points elsewhere, e.g. at a git-ignored copy carried to a GPU machine
DATA_DIR = Path(os.environ.get("PTNP_EXPERIMENTAL_DATA",
                               Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "experimental"))


@dataclass
class Case:
    """One benchmark map with its true atoms."""
    name: str
    dmap: object            # ptnp_gpu.mapio.DensityMap
    xyz_A: np.ndarray       # (N, 3) true positions, Å
    elements: np.ndarray    # (N,) symbols
    element: str = "Pt"     # element given to detection

    @property
    def n_atoms(self) -> int:
        return int(len(self.xyz_A))

    @property
    def shape(self):
        return tuple(self.dmap.data.shape)


def _noise_and_background(data, peak, rng, noise=0.12, background=0.12, scale_A=6.0):
    import scipy.ndimage as ndi
    shape = data.shape
    f = 8
    coarse = rng.standard_normal(tuple(-(-s // f) + 2 for s in shape))
    coarse = ndi.gaussian_filter(coarse, scale_A / VOXEL_SIZE_A / f, mode="wrap")
    bg = ndi.zoom(coarse, f, order=1)[tuple(slice(0, s) for s in shape)]
    bg = (bg - bg.min()) / max(float(bg.max() - bg.min()), 1e-12)
    data += (background * peak) * bg.astype(np.float32)
    data += (noise * peak) * rng.standard_normal(shape, dtype=np.float32)
    return data


def _render(xyz, elements, shape, origin, u_iso, rng):
    from ptnp_gpu.simulate import atom_peak_value, reference_blur_A2, render_atoms
    b = reference_blur_A2(VOXEL_SIZE_A)
    data = np.zeros(shape, np.float32)
    for el in np.unique(elements):
        sel = elements == el
        data += render_atoms(xyz[sel], shape, VOXEL_SIZE_A, origin, str(el), b_extra_A2=b,
                             u_iso_A2=u_iso[sel], backend="numpy")
    peak = atom_peak_value("Pt", b, 0.02)
    return _noise_and_background(data, peak, rng)


def synthetic_case(size: int, seed: int = 0, fill: float = 0.6) -> Case:
    """A Pt sphere of diameter ``fill`` × box edge in a ``size``³ box."""
    from ptnp_gpu.mapio import DensityMap
    from ptnp_gpu.synth import fcc_particle, random_rotation
    rng = np.random.default_rng(seed)
    diam = fill * size * VOXEL_SIZE_A
    n = int(PT_ATOMS_PER_A3 * np.pi / 6 * diam ** 3)
    rel = fcc_particle(n, 3.924, "sphere") @ random_rotation(rng).T
    centre = 0.5 * (size - 1) * VOXEL_SIZE_A + rng.uniform(-0.5, 0.5, 3) * VOXEL_SIZE_A
    xyz = rel + centre
    r = np.linalg.norm(rel, axis=1)
    u = 0.02 + 0.06 * np.clip(1 - (r.max() - r) / 4.0, 0, 1)      # U grows at the surface
    els = np.array(["Pt"] * len(xyz))
    data = _render(xyz, els, (size,) * 3, np.zeros(3), u, rng)
    return Case(f"pt_sphere_{size}", DensityMap(data, VOXEL_SIZE_A, np.zeros(3)), xyz, els)


def _experimental_case(name, xyz, els, seed):
    from ptnp_gpu.mapio import DensityMap
    rng = np.random.default_rng(seed)
    margin = 7.0
    lo = xyz.min(0) - margin
    ext = xyz.max(0) + margin - lo
    nx, ny, nz = (int(np.ceil(e / VOXEL_SIZE_A)) for e in ext)
    u = np.full(len(xyz), 0.04)
    data = _render(xyz, els, (nz, ny, nx), lo, u, rng)
    return Case(name, DensityMap(data, VOXEL_SIZE_A, lo), xyz, els)


def pdpt_case(seed: int = 1) -> Case:
    """The 5,377-atom Pd@Pt particle (XYZ file)."""
    path = DATA_DIR / "PdPt_EPB_5377.xyz"
    lines = path.read_text().splitlines()[2:]
    rows = [ln.split() for ln in lines if ln.strip()]
    els = np.array([r[0] for r in rows])
    xyz = np.array([[float(v) for v in r[1:4]] for r in rows])
    return _experimental_case("PdPt_5377", xyz, els, seed)


def fept_case(seed: int = 2) -> Case:
    """The 23,196-atom FePt particle (model (3, N) Å; species 0 = Fe, 1 = Pt)."""
    xyz = np.load(DATA_DIR / "FePt_model.npy").T.astype(np.float64)
    species = np.load(DATA_DIR / "FePt_atoms.npy").ravel()
    els = np.where(species == 0, "Fe", "Pt")
    return _experimental_case("FePt_23196", xyz, els, seed)
