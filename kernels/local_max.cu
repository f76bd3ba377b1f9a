// ptnp_gpu: local maxima of a volume, one pass.
//
// out[v] = (mask is null or mask[v]) and no in-bounds voxel of v's 3x3x3
// neighbourhood is larger than vol[v]; NaN voxels are never maxima (a NaN
// neighbour compares false and is ignored). For finite values this equals
// vol == maximum_filter(vol, size=3) with mode "nearest" (edges repeat
// in-bounds voxels) and with mode "constant", cval -inf: the test that the
// array code ran as three filter passes, a compare and an and, with a
// full-size temporary. One thread per voxel (grid-stride); voxels outside
// the mask cost one load.
//
// The volume's element type comes from a define the loader prepends:
//   PTNP_MAP_T (float, double).

#ifndef PTNP_MAP_T
#define PTNP_MAP_T float
#endif

extern "C" __global__ void ptnp_local_max(
    const PTNP_MAP_T* __restrict__ vol, const bool* __restrict__ mask, const int nx, const int ny,
    const int nz, const int use_mask, bool* __restrict__ out)
{
    const long long n = (long long)nx * ny * nz;
    for (long long v = (long long)blockIdx.x * blockDim.x + threadIdx.x; v < n;
         v += (long long)gridDim.x * blockDim.x) {
        if (use_mask && !mask[v]) {
            out[v] = false;
            continue;
        }
        const int x = (int)(v % nx);
        const int y = (int)((v / nx) % ny);
        const int z = (int)(v / ((long long)nx * ny));
        const PTNP_MAP_T c = vol[v];
        bool is_max = (c == c);                      // NaN: never a maximum
        for (int dz = -1; dz <= 1 && is_max; ++dz) {
            const int zz = z + dz;
            if (zz < 0 || zz >= nz) continue;
            for (int dy = -1; dy <= 1 && is_max; ++dy) {
                const int yy = y + dy;
                if (yy < 0 || yy >= ny) continue;
                const long long row = ((long long)zz * ny + yy) * nx;
                for (int dx = -1; dx <= 1; ++dx) {
                    const int xx = x + dx;
                    if (xx < 0 || xx >= nx) continue;
                    if (vol[row + xx] > c) {
                        is_max = false;
                        break;
                    }
                }
            }
        }
        out[v] = is_max;
    }
}
