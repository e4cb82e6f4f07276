//! The last term of an EP estimate, shared by both energies: each layer's
//! `coef · Σ_batch u_l v_lᵀ` for ∂W_l and `coef · Σ_batch u_l` for ∂b_l, where
//! (u_l, v_l) = (e_l, φ(s_{l−1})) for the layered energy and (s_l, s_{l−1}) for the
//! Hopfield energy (v_1 = x).
//!
//! The phases stop before their last term and return it ([`FinalTerm`]) instead of
//! adding it, so the optimizer can follow each part's gradient with that part's
//! update in the same independent branch ([`Backend::concurrently`]): on CUDA, W₂'s
//! update then starts as soon as ∂W₂ is done, and W₁'s chain (its ∂W, then Muon) does
//! not wait for every other gradient first.

use super::workspace::RowResiduals;
use super::{Grads, Workspace};
use crate::backend::Backend;
use crate::nn::Arch;
use crate::Result;

/// Which buffers a term multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Factors {
    /// u_l = e_l, v_l = a_{l−1} (layered energy).
    Errors,
    /// u_l = s_l, v_l = s_{l−1} (Hopfield energy).
    States,
}

/// A term of the estimate not yet added ([`FinalTerm::add`]).
#[derive(Clone, Copy, Debug)]
#[must_use = "the estimate is incomplete until the term is added"]
pub struct FinalTerm {
    pub(crate) factors: Factors,
    /// Samples.
    pub(crate) rows: usize,
    /// The term's coefficient (the rule's, over the batch size).
    pub(crate) coef: f64,
    /// Add to the gradients (else overwrite them).
    pub(crate) accumulate: bool,
    /// A fused phase left per-row residuals in `ws.f` to sum.
    pub(crate) row_residuals: bool,
    /// A fused free phase left per-row loss statistics in `ws.rowstats` to sum.
    pub(crate) row_stats: bool,
    /// A second term, added first (as the phases ran), from other buffers: the
    /// phases ran side by side instead of one after the other.
    pub(crate) side: Option<SideTerm>,
}

/// The other term of a [`FinalTerm`] whose phases ran side by side.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SideTerm {
    /// Its coefficient (the rule's, over the batch size).
    pub(crate) coef: f64,
    /// Whose state it reads.
    pub(crate) of: SideOf,
}

/// The state a [`SideTerm`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SideOf {
    /// The first of two nudged phases: `ws.e_side` and `ws.a_free` (layered energy)
    /// or `ws.a_free` alone (Hopfield: its states); its per-row residuals are in
    /// `ws.f_side` (summed when `row_residuals`).
    FirstPhase,
    /// The free state in `ws.s_free` (Hopfield; the rule's free term).
    Free,
}

impl FinalTerm {
    /// Adds the term to `grads`, one independent branch per ∂W_l, then per ∂b_l
    /// (longest first), then the per-row sums; `then(i, g)` runs in part i's branch
    /// right after its gradient `g` is complete (i = l for ∂W_l, depth + l for ∂b_l;
    /// it must touch nothing another part reads or writes).
    pub fn add<B: Backend>(
        self,
        bk: &B,
        arch: &Arch,
        ws: &mut Workspace<B>,
        grads: &mut Grads<B>,
        then: &mut dyn FnMut(usize, &B::Buf) -> Result<()>,
    ) -> Result<()> {
        let (rows, coef) = (self.rows, self.coef);
        let acc = if self.accumulate { 1.0 } else { 0.0 };
        let depth = arch.depth();
        let extras = [self.row_residuals, self.row_stats];
        let n = 2 * depth + extras.iter().filter(|e| **e).count();
        let mut layers = grads.layers();
        bk.concurrently(n, &mut |i| {
            if i >= 2 * depth {
                return if self.row_residuals && i == 2 * depth {
                    if self.side.is_some_and(|s| s.of == SideOf::FirstPhase) {
                        ws.add_row_residuals(rows, 0, RowResiduals::Side)?;
                    }
                    ws.add_row_residuals(rows, 0, RowResiduals::Last)
                } else {
                    ws.add_row_stats(rows)
                };
            }
            let l = i % depth;
            let blk = &arch.blocks[l];
            let (u, below) = match self.factors {
                Factors::Errors => (&ws.e, &ws.a),
                Factors::States => (&ws.s, &ws.s),
            };
            // The side phase's term first (as the phases ran), then this one's added.
            let (gw, gb) = &mut layers[l];
            let side = self.side.map(|s| {
                let (u, below) = match (self.factors, s.of) {
                    (Factors::Errors, _) => (&ws.e_side, &ws.a_free),
                    (Factors::States, SideOf::FirstPhase) => (&ws.a_free, &ws.a_free),
                    (Factors::States, SideOf::Free) => (&ws.s_free, &ws.s_free),
                };
                (s.coef, &u[l], if l == 0 { &ws.x } else { &below[l - 1] })
            });
            if i < depth {
                let v = if l == 0 { &ws.x } else { &below[l - 1] };
                let acc = match side {
                    Some((c, e, v)) => {
                        bk.gemm(true, false, blk.out, blk.inp, rows, c, e, v, acc, gw)?;
                        1.0
                    }
                    None => acc,
                };
                bk.gemm(true, false, blk.out, blk.inp, rows, coef, &u[l], v, acc, gw)?;
                then(i, gw)
            } else {
                let acc = match side {
                    Some((c, e, _)) => {
                        bk.col_sum(rows, blk.out, c, e, acc, gb)?;
                        1.0
                    }
                    None => acc,
                };
                bk.col_sum(rows, blk.out, coef, &u[l], acc, gb)?;
                then(i, gb)
            }
        })
    }
}
