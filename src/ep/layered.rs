//! The layered least-squares energy (SPEC §2a).
//!
//! e_l = s_l − W_l φ_{l−1}(s_{l−1}) − b_l,  E = Σ_l ½‖e_l‖²,  F = E + β·C(φ_L(s_L), y).
//! The free equilibrium (all e_l = 0) is the forward pass, computed directly. The
//! nudged phase runs `settle_steps` block-substitution sweeps from it ([`nudged_phase`]
//! says why not gradient steps); its residual is ‖∇_s F‖ at the final state, with
//! ∇_{s_l}F = e_l − φ′_l(s_l) ⊙ W_{l+1}ᵀe_{l+1} (l < L), ∇_{s_L}F = e_L + β φ′_L(s_L) ⊙ ∂C/∂o.
//!
//! # The perturbation form
//!
//! The estimate is built from the errors e_l of the nudged state, which are O(β) while
//! the states are O(1). Formed as s_l − W_l φ(s_{l−1}) − b_l from states stored in
//! f32, they carry the states' rounding, ε·|s|, which does not shrink with the layer's
//! share of the nudge, β·‖∂C/∂s_l‖, while that share vanishes with depth (by ¼ per
//! sigmoid layer). So the nudged phase keeps the free state s⋆ and moves the
//! deviations u_l = s_l − s⋆_l and Δa_l = φ_l(s⋆_l + u_l) − φ_l(s⋆_l) instead, the
//! latter formed without cancellation ([`crate::nn::ActChain::delta_by`]); since the
//! free state's errors are 0, e_l = u_l − W_l Δa_{l−1} (u_1 for the first layer,
//! whose input is clamped), which is O(β) with O(β) rounding. The states
//! s_l = s⋆_l + u_l are still formed for φ′, φ and the cost, which need only their
//! relative precision. Measured on a 10–16×7–4 sigmoid net, symmetric nudging:
//! layer 1's cosine with the backprop gradient was 0.85 at β = 0.1, 0.34 at 0.01 and
//! undefined at 1e-4 (an estimate of exactly 0) with the states rounded, and is
//! 1.0000 in every layer from β = 0.1 to 1e-30 in this form, as in f64
//! (`tests/research.rs`, `f32_layered_estimates_keep_every_layer_at_depth`), which
//! is why this energy's β floor is the deviations' range, not the states' rounding
//! ([`crate::optim::min_beta_for`]).

use super::estimate::{Factors, FinalTerm, SideOf, SideTerm};
use super::workspace::RowResiduals;
use super::{GradConfig, Grads, Phase, Workspace};
use crate::backend::{Backend, LayerState, LayeredPhase};
use crate::nn::Network;
use crate::{Loss, MepError, Result};

/// Forward pass: s_l = W_l a_{l−1} + b_l, a_l = φ_l(s_l), with a_0 = x. Leaves
/// `p[0]` = W_1 x, which the nudged phase reuses (the input is clamped); `p[l]` for
/// l ≥ 1 is left as it was (every reader refreshes it first).
pub fn forward<B: Backend>(net: &Network<B>, ws: &mut Workspace<B>, rows: usize) -> Result<()> {
    // p[0] = W_1 x is kept for the phases (the input is clamped).
    super::drive(net, 0, rows, &ws.x, 0.0, &mut ws.p[0])?;
    forward_from_drive(net, ws, rows)
}

/// [`forward`] from `p[0]` = W_1 x on.
fn forward_from_drive<B: Backend>(net: &Network<B>, ws: &mut Workspace<B>, rows: usize) -> Result<()> {
    let bk = &net.backend;
    for (l, blk) in net.arch.blocks.iter().enumerate() {
        let b = &net.params[l].b;
        if l == 0 {
            bk.bias_act_from(rows, blk.out, &ws.p[0], b, blk.act, &mut ws.s[0], &mut ws.a[0])?;
        } else {
            // p[l] is refreshed wherever it is read, so the drive goes to s[l] directly.
            super::drive(net, l, rows, &ws.a[l - 1], 0.0, &mut ws.s[l])?;
            bk.bias_act(rows, blk.out, &mut ws.s[l], b, blk.act, &mut ws.a[l])?;
        }
    }
    Ok(())
}

/// One nudged phase at signed strength `beta`, starting from the state in `ws.s`,
/// `ws.a` (the free state); leaves the errors e_l of the final state in `ws.e`.
///
/// Each of the `settle_steps` sweeps solves the stationarity conditions of
/// F = E + βC by block substitution, then relaxes towards the solution by ω
/// (`settle_lr`):
///
/// 1. backward, from the current state: e*_L = −β φ′_L(s_L) ⊙ ∂C/∂o, then
///    e*_l = φ′_l(s_l) ⊙ W_{l+1}ᵀ e*_{l+1} down to l = 1;
/// 2. forward, l = 1..L with the new lower states: s_l ← s_l + ω (e*_l − e_l), where
///    e_l = s_l − W_l φ(s_{l−1}) − b_l; with ω = 1 that is s_l = W_l φ(s_{l−1}) + b_l + e*_l.
///
/// Both run in the perturbation form of the module's documentation: the forward sweep
/// moves u_l = s_l − s⋆_l (with `ws.s_free` = s⋆), and e_l = u_l − W_l Δa_{l−1}.
///
/// Why not gradient steps: ∇_s E = Dᵀe, where D (the Jacobian of s ↦ e) is unit block
/// lower-triangular (I minus the couplings W_l φ′). Gradient descent must step below
/// 2/λ_max(DᵀD) ≈ 2/(1 + σ(W_{l+1}))², while its slowest mode shrinks like σ_min(D)²,
/// so a fixed step either overshoots or crawls once hidden weights grow (issue 8: the
/// EP estimate's cosine with the gradient fell to 0.08 at depth 2). The sweep above is
/// s ← s − ω (DᵀD)⁻¹ ∇F: the backward sweep applies D⁻ᵀ and the forward sweep D⁻¹
/// exactly, whatever the weights. What it leaves out is the curvature of βC (the
/// dependence of ∂C/∂o and φ′ on the state), so the iteration matrix has eigenvalues
/// 1 − ω(1 + λ), λ ∈ [0, g], g = β·‖∂²C‖·‖Σ_l J_l J_lᵀ‖ (J_l = ∂o/∂s_l; ‖∂²C‖ ≤ ½ for
/// cross-entropy): it contracts for ω < 2/(1 + g), at rate max(1 − ω, ω(1 + g) − 1).
/// g is O(β): for small β one sweep gives e* = −β·(the backprop deltas of the free
/// state), and the iteration converges at any depth. The default ω is chosen by
/// measurement (BENCHMARKS.md §3).
///
/// That analysis needs φ′ to be continuous. With a piecewise-linear activation (ReLU,
/// the default, and hard sigmoid) φ′ jumps at the kink, so a unit whose state lies
/// within the nudge's reach of it can switch φ′ from one sweep to the next: the
/// iteration then ends in a small cycle, not at a fixed point (the fifth user trial,
/// 10–32–32–4 ReLU, squared error, β = 0.5: the residual falls to about 0.03 in 3
/// sweeps and stays there to 1000; with tanh it falls to 1.5e-7 by 30). The estimate
/// then depends on the sweep count at the 1% level (cosine with the backprop
/// gradient 0.995 ± 0.001), which training does not notice (the seed's 97.3% is with
/// ReLU); studies of EP's bias against β or the settle count want a smooth
/// activation (tanh, sigmoid).
///
/// A clamped phase ([`Phase::Clamp`]) fixes the output state at o⋆ + t(y − o⋆) first
/// (the output layer has no activation, so its state is the output), and the sweeps
/// then settle the layers below it: the output error e_L = s_L − W_L φ(s_{L−1}) − b_L is
/// the current one instead of the nudge.
pub fn nudged_phase<B: Backend>(
    net: &Network<B>,
    cfg: &GradConfig,
    phase: Phase,
    ws: &mut Workspace<B>,
    rows: usize,
) -> Result<()> {
    if settle_nudged(net, cfg, phase, ws, rows)? {
        ws.add_row_residuals(rows, 0, RowResiduals::Last)?;
    }
    Ok(())
}

/// [`nudged_phase`] but for the sum of a fused phase's per-row residuals: true when
/// they are left in `ws.f` for the caller to add (`Workspace::add_row_residuals`),
/// which [`gradients`] does beside the estimate.
fn settle_nudged<B: Backend>(
    net: &Network<B>,
    cfg: &GradConfig,
    phase: Phase,
    ws: &mut Workspace<B>,
    rows: usize,
) -> Result<bool> {
    // The backend may run the clamp or nudge, all the sweeps below, the final errors
    // and the per-row residuals as one fused operation; it then reports so.
    if fused_phase(net, cfg, phase, false, ws, rows)? {
        return Ok(true);
    }
    let bk = &net.backend;
    let last = net.arch.depth() - 1;
    let out = net.arch.blocks[last].out;
    // The perturbation form: s⋆ (the free state, in s_free) stays, the deviations
    // u = s − s⋆ and Δa = φ(s⋆ + u) − φ(s⋆) start at 0.
    for l in 0..=last {
        bk.copy(&ws.s[l], &mut ws.s_free[l])?;
        bk.fill(&mut ws.u[l], 0.0)?;
        bk.fill(&mut ws.da[l], 0.0)?;
    }
    let beta = match phase {
        Phase::Nudge(beta) => Some(beta),
        Phase::Clamp(t) => {
            // dc = o⋆ − y (squared error's gradient), u_L = −t·dc, s_L = s⋆_L + u_L.
            bk.cost_grad(rows, out, &ws.a[last], &ws.y, Loss::SquaredError, &mut ws.dc)?;
            bk.axpby(-t, &ws.dc, 0.0, &mut ws.u[last])?;
            bk.lincomb(1.0, &ws.u[last], 1.0, &ws.s_free[last], &mut ws.s[last])?;
            bk.copy(&ws.s[last], &mut ws.a[last])?;
            // e_L at the clamped output (= u_L: the layers below have not moved).
            layer_error(net, ws, last, rows)?;
            None
        }
    };
    for _ in 0..cfg.settle_steps {
        backward_errors(net, cfg, beta, ws, rows)?;
        relax_forward(net, cfg.settle_lr, beta, ws, rows)?;
    }
    errors(net, ws, rows)?;
    residual(net, cfg, beta, ws, rows)?;
    Ok(false)
}

/// Asks the backend to run a perturbed phase (nudged or clamped) as one fused
/// operation ([`Backend::layered_nudged_fused`]), with `free`: the free phase too (the
/// forward pass from `p[0]`, and each row's loss and hit into `ws.rowstats`). Leaves
/// the per-row residuals in `ws.f`; false when the backend declined (nothing was run).
fn fused_phase<B: Backend>(
    net: &Network<B>,
    cfg: &GradConfig,
    phase: Phase,
    free: bool,
    ws: &mut Workspace<B>,
    rows: usize,
) -> Result<bool> {
    let bufs = PhaseBufs {
        s: &mut ws.s,
        a: &mut ws.a,
        e: &mut ws.e,
        rowres: &mut ws.f,
        free: free.then_some(&mut ws.rowstats),
    };
    launch_fused(net, cfg, phase, rows, (&ws.p[0], &ws.y), bufs)
}

/// The buffers a fused layered phase writes ([`LayeredPhase`]).
struct PhaseBufs<'a, B: Backend> {
    s: &'a mut [B::Buf],
    a: &'a mut [B::Buf],
    e: &'a mut [B::Buf],
    rowres: &'a mut B::Buf,
    free: Option<&'a mut B::Buf>,
}

/// [`Backend::layered_nudged_fused`] of `phase` from `(p0, labels)` into `bufs`.
fn launch_fused<B: Backend>(
    net: &Network<B>,
    cfg: &GradConfig,
    phase: Phase,
    rows: usize,
    (p0, labels): (&B::Buf, &B::Labels),
    bufs: PhaseBufs<'_, B>,
) -> Result<bool> {
    let (beta, clamp) = match phase {
        Phase::Nudge(beta) => (beta, None),
        Phase::Clamp(t) => (0.0, Some(t)),
    };
    net.backend.layered_nudged_fused(LayeredPhase {
        net: super::phase_net(net, rows, (p0, labels), cfg.loss, bufs.s),
        beta,
        clamp,
        omega: cfg.settle_lr,
        steps: cfg.settle_steps,
        a: bufs.a,
        e: bufs.e,
        rowres: bufs.rowres,
        free: bufs.free,
    })
}

/// Two fused perturbed phases (nudged or clamped), each from its own free phase (the
/// forward pass inside the kernel), side by side ([`Backend::concurrently`]): the first into
/// `ws.s_free`, `a_free`, `e_side`, `f_side` with the free phase's per-row statistics
/// in `ws.rowstats`; the second into `ws.s`, `a`, `e`, `f` (where the phases run one
/// after the other leave the last phase) with its identical statistics in
/// `ws.rowstats_spare`. `Ok(false)` when the backend declines (then it declines
/// both: the same network and batch).
fn fused_phases_side_by_side<B: Backend>(
    net: &Network<B>,
    cfg: &GradConfig,
    phases: (Phase, Phase),
    ws: &mut Workspace<B>,
    rows: usize,
) -> Result<bool> {
    let bk = &net.backend;
    let mut taken = [false; 2];
    bk.concurrently(2, &mut |i| {
        let ws = &mut *ws;
        let (phase, bufs) = if i == 0 {
            let bufs = PhaseBufs {
                s: &mut ws.s_free,
                a: &mut ws.a_free,
                e: &mut ws.e_side,
                rowres: &mut ws.f_side,
                free: Some(&mut ws.rowstats),
            };
            (phases.0, bufs)
        } else {
            let bufs = PhaseBufs {
                s: &mut ws.s,
                a: &mut ws.a,
                e: &mut ws.e,
                rowres: &mut ws.f,
                free: Some(&mut ws.rowstats_spare),
            };
            (phases.1, bufs)
        };
        taken[i] = launch_fused(net, cfg, phase, rows, (&ws.p[0], &ws.y), bufs)?;
        Ok(())
    })?;
    match taken {
        [true, true] => Ok(true),
        [false, false] => Ok(false),
        _ => Err(MepError::Shape(format!(
            "{}: the fused layered phase took one of two identical phases",
            bk.name()
        ))),
    }
}

/// Backward sweep from the current state: `ws.dc` = ∂C/∂o, `ws.e[L]` = e*_L =
/// −β φ′_L ⊙ ∂C/∂o (`beta = None`: a clamped output, whose current error `ws.e[L]`
/// [`relax_forward`] left is kept), and for l < L the feedback u_l = W_{l+1}ᵀ e*_{l+1} into `ws.r[l]`
/// and e*_l = φ′_l(s_l) ⊙ u_l into `ws.e[l]` (for l ≥ 1; the lowest layer's e* is only
/// needed by [`relax_forward`], which applies φ′ itself).
fn backward_errors<B: Backend>(
    net: &Network<B>,
    cfg: &GradConfig,
    beta: Option<f64>,
    ws: &mut Workspace<B>,
    rows: usize,
) -> Result<()> {
    let bk = &net.backend;
    let blocks = &net.arch.blocks;
    let last = blocks.len() - 1;
    if let Some(beta) = beta {
        let out = &blocks[last];
        bk.cost_grad(rows, out.out, &ws.a[last], &ws.y, cfg.loss, &mut ws.dc)?;
        bk.act_grad_mul_into(rows, out.out, &ws.s[last], out.act, -beta, &ws.dc, &mut ws.e[last])?;
    }
    for l in (0..last).rev() {
        super::feedback(net, l, rows, &ws.e[l + 1], 0.0, &mut ws.r[l])?;
        if l > 0 {
            bk.act_grad_mul_into(
                rows,
                blocks[l].out,
                &ws.s[l],
                blocks[l].act,
                1.0,
                &ws.r[l],
                &mut ws.e[l],
            )?;
        }
    }
    Ok(())
}

/// Forward sweep, l = 1..L, in perturbation form: q_l = W_l Δa_{l−1} with the new
/// lower deviation (none for l = 1: the input is clamped), e_l = u_l − q_l, then
/// u_l ← u_l − ω (e_l − e*_l), s_l = s⋆_l + u_l, a_l = φ_l(s_l) and Δa_l, with
/// e*_l = φ′_l(s_l) ⊙ r_l (hidden layers, c = −1) or −β φ′_L(s_L) ⊙ ∂C/∂o (output,
/// c = β) formed inside the fused `layered_settle` at the layer's state before the
/// update, as the backward sweep did. A clamped output (`beta = None`) keeps its
/// state; its error is refreshed.
fn relax_forward<B: Backend>(
    net: &Network<B>,
    omega: f64,
    beta: Option<f64>,
    ws: &mut Workspace<B>,
    rows: usize,
) -> Result<()> {
    let bk = &net.backend;
    let last = net.arch.depth() - 1;
    for (l, blk) in net.arch.blocks.iter().enumerate() {
        if l > 0 {
            super::drive(net, l, rows, &ws.da[l - 1], 0.0, &mut ws.p[l])?;
        }
        let q = (l > 0).then_some(&ws.p[l]);
        let (g, c) = match (l == last, beta) {
            (true, Some(beta)) => (&ws.dc, beta),
            (true, None) => {
                bk.layered_error(rows, blk.out, &ws.u[l], q, &mut ws.e[l])?;
                break;
            }
            _ => (&ws.r[l], -1.0),
        };
        // e_l and the step in one pass.
        let st = LayerState {
            u: &mut ws.u[l],
            s: &mut ws.s[l],
            a: &mut ws.a[l],
            da: &mut ws.da[l],
            e: &mut ws.e[l],
        };
        bk.layered_settle(rows, blk.out, q, g, c, omega, blk.act, &ws.s_free[l], st)?;
    }
    Ok(())
}

/// e_l = u_l − W_l Δa_{l−1} for block l at the current state (= s_l − W_l φ(s_{l−1}) − b_l,
/// the free state's error being 0), refreshing `p[l]` = W_l Δa_{l−1} (none for l = 1).
fn layer_error<B: Backend>(net: &Network<B>, ws: &mut Workspace<B>, l: usize, rows: usize) -> Result<()> {
    if l > 0 {
        super::drive(net, l, rows, &ws.da[l - 1], 0.0, &mut ws.p[l])?;
    }
    let out = net.arch.blocks[l].out;
    let q = (l > 0).then_some(&ws.p[l]);
    net.backend.layered_error(rows, out, &ws.u[l], q, &mut ws.e[l])
}

/// e_l for every block at the current state ([`layer_error`]).
fn errors<B: Backend>(net: &Network<B>, ws: &mut Workspace<B>, rows: usize) -> Result<()> {
    (0..net.arch.depth()).try_for_each(|l| layer_error(net, ws, l, rows))
}

/// Adds Σ_batch Σ_l ‖∇_{s_l}F‖² at the current state to `ws.resid[0]`, where
/// ∇_{s_l}F = e_l − φ′_l(s_l) ⊙ W_{l+1}ᵀe_{l+1} (l < L) and ∇_{s_L}F = e_L + β φ′_L(s_L) ⊙ ∂C/∂o,
/// with `ws.e` holding the errors of the current state (as [`nudged_phase`] leaves them).
/// A clamped output (`beta = None`) is not a variable: its term is left out.
/// Reported as the settle residual: 0 at the nudged equilibrium.
fn residual<B: Backend>(
    net: &Network<B>,
    cfg: &GradConfig,
    beta: Option<f64>,
    ws: &mut Workspace<B>,
    rows: usize,
) -> Result<()> {
    let bk = &net.backend;
    let blocks = &net.arch.blocks;
    let last = blocks.len() - 1;
    let out = blocks[last].out;
    if let Some(beta) = beta {
        bk.cost_grad(rows, out, &ws.a[last], &ws.y, cfg.loss, &mut ws.dc)?;
        bk.act_grad_mul(rows, out, &ws.s[last], blocks[last].act, &mut ws.dc)?;
        bk.axpby(1.0, &ws.e[last], beta, &mut ws.dc)?;
        Workspace::add_sq(bk, &ws.dc, rows * out, &mut ws.resid[0])?;
    }
    for (l, blk) in blocks[..last].iter().enumerate() {
        super::feedback(net, l, rows, &ws.e[l + 1], 0.0, &mut ws.r[l])?;
        bk.act_grad_mul(rows, blk.out, &ws.s[l], blk.act, &mut ws.r[l])?;
        bk.axpby(1.0, &ws.e[l], -1.0, &mut ws.r[l])?;
        Workspace::add_sq(bk, &ws.r[l], rows * blk.out, &mut ws.resid[0])?;
    }
    ws.resid_rows[0] += rows as u64;
    Ok(())
}

/// The EP estimate: forward pass (free phase), the rule's perturbed phase(s), contrast.
/// ∂θE = −(1/B) Σ_batch e_l φ(s_{l−1})ᵀ for W_l (−(1/B) Σ e_l for b_l), which is 0 at
/// the free state (all e_l = 0), so only the perturbed phases enter: one-sided,
/// Ĝ = −(1/(βB)) Σ e φᵀ at the +β state; symmetric, −(1/(2βB)) (Σ e φᵀ at +β − at −β).
/// The last phase's term is returned, not added ([`FinalTerm`]).
pub fn gradients<B: Backend>(
    net: &Network<B>,
    cfg: &GradConfig,
    ws: &mut Workspace<B>,
    rows: usize,
    grads: &mut Grads<B>,
) -> Result<FinalTerm> {
    let b = rows as f64;
    let (_, phases) = cfg.nudging.phases(cfg.beta);
    let term = |coef: f64, accumulate: bool, row_residuals: bool, row_stats: bool| FinalTerm {
        factors: Factors::Errors,
        rows,
        coef: -coef / b,
        accumulate,
        row_residuals,
        row_stats,
        side: None,
    };
    super::drive(net, 0, rows, &ws.x, 0.0, &mut ws.p[0])?;
    // The backend may run the free phase inside a fused perturbed phase (nudged or
    // clamped): the forward pass and each row's loss statistics, summed beside the
    // estimate. With two phases (symmetric nudging, CCpL) each runs its own copy of
    // the free phase, so the two are independent and run side by side.
    let fused = match phases[..] {
        [(phase, coef)] => fused_phase(net, cfg, phase, true, ws, rows)?.then(|| term(coef, false, true, true)),
        [(first, c1), (second, c2)] => {
            fused_phases_side_by_side(net, cfg, (first, second), ws, rows)?.then(|| FinalTerm {
                side: Some(SideTerm {
                    coef: -c1 / b,
                    of: SideOf::FirstPhase,
                }),
                ..term(c2, false, true, true)
            })
        }
        _ => None,
    };
    if let Some(t) = fused {
        return Ok(t);
    }
    forward_from_drive(net, ws, rows)?;
    let last = net.arch.depth() - 1;
    net.backend
        .cost_stats(rows, net.arch.outputs(), &ws.a[last], &ws.y, cfg.loss, &mut ws.stats)?;
    // The first phase starts from the forward pass's state as it stands; only a
    // second phase needs the free state saved and restored.
    if phases.len() > 1 {
        ws.save_free(true)?;
    }
    let mut pending: Option<FinalTerm> = None;
    for (i, &(phase, coef)) in phases.iter().enumerate() {
        // The previous phase's term reads its final state: added before the restore.
        if let Some(t) = pending.take() {
            t.add(&net.backend, &net.arch, ws, grads, &mut |_, _| Ok(()))?;
        }
        if i > 0 {
            ws.restore_free(true)?;
        }
        let row_residuals = settle_nudged(net, cfg, phase, ws, rows)?;
        pending = Some(term(coef, i > 0, row_residuals, false));
    }
    pending.ok_or_else(|| {
        MepError::invalid(
            "nudging",
            cfg.nudging.name(),
            "a rule with at least one perturbed phase",
        )
    })
}
