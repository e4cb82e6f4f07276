//! The SMEP update's ground truths: Newton–Schulz singular values (f64 SVD), the
//! Gram-space evaluation against the direct iteration, and the spectral bound
//! after every step.

mod common;

use common::*;
use mep::backend::cpu::Cpu;
use mep::backend::Backend;
use mep::ep::Energy;
use mep::nn::Activation;
use mep::optim::newton_schulz::{orthogonalize, NsScratch, NS_COEFFS};
use mep::optim::{Engine, OptimConfig, SpectralLayers};
use mep::rng::Rng;

/// The direct quintic iteration X ← aX + (bA + cA²)X, A = XXᵀ, in f64 (the definition).
fn direct_ns(u: &[f64], rows: usize, cols: usize, steps: usize) -> Vec<f64> {
    let (a, b, c) = NS_COEFFS;
    let tall = rows > cols;
    // Work on the wide orientation.
    let (r, k) = if tall { (cols, rows) } else { (rows, cols) };
    let mut x: Vec<f64> = if tall {
        (0..r * k).map(|i| u[(i % k) * cols + i / k]).collect()
    } else {
        u.to_vec()
    };
    let nrm = x.iter().map(|v| v * v).sum::<f64>().sqrt() + 1e-7;
    x.iter_mut().for_each(|v| *v /= nrm);
    for _ in 0..steps {
        let mut g = vec![0.0; r * r];
        for i in 0..r {
            for j in 0..r {
                g[i * r + j] = (0..k).map(|t| x[i * k + t] * x[j * k + t]).sum();
            }
        }
        let mut p = vec![0.0; r * r];
        for i in 0..r {
            for j in 0..r {
                let g2: f64 = (0..r).map(|t| g[i * r + t] * g[t * r + j]).sum();
                p[i * r + j] = b * g[i * r + j] + c * g2;
            }
        }
        let mut nx = vec![0.0; r * k];
        for i in 0..r {
            for j in 0..k {
                nx[i * k + j] = a * x[i * k + j] + (0..r).map(|t| p[i * r + t] * x[t * k + j]).sum::<f64>();
            }
        }
        x = nx;
    }
    if tall {
        (0..rows * cols).map(|i| x[(i % cols) * rows + i / cols]).collect()
    } else {
        x
    }
}

#[test]
fn newton_schulz_lands_in_the_quintic_band_and_matches_the_direct_form() {
    let seed = fresh_seed("newton_schulz");
    let mut rng = Rng::new(seed);
    for (rows, cols) in [(16, 40), (40, 16), (20, 30), (10, 128)] {
        // Gaussian rows scaled from 0.2 to 1: far from orthogonal (condition number > 5),
        // yet every singular value reaches the band within 5 steps.
        let mut u = normals(&mut rng, rows * cols, 1.0);
        for (i, v) in u.iter_mut().enumerate() {
            *v *= 0.2 + 0.8 * (i / cols) as f64 / (rows - 1) as f64;
        }
        // f64: Gram-space evaluation == direct iteration.
        let bk = Cpu::<f64>::new();
        let mut sc = NsScratch::new(&bk, rows, cols).unwrap();
        orthogonalize(&bk, rows, cols, 5, &u, &mut sc).unwrap();
        let reference = direct_ns(&u, rows, cols, 5);
        let err = rel_err(&sc.x, &reference);
        assert!(err < 1e-9, "{rows}x{cols}: Gram form vs direct rel err {err:.3e}");
        // Singular values in the band (f64 SVD of the result).
        let sv = singular_values(&sc.x, rows, cols);
        assert!(
            sv[0] > 0.5 && sv[sv.len() - 1] < 1.5,
            "{rows}x{cols}: singular values {:.3}..{:.3}",
            sv[0],
            sv[sv.len() - 1]
        );
        // Before: far from orthogonal.
        let sv_in = singular_values(&u, rows, cols);
        assert!(
            sv_in[sv_in.len() - 1] / sv_in[0] > 3.0,
            "input already nearly orthogonal"
        );
        // f32 agrees with the f64 reference to f32 accuracy.
        let b32 = Cpu::<f32>::new();
        let u32v: Vec<f32> = u.iter().map(|&v| v as f32).collect();
        let mut sc32 = NsScratch::new(&b32, rows, cols).unwrap();
        orthogonalize(&b32, rows, cols, 5, &u32v, &mut sc32).unwrap();
        let x32: Vec<f64> = sc32.x.iter().map(|&v| v as f64).collect();
        let err32 = rel_err(&x32, &reference);
        assert!(err32 < 1e-4, "{rows}x{cols}: f32 vs f64 rel err {err32:.3e}");
    }
}

type Net32 = mep::nn::Network<Cpu<f32>>;

/// A ReLU network of `sizes` (20 inputs, 5 classes; layered energy) and an SMEP
/// engine (the seed's lr) for batches of [`ROWS`], constraining `layers` to γ.
fn constrained(sizes: &[usize], gamma: f64, layers: SpectralLayers, seed: u64) -> (Net32, Engine<Cpu<f32>>) {
    let net = mep::nn::Network::new(
        Cpu::<f32>::new(),
        mep::nn::Arch::mlp(sizes, Activation::Relu).unwrap(),
        Energy::LayeredLeastSquares,
        seed,
    )
    .unwrap();
    let mut cfg = OptimConfig::smep();
    cfg.spectral.gamma = gamma;
    cfg.spectral.layers = layers;
    let eng = Engine::new(cfg, &net, ROWS).unwrap();
    (net, eng)
}

const ROWS: usize = 16;

/// One step on a fresh random batch; returns σ of each block's weights after it.
fn step_and_sigmas(eng: &mut Engine<Cpu<f32>>, net: &mut Net32, rng: &mut Rng) -> Vec<f64> {
    let x: Vec<f32> = normals(rng, ROWS * 20, 1.0).into_iter().map(|v| v as f32).collect();
    let y = labels(rng, ROWS, 5);
    eng.ws.load_host_batch(&x, &y).unwrap();
    eng.step(net, ROWS).unwrap();
    let blocks = net.arch.blocks().to_vec();
    net.to_host()
        .unwrap()
        .iter()
        .zip(blocks)
        .map(|((w, _), blk)| *singular_values(w, blk.out, blk.inp).last().unwrap())
        .collect()
}

#[test]
fn spectral_bound_holds_after_every_step() {
    let seed = fresh_seed("spectral_bound");
    let mut rng = Rng::new(seed);
    // The seed's lr with a tight bound, so the constraint binds from the first step.
    let (mut net, mut eng) = constrained(&[20, 16, 12, 5], 0.3, SpectralLayers::All, seed);
    let mut active = 0;
    for step in 0..40 {
        for (l, sigma) in step_and_sigmas(&mut eng, &mut net, &mut rng).into_iter().enumerate() {
            assert!(
                sigma <= 0.3 * 1.01,
                "step {step}, block {}: σ = {sigma:.5} > 1.01·γ",
                l + 1
            );
            if sigma > 0.295 {
                active += 1;
            }
        }
    }
    assert!(
        active > 0,
        "the constraint never bound: the test would not catch a missing rescale"
    );
}

#[test]
fn smep_update_moves_weights_by_the_scaled_orthogonal_step() {
    // One step with zero momentum history: ΔW = −lr·scale·NS(G (+ μG for Nesterov)).
    let seed = fresh_seed("smep_step");
    let mut rng = Rng::new(seed);
    let bk = Cpu::<f64>::new();
    let mut net = mep::nn::Network::new(
        bk.clone(),
        mep::nn::Arch::mlp(&[12, 8, 4], Activation::Tanh).unwrap(),
        Energy::LayeredLeastSquares,
        seed,
    )
    .unwrap();
    let mut cfg = OptimConfig::smep();
    cfg.spectral.layers = SpectralLayers::Off;
    let mut eng = Engine::new(cfg, &net, 6).unwrap();
    let x = normals(&mut rng, 6 * 12, 1.0);
    let y = labels(&mut rng, 6, 4);
    eng.ws.load_host_batch(&x, &y).unwrap();
    let before = net.to_host().unwrap();
    mep::ep::compute_gradients(&net, &cfg.grad, &mut eng.ws, 6, &mut eng.grads).unwrap();
    let g0 = bk.download(&eng.grads.w[0]).unwrap();
    eng.apply_update(&mut net).unwrap();
    let after = net.to_host().unwrap();
    // Nesterov with M = G: U = G + μG; NS is scale-invariant.
    let o = direct_ns(&g0, 8, 12, 5);
    let scale = 0.05 * (8.0f64 / 12.0).sqrt();
    let dw: Vec<f64> = after[0]
        .0
        .iter()
        .zip(&before[0].0)
        .map(|(a, b)| (b - a) / scale)
        .collect();
    let err = rel_err(&dw, &o);
    assert!(err < 1e-6, "ΔW vs −lr·scale·NS(G): rel err {err:.3e}");
}

// ---- Builder: options that would have no effect, and values that would hang. ----

use mep::{adam, sgd, smep, Device, Loss, MepError, Nudging, Sequential};

/// 20–16(relu)–4 (two weight layers) on the CPU with `energy`.
fn two_layer(energy: Energy) -> mep::Model {
    Sequential::new(&Device::Cpu)
        .flatten()
        .linear(20, 16)
        .relu()
        .linear(16, 4)
        .energy(energy)
        .build(3)
        .unwrap()
}

/// 20–4: one weight layer, no hidden layer (so no coupling W_2 … W_L).
fn one_layer(energy: Energy) -> mep::Model {
    Sequential::new(&Device::Cpu)
        .flatten()
        .linear(20, 4)
        .energy(energy)
        .build(3)
        .unwrap()
}

/// Asserts an `InvalidArgument` naming `name` whose message (value and fix) mentions
/// every one of `mentions`.
#[track_caller]
fn refused<T>(r: mep::Result<T>, name: &str, mentions: &[&str]) {
    match r {
        Err(e @ MepError::InvalidArgument { .. }) => {
            let MepError::InvalidArgument { name: n, .. } = &e else {
                unreachable!()
            };
            assert_eq!(*n, name, "wrong option named: {e}");
            let text = e.to_string();
            assert!(text.contains(name), "the message must name `{name}`: {text}");
            for m in mentions {
                assert!(text.contains(m), "the message must mention {m:?}: {text}");
            }
        }
        Err(e) => panic!("expected an InvalidArgument for `{name}`, got: {e}"),
        Ok(_) => panic!("expected `{name}` to be refused, got Ok"),
    }
}

#[test]
fn beta_is_refused_with_contrastive_learning_only() {
    let m = two_layer(Energy::LayeredLeastSquares);
    let cl = || smep(&m).nudging(Nudging::Contrastive).loss(Loss::SquaredError);
    refused(cl().beta(0.3).build(), "beta", &["contrastive", "coupled"]);
    // Order does not matter.
    refused(
        smep(&m)
            .beta(0.3)
            .loss(Loss::SquaredError)
            .nudging(Nudging::Contrastive)
            .build(),
        "beta",
        &[],
    );
    // CL without an explicit β builds; every other rule uses β.
    cl().build().unwrap();
    for rule in Nudging::ALL.into_iter().filter(|&r| r != Nudging::Contrastive) {
        let loss = if rule.clamps() {
            Loss::SquaredError
        } else {
            Loss::CrossEntropy { label_smoothing: 0.0 }
        };
        smep(&m).nudging(rule).loss(loss).beta(0.3).build().unwrap();
    }
}

#[test]
fn a_spectral_constraint_covering_no_matrix_is_refused() {
    let layered = one_layer(Energy::LayeredLeastSquares);
    let hopfield = one_layer(Energy::HOPFIELD);
    // Couplings W_2 … W_L: none with one weight layer.
    for m in [&layered, &hopfield] {
        refused(
            smep(m).spectral_layers(SpectralLayers::Couplings).build(),
            "spectral_layers",
            &["depth 1", "Output", "Off"],
        );
        refused(
            sgd(m).spectral_layers(SpectralLayers::Couplings).build(),
            "spectral_layers",
            &[],
        );
        for ok in [SpectralLayers::Output, SpectralLayers::All, SpectralLayers::Off] {
            smep(m).spectral_layers(ok).build().unwrap();
        }
    }
    // Auto is Couplings with the Hopfield energy: explicit, or through gamma.
    refused(
        smep(&hopfield).spectral_layers(SpectralLayers::Auto).build(),
        "spectral_layers",
        &[],
    );
    refused(smep(&hopfield).gamma(0.9).build(), "gamma", &["Output"]);
    refused(sgd(&hopfield).gamma(0.9).build(), "gamma", &[]);
    // Auto is the output layer with the layered energy: fine at depth 1.
    smep(&layered).spectral_layers(SpectralLayers::Auto).build().unwrap();
    sgd(&layered).gamma(0.9).build().unwrap();
    // The default (Auto, not set by the user) never errors.
    smep(&layered).build().unwrap();
    smep(&hopfield).build().unwrap();
    // With a hidden layer, Couplings covers W_2.
    smep(&two_layer(Energy::HOPFIELD))
        .spectral_layers(SpectralLayers::Couplings)
        .build()
        .unwrap();
    smep(&two_layer(Energy::LayeredLeastSquares))
        .spectral_layers(SpectralLayers::Couplings)
        .build()
        .unwrap();
    // A bound on the Hopfield couplings keeps the free phase contracting only below 1
    // (the sixth user trial's γ = 5 left it unsettled, silently): γ ≥ 1 is refused
    // wherever a coupling is bounded, accepted below 1 and on the layered energy,
    // whose settling does not rest on it.
    let deep = two_layer(Energy::HOPFIELD);
    for gamma in [1.0, 5.0] {
        refused(smep(&deep).gamma(gamma).build(), "gamma", &["below 1"]);
        refused(
            smep(&deep).spectral_layers(SpectralLayers::Output).gamma(gamma).build(),
            "gamma",
            &["below 1"],
        );
        smep(&two_layer(Energy::LayeredLeastSquares))
            .gamma(gamma)
            .build()
            .unwrap();
    }
    smep(&deep).gamma(0.99).build().unwrap();
    // As the network stores it: 1 − 1e-8 is 1 in f32.
    refused(smep(&deep).gamma(1.0 - 1e-8).build(), "gamma", &["below 1"]);
    // sgd's γ when only spectral_layers turns the constraint on is smep's 0.95.
    let cfg = sgd(&deep)
        .spectral_layers(SpectralLayers::Couplings)
        .build()
        .unwrap()
        .config();
    assert_eq!(cfg.spectral.gamma, 0.95);
    sgd(&deep).gamma(0.95).build().unwrap();
}

#[test]
fn nesterov_without_momentum_is_refused() {
    let m = two_layer(Energy::LayeredLeastSquares);
    refused(sgd(&m).momentum(0.0).nesterov(true).build(), "nesterov", &["momentum"]);
    refused(sgd(&m).nesterov(true).momentum(0.0).build(), "nesterov", &[]);
    refused(smep(&m).momentum(0.0).nesterov(true).build(), "nesterov", &[]);
    sgd(&m).nesterov(true).build().unwrap();
    sgd(&m).momentum(0.0).nesterov(false).build().unwrap();
    // smep's default Nesterov is not the user's: momentum 0 alone is fine.
    smep(&m).momentum(0.0).build().unwrap();
}

#[test]
fn settle_lr_is_refused_with_the_hopfield_energy() {
    let h = two_layer(Energy::HOPFIELD);
    refused(smep(&h).settle_lr(0.3).build(), "settle_lr", &["Hopfield"]);
    refused(
        sgd(&h).nudging(Nudging::Symmetric).settle_lr(0.3).build(),
        "settle_lr",
        &[],
    );
    smep(&h).settle_steps(20).build().unwrap();
    smep(&two_layer(Energy::LayeredLeastSquares))
        .settle_lr(0.3)
        .build()
        .unwrap();
}

#[test]
fn power_iters_is_refused_when_the_constraint_is_off() {
    let m = two_layer(Energy::LayeredLeastSquares);
    refused(sgd(&m).power_iters(5).build(), "power_iters", &["spectral"]);
    refused(adam(&m).power_iters(5).build(), "power_iters", &[]);
    refused(
        smep(&m).power_iters(5).spectral_layers(SpectralLayers::Off).build(),
        "power_iters",
        &[],
    );
    // With a user-unset Auto that covers nothing (Hopfield, depth 1) it has no effect either.
    refused(
        smep(&one_layer(Energy::HOPFIELD)).power_iters(5).build(),
        "power_iters",
        &[],
    );
    smep(&m).power_iters(5).build().unwrap();
    sgd(&m).gamma(0.9).power_iters(5).build().unwrap();
}

#[test]
fn bias_lr_is_refused_on_a_model_without_biases() {
    let no_bias = Sequential::new(&Device::Cpu)
        .flatten()
        .linear_no_bias(20, 16)
        .relu()
        .linear_no_bias(16, 4)
        .build(0)
        .unwrap();
    for b in [smep(&no_bias), sgd(&no_bias), adam(&no_bias)] {
        refused(b.bias_lr(1e-3).build(), "bias_lr", &["no biases"]);
    }
    smep(&no_bias).build().unwrap();
    // One layer with a bias is enough.
    let some_bias = Sequential::new(&Device::Cpu)
        .flatten()
        .linear_no_bias(20, 16)
        .relu()
        .linear(16, 4)
        .build(0)
        .unwrap();
    smep(&some_bias).bias_lr(1e-3).build().unwrap();
}

#[test]
fn counts_that_would_hang_are_refused() {
    let m = two_layer(Energy::LayeredLeastSquares);
    let h = two_layer(Energy::HOPFIELD);
    refused(
        smep(&m).settle_steps(100_000_000_000).build(),
        "settle_steps",
        &["10000"],
    );
    refused(smep(&h).settle_steps(10_001).build(), "settle_steps", &[]);
    smep(&m).settle_steps(10_000).build().unwrap();
    refused(smep(&m).power_iters(100_000_000_000).build(), "power_iters", &["1000"]);
    refused(smep(&m).power_iters(1_001).build(), "power_iters", &[]);
    smep(&m).power_iters(1_000).build().unwrap();
    // The configuration is checked by the engine too.
    let mut cfg = OptimConfig::smep();
    cfg.grad.settle_steps = usize::MAX;
    assert!(matches!(
        cfg.validate(),
        Err(MepError::InvalidArgument {
            name: "settle_steps",
            ..
        })
    ));
}

#[test]
fn learning_rates_that_are_zero_in_f32_are_refused() {
    let m = two_layer(Energy::LayeredLeastSquares);
    refused(smep(&m).lr(1e-300).build(), "lr", &["f32"]);
    refused(sgd(&m).lr(1e-300).build(), "lr", &[]);
    refused(smep(&m).lr(1e39).build(), "lr", &[]);
    refused(smep(&m).bias_lr(1e-300).build(), "bias_lr", &["f32"]);
    refused(adam(&m).bias_lr(1e-50).build(), "bias_lr", &[]);
    // Tiny but positive in f32 is a valid (if useless) rate.
    smep(&m).lr(1e-40).build().unwrap();
    smep(&m).bias_lr(1e-40).build().unwrap();
}

#[test]
fn gamma_with_the_constraint_off_is_refused_in_either_order() {
    let m = two_layer(Energy::LayeredLeastSquares);
    for preset in [sgd, smep, adam] {
        refused(
            preset(&m).spectral_layers(SpectralLayers::Off).gamma(0.9).build(),
            "gamma",
            &["Off"],
        );
        refused(
            preset(&m).gamma(0.9).spectral_layers(SpectralLayers::Off).build(),
            "gamma",
            &["Off"],
        );
    }
    // gamma alone turns sgd's constraint on.
    let cfg = sgd(&m).gamma(0.9).build().unwrap().config();
    assert_eq!(cfg.spectral.layers, SpectralLayers::Auto);
}

/// 6–32–32–32–3 Hopfield net (three hidden layers).
fn deep_hopfield() -> mep::Model {
    Sequential::new(&Device::Cpu)
        .flatten()
        .linear(6, 32)
        .relu()
        .linear(32, 32)
        .relu()
        .linear(32, 32)
        .relu()
        .linear(32, 3)
        .sigmoid()
        .energy(Energy::HOPFIELD)
        .build(1)
        .unwrap()
}

#[test]
fn a_deep_hopfield_net_needs_its_couplings_bounded_or_an_explicit_off() {
    let m = deep_hopfield();
    // sgd and adam leave the constraint off: not silently, at this depth.
    refused(sgd(&m).build(), "spectral_layers", &["Couplings", "3 hidden layers"]);
    refused(adam(&m).lr(1e-3).build(), "spectral_layers", &["Couplings"]);
    refused(
        sgd(&m).spectral_layers(SpectralLayers::Output).build(),
        "spectral_layers",
        &["Couplings"],
    );
    // Bounding the couplings, or asking for no constraint, builds.
    sgd(&m).spectral_layers(SpectralLayers::Couplings).build().unwrap();
    sgd(&m).gamma(0.95).build().unwrap();
    sgd(&m).spectral_layers(SpectralLayers::Off).build().unwrap();
    smep(&m).build().unwrap();
    // One hidden layer keeps sgd's default.
    sgd(&two_layer(Energy::HOPFIELD)).build().unwrap();
}

#[test]
fn cross_entropy_on_a_single_output_is_refused() {
    let one_out = Sequential::new(&Device::Cpu)
        .flatten()
        .linear(4, 6)
        .relu()
        .linear(6, 1)
        .build(2)
        .unwrap();
    refused(smep(&one_out).build(), "loss", &["single output", "2 outputs"]);
    refused(sgd(&one_out).mode(mep::Mode::Backprop).build(), "loss", &[]);
    // With label smoothing too: q = (1 − ε) + ε/1 is still 1.
    refused(
        smep(&one_out)
            .loss(mep::Loss::CrossEntropy { label_smoothing: 0.1 })
            .build(),
        "loss",
        &[],
    );
    smep(&one_out).loss(mep::Loss::SquaredError).build().unwrap();
    // The f64 and inspection entry points refuse it too (they returned 0).
    let m64 = one_out.to_f64().unwrap();
    let (x, y) = (vec![0.3, -0.2, 0.1, 0.5], vec![0u32]);
    let ce = mep::Loss::CrossEntropy { label_smoothing: 0.0 };
    refused(m64.mean_cost(&x, &y, ce), "loss", &["single output"]);
    refused(m64.finite_differences(&x, &y, ce, 1e-6), "loss", &["single output"]);
    let mut grad = sgd(&two_layer(Energy::LayeredLeastSquares))
        .build()
        .unwrap()
        .config()
        .grad;
    grad.loss = ce;
    refused(m64.gradients(&grad, &x, &y), "loss", &["single output"]);
    grad.mode = mep::Mode::Backprop;
    refused(m64.gradients(&grad, &x, &y), "loss", &["single output"]);
}

#[test]
fn scales_that_vanish_or_overflow_in_f32_are_refused() {
    let m = two_layer(Energy::LayeredLeastSquares);
    refused(sgd(&m).beta(1e-50).build(), "beta", &["f32"]);
    refused(sgd(&two_layer(Energy::HOPFIELD)).beta(1e39).build(), "beta", &[]);
    refused(smep(&m).gamma(1e-50).build(), "gamma", &["f32"]);
    refused(smep(&m).gamma(1e39).build(), "gamma", &[]);
    refused(smep(&m).settle_lr(1e-50).build(), "settle_lr", &["f32"]);
    // Small but normal in f32 is a valid (if unusual) value for γ.
    smep(&m).gamma(1e-30).build().unwrap();
}

/// β below the energy's precision floor is refused. Hopfield: 8 ε of the network's
/// precision (9.5e-7 in f32), where the nudge is lost in the states' rounding and the
/// estimate is noise (before, β = 1e-30 trained nothing, silently). Layered: the
/// smallest normal number over ε (9.9e-32 in f32), where the deviations its nudged
/// phase carries leave the normal range; above it, at β = 1e-10 and 1e-25, its f32
/// estimate is the backprop gradient. Every rule that uses β; CL takes no β. Just
/// above the Hopfield floor the f32 estimate still points the right way, and an f64
/// model takes a far smaller β and is exact there.
#[test]
fn beta_below_the_precision_floor_is_refused() {
    use mep::ep::{GradConfig, Mode, Nudging};
    assert!((mep::optim::min_beta::<f32>() - 9.54e-7).abs() < 1e-9);
    let layered_floor = mep::optim::min_beta_for::<f32>(Energy::LayeredLeastSquares);
    assert!((layered_floor / 9.86e-32 - 1.0).abs() < 1e-2, "{layered_floor:e}");
    let seed = fresh_seed("beta_floor");
    let mut rng = Rng::new(seed);
    let x: Vec<f32> = normals(&mut rng, 8 * 20, 1.0).into_iter().map(|v| v as f32).collect();
    let y = labels(&mut rng, 8, 4);
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for energy in [Energy::LayeredLeastSquares, Energy::HOPFIELD] {
        let m = two_layer(energy);
        let (refused_betas, accepted_betas): (&[f64], &[f64]) = match energy {
            Energy::LayeredLeastSquares => (&[1e-33, 5e-32], &[1e-25, 1e-10]),
            _ => (&[1e-30, 1e-10, 5e-7], &[1e-6]),
        };
        for rule in Nudging::ALL.into_iter().filter(|&r| r != Nudging::Contrastive) {
            let loss = if rule.clamps() {
                mep::Loss::SquaredError
            } else {
                mep::Loss::CrossEntropy
            };
            for &beta in refused_betas {
                let needles: &[&str] = match energy {
                    Energy::LayeredLeastSquares => &["f32", "normal"],
                    _ => &["f32", "Model64"],
                };
                refused(sgd(&m).nudging(rule).loss(loss).beta(beta).build(), "beta", needles);
            }
            for &beta in accepted_betas {
                sgd(&m).nudging(rule).loss(loss).beta(beta).build().unwrap();
            }
        }
        if energy == Energy::LayeredLeastSquares {
            // Far below the Hopfield floor, the layered f32 estimate is the gradient.
            let mut cfg = sgd(&m).mode(Mode::Backprop).build().unwrap().config().grad;
            cfg.mode = Mode::Backprop;
            let truth = m.to_f64().unwrap().gradients(&cfg, &x64, &y).unwrap();
            for beta in [1e-10, 1e-25] {
                let g = sgd(&m).beta(beta).build().unwrap().gradients(&m, &x, &y).unwrap();
                let c = g.cosine(&truth).unwrap();
                assert!(
                    c > 0.99999,
                    "seed {seed}: layered f32 estimate at β = {beta:e} has cosine {c}"
                );
            }
        }
    }
    // Just above the Hopfield floor (layered, PEP), the f32 estimate against f64's at a
    // normal β.
    let m = two_layer(Energy::LayeredLeastSquares);
    let m64 = m.to_f64().unwrap();
    let truth = {
        let mut cfg = sgd(&m).mode(Mode::Backprop).build().unwrap().config().grad;
        cfg.mode = Mode::Backprop;
        m64.gradients(&cfg, &x64, &y).unwrap()
    };
    let near = sgd(&m).beta(2e-6).build().unwrap().gradients(&m, &x, &y).unwrap();
    let c = near.cosine(&truth).unwrap();
    assert!(
        c > 0.95,
        "seed {seed}: f32 estimate at β = 2e-6 has cosine {c} with the gradient"
    );
    // f64 goes far below: β = 1e-9 is exact to f64 rounding there; the Hopfield
    // energy's f64 floor is 8 ε.
    let mut cfg: GradConfig = sgd(&m).build().unwrap().config().grad;
    cfg.beta = 1e-9;
    let c = m64.gradients(&cfg, &x64, &y).unwrap().cosine(&truth).unwrap();
    assert!(c > 0.99999, "seed {seed}: f64 estimate at β = 1e-9 has cosine {c}");
    let h64 = two_layer(Energy::HOPFIELD).to_f64().unwrap();
    cfg.beta = 1e-15;
    refused(h64.gradients(&cfg, &x64, &y), "beta", &["f64"]);
}

/// σ(W) by the f64 SVD.
fn sigma_of(w: &[f64], rows: usize, cols: usize) -> f64 {
    *singular_values(w, rows, cols).last().unwrap()
}

/// The spectral estimate at any magnitude: the Gram matrix is brought to norm ~1 by an
/// exact power of two before it is squared, so W·2^m gives the same power-iteration
/// vector bit for bit and σ̂² scaled by exactly 4^m, from 2^−40 to 2^40 (σ⁸ of the
/// extremes under- and overflows f32: before the fix the estimate collapsed to 0 and
/// the constraint stopped acting). In f32 and f64, wide and tall, on fresh matrices.
#[test]
fn the_spectral_estimate_is_exact_under_power_of_two_scaling() {
    fn check<T: mep::backend::Scalar>(seed: u64) {
        use mep::optim::spectral::PowerIter;
        let mut rng = Rng::new(seed);
        let bk = Cpu::<T>::new();
        for case in 0..4 {
            let k = 1 + rng.below(24) as usize;
            let other = k + rng.below(60) as usize;
            let (rows, cols) = if case % 2 == 0 { (k, other) } else { (other, k) };
            let w = normals(&mut rng, rows * cols, 0.3);
            let sigma = sigma_of(&w, rows, cols);
            let scaled = |m: i32| -> Vec<T> { w.iter().map(|v| T::of(v * 2f64.powi(m))).collect() };
            let base = PowerIter::new(&bk, &scaled(0), rows, cols, seed).unwrap();
            let (u0, sq0) = (base.vector_host(&bk).unwrap(), base.sigma_sq(&bk).unwrap());
            let what = format!("{rows}×{cols} (seed {seed}, {})", std::any::type_name::<T>());
            assert!(
                (sq0.sqrt() - sigma).abs() <= 0.01 * sigma,
                "{what}: σ̂ {} against σ {sigma}",
                sq0.sqrt()
            );
            for m in [-40, -24, -12, 12, 24, 40] {
                let p = PowerIter::new(&bk, &scaled(m), rows, cols, seed).unwrap();
                assert_eq!(
                    p.vector_host(&bk).unwrap(),
                    u0,
                    "{what}: W·2^{m} moved the power-iteration vector"
                );
                let sq = p.sigma_sq(&bk).unwrap();
                assert_eq!(sq, sq0 * 4f64.powi(m), "{what}: σ̂² of W·2^{m}");
            }
        }
    }
    check::<f32>(fresh_seed("spectral_scaling_f32"));
    check::<f64>(fresh_seed("spectral_scaling_f64"));
}

/// A zero matrix (a zero-initialised layer, or one that decays to zero) leaves the
/// power-iteration vector as it was: the constraint still acts on the matrices that
/// follow. Before the fix the vector became 0 and σ̂ stayed 0 for good.
#[test]
fn a_zero_matrix_does_not_switch_the_spectral_constraint_off() {
    use mep::optim::spectral::PowerIter;
    let seed = fresh_seed("spectral_zero");
    let mut rng = Rng::new(seed);
    let bk = Cpu::<f32>::new();
    for case in 0..4 {
        let k = 1 + rng.below(16) as usize;
        let other = k + rng.below(40) as usize;
        let (rows, cols) = if case % 2 == 0 { (k, other) } else { (other, k) };
        let what = format!("{rows}×{cols} (seed {seed})");
        let zero = vec![0.0f32; rows * cols];
        let mut p = PowerIter::new(&bk, &zero, rows, cols, seed).unwrap();
        assert_eq!(p.sigma_sq(&bk).unwrap(), 0.0, "{what}: σ̂² of a zero matrix");
        for step in 0..3 {
            let w = normals(&mut rng, rows * cols, 1.0);
            let sigma = sigma_of(&w, rows, cols);
            let gamma = 0.5 * sigma;
            let mut wb: Vec<f32> = w.iter().map(|&v| v as f32).collect();
            p.constrain(&bk, &mut wb, gamma, 1).unwrap();
            let after = sigma_of(&wb.iter().map(|&v| v as f64).collect::<Vec<_>>(), rows, cols);
            assert!(
                after <= 1.01 * gamma && after >= 0.99 * gamma,
                "{what}, step {step}: σ {sigma:.4} → {after:.4}, γ {gamma:.4}"
            );
            // A zero matrix between two real ones.
            let mut z = zero.clone();
            p.constrain(&bk, &mut z, gamma, 1).unwrap();
            assert!(z.iter().all(|&v| v == 0.0), "{what}: the zero matrix changed");
        }
    }
}

/// The public API, end to end: SMEP with the constraint on a zero-initialised output
/// layer keeps σ(W) ≤ 1.01·γ after every step once the layer grows.
#[test]
fn a_zero_initialised_constrained_layer_is_bounded_after_every_step() {
    use mep::optim::smep;
    use mep::{Device, Sequential};
    let seed = fresh_seed("spectral_zero_layer");
    let mut rng = Rng::new(seed);
    let mut model = Sequential::new(&Device::Cpu)
        .linear(20, 16)
        .relu()
        .linear(16, 4)
        .build(seed)
        .unwrap();
    let mut params = model.parameters().unwrap();
    params[1].0.iter_mut().for_each(|v| *v = 0.0);
    model.set_parameters(&params).unwrap();
    let gamma = 0.5;
    let mut opt = smep(&model)
        .spectral_layers(SpectralLayers::Output)
        .gamma(gamma)
        .lr(0.2)
        .build()
        .unwrap();
    let mut grown = false;
    for step in 0..40 {
        let x: Vec<f32> = normals(&mut rng, 32 * 20, 1.0).into_iter().map(|v| v as f32).collect();
        let y = labels(&mut rng, 32, 4);
        opt.step(&mut model, &x, &y).unwrap();
        let sigma = sigma_of(&model.parameters().unwrap()[1].0, 4, 16);
        assert!(
            sigma <= 1.01 * gamma,
            "step {step} (seed {seed}): σ(W₂) {sigma:.4} > 1.01·γ"
        );
        grown |= sigma > 0.9 * gamma;
    }
    assert!(
        grown,
        "seed {seed}: the layer never reached the bound; the test would not catch the defect"
    );
}

/// A saved state whose power-iteration vector is zero (written by versions that let
/// a zero matrix zero it) is imported without it: the engine keeps its own vector,
/// and the constraint acts on the next step.
#[test]
fn a_saved_zero_power_vector_is_replaced_by_the_engines_own() {
    let seed = fresh_seed("zero_power_u");
    let mut rng = Rng::new(seed);
    // Zero, and so small that its square underflows f32 (Hu is 0 all the same).
    for tiny in [0.0, 1e-45] {
        let (mut net, mut eng) = constrained(&[20, 16, 5], 0.2, SpectralLayers::Output, seed);
        let mut state = eng.export_state().unwrap();
        let u = state.tensors.iter_mut().find(|t| t.name.ends_with("power_u")).unwrap();
        u.values.iter_mut().for_each(|v| *v = tiny);
        eng.import_state(&net, &state).unwrap();
        for step in 0..5 {
            let sigma = step_and_sigmas(&mut eng, &mut net, &mut rng)[1];
            assert!(
                sigma <= 0.2 * 1.01,
                "u = {tiny:e}, step {step} (seed {seed}): σ(W₂) {sigma:.4} > 1.01·γ"
            );
        }
        let after = eng.export_state().unwrap();
        let u = after.tensors.iter().find(|t| t.name.ends_with("power_u")).unwrap();
        assert!(
            u.values.iter().any(|&v| v != 0.0),
            "seed {seed}: the vector stayed zero"
        );
    }
}

/// β past what a nudged phase can settle is refused when the optimizer is built (the
/// sixth user trial trained at β = 1e3 … 1e20 with residuals of 10 … 6e15): along the
/// output, F = E ± βC has curvature 1 ± β·c·φ′² (c: ½ for cross-entropy, 1 for
/// squared error; the 20–16–4 net's output has no activation, φ′ = 1). The −β phase
/// needs it positive (β·c < 1, both energies); the layered sweeps, relaxed by ω, need
/// ω(1 + β·c) < 2; a Hopfield phase of either sign needs β·c·φ′ < 1 (its output's
/// sweep is a fixed-point map of that slope). Values just inside each bound build;
/// the clamped rules, whose β is a clamping strength, are not bounded.
#[test]
fn beta_past_what_the_nudged_phases_can_settle_is_refused() {
    let layered = two_layer(Energy::LayeredLeastSquares);
    let hopfield = two_layer(Energy::HOPFIELD);
    let ce = Loss::CrossEntropy { label_smoothing: 0.1 };
    let se = Loss::SquaredError;
    let build = |m: &mep::Model, loss: Loss, nudging: Nudging, beta: f64, omega: Option<f64>| {
        let b = smep(m).loss(loss).nudging(nudging).beta(beta);
        match omega {
            Some(w) => b.settle_lr(w).build(),
            None => b.build(),
        }
    };
    // The layered +β phase at ω = 0.5: β < 3 (squared error), β < 6 (cross-entropy).
    for (loss, edge) in [(se, 3.0), (ce, 6.0)] {
        build(&layered, loss, Nudging::OneSided, edge * 0.99, None).unwrap();
        refused(
            build(&layered, loss, Nudging::OneSided, edge, None),
            "beta",
            &["settle_lr", "contract"],
        );
        // A smaller ω moves the bound: ω = 0.25 allows β < 7 (SE), 14 (CE).
        build(&layered, loss, Nudging::OneSided, edge * 2.0, Some(0.25)).unwrap();
    }
    // A layered −β phase (NEP, CEP): β·c < 1.
    for nudging in [Nudging::Negative, Nudging::Symmetric] {
        for (loss, edge) in [(se, 1.0), (ce, 2.0)] {
            build(&layered, loss, nudging, edge * 0.99, None).unwrap();
            refused(
                build(&layered, loss, nudging, edge, None),
                "beta",
                &["convex", "one-sided"],
            );
            // As the network computes it: 1 − 1e-8 is 1 in f32.
            refused(
                build(&layered, loss, nudging, edge * (1.0 - 1e-8), None),
                "beta",
                &["convex"],
            );
        }
    }
    // Every Hopfield nudged phase, either sign (the seventh user trial: squared error,
    // sigmoid output, residual 2.7 at β = 1.1 and 420 at 1.5): β·c·φ′ < 1.
    for nudging in [Nudging::OneSided, Nudging::Negative, Nudging::Symmetric] {
        for (loss, edge) in [(se, 1.0), (ce, 2.0)] {
            build(&hopfield, loss, nudging, edge * 0.99, None).unwrap();
            refused(
                build(&hopfield, loss, nudging, edge, None),
                "beta",
                &["fixed-point", "below 1"],
            );
        }
    }
    // Not bounded: the clamped rules' strength.
    smep(&layered)
        .loss(se)
        .nudging(Nudging::CoupledCentered)
        .beta(5.0)
        .build()
        .unwrap();
    // A sigmoid output's slope (¼) scales the bounds by 16.
    let sig = Sequential::new(&Device::Cpu)
        .linear(20, 16)
        .relu()
        .linear(16, 4)
        .sigmoid()
        .build(3)
        .unwrap();
    build(&sig, se, Nudging::Symmetric, 15.9, None).unwrap();
    refused(build(&sig, se, Nudging::Symmetric, 16.0, None), "beta", &["0.25"]);
    // The Hopfield output is the state after the sigmoid: its bound scales by 4.
    let sig_hopfield = Sequential::new(&Device::Cpu)
        .linear(20, 16)
        .relu()
        .linear(16, 4)
        .sigmoid()
        .energy(Energy::HOPFIELD)
        .build(3)
        .unwrap();
    build(&sig_hopfield, se, Nudging::OneSided, 3.96, None).unwrap();
    refused(
        build(&sig_hopfield, se, Nudging::OneSided, 4.0, None),
        "beta",
        &["0.25"],
    );
}
