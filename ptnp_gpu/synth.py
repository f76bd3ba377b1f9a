"""Synthetic nanoparticles with known truth: our test bench (``ptnp simulate``).

A particle is cut from an ideal fcc lattice (sphere, cuboctahedron or
truncated octahedron), optionally expanded, randomly rotated, and given
per-atom isotropic and anisotropic displacements that grow towards the
surface. The map is rendered with :func:`ptnp_gpu.simulate.render_atoms`, plus
a smooth background and white noise scaled to the peak of one core atom.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .elements import get_element
from .mapio import DensityMap, write_map
from .simulate import atom_peak_value, reference_blur_A2, render_atoms

__all__ = ["ParticleSpec", "Particle", "fcc_particle", "make_particle", "write_particle",
           "random_rotation", "SHAPES"]

SHAPES = ("sphere", "cuboctahedron", "truncated_octahedron", "decahedron")
_FCC_BASIS = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
_BCC_BASIS = np.array([[0, 0, 0], [.5, .5, .5]])


def random_rotation(rng) -> np.ndarray:
    """A uniformly random 3×3 rotation matrix."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _lattice_points(a, half_cells, shift, basis=_FCC_BASIS):
    r = np.arange(-half_cells, half_cells + 1)
    cells = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    pts = (cells[:, None, :] + basis[None]).reshape(-1, 3) + shift
    return pts * a


def _inside(pts, shape, s):
    if shape == "sphere":
        return np.linalg.norm(pts, axis=1) <= s
    l1 = np.abs(pts).sum(1)
    linf = np.abs(pts).max(1)
    if shape == "cuboctahedron":
        return (linf <= s) & (l1 <= 2.0 * s)
    if shape == "truncated_octahedron":
        return (linf <= s) & (l1 <= 1.5 * s)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _decahedron(n_atoms: int, lattice_param_A: float) -> np.ndarray:
    """A five-fold twinned (decahedral) fcc particle of about ``n_atoms`` atoms, round in outline,
    centred at 0 with its five-fold axis along z: five fcc wedges of 72° around a common [110]
    axis, each rotated 72° from the last (a real decahedron's twin wedges span 70.5°; where two
    wedges meet, atoms closer than 0.8 NN to an atom nearer the centre are left out)."""
    from scipy.spatial import cKDTree
    a = float(lattice_param_A)
    nn = a / np.sqrt(2.0)
    # the cubic frame turned so that [110] is z and the (1-11) plane, which holds it, is at azimuth 0
    frame = np.array([[1, -1, 0], [0, 0, 1], [1, 1, 0]], float)
    frame[0] /= np.sqrt(2.0)
    frame[2] /= np.sqrt(2.0)
    hc = int(np.ceil((3 * n_atoms / (16 * np.pi)) ** (1 / 3))) + 3
    pts = _lattice_points(a, hc, np.zeros(3)) @ frame.T
    normal = (np.array([1, -1, 1]) / np.sqrt(3.0)) @ frame.T
    phi0 = np.arctan2(normal[1], normal[0]) - np.pi / 2
    wedge = 2 * np.pi / 5
    parts = []
    for k in range(5):
        ang = k * wedge - phi0
        rot = np.array([[np.cos(ang), -np.sin(ang), 0], [np.sin(ang), np.cos(ang), 0], [0, 0, 1]])
        q = pts @ rot.T
        az = np.mod(np.arctan2(q[:, 1], q[:, 0]) - k * wedge, 2 * np.pi)
        parts.append(q[az < wedge])
    q = np.vstack(parts)
    q = q[np.argsort(np.linalg.norm(q, axis=1), kind="stable")]
    q = q[: int(1.3 * n_atoms) + 20]
    clash = cKDTree(q).query_pairs(0.8 * nn, output_type="ndarray")
    partners = [[] for _ in range(len(q))]
    for i, j in clash:
        partners[max(i, j)].append(min(i, j))      # the one farther out yields
    kept = np.zeros(len(q), bool)
    for i in range(len(q)):
        kept[i] = not any(kept[j] for j in partners[i])
    return q[kept][:n_atoms]


def fcc_particle(n_atoms: int, lattice_param_A: float, shape: str = "sphere", shift=(0, 0, 0),
                 lattice: str = "fcc", twin: bool = False):
    """Ideal fcc (or bcc) particle with about ``n_atoms`` atoms, centred at 0 (Å, lattice axes).

    ``twin``: an fcc particle twinned on the (111) plane through the origin: the half
    below it is the mirror image of the half above (two domains, stacking ABCBA).
    """
    if twin and lattice != "fcc":
        raise ValueError("twin=True needs an fcc lattice")
    if shape == "decahedron":
        if lattice != "fcc" or twin:
            raise ValueError("a decahedron is five fcc domains: lattice='fcc', twin=False")
        return _decahedron(n_atoms, lattice_param_A)
    a = float(lattice_param_A)
    shift = np.asarray(shift, float)
    basis = _BCC_BASIS if lattice == "bcc" else _FCC_BASIS
    hc = int(np.ceil((3 * n_atoms / (4 * len(basis) * np.pi)) ** (1 / 3))) + 3
    pts = _lattice_points(a, hc, shift, basis)
    lo, hi = 0.5 * a, hc * a
    for _ in range(50):  # bisection on the size parameter
        mid = 0.5 * (lo + hi)
        if _inside(pts, shape, mid).sum() < n_atoms:
            lo = mid
        else:
            hi = mid
    sel = pts[_inside(pts, shape, hi)]
    if twin:
        nrm = np.ones(3) / np.sqrt(3.0)
        h = sel @ nrm
        upper = sel[h > 1e-9]
        mirror = upper - 2.0 * np.outer(upper @ nrm, nrm)
        sel = np.vstack([sel[np.abs(h) <= 1e-9], upper, mirror])
    return sel - sel.mean(0) * 0  # keep the lattice origin at 0


@dataclass
class ParticleSpec:
    """Parameters of a synthetic particle map (all lengths Å, displacements Å²)."""
    n_atoms: int = 500
    element: str = "Pt"
    shape: str = "sphere"
    voxel_size_A: float = 0.358
    box: tuple | None = None            # (nz, ny, nx); default fits the particle
    origin_A: tuple = (0.0, 0.0, 0.0)
    margin_A: float = 7.0
    expansion: float = 0.0              # uniform relative expansion (0.02 = 2%)
    rotate: bool = True
    u_core_A2: float = 0.02
    u_surface_A2: float = 0.10          # isotropic U of the outermost atoms
    shell_depth_A: float = 4.0          # depth over which U grows to u_surface
    surface_min_doi: float = 1.0        # DOI of outermost atoms drawn in [min_doi, 1]
    twin: bool = False                  # fcc twinned on a (111) plane through the centre (two domains)
    core_element: str | None = None     # core-shell: atoms within core_radius_A of the centre are this
    core_radius_A: float = 0.0          # element (its scattering factors), on the shell's lattice
    core_scale: float = 1.0             # the core atoms' density × this: Z-contrast (HAADF) tomograms show
                                        # Pd at ~(46/78)^1.7 = 0.41 of Pt, electron potentials at 0.73
    jitter_A: float = 0.0               # static random displacement (true positions include it)
    noise: float = 0.15                 # white noise SD / peak of one atom of `element` with u_core
    background: float = 0.15            # smooth background amplitude / peak
    background_scale_A: float = 6.0
    b_extra_A2: float | None = None
    seed: int = 0


@dataclass
class Particle:
    spec: ParticleSpec
    map: DensityMap
    xyz_A: np.ndarray
    u_aniso_A2: np.ndarray            # (N, 3, 3)
    rotation: np.ndarray
    center_A: np.ndarray
    lattice_param_A: float
    ideal_xyz_A: np.ndarray = field(repr=False, default=None)
    elements: np.ndarray = field(repr=False, default=None)   # (N,) symbols

    def __post_init__(self):
        if self.elements is None:
            self.elements = np.array([self.spec.element] * len(self.xyz_A))

    @property
    def u_iso_A2(self):
        return np.trace(self.u_aniso_A2, axis1=1, axis2=2) / 3.0

    @property
    def doi(self):
        ev = np.linalg.eigvalsh(self.u_aniso_A2)
        return ev[:, 0] / ev[:, 2]


def _displacements(rel, depth, spec, rng):
    """Per-atom U (N, 3, 3): grows from u_core to u_surface over the outer shell."""
    n = len(rel)
    t = np.clip(1.0 - depth / max(spec.shell_depth_A, 1e-6), 0.0, 1.0)
    u = spec.u_core_A2 + (spec.u_surface_A2 - spec.u_core_A2) * t
    doi = 1.0 - (1.0 - rng.uniform(spec.surface_min_doi, 1.0, n)) * t
    # principal axes: random frame; eigenvalues (u_maj, u_med, u_min) with mean u
    U = np.empty((n, 3, 3))
    for i in range(n):
        R = random_rotation(rng)
        lam = np.array([1.0, 0.5 * (1.0 + doi[i]), doi[i]])
        lam *= 3.0 * u[i] / lam.sum()
        U[i] = R @ np.diag(lam) @ R.T
    return U


def make_particle(spec: ParticleSpec | None = None, **kw) -> Particle:
    """Build a synthetic particle map and its truth (see :class:`ParticleSpec`)."""
    spec = spec or ParticleSpec()
    for k, v in kw.items():
        setattr(spec, k, v)
    rng = np.random.default_rng(spec.seed)
    el = get_element(spec.element)
    # hcp metals are built as fcc with the same bond length (an ABC instead of ABAB stacking)
    cubic = el.nn_distance_A * np.sqrt(2.0) if el.lattice == "hcp" else el.lattice_param_A
    a = cubic * (1.0 + spec.expansion)
    ideal = fcc_particle(spec.n_atoms, a, spec.shape, lattice="bcc" if el.lattice == "bcc" else "fcc",
                         twin=spec.twin)
    R = random_rotation(rng) if spec.rotate else np.eye(3)
    rel = ideal @ R.T
    radius = np.linalg.norm(rel, axis=1)
    depth = radius.max() - radius
    U = _displacements(rel, depth, spec, rng)
    if spec.jitter_A:
        rel = rel + rng.normal(scale=spec.jitter_A, size=rel.shape)
    vs = float(spec.voxel_size_A)
    if spec.box is None:
        n = int(np.ceil((2 * (radius.max() + spec.margin_A)) / vs))
        box = (n, n, n)
    else:
        box = tuple(int(b) for b in spec.box)
    origin = np.asarray(spec.origin_A, float)
    extent = np.array([box[2], box[1], box[0]]) * vs
    center = origin + 0.5 * (extent - vs) + rng.uniform(-0.5, 0.5, 3) * vs
    xyz = rel + center
    b_extra = reference_blur_A2(vs) if spec.b_extra_A2 is None else spec.b_extra_A2
    elements = np.array([el.symbol] * len(xyz))
    weight = np.ones(len(xyz))
    if spec.core_element:
        core = radius < spec.core_radius_A
        elements[core] = get_element(spec.core_element).symbol
        weight[core] = spec.core_scale
    data = np.zeros(box)
    for sym in np.unique(elements):       # each element with its own scattering factors
        m = elements == sym
        data += np.asarray(render_atoms(xyz[m], box, vs, origin, sym, b_extra_A2=b_extra, u_aniso_A2=U[m],
                                        weights=weight[m], backend="numpy"), dtype=np.float64)
    peak = atom_peak_value(el, b_extra, spec.u_core_A2)
    if spec.background:
        from scipy.ndimage import gaussian_filter
        bg = gaussian_filter(rng.normal(size=box), spec.background_scale_A / vs, mode="wrap")
        bg = (bg - bg.min()) / max(bg.max() - bg.min(), 1e-12)
        data += spec.background * peak * bg
    if spec.noise:
        data += rng.normal(scale=spec.noise * peak, size=box)
    dmap = DensityMap(data.astype(np.float32), vs, origin)
    return Particle(spec, dmap, xyz, U, R, center, a, ideal + center, elements)


def write_particle(particle: Particle, out_stem, extra: dict | None = None) -> dict:
    """Write ``STEM.mrc``, ``STEM_truth.pdb`` and ``STEM_truth.json`` (with ``extra``'s items,
    e.g. how the map was imaged); return the paths."""
    from .models import Model, atomic_write, write_pdb
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    m = particle.map
    write_map(stem.with_suffix(".mrc"), m.data, m.voxel_size_A, m.origin_A)
    U = particle.u_aniso_A2
    u6 = np.stack([U[:, 0, 0], U[:, 1, 1], U[:, 2, 2], U[:, 0, 1], U[:, 0, 2], U[:, 1, 2]], 1)
    model = Model(particle.xyz_A, [str(e) for e in particle.elements],
                  8 * np.pi ** 2 * particle.u_iso_A2, u6)
    pdb = Path(f"{stem}_truth.pdb")
    write_pdb(pdb, model)
    truth = {
        "spec": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(particle.spec).items()},
        "n_atoms": int(len(particle.xyz_A)),
        "lattice_param_A": particle.lattice_param_A,
        "rotation": particle.rotation.tolist(),
        "center_A": particle.center_A.tolist(),
        "xyz_A": np.round(particle.xyz_A, 5).tolist(),
        "u_aniso_A2": np.round(u6, 6).tolist(),
        "u_iso_A2": np.round(particle.u_iso_A2, 6).tolist(),
        "doi": np.round(particle.doi, 6).tolist(),
        **(extra or {}),
    }
    js = Path(f"{stem}_truth.json")
    atomic_write(js, lambda fh: json.dump(truth, fh))
    return {"map": str(stem.with_suffix(".mrc")), "truth_pdb": str(pdb), "truth_json": str(js)}
