//! SPEC §5 ground truths on tiny networks, in f64 on the CPU backend, with fresh
//! random inputs each run: Backprop vs finite differences, layered EP vs Backprop
//! as β → 0, both energies' EP estimates vs finite differences of the equilibrium
//! cost, and symmetric nudging's smaller bias.

mod common;

use common::*;
use mep::ep::{Energy, GradConfig, Mode, Nudging};
use mep::nn::Activation;
use mep::rng::Rng;
use mep::Loss;

fn cfg(mode: Mode, beta: f64, steps: usize, nudging: Nudging, loss: Loss) -> GradConfig {
    GradConfig {
        mode,
        beta,
        settle_steps: steps,
        settle_lr: 0.5,
        nudging,
        loss,
    }
}

fn batch(rng: &mut Rng, rows: usize, inputs: usize, classes: usize) -> (Vec<f64>, Vec<u32>) {
    (normals(rng, rows * inputs, 1.0), labels(rng, rows, classes))
}

#[test]
fn backprop_matches_finite_differences() {
    let seed = fresh_seed("backprop_fd");
    let mut rng = Rng::new(seed);
    for (act, loss) in [
        (Activation::Tanh, Loss::CrossEntropy { label_smoothing: 0.0 }),
        (Activation::Sigmoid, Loss::SquaredError),
        (Activation::Tanh, Loss::CrossEntropy { label_smoothing: 0.1 }),
    ] {
        let mut net = net64(&[5, 7, 6, 3], act, Energy::LayeredLeastSquares, seed);
        let (x, y) = batch(&mut rng, 4, 5, 3);
        let bp = gradient(&net, &cfg(Mode::Backprop, 1.0, 1, Nudging::OneSided, loss), &x, &y);
        let fd = finite_diff(&mut net, &x, &y, loss, 1e-6);
        let err = rel_err(&bp, &fd);
        assert!(
            err < 1e-6,
            "{act:?} {loss:?}: backprop vs finite differences rel err {err:.3e}"
        );
    }
}

#[test]
fn layered_ep_equals_backprop_as_beta_vanishes() {
    let seed = fresh_seed("layered_ep_vs_bp");
    let mut rng = Rng::new(seed);
    let loss = Loss::CrossEntropy { label_smoothing: 0.0 };
    for act in [Activation::Tanh, Activation::Sigmoid] {
        let net = net64(&[6, 8, 5, 4], act, Energy::LayeredLeastSquares, seed ^ 1);
        let (x, y) = batch(&mut rng, 5, 6, 4);
        let bp = gradient(&net, &cfg(Mode::Backprop, 1.0, 1, Nudging::OneSided, loss), &x, &y);
        let ep = gradient(&net, &cfg(Mode::Ep, 1e-3, 400, Nudging::OneSided, loss), &x, &y);
        let err = rel_err(&ep, &bp);
        assert!(
            err < 1e-2,
            "{act:?}: layered EP (β=1e-3, 400 steps) vs backprop rel err {err:.3e}"
        );
        // And it is a real limit: a large β is visibly biased.
        let ep_big = gradient(&net, &cfg(Mode::Ep, 1.0, 400, Nudging::OneSided, loss), &x, &y);
        assert!(rel_err(&ep_big, &bp) > err, "β = 1 should be more biased than β = 1e-3");
    }
}

#[test]
fn layered_ep_matches_finite_differences() {
    let seed = fresh_seed("layered_ep_fd");
    let mut rng = Rng::new(seed);
    let loss = Loss::SquaredError;
    let mut net = net64(&[4, 6, 3], Activation::Tanh, Energy::LayeredLeastSquares, seed);
    let (x, y) = batch(&mut rng, 3, 4, 3);
    let fd = finite_diff(&mut net, &x, &y, loss, 1e-6);
    let ep = gradient(&net, &cfg(Mode::Ep, 1e-3, 400, Nudging::OneSided, loss), &x, &y);
    assert!(cosine(&ep, &fd) > 0.999, "cosine {}", cosine(&ep, &fd));
    let ratio = ep.iter().map(|v| v * v).sum::<f64>().sqrt() / fd.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!((ratio - 1.0).abs() < 1e-2, "norm ratio {ratio}");
}

#[test]
fn symmetric_nudging_has_smaller_bias() {
    let seed = fresh_seed("symmetric_bias");
    let mut rng = Rng::new(seed);
    let loss = Loss::CrossEntropy { label_smoothing: 0.0 };
    let net = net64(&[6, 8, 4], Activation::Tanh, Energy::LayeredLeastSquares, seed);
    let (x, y) = batch(&mut rng, 6, 6, 4);
    let bp = gradient(&net, &cfg(Mode::Backprop, 1.0, 1, Nudging::OneSided, loss), &x, &y);
    let one = rel_err(
        &gradient(&net, &cfg(Mode::Ep, 0.2, 300, Nudging::OneSided, loss), &x, &y),
        &bp,
    );
    let sym = rel_err(
        &gradient(&net, &cfg(Mode::Ep, 0.2, 300, Nudging::Symmetric, loss), &x, &y),
        &bp,
    );
    assert!(
        sym < 0.5 * one,
        "symmetric bias {sym:.3e} should be well below one-sided {one:.3e}"
    );
}

/// Scales every weight so the Hopfield settle map is a strong contraction.
fn shrink(net: &mut mep::nn::Network<mep::backend::cpu::Cpu<f64>>, f: f64) {
    let vals: Vec<_> = net
        .to_host()
        .unwrap()
        .into_iter()
        .map(|(w, b)| (w.iter().map(|v| v * f).collect(), b))
        .collect();
    net.set_from_host(&vals).unwrap();
}

#[test]
fn hopfield_ep_points_along_finite_differences() {
    let seed = fresh_seed("hopfield_ep_fd");
    let mut rng = Rng::new(seed);
    let loss = Loss::SquaredError;
    for act in [Activation::Sigmoid, Activation::Tanh] {
        let mut net = net64(&[5, 6, 3], act, Energy::Hopfield { free_steps: 300 }, seed);
        shrink(&mut net, 0.8);
        let (x, y) = batch(&mut rng, 4, 5, 3);
        let fd = finite_diff(&mut net, &x, &y, loss, 1e-5);
        let ep = gradient(&net, &cfg(Mode::Ep, 1e-3, 300, Nudging::Symmetric, loss), &x, &y);
        let c = cosine(&ep, &fd);
        eprintln!(
            "{act:?}: cosine {c:.6}, norm ratio {:.4}",
            ep.iter().map(|v| v * v).sum::<f64>().sqrt() / fd.iter().map(|v| v * v).sum::<f64>().sqrt()
        );
        assert!(c > 0.999, "{act:?}: Hopfield EP vs finite differences cosine {c}");
    }
}
