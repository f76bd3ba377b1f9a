// ptnp_gpu: map simulation from atoms, one thread block per atom.
//
// Each block owns one atom and walks the shared list of window offsets (the
// voxels within the cutoff sphere, identical for every atom); each thread
// evaluates the atom's Gaussian terms at one voxel and adds the value to the
// map with atomicAdd.
//
// Accumulation is float64 (native atomicAdd on double needs sm_60+; every
// supported card has it). float64 keeps the sum of thousands of overlapping
// windows independent of the (non-deterministic) order of the atomics to
// ~1e-15 relative, so the result matches the NumPy reference and the Numba
// twin (kernels/render_atoms_cpu.py) to far below the 1e-5 tolerance; the
// caller casts to float32 once at the end.
//
// Layouts (C order, all contiguous):
//   base    int32   (N, 3)     nearest voxel of each atom, x y z
//   frac    float64 (N, 3)     atom position minus base, voxels, x y z
//   inv6    float64 (N, T, 6)  inverse covariance per term, 1/A^2:
//                              xx yy zz xy xz yz
//   norm    float64 (N, T)     weight of each term (already normalised)
//   offsets int32   (W, 3)     window offsets, voxels, x y z
//   out     float64 (nz, ny, nx) map, accumulated in place

#ifndef PTNP_MAX_TERMS
#define PTNP_MAX_TERMS 8
#endif

extern "C" __global__ void ptnp_render_atoms(
    const int* __restrict__ base,
    const double* __restrict__ frac,
    const double* __restrict__ inv6,
    const double* __restrict__ norm,
    const int* __restrict__ offsets,
    const int n_atoms, const int n_terms, const int n_offsets,
    const int nx, const int ny, const int nz,
    const double vsx, const double vsy, const double vsz,
    double* __restrict__ out)
{
    __shared__ double s_inv[PTNP_MAX_TERMS * 6];
    __shared__ double s_norm[PTNP_MAX_TERMS];
    const int atom = blockIdx.x;
    if (atom >= n_atoms) return;
    for (int k = threadIdx.x; k < n_terms * 6; k += blockDim.x)
        s_inv[k] = inv6[(long long)atom * n_terms * 6 + k];
    for (int k = threadIdx.x; k < n_terms; k += blockDim.x)
        s_norm[k] = norm[(long long)atom * n_terms + k];
    __syncthreads();

    const int bx = base[3 * atom], by = base[3 * atom + 1], bz = base[3 * atom + 2];
    const double fx = frac[3 * atom], fy = frac[3 * atom + 1], fz = frac[3 * atom + 2];

    for (int w = blockIdx.y * blockDim.x + threadIdx.x; w < n_offsets;
         w += blockDim.x * gridDim.y) {
        const int ox = offsets[3 * w], oy = offsets[3 * w + 1], oz = offsets[3 * w + 2];
        const int ix = bx + ox, iy = by + oy, iz = bz + oz;
        if (ix < 0 || iy < 0 || iz < 0 || ix >= nx || iy >= ny || iz >= nz) continue;
        const double dx = (ox - fx) * vsx, dy = (oy - fy) * vsy, dz = (oz - fz) * vsz;
        double v = 0.0;
        for (int t = 0; t < n_terms; ++t) {
            const double* c = s_inv + 6 * t;
            const double q = c[0] * dx * dx + c[1] * dy * dy + c[2] * dz * dz
                + 2.0 * (c[3] * dx * dy + c[4] * dx * dz + c[5] * dy * dz);
            v += s_norm[t] * exp(-0.5 * q);
        }
        atomicAdd(out + ((long long)iz * ny + iy) * nx + ix, v);
    }
}

// ptnp_clear_balls: a boolean render, for "farther than r from every atom" on a grid. One thread
// per (centre, offset) pair clears mask[centre + offset] (in bounds); the offsets are the integer
// (z, y, x) steps within r, as scipy.ndimage.distance_transform_edt measures a distance with its
// sampling, so the mask left set is exactly EDT(mask of the centres) > r. Every write is a false.
extern "C" __global__ void ptnp_clear_balls(
    const long long* __restrict__ centre, const long long n, const int* __restrict__ off,
    const int n_off, const int nz, const int ny, const int nx, bool* __restrict__ mask)
{
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n * n_off;
         t += (long long)gridDim.x * blockDim.x) {
        const long long a = t / n_off;
        const int w = (int)(t - a * n_off);
        const long long z = centre[3 * a] + off[3 * w];
        const long long y = centre[3 * a + 1] + off[3 * w + 1];
        const long long x = centre[3 * a + 2] + off[3 * w + 2];
        if (z < 0 || y < 0 || x < 0 || z >= nz || y >= ny || x >= nx) continue;
        mask[(z * ny + y) * nx + x] = false;
    }
}
