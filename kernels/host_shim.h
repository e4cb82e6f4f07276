// Host shim: the CUDA built-ins the mep kernels use, defined for plain C++ so the
// kernels can be compiled for the CPU (build.rs, cargo feature `host-kernels`) and
// checked against the CPU backend without a GPU.
//
// Execution model: src/backend/cuda/host.rs runs a "launch" sequentially, one thread
// index at a time, setting the thread-local threadIdx/blockIdx/blockDim/gridDim
// below. That is exact for cooperation-free kernels (any launch shape). Kernels that
// cooperate (shared memory, __syncthreads, shuffles, atomics) are exact only when
// every cooperating group has a single thread — blockDim.x = 1 for the row kernels
// of cost.cu, a 1×1 block for reduce.cu — which is how host.rs launches them: then
// no shuffle is ever executed, __syncthreads has nothing to wait for, the per-block
// __shared__ array is private to the one thread, and atomics are plain updates.
#pragma once

#include <math.h>
#include <string.h>
#include <stdlib.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// One (running) block at a time per OS thread: thread-local static storage.
#define __shared__ static thread_local

struct mep_dim3 {
    unsigned int x, y, z;
};

inline thread_local mep_dim3 threadIdx = {0, 0, 0};
inline thread_local mep_dim3 blockIdx = {0, 0, 0};
inline thread_local mep_dim3 blockDim = {1, 1, 1};
inline thread_local mep_dim3 gridDim = {1, 1, 1};

inline void __syncthreads() {}

inline float __int_as_float(unsigned int bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

// Only a one-lane "warp" exists on the host, so a shuffle has no partner lane.
template <typename T> inline T __shfl_xor_sync(unsigned int, T v, unsigned int) {
    abort();  // unreachable: host launches use blockDim.x = 1
    return v;
}

inline float atomicAdd(float* p, float v) {
    float old = *p;
    *p = old + v;
    return old;
}
