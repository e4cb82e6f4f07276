//! Criterion benchmark of one full optimizer step at the seed's configuration
//! (784–128–ReLU–10, batch 64, smep, β 0.5, 15 settle steps) on the CPU backend,
//! plus its two halves: the EP gradient estimate and the SMEP update.

use criterion::{criterion_group, criterion_main, Criterion};
use mep::backend::cpu::Cpu;
use mep::ep::{compute_gradients, Energy, Mode};
use mep::nn::{Activation, Arch, Network};
use mep::optim::{Engine, OptimConfig};
use mep::rng::Rng;

fn setup(energy: Energy, mode: Mode) -> (Network<Cpu<f32>>, Engine<Cpu<f32>>) {
    let net = Network::new(
        Cpu::<f32>::new(),
        Arch::mlp(&[784, 128, 10], Activation::Relu).unwrap(),
        energy,
        0,
    )
    .unwrap();
    let mut cfg = OptimConfig::smep();
    cfg.grad.mode = mode;
    let mut eng = Engine::new(cfg, &net, 64).unwrap();
    let mut rng = Rng::new(1);
    let x: Vec<f32> = (0..64 * 784).map(|_| rng.normal() as f32).collect();
    let y: Vec<u32> = (0..64).map(|_| rng.below(10) as u32).collect();
    eng.ws.load_host_batch(&x, &y).unwrap();
    (net, eng)
}

fn step(c: &mut Criterion) {
    let mut g = c.benchmark_group("seed_step");
    for (name, energy, mode) in [
        ("ep_layered", Energy::LayeredLeastSquares, Mode::Ep),
        ("ep_hopfield", Energy::HOPFIELD, Mode::Ep),
        ("backprop", Energy::LayeredLeastSquares, Mode::Backprop),
    ] {
        let (mut net, mut eng) = setup(energy, mode);
        g.bench_function(format!("{name}/full step"), |b| {
            b.iter(|| eng.step(&mut net, 64).unwrap())
        });
        let cfg = eng.config().grad;
        g.bench_function(format!("{name}/gradients only"), |b| {
            b.iter(|| compute_gradients(&net, &cfg, &mut eng.ws, 64, &mut eng.grads).unwrap())
        });
    }
    let (mut net, mut eng) = setup(Energy::LayeredLeastSquares, Mode::Ep);
    g.bench_function("smep update only", |b| b.iter(|| eng.apply_update(&mut net).unwrap()));
    g.finish();
}

criterion_group!(benches, step);
criterion_main!(benches);
