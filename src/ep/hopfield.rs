//! The Hopfield energy (SPEC §2b): prototypical discrete-time EP.
//!
//! Φ(s) = Σ_l s_lᵀ(W_l s_{l−1} + b_l). Settling sweeps the layers in order 1..L
//! (forward Gauss–Seidel: each layer sees the newest state below it and the previous
//! state above it), s_l ← φ_l(W_l s_{l−1} + b_l + W_{l+1}ᵀ s_{l+1} [− β ∂C/∂o at l = L]).
//! Gauss–Seidel rather than synchronous updates: when φ_l is a projection (ReLU,
//! HardSigmoid, identity), each layer update maximises Φ − ½‖s‖² exactly over that
//! layer given its neighbours, so a sweep never decreases it (block-coordinate
//! ascent); simultaneous updates carry no such guarantee. The input drive W_1 x is
//! computed once per phase. The free phase contracts at roughly σ(W_L)² per sweep,
//! hence the default of 50 sweeps ([`super::DEFAULT_FREE_STEPS`]).

use super::estimate::{Factors, FinalTerm, SideOf, SideTerm};
use super::workspace::RowResiduals;
use super::{GradConfig, Grads, Phase, Workspace};
use crate::backend::{Backend, HopfieldPhase, HopfieldStart};
use crate::nn::Network;
use crate::{Loss, MepError, Result};

/// What drives the output layer during a settle.
#[derive(Clone, Copy)]
enum Output {
    /// Free: no nudge.
    Free,
    /// Nudged: −β ∂C/∂o added to the output's drive.
    Nudge(f64),
    /// Clamped: the output state is fixed and not swept.
    Clamped,
}

/// `sweeps` settle sweeps from the current `ws.s` (from zero states when
/// `from_zero`). The last sweep's state change Σ‖Δs‖² is added to `ws.resid[slot]`
/// (the fixed-point residual of the phase).
#[allow(clippy::too_many_arguments)]
fn settle<B: Backend>(
    net: &Network<B>,
    cfg_loss: crate::Loss,
    output: Output,
    ws: &mut Workspace<B>,
    rows: usize,
    sweeps: usize,
    from_zero: bool,
    slot: usize,
) -> Result<()> {
    let bk = &net.backend;
    let blocks = &net.arch.blocks;
    let last = blocks.len() - 1;
    // The backend may run all the sweeps as one fused operation (zeroing the states
    // itself), leaving each row's last-sweep Σ‖Δs‖² in ws.f; only their sum is then
    // left to add.
    let start = if from_zero {
        HopfieldStart::Zero
    } else {
        HopfieldStart::Current
    };
    let batch = (&ws.p[0], &ws.y);
    if fused_settle(
        net,
        cfg_loss,
        batch,
        rows,
        (start, output, sweeps),
        &mut ws.s,
        &mut ws.f,
    )? {
        if sweeps > 0 {
            ws.add_row_residuals(rows, slot, RowResiduals::Last)?;
        }
        return Ok(());
    }
    if from_zero {
        for s in ws.s.iter_mut() {
            bk.fill(s, 0.0)?;
        }
    }
    for sweep in 0..sweeps {
        let final_sweep = sweep + 1 == sweeps;
        if final_sweep {
            for l in 0..=last {
                bk.copy(&ws.s[l], &mut ws.r[l])?;
            }
        }
        for (l, blk) in blocks.iter().enumerate() {
            if l == last && matches!(output, Output::Clamped) {
                break;
            }
            if l == 0 {
                bk.copy(&ws.p[0], &mut ws.f)?;
            } else {
                super::drive(net, l, rows, &ws.s[l - 1], 0.0, &mut ws.f)?;
            }
            if l < last {
                super::feedback(net, l, rows, &ws.s[l + 1], 1.0, &mut ws.f)?;
            }
            match output {
                Output::Nudge(beta) if l == last => {
                    bk.cost_grad(rows, blk.out, &ws.s[l], &ws.y, cfg_loss, &mut ws.dc)?;
                    bk.hopfield_settle(
                        rows,
                        blk.out,
                        &ws.f,
                        &net.params[l].b,
                        Some((&ws.dc, beta)),
                        blk.act,
                        &mut ws.s[l],
                    )?;
                }
                _ => bk.hopfield_settle(rows, blk.out, &ws.f, &net.params[l].b, None, blk.act, &mut ws.s[l])?,
            }
        }
        if final_sweep {
            for (l, blk) in blocks.iter().enumerate() {
                bk.axpby(1.0, &ws.s[l], -1.0, &mut ws.r[l])?;
                Workspace::add_sq(bk, &ws.r[l], rows * blk.out, &mut ws.resid[slot])?;
            }
            ws.resid_rows[slot] += rows as u64;
        }
    }
    Ok(())
}

/// Free phase: W_1 x once, states from zero, `free_steps` sweeps. Leaves the free
/// equilibrium in `ws.s` (output in `ws.s[L−1]`).
pub fn free_phase<B: Backend>(net: &Network<B>, ws: &mut Workspace<B>, rows: usize, free_steps: usize) -> Result<()> {
    super::drive(net, 0, rows, &ws.x, 0.0, &mut ws.p[0])?;
    settle_free(net, ws, rows, free_steps)
}

/// The free phase's sweeps from zero states, given W_1 x in `ws.p[0]`; the last
/// sweep's residual goes to slot 1.
fn settle_free<B: Backend>(net: &Network<B>, ws: &mut Workspace<B>, rows: usize, free_steps: usize) -> Result<()> {
    settle(net, Loss::CrossEntropy, Output::Free, ws, rows, free_steps, true, 1)
}

/// One fused settle of `sweeps` sweeps from `start` into `s`, its per-row
/// residuals into `rowres`, the output driven as `output` says; `Ok(false)` when the
/// backend declines (nothing ran).
fn fused_settle<B: Backend>(
    net: &Network<B>,
    loss: Loss,
    (p0, labels): (&B::Buf, &B::Labels),
    rows: usize,
    (start, output, sweeps): (HopfieldStart<'_, B>, Output, usize),
    s: &mut [B::Buf],
    rowres: &mut B::Buf,
) -> Result<bool> {
    net.backend.hopfield_settle_fused(HopfieldPhase {
        net: super::phase_net(net, rows, (p0, labels), loss, s),
        nudge: match output {
            Output::Nudge(beta) => Some(beta),
            Output::Free | Output::Clamped => None,
        },
        clamped: matches!(output, Output::Clamped),
        sweeps,
        start,
        rowres,
    })
}

/// The rule's perturbed phases (one or two, nudged or clamped), fused, each from the
/// state of one fused free phase, beside each other and beside the free phase's
/// bookkeeping ([`Backend::concurrently`]), with no copies of the free state.
/// The free phase settles from zero into `ws.s_free` (per-row residuals in
/// `ws.r[0]`); then independent branches: with two phases, the first from
/// `ws.s_free` into `ws.a_free` (residuals `ws.f_side`); the last from `ws.s_free`
/// into `ws.s` (`ws.f`), where the phases run one after the other leave it; the free
/// output's loss statistics; the free residuals' sum. A clamped phase first sets
/// its own output state to o⋆ + t(y − o⋆) and settles the layers below from the
/// free state. The phases' residuals
/// are left for the estimate's term to add, and the free state stays in
/// `ws.s_free` for a free term. `Ok(false)` when the backend declines the fused free
/// phase: nothing ran, and the caller runs the phases one after the other.
fn fused_from_one_free_state<B: Backend>(
    net: &Network<B>,
    cfg: &GradConfig,
    free_steps: usize,
    phases: &[Phase],
    ws: &mut Workspace<B>,
    rows: usize,
) -> Result<bool> {
    let n = phases.len();
    if !(1..=2).contains(&n) {
        return Err(MepError::invalid("perturbed phases", n, "one or two"));
    }
    let bk = &net.backend;
    let batch = (&ws.p[0], &ws.y);
    let free = (HopfieldStart::Zero, Output::Free, free_steps);
    if !fused_settle(net, cfg.loss, batch, rows, free, &mut ws.s_free, &mut ws.r[0])? {
        return Ok(false);
    }
    let last = net.arch.depth() - 1;
    let out = net.arch.outputs();
    let mut taken = [false; 2];
    bk.concurrently(n + 2, &mut |i| {
        let ws = &mut *ws;
        let batch = (&ws.p[0], &ws.y);
        if i < n {
            let (s, rowres) = if i + 1 < n {
                (&mut ws.a_free, &mut ws.f_side)
            } else {
                (&mut ws.s, &mut ws.f)
            };
            let (start, output) = match phases[i] {
                Phase::Nudge(beta) => (HopfieldStart::From(&ws.s_free[..]), Output::Nudge(beta)),
                Phase::Clamp(t) => {
                    // This phase's output state o⋆ − t·(o⋆ − y), made in place (the
                    // squared error's gradient o⋆ − y first); the layers below start
                    // from the free state.
                    bk.cost_grad(rows, out, &ws.s_free[last], &ws.y, Loss::SquaredError, &mut s[last])?;
                    bk.axpby(1.0, &ws.s_free[last], -t, &mut s[last])?;
                    (HopfieldStart::From(&ws.s_free[..last]), Output::Clamped)
                }
            };
            taken[i] = fused_settle(net, cfg.loss, batch, rows, (start, output, cfg.settle_steps), s, rowres)?;
            Ok(())
        } else if i == n {
            bk.cost_stats(rows, out, &ws.s_free[last], &ws.y, cfg.loss, &mut ws.stats)
        } else {
            ws.add_row_residuals(rows, 1, RowResiduals::Free)
        }
    })?;
    if taken[..n].iter().any(|t| !t) {
        return Err(MepError::Shape(format!(
            "{}: the fused Hopfield settle took the free phase but not every nudged phase",
            bk.name()
        )));
    }
    Ok(true)
}

/// The estimate of the rule (see [`super::Nudging::phases`]), with
/// ∂θE = −(1/B) Σ_batch s_l s_{l−1}ᵀ for W_l (−(1/B) Σ s_l for b_l), E = ½‖s‖² − Φ.
/// One-sided: Ĝ = −(1/(βB)) Σ (s^β s^βᵀ − s^0 s^0ᵀ); symmetric:
/// Ĝ = −(1/(2βB)) Σ (s^{+β} s^{+β}ᵀ − s^{−β} s^{−β}ᵀ). Every perturbed phase starts
/// from the free state; a clamped one first sets the output state to o⋆ + t(y − o⋆).
/// Where the backend fuses the settle, the perturbed phases (one, or two for
/// symmetric nudging and CCpL; nudged or clamped) start from the free state in
/// `ws.s_free` without copying it, two of them side by side (the first ends in
/// `ws.a_free`); else they run one after the other, the free state copied aside and
/// restored between two.
pub fn gradients<B: Backend>(
    net: &Network<B>,
    cfg: &GradConfig,
    free_steps: usize,
    ws: &mut Workspace<B>,
    rows: usize,
    grads: &mut Grads<B>,
) -> Result<FinalTerm> {
    let b = rows as f64;
    let term = |coef: f64, accumulate: bool| FinalTerm {
        factors: Factors::States,
        rows,
        coef: -coef / b,
        accumulate,
        row_residuals: false,
        row_stats: false,
        side: None,
    };
    let (free_coef, phases) = cfg.nudging.phases(cfg.beta);
    super::drive(net, 0, rows, &ws.x, 0.0, &mut ws.p[0])?;
    // Where the backend fuses the settle, the perturbed phases start from one free
    // state without copying it, beside each other and beside the free phase's
    // statistics; the free term (one-sided, negative, CL, PCpL, NCpL) then reads that
    // state too.
    let side = |coef: f64, of: SideOf| SideTerm { coef: -coef / b, of };
    let fused = match phases[..] {
        [(phase, coef)] => fused_from_one_free_state(net, cfg, free_steps, &[phase], ws, rows)?.then(|| FinalTerm {
            side: (free_coef != 0.0).then(|| side(free_coef, SideOf::Free)),
            row_residuals: cfg.settle_steps > 0,
            ..term(coef, false)
        }),
        [(first, c1), (second, c2)] if free_coef == 0.0 => {
            fused_from_one_free_state(net, cfg, free_steps, &[first, second], ws, rows)?.then(|| FinalTerm {
                side: Some(side(c1, SideOf::FirstPhase)),
                row_residuals: cfg.settle_steps > 0,
                ..term(c2, false)
            })
        }
        _ => None,
    };
    if let Some(t) = fused {
        return Ok(t);
    }
    settle_free(net, ws, rows, free_steps)?;
    let bk = &net.backend;
    let last = net.arch.depth() - 1;
    let out = net.arch.outputs();
    bk.cost_stats(rows, out, &ws.s[last], &ws.y, cfg.loss, &mut ws.stats)?;
    // Each term reads the state it was made for: the pending one is added before the
    // next phase changes the states.
    let mut pending: Option<FinalTerm> = None;
    if free_coef != 0.0 {
        pending = Some(term(free_coef, false));
    }
    for (i, &(phase, coef)) in phases.iter().enumerate() {
        let written = pending.is_some() || i > 0;
        if let Some(t) = pending.take() {
            t.add(bk, &net.arch, ws, grads, &mut |_, _| Ok(()))?;
        }
        if i == 0 && phases.len() > 1 {
            ws.save_free(false)?;
        }
        if i > 0 {
            ws.restore_free(false)?;
        }
        let output = match phase {
            Phase::Nudge(beta) => Output::Nudge(beta),
            Phase::Clamp(t) => {
                // dc = o⋆ − y (squared error's gradient), s_L ← s_L − t·dc.
                bk.cost_grad(rows, out, &ws.s[last], &ws.y, Loss::SquaredError, &mut ws.dc)?;
                bk.axpby(-t, &ws.dc, 1.0, &mut ws.s[last])?;
                Output::Clamped
            }
        };
        settle(net, cfg.loss, output, ws, rows, cfg.settle_steps, false, 0)?;
        pending = Some(term(coef, written));
    }
    pending.ok_or_else(|| {
        MepError::invalid(
            "nudging",
            cfg.nudging.name(),
            "a rule with at least one perturbed phase",
        )
    })
}
