"""How far a map's atoms stand out of its noise at best: the optimal linear detector's SNR.

For a map made as signal + noise with the noise known separately, the
prewhitened matched filter (template spectrum over the noise power, the optimal
linear detector for a known atom in Gaussian coloured noise) gives each true
atom an SNR at its position, and the noise alone a distribution of local maxima.
Atoms whose SNR is below the high quantiles of the noise's own maxima cannot be
told from noise by local evidence, whatever the detector. Run on the coloured-
noise map of ``benchmarks/accuracy_detect.py`` and compared with what detection
finds:

    python benchmarks/detection_limit.py [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter, maximum_filter

from ptnp_gpu.detect import detect_atoms
from ptnp_gpu.mapio import DensityMap
from ptnp_gpu.pairing import match_accuracy
from ptnp_gpu.simulate import atom_peak_value, reference_blur_A2, render_atoms
from ptnp_gpu.synth import make_particle


def matched_filter_snr(signal, noise, voxel_size_A, origin_A, xyz_A, element="Pt"):
    """SNR of each atom (at its nearest voxel) and of the noise's local maxima after the
    prewhitened matched filter of one core atom (U 0.02 Å²), the noise power smoothed."""
    shape = signal.shape
    centre = (np.array(shape)[::-1] // 2) * voxel_size_A + origin_A
    t = render_atoms(centre[None], shape, voxel_size_A, origin_A, element, b_extra_A2=reference_blur_A2(voxel_size_A),
                     u_iso_A2=np.array([0.02]), backend="numpy")
    T = np.fft.rfftn(np.fft.ifftshift(np.asarray(t, float)))
    P = gaussian_filter(np.abs(np.fft.rfftn(noise)) ** 2, 2.0)
    H = np.conj(T) / P

    def filt(x):
        return np.fft.irfftn(np.fft.rfftn(x) * H, s=shape, axes=(0, 1, 2))
    fs, fn = filt(signal), filt(noise)
    sd = fn.std()
    ijk = np.round((xyz_A - origin_A) / voxel_size_A).astype(int)[:, ::-1]
    peaks = fn == maximum_filter(fn, 5)
    return fs[tuple(ijk.T)] / sd, fn[peaks] / sd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    vs = 0.358
    # the map of benchmarks/accuracy_detect.py's "coloured noise" row (tests/test_detect.py::_masked_map)
    p = make_particle(n_atoms=500, seed=12, margin_A=12, noise=0.0)
    signal = p.map.data.astype(float)
    nz = gaussian_filter(np.random.default_rng(3).normal(size=signal.shape), 1.0)
    noise = nz * (0.15 * atom_peak_value("Pt", reference_blur_A2(vs), 0.02) / nz.std())
    snr, noise_max = matched_filter_snr(signal, noise, vs, p.map.origin_A, p.xyz_A)
    det = detect_atoms(DensityMap((signal + noise).astype(np.float32), vs, p.map.origin_A), "Pt")
    acc = match_accuracy(det.xyz_A, p.xyz_A, 1.0)
    found = np.zeros(len(p.xyz_A), bool)
    found[acc["true_index"]] = True
    out = {"map": "coloured noise (500-atom Pt, noise 0.15 x peak correlated over a voxel)",
           "noise_maxima_snr_q99_q999": [float(v) for v in np.quantile(noise_max, [0.99, 0.999])],
           "atom_snr_quartiles": [float(v) for v in np.quantile(snr, [0.25, 0.5, 0.75])],
           "found_snr_median": float(np.median(snr[found])),
           "missed_snr_range": [float(snr[~found].min()), float(snr[~found].max())] if (~found).any() else None,
           "atoms_above_noise_q99": float(np.mean(snr > np.quantile(noise_max, 0.99))),
           "detected_recall": float(acc["recall"]), "detected_precision": float(acc["precision"])}
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
