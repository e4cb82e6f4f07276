//! `mep-mnist`: the MNIST benchmark. With no flags it runs exactly the user's
//! tutorial: Flatten–784–128–ReLU–10, batch 64, one epoch, `smep` with lr 0.05,
//! β 0.5, 15 settle steps, cross-entropy, EP mode, seed 0.

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mep::optim::{OptimizerBuilder, Schedule};
use mep::{Activation, Device, Energy, Loss, Mode, MuonScale, Nudging, Sequential, Shuffle, SpectralLayers};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OptName {
    Smep,
    Sgd,
    Adam,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Ep,
    Backprop,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum EnergyArg {
    Layered,
    Hopfield,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum NudgingArg {
    /// PEP: +β.
    #[value(alias = "positive")]
    OneSided,
    /// NEP: −β.
    Negative,
    /// CEP: ±β.
    #[value(alias = "centered")]
    Symmetric,
    /// CL: the output clamped to the target (squared error).
    Contrastive,
    /// PCpL: the output clamped to o + β(y − o) (squared error).
    CoupledPositive,
    /// NCpL: the output clamped to o − β(y − o) (squared error).
    CoupledNegative,
    /// CCpL: both coupled phases (squared error).
    CoupledCentered,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ScaleArg {
    Spectral,
    KellerJordan,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ScheduleArg {
    Constant,
    Cosine,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DatasetArg {
    /// MNIST from --data-dir (default data/mnist), verified by SHA-256.
    Mnist,
    /// Any four IDX files with MNIST's names in --data-dir (raw or .gz): any image shape and class count, no checksum.
    Idx,
    /// CIFAR-10's binary version in --data-dir (data_batch_1..5.bin, test_batch.bin).
    Cifar10,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SpectralArg {
    Off,
    Output,
    Couplings,
    All,
    Auto,
}

/// Train an MLP on MNIST (or your own IDX data, or CIFAR-10: --dataset) with Equilibrium Propagation (defaults: the seed tutorial).
#[derive(Parser, Debug)]
// Negative numbers are values (`--beta -1` reaches the range check, which says what
// the range is) rather than unknown flags.
#[command(name = "mep-mnist", version, allow_negative_numbers = true)]
struct Args {
    /// Optimizer preset.
    #[arg(long, value_enum, default_value = "smep")]
    optimizer: OptName,
    /// EP or backprop gradients.
    #[arg(long, value_enum, default_value = "ep")]
    mode: ModeArg,
    /// Energy: layered least squares or Hopfield.
    #[arg(long, value_enum, default_value = "layered")]
    energy: EnergyArg,
    /// Free-phase sweeps of the Hopfield energy (default 50; Hopfield only).
    #[arg(long)]
    free_steps: Option<usize>,
    /// The learning rule (EP mode only): one-sided (PEP), negative (NEP), symmetric (CEP), contrastive (CL), coupled-* (CpL) [default: one-sided with one hidden layer, symmetric with more].
    #[arg(long, value_enum)]
    nudging: Option<NudgingArg>,
    /// Hidden widths, comma-separated (any depth; empty for none).
    #[arg(long, default_value = "128", value_delimiter = ',')]
    hidden: Vec<String>,
    /// Hidden activation: relu, sigmoid, tanh, hardsigmoid, identity.
    #[arg(long, default_value = "relu")]
    activation: Activation,
    /// Total epochs of the run (with --resume: counting those already done; 0 with --load: evaluate only).
    #[arg(long, default_value_t = 1)]
    epochs: u64,
    /// Stop after this many epochs of this invocation, to continue later with --resume (the run's length, e.g. for --schedule cosine, stays --epochs).
    #[arg(long, value_name = "N")]
    stop_after: Option<u64>,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Learning rate of the weight matrices (default: 0.05 for smep, 0.01 for sgd, 1e-3 for adam).
    #[arg(long, allow_hyphen_values = true)]
    lr: Option<f64>,
    /// Learning rate of the biases (default: 1e-3 Adam for smep; lr for sgd/adam).
    #[arg(long, allow_hyphen_values = true)]
    bias_lr: Option<f64>,
    /// Nudging strength β (default 0.5; EP mode only).
    #[arg(long, allow_hyphen_values = true)]
    beta: Option<f64>,
    /// Nudged-phase settle steps (default 15; EP mode only).
    #[arg(long)]
    settle_steps: Option<usize>,
    /// Relaxation ω in (0, 1] of the layered energy's nudged-phase sweeps [default: 0.5] (EP mode, layered energy only).
    #[arg(long, allow_hyphen_values = true)]
    settle_lr: Option<f64>,
    /// Loss: cross_entropy or squared_error.
    #[arg(long, default_value = "cross_entropy")]
    loss: Loss,
    /// Label smoothing (default 0; cross-entropy only).
    #[arg(long, allow_hyphen_values = true)]
    label_smoothing: Option<f64>,
    /// Momentum (smep, sgd).
    #[arg(long, allow_hyphen_values = true)]
    momentum: Option<f64>,
    /// Nesterov momentum on/off (smep, sgd).
    #[arg(long)]
    nesterov: Option<bool>,
    /// Muon update scale (smep).
    #[arg(long, value_enum)]
    muon_scale: Option<ScaleArg>,
    /// Newton–Schulz iterations of Muon's orthogonalisation (smep; default 5).
    #[arg(long)]
    ns_steps: Option<usize>,
    /// Decoupled weight decay.
    #[arg(long, allow_hyphen_values = true)]
    weight_decay: Option<f64>,
    /// Spectral bound γ.
    #[arg(long, allow_hyphen_values = true)]
    gamma: Option<f64>,
    /// Which matrices the spectral constraint covers.
    #[arg(long, value_enum)]
    spectral_layers: Option<SpectralArg>,
    /// Learning-rate schedule: constant, or cosine decay to 0 over all epochs.
    #[arg(long, value_enum, default_value = "constant")]
    schedule: ScheduleArg,
    /// Seed (model initialisation and shuffling).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// CPU threads (default: all cores; on a machine whose cores are busy with other
    /// work, 1 is faster: the threads wait for each other every few microseconds).
    #[arg(long)]
    threads: Option<usize>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// The data set: mnist (SHA-256 verified), idx (your own IDX files) or cifar10.
    #[arg(long, value_enum, default_value = "mnist")]
    dataset: DatasetArg,
    /// Directory with the data files [default for --dataset mnist: data/mnist; required otherwise].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Normalise pixels as (x/255 − MEAN)/STD [default: computed from the training split; --dataset idx or cifar10 only].
    #[arg(long, value_name = "MEAN,STD", allow_hyphen_values = true)]
    normalize: Option<mep::Normalization>,
    /// Train on the first N training samples only.
    #[arg(long)]
    train_subset: Option<usize>,
    /// Save a resumable checkpoint (safetensors: weights, optimizer state, run position) here at the end of every epoch, atomically (checked writable before training).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Continue the run saved in this checkpoint (by --save): same flags, --epochs the run's total.
    #[arg(long, value_name = "PATH")]
    resume: Option<PathBuf>,
    /// Start from the weights of this checkpoint (any --save or Model::save file) with a fresh optimizer; with --epochs 0, only evaluate them.
    #[arg(long, value_name = "PATH")]
    load: Option<PathBuf>,
    /// Element type of the saved weights: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    save_dtype: mep::io::Dtype,
    /// After training, time the step's GEMM shapes alone on the same device and report
    /// the training's GEMM FLOP rate as a fraction of it.
    #[arg(long)]
    gemm_rate: bool,
    /// Print one JSON object per epoch instead of the progress display.
    #[arg(long)]
    json: bool,
    /// Write metrics as CSV here: a `step` row every --report-every steps (mean over
    /// the batches since the previous row) and an `epoch` row with the test evaluation.
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Steps between progress updates and metrics rows (0: only at the end of each epoch).
    #[arg(long, default_value_t = 50)]
    report_every: usize,
    /// Draw the training and test curves (loss and accuracy against samples seen) as a PNG here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write training image N with its label as a PNG (see --sample-out) before training.
    #[arg(long)]
    show_sample: Option<usize>,
    /// Where --show-sample writes (default: sample-N.png).
    #[arg(long)]
    sample_out: Option<PathBuf>,
    /// The options given on the command line (not defaults): (id, value as given).
    #[arg(skip)]
    given: Vec<(String, String)>,
    /// How many times --hidden was given.
    #[arg(skip)]
    hidden_uses: usize,
}

/// Options that still apply with `--epochs 0 --load PATH` (evaluation only): those
/// that build the model (its architecture, energy and free phase), choose the test
/// data and the reported loss, and say where and how to run. Everything else
/// configures training and would be ignored.
const EVAL_OPTIONS: [&str; 16] = [
    "hidden",
    "activation",
    "energy",
    "free_steps",
    "loss",
    "label_smoothing",
    "epochs",
    "load",
    "dataset",
    "data_dir",
    "normalize",
    "device",
    "threads",
    "json",
    "show_sample",
    "sample_out",
];

/// The long name of option `id` as the user spells it (`train-subset`).
fn flag_name(id: &str) -> &'static str {
    // Only for an error message, once per run.
    Box::leak(id.replace('_', "-").into_boxed_str())
}

/// `1 epoch`, `2 epochs`.
fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The options that `matches` got from the command line, with their values as given.
fn given_options(matches: &clap::ArgMatches) -> Vec<(String, String)> {
    Args::command()
        .get_arguments()
        .map(|a| a.get_id().as_str())
        .filter(|id| matches!(matches.value_source(id), Some(ValueSource::CommandLine)))
        .map(|id| {
            let value = matches
                .get_raw(id)
                .map(|v| v.map(|s| s.to_string_lossy()).collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            (id.to_string(), value)
        })
        .collect()
}

/// The value of option `id` if it was given on the command line (rather than left at
/// its default).
fn given<'a>(args: &'a Args, id: &str) -> Option<&'a str> {
    args.given.iter().find(|(g, _)| g == id).map(|(_, v)| v.as_str())
}

/// Options that would be accepted and then ignored are refused, naming the conflict.
fn check_conflicts(args: &Args) -> mep::Result<()> {
    let conflict = |name: &'static str, value: String, fix: &str| Err(mep::MepError::invalid(name, value, fix));
    if let (Some(v), Loss::SquaredError) = (args.label_smoothing, args.loss) {
        return conflict(
            "label-smoothing",
            v.to_string(),
            "label smoothing applies only to --loss cross_entropy; drop it or change the loss",
        );
    }
    if let (Some(v), EnergyArg::Layered) = (args.free_steps, args.energy) {
        return conflict(
            "free-steps",
            v.to_string(),
            "free-phase sweeps apply only to --energy hopfield (the layered energy's free phase is the forward pass)",
        );
    }
    if let ModeArg::Backprop = args.mode {
        let ep_only = [
            ("nudging", args.nudging.map(|v| format!("{v:?}"))),
            ("beta", args.beta.map(|v| v.to_string())),
            ("settle-steps", args.settle_steps.map(|v| v.to_string())),
            ("settle-lr", args.settle_lr.map(|v| v.to_string())),
        ];
        if let Some((name, Some(v))) = ep_only.into_iter().find(|(_, v)| v.is_some()) {
            return conflict(name, v, "applies only to --mode ep (Backprop mode has no nudged phase)");
        }
    }
    if let (Some(v), EnergyArg::Hopfield) = (args.settle_lr, args.energy) {
        return conflict(
            "settle-lr",
            v.to_string(),
            "applies only to --energy layered (the Hopfield energy settles by fixed-point sweeps, without a step size)",
        );
    }
    if let (Some(v), Some(SpectralArg::Off)) = (args.gamma, args.spectral_layers) {
        return conflict(
            "gamma",
            v.to_string(),
            "the spectral bound has no effect with --spectral-layers off; drop one of the two",
        );
    }
    if args.epochs == 0 && args.load.is_none() {
        return conflict(
            "epochs",
            "0".into(),
            "must be at least 1, or 0 with --load PATH to evaluate a saved model",
        );
    }
    if let (0, Some(p)) = (args.epochs, &args.save) {
        return conflict(
            "save",
            p.display().to_string(),
            "--epochs 0 trains nothing, so there is nothing to save",
        );
    }
    if args.epochs == 0 {
        if let Some((id, v)) = args.given.iter().find(|(id, _)| !EVAL_OPTIONS.contains(&id.as_str())) {
            let name = flag_name(id);
            return conflict(
                name,
                v.clone(),
                &format!(
                    "--epochs 0 only evaluates the loaded model: `{name}` applies to training; drop it, or give --epochs N to train"
                ),
            );
        }
    }
    if let (Some(l), Some(_)) = (&args.load, &args.resume) {
        return conflict(
            "load",
            l.display().to_string(),
            "--load starts a new run from saved weights, --resume continues a saved run: give one of the two",
        );
    }
    if args.stop_after == Some(0) {
        return conflict("stop-after", "0".into(), "must be at least 1 epoch");
    }
    if let (Some(n), None) = (args.stop_after, &args.save) {
        return conflict(
            "stop-after",
            n.to_string(),
            "--stop-after ends the run early so that --resume can continue it: give --save PATH",
        );
    }
    if let (Some(v), None) = (given(args, "save_dtype"), &args.save) {
        return conflict(
            "save-dtype",
            v.to_string(),
            "the element type of the saved weights applies only with --save PATH",
        );
    }
    if let (Some(p), None) = (&args.sample_out, args.show_sample) {
        return conflict(
            "sample-out",
            p.display().to_string(),
            "says where --show-sample N writes: give --show-sample N, or drop it",
        );
    }
    if args.hidden_uses > 1 {
        return conflict(
            "hidden",
            args.hidden.join(","),
            "given more than once: give all hidden widths in one comma-separated --hidden, e.g. --hidden 256,128",
        );
    }
    if args.batch_size == 0 {
        // Checked here, before the data set loads, not seconds later by the trainer.
        return conflict("batch-size", "0".into(), "must be at least 1 sample per step");
    }
    if args.train_subset == Some(0) {
        return conflict("train-subset", "0".into(), "must be at least 1 sample");
    }
    Ok(())
}

/// Parses `--hidden`: comma-separated positive widths; a lone empty value means none,
/// but an empty entry among others (`128,,64`, `,`) is a typo, not silently dropped.
fn parse_hidden(raw: &[String]) -> mep::Result<Vec<usize>> {
    if let [only] = raw {
        if only.trim().is_empty() {
            return Ok(Vec::new());
        }
    }
    raw.iter()
        .map(|h| {
            h.trim().parse::<usize>().ok().filter(|&w| w > 0).ok_or_else(|| {
                mep::MepError::invalid(
                    "hidden",
                    format!("{:?} in {:?}", h, raw.join(",")),
                    "a comma-separated list of positive widths, e.g. 128 or 256,128 (or \"\" for none)",
                )
            })
        })
        .collect()
}

/// The model the flags describe, for data of `inputs` features and `classes` classes.
fn build_model(
    device: &Device,
    args: &Args,
    hidden: &[usize],
    inputs: usize,
    classes: usize,
) -> mep::Result<mep::Model> {
    let mut builder = Sequential::new(device).flatten();
    let mut width = inputs;
    for &h in hidden {
        builder = builder.linear(width, h).activation(args.activation);
        width = h;
    }
    let energy = match args.energy {
        EnergyArg::Layered => Energy::LayeredLeastSquares,
        EnergyArg::Hopfield => Energy::Hopfield {
            free_steps: args.free_steps.unwrap_or(mep::ep::DEFAULT_FREE_STEPS),
        },
    };
    builder.linear(width, classes).energy(energy).build(args.seed)
}

/// The optimizer the flags describe, for `model` and `train_len` training samples.
fn build_optimizer(args: &Args, model: &mep::Model, train_len: usize) -> mep::Result<mep::Optimizer> {
    let preset = match args.optimizer {
        OptName::Smep => mep::smep(model),
        OptName::Sgd => mep::sgd(model),
        OptName::Adam => mep::adam(model),
    };
    configure(args, train_len, preset)?.build()
}

/// Builds the model and optimizer the flags describe on a stand-in of the data (its
/// known sizes: 784 inputs for MNIST, 3072 for CIFAR-10, ten classes; one sample; on
/// the CPU), so that a hyper-parameter the optimizer refuses is reported before the
/// data loads, not after; the real build checks everything again. IDX data's sizes
/// are not known before it loads (a stand-in's would show in messages as if they
/// were), and a stand-in of more than [`STAND_IN_MAX_PARAMS`] parameters would cost
/// memory and time of its own: both are checked when the real model is built.
fn check_configuration(args: &Args, hidden: &[usize]) -> mep::Result<()> {
    let inputs = match args.dataset {
        DatasetArg::Mnist => 784,
        DatasetArg::Cifar10 => 3 * 32 * 32,
        DatasetArg::Idx => return Ok(()),
    };
    let widths: Vec<usize> = std::iter::once(inputs)
        .chain(hidden.iter().copied())
        .chain([10])
        .collect();
    let params = widths
        .windows(2)
        .try_fold(0usize, |n, w| n.checked_add(w[0].checked_mul(w[1])?.checked_add(w[1])?));
    if !matches!(params, Some(n) if n <= STAND_IN_MAX_PARAMS) {
        return Ok(());
    }
    let model = build_model(&Device::Cpu, args, hidden, inputs, 10)?;
    build_optimizer(args, &model, 1).map(|_| ())
}

/// The largest stand-in [`check_configuration`] builds: 4 Mi parameters (16 MiB in
/// f32, a few times that with the optimizer's state; tens of milliseconds).
const STAND_IN_MAX_PARAMS: usize = 1 << 22;

fn configure<'m>(args: &Args, train_len: usize, mut b: OptimizerBuilder<'m>) -> mep::Result<OptimizerBuilder<'m>> {
    if let ScheduleArg::Cosine = args.schedule {
        let per_epoch = train_len.div_ceil(args.batch_size.max(1)) as u64;
        // --epochs 0 (evaluation with --load) trains nothing; the schedule is then moot.
        let total_steps = args.epochs.max(1).checked_mul(per_epoch).ok_or_else(|| {
            mep::MepError::invalid(
                "epochs",
                args.epochs,
                format!("epochs × {per_epoch} steps per epoch overflows the cosine schedule's step count"),
            )
        })?;
        b = b.schedule(Schedule::Cosine { total_steps });
    }
    b = b.mode(match args.mode {
        ModeArg::Ep => Mode::Ep,
        ModeArg::Backprop => Mode::Backprop,
    });
    if let Some(v) = args.beta {
        b = b.beta(v);
    }
    if let Some(v) = args.settle_steps {
        b = b.settle_steps(v);
    }
    if let Some(v) = args.nudging {
        b = b.nudging(match v {
            NudgingArg::OneSided => Nudging::OneSided,
            NudgingArg::Symmetric => Nudging::Symmetric,
            NudgingArg::Negative => Nudging::Negative,
            NudgingArg::Contrastive => Nudging::Contrastive,
            NudgingArg::CoupledPositive => Nudging::CoupledPositive,
            NudgingArg::CoupledNegative => Nudging::CoupledNegative,
            NudgingArg::CoupledCentered => Nudging::CoupledCentered,
        });
    }
    b = b.loss(match args.loss {
        Loss::CrossEntropy { .. } => Loss::CrossEntropy {
            label_smoothing: args.label_smoothing.unwrap_or(0.0),
        },
        other => other,
    });
    if let Some(v) = args.lr {
        b = b.lr(v);
    }
    if let Some(v) = args.bias_lr {
        b = b.bias_lr(v);
    }
    if let Some(v) = args.settle_lr {
        b = b.settle_lr(v);
    }
    if let Some(v) = args.momentum {
        b = b.momentum(v);
    }
    if let Some(v) = args.nesterov {
        b = b.nesterov(v);
    }
    if let Some(v) = args.muon_scale {
        b = b.muon_scale(match v {
            ScaleArg::Spectral => MuonScale::SpectralCondition,
            ScaleArg::KellerJordan => MuonScale::KellerJordan,
        });
    }
    if let Some(v) = args.ns_steps {
        b = b.ns_steps(v);
    }
    if let Some(v) = args.weight_decay {
        b = b.weight_decay(v);
    }
    if let Some(v) = args.gamma {
        b = b.gamma(v);
    }
    if let Some(v) = args.spectral_layers {
        b = b.spectral_layers(match v {
            SpectralArg::Off => SpectralLayers::Off,
            SpectralArg::Output => SpectralLayers::Output,
            SpectralArg::All => SpectralLayers::All,
            SpectralArg::Couplings => SpectralLayers::Couplings,
            SpectralArg::Auto => SpectralLayers::Auto,
        });
    }
    Ok(b)
}

/// Standard output that never panics: the first write error (e.g. a closed pipe,
/// `mep-mnist … | head -n 1`) is kept, later output is dropped, and the run stops
/// training cleanly (the model is still saved) and then reports it.
struct Out {
    failed: Option<std::io::Error>,
}

impl Out {
    fn line(&mut self, s: impl std::fmt::Display) {
        use std::io::Write;
        if self.failed.is_none() {
            let mut o = std::io::stdout().lock();
            if let Err(e) = writeln!(o, "{s}").and_then(|_| o.flush()) {
                self.failed = Some(e);
            }
        }
    }
}

/// Saves the model to `path`; if that fails, writes it next to the system's temporary
/// directory instead so the trained weights are not lost, and says where.
fn save_or_rescue(path: &std::path::Path, save: impl Fn(&std::path::Path) -> mep::Result<()>) -> mep::Result<()> {
    let Err(e) = save(path) else {
        return Ok(());
    };
    let rescue = std::env::temp_dir().join(format!(
        "mep-rescued-{}-{}.safetensors",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    ));
    match save(&rescue) {
        Ok(()) => Err(mep::MepError::invalid(
            "save",
            path.display(),
            format!("{e}; the trained weights were written to {} instead", rescue.display()),
        )),
        Err(e2) => Err(mep::MepError::invalid(
            "save",
            path.display(),
            format!("{e}; writing them to {} failed too: {e2}", rescue.display()),
        )),
    }
}

/// `e` with its argument named `name` (the flag) when it is an invalid argument.
fn renamed(name: &'static str, e: mep::MepError) -> mep::MepError {
    match e {
        mep::MepError::InvalidArgument { value, fix, .. } => mep::MepError::invalid(name, value, fix),
        e => e,
    }
}

/// Checks that `path` can be written (see [`mep::io::check_writable`]), naming option
/// `name` in the error.
fn check_writable_as(name: &'static str, path: &std::path::Path) -> mep::Result<()> {
    match mep::io::check_writable(path) {
        Ok(()) => Ok(()),
        Err(mep::MepError::InvalidArgument { value, fix, .. }) => Err(mep::MepError::invalid(name, value, fix)),
        Err(e) => Err(mep::MepError::invalid(
            name,
            path.display(),
            format!("cannot be written: {e}"),
        )),
    }
}

/// The test evaluation. The library refuses a loss that is not finite (the model's
/// outputs overflowed); this says when, and what to do in `mep-mnist`'s terms.
fn evaluate_test(
    model: &mep::Model,
    test: &mep::model::DeviceDataset,
    when: &str,
) -> mep::Result<mep::train::Evaluation> {
    model.evaluate_on(test).map_err(|e| match e {
        mep::MepError::NonFinite(m) => mep::MepError::NonFinite(format!(
            "test loss {when}: {m}; the model diverged or its weights overflow the outputs (check the checkpoint, or train with a lower --lr or with the spectral constraint on)"
        )),
        e => e,
    })
}

/// A line on standard error, `mep-mnist: …` (never panics).
/// Says what continuing the metrics CSV at `path` for a run resumed after `start`
/// epochs kept and dropped, where that is not simply "all of it".
fn report_continued(path: &std::path::Path, start: u64, found: &mep::metrics::Continued) {
    let p = path.display();
    if !found.existed && start > 0 {
        notice(format_args!(
            "note: {p} did not exist: its rows start at epoch {}",
            start + 1
        ));
    }
    if found.partial_line {
        notice(format_args!(
            "dropped the last line of {p}, a row cut off without its newline (the run that wrote it stopped mid-row)"
        ));
    }
    if let Some((a, b)) = found.dropped_epochs {
        let epochs = if a == b {
            format!("epoch {a}")
        } else {
            format!("epochs {a}–{b}")
        };
        notice(format_args!(
            "dropped {} of {epochs} from {p}: the checkpoint resumed is at epoch {start}",
            plural(found.dropped as u64, "row")
        ));
    }
    if found.existed && found.last_epoch < start {
        notice(format_args!(
            "note: {p} has epoch rows up to epoch {} only and the checkpoint is at epoch {start}: the curves have a gap",
            found.last_epoch
        ));
    }
}

/// A checkpoint's refusal of this run's normalisation, in the flags' terms: `--dataset
/// mnist` always uses MNIST's constants (so the fix is `--dataset idx --normalize`),
/// and without `--normalize` the value refused was computed, not typed.
fn explain_normalization(e: mep::MepError, args: &Args, shape: &mep::checkpoint::DataShape) -> mep::MepError {
    let mep::MepError::InvalidArgument {
        name: "normalize", fix, ..
    } = &e
    else {
        return e;
    };
    let Some(now) = shape.normalization else { return e };
    let how = match (args.dataset, args.normalize) {
        (DatasetArg::Mnist, _) => "MNIST's constants, as --dataset mnist always uses",
        (_, Some(_)) => "given by --normalize",
        (_, None) => "computed from the training pixels",
    };
    let fix = match args.dataset {
        // The checkpoint's own numbers, from the message's `--normalize M,S`.
        DatasetArg::Mnist => fix.replace("(mep-mnist: --normalize", "(mep-mnist: --dataset idx --normalize"),
        _ => fix.clone(),
    };
    mep::MepError::invalid("normalize", format!("{},{} ({how})", now.mean, now.std), fix)
}

/// Says that metrics could not be recorded and that training goes on without them.
fn metrics_failed(e: &mep::MepError) {
    notice(format_args!(
        "warning: metrics are no longer recorded ({e}); training goes on and is saved, and the run ends with this error"
    ));
}

fn notice(s: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "mep-mnist: {s}");
}

/// `10k` for 10 000, else the number.
fn count_text(n: usize) -> String {
    if n >= 1000 && n % 1000 == 0 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// Loads `--dataset` from `--data-dir`; for data other than MNIST prints a one-line
/// notice of what was loaded on standard error.
fn load_data(args: &Args) -> mep::Result<mep::DataSplits> {
    let dir = match (&args.data_dir, args.dataset) {
        (Some(d), _) => d.clone(),
        (None, DatasetArg::Mnist) => PathBuf::from(mep::data::DEFAULT_DATA_DIR),
        (None, other) => {
            return Err(mep::MepError::invalid(
                "data-dir",
                "missing",
                format!(
                    "--dataset {} needs --data-dir DIR, the directory holding the data files",
                    format!("{other:?}").to_lowercase()
                ),
            ))
        }
    };
    let data = match args.dataset {
        DatasetArg::Mnist => {
            if let Some(n) = args.normalize {
                return Err(mep::MepError::invalid(
                    "normalize",
                    format!("{},{}", n.mean, n.std),
                    "--dataset mnist is normalised with MNIST's constants (0.1307, 0.3081); use --dataset idx to load the same files with another normalisation",
                ));
            }
            return mep::DataSplits::load_mnist(&dir);
        }
        DatasetArg::Idx => mep::DataSplits::load_idx(&dir, args.normalize)?,
        DatasetArg::Cifar10 => mep::DataSplits::load_cifar10(&dir, args.normalize)?,
    };
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "mep-mnist: loaded {}", data.summary());
    Ok(data)
}

fn run(args: Args) -> mep::Result<()> {
    let device = if args.device.eq_ignore_ascii_case("auto") {
        Device::auto()
    } else {
        args.device.parse()?
    };
    check_conflicts(&args)?;
    let hidden = parse_hidden(&args.hidden)?;
    check_configuration(&args, &hidden)?;
    if let Some(path) = &args.save {
        // Before hours of training, not after: a bad destination must not lose the model.
        mep::io::check_writable(path)?;
    }
    // Likewise the files written after training (--plot) or from its first step on
    // (--metrics, created once the model is built).
    for (name, path) in [("plot", &args.plot), ("metrics", &args.metrics)] {
        if let Some(path) = path {
            check_writable_as(name, path)?;
        }
    }
    // The pictures are PNG files: another extension is refused before any work.
    for (name, path) in [("plot", &args.plot), ("sample-out", &args.sample_out)] {
        if let Some(path) = path {
            mep::plot::check_png_path(path).map_err(|e| renamed(name, e))?;
        }
    }
    if let (Some(n), DatasetArg::Cifar10) = (args.show_sample, &args.dataset) {
        // Known before the data loads: CIFAR-10's samples are colour images.
        return Err(mep::MepError::invalid(
            "show-sample",
            n,
            "CIFAR-10's samples are colour images (3×32×32) and only greyscale images can be drawn: drop --show-sample",
        ));
    }
    // Before the data loads: a missing checkpoint is a typo or a first run.
    for (name, path, fix) in [
        (
            "resume",
            &args.resume,
            "no checkpoint there, so nothing to resume: check the path, or drop --resume to start the run (--save PATH writes the checkpoint a later --resume PATH continues)",
        ),
        (
            "load",
            &args.load,
            "no weights file there: check the path (--save PATH or Model::save writes one)",
        ),
    ] {
        if let Some(path) = path.as_ref().filter(|p| !p.is_file()) {
            return Err(mep::MepError::invalid(name, path.display(), fix));
        }
    }
    let t_load = Instant::now();
    let mut data = load_data(&args)?;
    if let Some(n) = args.train_subset {
        if n > data.train.len() {
            return Err(mep::MepError::invalid(
                "train-subset",
                n,
                format!(
                    "the training set has only {}",
                    plural(data.train.len() as u64, "sample")
                ),
            ));
        }
        data.train = data.train.subset(n);
    }
    if args.epochs > 0 && args.batch_size > data.train.len() {
        notice(format_args!(
            "note: --batch-size {} exceeds the {}: every step uses all of them",
            args.batch_size,
            plural(data.train.len() as u64, "training sample")
        ));
    }
    let load_s = t_load.elapsed().as_secs_f64();
    if let Some(n) = args.show_sample {
        let path = args
            .sample_out
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("sample-{n}.png")));
        mep::plot::write_sample_png(&data.train, n, &path).map_err(|e| match e {
            // The library names its argument (`index`); the user typed --show-sample.
            // Likewise a data set that is not greyscale images (`data`).
            mep::MepError::InvalidArgument {
                name: "index" | "data", ..
            } => renamed("show-sample", e),
            e => e,
        })?;
        if !args.json {
            println!(
                "wrote training image {n} (label {}) to {}",
                data.train.labels()[n],
                path.display()
            );
        }
    }

    let mut model = build_model(&device, &args, &hidden, data.train.features(), data.train.classes())?;
    let mut opt = build_optimizer(&args, &model, data.train.len())?;

    let epoch_flops = mep::flops::epoch_flops(
        model.arch(),
        model.energy(),
        &opt.config(),
        data.train.len(),
        args.batch_size.max(1),
    );
    let train = model.upload(&data.train)?;
    let test = model.upload(&data.test)?;
    let mut out = Out { failed: None };
    if !args.json && args.epochs == 0 {
        // Evaluation only: no optimizer, mode or batch size applies.
        out.line(format_args!(
            "mep-mnist: {} on {} | {} | evaluating on {} test samples (loaded in {load_s:.2} s)",
            model.arch().describe(),
            model.backend_name(),
            model.energy().name(),
            test.len()
        ));
    } else if !args.json {
        out.line(format_args!(
            "mep-mnist: {} on {} | {:?} {:?} {} | batch {} | {} train / {} test samples (loaded in {load_s:.2} s)",
            model.arch().describe(),
            model.backend_name(),
            args.optimizer,
            args.mode,
            model.energy().name(),
            args.batch_size,
            train.len(),
            test.len()
        ));
    }
    let mut last_rate = None;
    // With the normalisation: a checkpoint records it, and a resume or load with
    // inputs normalised otherwise is refused by name.
    let shape = mep::checkpoint::DataShape::of(&data.train).with_normalization(data.normalization);
    let shuffle = Shuffle::Seeded(args.seed);
    let mut start = 0;
    // Epochs behind the weights: a resumed run's, or those a loaded checkpoint records.
    let mut trained_before = None;
    if let Some(path) = &args.load {
        let info = mep::checkpoint::load_model(path, &mut model, Some(&shape))
            .map_err(|e| explain_normalization(e, &args, &shape))?;
        trained_before = info.run.map(|r| r.epochs_done);
        notice(format_args!(
            "loaded the weights of {}{}",
            path.display(),
            match info.run {
                Some(r) => format!(" (trained {})", plural(r.epochs_done, "epoch")),
                None => String::new(),
            }
        ));
    }
    if let Some(path) = &args.resume {
        // The run's own settings (batch size, training samples) are compared before
        // the optimizer's, so a different --batch-size is named as such.
        let run = mep::checkpoint::resume_continuing(
            path,
            &mut model,
            &mut opt,
            &shape,
            shuffle,
            args.batch_size,
            train.len(),
        )
        .map_err(|e| explain_normalization(e, &args, &shape))?;
        start = run.epochs_done;
        trained_before = Some(start);
        notice(format_args!(
            "resuming {} after epoch {} of {} (optimizer step {})",
            path.display(),
            start,
            args.epochs,
            opt.steps()
        ));
        if start >= args.epochs {
            notice(format_args!(
                "the checkpoint has trained {}, --epochs {} (the run's total) {} done: evaluating only",
                plural(start, "epoch"),
                args.epochs,
                if args.epochs == 1 { "is" } else { "are" }
            ));
        }
    }
    // A resumed run continues its metrics file (the rows of the epochs it has done
    // kept, so the CSV and the curves cover the whole run); a new run starts one.
    let mut log = match (&args.metrics, &args.resume) {
        (Some(path), Some(_)) => {
            let at = mep::metrics::RunPoint {
                epochs: start,
                steps: opt.steps(),
                samples: start * train.len() as u64,
            };
            let (log, found) = mep::metrics::MetricsLog::continue_csv(path, at)?;
            report_continued(path, start, &found);
            log
        }
        (Some(path), None) => mep::metrics::MetricsLog::to_csv(path)?,
        (None, _) => {
            if let (Some(plot), Some(_)) = (&args.plot, &args.resume) {
                if start < args.epochs {
                    notice(format_args!(
                        "note: without --metrics, {} shows only the epochs of this invocation (give --metrics PATH, the same on every resume, to keep the whole run's curves)",
                        plot.display()
                    ));
                }
            }
            mep::metrics::MetricsLog::new()
        }
    };
    // The first failure to record metrics (a full disk, say): reported once, then
    // metrics stop and training goes on, so the epoch and its checkpoint are not
    // lost; the run still ends with the error, after everything else.
    let mut metrics_err: Option<mep::MepError> = None;
    let end = args
        .epochs
        .min(start.saturating_add(args.stop_after.unwrap_or(u64::MAX)));
    let save_checkpoint = |model: &mep::Model, opt: &mep::Optimizer, epochs_done: u64| -> mep::Result<()> {
        let Some(path) = &args.save else { return Ok(()) };
        let run = mep::checkpoint::RunState {
            epochs_done,
            shuffle,
            batch_size: args.batch_size,
            train_samples: train.len(),
        };
        save_or_rescue(path, |p| {
            mep::checkpoint::save(p, model, opt, &run, &shape, args.save_dtype)
        })
    };
    let mut saved_at = None;
    let mut done = start;
    let mut samples_seen = start * train.len() as u64;
    for epoch in start..end {
        if out.failed.is_some() {
            // Nobody reads the output any more: stop, but still save below.
            break;
        }
        let steps_before = opt.steps();
        let steps = train.len().div_ceil(args.batch_size.max(1));
        let bar = if args.json {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::new(steps as u64);
            bar.set_style(
                ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(format!("{}/{}", epoch + 1, args.epochs));
            bar
        };
        let report = opt.train_epoch(
            &mut model,
            &train,
            args.batch_size,
            Shuffle::Seeded(args.seed),
            epoch,
            args.report_every,
            |step, _, s| {
                bar.set_position(step as u64);
                bar.set_message(format!("loss {:.4} acc {:.2}%", s.loss, 100.0 * s.accuracy));
                if metrics_err.is_none() {
                    if let Err(e) = log.record_progress(epoch, samples_seen, steps_before + step as u64, s) {
                        bar.suspend(|| metrics_failed(&e));
                        metrics_err = Some(e);
                    }
                }
            },
        )?;
        bar.finish_and_clear();
        let t_eval = Instant::now();
        let eval = evaluate_test(&model, &test, &format!("after epoch {}", epoch + 1))?;
        let eval_s = t_eval.elapsed().as_secs_f64();
        samples_seen += report.train.samples;
        if metrics_err.is_none() {
            if let Err(e) = log.record_epoch(epoch, samples_seen, opt.steps(), report.train, eval) {
                metrics_failed(&e);
                metrics_err = Some(e);
            }
        }
        let sps = report.train.samples as f64 / report.seconds;
        last_rate = Some(epoch_flops / report.seconds);
        done = epoch + 1;
        save_checkpoint(&model, &opt, done)?;
        saved_at = Some(done);
        if args.json {
            out.line(serde_json::json!({
                "epoch": epoch + 1,
                "backend": model.backend_name(),
                "train_loss": report.train.loss,
                "train_acc": report.train.accuracy,
                "test_acc": eval.accuracy,
                "test_loss": eval.loss,
                "epoch_seconds": report.seconds,
                "eval_seconds": eval_s,
                "samples_per_sec": sps,
                "steps_per_sec": report.train.samples.div_ceil(args.batch_size as u64) as f64 / report.seconds,
                "gflop_per_sec": epoch_flops / report.seconds / 1e9,
                "settle_residual": report.train.settle_residual,
                "free_residual": report.train.free_residual,
            }));
        } else {
            out.line(format_args!(
                "epoch {}: train loss {:.4} | train acc {:.2}% | test acc {:.2}% ({}) | {:.3} s training, {:.0} samples/s, {:.1} GFLOP/s | eval {:.3} s",
                epoch + 1,
                report.train.loss,
                100.0 * report.train.accuracy,
                100.0 * eval.accuracy,
                count_text(test.len()),
                report.seconds,
                sps,
                epoch_flops / report.seconds / 1e9,
                eval_s
            ));
        }
    }
    if args.gemm_rate && out.failed.is_none() {
        let gemms = mep::flops::step_gemms(model.arch(), model.energy(), &opt.config(), args.batch_size.max(1))?;
        let rate = model.gemm_rate(&gemms, 20)?;
        let achieved = last_rate.unwrap_or(0.0);
        if args.json {
            out.line(serde_json::json!({
                "gemm_rate_gflop_per_sec": rate / 1e9,
                "train_gflop_per_sec": achieved / 1e9,
                "fraction_of_gemm_rate": achieved / rate,
            }));
        } else {
            out.line(format_args!(
                "GEMMs of one step alone: {:.1} GFLOP/s; training achieved {:.1} GFLOP/s = {:.0}% of it",
                rate / 1e9,
                achieved / 1e9,
                100.0 * achieved / rate
            ));
        }
    }
    if done == start && out.failed.is_none() {
        // No epoch ran (--load with --epochs 0, or a finished run resumed): evaluate.
        let eval = evaluate_test(&model, &test, "of the loaded model")?;
        if args.json {
            out.line(serde_json::json!({
                "epochs_done": trained_before,
                "backend": model.backend_name(),
                "test_acc": eval.accuracy,
                "test_loss": eval.loss,
                "test_samples": test.len(),
            }));
        } else {
            out.line(format_args!(
                "evaluation{}: test acc {:.2}% | test loss {:.4} ({} test samples)",
                match trained_before {
                    Some(n) => format!(" after {}", plural(n, "epoch")),
                    None => String::new(),
                },
                100.0 * eval.accuracy,
                eval.loss,
                count_text(test.len())
            ));
        }
    }
    if let Some(path) = &args.plot {
        // The flags' own spellings (`smep ep`), not the Rust names.
        let flag = |v: Option<clap::builder::PossibleValue>| v.map(|p| p.get_name().to_string()).unwrap_or_default();
        let title = format!(
            "mep-mnist: {}, {} {} {}, batch {}, seed {}",
            model.arch().describe(),
            flag(args.optimizer.to_possible_value()),
            flag(args.mode.to_possible_value()),
            model.energy().name(),
            args.batch_size,
            args.seed
        );
        let loss_name = match model.loss() {
            Loss::CrossEntropy { .. } => "cross-entropy",
            Loss::SquaredError => "squared error",
        };
        if log.rows().is_empty() {
            // A finished run resumed only evaluates: nothing new to draw, and the
            // picture it drew before is left as it is.
            notice(format_args!(
                "no epoch ran, so there are no curves to draw: {} is not drawn (with --metrics, a resumed run's curves cover its earlier epochs too)",
                path.display()
            ));
        } else {
            mep::plot::plot_curves(log.rows(), &title, loss_name, path)?;
            if !args.json {
                println!("wrote curves to {}", path.display());
            }
        }
    }
    if let Some(path) = &args.save {
        if saved_at != Some(done) {
            save_checkpoint(&model, &opt, done)?;
        }
        if !args.json {
            out.line(format_args!(
                "saved a resumable checkpoint (epoch {done}) to {}",
                path.display()
            ));
        }
    }
    match (out.failed, metrics_err) {
        (Some(e), _) => Err(mep::MepError::io("<standard output>", e)),
        (None, Some(e)) => Err(e),
        (None, None) => Ok(()),
    }
}

/// `--threads` may oversubscribe the cores (with a warning) up to this many per core;
/// beyond, a pool of spinning threads only looks hung.
const MAX_THREADS_PER_CORE: usize = 8;

/// Runs `run` on a worker of a rayon pool of `threads` threads: the CPU backend
/// takes its thread count from the pool it runs in, and data loading forks on it.
fn run_in_pool(args: Args) -> mep::Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    if threads == 0 {
        return Err(mep::MepError::invalid("threads", 0, "must be at least 1"));
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let max = MAX_THREADS_PER_CORE * cores;
    if threads > max {
        return Err(mep::MepError::invalid(
            "threads",
            threads,
            format!(
                "at most {max} ({MAX_THREADS_PER_CORE} × the {}): more threads only take turns on the same cores",
                plural(cores as u64, "available core")
            ),
        ));
    }
    if threads > cores {
        // Applied as asked, but oversubscription makes every step slower (measured:
        // 1000 threads on 2 cores, ~1000× slower); say so.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "mep-mnist: warning: --threads {threads} exceeds the {}; training will be slower than with --threads {cores}",
            plural(cores as u64, "available core")
        );
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| mep::MepError::invalid("threads", threads, format!("cannot start the thread pool: {e}")))?;
    pool.install(|| run(args))
}

fn main() {
    let matches = Args::command().get_matches();
    let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    args.given = given_options(&matches);
    args.hidden_uses = matches.get_raw_occurrences("hidden").map_or(0, |o| o.count());
    if let Err(e) = run_in_pool(args) {
        // The library names its options as its setters do (`bias_lr`); the flags are
        // spelled with hyphens (`--bias-lr`).
        let e = match e {
            mep::MepError::InvalidArgument { name, value, fix } if name.contains('_') => {
                let flag: &'static str = Box::leak(name.replace('_', "-").into_boxed_str());
                mep::MepError::invalid(flag, value, fix)
            }
            e => e,
        };
        // A closed standard error must not turn the error into a panic.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "mep-mnist: error: {e}");
        std::process::exit(1);
    }
}
