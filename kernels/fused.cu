// Fused settling: a whole nudged phase of the layered energy (layered_nudged_phase,
// optionally with the free phase before it: the forward pass and each sample's loss
// statistics), or all the sweeps of a Hopfield phase (hopfield_settle_phase), in one
// launch, for networks whose coupled layers are small (the seed's output layer: W_2
// is 10×128).
//
// Each block settles one sample (row): its states (for the layered energy: the free
// state s⋆ and the deviations u = s − s⋆, Δa, as src/ep/layered.rs's perturbation
// form), errors e_l, feedbacks r_l and the cost gradient dc live in shared memory for
// all `steps` sweeps, and the couplings W_2 … W_L are read from global memory (they
// stay in L1).
// The arithmetic is the one src/ep/layered.rs (nudged_phase: backward_errors,
// relax_forward, then errors) and src/ep/hopfield.rs (settle) issue primitive by
// primitive, operation for operation; only the order of the sums inside the
// matrix-vector products and the softmax differs from cuBLAS's and cost_grad's. The
// two kernels share their set-up, state transfers, cost gradient and matrix-vector
// products (the mep_fused_* helpers below).
//
// Launch: grid = rows blocks (one per sample), block = MEP_FUSED_THREADS threads
// (1-D). Limits (checked by the host, src/backend/cuda/fused.rs): depth ≤ 4,
// Σ_l n_l ≤ MEP_FUSED_UNITS.
#include "common.cuh"

#define MEP_FUSED_UNITS 2048
#define MEP_FUSED_THREADS 128
#define MEP_FUSED_MAX_DEPTH 4

// Max over the block (deterministic: fixed tree), with barriers on both sides as
// mep_block_sum_all; `sh` holds blockDim.x floats.
__device__ __forceinline__ float mep_fused_max(float v, float* sh) {
    u32 t = threadIdx.x;
    __syncthreads();
    sh[t] = v;
    __syncthreads();
    for (u32 s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] = fmaxf(sh[t], sh[t + s]);
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

// Σ_k w[k]·x[k] over k < n by one warp: lane-strided partial sums, then a butterfly
// (every lane gets the sum). The warp must be converged.
__device__ __forceinline__ float mep_fused_dot(const float* w, const float* x, u32 n, u32 lane) {
    float acc = 0.0f;
    for (u32 k = lane; k < n; k += 32) acc += w[k] * x[k];
    for (u32 o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    return acc;
}

// ---- helpers of the two phase kernels (one block per row, state in shared memory) ----

// A fused phase's network, gathered from the kernel's argument slots: depth L, each
// block's width n[l], activation chain act[l], coupling W[l] and bias B[l], and where
// each block starts in the shared state arrays (off[l]; off[L] = Σ_l n_l). Slots
// l ≥ L have n[l] = 0. Block 1's drive is p0 = W_1 x itself (the clamped input's), so
// W[0] is never read.
struct MepFusedNet {
    u32 L, last;
    u32 n[MEP_FUSED_MAX_DEPTH];
    u32 act[MEP_FUSED_MAX_DEPTH];
    const float* W[MEP_FUSED_MAX_DEPTH];
    const float* B[MEP_FUSED_MAX_DEPTH];
    const float* p0;
    u32 off[MEP_FUSED_MAX_DEPTH + 1];
};

// The MepFusedNet of the kernels' common leading arguments (depth, n1..n4, act1..act4,
// w2..w4, b1..b4, p0).
__device__ __forceinline__ MepFusedNet mep_fused_net(u32 depth, u32 n1, u32 n2, u32 n3, u32 n4,
                                                     u32 act1, u32 act2, u32 act3, u32 act4,
                                                     const float* w2, const float* w3,
                                                     const float* w4, const float* b1,
                                                     const float* b2, const float* b3,
                                                     const float* b4, const float* p0) {
    MepFusedNet net;
    net.L = depth;
    net.last = depth - 1;
    net.n[0] = n1, net.n[1] = n2, net.n[2] = n3, net.n[3] = n4;
    net.act[0] = act1, net.act[1] = act2, net.act[2] = act3, net.act[3] = act4;
    net.W[0] = p0, net.W[1] = w2, net.W[2] = w3, net.W[3] = w4;  // W[0] is never read
    net.B[0] = b1, net.B[1] = b2, net.B[2] = b3, net.B[3] = b4;
    net.p0 = p0;
    net.off[0] = 0;
    for (u32 l = 0; l < MEP_FUSED_MAX_DEPTH; l++)
        net.off[l + 1] = net.off[l] + (l < depth ? net.n[l] : 0u);
    return net;
}

// sh[off[l] + j] ← g[l][row, j] for every block l and unit j (a thread per unit).
__device__ __forceinline__ void mep_fused_load(const MepFusedNet& net, const float* const* g, u64 row,
                                               float* sh) {
    for (u32 l = 0; l < net.L; l++)
        for (u32 j = threadIdx.x; j < net.n[l]; j += blockDim.x)
            sh[net.off[l] + j] = g[l][row * net.n[l] + j];
}

// g[l][row, j] ← sh[off[l] + j] for every block l and unit j (a thread per unit).
__device__ __forceinline__ void mep_fused_store(const MepFusedNet& net, const float* sh, u64 row,
                                                float* const* g) {
    for (u32 l = 0; l < net.L; l++)
        for (u32 j = threadIdx.x; j < net.n[l]; j += blockDim.x)
            g[l][row * net.n[l] + j] = sh[net.off[l] + j];
}

// log Σ_k exp(o_k) of one output, numerically stable (max + log Σ exp(o − max)), by
// block reductions: every thread of the block must call it; all get the result.
__device__ __forceinline__ float mep_fused_lse(const float* o, u32 classes, float* sh_red) {
    const u32 tid = threadIdx.x, nt = blockDim.x;
    float mx = mep_neg_inf();
    for (u32 k = tid; k < classes; k += nt) mx = fmaxf(mx, o[k]);
    mx = mep_fused_max(mx, sh_red);
    float se = 0.0f;
    for (u32 k = tid; k < classes; k += nt) se += expf(o[k] - mx);
    return mx + logf(mep_block_sum_all(se, sh_red));
}

// dc[k] = ∂C/∂o_k (k < classes) at the output o for label y: softmax(o) − q (q the
// label-smoothed target; cross-entropy) or o − onehot(y) (squared error). Every thread
// of the block must call it (the softmax's max and sum are block reductions); each
// thread writes the dc[k] with k ≡ threadIdx.x (mod blockDim.x), so it may read those
// at once, and the others after a barrier.
__device__ __forceinline__ void mep_fused_cost_grad(const float* o, u32 classes, u32 y, u32 loss,
                                                    float eps, float* dc, float* sh_red) {
    const u32 tid = threadIdx.x, nt = blockDim.x;
    if (loss == MEP_LOSS_CE) {
        const float lse = mep_fused_lse(o, classes, sh_red);
        for (u32 k = tid; k < classes; k += nt)
            dc[k] = expf(o[k] - lse) - mep_target(k, y, eps, classes);
    } else {
        for (u32 k = tid; k < classes; k += nt) dc[k] = o[k] - (k == y ? 1.0f : 0.0f);
    }
}

// The cost C(o, y) of one output (block reductions: every thread of the block must
// call it; all get the result) as cost_stats_partial computes it: cross-entropy
// Σ_k q_k (lse − o_k), q the label-smoothed target, or squared error ½‖o − onehot‖².
__device__ __forceinline__ float mep_fused_cost(const float* o, u32 classes, u32 y, u32 loss,
                                                float eps, float* sh_red) {
    const u32 tid = threadIdx.x, nt = blockDim.x;
    float c = 0.0f;
    if (loss == MEP_LOSS_CE) {
        const float lse = mep_fused_lse(o, classes, sh_red);
        for (u32 k = tid; k < classes; k += nt) c += mep_target(k, y, eps, classes) * (lse - o[k]);
    } else {
        for (u32 k = tid; k < classes; k += nt) {
            float d = o[k] - (k == y ? 1.0f : 0.0f);
            c += 0.5f * d * d;
        }
    }
    return mep_block_sum_all(c, sh_red);
}

// The feedback from above into unit j of block l < L−1: (W_{l+1}ᵀ x)_j, x the state of
// block l+1 (`above`, n_{l+1} values); one unit per thread, reading a column of W_{l+1}.
__device__ __forceinline__ float mep_fused_feedback(const MepFusedNet& net, u32 l, u32 j,
                                                    const float* above) {
    const u32 nl = net.n[l], nu = net.n[l + 1];
    const float* w = net.W[l + 1];
    float acc = 0.0f;
    for (u32 k = 0; k < nu; k++) acc += w[(u64)k * nl + j] * above[k];
    return acc;
}

// The units of block l are shared out one per thread for block 1 (whose drive p0 is
// precomputed) and one per warp above it (mep_fused_drive): this thread's first unit
// and the stride to its next.
__device__ __forceinline__ u32 mep_fused_first(u32 l) {
    return l > 0 ? threadIdx.x >> 5 : threadIdx.x;
}
__device__ __forceinline__ u32 mep_fused_stride(u32 l) {
    return l > 0 ? blockDim.x >> 5 : blockDim.x;
}

// The drive from below of unit j of block l into *p: p0[row, j] for block 1, else
// W_l x (x the activations of block l−1, taken from `below` at off[l−1]) by the whole
// warp, the lanes striding over the inputs. Returns whether this thread owns unit j
// (always for block 1; lane 0 above), i.e. is the one to update it.
__device__ __forceinline__ bool mep_fused_drive(const MepFusedNet& net, u32 l, u32 j,
                                                const float* below, u64 row, float* p) {
    if (l > 0) {
        const u32 lane = threadIdx.x & 31u;
        const u32 nb = net.n[l - 1];
        *p = mep_fused_dot(net.W[l] + (u64)j * nb, below + net.off[l - 1], nb, lane);
        return lane == 0;
    }
    *p = net.p0[row * net.n[0] + j];
    return true;
}

// The perturbation-form drive of unit j of block l into *q (src/ep/layered.rs):
// 0 for block 1 (its input is clamped), else W_l Δa_{l−1} as mep_fused_drive forms
// it from the deviations `da`. Returns whether this thread owns unit j.
__device__ __forceinline__ bool mep_fused_delta_drive(const MepFusedNet& net, u32 l, u32 j,
                                                      const float* da, u64 row, float* q) {
    const bool own = mep_fused_drive(net, l, j, da, row, q);
    if (l == 0) *q = 0.0f;
    return own;
}

// The output o = φ_L(s⋆_L + u_L) of one row into o[k] (k < n_L, each thread its own
// k ≡ threadIdx.x), from the free states `sf` and deviations `u` at off[L−1]; the
// clamped output (clamped != 0) has no activation. No barrier.
__device__ __forceinline__ void mep_fused_output(const MepFusedNet& net, const float* sf,
                                                 const float* u, u32 clamped, float* o) {
    const u32 b = net.off[net.last];
    for (u32 k = threadIdx.x; k < net.n[net.last]; k += blockDim.x) {
        const float sv = sf[b + k] + u[b + k];
        o[k] = clamped ? sv : mep_act(net.act[net.last], sv);
    }
}

// layered_nudged_phase: `steps` sweeps of the layered energy's nudged phase at
// signed strength beta, then the errors of the final state, for every row, in the
// perturbation form of src/ep/layered.rs: the free state s⋆ stays, and the sweeps
// move the deviation u = s − s⋆ and Δa = φ(s⋆ + u) − φ(s⋆) (mep_act_delta), so
// the errors keep the digits that s⋆ + u would round away.
//   depth L (1..4); n1..n4 the widths (n_{L+1}.. unused); act1..act4 the chains;
//   w2, w3, w4: W_l (n_l × n_{l−1}, row-major; unused ones may alias w2);
//   b1..b4: biases; p0: W_1 x (rows × n1, the clamped input's drive);
//   labels, loss (MEP_LOSS_CE / MEP_LOSS_SE), eps (label smoothing);
//   s1..s4 (rows × n_l): the free state s⋆ (read, when free = 0), then the final
//   state s⋆ + u (written); a1..a4: its φ (written);
//   e1..e4 (rows × n_l): the final errors e_l = u_l − W_l Δa_{l−1} (u_1 for l = 1);
//   rowres (rows): the final state's Σ_l ‖∇_{s_l}F‖² of each row (below);
//   free: 0 to start from the free state in s1..s4; else the phase starts with the
//   free phase, the forward pass s_l = W_l a_{l−1} + b_l (p0 + b_1 for l = 1),
//   a_l = φ_l(s_l), and writes its output's statistics to rowstats[2·row] = C(o, y)
//   and rowstats[2·row + 1] = [argmax o = y] (as cost_stats per row; rowstats is
//   unread and unwritten when free = 0).
//   clamped: 0 for a nudged phase; else a clamped one (beta unused): first the
//   output's deviation u_L = −t·(o⋆ − onehot(y)) (t = clamp_t; the squared error's
//   gradient, whatever `loss`), a_L = s_L, and its error e_L; the sweeps then keep
//   u_L and e*_L = e_L, refreshing e_L after the layers below move, and the residual
//   leaves the output out (as layered.rs's settle_nudged for Phase::Clamp).
// Per sweep (as backward_errors then relax_forward), with s_l = s⋆_l + u_l:
//   dc = ∂C/∂o at o = φ_L(s_L);  e*_L = (−β·dc)·φ′_L(s_L);
//   for l = L−1 … 1: r_l = W_{l+1}ᵀ e*_{l+1}; e*_l = φ′_l(s_l)·r_l (l ≥ 2);
//   for l = 1 … L: e_l = u_l − W_l Δa_{l−1} (u_1 for l = 1);
//     u_l ← u_l − ω·(e_l + c·φ′_l(s_l)·g_l), (c, g) = (−1, r_l) or (β, dc) at l = L;
//     Δa_l = φ_l(s⋆_l + u_l) − φ_l(s⋆_l).
// Shared memory: s⋆, u, Δa (a⋆ during the free phase), e and r (whose slots at the
// output, unused by r, hold o and then dc in place).
// Launch: grid = rows blocks (one per row), block = MEP_FUSED_THREADS threads (1-D);
// depth ≤ MEP_FUSED_MAX_DEPTH and Σ_l n_l ≤ MEP_FUSED_UNITS (see the top of the file).
extern "C" __global__ void layered_nudged_phase(
    u32 depth, u32 n1, u32 n2, u32 n3, u32 n4, u32 act1, u32 act2, u32 act3, u32 act4,
    const float* __restrict__ w2, const float* __restrict__ w3, const float* __restrict__ w4,
    const float* __restrict__ b1, const float* __restrict__ b2, const float* __restrict__ b3,
    const float* __restrict__ b4, const float* __restrict__ p0, const u32* __restrict__ labels,
    u32 loss, float eps, float beta, float omega, u32 steps, float* __restrict__ s1,
    float* __restrict__ s2, float* __restrict__ s3, float* __restrict__ s4,
    float* __restrict__ a1, float* __restrict__ a2, float* __restrict__ a3,
    float* __restrict__ a4, float* __restrict__ e1, float* __restrict__ e2,
    float* __restrict__ e3, float* __restrict__ e4, float* __restrict__ rowres, u32 free,
    float* __restrict__ rowstats, u32 clamped, float clamp_t) {
    __shared__ float sh_s[MEP_FUSED_UNITS];
    __shared__ float sh_u[MEP_FUSED_UNITS];
    __shared__ float sh_da[MEP_FUSED_UNITS];
    __shared__ float sh_e[MEP_FUSED_UNITS];
    __shared__ float sh_r[MEP_FUSED_UNITS];
    __shared__ float sh_red[MEP_FUSED_THREADS];

    const u64 row = blockIdx.x;
    const u32 tid = threadIdx.x, nt = blockDim.x;
    const MepFusedNet net = mep_fused_net(depth, n1, n2, n3, n4, act1, act2, act3, act4, w2, w3, w4,
                                          b1, b2, b3, b4, p0);
    float* S[MEP_FUSED_MAX_DEPTH] = {s1, s2, s3, s4};
    float* A[MEP_FUSED_MAX_DEPTH] = {a1, a2, a3, a4};
    float* E[MEP_FUSED_MAX_DEPTH] = {e1, e2, e3, e4};
    const u32 L = net.L, last = net.last, nL = net.n[last];
    const u32* n = net.n;
    const u32* off = net.off;
    const u32 y = labels[row];
    float* const dc = sh_r + off[last];  // o, then ∂C/∂o (r has no output slot)

    if (free) {
        // ---- the free phase: the forward pass (a⋆ in sh_da), then its output's
        // statistics ----
        for (u32 l = 0; l < L; l++) {
            for (u32 j = mep_fused_first(l); j < n[l]; j += mep_fused_stride(l)) {
                float p;
                if (!mep_fused_drive(net, l, j, sh_da, row, &p)) continue;
                const float sv = p + net.B[l][j];
                sh_s[off[l] + j] = sv;
                sh_da[off[l] + j] = mep_act(net.act[l], sv);
            }
            __syncthreads();
        }
        const float* o = sh_da + off[last];
        const float cost = mep_fused_cost(o, nL, y, loss, eps, sh_red);
        if (tid == 0) {
            // The first index of the maximum, as cost_stats' argmax.
            u32 arg = 0;
            for (u32 k = 1; k < nL; k++)
                if (o[k] > o[arg]) arg = k;
            rowstats[2 * row] = cost;
            rowstats[2 * row + 1] = arg == y ? 1.0f : 0.0f;
        }
        // Thread 0 may still be reading the free output.
        __syncthreads();
    } else {
        mep_fused_load(net, S, row, sh_s);
    }
    for (u32 k = tid; k < off[L]; k += nt) sh_u[k] = 0.0f, sh_da[k] = 0.0f;
    __syncthreads();
    if (clamped) {
        // ---- the clamped output's deviation u_L = −t·(o⋆ − onehot(y)), then its error
        // (dc in place over o: each thread its own k) ----
        mep_fused_output(net, sh_s, sh_u, 0u, dc);
        mep_fused_cost_grad(dc, nL, y, MEP_LOSS_SE, 0.0f, dc, sh_red);
        for (u32 k = tid; k < nL; k += nt) sh_u[off[last] + k] = -clamp_t * dc[k];
        __syncthreads();
        for (u32 j = mep_fused_first(last); j < nL; j += mep_fused_stride(last)) {
            float q;
            if (!mep_fused_delta_drive(net, last, j, sh_da, row, &q)) continue;
            sh_e[off[last] + j] = sh_u[off[last] + j] - q;
        }
        __syncthreads();
    }

    for (u32 step = 0; step < steps; step++) {
        // ---- backward: dc, e*_L (a clamped output keeps its current error), then r_l
        // and e*_l downwards ----
        if (!clamped) {
            mep_fused_output(net, sh_s, sh_u, 0u, dc);
            mep_fused_cost_grad(dc, nL, y, loss, eps, dc, sh_red);
            for (u32 k = tid; k < nL; k += nt)
                sh_e[off[last] + k] = (-beta * dc[k]) *
                                      mep_act_deriv(net.act[last], sh_s[off[last] + k] + sh_u[off[last] + k]);
            __syncthreads();
        }
        for (int l = (int)last - 1; l >= 0; l--) {
            for (u32 j = tid; j < n[l]; j += nt) {
                float acc = mep_fused_feedback(net, l, j, sh_e + off[l + 1]);
                sh_r[off[l] + j] = acc;
                if (l > 0)
                    sh_e[off[l] + j] = acc * mep_act_deriv(net.act[l], sh_s[off[l] + j] + sh_u[off[l] + j]);
            }
            __syncthreads();
        }
        // ---- forward: errors and relaxed deviations, layer by layer ----
        for (u32 l = 0; l < L; l++) {
            const float* g = l == last ? dc : sh_r + off[l];
            const float c = l == last ? beta : -1.0f;
            for (u32 j = mep_fused_first(l); j < n[l]; j += mep_fused_stride(l)) {
                float q;
                if (!mep_fused_delta_drive(net, l, j, sh_da, row, &q)) continue;
                const float sf = sh_s[off[l] + j], uv = sh_u[off[l] + j];
                const float e = uv - q;
                if (l == last && clamped) {
                    // The clamped output stays; its error follows the layer below.
                    sh_e[off[l] + j] = e;
                    continue;
                }
                const float d = mep_act_deriv(net.act[l], sf + uv);
                const float nu = uv - omega * (e + c * d * g[j]);
                sh_u[off[l] + j] = nu;
                sh_da[off[l] + j] = mep_act_delta(net.act[l], sf, nu);
            }
            __syncthreads();
        }
    }
    // ---- the final state's errors ----
    for (u32 l = 0; l < L; l++)
        for (u32 j = mep_fused_first(l); j < n[l]; j += mep_fused_stride(l)) {
            float q;
            if (!mep_fused_delta_drive(net, l, j, sh_da, row, &q)) continue;
            sh_e[off[l] + j] = sh_u[off[l] + j] - q;
        }
    __syncthreads();
    // ---- the residual Σ_l ‖∇_{s_l}F‖² of the final state (as src/ep/layered.rs's
    // `residual`): e_L + β·(φ′_L(s_L)·dc) at the output, e_l − φ′_l(s_l)·(W_{l+1}ᵀe_{l+1})
    // below it ----
    float res = 0.0f;
    if (!clamped) {
        mep_fused_output(net, sh_s, sh_u, 0u, dc);
        mep_fused_cost_grad(dc, nL, y, loss, eps, dc, sh_red);
        for (u32 k = tid; k < nL; k += nt) {
            const float sv = sh_s[off[last] + k] + sh_u[off[last] + k];
            float g = sh_e[off[last] + k] + beta * (dc[k] * mep_act_deriv(net.act[last], sv));
            res += g * g;
        }
    }
    for (u32 l = 0; l < last; l++)
        for (u32 j = tid; j < n[l]; j += nt) {
            const float sv = sh_s[off[l] + j] + sh_u[off[l] + j];
            float r = mep_fused_feedback(net, l, j, sh_e + off[l + 1]) * mep_act_deriv(net.act[l], sv);
            float g = sh_e[off[l] + j] - r;
            res += g * g;
        }
    res = mep_block_sum_all(res, sh_red);
    if (tid == 0) rowres[row] = res;
    // ---- everything back to global memory: e, s = s⋆ + u, a = φ(s) (s itself at a
    // clamped output) ----
    mep_fused_store(net, sh_e, row, E);
    for (u32 l = 0; l < L; l++)
        for (u32 j = tid; j < n[l]; j += nt) {
            const float sv = sh_s[off[l] + j] + sh_u[off[l] + j];
            S[l][row * n[l] + j] = sv;
            A[l][row * n[l] + j] = (l == last && clamped) ? sv : mep_act(net.act[l], sv);
        }
}

// hopfield_settle_phase: `sweeps` Gauss–Seidel sweeps of the Hopfield energy for every
// row, as src/ep/hopfield.rs's `settle` issues them: for l = 1 … L in order,
//   f_l = W_{l+1}ᵀ s_{l+1} + W_l s_{l−1}  (p0 = W_1 x for l = 1; no feedback at l = L),
//   s_l ← φ_l(f_l + b_l [− β·dc at l = L when nudged]), dc = ∂C/∂o at o = s_L;
// the output is not swept when clamped != 0. The sweeps start from the states
// in1..in4, or from zero states when from_zero != 0 (a free phase; in1..in4 unread);
// the final states go to s1..s4. in_l may be s_l itself (settling in place: a block
// reads its row before it writes it, and no other block touches that row) or other
// buffers, so two phases can settle side by side from one free state, each into its
// own states.
// rowres[row] gets the last sweep's Σ_l ‖Δs_l‖² of the row (0 when sweeps = 0).
//   depth, n1..n4, act1..act4, w2..w4, b1..b4, p0, labels, loss, eps as in
//   layered_nudged_phase; nudge: 1 to add −β·dc at the output; in1..in4 (rows × n_l)
//   read; s1..s4 (rows × n_l) written.
// Launch: grid = rows blocks (one per row), block = MEP_FUSED_THREADS threads (1-D);
// depth ≤ MEP_FUSED_MAX_DEPTH and Σ_l n_l ≤ MEP_FUSED_UNITS (see the top of the file).
extern "C" __global__ void hopfield_settle_phase(
    u32 depth, u32 n1, u32 n2, u32 n3, u32 n4, u32 act1, u32 act2, u32 act3, u32 act4,
    const float* __restrict__ w2, const float* __restrict__ w3, const float* __restrict__ w4,
    const float* __restrict__ b1, const float* __restrict__ b2, const float* __restrict__ b3,
    const float* __restrict__ b4, const float* __restrict__ p0, const u32* __restrict__ labels,
    u32 loss, float eps, float beta, u32 nudge, u32 clamped, u32 sweeps, u32 from_zero,
    const float* in1, const float* in2, const float* in3, const float* in4, float* s1,
    float* s2, float* s3, float* s4, float* __restrict__ rowres) {
    __shared__ float sh_s[MEP_FUSED_UNITS];
    __shared__ float sh_old[MEP_FUSED_UNITS];
    __shared__ float sh_q[MEP_FUSED_UNITS];
    __shared__ float sh_dc[MEP_FUSED_UNITS];
    __shared__ float sh_red[MEP_FUSED_THREADS];

    const u64 row = blockIdx.x;
    const u32 tid = threadIdx.x, nt = blockDim.x;
    const MepFusedNet net = mep_fused_net(depth, n1, n2, n3, n4, act1, act2, act3, act4, w2, w3, w4,
                                          b1, b2, b3, b4, p0);
    float* S[MEP_FUSED_MAX_DEPTH] = {s1, s2, s3, s4};
    const float* IN[MEP_FUSED_MAX_DEPTH] = {in1, in2, in3, in4};
    const u32 L = net.L, last = net.last, nL = net.n[last];
    const u32* n = net.n;
    const u32* off = net.off;
    const u32 y = labels[row];

    if (from_zero)
        for (u32 i = tid; i < off[L]; i += nt) sh_s[i] = 0.0f;
    else
        mep_fused_load(net, IN, row, sh_s);
    __syncthreads();

    for (u32 sweep = 0; sweep < sweeps; sweep++) {
        if (sweep + 1 == sweeps)
            for (u32 i = tid; i < off[L]; i += nt) sh_old[i] = sh_s[i];
        for (u32 l = 0; l < L; l++) {
            if (l == last && clamped) break;
            // The feedback from above.
            if (l < last)
                for (u32 j = tid; j < n[l]; j += nt)
                    sh_q[off[l] + j] = mep_fused_feedback(net, l, j, sh_s + off[l + 1]);
            // The output's cost gradient at its current state.
            if (l == last && nudge)
                mep_fused_cost_grad(sh_s + off[last], nL, y, loss, eps, sh_dc, sh_red);
            __syncthreads();
            // The drive from below and the update.
            for (u32 j = mep_fused_first(l); j < n[l]; j += mep_fused_stride(l)) {
                float p;
                if (!mep_fused_drive(net, l, j, sh_s, row, &p)) continue;
                float f = l < last ? sh_q[off[l] + j] + p : p;
                float v = f + net.B[l][j];
                if (l == last && nudge) v = v - beta * sh_dc[j];
                sh_s[off[l] + j] = mep_act(net.act[l], v);
            }
            __syncthreads();
        }
    }
    float res = 0.0f;
    if (sweeps > 0)
        for (u32 i = tid; i < off[L]; i += nt) {
            float d = sh_s[i] - sh_old[i];
            res += d * d;
        }
    res = mep_block_sum_all(res, sh_red);
    if (tid == 0) rowres[row] = res;
    mep_fused_store(net, sh_s, row, S);
}
