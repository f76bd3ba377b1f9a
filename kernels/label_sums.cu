// ptnp_gpu: fused per-label reductions over a labelled volume, one pass.
//
// For labels 1..n_labels (0 is background, larger values are ignored) this
// accumulates count, Sw, Sw*x, Sw*y, Sw*z (x, y, z voxel indices, x fastest)
// and the maximum of a second map with the flat index of its first
// occurrence (raster order), as needed for grey-value centres of mass and
// peak finding.
//
// Each thread walks a run of PTNP_RUN consecutive voxels of one x row and
// keeps running sums while the label stays the same; it flushes them with
// atomics only when the label changes or the run ends. Components are a few
// voxels wide, so this cuts the atomics (and their contention) several-fold,
// and background voxels cost one load.
//
// Sums are float64 (atomicAdd on double, sm_60+); counts are integer atomics.
// The peak is packed into one 64-bit key: the high 32 bits are the float32
// value mapped to an order-preserving unsigned integer, the low 32 bits are
// 0xffffffff - flat index, so atomicMax picks the largest value and, among
// equal values (-0.0 and +0.0 are equal), the lowest index (as numpy.argmax does). The result is
// independent of thread order. Flat indices must fit in 32 bits (the wrapper
// checks).
//
// The weights and the peak map may repeat along z with period ``wpz`` planes (``wpz`` = nz
// when they are as large as the labels): the labels of several thresholds stacked along z
// then share one copy of them, voxel (z, y, x) reading plane z % wpz.
//
// Element types come from defines the loader prepends:
//   PTNP_LABEL_T (int, long long, unsigned int, ...), PTNP_WEIGHT_T (float, double).

#ifndef PTNP_LABEL_T
#define PTNP_LABEL_T int
#endif
#ifndef PTNP_WEIGHT_T
#define PTNP_WEIGHT_T float
#endif
#ifndef PTNP_RUN
#define PTNP_RUN 8
#endif

// -0.0 is keyed as +0.0: the two compare equal (a tie, broken by the index, as the twin and
// numpy do), where their bit patterns would rank +0.0 above -0.0.
__device__ __forceinline__ unsigned int ptnp_ordered_key(float v)
{
    unsigned int u = __float_as_uint(v);
    if (u == 0x80000000u) u = 0u;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ void ptnp_flush(
    long long lab, unsigned long long n, double sw, double sx, double sy, double sz,
    unsigned long long key, unsigned long long* count, double* sums,
    unsigned long long* peak_key)
{
    const long long r = lab - 1;
    atomicAdd(count + r, n);
    atomicAdd(sums + 4 * r + 0, sw);
    atomicAdd(sums + 4 * r + 1, sx);
    atomicAdd(sums + 4 * r + 2, sy);
    atomicAdd(sums + 4 * r + 3, sz);
    atomicMax(peak_key + r, key);
}

extern "C" __global__ void ptnp_label_moments(
    const PTNP_LABEL_T* __restrict__ labels,
    const PTNP_WEIGHT_T* __restrict__ weights,
    const float* __restrict__ peakmap,
    const int nx, const int ny, const int nz, const int wpz, const long long n_labels,
    unsigned long long* __restrict__ count,   // (n_labels,)
    double* __restrict__ sums,                // (n_labels, 4): Sw Swx Swy Swz
    unsigned long long* __restrict__ peak_key) // (n_labels,)
{
    const int segs = (nx + PTNP_RUN - 1) / PTNP_RUN;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long n_threads = (long long)segs * ny * nz;
    if (tid >= n_threads) return;
    const int seg = (int)(tid % segs);
    const long long row = tid / segs;             // = z * ny + y
    const int y = (int)(row % ny), z = (int)(row / ny);
    const int xs = seg * PTNP_RUN;
    const int xe = min(nx, xs + PTNP_RUN);
    const long long row0 = row * nx;
    const long long wrow0 = ((long long)(z % wpz) * ny + y) * nx;   // the weights' and peak map's row

    long long cur = 0;
    unsigned long long n = 0, key = 0;
    double sw = 0.0, sx = 0.0, sy = 0.0, sz = 0.0;
    for (int x = xs; x < xe; ++x) {
        const long long idx = row0 + x;
        const long long lab = (long long)labels[idx];
        if (lab != cur) {
            if (cur > 0) ptnp_flush(cur, n, sw, sx, sy, sz, key, count, sums, peak_key);
            cur = (lab >= 1 && lab <= n_labels) ? lab : 0;
            n = 0; key = 0; sw = sx = sy = sz = 0.0;
        }
        if (cur == 0) continue;
        const double w = (double)weights[wrow0 + x];
        n += 1;
        sw += w; sx += w * x; sy += w * y; sz += w * z;
        const unsigned long long k = ((unsigned long long)ptnp_ordered_key(peakmap[wrow0 + x]) << 32)
            | (unsigned long long)(0xffffffffu - (unsigned int)idx);
        if (k > key) key = k;
    }
    if (cur > 0) ptnp_flush(cur, n, sw, sx, sy, sz, key, count, sums, peak_key);
}

// The moments' last step, one launch over the m rows (a background row included when the
// caller made one): integer counts, the weight sums split out, the weighted centres
// Sw*x / Sw (NaN where Sw = 0, the division as array code does it) and the peaks decoded from
// their keys (key 0: an empty label, value -inf and index -1). Array code took ~16 launches.
extern "C" __global__ void ptnp_label_finish(
    const unsigned long long* __restrict__ count, const double* __restrict__ sums,
    const unsigned long long* __restrict__ peak_key, const long long m,
    long long* __restrict__ count_out, double* __restrict__ sw_out, double* __restrict__ sxyz_out,
    double* __restrict__ centre_out, float* __restrict__ peak_value, long long* __restrict__ peak_index)
{
    for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < m;
         r += (long long)gridDim.x * blockDim.x) {
        count_out[r] = (long long)count[r];
        const double sw = sums[4 * r];
        sw_out[r] = sw;
        for (int a = 0; a < 3; ++a) {
            const double s = sums[4 * r + 1 + a];
            sxyz_out[3 * r + a] = s;
            centre_out[3 * r + a] = sw != 0.0 ? s / sw : __longlong_as_double(0x7ff8000000000000LL);
        }
        const unsigned long long key = peak_key[r];
        if (key == 0ULL) {
            peak_value[r] = -__int_as_float(0x7f800000);
            peak_index[r] = -1;
        } else {
            const unsigned int hi = (unsigned int)(key >> 32), lo = (unsigned int)(key & 0xffffffffULL);
            const unsigned int bits = (hi & 0x80000000u) == 0u ? ~hi : (hi & 0x7fffffffu);
            peak_value[r] = __uint_as_float(bits);
            peak_index[r] = (long long)0xffffffffu - (long long)lo;
        }
    }
}
