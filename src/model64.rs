//! [`Model64`]: a model on the CPU backend in f64, for reference work (ground-truth
//! gradients by finite differences, checking an f32 or GPU result, studying EP's
//! bias without rounding in the way).

use crate::backend::cpu::Cpu;
use crate::ep::{Energy, GradConfig};
use crate::inspect::{self, Gradients, LayerGradient};
use crate::nn::{Arch, Network};
use crate::{Loss, MepError, Result};

/// A network computing in f64 on the CPU (`Network<Cpu<f64>>` with a host-vector
/// API). Get one from a trained model with [`crate::Model::to_f64`], or build one
/// with [`Model64::new`]. Training it goes through the generic layer
/// ([`crate::optim::Engine`] over [`Model64::network_mut`]); the `Optimizer` API is f32.
///
/// ```
/// use mep::{Device, Loss, Sequential};
/// # fn main() -> mep::Result<()> {
/// let model = Sequential::new(&Device::Cpu).flatten().linear(3, 4).tanh().linear(4, 2).build(1)?;
/// let m64 = model.to_f64()?;
/// let (x, y) = ([0.1, -0.2, 0.3], [1u32]);
/// // The f64 outputs agree with the f32 model's to f32 rounding.
/// let o32 = model.logits(&[0.1f32, -0.2, 0.3])?;
/// let o64 = m64.logits(&x)?;
/// assert!((o32[0] as f64 - o64[0]).abs() < 1e-5);
/// // A ground-truth gradient of the mean cost, by central differences.
/// let fd = m64.finite_differences(&x, &y, Loss::SquaredError, 1e-6)?;
/// assert_eq!(fd.layers.len(), 2);
/// # Ok(())
/// # }
/// ```
pub struct Model64 {
    net: Network<Cpu<f64>>,
}

/// The smallest difference step [`Model64::finite_differences`] takes: the cost's
/// rounding (about 1e-16 relative) over a step of 1e-12 is already 1e-4 of the
/// slope, and below it the differences are rounding noise.
pub const MIN_FD_STEP: f64 = 1e-12;

/// The largest difference step [`Model64::finite_differences`] takes: PyTorch's
/// initialisation puts weights at ±1/√inputs, so a step of 1 already measures the
/// cost at a different network.
pub const MAX_FD_STEP: f64 = 1.0;

impl Model64 {
    /// A model of `arch` and `energy`, initialised from `seed` exactly as an f32 model
    /// built with the same seed (same draws, kept in f64).
    pub fn new(arch: Arch, energy: Energy, seed: u64) -> Result<Model64> {
        Ok(Model64 {
            net: Network::new(Cpu::<f64>::new(), arch, energy, seed)?,
        })
    }

    /// Wraps an f64 network.
    pub fn from_network(net: Network<Cpu<f64>>) -> Model64 {
        Model64 { net }
    }

    /// The block structure.
    pub fn arch(&self) -> &Arch {
        &self.net.arch
    }

    /// The energy (defines inference and the EP phases).
    pub fn energy(&self) -> Energy {
        self.net.energy
    }

    /// The network, for the generic layer (`mep::ep`, `mep::optim::Engine`).
    pub fn network(&self) -> &Network<Cpu<f64>> {
        &self.net
    }

    /// The network, mutably (e.g. to train it with an [`crate::optim::Engine`]).
    pub fn network_mut(&mut self) -> &mut Network<Cpu<f64>> {
        &mut self.net
    }

    /// The network, by value.
    pub fn into_network(self) -> Network<Cpu<f64>> {
        self.net
    }

    /// Host copies of each block's (weights `out × in` row-major, bias).
    pub fn parameters(&self) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
        self.net.to_host()
    }

    /// Replaces the parameters. Errors: [`MepError::Shape`] when the number of blocks
    /// or a block's sizes differ from [`Model64::arch`]; [`MepError::NonFinite`] for a
    /// NaN or infinite value. Nothing is changed on error.
    pub fn set_parameters(&mut self, values: &[(Vec<f64>, Vec<f64>)]) -> Result<()> {
        crate::model::check_parameters(&self.net.arch, values)?;
        self.net.set_from_host(values)
    }

    /// Inference outputs for `x` (`rows × inputs`), `rows × outputs` row-major (see
    /// [`crate::Model::logits`]).
    pub fn logits(&self, x: &[f64]) -> Result<Vec<f64>> {
        inspect::outputs(&self.net, x)
    }

    /// Mean `loss` of the inference outputs on the batch `(x, y)`.
    pub fn mean_cost(&self, x: &[f64], y: &[u32], loss: Loss) -> Result<f64> {
        inspect::mean_cost(&self.net, x, y, loss)
    }

    /// The gradient estimate of `cfg` (e.g. `opt.config().grad` of an optimizer) for
    /// the batch `(x, y)`; see [`crate::inspect::gradients`].
    pub fn gradients(&self, cfg: &GradConfig, x: &[f64], y: &[u32]) -> Result<Gradients> {
        inspect::gradients(&self.net, cfg, x, y)
    }

    /// The gradient of [`Model64::mean_cost`] by central differences with step `h`
    /// (1e-6 suits the layered energy; 1e-5 the Hopfield one): the ground truth
    /// against which EP is measured, including for the Hopfield energy, whose
    /// "true gradient" is that of the cost at the free equilibrium (no Backprop mode
    /// exists for it). Two inferences per parameter: meant for tiny networks (a few
    /// hundred parameters). With the Hopfield energy the free phase must converge
    /// (enough `free_steps`, contracting couplings), or the differences measure the
    /// unsettled state instead. Works on a copy: `self` is unchanged.
    ///
    /// Errors: [`MepError::InvalidArgument`] (`h`) for `h` outside
    /// [[`MIN_FD_STEP`], [`MAX_FD_STEP`]] (or NaN); those of [`Model64::mean_cost`]
    /// for the batch.
    pub fn finite_differences(&self, x: &[f64], y: &[u32], loss: Loss, h: f64) -> Result<Gradients> {
        if !(MIN_FD_STEP..=MAX_FD_STEP).contains(&h) {
            return Err(MepError::invalid(
                "h",
                h,
                format!(
                    "the difference step must be in [{MIN_FD_STEP:e}, {MAX_FD_STEP}], e.g. 1e-6: below, w ± h rounds to w in f64 and the differences are rounding noise; above, they measure the cost far from the parameters, not its slope"
                ),
            ));
        }
        loss.validate_for(&self.net.arch)?;
        let base = self.parameters()?;
        let mut scratch = Model64::new(self.net.arch.clone(), self.net.energy, 0)?;
        let mut values = base.clone();
        let mut cost = |values: &[(Vec<f64>, Vec<f64>)]| -> Result<f64> {
            scratch.net.set_from_host(values)?;
            scratch.mean_cost(x, y, loss)
        };
        // Validates the batch once, before the many evaluations.
        cost(&values)?;
        let mut layers = Vec::with_capacity(base.len());
        for (l, blk) in self.net.arch.blocks.iter().enumerate() {
            let mut grad = [vec![0.0; blk.out * blk.inp], vec![0.0; blk.out]];
            for (part, g) in grad.iter_mut().enumerate() {
                if part == 1 && !blk.bias {
                    continue; // an untrained zero bias has no gradient to report
                }
                for (i, gi) in g.iter_mut().enumerate() {
                    let orig = if part == 0 { base[l].0[i] } else { base[l].1[i] };
                    set(&mut values, l, part, i, orig + h);
                    let up = cost(&values)?;
                    set(&mut values, l, part, i, orig - h);
                    let down = cost(&values)?;
                    set(&mut values, l, part, i, orig);
                    *gi = (up - down) / (2.0 * h);
                }
            }
            let [weight, bias] = grad;
            layers.push(LayerGradient {
                weight,
                bias,
                out: blk.out,
                inp: blk.inp,
            });
        }
        Ok(Gradients { layers })
    }
}

/// Sets value `i` of block `l`'s weights (`part` 0) or bias (`part` 1).
fn set(values: &mut [(Vec<f64>, Vec<f64>)], l: usize, part: usize, i: usize, v: f64) {
    if part == 0 {
        values[l].0[i] = v;
    } else {
        values[l].1[i] = v;
    }
}
