//! Criterion benchmarks of the CPU backend's main primitives at the seed's shapes
//! (batch 64, 784–128–10). FLOP counts for BENCHMARKS.md are printed with each name.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mep::backend::cpu::Cpu;
use mep::backend::{Backend, LayerState, NormRule};
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
        ("ns cube 128x128 * 128x128", false, false, 128, 128, 128),
        // The settle loop's and the output layer's narrow products.
        ("settle 64x128 * (10x128)^T", false, true, 64, 10, 128),
        ("settle 64x10 * 10x128", false, false, 64, 128, 10),
        ("estimate (64x10)^T * 64x128", true, false, 10, 128, 64),
    ] {
        let a = bk.upload(&random(m * k, 1)).unwrap();
        let b = bk.upload(&random(k * n, 2)).unwrap();
        let mut cc = bk.zeros(m * n).unwrap();
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(label, |bch| {
            bch.iter(|| bk.gemm(ta, tb, m, n, k, 1.0, &a, &b, 0.0, &mut cc).unwrap())
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
            b.iter(|| orthogonalize(&bk, rows, cols, 5, &u, &mut sc).unwrap())
        });
    }
    g.finish();
}

fn elementwise(c: &mut Criterion) {
    let bk = Cpu::<f32>::new();
    let (rows, cols) = (64, 128);
    let q = bk.upload(&random(rows * cols, 4)).unwrap();
    let f = bk.upload(&random(rows * cols, 5)).unwrap();
    let s_free = bk.upload(&random(rows * cols, 6)).unwrap();
    let u0 = bk.zeros(rows * cols).unwrap();
    let (mut u, mut s) = (u0.clone(), s_free.clone());
    let (mut a, mut da, mut e) = (u0.clone(), u0.clone(), u0.clone());
    for (name, act) in [
        ("relu", Activation::Relu),
        ("tanh", Activation::Tanh),
        ("sigmoid", Activation::Sigmoid),
    ] {
        let act = ActChain::single(act);
        // Restart from the same state each time: repeated steps would drift the state.
        // (The error is formed inside the step: this is what layered_error plus the old
        // settle step did in two passes.)
        c.bench_function(&format!("layered_settle 64x128 {name}"), |b| {
            b.iter(|| {
                u.copy_from_slice(&u0);
                let st = LayerState {
                    u: &mut u,
                    s: &mut s,
                    a: &mut a,
                    da: &mut da,
                    e: &mut e,
                };
                bk.layered_settle(rows, cols, Some(&q), &f, -1.0, 0.5, act, &s_free, st)
                    .unwrap()
            })
        });
    }
    let mut out = bk.zeros(rows * cols).unwrap();
    c.bench_function("layered_error 64x128", |b| {
        b.iter(|| bk.layered_error(rows, cols, &u, Some(&f), &mut out).unwrap())
    });
}

/// The optimizer's passes over a weight matrix of the seed's first layer (128×784),
/// memory bound: throughput in bytes read and written.
fn weight_passes(c: &mut Criterion) {
    let bk = Cpu::<f32>::new();
    let n = 128 * 784;
    let x = bk.upload(&random(n, 8)).unwrap();
    let mut y = bk.upload(&random(n, 9)).unwrap();
    let mut m = bk.upload(&random(n, 10)).unwrap();
    let mut v: Vec<f32> = random(n, 11).iter().map(|x| x * x).collect();
    let mut norm = bk.zeros(1).unwrap();
    bk.sum_sq(&x, &mut norm).unwrap();
    let mut ctl = Vec::new();
    // Adam's step scalars: weight decay factor, step size, 1/sqrt(bias correction 2).
    mep::backend::ctl::encode(&[1.0, 1e-3, 1.0], &mut ctl);
    let ctl = bk.upload_labels(&ctl).unwrap();
    let mut g = c.benchmark_group("weights 128x784");
    let bytes = (4 * n) as u64;
    g.throughput(Throughput::Bytes(3 * bytes));
    g.bench_function("axpby", |b| b.iter(|| bk.axpby(0.5, &x, 0.9, &mut y).unwrap()));
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("sum_sq", |b| b.iter(|| bk.sum_sq(&x, &mut norm).unwrap()));
    g.throughput(Throughput::Bytes(2 * bytes));
    g.bench_function("scale_by_inv_norm", |b| {
        b.iter(|| bk.scale_by_inv_norm(&x, &norm, NormRule::Eps(1e-7), &mut y).unwrap())
    });
    // A bound just below the norm: every call scales W, by 1 − 1e−6 (a few hundred
    // thousand calls shrink it by less than half, far from denormals).
    let gamma = (bk.download(&norm).unwrap()[0] as f64).sqrt() * (1.0 - 1e-6);
    g.bench_function("spectral_clamp", |b| {
        b.iter(|| bk.spectral_clamp(&mut y, &norm, gamma).unwrap())
    });
    g.throughput(Throughput::Bytes(7 * bytes));
    g.bench_function("adam", |b| {
        b.iter(|| bk.adam(&mut y, &x, &mut m, &mut v, 0.9, 0.999, 1e-8, &ctl, 0).unwrap())
    });
    g.finish();
}

/// The output layer's cost gradient (64×10, cross-entropy: one exp per element).
fn cost(c: &mut Criterion) {
    let bk = Cpu::<f32>::new();
    let (rows, classes) = (64, 10);
    let o = bk.upload(&random(rows * classes, 12)).unwrap();
    let labels: Vec<u32> = (0..rows as u32).map(|i| i % 10).collect();
    let labels = bk.upload_labels(&labels).unwrap();
    let mut g = bk.zeros(rows * classes).unwrap();
    let loss = mep::Loss::CrossEntropy;
    c.bench_function("cost_grad 64x10 cross-entropy", |b| {
        b.iter(|| bk.cost_grad(rows, classes, &o, &labels, loss, &mut g).unwrap())
    });
}

criterion_group!(benches, gemms, newton_schulz, elementwise, weight_passes, cost);
criterion_main!(benches);
