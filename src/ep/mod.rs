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

pub mod backprop;
pub mod hopfield;
pub mod layered;
pub mod workspace;

pub use workspace::{Grads, Workspace};

use crate::backend::Backend;
use crate::nn::Network;
use crate::{Loss, MepError, Result};

/// Default free-phase sweeps of the Hopfield energy. The free phase contracts slowly
/// (output coupling σ ≤ γ = 0.95): 20 sweeps failed to train on one seed of two and
/// 30 trained (BENCHMARKS.md §3); 50 leaves a margin.
pub const DEFAULT_FREE_STEPS: usize = 50;

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

/// One-sided (+β) or symmetric (±β) nudging (SPEC §2c).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nudging {
    /// One nudged phase at +β: bias O(β).
    OneSided,
    /// Phases at +β and −β, difference over 2β: bias O(β²) (Laborieux et al. 2021).
    Symmetric,
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
    /// Step size η of the layered energy's nudged-phase gradient descent.
    pub settle_lr: f64,
    /// One-sided or symmetric.
    pub nudging: Nudging,
    /// The cost C.
    pub loss: Loss,
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
    match (cfg.mode, net.energy) {
        (Mode::Backprop, _) => backprop::gradients(net, cfg, ws, rows, grads),
        (Mode::Ep, Energy::LayeredLeastSquares) => layered::gradients(net, cfg, ws, rows, grads),
        (Mode::Ep, Energy::Hopfield { free_steps }) => hopfield::gradients(net, cfg, free_steps, ws, rows, grads),
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
