// Deliberately broken kernels, compiled for the host only (build.rs, feature
// `host-kernels`; never for the GPU): tests/host_kernels.rs checks that the runner
// of kernels/host_runner.cpp reports each of them, i.e. that it can fail.
#include "common.cuh"

// sum_sq with mep_block_sum's barriers removed: threads read partial sums that other
// threads have not written yet. out[0] ← Σ x² (one block, like sum_sq's block sum).
extern "C" __global__ void broken_sum_nosync(u64 n, const float* __restrict__ x,
                                             float* __restrict__ out) {
    __shared__ float sh[256];
    float s = 0.0f;
    MEP_GRID_STRIDE(i, n) { s += x[i] * x[i]; }
    u32 t = threadIdx.x;
    sh[t] = s;
    for (u32 h = blockDim.x / 2; h > 0; h >>= 1) {
        if (t < h) sh[t] += sh[t + h];
    }
    if (t == 0) atomicAdd(out, sh[0]);
}

// A lane sum whose mask leaves out half the warp.
extern "C" __global__ void broken_shuffle_mask(u64 n, const float* __restrict__ x,
                                               float* __restrict__ out) {
    float v = threadIdx.x < n ? x[threadIdx.x] : 0.0f;
    for (u32 off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0x0000ffffu, v, off);
    if (threadIdx.x == 0) out[0] = v;
}

// Odd threads pass one barrier more than even ones.
extern "C" __global__ void broken_divergent_barrier(u64 n, float* __restrict__ y) {
    if (threadIdx.x % 2) __syncthreads();
    MEP_GRID_STRIDE(i, n) { y[i] = 1.0f; }
}

// The upper half of the block exits before a barrier the lower half waits at.
extern "C" __global__ void broken_early_exit(u64 n, float* __restrict__ y) {
    if (threadIdx.x >= blockDim.x / 2) return;
    __syncthreads();
    MEP_GRID_STRIDE(i, n) { y[i] = 1.0f; }
}

// The pre-two-pass sum_sq: one float atomicAdd per block, so the sum depends on the
// order the blocks finish in. out[0] += Σ x² (the caller zeroes out[0]).
extern "C" __global__ void broken_sum_atomic(u64 n, const float* __restrict__ x,
                                             float* __restrict__ out) {
    __shared__ float sh[256];
    float s = 0.0f;
    MEP_GRID_STRIDE(i, n) { s += x[i] * x[i]; }
    s = mep_block_sum(s, sh);
    if (threadIdx.x == 0) atomicAdd(out, s);
}
