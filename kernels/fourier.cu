// ptnp_gpu: per-coefficient work on an rfft grid in one pass (denoising filters, shells).
//
// ptnp_atom_filter    the denoising filter of one atom, built and applied in one launch:
//                     for every coefficient of an rfft (z, y, x; x the half axis) with
//                     frequencies fz[z], fy[y], fx[x] (1/A, float32):
//                       s2 = (fz^2 + fy^2) + fx^2, s = sqrt(s2)
//                       K  = sum_i a_i * exp(m_i * s2)          (the atom's transform)
//                       b  = band(s) * highpass(s)               (cosine tapers)
//                       F *= b; K *= b; [F *= interp(s; white)]  (prewhitening gain)
//                       F = K = 0 at the DC coefficient
//                     with the array code's float32 operations one by one (no fused
//                     multiply-adds: __f*_rn), so the numbers equal that code's on the
//                     device; the gain is NumPy's interp formula in double, F * gain in
//                     double rounded to float32 (as complex64 *= float64 does). The array
//                     code took ~45 launches and three rfft-sized float32 temporaries.
// ptnp_rfft_shells    the radial shell of every coefficient: min(int(s / ds), top), s / ds
//                     in float32 (as the array code divides a float32 array by a scalar).
//
// F is complex64, passed as interleaved float32 (re, im).

__device__ __forceinline__ float ptnp_s2(const float* __restrict__ fz, const float* __restrict__ fy,
                                         const float* __restrict__ fx, const long long i,
                                         const int ny, const int nx)
{
    const int x = (int)(i % nx);
    const long long r = i / nx;
    const int y = (int)(r % ny), z = (int)(r / ny);
    return __fadd_rn(__fadd_rn(__fmul_rn(fz[z], fz[z]), __fmul_rn(fy[y], fy[y])), __fmul_rn(fx[x], fx[x]));
}

// cosine taper: 0.5 * (1 + cos(pi * clip((s - lo) * scale, 0, 1))), op by op
__device__ __forceinline__ float ptnp_taper_down(const float s, const float lo, const float scale)
{
    float t = __fmul_rn(__fsub_rn(s, lo), scale);
    t = fminf(fmaxf(t, 0.0f), 1.0f);
    t = cosf(__fmul_rn(t, 3.14159265358979323846f));
    return __fmul_rn(__fadd_rn(t, 1.0f), 0.5f);
}

// cosine rise: 0.5 * (1 - cos(pi * clip((s - lo) * scale, 0, 1))), op by op
__device__ __forceinline__ float ptnp_taper_up(const float s, const float lo, const float scale)
{
    float t = __fmul_rn(__fsub_rn(s, lo), scale);
    t = fminf(fmaxf(t, 0.0f), 1.0f);
    t = cosf(__fmul_rn(t, 3.14159265358979323846f));
    return __fmul_rn(__fsub_rn(1.0f, t), 0.5f);
}

// numpy.interp of one value (its formula and edge rules), table in float32, arithmetic in double
__device__ __forceinline__ double ptnp_interp(const double v, const float* __restrict__ xs,
                                              const float* __restrict__ ys, const int m)
{
    if (v < (double)xs[0]) return (double)ys[0];
    if (v >= (double)xs[m - 1]) return (double)ys[m - 1];
    int lo = 0, hi = m - 1;                      // xs[lo] <= v < xs[hi]
    while (hi - lo > 1) {
        const int mid = (lo + hi) >> 1;
        if ((double)xs[mid] <= v) lo = mid; else hi = mid;
    }
    const double x0 = xs[lo], x1 = xs[lo + 1], y0 = ys[lo], y1 = ys[lo + 1];
    const double slope = (y1 - y0) / (x1 - x0);
    double r = slope * (v - x0) + y0;
    if (isnan(r)) {
        r = slope * (v - x1) + y1;
        if (isnan(r) && y0 == y1) r = y0;
    }
    return r;
}

extern "C" __global__ void ptnp_atom_filter(
    float* __restrict__ F, float* __restrict__ K,
    const float* __restrict__ fz, const float* __restrict__ fy, const float* __restrict__ fx,
    const int nz, const int ny, const int nx,
    const float* __restrict__ term_a, const float* __restrict__ term_m, const int n_terms,
    const float band_lo, const float band_scale,
    const int use_highpass, const float hp_lo, const float hp_scale,
    const float* __restrict__ white_s, const float* __restrict__ white_g, const int n_white)
{
    const long long n = (long long)nz * ny * nx;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float s2 = ptnp_s2(fz, fy, fx, i, ny, nx);
        float k = 0.0f;
        for (int t = 0; t < n_terms; ++t)
            k = __fadd_rn(k, __fmul_rn(expf(__fmul_rn(s2, term_m[t])), term_a[t]));
        const float s = sqrtf(s2);
        const float hp = use_highpass ? ptnp_taper_up(s, hp_lo, hp_scale) : 1.0f;
        const float b = __fmul_rn(ptnp_taper_down(s, band_lo, band_scale), hp);
        float re = __fmul_rn(F[2 * i], b), im = __fmul_rn(F[2 * i + 1], b);
        k = __fmul_rn(k, b);
        if (i == 0) re = im = k = 0.0f;
        if (n_white > 0) {
            const double g = ptnp_interp((double)s, white_s, white_g, n_white);
            re = (float)((double)re * g);
            im = (float)((double)im * g);
        }
        F[2 * i] = re;
        F[2 * i + 1] = im;
        K[i] = k;
    }
}

extern "C" __global__ void ptnp_rfft_shells(
    const float* __restrict__ fz, const float* __restrict__ fy, const float* __restrict__ fx,
    const int nz, const int ny, const int nx, const float ds, const long long top,
    long long* __restrict__ shell)
{
    const long long n = (long long)nz * ny * nx;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const long long k = (long long)__fdiv_rn(sqrtf(ptnp_s2(fz, fy, fx, i, ny, nx)), ds);
        shell[i] = k < top ? k : top;
    }
}
