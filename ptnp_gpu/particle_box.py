"""The particle's box in a map that is mostly solvent: denoising and detection work only there.

Reconstructions are often boxed generously: a 3 nm particle in a 256³ box at 0.36 Å leaves
nine tenths of the voxels to solvent, and the FFT denoising and the sweep's setup pay for them.
Detection (:func:`ptnp_gpu.detect.detect_atoms`) measures the solvent's noise (its spectrum,
colour and band) on the whole map, then denoises and detects inside :func:`particle_box` only;
the noise level of the denoised map is read in a block of solvent beside the box
(:func:`solvent_block`, denoised on its own) away from the block's faces (:func:`box_interior`),
where its FFT's edges do not reach. Measuring the noise spectrum in
the box as well changed it (a shell of ~10 Å of solvent, non-periodic faces: band limit 1.22 →
1.40 Å, colour 157 → 106 on a gemmi-rendered map) and lost atoms (F1 0.866 → 0.835).

:func:`particle_box` finds the particle cheaply, on the map taken every ``step``-th voxel (a
~1.1 Å grid): where it is both bright and detailed, i.e. where the map smoothed over 2.5 Å and
the energy of its detail finer than 1 Å (smoothed over 2.5 Å) rise ``_K_BRIGHT`` (4, or 2 where
nothing reaches 4) and ``_K_DETAIL`` (4) robust SDs above their medians (the solvent's level;
the spread from the lower half, the particle being in the upper tail). Brightness alone follows a smooth solvent background (blobs of it reach the
particle's smoothed level: the box grew to the whole map), detail alone follows the noise's own
energy (its upper tail is long); atoms are both. That core can be a fraction of a particle that
fills much of its map (the quantiles are then the particle's as much as the solvent's): the
particle is the detailed regions (26-connected) that hold core voxels. Their bounding box, grown
by ``margin_A`` (16 Å: the solvent the noise level needs beyond the particle, 6 Å, the denoising's 8 Å high-pass
and the surface atoms below the thresholds, 2-5 Å measured), is the particle's box when it
holds at most ``max_fraction`` of the map. Masked maps (a constant region: their noise is
measured in bands up to the mask) and maps clipped at their minimum are left whole, and so is
a detection whose atoms come within half the margin of a face of the box
(:func:`atoms_at_faces`: the particle reaches beyond it) or that the box refuses.
"""
from __future__ import annotations

import numpy as np

from . import backend as _be
from .gpu_kernels import label_mask
from .neighbors import segment_max
from .solvent import _clipped, _live_voxels, _mostly_constant, subsampled
from .sweep import _crop_box_above

__all__ = ["particle_box", "solvent_block", "box_interior", "atoms_at_faces", "BOX_MARGIN_A", "BOX_MAX_FRACTION"]

BOX_MARGIN_A = 16.0       # solvent kept beyond the particle's smoothed extent (Å)
BOX_MAX_FRACTION = 0.5    # the box is used when it holds at most this share of the map's voxels
_GRID_A = 1.1             # spacing of the grid the particle is found on (Å; 0.75 Å found the same
                          # boxes on 18 maps, 1-10× slower: 108 against 22 ms for a 256³ map on 2 cores)
_SMOOTH_A = 2.5           # smoothing of that grid (Å, Gaussian SD)
_DETAIL_A = 1.0           # detail: the grid less its smoothing over this (Å, Gaussian SD)
_K_DETAIL = 4.0           # the particle: its detail energy this many robust SDs above the median, and its
_K_BRIGHT = (4.0, 2.0)    # smoothed map the first of these that leaves any voxel. On 40 maps with 25-45 Å of
                          # solvent (gemmi and ours, benchmarks/particle_box.py seeds 0 and 1): 4 alone found no
                          # box under backgrounds of 0.28-0.45 × a peak (9 maps) and one box 2.7 Å short of an
                          # atom (the face rule caught it); 3 cut 4 particles (an atom 1.1 Å outside); 2 kept
                          # every atom 11 Å or more inside but its boxes were larger (7 over half their map)
_Q_SD = 0.15865525393145707   # the quantile one SD below the median of a normal distribution


def particle_box(raw, voxel_size_A, margin_A: float = BOX_MARGIN_A, max_fraction: float = BOX_MAX_FRACTION,
                 check_mask: bool = True):
    """The particle's box in ``raw`` (a [z, y, x] map on the backend, atoms bright), or None.

    Parameters
    ----------
    raw : (nz, ny, nx) float array (NumPy or CuPy)
    voxel_size_A : float or (3,) Å along x, y, z
    margin_A : float
        Solvent kept on every side beyond the smoothed particle (Å).
    max_fraction : float
        Largest share of the map's voxels the box may hold (a larger box: None, the whole map).
    check_mask : bool
        Look for a mask or clipping first (False: the caller knows there is none).

    Returns
    -------
    (slice z, slice y, slice x) or None
        None for a map whose box would hold more than ``max_fraction`` of it, a masked or
        clipped map, or one where nothing rises above the thresholds.

    Examples
    --------
    >>> from ptnp_gpu.synth import make_particle
    >>> p = make_particle(n_atoms=80, voxel_size_A=0.5, margin_A=30.0, seed=3)   # 30 Å of solvent
    >>> p.map.shape, [(s.start, s.stop) for s in particle_box(p.map.data, p.map.voxel_size_A)]
    ((148, 148, 148), [(24, 123), (22, 125), (26, 125)])
    """
    be = _be.namespace(raw)
    xp, ndi = be.xp, be.ndi
    vs = np.broadcast_to(np.asarray(voxel_size_A, dtype=np.float64), (3,))
    step = max(1, int(round(_GRID_A / float(vs.min()))))
    sub = subsampled(raw, step)
    if min(sub.shape) < 3:
        return None
    if check_mask:
        live = _live_voxels(sub)                                                 # sync
        if _mostly_constant(live) or _clipped(sub, live):                         # syncs
            return None

    def sigma(length_A):
        return tuple(length_A / (step * float(v)) for v in vs[::-1])

    bright = ndi.gaussian_filter(sub, sigma(_SMOOTH_A))
    detail = sub - ndi.gaussian_filter(sub, sigma(_DETAIL_A))
    detail = ndi.gaussian_filter(detail * detail, sigma(_SMOOTH_A))
    # the quantiles of both on every 2nd voxel of the grid, read in one transfer
    qs = xp.asarray([_Q_SD, 0.5])
    q = _be.to_host(xp.concatenate([xp.quantile(f[::2, ::2, ::2], qs) for f in (bright, detail)]))   # sync
    t_detail = float(q[3] + _K_DETAIL * (q[3] - q[2]))
    # the particle: the detailed regions (26-connected) that hold a bright and detailed core, i.e.
    # whose brightest voxel is bright enough. The core alone can be a fraction of a particle that
    # fills much of its map (its median and SD are the particle's too): 561 Pt atoms in a 57 Å box,
    # core 6 of the atoms' 24 grid voxels across
    regions, _ = label_mask(detail > t_detail)                                  # no host read
    del detail
    peak = segment_max(regions.ravel(), bright.ravel(), regions.size + 1).astype(xp.float32)   # exact
    peak[0] = -np.inf                                                           # not detailed
    region_peak = peak[regions]
    grown = tuple(int(np.ceil(margin_A / (step * float(v)))) + 1 for v in vs[::-1])   # z, y, x
    for k in _K_BRIGHT:                                 # a strong smooth background: the lower one
        occupied = _crop_box_above(region_peak, float(q[1] + k * (q[1] - q[0])), 0)   # sync
        if occupied is not None:
            break
    else:
        return None
    box = []
    for s, g, n in zip(occupied, grown, raw.shape):
        box.append(slice(max(0, (s.start - g) * step), min(n, (s.stop - 1 + g) * step + 1)))
    box = tuple(box)
    kept = np.prod([s.stop - s.start for s in box]) / float(np.prod(raw.shape))
    return box if kept <= max_fraction else None


def solvent_block(box, shape, voxel_size_A, min_A: float, max_A: float):
    """A block of solvent beside ``box`` (z, y, x slices of a map of ``shape``), where the denoised
    map's noise level is read far from the particle: the thickest of the six blocks between a face
    of the box and the map's edge, with the box's extent on the other two axes, at most ``max_A``
    thick; None where none is ``min_A`` thick.

    Near the particle the denoised map's "solvent" holds the particle's halo (the 8 Å high-pass)
    and its most mobile atoms' tails: read in the box's own solvent, the noise level of a map with
    35 Å of solvent came out 1.2× the level in this block (0.00143 against 0.00118), and recall
    fell to 0.71 (0.80 with the block, 0.79 detecting the whole map)."""
    vs = np.broadcast_to(np.asarray(voxel_size_A, dtype=np.float64), (3,))[::-1]       # z, y, x
    best = None
    for ax in range(3):
        for low in (True, False):
            t = box[ax].start if low else shape[ax] - box[ax].stop
            if best is None or t * vs[ax] > best[0]:
                best = (t * vs[ax], ax, low, t)
    t_A, ax, low, t = best
    if t_A < min_A:
        return None
    t = min(t, int(np.ceil(max_A / vs[ax])))
    out = list(box)
    out[ax] = slice(box[ax].start - t, box[ax].start) if low else slice(box[ax].stop, box[ax].stop + t)
    return tuple(out)


def box_interior(box, grid_shape, step: int, face_vox, shape):
    """Boolean (grid_shape) NumPy mask on the ``step``-subsampled grid of a map of ``shape``:
    inside ``box`` (z, y, x slices of the map) and at least ``face_vox`` (z, y, x map voxels) from
    each face of it that cuts the map (a face on the map's own edge is the map's)."""
    keep = np.zeros(grid_shape, dtype=bool)
    sl = []
    for s, f, n in zip(box, face_vox, shape):
        lo = s.start + int(np.ceil(f)) if s.start > 0 else 0
        hi = s.stop - 1 - int(np.ceil(f)) if s.stop < n else n - 1        # last voxel kept
        lo_g = -(-lo // step)                                              # first grid point at or after lo
        hi_g = hi // step + 1
        sl.append(slice(lo_g, max(lo_g, hi_g)))
    keep[tuple(sl)] = True
    return keep


def atoms_at_faces(xyz_A, origin_A, voxel_size_A, box, shape, face_A: float):
    """The axis ('z', 'y' or 'x') of the first face of ``box`` that cuts the map (``shape``) and
    has an atom (``xyz_A``, host, Å) within ``face_A`` of it, or None."""
    vs = np.broadcast_to(np.asarray(voxel_size_A, dtype=np.float64), (3,))
    xyz = np.asarray(xyz_A, dtype=np.float64).reshape(-1, 3)
    if len(xyz) == 0:
        return None
    vox = ((xyz - np.asarray(origin_A, dtype=np.float64)) / vs)[:, ::-1]     # z, y, x voxels
    for ax, (s, n) in enumerate(zip(box, shape)):
        f = face_A / vs[2 - ax]
        if (s.start > 0 and (vox[:, ax] < s.start + f).any()) or (s.stop < n and (vox[:, ax] > s.stop - 1 - f).any()):
            return "zyx"[ax]
    return None
