"""Atoms from components and peaks: split merged components, rescue weak atoms.

* :func:`_split` divides components holding several atoms among the local
  maxima of the denoised map inside them.
* :func:`_rescue` turns significant local maxima outside every component,
  away from the atoms and bonded to them, into atoms.
* :func:`_residual_map` is the map minus the atoms found so far, on which the
  rescue runs again (weak atoms beside bright ones).

All work on label volumes and maps of one backend (NumPy or CuPy).
"""
from __future__ import annotations

import numpy as np

from . import backend as _be
from .components import label_moments
from .denoise import rfft_shells
from .gpu_kernels import local_maxima, thin_peaks
from .neighbors import pairs_within, segment_sum
from .simulate import render_atoms


def _split(lab, n, C_box, r_split_vox, vs):
    """Divide components holding several atoms among their seeds (see module doc)."""
    be = _be.namespace(lab)
    xp = be.xp
    mask = lab > 0
    peaks = local_maxima(C_box, mask)                # the maxima inside components
    pidx = xp.nonzero(peaks.ravel())[0]
    if pidx.size == 0:
        return lab, n, 0
    pxyz = _flat_to_xyz_A(pidx, lab.shape, vs)
    plab = lab.ravel()[pidx]
    pval = C_box.ravel()[pidx].astype(xp.float64)
    kept = _thin_peaks(pxyz, pval, r_split_vox, group=plab)
    seeds = xp.nonzero(kept)[0]
    slab = plab[seeds]
    per = xp.bincount(slab, minlength=n + 1)
    multi = per > 1
    n_multi = int(multi.sum())                       # sync
    if n_multi == 0:
        return lab, n, 0
    # voxels of multi-seed components go to their nearest seed of the same component
    ms = seeds[multi[slab]]
    ms_lab = plab[ms]
    order = xp.argsort(ms_lab, kind="stable")        # ties: seeds in flat order, as CuPy sorts
    ms, ms_lab = ms[order], ms_lab[order]
    kmax = int(per[multi].max())                     # sync
    start = xp.searchsorted(ms_lab, xp.arange(n + 1))
    flat = lab.ravel()
    vidx = xp.nonzero(multi[flat])[0]
    vl = flat[vidx]
    vxyz = _flat_to_xyz_A(vidx, lab.shape, vs)
    best = xp.full(vidx.shape[0], np.inf)
    arg = xp.zeros(vidx.shape[0], dtype=xp.int64)
    for k in range(kmax):
        pos = start[vl] + k
        valid = (pos < ms_lab.shape[0]) & (ms_lab[xp.minimum(pos, ms_lab.shape[0] - 1)] == vl)
        sidx = ms[xp.minimum(pos, ms.shape[0] - 1)]
        d = vxyz - pxyz[sidx]
        d2 = xp.where(valid, (d * d).sum(1), np.inf)
        better = d2 < best
        best = xp.where(better, d2, best)
        arg = xp.where(better, k, arg)
    # new ids: the first seed keeps the old id, others get fresh ids
    # fresh ids numbered per (component, seed rank) from an offset table
    offs = xp.zeros(n + 1, dtype=xp.int64)
    offs[1:] = xp.cumsum(xp.where(multi, per - 1, 0))[:-1]
    newid = xp.where(arg > 0, n + offs[vl] + arg, vl)
    out = flat.copy()
    out[vidx] = newid.astype(out.dtype)
    n_new = n + int(xp.where(multi, per - 1, 0).sum())  # sync
    return out.reshape(lab.shape), n_new, n_multi


def _flat_to_zyx(flat, shape):
    """(N, 3) integer z, y, x indices of flat (C-order) indices into ``shape``."""
    xp = _be.namespace(flat).xp
    z, rem = xp.divmod(flat, shape[1] * shape[2])
    y, x = xp.divmod(rem, shape[2])
    return xp.stack([z, y, x], 1)


def _flat_to_xyz_A(flat, shape, voxel_size_A):
    """(N, 3) positions in Å (x, y, z, relative to voxel 0) of flat indices into ``shape``."""
    xp = _be.namespace(flat).xp
    return _flat_to_zyx(flat, shape)[:, ::-1].astype(xp.float64) * xp.asarray(voxel_size_A)


def _thin_peaks(pxyz_A, pval, min_sep_A, group=None):
    """Keep peaks with no higher kept peak (of the same group) within ``min_sep_A``: the
    pairs from the cell list, the suppression rounds in one launch
    (:func:`ptnp_gpu.gpu_kernels.thin_peaks`; its Numba twin on NumPy)."""
    i, j, _ = pairs_within(pxyz_A, min_sep_A)
    return thin_peaks(i, j, pval, pxyz_A.shape[0], group=group)


def _model_box(cen_vox, raw_box, base, el, b_extra_A2, vs):
    """The atoms at ``cen_vox`` (box voxels x, y, z) simulated on the box (box frame), each
    with the amplitude of its raw height above ``base``."""
    from .simulate import atom_peak_value
    be = _be.namespace(raw_box)
    xp = be.xp
    idx = xp.clip(xp.rint(cen_vox).astype(xp.int64), 0, xp.asarray(raw_box.shape[::-1]) - 1)
    height = raw_box[idx[:, 2], idx[:, 1], idx[:, 0]].astype(xp.float64) - base
    amp = xp.clip(height / atom_peak_value(el, b_extra_A2), 0.0, None)
    return render_atoms(cen_vox * xp.asarray(vs), raw_box.shape, vs, (0.0, 0.0, 0.0), el,
                        b_extra_A2=b_extra_A2, weights=amp, backend=be)


def _residual_map(lab, n, raw_box, weights_box, base, el, b_extra_A2, transfer):
    """The box of the raw map minus the solvent level and the atoms found so far (simulated
    with amplitudes from their raw heights): weak atoms beside bright ones become peaks of
    their own instead of shoulders on a neighbour's flank.

    ``transfer`` is the box's :class:`MapTransfer`. A sharpened map (its transfer against the
    model rises with frequency) rings around every atom; there the simulated atoms first pass
    through that transfer, so the ringing is explained instead of rescued as atoms. Other
    maps keep the plain model: fitted there, the transfer lets the model absorb part of the
    weak, mobile atoms it does not hold (recall of very mobile surface atoms 0.88 -> 0.81).
    """
    xp = _be.namespace(raw_box).xp
    mom = label_moments(lab, n, weights_box)
    ok = (mom["count"][1:] > 0) & (mom["wsum"][1:] > 0)
    sim = _model_box(mom["centre_vox"][1:][ok], raw_box, base, el, b_extra_A2, transfer.vs)
    M, T = transfer.fit(sim)
    if transfer.sharpened(T):
        sim = transfer.apply(M, T)
    return raw_box - xp.float32(base) - sim


def transfer_corrected_map(raw_box, cen_vox, base, el, b_extra_A2, transfer):
    """The box with the map's transfer taken off its atoms, for centring on a filtered map.

    A low-passed or sharpened map carries every atom's tail and ringing onto its
    neighbours, which pulls centres found on it (measured on a 500-atom particle of true
    strain 0: median radial strain +1.4% when low-passed at 2 Å, −1.4% when also
    sharpened). With ``S`` the atoms at ``cen_vox`` simulated plainly and ``T`` the map's
    transfer against them (``transfer``, the box's :class:`MapTransfer`),
    ``raw − T⊗S + S`` holds the same atoms without it.
    """
    sim = _model_box(cen_vox, raw_box, base, el, b_extra_A2, transfer.vs)
    return raw_box - transfer.apply(*transfer.fit(sim)) + sim


_T_REF_A = (0.25, 0.45)    # 1/Å: the transfer's reference band (4-2.2 Å)
_T_HIGH_A = (0.5, 1.0)     # 1/Å: where a sharpened map's transfer rises (2-1 Å)
_SHARPENED = 3.0           # rise (max over the high band / median over the reference band); measured:
                           # 1.0-2.2 unfiltered (mobile surfaces the highest), 3.5-20 sharpened by 30 Å²


class MapTransfer:
    """A map box's own transfer against models of its atoms: the radial T(s) that best maps a
    model's spectrum onto the data's (least squares per Fourier shell of width 1/box).

    The data's spectrum and the shells are computed once, for every model fitted.
    """

    def __init__(self, data, voxel_size_A):
        be = _be.namespace(data)
        self.xp, self.fft = be.xp, be.fft
        self.vs = np.broadcast_to(np.asarray(voxel_size_A, float), (3,))
        self.shape = data.shape
        self.D = self.fft.rfftn(data)
        self.shell, self.nb, ds = rfft_shells(self.shape, self.vs, self.xp)
        self.s_shell = (np.arange(self.nb) + 0.5) * ds             # host, 1/Å

    def fit(self, model):
        """``(M, T)``: the model's rfft and T per shell."""
        xp = self.xp
        M = self.fft.rfftn(model)
        flat = self.shell.ravel()
        # per-shell sums: bincount on the host, one scatter-add (no host reads) on a device
        num, den = segment_sum(flat, [(self.D * xp.conj(M)).real.ravel(), (M.real ** 2 + M.imag ** 2).ravel()],
                               self.nb)
        return M, num / (den + 1e-3 * den.max())

    def apply(self, M, T):
        """The model of spectrum ``M`` passed through ``T`` (float32, the box's shape)."""
        return self.fft.irfftn(M * T[self.shell], s=self.shape).astype(self.xp.float32)

    def sharpened(self, T) -> bool:
        """T rising ``_SHARPENED``× from 4-2.2 Å to 2-1 Å (one host transfer)."""
        t = _be.to_host(T)
        lo = t[(self.s_shell >= _T_REF_A[0]) & (self.s_shell <= _T_REF_A[1])]
        hi = t[(self.s_shell >= _T_HIGH_A[0]) & (self.s_shell <= _T_HIGH_A[1])]
        return bool(len(lo) and len(hi) and float(np.max(hi)) > _SHARPENED * float(np.median(lo)))




def _rescue_candidates(C_box, t_low, vs, min_sep_A):
    """The rescue's peaks before the labels rule any out: local maxima of ``C_box`` above
    ``t_low`` off the box faces (edge artefacts), as (flat indices ascending, positions Å,
    values float64, and their pairs closer than ``min_sep_A``). Computed once per map;
    a round of the rescue only asks which of them lie outside every component."""
    xp = _be.namespace(C_box).xp
    peaks = (C_box > t_low) & local_maxima(C_box)
    peaks[0], peaks[-1] = False, False
    peaks[:, 0], peaks[:, -1] = False, False
    peaks[:, :, 0], peaks[:, :, -1] = False, False
    cidx = xp.nonzero(peaks.ravel())[0]
    del peaks
    cxyz = _flat_to_xyz_A(cidx, C_box.shape, vs)
    i, j, _ = pairs_within(cxyz, min_sep_A)
    return cidx, cxyz, C_box.ravel()[cidx].astype(xp.float64), i, j


def _rescue(lab, n, C_box, t_low, vs, min_sep_A, r_claim_A, bond_A, min_bonds=2, centre_map=None,
            candidates=None):
    """Weak atoms missed by the global threshold: significant peaks of ``C`` away from atoms.

    A local maximum of ``C`` above ``t_low`` that lies outside every labelled
    component, at least ``min_sep_A`` from every existing atom centre and within
    ``bond_A`` of at least ``min_bonds`` of them (bonded to the particle: noise
    far from it is never rescued) becomes a new atom; it claims the unlabelled
    voxels above ``t_low`` within ``r_claim_A``. ``candidates``:
    :func:`_rescue_candidates` of ``C_box`` and ``t_low``, when already computed
    (rounds on one map pass them in: only their labels change between rounds).
    """
    xp = _be.namespace(lab).xp
    if candidates is None:
        candidates = _rescue_candidates(C_box, t_low, vs, min_sep_A)
    cidx, cxyz, cval, ci, cj = candidates
    # the candidates outside every component, thinned among themselves (the others are a
    # group of their own: pairs across groups suppress nothing), in flat order
    free = lab.ravel()[cidx] == 0
    kept = xp.nonzero(thin_peaks(ci, cj, cval, cidx.shape[0], group=free) & free)[0]   # one sync
    if kept.size == 0:
        return lab, n, 0
    _, ny, nx = lab.shape
    vsx = xp.asarray(vs)
    pidx, pxyz = cidx[kept], cxyz[kept]
    # distance to existing atoms: voxels of labelled components near the peak
    mom = label_moments(lab, n, C_box if centre_map is None else centre_map)
    ex = mom["centre_vox"][1:][mom["count"][1:] > 0] * vsx
    allp = xp.concatenate([ex, pxyz])
    # one pair search (bond_A > min_sep_A): clashes with existing atoms, and bonds to them
    # (bonded to the particle: at least `min_bonds` existing atoms within bonding range)
    i, j, d2 = pairs_within(allp, max(bond_A, min_sep_A))
    ne = ex.shape[0]
    cross = (i < ne) & (j >= ne)
    clash = xp.zeros(allp.shape[0] + 1, dtype=bool)   # the spare last slot takes non-clashes (no sync)
    clash[xp.where(cross & (d2 <= min_sep_A ** 2), j, allp.shape[0])] = True
    clash = clash[:-1]
    # bonds per peak: pairs that are not bonds count into slot 0 of a spare row (no sync)
    bonded = cross & (d2 <= bond_A ** 2)
    bonds = segment_sum(xp.where(bonded, j - ne + 1, 0), [bonded.astype(xp.float64)],
                        pxyz.shape[0] + 1)[0, 1:]
    new = xp.nonzero(~clash[ne:] & (bonds >= min_bonds))[0]
    n_new = int(new.shape[0])                      # sync
    if n_new == 0:
        return lab, n, 0
    pidx = pidx[new]
    lab, _ = claim_balls(lab, n, _flat_to_zyx(pidx, lab.shape), r_claim_A, vs, allowed=C_box > t_low)
    return lab, n + n_new, n_new


def claim_balls(lab, n, centres_zyx, radius_A, vs, allowed=None, counts=False):
    """Label the unlabelled voxels within ``radius_A`` of each centre (integer voxels z, y, x of
    ``lab``; and ``allowed`` there, when given) with ids ``n + 1`` ... in order: the far voxels
    first, so a centre keeps its own. The voxels not claimed write to a spare slot (no host read).
    Returns the labels and, with ``counts``, the voxels each new id holds (float64; else None)."""
    xp = _be.namespace(lab).xp
    vs = np.broadcast_to(np.asarray(vs, float), (3,))
    r = int(np.ceil(radius_A / vs.min()))
    g = np.arange(-r, r + 1)
    oz, oy, ox = np.meshgrid(g, g, g, indexing="ij")
    off = np.stack([oz.ravel(), oy.ravel(), ox.ravel()], 1)
    off = off[((off * vs[::-1]) ** 2).sum(1) <= radius_A ** 2]
    off = off[np.argsort((off ** 2).sum(1))[::-1]]   # far voxels first, so centres win
    m = centres_zyx.shape[0]
    _, ny, nx = lab.shape
    idx = centres_zyx[:, None, :] + xp.asarray(off)[None]
    shape = xp.asarray(lab.shape)
    ok = xp.all((idx >= 0) & (idx < shape), axis=2)
    idx = xp.clip(idx, 0, shape - 1)
    flat = ((idx[..., 0] * ny + idx[..., 1]) * nx + idx[..., 2])
    ok &= lab.ravel()[flat] == 0
    if allowed is not None:
        ok &= allowed.ravel()[flat]
    ids = (n + 1 + xp.arange(m))[:, None] * xp.ones(flat.shape[1], dtype=xp.int64)[None]
    out = xp.concatenate([lab.ravel(), xp.zeros(1, dtype=lab.dtype)])
    out[xp.where(ok, flat, lab.size)] = ids.astype(out.dtype)
    held = None
    if counts:
        held = segment_sum(xp.where(ok, ids - n - 1, m).ravel(), [xp.ones(flat.size, dtype=xp.float64)], m + 1)[0, :m]
    return out[:-1].reshape(lab.shape), held


def rescue_rounds(lab, n, C_box, t_low, vs, el, rounds: int, centre_map=None):
    """:func:`_rescue` in rounds on one map: the first seats peaks bonded to 2 atoms, later
    rounds (bonded to rescued atoms only) ask for a seat on 3 (a facet's hollow).

    Returns (labels, n, atoms added).
    """
    min_sep = 0.7 * el.nn_distance_A
    candidates = _rescue_candidates(C_box, t_low, vs, min_sep)   # the same map every round
    added = 0
    for rnd in range(max(1, rounds)):
        lab, n, n_new = _rescue(lab, n, C_box, t_low, vs, min_sep, el.radius_A,
                                1.25 * el.nn_distance_A, min_bonds=2 if rnd == 0 else 3,
                                centre_map=centre_map, candidates=candidates)
        added += n_new
        if n_new == 0:
            break
    return lab, n, added
