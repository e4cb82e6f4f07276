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

#[test]
fn spectral_bound_holds_after_every_step() {
    let seed = fresh_seed("spectral_bound");
    let mut rng = Rng::new(seed);
    let mut net = mep::nn::Network::new(
        Cpu::<f32>::new(),
        mep::nn::Arch::mlp(&[20, 16, 12, 5], Activation::Relu).unwrap(),
        Energy::LayeredLeastSquares,
        seed,
    )
    .unwrap();
    let mut cfg = OptimConfig::smep();
    // The seed's lr with a tight bound, so the constraint binds from the first step.
    cfg.spectral.gamma = 0.3;
    cfg.spectral.layers = SpectralLayers::All;
    let rows = 16;
    let mut eng = Engine::new(cfg, &net, rows).unwrap();
    let mut active = 0;
    for step in 0..40 {
        let x: Vec<f32> = normals(&mut rng, rows * 20, 1.0)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let y = labels(&mut rng, rows, 5);
        eng.ws.load_host_batch(&x, &y).unwrap();
        eng.step(&mut net, rows).unwrap();
        for (l, (w, _)) in net.to_host().unwrap().iter().enumerate() {
            let blk = net.arch.blocks()[l];
            let sigma = *singular_values(w, blk.out, blk.inp).last().unwrap();
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
