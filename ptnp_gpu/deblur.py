"""Maps blurred far beyond the atom model: measure the excess blur, sharpen, compare models.

Measured maps are often blurrer than the simulated atom that denoises them (B-factors of
50-100 Å² are common). Past about 40 Å² of excess blur the atoms inside a particle merge into a
plateau whose lattice fringes hold only a few percent of the density, and the thresholded
components find the surface and lose the core (a 944-atom particle blurred by 79 Å²: recall
0.40, the core's 201 atoms all lost). The information is still there: sharpened by 60 Å² and
low-passed at 2.1 Å the same map gives recall and precision 1.000.

* :func:`excess_blur_A2` — the blur (Å²) of the map beyond a model of its detected atoms: the
  map's own transfer against the model (:class:`ptnp_gpu.peaks.MapTransfer`, inside the atoms'
  box) fitted as ``exp(-B s² / 4)`` over 5-2.5 Å. On the 38 detected maps of
  ``benchmarks/robustness_maps.py --harder --seed 1 / 2`` it tracks the net blur (blur minus
  sharpening): median error ~5 Å², up to ~20 Å², over-sharpened maps negative; a detection
  that lost most atoms can read far off (146 Å² for 73 Å² net with the core lost; -57 Å² for
  35 Å² net at recall 0.59).
* :func:`sharpened` — the map times ``exp(+B s² / 4)`` under a cosine low-pass (a negative B
  blurs: over-sharpened maps, reading 20 Å² or more sharper than the model, are tried blurred
  back by half of that).
* :func:`model_correlation` — how well a model, rendered with the map's blur, explains the map:
  the referee between the detection on the map and the one on its sharpened copy.
* :func:`lattice_score` — the referee of the filter ladder: a model that lost its lattice (no
  atom with a full first shell, or refused) is detected again on the map blurred and sharpened by
  a ladder of B values, and the model with the most atoms bonded like the bulk element and the
  fewest clashes is kept. On maps sharpened far beyond their noise or blurred far beyond the
  atoms the map's own correlation cannot referee (the amplified noise or the blur dominates it:
  it preferred models with 80% false atoms); the bonds can.

Every function works on NumPy and CuPy arrays.
"""
from __future__ import annotations

import numpy as np

from . import backend as _be

__all__ = ["excess_blur_A2", "sharpened", "Sharpener", "model_correlation", "atoms_box", "lattice_score"]

_FIT_S = (0.2, 0.4)      # 1/Å: the transfer is fitted over 5-2.5 Å
_CLASH = 0.75            # × the bulk bond: an atom this close to another clashes (a ghost, or a split atom).
                         # 0.8 took the true short bonds of a disordered particle (HEA_4 read as Pt: 226 of
                         # its 1,501 atoms) for clashes and traded its model (recall 0.993) for a blurred one (0.849)
_BONDED = 1.2            # × the bulk bond: neighbours within this are bonded
_MIN_BONDS = 4           # a well-placed atom has at least this many bonded neighbours: a false atom in a
                         # surface hollow has 3 (with 3, a rung sharpened by 60 Å² that added 76 such atoms
                         # to a single-particle map, precision 0.995 -> 0.911, outscored the right one)


def atoms_box(xyz_A, shape_zyx, origin_A, voxel_size_A, margin_A: float = 4.0):
    """Slices (z, y, x) of the box holding the atoms ``xyz_A`` (host, Å) and ``margin_A`` more."""
    vs = np.broadcast_to(np.asarray(voxel_size_A, float), (3,))
    ijk = (np.asarray(xyz_A, float) - np.asarray(origin_A, float)) / vs
    lo = np.floor(ijk.min(0) - margin_A / vs).astype(int)
    hi = np.ceil(ijk.max(0) + margin_A / vs).astype(int) + 1
    n_xyz = np.array(shape_zyx)[::-1]
    lo, hi = np.clip(lo, 0, n_xyz), np.clip(hi, 0, n_xyz)
    return tuple(slice(int(lo[a]), int(hi[a])) for a in (2, 1, 0))


def excess_blur_A2(raw, model, box, voxel_size_A) -> float:
    """Blur (Å²) of ``raw`` beyond ``model`` (the detected atoms rendered as the detection saw
    them), inside ``box``: the map's transfer against the model, T(s), fitted as
    ``a · exp(-B s² / 4)`` over s = 0.2-0.4 Å⁻¹ (shells where T > 0). NaN when fewer than three
    shells can be fitted. One small host transfer."""
    from .gpu_kernels import array_mean
    from .peaks import MapTransfer
    xp = _be.namespace(raw).xp
    data = raw[box]
    tr = MapTransfer(data - array_mean(data), voxel_size_A)
    _, T = tr.fit(xp.asarray(model[box], dtype=xp.float32))
    t = np.asarray(_be.to_host(T), dtype=np.float64)
    s = tr.s_shell[: len(t)]
    sel = (s >= _FIT_S[0]) & (s <= _FIT_S[1]) & (t > 0)
    if sel.sum() < 3:
        return float("nan")
    slope = np.polyfit(s[sel] ** 2, np.log(t[sel]), 1)[0]
    return float(-4.0 * slope)


class Sharpener:
    """The map's Fourier transform, computed once, sharpened (or blurred) by any number of B.

    ``Sharpener(raw, voxel_size_A)(b_A2, resolution_A)`` is :func:`sharpened`, bit for bit; the
    deblur pass and the rungs of the filter ladder filter one map by up to six B values and pay
    for one forward transform (and one frequency grid) instead of six. The map is transformed on
    its own, periodic grid: padding a prime side to a fast length (3-5× less transform time) was
    tried and not kept, as the low-pass edge's ringing (~10 Å) carries the padding's flat layer
    into the solvent near the faces, where the solvent block's noise level is read."""

    def __init__(self, raw, voxel_size_A):
        be = _be.namespace(raw)
        self.be, xp = be, be.xp
        self.shape = tuple(int(n) for n in raw.shape)
        vs = np.broadcast_to(np.asarray(voxel_size_A, float), (3,))
        self.F = be.fft.rfftn(xp.asarray(raw, dtype=xp.float32))     # no copy of a float32 map
        fz = xp.fft.fftfreq(raw.shape[0], d=vs[2]).astype(xp.float32)
        fy = xp.fft.fftfreq(raw.shape[1], d=vs[1]).astype(xp.float32)
        fx = xp.fft.rfftfreq(raw.shape[2], d=vs[0]).astype(xp.float32)
        self.s2 = (fz[:, None, None] ** 2 + fy[None, :, None] ** 2) + fx[None, None, :] ** 2

    def __call__(self, b_A2: float, resolution_A: float):
        """The map × exp(+``b_A2`` s² / 4) under the cosine low-pass at ``resolution_A``, float32."""
        xp, s2 = self.be.xp, self.s2
        s_end = 1.0 / resolution_A + 0.05                       # the low-pass is zero beyond this
        edge = xp.clip((xp.sqrt(s2) - xp.float32(s_end - 0.1)) / xp.float32(0.1), 0, 1)
        gain = xp.exp(xp.float32(b_A2 / 4.0) * xp.minimum(s2, xp.float32(s_end * s_end)))   # no overflow beyond
        gain *= xp.float32(0.5) * (1 + xp.cos(xp.float32(np.pi) * edge))
        del edge
        return self.be.fft.irfftn(self.F * gain, s=self.shape).astype(xp.float32)


def sharpened(raw, voxel_size_A, b_A2: float, resolution_A: float):
    """``raw`` × exp(+``b_A2`` s² / 4) in Fourier space, low-passed at ``resolution_A`` (cosine
    edge 0.1 Å⁻¹ wide, centred 0.05 Å⁻¹ below 1 / resolution), float32 on ``raw``'s backend.
    One map, one B: :class:`Sharpener` filters one map by several."""
    return Sharpener(raw, voxel_size_A)(b_A2, resolution_A)


def model_correlation(raw, xyz_A, box, voxel_size_A, origin_A, element, b_extra_A2: float,
                      weights=None) -> float:
    """Pearson correlation, inside ``box``, of ``raw`` with the atoms ``xyz_A`` rendered with
    ``b_extra_A2`` (the map's blur): how much of the map the model explains. One sync."""
    from .simulate import render_atoms
    be = _be.namespace(raw)
    xp = be.xp
    if len(xyz_A) == 0:
        return float("-inf")
    vs = np.broadcast_to(np.asarray(voxel_size_A, float), (3,))
    corner = np.asarray(origin_A, float) + np.array([box[2].start, box[1].start, box[0].start]) * vs
    shape = tuple(sl.stop - sl.start for sl in box)
    sim = render_atoms(xp.asarray(xyz_A), shape, voxel_size_A, corner, element, b_extra_A2=b_extra_A2,
                       weights=weights, backend=be)              # the box only, not the whole map
    a = raw[box].astype(xp.float64).ravel()
    b = sim.astype(xp.float64).ravel()
    a -= a.mean()
    b -= b.mean()
    r = float((a * b).sum() / xp.maximum(xp.sqrt((a * a).sum() * (b * b).sum()), 1e-300))   # sync
    return r


def lattice_score(xyz_A, element) -> tuple[int, int]:
    """(well-placed atoms, clashing atoms) of a model (host, Å): an atom is well placed when no
    other atom lies within 0.75 × the element's bulk bond and at least four lie within 1.2 × it,
    and clashes when one lies within 0.75 ×. ``well-placed − clashing`` ranks models of one map:
    missed atoms lower the first, false atoms (which sit between true ones) raise the second
    and take the well-placed status from their true neighbours."""
    from scipy.spatial import cKDTree

    from .elements import get_element
    el = get_element(element) if isinstance(element, str) else element
    xyz = np.asarray(_be.to_host(xyz_A), dtype=np.float64).reshape(-1, 3)
    if len(xyz) < 2:
        return 0, 0
    tree = cKDTree(xyz)
    nearest = tree.query(xyz, k=2)[0][:, 1]
    clash = nearest < _CLASH * el.nn_distance_A
    bonded = tree.query_ball_point(xyz, _BONDED * el.nn_distance_A, return_length=True) - 1
    good = ~clash & (bonded >= _MIN_BONDS)
    return int(good.sum()), int(clash.sum())
