//! Resumable runs (issue 10, part 2): 2 epochs in one go and 1 epoch + checkpoint +
//! resume + 1 epoch give bit-identical weights and optimizer state on the CPU, for the
//! presets and schedules; a checkpoint refuses another model, optimizer or data set by
//! name; weights-only files still load as models but cannot be resumed.

mod common;

use mep::checkpoint::{self, DataShape, RunState};
use mep::io::Dtype;
use mep::optim::{OptimizerBuilder, Schedule};
use mep::{Dataset, Device, Energy, MepError, Model, Optimizer, Sequential, Shuffle};
use std::path::PathBuf;

const BATCH: usize = 16;

fn tmp(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("mep-resume-{tag}-{}.safetensors", std::process::id()))
}

fn model(hidden: usize, energy: Energy, seed: u64) -> Model {
    Sequential::new(&Device::Cpu)
        .flatten()
        .linear(12, hidden)
        .relu()
        .linear(hidden, 3)
        .energy(energy)
        .build(seed)
        .unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Preset {
    Smep,
    Adam,
    Sgd,
}

fn optimizer(m: &Model, preset: Preset, cosine: bool, data: &Dataset) -> Optimizer {
    let b: OptimizerBuilder = match preset {
        Preset::Smep => mep::smep(m),
        Preset::Adam => mep::adam(m),
        Preset::Sgd => mep::sgd(m).momentum(0.9),
    };
    let b = if cosine {
        b.schedule(Schedule::Cosine {
            total_steps: 2 * data.len().div_ceil(BATCH) as u64,
        })
    } else {
        b
    };
    b.build().unwrap()
}

fn epoch(opt: &mut Optimizer, m: &mut Model, data: &Dataset, shuffle: Shuffle, e: u64) {
    let up = m.upload(data).unwrap();
    opt.train_epoch(m, &up, BATCH, shuffle, e, 0, |_, _, _| {}).unwrap();
}

#[test]
fn one_epoch_save_resume_one_epoch_is_bit_identical_to_two_epochs() {
    let seed = common::fresh_seed("resume");
    let data = Dataset::synthetic(150, 12, 3, seed).unwrap();
    let shuffle = Shuffle::Seeded(seed);
    let path = tmp("identical");
    for (preset, cosine, energy) in [
        (Preset::Smep, false, Energy::LayeredLeastSquares),
        (Preset::Smep, true, Energy::LayeredLeastSquares),
        (Preset::Adam, false, Energy::LayeredLeastSquares),
        (Preset::Adam, true, Energy::LayeredLeastSquares),
        (Preset::Sgd, true, Energy::LayeredLeastSquares),
        (Preset::Smep, false, Energy::Hopfield { free_steps: 20 }),
    ] {
        let what = format!("{preset:?} cosine={cosine} {energy:?} (seed {seed})");
        // Two epochs in one go.
        let mut a = model(10, energy, seed);
        let mut opt_a = optimizer(&a, preset, cosine, &data);
        epoch(&mut opt_a, &mut a, &data, shuffle, 0);
        epoch(&mut opt_a, &mut a, &data, shuffle, 1);

        // One epoch, checkpoint, and a fresh process's worth of objects: another
        // initialisation, a new optimizer, then resume and train the second epoch.
        let mut b = model(10, energy, seed);
        let mut opt_b = optimizer(&b, preset, cosine, &data);
        epoch(&mut opt_b, &mut b, &data, shuffle, 0);
        let run = RunState {
            epochs_done: 1,
            shuffle,
            batch_size: BATCH,
            train_samples: data.len(),
        };
        checkpoint::save(&path, &b, &opt_b, &run, &DataShape::of(&data), Dtype::F32).unwrap();
        drop((b, opt_b));
        let mut c = model(10, energy, seed ^ 0xFFFF);
        let mut opt_c = optimizer(&c, preset, cosine, &data);
        let got = checkpoint::resume(&path, &mut c, &mut opt_c, &DataShape::of(&data)).unwrap();
        assert_eq!(got, run, "{what}");
        got.check_continues(shuffle, BATCH, data.len()).unwrap();
        epoch(&mut opt_c, &mut c, &data, shuffle, got.epochs_done);

        assert_eq!(
            c.parameters().unwrap(),
            a.parameters().unwrap(),
            "{what}: weights differ"
        );
        assert_eq!(
            opt_c.state().unwrap(),
            opt_a.state().unwrap(),
            "{what}: optimizer state differs"
        );
        assert_eq!(opt_c.steps(), opt_a.steps());

        // The optimizer's state matters: the weights alone do not continue the run.
        let mut d = model(10, energy, seed);
        let mut opt_d = optimizer(&d, preset, cosine, &data);
        let info = checkpoint::load_model(&path, &mut d, Some(&DataShape::of(&data))).unwrap();
        assert!(info.resumable && info.run == Some(run));
        epoch(&mut opt_d, &mut d, &data, shuffle, 1);
        assert_ne!(d.parameters().unwrap(), a.parameters().unwrap(), "{what}");
    }
    std::fs::remove_file(&path).ok();
}

fn reason(e: MepError) -> String {
    match e {
        MepError::ModelFile { reason, .. } => reason,
        other => panic!("expected ModelFile, got {other:?}"),
    }
}

#[test]
fn a_checkpoint_refuses_another_model_optimizer_or_data_set_by_name() {
    let seed = common::fresh_seed("resume-mismatch");
    let data = Dataset::synthetic(48, 12, 3, seed).unwrap();
    let shape = DataShape::of(&data);
    let path = tmp("mismatch");
    let layered = Energy::LayeredLeastSquares;
    let mut m = model(10, layered, seed);
    let mut opt = optimizer(&m, Preset::Smep, false, &data);
    epoch(&mut opt, &mut m, &data, Shuffle::Seeded(1), 0);
    let run = RunState {
        epochs_done: 1,
        shuffle: Shuffle::Seeded(1),
        batch_size: BATCH,
        train_samples: data.len(),
    };
    checkpoint::save(&path, &m, &opt, &run, &shape, Dtype::F32).unwrap();

    // Another width: the architecture is named.
    let mut other = model(9, layered, 0);
    let mut o = optimizer(&other, Preset::Smep, false, &data);
    let r = reason(checkpoint::resume(&path, &mut other, &mut o, &shape).unwrap_err());
    assert!(
        r.contains("arch") && r.contains("12-10(relu)-3") && r.contains("12-9(relu)-3"),
        "{r}"
    );
    // Another energy.
    let mut other = model(10, Energy::Hopfield { free_steps: 20 }, 0);
    let mut o = optimizer(&other, Preset::Smep, false, &data);
    let r = reason(checkpoint::resume(&path, &mut other, &mut o, &shape).unwrap_err());
    assert!(r.contains("energy") && r.contains("hopfield"), "{r}");
    // Another optimizer, another learning rate, another schedule.
    let mut same = model(10, layered, 0);
    let before = same.parameters().unwrap();
    for (o, names) in [
        (optimizer(&same, Preset::Adam, false, &data), vec!["Adam"]),
        (mep::smep(&same).lr(0.01).build().unwrap(), vec!["lr: 0.05", "lr: 0.01"]),
        (
            optimizer(&same, Preset::Smep, true, &data),
            vec!["Cosine", "total_steps"],
        ),
    ] {
        let mut o = o;
        let r = reason(checkpoint::resume(&path, &mut same, &mut o, &shape).unwrap_err());
        for n in names {
            assert!(r.contains(n), "{r} lacks {n}");
        }
        assert_eq!(o.steps(), 0);
    }
    assert_eq!(same.parameters().unwrap(), before, "a refused resume changed the model");
    // Another data set: both sizes named.
    let mut o = optimizer(&same, Preset::Smep, false, &data);
    let wide = DataShape {
        shape: vec![3, 4],
        classes: 5,
    };
    match checkpoint::resume(&path, &mut same, &mut o, &wide).unwrap_err() {
        MepError::SizeMismatch { what, model, data, .. } => assert_eq!((what, model, data), ("classes", 3, 5)),
        other => panic!("{other:?}"),
    }
    let narrow = DataShape {
        shape: vec![11],
        classes: 3,
    };
    let e = checkpoint::load_model(&path, &mut same, Some(&narrow)).unwrap_err();
    assert!(
        matches!(
            e,
            MepError::SizeMismatch {
                what: "inputs",
                model: 12,
                data: 11,
                ..
            }
        ),
        "{e:?}"
    );
    // A run that does not continue the saved one.
    for (shuffle, batch, n, name) in [
        (Shuffle::Seeded(2), BATCH, 48, "seed"),
        (Shuffle::Seeded(1), 8, 48, "batch-size"),
        (Shuffle::Seeded(1), BATCH, 40, "train-subset"),
    ] {
        match run.check_continues(shuffle, batch, n) {
            Err(MepError::InvalidArgument { name: got, .. }) => assert_eq!(got, name),
            other => panic!("{other:?}"),
        }
    }

    // A weights-only file (Model::save) loads as a model, and refuses to resume.
    let weights = tmp("weights-only");
    m.save(&weights).unwrap();
    let mut w = model(10, layered, 0);
    let info = checkpoint::load_model(&weights, &mut w, Some(&shape)).unwrap();
    assert!(!info.resumable && info.run.is_none() && info.data.is_none());
    assert_eq!(w.parameters().unwrap(), m.parameters().unwrap());
    let mut o = optimizer(&w, Preset::Smep, false, &data);
    let r = reason(checkpoint::resume(&weights, &mut w, &mut o, &shape).unwrap_err());
    assert!(r.contains("weights only") && r.contains("--load"), "{r}");
    // And a full checkpoint loads as a model through Model::load_weights.
    let mut w = model(10, layered, 0);
    w.load_weights(&path).unwrap();
    assert_eq!(w.parameters().unwrap(), m.parameters().unwrap());
    std::fs::remove_file(&path).ok();
    std::fs::remove_file(&weights).ok();
}

#[test]
fn optimizer_state_round_trips_and_refuses_another_optimizers() {
    let data = Dataset::synthetic(32, 12, 3, 4).unwrap();
    let mut m = model(10, Energy::LayeredLeastSquares, 4);
    let mut smep = optimizer(&m, Preset::Smep, false, &data);
    epoch(&mut smep, &mut m, &data, Shuffle::None, 0);
    let s = smep.state().unwrap();
    assert_eq!(s.steps, 2);
    // smep: Muon momentum, Adam on the biases, a power-iteration vector on the output layer.
    for name in ["optim.layers.0.m_w", "optim.layers.0.v_b", "optim.layers.1.power_u"] {
        assert!(
            s.get(name).is_some_and(|t| t.values.iter().any(|&v| v != 0.0)),
            "{name}"
        );
    }
    let mut adam = optimizer(&m, Preset::Adam, false, &data);
    match adam.set_state(&m, &s) {
        Err(MepError::Shape(msg)) => assert!(msg.contains("v_w") || msg.contains("power_u"), "{msg}"),
        other => panic!("{other:?}"),
    }
    let mut bad = s.clone();
    bad.tensors[0].values[0] = f64::NAN;
    let mut fresh = optimizer(&m, Preset::Smep, false, &data);
    assert!(matches!(fresh.set_state(&m, &bad), Err(MepError::NonFinite(_))));
    assert_eq!(fresh.steps(), 0);
    fresh.set_state(&m, &s).unwrap();
    assert_eq!(fresh.state().unwrap(), s);
}

/// The same on CUDA (skipped without a GPU; an error with `MEP_REQUIRE_GPU=1`): the
/// state moves through the backend's download and write, and the resumed run matches
/// the uninterrupted one bit for bit on the same device.
#[test]
fn resume_is_bit_identical_on_cuda_too() {
    if common::gpu().is_none() {
        return;
    }
    let data = Dataset::synthetic(48, 12, 3, 11).unwrap();
    let shuffle = Shuffle::Seeded(3);
    let path = tmp("cuda");
    let build = |seed| {
        Sequential::new(&Device::Cuda(0))
            .flatten()
            .linear(12, 8)
            .relu()
            .linear(8, 3)
            .build(seed)
            .unwrap()
    };
    for preset in [Preset::Smep, Preset::Adam] {
        let mut a = build(1);
        let mut opt_a = optimizer(&a, preset, true, &data);
        epoch(&mut opt_a, &mut a, &data, shuffle, 0);
        let run = RunState {
            epochs_done: 1,
            shuffle,
            batch_size: BATCH,
            train_samples: data.len(),
        };
        checkpoint::save(&path, &a, &opt_a, &run, &DataShape::of(&data), Dtype::F32).unwrap();
        epoch(&mut opt_a, &mut a, &data, shuffle, 1);
        let mut c = build(2);
        let mut opt_c = optimizer(&c, preset, true, &data);
        let run = checkpoint::resume(&path, &mut c, &mut opt_c, &DataShape::of(&data)).unwrap();
        epoch(&mut opt_c, &mut c, &data, shuffle, run.epochs_done);
        assert_eq!(a.backend_name(), c.backend_name());
        eprintln!("{preset:?} on {}: resumed run bit-identical", a.backend_name());
        assert_eq!(
            c.parameters().unwrap(),
            a.parameters().unwrap(),
            "{preset:?}: weights differ"
        );
        assert_eq!(
            opt_c.state().unwrap(),
            opt_a.state().unwrap(),
            "{preset:?}: state differs"
        );
    }
    std::fs::remove_file(&path).ok();
}
