// Element-wise kernels of the forward pass and of the EP settling dynamics.
// All are cooperation-free 1-D grid-stride kernels: launch with 256 threads per
// block and any grid (the host picks min(ceil(n/256), cap) blocks).
#include "common.cuh"

// bias_act: z (rows×cols, n = rows·cols) ← src + bias[col]; a ← φ(z). src is z itself
// (in place) or a buffer kept apart (the forward pass's p_1 = W_1x), hence no
// __restrict__ on the two. Launch: 1-D grid-stride over n.
extern "C" __global__ void bias_act(u64 n, u32 cols, const float* src, float* z,
                                    const float* __restrict__ bias, u32 chain,
                                    float* __restrict__ a) {
    MEP_GRID_STRIDE(i, n) {
        float v = src[i] + bias[i % cols];
        z[i] = v;
        a[i] = mep_act(chain, v);
    }
}

// layered_error: e ← u − q, the layered energy's error in perturbation form
// (src/ep/layered.rs): u = s − s⋆ the deviation from the free state, q = W Δa_{l−1}
// the drive's; has_q = 0 for the first layer (clamped input): e ← u, q unread.
// Launch: 1-D grid-stride over n = rows·cols.
extern "C" __global__ void layered_error(u64 n, const float* __restrict__ u, const float* q,
                                         u32 has_q, float* __restrict__ e) {
    MEP_GRID_STRIDE(i, n) { e[i] = has_q ? u[i] - q[i] : u[i]; }
}

// layered_settle: one perturbation-form settle step at the current state:
// e ← u − q (as layered_error; written out), u ← u − η·(e + c·φ′(s)·g) (φ′ at the
// old s), s ← s⋆ + u, a ← φ(s), Δa ← φ(s⋆ + u) − φ(s⋆) (mep_act_delta), with
// s⋆ = s_free. Launch: 1-D grid-stride over n = rows·cols.
extern "C" __global__ void layered_settle(u64 n, const float* q, u32 has_q,
                                          const float* __restrict__ g, float c, float eta,
                                          u32 chain, const float* __restrict__ s_free,
                                          float* __restrict__ u, float* __restrict__ s,
                                          float* __restrict__ a, float* __restrict__ da,
                                          float* __restrict__ e) {
    MEP_GRID_STRIDE(i, n) {
        float uv = u[i];
        float ev = has_q ? uv - q[i] : uv;
        e[i] = ev;
        float d = mep_act_deriv(chain, s[i]);
        float nu = uv - eta * (ev + c * d * g[i]);
        u[i] = nu;
        float sf = s_free[i];
        float ns = sf + nu;
        s[i] = ns;
        a[i] = mep_act(chain, ns);
        da[i] = mep_act_delta(chain, sf, nu);
    }
}

// hopfield_settle: s ← φ(drive + bias[col] − β·dc), the nudge term only when
// has_nudge != 0 (dc is then rows×cols; otherwise it is not read).
// Launch: 1-D grid-stride over n = rows·cols.
extern "C" __global__ void hopfield_settle(u64 n, u32 cols, const float* __restrict__ drive,
                                           const float* __restrict__ bias,
                                           const float* __restrict__ dc, float beta,
                                           u32 has_nudge, u32 chain,
                                           float* __restrict__ s) {
    MEP_GRID_STRIDE(i, n) {
        float v = drive[i] + bias[i % cols];
        if (has_nudge) v = v - beta * dc[i];
        s[i] = mep_act(chain, v);
    }
}

// act_grad_mul: δ ← δ·φ′(z) (backprop through an activation chain).
// Launch: 1-D grid-stride over n = rows·cols.
extern "C" __global__ void act_grad_mul(u64 n, const float* __restrict__ z, u32 chain,
                                        float* __restrict__ delta) {
    MEP_GRID_STRIDE(i, n) { delta[i] = delta[i] * mep_act_deriv(chain, z[i]); }
}

// act_grad_mul_into: dst ← (scale·src)·φ′(z) (dst's old contents unread).
// Launch: 1-D grid-stride over n = rows·cols.
extern "C" __global__ void act_grad_mul_into(u64 n, const float* __restrict__ z, u32 chain,
                                             float scale, const float* __restrict__ src,
                                             float* __restrict__ dst) {
    MEP_GRID_STRIDE(i, n) { dst[i] = (scale * src[i]) * mep_act_deriv(chain, z[i]); }
}
