//! The command line: the flags (`clap`), and the checks that refuse combinations
//! that would be accepted and then ignored.

use clap::parser::ValueSource;
use clap::{CommandFactory, Parser, ValueEnum};
use mep::{Activation, Loss};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum OptName {
    Smep,
    Sgd,
    Adam,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum ModeArg {
    Ep,
    Backprop,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum EnergyArg {
    Layered,
    Hopfield,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum NudgingArg {
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
pub(crate) enum ScaleArg {
    Spectral,
    KellerJordan,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum ScheduleArg {
    Constant,
    Cosine,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum DatasetArg {
    /// MNIST from --data-dir (default data/mnist), verified by SHA-256.
    Mnist,
    /// Any four IDX files with MNIST's names in --data-dir (raw or .gz): any image shape and class count, no checksum.
    Idx,
    /// CIFAR-10's binary version in --data-dir (data_batch_1..5.bin, test_batch.bin).
    Cifar10,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum SpectralArg {
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
pub(crate) struct Args {
    /// Optimizer preset.
    #[arg(long, value_enum, default_value = "smep")]
    pub(crate) optimizer: OptName,
    /// EP or backprop gradients.
    #[arg(long, value_enum, default_value = "ep")]
    pub(crate) mode: ModeArg,
    /// Energy: layered least squares or Hopfield.
    #[arg(long, value_enum, default_value = "layered")]
    pub(crate) energy: EnergyArg,
    /// Free-phase sweeps of the Hopfield energy (default 50; Hopfield only).
    #[arg(long)]
    pub(crate) free_steps: Option<usize>,
    /// The learning rule (EP mode only): one-sided (PEP), negative (NEP), symmetric (CEP), contrastive (CL), coupled-* (CpL) [default: one-sided with one hidden layer, symmetric with more].
    #[arg(long, value_enum)]
    pub(crate) nudging: Option<NudgingArg>,
    /// Hidden widths, comma-separated (any depth; empty for none).
    #[arg(long, default_value = "128", value_delimiter = ',')]
    pub(crate) hidden: Vec<String>,
    /// Hidden activation: relu, sigmoid, tanh, hardsigmoid, identity.
    #[arg(long, default_value = "relu")]
    pub(crate) activation: Activation,
    /// Total epochs of the run (with --resume: counting those already done; 0 with --load: evaluate only).
    #[arg(long, default_value_t = 1)]
    pub(crate) epochs: u64,
    /// Stop after this many epochs of this invocation, to continue later with --resume (the run's length, e.g. for --schedule cosine, stays --epochs).
    #[arg(long, value_name = "N")]
    pub(crate) stop_after: Option<u64>,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    pub(crate) batch_size: usize,
    /// Learning rate of the weight matrices (default: 0.05 for smep, 0.01 for sgd, 1e-3 for adam).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) lr: Option<f64>,
    /// Learning rate of the biases (default: 1e-3 Adam for smep; lr for sgd/adam).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) bias_lr: Option<f64>,
    /// Nudging strength β (default 0.5; EP mode only).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) beta: Option<f64>,
    /// Nudged-phase settle steps (default 15; EP mode only).
    #[arg(long)]
    pub(crate) settle_steps: Option<usize>,
    /// Relaxation ω in (0, 1] of the layered energy's nudged-phase sweeps [default: 0.5] (EP mode, layered energy only).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) settle_lr: Option<f64>,
    /// Loss: cross_entropy or squared_error.
    #[arg(long, default_value = "cross_entropy")]
    pub(crate) loss: Loss,
    /// Label smoothing (default 0; cross-entropy only).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) label_smoothing: Option<f64>,
    /// Momentum (smep, sgd).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) momentum: Option<f64>,
    /// Nesterov momentum on/off (smep, sgd).
    #[arg(long)]
    pub(crate) nesterov: Option<bool>,
    /// Muon update scale (smep).
    #[arg(long, value_enum)]
    pub(crate) muon_scale: Option<ScaleArg>,
    /// Newton–Schulz iterations of Muon's orthogonalisation (smep; default 5).
    #[arg(long)]
    pub(crate) ns_steps: Option<usize>,
    /// Decoupled weight decay.
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) weight_decay: Option<f64>,
    /// Spectral bound γ.
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) gamma: Option<f64>,
    /// Which matrices the spectral constraint covers.
    #[arg(long, value_enum)]
    pub(crate) spectral_layers: Option<SpectralArg>,
    /// Learning-rate schedule: constant, or cosine decay to 0 over all epochs.
    #[arg(long, value_enum, default_value = "constant")]
    pub(crate) schedule: ScheduleArg,
    /// Seed (model initialisation and shuffling).
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// CPU threads (default: all cores; on a machine whose cores are busy with other
    /// work, 1 is faster: the threads wait for each other every few microseconds).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub(crate) device: String,
    /// The data set: mnist (SHA-256 verified), idx (your own IDX files) or cifar10.
    #[arg(long, value_enum, default_value = "mnist")]
    pub(crate) dataset: DatasetArg,
    /// Directory with the data files [default for --dataset mnist: data/mnist; required otherwise].
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Normalise pixels as (x/255 − MEAN)/STD [default: computed from the training split; --dataset idx or cifar10 only].
    #[arg(long, value_name = "MEAN,STD", allow_hyphen_values = true)]
    pub(crate) normalize: Option<mep::Normalization>,
    /// Train on the first N training samples only.
    #[arg(long)]
    pub(crate) train_subset: Option<usize>,
    /// Save a resumable checkpoint (safetensors: weights, optimizer state, run position) here at the end of every epoch, atomically (checked writable before training).
    #[arg(long)]
    pub(crate) save: Option<PathBuf>,
    /// Continue the run saved in this checkpoint (by --save): same flags, --epochs the run's total.
    #[arg(long, value_name = "PATH")]
    pub(crate) resume: Option<PathBuf>,
    /// Start from the weights of this checkpoint (any --save or Model::save file) with a fresh optimizer; with --epochs 0, only evaluate them.
    #[arg(long, value_name = "PATH")]
    pub(crate) load: Option<PathBuf>,
    /// Element type of the saved weights: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub(crate) save_dtype: mep::io::Dtype,
    /// After training, time the step's GEMM shapes alone on the same device and report
    /// the training's GEMM FLOP rate as a fraction of it.
    #[arg(long)]
    pub(crate) gemm_rate: bool,
    /// Print one JSON object per epoch instead of the progress display.
    #[arg(long)]
    pub(crate) json: bool,
    /// Write metrics as CSV here: a `step` row every --report-every steps (mean over
    /// the batches since the previous row) and an `epoch` row with the test evaluation.
    #[arg(long)]
    pub(crate) metrics: Option<PathBuf>,
    /// Steps between progress updates and metrics rows (0: only at the end of each epoch).
    #[arg(long, default_value_t = 50)]
    pub(crate) report_every: usize,
    /// Draw the training and test curves (loss and accuracy against samples seen) as a PNG here.
    #[arg(long)]
    pub(crate) plot: Option<PathBuf>,
    /// Write training image N with its label as a PNG (see --sample-out) before training.
    #[arg(long)]
    pub(crate) show_sample: Option<usize>,
    /// Where --show-sample writes (default: sample-N.png).
    #[arg(long)]
    pub(crate) sample_out: Option<PathBuf>,
    /// The options given on the command line (not defaults): (id, value as given).
    #[arg(skip)]
    pub(crate) given: Vec<(String, String)>,
    /// How many times --hidden was given.
    #[arg(skip)]
    pub(crate) hidden_uses: usize,
}

/// Options that still apply with `--epochs 0 --load PATH` (evaluation only): those
/// that build the model (its architecture, energy and free phase), choose the test
/// data and the reported loss, and say where and how to run. Everything else
/// configures training and would be ignored.
pub(crate) const EVAL_OPTIONS: [&str; 16] = [
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
pub(crate) fn flag_name(id: &str) -> &'static str {
    // Only for an error message, once per run.
    Box::leak(id.replace('_', "-").into_boxed_str())
}

/// The options that `matches` got from the command line, with their values as given.
pub(crate) fn given_options(matches: &clap::ArgMatches) -> Vec<(String, String)> {
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
pub(crate) fn given<'a>(args: &'a Args, id: &str) -> Option<&'a str> {
    args.given.iter().find(|(g, _)| g == id).map(|(_, v)| v.as_str())
}

/// Options that would be accepted and then ignored are refused, naming the conflict.
pub(crate) fn check_conflicts(args: &Args) -> mep::Result<()> {
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
pub(crate) fn parse_hidden(raw: &[String]) -> mep::Result<Vec<usize>> {
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
