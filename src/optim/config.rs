//! Optimizer configuration: the update rules and their validated hyper-parameters.

use crate::ep::{GradConfig, Mode, Nudging};
use crate::{Loss, MepError, Result};

/// How Muon's orthogonalised update is scaled (SPEC §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MuonScale {
    /// √(fan_out / fan_in) (Bernstein & Yang's spectral condition), times 2/L for a
    /// network of L weight layers. Default: at the seed's lr = 0.05 it beats Keller
    /// Jordan's scale by 3–4 points (BENCHMARKS.md). The 2/L is the modular norm's
    /// split of one step's budget over layers in series (each layer's relative change
    /// moves the output, so L of them move it L times as far); it is 1 for the
    /// seed's two layers, and without it lr 0.05 overshoots at depth (784–128–128–10
    /// in Backprop mode: 96.9% at 0.05, 97.3% at 0.05·2/3; BENCHMARKS.md §4).
    SpectralCondition,
    /// √max(1, rows / cols) (Keller Jordan's Muon).
    KellerJordan,
}

impl MuonScale {
    /// The factor for an `rows × cols` (fan_out × fan_in) matrix of a network of
    /// `depth` weight layers.
    pub fn factor(self, rows: usize, cols: usize, depth: usize) -> f64 {
        match self {
            MuonScale::SpectralCondition => (rows as f64 / cols as f64).sqrt() * 2.0 / depth.max(1) as f64,
            MuonScale::KellerJordan => (rows as f64 / cols as f64).max(1.0).sqrt(),
        }
    }
}

/// The rule for weight matrices.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MatrixRule {
    /// Momentum, then quintic Newton–Schulz orthogonalisation, then scaling.
    Muon {
        /// μ.
        momentum: f64,
        /// Nesterov: U = G + μM instead of U = M.
        nesterov: bool,
        /// Newton–Schulz iterations.
        ns_steps: usize,
        /// Update scale.
        scale: MuonScale,
    },
    /// (Momentum) SGD.
    Sgd {
        /// μ (0 for plain SGD).
        momentum: f64,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// Adam (decoupled weight decay).
    Adam {
        /// β1.
        beta1: f64,
        /// β2.
        beta2: f64,
        /// ε.
        eps: f64,
    },
}

/// The rule for vectors (biases), which are never orthogonalised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum VectorRule {
    /// Adam with its own learning rate.
    Adam {
        /// Learning rate.
        lr: f64,
        /// β1.
        beta1: f64,
        /// β2.
        beta2: f64,
        /// ε.
        eps: f64,
    },
    /// Momentum SGD with its own learning rate.
    Sgd {
        /// Learning rate.
        lr: f64,
        /// μ.
        momentum: f64,
        /// Nesterov momentum.
        nesterov: bool,
    },
}

/// Learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// The same rate every step (the seed's).
    Constant,
    /// Cosine decay from the full rate to 0 over `total_steps` steps (then 0).
    Cosine {
        /// Steps over which the rate decays.
        total_steps: u64,
    },
}

impl Schedule {
    /// The factor applied to every learning rate at step `t` (1-based).
    pub fn factor(self, t: u64) -> f64 {
        match self {
            Schedule::Constant => 1.0,
            Schedule::Cosine { total_steps } => {
                let x = ((t.saturating_sub(1)) as f64 / total_steps as f64).min(1.0);
                0.5 * (1.0 + (std::f64::consts::PI * x).cos())
            }
        }
    }
}

/// Which weight matrices the spectral constraint covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpectralLayers {
    /// None.
    Off,
    /// The output layer only: for the layered energy, the coupling whose norm its
    /// settling depends on most; constraining the input layer too cost 2–3 points.
    Output,
    /// Every matrix that couples two settled layers, W_2 … W_L (W_1 only drives the
    /// first layer from the clamped input). With the Hopfield energy each gets the
    /// depth-aware bound of [`SpectralLayers::bound`].
    Couplings,
    /// Every weight matrix (the Hopfield couplings with the depth-aware bound).
    All,
    /// `smep`'s default: [`SpectralLayers::Output`] for the layered energy,
    /// [`SpectralLayers::Couplings`] for the Hopfield energy.
    Auto,
}

impl SpectralLayers {
    /// The bound on σ(W_l) for block `l` (0-based) of a `depth`-block network, or
    /// `None` when the block is not constrained.
    ///
    /// The Hopfield free phase descends ½‖s‖² − Φ(s), which is strongly convex (so the
    /// sweeps contract to a unique equilibrium) while the block-tridiagonal coupling
    /// operator A over (s_1 … s_L), with off-diagonal blocks W_2 … W_L, has ‖A‖ < 1. A
    /// block matrix's norm is at most the norm of the matrix of its blocks' norms, here
    /// the L×L tridiagonal T with off-diagonals σ(W_2) … σ(W_L); with all of them
    /// ≤ γ′, ‖T‖ ≤ 2γ′·cos(π/(L+1)) (the path graph's largest eigenvalue). So each
    /// coupling is bounded by γ′ = γ / (2cos(π/(L+1))), which makes ‖A‖ ≤ γ at any
    /// depth: γ itself for one hidden layer (L = 2), γ/√2 for two, γ/1.618 for three.
    /// The input matrix W_1 does not enter A and keeps the plain bound γ.
    pub fn bound(self, l: usize, depth: usize, hopfield: bool, gamma: f64) -> Option<f64> {
        let last = depth - 1;
        let covered = match self {
            SpectralLayers::Off => false,
            SpectralLayers::Output => l == last,
            SpectralLayers::Couplings => l > 0,
            SpectralLayers::All => true,
            SpectralLayers::Auto => {
                if hopfield {
                    l > 0
                } else {
                    l == last
                }
            }
        };
        if !covered {
            return None;
        }
        if hopfield && l > 0 {
            let cos = (std::f64::consts::PI / (depth as f64 + 1.0)).cos();
            Some(gamma / (2.0 * cos))
        } else {
            Some(gamma)
        }
    }
}

/// The spectral constraint's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spectral {
    /// γ: the bound on σ(W).
    pub gamma: f64,
    /// Which matrices.
    pub layers: SpectralLayers,
    /// Power iterations per step.
    pub power_iters: usize,
}

/// A complete, validated optimizer configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimConfig {
    /// How gradients are obtained (EP phases or Backprop).
    pub grad: GradConfig,
    /// Learning rate for weight matrices.
    pub lr: f64,
    /// Decoupled weight decay for weight matrices.
    pub weight_decay: f64,
    /// The rule for weight matrices.
    pub matrix: MatrixRule,
    /// The rule for biases.
    pub vector: VectorRule,
    /// The spectral constraint.
    pub spectral: Spectral,
    /// Read the device-side loss every this many steps to detect divergence.
    pub check_every: u64,
    /// Learning-rate schedule (scales every learning rate, weights and biases).
    pub schedule: Schedule,
}

fn positive(name: &'static str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        return Err(MepError::invalid(name, v, "must be a finite number > 0"));
    }
    Ok(())
}

/// A learning rate: positive and finite in f64 *and* once rounded to the parameters'
/// f32 (1e-300 is positive in f64 but 0 in f32, and would train nothing; 1e39 is
/// infinite in f32). Values that are tiny but positive in f32 are accepted.
fn learning_rate(name: &'static str, v: f64) -> Result<()> {
    positive(name, v)?;
    let single = v as f32;
    if !(single.is_finite() && single > 0.0) {
        return Err(MepError::invalid(
            name,
            v,
            format!(
                "the parameters are f32, where this rate is {single}: use a value in [{:e}, {:e}]",
                f32::from_bits(1),
                f32::MAX
            ),
        ));
    }
    Ok(())
}

/// A scale the kernels use in f32 (β, γ, the relaxation ω): positive and finite in
/// f64 and a normal number once rounded to f32, where β = 1e-50 is 0 (its estimate
/// divides by it) and γ = 1e39 is infinite (a bound that bounds nothing).
fn f32_scale(name: &'static str, v: f64) -> Result<()> {
    positive(name, v)?;
    let single = v as f32;
    if !single.is_normal() {
        return Err(MepError::invalid(
            name,
            v,
            format!(
                "the computation is in f32, where this value is {single}: use a value in [{:e}, {:e}]",
                f32::MIN_POSITIVE,
                f32::MAX
            ),
        ));
    }
    Ok(())
}

/// The most settle steps (layered) or sweeps (Hopfield) per nudged phase. The
/// nudged phase converges geometrically (15 steps is the default, and the β → 0
/// ground-truth tests converge in 100–300); each step costs about as much as a
/// forward pass, so 10 000 steps per phase is 600× the default step cost, far past
/// any useful value, while a typo such as 1e11 would run for days and look hung.
pub const MAX_SETTLE_STEPS: usize = 10_000;

/// The most power iterations per step for σ̂. The iteration is warm-started from the
/// previous step's vector, so the default 3 already tracks σ(W) to f32 accuracy; even
/// a cold start converges in a few hundred iterations for any gap that matters, and
/// each iteration is two matrix–vector products per constrained matrix per step.
pub const MAX_POWER_ITERS: usize = 1_000;

/// The smallest β of the Hopfield energy, in units of the network's machine epsilon ε
/// (f32: 1.2e-7; f64: 2.2e-16): [`min_beta`]. (The layered energy's floor is far lower:
/// [`min_beta_for`].) A nudge of β·∂C moves states of size ~1 by about β, and
/// each settle step rounds them by ε, so the EP estimate (the states' difference
/// over β) carries a relative error of order ε/β. Measured in f32 on a 6–16–3 net
/// (cosine of the estimate with the true gradient; layered | Hopfield, PEP; the
/// layered figures from before its perturbation form): 1.0000 | 0.9992 at β = 1e-5,
/// 0.994 | 0.94 at 1e-6, 0.82 | 0.44 at 1e-7, 0.31 | 0.03 at 1e-8, and an estimate of
/// exactly 0 (layered) or of noise 1000× too large (Hopfield) from 1e-10: a run with
/// such a β trained nothing, silently. The floor,
/// 8ε (9.5e-7 in f32), refuses the β whose estimates are noise everywhere, and
/// [`crate::Model64`] (f64) takes β down to 1.8e-15.
///
/// With the Hopfield energy the floor is for the layers next to the output. Its
/// estimate is the difference of settled states, s^β s^βᵀ − s⋆ s⋆ᵀ; layer l's share
/// of the nudge is β·‖∂C/∂s_l‖, which shrinks with depth where gradients vanish,
/// while the rounding of its states stays ε·‖s_l‖, so its estimate's relative error
/// is of order ε‖s_l‖/(β‖∂C/∂s_l‖). Measured on a 10–16×3–4 sigmoid Hopfield net
/// (symmetric nudging, cosine per layer with the f64 model's estimate, first to
/// last): 0.99995 0.99995 1 1 at β = 1e-2, 0.994 0.994 0.9999 1 at 1e-3, 0.80 0.72
/// 0.99 1 at 1e-4, while tanh held 0.99996 at 1e-4. Studies of EP's estimate at small
/// β or depth with the Hopfield energy should compare per layer
/// ([`crate::Gradients::layer_cosines`]) and use [`crate::Model64`]. The layered
/// energy's nudged phase moves the deviations from the free state instead of the
/// states ([`crate::ep::layered`], "The perturbation form"), so its f32 estimate
/// keeps every layer's digits at any depth (cosine 1.0000 with f64 in all 8 layers
/// of a 10–16×7–4 sigmoid net from β = 0.1 to 1e-30).
pub const BETA_FLOOR_EPSILONS: f64 = 8.0;

/// The smallest β a Hopfield network computing in `T` is given:
/// [`BETA_FLOOR_EPSILONS`]·ε (the floor of [`min_beta_for`] with that energy).
pub fn min_beta<T: crate::backend::Scalar>() -> f64 {
    BETA_FLOOR_EPSILONS * T::epsilon().f64()
}

/// The smallest β a network with `energy` computing in `T` is given.
///
/// - Hopfield: [`min_beta`], 8 ε (9.5e-7 in f32): its estimate is the difference of
///   settled states, whose rounding the nudge must exceed ([`BETA_FLOOR_EPSILONS`]).
/// - Layered: the smallest normal number over ε (9.9e-32 in f32, 1.0e-292 in f64).
///   Its nudged phase carries the deviations from the free state apart from the
///   states ([`crate::ep::layered`], "The perturbation form"), so no rounding of the
///   states bounds β; what does is the deviations' range: of order β·‖∂C/∂s_l‖, they
///   keep their relative digits while they are normal numbers. Measured in f32 on a
///   10–16×7–4 net (sigmoid, tanh and ReLU; CEP and PEP; cosine per layer with the
///   backprop gradient): 1.0000 in all 8 layers at every β from 1e-6 to 1e-30.
pub fn min_beta_for<T: crate::backend::Scalar>(energy: crate::ep::Energy) -> f64 {
    match energy {
        crate::ep::Energy::LayeredLeastSquares => T::min_positive_value().f64() / T::epsilon().f64(),
        crate::ep::Energy::Hopfield { .. } => min_beta::<T>(),
    }
}

fn unit(name: &'static str, v: f64) -> Result<()> {
    if !(v.is_finite() && (0.0..1.0).contains(&v)) {
        return Err(MepError::invalid(name, v, "must be in [0, 1)"));
    }
    Ok(())
}

impl OptimConfig {
    /// Checks every hyper-parameter; the error names the first bad one and its range.
    pub fn validate(&self) -> Result<()> {
        let g = &self.grad;
        if g.mode == Mode::Ep {
            f32_scale("beta", g.beta)?;
            if g.settle_steps == 0 {
                return Err(MepError::invalid("settle_steps", 0, "EP needs at least 1 settle step"));
            }
            if g.settle_steps > MAX_SETTLE_STEPS {
                return Err(MepError::invalid(
                    "settle_steps",
                    g.settle_steps,
                    format!("must be at most {MAX_SETTLE_STEPS} (the default is 15; the nudged phase converges in tens to hundreds of steps)"),
                ));
            }
            f32_scale("settle_lr", g.settle_lr)?;
            if g.settle_lr > 1.0 {
                return Err(MepError::invalid(
                    "settle_lr",
                    g.settle_lr,
                    "must be in (0, 1]: it is the fraction of the way to each sweep's block solution (relaxation ω)",
                ));
            }
        }
        g.loss.validate()?;
        if g.mode == Mode::Ep && g.nudging.clamps() && g.loss != Loss::SquaredError {
            return Err(MepError::invalid(
                "nudging",
                g.nudging.name(),
                "clamping the output needs a target in the output's own space: use the squared-error loss (Loss::SquaredError, --loss squared_error) with CL and the coupled rules",
            ));
        }
        learning_rate("lr", self.lr)?;
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(MepError::invalid("weight_decay", self.weight_decay, "must be ≥ 0"));
        }
        if self.lr * self.weight_decay >= 1.0 {
            return Err(MepError::invalid(
                "weight_decay",
                self.weight_decay,
                format!("lr·weight_decay must be < 1 (lr = {})", self.lr),
            ));
        }
        match self.matrix {
            MatrixRule::Muon { momentum, ns_steps, .. } => {
                unit("momentum", momentum)?;
                if !(1..=20).contains(&ns_steps) {
                    return Err(MepError::invalid(
                        "ns_steps",
                        ns_steps,
                        "must be in 1..=20 (5 is Muon's default)",
                    ));
                }
            }
            MatrixRule::Sgd { momentum, .. } => unit("momentum", momentum)?,
            MatrixRule::Adam { beta1, beta2, eps } => {
                unit("adam_beta1", beta1)?;
                unit("adam_beta2", beta2)?;
                positive("adam_eps", eps)?;
            }
        }
        match self.vector {
            VectorRule::Adam { lr, beta1, beta2, eps } => {
                learning_rate("bias_lr", lr)?;
                unit("adam_beta1", beta1)?;
                unit("adam_beta2", beta2)?;
                positive("adam_eps", eps)?;
            }
            VectorRule::Sgd { lr, momentum, .. } => {
                learning_rate("bias_lr", lr)?;
                unit("momentum", momentum)?;
            }
        }
        if self.spectral.layers != SpectralLayers::Off {
            f32_scale("gamma", self.spectral.gamma)?;
        }
        // Checked even with the constraint off: a 0 would otherwise be accepted and
        // silently run as 1 once the constraint is turned on.
        if self.spectral.power_iters == 0 {
            return Err(MepError::invalid(
                "power_iters",
                0,
                "the spectral constraint needs at least 1 power iteration per step",
            ));
        }
        if self.spectral.power_iters > MAX_POWER_ITERS {
            return Err(MepError::invalid(
                "power_iters",
                self.spectral.power_iters,
                format!(
                    "must be at most {MAX_POWER_ITERS} (the default is 3: the iteration is warm-started every step)"
                ),
            ));
        }
        if let Schedule::Cosine { total_steps } = self.schedule {
            if total_steps == 0 {
                return Err(MepError::invalid(
                    "schedule",
                    "cosine over 0 steps",
                    "total_steps must be at least 1",
                ));
            }
        }
        if self.check_every == 0 {
            return Err(MepError::invalid("check_every", 0, "must be at least 1"));
        }
        Ok(())
    }

    /// The `smep` preset (the seed's optimizer): Muon (Nesterov μ = 0.7, 5 quintic
    /// steps, √(fan_out/fan_in) scale) at lr 0.05 on weights, Adam at 1e−3 on biases,
    /// spectral constraint γ = 0.95 ([`SpectralLayers::Auto`]: the output layer, or
    /// every Hopfield coupling), EP with β = 0.5 and one-sided nudging (the builders
    /// `smep(&model)` etc. switch to symmetric for networks deeper than one hidden
    /// layer unless told otherwise: [`Nudging::default_for_depth`]), 15 settle steps,
    /// cross-entropy. Each default is justified in BENCHMARKS.md.
    pub fn smep() -> Self {
        OptimConfig {
            grad: GradConfig {
                mode: Mode::Ep,
                beta: 0.5,
                settle_steps: 15,
                settle_lr: DEFAULT_SETTLE_LR,
                nudging: Nudging::OneSided,
                loss: Loss::CrossEntropy { label_smoothing: 0.0 },
            },
            lr: 0.05,
            weight_decay: 0.0,
            matrix: MatrixRule::Muon {
                momentum: 0.7,
                nesterov: true,
                ns_steps: 5,
                scale: MuonScale::SpectralCondition,
            },
            vector: VectorRule::Adam {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            spectral: Spectral {
                gamma: 0.95,
                layers: SpectralLayers::Auto,
                power_iters: 3,
            },
            check_every: 50,
            schedule: Schedule::Constant,
        }
    }

    /// Plain momentum SGD (μ = 0.9, lr 0.01 on weights and biases), no constraint.
    /// Without the spectral constraint, EP's settling diverges once the output layer
    /// grows (measured at lr ≥ 0.02); `.gamma(0.95)` adds the constraint, and
    /// `spectral_layers` alone adds it with smep's γ = 0.95 (below 1, as the Hopfield
    /// couplings need).
    pub fn sgd() -> Self {
        OptimConfig {
            lr: 0.01,
            matrix: MatrixRule::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            vector: VectorRule::Sgd {
                lr: 0.01,
                momentum: 0.9,
                nesterov: false,
            },
            spectral: Spectral {
                gamma: 0.95,
                layers: SpectralLayers::Off,
                power_iters: 3,
            },
            ..Self::smep()
        }
    }

    /// Adam (lr 1e−3 on weights and biases), no constraint (γ = 0.95 when
    /// `spectral_layers` turns it on, as for [`OptimConfig::sgd`]).
    pub fn adam() -> Self {
        OptimConfig {
            lr: 1e-3,
            matrix: MatrixRule::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            vector: VectorRule::Adam {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            spectral: Spectral {
                gamma: 0.95,
                layers: SpectralLayers::Off,
                power_iters: 3,
            },
            ..Self::smep()
        }
    }
}

/// Default relaxation ω of the layered energy's nudged-phase sweeps: 0.5 keeps the
/// iteration contracting while the cost's curvature gain g = β‖∂²C‖‖ΣJJᵀ‖ stays below 3
/// (ω < 2/(1 + g)), and measured better than 1.0 at depth (BENCHMARKS.md §5).
pub const DEFAULT_SETTLE_LR: f64 = 0.5;
