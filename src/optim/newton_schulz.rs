//! Muon's orthogonalisation: the quintic Newton–Schulz iteration (SPEC §3.2).
//!
//! X = U / (‖U‖_F + 1e−7); for a wide matrix (rows ≤ cols), `steps` times:
//! A = X Xᵀ, X ← aX + (bA + cA²)X with (a, b, c) = (3.4445, −4.7750, 2.0315).
//! A tall matrix uses the transposed form A = XᵀX, X ← aX + X(bA + cA²), which is
//! the same iteration on Xᵀ without materialising a transpose. Every product is a
//! GEMM; the polynomial combination is folded into GEMM α/β.

use crate::backend::Backend;
use crate::Result;

/// Keller Jordan's quintic coefficients.
pub const NS_COEFFS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

/// Scratch buffers for one `rows × cols` matrix.
pub struct NsScratch<B: Backend> {
    /// The iterate X (holds the result).
    pub x: B::Buf,
    next: B::Buf,
    gram: B::Buf,
    poly: B::Buf,
    norm: B::Buf,
}

impl<B: Backend> NsScratch<B> {
    /// Buffers for a `rows × cols` matrix.
    pub fn new(bk: &B, rows: usize, cols: usize) -> Result<Self> {
        let k = rows.min(cols);
        Ok(NsScratch {
            x: bk.zeros(rows * cols)?,
            next: bk.zeros(rows * cols)?,
            gram: bk.zeros(k * k)?,
            poly: bk.zeros(k * k)?,
            norm: bk.zeros(1)?,
        })
    }
}

/// Orthogonalises `u` (`rows × cols`) into `scratch.x` with `steps` quintic iterations.
pub fn orthogonalize<B: Backend>(
    bk: &B,
    rows: usize,
    cols: usize,
    steps: usize,
    u: &B::Buf,
    sc: &mut NsScratch<B>,
) -> Result<()> {
    let (a, b, c) = NS_COEFFS;
    bk.sum_sq(u, &mut sc.norm)?;
    bk.scale_by_inv_norm(u, &sc.norm, 1e-7, &mut sc.x)?;
    let wide = rows <= cols;
    let k = rows.min(cols);
    for _ in 0..steps {
        if wide {
            bk.gemm(false, true, k, k, cols, 1.0, &sc.x, &sc.x, 0.0, &mut sc.gram)?;
        } else {
            bk.gemm(true, false, k, k, rows, 1.0, &sc.x, &sc.x, 0.0, &mut sc.gram)?;
        }
        // poly = b·A + c·A²
        bk.copy(&sc.gram, &mut sc.poly)?;
        bk.gemm(false, false, k, k, k, c, &sc.gram, &sc.gram, b, &mut sc.poly)?;
        // next = a·X + poly·X (wide) or a·X + X·poly (tall)
        bk.copy(&sc.x, &mut sc.next)?;
        if wide {
            bk.gemm(false, false, rows, cols, k, 1.0, &sc.poly, &sc.x, a, &mut sc.next)?;
        } else {
            bk.gemm(false, false, rows, cols, k, 1.0, &sc.x, &sc.poly, a, &mut sc.next)?;
        }
        std::mem::swap(&mut sc.x, &mut sc.next);
    }
    Ok(())
}

/// FLOPs of [`orthogonalize`] for a `rows × cols` matrix (for BENCHMARKS.md).
pub fn flops(rows: usize, cols: usize, steps: usize) -> f64 {
    let (m, n) = (rows.min(cols) as f64, rows.max(cols) as f64);
    steps as f64 * (2.0 * m * m * n + 2.0 * m * m * m + 2.0 * m * m * n)
}
