//! The training loop and evaluation, written once over the backend.
//!
//! The dataset is uploaded once ([`DeviceData`]); each step sends its batch's sample
//! indices with its step scalars in one small host-to-device copy, and the batch is
//! gathered on the device as part of the step ([`Engine::step_batch`]: on CUDA, one
//! graph launch). The running loss is read back only every `report_every` steps.

use crate::backend::{Backend, Scalar};
use crate::data::batches::{epoch_permutation, Shuffle};
use crate::data::mnist::Dataset;
use crate::ep::Workspace;
use crate::nn::Network;
use crate::optim::{Engine, StepStats};
use crate::{Loss, MepError, Result};

/// A dataset resident on the backend.
pub struct DeviceData<B: Backend> {
    /// `n × features` inputs.
    pub x: B::Buf,
    /// `n` labels.
    pub y: B::Labels,
    /// Samples.
    pub n: usize,
    /// Features per sample.
    pub features: usize,
    /// Classes.
    pub classes: usize,
    /// Root mean square of the inputs (normalised data: about 1), named when training
    /// on them diverges.
    pub input_rms: f64,
    identity: B::Labels,
}

impl<B: Backend> DeviceData<B> {
    /// Uploads `data` (validated by [`Dataset::new`]) to the backend.
    pub fn upload(bk: &B, data: &Dataset) -> Result<Self> {
        // Fallible: a copy of a data set that does not fit is an error, not an abort.
        let mut x: Vec<B::Elem> =
            crate::error::try_filled(data.images.len(), B::Elem::of(0.0), "the data set's inputs")?;
        let mut sum_sq = 0.0f64;
        x.iter_mut().zip(&data.images).for_each(|(d, &v)| {
            sum_sq += v as f64 * v as f64;
            *d = B::Elem::of(v as f64)
        });
        let mut identity: Vec<u32> = crate::error::try_filled(data.n, 0, "the data set's index")?;
        identity.iter_mut().enumerate().for_each(|(i, d)| *d = i as u32);
        Ok(DeviceData {
            x: bk.upload(&x)?,
            y: bk.upload_labels(&data.labels)?,
            n: data.n,
            features: data.features,
            classes: data.classes,
            input_rms: (sum_sq / data.images.len().max(1) as f64).sqrt(),
            identity: bk.upload_labels(&identity)?,
        })
    }
}

/// Refuses a data set whose inputs per sample or classes differ from the network's
/// inputs or outputs, with a [`MepError::SizeMismatch`] naming both sizes.
pub fn check_fits<B: Backend>(net: &Network<B>, data: &DeviceData<B>) -> Result<()> {
    check_sizes(&net.arch, data.features, data.classes)
}

/// [`check_fits`] on sizes: `features` inputs per sample and `classes` classes against
/// `arch`'s inputs and outputs.
pub fn check_sizes(arch: &crate::nn::Arch, features: usize, classes: usize) -> Result<()> {
    if features != arch.inputs() {
        return Err(MepError::SizeMismatch {
            what: "inputs",
            model_side: "model",
            model: arch.inputs(),
            data_side: "data set",
            data: features,
            fix: format!(
                "the model {} takes {} inputs per sample: build its first Linear with {features} inputs, or use data of that size",
                arch.describe(),
                arch.inputs()
            ),
        });
    }
    if classes != arch.outputs() {
        return Err(MepError::SizeMismatch {
            what: "outputs (classes)",
            model_side: "model",
            model: arch.outputs(),
            data_side: "data set",
            data: classes,
            fix: format!(
                "the model {} has one output per class: build its last Linear with {classes} outputs",
                arch.describe()
            ),
        });
    }
    Ok(())
}

/// Gathers rows `perm[start..start+rows]` of `data` into the workspace.
fn load_batch<B: Backend>(
    bk: &B,
    ws: &mut Workspace<B>,
    data: &DeviceData<B>,
    perm: &B::Labels,
    start: usize,
    rows: usize,
) -> Result<()> {
    bk.gather_batch(&data.x, data.features, &data.y, perm, start, rows, &mut ws.x, &mut ws.y)
}

/// What one epoch measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochReport {
    /// Running statistics of the free-phase outputs over the epoch.
    pub train: StepStats,
    /// Wall seconds of the training steps (data upload excluded).
    pub seconds: f64,
}

/// Trains one epoch in batches of `batch_size`, shuffled by `shuffle` for `epoch`.
/// `progress(step, steps, running)` is called every `report_every` steps and at the
/// end with the running statistics (one scalar read-back each time).
#[allow(clippy::too_many_arguments)]
pub fn train_epoch<B: Backend>(
    engine: &mut Engine<B>,
    net: &mut Network<B>,
    data: &DeviceData<B>,
    batch_size: usize,
    shuffle: Shuffle,
    epoch: u64,
    report_every: usize,
    mut progress: impl FnMut(usize, usize, StepStats),
) -> Result<EpochReport> {
    if batch_size == 0 {
        return Err(MepError::invalid("batch_size", 0, "must be at least 1"));
    }
    check_fits(net, data)?;
    if data.n == 0 {
        // An epoch of no steps would report a loss and accuracy of no samples.
        return Err(MepError::invalid(
            "data",
            "an empty data set",
            "train on at least one sample (Dataset::subset(0) is the only empty data set)",
        ));
    }
    let bk = net.backend.clone();
    let perm = epoch_permutation(data.n, shuffle, epoch);
    engine.ws.ensure_rows(batch_size.min(data.n))?;
    engine.reset_stats()?;
    bk.synchronize()?;
    let start = std::time::Instant::now();
    let steps = data.n.div_ceil(batch_size);
    for i in 0..steps {
        let off = i * batch_size;
        let rows = batch_size.min(data.n - off);
        engine.step_batch(net, data, &perm[off..off + rows])?;
        if report_every > 0 && (i + 1) % report_every == 0 && i + 1 < steps {
            let s = engine.checked_stats(net)?;
            progress(i + 1, steps, s);
        }
    }
    bk.synchronize()?;
    let seconds = start.elapsed().as_secs_f64();
    let train = engine.checked_stats(net)?;
    progress(steps, steps, train);
    Ok(EpochReport { train, seconds })
}

/// Mean cost and accuracy of inference (as the network's energy defines it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    /// Mean cost per sample.
    pub loss: f64,
    /// Fraction correct.
    pub accuracy: f64,
}

/// Evaluates `net` on all of `data` in chunks of `chunk` samples.
pub fn evaluate<B: Backend>(net: &Network<B>, data: &DeviceData<B>, loss: Loss, chunk: usize) -> Result<Evaluation> {
    check_fits(net, data)?;
    if data.n == 0 {
        // A mean over no samples is no number: a results table must not show 0%.
        return Err(MepError::invalid(
            "data",
            "an empty data set",
            "evaluate on at least one sample (Dataset::subset(0) is the only empty data set)",
        ));
    }
    let bk = net.backend.clone();
    let chunk = chunk.clamp(1, data.n);
    let mut ws = Workspace::new(&bk, &net.arch, chunk)?;
    let mut stats = bk.zeros(2)?;
    let mut off = 0;
    while off < data.n {
        let rows = chunk.min(data.n - off);
        load_batch(&bk, &mut ws, data, &data.identity, off, rows)?;
        crate::ep::inference(net, &mut ws, rows)?;
        bk.cost_stats(
            rows,
            net.arch.outputs(),
            crate::ep::output(net, &ws),
            &ws.y,
            loss,
            &mut stats,
        )?;
        off += rows;
    }
    let s = bk.download(&stats)?;
    let n = data.n as f64;
    if !s[0].f64().is_finite() {
        // Finite inputs and parameters can still overflow f32 inside the network: a
        // NaN or infinite mean is no result to report.
        return Err(MepError::NonFinite(format!(
            "the mean loss over {} samples is {}: the network's outputs overflowed f32 (check the inputs' scale and the parameters' size)",
            data.n,
            s[0].f64() / n
        )));
    }
    Ok(Evaluation {
        loss: s[0].f64() / n,
        accuracy: s[1].f64() / n,
    })
}
