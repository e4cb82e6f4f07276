//! How well does the EP estimate follow the true gradient during training? For each
//! energy and each learning rule (`Nudging::ALL`), this trains a model with EP and
//! prints, every `EVERY` steps, the cosine between the EP estimate of the current
//! batch and the true gradient of the same batch (overall and per layer).
//!
//! * Layered energy: the true gradient is Backprop mode's (exact gradient of the
//!   forward pass's mean cost), from a second optimizer used only for
//!   `Optimizer::gradients`. MNIST 784–128–10 when `data/mnist` exists, else a
//!   synthetic 64-feature task.
//! * Hopfield energy: Backprop mode does not apply (its output is a fixed point, not
//!   a forward pass), so the true gradient is that of the free equilibrium's mean
//!   cost by central finite differences on an f64 copy of the model
//!   (`Model::to_f64`, `Model64::finite_differences`): two free phases per
//!   parameter, so this part uses a tiny 12–10–4 network on a synthetic task.
//!
//! The clamped rules (CL, CpL) need the squared-error loss; the others use
//! cross-entropy. Hyper-parameters are the seed tutorial's (smep, lr 0.05, β 0.5,
//! 15 settle steps): the question is how well the estimate that training actually
//! uses aligns, not the β → 0 limit (see tests/research.rs for that).
//!
//! Run: `cargo run --release --example ep_vs_backprop -- [STEPS] [EVERY]`
//! (defaults 300 and 100).

use mep::{smep, Dataset, Device, Energy, Loss, Mnist, Mode, Model, Nudging, Sequential, Shuffle};
use std::path::Path;

fn arg(i: usize, default: usize) -> mep::Result<usize> {
    match std::env::args().nth(i) {
        None => Ok(default),
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| mep::MepError::invalid("STEPS/EVERY", s, "a positive integer, e.g. 300 100")),
    }
}

/// The loss a rule can use: clamping needs a target in the output's space.
fn loss_for(rule: Nudging) -> Loss {
    if rule.clamps() {
        Loss::SquaredError
    } else {
        Loss::CrossEntropy { label_smoothing: 0.0 }
    }
}

fn fmt_layers(c: &[f64]) -> String {
    c.iter().map(|v| format!("{v:+.3}")).collect::<Vec<_>>().join(" ")
}

/// The reference gradient of a batch `(x, y)` for the model's current parameters.
type TrueGradient<'a> = dyn Fn(&Model, &[f32], &[u32]) -> mep::Result<mep::Gradients> + 'a;

/// Trains `model` with EP under `rule` for `steps` batches of `data`, printing the
/// cosine to `truth(model, x, y)` every `every` steps.
fn run(
    model: &mut Model,
    data: &Dataset,
    rule: Nudging,
    steps: usize,
    every: usize,
    truth: &TrueGradient<'_>,
) -> mep::Result<()> {
    let mut opt = smep(model).nudging(rule).loss(loss_for(rule)).build()?;
    let mut step = 0;
    let mut epoch = 0;
    while step < steps {
        for batch in data.epoch_batches(64, Shuffle::Seeded(0), epoch)? {
            if step % every == 0 || step + 1 == steps {
                let ep = opt.gradients(model, &batch.x, &batch.y)?;
                let tg = truth(model, &batch.x, &batch.y)?;
                // Free-phase accuracy over the steps since the last line.
                let s = opt.stats()?;
                let acc = if s.samples == 0 {
                    "    -".to_string()
                } else {
                    format!("{:5.1}%", 100.0 * s.accuracy)
                };
                println!(
                    "  {:>4} | step {step:>5} | cosine {:+.4} | per layer {} | train acc {acc}",
                    rule.name(),
                    ep.cosine(&tg)?,
                    fmt_layers(&ep.layer_cosines(&tg)?),
                );
                opt.reset_stats()?;
            }
            opt.step(model, &batch.x, &batch.y)?;
            step += 1;
            if step == steps {
                break;
            }
        }
        epoch += 1;
    }
    Ok(())
}

fn main() -> mep::Result<()> {
    let (steps, every) = (arg(1, 300)?, arg(2, 100)?);

    // Layered energy against Backprop mode.
    let data = match Mnist::load(Path::new(mep::data::mnist::DEFAULT_DATA_DIR)) {
        Ok(m) => m.train,
        Err(e) => {
            println!("MNIST not available ({e}); using a synthetic task");
            Dataset::synthetic(10_000, 64, 10, 1)?
        }
    };
    let hidden = 128;
    println!(
        "layered energy, {}–{hidden}–{}: cosine(EP estimate, Backprop gradient) on the current batch",
        data.features(),
        data.classes()
    );
    for rule in Nudging::ALL {
        let mut model = Sequential::new(&Device::Cpu)
            .flatten()
            .linear(data.features(), hidden)
            .relu()
            .linear(hidden, data.classes())
            .build(0)?;
        let truth = |m: &Model, x: &[f32], y: &[u32]| {
            smep(m)
                .mode(Mode::Backprop)
                .loss(loss_for(rule))
                .build()?
                .gradients(m, x, y)
        };
        run(&mut model, &data, rule, steps, every, &truth)?;
    }

    // Hopfield energy against finite differences of the free equilibrium's cost.
    let tiny = Dataset::synthetic(2_000, 12, 4, 2)?;
    println!(
        "hopfield energy, 12–10–4 (synthetic): cosine(EP estimate, finite differences of the equilibrium cost); Backprop mode does not apply"
    );
    for rule in Nudging::ALL {
        let mut model = Sequential::new(&Device::Cpu)
            .flatten()
            .linear(12, 10)
            .relu()
            .linear(10, 4)
            .energy(Energy::Hopfield { free_steps: 200 })
            .build(0)?;
        let truth = |m: &Model, x: &[f32], y: &[u32]| {
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            m.to_f64()?.finite_differences(&x64, y, loss_for(rule), 1e-5)
        };
        run(&mut model, &tiny, rule, steps, every, &truth)?;
    }
    Ok(())
}
