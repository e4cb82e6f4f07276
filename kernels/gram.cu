// Small-matrix iterations in one block, for matrices whose small side k is at most 32
// (an output layer's: the seed's W_2 is 10×128): Newton–Schulz's orthogonalisation
// (ns_orthogonalize, or its Gram-space iteration alone: ns_gram_poly) and the spectral
// constraint's power iteration and clamp (spectral_power). Each replaces a chain of
// tiny GEMMs and reductions (31 and 45 launches for the seed) by one launch: on a GPU
// those chains cost a few microseconds per launch while doing almost no arithmetic.
// The arithmetic is the one src/optim/newton_schulz.rs and src/optim/spectral.rs issue
// with GEMMs, operation for operation; only the order of the sums inside the products
// differs from cuBLAS's.
//
// Launch: one block of MEP_GRAM_THREADS threads (1-D). The host checks k ≤ MEP_GRAM_MAX
// (src/backend/cuda/gram.rs).
//
// For Gram matrices too large for one block (the seed's W_1: k = 128), square_products
// (at the end of this file) is the multi-block member of the family: one or two k × k
// products with a linear epilogue per launch, which is what lets the Gram-space
// iteration take three launches per Newton–Schulz step instead of five.
#include "common.cuh"

#define MEP_GRAM_MAX 32
#define MEP_GRAM_THREADS 256

// sG[i·k + j] ← Σ_t (s·X[i, t])·(s·X[j, t]) for the k × k Gram matrix of the
// rows × cols row-major X along its long side (X·Xᵀ when rows ≤ cols, else Xᵀ·X):
// one warp per entry, the lanes striding over the long side, then a butterfly. With
// s = 1 the products are X's own. Ends with a barrier.
__device__ void mep_gram_fill(const float* __restrict__ x, u32 rows, u32 cols, float s,
                              float* sG) {
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const bool wide = rows <= cols;
    const u32 k = wide ? rows : cols, n = wide ? cols : rows, kk = k * k;
    for (u32 e = warp; e < kk; e += warps) {
        const u32 i = e / k, j = e - (e / k) * k;
        float acc = 0.0f;
        if (wide)
            for (u32 t = lane; t < n; t += 32)
                acc += (x[(u64)i * cols + t] * s) * (x[(u64)j * cols + t] * s);
        else
            for (u32 t = lane; t < n; t += 32)
                acc += (x[(u64)t * cols + i] * s) * (x[(u64)t * cols + j] * s);
        for (u32 o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (lane == 0) sG[e] = acc;
    }
    __syncthreads();
}

// Entry i (row r, column c) of the product X·Y of two k × k row-major matrices:
// Σ_m X[r, m]·Y[m, c], summed in m order.
__device__ __forceinline__ float mep_sq_dot(u32 k, u32 i, const float* X, const float* Y) {
    const u32 r = i / k, col = i - r * k;
    float acc = 0.0f;
    for (u32 m = 0; m < k; m++) acc += X[r * k + m] * Y[m * k + col];
    return acc;
}

// Out ← X·Y for k × k row-major matrices in shared memory (Out distinct from both),
// the entries shared out over the block; ends with a barrier.
__device__ void mep_sq_matmul(u32 k, const float* X, const float* Y, float* Out) {
    for (u32 i = threadIdx.x; i < k * k; i += blockDim.x) Out[i] = mep_sq_dot(k, i, X, Y);
    __syncthreads();
}

// The polynomial iteration of Newton–Schulz in Gram space on the k × k matrix in sA
// (k ≤ MEP_GRAM_MAX, row-major), as src/optim/newton_schulz.rs's `orthogonalize` issues
// it with GEMMs: from Q = I, each of `steps` (≥ 1) iterations forms P = b·A + a·I,
// then P ← c·(A·A) + P, Q ← P·Q (Q = P at the first), and, but for the last,
// A ← (P·A)·P. Leaves Q in sQ; sA is overwritten; sP and sT are scratch. Every thread
// of the block must call it; it starts and ends with a barrier.
__device__ void mep_ns_poly(u32 k, u32 steps, float a, float b, float c, float* sA, float* sP,
                            float* sQ, float* sT) {
    const u32 tid = threadIdx.x, nt = blockDim.x, kk = k * k;
    __syncthreads();
    for (u32 it = 0; it < steps; it++) {
        for (u32 i = tid; i < kk; i += nt) {
            u32 r = i / k, col = i - r * k;
            sP[i] = b * sA[i] + a * (r == col ? 1.0f : 0.0f);
        }
        __syncthreads();
        for (u32 i = tid; i < kk; i += nt) sP[i] = c * mep_sq_dot(k, i, sA, sA) + sP[i];
        __syncthreads();
        if (it == 0) {
            for (u32 i = tid; i < kk; i += nt) sQ[i] = sP[i];
        } else {
            mep_sq_matmul(k, sP, sQ, sT);
            for (u32 i = tid; i < kk; i += nt) sQ[i] = sT[i];
        }
        __syncthreads();
        if (it + 1 < steps) {
            mep_sq_matmul(k, sP, sA, sT);
            mep_sq_matmul(k, sT, sP, sA);
        }
    }
}

// ns_gram_poly: mep_ns_poly from A = gram (k × k, row-major; not modified), the final
// Q written to q. (For matrices too long for ns_orthogonalize: the Gram matrix and
// the final product stay with cuBLAS.)
// Launch: one block of MEP_GRAM_THREADS threads (1-D).
extern "C" __global__ void ns_gram_poly(u32 k, u32 steps, float a, float b, float c,
                                        const float* __restrict__ gram, float* __restrict__ q) {
    __shared__ float sA[MEP_GRAM_MAX * MEP_GRAM_MAX];
    __shared__ float sP[MEP_GRAM_MAX * MEP_GRAM_MAX];
    __shared__ float sQ[MEP_GRAM_MAX * MEP_GRAM_MAX];
    __shared__ float sT[MEP_GRAM_MAX * MEP_GRAM_MAX];
    const u32 tid = threadIdx.x, nt = blockDim.x, kk = k * k;
    for (u32 i = tid; i < kk; i += nt) sA[i] = gram[i];
    mep_ns_poly(k, steps, a, b, c, sA, sP, sQ, sT);
    for (u32 i = tid; i < kk; i += nt) q[i] = sQ[i];
}

// ns_orthogonalize: the whole of `orthogonalize` (src/optim/newton_schulz.rs) for a
// rows × cols row-major u with k = min(rows, cols) ≤ MEP_GRAM_MAX:
//   X₀ = u/(‖u‖_F + 1e−7);  A = X₀X₀ᵀ (rows ≤ cols) or X₀ᵀX₀;
//   steps = 0: x = X₀;  else mep_ns_poly → Q and x = Q·X₀ (rows ≤ cols) or X₀·Q.
// X₀ is not stored: its entries are formed as u·(1/(‖u‖ + 1e−7)) where read, with
// the rounding of the stored X₀ of the GEMM path.
// Launch: one block of MEP_GRAM_THREADS threads (1-D).
extern "C" __global__ void ns_orthogonalize(u32 rows, u32 cols, u32 steps, float a, float b,
                                            float c, const float* __restrict__ u,
                                            float* __restrict__ x) {
    __shared__ float sA[MEP_GRAM_MAX * MEP_GRAM_MAX];
    __shared__ float sP[MEP_GRAM_MAX * MEP_GRAM_MAX];
    __shared__ float sQ[MEP_GRAM_MAX * MEP_GRAM_MAX];
    __shared__ float sT[MEP_GRAM_MAX * MEP_GRAM_MAX];
    __shared__ float sRed[MEP_GRAM_THREADS];
    const u32 tid = threadIdx.x, nt = blockDim.x;
    const bool wide = rows <= cols;
    const u32 k = wide ? rows : cols;
    const u64 len = (u64)rows * cols;
    float ss = 0.0f;
    for (u64 i = tid; i < len; i += nt) ss += u[i] * u[i];
    const float inv = 1.0f / (sqrtf(mep_block_sum_all(ss, sRed)) + 1e-7f);
    if (steps == 0) {
        for (u64 i = tid; i < len; i += nt) x[i] = u[i] * inv;
        return;
    }
    mep_gram_fill(u, rows, cols, inv, sA);  // A = X₀X₀ᵀ or X₀ᵀX₀
    mep_ns_poly(k, steps, a, b, c, sA, sP, sQ, sT);
    // x = Q·X₀ (wide: x[i, t] = Σ_m Q[i, m]·X₀[m, t]) or X₀·Q (tall).
    for (u64 e = tid; e < len; e += nt) {
        const u64 r = e / cols, t = e - r * cols;
        float acc = 0.0f;
        if (wide)
            for (u32 m = 0; m < k; m++) acc += sQ[r * k + m] * (u[(u64)m * cols + t] * inv);
        else
            for (u32 m = 0; m < k; m++) acc += (u[r * cols + m] * inv) * sQ[m * k + t];
        x[e] = acc;
    }
}

// spectral_power: the spectral constraint's estimate of σ(W) and the constraint, as
// src/optim/spectral.rs's `estimate` and `constrain` issue them, for a rows × cols
// row-major W with k = min(rows, cols) ≤ MEP_GRAM_MAX:
//   G = W·Wᵀ (rows ≤ cols) or Wᵀ·W (k × k), scaled by the power of two nearest below
//     1/tr(G) (exact; none when tr G is 0 or not finite);
//   `squarings` times: T = G·G, then G = T/(‖T‖_F + 1e−30) after squarings 1, 3, 5, …
//     and the last, G = T after the others;
//   max(iters, 1) times: h = uᵀG (u as a row), u = h/‖h‖ (u kept when ‖h‖ is 0 or
//     not finite);
//   σ̂² = ‖uᵀW‖² (rows ≤ cols) or ‖W·u‖², written to norm[0];
//   with clamp ≠ 0 and σ̂ > γ: W ← W·γ/σ̂.
// u (k values) is read and written.
// Launch: one block of MEP_GRAM_THREADS threads (1-D).
extern "C" __global__ void spectral_power(u32 rows, u32 cols, u32 squarings, u32 iters,
                                          float* __restrict__ w, float* __restrict__ u,
                                          float* __restrict__ norm, float gamma, u32 clamp) {
    __shared__ float sG[MEP_GRAM_MAX * MEP_GRAM_MAX];
    __shared__ float sT[MEP_GRAM_MAX * MEP_GRAM_MAX];
    __shared__ float sU[MEP_GRAM_MAX];
    __shared__ float sH[MEP_GRAM_MAX];
    __shared__ float sRed[MEP_GRAM_THREADS];
    const u32 tid = threadIdx.x, nt = blockDim.x;
    const bool wide = rows <= cols;
    const u32 k = wide ? rows : cols, n = wide ? cols : rows, kk = k * k;
    mep_gram_fill(w, rows, cols, 1.0f, sG);  // G = W·Wᵀ or Wᵀ·W
    {
        // NormRule::InversePowerOfTwo with s = tr G = ‖W‖²: G brought to trace ~1,
        // exactly.
        float tr = 0.0f;
        for (u32 i = tid; i < k; i += nt) tr += sG[i * k + i];
        const float s = mep_block_sum_all(tr, sRed);
        if (s > 0.0f && isfinite(s)) {
            const float f = mep_pow2_below_inv(s);
            for (u32 e = tid; e < kk; e += nt) sG[e] *= f;
        }
        __syncthreads();
    }
    // H = G^(2^squarings), normalised as the GEMM loop does.
    for (u32 s = 0; s < squarings; s++) {
        float ss = 0.0f;
        for (u32 e = tid; e < kk; e += nt) {
            const float t = mep_sq_dot(k, e, sG, sG);
            sT[e] = t;
            ss += t * t;
        }
        const bool normalise = s % 2 == 0 || s + 1 == squarings;
        const float inv = normalise ? 1.0f / (sqrtf(mep_block_sum_all(ss, sRed)) + 1e-30f) : 1.0f;
        __syncthreads();
        for (u32 e = tid; e < kk; e += nt) sG[e] = normalise ? sT[e] * inv : sT[e];
        __syncthreads();
    }
    // Power iterations on H.
    for (u32 i = tid; i < k; i += nt) sU[i] = u[i];
    __syncthreads();
    const u32 its = iters > 0 ? iters : 1;
    for (u32 it = 0; it < its; it++) {
        float ss = 0.0f;
        for (u32 c = tid; c < k; c += nt) {
            float acc = 0.0f;
            for (u32 m = 0; m < k; m++) acc += sU[m] * sG[m * k + c];
            sH[c] = acc;
            ss += acc * acc;
        }
        // NormRule::OrKeep: a zero (or overflowed) h leaves u as it is.
        const float s = mep_block_sum_all(ss, sRed);
        if (s > 0.0f && isfinite(s)) {
            const float inv = 1.0f / sqrtf(s);
            for (u32 c = tid; c < k; c += nt) sU[c] = sH[c] * inv;
        }
        __syncthreads();
    }
    for (u32 i = tid; i < k; i += nt) u[i] = sU[i];
    // σ̂² = ‖uᵀW‖² (wide) or ‖W·u‖² (tall): a thread per entry of the product.
    float ss = 0.0f;
    for (u32 t = tid; t < n; t += nt) {
        float acc = 0.0f;
        if (wide)
            for (u32 r = 0; r < k; r++) acc += sU[r] * w[(u64)r * cols + t];
        else
            for (u32 c = 0; c < k; c++) acc += w[(u64)t * cols + c] * sU[c];
        ss += acc * acc;
    }
    const float sigma_sq = mep_block_sum_all(ss, sRed);
    if (tid == 0) norm[0] = sigma_sq;
    // The constraint (every read of W is behind the barrier of the sum above).
    const float sigma = sqrtf(sigma_sq);
    if (clamp != 0 && sigma > gamma) {
        const float f = gamma / sigma;
        const u64 len = (u64)rows * cols;
        for (u64 i = tid; i < len; i += nt) w[i] = w[i] * f;
    }
}

// ---- square_products: k × k products with a linear epilogue, many blocks ----------

// Output tile side (a block computes a MEP_SQ_TILE × MEP_SQ_TILE tile) and the block's
// rows of threads: blockDim = (MEP_SQ_TILE, MEP_SQ_ROWS), each thread MEP_SQ_TILE /
// MEP_SQ_ROWS outputs of one column.
#define MEP_SQ_TILE 32
#define MEP_SQ_ROWS 8

// One output tile (blockIdx.x: column tile, blockIdx.y: row tile) of
// Out ← α·(X·Y) + (β·Z + γ·W) for k × k row-major matrices, or Out ← α·(X·Y) when
// add = 0 (Z and W unread, so any pointer will do). The bracket is formed first, as
// lincomb does before the GEMM that adds α·X·Y to it on the unfused path
// (src/backend/mod.rs, square_product_unfused). The product's sum runs in m order
// over tiles of MEP_SQ_TILE staged in shared memory; entries past k are staged as
// zeros and not summed.
__device__ void mep_sq_product_tile(u32 k, const float* __restrict__ X, const float* __restrict__ Y,
                                    float alpha, u32 add, const float* __restrict__ Z, float beta,
                                    const float* __restrict__ W, float gamma, float* __restrict__ Out,
                                    float (*sX)[MEP_SQ_TILE + 1], float (*sY)[MEP_SQ_TILE + 1]) {
    const u32 tx = threadIdx.x, ty = threadIdx.y;
    const u32 col = blockIdx.x * MEP_SQ_TILE + tx, row0 = blockIdx.y * MEP_SQ_TILE;
    const u32 per = MEP_SQ_TILE / MEP_SQ_ROWS;
    float acc[MEP_SQ_TILE / MEP_SQ_ROWS];
    for (u32 j = 0; j < per; j++) acc[j] = 0.0f;
    for (u32 m0 = 0; m0 < k; m0 += MEP_SQ_TILE) {
        for (u32 r = ty; r < MEP_SQ_TILE; r += MEP_SQ_ROWS) {
            const u32 xr = row0 + r, xm = m0 + tx, ym = m0 + r;
            sX[r][tx] = (xr < k && xm < k) ? X[(u64)xr * k + xm] : 0.0f;
            sY[r][tx] = (ym < k && col < k) ? Y[(u64)ym * k + col] : 0.0f;
        }
        __syncthreads();
        const u32 depth = k - m0 < MEP_SQ_TILE ? k - m0 : MEP_SQ_TILE;
        for (u32 m = 0; m < depth; m++) {
            const float y = sY[m][tx];
            for (u32 j = 0; j < per; j++) acc[j] += sX[ty + j * MEP_SQ_ROWS][m] * y;
        }
        __syncthreads();  // the tiles are restaged next round
    }
    if (col >= k) return;
    for (u32 j = 0; j < per; j++) {
        const u32 row = row0 + ty + j * MEP_SQ_ROWS;
        if (row >= k) continue;
        const u64 e = (u64)row * k + col;
        Out[e] = add ? alpha * acc[j] + (beta * Z[e] + gamma * W[e]) : alpha * acc[j];
    }
}

// square_products: Out_z ← α_z·(X_z·Y_z) + (β_z·Z_z + γ_z·W_z), or α_z·(X_z·Y_z) alone
// when add_z = 0, for z < gridDim.z ≤ 2 and k × k row-major matrices
// (mep_sq_product_tile); no Out_z may alias any input. Two independent products share
// one launch (Newton–Schulz's P·A and P·Q).
// Launch: block (MEP_SQ_TILE, MEP_SQ_ROWS); grid (⌈k/MEP_SQ_TILE⌉, ⌈k/MEP_SQ_TILE⌉,
// products).
extern "C" __global__ void square_products(u32 k, const float* __restrict__ x0,
                                           const float* __restrict__ y0, float a0, u32 add0,
                                           const float* __restrict__ z0, float b0,
                                           const float* __restrict__ w0, float g0,
                                           float* __restrict__ o0, const float* __restrict__ x1,
                                           const float* __restrict__ y1, float a1, u32 add1,
                                           const float* __restrict__ z1, float b1,
                                           const float* __restrict__ w1, float g1,
                                           float* __restrict__ o1) {
    __shared__ float sX[MEP_SQ_TILE][MEP_SQ_TILE + 1];
    __shared__ float sY[MEP_SQ_TILE][MEP_SQ_TILE + 1];
    if (blockIdx.z == 0)
        mep_sq_product_tile(k, x0, y0, a0, add0, z0, b0, w0, g0, o0, sX, sY);
    else
        mep_sq_product_tile(k, x1, y1, a1, add1, z1, b1, w1, g1, o1, sX, sY);
}

// ---- ns_iteration: one Newton–Schulz iteration in Gram space, by row strips ----------

// Rows of the k × k results per strip (one block at a time works on a strip), the
// largest k (a strip's four MEP_NS_STRIP × k arrays live in shared memory) and the
// threads of a block.
#define MEP_NS_STRIP 2
#define MEP_NS_MAX_K 256
#define MEP_NS_THREADS 256

// Out[r, j] ← α·Σ_m S[r, m]·Y[m, j] + (β·Z[r, j] + (row0 + r = j ? γ : 0)) for the
// `rows` × k strip S (shared memory, row-major), the k × k row-major Y and, with
// β ≠ 0, the strip Z (shared; unread when β = 0): rows row0 … row0 + rows − 1 of
// α·(X·Y) + (β·Z + γ·I), the sum in m order. Out (shared or global, row stride k) is
// distinct from S, Y and Z. Ends with a barrier.
__device__ void mep_strip_product(u32 k, u32 rows, u32 row0, const float* S,
                                  const float* __restrict__ Y, float alpha, const float* Z,
                                  float beta, float gamma, float* Out) {
    for (u32 e = threadIdx.x; e < rows * k; e += blockDim.x) {
        const u32 r = e / k, j = e - r * k;
        float acc = 0.0f;
        for (u32 m = 0; m < k; m++) acc += S[r * k + m] * Y[(u64)m * k + j];
        const float add = (beta != 0.0f ? beta * Z[e] : 0.0f) + (row0 + r == j ? gamma : 0.0f);
        Out[(u64)r * k + j] = alpha * acc + add;
    }
    __syncthreads();
}

// ns_iteration: one iteration of Newton–Schulz's polynomial in Gram space
// (src/optim/newton_schulz.rs) for the symmetric k × k row-major A = a_cur, with
// p(A) = aI + bA + cA²:
//   P = c·(A·A) + (b·A + a·I);   q_next ← P·Q (has_q), or P itself (Q = I);
//   with has_next: a_next ← A·p(A)², which equals P·A·P (the polynomials of A commute),
//   by Horner's rule in A: H = h0·A + h1·I; H ← H·A + h2·I; H ← H·A + h3·I;
//   H ← H·A + h4·I; a_next ← H·A, with (h0 … h4) = (c², 2bc, b² + 2ac, 2ab, a²).
// Why Horner: row strip R of every product in that chain needs only strip R of its
// left factor and the whole of A, so a block computes its strips of q_next and a_next
// with no other block's results, and the iteration is one launch (P·A·P would need
// all of P before its second product: three launches). It costs six strip products
// per iteration instead of four, which at k ≤ 128 is a few MFLOP; its rounding is
// bounded by the same sums taken over |A| (tests/host_kernels.rs).
// With s = 1 / (√norm_sq[0] + eps) (norm_sq is read only when a flag is set): scale_in makes the
// iteration's A = s²·a_cur (the Gram matrix of an unnormalised U, normalised here:
// each strip of A is scaled as it is loaded, and every product by the whole of A
// takes s² in its α), and scale_out makes q_next = s·P·Q (s·P when Q = I), so that
// the orthogonalised matrix is q_next·U with no normalised copy of U ever formed.
// q_next and a_next are distinct from a_cur, Q and each other.
// Launch: blocks of MEP_NS_THREADS threads (1-D), any number: block b takes strips
// b, b + gridDim.x, … of ⌈k / MEP_NS_STRIP⌉. The host checks k ≤ MEP_NS_MAX_K
// (src/backend/cuda/gram.rs).
extern "C" __global__ void ns_iteration(u32 k, float a, float b, float c, float h0, float h1,
                                        float h2, float h3, float h4,
                                        const float* __restrict__ a_cur,
                                        const float* __restrict__ q, u32 has_q,
                                        float* __restrict__ q_next, float* __restrict__ a_next,
                                        u32 has_next, const float* __restrict__ norm_sq,
                                        float eps, u32 scale_in, u32 scale_out) {
    __shared__ float sA[MEP_NS_STRIP * MEP_NS_MAX_K];
    __shared__ float sP[MEP_NS_STRIP * MEP_NS_MAX_K];
    __shared__ float sH[MEP_NS_STRIP * MEP_NS_MAX_K];
    __shared__ float sG[MEP_NS_STRIP * MEP_NS_MAX_K];
    // sa: the factor on a_cur (s² or 1); so: the factor on q_next (s or 1).
    const float inv = scale_in || scale_out ? 1.0f / (sqrtf(norm_sq[0]) + eps) : 1.0f;
    const float sa = scale_in ? inv * inv : 1.0f;
    const float so = scale_out ? inv : 1.0f;
    const u32 strips = (k + MEP_NS_STRIP - 1) / MEP_NS_STRIP;
    for (u32 s = blockIdx.x; s < strips; s += gridDim.x) {
        const u32 row0 = s * MEP_NS_STRIP;
        const u32 rows = k - row0 < MEP_NS_STRIP ? k - row0 : MEP_NS_STRIP;
        const u32 len = rows * k;
        for (u32 e = threadIdx.x; e < len; e += blockDim.x) sA[e] = sa * a_cur[(u64)row0 * k + e];
        __syncthreads();
        // P's strip (scaled by so): straight to q_next when Q = I.
        if (has_q) {
            mep_strip_product(k, rows, row0, sA, a_cur, c * sa, sA, b, a, sP);
            mep_strip_product(k, rows, row0, sP, q, so, sA, 0.0f, 0.0f, q_next + (u64)row0 * k);
        } else {
            mep_strip_product(k, rows, row0, sA, a_cur, c * sa * so, sA, b * so, a * so,
                              q_next + (u64)row0 * k);
        }
        if (has_next) {
            for (u32 e = threadIdx.x; e < len; e += blockDim.x) {
                const u32 r = e / k, j = e - r * k;
                sH[e] = h0 * sA[e] + h1 * (row0 + r == j ? 1.0f : 0.0f);
            }
            __syncthreads();
            mep_strip_product(k, rows, row0, sH, a_cur, sa, sA, 0.0f, h2, sG);
            mep_strip_product(k, rows, row0, sG, a_cur, sa, sA, 0.0f, h3, sH);
            mep_strip_product(k, rows, row0, sH, a_cur, sa, sA, 0.0f, h4, sG);
            mep_strip_product(k, rows, row0, sG, a_cur, sa, sA, 0.0f, 0.0f,
                              a_next + (u64)row0 * k);
        }
    }
}
