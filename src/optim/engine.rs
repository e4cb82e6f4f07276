//! The optimizer on one backend: gradients (EP or Backprop), then the update rule
//! for each parameter, then the spectral constraint. Written once over
//! [`Backend`] primitives.

use super::config::{min_beta_for, MatrixRule, OptimConfig, SpectralLayers, VectorRule};
use super::newton_schulz::NsScratch;
use super::spectral::PowerIter;
use crate::backend::{ctl, Backend, Scalar};
use crate::ep::{compute_gradients_deferred, Energy, Grads, Mode, Nudging, Workspace};
use crate::nn::{Arch, Network};
use crate::train::DeviceData;
use crate::{MepError, Result};

/// Step-scalar slot 0 holds 1.0 (a β that keeps y); each block then has
/// [`SLOTS_PER_BLOCK`] slots from [`block_slot`]: three for its matrix rule, three
/// for its vector rule ([`Engine::step_scalars`] says what each holds).
const ONE_SLOT: usize = 0;
/// Step-scalar slots per block.
const SLOTS_PER_BLOCK: usize = 6;

/// The first step-scalar slot of block `l` (its vector rule's are 3 further on).
fn block_slot(l: usize) -> usize {
    1 + SLOTS_PER_BLOCK * l
}

/// A captured step ([`Engine::step`] on a backend that captures graphs).
struct StepGraph<B: Backend> {
    /// Identity of everything the graph reads or writes (see [`Engine::graph_key`]).
    key: Vec<usize>,
    graph: B::Graph,
    /// What one step adds to the workspace's host-side residual row counts (host
    /// bookkeeping done while capturing, which a replay must repeat).
    resid_rows: [u64; 2],
}

/// Most captured steps kept (one per batch shape: the full batch and an epoch's
/// shorter last one, for a training and an evaluation configuration).
const MAX_GRAPHS: usize = 4;

/// Per-block optimizer state.
struct BlockState<B: Backend> {
    /// Momentum (SGD, Muon) or Adam's first moment, for W.
    m_w: B::Buf,
    /// Adam's second moment for W (unused otherwise).
    v_w: Option<B::Buf>,
    /// Momentum / first moment for b.
    m_b: B::Buf,
    /// Adam's second moment for b.
    v_b: Option<B::Buf>,
    /// Muon: Nesterov direction U and Newton–Schulz scratch.
    muon: Option<(B::Buf, NsScratch<B>)>,
    /// Spectral-constraint power iteration and this block's bound, if constrained.
    power: Option<(PowerIter<B>, f64)>,
}

/// Running statistics of the free-phase outputs since the last reset.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepStats {
    /// Mean cost per sample.
    pub loss: f64,
    /// Fraction of samples whose argmax was the label.
    pub accuracy: f64,
    /// Samples counted.
    pub samples: u64,
    /// Settle residual at the end of the nudged phase(s), root-mean-square per sample:
    /// ‖∇_s F‖ for the layered energy, the state change of the last sweep ‖Δs‖ for
    /// the Hopfield energy (0 at equilibrium; 0 in Backprop mode, which settles nothing).
    /// With a piecewise-linear activation (ReLU, hard sigmoid) the layered residual
    /// has a floor, however many steps: units at the kink switch φ′ between sweeps
    /// (see [`crate::ep::layered::nudged_phase`]).
    pub settle_residual: f64,
    /// The same for the Hopfield free phase (‖Δs‖ of its last sweep); 0 for the
    /// layered energy, whose free phase is the exact forward pass.
    pub free_residual: f64,
}

/// An optimizer bound to a network's shapes on backend `B`.
pub struct Engine<B: Backend> {
    /// The configuration (validated; read it with [`Engine::config`]: the allocated
    /// state depends on it, so it cannot change after construction).
    cfg: OptimConfig,
    /// The architecture and energy of the network the state is shaped for: a step
    /// on any other is refused.
    arch: Arch,
    energy: Energy,
    /// Scratch space for the phases.
    pub ws: Workspace<B>,
    /// The last gradient estimate.
    pub grads: Grads<B>,
    state: Vec<BlockState<B>>,
    t: u64,
    samples_since_reset: u64,
    /// Boxed: it holds device buffers, and keeping `Engine` small keeps the
    /// backend enum `AnyEngine` balanced.
    guard: Box<Guard<B>>,
    /// The step scalars and batch indices of the current step, on the device
    /// ([`ctl`]); written once per step.
    ctl: B::Labels,
    /// Host staging for `ctl`.
    ctl_host: Vec<u32>,
    /// Captured steps, most recent last.
    graphs: Vec<StepGraph<B>>,
    /// Capture steps as graphs where the backend can (see [`Engine::set_graphs`]).
    use_graphs: bool,
}

/// Divergence detection at the step (see [`Engine::step`]).
struct Guard<B: Backend> {
    /// The parameters at the last check (before the step(s) since): restored when a
    /// parameter became non-finite. Their loss is measured by the next step, so the
    /// check that accepted them could not judge it.
    backup: Vec<(B::Buf, B::Buf)>,
    /// The parameters at the check before `backup`'s (the same as `backup` after a
    /// copy from outside): restored when the loss itself diverged or a phase did not
    /// settle, since those were measured at `backup`'s parameters (or later ones), and
    /// the check at `backup` covered the loss of these.
    earlier: Vec<(B::Buf, B::Buf)>,
    /// The running loss sum and sample count at the last check: the loss checked is
    /// that of the batches since (the step's own, with per-step checks), so neither a
    /// long run of good batches dilutes a diverged one nor an old spike lingers.
    checked_loss_sum: f64,
    checked_samples: u64,
    /// Σ over the parameters of ‖p‖², computed when verifying: non-finite if any
    /// parameter is. A non-finite parameter stays non-finite under every update rule
    /// (NaN and ±∞ propagate through momentum, Newton–Schulz, Adam and the decayed
    /// update, and the spectral clamp leaves a matrix with a non-finite norm
    /// non-finite), so checking the current parameters covers every step since the
    /// last check without a per-step reduction.
    health: B::Buf,
    /// Scratch scalar for one `sum_sq`.
    sq: B::Buf,
    /// Read `health` after every step (CPU: the read is free) or only when the host
    /// next reads anything (GPU: no host synchronisation per step).
    every_step: bool,
    /// The first divergence (step, loss, cause, fix), reported again by every later
    /// step.
    diverged: Option<(u64, f64, String, String)>,
    /// Steps taken since `backup` was copied: 1 at a check means the step started
    /// from the backed-up parameters.
    steps_since_backup: u64,
    /// Whether `backup` holds parameters no update of this optimizer produced (the
    /// network's as built, loaded or set): with one step since, a loss out of range
    /// comes from them and the data, not from the learning rate.
    backup_unupdated: bool,
    /// The [`Network::stamp`] of the network `backup` was copied from: a step on a
    /// network with another stamp (another network, or parameters replaced since)
    /// copies its parameters first, so a divergence never restores stale values.
    stamp: (u64, u64),
    /// The largest RMS of the inputs this optimizer has trained on (a data set's,
    /// or a host batch's; 0 when unknown): named in a divergence's fix when it is
    /// far from normalised data's ≈ 1, whatever the detected cause (a Hopfield net's
    /// loss stays bounded on badly scaled data, so the loss test alone misses it).
    input_rms: f64,
}

/// Copies `net`'s parameters (W, b per block) into `copy`, one of the guard's.
fn copy_into<B: Backend>(bk: &B, net: &Network<B>, copy: &mut [(B::Buf, B::Buf)]) -> Result<()> {
    for (p, (w, b)) in net.params.iter().zip(copy.iter_mut()) {
        bk.copy(&p.w, w)?;
        bk.copy(&p.b, b)?;
    }
    Ok(())
}

/// Refuses a β for which a nudged phase cannot settle, whatever the weights. With c
/// = [`Loss::max_curvature`](crate::Loss::max_curvature) and φ′ the output
/// activation's largest slope:
/// - Hopfield: the output's sweep s_L ← φ(… ∓ β·∂C/∂o(s_L)) is a fixed-point map of
///   slope up to β·c·φ′ along the output (o = s_L), which settles only below 1, for
///   either sign (the seventh user trial: squared error, sigmoid output, residual
///   3.8e-6 at β = 0.5, 2.7 at 1.1 and 420 at 1.5, training to below chance);
/// - layered, a phase at −β (NEP, CEP): F = E − β·C has curvature 1 − β·c·φ′² along
///   the output (o = φ(s_L)), and no equilibrium once that is not positive;
/// - layered, +β: the sweeps, relaxed by ω = `settle_lr`, contract only while
///   ω(1 + β·c·φ′²) < 2 (see [`crate::ep::layered::nudged_phase`]).
///
/// These are necessary conditions, from the output alone: the hidden layers add their
/// share to the curvature (‖Σ J_l J_lᵀ‖ ≥ 1, which depends on the weights), so a β
/// just inside a bound can still fail to settle (the seventh user trial, 8–16–3 tanh,
/// squared error: one-sided settles at β = 2.6, not at 2.7, bound 3), which
/// [`StepStats::settle_residual`] shows. What they refuse never settles (the sixth
/// trial ran β = 1e3 … 1e20 with residuals of 10 … 6e15, silently). β is compared as
/// the network computes it (`B::Elem`): 0.99999999 is 1 in f32.
fn check_nudge_strength<B: Backend>(cfg: &OptimConfig, net: &Network<B>) -> Result<()> {
    let g = &cfg.grad;
    let (positive, negative) = match (g.mode, g.nudging) {
        (Mode::Ep, Nudging::OneSided) => (true, false),
        (Mode::Ep, Nudging::Negative) => (false, true),
        (Mode::Ep, Nudging::Symmetric) => (true, true),
        _ => return Ok(()),
    };
    let Some(out) = net.arch.blocks.last() else {
        return Ok(());
    };
    let beta = B::Elem::of(g.beta).f64();
    let (c, slope) = (g.loss.max_curvature(), out.act.max_slope());
    let terms = format!(
        "c = {c} the largest curvature of {}, φ′ ≤ {slope} the output activation's slope",
        g.loss.name()
    );
    if matches!(net.energy, Energy::Hopfield { .. }) {
        let k = c * slope;
        if beta * k >= 1.0 {
            return Err(MepError::invalid(
                "beta",
                g.beta,
                format!(
                    "the Hopfield output's nudged sweep s_L ← φ(… ∓ β·∂C/∂o) is a fixed-point map of slope up to β·c·φ′ ({terms}: here {:.3}), which settles only below 1: use beta below {:.4} (EP's estimate is biased by O(β): 0.01–1 is the usual range)",
                    beta * k,
                    1.0 / k
                ),
            ));
        }
        return Ok(());
    }
    let k = c * slope * slope;
    if negative && beta * k >= 1.0 {
        return Err(MepError::invalid(
            "beta",
            g.beta,
            format!(
                "the phase at −β (nudging {:?}) settles F = E − β·C, which is not convex along the output once β·c·φ′² ≥ 1 ({terms}: here {:.3}), so it has no equilibrium: use beta below {:.4}, or Nudging::OneSided (--nudging one-sided)",
                g.nudging,
                beta * k,
                1.0 / k
            ),
        ));
    }
    let omega = g.settle_lr;
    if positive && omega * (1.0 + beta * k) >= 2.0 {
        return Err(MepError::invalid(
            "beta",
            g.beta,
            format!(
                "the layered energy's nudged sweeps contract only while ω(1 + β·c·φ′²) < 2 (ω = settle_lr = {omega}, {terms}: here {:.3}), so the phase cannot settle and its estimate means nothing: use beta below {:.4} (EP's estimate is biased by O(β): 0.01–1 is the usual range), or settle_lr (--settle-lr) below {:.3e}",
                omega * (1.0 + beta * k),
                (2.0 / omega - 1.0) / k,
                2.0 / (1.0 + beta * k)
            ),
        ));
    }
    Ok(())
}

/// Refuses a matrix the spectral constraint cannot estimate: one whose squared norm
/// ‖W‖² overflows the backend's precision (weights near 1e19 in f32), where σ̂ is
/// infinite and the rescaling W·γ/σ̂ would set W to 0. (Training itself never gets
/// there: the divergence guard stops a run long before.)
fn check_constrainable<B: Backend>(bk: &B, w: &B::Buf, l: usize) -> Result<()> {
    let mut sq = bk.zeros(1)?;
    bk.sum_sq(w, &mut sq)?;
    let sq = bk.download(&sq)?[0].f64();
    if !sq.is_finite() {
        return Err(MepError::NonFinite(format!(
            "block {} weights: their squared norm ‖W‖² overflows {} (the backend's precision), so the spectral constraint would see σ̂ = ∞ and scale the matrix to 0: give this constrained layer weights of norm below {:.1e} (or leave it out of spectral_layers)",
            l + 1,
            std::any::type_name::<B::Elem>(),
            <B::Elem as num_traits::Float>::max_value().f64().sqrt()
        )));
    }
    Ok(())
}

impl<B: Backend> Engine<B> {
    /// Validates `cfg` against the network and allocates the state.
    pub fn new(cfg: OptimConfig, net: &Network<B>, batch_hint: usize) -> Result<Self> {
        cfg.validate()?;
        cfg.grad.loss.validate_for(&net.arch)?;
        let g = &cfg.grad;
        let floor = min_beta_for::<B::Elem>(net.energy);
        if g.mode == Mode::Ep && g.nudging != Nudging::Contrastive && g.beta < floor {
            let f32_net = <B::Elem as num_traits::Float>::epsilon().f64() > 1e-10;
            let precision = if f32_net { "f32" } else { "f64" };
            let why = match net.energy {
                Energy::Hopfield { .. } => {
                    let fix = if f32_net {
                        "already 6% off in direction at β = 1e-6 in f32: use β ≥ 1e-4 (more in deep networks, whose first layers get a smaller share of the nudge), a Model64 (f64, floor 1.8e-15), or the layered energy (floor 9.9e-32 in f32) for a smaller β"
                    } else {
                        "use a larger β"
                    };
                    format!("below {floor:.2e} (8 ε of {precision}, the precision this network computes in), the nudge is lost in the states' rounding and the Hopfield energy's EP estimate is noise; {fix}")
                }
                Energy::LayeredLeastSquares => format!(
                    "below {floor:.2e} (the smallest normal {precision} over ε), the layered energy's nudged deviations leave {precision}'s normal range and lose their digits; use a larger β (the estimate is exact to {precision} rounding down to this floor)"
                ),
            };
            return Err(MepError::invalid("beta", g.beta, why));
        }
        check_nudge_strength(&cfg, net)?;
        if cfg.grad.mode == Mode::Backprop && net.energy != Energy::LayeredLeastSquares {
            return Err(MepError::invalid(
                "mode",
                "backprop with the Hopfield energy",
                "Backprop mode trains the forward pass, whose energy is the layered one: build the model with Energy::LayeredLeastSquares (--energy layered), or use Mode::Ep",
            ));
        }
        let bk = &net.backend;
        let depth = net.arch.depth();
        if matches!(net.energy, Energy::Hopfield { .. }) && depth > 2 && cfg.spectral.layers == SpectralLayers::Output {
            return Err(MepError::invalid(
                "spectral_layers",
                "output",
                format!(
                    "the Hopfield energy with {} hidden layers settles stably only when every coupling W_2 … W_L is bounded, not only the output layer: use SpectralLayers::Auto or Couplings (--spectral-layers auto|couplings)",
                    depth - 1
                ),
            ));
        }
        let last_act = net.arch.blocks[depth - 1].act;
        if cfg.grad.mode == Mode::Ep
            && cfg.grad.nudging.clamps()
            && net.energy == Energy::LayeredLeastSquares
            && !last_act.is_empty()
        {
            return Err(MepError::invalid(
                "nudging",
                cfg.grad.nudging.name(),
                format!(
                    "the layered energy clamps the output layer's state, which is the output only without an output activation (this model ends with {}): remove it, or use a nudging rule (one-sided, negative, symmetric)",
                    last_act.describe()
                ),
            ));
        }
        let mut state = Vec::new();
        for (l, blk) in net.arch.blocks.iter().enumerate() {
            let n = blk.out * blk.inp;
            let adam_w = matches!(cfg.matrix, MatrixRule::Adam { .. });
            let adam_b = matches!(cfg.vector, VectorRule::Adam { .. });
            let muon = match cfg.matrix {
                MatrixRule::Muon { .. } => Some((bk.zeros(n)?, NsScratch::new(bk, blk.out, blk.inp)?)),
                _ => None,
            };
            let hopfield = matches!(net.energy, Energy::Hopfield { .. });
            let power = match cfg.spectral.layers.bound(l, depth, hopfield, cfg.spectral.gamma) {
                Some(gamma) => {
                    check_constrainable(bk, &net.params[l].w, l)?;
                    Some((
                        PowerIter::new(bk, &net.params[l].w, blk.out, blk.inp, 0x5EC7 + l as u64)?,
                        gamma,
                    ))
                }
                None => None,
            };
            state.push(BlockState {
                m_w: bk.zeros(n)?,
                v_w: if adam_w { Some(bk.zeros(n)?) } else { None },
                m_b: bk.zeros(blk.out)?,
                v_b: if adam_b { Some(bk.zeros(blk.out)?) } else { None },
                muon,
                power,
            });
        }
        let copy_params = || -> Result<Vec<(B::Buf, B::Buf)>> {
            let mut out = Vec::with_capacity(net.params.len());
            for p in &net.params {
                out.push((bk.zeros(bk.len(&p.w))?, bk.zeros(bk.len(&p.b))?));
            }
            copy_into(bk, net, &mut out)?;
            Ok(out)
        };
        let guard = Box::new(Guard {
            backup: copy_params()?,
            earlier: copy_params()?,
            checked_loss_sum: 0.0,
            checked_samples: 0,
            health: bk.zeros(1)?,
            sq: bk.zeros(1)?,
            every_step: true,
            diverged: None,
            steps_since_backup: 0,
            backup_unupdated: true,
            stamp: net.stamp(),
            input_rms: 0.0,
        });
        let ws = Workspace::new(bk, &net.arch, batch_hint)?;
        let ctl = bk.zeros_labels(ctl::words(block_slot(depth)) + ws.rows_cap)?;
        Ok(Engine {
            cfg,
            arch: net.arch.clone(),
            energy: net.energy,
            ws,
            grads: Grads::new(bk, &net.arch)?,
            state,
            t: 0,
            samples_since_reset: 0,
            guard,
            ctl,
            ctl_host: Vec::new(),
            graphs: Vec::new(),
            use_graphs: graphs_from_env(),
        })
    }

    /// Whether steps are captured once per batch shape and replayed as one graph
    /// launch each (on a backend that can: CUDA), or queued primitive by primitive
    /// (eager). The default is on, unless the environment variable
    /// `MEP_CUDA_GRAPHS` is `0`. Both run the same kernels with the same arguments,
    /// so they give bit-identical results; eager mode is how a fault inside a graph
    /// is located (each launch then reports its own error).
    pub fn set_graphs(&mut self, on: bool) {
        self.use_graphs = on;
        if !on {
            self.graphs.clear();
        }
    }

    /// Whether graph capture is on ([`Engine::set_graphs`]); the CPU ignores it.
    pub fn graphs(&self) -> bool {
        self.use_graphs
    }

    /// Whether divergence is checked by a host read after every step (the default;
    /// right for the CPU, where the read costs nothing) or only every `check_every`
    /// steps and whenever the statistics are read (for the GPU: no host
    /// synchronisation per step). Either way every step is covered (a non-finite
    /// parameter stays non-finite, see the guard), so no non-finite parameter goes
    /// unnoticed; with lazy checks the parameters are restored to those of the last
    /// check, or of the one before it when the loss diverged (see [`Engine::step`]).
    pub fn set_check_every_step(&mut self, on: bool) {
        self.guard.every_step = on;
    }

    /// The architecture of the network this engine's state is shaped for.
    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    /// The energy of the network this engine's state is shaped for.
    pub fn energy(&self) -> Energy {
        self.energy
    }

    /// The configuration.
    pub fn config(&self) -> &OptimConfig {
        &self.cfg
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// One optimizer step on the `rows` samples already in `self.ws.x` / `self.ws.y`:
    /// gradients (free phase, nudged phase(s), estimate; or Backprop), then the update
    /// of every parameter, then the spectral constraint.
    ///
    /// Divergence: the parameters' squared norm, the loss of the batches since the
    /// last check and the settle residuals are read after every step (the default,
    /// see [`Engine::set_check_every_step`]), else every `check_every` steps and
    /// whenever the statistics are read. A non-finite parameter, a NaN, infinite or
    /// absurd (> [`diverged_loss_limit`]) loss, or a phase whose states overflowed is
    /// reported as [`MepError::Diverged`], the parameters are restored, and every
    /// later step returns the same error without touching the network. What is
    /// restored, with per-step checks: after a non-finite parameter, the parameters
    /// this step started from; after a diverged loss or phase, those the previous
    /// step started from, because a step measures the loss (and settles the phases)
    /// at the parameters the previous step made. With lazy checks: the parameters of
    /// the last check, or of the one before it.
    pub fn step(&mut self, net: &mut Network<B>, rows: usize) -> Result<()> {
        self.step_inner(net, rows, None)
    }

    /// [`Engine::step`] on the samples `indices` of `data` (rows of the data set),
    /// gathered on the device as part of the step: the training loop's step. On a
    /// backend that captures graphs, a step is then one small host-to-device copy
    /// (the indices and the step scalars) and one graph launch.
    pub fn step_batch(&mut self, net: &mut Network<B>, data: &DeviceData<B>, indices: &[u32]) -> Result<()> {
        if let Some(&bad) = indices.iter().find(|&&i| i as usize >= data.n) {
            return Err(MepError::Shape(format!(
                "sample index {bad} in a batch of a data set of {} samples",
                data.n
            )));
        }
        self.note_input_rms(data.input_rms);
        self.step_inner(net, indices.len(), Some((data, indices)))
    }

    /// Records the RMS of inputs about to be trained on (the host-batch path, whose
    /// values the engine does not read back); see [`INPUT_RMS_HINT`].
    pub(crate) fn note_input_rms(&mut self, rms: f64) {
        if rms.is_finite() {
            self.guard.input_rms = self.guard.input_rms.max(rms);
        }
    }

    fn step_inner(&mut self, net: &mut Network<B>, rows: usize, batch: Option<(&DeviceData<B>, &[u32])>) -> Result<()> {
        if let Some(e) = self.diverged_error() {
            return Err(e);
        }
        self.check_network(net)?;
        if rows == 0 || rows > self.ws.rows_cap {
            return Err(MepError::Shape(format!(
                "batch of {rows} rows for a workspace of {}",
                self.ws.rows_cap
            )));
        }
        let bk = net.backend.clone();
        if net.stamp() != self.guard.stamp {
            // Another network, or parameters loaded or set since the copy was taken:
            // the copy to restore on divergence must be of what this step starts from.
            self.take_backup(net, true)?;
        }
        if self.t == 0 {
            // The initial weights may violate the bound (PyTorch's initialisation puts
            // a 3-hidden-layer Hopfield net's coupling operator above 1): constrain
            // before the first phases, so settling contracts from the first step.
            self.apply_constraint(net)?;
        }
        // This step's scalars (and batch indices) in one host-to-device copy.
        let t = self.t + 1;
        self.ctl_host.clear();
        ctl::encode(&self.step_scalars(net, t), &mut self.ctl_host);
        if let Some((_, indices)) = batch {
            self.ctl_host.extend_from_slice(indices);
        }
        if bk.labels_len(&self.ctl) < self.ctl_host.len() {
            self.ctl = bk.zeros_labels(self.ctl_host.len())?;
            self.graphs.clear();
        }
        bk.write_labels(&mut self.ctl, &self.ctl_host)?;
        // The first step runs eagerly (it also warms up whatever the backend loads
        // lazily); later ones replay a captured graph where the backend has them.
        if self.use_graphs && self.t > 0 {
            let key = self.graph_key(net, rows, batch.map(|(d, _)| d));
            if let Some(i) = self.graphs.iter().position(|g| g.key == key) {
                let g = &self.graphs[i];
                bk.launch_graph(&g.graph)?;
                for (r, d) in self.ws.resid_rows.iter_mut().zip(g.resid_rows) {
                    *r += d;
                }
            } else if bk.begin_capture()? {
                let before = self.ws.resid_rows;
                let body = self.step_body(net, rows, batch.map(|(d, _)| d));
                // End the capture whatever happened, so the stream is usable again.
                let graph = bk.end_capture();
                body?;
                let graph = graph?;
                let resid_rows = [self.ws.resid_rows[0] - before[0], self.ws.resid_rows[1] - before[1]];
                // Nothing ran while capturing: the host bookkeeping is redone per launch.
                self.ws.resid_rows = before;
                bk.launch_graph(&graph)?;
                for (r, d) in self.ws.resid_rows.iter_mut().zip(resid_rows) {
                    *r += d;
                }
                if self.graphs.len() == MAX_GRAPHS {
                    self.graphs.remove(0);
                }
                self.graphs.push(StepGraph { key, graph, resid_rows });
            } else {
                self.step_body(net, rows, batch.map(|(d, _)| d))?;
            }
        } else {
            self.step_body(net, rows, batch.map(|(d, _)| d))?;
        }
        self.t = t;
        self.guard.steps_since_backup += 1;
        self.samples_since_reset += rows as u64;
        if self.guard.every_step || self.t % self.cfg.check_every == 0 {
            self.verify(net)?;
        }
        Ok(())
    }

    /// The device work of one step, reading its scalars (and batch indices) from
    /// `self.ctl`: gather the batch (when `data` is given), gradients, update.
    /// Nothing here may touch host memory through the backend: it is what a graph
    /// captures.
    fn step_body(&mut self, net: &mut Network<B>, rows: usize, data: Option<&DeviceData<B>>) -> Result<()> {
        if let Some(data) = data {
            let bk = &net.backend;
            let start = ctl::words(block_slot(net.arch.depth()));
            let ws = &mut self.ws;
            bk.gather_batch(
                &data.x,
                data.features,
                &data.y,
                &self.ctl,
                start,
                rows,
                &mut ws.x,
                &mut ws.y,
            )?;
        }
        // Each part's update follows its gradient in the same branch (FinalTerm::add),
        // so no update waits for every gradient; Backprop mode's gradients come
        // complete, and the updates follow them.
        match compute_gradients_deferred(net, &self.cfg.grad, &mut self.ws, rows, &mut self.grads)? {
            Some(term) => {
                let bk = net.backend.clone();
                let cfg = self.cfg;
                let blocks = &net.arch.blocks;
                let mut parts: Vec<_> = self.state.iter_mut().zip(net.params.iter_mut()).collect();
                let ctl = &self.ctl;
                term.add(&bk, &net.arch, &mut self.ws, &mut self.grads, &mut |i, g| {
                    update_part(&bk, &cfg, blocks, &mut parts, i, g, ctl)
                })
            }
            None => self.update_body(net),
        }
    }

    /// The identity of everything a captured step reads or writes that a caller can
    /// replace: the batch shape, the parameters, the workspace, the gradients and
    /// the data set (their device addresses). A step whose key differs from every
    /// captured one is captured afresh.
    fn graph_key(&self, net: &Network<B>, rows: usize, data: Option<&DeviceData<B>>) -> Vec<usize> {
        let bk = &net.backend;
        let mut key = vec![rows, self.ws.rows_cap, data.is_some() as usize];
        for p in &net.params {
            key.push(bk.buf_id(&p.w));
            key.push(bk.buf_id(&p.b));
        }
        for g in self.grads.w.iter().chain(&self.grads.b) {
            key.push(bk.buf_id(g));
        }
        key.push(bk.buf_id(&self.ws.x));
        key.push(bk.labels_id(&self.ws.y));
        key.push(bk.buf_id(&self.ws.stats));
        key.push(bk.labels_id(&self.ctl));
        if let Some(d) = data {
            key.push(bk.buf_id(&d.x));
            key.push(bk.labels_id(&d.y));
            key.push(d.features);
        }
        key
    }

    /// The step scalars of step `t` (1-based), in [`ctl`] slot order: slot
    /// [`ONE_SLOT`] = 1, then per block (from [`block_slot`]) three for the matrix
    /// rule and three for the vector rule, with lr = the scheduled learning rate
    /// and decay = 1 − lr·weight_decay:
    /// - Muon: (−lr·scale, decay, 0);
    /// - SGD: (−lr, decay, −lr·momentum) (decay = 1 for biases);
    /// - Adam: [`ctl::adam_scalars`] (no weight decay on biases).
    fn step_scalars(&self, net: &Network<B>, t: u64) -> Vec<f64> {
        let cfg = &self.cfg;
        let depth = net.arch.depth();
        let f = cfg.schedule.factor(t);
        let lr = cfg.lr * f;
        let decay = 1.0 - lr * cfg.weight_decay;
        let mut out = vec![0.0; block_slot(depth)];
        out[ONE_SLOT] = 1.0;
        for (l, blk) in net.arch.blocks.iter().enumerate() {
            let m = block_slot(l);
            let mat: [f64; 3] = match cfg.matrix {
                MatrixRule::Muon { scale, .. } => [-lr * scale.factor(blk.out, blk.inp, depth), decay, 0.0],
                MatrixRule::Sgd { momentum, .. } => [-lr, decay, -lr * momentum],
                MatrixRule::Adam { beta1, beta2, .. } => ctl::adam_scalars(lr, beta1, beta2, cfg.weight_decay, t),
            };
            let vec: [f64; 3] = match cfg.vector {
                VectorRule::Adam {
                    lr: blr, beta1, beta2, ..
                } => ctl::adam_scalars(blr * f, beta1, beta2, 0.0, t),
                VectorRule::Sgd { lr: blr, momentum, .. } => [-blr * f, 1.0, -blr * f * momentum],
            };
            out[m..m + 3].copy_from_slice(&mat);
            out[m + 3..m + 6].copy_from_slice(&vec);
        }
        out
    }

    /// The sticky divergence error, if one was detected.
    fn diverged_error(&self) -> Option<MepError> {
        self.guard
            .diverged
            .as_ref()
            .map(|(step, loss, cause, fix)| MepError::Diverged {
                step: *step,
                loss: *loss,
                cause: cause.clone(),
                fix: fix.clone(),
            })
    }

    /// health = Σ_l ‖W_l‖² + ‖b_l‖², on the device.
    fn compute_health(&mut self, net: &Network<B>) -> Result<()> {
        let bk = &net.backend;
        let g = &mut self.guard;
        bk.fill(&mut g.health, 0.0)?;
        for p in &net.params {
            for buf in [&p.w, &p.b] {
                bk.sum_sq(buf, &mut g.sq)?;
                bk.axpby(1.0, &g.sq, 1.0, &mut g.health)?;
            }
        }
        Ok(())
    }

    /// Applies the spectral constraint to every constrained matrix of `net` now (the
    /// optimizer also does this before its first step and after every update).
    pub fn apply_constraint(&mut self, net: &mut Network<B>) -> Result<()> {
        self.check_network(net)?;
        let bk = net.backend.clone();
        for (st, p) in self.state.iter_mut().zip(net.params.iter_mut()) {
            if let Some((power, gamma)) = st.power.as_mut() {
                power.constrain(&bk, &mut p.w, *gamma, self.cfg.spectral.power_iters)?;
            }
        }
        Ok(())
    }

    /// Reads the health scalar and the running loss (one small read each). On
    /// divergence restores the backed-up parameters and records the error; otherwise
    /// the current parameters become the new backup.
    pub fn verify(&mut self, net: &mut Network<B>) -> Result<StepStats> {
        if let Some(e) = self.diverged_error() {
            return Err(e);
        }
        self.check_network(net)?;
        let bk = net.backend.clone();
        self.compute_health(net)?;
        let health = bk.download(&self.guard.health)?[0].f64();
        let s = self.stats()?;
        // The loss of the batches since the last check (the free phase's, taken
        // before each update). With one step since parameters that no update of this
        // optimizer made (as built, loaded or set), no update made it, whatever the
        // update then did.
        let sum = s.loss * s.samples as f64;
        let window = s.samples.saturating_sub(self.guard.checked_samples);
        let loss = if window > 0 {
            (sum - self.guard.checked_loss_sum) / window as f64
        } else {
            0.0 // nothing new since the last check
        };
        let loss_limit = diverged_loss_limit(self.arch.outputs());
        let loss_diverged = diverged(loss, self.arch.outputs());
        let first_from_outside = self.guard.backup_unupdated && self.guard.steps_since_backup <= 1;
        let before_any_update = first_from_outside && loss_diverged;
        // States that overflowed while settling make the estimate, and the update
        // made from it, meaningless even while the parameters stay finite; named
        // before the parameters, which they are the cause of.
        let unsettled = !(s.settle_residual.is_finite() && s.free_residual.is_finite());
        let cause = if before_any_update {
            Some(format!(
                "the loss of the batch at the parameters the step started from is {loss} (divergence above {loss_limit:.0})"
            ))
        } else if unsettled {
            Some(format!(
                "a phase did not settle (residual {}, free phase {})",
                s.settle_residual, s.free_residual
            ))
        } else if !health.is_finite() {
            let bad: Vec<String> = net
                .params
                .iter()
                .enumerate()
                .filter_map(|(l, p)| {
                    let finite = |b: &B::Buf| bk.download(b).map(|v| v.iter().all(|x| x.f64().is_finite()));
                    match (finite(&p.w), finite(&p.b)) {
                        (Ok(true), Ok(true)) => None,
                        _ => Some(format!("block {}", l + 1)),
                    }
                })
                .collect();
            Some(if bad.is_empty() {
                format!("the parameters' squared norm overflowed ({health})")
            } else {
                format!("parameters of {} became NaN or infinite", bad.join(", "))
            })
        } else if loss_diverged {
            Some(format!(
                "the loss of the batches since the last check is {loss} (divergence above {loss_limit:.0})"
            ))
        } else {
            None
        };
        if let Some(cause) = cause {
            // A diverged loss or an unsettled phase was measured at `backup`'s
            // parameters (or later ones): restore the ones checked before them.
            let restore = if loss_diverged || unsettled {
                &self.guard.earlier
            } else {
                &self.guard.backup
            };
            for (p, (w, b)) in net.params.iter_mut().zip(restore) {
                bk.copy(w, &mut p.w)?;
                bk.copy(b, &mut p.b)?;
            }
            let settle_lr = if matches!(net.energy, Energy::Hopfield { .. }) {
                ""
            } else {
                " (or `settle_lr`)"
            };
            let fix = if before_any_update {
                "no update had been applied yet: the loss of the parameters the step started from is already out of range on this data, so check the inputs' scale (normalise them) and the weights, then build a new optimizer".to_string()
            } else if unsettled && first_from_outside {
                format!(
                    "the phases started from the last checked parameters, so the nudge overflowed the states: lower `beta`{settle_lr} or check the inputs' scale, and build a new optimizer"
                )
            } else {
                format!(
                    "lower the learning rate `lr` or `beta`{settle_lr}, or keep the spectral constraint on, and build a new optimizer"
                )
            };
            let rms = self.guard.input_rms;
            let fix = if rms > INPUT_RMS_HINT {
                format!(
                    "{fix}; the inputs trained on have an RMS of {rms:.4} where normalised data have about 1, a likely cause: normalise them (mep::Normalization) first"
                )
            } else {
                fix
            };
            self.guard.diverged = Some((self.t, loss, cause, fix));
            return Err(self.diverged_error().expect("just recorded"));
        }
        // Checked: the parameters the previous check accepted had their loss
        // measured, so they become `earlier`, and the current ones `backup`.
        let g = &mut *self.guard;
        std::mem::swap(&mut g.backup, &mut g.earlier);
        copy_into(&bk, net, &mut g.backup)?;
        (g.checked_loss_sum, g.checked_samples) = (sum, s.samples);
        g.steps_since_backup = 0;
        g.backup_unupdated = false;
        Ok(s)
    }

    /// Copies `net`'s parameters into both copies restored on divergence (a new
    /// starting point: parameters from outside, or a restored state), and records
    /// its stamp and whether an update of this optimizer made them (`unupdated`
    /// false).
    pub(crate) fn take_backup(&mut self, net: &Network<B>, unupdated: bool) -> Result<()> {
        let bk = &net.backend;
        let g = &mut *self.guard;
        copy_into(bk, net, &mut g.backup)?;
        copy_into(bk, net, &mut g.earlier)?;
        self.guard.stamp = net.stamp();
        self.guard.steps_since_backup = 0;
        self.guard.backup_unupdated = unupdated;
        Ok(())
    }

    /// Refuses a network other than the one (architecture and energy) this engine's
    /// state is shaped for, naming both.
    pub(crate) fn check_network(&self, net: &Network<B>) -> Result<()> {
        if net.arch != self.arch || net.energy != self.energy {
            return Err(MepError::Shape(format!(
                "this optimizer was built for a network of structure {} with the {:?} energy but is given one of structure {} with the {:?} energy; build one optimizer per network",
                self.arch.describe_with_biases(),
                self.energy,
                net.arch.describe_with_biases(),
                net.energy
            )));
        }
        Ok(())
    }

    /// Applies the update rules to `net` using the gradients in `self.grads`, with
    /// the learning rate and bias corrections of step max(1, [`Engine::steps`]),
    /// without counting a step ([`Engine::step`] does all of it).
    pub fn apply_update(&mut self, net: &mut Network<B>) -> Result<()> {
        self.check_network(net)?;
        self.ctl_host.clear();
        ctl::encode(&self.step_scalars(net, self.t.max(1)), &mut self.ctl_host);
        net.backend.write_labels(&mut self.ctl, &self.ctl_host)?;
        self.update_body(net)
    }

    /// The update rules, with the step scalars in `self.ctl` ([`Engine::step_scalars`]).
    /// Each block's matrix update (with its spectral constraint) and its bias update
    /// read their gradients and `ctl` and write only their own parameter and state,
    /// so they are independent branches ([`Backend::concurrently`], the matrices
    /// first: they are the long ones; parallel graph branches on CUDA).
    fn update_body(&mut self, net: &mut Network<B>) -> Result<()> {
        let bk = net.backend.clone();
        let cfg = self.cfg;
        let depth = net.arch.depth();
        let blocks = &net.arch.blocks;
        let mut parts: Vec<_> = self.state.iter_mut().zip(net.params.iter_mut()).collect();
        let (grads, ctl) = (&self.grads, &self.ctl);
        bk.concurrently(2 * depth, &mut |i| {
            let l = i % depth;
            let g = if i < depth { &grads.w[l] } else { &grads.b[l] };
            update_part(&bk, &cfg, blocks, &mut parts, i, g, ctl)
        })
    }

    /// Reads the running statistics (one small device-to-host copy).
    pub fn stats(&self) -> Result<StepStats> {
        let s = self.ws.backend.download(&self.ws.stats)?;
        let n = self.samples_since_reset.max(1) as f64;
        let [settle_residual, free_residual] = self.ws.residuals()?;
        Ok(StepStats {
            loss: s[0].f64() / n,
            accuracy: s[1].f64() / n,
            samples: self.samples_since_reset,
            settle_residual,
            free_residual,
        })
    }

    /// Resets the running statistics.
    pub fn reset_stats(&mut self) -> Result<()> {
        self.samples_since_reset = 0;
        (self.guard.checked_loss_sum, self.guard.checked_samples) = (0.0, 0);
        self.ws.reset_residuals()?;
        self.ws.backend.fill(&mut self.ws.stats, 0.0)
    }

    /// Reads the running statistics after checking for divergence ([`Engine::verify`]):
    /// the training loop's progress reads go through it, so a lazy (GPU) check happens
    /// whenever the host reads anything.
    pub fn checked_stats(&mut self, net: &mut Network<B>) -> Result<StepStats> {
        self.verify(net)
    }
}

/// Inputs whose RMS is above this are named in a divergence's fix as a likely cause:
/// normalised data (MNIST standardised, or pixels in [0, 1]) have an RMS of about
/// 1, raw pixels (0–255) about 100.
pub const INPUT_RMS_HINT: f64 = 10.0;

/// Mean costs above this many times max(1, ln K) (K outputs) are divergence, not
/// training: cross-entropy starts at ln K (2.3 for 10 classes), the squared error
/// from a one-hot target at about ½ per output, and both fall from there; an unstable
/// settle (EP + SGD without the spectral constraint at lr ≥ 0.02, measured) reaches
/// 1e16 while staying finite, and SGD at lr 100 on a 3-class task 1.2e5 (the sixth
/// user trial; an absolute limit of 1e6 let it train on).
pub const DIVERGED_LOSS_FACTOR: f64 = 1e3;

/// The mean cost above which a network of `outputs` outputs has diverged:
/// [`DIVERGED_LOSS_FACTOR`] × max(1, ln `outputs`) (2303 for 10 classes).
pub fn diverged_loss_limit(outputs: usize) -> f64 {
    DIVERGED_LOSS_FACTOR * (outputs.max(1) as f64).ln().max(1.0)
}

/// True when a mean cost of a network of `outputs` outputs is NaN, infinite or
/// above [`diverged_loss_limit`].
pub fn diverged(loss: f64, outputs: usize) -> bool {
    !loss.is_finite() || loss > diverged_loss_limit(outputs)
}

/// `MEP_CUDA_GRAPHS=0` turns graph capture off (see [`Engine::set_graphs`]).
fn graphs_from_env() -> bool {
    std::env::var("MEP_CUDA_GRAPHS").map_or(true, |v| v.trim() != "0")
}

/// Export and import of the optimizer's state (momentum, Adam moments, power-iteration
/// vectors, step counter): a child module, so that it reads the state where it lives
/// without widening any field's visibility.
#[path = "state.rs"]
mod state;
pub use state::OptimizerState;

/// The per-parameter update rules (Muon, SGD, Adam, then the spectral constraint): a
/// child module for the same reason.
#[path = "rules.rs"]
mod rules;
use rules::update_part;
