// Optimizer element-wise kernels. Scalars come as kernel arguments; norms are read
// from device buffers (sumsq[0], written by sum_sq) so no step reads back to the host.
// All are cooperation-free 1-D grid-stride kernels (256 threads per block).
#include "common.cuh"

// axpby: y ← α·x + β·y; with β = 0, y's old contents are ignored (even NaN).
// Launch: 1-D grid-stride over n.
extern "C" __global__ void axpby(u64 n, float alpha, const float* __restrict__ x, float beta,
                                 float* __restrict__ y) {
    if (beta == 0.0f) {
        MEP_GRID_STRIDE(i, n) { y[i] = alpha * x[i]; }
    } else {
        MEP_GRID_STRIDE(i, n) { y[i] = alpha * x[i] + beta * y[i]; }
    }
}

// lincomb: y ← α·x + β·z (y's old contents are ignored). Launch: 1-D grid-stride over n.
extern "C" __global__ void lincomb(u64 n, float alpha, const float* __restrict__ x, float beta,
                                   const float* __restrict__ z, float* __restrict__ y) {
    MEP_GRID_STRIDE(i, n) { y[i] = alpha * x[i] + beta * z[i]; }
}

// nesterov: m ← 1·g + μ·m, then u ← 1·g + μ·m with the new m (axpby then lincomb,
// in one pass). Launch: 1-D grid-stride over n.
extern "C" __global__ void nesterov(u64 n, float mu, const float* __restrict__ g,
                                    float* __restrict__ m, float* __restrict__ u) {
    MEP_GRID_STRIDE(i, n) {
        float gi = g[i];
        float mi = 1.0f * gi + mu * m[i];
        m[i] = mi;
        u[i] = 1.0f * gi + mu * mi;
    }
}

// fill: y ← value. Launch: 1-D grid-stride over n.
extern "C" __global__ void fill(u64 n, float value, float* __restrict__ y) {
    MEP_GRID_STRIDE(i, n) { y[i] = value; }
}

// scale_by_inv_norm: y ← x·f with s = sumsq[0] and f by `rule` (NormRule in
// src/backend/mod.rs):
//   0: f = 1/(√s + eps);
//   1: f = 2^(−e) with s = m·2^e, m in [½, 1), e clamped to [−126, 126] (exact);
//      f = 1 when s is 0 or not finite;
//   2: f = 1/√s, and y untouched when s is 0 or not finite.
// Launch: 1-D grid-stride over n.
extern "C" __global__ void scale_by_inv_norm(u64 n, const float* __restrict__ x,
                                             const float* __restrict__ sumsq, float eps,
                                             u32 rule, float* __restrict__ y) {
    const float s = sumsq[0];
    const bool usable = s > 0.0f && isfinite(s);
    float inv;
    if (rule == 0) {
        inv = 1.0f / (sqrtf(s) + eps);
    } else if (!usable) {
        if (rule == 2) return;
        inv = 1.0f;
    } else if (rule == 1) {
        inv = mep_pow2_below_inv(s);
    } else {
        inv = 1.0f / sqrtf(s);
    }
    MEP_GRID_STRIDE(i, n) { y[i] = x[i] * inv; }
}

// spectral_clamp: σ̂ = √sumsq[0]; if σ̂ > γ then w ← w·γ/σ̂ (else w is untouched).
// Launch: 1-D grid-stride over n.
extern "C" __global__ void spectral_clamp(u64 n, float* __restrict__ w,
                                          const float* __restrict__ sumsq, float gamma) {
    float sigma = sqrtf(sumsq[0]);
    if (!(sigma > gamma)) return;
    float f = gamma / sigma;
    MEP_GRID_STRIDE(i, n) { w[i] = w[i] * f; }
}

// axpby_ctl: y ← α·x + β·y with α, β read from the step-scalar slots alpha_slot and
// beta_slot of ctl (see mep_ctl); with β = 0, y's old contents are ignored.
// Launch: 1-D grid-stride over n.
extern "C" __global__ void axpby_ctl(u64 n, const u32* __restrict__ ctl, u32 alpha_slot,
                                     const float* __restrict__ x, u32 beta_slot,
                                     float* __restrict__ y) {
    float alpha = mep_ctl(ctl, alpha_slot), beta = mep_ctl(ctl, beta_slot);
    if (beta == 0.0f) {
        MEP_GRID_STRIDE(i, n) { y[i] = alpha * x[i]; }
    } else {
        MEP_GRID_STRIDE(i, n) { y[i] = alpha * x[i] + beta * y[i]; }
    }
}

// adam (decoupled weight decay): m ← β1 m + (1−β1) g; v ← β2 v + (1−β2) g²;
// p ← p·decay − step·m / (√v·inv_sqrt_bc2 + eps), where decay = 1 − lr·wd,
// step = lr / (1 − β1^t), inv_sqrt_bc2 = 1/√(1 − β2^t) are computed by the host in
// f64 (ctl::adam_scalars) and read from the step-scalar slots slot, slot+1, slot+2.
// Launch: 1-D grid-stride over n.
extern "C" __global__ void adam(u64 n, float* __restrict__ p, const float* __restrict__ g,
                                float* __restrict__ m, float* __restrict__ v, float beta1,
                                float beta2, float eps, const u32* __restrict__ ctl,
                                u32 slot) {
    float decay = mep_ctl(ctl, slot), step = mep_ctl(ctl, slot + 1);
    float inv_sqrt_bc2 = mep_ctl(ctl, slot + 2);
    MEP_GRID_STRIDE(i, n) {
        float gi = g[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
    }
}
