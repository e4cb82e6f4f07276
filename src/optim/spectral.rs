//! The spectral constraint (SPEC §3.5): σ̂(W) by power iteration with a persistent
//! vector per matrix; if σ̂ > γ, W ← W·γ/σ̂.
//!
//! Power iteration underestimates σ. The vector persists across steps (W moves
//! little per step), is warmed up with [`WARMUP_ITERS`] iterations when the optimizer
//! is built, and gets `iters` more every step, so the estimate tracks the true top
//! singular value closely (tests check σ(W) ≤ 1.01 γ after every step).

use crate::backend::{Backend, Scalar};
use crate::rng::Rng;
use crate::Result;

/// Iterations run once, when the optimizer is built.
pub const WARMUP_ITERS: usize = 30;

/// Persistent power-iteration state of one `rows × cols` matrix.
pub struct PowerIter<B: Backend> {
    u: B::Buf,
    v_raw: B::Buf,
    v: B::Buf,
    wv: B::Buf,
    norm: B::Buf,
    rows: usize,
    cols: usize,
}

impl<B: Backend> PowerIter<B> {
    /// A random unit start vector (seeded), then [`WARMUP_ITERS`] iterations on `w`.
    pub fn new(bk: &B, w: &B::Buf, rows: usize, cols: usize, seed: u64) -> Result<Self> {
        let mut rng = Rng::new(seed);
        let mut u: Vec<f64> = (0..rows).map(|_| rng.normal()).collect();
        let n = u.iter().map(|x| x * x).sum::<f64>().sqrt();
        u.iter_mut().for_each(|x| *x /= n);
        let u: Vec<B::Elem> = u.into_iter().map(Scalar::of).collect();
        let mut p = PowerIter {
            u: bk.upload(&u)?,
            v_raw: bk.zeros(cols)?,
            v: bk.zeros(cols)?,
            wv: bk.zeros(rows)?,
            norm: bk.zeros(1)?,
            rows,
            cols,
        };
        p.iterate(bk, w, WARMUP_ITERS)?;
        Ok(p)
    }

    /// `iters` power iterations; leaves σ̂² = ‖W v‖² in the device scalar `norm`.
    fn iterate(&mut self, bk: &B, w: &B::Buf, iters: usize) -> Result<()> {
        for _ in 0..iters.max(1) {
            // v = Wᵀu / ‖Wᵀu‖, with u as a 1×rows row: Wᵀu = u W.
            bk.gemm(
                false,
                false,
                1,
                self.cols,
                self.rows,
                1.0,
                &self.u,
                w,
                0.0,
                &mut self.v_raw,
            )?;
            bk.sum_sq(&self.v_raw, &mut self.norm)?;
            bk.scale_by_inv_norm(&self.v_raw, &self.norm, 1e-30, &mut self.v)?;
            // Wv, σ̂ = ‖Wv‖, u = Wv / σ̂.
            bk.gemm(false, true, 1, self.rows, self.cols, 1.0, &self.v, w, 0.0, &mut self.wv)?;
            bk.sum_sq(&self.wv, &mut self.norm)?;
            bk.scale_by_inv_norm(&self.wv, &self.norm, 1e-30, &mut self.u)?;
        }
        Ok(())
    }

    /// Refines the estimate with `iters` iterations and rescales `w` if σ̂ > γ.
    pub fn constrain(&mut self, bk: &B, w: &mut B::Buf, gamma: f64, iters: usize) -> Result<()> {
        self.iterate(bk, w, iters)?;
        bk.spectral_clamp(w, &self.norm, gamma)
    }
}
