//! The spectral constraint (SPEC §3.5): σ̂(W) by power iteration with a persistent
//! vector per matrix; if σ̂ > γ, W ← W·γ/σ̂.
//!
//! Muon's orthogonal updates flatten the top of W's spectrum, and plain power
//! iteration converges as (σ₂/σ₁)^{2t}: with the top singular values within a few
//! percent of each other it underestimates σ by more than the 1% the constraint
//! allows (measured: 2–6% after 20 plain iterations, and still 1–2% on (WWᵀ)^8 and
//! (WWᵀ)^32 when the top two singular values swap between steps). So the iteration
//! runs on H = (WWᵀ)^1024, built by ten normalised squarings of the small k×k Gram
//! matrix (k = min(rows, cols): 10 for the seed's constrained output layer), which
//! resolves a 0.3% gap in one iteration; the persistent vector is
//! warmed up with [`WARMUP_ITERS`] iterations when the optimizer is built, and σ̂² is
//! the Rayleigh quotient uᵀWWᵀu = ‖Wᵀu‖². Every product is a GEMM and every norm is
//! a device scalar: no host round trip. A backend may run the whole of it as one
//! fused operation ([`Backend::spectral_power`]).

use crate::backend::{Backend, NormRule, Scalar};
use crate::rng::Rng;
use crate::Result;

/// Iterations run once, when the optimizer is built.
pub const WARMUP_ITERS: usize = 10;

/// Squarings of the Gram matrix: H = G^(2^SQUARINGS).
pub(crate) const SQUARINGS: usize = 10;

/// Persistent power-iteration state of one `rows × cols` matrix.
pub struct PowerIter<B: Backend> {
    u: B::Buf,
    hu: B::Buf,
    wu: B::Buf,
    gram: B::Buf,
    tmp: B::Buf,
    norm: B::Buf,
    rows: usize,
    cols: usize,
}

impl<B: Backend> PowerIter<B> {
    /// A random unit start vector (seeded), then [`WARMUP_ITERS`] iterations on `w`.
    pub fn new(bk: &B, w: &B::Buf, rows: usize, cols: usize, seed: u64) -> Result<Self> {
        let k = rows.min(cols);
        let mut rng = Rng::new(seed);
        let mut u: Vec<f64> = (0..k).map(|_| rng.normal()).collect();
        let n = u.iter().map(|x| x * x).sum::<f64>().sqrt();
        u.iter_mut().for_each(|x| *x /= n);
        let u: Vec<B::Elem> = u.into_iter().map(Scalar::of).collect();
        let mut p = PowerIter {
            u: bk.upload(&u)?,
            hu: bk.zeros(k)?,
            wu: bk.zeros(if rows <= cols { cols } else { rows })?,
            gram: bk.zeros(k * k)?,
            tmp: bk.zeros(k * k)?,
            norm: bk.zeros(1)?,
            rows,
            cols,
        };
        p.estimate(bk, w, WARMUP_ITERS)?;
        Ok(p)
    }

    /// Refines u with max(`iters`, 1) iterations on H = (WWᵀ)^(2^SQUARINGS) and leaves σ̂²
    /// in `norm`.
    fn estimate(&mut self, bk: &B, w: &B::Buf, iters: usize) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        let wide = rows <= cols;
        let k = rows.min(cols);
        // G = WWᵀ (wide) or WᵀW (tall), k×k.
        if wide {
            bk.gemm(false, true, k, k, cols, 1.0, w, w, 0.0, &mut self.gram)?;
        } else {
            bk.gemm(true, false, k, k, rows, 1.0, w, w, 0.0, &mut self.gram)?;
        }
        // G's magnitude first: G divided by tr G = ‖W‖² up to a factor of 2, by an exact
        // power of two, so that the first squaring's sum of squares (σ⁸) neither
        // underflows (σ below about 1e-5 in f32) nor overflows (σ above about 6e4),
        // and the result is the same, bit for bit, as without it wherever neither
        // happens. (‖W‖², not ‖G‖²: that one would underflow below σ ≈ 1e-10.)
        bk.sum_sq(w, &mut self.norm)?;
        bk.scale_by_inv_norm(&self.gram, &self.norm, NormRule::InversePowerOfTwo, &mut self.tmp)?;
        std::mem::swap(&mut self.gram, &mut self.tmp);
        // H = G^1024 by squaring, normalised after squarings 1, 3, 5, … and the last:
        // between normalisations entries grow by at most λ² ≤ 1 or stay ≤ 1 (from a
        // normalised H), and shrink by at most 1/k², all well inside f32.
        for j in 0..SQUARINGS {
            bk.gemm(false, false, k, k, k, 1.0, &self.gram, &self.gram, 0.0, &mut self.tmp)?;
            if j % 2 == 0 || j + 1 == SQUARINGS {
                bk.sum_sq(&self.tmp, &mut self.norm)?;
                bk.scale_by_inv_norm(&self.tmp, &self.norm, NormRule::Eps(1e-30), &mut self.gram)?;
            } else {
                std::mem::swap(&mut self.gram, &mut self.tmp);
            }
        }
        for _ in 0..iters.max(1) {
            // u ← Hu / ‖Hu‖ (H symmetric: Hu = uH as a row). Where Hu is 0 (W is 0)
            // u keeps its direction: a zero u would stay zero, and the constraint
            // would never act again, even on a W that grows later.
            bk.gemm(false, false, 1, k, k, 1.0, &self.u, &self.gram, 0.0, &mut self.hu)?;
            bk.sum_sq(&self.hu, &mut self.norm)?;
            bk.scale_by_inv_norm(&self.hu, &self.norm, NormRule::OrKeep, &mut self.u)?;
        }
        // σ̂² = ‖Wᵀu‖² (wide) or ‖Wu‖² (tall).
        if wide {
            bk.gemm(false, false, 1, cols, rows, 1.0, &self.u, w, 0.0, &mut self.wu)?;
        } else {
            bk.gemm(false, true, 1, rows, cols, 1.0, &self.u, w, 0.0, &mut self.wu)?;
        }
        bk.sum_sq(&self.wu, &mut self.norm)
    }

    /// Refines the estimate with `iters` iterations and rescales `w` if σ̂ > γ.
    pub fn constrain(&mut self, bk: &B, w: &mut B::Buf, gamma: f64, iters: usize) -> Result<()> {
        // The backend may run all of it as one fused operation (the CUDA backend does
        // for small k: one launch instead of about 45).
        let (rows, cols) = (self.rows, self.cols);
        if bk.spectral_power(
            rows,
            cols,
            SQUARINGS,
            iters,
            w,
            &mut self.u,
            &mut self.norm,
            Some(gamma),
        )? {
            return Ok(());
        }
        self.estimate(bk, w, iters)?;
        bk.spectral_clamp(w, &self.norm, gamma)
    }

    /// σ̂², the squared estimate of σ(W) left by the last [`PowerIter::constrain`] (or
    /// by the warm-up, before the first): taken before the rescaling, so above γ² when
    /// that step rescaled W. Reads the device (a synchronisation).
    pub fn sigma_sq(&self, bk: &B) -> Result<f64> {
        Ok(bk.download(&self.norm)?[0].f64())
    }

    /// The persistent vector u (length `min(rows, cols)`), the estimate of W's top
    /// left (wide W) or right (tall W) singular vector. Reads the device (a
    /// synchronisation).
    pub fn vector_host(&self, bk: &B) -> Result<Vec<f64>> {
        Ok(bk.download(&self.u)?.into_iter().map(|v| v.f64()).collect())
    }
}

/// The persistent vector, for saving and restoring an optimizer's state
/// ([`crate::optim::OptimizerState`]); everything else here is scratch.
impl<B: Backend> PowerIter<B> {
    /// The power-iteration vector u (length `min(rows, cols)`).
    pub(crate) fn vector(&self) -> &B::Buf {
        &self.u
    }

    /// The power-iteration vector u, to overwrite.
    pub(crate) fn vector_mut(&mut self) -> &mut B::Buf {
        &mut self.u
    }
}
