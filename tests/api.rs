//! The user-facing API: every builder error, input validation, determinism,
//! saving/loading, and a short end-to-end training run that must beat chance by a
//! wide margin (MNIST subset when `data/mnist` exists, else a synthetic task).

use mep::ep::Energy;
use mep::optim::SpectralLayers;
use mep::{adam, sgd, smep, Dataset, Device, Loss, MepError, Mnist, Mode, Nudging, Sequential, Shuffle};
use std::path::Path;

fn small_model(energy: Energy) -> mep::Model {
    small_model_seeded(energy, 3)
}

/// 20–16(relu)–4 on the CPU, initialised from `seed`.
fn small_model_seeded(energy: Energy, seed: u64) -> mep::Model {
    Sequential::new(&Device::Cpu)
        .flatten()
        .linear(20, 16)
        .relu()
        .linear(16, 4)
        .energy(energy)
        .build(seed)
        .unwrap()
}

/// Asserts an `InvalidArgument` naming `name`.
fn assert_invalid<T>(r: mep::Result<T>, name: &str) {
    match r {
        Err(MepError::InvalidArgument { name: n, .. }) if n == name => {}
        Err(e) => panic!("expected an InvalidArgument for `{name}`, got: {e}"),
        Ok(_) => panic!("expected an InvalidArgument for `{name}`, got Ok"),
    }
}

#[test]
fn every_bad_hyper_parameter_is_rejected_by_name() {
    let m = small_model(Energy::LayeredLeastSquares);
    assert_invalid(smep(&m).lr(0.0).build(), "lr");
    assert_invalid(smep(&m).lr(f64::NAN).build(), "lr");
    assert_invalid(smep(&m).beta(0.0).build(), "beta");
    assert_invalid(smep(&m).beta(-0.5).build(), "beta");
    assert_invalid(smep(&m).settle_steps(0).build(), "settle_steps");
    assert_invalid(smep(&m).settle_lr(1.5).build(), "settle_lr");
    assert_invalid(smep(&m).settle_lr(0.0).build(), "settle_lr");
    assert_invalid(smep(&m).momentum(1.0).build(), "momentum");
    assert_invalid(smep(&m).ns_steps(0).build(), "ns_steps");
    assert_invalid(smep(&m).gamma(-1.0).build(), "gamma");
    assert_invalid(smep(&m).power_iters(0).build(), "power_iters");
    assert_invalid(smep(&m).weight_decay(-0.1).build(), "weight_decay");
    assert_invalid(smep(&m).weight_decay(100.0).build(), "weight_decay");
    assert_invalid(smep(&m).bias_lr(0.0).build(), "bias_lr");
    assert_invalid(smep(&m).check_every(0).build(), "check_every");
    assert_invalid(
        smep(&m).loss(Loss::CrossEntropy { label_smoothing: 1.0 }).build(),
        "label_smoothing",
    );
    // Options that do not apply are errors, not silently ignored.
    assert_invalid(sgd(&m).ns_steps(3).build(), "ns_steps");
    assert_invalid(sgd(&m).muon_scale(mep::MuonScale::KellerJordan).build(), "muon_scale");
    assert_invalid(adam(&m).momentum(0.9).build(), "momentum");
    assert_invalid(adam(&m).nesterov(true).build(), "nesterov");
    // Backprop trains the forward pass: not a Hopfield model.
    let h = small_model(Energy::Hopfield { free_steps: 10 });
    assert_invalid(smep(&h).mode(Mode::Backprop).build(), "mode");
    // And the valid ones build.
    for b in [
        smep(&m),
        sgd(&m),
        adam(&m),
        smep(&h).nudging(Nudging::Symmetric),
        smep(&m).spectral_layers(SpectralLayers::All),
    ] {
        b.build().unwrap();
    }
}

#[test]
fn bad_networks_are_rejected() {
    let d = Device::Cpu;
    assert!(matches!(
        Sequential::new(&d)
            .flatten()
            .linear(784, 128)
            .relu()
            .linear(64, 10)
            .build(0),
        Err(MepError::Shape(_))
    ));
    assert_invalid(Sequential::new(&d).relu().linear(4, 2).build(0), "activation");
    assert_invalid(Sequential::new(&d).flatten().build(0), "layers");
    assert_invalid(
        Sequential::new(&d).linear(4, 3).flatten().linear(3, 2).build(0),
        "flatten",
    );
    assert_invalid(Sequential::new(&d).linear(0, 3).build(0), "linear");
    assert_invalid(
        Sequential::new(&d)
            .linear(4, 3)
            .energy(Energy::Hopfield { free_steps: 0 })
            .build(0),
        "free_steps",
    );
    // A typo's count would look like a hang: refused, not run.
    assert_invalid(
        Sequential::new(&d)
            .linear(4, 3)
            .energy(Energy::Hopfield {
                free_steps: 100_000_000_000,
            })
            .build(0),
        "free_steps",
    );
}

#[test]
fn bad_batches_are_rejected() {
    let mut m = small_model(Energy::LayeredLeastSquares);
    let mut opt = smep(&m).build().unwrap();
    let x = vec![0.5f32; 2 * 20];
    assert!(matches!(opt.step(&mut m, &x[..39], &[0, 1]), Err(MepError::Shape(_))));
    assert!(matches!(opt.step(&mut m, &x, &[0]), Err(MepError::Shape(_))));
    assert_invalid(opt.step(&mut m, &x, &[0, 4]), "target");
    for (at, v) in [(7, f32::NAN), (0, f32::INFINITY), (39, f32::NEG_INFINITY)] {
        let mut bad = x.clone();
        bad[at] = v;
        match opt.step(&mut m, &bad, &[0, 1]) {
            Err(MepError::NonFinite(msg)) => assert!(msg.contains(&format!("at index {at}")), "{msg}"),
            other => panic!("{v} at {at}: {other:?}"),
        }
    }
    assert!(matches!(m.predict(&x[..30]), Err(MepError::Shape(_))));
    opt.step(&mut m, &x, &[0, 1]).unwrap();
}

#[test]
fn divergence_is_reported_not_trained_through() {
    // A linear network with a squared error and a huge step: the weights blow up.
    let mut m = Sequential::new(&Device::Cpu)
        .flatten()
        .linear(20, 16)
        .linear(16, 4)
        .build(3)
        .unwrap();
    let mut opt = sgd(&m)
        .mode(Mode::Backprop)
        .loss(Loss::SquaredError)
        .lr(1e3)
        .check_every(1)
        .build()
        .unwrap();
    let data = Dataset::synthetic(256, 20, 4, 1).unwrap();
    let mut err = None;
    for b in data.batches(32, Shuffle::Seeded(0)).unwrap() {
        if let Err(e) = opt.step(&mut m, &b.x, &b.y) {
            err = Some(e);
            break;
        }
    }
    assert!(
        matches!(err, Some(MepError::Diverged { .. })),
        "expected Diverged, got {err:?}"
    );
}

fn train_params(seed: u64) -> Vec<(Vec<f64>, Vec<f64>)> {
    let mut m = Sequential::new(&Device::Cpu)
        .flatten()
        .linear(20, 32)
        .tanh()
        .linear(32, 4)
        .build(seed)
        .unwrap();
    let mut opt = smep(&m).build().unwrap();
    let data = Dataset::synthetic(300, 20, 4, 9).unwrap();
    for b in data.batches(64, Shuffle::Seeded(seed)).unwrap() {
        opt.step(&mut m, &b.x, &b.y).unwrap();
    }
    m.parameters().unwrap()
}

#[test]
fn same_seed_gives_bit_identical_training_on_the_cpu() {
    let a = train_params(5);
    let b = train_params(5);
    assert!(a == b, "two runs with the same seed differ");
    let c = train_params(6);
    assert!(a != c, "different seeds gave the same model");
}

#[test]
fn save_and_load_round_trip_atomically() {
    let dir = std::env::temp_dir().join(format!("mep-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    let m = small_model(Energy::LayeredLeastSquares);
    m.save(&path).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path() != path)
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
    let mut other = small_model_seeded(Energy::LayeredLeastSquares, 99);
    assert_ne!(other.parameters().unwrap(), m.parameters().unwrap());
    other.load_weights(&path).unwrap();
    assert_eq!(other.parameters().unwrap(), m.parameters().unwrap());
    // Wrong shape, truncated and missing files are clear errors.
    let mut wrong = Sequential::new(&Device::Cpu)
        .linear(20, 8)
        .relu()
        .linear(8, 4)
        .build(0)
        .unwrap();
    assert!(matches!(wrong.load_weights(&path), Err(MepError::ModelFile { .. })));
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    assert!(matches!(other.load_weights(&cut), Err(MepError::ModelFile { .. })));
    assert!(matches!(
        other.load_weights(dir.join("missing.safetensors")),
        Err(MepError::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn cuda_request_without_a_gpu_is_a_clear_error() {
    if mep::backend::cuda::probe(0).is_ok() {
        eprintln!("a GPU is usable here: skipping the no-GPU error test");
        return;
    }
    match Sequential::new(&Device::Cuda(0)).linear(4, 2).build(0) {
        Err(MepError::CudaUnavailable(msg)) => assert!(!msg.is_empty()),
        other => panic!("expected CudaUnavailable, got {:?}", other.err()),
    }
    assert_eq!(Device::auto(), Device::Cpu);
}

/// Trains one epoch of `mode`/`energy` on `train`, returns test accuracy.
fn short_run(train: &Dataset, test: &Dataset, energy: Energy, mode: Mode) -> f64 {
    let mut m = Sequential::new(&Device::Cpu)
        .flatten()
        .linear(train.features(), 64)
        .relu()
        .linear(64, train.classes())
        .energy(energy)
        .build(0)
        .unwrap();
    let mut opt = smep(&m).mode(mode).build().unwrap();
    for b in train.batches(64, Shuffle::Seeded(0)).unwrap() {
        opt.step(&mut m, &b.x, &b.y).unwrap();
    }
    m.accuracy(test).unwrap()
}

#[test]
fn short_training_run_beats_chance_by_a_wide_margin() {
    // MEP_MNIST_DIR lets prebuilt test binaries find the data elsewhere (scripts/gpu-check.sh).
    let dir = std::env::var_os("MEP_MNIST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist"));
    let (train, test, floor) = match Mnist::load(&dir) {
        Ok(m) => (m.train.subset(6000), m.test.subset(2000), 0.75),
        Err(e) => {
            eprintln!("MNIST not available ({e}); using a synthetic task");
            // One task (the class prototypes depend on the seed), split into train and test.
            let all = Dataset::synthetic(5000, 64, 10, 1).unwrap();
            let f = all.features();
            let test = Dataset::new(all.images()[4000 * f..].to_vec(), all.labels()[4000..].to_vec(), f, 10).unwrap();
            (all.subset(4000), test, 0.75)
        }
    };
    for (energy, mode) in [
        (Energy::LayeredLeastSquares, Mode::Ep),
        (Energy::LayeredLeastSquares, Mode::Backprop),
        (Energy::Hopfield { free_steps: 20 }, Mode::Ep),
    ] {
        let acc = short_run(&train, &test, energy, mode);
        eprintln!("{energy:?} {mode:?}: test accuracy {acc:.4}");
        assert!(acc > floor, "{energy:?} {mode:?}: accuracy {acc} (chance is 0.1)");
    }
}

#[test]
fn half_precision_checkpoints_round_trip_within_their_rounding() {
    use mep::io::Dtype;
    let dir = std::env::temp_dir().join(format!("mep-api-half-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let m = small_model(Energy::LayeredLeastSquares);
    let exact: Vec<f64> = m
        .parameters()
        .unwrap()
        .into_iter()
        .flat_map(|(w, b)| w.into_iter().chain(b))
        .collect();
    let f32_path = dir.join("f32.safetensors");
    m.save(&f32_path).unwrap();
    // (dtype, relative rounding: 8 significant bits for bf16, 11 for f16)
    for (dtype, rel) in [(Dtype::BF16, 2f64.powi(-8)), (Dtype::F16, 2f64.powi(-11))] {
        let path = dir.join(format!("{dtype:?}.safetensors"));
        m.save_as(&path, dtype).unwrap();
        let full = std::fs::metadata(&f32_path).unwrap().len();
        let small = std::fs::metadata(&path).unwrap().len();
        assert!(
            small * 10 < full * 6,
            "{dtype:?}: {small} bytes is not about half of {full}"
        );
        let mut other = small_model_seeded(Energy::LayeredLeastSquares, 99);
        other.load_weights(&path).unwrap();
        let got: Vec<f64> = other
            .parameters()
            .unwrap()
            .into_iter()
            .flat_map(|(w, b)| w.into_iter().chain(b))
            .collect();
        for (g, e) in got.iter().zip(&exact) {
            assert!((g - e).abs() <= rel * e.abs() + 1e-7, "{dtype:?}: {g} vs {e}");
        }
        assert!(got != exact, "{dtype:?} should round");
    }
    // f16 cannot hold large values: an error, not infinity.
    let mut big = small_model(Energy::LayeredLeastSquares);
    let mut vals = big.parameters().unwrap();
    vals[0].0[0] = 1e6;
    let path = dir.join("big.safetensors");
    mep::io::save(&path, big.arch(), big.energy(), &vals, Dtype::F16).unwrap_err();
    mep::io::save(&path, big.arch(), big.energy(), &vals, Dtype::BF16).unwrap();
    big.load_weights(&path).unwrap();
    assert!((big.parameters().unwrap()[0].0[0] - 1e6).abs() < 1e6 * 2f64.powi(-8));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_finite_but_absurd_loss_is_divergence_too() {
    // Plain SGD at a learning rate far too large, without the spectral constraint: the
    // weights and the loss blow up while the loss stays finite for a while.
    // `Optimizer::step`'s own periodic check must catch it, not only the training loop's.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    let Ok(mnist) = Mnist::load(&dir) else {
        eprintln!("skipping: MNIST not available");
        return;
    };
    let mut m = Sequential::new(&Device::Cpu)
        .flatten()
        .linear(784, 128)
        .relu()
        .linear(128, 10)
        .build(0)
        .unwrap();
    let mut opt = sgd(&m).lr(20.0).check_every(10).build().unwrap();
    let mut err = None;
    for b in mnist.train.subset(40_000).batches(64, Shuffle::Seeded(0)).unwrap() {
        if let Err(e) = opt.step(&mut m, &b.x, &b.y) {
            err = Some(e);
            break;
        }
    }
    match err {
        Some(MepError::Diverged { loss, .. }) => assert!(loss.is_nan() || loss > 1e6, "loss {loss}"),
        other => panic!("expected Diverged, got {other:?}"),
    }
}
