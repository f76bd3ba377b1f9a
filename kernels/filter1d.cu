// ptnp_gpu: one pass of a separable filter along one axis of a 3-D volume.
//
// out[i] = sum_k w[k] * in[i + (k - left) along the axis], k = 0 .. len - 1, accumulated in
// float64 and rounded once to the output type, product by product in k order with no fused
// multiply-add: the Numba twin's sums exactly. scipy.ndimage.correlate1d also sums in float64
// (float64 weights and line buffer) but pairs the symmetric taps first, so it agrees to
// rounding, not bit for bit. One thread per output voxel (grid-stride);
// neighbouring threads read neighbouring voxels for every axis. Samples outside the axis
// follow scipy.ndimage's modes:
//
//   0 reflect   d c b a | a b c d | d c b a   (period 2L)
//   1 constant  cval
//   2 nearest   a a a a | a b c d | d d d d
//   3 mirror    d c b | a b c d | c b a       (period 2L - 2)
//   4 wrap      a b c d | a b c d | a b c d
//
// A Gaussian or uniform filter is one pass per axis (the caller alternates two buffers, the
// intermediate rounded to the output type between passes, as scipy does). Element types
// come from defines the loader prepends: PTNP_IN_T and PTNP_OUT_T (float, double).

#ifndef PTNP_IN_T
#define PTNP_IN_T float
#endif
#ifndef PTNP_OUT_T
#define PTNP_OUT_T float
#endif

// the in-range index that mode maps position j (outside [0, L)) to; -1 for constant
__device__ __forceinline__ long long ptnp_filter_index(long long j, const long long L, const int mode)
{
    if (mode == 1) return -1;
    if (mode == 2) return j < 0 ? 0 : L - 1;
    if (L == 1) return 0;
    if (mode == 4) {
        j %= L;
        return j < 0 ? j + L : j;
    }
    const long long period = mode == 3 ? 2 * L - 2 : 2 * L;
    j %= period;
    if (j < 0) j += period;
    if (j >= L) j = (mode == 3 ? 2 * L - 2 : 2 * L - 1) - j;
    return j;
}

extern "C" __global__ void ptnp_filter1d(
    const PTNP_IN_T* __restrict__ in, PTNP_OUT_T* __restrict__ out, const int nz, const int ny,
    const int nx, const int axis, const double* __restrict__ w, const int len, const int left,
    const int mode, const double cval)
{
    const long long n = (long long)nz * ny * nx;
    const long long s = axis == 2 ? 1 : axis == 1 ? (long long)nx : (long long)nx * ny;
    const long long L = axis == 2 ? nx : axis == 1 ? ny : nz;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        // position along the axis (int arithmetic where the volume allows: 64-bit division is slow)
        const long long p = n <= 0x7fffffff ? (long long)(((int)i / (int)s) % (int)L) : (i / s) % L;
        const long long line = i - p * s;                // the line's first voxel
        double acc = 0.0;
        for (int k = 0; k < len; ++k) {
            long long j = p + k - left;
            double v;
            if (j >= 0 && j < L) {
                v = (double)in[line + j * s];
            } else {
                j = ptnp_filter_index(j, L, mode);
                v = j < 0 ? cval : (double)in[line + j * s];
            }
            acc = __dadd_rn(acc, __dmul_rn(w[k], v));      // no fused multiply-add: the twin's sums
        }
        out[i] = (PTNP_OUT_T)acc;
    }
}
