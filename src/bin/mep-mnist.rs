//! `mep-mnist`: the MNIST benchmark. With no flags it runs exactly the user's
//! tutorial: Flatten–784–128–ReLU–10, batch 64, one epoch, `smep` with lr 0.05,
//! β 0.5, 15 settle steps, cross-entropy, EP mode, seed 0.

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mep::optim::{OptimizerBuilder, Schedule};
use mep::{Activation, Device, Energy, Loss, Mnist, Mode, MuonScale, Nudging, Sequential, Shuffle, SpectralLayers};
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
    OneSided,
    Symmetric,
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

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SpectralArg {
    Off,
    Output,
    All,
}

/// Train an MLP on MNIST with Equilibrium Propagation (defaults: the seed tutorial).
#[derive(Parser, Debug)]
#[command(name = "mep-mnist", version)]
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
    /// Free-phase sweeps of the Hopfield energy.
    #[arg(long, default_value_t = mep::ep::DEFAULT_FREE_STEPS)]
    free_steps: usize,
    /// One-sided or symmetric nudging.
    #[arg(long, value_enum, default_value = "one-sided")]
    nudging: NudgingArg,
    /// Hidden widths, comma-separated (any depth; empty for none).
    #[arg(long, default_value = "128", value_delimiter = ',')]
    hidden: Vec<String>,
    /// Hidden activation: relu, sigmoid, tanh, hardsigmoid, identity.
    #[arg(long, default_value = "relu")]
    activation: Activation,
    /// Epochs.
    #[arg(long, default_value_t = 1)]
    epochs: u64,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Learning rate of the weight matrices (default: 0.05, or 1e-3 for adam).
    #[arg(long)]
    lr: Option<f64>,
    /// Learning rate of the biases (default: 1e-3 Adam for smep; lr for sgd/adam).
    #[arg(long)]
    bias_lr: Option<f64>,
    /// Nudging strength β.
    #[arg(long, default_value_t = 0.5)]
    beta: f64,
    /// Nudged-phase settle steps.
    #[arg(long, default_value_t = 15)]
    settle_steps: usize,
    /// Step size of the layered energy's nudged descent.
    #[arg(long)]
    settle_lr: Option<f64>,
    /// Loss: cross_entropy or squared_error.
    #[arg(long, default_value = "cross_entropy")]
    loss: Loss,
    /// Label smoothing for cross-entropy.
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// Momentum (smep, sgd).
    #[arg(long)]
    momentum: Option<f64>,
    /// Nesterov momentum on/off (smep, sgd).
    #[arg(long)]
    nesterov: Option<bool>,
    /// Muon update scale (smep).
    #[arg(long, value_enum)]
    muon_scale: Option<ScaleArg>,
    /// Decoupled weight decay.
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Spectral bound γ.
    #[arg(long)]
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
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Directory with the MNIST IDX files (see scripts/fetch-mnist.sh).
    #[arg(long, default_value = mep::data::mnist::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Train on the first N training samples only.
    #[arg(long)]
    train_subset: Option<usize>,
    /// Save the trained weights (safetensors) here.
    #[arg(long)]
    save: Option<PathBuf>,
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
}

fn configure<'m>(args: &Args, train_len: usize, mut b: OptimizerBuilder<'m>) -> OptimizerBuilder<'m> {
    if let ScheduleArg::Cosine = args.schedule {
        let total_steps = args.epochs * train_len.div_ceil(args.batch_size.max(1)) as u64;
        b = b.schedule(Schedule::Cosine { total_steps });
    }
    b = b
        .mode(match args.mode {
            ModeArg::Ep => Mode::Ep,
            ModeArg::Backprop => Mode::Backprop,
        })
        .beta(args.beta)
        .settle_steps(args.settle_steps)
        .nudging(match args.nudging {
            NudgingArg::OneSided => Nudging::OneSided,
            NudgingArg::Symmetric => Nudging::Symmetric,
        })
        .loss(match args.loss {
            Loss::CrossEntropy { .. } => Loss::CrossEntropy {
                label_smoothing: args.label_smoothing,
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
        });
    }
    b
}

fn run(args: Args) -> mep::Result<()> {
    let device = if args.device.eq_ignore_ascii_case("auto") {
        Device::auto()
    } else {
        args.device.parse()?
    };
    let t_load = Instant::now();
    let mut mnist = Mnist::load(&args.data_dir)?;
    if let Some(n) = args.train_subset {
        mnist.train = mnist.train.subset(n);
    }
    let load_s = t_load.elapsed().as_secs_f64();

    let mut hidden = Vec::new();
    for h in args.hidden.iter().filter(|h| !h.trim().is_empty()) {
        hidden.push(h.trim().parse::<usize>().map_err(|_| {
            mep::MepError::invalid(
                "hidden",
                h,
                "a comma-separated list of positive widths, e.g. 128 or 256,128",
            )
        })?);
    }
    let mut builder = Sequential::new(&device).flatten();
    let mut width = mnist.train.features();
    for &h in &hidden {
        builder = builder.linear(width, h).activation(args.activation);
        width = h;
    }
    let energy = match args.energy {
        EnergyArg::Layered => Energy::LayeredLeastSquares,
        EnergyArg::Hopfield => Energy::Hopfield {
            free_steps: args.free_steps,
        },
    };
    let mut model = builder
        .linear(width, mnist.train.classes())
        .energy(energy)
        .build(args.seed)?;
    let preset = match args.optimizer {
        OptName::Smep => mep::smep(&model),
        OptName::Sgd => mep::sgd(&model),
        OptName::Adam => mep::adam(&model),
    };
    let mut opt = configure(&args, mnist.train.len(), preset).build()?;

    let epoch_flops = mep::flops::epoch_flops(
        model.arch(),
        model.energy(),
        &opt.config(),
        mnist.train.len(),
        args.batch_size.max(1),
    );
    let train = model.upload(&mnist.train)?;
    let test = model.upload(&mnist.test)?;
    if !args.json {
        println!(
            "mep-mnist: {} on {} | {:?} {:?} {} | batch {} | {} train / {} test samples (loaded in {load_s:.2} s)",
            model.arch().describe(),
            model.backend_name(),
            args.optimizer,
            args.mode,
            model.energy().name(),
            args.batch_size,
            train.len(),
            test.len()
        );
    }
    let mut last_rate = None;
    for epoch in 0..args.epochs {
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
            50,
            |step, _, s| {
                bar.set_position(step as u64);
                bar.set_message(format!("loss {:.4} acc {:.2}%", s.loss, 100.0 * s.accuracy));
            },
        )?;
        bar.finish_and_clear();
        let t_eval = Instant::now();
        let eval = model.evaluate_on(&test)?;
        let eval_s = t_eval.elapsed().as_secs_f64();
        let sps = report.train.samples as f64 / report.seconds;
        last_rate = Some(epoch_flops / report.seconds);
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "epoch": epoch + 1,
                    "train_loss": report.train.loss,
                    "train_acc": report.train.accuracy,
                    "test_acc": eval.accuracy,
                    "test_loss": eval.loss,
                    "epoch_seconds": report.seconds,
                    "eval_seconds": eval_s,
                    "samples_per_sec": sps,
                    "gflop_per_sec": epoch_flops / report.seconds / 1e9,
                })
            );
        } else {
            println!(
                "epoch {}: train loss {:.4} | train acc {:.2}% | test acc {:.2}% (10k) | {:.3} s training, {:.0} samples/s, {:.1} GFLOP/s | eval {:.3} s",
                epoch + 1,
                report.train.loss,
                100.0 * report.train.accuracy,
                100.0 * eval.accuracy,
                report.seconds,
                sps,
                epoch_flops / report.seconds / 1e9,
                eval_s
            );
        }
    }
    if args.gemm_rate {
        let gemms = mep::flops::step_gemms(model.arch(), model.energy(), &opt.config(), args.batch_size.max(1));
        let rate = model.gemm_rate(&gemms, 20)?;
        let achieved = last_rate.unwrap_or(0.0);
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "gemm_rate_gflop_per_sec": rate / 1e9,
                    "train_gflop_per_sec": achieved / 1e9,
                    "fraction_of_gemm_rate": achieved / rate,
                })
            );
        } else {
            println!(
                "GEMMs of one step alone: {:.1} GFLOP/s; training achieved {:.1} GFLOP/s = {:.0}% of it",
                rate / 1e9,
                achieved / 1e9,
                100.0 * achieved / rate
            );
        }
    }
    if let Some(path) = &args.save {
        model.save_as(path, args.save_dtype)?;
        if !args.json {
            println!("saved weights to {}", path.display());
        }
    }
    Ok(())
}

/// Runs `run` on a worker of a rayon pool of `threads` threads: the CPU backend's
/// parallel GEMM panels then fork from a pool thread instead of blocking the main
/// thread on every call (which cost ~0.8 s of context switches per seed epoch).
fn run_in_pool(args: Args) -> mep::Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    if threads == 0 {
        return Err(mep::MepError::invalid("threads", 0, "must be at least 1"));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| mep::MepError::invalid("threads", threads, format!("cannot start the thread pool: {e}")))?;
    pool.install(|| run(args))
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run_in_pool(args) {
        eprintln!("mep-mnist: error: {e}");
        std::process::exit(1);
    }
}
