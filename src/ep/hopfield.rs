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

use super::{GradConfig, Grads, Nudging, Workspace};
use crate::backend::Backend;
use crate::nn::Network;
use crate::Result;

/// `sweeps` settle sweeps from the current `ws.s`; `nudge = Some(β)` adds the output nudge.
fn settle<B: Backend>(
    net: &Network<B>,
    cfg_loss: crate::Loss,
    nudge: Option<f64>,
    ws: &mut Workspace<B>,
    rows: usize,
    sweeps: usize,
) -> Result<()> {
    let bk = &net.backend;
    let blocks = &net.arch.blocks;
    let last = blocks.len() - 1;
    for _ in 0..sweeps {
        for (l, blk) in blocks.iter().enumerate() {
            if l == 0 {
                bk.copy(&ws.p[0], &mut ws.f)?;
            } else {
                bk.gemm(
                    false,
                    true,
                    rows,
                    blk.out,
                    blk.inp,
                    1.0,
                    &ws.s[l - 1],
                    &net.params[l].w,
                    0.0,
                    &mut ws.f,
                )?;
            }
            if l < last {
                let up = &blocks[l + 1];
                bk.gemm(
                    false,
                    false,
                    rows,
                    blk.out,
                    up.out,
                    1.0,
                    &ws.s[l + 1],
                    &net.params[l + 1].w,
                    1.0,
                    &mut ws.f,
                )?;
            }
            match nudge {
                Some(beta) if l == last => {
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
    }
    Ok(())
}

/// Free phase: W_1 x once, states from zero, `free_steps` sweeps. Leaves the free
/// equilibrium in `ws.s` (output in `ws.s[L−1]`).
pub fn free_phase<B: Backend>(net: &Network<B>, ws: &mut Workspace<B>, rows: usize, free_steps: usize) -> Result<()> {
    let bk = &net.backend;
    let first = &net.arch.blocks[0];
    bk.gemm(
        false,
        true,
        rows,
        first.out,
        first.inp,
        1.0,
        &ws.x,
        &net.params[0].w,
        0.0,
        &mut ws.p[0],
    )?;
    for s in ws.s.iter_mut() {
        bk.fill(s, 0.0)?;
    }
    settle(net, crate::Loss::CrossEntropy, None, ws, rows, free_steps)
}

/// Adds `coef · Σ_batch s_l s_{l−1}ᵀ` (and `coef · Σ s_l`) for the states in `states`.
fn accumulate_estimate<B: Backend>(
    net: &Network<B>,
    x: &B::Buf,
    states: &[B::Buf],
    rows: usize,
    coef: f64,
    accumulate: bool,
    grads: &mut Grads<B>,
) -> Result<()> {
    let bk = &net.backend;
    let acc = if accumulate { 1.0 } else { 0.0 };
    for (l, blk) in net.arch.blocks.iter().enumerate() {
        let below = if l == 0 { x } else { &states[l - 1] };
        bk.gemm(
            true,
            false,
            blk.out,
            blk.inp,
            rows,
            coef,
            &states[l],
            below,
            acc,
            &mut grads.w[l],
        )?;
        bk.col_sum(rows, blk.out, coef, &states[l], acc, &mut grads.b[l])?;
    }
    Ok(())
}

/// The EP estimate. One-sided: Ĝ = −(1/(βB)) Σ (s^β s^βᵀ − s^0 s^0ᵀ). Symmetric:
/// Ĝ = −(1/(2βB)) Σ (s^{+β} s^{+β}ᵀ − s^{−β} s^{−β}ᵀ); both nudged phases start from
/// the free state.
pub fn gradients<B: Backend>(
    net: &Network<B>,
    cfg: &GradConfig,
    free_steps: usize,
    ws: &mut Workspace<B>,
    rows: usize,
    grads: &mut Grads<B>,
) -> Result<()> {
    free_phase(net, ws, rows, free_steps)?;
    let last = net.arch.depth() - 1;
    net.backend
        .cost_stats(rows, net.arch.outputs(), &ws.s[last], &ws.y, cfg.loss, &mut ws.stats)?;
    ws.save_free(false)?;
    let b = rows as f64;
    match cfg.nudging {
        Nudging::OneSided => {
            accumulate_estimate(net, &ws.x, &ws.s_free, rows, 1.0 / (cfg.beta * b), false, grads)?;
            settle(net, cfg.loss, Some(cfg.beta), ws, rows, cfg.settle_steps)?;
            accumulate_estimate(net, &ws.x, &ws.s, rows, -1.0 / (cfg.beta * b), true, grads)
        }
        Nudging::Symmetric => {
            settle(net, cfg.loss, Some(cfg.beta), ws, rows, cfg.settle_steps)?;
            accumulate_estimate(net, &ws.x, &ws.s, rows, -1.0 / (2.0 * cfg.beta * b), false, grads)?;
            ws.restore_free(false)?;
            settle(net, cfg.loss, Some(-cfg.beta), ws, rows, cfg.settle_steps)?;
            accumulate_estimate(net, &ws.x, &ws.s, rows, 1.0 / (2.0 * cfg.beta * b), true, grads)
        }
    }
}
