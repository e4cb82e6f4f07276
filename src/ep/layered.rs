//! The layered least-squares energy (SPEC §2a).
//!
//! e_l = s_l − W_l φ_{l−1}(s_{l−1}) − b_l,  E = Σ_l ½‖e_l‖²,  F = E + β·C(φ_L(s_L), y).
//! The free equilibrium (all e_l = 0) is the forward pass, computed directly. The
//! nudged phase takes `settle_steps` synchronous gradient steps s ← s − η∇_s F from it:
//! ∇_{s_l}F = e_l − φ′_l(s_l) ⊙ W_{l+1}ᵀe_{l+1} (l < L), ∇_{s_L}F = e_L + β φ′_L(s_L) ⊙ ∂C/∂o.

use super::{GradConfig, Grads, Nudging, Workspace};
use crate::backend::Backend;
use crate::nn::Network;
use crate::Result;

/// Forward pass: p_l = W_l a_{l−1}, s_l = p_l + b_l, a_l = φ_l(s_l), with a_0 = x.
/// Leaves `p[0]` = W_1 x, which the nudged phase reuses (the input is clamped).
pub fn forward<B: Backend>(net: &Network<B>, ws: &mut Workspace<B>, rows: usize) -> Result<()> {
    let bk = &net.backend;
    for (l, blk) in net.arch.blocks.iter().enumerate() {
        let input = if l == 0 { &ws.x } else { &ws.a[l - 1] };
        bk.gemm(
            false,
            true,
            rows,
            blk.out,
            blk.inp,
            1.0,
            input,
            &net.params[l].w,
            0.0,
            &mut ws.p[l],
        )?;
        bk.copy(&ws.p[l], &mut ws.s[l])?;
        bk.bias_act(rows, blk.out, &mut ws.s[l], &net.params[l].b, blk.act, &mut ws.a[l])?;
    }
    Ok(())
}

/// e_l = s_l − W_l a_{l−1} − b_l for every block at the current state.
fn errors<B: Backend>(net: &Network<B>, ws: &mut Workspace<B>, rows: usize) -> Result<()> {
    let bk = &net.backend;
    for (l, blk) in net.arch.blocks.iter().enumerate() {
        if l > 0 {
            bk.gemm(
                false,
                true,
                rows,
                blk.out,
                blk.inp,
                1.0,
                &ws.a[l - 1],
                &net.params[l].w,
                0.0,
                &mut ws.p[l],
            )?;
        }
        bk.layered_error(rows, blk.out, &ws.s[l], &ws.p[l], &net.params[l].b, &mut ws.e[l])?;
    }
    Ok(())
}

/// One nudged phase at signed strength `beta`, starting from the state in `ws.s`,
/// `ws.a` (the free state); leaves the errors e_l of the final state in `ws.e`.
pub fn nudged_phase<B: Backend>(
    net: &Network<B>,
    cfg: &GradConfig,
    beta: f64,
    ws: &mut Workspace<B>,
    rows: usize,
) -> Result<()> {
    let bk = &net.backend;
    let blocks = &net.arch.blocks;
    let last = blocks.len() - 1;
    // p[0] = W_1 x still holds from the forward pass: the input is clamped.
    for _ in 0..cfg.settle_steps {
        errors(net, ws, rows)?;
        bk.cost_grad(rows, blocks[last].out, &ws.a[last], &ws.y, cfg.loss, &mut ws.dc)?;
        for l in 0..last {
            // Feedback W_{l+1}ᵀ e_{l+1}, from the errors of the current (old) state.
            let up = &blocks[l + 1];
            bk.gemm(
                false,
                false,
                rows,
                up.inp,
                up.out,
                1.0,
                &ws.e[l + 1],
                &net.params[l + 1].w,
                0.0,
                &mut ws.f,
            )?;
            bk.layered_settle(
                rows,
                blocks[l].out,
                &ws.e[l],
                &ws.f,
                -1.0,
                cfg.settle_lr,
                blocks[l].act,
                &mut ws.s[l],
                &mut ws.a[l],
            )?;
        }
        bk.layered_settle(
            rows,
            blocks[last].out,
            &ws.e[last],
            &ws.dc,
            beta,
            cfg.settle_lr,
            blocks[last].act,
            &mut ws.s[last],
            &mut ws.a[last],
        )?;
    }
    errors(net, ws, rows)
}

/// Adds `coef · Σ_batch e_l a_{l−1}ᵀ` (and `coef · Σ e_l` for the bias) to the
/// gradients; `accumulate = false` overwrites instead.
fn accumulate_estimate<B: Backend>(
    net: &Network<B>,
    ws: &Workspace<B>,
    rows: usize,
    coef: f64,
    accumulate: bool,
    grads: &mut Grads<B>,
) -> Result<()> {
    let bk = &net.backend;
    let acc = if accumulate { 1.0 } else { 0.0 };
    for (l, blk) in net.arch.blocks.iter().enumerate() {
        let input = if l == 0 { &ws.x } else { &ws.a[l - 1] };
        bk.gemm(
            true,
            false,
            blk.out,
            blk.inp,
            rows,
            coef,
            &ws.e[l],
            input,
            acc,
            &mut grads.w[l],
        )?;
        bk.col_sum(rows, blk.out, coef, &ws.e[l], acc, &mut grads.b[l])?;
    }
    Ok(())
}

/// The EP estimate: forward pass (free phase), nudged phase(s), contrast.
/// One-sided: Ĝ = −(1/(βB)) Σ e φᵀ at the +β state. Symmetric:
/// Ĝ = −(1/(2βB)) (Σ e φᵀ at +β − Σ e φᵀ at −β).
pub fn gradients<B: Backend>(
    net: &Network<B>,
    cfg: &GradConfig,
    ws: &mut Workspace<B>,
    rows: usize,
    grads: &mut Grads<B>,
) -> Result<()> {
    forward(net, ws, rows)?;
    let last = net.arch.depth() - 1;
    net.backend
        .cost_stats(rows, net.arch.outputs(), &ws.a[last], &ws.y, cfg.loss, &mut ws.stats)?;
    let b = rows as f64;
    // The first nudged phase starts from the forward pass's state as it stands; only a
    // second (−β) phase needs the free state saved and restored.
    match cfg.nudging {
        Nudging::OneSided => {
            nudged_phase(net, cfg, cfg.beta, ws, rows)?;
            accumulate_estimate(net, ws, rows, -1.0 / (cfg.beta * b), false, grads)
        }
        Nudging::Symmetric => {
            ws.save_free(true)?;
            nudged_phase(net, cfg, cfg.beta, ws, rows)?;
            accumulate_estimate(net, ws, rows, -1.0 / (2.0 * cfg.beta * b), false, grads)?;
            ws.restore_free(true)?;
            nudged_phase(net, cfg, -cfg.beta, ws, rows)?;
            accumulate_estimate(net, ws, rows, 1.0 / (2.0 * cfg.beta * b), true, grads)
        }
    }
}
