//! Criterion benchmarks of the CPU backend's main primitives at the seed's shapes
//! (batch 64, 784–128–10). FLOP counts for BENCHMARKS.md are printed with each name.
//! GEMMs run on a rayon worker (`on_pool`), as in training.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mep::backend::cpu::{on_pool, Cpu};
use mep::backend::Backend;
use mep::nn::ActChain;
use mep::nn::Activation;
use mep::optim::newton_schulz::{orthogonalize, NsScratch};
use mep::rng::Rng;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal() as f32).collect()
}

fn gemms(c: &mut Criterion) {
    let bk = Cpu::<f32>::new();
    let mut g = c.benchmark_group("gemm");
    // (label, ta, tb, m, n, k): the seed step's large products.
    for (label, ta, tb, m, n, k) in [
        ("forward 64x784 * (128x784)^T", false, true, 64, 128, 784),
        ("estimate (64x128)^T * 64x784", true, false, 128, 784, 64),
        ("ns gram 128x784 * (128x784)^T", false, true, 128, 128, 784),
        ("ns apply 128x128 * 128x784", false, false, 128, 784, 128),
    ] {
        let a = bk.upload(&random(m * k, 1)).unwrap();
        let b = bk.upload(&random(k * n, 2)).unwrap();
        let mut cc = bk.zeros(m * n).unwrap();
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(label, |bch| {
            bch.iter(|| on_pool(|| bk.gemm(ta, tb, m, n, k, 1.0, &a, &b, 0.0, &mut cc)).unwrap())
        });
    }
    g.finish();
}

fn newton_schulz(c: &mut Criterion) {
    let bk = Cpu::<f32>::new();
    let mut g = c.benchmark_group("newton_schulz");
    for (rows, cols) in [(128usize, 784usize), (10, 128)] {
        let u = bk.upload(&random(rows * cols, 3)).unwrap();
        let mut sc = NsScratch::new(&bk, rows, cols).unwrap();
        g.throughput(Throughput::Elements(
            mep::optim::newton_schulz::flops(rows, cols, 5) as u64
        ));
        g.bench_function(format!("{rows}x{cols} x5"), |b| {
            b.iter(|| on_pool(|| orthogonalize(&bk, rows, cols, 5, &u, &mut sc)).unwrap())
        });
    }
    g.finish();
}

fn elementwise(c: &mut Criterion) {
    let bk = Cpu::<f32>::new();
    let (rows, cols) = (64, 128);
    let e = bk.upload(&random(rows * cols, 4)).unwrap();
    let f = bk.upload(&random(rows * cols, 5)).unwrap();
    let s0 = bk.upload(&random(rows * cols, 6)).unwrap();
    let mut s = s0.clone();
    let mut a = bk.zeros(rows * cols).unwrap();
    let relu = ActChain::single(Activation::Relu);
    // Restart from the same state each time: repeated steps would drift the state.
    c.bench_function("layered_settle 64x128 relu", |b| {
        b.iter(|| {
            s.copy_from_slice(&s0);
            bk.layered_settle(rows, cols, &e, &f, -1.0, 0.5, relu, &mut s, &mut a)
                .unwrap()
        })
    });
    let bias = bk.upload(&random(cols, 7)).unwrap();
    let mut out = bk.zeros(rows * cols).unwrap();
    c.bench_function("layered_error 64x128", |b| {
        b.iter(|| bk.layered_error(rows, cols, &s, &f, &bias, &mut out).unwrap())
    });
}

criterion_group!(benches, gemms, newton_schulz, elementwise);
criterion_main!(benches);
