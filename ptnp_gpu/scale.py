"""Is the map's length scale right? The voxel size checked against the element's bulk lattice.

A wrong voxel size in a map header (a reconstruction written with 1 Å "unknown" pixels, a
binned map whose header kept the unbinned size) does not stop the detection: it scales every
bond, and the statistics then report strains of tens of percent. Two checks, both in Å:

* :func:`check_model_scale` — a detected model's first-shell bond length (the mean distance to
  the first coordination shell of the atoms that have a full one, which, unlike the nearest
  neighbour alone, is not biased short by position noise) against the element's bulk bond.
  Outside ±10% it returns a warning naming the voxel size that would bring the bond to bulk.
* :func:`estimate_voxel_size_A` — the voxel size read from the map alone: the radially averaged
  power spectrum peaks at the close-packed planes' spacing (fcc (111) = a/√3, bcc (110) = a/√2,
  hcp (101)/(002)), which is 0.8165 × the bulk bond length for all three lattices within a few
  percent. A starting point for ``voxel_size_A="auto"`` (refined by the detected bonds).

Both assume the particle's lattice is within a few percent of bulk; a voxel size derived from
them calibrates the absolute lengths (lattice parameter, strain) to the bulk element.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backend as _be
from .elements import Element, get_element

__all__ = ["ScaleCheck", "first_shell_bond_A", "check_model_scale", "SpectralScale",
           "estimate_voxel_size_A", "local_maxima_voxel_size_A", "voxel_size_candidates", "Calibration",
           "calibrate_voxel_size", "SCALE_TOLERANCE"]

SCALE_TOLERANCE = 0.10       # a bond this far (relative) from bulk is called a wrong scale
MIN_FULL_SHELL = 0.005       # a lattice: this share of the atoms has a full first shell (noise: 0)
_FEW_FULL_SHELLS = 0.05      # below this share the scale warning says the model itself may be poor
_SHELL = 1.2                 # first shell: pairs within this × the median nearest-neighbour distance
_PLANE_OVER_BOND = np.sqrt(2.0 / 3.0)   # close-packed plane spacing / bond (fcc, bcc; hcp ~0.8)
_SPACING_VOXELS = (1.8, 14.0)            # spacings searched, in voxels (0.15-1.2 Å voxels for Pt)
_MIN_CONTRAST = 0.25          # the fringe peak must stand this far (natural log) above the trend
_NEAR = 0.05                  # calibration: bonds this close to bulk, the user's detection options apply


def first_shell_bond_A(xyz_A, lattice: str = "fcc", max_atoms: int = 1000) -> float:
    """First-shell bond length of a model (Å), NaN for fewer than 4 atoms.

    The atoms with a full first coordination shell (fcc / hcp: their 12th neighbour within 1.2 ×
    the median nearest-neighbour distance; bcc: their 14th, the first two shells, within 1.4 ×)
    give the mean distance to those neighbours (bcc: divided by (8 + 6 · 2/√3) / 14, the two
    shells' mean over the first); the median over atoms is returned. Unlike the nearest-
    neighbour distance (the shortest of ~12 noisy distances) it is not pulled short by position
    noise: within 0.5% of the truth on fcc and bcc particles with 0.1 Å of noise per coordinate
    (the median of the distances within a cutoff read bcc 3.6% short there). With fewer than 10
    such atoms, the median of the distances within 1.2 × (bcc 1.08 ×) the nearest-neighbour
    distance. The neighbourhoods of at most ``max_atoms`` atoms (evenly spread over the model's
    order) are measured, against all atoms."""
    return _first_shell(xyz_A, lattice, max_atoms)[0]


def _first_shell(xyz_A, lattice: str = "fcc", max_atoms: int = 1000):
    """(first-shell bond in Å, fraction of the measured atoms with a full first shell): see
    :func:`first_shell_bond_A`. The fraction is 0.3-0.6 for crystalline particles of 150-1,000
    atoms at any scale, 0 for noise taken for atoms."""
    global _LAST_SHELL
    xyz = np.asarray(_be.to_host(xyz_A), dtype=np.float64).reshape(-1, 3)
    key = (xyz.tobytes(), lattice, int(max_atoms))
    last = _LAST_SHELL
    if last is not None and last[0] == key:       # analyze checks the model detection just checked
        return last[1]
    out = _measure_first_shell(xyz, lattice, max_atoms)
    _LAST_SHELL = (key, out)
    return out


_LAST_SHELL = None   # (key, result) of the latest _first_shell: detection and statistics share it


def _measure_first_shell(xyz, lattice, max_atoms):
    from scipy.spatial import cKDTree
    n = len(xyz)
    if n < 4:
        return float("nan"), 0.0
    bcc = lattice == "bcc"
    k, factor, outer = (14, (8.0 + 12.0 / np.sqrt(3.0)) / 14.0, 1.4) if bcc else (12, 1.0, _SHELL)
    sample = xyz[:: max(1, -(-n // max_atoms))]
    d = cKDTree(xyz).query(sample, k=min(n, k + 1))[0][:, 1:]
    nn = float(np.median(d[:, 0]))
    full = d[:, k - 1] < outer * nn if d.shape[1] >= k else np.zeros(len(d), bool)
    fraction = float(full.mean())
    if full.sum() >= 10:
        return float(np.median(d[full, :k].mean(axis=1))) / factor, fraction
    r = (1.08 if bcc else _SHELL) * nn
    return float(np.median(d[d <= r])), fraction


@dataclass
class ScaleCheck:
    """A model's bond length against the bulk element's (lengths in Å)."""
    bond_A: float                  # median first-shell bond of the model
    bulk_bond_A: float             # the element's bulk nearest-neighbour distance
    ratio: float                   # bond_A / bulk_bond_A
    voxel_size_A: float            # the voxel size the model was built with (mean of the axes)
    suggested_voxel_size_A: float  # voxel_size_A / ratio: the one that makes the bond bulk
    full_shell_fraction: float     # atoms with a full first shell: a lattice (0.3-0.6) or not (~0)
    message: str | None            # a warning when the ratio is outside 1 ± SCALE_TOLERANCE

    def as_dict(self) -> dict:
        return {"bond_A": self.bond_A, "bulk_bond_A": self.bulk_bond_A, "ratio": self.ratio,
                "voxel_size_A": self.voxel_size_A, "suggested_voxel_size_A": self.suggested_voxel_size_A,
                "full_shell_fraction": self.full_shell_fraction, "wrong_scale": self.message is not None}


def check_model_scale(xyz_A, element: Element | str, voxel_size_A, tolerance: float = SCALE_TOLERANCE
                      ) -> ScaleCheck:
    """Compare a model's first-shell bond with the bulk element's.

    Parameters
    ----------
    xyz_A : (N, 3) atom positions in Å
    element : the element the particle is made of (its bulk lattice gives the bond)
    voxel_size_A : float or (3,) floats, the map's voxel size the model was built with (Å)
    tolerance : relative departure from bulk beyond which ``message`` is set

    Returns
    -------
    ScaleCheck
        ``message`` is set when the bond is more than ``tolerance`` from bulk.
        ``full_shell_fraction`` tells a lattice at some scale (0.3-0.6 on simulated particles
        read at 0.6-2 × their voxel size) from atoms taken from noise (0).
    """
    el = get_element(element) if isinstance(element, str) else element
    vs = float(np.mean(np.asarray(voxel_size_A, dtype=np.float64)))
    bond, full = _first_shell(xyz_A, el.lattice)
    bulk = float(el.nn_distance_A)
    ratio = bond / bulk if np.isfinite(bond) else float("nan")
    suggested = vs / ratio if np.isfinite(ratio) and ratio > 0 else float("nan")
    msg = None
    if np.isfinite(ratio) and abs(ratio - 1.0) > tolerance:
        msg = (f"the model's bonds are {bond:.2f} Å, {ratio:.2f}× bulk {el.symbol}'s {bulk:.2f} Å: the voxel size "
               f"({vs:.4g} Å) or the element is probably wrong (every length and strain is off by as much); "
               f"{suggested:.4g} Å would give bulk bonds (--voxel-size {suggested:.4g}, or --voxel-size auto)")
        if full < _FEW_FULL_SHELLS:
            msg += (f". Only {100 * full:.1f}% of the atoms have a full first shell: a poorly resolved model "
                    "(atoms missed or misplaced) can read so too")
    return ScaleCheck(bond, bulk, ratio, vs, suggested, full, msg)


@dataclass
class SpectralScale:
    """The voxel size read from the map's lattice fringes."""
    voxel_size_A: float     # estimate (Å), NaN when no fringe peak stands out
    spacing_voxels: float   # the close-packed planes' spacing in voxels
    contrast: float         # the peak's height over the spectrum's trend (natural log)
    ok: bool                # contrast ≥ the minimum: the estimate can be used


def _radial_power(data, n_bins: int):
    """Radially averaged power spectrum of ``data`` (any backend) on ``n_bins`` bins of
    |k| in 0-0.5 cycles/voxel; returns host (k, power) of the bins that hold Fourier samples."""
    be = _be.namespace(data)
    xp = be.xp
    d = xp.asarray(data, dtype=xp.float32)
    d = d - d.mean()
    F = be.fft.rfftn(d)
    P = (F.real * F.real + F.imag * F.imag).astype(xp.float32)
    del F
    nz, ny, nx = d.shape
    kz = xp.fft.fftfreq(nz).astype(xp.float32)[:, None, None]
    ky = xp.fft.fftfreq(ny).astype(xp.float32)[None, :, None]
    kx = xp.fft.rfftfreq(nx).astype(xp.float32)[None, None, :]
    k = xp.sqrt(kz * kz + ky * ky + kx * kx)
    idx = xp.minimum((k * (2 * n_bins)).astype(xp.int32), n_bins).ravel()
    from .neighbors import segment_sum
    flat_p = P.ravel()
    sums, counts = _be.to_host(segment_sum(idx, [flat_p, xp.ones_like(flat_p)], n_bins + 1))  # sync: one transfer
    kc = (np.arange(n_bins) + 0.5) / (2 * n_bins)
    held = counts[:n_bins] > 0
    return kc[held], sums[:n_bins][held] / counts[:n_bins][held]


def _fringe_peaks(data):
    """Peaks of the radially averaged power spectrum over its running median, in the window of
    spacings searched: (spacing in voxels, contrast) host arrays, most contrast first."""
    from scipy import ndimage
    # bins no finer than the Fourier grid's spacing (1 / the shortest edge), at most 400
    n_bins = int(np.clip(min(data.shape), 32, 400))
    k, p = _radial_power(data, n_bins)
    # the trend (running median of the log power over 0.05 cycles/voxel) is taken over all k, so
    # that the window's edges see the spectrum beyond them (a padded edge on the steep low-k
    # fall reads as a peak)
    lp = np.log(p + 1e-30 * max(float(p.max()), 1e-30))
    trend = ndimage.median_filter(lp, size=max(5, int(0.1 * n_bins) | 1), mode="nearest")
    rel = ndimage.gaussian_filter1d(lp - trend, max(0.5, 0.0075 * n_bins))
    inside = (k > 1.0 / _SPACING_VOXELS[1]) & (k < 1.0 / _SPACING_VOXELS[0])
    top = inside & (rel >= np.roll(rel, 1)) & (rel >= np.roll(rel, -1))
    top[[0, -1]] = False
    if not top.any() and inside.any():                   # a monotone window: its highest point
        top[np.flatnonzero(inside)[np.argmax(rel[inside])]] = True
    idx = np.flatnonzero(top)
    idx = idx[np.argsort(-rel[idx], kind="stable")]
    return 1.0 / k[idx], rel[idx]


def estimate_voxel_size_A(data, element: Element | str) -> SpectralScale:
    """Estimate the voxel size (Å) of a particle map from its lattice fringes.

    The radially averaged power spectrum, divided by its running median, peaks at the
    spacing of the close-packed planes (fcc (111), bcc (110), hcp (101)/(002)), which is
    √(2/3) × the bulk bond length; the peak standing out most is taken. Spacings of 1.8-14
    voxels are searched (0.15-1.2 Å voxels for Pt). On 40 random simulated particles (12
    elements, 0.2-0.75 Å voxels, noise 0-0.25 × peak) this pick is within 3% of the truth on 25;
    on maps with little noise a higher ring ((220), (311)) can stand out more (+60-70%), and on
    coarse maps, where the (8 · voxel)² blur of our simulator damps the fringes, the particle's
    shape ripples (-50 to -75%). :func:`calibrate_voxel_size` therefore tries every peak that
    stands out, and checks each by detection.

    Parameters
    ----------
    data : (Z, Y, X) map on either backend; voxels are taken to be cubic
    element : the particle's element

    Returns
    -------
    SpectralScale
        ``ok`` is False when no fringe peak stands ``0.25`` (natural log) above the trend.
    """
    el = get_element(element) if isinstance(element, str) else element
    if min(data.shape) < 16:
        return SpectralScale(float("nan"), float("nan"), 0.0, False)
    spacing, rel = _fringe_peaks(data)
    if len(spacing) == 0:
        return SpectralScale(float("nan"), float("nan"), 0.0, False)
    ok = bool(rel[0] >= _MIN_CONTRAST)
    vs = _PLANE_OVER_BOND * el.nn_distance_A / float(spacing[0])
    return SpectralScale(float(vs) if ok else float("nan"), float(spacing[0]), float(rel[0]), ok)


def local_maxima_voxel_size_A(data, element: Element | str, sigma_voxels: float = 1.0) -> float:
    """A rough voxel size (Å) from the map's bright local maxima taken as atoms: the bulk bond
    over their first-shell spacing in voxels (:func:`first_shell_bond_A`). Maxima of the map
    smoothed by ``sigma_voxels``, above its Otsu threshold. Within ~15% on maps with little noise
    per voxel (coarse sampling), but noise maxima inside finely sampled atoms make it far too
    large there; NaN with fewer than 8 maxima. Host computation."""
    from scipy import ndimage
    from .components import otsu_threshold
    el = get_element(element) if isinstance(element, str) else element
    sm = ndimage.gaussian_filter(np.asarray(_be.to_host(data), dtype=np.float32), sigma_voxels)
    t = float(otsu_threshold(sm))
    peaks = np.argwhere((sm == ndimage.maximum_filter(sm, size=3)) & (sm > t)).astype(np.float64)
    if len(peaks) < 8:
        return float("nan")
    return float(el.nn_distance_A / first_shell_bond_A(peaks, el.lattice))


def voxel_size_candidates(data, element: Element | str, max_spectral: int = 3) -> list[dict]:
    """Voxel sizes (Å) worth trying on a map whose voxel size is unknown: the fringe peaks of
    its power spectrum that stand out (most contrast first, at most ``max_spectral``, each more
    than 10% from the ones before) and the local-maxima estimate. Each is ``{"voxel_size_A",
    "source", "contrast"}``."""
    el = get_element(element) if isinstance(element, str) else element
    out = []
    if min(data.shape) >= 16:
        spacing, rel = _fringe_peaks(data)
        for d, c in zip(spacing, rel):
            if c < _MIN_CONTRAST or len(out) >= max_spectral:
                break
            out.append({"voxel_size_A": float(_PLANE_OVER_BOND * el.nn_distance_A / d), "source": "spectrum",
                        "contrast": float(c)})
    v = local_maxima_voxel_size_A(data, el)
    if np.isfinite(v):
        out.append({"voxel_size_A": v, "source": "local maxima", "contrast": None})
    kept = []
    for c in out:
        if all(abs(c["voxel_size_A"] / o["voxel_size_A"] - 1.0) > 0.10 for o in kept):
            kept.append(c)
    return kept


@dataclass
class Calibration:
    """How :func:`calibrate_voxel_size` chose the voxel size."""
    voxel_size_A: float
    bond_over_bulk: float
    correlation: float
    tried: list

    def as_dict(self) -> dict:
        return {"voxel_size_A": self.voxel_size_A, "bond_over_bulk": self.bond_over_bulk,
                "correlation": self.correlation, "tried": self.tried}


def calibrate_voxel_size(map_at, element: Element | str, *, candidates=None, max_iterations: int = 5,
                         tolerance: float = 0.005, detect=None, **detect_opts):
    """Detect atoms in a map whose voxel size is unknown, and find that voxel size (Å).

    Each candidate (default :func:`voxel_size_candidates` of ``map_at(1.0).data``) is refined
    by detection: detect, scale the voxel size by bulk bond / first-shell bond, again until the
    bonds are within ``tolerance`` of bulk (at most ``max_iterations`` detections). Until the
    bonds are within 5% of bulk the detections keep atoms with CN < 3 (the rule's bulk cutoffs
    would remove every atom of a map read 20% too coarse); the last ones use ``detect_opts``.
    The first candidate that converges is kept. Starting points 40-60% off (a higher-order
    ring or a shape ripple taken for the fringes) converged to the same voxel size as the right
    one where both converged, and atoms taken from noise never converge (their bonds' ratio to
    bulk stays ~1.4-2.2 at any scale). On 48 simulated particles of 14 elements and 18 simulated
    tomograms, single-particle maps and rendered measured particles
    (``benchmarks/scale_check.py``), 65 of 66 were found, within 1% of the truth on 59 (against the
    strain the particles were given), in 2.4 detections on
    average.

    Parameters
    ----------
    map_at : callable, voxel size (Å) → :class:`~ptnp_gpu.mapio.DensityMap` of the map at it
    element : the particle's element (its bulk bond sets the scale)
    candidates : voxel sizes to start from (Å), optional
    detect : the detection function (default :func:`ptnp_gpu.detect.detect_atoms`, its warnings not
        logged: the steps at wrong scales are expected to warn)
    **detect_opts : passed to it

    Returns
    -------
    (Detection, Calibration)

    Raises
    ------
    InputError
        No candidate converges (no lattice of ``element`` found at any scale).
    """
    from .errors import InputError
    if detect is None:
        from .detect import _detect          # unlogged: the steps' scale warnings are expected

        def detect(dmap, el, backend=None, progress=None, **opts):
            # no filter ladder at the steps: at a wrong scale every model lacks a lattice
            return _detect(dmap, el, backend, progress, {**opts, "ladder": False})
    el = get_element(element) if isinstance(element, str) else element
    if candidates is None:
        cands = voxel_size_candidates(map_at(1.0).data, el)
    else:
        cands = [{"voxel_size_A": float(v), "source": "given", "contrast": None} for v in candidates]
    best, tried = None, []
    for c in cands:
        rec, best = _refine_scale(c, map_at, el, detect, detect_opts, max_iterations, tolerance)
        tried.append(rec)
        if best is not None:
            break
    if best is None:
        starts = ", ".join(f"{c['voxel_size_A']:.3g} Å" for c in cands) or "none"
        raise InputError(f"the voxel size cannot be found from the map: no candidate scale ({starts}) gives a "
                         f"{el.symbol} lattice; pass --voxel-size")
    det, v, r = best
    return det, Calibration(float(v), r, float(det.correlation), tried)


def _refine_scale(start: dict, map_at, el, detect, detect_opts, max_iterations: int, tolerance: float):
    """One start of :func:`calibrate_voxel_size`: (its record with every step, ``(det, voxel size,
    bond ratio)`` when it converged else None)."""
    from .errors import InputError
    # far from the scale, the CN < 3 rule (bulk bond cutoffs) removes every atom of a map read
    # too coarse: the steps keep them until the bonds are within _NEAR of bulk
    loose = {**detect_opts, "reject_low_cn": False}
    v, rec = start["voxel_size_A"], {**start, "steps": []}
    near, settled = False, []                # settled: (det, v, r) of the detections with the CN rule
    for _ in range(max_iterations):
        if not 0.02 < v < 5.0:
            rec["outcome"] = "voxel size out of range"
            return rec, None
        try:
            det = detect(map_at(v), el, **(detect_opts if near else loose))
        except InputError as exc:
            rec["outcome"] = f"refused: {str(exc).split('(')[0].strip()}"
            return rec, None
        r = float(det.scale.ratio)
        rec["steps"].append({"voxel_size_A": v, "bond_over_bulk": r, "correlation": float(det.correlation),
                             "n_atoms": int(len(det.xyz_A)), "full_shell_fraction": det.scale.full_shell_fraction,
                             "cn_rule": near})
        if not np.isfinite(r):              # (atoms taken from noise keep their bonds' ratio to
            rec["outcome"] = "no bonds"     # bulk at any scale, ~1.4-2.2: they never converge)
            return rec, None
        if near:
            settled.append((det, v, r))
            if abs(r - 1.0) <= tolerance:
                rec["outcome"] = "converged"
                return rec, settled[-1]
            if len(settled) >= 2 and (settled[-2][2] - 1.0) * (r - 1.0) < 0:
                # stepping across bulk: the bonds' own noise; the closer of the two
                rec["outcome"] = "converged (within the bonds' noise)"
                return rec, min(settled[-2:], key=lambda t: abs(t[2] - 1.0))
        near = abs(r - 1.0) <= _NEAR
        v = v / r
    close = [t for t in settled if abs(t[2] - 1.0) <= 4 * tolerance]
    if close:
        rec["outcome"] = "converged (within the bonds' noise)"
        return rec, min(close, key=lambda t: abs(t[2] - 1.0))
    rec["outcome"] = "not converged"
    return rec, None
