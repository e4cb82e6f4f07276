// Fused settling: a whole nudged phase of the layered energy in one launch, for
// networks whose coupled layers are small (the seed's output layer: W_2 is 10×128).
//
// Each block settles one sample (row): its states s_l, a_l = φ_l(s_l), errors e_l,
// feedbacks r_l and the cost gradient dc live in shared memory for all `steps`
// sweeps, and the couplings W_2 … W_L are read from global memory (they stay in L1).
// The arithmetic is the one src/ep/layered.rs issues primitive by primitive
// (nudged_phase: backward_errors, relax_forward, then errors), operation for
// operation; only the order of the sums inside the matrix-vector products and the
// softmax differs from cuBLAS's and cost_grad's.
//
// Launch: grid = rows blocks (one per sample), block = MEP_FUSED_THREADS threads
// (1-D). Limits (checked by the host, src/backend/cuda/fused.rs): depth ≤ 4,
// Σ_l n_l ≤ MEP_FUSED_UNITS.
#include "common.cuh"

#define MEP_FUSED_UNITS 2048
#define MEP_FUSED_THREADS 128
#define MEP_FUSED_MAX_DEPTH 4

// Sum over the block of one value per thread (deterministic: fixed tree); every
// thread gets the result. `sh` holds blockDim.x floats.
__device__ __forceinline__ float mep_fused_sum(float v, float* sh) {
    u32 t = threadIdx.x;
    __syncthreads();
    sh[t] = v;
    __syncthreads();
    for (u32 s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] += sh[t + s];
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

// Max over the block, as mep_fused_sum.
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

// layered_nudged_phase: `steps` sweeps of the layered energy's nudged phase at
// signed strength beta, then the errors of the final state, for every row.
//   depth L (1..4); n1..n4 the widths (n_{L+1}.. unused); act1..act4 the chains;
//   w2, w3, w4: W_l (n_l × n_{l−1}, row-major; unused ones may alias w2);
//   b1..b4: biases; p0: W_1 x (rows × n1, the clamped input's drive);
//   labels, loss (MEP_LOSS_CE / MEP_LOSS_SE), eps (label smoothing);
//   s1..s4, a1..a4 (rows × n_l): the state, read at the start and written at the end;
//   e1..e4 (rows × n_l): the final errors e_l = s_l − W_l φ(s_{l−1}) − b_l.
// Per sweep (as backward_errors then relax_forward):
//   dc = ∂C/∂o at o = a_L;  e*_L = (−β·dc)·φ′_L(s_L);
//   for l = L−1 … 1: r_l = W_{l+1}ᵀ e*_{l+1}; e*_l = φ′_l(s_l)·r_l (l ≥ 2);
//   for l = 1 … L: e_l = s_l − (W_l a_{l−1} + b_l) (p0 for l = 1);
//     s_l ← s_l − ω·(e_l + c·φ′_l(s_l)·g_l), (c, g) = (−1, r_l) or (β, dc) at l = L;
//     a_l = φ_l(s_l).
// Launch: see the top of the file.
extern "C" __global__ void layered_nudged_phase(
    u32 depth, u32 n1, u32 n2, u32 n3, u32 n4, u32 act1, u32 act2, u32 act3, u32 act4,
    const float* __restrict__ w2, const float* __restrict__ w3, const float* __restrict__ w4,
    const float* __restrict__ b1, const float* __restrict__ b2, const float* __restrict__ b3,
    const float* __restrict__ b4, const float* __restrict__ p0, const u32* __restrict__ labels,
    u32 loss, float eps, float beta, float omega, u32 steps, float* __restrict__ s1,
    float* __restrict__ s2, float* __restrict__ s3, float* __restrict__ s4,
    float* __restrict__ a1, float* __restrict__ a2, float* __restrict__ a3,
    float* __restrict__ a4, float* __restrict__ e1, float* __restrict__ e2,
    float* __restrict__ e3, float* __restrict__ e4) {
    __shared__ float sh_s[MEP_FUSED_UNITS];
    __shared__ float sh_a[MEP_FUSED_UNITS];
    __shared__ float sh_e[MEP_FUSED_UNITS];
    __shared__ float sh_r[MEP_FUSED_UNITS];
    __shared__ float sh_dc[MEP_FUSED_UNITS];
    __shared__ float sh_red[MEP_FUSED_THREADS];

    const u64 row = blockIdx.x;
    const u32 tid = threadIdx.x, nt = blockDim.x;
    const u32 L = depth;
    u32 n[MEP_FUSED_MAX_DEPTH] = {n1, n2, n3, n4};
    u32 act[MEP_FUSED_MAX_DEPTH] = {act1, act2, act3, act4};
    const float* W[MEP_FUSED_MAX_DEPTH] = {p0, w2, w3, w4};  // W[0] is never read
    const float* B[MEP_FUSED_MAX_DEPTH] = {b1, b2, b3, b4};
    float* S[MEP_FUSED_MAX_DEPTH] = {s1, s2, s3, s4};
    float* A[MEP_FUSED_MAX_DEPTH] = {a1, a2, a3, a4};
    float* E[MEP_FUSED_MAX_DEPTH] = {e1, e2, e3, e4};
    u32 off[MEP_FUSED_MAX_DEPTH + 1];
    off[0] = 0;
    for (u32 l = 0; l < MEP_FUSED_MAX_DEPTH; l++) off[l + 1] = off[l] + (l < L ? n[l] : 0u);
    const u32 last = L - 1, nL = n[last];
    const u32 y = labels[row];

    for (u32 l = 0; l < L; l++)
        for (u32 j = tid; j < n[l]; j += nt) {
            sh_s[off[l] + j] = S[l][row * n[l] + j];
            sh_a[off[l] + j] = A[l][row * n[l] + j];
        }
    __syncthreads();

    const u32 lane = tid & 31u, warp = tid >> 5, nwarps = nt >> 5;

    for (u32 step = 0; step < steps; step++) {
        // ---- backward: dc, e*_L, then r_l and e*_l downwards ----
        const float* o = sh_a + off[last];
        if (loss == MEP_LOSS_CE) {
            float mx = mep_neg_inf();
            for (u32 k = tid; k < nL; k += nt) mx = fmaxf(mx, o[k]);
            mx = mep_fused_max(mx, sh_red);
            float se = 0.0f;
            for (u32 k = tid; k < nL; k += nt) se += expf(o[k] - mx);
            float lse = mx + logf(mep_fused_sum(se, sh_red));
            for (u32 k = tid; k < nL; k += nt)
                sh_dc[k] = expf(o[k] - lse) - mep_target(k, y, eps, nL);
        } else {
            for (u32 k = tid; k < nL; k += nt) sh_dc[k] = o[k] - (k == y ? 1.0f : 0.0f);
        }
        for (u32 k = tid; k < nL; k += nt)
            sh_e[off[last] + k] = (-beta * sh_dc[k]) * mep_act_deriv(act[last], sh_s[off[last] + k]);
        __syncthreads();
        for (int l = (int)last - 1; l >= 0; l--) {
            const u32 nl = n[l], nu = n[l + 1];
            const float* w = W[l + 1];
            const float* eu = sh_e + off[l + 1];
            for (u32 j = tid; j < nl; j += nt) {
                float acc = 0.0f;
                for (u32 k = 0; k < nu; k++) acc += w[(u64)k * nl + j] * eu[k];
                sh_r[off[l] + j] = acc;
                if (l > 0) sh_e[off[l] + j] = acc * mep_act_deriv(act[l], sh_s[off[l] + j]);
            }
            __syncthreads();
        }
        // ---- forward: errors and relaxed states, layer by layer ----
        // Layer 1's drive is p0 (one unit per thread); a higher layer's is W_l a_{l−1},
        // one unit per warp, the lanes striding over the inputs.
        for (u32 l = 0; l < L; l++) {
            const float* g = l == last ? sh_dc : sh_r + off[l];
            const float c = l == last ? beta : -1.0f;
            const bool by_warp = l > 0;
            const u32 first = by_warp ? warp : tid, stride = by_warp ? nwarps : nt;
            for (u32 j = first; j < n[l]; j += stride) {
                float p;
                if (by_warp) {
                    p = mep_fused_dot(W[l] + (u64)j * n[l - 1], sh_a + off[l - 1], n[l - 1], lane);
                    if (lane != 0) continue;
                } else {
                    p = p0[row * n[0] + j];
                }
                float sv = sh_s[off[l] + j];
                float e = sv - (p + B[l][j]);
                float d = mep_act_deriv(act[l], sv);
                float ns = sv - omega * (e + c * d * g[j]);
                sh_s[off[l] + j] = ns;
                sh_a[off[l] + j] = mep_act(act[l], ns);
            }
            __syncthreads();
        }
    }
    // ---- the final state's errors, and everything back to global memory ----
    for (u32 l = 0; l < L; l++) {
        const bool by_warp = l > 0;
        const u32 first = by_warp ? warp : tid, stride = by_warp ? nwarps : nt;
        for (u32 j = first; j < n[l]; j += stride) {
            float p;
            if (by_warp) {
                p = mep_fused_dot(W[l] + (u64)j * n[l - 1], sh_a + off[l - 1], n[l - 1], lane);
                if (lane != 0) continue;
            } else {
                p = p0[row * n[0] + j];
            }
            const u64 i = row * n[l] + j;
            E[l][i] = sh_s[off[l] + j] - (p + B[l][j]);
            S[l][i] = sh_s[off[l] + j];
            A[l][i] = sh_a[off[l] + j];
        }
    }
}

// hopfield_settle_phase: `sweeps` Gauss–Seidel sweeps of the Hopfield energy for every
// row, as src/ep/hopfield.rs's `settle` issues them: for l = 1 … L in order,
//   f_l = W_{l+1}ᵀ s_{l+1} + W_l s_{l−1}  (p0 = W_1 x for l = 1; no feedback at l = L),
//   s_l ← φ_l(f_l + b_l [− β·dc at l = L when nudged]), dc = ∂C/∂o at o = s_L;
// the output is not swept when clamped != 0. rowres[row] gets the last sweep's
// Σ_l ‖Δs_l‖² of the row (0 when sweeps = 0).
//   depth, n1..n4, act1..act4, w2..w4, b1..b4, p0, labels, loss, eps as in
//   layered_nudged_phase; nudge: 1 to add −β·dc at the output; s1..s4 (rows × n_l)
//   read and written.
// Launch: see the top of the file.
extern "C" __global__ void hopfield_settle_phase(
    u32 depth, u32 n1, u32 n2, u32 n3, u32 n4, u32 act1, u32 act2, u32 act3, u32 act4,
    const float* __restrict__ w2, const float* __restrict__ w3, const float* __restrict__ w4,
    const float* __restrict__ b1, const float* __restrict__ b2, const float* __restrict__ b3,
    const float* __restrict__ b4, const float* __restrict__ p0, const u32* __restrict__ labels,
    u32 loss, float eps, float beta, u32 nudge, u32 clamped, u32 sweeps,
    float* __restrict__ s1, float* __restrict__ s2, float* __restrict__ s3,
    float* __restrict__ s4, float* __restrict__ rowres) {
    __shared__ float sh_s[MEP_FUSED_UNITS];
    __shared__ float sh_old[MEP_FUSED_UNITS];
    __shared__ float sh_q[MEP_FUSED_UNITS];
    __shared__ float sh_dc[MEP_FUSED_UNITS];
    __shared__ float sh_red[MEP_FUSED_THREADS];

    const u64 row = blockIdx.x;
    const u32 tid = threadIdx.x, nt = blockDim.x;
    const u32 lane = tid & 31u, warp = tid >> 5, nwarps = nt >> 5;
    const u32 L = depth;
    u32 n[MEP_FUSED_MAX_DEPTH] = {n1, n2, n3, n4};
    u32 act[MEP_FUSED_MAX_DEPTH] = {act1, act2, act3, act4};
    const float* W[MEP_FUSED_MAX_DEPTH] = {p0, w2, w3, w4};  // W[0] is never read
    const float* B[MEP_FUSED_MAX_DEPTH] = {b1, b2, b3, b4};
    float* S[MEP_FUSED_MAX_DEPTH] = {s1, s2, s3, s4};
    u32 off[MEP_FUSED_MAX_DEPTH + 1];
    off[0] = 0;
    for (u32 l = 0; l < MEP_FUSED_MAX_DEPTH; l++) off[l + 1] = off[l] + (l < L ? n[l] : 0u);
    const u32 last = L - 1, nL = n[last];
    const u32 y = labels[row];

    for (u32 l = 0; l < L; l++)
        for (u32 j = tid; j < n[l]; j += nt) sh_s[off[l] + j] = S[l][row * n[l] + j];
    __syncthreads();

    for (u32 sweep = 0; sweep < sweeps; sweep++) {
        if (sweep + 1 == sweeps)
            for (u32 i = tid; i < off[L]; i += nt) sh_old[i] = sh_s[i];
        for (u32 l = 0; l < L; l++) {
            if (l == last && clamped) break;
            // The feedback from above (thread per unit; the columns of W_{l+1}).
            if (l < last) {
                const u32 nu = n[l + 1];
                const float* w = W[l + 1];
                const float* su = sh_s + off[l + 1];
                for (u32 j = tid; j < n[l]; j += nt) {
                    float acc = 0.0f;
                    for (u32 k = 0; k < nu; k++) acc += w[(u64)k * n[l] + j] * su[k];
                    sh_q[off[l] + j] = acc;
                }
            }
            // The output's cost gradient at its current state.
            if (l == last && nudge) {
                const float* o = sh_s + off[last];
                if (loss == MEP_LOSS_CE) {
                    float mx = mep_neg_inf();
                    for (u32 k = tid; k < nL; k += nt) mx = fmaxf(mx, o[k]);
                    mx = mep_fused_max(mx, sh_red);
                    float se = 0.0f;
                    for (u32 k = tid; k < nL; k += nt) se += expf(o[k] - mx);
                    float lse = mx + logf(mep_fused_sum(se, sh_red));
                    for (u32 k = tid; k < nL; k += nt)
                        sh_dc[k] = expf(o[k] - lse) - mep_target(k, y, eps, nL);
                } else {
                    for (u32 k = tid; k < nL; k += nt) sh_dc[k] = o[k] - (k == y ? 1.0f : 0.0f);
                }
            }
            __syncthreads();
            // The drive from below and the update (warp per unit above layer 1).
            const bool by_warp = l > 0;
            const u32 first = by_warp ? warp : tid, stride = by_warp ? nwarps : nt;
            for (u32 j = first; j < n[l]; j += stride) {
                float p;
                if (by_warp) {
                    p = mep_fused_dot(W[l] + (u64)j * n[l - 1], sh_s + off[l - 1], n[l - 1], lane);
                    if (lane != 0) continue;
                } else {
                    p = p0[row * n[0] + j];
                }
                float f = l < last ? sh_q[off[l] + j] + p : p;
                float v = f + B[l][j];
                if (l == last && nudge) v = v - beta * sh_dc[j];
                sh_s[off[l] + j] = mep_act(act[l], v);
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
    res = mep_fused_sum(res, sh_red);
    if (tid == 0) rowres[row] = res;
    for (u32 l = 0; l < L; l++)
        for (u32 j = tid; j < n[l]; j += nt) S[l][row * n[l] + j] = sh_s[off[l] + j];
}

#define MEP_NS_MAX 32

// ns_gram_poly: Newton–Schulz's polynomial iteration in Gram space for k ≤ 32, as
// src/optim/newton_schulz.rs's `orthogonalize` issues it with GEMMs: from A = gram
// (k × k, row-major) and Q = I, each of `steps` (≥ 1) iterations forms
// P = b·A + a·I, then P ← c·(A·A) + P, Q ← P·Q (Q = P at the first), and, but for the
// last, A ← (P·A)·P. Writes Q to q; gram is not modified.
// Launch: one block of MEP_FUSED_THREADS threads (1-D).
extern "C" __global__ void ns_gram_poly(u32 k, u32 steps, float a, float b, float c,
                                        const float* __restrict__ gram, float* __restrict__ q) {
    __shared__ float sA[MEP_NS_MAX * MEP_NS_MAX];
    __shared__ float sP[MEP_NS_MAX * MEP_NS_MAX];
    __shared__ float sQ[MEP_NS_MAX * MEP_NS_MAX];
    __shared__ float sT[MEP_NS_MAX * MEP_NS_MAX];
    const u32 tid = threadIdx.x, nt = blockDim.x, kk = k * k;
    for (u32 i = tid; i < kk; i += nt) sA[i] = gram[i];
    __syncthreads();
    for (u32 it = 0; it < steps; it++) {
        for (u32 i = tid; i < kk; i += nt) {
            u32 r = i / k, col = i - r * k;
            sP[i] = b * sA[i] + a * (r == col ? 1.0f : 0.0f);
        }
        __syncthreads();
        for (u32 i = tid; i < kk; i += nt) {
            u32 r = i / k, col = i - r * k;
            float acc = 0.0f;
            for (u32 m = 0; m < k; m++) acc += sA[r * k + m] * sA[m * k + col];
            sP[i] = c * acc + sP[i];
        }
        __syncthreads();
        if (it == 0) {
            for (u32 i = tid; i < kk; i += nt) sQ[i] = sP[i];
        } else {
            for (u32 i = tid; i < kk; i += nt) {
                u32 r = i / k, col = i - r * k;
                float acc = 0.0f;
                for (u32 m = 0; m < k; m++) acc += sP[r * k + m] * sQ[m * k + col];
                sT[i] = acc;
            }
            __syncthreads();
            for (u32 i = tid; i < kk; i += nt) sQ[i] = sT[i];
        }
        __syncthreads();
        if (it + 1 < steps) {
            for (u32 i = tid; i < kk; i += nt) {
                u32 r = i / k, col = i - r * k;
                float acc = 0.0f;
                for (u32 m = 0; m < k; m++) acc += sP[r * k + m] * sA[m * k + col];
                sT[i] = acc;
            }
            __syncthreads();
            for (u32 i = tid; i < kk; i += nt) {
                u32 r = i / k, col = i - r * k;
                float acc = 0.0f;
                for (u32 m = 0; m < k; m++) acc += sT[r * k + m] * sP[m * k + col];
                sA[i] = acc;
            }
            __syncthreads();
        }
    }
    for (u32 i = tid; i < kk; i += nt) q[i] = sQ[i];
}
