//! The one place where the crate's row-major GEMMs are mapped onto column-major
//! cuBLAS.
//!
//! A row-major r×c buffer is, read column-major, the c×r transpose (leading dimension
//! c). So C = op(A)·op(B) (row-major, m×n) is computed as the column-major product
//! Cᵀ = op(B)ᵀ·op(A)ᵀ (n×m, ldc = n): cuBLAS's first operand is our B, its second
//! our A, and each keeps its own transpose flag, because the column-major view of a
//! row-major buffer already supplies the extra transpose.

/// Which of the caller's (row-major) operands a cuBLAS operand slot receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// The caller's A (the m×k factor).
    A,
    /// The caller's B (the k×n factor).
    B,
}

/// Arguments of one column-major `cublasSgemm(transa, transb, m, n, k, α, A, lda, B,
/// ldb, β, C, ldc)` call; `first`/`second` say which caller buffer goes in the A/B
/// slot. C is always the caller's C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CublasGemm {
    /// Transpose the first operand (`CUBLAS_OP_T`) or not (`CUBLAS_OP_N`).
    pub transa: bool,
    /// Transpose the second operand.
    pub transb: bool,
    /// Rows of the column-major result (= the caller's n).
    pub m: usize,
    /// Columns of the column-major result (= the caller's m).
    pub n: usize,
    /// Inner dimension (= the caller's k).
    pub k: usize,
    /// Leading dimension of the first operand.
    pub lda: usize,
    /// Leading dimension of the second operand.
    pub ldb: usize,
    /// Leading dimension of C.
    pub ldc: usize,
    /// The caller buffer passed as cuBLAS's A.
    pub first: Operand,
    /// The caller buffer passed as cuBLAS's B.
    pub second: Operand,
}

/// Maps the row-major C (m×n) ← α·op(A)·op(B) + β·C — op(A) m×k, A stored k×m when
/// `ta`; op(B) k×n, B stored n×k when `tb` (as in [`crate::backend::Backend::gemm`]) —
/// onto one column-major cuBLAS call. Leading dimensions are at least 1, as cuBLAS
/// requires even for empty matrices.
pub fn gemm_map(ta: bool, tb: bool, m: usize, n: usize, k: usize) -> CublasGemm {
    // Row length (= column-major leading dimension) of each stored buffer.
    let ld_b = if tb { k } else { n };
    let ld_a = if ta { m } else { k };
    CublasGemm {
        transa: tb,
        transb: ta,
        m: n,
        n: m,
        k,
        lda: ld_b.max(1),
        ldb: ld_a.max(1),
        ldc: n.max(1),
        first: Operand::B,
        second: Operand::A,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_product_swaps_operands() {
        let g = gemm_map(false, false, 2, 3, 4);
        assert_eq!((g.m, g.n, g.k, g.lda, g.ldb, g.ldc), (3, 2, 4, 3, 4, 3));
        assert_eq!(
            (g.first, g.second, g.transa, g.transb),
            (Operand::B, Operand::A, false, false)
        );
    }
}
