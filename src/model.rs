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
}

impl Model {
    /// A model from a validated architecture.
    pub fn from_arch(device: &Device, arch: Arch, energy: Energy, seed: u64) -> Result<Model> {
        let net = match device {
            Device::Cpu => AnyNet::Cpu(Network::new(Cpu::new(), arch, energy, seed)?),
            Device::Cuda(i) => AnyNet::Cuda(Network::new(Cuda::new(*i)?, arch, energy, seed)?),
        };
        Ok(Model { net, device: *device })
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
    pub fn predict(&self, x: &[f32]) -> Result<Vec<u32>> {
        let inputs = self.arch().inputs();
        check_inputs(x, inputs)?;
        let rows = x.len() / inputs;
        with_net!(&self.net, n => {
            let bk = n.backend.clone();
            let mut ws = crate::ep::Workspace::new(&bk, &n.arch, rows)?;
            let xs: Vec<_> = x.iter().map(|&v| <_ as crate::backend::Scalar>::of(v as f64)).collect();
            bk.write(&mut ws.x, &xs)?;
            crate::ep::inference(n, &mut ws, rows)?;
            let mut out = bk.zeros_labels(rows)?;
            bk.argmax(rows, n.arch.outputs(), crate::ep::output(n, &ws), &mut out)?;
            bk.download_labels(&out)
        })
    }

    /// Mean cross-entropy and accuracy of inference on `data`.
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
            AnyNet::Cpu(n) => crate::backend::cpu::on_pool(|| crate::flops::gemm_rate(&n.backend, gemms, reps)),
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

    /// Mean cross-entropy and accuracy of inference on an uploaded dataset.
    pub fn evaluate_on(&self, data: &DeviceDataset) -> Result<Evaluation> {
        if data.device != self.device {
            return Err(device_mismatch());
        }
        let ce = Loss::CrossEntropy { label_smoothing: 0.0 };
        match (&self.net, &data.inner) {
            (AnyNet::Cpu(n), AnyData::Cpu(d)) => crate::backend::cpu::on_pool(|| evaluate(n, d, ce, 1000)),
            (AnyNet::Cuda(n), AnyData::Cuda(d)) => evaluate(n, d, ce, 1000),
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
pub(crate) fn check_inputs(x: &[f32], inputs: usize) -> Result<()> {
    if x.is_empty() || x.len() % inputs != 0 {
        return Err(MepError::Shape(format!(
            "input has {} values, not a positive multiple of the network's {inputs} inputs",
            x.len()
        )));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(MepError::NonFinite(format!("input value {} at index {i}", x[i])));
    }
    Ok(())
}
