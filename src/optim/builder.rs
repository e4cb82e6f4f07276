//! The user-facing optimizer: `smep(&model).lr(0.05)…build()`, then
//! `opt.step(&mut model, &x, &y)`.

use super::config::{MatrixRule, MuonScale, OptimConfig, Schedule, SpectralLayers, VectorRule};
use super::engine::{Engine, StepStats};
use crate::backend::cpu::Cpu;
use crate::backend::cuda::Cuda;
use crate::backend::{Backend, Scalar};
use crate::ep::{Energy, Mode, Nudging};
use crate::model::{check_inputs, device_mismatch, with_net, AnyData, AnyNet, DeviceDataset, Model};
use crate::nn::Network;
use crate::train::{train_epoch, EpochReport};
use crate::Shuffle;
use crate::{Loss, MepError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Preset {
    Smep,
    Sgd,
    Adam,
}

/// Builds an [`Optimizer`] for one model; every setter is validated by `build`, and
/// an option that does not apply to the chosen optimizer is an error, not ignored.
#[derive(Clone)]
pub struct OptimizerBuilder<'m> {
    model: &'m Model,
    preset: Preset,
    cfg: OptimConfig,
    bias_lr_set: bool,
    misapplied: Option<(&'static str, &'static str)>,
    /// The first EP-only option set (beta, settle_steps, settle_lr, nudging): an error
    /// at build in Backprop mode, where it would be ignored.
    ep_only: Option<&'static str>,
    /// Whether `gamma` was set: an error at build if the constraint ends up off.
    gamma_set: bool,
    /// Whether `nudging` was set; if not, [`Nudging::default_for_depth`] picks it.
    nudging_set: bool,
    /// Whether `beta` was set: an error at build with contrastive nudging (CL does
    /// not use β).
    beta_set: bool,
    /// Whether `settle_lr` was set: an error at build with the Hopfield energy.
    settle_lr_set: bool,
    /// Whether the last `nesterov` call turned it on: an error at build when the
    /// momentum ends up 0.
    nesterov_on: bool,
    /// Whether `power_iters` was set: an error at build if no matrix is constrained.
    power_iters_set: bool,
    /// Whether `spectral_layers` was set: an error at build if it selects no matrix
    /// of this model.
    spectral_layers_set: bool,
    check_every_set: bool,
}

/// SMEP: spectral constraint + Muon + EP (the seed's optimizer), with the defaults
/// of [`OptimConfig::smep`].
pub fn smep(model: &Model) -> OptimizerBuilder<'_> {
    OptimizerBuilder::new(model, Preset::Smep, OptimConfig::smep())
}

/// Momentum SGD (for comparison), EP mode by default.
pub fn sgd(model: &Model) -> OptimizerBuilder<'_> {
    OptimizerBuilder::new(model, Preset::Sgd, OptimConfig::sgd())
}

/// Adam (for comparison), EP mode by default.
pub fn adam(model: &Model) -> OptimizerBuilder<'_> {
    OptimizerBuilder::new(model, Preset::Adam, OptimConfig::adam())
}

impl<'m> OptimizerBuilder<'m> {
    fn new(model: &'m Model, preset: Preset, cfg: OptimConfig) -> Self {
        OptimizerBuilder {
            model,
            preset,
            cfg,
            bias_lr_set: false,
            misapplied: None,
            ep_only: None,
            gamma_set: false,
            nudging_set: false,
            beta_set: false,
            settle_lr_set: false,
            nesterov_on: false,
            power_iters_set: false,
            spectral_layers_set: false,
            check_every_set: false,
        }
    }

    fn only(mut self, option: &'static str, presets: &[Preset], which: &'static str) -> Self {
        if !presets.contains(&self.preset) && self.misapplied.is_none() {
            self.misapplied = Some((option, which));
        }
        self
    }

    /// EP (default) or Backprop.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.cfg.grad.mode = mode;
        self
    }
    /// Learning rate of the weight matrices (for `sgd` also of the biases, unless
    /// `bias_lr` is set).
    pub fn lr(mut self, lr: f64) -> Self {
        self.cfg.lr = lr;
        self
    }
    /// Nudging strength β (η of the coupled rules). An error at build with
    /// [`Nudging::Contrastive`], whose estimate does not use it.
    pub fn beta(mut self, beta: f64) -> Self {
        self.cfg.grad.beta = beta;
        self.beta_set = true;
        self.ep_only.get_or_insert("beta");
        self
    }
    /// Steps (layered) or sweeps (Hopfield) of each nudged phase, at most
    /// [`super::config::MAX_SETTLE_STEPS`].
    pub fn settle_steps(mut self, n: usize) -> Self {
        self.cfg.grad.settle_steps = n;
        self.ep_only.get_or_insert("settle_steps");
        self
    }
    /// Relaxation ω of the layered energy's nudged-phase sweeps, in (0, 1]: each sweep
    /// moves the states the fraction ω of the way to the block solution
    /// ([`crate::ep::layered::nudged_phase`]). An error at build with the Hopfield
    /// energy, which does not use it.
    pub fn settle_lr(mut self, eta: f64) -> Self {
        self.cfg.grad.settle_lr = eta;
        self.settle_lr_set = true;
        self.ep_only.get_or_insert("settle_lr");
        self
    }
    /// The cost.
    pub fn loss(mut self, loss: Loss) -> Self {
        self.cfg.grad.loss = loss;
        self
    }
    /// The learning rule (see [`Nudging`]). Default: [`Nudging::default_for_depth`] —
    /// one-sided for one hidden layer, symmetric for deeper networks.
    pub fn nudging(mut self, nudging: Nudging) -> Self {
        self.cfg.grad.nudging = nudging;
        self.nudging_set = true;
        self.ep_only.get_or_insert("nudging");
        self
    }
    /// Momentum μ (smep, sgd).
    pub fn momentum(mut self, mu: f64) -> Self {
        match &mut self.cfg.matrix {
            MatrixRule::Muon { momentum, .. } | MatrixRule::Sgd { momentum, .. } => *momentum = mu,
            MatrixRule::Adam { .. } => {}
        }
        if let VectorRule::Sgd { momentum, .. } = &mut self.cfg.vector {
            *momentum = mu;
        }
        self.only("momentum", &[Preset::Smep, Preset::Sgd], "smep or sgd")
    }
    /// Nesterov momentum on or off (smep, sgd). On is an error at build with
    /// momentum 0, where it has no effect.
    pub fn nesterov(mut self, on: bool) -> Self {
        match &mut self.cfg.matrix {
            MatrixRule::Muon { nesterov, .. } | MatrixRule::Sgd { nesterov, .. } => *nesterov = on,
            MatrixRule::Adam { .. } => {}
        }
        if let VectorRule::Sgd { nesterov, .. } = &mut self.cfg.vector {
            *nesterov = on;
        }
        self.nesterov_on = on;
        self.only("nesterov", &[Preset::Smep, Preset::Sgd], "smep or sgd")
    }
    /// Newton–Schulz iterations (smep).
    pub fn ns_steps(mut self, n: usize) -> Self {
        if let MatrixRule::Muon { ns_steps, .. } = &mut self.cfg.matrix {
            *ns_steps = n;
        }
        self.only("ns_steps", &[Preset::Smep], "smep")
    }
    /// Muon's update scale (smep).
    pub fn muon_scale(mut self, s: MuonScale) -> Self {
        if let MatrixRule::Muon { scale, .. } = &mut self.cfg.matrix {
            *scale = s;
        }
        self.only("muon_scale", &[Preset::Smep], "smep")
    }
    /// Decoupled weight decay of the weight matrices.
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.cfg.weight_decay = wd;
        self
    }
    /// Spectral bound γ. Turns the constraint on ([`SpectralLayers::Auto`]) where the
    /// preset leaves it off (`sgd`, `adam`); with an explicit
    /// `spectral_layers(SpectralLayers::Off)`, before or after, it is an error at build.
    pub fn gamma(mut self, gamma: f64) -> Self {
        self.cfg.spectral.gamma = gamma;
        self.gamma_set = true;
        if self.cfg.spectral.layers == SpectralLayers::Off && !self.spectral_layers_set {
            self.cfg.spectral.layers = SpectralLayers::Auto;
        }
        self
    }
    /// Which matrices the spectral constraint covers. An error at build if the
    /// choice covers no matrix of the model (Couplings with a single weight layer).
    pub fn spectral_layers(mut self, layers: SpectralLayers) -> Self {
        self.cfg.spectral.layers = layers;
        self.spectral_layers_set = true;
        self
    }
    /// Power iterations per step for σ̂, at most [`super::config::MAX_POWER_ITERS`].
    /// An error at build if the constraint is off or covers no matrix.
    pub fn power_iters(mut self, n: usize) -> Self {
        self.cfg.spectral.power_iters = n;
        self.power_iters_set = true;
        self
    }
    /// Learning rate of the biases. An error at build on a model without biases.
    pub fn bias_lr(mut self, lr: f64) -> Self {
        match &mut self.cfg.vector {
            VectorRule::Adam { lr: l, .. } | VectorRule::Sgd { lr: l, .. } => *l = lr,
        }
        self.bias_lr_set = true;
        self
    }
    /// Learning-rate schedule (default: constant).
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.cfg.schedule = schedule;
        self
    }
    /// Check for divergence (a host read of the parameters' norm and the running
    /// loss) every `n` steps and at `train_epoch`'s progress reads (not at
    /// [`Optimizer::stats`], which only reads), instead of the
    /// device's default: after every step on the CPU (where the read costs nothing),
    /// every [`OptimConfig::check_every`] steps on CUDA (no host synchronisation per
    /// step). Set, it applies on both devices, so a run diverges, and restores the
    /// parameters of the last check, identically on each.
    pub fn check_every(mut self, n: u64) -> Self {
        self.cfg.check_every = n;
        self.check_every_set = true;
        self
    }

    /// The configuration this builder would build (not yet validated).
    pub fn config(&self) -> OptimConfig {
        let mut cfg = self.cfg;
        if !self.nudging_set {
            cfg.grad.nudging = Nudging::default_for_depth(self.model.arch().depth());
        }
        if !self.bias_lr_set {
            // sgd and adam share one learning rate unless told otherwise.
            match (&mut cfg.vector, self.preset) {
                (VectorRule::Sgd { lr, .. }, Preset::Sgd) | (VectorRule::Adam { lr, .. }, Preset::Adam) => *lr = cfg.lr,
                _ => {}
            }
        }
        cfg
    }

    /// Refuses an option that was set explicitly but has no effect with the rest of
    /// the configuration `cfg` (this builder's [`OptimizerBuilder::config`]) on this
    /// model.
    fn check_effective(&self, cfg: &OptimConfig) -> Result<()> {
        let arch = self.model.arch();
        let depth = arch.depth();
        let hopfield = matches!(self.model.energy(), Energy::Hopfield { .. });
        if self.beta_set && cfg.grad.mode == Mode::Ep && cfg.grad.nudging == Nudging::Contrastive {
            return Err(MepError::invalid(
                "beta",
                cfg.grad.beta,
                "`beta` has no effect with contrastive learning (CL clamps the output to the target): drop it, or use a coupled rule (Nudging::CoupledPositive, CoupledNegative or CoupledCentered, where β is the clamping strength η)",
            ));
        }
        cfg.grad.loss.validate_for(arch)?;
        if hopfield && depth > 2 && cfg.spectral.layers == SpectralLayers::Off && !self.spectral_layers_set {
            // The couplings of a deep Hopfield net must be bounded for its sweeps to
            // contract (SpectralLayers::bound); PyTorch's initialisation already
            // breaks that bound. Training unconstrained is allowed, but only asked for.
            return Err(MepError::invalid(
                "spectral_layers",
                "off (this preset's default)",
                format!(
                    "the Hopfield energy with {} hidden layers settles stably only when every coupling W_2 … W_L is bounded, and this preset leaves the spectral constraint off: add .spectral_layers(SpectralLayers::Couplings) (--spectral-layers couplings), or .spectral_layers(SpectralLayers::Off) (--spectral-layers off) to train unconstrained anyway",
                    depth - 1
                ),
            ));
        }
        if self.settle_lr_set && hopfield {
            return Err(MepError::invalid(
                "settle_lr",
                cfg.grad.settle_lr,
                "`settle_lr` is the relaxation of the layered energy's nudged phase; the Hopfield energy's sweeps do not use it: drop it (settle_steps sets the Hopfield nudged sweeps)",
            ));
        }
        let momentum = match cfg.matrix {
            MatrixRule::Muon { momentum, .. } | MatrixRule::Sgd { momentum, .. } => Some(momentum),
            MatrixRule::Adam { .. } => None,
        };
        if self.nesterov_on && momentum == Some(0.0) {
            return Err(MepError::invalid(
                "nesterov",
                true,
                "Nesterov momentum has no effect with momentum 0: drop `nesterov`, or set a momentum in (0, 1)",
            ));
        }
        let layers = cfg.spectral.layers;
        let constrained = layers != SpectralLayers::Off
            && (0..depth).any(|l| layers.bound(l, depth, hopfield, cfg.spectral.gamma).is_some());
        if layers != SpectralLayers::Off && !constrained && (self.spectral_layers_set || self.gamma_set) {
            // Only Couplings (or Auto, which is Couplings for the Hopfield energy) can
            // select nothing: W_2 … W_L do not exist with a single weight layer.
            let name = if self.spectral_layers_set {
                "spectral_layers"
            } else {
                "gamma"
            };
            return Err(MepError::invalid(
                name,
                format!("SpectralLayers::{layers:?} on a model of depth {depth}"),
                format!(
                    "SpectralLayers::{layers:?} covers the couplings W_2 … W_L{}, and this {} model has {depth} weight layer (no hidden layer), so no matrix would be constrained: use SpectralLayers::Output or All, or SpectralLayers::Off{}",
                    if layers == SpectralLayers::Auto { " (Auto with the Hopfield energy)" } else { "" },
                    arch.describe(),
                    if self.gamma_set { " (without gamma)" } else { "" },
                ),
            ));
        }
        let couplings_bounded = hopfield && (1..depth).any(|l| layers.bound(l, depth, hopfield, 1.0).is_some());
        // As the network stores it: 0.99999999 is 1 in f32.
        if couplings_bounded && (cfg.spectral.gamma as f32) >= 1.0 {
            // SpectralLayers::bound makes the coupling operator's norm at most γ; the
            // free phase contracts (the README's guarantee) only while it is below 1.
            // The sixth user trial's γ = 5 left 784–64–64–10 unsettled (free residual
            // 2.4) and trained on silently.
            return Err(MepError::invalid(
                "gamma",
                cfg.spectral.gamma,
                "with the Hopfield energy the spectral bound γ bounds the coupling operator's norm (each coupling W_2 … W_L by γ/(2cos(π/(L+1)))), and the free phase settles to its unique equilibrium only while that norm is below 1: use gamma below 1 (smep's default is 0.95)",
            ));
        }
        if self.power_iters_set && !constrained {
            return Err(MepError::invalid(
                "power_iters",
                cfg.spectral.power_iters,
                "power iterations estimate σ(W) for the spectral constraint, which is off here (or covers no matrix of this model): drop `power_iters`, or turn the constraint on (gamma, spectral_layers)",
            ));
        }
        if self.bias_lr_set && !arch.blocks().iter().any(|b| b.bias) {
            return Err(MepError::invalid(
                "bias_lr",
                match cfg.vector {
                    VectorRule::Adam { lr, .. } | VectorRule::Sgd { lr, .. } => lr,
                },
                format!(
                    "this {} model has no biases (every layer is linear_no_bias): drop `bias_lr`",
                    arch.describe()
                ),
            ));
        }
        Ok(())
    }

    /// Validates everything and allocates the optimizer state on the model's device.
    pub fn build(self) -> Result<Optimizer> {
        if let Some((option, which)) = self.misapplied {
            return Err(MepError::invalid(
                option,
                format!("set on {}", format!("{:?}", self.preset).to_lowercase()),
                format!("`{option}` applies only to {which}"),
            ));
        }
        if let (Some(option), Mode::Backprop) = (self.ep_only, self.cfg.grad.mode) {
            return Err(MepError::invalid(
                option,
                "set with mode Backprop",
                format!(
                    "`{option}` applies only to Mode::Ep (Backprop mode has no nudged phase): drop it or use Mode::Ep"
                ),
            ));
        }
        if self.gamma_set && self.cfg.spectral.layers == SpectralLayers::Off {
            return Err(MepError::invalid(
                "gamma",
                self.cfg.spectral.gamma,
                "the spectral bound has no effect with SpectralLayers::Off: drop one of the two",
            ));
        }
        let cfg = self.config();
        // Ranges first (a bad value is named as such), then options that are valid
        // on their own but would have no effect on this model with these settings.
        cfg.validate()?;
        self.check_effective(&cfg)?;
        let mut engine = with_net!(&self.model.net, n => AnyEngine::from(Engine::new(cfg, n, 64)?));
        match &mut engine {
            // A host read per step would synchronise the GPU: check when the host next
            // reads (every `check_every` steps and at every statistics read) instead.
            AnyEngine::Cuda(e) => e.set_check_every_step(false),
            // The CPU reads for free after every step, unless asked for the GPU's rhythm.
            AnyEngine::Cpu(e) => e.set_check_every_step(!self.check_every_set),
        }
        self.model.set_loss(cfg.grad.loss);
        Ok(Optimizer {
            engine,
            device: self.model.device(),
        })
    }
}

/// An engine on one of the backends (one per optimizer: the size difference between
/// the variants does not matter).
#[allow(clippy::large_enum_variant)]
pub(crate) enum AnyEngine {
    Cpu(Engine<Cpu<f32>>),
    Cuda(Engine<Cuda>),
}

impl From<Engine<Cpu<f32>>> for AnyEngine {
    fn from(e: Engine<Cpu<f32>>) -> Self {
        AnyEngine::Cpu(e)
    }
}

impl From<Engine<Cuda>> for AnyEngine {
    fn from(e: Engine<Cuda>) -> Self {
        AnyEngine::Cuda(e)
    }
}

/// Runs `$body` with `$e` bound to the concrete engine, whatever its backend.
macro_rules! with_engine {
    ($any:expr, $e:ident => $body:expr) => {
        match $any {
            AnyEngine::Cpu($e) => $body,
            AnyEngine::Cuda($e) => $body,
        }
    };
}

/// A built optimizer. One [`Optimizer::step`] runs the free phase, the nudged
/// phase(s) and the update (or, in Backprop mode, forward, backward and update).
pub struct Optimizer {
    /// The engine, which also keeps the structure and energy of the model this
    /// optimizer was built for: its state (momentum, Adam moments, power-iteration
    /// vectors, workspace) is shaped for them, so a step on any other model is
    /// refused before anything is touched.
    pub(crate) engine: AnyEngine,
    /// That model's device (its state lives there).
    device: crate::Device,
}

fn host_step<B: Backend>(engine: &mut Engine<B>, net: &mut Network<B>, x: &[f32], y: &[u32]) -> Result<()> {
    let mean_sq = check_inputs(x, net.arch.inputs())?;
    let rows = x.len() / net.arch.inputs();
    if y.len() != rows {
        return Err(MepError::Shape(format!("{rows} input rows but {} labels", y.len())));
    }
    let classes = net.arch.outputs();
    if let Some(&bad) = y.iter().find(|&&c| c as usize >= classes) {
        return Err(MepError::invalid(
            "target",
            bad,
            format!("labels must be < {classes}, the network's outputs"),
        ));
    }
    let xs: Vec<B::Elem> = x.iter().map(|&v| B::Elem::of(v as f64)).collect();
    engine.note_input_rms(mean_sq.sqrt());
    engine.ws.load_host_batch(&xs, y)?;
    engine.step(net, rows)
}

impl Optimizer {
    /// One training step on a host batch: `x` is `rows × inputs` (row-major,
    /// normalised), `y` holds `rows` class labels.
    ///
    /// Errors: [`MepError::Shape`] when `model` is not the model (architecture and
    /// energy) this optimizer was built for; nothing is modified then.
    pub fn step(&mut self, model: &mut Model, x: &[f32], y: &[u32]) -> Result<()> {
        self.check_model(model)?;
        model.set_loss(self.config().grad.loss);
        match (&mut self.engine, &mut model.net) {
            (AnyEngine::Cpu(e), AnyNet::Cpu(n)) => host_step(e, n, x, y),
            (AnyEngine::Cuda(e), AnyNet::Cuda(n)) => host_step(e, n, x, y),
            _ => Err(device_mismatch()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    /// Trains one epoch on a dataset already on the model's device: shuffled by
    /// `shuffle` for epoch number `epoch`, in batches of `batch_size`, calling
    /// `progress(step, steps, running)` every `report_every` steps and at the end.
    pub fn train_epoch(
        &mut self,
        model: &mut Model,
        data: &DeviceDataset,
        batch_size: usize,
        shuffle: Shuffle,
        epoch: u64,
        report_every: usize,
        progress: impl FnMut(usize, usize, StepStats) + Send,
    ) -> Result<EpochReport> {
        self.check_model(model)?;
        if data.device != self.device {
            return Err(device_mismatch());
        }
        model.set_loss(self.config().grad.loss);
        match (&mut self.engine, &mut model.net, &data.inner) {
            (AnyEngine::Cpu(e), AnyNet::Cpu(n), AnyData::Cpu(d)) => {
                train_epoch(e, n, d, batch_size, shuffle, epoch, report_every, progress)
            }
            (AnyEngine::Cuda(e), AnyNet::Cuda(n), AnyData::Cuda(d)) => {
                train_epoch(e, n, d, batch_size, shuffle, epoch, report_every, progress)
            }
            _ => Err(device_mismatch()),
        }
    }

    /// Refuses a model whose structure differs from the one this optimizer was built
    /// for, naming the difference.
    pub(crate) fn check_model(&self, model: &Model) -> Result<()> {
        if model.device() != self.device {
            return Err(device_mismatch());
        }
        let (arch, energy) = with_engine!(&self.engine, e => (e.arch(), e.energy()));
        if model.arch() != arch {
            return Err(MepError::Shape(format!(
                "this optimizer was built for a model of structure {} but is given one of structure {}; build one optimizer per model (e.g. smep(&model).build())",
                arch.describe_with_biases(),
                model.arch().describe_with_biases()
            )));
        }
        if model.energy() != energy {
            return Err(MepError::Shape(format!(
                "this optimizer was built for a model with the {:?} energy but is given one with {:?}; build one optimizer per model",
                energy,
                model.energy()
            )));
        }
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> OptimConfig {
        with_engine!(&self.engine, e => *e.config())
    }

    /// Running loss and accuracy of the free-phase outputs since the last reset.
    pub fn stats(&self) -> Result<StepStats> {
        with_engine!(&self.engine, e => e.stats())
    }

    /// Resets the running statistics.
    pub fn reset_stats(&mut self) -> Result<()> {
        with_engine!(&mut self.engine, e => e.reset_stats())
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        with_engine!(&self.engine, e => e.steps())
    }

    /// On CUDA, whether each step is captured once per batch shape and replayed as
    /// one CUDA graph launch (the default, unless `MEP_CUDA_GRAPHS=0`), or queued
    /// kernel by kernel (eager: slower, but a fault is reported by the launch that
    /// caused it). Results are bit-identical either way. No effect on the CPU.
    pub fn set_cuda_graphs(&mut self, on: bool) {
        with_engine!(&mut self.engine, e => e.set_graphs(on))
    }
}

/// Research access (see [`crate::inspect`]).
impl Optimizer {
    /// The gradient estimate this optimizer would apply for the batch `(x, y)`
    /// (`rows × inputs` row-major, `rows` labels), per block on the host, without
    /// applying it: the step counter, momentum and Adam moments, running statistics
    /// and `model` are all unchanged. EP mode gives the estimate of its nudging rule,
    /// Backprop mode the exact gradient of the mean cost of the forward pass, in the
    /// same sign convention, so the two compare directly.
    ///
    /// Before its first step an optimizer with the spectral constraint projects the
    /// weights; gradients taken before that see the unprojected weights.
    ///
    /// Errors: as [`Optimizer::step`] for the batch ([`MepError::Shape`],
    /// [`MepError::NonFinite`], a label ≥ outputs) and for the model (one of another
    /// architecture, energy or device than the optimizer was built for).
    ///
    /// ```
    /// use mep::{sgd, Device, Mode, Sequential};
    /// # fn main() -> mep::Result<()> {
    /// let mut model = Sequential::new(&Device::Cpu).flatten().linear(2, 4).tanh().linear(4, 2).build(0)?;
    /// let mut opt = sgd(&model).mode(Mode::Backprop).build()?;
    /// let (x, y) = ([0.3f32, -0.7], [1u32]);
    /// let g = opt.gradients(&model, &x, &y)?;
    /// assert_eq!((g.layers[0].out, g.layers[0].inp), (4, 2));
    /// assert_eq!(opt.steps(), 0); // nothing was applied
    /// opt.step(&mut model, &x, &y)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn gradients(&self, model: &Model, x: &[f32], y: &[u32]) -> Result<crate::inspect::Gradients> {
        // The configuration (the nudging rule, say) was resolved for the model this
        // optimizer was built for: on another model it would be another estimate.
        self.check_model(model)?;
        let cfg = self.config().grad;
        match (&self.engine, &model.net) {
            (AnyEngine::Cpu(_), AnyNet::Cpu(n)) => crate::inspect::gradients(n, &cfg, x, y),
            (AnyEngine::Cuda(_), AnyNet::Cuda(n)) => crate::inspect::gradients(n, &cfg, x, y),
            _ => Err(device_mismatch()),
        }
    }
}
