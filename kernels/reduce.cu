// Reductions: column sums (bias gradients) and the sum of squares (norms).
#include "common.cuh"

// Most threads per block the reductions use (sizes their shared memory).
#define MEP_REDUCE_THREADS 256

// col_sum: y[c] ← α·Σ_r x[r, c] + β·y[c] (x rows×cols row-major; β = 0 ignores y).
// Launch: block (32, 8) — threadIdx.x picks a column of a 32-wide column tile
// (coalesced reads), threadIdx.y strides over the rows; the 8 partial sums are
// reduced in shared memory. Grid-stride over column tiles (gridDim.x tiles at a
// time). blockDim.x·blockDim.y ≤ 256 and blockDim.y a power of two.
extern "C" __global__ void col_sum(u64 rows, u32 cols, float alpha, const float* __restrict__ x,
                                   float beta, float* __restrict__ y) {
    __shared__ float sh[MEP_REDUCE_THREADS];
    u32 tx = threadIdx.x, ty = threadIdx.y;
    for (u64 c0 = (u64)blockIdx.x * blockDim.x; c0 < cols; c0 += (u64)gridDim.x * blockDim.x) {
        u64 c = c0 + tx;
        float s = 0.0f;
        if (c < cols)
            for (u64 r = ty; r < rows; r += blockDim.y) s += x[r * cols + c];
        sh[ty * blockDim.x + tx] = s;
        __syncthreads();
        for (u32 h = blockDim.y / 2; h > 0; h >>= 1) {
            if (ty < h) sh[ty * blockDim.x + tx] += sh[(ty + h) * blockDim.x + tx];
            __syncthreads();
        }
        if (ty == 0 && c < cols) {
            float t = sh[tx];
            y[c] = beta == 0.0f ? alpha * t : alpha * t + beta * y[c];
        }
        __syncthreads();
    }
}

// Deterministic reductions: no floating-point atomics, so a result is the same bit for
// bit on every run (atomicAdd order depends on the schedule). One partial per block
// (each thread sums its grid-stride share in index order, then the block tree), then
// the partials added in a fixed order: by `reduce_partials` in a second launch, or by
// the last block of the same launch (`sum_sq`). Both depend only on the launch shape,
// which the host fixes.

// The tail of the one-launch sums (sum_sq, nesterov_sum_sq): the block's sum s (of
// its grid-stride share, each thread in index order, then the block tree) goes to
// partial[blockIdx.x]; the last block to finish (an atomic ticket, counted after a
// memory fence) then adds the partials in block order exactly as reduce_partials
// does, so the result is the two-pass one bit for bit whichever block finishes last,
// writes it to out[0] and re-arms the ticket (0) for the next launch. *ticket must be 0
// at the launch. Called by every thread of the block.
__device__ __forceinline__ void mep_sum_last_block(float s, float* sh, u32* last, float* partial, u32* ticket,
                                                   float* __restrict__ out) {
    s = mep_block_sum(s, sh);
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = s;
        __threadfence();  // the partial is visible before the ticket counts it
        *last = atomicAdd(ticket, 1u) == gridDim.x - 1 ? 1u : 0u;
    }
    __syncthreads();  // also: sh is free again
    if (*last == 0u) return;
    __threadfence();
    const volatile float* done = partial;  // written by other blocks: no cached copies
    float t = 0.0f;
    for (u32 b = threadIdx.x; b < gridDim.x; b += blockDim.x) t += done[b];
    t = mep_block_sum(t, sh);
    if (threadIdx.x == 0) {
        out[0] = t;
        *ticket = 0u;
    }
}

// sum_sq: out[0] ← Σ x² in one launch (see mep_sum_last_block).
// Launch: 1-D blocks of 256 threads (a power of two ≤ 256), any grid.
extern "C" __global__ void sum_sq(u64 n, const float* __restrict__ x, float* partial, u32* ticket,
                                  float* __restrict__ out) {
    __shared__ float sh[MEP_REDUCE_THREADS];
    __shared__ u32 last;
    float s = 0.0f;
    MEP_GRID_STRIDE(i, n) {
        float v = x[i];
        s += v * v;
    }
    mep_sum_last_block(s, sh, &last, partial, ticket, out);
}

// nesterov_sum_sq: nesterov (m ← 1·g + μ·m, u ← 1·g + μ·m) and out[0] ← Σ u², in one
// launch. On the launch shape of sum_sq each thread visits the same elements in the
// same order, so out[0] is sum_sq(u)'s bit for bit.
// Launch: 1-D blocks of 256 threads (a power of two ≤ 256), any grid.
extern "C" __global__ void nesterov_sum_sq(u64 n, float mu, const float* __restrict__ g, float* __restrict__ m,
                                           float* __restrict__ u, float* partial, u32* ticket,
                                           float* __restrict__ out) {
    __shared__ float sh[MEP_REDUCE_THREADS];
    __shared__ u32 last;
    float s = 0.0f;
    MEP_GRID_STRIDE(i, n) {
        float gi = g[i];
        float mi = 1.0f * gi + mu * m[i];
        float ui = 1.0f * gi + mu * mi;
        m[i] = mi;
        u[i] = ui;
        s += ui * ui;
    }
    mep_sum_last_block(s, sh, &last, partial, ticket, out);
}

// reduce_partials: for k < width, t_k = Σ_{b < count} partial[b·width + k], then
// out[k] ← t_k, or out[k] ← out[k] + t_k when accumulate ≠ 0.
// Launch: one block of 256 threads (a power of two ≤ 256).
extern "C" __global__ void reduce_partials(u32 count, u32 width, const float* __restrict__ partial,
                                           u32 accumulate, float* __restrict__ out) {
    __shared__ float sh[MEP_REDUCE_THREADS];
    for (u32 k = 0; k < width; k++) {
        float s = 0.0f;
        for (u32 b = threadIdx.x; b < count; b += blockDim.x) s += partial[(u64)b * width + k];
        s = mep_block_sum(s, sh);
        if (threadIdx.x == 0) out[k] = accumulate ? out[k] + s : s;
        __syncthreads();  // sh is reused for the next k
    }
}
