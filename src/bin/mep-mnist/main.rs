//! `mep-mnist`: the MNIST benchmark. With no flags it runs exactly the user's
//! tutorial: Flatten–784–128–ReLU–10, batch 64, one epoch, `smep` with lr 0.05,
//! β 0.5, 15 settle steps, cross-entropy, EP mode, seed 0.

//!
//! The files: `args.rs` (the flags and their conflicts), `setup.rs` (data, model and
//! optimizer from the flags), `report.rs` (output, notices, errors in the flags'
//! terms), and this one (the run: checks, resume, the epoch loop, the summary).

mod args;
mod report;
mod setup;

use args::*;
use clap::{CommandFactory, FromArgMatches, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mep::{Device, Shuffle};
use report::*;
use setup::*;
use std::path::PathBuf;
use std::time::Instant;

fn run(args: Args) -> mep::Result<()> {
    let device = if args.device.eq_ignore_ascii_case("auto") {
        Device::auto()
    } else {
        args.device.parse()?
    };
    let hidden = preflight(&args)?;
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
        let loss_name = model.loss().name();
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
