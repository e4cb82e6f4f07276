//! From flags to objects: the data set, the model and the optimizer the flags
//! describe, with the hyper-parameters checked before the data loads.

use crate::args::*;
use crate::report::{check_writable_as, renamed};
use mep::optim::{OptimizerBuilder, Schedule};
use mep::{Device, Energy, Loss, Mode, MuonScale, Nudging, Sequential, SpectralLayers};
use std::path::PathBuf;

/// The model the flags describe, for data of `inputs` features and `classes` classes.
pub(crate) fn build_model(
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
pub(crate) fn build_optimizer(args: &Args, model: &mep::Model, train_len: usize) -> mep::Result<mep::Optimizer> {
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
pub(crate) fn check_configuration(args: &Args, hidden: &[usize]) -> mep::Result<()> {
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
pub(crate) const STAND_IN_MAX_PARAMS: usize = 1 << 22;

pub(crate) fn configure<'m>(
    args: &Args,
    train_len: usize,
    mut b: OptimizerBuilder<'m>,
) -> mep::Result<OptimizerBuilder<'m>> {
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

/// Loads `--dataset` from `--data-dir`; for data other than MNIST prints a one-line
/// notice of what was loaded on standard error.
pub(crate) fn load_data(args: &Args) -> mep::Result<mep::DataSplits> {
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

/// Everything that can be checked before the data loads, so that a typo costs no
/// loading or training: conflicting flags, the hyper-parameters (on a stand-in of the
/// data), the files the run will write, and the checkpoints it will read. Returns the
/// hidden widths.
pub(crate) fn preflight(args: &Args) -> mep::Result<Vec<usize>> {
    check_conflicts(args)?;
    let hidden = parse_hidden(&args.hidden)?;
    check_configuration(args, &hidden)?;
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
    Ok(hidden)
}
