"""Unsupervised atom detection: denoise, threshold sweep, components, split, validate.

Follows the reference method (Wietfeldt et al. 2024, Methods) with the fixes
listed in the method notes. The stages:

1. Denoise: correlation with one simulated atom (:mod:`ptnp_gpu.denoise`),
   prewhitened by the solvent's noise spectrum when it is coloured (divided
   by its amplitude only when it rises with frequency: a sharpened map).
2. Threshold: Otsu start ``T0`` (at least ``sweep_floor_sigma`` noise SDs above
   the solvent: in a box that is mostly solvent Otsu falls into the noise);
   ``n_thresholds`` uniform thresholds from ``T0`` to the maximum, every one evaluated; then a finer sweep (step/6 over
   ±1 step) around the best. Each evaluation binarises ``C > T``, labels
   26-connected components, drops those under ``min_voxels``, takes raw-map
   centres of mass and scores the Pearson correlation between the map
   simulated from those centres and ``C`` over the box. The score is computed
   exactly without rendering the map: ``Σ S·C = Σ_a (K⋆C)(r_a)``,
   ``Σ S = N·ΣK`` and ``Σ S² = Σ_ab (K⋆K)(r_a − r_b)`` (pairs within reach).
   All thresholds of a pass are evaluated together: on the host one union-find
   pass over the voxels in decreasing C gives every threshold's components
   (:mod:`ptnp_gpu.threshold_components`); on a GPU the thresholded volumes are
   stacked along z and labelled at once. The box is the region where ``C`` is
   dense above ``T0`` or ``crop_sigma`` noise SDs, whichever is higher (the
   particle), not the whole map.
3. Split merged atoms: seeds are local maxima of ``C`` inside a component,
   thinned so that no two seeds of one component are closer than 2·r_th
   (higher seed wins); components with several seeds are divided among them
   (each voxel to its nearest seed). Components whose peak in ``C`` is not
   significant (median + ``rescue_sigma`` noise SDs of ``C`` in the solvent) go.
   Rescue: significant local maxima of ``C`` outside every component, away
   from the atoms and bonded to at least 2 of them become atoms; a second
   round seats further maxima on at least 3 atoms (weak surface atoms, partly
   occupied sites).
4. Centres: grey-value centres of mass of the raw map (minus the solvent
   level) over the final components; sub-voxel mean-shift refinement (custom
   kernel, :func:`ptnp_gpu.gpu_kernels.mean_shift_centres`).
5. Reject outliers: validation correlation below ``min_correlation`` (and, on
   request, below mean − k·SD as in the paper, or a robust median/MAD form),
   then CN < 3, repeated until no atom is left with fewer than 3 kept
   neighbours. The paper's statistical rule removes ~2% of true atoms by
   construction and whole populations in mixed-element particles (Pd in Pd@Pt:
   recall 0.93), so the default rejects only densities that do not look like
   an atom. Then the lattice rescue (``lattice_rescue``): vacant lattice sites
   beside the atoms kept (:mod:`ptnp_gpu.lattice_sites`) where ``C`` reaches
   ``lattice_sigma`` noise SDs become atoms (weak, mobile surface atoms, which a
   search of the whole map cannot tell from noise maxima). Each atom's
   significance and position error follow (:mod:`ptnp_gpu.precision`).
6. Blurred or over-sharpened maps (``deblur="auto"``): the map's excess blur
   against the model is measured; beyond ±40/20 Å² the map is detected again
   sharpened or blurred back and the model that explains it better is kept
   (:mod:`ptnp_gpu.deblur`).
7. The filter ladder (``ladder``): a model without a lattice (under
   ``ladder_full_shell`` of its atoms with a full first shell) or a refused map
   is detected again on the map filtered by each B of ``ladder_A2``, and the
   rung whose bonds are best (:func:`ptnp_gpu.deblur.lattice_score`) replaces it
   by a margin.
8. A model still without a lattice whose hull holds no more density than the
   solvent is flagged as possibly noise (:mod:`ptnp_gpu.evidence`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np

from . import backend as _be
from .components import label26_above, label_moments, map_mean_sd, otsu_threshold
from .denoise import AtomKernel, denoise_map
from .elements import Element, get_element
from .errors import InputError
from .gpu_kernels import linear_at, mean_shift_centres, window_pearson
from .host_parallel import thread_pool
from .mapio import DensityMap
from .particle_box import atoms_at_faces, box_interior, particle_box, solvent_block
from .neighbors import pairs_within, segment_sum
from .peaks import (MapTransfer, _residual_map, _split, _thin_peaks, claim_balls, rescue_rounds,
                    transfer_corrected_map)
from .precision import filter_moments, peak_hessians, position_sd_A
from .scale import check_model_scale
from .simulate import render_atoms
from .solvent import (_MIN_SOLVENT, _STEP, _clipped, _near_particle_level, _noise_free, _noise_levels, _noise_rises,
                      _mask_gain, _noise_spectrum, _solvent_mask, subsampled)
from .sweep import _auto_sweep_batch, _crop_box_above, _dense_region, _Scorer, sweep_scores

log = logging.getLogger(__name__)

__all__ = ["DetectOptions", "Detection", "detect_atoms", "default_kernel_blur_A2"]


# Blur of the simulated atom used for denoising and the sweep: the reference's (8·voxel)² at
# its 0.358 Å sampling. Not tied to the voxel size: (8·voxel)² grows to 23 Å² at 0.6 Å/voxel,
# which merges neighbours (measured recall 0.85 vs 1.00 with 8.2 Å² on such maps).
DEFAULT_KERNEL_BLUR_A2 = 8.2
_COARSE_FROM_A = 0.5          # grids coarser than this get a narrower kernel


def default_kernel_blur_A2(voxel_size_A) -> float:
    """Blur (Å²) of the simulated atom used to denoise: 8.2 Å² up to 0.5 Å/voxel, then
    narrower as (0.5 / voxel)², down to half at 0.71 Å and beyond. Coarse grids come with
    wide, overlapping atoms; a narrower kernel keeps neighbours apart (measured on random
    particles at 0.6–0.75 Å not used to choose it: mean recall 0.761 → 0.771, precision
    0.963 → 0.967; on those it was chosen with, 0.725 → 0.758)."""
    v = float(np.max(voxel_size_A))
    return DEFAULT_KERNEL_BLUR_A2 * float(np.clip((_COARSE_FROM_A / v) ** 2, 0.5, 1.0))


def _as_bool(key: str, value) -> bool:
    """A switch given as a bool, 0/1 or a word (true/false, yes/no, on/off): ``bool("False")``
    is True, so words are read, and anything else is an error."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    word = value.strip().lower() if isinstance(value, str) else None
    if word in ("true", "yes", "on", "1"):
        return True
    if word in ("false", "no", "off", "0"):
        return False
    raise InputError(f"{key} must be true or false, got {value!r}")


@dataclass
class DetectOptions:
    """Knobs of :func:`detect_atoms` (defaults follow the paper)."""
    n_thresholds: int = 16            # uniform coarse thresholds (≥ 15)
    refine_steps: int = 6             # fine step = coarse step / refine_steps, over ±1 step
    min_voxels: int = 3               # at 0.358 Å/voxel; the same volume on coarser grids (_min_voxels)
    split: bool = True
    reject_correlation: bool = True
    correlation_rule: str = "floor"   # "floor": only min_correlation; "robust": median − k·1.4826·MAD;
                                      # "paper": mean − k·SD (removes weak true atoms, see README)
    correlation_sd: float = 3.0       # k (the paper uses 2 with mean and SD)
    min_correlation: float = 0.15     # also reject atoms whose density does not look like an atom (at 0.358 Å
                                      # sampling; finer grids scale it by (voxel volume / 0.358³)^½)
    reject_close: bool = False        # of two atoms closer than close_fraction × the bond, drop the weaker: a
                                      # ligand or solvent atom on the surface, or a ghost (a PVP-like shell at
                                      # 0.18 / 0.37 × the Pt peak: precision 0.962 / 0.947 -> 0.994 / 0.994).
                                      # Off by default: published tomography models hold metal pairs 1.6-2.0 Å
                                      # apart, and on a map of the Pd@Pt one the rule cost recall 0.999 -> 0.988
    close_fraction: float = 0.85      # never above the model's own chance closeness (_nn_floor_A)
    reject_low_cn: bool = True
    min_cn: int = 3
    cn_passes: int = 10               # CN < min_cn rejection passes (each after the previous one's removals)
    reject_detached: bool = True      # drop clusters of atoms apart from the particle (_detached_atoms): fewer
    detached_share: float = 0.1       # than this × the particle's atoms, farther than detached_gap × the bond
    detached_gap: float = 2.2         # (one missed atom leaves a gap of at most 2 bonds)
    refine_centres: bool = True       # sub-voxel refinement (measured, see tests)
    rescue: bool = True               # add weak atoms the global threshold missed
    rescue_sigma: float = 3.5         # significance of an atom's peak in C (noise SDs)
    sweep_floor_sigma: float = 3.0    # the sweep and its box start at least this many noise SDs above the
                                      # solvent median: in a box that is mostly solvent Otsu falls into the
                                      # noise (300 atoms in 256³: Otsu 1 SD, the sweep chose 2 SDs, 31,875
                                      # components, 5 false atoms 26-57 Å from the particle)
    otsu_floor: float = 0.3           # the significance threshold is at least this × the Otsu threshold:
                                      # at very low noise the filter's ripples next to atoms pass a pure noise
                                      # test (Pt, noise 0.02: precision 0.94 with 0, 1.00 with 0.3); 1.0 (before
                                      # 2026-11-26) dropped weak surface atoms (recall 0.90 / 0.89 / 0.80)
    lattice_rescue: bool = True       # seat atoms at vacant lattice sites beside the atoms found (close-packed
    lattice_sigma: float = 2.5        # metals, ptnp_gpu.lattice_sites) where the denoised map stands this many
    lattice_rounds: int = 3           # noise SDs high within 0.6 Å; rounds: sites completed from the atoms added
    residual_rescue: bool = True      # repeat the rescue on the map minus the atoms found so far
    residual_sigma: float = 4.0       # its significance (noise SDs of the residual's denoised map)
    rescue_rounds: int = 12           # rescue passes (until one adds nothing): each may bond to atoms the
                                      # previous one added. 2 (before 2026-11-27) reached two shells in from
                                      # the bright atoms: a Pd@Pt particle (Pd at 0.41 x Pt) lost its Pd core
                                      # (Pd recall 0.93 -> 1.00)
    resolution_A: float = 1.0
    highpass_A: float = 8.0           # remove background coarser than this (0: paper's DC-only)
    b_extra_A2: float | None = None   # blur of the simulated atom (Å²); default default_kernel_blur_A2(voxel)
    crop_margin_A: float = 4.0
    crop_sigma: float = 3.5           # the sweep's box is where C is dense above this many noise SDs (or the
                                      # sweep's start, if higher): noise blobs rarely clump there. Never above
                                      # rescue_sigma: at 4.5 a masked, sharpened map whose noise level was high
                                      # lost the atoms outside the box (recall 1.00 -> 0.82)
    solvent_margin_A: float = 6.0     # solvent for the noise level: this far from the particle
    particle_box: bool = True         # a map mostly of solvent is denoised and detected in its particle's box
    particle_box_margin_A: float = 16.0   # (ptnp_gpu.particle_box): the particle grown by this, when that
                                      # holds at most half of the map; the whole map again where atoms come
                                      # within half of it of the box's faces, or the box is refused
    mask_gain: bool = True            # masked maps: noise bands measured in a soft mask's own units (_mask_gain)
    whiten: str = "auto"              # prewhiten by the solvent's noise spectrum: auto | always | never
    whiten_ratio: float = 2.0         # "auto": whiten when the noise power varies more than this
    min_sweep_correlation: float = 0.2  # below this no model explains the map: "no particle"
    invert: bool = False              # the atoms are dark (negative density): negate the map first
    sweep_batch: int = 0              # thresholds labelled and scored together (0: auto, see _auto_sweep_batch)
    deblur: str = "auto"              # "auto": a map blurred deblur_min_A2 beyond the atom model is detected
                                      # again sharpened, and the model explaining the map better is kept
                                      # (ptnp_gpu.deblur); "never"
    deblur_min_A2: float = 40.0       # excess blur that triggers it (maps 20-35 Å² blurrer lost nothing)
    deblur_keep_A2: float = 20.0      # blur left on when sharpening (noise stays in check)
    deblur_max_A2: float = 60.0       # sharpening at most this (a detection that lost the core reads high)
    deblur_over_A2: float = 20.0      # a map sharpened this much beyond the atom model is also detected again,
                                      # blurred back by half of it (at most 30 Å²)
    ladder: bool = True               # with deblur "auto": a model without a lattice (fewer than
                                      # ladder_full_shell of its atoms with a full first shell) or a refused
                                      # map is detected again on the map filtered by each of ladder_A2, and
                                      # the model with the best bonds kept (ptnp_gpu.deblur.lattice_score)
    ladder_full_shell: float = 0.1    # crystalline particles of 150-1,500 atoms detected well: 0.13-0.63
    ladder_A2: tuple = (-40.0, -20.0, 20.0, 40.0, 60.0)   # B of each rung (> 0 sharpens; < 0 blurs)
    ladder_sharpen_highpass_A: float | None = 0.0    # highpass_A of the sharpening rungs of unmasked maps
                                      # sampled at ladder_sharpen_min_voxel_A or coarser (before stop 20:
                                      # highpass_A, i.e. 8; None through dataclasses.replace does the same)
    ladder_sharpen_min_voxel_A: float = 0.5   # finer grids' rungs keep highpass_A (a solvent background
                                      # structured at 6 Å grew false atoms there without it)
    ladder_whiten: str = "never"      # whitening of the rungs' detections. "auto" (before stop 18) measured
                                      # the noise of each filtered copy and divided the rung's filter back
                                      # out of it (a sharpened copy's noise rises: whitened by its amplitude)

    @classmethod
    def from_kwargs(cls, **kw):
        opts = cls()
        for k, v in kw.items():
            if v is None:
                continue
            if not hasattr(opts, k):
                raise InputError(f"unknown detection option {k!r}")
            cur = getattr(opts, k)
            setattr(opts, k, _as_bool(k, v) if isinstance(cur, bool) else float(v) if cur is None else type(cur)(v))
        for key in ("whiten", "ladder_whiten"):
            if getattr(opts, key) not in ("auto", "always", "never"):
                raise InputError(f"{key} must be 'auto', 'always' or 'never', got {getattr(opts, key)!r}")
        if opts.correlation_rule not in ("floor", "robust", "paper"):
            raise InputError(f"correlation_rule must be 'floor', 'robust' or 'paper', got {opts.correlation_rule!r}")
        if opts.n_thresholds < 2:
            raise InputError("n_thresholds must be at least 2")
        if opts.deblur not in ("auto", "never"):
            raise InputError(f"deblur must be 'auto' or 'never', got {opts.deblur!r}")
        return opts


@dataclass
class Detection:
    """Result of :func:`detect_atoms`. Arrays marked (host) are NumPy."""
    xyz_A: np.ndarray                  # (N, 3) host, Å in the map frame
    labels: object                     # [z, y, x] int32 backend array, id = atom index + 1
    n_voxels: np.ndarray               # (N,) host
    validation_corr: np.ndarray        # (N,) host
    peak_intensity: np.ndarray         # (N,) host, (peak raw − map mean) / map SD
    threshold: float
    curve: np.ndarray                  # (K, 2) host: threshold, correlation (all evaluated)
    correlation: float                 # best sweep correlation
    denoised: object
    simulated: object
    map: DensityMap
    element: Element
    params: dict = field(default_factory=dict)
    times: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    raw: object = None                 # the map as float32 on the backend (device-resident on CuPy)
    scale: object = None               # ScaleCheck: the model's bonds against the bulk element's
    warnings: list = field(default_factory=list)   # what the caller should know (a wrong voxel size)
    significance: np.ndarray | None = None   # (N,) host: the atom's peak in ``denoised`` above the solvent, noise SDs
    position_sd_A: np.ndarray | None = None  # (N,) host: estimated RMS error of the position per axis, Å
                                             # (ptnp_gpu.precision; NaN where ``denoised`` has no peak)

    @property
    def backend_map(self) -> DensityMap:
        """The input map with its data on the detection's backend: statistics on a GPU
        reuse it instead of copying the host map to the device again."""
        if self.raw is None:
            return self.map
        return DensityMap(self.raw, self.map.voxel_size_A, self.map.origin_A)


_INVERTED_Q = 1e-4      # inverted contrast: the 0.01% and 99.99% quantiles of C (every 8th voxel)
_INVERTED_RATIO = 1.4   # |low quantile| / high quantile above this: inverted. Measured on 40 random
                        # particles (benchmarks/robustness_sweep.py --seed 2026): 0.26-0.82 as
                        # simulated, up to 1.2 on maps with hardly any signal (0.75 Å voxels, noise
                        # 0.27), 1.45-3.8 negated (1.2-1.3 for the near-signal-free ones)
_INVERTED_SURE = 2.5    # ... for a map as given (not a filtered copy of it): above this, inverted; from 1 to
                        # this, the map is detected both ways and the better model decides (_detect). On
                        # 30 more small particles at 0.45-0.75 Å, as given reached 1.44 (a 177-atom Ni
                        # particle, noise 0.1, refused as inverted), negated 0.69-2.57
_OFFSET_SDS = 100.0      # a map whose mean lies this many SDs from zero is shifted to mean 0 first
_GREY_SD_RANGE = (2.0 ** -40, 2.0 ** 30)   # grey-value SDs outside this (~1e-12, ~1e9) are scaled by a power
                                           # of two first: float32 squares and spectra of a map with SD 1e15
                                           # overflowed ("no positive correlation"), 1e18 and 1e-30 crashed
_LADDER_MIN_ATOMS = 20   # a rung's model replaces another with at least this many well-placed atoms (a rung
                         # that kept 4 atoms of a lost map, 2 of them well placed, outscored its 145-atom model)
_LADDER_SCALE_KEEP = 0.5  # a model whose bonds say the voxel size is wrong is replaced only by a rung with at least
                         # this × its atoms: bulk bonds cannot judge it (at 0.7 × the true voxel size a rung of 120
                         # atoms spaced like bulk bonds replaced the 400-atom particle, and the scale warning
                         # with it); skipping the ladder on such models instead lost junk first detections'
                         # recoveries (random particles 0.9643 -> 0.9549)
_LADDER_TIE = 0.05       # rungs scoring within this × the atoms of the best: the fewest clashing atoms wins
                         # (0.02 before stop 18: an unwhitened +60 Å² rung with 41 false atoms in surface
                         # hollows outscored the right -40 Å² rung, none false, by 2.8%)
_LADDER_MARGIN = 0.1     # a rung replaces a model when its score beats the model's by this × the model's atoms: at
                         # 0.75 Å voxels a 228-atom model (recall 0.40; 90 of its atoms clash, true ones placed
                         # loosely) lost to an 89-atom rung scoring 50 against 47 (recall 0.16)
_NOISE_CONTRAST = 1.0    # hull contrast below which a model without a lattice is called possible noise (masked
                         # noise maps: -0.17 to 0.57; particles on blurred, sharpened, masked maps: 2.8-7.6)
_REFERENCE_VOXEL_A = 0.358   # the paper's sampling, at which min_voxels is specified
_NO_LATTICE_ATOMS = 50   # a model of at least this many atoms none of which has a full first shell gets a warning:
                         # a crystalline particle of 55 atoms has 13 inside; at a voxel size given 0.5-0.7 x the
                         # truth the +60 Å² rung gave 74-254 "atoms" spaced like bulk bonds, none with a full
                         # shell, and no warning (benchmarks/scale_check.py). Not "few": a 1,129-atom Rh particle
                         # at 0.635 Å, noise 0.19, recall 0.95, bonds 1.000 x bulk, has 1.8% (position noise)


_LATTICE_MIN_ATOMS = 20    # the lattice rescue needs a model with a lattice to complete
_RIM_CLEAR_A = 1.0         # the rim's noise (lattice rescue): 1-3 Å from the atoms' voxels
_LATTICE_MAX_RES_A = 1.6   # maps band-limited at this or coarser get no lattice rescue (a 2 Å low-pass under a
                           # soft mask: 85 false atoms at the sites one shell out, precision 1.000 -> 0.862)
_LATTICE_MIN_CORR = 0.15   # the lattice rescue's own atom-likeness floor (at 0.358 Å; scaled as min_correlation)
_LATTICE_SEARCH_A = 0.6    # the denoised map's maximum within this of a vacant site is the atom's position
_LATTICE_CLEAR = 0.8       # ... which must lie farther than this × the bond from every atom
_LATTICE_U_A2 = 0.6        # its atom-likeness (the validation correlation) is tested against an atom this mobile
_LATTICE_CLAIM_A = 0.6     # labels: the voxels within this of a lattice-rescued atom (not already an atom's)


def _mean_shift_windows_vox(el, vs):
    """The centres' mean-shift window (radius) and Gaussian σ, voxels: from the bond length (Pt:
    1.44 Å radius, σ 0.55 Å), so that neighbours stay out."""
    return 0.52 * el.nn_distance_A / vs.min(), 0.2 * el.nn_distance_A / vs.min()


def _lattice_round_sites(have, bond_A):
    """One lattice round's start on the host positions ``have`` (Å): their atom grid (it also
    answers the clearance questions) and their vacant sites."""
    from .lattice_sites import atom_grid, vacant_sites
    grid = atom_grid(have, bond_A)
    return grid, vacant_sites(have, bond_A, grid=grid)[0]


def _lattice_sites_rescue(C, raw, xyz, sim, el, b_extra, vs, origin_A, level, noise, o, floor_corr,
                          first_round=None):
    """Atoms at vacant lattice sites (:func:`ptnp_gpu.lattice_sites.vacant_sites`) of the model
    ``xyz`` (backend, Å): where the denoised map ``C`` reaches ``o.lattice_sigma`` noise SDs above
    ``level`` within ``_LATTICE_SEARCH_A`` of a site, that maximum (farther than ``_LATTICE_CLEAR``
    bonds from every atom) is an atom if the raw map there correlates with a mobile atom
    (``_LATTICE_U_A2``) over the validation window at least as ``floor_corr``. Candidates closer
    than that clearance to each other: the highest wins. Up to ``o.lattice_rounds`` rounds, each
    completing sites from the atoms added before. Returns the new positions (backend, (M, 3) Å).

    ``first_round``: a future of the first round's (atom grid, sites) of these very atoms
    (:func:`_prefetch_vacant_sites`), else they are computed here.

    Measured (README, Method step 6b): recall of our simulator's very mobile surfaces (U 0.6 /
    0.8 Å²) 0.834 / 0.798 → 0.885 / 0.868 at unchanged precision (0.993-0.994)."""
    be = _be.namespace(C)
    xp = be.xp
    vsx = xp.asarray(vs)
    org = xp.asarray(origin_A, dtype=xp.float64)
    bond = el.nn_distance_A
    g = np.arange(-int(np.ceil(_LATTICE_SEARCH_A / vs.min())), int(np.ceil(_LATTICE_SEARCH_A / vs.min())) + 1)
    offs = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)[:, ::-1] * vs   # x, y, z Å
    offs = xp.asarray(offs[np.linalg.norm(offs, axis=1) <= _LATTICE_SEARCH_A])
    have = _be.to_host(xyz).astype(np.float64)
    added = []
    for r in range(max(1, o.lattice_rounds)):
        grid, sites = (first_round.result() if r == 0 and first_round is not None
                       else _lattice_round_sites(have, bond))
        if len(sites) == 0:
            break
        sites = xp.asarray(sites)                                          # one upload per round
        pts = sites[:, None, :] + offs[None]
        v = linear_at(C, (pts.reshape(-1, 3) - org) / vsx).reshape(len(sites), -1)
        k = xp.argmax(v, axis=1)
        z = (v[xp.arange(len(sites)), k] - level) / noise
        best = sites + offs[k]
        bz = _be.to_host(xp.concatenate([best, z[:, None].astype(best.dtype)], axis=1))   # one small read per round
        best_h, z_h = bz[:, :3], bz[:, 3]
        clear = ~grid.near(best_h, _LATTICE_CLEAR * bond)                # no atom within
        cand = np.flatnonzero((z_h >= o.lattice_sigma) & clear)
        if len(cand) == 0:
            break
        # candidates within the clearance of each other: the highest stays (non-maximum suppression)
        pick = cand[_thin_peaks(best_h[cand], z_h[cand].astype(np.float64), _LATTICE_CLEAR * bond)]
        new = best[xp.asarray(pick)]
        # atom-like: the raw map against the model (the atoms found, and these as mobile atoms; not
        # the earlier rounds' additions) over the validation window
        mobile = render_atoms(new, raw.shape, vs, origin_A, el, b_extra_A2=b_extra,
                              u_iso_A2=xp.full(len(pick), _LATTICE_U_A2), backend=be)
        corr = window_pearson(raw, sim + mobile, (new - org) / vsx, 1.5 * el.radius_A / vs.min())
        ok = _be.to_host(xp.nan_to_num(corr, nan=-1.0) >= floor_corr)
        if not ok.any():
            break
        added.append(_be.to_host(new)[ok])
        have = np.concatenate([have, added[-1]])
    if not added:
        return xp.zeros((0, 3), dtype=xyz.dtype)
    return xp.asarray(np.concatenate(added)).astype(xyz.dtype)


def _detached_atoms(xyz_A, pair_i, pair_j, keep, gap_A: float, share: float) -> np.ndarray:
    """The ``keep`` atoms (host: (N, 3) Å, bonds ``pair_i``–``pair_j``, bool (N,)) of the bond
    graph's components among the kept atoms that hold fewer than ``share`` × the largest
    component's atoms and lie farther than ``gap_A`` from it at their closest: a bool mask (N,).
    Components within ``gap_A`` stay: a particle whose detection has holes falls apart into
    pieces one or two missed atoms apart."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree
    xyz = np.asarray(xyz_A, dtype=np.float64).reshape(-1, 3)
    keep = np.asarray(keep, dtype=bool)
    n = len(xyz)
    out = np.zeros(n, dtype=bool)
    both = keep[pair_i] & keep[pair_j]
    n_comp, comp = connected_components(coo_matrix((np.ones(int(both.sum())), (pair_i[both], pair_j[both])),
                                                   shape=(n, n)), directed=False)
    sizes = np.bincount(comp[keep], minlength=n_comp)      # the rejected atoms count nowhere
    if np.count_nonzero(sizes) < 2:
        return out
    main = int(np.argmax(sizes))
    cand = keep & (sizes < share * sizes[main])[comp]
    if not cand.any():
        return out
    gap = cKDTree(xyz[keep & (comp == main)]).query(xyz[cand])[0]    # each candidate's distance to the body
    closest = np.full(n_comp, np.inf)
    np.minimum.at(closest, comp[cand], gap)
    out[cand] = closest[comp[cand]] > gap_A
    return out


def _drop_weak_rescued(lab, n, n_sweep, C_box, weights, t_keep):
    """Unlabel the components with ids above ``n_sweep`` (rescued) whose peak in ``C_box`` is
    below ``t_keep``; ids stay as they are (the caller compacts them). Returns (lab, dropped)."""
    xp = _be.namespace(lab).xp
    mom = label_moments(lab, n, weights, C_box)
    ids = xp.arange(n + 1)
    drop = (ids > n_sweep) & (mom["count"] > 0) & (mom["peak_value"] < t_keep)
    lab = xp.where(drop[lab], 0, lab).astype(xp.int32)
    return lab, int(drop.sum())                      # sync


_DUPLICATE_FRACTION = 0.45   # atoms closer than this × the bulk bond are one atom found twice


def _nn_floor_A(xyz_A, n_sd: float = 4.0) -> float:
    """Median minus ``n_sd`` robust SDs of the atoms' nearest-neighbour distances (Å): how close
    two atoms of this model come by chance (one host transfer of the positions)."""
    from scipy.spatial import cKDTree
    pos = np.asarray(_be.to_host(xyz_A), dtype=np.float64)
    if len(pos) < 3:
        return float("inf")
    nn = cKDTree(pos).query(pos, k=2)[0][:, 1]
    med = float(np.median(nn))
    return med - n_sd * 1.4826 * float(np.median(np.abs(nn - med)))


def _correlation_floor_scale(voxel_size_A) -> float:
    """``min_correlation`` holds at the paper's 0.358 Å sampling; on finer grids it falls as
    (voxel volume / 0.358³)^½: an atom's window holds that many times more voxels, and the same
    per-voxel noise lowers its correlation as much while the map is in fact better sampled (a
    321-atom Au particle at 0.25 Å, noise 0.17 of a core atom's peak, surface U 0.3 Å²: 163
    candidates under 0.15, 54 of them true surface atoms; recall 0.826 -> 0.994, precision 1.000).
    Coarser grids keep the floor."""
    vol = float(np.prod(np.broadcast_to(np.asarray(voxel_size_A, float), (3,))))
    return float(min(1.0, np.sqrt(vol / _REFERENCE_VOXEL_A ** 3)))


def _min_voxels(min_voxels: int, voxel_size_A) -> int:
    """Smallest component kept, in voxels: ``min_voxels`` at the paper's 0.358 Å sampling,
    the same volume on coarser grids (never more voxels on finer ones). At 0.75 Å an atom
    above the threshold is one or two voxels: 3 voxels dropped 20% of the core atoms
    of a gold particle (recall 0.80 → 1.00)."""
    scaled = min_voxels * _REFERENCE_VOXEL_A ** 3 / float(np.prod(voxel_size_A))
    return int(max(1, min(min_voxels, round(scaled))))


def detect_atoms(dmap: DensityMap, element="Pt", *, backend=None, progress=None, **opts) -> Detection:
    """Build an atomic model from a density map (see module docstring).

    A map blurred more than ``deblur_min_A2`` beyond the atom model (:mod:`ptnp_gpu.deblur`) is
    detected a second time, sharpened, and the model that explains the original map better is
    returned (``params["deblur_pass"]`` says what was measured and chosen); a model without a
    lattice, or a refused map, goes through the filter ladder (``params["ladder_pass"]``); a model
    that may be noise carries a warning (``params["hull_contrast"]``). The statistics run on the
    original map either way.

    Parameters
    ----------
    dmap : DensityMap
    element : str or Element
    backend : str or Backend, optional
        Where to compute; default the import-time choice.
    progress : callable(str), optional
        Called with a short message at the start of each stage.
    **opts
        Fields of :class:`DetectOptions`.

    Raises
    ------
    InputError
        Constant maps, or maps in which no particle is found.
    """
    o = DetectOptions.from_kwargs(**opts)
    det = _noise_warning(_detect(dmap, element, backend, progress, o), o)
    for w in det.warnings:                     # once, for the model returned
        log.warning(w)
    return det


def _detect(dmap: DensityMap, element, backend, progress, opts) -> Detection:
    """:func:`detect_atoms` without logging its warnings (they stay in ``Detection.warnings``).

    A map whose filtered copy's strongest features are negative, but not by ``_INVERTED_SURE``
    (the first detection's ``measured["polarity_doubt"]``), is detected negated as well: the map
    is refused as inverted when the negated map's model has a lattice (``ladder_full_shell``) and
    explains it better (a higher sweep correlation) or the map as given is refused; otherwise the
    model of the map as given is kept (``params["polarity"]`` records both)."""
    o = opts if isinstance(opts, DetectOptions) else DetectOptions.from_kwargs(**opts)
    el = get_element(element) if isinstance(element, str) else element
    be = _be.resolve(backend)
    first = {}                  # what the first detection measured (also when it then refused the map)
    try:
        det, refusal = _detect_given(dmap, el, be, progress, o, first), None
    except InputError as exc:
        if "polarity_doubt" not in first:
            raise
        det, refusal = None, exc
    if "polarity_doubt" not in first:
        return det
    ratio = first["polarity_doubt"]
    say = progress or (lambda msg: None)
    say(f"the map's strongest features are negative ({ratio:.2f}x the positive ones): detecting it negated "
        f"as well")
    try:
        neg = _detect_given(dmap, el, be, None, replace(o, invert=not o.invert), {})
    except InputError:
        neg = None
    info = {"negative_to_positive": ratio,
            "correlation": None if det is None else float(det.correlation),
            "negated_correlation": None if neg is None else float(neg.correlation),
            "negated_atoms": None if neg is None else int(len(neg.xyz_A))}
    # a map of noise reads alike both ways: the negation must give a lattice (a noise map's
    # 172-atom model, none with a full first shell, lost to its negation's and was called inverted)
    if (neg is not None and neg.scale.full_shell_fraction >= o.ladder_full_shell
            and (det is None or neg.correlation > det.correlation)):
        given = ("refused" if det is None
                 else f"its best model ({len(det.xyz_A)} atoms) explains it with correlation {det.correlation:.3f}")
        raise InputError(f"the map's contrast looks inverted: its strongest atom-like features are negative, and "
                         f"negated its best model ({len(neg.xyz_A)} atoms) explains it with correlation "
                         f"{neg.correlation:.3f} (as given: {given}); negate it (--invert, or invert=True)")
    if det is None:
        raise refusal
    det.params["polarity"] = info
    return det


def _detect_given(dmap: DensityMap, el, be, progress, o: DetectOptions, first: dict) -> Detection:
    """:func:`_detect_given_once`; a map refused as holding no particle after its noise was
    measured with a soft mask's gain (:func:`ptnp_gpu.solvent._mask_gain`) is detected again
    without it. With the gain, three tightly masked (2.3-3.8 Å), heavily blurred maps of
    ``robustness_maps.py --harder`` read noise enough to reject every atom; without it they gave
    models of F1 0.13-0.65 (``params["mask_gain_retry"]`` records the retry)."""
    try:
        return _detect_given_once(dmap, el, be, progress, o, first)
    except InputError as exc:
        if not (first.get("mask_gain") and str(exc).startswith("no particle found")):
            raise
        first.clear()
        det = _detect_given_once(dmap, el, be, progress, replace(o, mask_gain=False), first)
        det.params["mask_gain_retry"] = f"refused with the soft mask's gain ({exc}); detected without it"
        return det


def _detect_given_once(dmap: DensityMap, el, be, progress, o: DetectOptions, first: dict) -> Detection:
    """The detection of the map as given (with ``o.invert``): the first detection, the blurred-map
    pass and the filter ladder. ``first`` receives what the first detection measured."""
    if o.deblur == "never":
        return _lattice_pass(_detect_once(dmap, el, be, progress, o, measured=first), el, o, progress)
    try:
        det = _detect_once(dmap, el, be, progress, o, measured=first)
    except InputError as exc:
        if not (o.ladder and str(exc).startswith("no particle found")):
            raise
        det = _ladder_pass(None, dmap, el, be, progress, o, first=first)
        if det is None:
            raise
        return det
    sites = _prefetch_vacant_sites(det, el, o, be)
    transform = {}          # the prepared map's Fourier transform: the blurred-map pass and the ladder share it
    det = _deblur_pass(det, el, be, progress, o, transform)
    if o.ladder and det.scale.full_shell_fraction < o.ladder_full_shell:
        det = _ladder_pass(det, dmap, el, be, progress, o, first=first, transform=transform)
    transform.clear()
    return _lattice_pass(det, el, o, progress, prefetched=sites)


def _sharpener(raw, voxel_size_A, transform: dict):
    """The :class:`~ptnp_gpu.deblur.Sharpener` of ``raw``, kept in ``transform`` for the next pass
    on that very map (one forward transform for the blurred-map pass and every rung)."""
    from .deblur import Sharpener
    if transform.get("raw") is not raw:
        transform.update(raw=raw, sharpener=Sharpener(raw, voxel_size_A))
    return transform["sharpener"]


def _lattice_pass_applies(det: Detection, o: DetectOptions) -> bool:
    """Whether :func:`_lattice_pass` looks for atoms at vacant lattice sites of ``det`` (see there)."""
    p = det.params
    return bool(o.lattice_rescue and not o.reject_close and p.get("given_map") and not p.get("clipped_map")
                and p["band_limit_A"] < _LATTICE_MAX_RES_A and len(det.xyz_A) >= _LATTICE_MIN_ATOMS)


def _prefetch_vacant_sites(det: Detection, el, o: DetectOptions, be):
    """On a GPU: the first lattice round's atom grid and vacant sites of ``det``'s atoms (host:
    compiled, the GIL released), started in a worker thread while the blurred-map pass queues its
    device work. Returns (the positions array they are of, future) or None; :func:`_lattice_pass`
    uses them only when its model holds that very array (the passes in between kept the atoms)."""
    if not (be.is_gpu and _lattice_pass_applies(det, o)):
        return None
    have = np.asarray(det.xyz_A, dtype=np.float64)
    # two workers: two streams' detections
    return det.xyz_A, thread_pool("lattice_sites", 2).submit(_lattice_round_sites, have, el.nn_distance_A)


def _lattice_pass(det: Detection, el, o: DetectOptions, progress=None, prefetched=None) -> Detection:
    """``det`` with atoms added at vacant lattice sites (:func:`_lattice_sites_rescue`), unless
    ``reject_close`` is on (light atoms on the surface), when it is the detection of the map as given (a filtered copy's ringing peaks where lattice sites are),
    the map is band-limited finer than ``_LATTICE_MAX_RES_A`` (a 2 Å low-pass rings at the next
    shell's distance) and the model has ``_LATTICE_MIN_ATOMS``. The new atoms get labels (the
    voxels within ``_LATTICE_CLAIM_A``, ids after the others), validation correlation, peak
    intensity, significance and position error as the others; the scale check is redone.
    ``prefetched``: :func:`_prefetch_vacant_sites` of an earlier model (used when it is this one)."""
    p = det.params
    # reject_close says light (ligand, solvent) atoms sit on the surface: they sit where the next
    # shell's sites are (a shell at 0.37 × the Pt peak: 13 of them seated, precision 0.994 -> 0.971)
    # nor on a map clipped at its minimum (a tomogram reconstructed with positivity: its streaks and
    # missing-wedge lobes beside the particle seated false atoms, 5 of 7 such tomograms worse)
    if not _lattice_pass_applies(det, o):
        return det
    be = _be.namespace(det.raw)
    xp = be.xp
    vs = np.asarray(det.map.voxel_size_A, float)
    org = det.map.origin_A
    C, raw, sim = det.denoised, det.raw, det.simulated
    xyz = xp.asarray(det.xyz_A)
    noise = p["noise_sd"]
    first = prefetched[1] if prefetched is not None and prefetched[0] is det.xyz_A else None
    new_xyz = _lattice_sites_rescue(C, raw, xyz, sim, el, p["b_extra_A2"], vs, org, p["noise_median"],
                                    noise * max(1.0, p["rim_noise_ratio"]), o,
                                    _LATTICE_MIN_CORR * _correlation_floor_scale(vs), first_round=first)
    if new_xyz.shape[0]:
        new_full = (new_xyz - xp.asarray(org)) / xp.asarray(vs)
        if o.refine_centres:
            # the same mean shift as every atom's centre (U 0.6 / 0.8 Å² maps: 0.269 / 0.286 Å per
            # axis at the denoised map's maximum, 0.247 / 0.276 Å after it)
            new_full = mean_shift_centres(raw, new_full, p["raw_median"], *_mean_shift_windows_vox(el, vs))
            new_xyz = xp.asarray(org) + new_full * xp.asarray(vs)
        # each new atom's own voxel: inside the map and no atom's yet (so that its label holds it)
        cv = xp.rint(new_full).astype(xp.int64)[:, ::-1]                                       # z, y, x
        inside = xp.all((cv >= 0) & (cv < xp.asarray(raw.shape)), axis=1)
        cv = xp.clip(cv, 0, xp.asarray(raw.shape) - 1)
        own = xp.nonzero(inside & (det.labels[cv[:, 0], cv[:, 1], cv[:, 2]] == 0))[0]
        new_xyz, new_full = new_xyz[own], new_full[own]
    det.counts["rescued_lattice"] = int(new_xyz.shape[0])
    if new_xyz.shape[0] == 0:
        return det
    (progress or (lambda msg: None))(f"{int(new_xyz.shape[0])} atoms at vacant lattice sites")
    n = len(det.xyz_A)
    old_full = (xyz - xp.asarray(org)) / xp.asarray(vs)
    h_old = linear_at(C, old_full)
    h_new = linear_at(C, new_full)
    new_scale = xp.clip(h_new / xp.maximum(xp.median(h_old), 1e-12), 0.2, 5.0)
    sim = sim + render_atoms(new_xyz, raw.shape, vs, org, el, b_extra_A2=p["b_extra_A2"], weights=new_scale,
                             backend=be)
    corr = xp.nan_to_num(window_pearson(raw, sim, new_full, 1.5 * el.radius_A / vs.min()), nan=-1.0)
    labels, nvox = claim_balls(det.labels, n, xp.rint(new_full[:, ::-1]).astype(xp.int64), _LATTICE_CLAIM_A, vs,
                               counts=True)
    m = int(new_xyz.shape[0])
    pk = label_moments(labels, n + m, raw)["peak_value"][n + 1:]
    peak = (pk.astype(xp.float64) - p["map_mean"]) / p["map_sd"]
    hess, c_at = peak_hessians(C, new_full, vs)
    pos_sd = position_sd_A(hess, noise, np.asarray(p["precision_grad_ratio_per_A"]), c_at - p["noise_median"],
                           p["precision_curvature_per_A2"])
    signif = (c_at - p["noise_median"]) / noise
    host = _be.to_host(xp.stack([corr.astype(xp.float64), nvox.astype(xp.float64), peak, signif.astype(xp.float64),
                                 pos_sd.astype(xp.float64)]))
    xyz_host = np.concatenate([det.xyz_A, _be.to_host(new_xyz).astype(det.xyz_A.dtype)])
    scale_check = check_model_scale(xyz_host, el, vs)
    warnings = [w for w in det.warnings if w != getattr(det.scale, "message", None)]
    if scale_check.message:
        warnings.append(scale_check.message)
    return replace(det, xyz_A=xyz_host, labels=labels, simulated=sim,
                   n_voxels=np.concatenate([det.n_voxels, host[1].astype(np.int64)]),
                   validation_corr=np.concatenate([det.validation_corr, host[0]]),
                   peak_intensity=np.concatenate([det.peak_intensity, host[2]]),
                   significance=np.concatenate([det.significance, host[3]]),
                   position_sd_A=np.concatenate([det.position_sd_A, host[4]]),
                   scale=scale_check, warnings=warnings)


def _noise_warning(det: Detection, o: DetectOptions) -> Detection:
    """A model without a lattice whose hull holds no more density than the solvent
    (:func:`ptnp_gpu.evidence.hull_contrast`) may be noise: warn (``params["hull_contrast"]``).
    One of at least ``_NO_LATTICE_ATOMS`` atoms none of which has a full first shell is not a
    crystal at this voxel size: warn too, unless the scale check has (its warning says as much)."""
    if det.scale.full_shell_fraction >= o.ladder_full_shell:
        return det
    from .evidence import hull_contrast
    c = hull_contrast(det.raw, det.xyz_A, det.map.voxel_size_A, det.map.origin_A)
    det.params["hull_contrast"] = c
    n = len(det.xyz_A)
    if c < _NOISE_CONTRAST:
        det.warnings.append(
            f"the {n} atoms found may be noise: none has a full first shell and the map, smoothed over "
            f"2 Å, holds no more density inside them than the solvent (contrast {c:.2f} of its SD; particles give "
            f"3-8). A masked map of noise looks like this; check the map's resolution and the mask")
    elif n >= _NO_LATTICE_ATOMS and det.scale.full_shell_fraction * n < 0.5 and det.scale.message is None:
        det.warnings.append(
            f"the {n} atoms found have no lattice: none has a full first shell (crystalline particles detected "
            f"well: 13-63% of their atoms; 55 atoms: 13). The voxel size may be wrong (--voxel-size auto "
            f"estimates it from the map's fringes), or the map may not resolve the atoms")
    return det


def _ladder_pass(det, dmap: DensityMap, el, be, progress, o: DetectOptions, first=None, transform=None):
    """The filter ladder (:mod:`ptnp_gpu.deblur`): detections on the map filtered by each B of
    ``o.ladder_A2``. The rung whose model has the best :func:`~ptnp_gpu.deblur.lattice_score`
    (well-placed − clashing atoms) replaces ``det`` when at least half of its atoms, and at least
    ``_LADDER_MIN_ATOMS``, are well placed and it beats ``det``'s score by ``_LADDER_MARGIN`` ×
    ``det``'s atoms (``det`` None: the map was refused, any such rung with ``ladder_full_shell`` of
    its atoms holding a full first shell does). A map read as over-sharpened (the excess blur of
    :func:`_deblur_pass` at or below ``-deblur_over_A2``) only climbs the blurring rungs.
    Rungs within ``_LADDER_TIE`` of the best score go to the fewest clashing atoms; a model with a
    wrong-scale warning is replaced only by a rung with ``_LADDER_SCALE_KEEP`` × its atoms.

    ``first``: what the first detection of the map as given measured (``_detect_once(measured=)``);
    without it, ``det``'s own. An unmasked map's rungs are detected with ``o.ladder_whiten`` and
    the support rule (``_detect_once(support=)``); a masked map's with ``o.whiten`` and no rule. A
    refused map on which no rung qualifies that way climbs again with the latter. Returns the
    detection kept (None when ``det`` was None and no rung qualified). ``transform``: the map's
    Fourier transform as the blurred-map pass kept it (:func:`_sharpener`), reused when of ``raw``."""
    from .deblur import lattice_score
    say = progress or (lambda msg: None)
    t = time.perf_counter()
    raw = _prepared_raw(dmap, o.invert, be.xp)[0] if det is None else det.raw
    transform = {} if transform is None else transform
    band = 1.0 if det is None else float(det.params["band_limit_A"])
    vs, org = dmap.voxel_size_A, dmap.origin_A
    rungs = [{"b_A2": None, "atoms": 0}]
    bar, steps = float("-inf"), list(o.ladder_A2)
    if det is not None:
        g, c = lattice_score(det.xyz_A, el)
        blur = (det.params.get("deblur_pass") or {}).get("excess_blur_A2")
        rungs[0].update(atoms=len(det.xyz_A), well_placed=g, clashing=c, full_shell=det.scale.full_shell_fraction,
                        excess_blur_A2=blur)
        bar = g - c + _LADDER_MARGIN * len(det.xyz_A)
        if blur is not None and blur <= -o.deblur_over_A2:
            # over-sharpened already: only the blurring rungs (a map sharpened by 100 Å² and then by
            # 60 more under the 2.1 Å low-pass grew 29 false atoms on the surface, all well placed)
            steps = [b for b in steps if b < 0]
    say(("no particle found at first" if det is None else "no lattice in the model")
        + ": detecting again on the map filtered by " + ", ".join(f"{b:+.0f}" for b in steps) + " Å²")
    # ``first`` rather than ``det``: ``det`` may come from the blurred-map pass's sharpened copy,
    # whose mask reads as gone
    if not first:
        first = {} if det is None else {"support": (det.denoised, det.params["noise_median"],
                                                    _computed_box(det.params)),
                                        "masked": det.params["masked_map"]}
    # a masked map's rungs are detected as before stop 18 (whitened, no support): sharpened, its
    # mask's edge and the noise left inside it ring into a lattice of blobs that the bonds cannot
    # tell from atoms, and the support rule, by removing the clashing ones, let such a rung win
    # (a hard-masked map: precision 0.99 -> 0.25)
    masked = first["masked"] if "masked" in first else bool(_solvent_mask(raw, vs, o.solvent_margin_A)[2])
    rung_whiten = o.whiten if masked else o.ladder_whiten
    # the first detection's filtered map (also when it refused the map, once it had measured its
    # noise): a rung's atom must correlate with an atom there more than the solvent does (its median)
    support = None if masked else first.get("support")
    floor = _LADDER_SCALE_KEEP * len(det.xyz_A) if det is not None and det.scale.message is not None else 0
    # the sharpening rungs of an unmasked coarse map are not high-passed: on 0.6-0.75 Å grids with noise
    # the 8 Å high-pass took a third of a sharpened rung's atoms (a 147-atom Co particle: recall 0.68 ->
    # 0.88). Finer grids keep it (a gemmi HEA_4 map at 0.31 Å on a 6 Å background: 370 false atoms in
    # the solvent, precision 0.997 -> 0.80), and so do masked maps (a hard mask: precision 0.99 -> 0.38)
    rung_highpass = o.highpass_A
    if (o.ladder_sharpen_highpass_A is not None and not masked
            and float(np.min(vs)) >= o.ladder_sharpen_min_voxel_A):
        rung_highpass = o.ladder_sharpen_highpass_A

    def climb(whiten, support):
        """Each rung's detection; (its record, the qualifying rungs within _LADDER_TIE of the
        best score: (score, clashing, b, detection))."""
        record, qual = [], []
        for b in steps:
            res = float(min(2.1, max(np.sqrt(b / 12.0), band))) if b > 0 else 1.0   # sharpening: noise gain ≤ ~20×
            try:
                hp = rung_highpass if b > 0 else o.highpass_A
                cand = _detect_once(DensityMap(_sharpener(raw, vs, transform)(b, res), vs, org), el, be, None,
                                    replace(o, invert=False, whiten=whiten, highpass_A=hp),
                                    support=support, whole_if_refused=False)   # raw: inverted already
            except InputError:
                record.append({"b_A2": b, "atoms": 0})
                continue
            g, c = lattice_score(cand.xyz_A, el)
            record.append({"b_A2": b, "resolution_A": res, "atoms": len(cand.xyz_A), "well_placed": g,
                           "clashing": c, "full_shell": cand.scale.full_shell_fraction})
            # a refused map takes a rung only with a lattice (the rung sharpened by 60 Å² found 1,794
            # "atoms", 1,281 of them blobs of coloured noise, 71% well placed, but none with a full shell);
            # a model whose bonds say the voxel size is wrong, only a rung with a lattice or bulk-like
            # bonds (PdPt read at half its voxel size: 1,073 atoms whose bonds named 0.361 Å for 0.358
            # lost to a +40 Å² rung of 543 blobs, no full shell, bonds 0.86 x bulk, naming 0.208 Å)
            lattice = (cand.scale.full_shell_fraction >= o.ladder_full_shell
                       or (det is not None and (det.scale.message is None or cand.scale.message is None)))
            n = len(cand.xyz_A)
            if g - c > bar and g >= max(_LADDER_MIN_ATOMS, 0.5 * n) and lattice and n >= floor:
                qual.append((g - c, c, b, cand))
                top = max(q[0] for q in qual)
                tol = _LADDER_TIE * max(len(det.xyz_A) if det is not None else 0,
                                        max(len(q[3].xyz_A) for q in qual))
                qual = [q for q in qual if q[0] >= top - tol]       # only these can still be chosen
        return record, qual

    record, qual = climb(rung_whiten, support)
    rungs += record
    fallback = det is None and not qual and (rung_whiten != o.whiten or support is not None)
    if fallback:
        # a refused map on which no rung that keeps its filter qualified: the rungs as before stop 18
        # (over-sharpened by 34 Å² at noise 0.24: the first detection's filtered map is mostly noise,
        # and its support removed the atoms; the re-whitened -40 Å² rung finds them, 1.000 / 0.993)
        record, qual = climb(o.whiten, None)
        rungs += [{**r, "fallback": True} for r in record]
    # of the rungs that score about as well as the best, the one with the fewest clashing atoms: false
    # atoms in surface hollows are "well placed" too (a single-particle map: +60 Å², 74 false atoms,
    # 27 clashing, score 770, against -20 Å², none false, none clashing, 766)
    pick = min(qual, key=lambda q: (q[1], -q[0])) if qual else None
    best = None if pick is None else (pick[3], pick[2])
    info = {"rungs": rungs, "chosen_b_A2": None if best is None else best[1], "seconds": time.perf_counter() - t,
            "rung_whiten": rung_whiten, "support": support is not None, "fallback": fallback,
            "tie_break": bool(pick is not None and pick[0] < max(q[0] for q in qual))}
    if best is None:
        if det is not None:
            det.params["ladder_pass"] = info
        return det
    cand, b = best
    say(f"the map filtered by {b:+.0f} Å² gives {len(cand.xyz_A)} atoms with the best bonds"
        + ("" if det is None else f" (before {len(det.xyz_A)})"))
    cand.params.update(ladder_pass=info, deblur_pass=None if det is None else det.params.get("deblur_pass"))
    return _adopted(cand, det, dmap, raw, o.invert)


def _adopted(second: Detection, first: Detection | None, dmap: DensityMap, raw, invert: bool) -> Detection:
    """``second``, a detection on a filtered copy of ``dmap``, as the detection of ``dmap``: the map
    and its prepared ``raw`` as given (the statistics run on them), the caller's ``invert``, and
    ``first``'s stage times (prefixed ``first.``) before its own."""
    second.params["invert"] = invert
    if first is not None:
        second.times = {**{f"first.{k}": v for k, v in first.times.items()}, **second.times}
    return replace(second, map=dmap, raw=raw)


def _deblur_pass(det: Detection, el, be, progress, o: DetectOptions, transform=None) -> Detection:
    """The detection again on the map sharpened by its excess blur, kept when its model explains
    the original map better (see :mod:`ptnp_gpu.deblur`). ``transform``: where the map's Fourier
    transform is kept for the ladder (:func:`_sharpener`)."""
    from .deblur import atoms_box, excess_blur_A2, model_correlation
    say = progress or (lambda msg: None)
    vs, org = det.map.voxel_size_A, det.map.origin_A
    box = atoms_box(det.xyz_A, det.raw.shape, org, vs)
    blur = excess_blur_A2(det.raw, det.simulated, box, vs)
    info = {"excess_blur_A2": blur, "applied": False}
    det.params["deblur_pass"] = info
    if blur >= o.deblur_min_A2:
        b_sharp = min(blur - o.deblur_keep_A2, o.deblur_max_A2)
        res = float(min(2.1, max(np.sqrt(b_sharp / 12.0), det.params["band_limit_A"])))   # noise gain ≤ ~20×
        say(f"the map is blurred about {blur:.0f} Å² beyond the atom model: detecting again on it sharpened by "
            f"{b_sharp:.0f} Å² (low-pass {res:.2f} Å)")
    elif blur <= -o.deblur_over_A2:
        # over-sharpened (amplified noise beyond the atoms' own fall-off): blurred back by half
        b_sharp, res = -0.5 * min(-blur, o.deblur_max_A2), 1.0
        say(f"the map is sharpened about {-blur:.0f} Å² beyond the atom model: detecting again on it blurred by "
            f"{-b_sharp:.0f} Å²")
    else:
        return det
    info.update(sharpen_A2=b_sharp, resolution_A=res)
    t = time.perf_counter()
    sharp = DensityMap(_sharpener(det.raw, vs, {} if transform is None else transform)(b_sharp, res), vs, org)
    try:
        det2 = _detect_once(sharp, el, be, progress, replace(o, invert=False))   # det.raw is inverted already
    except InputError as exc:
        info["outcome"] = f"sharpened map refused: {str(exc).split('(')[0].strip()}"
        return det
    b_model = det.params["b_extra_A2"] + min(max(blur, 0.0), 80.0)
    both = np.concatenate([det.xyz_A, det2.xyz_A])
    cbox = atoms_box(both, det.raw.shape, org, vs)
    c1 = model_correlation(det.raw, det.xyz_A, cbox, vs, org, el, b_model)
    c2 = model_correlation(det.raw, det2.xyz_A, cbox, vs, org, el, b_model)
    info.update(correlation_original=c1, correlation_sharpened=c2, seconds=time.perf_counter() - t)
    if not c2 > c1:
        info["outcome"] = "kept the original map's model"
        return det
    info.update(applied=True, outcome=f"kept the sharpened map's model ({len(det2.xyz_A)} atoms, "
                                      f"{len(det.xyz_A)} before)")
    say(f"sharpened: {len(det2.xyz_A)} atoms (before {len(det.xyz_A)}); their model explains the map better "
        f"(correlation {c2:.3f} against {c1:.3f})")
    det2.params["deblur_pass"] = info
    return _adopted(det2, det, det.map, det.raw, o.invert)


def _prepared_raw(dmap: DensityMap, invert: bool, xp):
    """The map as float32 on the backend, ready for detection and the statistics: negated when
    ``invert``, scaled by a power of two when its grey values are in odd units, less its mean when
    that lies far from zero. Returns (raw, mean, sd, grey_scale).

    Raises
    ------
    InputError
        Non-finite voxels, or a constant map.
    """
    raw = _be.upload_volume(dmap.data, xp)           # host maps: staged in pieces, overlapping the copy
    if invert:
        raw = -raw                                    # a new array: the caller's map is untouched
    mean, sd = map_mean_sd(raw)
    if not (np.isfinite(mean) and np.isfinite(sd)):
        n_bad = int((~xp.isfinite(raw)).sum())       # sync
        raise InputError(f"the map holds {n_bad} NaN or infinite voxels: replace them (with the solvent "
                         f"level, say) first")
    if not sd > 0:
        raise InputError("the map is constant: nothing to detect")
    grey_scale = 1.0
    if not _GREY_SD_RANGE[0] < sd < _GREY_SD_RANGE[1]:
        # grey values in odd units: a power of two brings the SD to ~1 exactly (no rounding), so
        # every step and the statistics (z-scores, correlations, log-intensity fits) are unchanged
        grey_scale = 2.0 ** -round(np.log2(sd))
        raw = raw * xp.float32(grey_scale)
        mean, sd = mean * grey_scale, sd * grey_scale
    if abs(mean) > _OFFSET_SDS * sd:
        # a large constant offset (raw counts, absolute units): float32 products of such values
        # lose the noise to rounding (an offset of 1,000 × the peak read as a masked map, 10,000 ×
        # failed). The offset goes; the difference is exact in float32 (Sterbenz). Statistics on
        # ``backend_map`` then fit the map less its mean (log-intensity fits need the solvent near 0)
        raw = raw - xp.float32(mean)
        mean = 0.0
    return raw, mean, sd, grey_scale


def _fine_thresholds(coarse, k: int, refine_steps: int, lowest: float, highest: float):
    """The refinement's thresholds: ``refine_steps`` per coarse step over ±1 step around the
    coarse sweep's best (``coarse[k]``), inside (``lowest``, ``highest``), less the coarse points
    it repeats. Repeats are found by tolerance (a quarter of a fine step), not by equal bits:
    ``coarse[k] ± step`` equals its neighbour or misses it by one rounding depending on the
    sweep's start, which comes from the noise level, so by bits the backends' grids parted (12
    fine thresholds on NumPy, 10 on the H200 for one map; another best threshold, atoms 0.1 Å off)."""
    coarse = np.asarray(coarse, dtype=np.float64)
    step = coarse[1] - coarse[0]
    fine = coarse[k] + step * np.arange(-refine_steps, refine_steps + 1) / refine_steps
    repeat = np.abs(fine[:, None] - coarse[None, :]).min(1) < 0.25 * step / refine_steps
    return fine[(fine > lowest) & (fine < highest) & ~repeat]


def _box_face_A(o: DetectOptions) -> float:
    """Half the particle box's margin: atoms this close to a face of the box send detection to the
    whole map, and the noise level is read this far in from the faces of the solvent block."""
    return 0.5 * o.particle_box_margin_A


def _computed_box(params):
    """The particle's box (z, y, x slices) a detection's denoised map was computed in, from its
    ``params["particle_box"]``; None for the whole map (or a fallback to it)."""
    pb = params.get("particle_box")
    if not pb or "start_zyx" not in pb:
        return None
    return tuple(slice(a, a + n) for a, n in zip(pb["start_zyx"], pb["shape_zyx"]))


def _in_frame(a, shape, box):
    """``a`` (the box's values) in an array of ``shape``, zero outside ``box``."""
    out = _be.namespace(a).xp.zeros(shape, dtype=a.dtype)
    out[box] = a
    return out


def _detect_once(dmap: DensityMap, el, be, progress, o: DetectOptions, support=None, measured=None,
                 whole_if_refused: bool = True) -> Detection:
    """:func:`_detect_once_in`; where it worked in the particle's box (``params["particle_box"]``) and
    an atom came within half of ``o.particle_box_margin_A`` of a face of the box (the particle
    reaches beyond it), or the box was refused and ``whole_if_refused``, the whole map again
    (``params["particle_box"]`` then says why). The ladder's rungs pass ``whole_if_refused=False``:
    on the 24 gemmi maps of ``benchmarks/particle_box.py`` seeds 1 and 2, 16 of the 17 whole-map
    tries of rungs refused in their box were refused too, at 0.4-4.6 s each (2 cores); the 17th
    found 25 atoms on a map refused in the end either way."""
    if not o.particle_box:
        return _detect_once_in(dmap, el, be, progress, o, support, measured)
    trace = {}
    try:
        det = _detect_once_in(dmap, el, be, progress, o, support, measured, trace=trace)
    except InputError as exc:
        if trace.get("box") is None or not whole_if_refused:
            raise
        why = f"refused in the particle's box ({exc})"
    else:
        box = trace.get("box")
        axis = None if box is None else atoms_at_faces(det.xyz_A, dmap.origin_A, dmap.voxel_size_A, box,
                                                          det.labels.shape, _box_face_A(o))
        if axis is None:
            return det
        why = f"atoms within {_box_face_A(o):g} Å of the box's {axis} face"
    if progress:
        progress(f"detecting the whole map: {why}")
    if measured is not None:
        measured.clear()                                 # what the box measured is not the map's
    det = _detect_once_in(dmap, el, be, progress, replace(o, particle_box=False), support, measured)
    det.params["particle_box"] = {"fallback": why}
    return det


def _detect_once_in(dmap: DensityMap, el, be, progress, o: DetectOptions, support=None, measured=None,
                    trace=None) -> Detection:
    """One detection (module docstring, steps 1-7) on ``dmap``; ``trace`` receives ``box``, the
    particle's box it worked in (None: the whole map).

    ``support``: (map, level[, box]), a map of ``dmap``'s shape (the filtered map of the detection
    that ``dmap`` is a filtered copy of), its solvent level and the particle's box it was computed
    in (None: all of it); an atom where the map is not above the level, or outside that box, is
    rejected (``counts["rejected_unsupported"]``). ``measured``: a dict that receives
    ``masked`` and that ``support`` pair for this map as soon as they are known (kept when the
    map is then refused)."""
    xp = be.xp
    say = progress or (lambda msg: None)
    clock = _be.StageClock(be)                             # stage times without host waits
    lap = clock.lap

    vs = np.asarray(dmap.voxel_size_A, float)
    raw, mean, sd, grey_scale = _prepared_raw(dmap, o.invert, xp)
    b_extra = default_kernel_blur_A2(vs) if o.b_extra_A2 is None else float(o.b_extra_A2)
    kernel = AtomKernel.for_element(el, b_extra, vs)
    say("denoising (correlation with one simulated atom)")
    sub = subsampled(raw, _STEP)                          # the solvent masks' grid
    solvent, live, masked = _solvent_mask(raw, vs, o.solvent_margin_A, sub=sub)
    # clipped at its minimum (a positivity constraint): the solvent's noise reads low, clipped away
    clipped = not masked and _clipped(sub, live)
    psd, colour, res_A = ((None, 1.0, o.resolution_A) if o.whiten == "never"
                          else _noise_spectrum(raw, solvent, vs, o.resolution_A))   # res_A: the map's band
    whitened = psd is not None and (o.whiten == "always" or colour > o.whiten_ratio)
    if whitened and masked and o.whiten == "auto" and _noise_free(sub, live):
        # a noise-free rendering reads as masked (exact zeros around the atoms) and its "noise" is
        # the atoms' own tails: prewhitening by them sharpens the map into peaks in the hollows
        # between atoms (a 1,289-atom particle at 0.381 Å: 499 false atoms, precision 0.72)
        whitened = False
    # noise power rising with frequency: a sharpened map, atoms and noise alike. Dividing by the
    # noise amplitude (not its power) undoes the sharpening and keeps the atoms apart; full
    # prewhitening would make them as wide as the map's blur before sharpening
    w_exp = 0.5 if whitened and _noise_rises(psd, res_A) else 1.0
    if masked:
        say("masked map: the noise is measured in bands of distance around the atoms")
    if clipped:
        say("the map is clipped at its minimum (positivity): its solvent is not a mask")
    if res_A > o.resolution_A:
        say(f"the map carries detail to {res_A:.2f} Å only (low-passed): band limit set there")
    if whitened:
        say(f"coloured noise (power varies {colour:.3g}x within the band): prewhitened filter")
    lap("solvent_noise")
    # a map mostly of solvent is denoised and detected in its particle's box (ptnp_gpu.particle_box);
    # its noise spectrum above is the whole map's, the denoised map's noise level is read in a
    # block of solvent beside the box, away from that block's faces
    box = (particle_box(raw, vs, o.particle_box_margin_A, check_mask=False)
           if o.particle_box and not masked and not clipped else None)
    face_A = _box_face_A(o)
    block = None if box is None else solvent_block(box, raw.shape, vs, face_A + 4.0, 2.5 * o.particle_box_margin_A)
    if block is None:
        box = None                                       # no solvent far enough for the noise level
    if trace is not None:
        trace["box"] = box
    if box is not None:
        keep = xp.asarray(box_interior(block, solvent.shape, _STEP, [face_A / v for v in vs[::-1]], raw.shape))
        solvent, live = solvent & keep, live & keep
        say(f"the map is mostly solvent: denoising and detecting in the particle's box, "
            f"{tuple(s.stop - s.start for s in box)} voxels")
    # the precision's filter moments need only the noise spectrum and band: on a GPU they run on
    # the host (NumPy on a 32³ grid, ~2 ms) in a worker thread while this one queues the
    # denoising and the sweep on the device, and are collected at the validation
    moments_args = (kernel, vs, res_A, o.highpass_A,
                    raw.shape if box is None else tuple(s.stop - s.start for s in box))
    moments_kw = dict(noise_psd=psd, whitened=whitened, whiten_exponent=w_exp)
    moments = thread_pool("precision", 1).submit(filter_moments, *moments_args, **moments_kw) if be.is_gpu else None
    C, G, c_scale = denoise_map(raw if box is None else xp.ascontiguousarray(raw[box]), vs, kernel,
                                resolution_A=res_A, highpass_A=o.highpass_A, noise_psd=psd if whitened else None,
                                return_scale=True, whiten_exponent=w_exp)
    if box is not None:               # the whole map's frame, zero outside the box and the solvent block
        C, G = _in_frame(C, raw.shape, box), _in_frame(G, raw.shape, box)
        C[block] = denoise_map(xp.ascontiguousarray(raw[block]), vs, kernel, resolution_A=res_A, highpass_A=o.highpass_A,
                             noise_psd=psd if whitened else None, want_second=False, output_scale=c_scale,
                             whiten_exponent=w_exp)[0]
    lap("denoise")

    say("choosing the threshold")
    pos = C[C > 0]
    if pos.size < 27:
        raise InputError("no particle found in the map (no positive correlation with an atom)")
    t_otsu = otsu_threshold(pos)
    q = xp.asarray([_INVERTED_Q, 1.0 - _INVERTED_Q])
    given = measured is not None                          # the map as given, not a filtered copy of it
    if given:
        # the quantiles always (a negated map's extremes can still read positive: a 201-atom Pd
        # particle at 0.75 Å, noise 0.1, quantile ratio 1.26), read with the extremes
        cmax, cmin, lo, hi = (float(v) for v in _be.to_host(
            xp.concatenate([xp.stack([C.max(), C.min()]), xp.quantile(C[::2, ::2, ::2], q)])))
    else:
        cmax, cmin = (float(v) for v in _be.to_host(xp.stack([C.max(), C.min()])))
    if given or -cmin > cmax:                             # a copy: the extremes look first, the quantiles decide
        if not given:
            lo, hi = (float(v) for v in _be.to_host(xp.quantile(C[::2, ::2, ::2], q)))
        if given and 0.0 < hi < -lo <= _INVERTED_SURE * hi:
            measured["polarity_doubt"] = -lo / hi          # _detect decides, by detecting it negated too
        elif -lo > (_INVERTED_SURE if given else _INVERTED_RATIO) * max(hi, 0.0):
            # atoms make the strongest positive correlations (the negative ones between atoms
            # reach about half of them): here the strongest features are dark
            raise InputError(f"the map's contrast looks inverted: its strongest atom-like features are negative "
                             f"(correlation quantiles {lo:.3g} and {hi:.3g}); negate it (--invert, or invert=True)")
    # a masked map's noise bands: those symmetric about their median (atoms in a band lengthen a
    # tail), and all of them, whose level the residual rescue keeps as its floor (see there)
    # a soft mask's ramp scales the noise in the outer bands: measured in its own units, on the
    # map as given only (a filtered copy of a hard-masked map has its edge smeared into a ramp)
    gain = _mask_gain(sub, live, solvent, vs) if masked and given and o.mask_gain else None
    (med, noise), (_, noise_untested) = _noise_levels(
        C, solvent, live, particle_threshold=t_otsu if masked else None, voxel_size_A=vs,
        margin_A=o.solvent_margin_A, resolution_A=res_A, gain=gain)
    noise_med = med
    if measured is not None:
        measured.update(support=(C, noise_med, box), masked=bool(masked), mask_gain=gain is not None)
    t_start = max(t_otsu, med + o.sweep_floor_sigma * noise)
    if t_start >= cmax:
        raise InputError(f"no particle found in the map (nothing rises {o.sweep_floor_sigma:g} noise SDs above "
                         f"the solvent)")
    if t_start > t_otsu:
        say(f"Otsu's threshold lies within the solvent noise: the sweep starts {o.sweep_floor_sigma:g} noise SDs "
            f"above the solvent instead")
    # the box: where C is dense above a threshold that noise blobs rarely pass (in a box that is
    # mostly solvent, clumps of 3-SD noise blobs are dense too: 300 atoms in 256³ kept the whole map)
    t_crop = max(t_start, med + min(o.crop_sigma, o.rescue_sigma) * noise)
    if t_crop >= cmax:
        t_crop = t_start
    crop = _crop_box_above(C, t_crop, int(np.ceil(o.crop_margin_A / vs.min())))
    if crop is None:
        raise InputError("no particle found in the map")
    crop = _dense_region(crop, C, t_crop, vs, o.crop_margin_A)
    if box is not None:                                  # inside the particle's box (not its solvent block)
        crop = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(crop, box))
        if any(s.stop - s.start < 3 for s in crop):
            raise InputError("no particle found in the particle's box")
    box_start = np.array([crop[2].start, crop[1].start, crop[0].start], dtype=np.float64)   # voxel x, y, z
    C_box, G_box, raw_box = C[crop], G[crop], raw[crop]
    base = float(xp.median(raw[::2, ::2, ::2]))          # solvent level (a subsample is enough)
    weights = xp.clip(raw_box - base, 0.0, None)
    scorer = _Scorer(C_box, G_box, kernel, vs)
    del G, G_box                                          # only the scorer's spline coefficients are needed
    lap("sweep_setup")
    coarse = np.linspace(t_start, cmax, o.n_thresholds + 1)[:-1]
    batch = o.sweep_batch or _auto_sweep_batch(be, C_box.size, len(coarse))
    min_vox = _min_voxels(o.min_voxels, vs)
    r, na = sweep_scores(C_box, weights, scorer, coarse, min_vox, batch)
    curve = list(zip(coarse, r, na))
    lowest = t_start if t_start > t_otsu else t_otsu - (coarse[1] - coarse[0])   # a raised start is a floor
    fine = _fine_thresholds(coarse, int(np.argmax(r)), o.refine_steps, lowest, cmax)
    if len(fine):
        r, na = sweep_scores(C_box, weights, scorer, fine, min_vox, batch)
        curve += list(zip(fine, r, na))
    del scorer                                            # frees the spline coefficients
    curve = np.array(sorted(curve))
    best = int(np.argmax(curve[:, 1]))
    threshold, best_corr = float(curve[best, 0]), float(curve[best, 1])
    if curve[best, 2] < 1:
        raise InputError("no particle found in the map (no atom at any threshold)")
    if best_corr < o.min_sweep_correlation:
        raise InputError(f"no particle found in the map (the best atomic model explains it with correlation "
                         f"{best_corr:.3f} < {o.min_sweep_correlation}; real particles give 0.4-0.9). If the map "
                         f"does hold a particle, its atoms are not resolved: check the voxel size and element, "
                         f"and that the map is not over-sharpened (amplified noise beyond its resolution); "
                         f"--min-sweep-correlation lowers the bar")
    lap("threshold_sweep")

    say(f"labelling at threshold {threshold:.4f}")
    t_sig = max(med + o.rescue_sigma * noise, o.otsu_floor * t_otsu)
    lab, n = label26_above(C_box, [threshold], gap_planes=0)
    mom = label_moments(lab, n, weights, C_box)
    drop = (mom["count"] < min_vox) | (mom["peak_value"] < t_sig)
    drop[0] = False
    lab = xp.where(drop[lab], 0, lab).astype(xp.int32)
    counts = {"components": n, "small_or_insignificant_removed": int(drop.sum())}
    n_split = 0
    if o.split:
        # seeds closer than 2·r_th are one atom (paper), but never beyond 0.8 bond (Cu: 2r_th > bond)
        lab, n, n_split = _split(lab, n, C_box, min(2.0 * el.radius_A, 0.8 * el.nn_distance_A), vs)
    counts["split_components"] = n_split
    n_sweep = n                                       # ids above this were rescued
    if o.rescue:
        # the rescue seats peaks beside the atoms: at least the level of all the noise bands there
        # (a masked map's band the tail test leaves out holds the atoms' own residue: low-passed at
        # 2 Å under a soft mask 4 Å out, 46 rescued atoms, precision 0.955, without this floor)
        t_resc = max(t_sig, med + o.rescue_sigma * noise_untested)
        lab, n, counts["rescued"] = rescue_rounds(lab, n, C_box, t_resc, vs, el, o.rescue_rounds)
    residual = o.rescue and o.residual_rescue and int(solvent.sum()) >= _MIN_SOLVENT   # sync
    rim_ratio = 1.0                                    # rim noise / solvent noise (residual block)
    recentre = o.refine_centres and res_A > o.resolution_A        # a low-passed map's centres
    # the box's own transfer, for the residual's model and the centres of a low-passed map
    transfer = MapTransfer(raw_box - xp.float32(base), vs) if residual or recentre else None
    if residual:
        # the same search on the box of the map minus the atoms found so far, filtered with C's
        # own normalisation: the same linear filter, so C's solvent noise level holds for it
        res = _residual_map(lab, n, raw_box, weights, base, el, b_extra, transfer)
        Cr_box, _ = denoise_map(res, vs, kernel, resolution_A=res_A, highpass_A=o.highpass_A,
                                noise_psd=psd if whitened else None, want_second=False, output_scale=c_scale,
                                whiten_exponent=w_exp)
        del res
        # on a masked map, at least the level of all its noise bands: a band beside the particle
        # that the tail test leaves out holds what the model leaves there (an over-sharpened,
        # low-passed map rings around its atoms: hard mask, sharpened 16 Å² past the blur, 77
        # atoms rescued from that ringing, precision 0.88, against 1.00 with this floor)
        t_r = max(med + o.residual_sigma * noise_untested, o.otsu_floor * t_otsu)   # ≥ noise
        if o.lattice_rescue:
            # the residual's noise on the rim just outside the atoms, against the solvent's: where the
            # map is noisier there (a tomogram's shot noise and streaks: 2.3x in a simulated FBP
            # tomogram), the lattice rescue's threshold rises with it
            rim_ratio = _near_particle_level(Cr_box, lab > 0, vs, clear_A=_RIM_CLEAR_A)[1] / noise
        if clipped:
            # a clipped map's solvent hides most of its noise: the rescued atoms and the residual's
            # peaks must also stand out of the residual's own noise beside the atoms (SIRT with
            # positivity at ±75°, surface U 0.4 Å²: 67 of 88 rescued atoms were false)
            med_r, noise_r = _near_particle_level(Cr_box, lab > 0, vs)
            t_r = max(t_r, med_r + o.residual_sigma * noise_r)
            if n > n_sweep and med_r + o.rescue_sigma * noise_r > t_sig:
                lab, counts["rescued_dropped"] = _drop_weak_rescued(lab, n, n_sweep, C_box, weights,
                                                                    med_r + o.rescue_sigma * noise_r)
        lab, n, counts["rescued_residual"] = rescue_rounds(lab, n, Cr_box, t_r, vs, el, o.rescue_rounds,
                                                           centre_map=C_box)
        del Cr_box
    if not recentre:
        transfer = None                                  # frees the box's spectrum
    lap("label_split")

    # compact ids 1..N
    mom = label_moments(lab, n, weights)
    present = (mom["count"] > 0) & (mom["wsum"] > 0)   # no positive density: no centre
    present[0] = False
    ids = xp.nonzero(present)[0]
    centre = mom["centre_vox"][ids]
    nvox = mom["count"][ids]
    remap = xp.zeros(n + 1, dtype=xp.int32)
    remap[ids] = xp.arange(1, ids.shape[0] + 1, dtype=xp.int32)
    lab = remap[lab]
    if o.refine_centres:
        # sub-voxel mean shift of the solvent-subtracted raw map (custom kernel; three rounds;
        # window from the bond length, Pt: 1.44 Å radius, σ 0.55 Å, so neighbours stay out):
        # each centre moves to the centre of mass of max(raw − base, 0) × a Gaussian around it.
        # Against ground truth it lowers the position RMSD by ~10% (tests/test_detect.py).
        ms = _mean_shift_windows_vox(el, vs)
        centre = mean_shift_centres(raw_box, centre, base, *ms)
        if recentre:
            # a low-passed map (sharpened or not): two more rounds on the map with its transfer
            # taken off the atoms (2 Å low-pass: mean radial shift +0.031 -> +0.018 Å, RMSD
            # 0.071 -> 0.063 Å; also sharpened: -0.052 -> -0.012 Å, RMSD 0.093 -> 0.066 Å). Not
            # on a rising transfer alone: maps sampled at 0.25-0.3 Å with atoms sharper than the
            # kernel rise too, and there it cost RMSD (0.16 -> 0.19 Å)
            for _ in range(2):
                corrected = transfer_corrected_map(raw_box, centre, base, el, b_extra, transfer)
                centre = mean_shift_centres(corrected, centre, base, *ms)
            del corrected
    del transfer
    lap("centres")

    say("validating atoms")
    if centre.shape[0] == 0:                     # the message the validation would end with, sooner
        raise InputError("no particle found in the map (every candidate atom was rejected)")
    centre_full = centre + xp.asarray(box_start)
    xyz = xp.asarray(dmap.origin_A) + centre_full * xp.asarray(vs)
    # per-atom scale (mixed elements, partial occupancy): smoothed height at the centre
    height = linear_at(C, centre_full)
    scale = xp.clip(height / xp.maximum(xp.median(height), 1e-12), 0.2, 5.0)
    sim = render_atoms(xyz, raw.shape, vs, dmap.origin_A, el, b_extra_A2=b_extra, weights=scale, backend=be)
    vcorr = window_pearson(raw, sim, centre_full, 1.5 * el.radius_A / vs.min())
    vcorr = xp.nan_to_num(vcorr, nan=-1.0)
    keep = xp.ones(xyz.shape[0], dtype=bool)
    floor_corr = o.min_correlation * _correlation_floor_scale(vs)
    if o.reject_correlation and xyz.shape[0] > 2:
        thr = floor_corr
        if o.correlation_rule == "paper":
            thr = xp.maximum(vcorr.mean() - o.correlation_sd * vcorr.std(), thr)
        elif o.correlation_rule == "robust":
            med = xp.median(vcorr)
            thr = xp.maximum(med - o.correlation_sd * 1.4826 * xp.median(xp.abs(vcorr - med)), thr)
        keep &= vcorr >= thr
    counts["rejected_correlation"] = int((~keep).sum())
    if xyz.shape[0] > 1:
        # one atom found twice: a rescued peak whose claimed voxels were another atom's tail (in a
        # noise-free map's hollows) ends up on that atom. No two metal atoms come this close (the
        # published models' closest pair: 0.64 × their bond); the weaker goes (height: C at the centre)
        kid = xp.nonzero(keep)[0]
        dup = ~_thin_peaks(xyz[kid], height[kid].astype(xp.float64), _DUPLICATE_FRACTION * el.nn_distance_A)
        counts["merged_duplicates"] = int(dup.sum())              # sync
        keep[kid[dup]] = False
    if support is not None:
        # an atom adds density to the map as given: a peak of the filtered copy where the map's own
        # filtered map is no higher than its solvent is the copy's ringing (an unwhitened +60 Å² rung
        # put a shell of them just outside the surface: 863 false atoms on a 1,501-atom gemmi map,
        # median -3.5 noise SDs, 81% below the solvent median; the true atoms such a rung finds under
        # atom-scale noise: 1st percentile +1.2 SD)
        sup = linear_at(support[0], centre_full)
        unsupported = keep & (sup <= support[1])
        if len(support) > 2 and support[2] is not None:
            # the support map was computed in a particle's box only (zero beyond it): outside, no support
            for ax, sl in enumerate(support[2]):                         # z, y, x; centres are x, y, z
                c = centre_full[:, 2 - ax]
                unsupported |= keep & ((c < sl.start) | (c > sl.stop - 1))
        counts["rejected_unsupported"] = int(unsupported.sum())        # sync
        keep &= ~unsupported
    if o.reject_close and xyz.shape[0] > 1:
        # the weaker of two atoms closer than any metal bond goes (height: C at the centre). Where
        # the map places atoms loosely (coarse grids with noise: nearest-neighbour distances spread
        # by 0.2-0.3 Å) true pairs come closer too: the cut stays 4 robust SDs below their median
        kid = xp.nonzero(keep)[0]
        cut = min(o.close_fraction * el.nn_distance_A, _nn_floor_A(xyz[kid]))
        close = ~_thin_peaks(xyz[kid], height[kid].astype(xp.float64), cut)
        counts["rejected_close"] = int(close.sum())                # sync
        keep[kid[close]] = False
    if o.reject_low_cn or o.reject_detached:
        # the atoms' near neighbours, once for both rules below
        pi, pj, _ = pairs_within(xyz, el.near_neighbour_cutoff_A)
    if o.reject_low_cn:
        # bcc counts its second shell: with the first alone the rule removed 24 true atoms of an
        # 89-atom W particle
        # repeated until stable: an atom bonded only to rejected atoms is not held by the particle
        # (a pure-noise map kept one "atom" whose three neighbours had gone)
        # one pair search; each pass counts the kept neighbours of the kept atoms (one sync)
        n_low = 0
        ends = xp.concatenate([pi, pj])
        for _ in range(max(1, o.cn_passes)):
            kf = keep.astype(xp.float64)
            cn = segment_sum(ends, [xp.concatenate([kf[pj], kf[pi]])], xyz.shape[0])[0]
            low = keep & (cn < o.min_cn)
            n_new = int(low.sum())                      # sync
            if n_new == 0:
                break
            keep &= ~low
            n_low += n_new
        counts["rejected_low_cn"] = n_low
    if o.reject_detached:
        # the particle is one body: a cluster of "atoms" bonded among themselves but far from it is
        # noise on a mask's edge or in the solvent (a hard mask 9 Å out on a low-passed map, noise
        # 0.23: 58 false atoms in four clusters of 5-34, 6.8-8.4 Å from the particle, precision 0.88)
        # positions, bonds and the kept mask in one read (float64 holds the indices exactly)
        n_at, n_pr = int(xyz.shape[0]), int(pi.shape[0])
        flat = _be.to_host(xp.concatenate([xyz.reshape(-1).astype(xp.float64), pi.astype(xp.float64),
                                           pj.astype(xp.float64), keep.astype(xp.float64)]))
        cut = np.cumsum([3 * n_at, n_pr, n_pr])
        far = _detached_atoms(flat[:cut[0]].reshape(-1, 3), flat[cut[0]:cut[1]].astype(np.int64),
                              flat[cut[1]:cut[2]].astype(np.int64), flat[cut[2]:] > 0.5,
                              o.detached_gap * el.nn_distance_A, o.detached_share)   # host: the bond graph's components
        counts["rejected_detached"] = int(far.sum())
        if far.any():
            keep[xp.asarray(np.flatnonzero(far))] = False
    if not bool(keep.all()):
        kid = xp.nonzero(keep)[0]
        remap = xp.zeros(xyz.shape[0] + 1, dtype=xp.int32)
        remap[kid + 1] = xp.arange(1, kid.shape[0] + 1, dtype=xp.int32)
        lab = remap[lab]
        xyz, vcorr, nvox, centre_full, scale = xyz[kid], vcorr[kid], nvox[kid], centre_full[kid], scale[kid]
        del sim
        sim = render_atoms(xyz, raw.shape, vs, dmap.origin_A, el, b_extra_A2=b_extra, weights=scale, backend=be)
    if xyz.shape[0] == 0:
        raise InputError("no particle found in the map (every candidate atom was rejected)")
    labels = xp.zeros(raw.shape, dtype=xp.int32)
    labels[crop] = lab
    # peak intensity: maximum raw value in the atom's component (components lie in the box)
    pk = label_moments(lab, int(xyz.shape[0]), raw_box)["peak_value"][1:]
    peak = (pk.astype(xp.float64) - mean) / sd
    # how far each atom stands out of the noise, and how precisely the noise lets it be placed
    hess, c_at = peak_hessians(C, centre_full, vs)
    grad_ratio, curvature = (moments.result() if moments is not None
                             else filter_moments(*moments_args, **moments_kw))           # host, ~2 ms
    pos_sd = position_sd_A(hess, noise, grad_ratio, c_at - noise_med, curvature)
    signif = (c_at - noise_med) / noise
    lap("validate")

    xyz_host = _be.to_host(xyz)
    sig_pos = _be.to_host(xp.stack([signif.astype(xp.float64), pos_sd.astype(xp.float64)]))
    scale_check = check_model_scale(xyz_host, el, vs)     # host: a few ms (≤ 1,000 neighbourhoods)
    warnings = [scale_check.message] if scale_check.message else []
    return Detection(
        xyz_A=xyz_host, labels=labels, n_voxels=_be.to_host(nvox).astype(np.int64),
        validation_corr=_be.to_host(vcorr), peak_intensity=_be.to_host(peak),
        threshold=threshold, curve=curve[:, :2], correlation=best_corr, denoised=C,
        simulated=sim, map=dmap, element=el,
        params={**o.__dict__, "b_extra_A2": b_extra, "otsu_threshold": t_otsu, "sweep_start": t_start,
                "correlation_floor": floor_corr, "noise_colour": colour, "whitened": bool(whitened),
                "whiten_exponent": w_exp,
                "masked_map": bool(masked), "clipped_map": bool(clipped), "grey_scale": grey_scale,
                "mask_gain_applied": gain is not None,
                "band_limit_A": float(res_A), "noise_sd": float(noise), "noise_median": float(noise_med),
                "rim_noise_ratio": float(rim_ratio), "map_mean": float(mean), "map_sd": float(sd),
                "raw_median": float(base),
                "particle_box": None if box is None else {
                    "start_zyx": [int(v.start) for v in box], "shape_zyx": [int(v.stop - v.start) for v in box],
                    "share_of_map": float(np.prod([v.stop - v.start for v in box]) / np.prod(raw.shape)),
                    "noise_block_start_zyx": [int(v.start) for v in block],
                    "noise_block_shape_zyx": [int(v.stop - v.start) for v in block]},
                "given_map": bool(given), "precision_grad_ratio_per_A": [float(v) for v in grad_ratio],
                "precision_curvature_per_A2": float(curvature), "element": el.symbol, "backend": be.name},
        times=clock.times(), counts={k: int(v) for k, v in counts.items()}, raw=raw,
        scale=scale_check, warnings=warnings,
        significance=sig_pos[0], position_sd_A=sig_pos[1],
    )
