// Shared device helpers for the mep kernels: the activation chain φ / φ′ (mirrors
// src/nn/activation.rs), the label-smoothing target (mirrors src/backend/cpu.rs),
// launch-shape-generic reductions and the grid-stride loop.
//
// Everything here compiles both with NVRTC (no standard headers: only built-ins) and
// as host C++ after kernels/host_shim.h (see build.rs, feature `host-kernels`).
#pragma once

typedef unsigned int u32;
typedef unsigned long long u64;

// Step scalar `slot` of a ctl buffer (src/backend/ctl.rs): three u32 words per slot,
// the f64 (low, high) and then its f32 rounding (as a host argument would be
// rounded), which is the word read here.
#define MEP_CTL_WORDS_PER_SLOT 3
__device__ __forceinline__ float mep_ctl(const u32* ctl, u32 slot) {
    return __int_as_float((int)ctl[MEP_CTL_WORDS_PER_SLOT * slot + 2]);
}

// Element-wise 1-D grid-stride loop over [0, n).
#define MEP_GRID_STRIDE(i, n)                                                        \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (u64)(n);             \
         i += (u64)blockDim.x * gridDim.x)

// Activation codes (Activation::code): 0 identity, 1 relu, 2 sigmoid, 3 tanh,
// 4 hardsigmoid. A chain packs them 4 bits each, first applied in the low bits; a
// non-zero code other than 1..3 is hardsigmoid, exactly like ActChain::activations.
__device__ __forceinline__ float mep_act1(u32 code, float x) {
    switch (code) {
    case 1: return fmaxf(x, 0.0f);
    case 2: return 1.0f / (1.0f + expf(-x));
    case 3: return tanhf(x);
    default: return fminf(fmaxf(x, 0.0f), 1.0f);
    }
}

// Derivative of one activation; 0 at the kinks of relu and hardsigmoid.
__device__ __forceinline__ float mep_act1_deriv(u32 code, float x) {
    switch (code) {
    case 1: return x > 0.0f ? 1.0f : 0.0f;
    case 2: {
        float s = 1.0f / (1.0f + expf(-x));
        return s * (1.0f - s);
    }
    case 3: {
        float t = tanhf(x);
        return 1.0f - t * t;
    }
    default: return (x > 0.0f && x < 1.0f) ? 1.0f : 0.0f;
    }
}

// φ(x) for a packed chain.
__device__ __forceinline__ float mep_act(u32 chain, float x) {
    for (; chain != 0; chain >>= 4) x = mep_act1(chain & 15u, x);
    return x;
}

// φ′(x) for a packed chain, by the chain rule (ActChain::value_and_derivative).
__device__ __forceinline__ float mep_act_deriv(u32 chain, float x) {
    float d = 1.0f;
    for (; chain != 0; chain >>= 4) {
        u32 c = chain & 15u;
        d = d * mep_act1_deriv(c, x);
        x = mep_act1(c, x);
    }
    return d;
}

// tanh(x + u) − tanh(x) without cancellation: tanh(u)·(1 − t²)/(1 + t·tanh(u)),
// t = tanh(x); for |u| ≥ 1 the plain difference (large, or both sides saturated
// where the identity's denominator can round to 0). As Activation::delta_by.
__device__ __forceinline__ float mep_tanh_delta(float x, float u) {
    if (fabsf(u) >= 1.0f) return tanhf(x + u) - tanhf(x);
    float t = tanhf(x), tu = tanhf(u);
    return tu * (1.0f - t * t) / (1.0f + t * tu);
}

// f(x + u) − f(x) for one activation, accurate relative to the difference itself
// (the layered energy's perturbation form, src/ep/layered.rs): a·u on one linear
// piece of slope a, 0 on one constant piece, across a kink k the linear side's
// (x + u) − k, as (x − k) + u from the constant side; tanh's identity above;
// sigmoid as ½ of tanh's at (x/2, u/2). As Activation::delta_by.
__device__ __forceinline__ float mep_act1_delta(u32 code, float x, float u) {
    float y = x + u;
    switch (code) {
    case 1:
        if (x > 0.0f && y > 0.0f) return u;
        if (x <= 0.0f && y <= 0.0f) return 0.0f;
        return fmaxf(y, 0.0f) - fmaxf(x, 0.0f);
    case 2: return 0.5f * mep_tanh_delta(0.5f * x, 0.5f * u);
    case 3: return mep_tanh_delta(x, u);
    default:
        // Across the upper kink from above: (x − 1) + u, exact near the kink.
        if (x >= 1.0f) return y >= 1.0f ? 0.0f : (y <= 0.0f ? -1.0f : (x - 1.0f) + u);
        if (x <= 0.0f) return y <= 0.0f ? 0.0f : (y >= 1.0f ? 1.0f : y);
        return y >= 1.0f ? 1.0f - x : (y <= 0.0f ? -x : u);
    }
}

// φ(x + u) − φ(x) for a packed chain: each activation's deviation is carried to the
// next beside its free value (ActChain::delta_by).
__device__ __forceinline__ float mep_act_delta(u32 chain, float x, float u) {
    for (; chain != 0; chain >>= 4) {
        u32 c = chain & 15u;
        u = mep_act1_delta(c, x, u);
        x = mep_act1(c, x);
    }
    return u;
}

// Loss codes (Loss::code).
#define MEP_LOSS_CE 0u
#define MEP_LOSS_SE 1u

// Label-smoothed target q_k for label y over `classes` classes (cpu.rs `target`).
__device__ __forceinline__ float mep_target(u32 k, u32 y, float eps, u32 classes) {
    float base = eps / (float)classes;
    return k == y ? 1.0f - eps + base : base;
}

// -∞ without <cmath>.
__device__ __forceinline__ float mep_neg_inf() { return __int_as_float(0xff800000); }

// Reductions across the x-dimension of a "warp row": the blockDim.x (a power of two
// ≤ 32) lanes that share threadIdx.y. On the GPU blockDim.x = 32 (a full warp); the
// host shim launches these kernels with blockDim.x = 1, so no shuffle runs there.
__device__ __forceinline__ float mep_lanes_max(float v) {
    for (u32 off = blockDim.x / 2; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

__device__ __forceinline__ float mep_lanes_sum(float v) {
    for (u32 off = blockDim.x / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// (max, first index of the max) across the lanes; ties go to the smaller index.
__device__ __forceinline__ void mep_lanes_argmax(float* v, u32* idx) {
    for (u32 off = blockDim.x / 2; off > 0; off >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, *v, off);
        u32 oi = __shfl_xor_sync(0xffffffffu, *idx, off);
        if (ov > *v || (ov == *v && oi < *idx)) {
            *v = ov;
            *idx = oi;
        }
    }
}

// Sum of v over a 1-D block (blockDim.x a power of two, ≤ 1024); `sh` holds
// blockDim.x floats. The result is valid in thread 0.
__device__ __forceinline__ float mep_block_sum(float v, float* sh) {
    u32 t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (u32 s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] += sh[t + s];
        __syncthreads();
    }
    return sh[0];
}

// mep_block_sum with barriers on both sides, so that every thread gets the result and
// `sh` may be reused at once (inside kernels that reduce several times in a row).
__device__ __forceinline__ float mep_block_sum_all(float v, float* sh) {
    __syncthreads();
    float r = mep_block_sum(v, sh);
    __syncthreads();
    return r;
}

// 2^(−e) for a positive, finite s = m·2^e with m in [½, 1), e clamped to [−126, 126]
// so that the factor is a normal float: s's inverse to within a factor of 2, exact.
// NormRule::InversePowerOfTwo (src/backend/mod.rs, pow2_below_inv on the CPU).
__device__ __forceinline__ float mep_pow2_below_inv(float s) {
    int e;
    frexpf(s, &e);
    e = e < -126 ? -126 : (e > 126 ? 126 : e);
    return ldexpf(1.0f, -e);
}
