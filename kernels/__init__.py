"""Custom CUDA kernels (.cu sources) and their CPU twins.

==================  ==========================================  ======================
CUDA source         kernels (``ptnp_`` prefix)                  CPU twin
==================  ==========================================  ======================
render_atoms.cu     ptnp_render_atoms, ptnp_clear_balls         render_atoms_cpu.py
window_fits.cu      ptnp_window_normal_eq, ptnp_window_pearson, window_fits_cpu.py
                    ptnp_mean_shift, ptnp_solve_normal,         (solve: array code)
                    ptnp_linear_at
label_sums.cu       ptnp_label_moments, ptnp_label_finish       label_sums_cpu.py
local_max.cu        ptnp_local_max                              local_max_cpu.py
cell_pairs.cu       ptnp_cell_keys, ptnp_cell_pairs_count,      cell_pairs_cpu.py
                    ptnp_cell_pairs_write, ptnp_bucket_starts,
                    ptnp_cell_pair_table_sums
reduce.cu           ptnp_segment_sum, ptnp_shifted_moments,     reduce_cpu.py
                    ptnp_pair_affine_sums, ptnp_radial_fit_means,
                    ptnp_radial_fit_spread
thin_peaks.cu       ptnp_thin_peaks                             thin_peaks_cpu.py
fourier.cu          ptnp_atom_filter, ptnp_rfft_shells          fourier_cpu.py
label_cc.cu         ptnp_cc_init_above, ptnp_cc_init_mask,      label_cc_cpu.py
                    ptnp_cc_merge, ptnp_cc_count,               (host path: SciPy)
                    ptnp_cc_number, ptnp_cc_finish,
                    ptnp_occupancy_above
filter1d.cu         ptnp_filter1d                               filter1d_cpu.py
                                                                (host path: SciPy)
==================  ==========================================  ======================

Twins are Numba where a loop is needed, NumPy array code otherwise (``fourier_cpu.py``,
the solve of ``ptnp_solve_normal``, the strain sums in ``reduce_cpu.py``): the
host path computes the same numbers in the same order as before the kernel existed.

The sources are loaded, specialised and compiled per device by
:mod:`ptnp_gpu.gpu_kernels`, which also holds the public functions that
dispatch to a kernel (CuPy arrays) or to its twin (NumPy arrays).
``host_emulation.h`` lets the tests compile the CUDA sources for the CPU and
run them against the twins without a GPU.
"""
