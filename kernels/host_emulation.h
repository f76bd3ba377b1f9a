// ptnp_gpu: host (CPU) emulation of the CUDA features the ptnp kernels use.
//
// For CPU-only CI: a test compiles a kernels/*.cu file with g++ after this
// header and runs the real kernel code on the CPU, comparing it with the
// Numba twin. Blocks run one after another; the threads of a block run
// concurrently as std::threads, so __syncthreads is a std::barrier and
// function-scope __shared__ arrays can be function statics (one block alive
// at a time). Warp shuffles exchange through a per-block buffer between two
// barriers, so every thread of the block must call them together (as the
// kernels do). Atomics take a global mutex. Correct, not fast: keep inputs
// and launch sizes small.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <math.h>   // expf, cosf, sqrtf, fminf, fmaxf (the float functions at global scope)
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

using std::exp;
using std::isnan;
using std::floor;
using std::fmax;
using std::fmin;
using std::isfinite;
using std::isinf;
using std::log;
using std::max;
using std::min;
using std::rint;

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static

struct ptnp_emu_dim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local ptnp_emu_dim3 threadIdx, blockIdx;
inline ptnp_emu_dim3 blockDim, gridDim;
inline std::barrier<>* ptnp_emu_barrier = nullptr;
inline std::mutex ptnp_emu_mutex;
inline std::vector<double> ptnp_emu_exchange;

inline void __syncthreads() { ptnp_emu_barrier->arrive_and_wait(); }

inline double __shfl_down_sync(unsigned, double v, int delta)
{
    const unsigned t = threadIdx.x;
    ptnp_emu_exchange[t] = v;
    __syncthreads();
    const unsigned lane = t & 31u, src = t + (unsigned)delta;
    const double r = (lane + (unsigned)delta < 32u && src < blockDim.x) ? ptnp_emu_exchange[src] : v;
    __syncthreads();
    return r;
}

inline double atomicAdd(double* p, double v)
{
    std::lock_guard<std::mutex> g(ptnp_emu_mutex);
    const double old = *p; *p = old + v; return old;
}

inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v)
{
    std::lock_guard<std::mutex> g(ptnp_emu_mutex);
    const unsigned long long old = *p; *p = old + v; return old;
}

inline int atomicMin(int* p, int v)
{
    std::lock_guard<std::mutex> g(ptnp_emu_mutex);
    const int old = *p; if (v < old) *p = v; return old;
}

inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v)
{
    std::lock_guard<std::mutex> g(ptnp_emu_mutex);
    const unsigned long long old = *p; if (v > old) *p = v; return old;
}

// round-to-nearest arithmetic without contraction into fused multiply-adds
inline double __dmul_rn(double a, double b) { volatile double r = a * b; return r; }
inline double __dadd_rn(double a, double b) { volatile double r = a + b; return r; }
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
inline float __fdiv_rn(float a, float b) { volatile float r = a / b; return r; }

inline unsigned int __float_as_uint(float f)
{
    unsigned int u; std::memcpy(&u, &f, sizeof u); return u;
}

inline float __uint_as_float(unsigned int u)
{
    float f; std::memcpy(&f, &u, sizeof f); return f;
}

inline float __int_as_float(int i)
{
    float f; std::memcpy(&f, &i, sizeof f); return f;
}

inline double __longlong_as_double(long long i)
{
    double d; std::memcpy(&d, &i, sizeof d); return d;
}

template <typename Kernel, typename... Args>
void ptnp_emu_launch(ptnp_emu_dim3 grid, ptnp_emu_dim3 block, Kernel kernel, Args... args)
{
    gridDim = grid;
    blockDim = block;
    ptnp_emu_exchange.assign(block.x, 0.0);
    for (unsigned by = 0; by < grid.y; ++by) {
        for (unsigned bx = 0; bx < grid.x; ++bx) {
            std::barrier<> bar((std::ptrdiff_t)block.x);
            ptnp_emu_barrier = &bar;
            std::vector<std::thread> threads;
            threads.reserve(block.x);
            for (unsigned t = 0; t < block.x; ++t)
                threads.emplace_back([=] {
                    threadIdx = {t, 0, 0};
                    blockIdx = {bx, by, 0};
                    kernel(args...);
                });
            for (auto& th : threads) th.join();
        }
    }
}
