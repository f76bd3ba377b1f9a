// ptnp_gpu: fused reductions that array code spreads over several launches.
//
//   ptnp_segment_sum       out[c, index[p]] += values[c, p] for K value columns at once
//                          (float64 atomics; indices outside [0, n) are skipped). Array code
//                          built a flat (K * P) index and scattered: four launches more.
//   ptnp_segment_sum_shared  the same for K * n <= PTNP_SEG_SHARED sums (a radial profile's
//                          shells): each block adds into its own copy in shared memory and
//                          then adds that to out, so the few global sums are not hit by
//                          every value (on the H200 the global atomics on ~100 shells took
//                          0.7 ms a call).
//   ptnp_shifted_moments   sum(x - shift) and sum((x - shift)^2) in float64 over a 3-D
//                          array of any element strides (a crop is read in place), shift
//                          read from device memory (no host read); each block reduces
//                          with warp shuffles and adds its two sums to out with atomics.
//                          Array code needed a float64 slab buffer and five launches per
//                          slab.
//
// Element types come from defines the loader prepends: PTNP_INDEX_T (int, long long) and
// PTNP_MAP_T (float, double).

#ifndef PTNP_INDEX_T
#define PTNP_INDEX_T long long
#endif
#ifndef PTNP_MAP_T
#define PTNP_MAP_T float
#endif
#define PTNP_RED_MAX_WARPS 32
#ifndef PTNP_SEG_SHARED
#define PTNP_SEG_SHARED 4096
#endif

extern "C" __global__ void ptnp_segment_sum(
    const PTNP_INDEX_T* __restrict__ index, const double* __restrict__ values,
    const long long p, const int k, const long long n, double* __restrict__ out)
{
    const long long total = p * (long long)k;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        const long long c = t / p;
        const long long s = (long long)index[t - c * p];
        if (s >= 0 && s < n) atomicAdd(out + c * n + s, values[t]);
    }
}

extern "C" __global__ void ptnp_segment_sum_shared(
    const PTNP_INDEX_T* __restrict__ index, const double* __restrict__ values,
    const long long p, const int k, const long long n, double* __restrict__ out)
{
    __shared__ double acc[PTNP_SEG_SHARED];       // the caller keeps k * n <= PTNP_SEG_SHARED
    const int m = k * (int)n;
    for (int j = threadIdx.x; j < m; j += blockDim.x) acc[j] = 0.0;
    __syncthreads();
    for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < p;
         q += (long long)gridDim.x * blockDim.x) {
        const long long s = (long long)index[q];
        if (s < 0 || s >= n) continue;
        for (int c = 0; c < k; ++c) atomicAdd(acc + (long long)c * n + s, values[(long long)c * p + q]);
    }
    __syncthreads();
    for (int j = threadIdx.x; j < m; j += blockDim.x)
        if (acc[j] != 0.0) atomicAdd(out + j, acc[j]);
}

extern "C" __global__ void ptnp_shifted_moments(
    const PTNP_MAP_T* __restrict__ data, const long long n0, const long long n1, const long long n2,
    const long long s0, const long long s1, const long long s2,   // element strides
    const double* __restrict__ shift, double* __restrict__ out)   // out: (2,) zeroed by the caller
{
    __shared__ double part[2 * PTNP_RED_MAX_WARPS];
    const double sh = shift[0];
    const long long total = n0 * n1 * n2;
    double a = 0.0, b = 0.0;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        const long long i2 = t % n2, r = t / n2;
        const long long i1 = r % n1, i0 = r / n1;
        const double x = (double)data[i0 * s0 + i1 * s1 + i2 * s2] - sh;
        a += x;
        b += x * x;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n_warps = (blockDim.x + 31) >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_down_sync(0xffffffffu, a, o);
        b += __shfl_down_sync(0xffffffffu, b, o);
    }
    if (lane == 0) {
        part[2 * warp] = a;
        part[2 * warp + 1] = b;
    }
    __syncthreads();
    if (threadIdx.x < 2) {
        double s = 0.0;
        for (int w = 0; w < n_warps; ++w) s += part[2 * w + threadIdx.x];
        atomicAdd(out + threadIdx.x, s);
    }
}

// The sums of the local affine strain fit, one launch: for every neighbour pair (a, b) with
// weight w, dx = x_b - x_a and du = u_b - u_a, the 18 products (w dx_p) dx_q and (w du_p) dx_q
// (p, q = x, y, z) added to both atoms' rows: out[k, a] and out[k, b], k = 3p + q (dx) and
// 9 + 3p + q (du). Array code built an (18, 2 x pairs) table first: ~30 launches.
extern "C" __global__ void ptnp_pair_affine_sums(
    const double* __restrict__ xyz, const double* __restrict__ u, const long long* __restrict__ pa,
    const long long* __restrict__ pb, const double* __restrict__ w, const long long n_pairs,
    const long long n, double* __restrict__ out)
{
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n_pairs;
         e += (long long)gridDim.x * blockDim.x) {
        const long long a = pa[e], b = pb[e];
        const double we = w[e];
        double dx[3], wdx[3], wdu[3];
        for (int k = 0; k < 3; ++k) {
            dx[k] = xyz[3 * b + k] - xyz[3 * a + k];
            wdx[k] = we * dx[k];
            wdu[k] = we * (u[3 * b + k] - u[3 * a + k]);
        }
        for (int p = 0; p < 3; ++p) {
            for (int q = 0; q < 3; ++q) {
                const double v1 = wdx[p] * dx[q], v2 = wdu[p] * dx[q];
                double* r1 = out + (long long)(3 * p + q) * n;
                double* r2 = out + (long long)(9 + 3 * p + q) * n;
                atomicAdd(r1 + a, v1);
                atomicAdd(r1 + b, v1);
                atomicAdd(r2 + a, v2);
                atomicAdd(r2 + b, v2);
            }
        }
    }
}

// The local radial-strain regression's sums, two launches over the directed pairs (i, j, w):
//   ptnp_radial_fit_means    s[0..2, i] += w, w R_j, w u_j;
//   ptnp_radial_fit_spread   with R̄_i = s[1, i] / s[0, i] and ū_i = s[2, i] / s[0, i]:
//                            t[0, i] += (w dR) dR and t[1, i] += (w dR)(u_j - ū_i), dR = R_j - R̄_i.
// The products and quotients are the array code's, operation by operation (~20 launches).
extern "C" __global__ void ptnp_radial_fit_means(
    const long long* __restrict__ pi, const long long* __restrict__ pj, const double* __restrict__ w,
    const double* __restrict__ r, const double* __restrict__ ur, const long long n_pairs, const long long n,
    double* __restrict__ s)
{
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n_pairs;
         e += (long long)gridDim.x * blockDim.x) {
        const long long i = pi[e], j = pj[e];
        atomicAdd(s + i, w[e]);
        atomicAdd(s + n + i, w[e] * r[j]);
        atomicAdd(s + 2 * n + i, w[e] * ur[j]);
    }
}

extern "C" __global__ void ptnp_radial_fit_spread(
    const long long* __restrict__ pi, const long long* __restrict__ pj, const double* __restrict__ w,
    const double* __restrict__ r, const double* __restrict__ ur, const double* __restrict__ s,
    const long long n_pairs, const long long n, double* __restrict__ t)
{
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n_pairs;
         e += (long long)gridDim.x * blockDim.x) {
        const long long i = pi[e], j = pj[e];
        const double rbar = s[n + i] / s[i], ubar = s[2 * n + i] / s[i];
        const double dr = r[j] - rbar;
        const double wdr = w[e] * dr;
        atomicAdd(t + i, wdr * dr);
        atomicAdd(t + n + i, wdr * (ur[j] - ubar));
    }
}
