// Mini-batch assembly: row and label gathers through an index permutation.
// Cooperation-free 1-D grid-stride kernels (256 threads per block).
#include "common.cuh"

// gather_rows: dst[i, :] = src[idx[start + i], :] for i < count, rows of row_len
// elements; src has src_rows rows. An out-of-range index yields a zero row (the
// kernel cannot report an error without a host round trip; the CPU backend does).
// Launch: 1-D grid-stride over count·row_len.
extern "C" __global__ void gather_rows(u64 count, u64 row_len, const float* __restrict__ src,
                                       u64 src_rows, const u32* __restrict__ idx, u64 start,
                                       float* __restrict__ dst) {
    MEP_GRID_STRIDE(i, count * row_len) {
        u64 row = i / row_len, col = i - row * row_len;
        u64 r = idx[start + row];
        dst[i] = r < src_rows ? src[r * row_len + col] : 0.0f;
    }
}

// gather_batch: gather_rows of src into dst and gather_labels of lsrc into ldst through
// the same indices, in one pass (the label of row i by the thread of its element 0).
// Launch: 1-D grid-stride over count·row_len (row_len ≥ 1).
extern "C" __global__ void gather_batch(u64 count, u64 row_len, const float* __restrict__ src,
                                        u64 src_rows, const u32* __restrict__ lsrc, u64 lsrc_len,
                                        const u32* __restrict__ idx, u64 start,
                                        float* __restrict__ dst, u32* __restrict__ ldst) {
    MEP_GRID_STRIDE(i, count * row_len) {
        u64 row = i / row_len, col = i - row * row_len;
        u64 r = idx[start + row];
        dst[i] = r < src_rows ? src[r * row_len + col] : 0.0f;
        if (col == 0) ldst[row] = r < lsrc_len ? lsrc[r] : 0u;
    }
}

// gather_labels: dst[i] = src[idx[start + i]] for i < count (0 when out of range).
// Launch: 1-D grid-stride over count.
extern "C" __global__ void gather_labels(u64 count, const u32* __restrict__ src, u64 src_len,
                                         const u32* __restrict__ idx, u64 start,
                                         u32* __restrict__ dst) {
    MEP_GRID_STRIDE(i, count) {
        u64 r = idx[start + i];
        dst[i] = r < src_len ? src[r] : 0u;
    }
}
