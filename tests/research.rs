//! The research API (issue 10, part 3) against ground truths, with fresh random
//! inputs each run: `Optimizer::gradients` leaves every state alone and matches
//! finite differences of the f64 model; EP follows it as β shrinks; `Model::logits`
//! is the forward pass computed by hand; `set_parameters` checks before writing;
//! `evaluate` reports the loss the model is trained with.

mod common;

use common::{fresh_seed, rel_err};
use mep::ep::Energy;
use mep::rng::Rng;
use mep::{sgd, smep, Dataset, Device, Loss, MepError, Mode, Model, Nudging, Sequential};

/// 6–8(tanh)–3 on the CPU, no output activation.
fn tanh_model(seed: u64, energy: Energy) -> Model {
    Sequential::new(&Device::Cpu)
        .flatten()
        .linear(6, 8)
        .tanh()
        .linear(8, 3)
        .energy(energy)
        .build(seed)
        .unwrap()
}

fn batch(rng: &mut Rng, rows: usize, inputs: usize, classes: usize) -> (Vec<f32>, Vec<u32>) {
    let x = (0..rows * inputs).map(|_| rng.normal() as f32).collect();
    let y = (0..rows).map(|_| rng.below(classes as u64) as u32).collect();
    (x, y)
}

fn widen(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

#[test]
fn gradients_change_no_state() {
    let seed = fresh_seed("gradients_no_state");
    let mut rng = Rng::new(seed);
    let mut a = tanh_model(seed, Energy::LayeredLeastSquares);
    let mut b = tanh_model(seed, Energy::LayeredLeastSquares);
    // Momentum and the spectral constraint: state a stray update would show in.
    let mut oa = sgd(&a).momentum(0.9).gamma(1.0).build().unwrap();
    let mut ob = sgd(&b).momentum(0.9).gamma(1.0).build().unwrap();
    for step in 0..4 {
        let (x, y) = batch(&mut rng, 5, 6, 3);
        let before = a.parameters().unwrap();
        let stats = oa.stats().unwrap();
        let g1 = oa.gradients(&a, &x, &y).unwrap();
        let g2 = oa.gradients(&a, &x, &y).unwrap();
        assert_eq!(g1, g2, "step {step}: the same batch gives the same estimate");
        assert_eq!(
            a.parameters().unwrap(),
            before,
            "step {step}: gradients changed the model"
        );
        assert_eq!(oa.steps(), step, "gradients counted a step");
        assert_eq!(oa.stats().unwrap(), stats, "gradients changed the running statistics");
        oa.step(&mut a, &x, &y).unwrap();
        ob.step(&mut b, &x, &y).unwrap();
        // Bit-identical to an optimizer that never had gradients taken: momentum untouched.
        assert_eq!(
            a.parameters().unwrap(),
            b.parameters().unwrap(),
            "step {step}: trajectories split"
        );
    }
}

#[test]
fn backprop_gradients_match_finite_differences_of_the_f64_model() {
    let seed = fresh_seed("bp_vs_fd");
    let mut rng = Rng::new(seed);
    for loss in [Loss::CrossEntropy { label_smoothing: 0.0 }, Loss::SquaredError] {
        let model = tanh_model(seed ^ 5, Energy::LayeredLeastSquares);
        let opt = sgd(&model).mode(Mode::Backprop).loss(loss).build().unwrap();
        let (x, y) = batch(&mut rng, 4, 6, 3);
        let bp = opt.gradients(&model, &x, &y).unwrap();
        let fd = model
            .to_f64()
            .unwrap()
            .finite_differences(&widen(&x), &y, loss, 1e-6)
            .unwrap();
        // f32 backprop against an f64 ground truth: rounding-level agreement.
        let err = rel_err(&bp.flatten(), &fd.flatten());
        assert!(err < 1e-4, "{loss:?}: backprop vs finite differences rel err {err:.3e}");
        // And the f64 model's own Backprop mode agrees to f64 precision.
        let bp64 = model
            .to_f64()
            .unwrap()
            .gradients(&opt.config().grad, &widen(&x), &y)
            .unwrap();
        let err64 = rel_err(&bp64.flatten(), &fd.flatten());
        assert!(
            err64 < 1e-6,
            "{loss:?}: f64 backprop vs finite differences rel err {err64:.3e}"
        );
    }
}

#[test]
fn ep_estimates_follow_the_true_gradient_as_beta_shrinks() {
    let seed = fresh_seed("ep_vs_bp");
    let mut rng = Rng::new(seed);
    let model = tanh_model(seed, Energy::LayeredLeastSquares);
    let (x, y) = batch(&mut rng, 8, 6, 3);
    // The third field: whether β = 2 is visibly biased. The centred coupled rule
    // with the squared error is nearly unbiased even there (measured cosine ≈ 0.99
    // at β = 2 against ≈ 0.998 at 0.05, too close to order reliably in f32).
    // The fourth: the cosine required at β = 0.05. The EP rules tend to the gradient
    // as β → 0. Coupled learning does not: it clamps the output at o⋆ + η(y − o⋆),
    // which the nudged equilibrium reaches only without hidden layers, so its
    // estimate stays a (close) descent direction; its cosine was ≥ 0.99 on 20 seeds
    // and 0.9755 on one (MEP_TEST_SEED=1795991169440045779).
    for (nudging, loss, biased, min_cos) in [
        (
            Nudging::OneSided,
            Loss::CrossEntropy { label_smoothing: 0.0 },
            true,
            0.99,
        ),
        (
            Nudging::Symmetric,
            Loss::CrossEntropy { label_smoothing: 0.0 },
            true,
            0.99,
        ),
        (Nudging::CoupledCentered, Loss::SquaredError, false, 0.95),
    ] {
        let bp = smep(&model).mode(Mode::Backprop).loss(loss).build().unwrap();
        let truth = bp.gradients(&model, &x, &y).unwrap();
        let cos = |beta: f64| {
            let ep = smep(&model)
                .nudging(nudging)
                .loss(loss)
                .beta(beta)
                .settle_steps(100)
                .build()
                .unwrap();
            ep.gradients(&model, &x, &y).unwrap().cosine(&truth).unwrap()
        };
        // 1.5: CEP with cross-entropy is refused from β = 2, where the −β phase's
        // energy stops being convex for a sample split between two classes.
        let (small, large) = (cos(0.05), cos(1.5));
        eprintln!(
            "{}: cosine {small:.6} at β = 0.05, {large:.6} at β = 1.5",
            nudging.name()
        );
        assert!(small > min_cos, "{}: cosine {small} at β = 0.05", nudging.name());
        assert!(
            !biased || small > large,
            "{}: β = 1.5 ({large}) should be worse than β = 0.05 ({small})",
            nudging.name()
        );
    }
}

#[test]
fn hopfield_ep_follows_finite_differences_of_the_free_equilibrium() {
    let seed = fresh_seed("hopfield_fd");
    let mut rng = Rng::new(seed);
    let mut m64 = tanh_model(seed, Energy::Hopfield { free_steps: 300 }).to_f64().unwrap();
    // Shrunk couplings: the settle map contracts, so the free phase converges.
    let shrunk: Vec<_> = m64
        .parameters()
        .unwrap()
        .into_iter()
        .map(|(w, b)| (w.iter().map(|v| 0.8 * v).collect(), b))
        .collect();
    m64.set_parameters(&shrunk).unwrap();
    let (x, y) = batch(&mut rng, 4, 6, 3);
    let x = widen(&x);
    let model = tanh_model(0, Energy::Hopfield { free_steps: 300 });
    let ep = smep(&model)
        .nudging(Nudging::Symmetric)
        .loss(Loss::SquaredError)
        .beta(1e-3)
        .settle_steps(300)
        .build()
        .unwrap();
    let g = m64.gradients(&ep.config().grad, &x, &y).unwrap();
    let fd = m64.finite_differences(&x, &y, Loss::SquaredError, 1e-5).unwrap();
    let c = g.cosine(&fd).unwrap();
    assert!(c > 0.999, "Hopfield EP vs finite differences cosine {c}");
    for (l, c) in g.layer_cosines(&fd).unwrap().into_iter().enumerate() {
        assert!(c > 0.99, "block {}: cosine {c}", l + 1);
    }
}

/// relu(W1 x + b1) then W2 h + b2, by hand in f64.
fn forward_by_hand(params: &[(Vec<f64>, Vec<f64>)], x: &[f32], inputs: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for row in x.chunks(inputs) {
        let mut a: Vec<f64> = widen(row);
        for (l, (w, b)) in params.iter().enumerate() {
            let n_out = b.len();
            let n_in = a.len();
            let mut z: Vec<f64> = (0..n_out)
                .map(|o| b[o] + (0..n_in).map(|i| w[o * n_in + i] * a[i]).sum::<f64>())
                .collect();
            if l + 1 < params.len() {
                z.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            a = z;
        }
        out.extend(a);
    }
    out
}

#[test]
fn logits_are_the_forward_pass() {
    let seed = fresh_seed("logits");
    let mut rng = Rng::new(seed);
    let model = Sequential::new(&Device::Cpu)
        .flatten()
        .linear(5, 7)
        .relu()
        .linear(7, 4)
        .build(seed)
        .unwrap();
    let (x, _) = batch(&mut rng, 6, 5, 4);
    let got: Vec<f64> = model.logits(&x).unwrap().into_iter().map(|v| v as f64).collect();
    let want = forward_by_hand(&model.parameters().unwrap(), &x, 5);
    assert!(
        rel_err(&got, &want) < 1e-6,
        "logits vs hand forward: {got:?} vs {want:?}"
    );
    let argmax: Vec<u32> = got
        .chunks(4)
        .map(|r| (0..4).max_by(|&i, &j| r[i].total_cmp(&r[j])).unwrap() as u32)
        .collect();
    assert_eq!(model.predict(&x).unwrap(), argmax);
    // The f64 copy agrees to f32 rounding.
    let o64 = model.to_f64().unwrap().logits(&widen(&x)).unwrap();
    assert!(rel_err(&got, &o64) < 1e-6);
    // Hopfield: the free-phase output, whose argmax is the prediction.
    let h = tanh_model(seed, Energy::Hopfield { free_steps: 30 });
    let (xh, _) = batch(&mut rng, 3, 6, 3);
    let oh = h.logits(&xh).unwrap();
    assert_eq!(oh.len(), 9);
    let am: Vec<u32> = oh
        .chunks(3)
        .map(|r| (0..3).max_by(|&i, &j| r[i].total_cmp(&r[j])).unwrap() as u32)
        .collect();
    assert_eq!(h.predict(&xh).unwrap(), am);
    // Bad inputs are typed errors.
    assert!(matches!(model.logits(&x[..7]), Err(MepError::Shape(_))));
    let mut bad = x.clone();
    bad[3] = f32::NAN;
    assert!(matches!(model.logits(&bad), Err(MepError::NonFinite(_))));
    // Finite inputs whose outputs overflow f32 (all-ones weights, inputs of 1e38:
    // each first-layer sum is 5e38) are an error naming the sample, for logits and
    // predict alike; the other samples' size does not matter.
    let mut relu = Sequential::new(&Device::Cpu)
        .flatten()
        .linear(5, 8)
        .relu()
        .linear(8, 4)
        .build(seed)
        .unwrap();
    relu.set_parameters(&[(vec![1.0; 40], vec![0.0; 8]), (vec![1.0; 32], vec![0.0; 4])])
        .unwrap();
    let mut x = vec![0.1f32; 15];
    x[5..10].fill(1e38);
    for r in [relu.logits(&x).map(|_| ()), relu.predict(&x).map(|_| ())] {
        match r {
            Err(MepError::NonFinite(m)) => assert!(m.contains("of sample 1") && m.contains("1.000e38"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(relu.predict(&x[..5]).unwrap(), vec![0]);
    // The f64 copy's mean cost, a ground truth for finite differences, refuses an
    // overflowed output too (it returned NaN).
    let mut wild = relu.to_f64().unwrap();
    wild.set_parameters(&[(vec![1e200; 40], vec![0.0; 8]), (vec![1e200; 32], vec![0.0; 4])])
        .unwrap();
    let x64: Vec<f64> = x[..5].iter().map(|&v| v as f64 * 1e10).collect();
    assert!(matches!(wild.logits(&x64), Err(MepError::NonFinite(_))));
    match wild.mean_cost(&x64, &[1], Loss::CrossEntropy { label_smoothing: 0.0 }) {
        Err(MepError::NonFinite(m)) => assert!(m.contains("mean cost"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn set_parameters_checks_everything_before_writing() {
    let seed = fresh_seed("set_parameters");
    let mut rng = Rng::new(seed);
    let mut model = tanh_model(seed, Energy::LayeredLeastSquares);
    let fresh: Vec<(Vec<f64>, Vec<f64>)> = model
        .parameters()
        .unwrap()
        .iter()
        .map(|(w, b)| {
            (
                w.iter().map(|_| (rng.normal() as f32) as f64).collect(),
                b.iter().map(|_| (rng.normal() as f32) as f64).collect(),
            )
        })
        .collect();
    model.set_parameters(&fresh).unwrap();
    assert_eq!(
        model.parameters().unwrap(),
        fresh,
        "f32-representable values round-trip exactly"
    );

    let before = model.parameters().unwrap();
    let mut nan = fresh.clone();
    nan[1].0[5] = f64::NAN; // block 1 valid, block 2 not: block 1 must stay unwritten
    nan[0].0[0] += 1.0;
    match model.set_parameters(&nan) {
        Err(MepError::NonFinite(m)) => assert!(m.contains("block 2") && m.contains("index 5"), "{m}"),
        other => panic!("expected NonFinite, got {other:?}"),
    }
    let mut short = fresh.clone();
    short[0].1.pop();
    match model.set_parameters(&short) {
        Err(MepError::Shape(m)) => assert!(m.contains("block 1") && m.contains("8×6"), "{m}"),
        other => panic!("expected Shape, got {other:?}"),
    }
    assert!(matches!(model.set_parameters(&fresh[..1]), Err(MepError::Shape(_))));
    // Finite in f64 but not in the model's f32 (f32::MAX is 3.40e38).
    for huge in [3.5e38, -1e39, 1e300] {
        let mut over = fresh.clone();
        over[1].1[1] = huge;
        match model.set_parameters(&over) {
            Err(MepError::NonFinite(m)) => assert!(m.contains("block 2") && m.contains("f32"), "{m}"),
            other => panic!("{huge}: expected NonFinite, got {other:?}"),
        }
    }
    // Weights that are finite in f32 but whose squared norm is not: the spectral
    // constraint would see σ̂ = ∞ and scale the matrix to 0 (fifth trial's retry), so
    // an optimizer constraining that layer is refused; just below the limit, or
    // with the layer left unconstrained, it builds.
    for (scale, refused) in [
        (1e20, true),
        (1e25, true),
        (1e37, true),
        (1e19 / 48f64.sqrt() * 0.99, false),
    ] {
        let mut probe = tanh_model(seed, Energy::LayeredLeastSquares);
        let mut over = fresh.clone();
        over[0].0.iter_mut().for_each(|v| *v = v.signum() * scale);
        probe.set_parameters(&over).unwrap();
        let r = mep::smep(&probe)
            .spectral_layers(mep::optim::SpectralLayers::All)
            .build();
        match r {
            Err(MepError::NonFinite(m)) if refused => assert!(m.contains("block 1") && m.contains("‖W‖²"), "{m}"),
            Ok(_) if !refused => {}
            other => panic!("weights of {scale:e}: got {:?}", other.err()),
        }
        mep::smep(&probe)
            .spectral_layers(mep::optim::SpectralLayers::Output)
            .build()
            .unwrap();
    }
    assert_eq!(
        model.parameters().unwrap(),
        before,
        "a failed set_parameters changed the model"
    );

    let mut no_bias = Sequential::new(&Device::Cpu)
        .flatten()
        .linear_no_bias(3, 2)
        .build(0)
        .unwrap();
    assert!(matches!(
        no_bias.set_parameters(&[(vec![0.5; 6], vec![1.0, 0.0])]),
        Err(MepError::InvalidArgument { name: "bias", .. })
    ));
    no_bias.set_parameters(&[(vec![0.5; 6], vec![0.0, 0.0])]).unwrap();
}

#[test]
fn evaluate_reports_the_training_loss() {
    let seed = fresh_seed("evaluate_loss");
    let mut rng = Rng::new(seed);
    let mut model = tanh_model(seed, Energy::LayeredLeastSquares);
    let (x, y) = batch(&mut rng, 20, 6, 3);
    let data = Dataset::new(x.clone(), y.clone(), 6, 3).unwrap();
    let o: Vec<f64> = model.logits(&x).unwrap().into_iter().map(|v| v as f64).collect();
    let (mut se, mut ce) = (0.0, 0.0);
    for (r, &c) in o.chunks(3).zip(&y) {
        se += 0.5 * (0..3).map(|k| (r[k] - f64::from(k as u32 == c)).powi(2)).sum::<f64>();
        let m = r.iter().cloned().fold(f64::MIN, f64::max);
        ce += m + r.iter().map(|v| (v - m).exp()).sum::<f64>().ln() - r[c as usize];
    }
    let (se, ce) = (se / 20.0, ce / 20.0);
    assert_eq!(model.loss(), Loss::CrossEntropy { label_smoothing: 0.0 });
    assert!((model.evaluate(&data).unwrap().loss - ce).abs() < 1e-5 * ce.max(1.0));
    let mut opt = sgd(&model).loss(Loss::SquaredError).build().unwrap();
    assert_eq!(model.loss(), Loss::SquaredError, "building the optimizer sets the loss");
    let got = model.evaluate(&data).unwrap().loss;
    assert!(
        (got - se).abs() < 1e-5 * se.max(1.0),
        "evaluate {got} vs squared error {se}"
    );
    let with_ce = model
        .evaluate_with(&data, Loss::CrossEntropy { label_smoothing: 0.0 })
        .unwrap()
        .loss;
    assert!((with_ce - ce).abs() < 1e-5 * ce.max(1.0));
    opt.step(&mut model, &x, &y).unwrap();
    assert_eq!(model.loss(), Loss::SquaredError);
    // No samples, no mean: an error, not a loss and accuracy of 0.
    let empty = data.subset(0);
    let r = model.evaluate(&empty);
    assert!(
        matches!(r, Err(MepError::InvalidArgument { name: "data", .. })),
        "{r:?}"
    );
    let r = model.accuracy(&empty);
    assert!(
        matches!(r, Err(MepError::InvalidArgument { name: "data", .. })),
        "{r:?}"
    );
    let empty = model.upload(&empty).unwrap();
    let r = opt.train_epoch(&mut model, &empty, 8, mep::Shuffle::None, 0, 0, |_, _, _| {});
    assert!(
        matches!(r, Err(MepError::InvalidArgument { name: "data", .. })),
        "{r:?}"
    );
    // Finite parameters whose outputs overflow f32: no NaN or infinite mean as a result.
    let mut huge = model.parameters().unwrap();
    huge.iter_mut()
        .for_each(|(w, _)| w.iter_mut().for_each(|v| *v = f32::MAX as f64));
    model.set_parameters(&huge).unwrap();
    let r = model.evaluate(&data);
    assert!(matches!(r, Err(MepError::NonFinite(_))), "{r:?}");
    let r = opt.gradients(&model, &x, &y);
    assert!(matches!(r, Err(MepError::NonFinite(_))), "{r:?}");
}

#[test]
fn finite_differences_refuse_steps_that_measure_nothing() {
    let seed = fresh_seed("fd_steps");
    let mut rng = Rng::new(seed);
    let m64 = tanh_model(seed, Energy::LayeredLeastSquares).to_f64().unwrap();
    let (x, y) = batch(&mut rng, 4, 6, 3);
    let x = widen(&x);
    for h in [0.0, -1e-6, 1e-320, 1e-13, 1.5, 1e10, f64::NAN, f64::INFINITY] {
        match m64.finite_differences(&x, &y, Loss::SquaredError, h) {
            Err(MepError::InvalidArgument { name: "h", .. }) => {}
            other => panic!("h = {h}: {other:?}"),
        }
    }
    for h in [mep::model64::MIN_FD_STEP, 1e-6, mep::model64::MAX_FD_STEP] {
        m64.finite_differences(&x, &y, Loss::SquaredError, h).unwrap();
    }
}

#[test]
fn gradients_of_different_models_do_not_compare() {
    let a = tanh_model(1, Energy::LayeredLeastSquares);
    let b = Sequential::new(&Device::Cpu).flatten().linear(6, 3).build(1).unwrap();
    let x = vec![0.1f32; 6];
    let ga = sgd(&a).build().unwrap().gradients(&a, &x, &[0]).unwrap();
    let gb = sgd(&b).build().unwrap().gradients(&b, &x, &[0]).unwrap();
    assert!(matches!(ga.cosine(&gb), Err(MepError::Shape(_))));
    assert!(matches!(
        sgd(&a).build().unwrap().gradients(&a, &x, &[3]),
        Err(MepError::InvalidArgument { name: "target", .. })
    ));
}

/// The research API on CUDA agrees with the CPU reference (skipped without a GPU;
/// `MEP_REQUIRE_GPU=1` makes that an error).
#[test]
fn cuda_outputs_and_gradients_match_the_cpu() {
    let build = |device: &Device| {
        Sequential::new(device)
            .flatten()
            .linear(6, 8)
            .tanh()
            .linear(8, 3)
            .build(0)
    };
    let mut gpu = match build(&Device::Cuda(0)) {
        Ok(m) => m,
        Err(e) if std::env::var("MEP_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("MEP_REQUIRE_GPU=1 but CUDA is not usable: {e}")
        }
        Err(e) => {
            eprintln!("skipping: no usable GPU ({e})");
            return;
        }
    };
    let seed = fresh_seed("cuda_research");
    let mut rng = Rng::new(seed);
    let cpu = tanh_model(seed, Energy::LayeredLeastSquares);
    gpu.set_parameters(&cpu.parameters().unwrap()).unwrap();
    let (x, y) = batch(&mut rng, 16, 6, 3);
    let oc: Vec<f64> = cpu.logits(&x).unwrap().into_iter().map(|v| v as f64).collect();
    let og: Vec<f64> = gpu.logits(&x).unwrap().into_iter().map(|v| v as f64).collect();
    assert!(rel_err(&og, &oc) < 1e-5, "logits: rel err {}", rel_err(&og, &oc));
    for mode in [Mode::Backprop, Mode::Ep] {
        let gc = smep(&cpu).mode(mode).build().unwrap().gradients(&cpu, &x, &y).unwrap();
        let gg = smep(&gpu).mode(mode).build().unwrap().gradients(&gpu, &x, &y).unwrap();
        let err = rel_err(&gg.flatten(), &gc.flatten());
        assert!(err < 1e-4, "{mode:?} gradients: CUDA vs CPU rel err {err:.3e}");
    }
}

/// The layered energy's EP estimate in f32 keeps every layer's digits at depth: the
/// nudged phase moves the deviations from the free state (u = s − s⋆ and
/// Δa = φ(s⋆ + u) − φ(s⋆), formed without cancellation), not the states, whose f32
/// rounding ε·|s| swamped the nudge's share of layers far from the output. On this
/// 10–16×7–4 sigmoid net that share is about 4⁻⁷ of the output's; with the states
/// rounded instead, layer 1's cosine with the f64 estimate was 0.85 at β = 0.1 and
/// 0.34 at 0.01, and its estimate exactly 0 at 1e-4, while the cosine over all
/// parameters read 1.0000. Here every layer must match the f64 model's estimate of
/// the same batch, in direction and size.
#[test]
fn f32_layered_estimates_keep_every_layer_at_depth() {
    let seed = fresh_seed("f32 layered depth");
    let mut rng = Rng::new(seed);
    let mut seq = Sequential::new(&Device::Cpu).flatten().linear(10, 16);
    for i in 0..7 {
        seq = seq.sigmoid().linear(16, if i == 6 { 4 } else { 16 });
    }
    let model = seq.energy(Energy::LayeredLeastSquares).build(seed).unwrap();
    let m64 = model.to_f64().unwrap();
    let (x, y) = batch(&mut rng, 32, 10, 4);
    let loss = Loss::CrossEntropy { label_smoothing: 0.0 };
    for nudging in [Nudging::Symmetric, Nudging::OneSided] {
        for beta in [1e-1, 1e-2, 1e-4] {
            let ep = smep(&model)
                .nudging(nudging)
                .loss(loss)
                .beta(beta)
                .settle_steps(60)
                .build()
                .unwrap();
            let g32 = ep.gradients(&model, &x, &y).unwrap();
            let g64 = m64.gradients(&ep.config().grad, &widen(&x), &y).unwrap();
            let cos = g32.layer_cosines(&g64).unwrap();
            for (l, (a, b)) in g32.layers.iter().zip(&g64.layers).enumerate() {
                let (a, b) = ([&a.weight[..], &a.bias].concat(), [&b.weight[..], &b.bias].concat());
                let err = rel_err(&a, &b);
                assert!(
                    err < 1e-3 && cos[l] > 0.999_999,
                    "{} β = {beta}: layer {} of 8 has relative error {err:e} and cosine {} against f64 (seed {seed})",
                    nudging.name(),
                    l + 1,
                    cos[l]
                );
            }
        }
    }
}
