//! The analytic GEMM list of a step (`mep::flops::step_gemms`, behind BENCHMARKS.md's
//! FLOP counts, `mep-mnist`'s GFLOP/s and `mep-gemm-rate`) must be exactly the GEMMs
//! the algorithm runs: recorded by the CPU backend, call by call, for every mode,
//! energy, nudging, optimizer and spectral setting, on a network with wide and tall
//! weight matrices.

mod common;

use common::{fresh_seed, labels, normals};
use mep::backend::cpu::Cpu;
use mep::ep::{Energy, Mode, Nudging};
use mep::flops::{step_flops, step_gemms};
use mep::nn::{Activation, Arch, Network};
use mep::optim::{Engine, OptimConfig, SpectralLayers};
use mep::rng::Rng;

#[test]
fn analytic_gemm_list_matches_the_recorded_step() {
    let seed = fresh_seed("flops");
    let mut rng = Rng::new(seed);
    // 6 → 9 (tall 9×6) → 5 (wide 5×9) → 3 (wide 3×5)
    let arch = Arch::mlp(&[6, 9, 5, 3], Activation::Tanh).unwrap();
    let rows = 7;
    let mut checked = 0;
    for (mode, energy) in [
        (Mode::Ep, Energy::LayeredLeastSquares),
        (Mode::Ep, Energy::Hopfield { free_steps: 4 }),
        (Mode::Backprop, Energy::LayeredLeastSquares),
    ] {
        for nudging in Nudging::ALL {
            for (name, base) in [
                ("smep", OptimConfig::smep()),
                ("sgd", OptimConfig::sgd()),
                ("adam", OptimConfig::adam()),
            ] {
                for layers in [
                    SpectralLayers::Off,
                    SpectralLayers::Output,
                    SpectralLayers::Couplings,
                    SpectralLayers::All,
                    SpectralLayers::Auto,
                ] {
                    if layers == SpectralLayers::Output && matches!(energy, Energy::Hopfield { .. }) {
                        continue; // refused at this depth (tests/depth.rs)
                    }
                    let mut cfg = base;
                    cfg.grad.mode = mode;
                    cfg.grad.nudging = nudging;
                    if nudging.clamps() {
                        cfg.grad.loss = mep::Loss::SquaredError;
                    }
                    cfg.grad.settle_steps = 3;
                    cfg.spectral.layers = layers;
                    let bk = Cpu::<f64>::recording();
                    let mut net = Network::new(bk.clone(), arch.clone(), energy, seed).unwrap();
                    let mut eng = Engine::new(cfg, &net, rows).unwrap();
                    let x = normals(&mut rng, rows * 6, 1.0);
                    let y = labels(&mut rng, rows, 3);
                    eng.ws.load_host_batch(&x, &y).unwrap();
                    // A first step (it also applies the spectral constraint once, before
                    // its phases), then the steady-state step that the list describes.
                    eng.step(&mut net, rows).unwrap();
                    bk.take_recorded();
                    eng.step(&mut net, rows).unwrap();
                    let recorded = bk.take_recorded();
                    let expected = step_gemms(&arch, energy, &cfg, rows).unwrap();
                    assert_eq!(
                        recorded, expected,
                        "{mode:?} {energy:?} {nudging:?} {name} {layers:?}: recorded GEMMs differ from the analytic list"
                    );
                    let f: f64 = recorded.iter().map(|g| 2.0 * (g.m * g.n * g.k) as f64).sum();
                    assert_eq!(f, step_flops(&arch, energy, &cfg, rows));
                    checked += 1;
                }
            }
        }
    }
    // 3 modes × 7 rules × 3 presets × 5 layer sets, less Hopfield's 7 × 3 with Output.
    assert_eq!(checked, 3 * 7 * 3 * 5 - 7 * 3);
}
