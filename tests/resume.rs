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

/// A 12–10–3 layered model trained one epoch with smep on `data`, saved as a
/// resumable checkpoint at `path` with `shape`; returns the model and the run state
/// saved.
fn one_epoch_saved(path: &std::path::Path, data: &Dataset, shape: &DataShape, seed: u64) -> (Model, RunState) {
    let mut m = model(10, Energy::LayeredLeastSquares, seed);
    let mut opt = optimizer(&m, Preset::Smep, false, data);
    epoch(&mut opt, &mut m, data, Shuffle::Seeded(1), 0);
    let run = RunState {
        epochs_done: 1,
        shuffle: Shuffle::Seeded(1),
        batch_size: BATCH,
        train_samples: data.len(),
    };
    checkpoint::save(path, &m, &opt, &run, shape, Dtype::F32).unwrap();
    (m, run)
}

/// A checkpoint records the normalisation of its training inputs (fresh values: the
/// text must read back as the same f32s) and refuses data normalised otherwise, at
/// resume and at load; data whose normalisation is not known is accepted.
#[test]
fn a_checkpoint_records_and_checks_the_inputs_normalisation() {
    let seed = common::fresh_seed("resume-normalisation");
    let mut rng = mep::rng::Rng::new(seed);
    let data = Dataset::synthetic(48, 12, 3, seed).unwrap();
    let norm = |rng: &mut mep::rng::Rng| {
        mep::Normalization::new(rng.uniform_range(0.0, 1.0) as f32, rng.uniform_range(0.01, 1.0) as f32).unwrap()
    };
    let saved = norm(&mut rng);
    let shape = DataShape::of(&data).with_normalization(saved);
    let path = tmp("normalisation");
    let (mut m, _) = one_epoch_saved(&path, &data, &shape, seed);
    let info = checkpoint::info(&path).unwrap();
    assert_eq!(info.data.unwrap().normalization, Some(saved), "seed {seed}");
    let other = DataShape::of(&data).with_normalization(norm(&mut rng));
    let mut o = optimizer(&m, Preset::Smep, false, &data);
    match checkpoint::resume(&path, &mut m, &mut o, &other) {
        Err(e @ MepError::InvalidArgument { name: "normalize", .. }) => {
            let want = format!(
                "normalised with mean {} and standard deviation {}",
                saved.mean, saved.std
            );
            assert!(e.to_string().contains(&want), "{e}")
        }
        r => panic!("seed {seed}: {r:?}"),
    }
    assert!(matches!(
        checkpoint::load_model(&path, &mut m, Some(&other)),
        Err(MepError::InvalidArgument { name: "normalize", .. })
    ));
    for fine in [shape.clone(), DataShape::of(&data)] {
        let mut o = optimizer(&m, Preset::Smep, false, &data);
        checkpoint::resume(&path, &mut m, &mut o, &fine).unwrap();
    }
    std::fs::remove_file(&path).ok();
}

#[test]
fn a_checkpoint_refuses_another_model_optimizer_or_data_set_by_name() {
    let seed = common::fresh_seed("resume-mismatch");
    let data = Dataset::synthetic(48, 12, 3, seed).unwrap();
    let shape = DataShape::of(&data);
    let path = tmp("mismatch");
    let layered = Energy::LayeredLeastSquares;
    let (m, run) = one_epoch_saved(&path, &data, &shape, seed);

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
        normalization: None,
    };
    match checkpoint::resume(&path, &mut same, &mut o, &wide).unwrap_err() {
        MepError::SizeMismatch { what, model, data, .. } => assert_eq!((what, model, data), ("classes", 3, 5)),
        other => panic!("{other:?}"),
    }
    let narrow = DataShape {
        shape: vec![11],
        classes: 3,
        normalization: None,
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

/// Rewrites the `__metadata__` of the safetensors file at `path` with `edit`.
fn edit_metadata(path: &std::path::Path, edit: impl Fn(&mut serde_json::Map<String, serde_json::Value>)) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(header["__metadata__"].as_object_mut().unwrap());
    let mut h = serde_json::to_vec(&header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

/// A one-epoch SMEP checkpoint of a 12-10-3 model on 48 samples, at `path`.
fn saved_run(path: &std::path::Path, cosine: bool) -> (Dataset, RunState) {
    let data = Dataset::synthetic(48, 12, 3, 5).unwrap();
    let mut m = model(10, Energy::LayeredLeastSquares, 5);
    let mut opt = optimizer(&m, Preset::Smep, cosine, &data);
    epoch(&mut opt, &mut m, &data, Shuffle::Seeded(1), 0);
    let run = RunState {
        epochs_done: 1,
        shuffle: Shuffle::Seeded(1),
        batch_size: BATCH,
        train_samples: data.len(),
    };
    checkpoint::save(path, &m, &opt, &run, &DataShape::of(&data), Dtype::F32).unwrap();
    (data, run)
}

#[test]
fn damaged_checkpoint_metadata_is_refused_naming_the_file_and_the_field() {
    let path = tmp("metadata");
    for (key, value) in [
        ("format", "other"),
        ("batch_size", "0"),
        ("train_samples", "0"),
        ("classes", "1"),
        ("data_shape", "12,0"),
    ] {
        let (data, _) = saved_run(&path, false);
        edit_metadata(&path, |meta| {
            meta.insert(key.into(), value.into());
        });
        let e = checkpoint::info(&path).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, MepError::ModelFile { .. }), "{text}");
        assert!(
            text.contains(&path.display().to_string()) && text.contains(&format!("`{key}`")),
            "{key}={value}: {text}"
        );
        let mut m = model(10, Energy::LayeredLeastSquares, 0);
        let mut o = optimizer(&m, Preset::Smep, false, &data);
        let e = checkpoint::resume(&path, &mut m, &mut o, &DataShape::of(&data)).unwrap_err();
        assert!(e.to_string().contains(&format!("`{key}`")), "{e}");
    }
    // An entry of the run state missing, the others there.
    let (_, _) = saved_run(&path, false);
    edit_metadata(&path, |meta| {
        meta.remove("shuffle");
    });
    let e = checkpoint::info(&path).unwrap_err().to_string();
    assert!(e.contains("`shuffle`") && e.contains("missing"), "{e}");
    // A weights file whose `format` is not mep's but records mep's `arch`.
    let (_, _) = saved_run(&path, false);
    edit_metadata(&path, |meta| {
        meta.insert("format".into(), "other".into());
    });
    let mut m = model(10, Energy::LayeredLeastSquares, 0);
    let e = m.load_weights(&path).unwrap_err().to_string();
    assert!(e.contains("`format`") && e.contains(&path.display().to_string()), "{e}");
    std::fs::remove_file(&path).ok();
}

#[test]
fn checkpoint_save_refuses_a_run_state_that_could_not_be_resumed() {
    let data = Dataset::synthetic(48, 12, 3, 5).unwrap();
    let m = model(10, Energy::LayeredLeastSquares, 5);
    let opt = optimizer(&m, Preset::Smep, false, &data);
    let path = tmp("bad-run");
    for (batch_size, train_samples, name) in [(0, 48, "batch_size"), (16, 0, "train_samples")] {
        let run = RunState {
            epochs_done: 1,
            shuffle: Shuffle::None,
            batch_size,
            train_samples,
        };
        match checkpoint::save(&path, &m, &opt, &run, &DataShape::of(&data), Dtype::F32) {
            Err(MepError::InvalidArgument { name: got, .. }) => assert_eq!(got, name),
            other => panic!("{other:?}"),
        }
    }
    // A data shape the model could not have trained on (12 inputs, 3 classes).
    let run = RunState {
        epochs_done: 1,
        shuffle: Shuffle::None,
        batch_size: 16,
        train_samples: 48,
    };
    for (shape, classes, what) in [
        (vec![28, 28], 3, "inputs"),
        (vec![3, 4], 10, "classes"),
        (vec![13], 3, "inputs"),
    ] {
        let data_shape = DataShape {
            shape: shape.clone(),
            classes,
            normalization: None,
        };
        match checkpoint::save(&path, &m, &opt, &run, &data_shape, Dtype::F32) {
            Err(MepError::SizeMismatch { what: got, .. }) => assert_eq!(got, what, "{shape:?}, {classes} classes"),
            other => panic!("{shape:?}, {classes} classes: {other:?}"),
        }
    }
    assert!(!path.exists());
    // The same sizes in another layout are this model's data.
    let data_shape = DataShape {
        shape: vec![3, 4],
        classes: 3,
        normalization: None,
    };
    checkpoint::save(&path, &m, &opt, &run, &data_shape, Dtype::F32).unwrap();
    std::fs::remove_file(&path).ok();
}

#[test]
fn a_different_optimizer_is_reported_by_its_differing_fields_only() {
    let path = tmp("config-diff");
    let (data, run) = saved_run(&path, false);
    let shape = DataShape::of(&data);
    let mut m = model(10, Energy::LayeredLeastSquares, 0);
    for (o, names) in [
        (
            mep::smep(&m).loss(mep::Loss::SquaredError).build().unwrap(),
            vec!["grad.loss: CrossEntropy", "grad.loss: SquaredError"],
        ),
        (optimizer(&m, Preset::Adam, false, &data), vec!["matrix", "Adam"]),
        (
            optimizer(&m, Preset::Smep, true, &data),
            vec!["schedule: Constant", "Cosine"],
        ),
    ] {
        let mut o = o;
        let r = reason(checkpoint::resume(&path, &mut m, &mut o, &shape).unwrap_err());
        for n in names {
            assert!(r.contains(n), "{r} lacks {n}");
        }
        assert!(!r.contains("OptimConfig"), "the whole configuration is dumped: {r}");
        assert!(r.len() < 600, "{} bytes: {r}", r.len());
    }

    // A cosine run resumed with another batch size: the schedule's length differs, and
    // the message names what sets it, with the saved run's numbers.
    let (data, run2) = saved_run(&path, true);
    assert_eq!(run2, run);
    let mut o = mep::smep(&m)
        .schedule(Schedule::Cosine {
            total_steps: 2 * data.len().div_ceil(8) as u64,
        })
        .build()
        .unwrap();
    let r = reason(checkpoint::resume(&path, &mut m, &mut o, &shape).unwrap_err());
    for n in [
        "total_steps: 6",
        "total_steps: 12",
        "--batch-size",
        "--train-subset",
        "--epochs",
        "batches of 16",
        "for 2 epochs",
    ] {
        assert!(r.contains(n), "{r} lacks {n}");
    }
    // resume_continuing checks the run first, so the batch size itself is named.
    let e =
        checkpoint::resume_continuing(&path, &mut m, &mut o, &shape, Shuffle::Seeded(1), 8, data.len()).unwrap_err();
    assert!(matches!(e, MepError::InvalidArgument { name: "batch-size", .. }), "{e}");
    assert_eq!(o.steps(), 0);
    // And with the same run and optimizer, it resumes.
    let mut o = optimizer(&m, Preset::Smep, true, &data);
    let got =
        checkpoint::resume_continuing(&path, &mut m, &mut o, &shape, Shuffle::Seeded(1), BATCH, data.len()).unwrap();
    assert_eq!(got, run);
    std::fs::remove_file(&path).ok();
}

#[test]
fn a_non_finite_weight_in_a_checkpoint_is_refused_naming_the_file() {
    let path = tmp("nan-weight");
    let (data, _) = saved_run(&path, false);
    // Overwrite the first value of layers.1.weight with NaN.
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header["layers.1.weight"]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
    let mut bytes = bytes;
    bytes[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let shown = path.display().to_string();
    let mut m = model(10, Energy::LayeredLeastSquares, 0);
    let e = m.load_weights(&path).unwrap_err().to_string();
    assert!(
        e.contains(&shown) && e.contains("NaN") && e.contains("layers.1.weight"),
        "{e}"
    );
    let e = checkpoint::load_model(&path, &mut m, None).unwrap_err().to_string();
    assert!(e.contains(&shown) && e.contains("NaN"), "{e}");
    let mut o = optimizer(&m, Preset::Smep, false, &data);
    let e = checkpoint::resume(&path, &mut m, &mut o, &DataShape::of(&data))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&shown) && e.contains("NaN"), "{e}");
    std::fs::remove_file(&path).ok();
}
