//! The update rules, one parameter at a time: Muon (momentum, then Newton–Schulz
//! straight into W), SGD with optional (Nesterov) momentum and Adam for matrices,
//! SGD or Adam for biases, then W's spectral constraint. The learning rate, decay and
//! Adam's bias corrections are read from step-scalar slots ([`super::Engine`]'s
//! `step_scalars`), so a captured step replays with a schedule.

use super::{block_slot, BlockState, ONE_SLOT};
use crate::backend::Backend;
use crate::nn::Block;
use crate::optim::config::{MatrixRule, OptimConfig, VectorRule};
use crate::optim::newton_schulz::{orthogonalize_from, NsOut};
use crate::Result;

/// Update part i of a network of `blocks` from its gradient `g`: W_l's rule (with
/// its spectral constraint) for i = l < depth, b_l's for i = depth + l (nothing for a
/// block without bias). `parts` holds each block's optimizer state and parameters.
pub(super) fn update_part<B: Backend>(
    bk: &B,
    cfg: &OptimConfig,
    blocks: &[Block],
    parts: &mut [(&mut BlockState<B>, &mut crate::nn::Params<B>)],
    i: usize,
    g: &B::Buf,
    ctl: &B::Labels,
) -> Result<()> {
    let depth = blocks.len();
    let l = i % depth;
    let (st, p) = &mut parts[l];
    if i < depth {
        update_matrix(bk, cfg, l, &blocks[l], st, &mut p.w, g, ctl)
    } else if blocks[l].bias {
        update_vector(bk, cfg, l, st, &mut p.b, g, ctl)
    } else {
        Ok(())
    }
}

/// Block l's matrix rule for W (step-scalar slots from `block_slot(l)`), then its
/// spectral constraint.
#[allow(clippy::too_many_arguments)]
fn update_matrix<B: Backend>(
    bk: &B,
    cfg: &OptimConfig,
    l: usize,
    blk: &Block,
    st: &mut BlockState<B>,
    w: &mut B::Buf,
    g: &B::Buf,
    ctl: &B::Labels,
) -> Result<()> {
    let ms = block_slot(l);
    match cfg.matrix {
        MatrixRule::Muon {
            momentum,
            nesterov,
            ns_steps,
            ..
        } => {
            let (u, ns) = st.muon.as_mut().expect("Muon state allocated with the engine");
            let dir = if nesterov {
                // M = μM + G, U = G + μM, and Σ U² for the orthogonalisation
                bk.nesterov_sum_sq(momentum, g, &mut st.m_w, u, ns.norm_sq())?;
                &*u
            } else {
                bk.axpby(1.0, g, momentum, &mut st.m_w)?; // M = μM + G
                bk.sum_sq(&st.m_w, ns.norm_sq())?;
                &st.m_w
            };
            // W ← decay·W − lr·scale·O
            let update = NsOut::Update {
                ctl,
                alpha_slot: ms,
                beta_slot: ms + 1,
                w: &mut *w,
            };
            orthogonalize_from(bk, blk.out, blk.inp, ns_steps, dir, true, ns, update)?;
        }
        MatrixRule::Sgd { momentum, nesterov } => sgd_update(bk, w, g, &mut st.m_w, momentum, nesterov, ctl, ms)?,
        MatrixRule::Adam { beta1, beta2, eps } => {
            let v = st.v_w.as_mut().expect("Adam state allocated with the engine");
            bk.adam(w, g, &mut st.m_w, v, beta1, beta2, eps, ctl, ms)?;
        }
    }
    if let Some((power, gamma)) = st.power.as_mut() {
        power.constrain(bk, w, *gamma, cfg.spectral.power_iters)?;
    }
    Ok(())
}

/// Block l's vector rule for its bias b (step-scalar slots from `block_slot(l) + 3`).
fn update_vector<B: Backend>(
    bk: &B,
    cfg: &OptimConfig,
    l: usize,
    st: &mut BlockState<B>,
    b: &mut B::Buf,
    g: &B::Buf,
    ctl: &B::Labels,
) -> Result<()> {
    let vs = block_slot(l) + 3;
    match cfg.vector {
        VectorRule::Adam { beta1, beta2, eps, .. } => {
            let v = st.v_b.as_mut().expect("Adam state allocated with the engine");
            bk.adam(b, g, &mut st.m_b, v, beta1, beta2, eps, ctl, vs)
        }
        VectorRule::Sgd { momentum, nesterov, .. } => sgd_update(bk, b, g, &mut st.m_b, momentum, nesterov, ctl, vs),
    }
}

/// p ← decay·p − lr·(M or G + μM) with M ← μM + G, where the step-scalar slots
/// `slot`, `slot + 1`, `slot + 2` hold −lr, decay and −lr·μ.
#[allow(clippy::too_many_arguments)]
fn sgd_update<B: Backend>(
    bk: &B,
    p: &mut B::Buf,
    g: &B::Buf,
    m: &mut B::Buf,
    momentum: f64,
    nesterov: bool,
    ctl: &B::Labels,
    slot: usize,
) -> Result<()> {
    let (neg_lr, decay, neg_lr_mu) = (slot, slot + 1, slot + 2);
    if momentum == 0.0 {
        return bk.axpby_ctl(ctl, neg_lr, g, decay, p);
    }
    bk.axpby(1.0, g, momentum, m)?;
    if nesterov {
        bk.axpby_ctl(ctl, neg_lr, g, decay, p)?;
        bk.axpby_ctl(ctl, neg_lr_mu, m, ONE_SLOT, p)
    } else {
        bk.axpby_ctl(ctl, neg_lr, m, decay, p)
    }
}
