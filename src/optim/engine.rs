//! The optimizer on one backend: gradients (EP or Backprop), then the update rule
//! for each parameter, then the spectral constraint. Written once over
//! [`Backend`] primitives.

use super::config::{MatrixRule, OptimConfig, SpectralLayers, VectorRule};
use super::newton_schulz::{orthogonalize, NsScratch};
use super::spectral::PowerIter;
use crate::backend::{Backend, Scalar};
use crate::ep::{compute_gradients, Energy, Grads, Mode, Workspace};
use crate::nn::Network;
use crate::{MepError, Result};

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
}

/// Divergence detection at the step (see [`Engine::step`]).
struct Guard<B: Backend> {
    /// The parameters as they were before the last unverified step(s): restored when
    /// a divergence is detected.
    backup: Vec<(B::Buf, B::Buf)>,
    /// Σ over unverified steps and parameters of ‖p‖²: a device scalar that turns
    /// NaN or infinite (and stays so) as soon as one parameter does, so one read
    /// tells whether any step since the last check produced a non-finite parameter.
    health: B::Buf,
    /// Scratch scalar for one `sum_sq`.
    sq: B::Buf,
    /// Read `health` after every step (CPU: the read is free) or only when the host
    /// next reads anything (GPU: no host synchronisation per step).
    every_step: bool,
    /// The first divergence, reported again by every later step.
    diverged: Option<(u64, f64, String)>,
}

impl<B: Backend> Engine<B> {
    /// Validates `cfg` against the network and allocates the state.
    pub fn new(cfg: OptimConfig, net: &Network<B>, batch_hint: usize) -> Result<Self> {
        cfg.validate()?;
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
                Some(gamma) => Some((
                    PowerIter::new(bk, &net.params[l].w, blk.out, blk.inp, 0x5EC7 + l as u64)?,
                    gamma,
                )),
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
        let mut backup = Vec::with_capacity(net.params.len());
        for p in &net.params {
            let (mut w, mut b) = (bk.zeros(bk.len(&p.w))?, bk.zeros(bk.len(&p.b))?);
            bk.copy(&p.w, &mut w)?;
            bk.copy(&p.b, &mut b)?;
            backup.push((w, b));
        }
        let guard = Box::new(Guard {
            backup,
            health: bk.zeros(1)?,
            sq: bk.zeros(1)?,
            every_step: true,
            diverged: None,
        });
        Ok(Engine {
            cfg,
            ws: Workspace::new(bk, &net.arch, batch_hint)?,
            grads: Grads::new(bk, &net.arch)?,
            state,
            t: 0,
            samples_since_reset: 0,
            guard,
        })
    }

    /// Whether divergence is checked by a host read after every step (the default;
    /// right for the CPU, where the read costs nothing) or only every `check_every`
    /// steps and whenever the statistics are read (for the GPU: no host
    /// synchronisation per step). Either way the device-side health scalar covers
    /// every step, so no non-finite parameter goes unnoticed; with lazy checks the
    /// parameters are restored to the last verified ones.
    pub fn set_check_every_step(&mut self, on: bool) {
        self.guard.every_step = on;
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
    /// Divergence: after the update the parameters' squared norms are added to a
    /// device-side health scalar. It is read after every step (the default, see
    /// [`Engine::set_check_every_step`]), else every `check_every` steps and whenever
    /// the statistics are read; the running loss is read at the same time. A non-finite
    /// parameter or a NaN, infinite or absurd (> [`DIVERGED_LOSS`]) loss is reported as
    /// [`MepError::Diverged`], the parameters are restored to their last verified
    /// values (with per-step checks: those before this step), and every later step
    /// returns the same error without touching the network.
    pub fn step(&mut self, net: &mut Network<B>, rows: usize) -> Result<()> {
        if let Some(e) = self.diverged_error() {
            return Err(e);
        }
        if rows == 0 || rows > self.ws.rows_cap {
            return Err(MepError::Shape(format!(
                "batch of {rows} rows for a workspace of {}",
                self.ws.rows_cap
            )));
        }
        if self.t == 0 {
            // The initial weights may violate the bound (PyTorch's initialisation puts
            // a 3-hidden-layer Hopfield net's coupling operator above 1): constrain
            // before the first phases, so settling contracts from the first step.
            self.apply_constraint(net)?;
        }
        compute_gradients(net, &self.cfg.grad, &mut self.ws, rows, &mut self.grads)?;
        self.t += 1;
        self.samples_since_reset += rows as u64;
        self.apply_update(net)?;
        self.accumulate_health(net)?;
        if self.guard.every_step || self.t % self.cfg.check_every == 0 {
            self.verify(net)?;
        }
        Ok(())
    }

    /// The sticky divergence error, if one was detected.
    fn diverged_error(&self) -> Option<MepError> {
        self.guard
            .diverged
            .as_ref()
            .map(|(step, loss, cause)| MepError::Diverged {
                step: *step,
                loss: *loss,
                cause: cause.clone(),
            })
    }

    /// health += Σ_l ‖W_l‖² + ‖b_l‖², on the device.
    fn accumulate_health(&mut self, net: &Network<B>) -> Result<()> {
        let bk = &net.backend;
        let g = &mut self.guard;
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
        let bk = net.backend.clone();
        let health = bk.download(&self.guard.health)?[0].f64();
        let s = self.stats()?;
        let cause = if !health.is_finite() {
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
        } else if diverged(s.loss) {
            Some(format!("the running loss is {}", s.loss))
        } else {
            None
        };
        if let Some(cause) = cause {
            for (p, (w, b)) in net.params.iter_mut().zip(&self.guard.backup) {
                bk.copy(w, &mut p.w)?;
                bk.copy(b, &mut p.b)?;
            }
            self.guard.diverged = Some((self.t, s.loss, cause));
            return Err(self.diverged_error().expect("just recorded"));
        }
        for (p, (w, b)) in net.params.iter().zip(&mut self.guard.backup) {
            bk.copy(&p.w, w)?;
            bk.copy(&p.b, b)?;
        }
        bk.fill(&mut self.guard.health, 0.0)?;
        Ok(s)
    }

    /// Applies the update rules to `net` using the gradients in `self.grads`.
    pub fn apply_update(&mut self, net: &mut Network<B>) -> Result<()> {
        let bk = net.backend.clone();
        let cfg = self.cfg;
        let t = self.t.max(1);
        let f = cfg.schedule.factor(t);
        let lr = cfg.lr * f;
        for (l, blk) in net.arch.blocks.iter().enumerate() {
            let st = &mut self.state[l];
            let p = &mut net.params[l];
            let g = &self.grads.w[l];
            let decay = 1.0 - lr * cfg.weight_decay;
            match cfg.matrix {
                MatrixRule::Muon {
                    momentum,
                    nesterov,
                    ns_steps,
                    scale,
                } => {
                    let (u, ns) = st.muon.as_mut().expect("Muon state allocated with the engine");
                    bk.axpby(1.0, g, momentum, &mut st.m_w)?; // M = μM + G
                    let dir = if nesterov {
                        bk.copy(g, u)?;
                        bk.axpby(momentum, &st.m_w, 1.0, u)?; // U = G + μM
                        &*u
                    } else {
                        &st.m_w
                    };
                    orthogonalize(&bk, blk.out, blk.inp, ns_steps, dir, ns)?;
                    bk.axpby(
                        -lr * scale.factor(blk.out, blk.inp, net.arch.depth()),
                        &ns.x,
                        decay,
                        &mut p.w,
                    )?;
                }
                MatrixRule::Sgd { momentum, nesterov } => {
                    sgd_update(&bk, &mut p.w, g, &mut st.m_w, lr, momentum, nesterov, decay)?
                }
                MatrixRule::Adam { beta1, beta2, eps } => {
                    let v = st.v_w.as_mut().expect("Adam state allocated with the engine");
                    bk.adam(&mut p.w, g, &mut st.m_w, v, lr, beta1, beta2, eps, cfg.weight_decay, t)?;
                }
            }
            if blk.bias {
                let gb = &self.grads.b[l];
                match cfg.vector {
                    VectorRule::Adam {
                        lr: blr,
                        beta1,
                        beta2,
                        eps,
                    } => {
                        let v = st.v_b.as_mut().expect("Adam state allocated with the engine");
                        bk.adam(&mut p.b, gb, &mut st.m_b, v, blr * f, beta1, beta2, eps, 0.0, t)?;
                    }
                    VectorRule::Sgd {
                        lr: blr,
                        momentum,
                        nesterov,
                    } => sgd_update(&bk, &mut p.b, gb, &mut st.m_b, blr * f, momentum, nesterov, 1.0)?,
                }
            }
            if let Some((power, gamma)) = st.power.as_mut() {
                power.constrain(&bk, &mut p.w, *gamma, cfg.spectral.power_iters)?;
            }
        }
        Ok(())
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

/// Mean costs above this are divergence, not training: cross-entropy starts at ln K
/// (2.3 for 10 classes) and an unstable settle (EP + SGD without the spectral
/// constraint at lr ≥ 0.02, measured) reaches 1e16 while staying finite.
pub const DIVERGED_LOSS: f64 = 1e6;

/// True when a running mean cost is NaN, infinite or above [`DIVERGED_LOSS`].
pub fn diverged(loss: f64) -> bool {
    !loss.is_finite() || loss > DIVERGED_LOSS
}

/// p ← decay·p − lr·(M or G + μM) with M ← μM + G.
#[allow(clippy::too_many_arguments)]
fn sgd_update<B: Backend>(
    bk: &B,
    p: &mut B::Buf,
    g: &B::Buf,
    m: &mut B::Buf,
    lr: f64,
    momentum: f64,
    nesterov: bool,
    decay: f64,
) -> Result<()> {
    if momentum == 0.0 {
        return bk.axpby(-lr, g, decay, p);
    }
    bk.axpby(1.0, g, momentum, m)?;
    if nesterov {
        bk.axpby(-lr, g, decay, p)?;
        bk.axpby(-lr * momentum, m, 1.0, p)
    } else {
        bk.axpby(-lr, m, decay, p)
    }
}

/// Export and import of the optimizer's state (momentum, Adam moments, power-iteration
/// vectors, step counter): a child module, so that it reads the state where it lives
/// without widening any field's visibility.
#[path = "state.rs"]
mod state;
pub use state::OptimizerState;
