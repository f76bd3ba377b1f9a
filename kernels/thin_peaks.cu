// ptnp_gpu: non-maximum suppression of peaks over their close pairs, one launch.
//
// Given the pairs (i[p], j[p]) of peaks closer than a separation, peak values
// and optionally a group per peak (pairs of different groups are ignored), a
// peak is kept when no kept peak of its pairs is higher (ties: the lower index
// is higher). The fixed point is found in rounds, each from the previous
// round's kept set:
//
//     suppressed[lo] = 1 for every pair whose higher peak hi is kept;
//     stop when kept == !suppressed; else kept = !suppressed;
//
// at most max_rounds rounds, as the array code did with one host read per
// round. Here one block runs every round in shared flags and barriers: no host
// read, one launch. The result depends on neither thread count nor order
// (every write in a round writes the same value).

extern "C" __global__ void ptnp_thin_peaks(
    const long long* __restrict__ pi, const long long* __restrict__ pj, const long long n_pairs,
    const double* __restrict__ value, const long long* __restrict__ group, const int use_group,
    const long long n, const int max_rounds,
    unsigned char* __restrict__ kept, unsigned char* __restrict__ sup)
{
    __shared__ int changed;
    const long long t0 = threadIdx.x, step = blockDim.x;
    for (long long i = t0; i < n; i += step) kept[i] = 1;
    __syncthreads();
    for (int round = 0; round < max_rounds; ++round) {
        for (long long i = t0; i < n; i += step) sup[i] = 0;
        if (t0 == 0) changed = 0;
        __syncthreads();
        for (long long p = t0; p < n_pairs; p += step) {
            const long long a = pi[p], b = pj[p];
            if (use_group && group[a] != group[b]) continue;
            // a is the lower peak: smaller value, or an equal value and the larger index
            const bool a_lower = value[a] < value[b] || (value[a] == value[b] && a > b);
            const long long lo = a_lower ? a : b, hi = a_lower ? b : a;
            if (kept[hi]) sup[lo] = 1;
        }
        __syncthreads();
        for (long long i = t0; i < n; i += step)
            if ((sup[i] == 0) != (kept[i] != 0)) changed = 1;
        __syncthreads();
        if (!changed) break;          // every thread reads the same flag
        for (long long i = t0; i < n; i += step) kept[i] = sup[i] ? 0 : 1;
        __syncthreads();
    }
}
