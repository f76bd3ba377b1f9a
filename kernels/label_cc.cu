// ptnp_gpu: 26-connected components of a volume, numbered as scipy.ndimage.label numbers them.
//
// Union-find over the voxels (the lock-free scheme of Playne & Hawick, IEEE TPDS 29, 2018):
// every foreground voxel starts as its own root, L[i] = i, and joins the components of its
// 13 backward neighbours (the half of its 3x3x3 neighbourhood that comes earlier in raster
// order) by linking the larger of two roots to the smaller with atomicMin. Parents are
// always smaller than their children, so the root of a component ends as its smallest flat
// index, the voxel a raster scan meets first; numbering the roots in raster order gives
// scipy's labels 1..n exactly. Launches, in order:
//
//   ptnp_cc_init_above   L[i] = i where the voxel is foreground, -1 elsewhere, for a stack
//                        of nb blocks of pz planes: plane z of block b is foreground where
//                        z < nz and vol[z, y, x] > t[b] (nz planes of data; the pz - nz
//                        empty planes after each block keep the blocks' components apart);
//   ptnp_cc_init_mask    the same from a boolean mask;
//   ptnp_cc_merge        one thread per voxel: the unions with its backward neighbours;
//   ptnp_cc_count        one tile of blockDim.x * items voxels per block (items consecutive
//                        voxels per thread): each foreground voxel's parent replaced by its
//                        root (every such write is a root, so a concurrent reader still
//                        meets an ancestor), and the tile's number of roots in tiles[block];
//   (the caller)         ends = the inclusive prefix sum of tiles; n = ends[last];
//   ptnp_cc_number       each root's label: roots in earlier tiles + roots earlier in its
//                        tile + 1, into out[root];
//   ptnp_cc_finish       out[i] = out[L[i]] for the other foreground voxels, 0 elsewhere.
//
// Also here, for the box a labelling is cropped to: ptnp_occupancy_above, the three
// occupancy profiles of vol > t (prof[z], prof[nz + y], prof[nz + ny + x] set to 1 where a
// plane holds a voxel above t; the caller zeroes prof): one pass, no mask, every write a 1.
//
// Flat indices are int: the caller keeps the volume under 2^31 voxels. The type of the
// thresholded volume comes from a define the loader prepends: PTNP_MAP_T (float, double).

#ifndef PTNP_MAP_T
#define PTNP_MAP_T float
#endif

#define PTNP_CC_MAX_BLOCK 1024

extern "C" __global__ void ptnp_cc_init_above(
    const PTNP_MAP_T* __restrict__ vol, const PTNP_MAP_T* __restrict__ t, const int nb, const int pz,
    const int nz, const int ny, const int nx, int* __restrict__ L)
{
    const long long plane = (long long)ny * nx;
    const long long n = (long long)nb * pz * plane;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const int q = (int)i / (int)plane;              // the plane in the stack (int: n < 2^31)
        const int b = q / pz, z = q - b * pz;
        L[i] = (z < nz && vol[z * plane + (i - q * plane)] > t[b]) ? (int)i : -1;
    }
}

extern "C" __global__ void ptnp_cc_init_mask(const bool* __restrict__ mask, const long long n,
                                             int* __restrict__ L)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        L[i] = mask[i] ? (int)i : -1;
}

// the root of a; the forest may change under the reader (merge), hence the volatile loads
__device__ __forceinline__ int ptnp_cc_root(const volatile int* L, int a)
{
    int p = L[a];
    while (p != a) {
        a = p;
        p = L[a];
    }
    return a;
}

// join the trees of a and b: link the larger root to the smaller; when another thread
// relinked that root first (atomicMin saw an other parent), go on from that parent
__device__ __forceinline__ void ptnp_cc_union(int* L, int a, int b)
{
    for (;;) {
        a = ptnp_cc_root(L, a);
        b = ptnp_cc_root(L, b);
        if (a == b) return;
        if (a < b) {                                     // link the larger root (a) to the smaller
            const int s = a;
            a = b;
            b = s;
        }
        const int old = atomicMin(&L[a], b);
        if (old == a) return;
        a = old;
    }
}

extern "C" __global__ void ptnp_cc_merge(int* L, const long long n, const int ny, const int nx)
{
    const long long plane = (long long)ny * nx;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        if (((const volatile int*)L)[i] < 0) continue;      // background (foreground stays >= 0)
        const int row = (int)i / nx;                    // int arithmetic: n < 2^31
        const int x = (int)i - row * nx;
        const int z = row / ny;
        const int y = row - z * ny;
        for (int dz = -1; dz <= 0; ++dz) {
            if (z + dz < 0) continue;
            for (int dy = -1; dy <= 1; ++dy) {
                if (y + dy < 0 || y + dy >= ny || (dz == 0 && dy > 0)) continue;
                for (int dx = -1; dx <= 1; ++dx) {
                    if (x + dx < 0 || x + dx >= nx || (dz == 0 && dy == 0 && dx >= 0)) continue;
                    const long long j = i + dz * plane + dy * nx + dx;
                    if (((const volatile int*)L)[j] >= 0) ptnp_cc_union(L, (int)i, (int)j);
                }
            }
        }
    }
}

// the block's exclusive prefix sum of c (one value per thread; Hillis-Steele in shared
// memory); every thread of the block must call it
__device__ __forceinline__ int ptnp_cc_block_exclusive(const int c)
{
    __shared__ int part[PTNP_CC_MAX_BLOCK];
    const int t = (int)threadIdx.x;
    part[t] = c;
    __syncthreads();
    for (int off = 1; off < (int)blockDim.x; off <<= 1) {
        const int v = t >= off ? part[t - off] : 0;
        __syncthreads();
        part[t] += v;
        __syncthreads();
    }
    const int r = part[t] - c;
    __syncthreads();                                     // part is reused by the next call
    return r;
}

extern "C" __global__ void ptnp_cc_count(int* L, const long long n, const int items,
                                         int* __restrict__ tiles)
{
    const long long first = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * items;
    int c = 0;
    for (long long i = first; i < first + items && i < n; ++i) {
        const int p = L[i];
        if (p < 0) continue;
        if (p == (int)i) {
            ++c;
        } else {
            const int r = ptnp_cc_root(L, p);
            if (r != p) L[i] = r;
        }
    }
    const int before = ptnp_cc_block_exclusive(c);
    if (threadIdx.x == blockDim.x - 1) tiles[blockIdx.x] = before + c;
}

extern "C" __global__ void ptnp_cc_number(const int* __restrict__ L, const long long n, const int items,
                                          const int* __restrict__ ends, int* __restrict__ out)
{
    const long long first = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * items;
    int c = 0;
    for (long long i = first; i < first + items && i < n; ++i) c += L[i] == (int)i;
    int label = (blockIdx.x == 0 ? 0 : ends[blockIdx.x - 1]) + ptnp_cc_block_exclusive(c);
    for (long long i = first; i < first + items && i < n; ++i)
        if (L[i] == (int)i) out[i] = ++label;
}

extern "C" __global__ void ptnp_cc_finish(const int* __restrict__ L, const long long n, int* out)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const int p = L[i];
        if (p < 0) out[i] = 0;
        else if (p != (int)i) out[i] = out[p];
    }
}

extern "C" __global__ void ptnp_occupancy_above(const PTNP_MAP_T* __restrict__ vol, const int nz,
                                                const int ny, const int nx, const PTNP_MAP_T t,
                                                int* __restrict__ prof)
{
    const long long plane = (long long)ny * nx;
    const long long n = nz * plane;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        if (!(vol[i] > t)) continue;
        const int row = (int)i / nx;                    // int arithmetic: n < 2^31
        const int x = (int)i - row * nx;
        const int z = row / ny;
        const int y = row - z * ny;
        if (!prof[z]) prof[z] = 1;
        if (!prof[nz + y]) prof[nz + y] = 1;
        if (!prof[nz + ny + x]) prof[nz + ny + x] = 1;
    }
}
