// Cost kernels on the output o (rows×classes): gradient, loss/accuracy statistics,
// argmax. Row-wise: each "warp row" (the blockDim.x lanes sharing threadIdx.y; 32 on
// the GPU, a full warp) handles one row at a time, lanes striding over the classes,
// so any class count works. Launch: block (32, 8), grid-stride over rows in steps
// of gridDim.x·blockDim.y.
#include "common.cuh"

#define MEP_ROW_LOOP(r, rows)                                                        \
    for (u64 r = (u64)blockIdx.x * blockDim.y + threadIdx.y; r < (u64)(rows);         \
         r += (u64)gridDim.x * blockDim.y)

// log Σ_k exp(o_k) of one row, numerically stable (max + log Σ exp(o − max)).
__device__ __forceinline__ float mep_row_lse(const float* o, u32 classes) {
    float mx = mep_neg_inf();
    for (u32 k = threadIdx.x; k < classes; k += blockDim.x) mx = fmaxf(mx, o[k]);
    mx = mep_lanes_max(mx);
    float s = 0.0f;
    for (u32 k = threadIdx.x; k < classes; k += blockDim.x) s += expf(o[k] - mx);
    s = mep_lanes_sum(s);
    return mx + logf(s);
}

// (max, first argmax) of one row, identical in every lane.
__device__ __forceinline__ u32 mep_row_argmax(const float* o, u32 classes) {
    float best = mep_neg_inf();
    u32 arg = 0xffffffffu;
    for (u32 k = threadIdx.x; k < classes; k += blockDim.x) {
        float v = o[k];
        if (arg == 0xffffffffu || v > best) {
            best = v;
            arg = k;
        }
    }
    mep_lanes_argmax(&best, &arg);
    return arg;
}

// cost_grad: g ← ∂C/∂o per row (not divided by the batch):
//   cross-entropy (loss 0): softmax(o) − q, q the ε-smoothed one-hot of the label;
//   squared error (loss 1): o − onehot(label).
// Launch: block (32, 8), see the top of the file.
extern "C" __global__ void cost_grad(u64 rows, u32 classes, const float* __restrict__ o,
                                     const u32* __restrict__ labels, u32 loss, float eps,
                                     float* __restrict__ g) {
    MEP_ROW_LOOP(r, rows) {
        const float* orow = o + r * classes;
        float* grow = g + r * classes;
        u32 y = labels[r];
        if (loss == MEP_LOSS_CE) {
            float lse = mep_row_lse(orow, classes);
            for (u32 k = threadIdx.x; k < classes; k += blockDim.x)
                grow[k] = expf(orow[k] - lse) - mep_target(k, y, eps, classes);
        } else {
            for (u32 k = threadIdx.x; k < classes; k += blockDim.x)
                grow[k] = orow[k] - (k == y ? 1.0f : 0.0f);
        }
    }
}

// cost_stats_partial: the block's share of the statistics, deterministically (no
// atomics; reduce_partials of reduce.cu adds the blocks in a fixed order):
//   partial[2b] = Σ C(o, y) and partial[2b + 1] = #(argmax(o) == y) over the rows of
//   block b, where cross-entropy C = Σ_k q_k (lse − o_k), squared error
//   C = ½ Σ_k (o_k − onehot_k)². Each warp row sums its rows in grid-stride order,
//   then thread (0, 0) adds the warp rows in order. With accumulate ≠ 0 (a grid of one
//   block: small batches) the block's sums are added to partial[0] and partial[1]
//   instead, which is then the statistics buffer itself: what reduce_partials would
//   leave there, without its launch.
// Launch: block (32, 8), see the top of the file; blockDim.y ≤ 32.
extern "C" __global__ void cost_stats_partial(u64 rows, u32 classes, const float* __restrict__ o,
                                              const u32* __restrict__ labels, u32 loss, float eps,
                                              u32 accumulate, float* __restrict__ partial) {
    __shared__ float sh_cost[32];
    __shared__ float sh_hits[32];
    float cost = 0.0f, hits = 0.0f;
    MEP_ROW_LOOP(r, rows) {
        const float* orow = o + r * classes;
        u32 y = labels[r];
        float c = 0.0f;
        if (loss == MEP_LOSS_CE) {
            float lse = mep_row_lse(orow, classes);
            for (u32 k = threadIdx.x; k < classes; k += blockDim.x)
                c += mep_target(k, y, eps, classes) * (lse - orow[k]);
        } else {
            for (u32 k = threadIdx.x; k < classes; k += blockDim.x) {
                float d = orow[k] - (k == y ? 1.0f : 0.0f);
                c += 0.5f * d * d;
            }
        }
        c = mep_lanes_sum(c);
        u32 arg = mep_row_argmax(orow, classes);
        cost += c;
        hits += arg == y ? 1.0f : 0.0f;
    }
    if (threadIdx.x == 0) {
        sh_cost[threadIdx.y] = cost;
        sh_hits[threadIdx.y] = hits;
    }
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0) {
        float tc = 0.0f, th = 0.0f;
        for (u32 w = 0; w < blockDim.y; w++) {
            tc += sh_cost[w];
            th += sh_hits[w];
        }
        if (accumulate) {
            partial[0] = partial[0] + tc;
            partial[1] = partial[1] + th;
        } else {
            partial[2 * (u64)blockIdx.x] = tc;
            partial[2 * (u64)blockIdx.x + 1] = th;
        }
    }
}

// argmax: out[r] = first index of the maximum of row r.
// Launch: block (32, 8), see the top of the file.
extern "C" __global__ void argmax(u64 rows, u32 classes, const float* __restrict__ o,
                                  u32* __restrict__ out) {
    MEP_ROW_LOOP(r, rows) {
        u32 arg = mep_row_argmax(o + r * classes, classes);
        if (threadIdx.x == 0) out[r] = arg;
    }
}
