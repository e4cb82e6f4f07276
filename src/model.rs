//! The user-facing model: `Sequential::new(&device)…build(seed)`, inference,
//! saving and loading. Dispatches at run time to the backend the device names.

use crate::backend::cpu::Cpu;
use crate::backend::cuda::Cuda;
use crate::backend::Backend;
use crate::data::mnist::Dataset;
use crate::device::Device;
use crate::ep::Energy;
use crate::nn::{Activation, Arch, Layer, Network};
use crate::train::{evaluate, DeviceData, Evaluation};
use crate::{Loss, MepError, Result};
use std::path::Path;

/// A network on one of the backends.
pub(crate) enum AnyNet {
    Cpu(Network<Cpu<f32>>),
    Cuda(Network<Cuda>),
}

/// Runs `$body` with `$n` bound to the concrete network, whatever its backend.
macro_rules! with_net {
    ($any:expr, $n:ident => $body:expr) => {
        match $any {
            $crate::model::AnyNet::Cpu($n) => $body,
            $crate::model::AnyNet::Cuda($n) => $body,
        }
    };
}
pub(crate) use with_net;

/// Entry point of the builder: `Sequential::new(&device).flatten().linear(784, 128)…`.
pub struct Sequential;

impl Sequential {
    /// Starts a network on `device`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(device: &Device) -> SequentialBuilder {
        SequentialBuilder {
            device: *device,
            layers: Vec::new(),
            energy: Energy::LayeredLeastSquares,
        }
    }
}

/// Lists layers, then [`SequentialBuilder::build`] validates and initialises them.
#[derive(Clone, Debug)]
pub struct SequentialBuilder {
    device: Device,
    layers: Vec<Layer>,
    energy: Energy,
}

impl SequentialBuilder {
    /// Flatten (inputs are flat vectors; must come first).
    pub fn flatten(mut self) -> Self {
        self.layers.push(Layer::Flatten);
        self
    }
    /// Linear(in, out) with bias.
    pub fn linear(mut self, inp: usize, out: usize) -> Self {
        self.layers.push(Layer::Linear { inp, out, bias: true });
        self
    }
    /// Linear(in, out) without bias.
    pub fn linear_no_bias(mut self, inp: usize, out: usize) -> Self {
        self.layers.push(Layer::Linear { inp, out, bias: false });
        self
    }
    /// An activation.
    pub fn activation(mut self, a: Activation) -> Self {
        self.layers.push(Layer::Act(a));
        self
    }
    /// ReLU.
    pub fn relu(self) -> Self {
        self.activation(Activation::Relu)
    }
    /// Sigmoid.
    pub fn sigmoid(self) -> Self {
        self.activation(Activation::Sigmoid)
    }
    /// Tanh.
    pub fn tanh(self) -> Self {
        self.activation(Activation::Tanh)
    }
    /// HardSigmoid (clamp to [0, 1]).
    pub fn hard_sigmoid(self) -> Self {
        self.activation(Activation::HardSigmoid)
    }
    /// Identity.
    pub fn identity(self) -> Self {
        self.activation(Activation::Identity)
    }
    /// The energy (default: layered least squares). It defines the EP dynamics and
    /// inference.
    pub fn energy(mut self, energy: Energy) -> Self {
        self.energy = energy;
        self
    }
    /// Validates the layers and initialises the parameters from `seed`.
    pub fn build(self, seed: u64) -> Result<Model> {
        let arch = Arch::from_layers(&self.layers)?;
        Model::from_arch(&self.device, arch, self.energy, seed)
    }
}

/// A trained or trainable network on a device.
pub struct Model {
    pub(crate) net: AnyNet,
    device: Device,
    /// The cost [`Model::evaluate`] reports: the last optimizer built for or stepping
    /// this model sets it (a mutex because building an optimizer borrows the model
    /// immutably).
    eval_loss: std::sync::Mutex<Loss>,
}

impl Model {
    /// A model from a validated architecture.
    pub fn from_arch(device: &Device, arch: Arch, energy: Energy, seed: u64) -> Result<Model> {
        let net = match device {
            Device::Cpu => AnyNet::Cpu(Network::new(Cpu::new(), arch, energy, seed)?),
            Device::Cuda(i) => AnyNet::Cuda(Network::new(Cuda::new(*i)?, arch, energy, seed)?),
        };
        Ok(Model {
            net,
            device: *device,
            eval_loss: std::sync::Mutex::new(Loss::CrossEntropy { label_smoothing: 0.0 }),
        })
    }

    /// The device the model lives on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The backend's description.
    pub fn backend_name(&self) -> String {
        with_net!(&self.net, n => n.backend.name())
    }

    /// The block structure.
    pub fn arch(&self) -> &Arch {
        with_net!(&self.net, n => &n.arch)
    }

    /// The energy.
    pub fn energy(&self) -> Energy {
        with_net!(&self.net, n => n.energy)
    }

    /// Class predictions (argmax of inference) for `x`, `rows × inputs` row-major.
    ///
    /// Errors: [`MepError::Shape`] for an input length that is not a positive
    /// multiple of the model's inputs; [`MepError::NonFinite`] for a non-finite
    /// input, or an output that overflowed f32 (inputs far from the training scale).
    pub fn predict(&self, x: &[f32]) -> Result<Vec<u32>> {
        // From the outputs on the host (10 values per sample against the inputs'
        // hundreds, so no dearer than a device argmax), so that an output that
        // overflowed is an error, not an arbitrary class. Ties go to the first class,
        // as the backends' argmax.
        let out = self.logits(x)?;
        let classes = self.arch().outputs();
        Ok(out
            .chunks(classes)
            .map(|row| {
                let mut best = 0;
                for (k, &v) in row.iter().enumerate() {
                    if v > row[best] {
                        best = k;
                    }
                }
                best as u32
            })
            .collect())
    }

    /// Mean cost and accuracy of inference on `data`. The cost is the loss the model
    /// is trained with ([`Model::loss`]: that of the last optimizer built for it or
    /// stepping it; cross-entropy before any); [`Model::evaluate_with`] takes another.
    pub fn evaluate(&self, data: &Dataset) -> Result<Evaluation> {
        self.evaluate_on(&self.upload(data)?)
    }

    /// Fraction of `data` classified correctly.
    pub fn accuracy(&self, data: &Dataset) -> Result<f64> {
        Ok(self.evaluate(data)?.accuracy)
    }

    /// Host copies of each block's (weights `out × in`, bias).
    pub fn parameters(&self) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
        with_net!(&self.net, n => n.to_host())
    }

    /// Saves the weights as f32 safetensors (`layers.{l}.weight`, `layers.{l}.bias`),
    /// atomically: a temporary file is written, synced and renamed.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_as(path, crate::io::Dtype::F32)
    }

    /// Saves the weights as safetensors of element type `dtype` (BF16/F16 checkpoints
    /// are half the size; loading widens them back), atomically.
    pub fn save_as(&self, path: impl AsRef<Path>, dtype: crate::io::Dtype) -> Result<()> {
        crate::io::save(path.as_ref(), self.arch(), self.energy(), &self.parameters()?, dtype)
    }

    /// Loads weights saved by [`Model::save`] into this model (shapes must match).
    pub fn load_weights(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let values = crate::io::load(path.as_ref(), self.arch(), self.energy())?;
        with_net!(&mut self.net, n => n.set_from_host(&values))
    }
}

impl Model {
    /// FLOP/s at which this model's device runs `gemms` alone (see
    /// [`crate::flops::gemm_rate`]).
    pub fn gemm_rate(&self, gemms: &[crate::flops::GemmShape], reps: usize) -> Result<f64> {
        match &self.net {
            AnyNet::Cpu(n) => crate::flops::gemm_rate(&n.backend, gemms, reps),
            AnyNet::Cuda(n) => crate::flops::gemm_rate(&n.backend, gemms, reps),
        }
    }
}

/// A dataset uploaded once to a model's device (see [`Model::upload`]).
pub struct DeviceDataset {
    pub(crate) inner: AnyData,
    /// The device it lives on: buffers of one GPU cannot be used by a model on another.
    pub(crate) device: Device,
}

pub(crate) enum AnyData {
    Cpu(DeviceData<Cpu<f32>>),
    Cuda(DeviceData<Cuda>),
}

impl DeviceDataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        match &self.inner {
            AnyData::Cpu(d) => d.n,
            AnyData::Cuda(d) => d.n,
        }
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Model {
    /// Uploads `data` to this model's device once, for [`crate::Optimizer::train_epoch`]
    /// and [`Model::evaluate_on`].
    pub fn upload(&self, data: &Dataset) -> Result<DeviceDataset> {
        let inner = match &self.net {
            AnyNet::Cpu(n) => AnyData::Cpu(DeviceData::upload(&n.backend, data)?),
            AnyNet::Cuda(n) => AnyData::Cuda(DeviceData::upload(&n.backend, data)?),
        };
        Ok(DeviceDataset {
            inner,
            device: self.device,
        })
    }

    /// Mean cost ([`Model::loss`]) and accuracy of inference on an uploaded dataset.
    pub fn evaluate_on(&self, data: &DeviceDataset) -> Result<Evaluation> {
        self.evaluate_on_with(data, self.loss())
    }

    /// Mean `loss` and accuracy of inference on an uploaded dataset.
    pub fn evaluate_on_with(&self, data: &DeviceDataset, loss: Loss) -> Result<Evaluation> {
        loss.validate()?;
        if data.device != self.device {
            return Err(device_mismatch());
        }
        match (&self.net, &data.inner) {
            (AnyNet::Cpu(n), AnyData::Cpu(d)) => evaluate(n, d, loss, 1000),
            (AnyNet::Cuda(n), AnyData::Cuda(d)) => evaluate(n, d, loss, 1000),
            _ => Err(device_mismatch()),
        }
    }
}

/// The error for a model, optimizer or dataset from different devices.
pub(crate) fn device_mismatch() -> MepError {
    MepError::invalid(
        "device",
        "mixed devices",
        "the model, its optimizer and uploaded data must come from the same Model (build the optimizer from this model, upload with model.upload)",
    )
}

/// Checks a host input batch: a whole number of rows, all finite.
/// Checks that `x` holds whole rows of `inputs` finite values and returns their
/// mean square (the inputs' RMS squared, which the divergence guard reports).
///
/// One pass: the f64 sum of squares is finite exactly when every value is (an f32's
/// square is below 1e77), so only a failed check looks for the offending index.
pub(crate) fn check_inputs(x: &[f32], inputs: usize) -> Result<f64> {
    if x.is_empty() || x.len() % inputs != 0 {
        return Err(MepError::Shape(format!(
            "input has {} values, not a positive multiple of the network's {inputs} inputs",
            x.len()
        )));
    }
    let sum_sq: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
    if !sum_sq.is_finite() {
        let i = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(MepError::NonFinite(format!("input value {} at index {i}", x[i])));
    }
    Ok(sum_sq / x.len() as f64)
}

/// Research access: raw outputs, parameters in memory, the loss evaluation reports,
/// and an f64 copy (the logic lives in [`crate::inspect`] and [`crate::model64`]).
impl Model {
    /// Inference outputs for `x` (`rows × inputs`, row-major), `rows × outputs`
    /// row-major: the forward pass φ_L(s_L) for the layered energy, the free-phase
    /// output state for the Hopfield energy. These are what the loss sees (before any
    /// softmax) and what [`Model::predict`] takes the argmax of.
    ///
    /// ```
    /// use mep::{Device, Sequential};
    /// # fn main() -> mep::Result<()> {
    /// let model = Sequential::new(&Device::Cpu).flatten().linear(2, 3).build(0)?;
    /// let out = model.logits(&[1.0, 2.0, 3.0, 4.0])?; // two samples
    /// assert_eq!(out.len(), 2 * 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn logits(&self, x: &[f32]) -> Result<Vec<f32>> {
        match &self.net {
            AnyNet::Cpu(n) => crate::inspect::outputs(n, x),
            AnyNet::Cuda(n) => crate::inspect::outputs(n, x),
        }
    }

    /// Replaces every parameter with host values shaped like [`Model::parameters`]
    /// (per block: weights `out × in` row-major, then bias; the bias of a Linear
    /// without bias must be zeros).
    ///
    /// Errors: [`MepError::Shape`] naming the block and the expected sizes;
    /// [`MepError::NonFinite`] naming the block and index of a NaN or infinite
    /// value; [`MepError::InvalidArgument`] for a non-zero bias where the Linear has
    /// none. Nothing is changed on error.
    ///
    /// ```
    /// use mep::{Device, Sequential};
    /// # fn main() -> mep::Result<()> {
    /// let a = Sequential::new(&Device::Cpu).flatten().linear(4, 2).build(1)?;
    /// let mut b = Sequential::new(&Device::Cpu).flatten().linear(4, 2).build(2)?;
    /// b.set_parameters(&a.parameters()?)?;
    /// assert_eq!(a.parameters()?, b.parameters()?);
    /// assert!(b.set_parameters(&[(vec![f64::NAN; 8], vec![0.0; 2])]).is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_parameters(&mut self, values: &[(Vec<f64>, Vec<f64>)]) -> Result<()> {
        check_parameters(self.arch(), values)?;
        with_net!(&mut self.net, n => n.set_from_host(values))
    }

    /// The cost [`Model::evaluate`] reports: the loss of the last optimizer built for
    /// or stepping this model, cross-entropy before any.
    pub fn loss(&self) -> Loss {
        *self.eval_loss.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the cost [`Model::evaluate`] reports (e.g. after loading weights trained
    /// with the squared error).
    pub fn set_loss(&self, loss: Loss) {
        *self.eval_loss.lock().unwrap_or_else(|e| e.into_inner()) = loss;
    }

    /// Mean `loss` and accuracy of inference on `data`.
    pub fn evaluate_with(&self, data: &Dataset, loss: Loss) -> Result<Evaluation> {
        self.evaluate_on_with(&self.upload(data)?, loss)
    }

    /// A copy of this model in f64 on the CPU (same architecture, energy and
    /// parameters, widened exactly), for reference computations; see
    /// [`crate::Model64`].
    pub fn to_f64(&self) -> Result<crate::Model64> {
        let mut m = crate::Model64::new(self.arch().clone(), self.energy(), 0)?;
        m.set_parameters(&self.parameters()?)?;
        Ok(m)
    }
}

/// Checks host parameters against `arch` before anything is written: block count,
/// sizes, finiteness, and zero biases where a Linear has none.
pub(crate) fn check_parameters(arch: &Arch, values: &[(Vec<f64>, Vec<f64>)]) -> Result<()> {
    if values.len() != arch.depth() {
        return Err(MepError::Shape(format!(
            "{} parameter blocks given for a network of {} blocks ({}): pass one (weights, bias) pair per Linear",
            values.len(),
            arch.depth(),
            arch.describe()
        )));
    }
    for (l, ((w, b), blk)) in values.iter().zip(&arch.blocks).enumerate() {
        if w.len() != blk.out * blk.inp || b.len() != blk.out {
            return Err(MepError::Shape(format!(
                "block {}: expected weights {}×{} ({} values) and bias {}, got {} and {} values",
                l + 1,
                blk.out,
                blk.inp,
                blk.out * blk.inp,
                blk.out,
                w.len(),
                b.len()
            )));
        }
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            return Err(MepError::NonFinite(format!(
                "block {} weight {} at index {i}",
                l + 1,
                w[i]
            )));
        }
        if let Some(i) = b.iter().position(|v| !v.is_finite()) {
            return Err(MepError::NonFinite(format!(
                "block {} bias {} at index {i}",
                l + 1,
                b[i]
            )));
        }
        if !blk.bias && b.iter().any(|&v| v != 0.0) {
            return Err(MepError::invalid(
                "bias",
                format!("non-zero values for block {}", l + 1),
                "that Linear has no bias: pass zeros (as Model::parameters returns)",
            ));
        }
    }
    Ok(())
}
