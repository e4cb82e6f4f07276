//! The EP phases, the EP estimates and Backprop mode, written once over the
//! [`Backend`] primitives (SPEC §2).
//!
//! - [`layered`]: the layered least-squares energy (2a). Free phase = forward pass;
//!   nudged phase = gradient steps on F = E + βC; estimate −(1/(βB)) Σ e_l φ(s_{l−1})ᵀ.
//! - [`hopfield`]: the Hopfield energy (2b), settled by fixed-point sweeps.
//! - [`backprop`]: the exact gradient of the mean cost through the forward pass.
//!
//! Energies are per-sample and summed over the batch; weight estimates are divided by
//! the batch size once, at the end, so they are gradients of the mean cost.
//!
//! # Why settling converges at any depth
//!
//! - Layered energy: the nudged phase does not take gradient steps (whose safe size
//!   shrinks like 1/(1 + σ(W_{l+1}))² as hidden weights grow, and whose slowest mode
//!   crawls). Each sweep solves the phase's stationarity conditions by a backward
//!   substitution (the errors, as in a backward pass) and a forward one (the states),
//!   which inverts the energy's triangular structure exactly for any weights; only the
//!   O(β) curvature of the cost is left to the iteration, relaxed by ω = `settle_lr`
//!   ([`layered::nudged_phase`] has the argument).
//! - Hopfield energy: the free phase descends ½‖s‖² − Φ(s), strongly convex while the
//!   coupling operator (blocks W_2 … W_L) has norm < 1. The spectral constraint bounds
//!   each coupling by γ/(2cos(π/(L+1))), which bounds that operator's norm by γ at any
//!   depth ([`crate::optim::SpectralLayers::bound`]), and it is applied before the
//!   first step as well as after every update.
//! - Both are measured: the settle residual at the end of each phase
//!   ([`crate::optim::StepStats::settle_residual`], `--json`'s `settle_residual`),
//!   and `tests/depth.rs` asserts that it shrinks with more settle steps at depth 2
//!   and 3, at initialisation and after training.

pub mod backprop;
pub mod estimate;
pub mod hopfield;
pub mod layered;
pub mod workspace;

pub use estimate::FinalTerm;
pub use workspace::{Grads, Workspace};

use crate::backend::{Backend, PhaseNet};
use crate::nn::Network;
use crate::{Loss, MepError, Result};

/// Default free-phase sweeps of the Hopfield energy. The free phase contracts slowly
/// (output coupling σ ≤ γ = 0.95): 20 sweeps failed to train on one seed of two and
/// 30 trained (BENCHMARKS.md §3); 50 leaves a margin.
pub const DEFAULT_FREE_STEPS: usize = 50;

/// The most free-phase sweeps [`Energy::validate`] accepts (as the optimizer's
/// `MAX_SETTLE_STEPS` for the nudged phases).
pub const MAX_FREE_STEPS: usize = 10_000;

/// The energy that defines a network's settling dynamics and its inference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Energy {
    /// 2a, layered least squares: states are pre-activations, the free equilibrium is
    /// the forward pass, inference is the forward pass. Works with any `Sequential`.
    LayeredLeastSquares,
    /// 2b, Hopfield / prototypical EP: states are post-activations, settled from zero
    /// by `free_steps` forward Gauss–Seidel sweeps (layer 1 to L, each layer using the
    /// newest states of its neighbours); inference is the free-phase output.
    Hopfield {
        /// Sweeps of the free phase (and of inference).
        free_steps: usize,
    },
}

impl Energy {
    /// The default Hopfield energy ([`DEFAULT_FREE_STEPS`] free sweeps).
    pub const HOPFIELD: Energy = Energy::Hopfield {
        free_steps: DEFAULT_FREE_STEPS,
    };

    /// Checks the energy's own parameters.
    pub fn validate(self) -> Result<()> {
        if let Energy::Hopfield { free_steps } = self {
            if free_steps == 0 {
                return Err(MepError::invalid(
                    "free_steps",
                    free_steps,
                    "the Hopfield free phase needs at least 1 sweep",
                ));
            }
            // A typo's count (1e11) would look like a hang, in training and inference.
            if free_steps > MAX_FREE_STEPS {
                return Err(MepError::invalid(
                    "free_steps",
                    free_steps,
                    format!(
                        "must be at most {MAX_FREE_STEPS} (the default is {DEFAULT_FREE_STEPS}; the free phase contracts in tens to hundreds of sweeps)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `layered` or `hopfield`.
    pub fn name(self) -> &'static str {
        match self {
            Energy::LayeredLeastSquares => "layered",
            Energy::Hopfield { .. } => "hopfield",
        }
    }
}

/// The learning rule: which perturbed phases follow the free phase and how their
/// states are contrasted (SPEC §2c, §2c′; the family compared by Scellier, Ernoult,
/// Kendall and Kumar, NeurIPS 2023). With ∂θE the parameter gradient of the energy,
/// s⋆ the free state and s^β = argmin E + βC:
///
/// | rule | estimate |
/// |---|---|
/// | [`Nudging::OneSided`] (PEP) | (∂θE(s^β) − ∂θE(s⋆)) / β |
/// | [`Nudging::Negative`] (NEP) | (∂θE(s⋆) − ∂θE(s^−β)) / β |
/// | [`Nudging::Symmetric`] (CEP) | (∂θE(s^β) − ∂θE(s^−β)) / 2β |
/// | [`Nudging::Contrastive`] (CL) | ∂θE(s^clamp) − ∂θE(s⋆), output clamped to the target |
/// | [`Nudging::CoupledPositive`] (PCpL) | (∂θE(s^η) − ∂θE(s⋆)) / η |
/// | [`Nudging::CoupledNegative`] (NCpL) | (∂θE(s⋆) − ∂θE(s^−η)) / η |
/// | [`Nudging::CoupledCentered`] (CCpL) | (∂θE(s^η) − ∂θE(s^−η)) / 2η |
///
/// The coupled rules clamp the output to o⋆ + η(y − o⋆) (o⋆ the free output, y the
/// one-hot target) and settle the rest; η is the optimizer's β. Clamping needs a
/// target in the output's own space, so the clamped rules (CL, CpL) require the
/// squared-error loss, and with the layered energy an output layer without
/// activation (its state is then the output itself); anything else is refused when
/// the optimizer is built. CL does not use β.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nudging {
    /// PEP: one nudged phase at +β: bias O(β) (the seed's rule).
    OneSided,
    /// NEP: one nudged phase at −β: bias O(β), of the opposite sign.
    Negative,
    /// CEP: phases at +β and −β, difference over 2β: bias O(β²) (Laborieux et al. 2021).
    Symmetric,
    /// CL: the output clamped to the target, the rest settled.
    Contrastive,
    /// PCpL: the output clamped to o⋆ + β(y − o⋆).
    CoupledPositive,
    /// NCpL: the output clamped to o⋆ − β(y − o⋆).
    CoupledNegative,
    /// CCpL: both, difference over 2β.
    CoupledCentered,
}

/// One perturbed phase of a learning rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Phase {
    /// Settle E + βC with this signed β.
    Nudge(f64),
    /// Clamp the output to o⋆ + t(y − o⋆) (t = 1: the target itself), settle the rest.
    Clamp(f64),
}

impl Nudging {
    /// Every rule, in the order of the table above.
    pub const ALL: [Nudging; 7] = [
        Nudging::OneSided,
        Nudging::Negative,
        Nudging::Symmetric,
        Nudging::Contrastive,
        Nudging::CoupledPositive,
        Nudging::CoupledNegative,
        Nudging::CoupledCentered,
    ];

    /// The study's abbreviation (PEP, NEP, CEP, CL, PCpL, NCpL, CCpL).
    pub fn name(self) -> &'static str {
        match self {
            Nudging::OneSided => "PEP",
            Nudging::Negative => "NEP",
            Nudging::Symmetric => "CEP",
            Nudging::Contrastive => "CL",
            Nudging::CoupledPositive => "PCpL",
            Nudging::CoupledNegative => "NCpL",
            Nudging::CoupledCentered => "CCpL",
        }
    }

    /// The optimizer builders' default for a network of `depth` weight layers:
    /// one-sided (PEP) for one hidden layer, symmetric (CEP) for deeper networks.
    ///
    /// Measured (BENCHMARKS.md §5, medians of seeds 0–2, one epoch): at 784–128–10 the
    /// two tie in accuracy (97.35% / 97.22%) and one-sided takes 25% less time (one
    /// nudged phase instead of two); at 784–128–128–10 symmetric gains 0.3 point and at
    /// 784–256–256–128–10 0.8 point, where one-sided's O(β) bias, which grows with
    /// depth, drops it below Backprop mode.
    pub fn default_for_depth(depth: usize) -> Nudging {
        if depth <= 2 {
            Nudging::OneSided
        } else {
            Nudging::Symmetric
        }
    }

    /// True for the rules that clamp the output (CL and the coupled rules).
    pub fn clamps(self) -> bool {
        matches!(
            self,
            Nudging::Contrastive | Nudging::CoupledPositive | Nudging::CoupledNegative | Nudging::CoupledCentered
        )
    }

    /// The estimate as Ĝ = c⋆·∂θE(s⋆) + Σ_p c_p·∂θE(s_p): returns c⋆ and the phases
    /// with their coefficients, for strength `beta`.
    pub fn phases(self, beta: f64) -> (f64, Vec<(Phase, f64)>) {
        let (b, half) = (1.0 / beta, 0.5 / beta);
        match self {
            Nudging::OneSided => (-b, vec![(Phase::Nudge(beta), b)]),
            Nudging::Negative => (b, vec![(Phase::Nudge(-beta), -b)]),
            Nudging::Symmetric => (0.0, vec![(Phase::Nudge(beta), half), (Phase::Nudge(-beta), -half)]),
            Nudging::Contrastive => (-1.0, vec![(Phase::Clamp(1.0), 1.0)]),
            Nudging::CoupledPositive => (-b, vec![(Phase::Clamp(beta), b)]),
            Nudging::CoupledNegative => (b, vec![(Phase::Clamp(-beta), -b)]),
            Nudging::CoupledCentered => (0.0, vec![(Phase::Clamp(beta), half), (Phase::Clamp(-beta), -half)]),
        }
    }
}

/// How gradients are obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Equilibrium Propagation: free phase, nudged phase(s), contrastive estimate.
    Ep,
    /// Exact gradient of the mean cost through the forward pass (explicit backward pass).
    Backprop,
}

/// Everything the gradient computation needs besides the network.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradConfig {
    /// EP or Backprop.
    pub mode: Mode,
    /// Nudging strength β > 0.
    pub beta: f64,
    /// Steps (layered) or sweeps (Hopfield) of each nudged phase.
    pub settle_steps: usize,
    /// Relaxation ω ∈ (0, 1] of the layered energy's nudged-phase sweeps.
    pub settle_lr: f64,
    /// The learning rule (one-sided, symmetric, … see [`Nudging`]).
    pub nudging: Nudging,
    /// The cost C.
    pub loss: Loss,
}

/// out (`rows × n_l`) ← φ(s_{l−1}) W_lᵀ + β·out for the `rows × n_{l−1}` states `below`:
/// block l's bottom-up drive (the forward pass's product), as one GEMM.
pub(crate) fn drive<B: Backend>(
    net: &Network<B>,
    l: usize,
    rows: usize,
    below: &B::Buf,
    beta: f64,
    out: &mut B::Buf,
) -> Result<()> {
    let blk = &net.arch.blocks()[l];
    let w = &net.params[l].w;
    net.backend
        .gemm(false, true, rows, blk.out, blk.inp, 1.0, below, w, beta, out)
}

/// out (`rows × n_l`) ← upper W_{l+1} + β·out for the `rows × n_{l+1}` vectors `upper`:
/// the top-down feedback W_{l+1}ᵀ u into block l, as one GEMM.
pub(crate) fn feedback<B: Backend>(
    net: &Network<B>,
    l: usize,
    rows: usize,
    upper: &B::Buf,
    beta: f64,
    out: &mut B::Buf,
) -> Result<()> {
    let up = &net.arch.blocks()[l + 1];
    let w = &net.params[l + 1].w;
    net.backend
        .gemm(false, false, rows, up.inp, up.out, 1.0, upper, w, beta, out)
}

/// A fused phase's view of `net` ([`PhaseNet`]): `rows` samples of the batch
/// `(p0, labels)` (p0 = W_1 x), cost `loss`, states `s`.
pub(crate) fn phase_net<'a, B: Backend>(
    net: &'a Network<B>,
    rows: usize,
    (p0, labels): (&'a B::Buf, &'a B::Labels),
    loss: Loss,
    s: &'a mut [B::Buf],
) -> PhaseNet<'a, B> {
    PhaseNet {
        rows,
        blocks: &net.arch.blocks,
        params: &net.params,
        p0,
        labels,
        loss,
        s,
    }
}

/// Computes the gradient estimate for the `rows` samples in `ws.x` / `ws.y` into
/// `grads`, and adds the free-phase output's loss sum and correct count to `ws.stats`.
pub fn compute_gradients<B: Backend>(
    net: &Network<B>,
    cfg: &GradConfig,
    ws: &mut Workspace<B>,
    rows: usize,
    grads: &mut Grads<B>,
) -> Result<()> {
    match compute_gradients_deferred(net, cfg, ws, rows, grads)? {
        Some(term) => term.add(&net.backend, &net.arch, ws, grads, &mut |_, _| Ok(())),
        None => Ok(()),
    }
}

/// [`compute_gradients`] except the estimate's last term, which is returned for the
/// caller to add ([`FinalTerm::add`], which can run each part's update right after
/// its gradient); `None` when the gradients are complete (Backprop mode).
pub fn compute_gradients_deferred<B: Backend>(
    net: &Network<B>,
    cfg: &GradConfig,
    ws: &mut Workspace<B>,
    rows: usize,
    grads: &mut Grads<B>,
) -> Result<Option<FinalTerm>> {
    match (cfg.mode, net.energy) {
        (Mode::Backprop, _) => backprop::gradients(net, cfg, ws, rows, grads).map(|()| None),
        (Mode::Ep, Energy::LayeredLeastSquares) => layered::gradients(net, cfg, ws, rows, grads).map(Some),
        (Mode::Ep, Energy::Hopfield { free_steps }) => {
            hopfield::gradients(net, cfg, free_steps, ws, rows, grads).map(Some)
        }
    }
}

/// Inference for the `rows` samples in `ws.x`: the forward pass (layered energy) or
/// the free-phase equilibrium (Hopfield). The outputs are then in [`output`].
pub fn inference<B: Backend>(net: &Network<B>, ws: &mut Workspace<B>, rows: usize) -> Result<()> {
    ws.ensure_rows(rows)?;
    match net.energy {
        Energy::LayeredLeastSquares => layered::forward(net, ws, rows),
        Energy::Hopfield { free_steps } => hopfield::free_phase(net, ws, rows, free_steps),
    }
}

/// The output buffer (`rows × outputs`) after [`inference`]: φ_L(s_L) for the layered
/// energy, s_L for Hopfield.
pub fn output<'w, B: Backend>(net: &Network<B>, ws: &'w Workspace<B>) -> &'w B::Buf {
    let last = net.arch.depth() - 1;
    match net.energy {
        Energy::LayeredLeastSquares => &ws.a[last],
        Energy::Hopfield { .. } => &ws.s[last],
    }
}
