// ptnp_gpu: per-atom window reductions, one thread block per atom.
//
// ptnp_window_normal_eq: weighted normal equations of the quadric fit
//     ln I = b0 + b1 x^2 + b2 y^2 + b3 z^2 + b4 xy + b5 xz + b6 yz
// where I is the map value minus the atom's baseline (its local solvent level,
// or 0), with weights I, over the voxels with I > 0 (and finite) whose distance to
// the atom centre is <= r (voxel units). x, y, z are the voxel's offset from
// the (fractional) centre times the voxel size, so the coefficients come out
// in the caller's length unit. Output per atom: A (7, 7) = sum w phi phi^T,
// rhs (7) = sum w phi ln I, yy = sum w (ln I)^2 (for the weighted R^2), and
// the number of voxels used.
//
// ptnp_window_pearson: per-atom sums n, Sa, Sb, Saa, Sbb, Sab of two maps over
// the voxels within r (voxel units) of the centre, for the validation
// correlation.
//
// ptnp_mean_shift: sub-voxel refinement of the atom centres, n_iter rounds of
// a Gaussian-weighted mean shift, all inside one launch (see the kernel).
//
// Each thread accumulates its share of the cube window in registers (float64),
// then the block reduces with warp shuffles and one shared-memory pass. No
// atomics: the result is deterministic.
//
// The map element type comes from the PTNP_MAP_T define that the loader
// prepends (float or double).

#ifndef PTNP_MAP_T
#define PTNP_MAP_T float
#endif

#define PTNP_NE_SUMS 37   // 28 (upper triangle of A) + 7 (rhs) + count + sum w lnI^2
#define PTNP_PC_SUMS 6
#define PTNP_MAX_WARPS 32

template <int NS>
__device__ void ptnp_block_reduce(double* v, double* shared /* [MAX_WARPS][NS] */)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n_warps = (blockDim.x + 31) >> 5;
    for (int k = 0; k < NS; ++k) {
        double x = v[k];
        for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o);
        if (lane == 0) shared[warp * NS + k] = x;
    }
    __syncthreads();
    if (threadIdx.x < NS) {
        double s = 0.0;
        for (int w = 0; w < n_warps; ++w) s += shared[w * NS + threadIdx.x];
        v[0] = s;   // thread k holds total k in v[0]
    }
}

// Voxel w of the cube window (side = 2*half + 2, starting at floor(c) - half):
// false when outside the map or farther than sqrt(r2) from c; otherwise the
// flat map index and the offset from c (voxels).
__device__ __forceinline__ bool ptnp_window_voxel(
    const int w, const int side, const int half, const double cx, const double cy,
    const double cz, const double r2, const int nx, const int ny, const int nz,
    long long* idx, double* ux, double* uy, double* uz)
{
    const int ix = (int)floor(cx) - half + w % side;
    const int iy = (int)floor(cy) - half + (w / side) % side;
    const int iz = (int)floor(cz) - half + w / (side * side);
    if (ix < 0 || iy < 0 || iz < 0 || ix >= nx || iy >= ny || iz >= nz) return false;
    *ux = ix - cx; *uy = iy - cy; *uz = iz - cz;
    if (*ux * *ux + *uy * *uy + *uz * *uz > r2) return false;
    *idx = ((long long)iz * ny + iy) * nx + ix;
    return true;
}

extern "C" __global__ void ptnp_window_normal_eq(
    const PTNP_MAP_T* __restrict__ map, const int nx, const int ny, const int nz,
    const double* __restrict__ centres,   // (N, 3) voxel x y z
    const double* __restrict__ base,      // (N,) subtracted from the map values
    const int n_atoms, const int half, const double r2,
    const double vsx, const double vsy, const double vsz,
    double* __restrict__ A,                // (N, 7, 7)
    double* __restrict__ rhs,              // (N, 7)
    double* __restrict__ yy,               // (N,)
    long long* __restrict__ count)         // (N,)
{
    __shared__ double shared[PTNP_MAX_WARPS * PTNP_NE_SUMS];
    const int atom = blockIdx.x;
    if (atom >= n_atoms) return;
    const double cx = centres[3 * atom], cy = centres[3 * atom + 1], cz = centres[3 * atom + 2];
    const double b = base[atom];
    const int side = 2 * half + 2;
    double acc[PTNP_NE_SUMS];
    for (int k = 0; k < PTNP_NE_SUMS; ++k) acc[k] = 0.0;
    for (int w = threadIdx.x; w < side * side * side; w += blockDim.x) {
        long long idx; double ux, uy, uz;
        if (!ptnp_window_voxel(w, side, half, cx, cy, cz, r2, nx, ny, nz, &idx, &ux, &uy, &uz))
            continue;
        const double I = (double)map[idx] - b;
        if (!(I > 0.0) || isinf(I)) continue;
        const double x = ux * vsx, y = uy * vsy, z = uz * vsz;
        const double phi[7] = {1.0, x * x, y * y, z * z, x * y, x * z, y * z};
        const double lnI = log(I);
        int k = 0;
        for (int i = 0; i < 7; ++i)
            for (int j = i; j < 7; ++j) acc[k++] += I * phi[i] * phi[j];
        for (int i = 0; i < 7; ++i) acc[28 + i] += I * phi[i] * lnI;
        acc[35] += 1.0;
        acc[36] += I * lnI * lnI;
    }
    ptnp_block_reduce<PTNP_NE_SUMS>(acc, shared);
    const int t = threadIdx.x;
    if (t < 28) {
        // upper-triangle index t -> (i, j)
        int i = 0, k = t;
        while (k >= 7 - i) { k -= 7 - i; ++i; }
        const int j = i + k;
        A[(long long)atom * 49 + i * 7 + j] = acc[0];
        A[(long long)atom * 49 + j * 7 + i] = acc[0];
    } else if (t < 35) {
        rhs[(long long)atom * 7 + (t - 28)] = acc[0];
    } else if (t == 35) {
        count[atom] = (long long)(acc[0] + 0.5);
    } else if (t == 36) {
        yy[atom] = acc[0];
    }
}

extern "C" __global__ void ptnp_window_pearson(
    const PTNP_MAP_T* __restrict__ map_a, const PTNP_MAP_T* __restrict__ map_b,
    const int nx, const int ny, const int nz,
    const double* __restrict__ centres,   // (N, 3) voxel x y z
    const int n_atoms, const int half, const double r2,
    double* __restrict__ sums)             // (N, 6): n Sa Sb Saa Sbb Sab
{
    __shared__ double shared[PTNP_MAX_WARPS * PTNP_PC_SUMS];
    const int atom = blockIdx.x;
    if (atom >= n_atoms) return;
    const double cx = centres[3 * atom], cy = centres[3 * atom + 1], cz = centres[3 * atom + 2];
    const int side = 2 * half + 2;
    double acc[PTNP_PC_SUMS] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    for (int w = threadIdx.x; w < side * side * side; w += blockDim.x) {
        long long idx; double ux, uy, uz;
        if (!ptnp_window_voxel(w, side, half, cx, cy, cz, r2, nx, ny, nz, &idx, &ux, &uy, &uz))
            continue;
        const double a = (double)map_a[idx], b = (double)map_b[idx];
        acc[0] += 1.0; acc[1] += a; acc[2] += b;
        acc[3] += a * a; acc[4] += b * b; acc[5] += a * b;
    }
    ptnp_block_reduce<PTNP_PC_SUMS>(acc, shared);
    if (threadIdx.x < PTNP_PC_SUMS) sums[(long long)atom * PTNP_PC_SUMS + threadIdx.x] = acc[0];
}


// Mean shift of every atom centre (one block per atom, all rounds in the
// kernel). Each round, with rc = rint(c) (round half to even, the default
// rounding mode, as NumPy's rint):
//     p  = rc + o for each offset o of the window (the caller's (W, 3) list)
//     d  = p - c
//     v  = map at p, each index clamped into the map ('nearest', order 0)
//     w  = max(v - base, 0) * exp(-0.5 |d|^2 / sigma2)
//     c += clip(sum w d / (sum w if sum w > 0 else 1), -1, 1)   (per component)
// v - base is taken in the map's type (PTNP_MAP_T), as `raw - base` with a
// Python float base is in NumPy and CuPy; the rest in float64. NaN voxels get
// weight 0; a non-finite centre is left as it is. The block reduces the four
// sums (deterministic, no atomics) and every thread reads the new centre
// from shared memory.
extern "C" __global__ void ptnp_mean_shift(
    const PTNP_MAP_T* __restrict__ map, const int nx, const int ny, const int nz,
    const double* __restrict__ centres,   // (N, 3) voxel x y z
    const int n_atoms,
    const int* __restrict__ offsets,      // (W, 3) integer offsets x y z
    const int n_off, const PTNP_MAP_T base, const double sigma2, const int n_iter,
    double* __restrict__ out)              // (N, 3) refined centres
{
    __shared__ double shared[PTNP_MAX_WARPS * 4];
    __shared__ double total[4];
    const int atom = blockIdx.x;
    if (atom >= n_atoms) return;           // the whole block: no barrier is skipped
    double cx = centres[3 * atom], cy = centres[3 * atom + 1], cz = centres[3 * atom + 2];
    const double hx = nx - 1, hy = ny - 1, hz = nz - 1;
    for (int it = 0; it < n_iter; ++it) {
        if (!(isfinite(cx) && isfinite(cy) && isfinite(cz))) break;   // same in every thread
        const double rx = rint(cx), ry = rint(cy), rz = rint(cz);
        double acc[4] = {0.0, 0.0, 0.0, 0.0};
        for (int w = threadIdx.x; w < n_off; w += blockDim.x) {
            const double px = rx + offsets[3 * w], py = ry + offsets[3 * w + 1],
                         pz = rz + offsets[3 * w + 2];
            const double dx = px - cx, dy = py - cy, dz = pz - cz;
            const int ix = (int)fmin(fmax(px, 0.0), hx);
            const int iy = (int)fmin(fmax(py, 0.0), hy);
            const int iz = (int)fmin(fmax(pz, 0.0), hz);
            const PTNP_MAP_T v = map[((long long)iz * ny + iy) * nx + ix] - base;
            if (!(v > (PTNP_MAP_T)0)) continue;
            const double g = (double)v * exp(-0.5 * (dx * dx + dy * dy + dz * dz) / sigma2);
            acc[0] += g; acc[1] += g * dx; acc[2] += g * dy; acc[3] += g * dz;
        }
        ptnp_block_reduce<4>(acc, shared);   // thread k < 4 holds total k
        if (threadIdx.x < 4) total[threadIdx.x] = acc[0];
        __syncthreads();   // the next write to total follows the next reduce's barrier
        const double s = total[0] > 0.0 ? total[0] : 1.0;
        double sh[3] = {total[1] / s, total[2] / s, total[3] / s};
        for (int k = 0; k < 3; ++k) sh[k] = sh[k] < -1.0 ? -1.0 : (sh[k] > 1.0 ? 1.0 : sh[k]);
        cx += sh[0]; cy += sh[1]; cz += sh[2];
    }
    if (threadIdx.x == 0) {
        out[3 * atom] = cx; out[3 * atom + 1] = cy; out[3 * atom + 2] = cz;
    }
}

// Solve every atom's normal equations (P <= 7 parameters), one thread per atom: the ridged
// system (A + ridge * max diag(A) * I) beta = b by Gaussian elimination with partial pivoting
// (LAPACK's getrf/getrs order for one small matrix), then the weighted R^2 from the same sums:
// SS_res = yy - 2 beta.b + beta^T A beta, SS_tot = yy - b_0^2 / max(A_00, 1e-300). Rows with
// fewer than P + min_extra voxels, or with a non-finite solution, get NaN and ok = 0. The array
// code it replaces took ~14 launches per call (batched solve and einsums).
extern "C" __global__ void ptnp_solve_normal(
    const double* __restrict__ A, const double* __restrict__ rhs, const double* __restrict__ yy,
    const long long* __restrict__ count, const long long n, const int p, const long long min_count,
    const double ridge, double* __restrict__ beta, double* __restrict__ r2, unsigned char* __restrict__ ok)
{
    for (long long a = (long long)blockIdx.x * blockDim.x + threadIdx.x; a < n;
         a += (long long)gridDim.x * blockDim.x) {
        const double* Aa = A + a * p * p;
        const double* ba = rhs + a * p;
        double* out = beta + a * p;
        double M[7][8];
        double scale = Aa[0];
        for (int i = 1; i < p; ++i) scale = fmax(scale, Aa[i * p + i]);
        const double rid = ridge * fmax(scale, 1e-300);
        const bool solvable = count[a] >= min_count;
        for (int i = 0; i < p; ++i) {
            for (int j = 0; j < p; ++j)
                M[i][j] = solvable ? (i == j ? Aa[i * p + j] + rid : Aa[i * p + j]) : (i == j ? 1.0 : 0.0);
            M[i][p] = solvable ? ba[i] : 0.0;
        }
        for (int k = 0; k < p; ++k) {
            int piv = k;
            for (int i = k + 1; i < p; ++i)
                if (fabs(M[i][k]) > fabs(M[piv][k])) piv = i;
            if (piv != k)
                for (int j = 0; j <= p; ++j) { const double t = M[k][j]; M[k][j] = M[piv][j]; M[piv][j] = t; }
            for (int i = k + 1; i < p; ++i) {
                const double f = M[i][k] / M[k][k];
                for (int j = k + 1; j <= p; ++j) M[i][j] -= f * M[k][j];
            }
        }
        bool finite = true;
        for (int i = p - 1; i >= 0; --i) {
            double s = M[i][p];
            for (int j = i + 1; j < p; ++j) s -= M[i][j] * out[j];
            out[i] = s / M[i][i];
            finite = finite && isfinite(out[i]);
        }
        const bool good = solvable && finite;
        ok[a] = good ? 1 : 0;
        if (!good) {
            for (int i = 0; i < p; ++i) out[i] = __longlong_as_double(0x7ff8000000000000LL);
            r2[a] = __longlong_as_double(0x7ff8000000000000LL);
            continue;
        }
        double bb = 0.0, q = 0.0;
        for (int i = 0; i < p; ++i) {
            bb += out[i] * ba[i];
            double row = 0.0;
            for (int j = 0; j < p; ++j) row += Aa[i * p + j] * out[j];
            q += out[i] * row;
        }
        const double sw = fmax(Aa[0], 1e-300);
        const double ss_tot = yy[a] - ba[0] * ba[0] / sw;
        const double ss_res = yy[a] - 2.0 * bb + q;
        r2[a] = 1.0 - ss_res / fmax(ss_tot, 1e-300);
    }
}

// ptnp_linear_at: the volume at points, linearly interpolated with its edges extended: scipy's
// map_coordinates(order=1, mode="nearest"). Each coordinate is clamped to [0, n - 1]; the 8 corners'
// values are weighted in float64 (weights multiplied z, y, x in that order, no fused multiply-add)
// and the sum rounded to the volume's type. A NaN coordinate gives NaN. One thread per point;
// points (m, 3) float64 voxel x, y, z.
extern "C" __global__ void ptnp_linear_at(
    const PTNP_MAP_T* __restrict__ vol, const int nx, const int ny, const int nz,
    const double* __restrict__ xyz, const long long m, PTNP_MAP_T* __restrict__ out)
{
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < m;
         t += (long long)gridDim.x * blockDim.x) {
        const double c[3] = {xyz[3 * t + 2], xyz[3 * t + 1], xyz[3 * t]};     // z, y, x
        const int n[3] = {nz, ny, nx};
        int i0[3], i1[3];
        double f[3];
        bool bad = false;
        for (int d = 0; d < 3; ++d) {
            bad |= isnan(c[d]);
            const double cc = fmin(fmax(c[d], 0.0), (double)(n[d] - 1));
            i0[d] = (int)floor(cc);
            f[d] = cc - i0[d];
            i1[d] = i0[d] + 1 < n[d] ? i0[d] + 1 : n[d] - 1;
        }
        if (bad) {
            out[t] = (PTNP_MAP_T)(c[0] + c[1] + c[2]);   // NaN (NVRTC has no NAN macro)
            continue;
        }
        double acc = 0.0;
        for (int dz = 0; dz < 2; ++dz) {
            const double wz = dz ? f[0] : 1.0 - f[0];
            const long long z = dz ? i1[0] : i0[0];
            for (int dy = 0; dy < 2; ++dy) {
                const double wzy = __dmul_rn(wz, dy ? f[1] : 1.0 - f[1]);
                const long long y = dy ? i1[1] : i0[1];
                for (int dx = 0; dx < 2; ++dx) {
                    const double w = __dmul_rn(wzy, dx ? f[2] : 1.0 - f[2]);
                    const long long x = dx ? i1[2] : i0[2];
                    acc = __dadd_rn(acc, __dmul_rn(w, (double)vol[(z * ny + y) * nx + x]));
                }
            }
        }
        out[t] = (PTNP_MAP_T)acc;
    }
}
