//! Backprop mode (SPEC §2d): the exact gradient of the mean cost through the forward
//! pass, by an explicit backward pass through Linear and the activations.

use super::{layered, GradConfig, Grads, Workspace};
use crate::backend::Backend;
use crate::nn::Network;
use crate::Result;

/// δ_L = φ′_L(s_L) ⊙ ∂C/∂o; G_{W_l} = (1/B) δ_lᵀ a_{l−1}; δ_{l−1} = φ′_{l−1}(s_{l−1}) ⊙ δ_l W_l.
pub fn gradients<B: Backend>(
    net: &Network<B>,
    cfg: &GradConfig,
    ws: &mut Workspace<B>,
    rows: usize,
    grads: &mut Grads<B>,
) -> Result<()> {
    let bk = &net.backend;
    let blocks = &net.arch.blocks;
    let last = blocks.len() - 1;
    layered::forward(net, ws, rows)?;
    bk.cost_stats(rows, blocks[last].out, &ws.a[last], &ws.y, cfg.loss, &mut ws.stats)?;
    bk.cost_grad(rows, blocks[last].out, &ws.a[last], &ws.y, cfg.loss, &mut ws.e[last])?;
    bk.act_grad_mul(rows, blocks[last].out, &ws.s[last], blocks[last].act, &mut ws.e[last])?;
    let inv_b = 1.0 / rows as f64;
    for l in (0..=last).rev() {
        let blk = &blocks[l];
        let input = if l == 0 { &ws.x } else { &ws.a[l - 1] };
        bk.gemm(
            true,
            false,
            blk.out,
            blk.inp,
            rows,
            inv_b,
            &ws.e[l],
            input,
            0.0,
            &mut grads.w[l],
        )?;
        bk.col_sum(rows, blk.out, inv_b, &ws.e[l], 0.0, &mut grads.b[l])?;
        if l > 0 {
            let (lower, upper) = ws.e.split_at_mut(l);
            bk.gemm(
                false,
                false,
                rows,
                blk.inp,
                blk.out,
                1.0,
                &upper[0],
                &net.params[l].w,
                0.0,
                &mut lower[l - 1],
            )?;
            bk.act_grad_mul(rows, blk.inp, &ws.s[l - 1], blocks[l - 1].act, &mut lower[l - 1])?;
        }
    }
    Ok(())
}
