//! Research access to a network, on any backend: the raw outputs, the mean cost and
//! the gradient estimate of one host batch, as host vectors.
//!
//! Everything here works on a scratch workspace of its own, so it never touches an
//! optimizer's state (step counter, momentum, running statistics) nor the network's
//! parameters. The user-facing entry points are [`crate::Optimizer::gradients`],
//! [`crate::Model::logits`] and the f64 reference model [`crate::Model64`].
//!
//! ```
//! use mep::{smep, Device, Mode, Sequential};
//! # fn main() -> mep::Result<()> {
//! let model = Sequential::new(&Device::Cpu).flatten().linear(4, 8).relu().linear(8, 3).build(0)?;
//! let ep = smep(&model).beta(0.01).build()?;
//! let bp = smep(&model).mode(Mode::Backprop).build()?;
//! let x = [0.5f32, -1.0, 0.25, 2.0, 1.0, 0.0, -0.5, 0.75];
//! let y = [2u32, 0];
//! let cos = ep.gradients(&model, &x, &y)?.cosine(&bp.gradients(&model, &x, &y)?)?;
//! assert!(cos > 0.9, "EP with a small β follows the true gradient: cosine {cos}");
//! # Ok(())
//! # }
//! ```

use crate::backend::{Backend, Scalar};
use crate::ep::{compute_gradients, GradConfig, Workspace};
use crate::nn::Network;
use crate::optim::{Engine, OptimConfig};
use crate::{Loss, MepError, Result};

/// The gradient (estimate) of one block: `∂/∂W` (`out × inp`, row-major, like the
/// weights of [`crate::Model::parameters`]) and `∂/∂b` (`out`).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerGradient {
    /// `∂/∂W`, `out × inp` row-major.
    pub weight: Vec<f64>,
    /// `∂/∂b`, `out` values; all zero for a Linear without bias (nothing is trained there).
    pub bias: Vec<f64>,
    /// Rows of the weight matrix (the block's outputs).
    pub out: usize,
    /// Columns of the weight matrix (the block's inputs).
    pub inp: usize,
}

/// The gradient (estimate) of the mean cost of one batch, one [`LayerGradient`] per
/// block, on the host. Same sign convention in every mode: it points uphill, an SGD
/// step subtracts it.
///
/// ```
/// use mep::inspect::{Gradients, LayerGradient};
/// let g = |w: Vec<f64>| Gradients { layers: vec![LayerGradient { weight: w, bias: vec![0.0], out: 1, inp: 2 }] };
/// let (a, b) = (g(vec![1.0, 0.0]), g(vec![1.0, 1.0]));
/// assert!((a.cosine(&b).unwrap() - 0.5f64.sqrt()).abs() < 1e-12);
/// assert_eq!(a.flatten(), vec![1.0, 0.0, 0.0]);
/// // A zero gradient has no direction: its cosine with anything is NaN.
/// assert!(a.cosine(&g(vec![0.0, 0.0])).unwrap().is_nan());
/// // Values whose squares under- or overflow f64 still have one.
/// assert!((g(vec![1e-200, 0.0]).cosine(&g(vec![1e200, 1e200])).unwrap() - 0.5f64.sqrt()).abs() < 1e-15);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    /// One entry per block, input side first.
    pub layers: Vec<LayerGradient>,
}

impl Gradients {
    /// All values in one vector: per block the weights, then the bias (the order of
    /// [`crate::Model::parameters`]).
    pub fn flatten(&self) -> Vec<f64> {
        self.layers
            .iter()
            .flat_map(|l| l.weight.iter().chain(&l.bias).copied())
            .collect()
    }

    /// Euclidean norm over every value.
    pub fn norm(&self) -> f64 {
        self.layers
            .iter()
            .flat_map(|l| l.weight.iter().chain(&l.bias))
            .map(|v| v * v)
            .sum::<f64>()
            .sqrt()
    }

    /// The `(weights, bias)` pairs, shaped like [`crate::Model::parameters`].
    pub fn into_pairs(self) -> Vec<(Vec<f64>, Vec<f64>)> {
        self.layers.into_iter().map(|l| (l.weight, l.bias)).collect()
    }

    fn check_same_shape(&self, other: &Gradients) -> Result<()> {
        let shape = |g: &Gradients| g.layers.iter().map(|l| (l.out, l.inp)).collect::<Vec<_>>();
        let same_lengths = self
            .layers
            .iter()
            .zip(&other.layers)
            .all(|(a, b)| a.weight.len() == b.weight.len() && a.bias.len() == b.bias.len());
        if shape(self) != shape(other) || !same_lengths {
            return Err(MepError::Shape(format!(
                "gradients of blocks {:?} compared with gradients of blocks {:?} (out, in): compare gradients of the same model",
                shape(self),
                shape(other)
            )));
        }
        Ok(())
    }

    /// Cosine of the angle between `self` and `other` over all values: 1 when they
    /// point the same way. NaN when either is all zeros: the angle is undefined, and
    /// NaN fails every comparison, so a zero estimate (e.g. a nudge lost in rounding)
    /// never passes for an orthogonal or an aligned one.
    ///
    /// Errors: [`MepError::Shape`] when the two come from differently shaped models.
    pub fn cosine(&self, other: &Gradients) -> Result<f64> {
        self.check_same_shape(other)?;
        Ok(cosine(&self.flatten(), &other.flatten()))
    }

    /// [`Gradients::cosine`] per block (weights and bias together), input side first.
    pub fn layer_cosines(&self, other: &Gradients) -> Result<Vec<f64>> {
        self.check_same_shape(other)?;
        Ok(self
            .layers
            .iter()
            .zip(&other.layers)
            .map(|(a, b)| {
                let fa: Vec<f64> = a.weight.iter().chain(&a.bias).copied().collect();
                let fb: Vec<f64> = b.weight.iter().chain(&b.bias).copied().collect();
                cosine(&fa, &fb)
            })
            .collect())
    }
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    // Each side divided by its largest magnitude first, so that squares of values
    // near 1e±200 neither underflow nor overflow (the cosine does not depend on it).
    let unit = |v: &[f64]| -> Option<Vec<f64>> {
        let m = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        (m > 0.0 && m.is_finite()).then(|| v.iter().map(|x| x / m).collect())
    };
    let (Some(a), Some(b)) = (unit(a), unit(b)) else {
        return f64::NAN;
    };
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|v| v * v).sum::<f64>().sqrt();
    let nb = b.iter().map(|v| v * v).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Checks a host batch (`rows × inputs` values, finite; `rows` labels below the
/// output count when given) and returns `rows`.
fn check_batch<X: Copy + Into<f64>>(x: &[X], y: Option<&[u32]>, inputs: usize, outputs: usize) -> Result<usize> {
    if x.is_empty() || x.len() % inputs != 0 {
        return Err(MepError::Shape(format!(
            "input has {} values, not a positive multiple of the network's {inputs} inputs",
            x.len()
        )));
    }
    if let Some(i) = x.iter().position(|v| !(*v).into().is_finite()) {
        return Err(MepError::NonFinite(format!("input value {} at index {i}", x[i].into())));
    }
    let rows = x.len() / inputs;
    if let Some(y) = y {
        if y.len() != rows {
            return Err(MepError::Shape(format!("{rows} input rows but {} labels", y.len())));
        }
        if let Some(&bad) = y.iter().find(|&&c| c as usize >= outputs) {
            return Err(MepError::invalid(
                "target",
                bad,
                format!("labels must be < {outputs}, the network's outputs"),
            ));
        }
    }
    Ok(rows)
}

/// A scratch workspace holding the batch.
fn workspace<B: Backend, X: Copy + Into<f64>>(
    net: &Network<B>,
    x: &[X],
    y: Option<&[u32]>,
) -> Result<(Workspace<B>, usize)> {
    let rows = check_batch(x, y, net.arch.inputs(), net.arch.outputs())?;
    let bk = &net.backend;
    let mut ws = Workspace::new(bk, &net.arch, rows)?;
    let xs: Vec<B::Elem> = x.iter().map(|&v| B::Elem::of(v.into())).collect();
    bk.write(&mut ws.x, &xs)?;
    if let Some(y) = y {
        bk.write_labels(&mut ws.y, y)?;
    }
    Ok((ws, rows))
}

/// Inference outputs for `x` (`rows × inputs`), `rows × outputs` row-major: the
/// forward pass φ_L(s_L) for the layered energy, the free-phase output state s_L for
/// the Hopfield energy (what [`Loss`] is applied to; before any softmax).
///
/// Errors: those of the input checks; [`MepError::NonFinite`] naming the sample when
/// an output overflows the element type (inputs far from the training scale).
pub fn outputs<B: Backend, X: Copy + Into<f64>>(net: &Network<B>, x: &[X]) -> Result<Vec<B::Elem>> {
    let (mut ws, rows) = workspace(net, x, None)?;
    crate::ep::inference(net, &mut ws, rows)?;
    let mut out = net.backend.download(crate::ep::output(net, &ws))?;
    // The buffer may be larger than this batch (capacity rounding): keep its rows.
    let classes = net.arch.outputs();
    out.truncate(rows * classes);
    // Finite inputs and parameters can still overflow the element type on the way
    // (inputs far from the training data's scale): an infinite or NaN output is no
    // prediction, so it is an error naming the sample and the inputs' size.
    if let Some(i) = out.iter().position(|v| !v.f64().is_finite()) {
        let largest = x.iter().map(|&v| v.into().abs()).fold(0.0, f64::max);
        return Err(MepError::NonFinite(format!(
            "output {} of sample {} (class {}): the network's outputs overflow {} (largest input |x| = {largest:.3e}): give inputs at the training data's scale (normalised, of order 1), and check the parameters' size",
            out[i].f64(),
            i / classes,
            i % classes,
            std::any::type_name::<B::Elem>()
        )));
    }
    Ok(out)
}

/// Mean `loss` of the inference outputs for the batch `(x, y)`.
pub fn mean_cost<B: Backend, X: Copy + Into<f64>>(net: &Network<B>, x: &[X], y: &[u32], loss: Loss) -> Result<f64> {
    loss.validate_for(&net.arch)?;
    let (mut ws, rows) = workspace(net, x, Some(y))?;
    crate::ep::inference(net, &mut ws, rows)?;
    let bk = &net.backend;
    let mut stats = bk.zeros(2)?;
    bk.cost_stats(
        rows,
        net.arch.outputs(),
        crate::ep::output(net, &ws),
        &ws.y,
        loss,
        &mut stats,
    )?;
    let cost = bk.download(&stats)?[0].f64() / rows as f64;
    if !cost.is_finite() {
        // As `evaluate` refuses it: a ground truth (finite differences) must not
        // carry a NaN on silently.
        return Err(MepError::NonFinite(format!(
            "the mean cost over {rows} samples is {cost}: the outputs overflow {} (check the inputs' scale and the parameters' size)",
            std::any::type_name::<B::Elem>()
        )));
    }
    Ok(cost)
}

/// The gradient estimate of `cfg` (EP with its nudging rule, or Backprop) for the
/// batch `(x, y)`, on a scratch workspace: nothing else changes.
///
/// `cfg` is checked as [`crate::optim::OptimConfig::validate`] and the optimizer
/// builder check it (β, settle steps, a clamped rule needs the squared error and,
/// with the layered energy, an output layer without activation; Backprop needs the
/// layered energy), with the same errors.
pub fn gradients<B: Backend, X: Copy + Into<f64>>(
    net: &Network<B>,
    cfg: &GradConfig,
    x: &[X],
    y: &[u32],
) -> Result<Gradients> {
    let rows = check_batch(x, Some(y), net.arch.inputs(), net.arch.outputs())?;
    // A throwaway engine runs every check an optimizer would (the update-rule part
    // of the configuration is SGD's defaults, which are valid) and brings a workspace
    // and gradient buffers of the right shapes. Its step is never called.
    let mut engine = Engine::new(
        OptimConfig {
            grad: *cfg,
            ..OptimConfig::sgd()
        },
        net,
        rows,
    )?;
    let xs: Vec<B::Elem> = x.iter().map(|&v| B::Elem::of(v.into())).collect();
    engine.ws.load_host_batch(&xs, y)?;
    compute_gradients(net, cfg, &mut engine.ws, rows, &mut engine.grads)?;
    let bk = &net.backend;
    let mut layers = Vec::with_capacity(net.arch.depth());
    for (l, blk) in net.arch.blocks.iter().enumerate() {
        let weight: Vec<f64> = bk.download(&engine.grads.w[l])?.into_iter().map(|v| v.f64()).collect();
        let bias: Vec<f64> = if blk.bias {
            bk.download(&engine.grads.b[l])?.into_iter().map(|v| v.f64()).collect()
        } else {
            vec![0.0; blk.out]
        };
        if weight.iter().chain(&bias).any(|v| !v.is_finite()) {
            // Finite inputs and parameters can still overflow f32 in the phases: a
            // NaN estimate is no measurement to compare.
            return Err(MepError::NonFinite(format!(
                "the gradient estimate of block {} is not finite: the states overflowed {} (check the inputs' scale, the parameters' size and beta)",
                l + 1,
                std::any::type_name::<B::Elem>()
            )));
        }
        layers.push(LayerGradient {
            weight,
            bias,
            out: blk.out,
            inp: blk.inp,
        });
    }
    Ok(Gradients { layers })
}
