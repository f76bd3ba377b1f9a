// ptnp_gpu: all pairs of points closer than a cutoff, from a cell list.
//
// The points are binned into cubic cells (edge >= cutoff) by the caller, who
// also sorts them by cell: the points of cell c are order[start[c]] ..
// order[start[c + 1] - 1], cells numbered (cx * dims_y + cy) * dims_z + cz.
// One thread per point i looks through the 27 cells around its own and
// takes every j > i with |x_i - x_j|^2 <= r2. Two launches of the same code:
//
//   ptnp_cell_pairs_count   counts[i] = number of such j;
//   ptnp_cell_pairs_write   writes them from offsets[i] (the exclusive prefix
//                           sum of the counts) in a fixed order: cells by
//                           dx, dy, dz from -1 to 1, points by their sorted
//                           place. The output is the same for any launch shape.
//
// Nothing but the pairs is written: the array-code search materialised a
// (points, 27, largest cell) table of candidates, 30-100 bytes each.
// Squared distances are (dx*dx + dy*dy) + dz*dz rounded as NumPy does
// (no fused multiply-add), so they equal the host's.

__device__ __forceinline__ long long ptnp_cell_pairs_scan(
    const long long i, const double* __restrict__ xyz, const int* __restrict__ cell,
    const long long* __restrict__ order, const long long* __restrict__ start,
    const int dx_n, const int dy_n, const int dz_n, const double r2,
    long long pos, long long* __restrict__ out_i, long long* __restrict__ out_j,
    double* __restrict__ out_d2, const bool write)
{
    const double xi = xyz[3 * i], yi = xyz[3 * i + 1], zi = xyz[3 * i + 2];
    const int cx = cell[3 * i], cy = cell[3 * i + 1], cz = cell[3 * i + 2];
    long long found = 0;
    for (int ax = cx - 1; ax <= cx + 1; ++ax) {
        if (ax < 0 || ax >= dx_n) continue;
        for (int ay = cy - 1; ay <= cy + 1; ++ay) {
            if (ay < 0 || ay >= dy_n) continue;
            for (int az = cz - 1; az <= cz + 1; ++az) {
                if (az < 0 || az >= dz_n) continue;
                const long long c = ((long long)ax * dy_n + ay) * dz_n + az;
                for (long long k = start[c]; k < start[c + 1]; ++k) {
                    const long long j = order[k];
                    if (j <= i) continue;
                    const double ex = xi - xyz[3 * j];
                    const double ey = yi - xyz[3 * j + 1];
                    const double ez = zi - xyz[3 * j + 2];
                    const double d2 = __dadd_rn(__dadd_rn(__dmul_rn(ex, ex), __dmul_rn(ey, ey)),
                                                __dmul_rn(ez, ez));
                    if (d2 <= r2) {
                        if (write) {
                            out_i[pos] = i;
                            out_j[pos] = j;
                            out_d2[pos] = d2;
                            ++pos;
                        }
                        ++found;
                    }
                }
            }
        }
    }
    return found;
}

extern "C" __global__ void ptnp_cell_pairs_count(
    const double* __restrict__ xyz, const int* __restrict__ cell,
    const long long* __restrict__ order, const long long* __restrict__ start,
    const long long n, const int dx_n, const int dy_n, const int dz_n, const double r2,
    long long* __restrict__ counts)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        counts[i] = ptnp_cell_pairs_scan(i, xyz, cell, order, start, dx_n, dy_n, dz_n, r2,
                                         0, nullptr, nullptr, nullptr, false);
    }
}

extern "C" __global__ void ptnp_cell_pairs_write(
    const double* __restrict__ xyz, const int* __restrict__ cell,
    const long long* __restrict__ order, const long long* __restrict__ start,
    const long long n, const int dx_n, const int dy_n, const int dz_n, const double r2,
    const long long* __restrict__ offsets, long long* __restrict__ out_i,
    long long* __restrict__ out_j, double* __restrict__ out_d2)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        ptnp_cell_pairs_scan(i, xyz, cell, order, start, dx_n, dy_n, dz_n, r2,
                             offsets[i], out_i, out_j, out_d2, true);
    }
}

// The cell list's first step, one launch: each point's cell (floor((x - lo) / edge) per axis,
// rounded as NumPy does: a subtraction, then a division, nothing to fuse) and its sort key
// cell_id * n + i, cell ids numbered as above. Sorting the keys orders the points by
// (cell, index): unique keys, so every sort gives the same order.
extern "C" __global__ void ptnp_cell_keys(
    const double* __restrict__ xyz, const long long n, const double lo_x, const double lo_y,
    const double lo_z, const double edge, const int dy_n, const int dz_n,
    int* __restrict__ cell, long long* __restrict__ key)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const int cx = (int)floor((xyz[3 * i] - lo_x) / edge);
        const int cy = (int)floor((xyz[3 * i + 1] - lo_y) / edge);
        const int cz = (int)floor((xyz[3 * i + 2] - lo_z) / edge);
        cell[3 * i] = cx;
        cell[3 * i + 1] = cy;
        cell[3 * i + 2] = cz;
        key[i] = (((long long)cx * dy_n + cy) * dz_n + cz) * n + i;
    }
}
