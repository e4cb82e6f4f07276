// Host shim: the CUDA built-ins the mep kernels use, defined for plain C++ so the
// kernels can be compiled for the CPU (build.rs, cargo feature `host-kernels`) and run
// with CUDA's execution model by kernels/host_runner.cpp.
//
// Execution model (see host_runner.cpp): every CUDA thread of a block is a fiber with
// its own stack, all fibers of a block run on one OS thread, interleaved in a random
// (seeded) order. `__syncthreads()` is a real block barrier, `__shfl_xor_sync` a real
// warp exchange (all lanes named by the mask must arrive), `atomicAdd` a
// read-modify-write that may be preempted around but never inside. Because a
// block's fibers share one OS thread, `__shared__` (static thread_local) storage is
// shared by exactly the threads of the running block, as on the GPU.
#pragma once

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// One block runs at a time per OS thread, so per-OS-thread static storage is
// per-block storage.
#define __shared__ static thread_local

struct mep_dim3 {
    unsigned int x, y, z;
};

// The running fiber's indices: the scheduler sets them before resuming a fiber.
inline thread_local mep_dim3 threadIdx = {0, 0, 0};
inline thread_local mep_dim3 blockIdx = {0, 0, 0};
inline thread_local mep_dim3 blockDim = {1, 1, 1};
inline thread_local mep_dim3 gridDim = {1, 1, 1};

// Implemented by kernels/host_runner.cpp.
extern "C" void mep_rt_syncthreads();
extern "C" unsigned long long mep_rt_shfl_xor(unsigned int mask, unsigned long long bits,
                                             unsigned int lane_mask);
extern "C" void mep_rt_preempt_point();

inline void __syncthreads() { mep_rt_syncthreads(); }

inline float __int_as_float(unsigned int bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

inline double __longlong_as_double(long long bits) {
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

// Warp shuffle of any 4- or 8-byte value, by its bits.
template <typename T> inline T __shfl_xor_sync(unsigned int mask, T v, unsigned int lane_mask) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    unsigned long long bits = 0;
    memcpy(&bits, &v, sizeof v);
    bits = mep_rt_shfl_xor(mask, bits, lane_mask);
    T out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

// Atomic with respect to the other fibers (none runs inside it); the preemption
// points before and after let other threads' updates interleave between atomics.
inline float atomicAdd(float* p, float v) {
    mep_rt_preempt_point();
    float old = *p;
    *p = old + v;
    mep_rt_preempt_point();
    return old;
}

inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
    mep_rt_preempt_point();
    unsigned int old = *p;
    *p = old + v;
    mep_rt_preempt_point();
    return old;
}

// Blocks run one after another on the host, and a block's fibers share one OS thread:
// every write is visible to every later read, so the fence orders nothing more. It is
// a preemption point, as on the GPU other threads may run around it.
inline void __threadfence() { mep_rt_preempt_point(); }
