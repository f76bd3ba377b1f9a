// ptnp_gpu: all pairs of points closer than a cutoff, from a hashed cell list.
//
// Every point lies in the cubic cell floor(x / edge) per axis (edge >= cutoff,
// cells counted from the origin, so no extent of the points is needed and the
// caller never reads anything back to size a grid). A cell is hashed into one
// of nbuckets = hmask + 1 buckets (a power of two); the caller sorts the
// points by (bucket, index), so that the points of bucket b are
// order[start[b]] .. order[start[b + 1] - 1]. One thread per point i and
// neighbour cell k (k = 9 (dx + 1) + 3 (dy + 1) + dz + 1 of the 27 cells
// around i's own) looks through that cell's bucket, keeps the points that
// really lie in the cell (a bucket may hold several cells), and takes every
// j > i with |x_i - x_j|^2 <= r2: 27 short, independent scans per point, not
// one long chain of dependent loads. Launches:
//
//   ptnp_cell_keys          each point's cell (int64 x 3) and its sort key
//                           bucket * n + i;
//   ptnp_cell_pairs_count   counts[27 i + k] = number of such j in cell k; a point
//                           with a non-finite coordinate gets PTNP_CELL_BAD (< 0) in
//                           its k = 0 entry, so that the sum of the counts, which
//                           the caller reads to size the output, is negative: one
//                           read says both;
//   ptnp_cell_pairs_write   writes them from ends[27 i + k] - counts[27 i + k] (ends:
//                           the inclusive prefix sum of the counts) in a fixed
//                           order: by i, cells by dx, dy, dz from -1 to 1, points of
//                           a cell by index. The output is the same for any launch
//                           shape and any bucket count.
//
// ptnp_cell_pair_table_sums, for a sum over the pairs of a tabulated function of their squared
// distance (the sweep scorer's K*K): the same cells and scans, one thread per point and neighbour
// cell, each pair's value interpolated in the table as numpy.interp does (its formula and edge
// rules, no fused multiply-add) and the thread's sum added to its point's total (float64
// atomics): no pair list, no count to read back.
//
// Nothing but the pairs is written. Squared distances are (dx*dx + dy*dy) + dz*dz
// rounded as NumPy does (no fused multiply-add), so they equal the host's.

#define PTNP_CELL_BAD (-(1LL << 40))
#define PTNP_CELL_CLAMP 4.0e18

// the cell index of one coordinate: floor(x / edge), clamped (NaN to the low end) so that
// the conversion to an integer is always defined
__device__ __forceinline__ long long ptnp_cell_coord(const double x, const double edge)
{
    double v = floor(x / edge);
    if (!(v >= -PTNP_CELL_CLAMP)) v = -PTNP_CELL_CLAMP;
    if (v > PTNP_CELL_CLAMP) v = PTNP_CELL_CLAMP;
    return (long long)v;
}

// the bucket of cell (cx, cy, cz): a multiplicative hash in wrapping 64-bit arithmetic
__device__ __forceinline__ long long ptnp_cell_bucket(const long long cx, const long long cy,
                                                       const long long cz, const unsigned long long hmask)
{
    unsigned long long h = (unsigned long long)cx * 0x9E3779B97F4A7C15ULL
                         + (unsigned long long)cy * 0xC2B2AE3D27D4EB4FULL
                         + (unsigned long long)cz * 0x165667B19E3779F9ULL;
    h ^= h >> 32;
    return (long long)(h & hmask);
}

// numpy.interp of v on the strictly increasing table (xg, yg) of ng points: yg[0] left of it, yg[ng - 1]
// at or right of its end, else the line through the interval's ends, rounded as NumPy rounds it;
// the interval from the uniform-table guess (inv_h = (ng - 1) / the table's span), else by
// bisection (as ptnp_gpu.host_interp does)
__device__ __forceinline__ double ptnp_interp(const double v, const double* __restrict__ xg,
                                              const double* __restrict__ yg, const int ng, const double inv_h)
{
    if (v < xg[0]) return yg[0];
    if (v >= xg[ng - 1]) return yg[ng - 1];
    long long j = (long long)__dmul_rn(v - xg[0], inv_h);
    j = j < 0 ? 0 : j > ng - 2 ? ng - 2 : j;
    if (!(xg[j] <= v && v < xg[j + 1])) {
        long long lo = 0, hi = ng - 1;                     // xg[lo] <= v < xg[hi]
        while (hi - lo > 1) {
            const long long mid = (lo + hi) >> 1;
            if (xg[mid] <= v) lo = mid; else hi = mid;
        }
        j = lo;
    }
    const double slope = (yg[j + 1] - yg[j]) / (xg[j + 1] - xg[j]);
    return __dadd_rn(__dmul_rn(slope, v - xg[j]), yg[j]);
}

__device__ __forceinline__ long long ptnp_cell_pairs_scan(
    const long long i, const int k, const double* __restrict__ xyz, const long long* __restrict__ cell,
    const long long* __restrict__ order, const long long* __restrict__ start,
    const unsigned long long hmask, const double r2,
    long long pos, long long* __restrict__ out_i, long long* __restrict__ out_j,
    double* __restrict__ out_d2, const bool write, const double* __restrict__ xg = nullptr,
    const double* __restrict__ yg = nullptr, const int ng = 0, double* total = nullptr)
{
    const double xi = xyz[3 * i], yi = xyz[3 * i + 1], zi = xyz[3 * i + 2];
    const long long ax = cell[3 * i] + k / 9 - 1;
    const long long ay = cell[3 * i + 1] + (k / 3) % 3 - 1;
    const long long az = cell[3 * i + 2] + k % 3 - 1;
    const long long b = ptnp_cell_bucket(ax, ay, az, hmask);
    const double inv_h = ng > 1 ? (double)(ng - 1) / (xg[ng - 1] - xg[0]) : 0.0;   // once per scan
    long long found = 0;
    for (long long q = start[b]; q < start[b + 1]; ++q) {
        const long long j = order[q];
        if (j <= i || cell[3 * j] != ax || cell[3 * j + 1] != ay || cell[3 * j + 2] != az) continue;
        const double ex = xi - xyz[3 * j];
        const double ey = yi - xyz[3 * j + 1];
        const double ez = zi - xyz[3 * j + 2];
        const double d2 = __dadd_rn(__dadd_rn(__dmul_rn(ex, ex), __dmul_rn(ey, ey)), __dmul_rn(ez, ez));
        if (d2 <= r2) {
            if (write) {
                out_i[pos] = i;
                out_j[pos] = j;
                out_d2[pos] = d2;
                ++pos;
            }
            if (ng > 1) *total += ptnp_interp(d2, xg, yg, ng, inv_h);
            ++found;
        }
    }
    return found;
}

extern "C" __global__ void ptnp_cell_pairs_count(
    const double* __restrict__ xyz, const long long* __restrict__ cell,
    const long long* __restrict__ order, const long long* __restrict__ start,
    const long long n, const unsigned long long hmask, const double r2,
    long long* __restrict__ counts)
{
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < 27 * n;
         t += (long long)gridDim.x * blockDim.x) {
        const long long i = t / 27;
        const int k = (int)(t - 27 * i);
        if (!(isfinite(xyz[3 * i]) && isfinite(xyz[3 * i + 1]) && isfinite(xyz[3 * i + 2]))) {
            counts[t] = k == 0 ? PTNP_CELL_BAD : 0;
            continue;
        }
        counts[t] = ptnp_cell_pairs_scan(i, k, xyz, cell, order, start, hmask, r2,
                                         0, nullptr, nullptr, nullptr, false);
    }
}

extern "C" __global__ void ptnp_cell_pairs_write(
    const double* __restrict__ xyz, const long long* __restrict__ cell,
    const long long* __restrict__ order, const long long* __restrict__ start,
    const long long n, const unsigned long long hmask, const double r2,
    const long long* __restrict__ counts, const long long* __restrict__ ends,
    long long* __restrict__ out_i, long long* __restrict__ out_j, double* __restrict__ out_d2)
{
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < 27 * n;
         t += (long long)gridDim.x * blockDim.x) {
        if (counts[t] <= 0) continue;
        const long long i = t / 27;
        ptnp_cell_pairs_scan(i, (int)(t - 27 * i), xyz, cell, order, start, hmask, r2,
                             ends[t] - counts[t], out_i, out_j, out_d2, true);
    }
}

// The cell list's first step, one launch: each point's cell (ptnp_cell_coord per axis: a
// division, a floor, nothing to fuse, as NumPy rounds it) and its sort key bucket * n + i.
// Sorting the keys orders the points by (bucket, index): unique keys, so every sort gives
// the same order.
extern "C" __global__ void ptnp_cell_keys(
    const double* __restrict__ xyz, const long long n, const double edge,
    const unsigned long long hmask, long long* __restrict__ cell, long long* __restrict__ key)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const long long cx = ptnp_cell_coord(xyz[3 * i], edge);
        const long long cy = ptnp_cell_coord(xyz[3 * i + 1], edge);
        const long long cz = ptnp_cell_coord(xyz[3 * i + 2], edge);
        cell[3 * i] = cx;
        cell[3 * i + 1] = cy;
        cell[3 * i + 2] = cz;
        key[i] = ptnp_cell_bucket(cx, cy, cz, hmask) * n + i;
    }
}

// The cell list's bucket starts, one launch: with sorted = the keys in sorted order (bucket
// b_k = sorted[k] / n), start[b] = the first k with b_k >= b for every b in 0..nbuckets (a
// left search of each bucket, every entry written once: thread k writes the buckets after
// b_(k-1) up to b_k; b_(-1) = -1, b_n = nbuckets).
extern "C" __global__ void ptnp_bucket_starts(
    const long long* __restrict__ key, const long long* __restrict__ order, const long long n,
    const long long nbuckets, long long* __restrict__ start)
{
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k <= n;
         k += (long long)gridDim.x * blockDim.x) {
        const long long lo = k == 0 ? -1 : key[order[k - 1]] / n;
        const long long hi = k == n ? nbuckets : key[order[k]] / n;
        for (long long b = lo + 1; b <= hi; ++b) start[b] = k;
    }
}

extern "C" __global__ void ptnp_cell_pair_table_sums(
    const double* __restrict__ xyz, const long long* __restrict__ cell,
    const long long* __restrict__ order, const long long* __restrict__ start,
    const long long n, const unsigned long long hmask, const double r2,
    const double* __restrict__ xg, const double* __restrict__ yg, const int ng, double* __restrict__ acc)
{
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < 27 * n;
         t += (long long)gridDim.x * blockDim.x) {
        const long long i = t / 27;
        double sum = 0.0;
        if (ptnp_cell_pairs_scan(i, (int)(t - 27 * i), xyz, cell, order, start, hmask, r2, 0, nullptr, nullptr,
                                 nullptr, false, xg, yg, ng, &sum))
            atomicAdd(acc + i, sum);
    }
}
