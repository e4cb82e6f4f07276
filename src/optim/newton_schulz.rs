//! Muon's orthogonalisation: the quintic Newton–Schulz iteration (SPEC §3.2),
//! evaluated in the small Gram space.
//!
//! The iteration is X ← p(A)X with A = XXᵀ and p(A) = aI + bA + cA²,
//! (a, b, c) = (3.4445, −4.7750, 2.0315), from X₀ = U / (‖U‖_F + 1e−7), 5 times.
//! Every p(A_i) is a polynomial in A₀ = X₀X₀ᵀ, so all of them commute and
//! X_i = Q_i X₀ with Q_{i+1} = p(A_i) Q_i and A_{i+1} = p(A_i) A_i p(A_i).
//! For the seed's 128×784 matrix that replaces ten 128×128×784 products per
//! iteration by four 128³ ones: 122 instead of 278 MFLOP per call (the direct
//! form is kept in the tests as the f64 reference). A tall matrix (rows > cols)
//! is handled as its transpose: A = XᵀX and X = X₀Q.
//!
//! The k × k work goes through [`Backend::square_products`]: P = cA² + (bA + aI) is
//! one product with an epilogue, and P·A and P·Q are independent, so a fused
//! backend runs an iteration in three launches (P; P·A beside P·Q; (P·A)·P). A
//! backend may instead run a whole iteration as one operation
//! ([`Backend::ns_iteration`]: the CUDA backend does for k ≤ 128, forming P·A·P as
//! A·p(A)² by Horner's rule, so that each block needs only its own rows). Such a
//! backend also takes the normalisation ([`NsNorm`]): A₀ is then formed from U itself
//! and scaled by 1/(‖U‖ + eps)² inside the first iteration, and the last Q by
//! 1/(‖U‖ + eps), so that X = Q·U with no normalised copy X₀ (one pass over U and one
//! launch fewer).
//!
//! The result goes to [`NsScratch::x`] or, for Muon's update, straight into the
//! weights ([`NsOut::Update`], through [`Backend::gemm_ctl`]).

use crate::backend::{Backend, NormRule, NsIteration, NsNorm, Scalar, SquareProduct};
use crate::{MepError, Result};

/// The eps of X₀ = U / (‖U‖_F + eps).
const NORM_EPS: f64 = 1e-7;

/// Keller Jordan's quintic coefficients (a, b, c).
pub const NS_COEFFS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

/// Scratch buffers for one `rows × cols` matrix.
pub struct NsScratch<B: Backend> {
    /// The result: the orthogonalised matrix, `rows × cols`.
    pub x: B::Buf,
    x0: B::Buf,
    gram: B::Buf,
    poly: B::Buf,
    q: B::Buf,
    q_next: B::Buf,
    tmp: B::Buf,
    eye: B::Buf,
    norm: B::Buf,
}

impl<B: Backend> NsScratch<B> {
    /// The scalar Σ u² of the matrix being orthogonalised (see [`orthogonalize_from`]).
    pub fn norm_sq(&mut self) -> &mut B::Buf {
        &mut self.norm
    }

    /// Buffers for a `rows × cols` matrix.
    pub fn new(bk: &B, rows: usize, cols: usize) -> Result<Self> {
        let k = rows.min(cols);
        let mut eye = vec![B::Elem::of(0.0); k * k];
        for i in 0..k {
            eye[i * k + i] = B::Elem::of(1.0);
        }
        Ok(NsScratch {
            x: bk.zeros(rows * cols)?,
            x0: bk.zeros(rows * cols)?,
            gram: bk.zeros(k * k)?,
            poly: bk.zeros(k * k)?,
            q: bk.zeros(k * k)?,
            q_next: bk.zeros(k * k)?,
            tmp: bk.zeros(k * k)?,
            eye: bk.upload(&eye)?,
            norm: bk.zeros(1)?,
        })
    }
}

/// Where an orthogonalisation's result O goes.
pub enum NsOut<'a, B: Backend> {
    /// Into [`NsScratch::x`].
    Matrix,
    /// Into an update W ← α·O + β·W, α and β the [`crate::backend::ctl`] slots
    /// `alpha_slot` and `beta_slot` (Muon's −lr·scale and decay). The last product
    /// writes W directly where the backend can ([`Backend::gemm_ctl`]: one cuBLAS call
    /// on CUDA instead of a GEMM and an `axpby_ctl`); `sc.x` is scratch then.
    Update {
        /// The step scalars.
        ctl: &'a B::Labels,
        /// α's slot.
        alpha_slot: usize,
        /// β's slot.
        beta_slot: usize,
        /// The matrix updated.
        w: &'a mut B::Buf,
    },
}

/// Orthogonalises `u` (`rows × cols`) into `sc.x` with `steps` quintic iterations.
pub fn orthogonalize<B: Backend>(
    bk: &B,
    rows: usize,
    cols: usize,
    steps: usize,
    u: &B::Buf,
    sc: &mut NsScratch<B>,
) -> Result<()> {
    orthogonalize_from(bk, rows, cols, steps, u, false, sc, NsOut::Matrix)
}

/// [`orthogonalize`] into `out`, where `norm_ready` says that [`NsScratch::norm_sq`]
/// already holds Σ u² (Muon's Nesterov step computes it with the direction,
/// [`Backend::nesterov_sum_sq`]: one launch fewer on the step's critical path).
#[allow(clippy::too_many_arguments)]
pub fn orthogonalize_from<B: Backend>(
    bk: &B,
    rows: usize,
    cols: usize,
    steps: usize,
    u: &B::Buf,
    norm_ready: bool,
    sc: &mut NsScratch<B>,
    out: NsOut<'_, B>,
) -> Result<()> {
    // The backend may run all of it as one fused operation (the CUDA backend does
    // for small k: one launch instead of about 31).
    if bk.newton_schulz(rows, cols, steps, NS_COEFFS, u, &mut sc.x)? {
        return match out {
            NsOut::Matrix => Ok(()),
            NsOut::Update {
                ctl,
                alpha_slot,
                beta_slot,
                w,
            } => bk.axpby_ctl(ctl, alpha_slot, &sc.x, beta_slot, w),
        };
    }
    let (a, b, c) = NS_COEFFS;
    if !norm_ready {
        bk.sum_sq(u, &mut sc.norm)?;
    }
    let wide = rows <= cols;
    let k = rows.min(cols);
    // Where the backend runs each iteration as one operation, it also takes the
    // normalisation (NsNorm): the Gram matrix of U itself, scaled by 1/‖U‖² in the
    // first iteration, and the last Q scaled by 1/‖U‖, so that O = Q·U: no
    // normalised copy of U, one launch fewer on the chain. Otherwise X₀ = U/‖U‖.
    let fold_norm = steps > 0 && bk.folds_ns_norm(k);
    if !fold_norm {
        bk.scale_by_inv_norm(u, &sc.norm, NormRule::Eps(NORM_EPS), &mut sc.x0)?;
    }
    let x0 = if fold_norm { u } else { &sc.x0 };
    if wide {
        bk.gemm(false, true, k, k, cols, 1.0, x0, x0, 0.0, &mut sc.gram)?;
    } else {
        bk.gemm(true, false, k, k, rows, 1.0, x0, x0, 0.0, &mut sc.gram)?;
    }
    if steps == 0 {
        return match out {
            NsOut::Matrix => bk.copy(&sc.x0, &mut sc.x),
            NsOut::Update {
                ctl,
                alpha_slot,
                beta_slot,
                w,
            } => bk.axpby_ctl(ctl, alpha_slot, &sc.x0, beta_slot, w),
        };
    }
    // The backend may run the whole iteration below as one fused operation.
    let fused = !fold_norm && bk.ns_gram_poly(k, steps, NS_COEFFS, &sc.gram, &mut sc.q)?;
    // Otherwise three `square_products` calls per iteration (two in the last), each
    // one launch on a fused backend: P, then P·A beside P·Q, then (P·A)·P.
    for i in (0..steps).take_while(|_| !fused) {
        let last = i + 1 == steps;
        // The backend may run the iteration as one fused operation: Q ← P·Q into
        // q_next and A ← P·A·P into tmp, swapped in below.
        let it = NsIteration {
            gram: &sc.gram,
            q: (i > 0).then_some(&sc.q),
            q_next: &mut sc.q_next,
            gram_next: (!last).then_some(&mut sc.tmp),
            norm: fold_norm.then_some(NsNorm {
                sum_sq: &sc.norm,
                eps: NORM_EPS,
                scale_gram: i == 0,
                scale_q: last,
            }),
        };
        if bk.ns_iteration(k, NS_COEFFS, it)? {
            std::mem::swap(&mut sc.q, &mut sc.q_next);
            if !last {
                std::mem::swap(&mut sc.gram, &mut sc.tmp);
            }
            continue;
        }
        if fold_norm {
            return Err(MepError::Shape(format!(
                "{}: ns_iteration declined k = {k} after folds_ns_norm accepted it (a backend takes every iteration of a k or none)",
                bk.name()
            )));
        }
        // P = c·A² + (bA + aI).
        let poly = SquareProduct {
            alpha: c,
            x: &sc.gram,
            y: &sc.gram,
            add: Some((b, &sc.gram, a, &sc.eye)),
            out: &mut sc.poly,
        };
        bk.square_products(k, poly, None)?;
        // Q ← P·Q; Q₀ = I, so Q₁ = P itself (swapped in, not copied).
        if i == 0 {
            std::mem::swap(&mut sc.q, &mut sc.poly);
        }
        let p = if i == 0 { &sc.q } else { &sc.poly };
        let next_q = (i > 0).then_some(SquareProduct {
            alpha: 1.0,
            x: p,
            y: &sc.q,
            add: None,
            out: &mut sc.q_next,
        });
        if last {
            if let Some(next_q) = next_q {
                bk.square_products(k, next_q, None)?;
            }
        } else {
            // A ← (P·A)·P (not needed after the last iteration); P·A beside P·Q.
            let pa = SquareProduct {
                alpha: 1.0,
                x: p,
                y: &sc.gram,
                add: None,
                out: &mut sc.tmp,
            };
            bk.square_products(k, pa, next_q)?;
            let pap = SquareProduct {
                alpha: 1.0,
                x: &sc.tmp,
                y: p,
                add: None,
                out: &mut sc.gram,
            };
            bk.square_products(k, pap, None)?;
        }
        if i > 0 {
            std::mem::swap(&mut sc.q, &mut sc.q_next);
        }
    }
    // O = Q·X₀ (wide) or X₀·Q (tall); X₀ is U itself with the norm folded into Q.
    let (a, b) = if wide { (&sc.q, x0) } else { (x0, &sc.q) };
    match out {
        NsOut::Matrix => bk.gemm(false, false, rows, cols, k, 1.0, a, b, 0.0, &mut sc.x),
        NsOut::Update {
            ctl,
            alpha_slot,
            beta_slot,
            w,
        } => bk.gemm_ctl(
            false, false, rows, cols, k, ctl, alpha_slot, a, b, beta_slot, w, &mut sc.x,
        ),
    }
}

/// FLOPs of [`orthogonalize`] for a `rows × cols` matrix (for BENCHMARKS.md).
pub fn flops(rows: usize, cols: usize, steps: usize) -> f64 {
    let (k, n) = (rows.min(cols) as f64, rows.max(cols) as f64);
    let cube = 2.0 * k * k * k;
    let products = if steps == 0 { 0.0 } else { (4 * steps) as f64 - 3.0 };
    2.0 * k * k * n + products * cube + if steps == 0 { 0.0 } else { 2.0 * k * k * n }
}

/// FLOPs of the direct (non-Gram) form, for comparison in BENCHMARKS.md.
pub fn flops_direct(rows: usize, cols: usize, steps: usize) -> f64 {
    let (k, n) = (rows.min(cols) as f64, rows.max(cols) as f64);
    steps as f64 * (4.0 * k * k * n + 2.0 * k * k * k)
}
