//! Every primitive of the CPU reference backend against plain f64 definitions written
//! here, on fresh random inputs, in f32 (‖Δ‖/‖ref‖ ≤ 1e-5) and f64 (≤ 1e-12): GEMM in
//! all four transpose combinations (including products large enough for the
//! rayon-split path, tall and wide), the cost gradient against central finite
//! differences of the cost, Adam against a naive bias-corrected Adam, the element-wise
//! settle kernels for every activation chain, gathers, and short buffers giving
//! `MepError::Shape` rather than a panic.
//!
//! Inputs are rounded to the backend's element type first, so the f64 reference sees
//! exactly what the backend sees and the error is the backend's own arithmetic.

mod common;

use common::{fresh_seed, labels, normals, rel_err};
use mep::backend::cpu::Cpu;
use mep::backend::{Backend, LayerState, NormRule, Scalar};
use mep::nn::{ActChain, Activation};
use mep::rng::Rng;
use mep::{Loss, MepError};

// ---- helpers -----------------------------------------------------------------------

/// The tolerance for ‖Δ‖/‖ref‖ in `T`.
fn tol<T: Scalar>() -> f64 {
    if std::mem::size_of::<T>() == 4 {
        1e-5
    } else {
        1e-12
    }
}

fn to<T: Scalar>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::of(x)).collect()
}

fn back<T: Scalar>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.f64()).collect()
}

/// ‖got − want‖₂.
fn dist(got: &[f64], want: &[f64]) -> f64 {
    got.iter().zip(want).map(|(g, w)| (g - w).powi(2)).sum::<f64>().sqrt()
}

/// `scale`·N(0, 1) values rounded to `T` (returned as f64 for the reference).
fn randn<T: Scalar>(r: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    normals(r, n, scale).into_iter().map(|v| T::of(v).f64()).collect()
}

/// Rounds a scalar hyper-parameter the way the backend does.
fn round<T: Scalar>(x: f64) -> f64 {
    T::of(x).f64()
}

#[track_caller]
fn close<T: Scalar>(what: &str, seed: u64, got: &[T], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what} (seed {seed}): lengths");
    let got = back(got);
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{what} (seed {seed}): non-finite output"
    );
    let e = rel_err(&got, want);
    let t = tol::<T>();
    assert!(
        e <= t,
        "{what} ({}, seed {seed}): ‖Δ‖/‖ref‖ = {e:e} > {t:e}",
        std::any::type_name::<T>()
    );
}

/// [`close`] for a result that is a sum of terms which may cancel: the error is
/// measured against the norm of `scale` (each element's Σ|term|, what f32 rounds
/// relative to) instead of the result's, which cancellation can make arbitrarily
/// small (a one-element result near 0, say).
fn close_to_terms<T: Scalar>(what: &str, seed: u64, got: &[T], want: &[f64], scale: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what} (seed {seed}): lengths");
    let got = back(got);
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{what} (seed {seed}): non-finite output"
    );
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let diff = norm(&mut got.iter().zip(want).map(|(g, w)| g - w));
    let e = diff / norm(&mut scale.iter().copied()).max(f64::MIN_POSITIVE);
    let t = tol::<T>();
    assert!(
        e <= t,
        "{what} ({}, seed {seed}): ‖Δ‖/‖Σ|terms|‖ = {e:e} > {t:e}",
        std::any::type_name::<T>()
    );
}

/// `scale_by_inv_norm`'s `InversePowerOfTwo` and `OrKeep` rules on `x` scaled to
/// magnitudes from 1e-15 to 1e15 (whose fourth powers under- or overflow f32), and on
/// a squared norm of 0, ∞ and NaN: the power of two f is exact (y = x·f bit for bit)
/// with f·s in [½, 1); OrKeep is x/‖x‖, or leaves y untouched.
fn norm_rules<T: Scalar>(cpu: &Cpu<T>, x: &[f64], seed: u64, r: &mut Rng) {
    let n = x.len();
    for decade in [-15, -7, -3, 0, 4, 9, 15] {
        let c = 10f64.powi(decade) * (1.0 + r.uniform());
        let xs = to::<T>(&x.iter().map(|v| v * c).collect::<Vec<_>>());
        let mut s = to::<T>(&[0.0]);
        cpu.sum_sq(&xs, &mut s).unwrap();
        let what = format!("{n} values of magnitude 1e{decade} (seed {seed})");
        // InversePowerOfTwo: one factor f = 2^k, exact, with f·s in [½, 1).
        let mut y = to::<T>(&vec![f64::NAN; n]);
        cpu.scale_by_inv_norm(&xs, &s, NormRule::InversePowerOfTwo, &mut y)
            .unwrap();
        let i = (0..n).find(|&i| xs[i] != T::zero()).unwrap();
        let f = y[i].f64() / xs[i].f64();
        assert_eq!(
            f,
            2f64.powi(f.log2().round() as i32),
            "InversePowerOfTwo, {what}: factor {f}"
        );
        let m = f * s[0].f64();
        assert!((0.5..1.0).contains(&m), "InversePowerOfTwo, {what}: f·s = {m}");
        for (a, b) in xs.iter().zip(&y) {
            assert!(
                T::of(a.f64() * f) == *b,
                "InversePowerOfTwo, {what}: {} · {f} gave {}",
                a.f64(),
                b.f64()
            );
        }
        // OrKeep with a usable norm: x / ‖x‖.
        let mut y = to::<T>(&vec![f64::NAN; n]);
        cpu.scale_by_inv_norm(&xs, &s, NormRule::OrKeep, &mut y).unwrap();
        let want: Vec<f64> = back(&xs).iter().map(|v| v / s[0].f64().sqrt()).collect();
        close(&format!("OrKeep, {what}"), seed, &y, &want);
    }
    let xs = to::<T>(x);
    for bad in [0.0, f64::INFINITY, f64::NAN] {
        let before = to::<T>(&vec![7.0; n]);
        let mut y = before.clone();
        cpu.scale_by_inv_norm(&xs, &to(&[bad]), NormRule::OrKeep, &mut y)
            .unwrap();
        assert!(y == before, "OrKeep with s = {bad} changed y (seed {seed})");
        cpu.scale_by_inv_norm(&xs, &to(&[bad]), NormRule::InversePowerOfTwo, &mut y)
            .unwrap();
        assert!(y == xs, "InversePowerOfTwo with s = {bad} is not y = x (seed {seed})");
    }
}

/// Shapes around the parallel threshold (2^15 elements) and ragged rows.
fn shape(r: &mut Rng) -> (usize, usize) {
    (
        [1, 3, 17, 64, 300][r.below(5) as usize],
        [1, 7, 10, 33, 129][r.below(5) as usize],
    )
}

// ---- naive definitions -------------------------------------------------------------

/// (f(x), f′(x)), with the derivative 0 at the kinks of ReLU and HardSigmoid.
fn naive_act(a: Activation, x: f64) -> (f64, f64) {
    match a {
        Activation::Identity => (x, 1.0),
        Activation::Relu => {
            if x > 0.0 {
                (x, 1.0)
            } else {
                (0.0, 0.0)
            }
        }
        Activation::Sigmoid => {
            let s = 1.0 / (1.0 + (-x).exp());
            (s, s * (1.0 - s))
        }
        Activation::Tanh => {
            let t = x.tanh();
            (t, 1.0 - t * t)
        }
        Activation::HardSigmoid => (x.clamp(0.0, 1.0), if x > 0.0 && x < 1.0 { 1.0 } else { 0.0 }),
    }
}

/// φ(x) and φ′(x) of a composition (first element applied first), by the chain rule.
fn naive_chain(acts: &[Activation], x: f64) -> (f64, f64) {
    acts.iter().fold((x, 1.0), |(v, d), &a| {
        let (fv, fd) = naive_act(a, v);
        (fv, d * fd)
    })
}

/// Every chain to test: identity, singles, ordered pairs, a triple with an identity
/// in it, and a full chain of `ActChain::MAX`.
fn chains() -> Vec<(Vec<Activation>, ActChain)> {
    use Activation::*;
    let acts = [Relu, Sigmoid, Tanh, HardSigmoid];
    let mut lists: Vec<Vec<Activation>> = vec![vec![], vec![Identity]];
    for a in acts {
        lists.push(vec![a]);
        for b in acts {
            lists.push(vec![a, b]);
        }
    }
    lists.push(vec![Tanh, Identity, Relu, Sigmoid]);
    lists.push(vec![Sigmoid, Tanh, Relu, HardSigmoid, Tanh, Sigmoid, Relu, Tanh]);
    lists
        .into_iter()
        .map(|l| {
            let c = l
                .iter()
                .fold(ActChain::IDENTITY, |c, &a| c.then(a).expect("chain fits"));
            (l, c)
        })
        .collect()
}

/// C = α·op(A)·op(B) + β·C in f64 (β = 0 ignores C).
#[allow(clippy::too_many_arguments)]
fn naive_gemm(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f64,
    a: &[f64],
    b: &[f64],
    beta: f64,
    c: &[f64],
) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] };
                let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                s += av * bv;
            }
            out[i * n + j] = alpha * s + if beta == 0.0 { 0.0 } else { beta * c[i * n + j] };
        }
    }
    out
}

/// Per-sample cost C(o, y) of one row.
fn naive_cost(o: &[f64], y: usize, loss: Loss) -> f64 {
    let k = o.len();
    match loss {
        Loss::CrossEntropy { label_smoothing: eps } => {
            let mx = o.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = mx + o.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
            (0..k)
                .map(|j| {
                    let q = eps / k as f64 + if j == y { 1.0 - eps } else { 0.0 };
                    -q * (o[j] - lse)
                })
                .sum()
        }
        Loss::SquaredError => (0..k)
            .map(|j| {
                let d = o[j] - if j == y { 1.0 } else { 0.0 };
                0.5 * d * d
            })
            .sum(),
    }
}

/// Index of the first maximum.
fn naive_argmax(o: &[f64]) -> usize {
    let mut best = 0;
    for (j, &v) in o.iter().enumerate() {
        if v > o[best] {
            best = j;
        }
    }
    best
}

fn losses() -> [Loss; 3] {
    [
        Loss::CrossEntropy { label_smoothing: 0.0 },
        Loss::CrossEntropy { label_smoothing: 0.1 },
        Loss::SquaredError,
    ]
}

// ---- GEMM ----------------------------------------------------------------------------

fn check_gemm<T: Scalar>(r: &mut Rng, seed: u64, ta: bool, tb: bool, (m, n, k): (usize, usize, usize), beta: f64) {
    let cpu = Cpu::<T>::new();
    let alpha = round::<T>(-1.7);
    let beta = round::<T>(beta);
    let a = randn::<T>(r, m * k, 1.0);
    let b = randn::<T>(r, k * n, 1.0);
    let c0 = if beta == 0.0 {
        vec![f64::NAN; m * n] // β = 0: C's old contents (NaN here) must be ignored.
    } else {
        randn::<T>(r, m * n, 1.0)
    };
    let want = naive_gemm(ta, tb, m, n, k, alpha, &a, &b, beta, &c0);
    let mut c = to::<T>(&c0);
    cpu.gemm(ta, tb, m, n, k, alpha, &to(&a), &to(&b), beta, &mut c)
        .unwrap();
    close(
        &format!("gemm ta={ta} tb={tb} {m}×{n}×{k} α={alpha} β={beta}"),
        seed,
        &c,
        &want,
    );
}

fn gemm_all<T: Scalar>() {
    let seed = fresh_seed(&format!("gemm {}", std::any::type_name::<T>()));
    let mut r = Rng::new(seed);
    let dims = [1, 2, 7, 16, 33, 64];
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        for beta in [0.0, 0.7] {
            for _ in 0..4 {
                let mnk = (
                    dims[r.below(6) as usize],
                    dims[r.below(6) as usize],
                    dims[r.below(6) as usize],
                );
                check_gemm::<T>(&mut r, seed, ta, tb, mnk, beta);
            }
            // ≥ 4 MFLOP: split across threads, along rows (tall, m ≥ n) or columns (wide).
            // Pools of 2 and 3 threads make the split happen (and be uneven) whatever
            // the machine's core count.
            for threads in [2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                for mnk in [(96, 200, 150), (200, 96, 150), (131, 131, 128)] {
                    pool.install(|| check_gemm::<T>(&mut r, seed, ta, tb, mnk, beta));
                }
            }
        }
    }
}

#[test]
fn gemm_f32() {
    gemm_all::<f32>();
}

#[test]
fn gemm_f64() {
    gemm_all::<f64>();
}

// ---- costs -----------------------------------------------------------------------------

#[test]
fn cost_grad_matches_finite_differences_of_cost_stats() {
    let seed = fresh_seed("cost_grad");
    let mut r = Rng::new(seed);
    let cpu = Cpu::<f64>::new();
    let h = 1e-5;
    for loss in losses() {
        for &(rows, classes) in &[(1, 1), (5, 10), (33, 7), (64, 2)] {
            let o = normals(&mut r, rows * classes, 2.0);
            let y = labels(&mut r, rows, classes);
            let mut g = vec![f64::NAN; rows * classes];
            cpu.cost_grad(rows, classes, &o, &y, loss, &mut g).unwrap();
            // Central differences of each row's cost, as cost_stats computes it.
            let row_cost = |row: &[f64], label: u32| {
                let mut s = vec![0.0; 2];
                cpu.cost_stats(1, classes, &row.to_vec(), &vec![label], loss, &mut s)
                    .unwrap();
                s[0]
            };
            let mut fd = vec![0.0; rows * classes];
            for i in 0..rows {
                let row = &o[i * classes..(i + 1) * classes];
                for k in 0..classes {
                    let mut up = row.to_vec();
                    up[k] += h;
                    let mut down = row.to_vec();
                    down[k] -= h;
                    fd[i * classes + k] = (row_cost(&up, y[i]) - row_cost(&down, y[i])) / (2.0 * h);
                }
            }
            let e = rel_err(&g, &fd);
            // With one class every cost is constant (CE) or a plain square (SE).
            if fd.iter().all(|v| v.abs() < 1e-12) {
                assert!(
                    g.iter().all(|v| v.abs() < 1e-9),
                    "cost_grad {loss:?} {rows}×{classes} (seed {seed}): zero gradient expected, got {g:?}"
                );
                continue;
            }
            assert!(
                e <= 1e-6,
                "cost_grad {loss:?} {rows}×{classes} (seed {seed}): ‖Δ‖/‖fd‖ = {e:e} > 1e-6"
            );
        }
    }
}

fn cost_stats_and_argmax<T: Scalar>() {
    let seed = fresh_seed(&format!("cost_stats {}", std::any::type_name::<T>()));
    let mut r = Rng::new(seed);
    let cpu = Cpu::<T>::new();
    for loss in losses() {
        for &(rows, classes) in &[(1, 1), (9, 10), (200, 3), (64, 10)] {
            let mut o = randn::<T>(&mut r, rows * classes, 2.0);
            // Ties: the first maximum wins.
            if classes >= 3 {
                for i in (0..rows).step_by(3) {
                    o[i * classes + 2] = 10.0;
                    o[i * classes + classes - 1] = 10.0;
                }
            }
            let y = labels(&mut r, rows, classes);
            let mut want_loss = 1.5;
            let mut want_correct = 2.0;
            for i in 0..rows {
                let row = &o[i * classes..(i + 1) * classes];
                want_loss += naive_cost(row, y[i] as usize, loss);
                if naive_argmax(row) == y[i] as usize {
                    want_correct += 1.0;
                }
            }
            let mut stats = to::<T>(&[1.5, 2.0]); // cost_stats accumulates
            cpu.cost_stats(rows, classes, &to(&o), &y, loss, &mut stats).unwrap();
            let got = back(&stats);
            assert_eq!(
                got[1], want_correct,
                "cost_stats {loss:?} {rows}×{classes} (seed {seed}): correct count"
            );
            let e = (got[0] - want_loss).abs() / want_loss.abs();
            assert!(
                e <= tol::<T>(),
                "cost_stats {loss:?} {rows}×{classes} (seed {seed}): loss {} vs {want_loss} ({e:e})",
                got[0]
            );
            // The cost gradient against its closed form.
            let mut g = to::<T>(&vec![f64::NAN; rows * classes]);
            cpu.cost_grad(rows, classes, &to(&o), &y, loss, &mut g).unwrap();
            let eps = loss.label_smoothing();
            let mut want_g = vec![0.0; rows * classes];
            for i in 0..rows {
                let row = &o[i * classes..(i + 1) * classes];
                let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = row.iter().map(|v| (v - mx).exp()).sum();
                for k in 0..classes {
                    let hit = if k == y[i] as usize { 1.0 } else { 0.0 };
                    want_g[i * classes + k] = match loss {
                        Loss::CrossEntropy { .. } => {
                            (row[k] - mx).exp() / z - (eps / classes as f64 + (1.0 - eps) * hit)
                        }
                        Loss::SquaredError => row[k] - hit,
                    };
                }
            }
            if want_g.iter().any(|v| *v != 0.0) {
                close(&format!("cost_grad {loss:?} {rows}×{classes}"), seed, &g, &want_g);
            } else {
                assert!(back(&g).iter().all(|v| v.abs() < 1e-6), "cost_grad: zeros expected");
            }
            // argmax: the first maximum.
            let mut am = vec![u32::MAX; rows];
            cpu.argmax(rows, classes, &to(&o), &mut am).unwrap();
            let want_am: Vec<u32> = (0..rows)
                .map(|i| naive_argmax(&o[i * classes..(i + 1) * classes]) as u32)
                .collect();
            assert_eq!(am, want_am, "argmax {rows}×{classes} (seed {seed})");
        }
    }
}

#[test]
fn cost_stats_loss_and_correct_count_f32() {
    cost_stats_and_argmax::<f32>();
}

#[test]
fn cost_stats_loss_and_correct_count_f64() {
    cost_stats_and_argmax::<f64>();
}

// ---- reductions and optimizer element-wise ------------------------------------------------

fn reductions<T: Scalar>() {
    let seed = fresh_seed(&format!("reductions {}", std::any::type_name::<T>()));
    let mut r = Rng::new(seed);
    let cpu = Cpu::<T>::new();
    for _ in 0..6 {
        let (rows, cols) = shape(&mut r);
        let n = rows * cols;
        let x = randn::<T>(&mut r, n, 1.0);
        for beta in [0.0, 0.7] {
            let (alpha, beta) = (round::<T>(-0.3), round::<T>(beta));
            // col_sum
            let y0 = randn::<T>(&mut r, cols, 1.0);
            let want: Vec<f64> = (0..cols)
                .map(|j| alpha * (0..rows).map(|i| x[i * cols + j]).sum::<f64>() + beta * y0[j])
                .collect();
            let mut y = to::<T>(&y0);
            cpu.col_sum(rows, cols, alpha, &to(&x), beta, &mut y).unwrap();
            // A column sum can nearly cancel, so the error is measured against the sum
            // of magnitudes (the scale that rounding errors actually have).
            let scale: Vec<f64> = (0..cols)
                .map(|j| alpha.abs() * (0..rows).map(|i| x[i * cols + j].abs()).sum::<f64>() + (beta * y0[j]).abs())
                .collect();
            let err = dist(&back(&y), &want);
            let den: f64 = scale.iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!(
                err / den <= tol::<T>(),
                "col_sum {rows}×{cols} β={beta} (seed {seed}): error {:e} of the magnitude sum",
                err / den
            );
            // axpby
            let y0 = randn::<T>(&mut r, n, 1.0);
            let want: Vec<f64> = x.iter().zip(&y0).map(|(a, b)| alpha * a + beta * b).collect();
            let mut y = to::<T>(&y0);
            cpu.axpby(alpha, &to(&x), beta, &mut y).unwrap();
            close(&format!("axpby {n} β={beta}"), seed, &y, &want);
            // lincomb: y = αx + βz, whatever y held (NaN here)
            let mut y = to::<T>(&vec![f64::NAN; n]);
            cpu.lincomb(alpha, &to(&x), beta, &to(&y0), &mut y).unwrap();
            close(&format!("lincomb {n} β={beta}"), seed, &y, &want);
            // nesterov: m ← μm + g, then u ← g + μm (the new m)
            let mu = 0.5 + beta.abs();
            let (mut m, mut u) = (to::<T>(&y0), to::<T>(&vec![f64::NAN; n]));
            cpu.nesterov(mu, &to(&x), &mut m, &mut u).unwrap();
            let want_m: Vec<f64> = x.iter().zip(&y0).map(|(g, m)| g + mu * m).collect();
            let want_u: Vec<f64> = x.iter().zip(&want_m).map(|(g, m)| g + mu * m).collect();
            close(&format!("nesterov m {n} μ={mu}"), seed, &m, &want_m);
            close(&format!("nesterov u {n} μ={mu}"), seed, &u, &want_u);
        }
        // sum_sq
        let mut out = to::<T>(&[f64::NAN]);
        cpu.sum_sq(&to(&x), &mut out).unwrap();
        let want = x.iter().map(|v| v * v).sum::<f64>();
        close(&format!("sum_sq {n}"), seed, &out, &[want]);
        // scale_by_inv_norm, NormRule::Eps: y = x / (√s + eps)
        let s = round::<T>(2.5 + r.uniform());
        let eps = 1e-3;
        let want: Vec<f64> = x.iter().map(|v| v / (s.sqrt() + eps)).collect();
        let mut y = to::<T>(&vec![f64::NAN; n]);
        cpu.scale_by_inv_norm(&to(&x), &to(&[s]), NormRule::Eps(eps), &mut y)
            .unwrap();
        close(&format!("scale_by_inv_norm {n}"), seed, &y, &want);
        norm_rules::<T>(&cpu, &x, seed, &mut r);
        // spectral_clamp: scales by γ/σ̂ only when σ̂ = √s > γ.
        for gamma in [0.5, 3.0] {
            let want: Vec<f64> = if s.sqrt() > gamma {
                x.iter().map(|v| v * gamma / s.sqrt()).collect()
            } else {
                x.clone()
            };
            let mut w = to::<T>(&x);
            cpu.spectral_clamp(&mut w, &to(&[s]), gamma).unwrap();
            close(&format!("spectral_clamp {n} γ={gamma} σ̂={}", s.sqrt()), seed, &w, &want);
            if s.sqrt() <= gamma {
                assert_eq!(back(&w), x, "spectral_clamp must leave w untouched when σ̂ ≤ γ");
            }
        }
    }
}

#[test]
fn col_sum_axpby_sum_sq_scale_and_clamp_f32() {
    reductions::<f32>();
}

#[test]
fn col_sum_axpby_sum_sq_scale_and_clamp_f64() {
    reductions::<f64>();
}

fn adam<T: Scalar>() {
    let seed = fresh_seed(&format!("adam {}", std::any::type_name::<T>()));
    let mut r = Rng::new(seed);
    let cpu = Cpu::<T>::new();
    for &n in &[1, 100, 40_000] {
        let (lr, b1, b2, eps, wd) = (1e-2, 0.9, 0.999, 1e-8, 0.05);
        let p0 = randn::<T>(&mut r, n, 1.0);
        let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
        let (mut pt, mut mt, mut vt) = (to::<T>(&p0), to::<T>(&m), to::<T>(&v));
        for t in 1..=3u64 {
            let g = randn::<T>(&mut r, n, 0.5);
            let (bc1, bc2) = (1.0 - f64::powi(b1, t as i32), 1.0 - f64::powi(b2, t as i32));
            // The moment decays are rounded to T like every scalar hyper-parameter
            // (1 − 0.999 in f32 is 1.3e-5 off 1e-3); the bias corrections are f64.
            let (b1r, b2r) = (round::<T>(b1), round::<T>(b2));
            for i in 0..n {
                m[i] = b1r * m[i] + (1.0 - b1r) * g[i];
                v[i] = b2r * v[i] + (1.0 - b2r) * g[i] * g[i];
                let (mh, vh) = (m[i] / bc1, v[i] / bc2);
                p[i] = p[i] * (1.0 - lr * wd) - lr * mh / (vh.sqrt() + eps);
            }
            let mut words = vec![];
            mep::backend::ctl::encode(&mep::backend::ctl::adam_scalars(lr, b1, b2, wd, t), &mut words);
            cpu.adam(&mut pt, &to(&g), &mut mt, &mut vt, b1, b2, eps, &words, 0)
                .unwrap();
            close(&format!("adam p, n={n}, t={t}"), seed, &pt, &p);
            close(&format!("adam m, n={n}, t={t}"), seed, &mt, &m);
            close(&format!("adam v, n={n}, t={t}"), seed, &vt, &v);
        }
    }
}

#[test]
fn adam_matches_bias_corrected_adam_f32() {
    adam::<f32>();
}

#[test]
fn adam_matches_bias_corrected_adam_f64() {
    adam::<f64>();
}

// ---- element-wise settle kernels -----------------------------------------------------------

fn elementwise<T: Scalar>() {
    let seed = fresh_seed(&format!("elementwise {}", std::any::type_name::<T>()));
    let mut r = Rng::new(seed);
    let cpu = Cpu::<T>::new();
    for (acts, chain) in chains() {
        assert_eq!(
            chain.len(),
            acts.iter().filter(|&&a| a != Activation::Identity).count(),
            "ActChain length of {acts:?}"
        );
        let name = format!("{acts:?} ({})", chain.describe());
        let phi = |x: f64| naive_chain(&acts, x);
        for _ in 0..2 {
            let (rows, cols) = shape(&mut r);
            let n = rows * cols;
            let bias = randn::<T>(&mut r, cols, 1.0);

            // bias_act: z ← z + bias; a ← φ(z)
            let z0 = randn::<T>(&mut r, n, 2.0);
            let want_z: Vec<f64> = (0..n).map(|i| round::<T>(z0[i] + bias[i % cols])).collect();
            let want_a: Vec<f64> = want_z.iter().map(|&z| phi(z).0).collect();
            let (mut z, mut a) = (to::<T>(&z0), to::<T>(&vec![f64::NAN; n]));
            cpu.bias_act(rows, cols, &mut z, &to(&bias), chain, &mut a).unwrap();
            close(&format!("bias_act z {name} {rows}×{cols}"), seed, &z, &want_z);
            check_act_output(&format!("bias_act a {name} {rows}×{cols}"), seed, &a, &want_a);
            // bias_act_from: the same, reading a source kept apart
            let nan = to::<T>(&vec![f64::NAN; n]);
            let (src, mut zf, mut af) = (to::<T>(&z0), nan.clone(), nan);
            cpu.bias_act_from(rows, cols, &src, &to(&bias), chain, &mut zf, &mut af)
                .unwrap();
            assert!(
                back(&zf) == back(&z) && back(&af) == back(&a),
                "bias_act_from {name} (seed {seed})"
            );
            assert!(back(&src) == z0, "bias_act_from wrote to its source (seed {seed})");

            // layered_error (perturbation form): e ← u − q, or u without q (the
            // first layer). u − q of two values of T is exact in f64, so its rounding
            // to T is what T's subtraction gives.
            let (u, q) = (randn::<T>(&mut r, n, 1e-3), randn::<T>(&mut r, n, 1e-3));
            let want_e: Vec<f64> = (0..n).map(|i| round::<T>(u[i] - q[i])).collect();
            let mut e = to::<T>(&vec![f64::NAN; n]);
            cpu.layered_error(rows, cols, &to(&u), Some(&to(&q)), &mut e).unwrap();
            assert!(
                back(&e) == want_e,
                "layered_error {rows}×{cols}: not u − q (seed {seed})"
            );
            cpu.layered_error(rows, cols, &to(&u), None, &mut e).unwrap();
            assert!(back(&e) == u, "layered_error without q: not u (seed {seed})");

            // layered_settle: e ← u − q as layered_error forms it, then
            // u ← u − η·(e + c·φ′(s) ⊙ g) (φ′ at the old s = s⋆ + u), s ← s⋆ + u,
            // a ← φ(s), Δa ← φ(s⋆ + u) − φ(s⋆) accurate relative to Δa and u, not
            // to φ(s⋆): u is 1e-3 of s⋆, so forming Δa by subtraction in T would
            // miss by about ε·|φ(s⋆)| = 1000·ε·|u| and fail below.
            let s_free = randn::<T>(&mut r, n, 2.0);
            let s_old: Vec<f64> = (0..n).map(|i| round::<T>(s_free[i] + u[i])).collect();
            let g = randn::<T>(&mut r, n, 1e-3);
            for (c, with_q) in [(-1.0, true), (0.5, false)] {
                let eta = round::<T>(0.3);
                let c = round::<T>(c);
                let e: Vec<f64> = if with_q { want_e.clone() } else { u.clone() };
                let want_u: Vec<f64> = (0..n)
                    .map(|i| u[i] - eta * (e[i] + c * phi(s_old[i]).1 * g[i]))
                    .collect();
                let terms: Vec<f64> = (0..n)
                    .map(|i| u[i].abs() + eta * (e[i].abs() + (c * phi(s_old[i]).1 * g[i]).abs()))
                    .collect();

                let nan = to::<T>(&vec![f64::NAN; n]);
                // a = φ(s) on entry, as the phase keeps it (the step may read φ′ off it).
                let a_old: Vec<f64> = s_old.iter().map(|&v| phi(v).0).collect();
                let (mut ut, mut st, mut at) = (to::<T>(&u), to::<T>(&s_old), to::<T>(&a_old));
                let (mut dt, mut et) = (nan.clone(), nan);
                let qt = to::<T>(&q);
                let state = LayerState {
                    u: &mut ut,
                    s: &mut st,
                    a: &mut at,
                    da: &mut dt,
                    e: &mut et,
                };
                let q_arg = with_q.then_some(&qt);
                cpu.layered_settle(rows, cols, q_arg, &to(&g), c, eta, chain, &to(&s_free), state)
                    .unwrap();
                let what = format!("layered_settle {name} c={c} q={with_q}");
                assert!(back(&et) == e, "{what} e: not layered_error's e exactly (seed {seed})");
                close_to_terms(&format!("{what} u"), seed, &ut, &want_u, &terms);
                let u_new = back(&ut);
                let want_s: Vec<f64> = (0..n).map(|i| round::<T>(s_free[i] + u_new[i])).collect();
                assert!(back(&st) == want_s, "{what} s: not s⋆ + u (seed {seed})");
                let want_a: Vec<f64> = want_s.iter().map(|&v| phi(v).0).collect();
                check_act_output(&format!("{what} a"), seed, &at, &want_a);
                let eps = T::epsilon().f64();
                for (i, &got) in back(&dt).iter().enumerate() {
                    let (hi, lo) = (phi(s_free[i] + u_new[i]).0, phi(s_free[i]).0);
                    let want = hi - lo;
                    // Plus the f64 reference's own rounding (what bounds the f64 run).
                    let bound = 32.0 * eps * (want.abs() + u_new[i].abs()) + 4.0 * f64::EPSILON * (hi.abs() + lo.abs());
                    assert!(
                        (got - want).abs() <= bound,
                        "{what} Δa[{i}] = {got:e}, want {want:e} (±{bound:e}) at s⋆ = {}, u = {} (seed {seed})",
                        s_free[i],
                        u_new[i]
                    );
                }
            }

            // hopfield_settle: s ← φ(drive + bias − β·dc)
            let (drive, dc) = (randn::<T>(&mut r, n, 2.0), randn::<T>(&mut r, n, 1.0));
            for nudge in [None, Some(0.3)] {
                let beta = nudge.map(round::<T>).unwrap_or(0.0);
                let want: Vec<f64> = (0..n)
                    .map(|i| phi(drive[i] + bias[i % cols] - beta * dc[i]).0)
                    .collect();
                let dct = to::<T>(&dc);
                let mut st = to::<T>(&vec![f64::NAN; n]);
                cpu.hopfield_settle(
                    rows,
                    cols,
                    &to(&drive),
                    &to(&bias),
                    nudge.map(|b| (&dct, b)),
                    chain,
                    &mut st,
                )
                .unwrap();
                check_act_output(&format!("hopfield_settle {name} nudge={nudge:?}"), seed, &st, &want);
            }

            // act_grad_mul: δ ← δ ⊙ φ′(z)
            let d0 = randn::<T>(&mut r, n, 1.0);
            let want: Vec<f64> = (0..n).map(|i| d0[i] * phi(z0[i]).1).collect();
            let mut d = to::<T>(&d0);
            cpu.act_grad_mul(rows, cols, &to(&z0), chain, &mut d).unwrap();
            // φ′ of a saturated tanh or sigmoid (1 − t², s(1 − s)) cancels in f32: its error
            // is absolute (~1e-7), not relative, so measure against ‖δ‖ (every φ′ here ≤ 1).
            let err = dist(&back(&d), &want);
            let den: f64 = d0.iter().map(|v| v * v).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
            assert!(
                err / den <= tol::<T>(),
                "act_grad_mul {name} (seed {seed}): ‖Δ‖/‖δ‖ = {:e}",
                err / den
            );

            // act_grad_mul_into: dst ← (scale·src) ⊙ φ′(z), into NaN garbage
            let scale = round::<T>(2.0 * r.uniform() - 1.0);
            let want: Vec<f64> = (0..n).map(|i| scale * d0[i] * phi(z0[i]).1).collect();
            let mut d = to::<T>(&vec![f64::NAN; n]);
            cpu.act_grad_mul_into(rows, cols, &to(&z0), chain, scale, &to(&d0), &mut d)
                .unwrap();
            let err = dist(&back(&d), &want);
            let den = den * scale.abs().max(f64::MIN_POSITIVE);
            assert!(
                err / den <= tol::<T>(),
                "act_grad_mul_into {name} scale {scale} (seed {seed}): ‖Δ‖/‖scale·δ‖ = {:e}",
                err / den
            );
        }
    }
    // A full chain takes no more activations.
    let full = (0..ActChain::MAX).fold(ActChain::IDENTITY, |c, _| c.then(Activation::Tanh).unwrap());
    assert!(
        full.then(Activation::Relu).is_none(),
        "a chain of ActChain::MAX must be full"
    );
    assert_eq!(full.then(Activation::Identity), Some(full), "Identity is skipped");
}

/// Like `close`, but an all-zero reference (e.g. ReLU of negatives) must give zeros.
#[track_caller]
fn check_act_output<T: Scalar>(what: &str, seed: u64, got: &[T], want: &[f64]) {
    if want.iter().all(|v| *v == 0.0) {
        assert!(
            back(got).iter().all(|v| *v == 0.0),
            "{what} (seed {seed}): expected all zeros"
        );
    } else {
        close(what, seed, got, want);
    }
}

#[test]
fn elementwise_kernels_every_chain_f32() {
    elementwise::<f32>();
}

#[test]
fn elementwise_kernels_every_chain_f64() {
    elementwise::<f64>();
}

// ---- gathers ---------------------------------------------------------------------------------

#[test]
fn gather_rows_and_labels() {
    let seed = fresh_seed("gather");
    let mut r = Rng::new(seed);
    let cpu = Cpu::<f32>::new();
    let (n, row_len) = (50, 13);
    let src: Vec<f32> = (0..n * row_len).map(|i| i as f32).collect();
    let ysrc = labels(&mut r, n, 10);
    let mut idx: Vec<u32> = (0..n as u32).collect();
    r.shuffle(&mut idx);
    let (start, count) = (7, 20);
    let mut dst = vec![f32::NAN; (count + 3) * row_len];
    cpu.gather_rows(&src, row_len, &idx, start, count, &mut dst).unwrap();
    for i in 0..count {
        let s = idx[start + i] as usize;
        assert_eq!(
            &dst[i * row_len..(i + 1) * row_len],
            &src[s * row_len..(s + 1) * row_len],
            "gather_rows row {i} (seed {seed})"
        );
    }
    assert!(
        dst[count * row_len..].iter().all(|v| v.is_nan()),
        "gather_rows wrote past `count` rows"
    );
    let mut yd = vec![u32::MAX; count + 2];
    cpu.gather_labels(&ysrc, &idx, start, count, &mut yd).unwrap();
    for i in 0..count {
        assert_eq!(yd[i], ysrc[idx[start + i] as usize], "gather_labels {i} (seed {seed})");
    }
    assert_eq!(&yd[count..], &[u32::MAX, u32::MAX], "gather_labels wrote past `count`");

    // An index past the data is an error, not a panic or a silent read.
    let mut bad = idx.clone();
    bad[start + 3] = n as u32;
    assert!(matches!(
        cpu.gather_rows(&src, row_len, &bad, start, count, &mut dst),
        Err(MepError::Shape(_))
    ));
    assert!(matches!(
        cpu.gather_labels(&ysrc, &bad, start, count, &mut yd),
        Err(MepError::Shape(_))
    ));
    // Indices, or destinations, shorter than the request.
    assert!(matches!(
        cpu.gather_rows(&src, row_len, &idx, n - 5, 10, &mut dst),
        Err(MepError::Shape(_))
    ));
    assert!(matches!(
        cpu.gather_labels(&ysrc, &idx, n - 5, 10, &mut yd),
        Err(MepError::Shape(_))
    ));
    let mut small = vec![0.0f32; row_len * 2];
    assert!(matches!(
        cpu.gather_rows(&src, row_len, &idx, 0, 3, &mut small),
        Err(MepError::Shape(_))
    ));
    let mut small_y = vec![0u32; 2];
    assert!(matches!(
        cpu.gather_labels(&ysrc, &idx, 0, 3, &mut small_y),
        Err(MepError::Shape(_))
    ));
    // A range whose end overflows usize (start + count wrapped to a small bound).
    assert!(matches!(
        cpu.gather_rows(&src, row_len, &idx, usize::MAX - 1, 3, &mut dst),
        Err(MepError::Shape(_))
    ));
    assert!(matches!(
        cpu.gather_labels(&ysrc, &idx, usize::MAX - 1, 3, &mut yd),
        Err(MepError::Shape(_))
    ));
}

// ---- short buffers ---------------------------------------------------------------------------

/// Runs `f`, which must return `Err(MepError::Shape(_))`; returns a description of
/// what happened otherwise (a panic, another error, or success).
fn expect_shape_error(what: &str, f: impl FnOnce() -> mep::Result<()> + std::panic::UnwindSafe) -> Option<String> {
    match std::panic::catch_unwind(f) {
        Ok(Err(MepError::Shape(_))) => None,
        Ok(Err(e)) => Some(format!("{what}: expected MepError::Shape, got {e}")),
        Ok(Ok(())) => Some(format!("{what}: expected MepError::Shape, got Ok")),
        Err(_) => Some(format!("{what}: panicked instead of returning MepError::Shape")),
    }
}

#[test]
fn short_buffers_are_shape_errors() {
    let cpu = Cpu::<f32>::new();
    let (rows, cols) = (4, 5);
    let n = rows * cols;
    let full = || vec![0.5f32; n];
    let short = || vec![0.5f32; n - 1];
    let bias = || vec![0.1f32; cols];
    let lab = || vec![1u32; rows];
    let act = ActChain::single(Activation::Tanh);
    let loss = Loss::CrossEntropy { label_smoothing: 0.0 };
    let mut failures = Vec::new();
    let mut check = |what: &str, f: Box<dyn FnOnce() -> mep::Result<()> + std::panic::UnwindSafe>| {
        if let Some(msg) = expect_shape_error(what, f) {
            failures.push(msg);
        }
    };
    let c = cpu.clone();
    check("write", Box::new(move || c.write(&mut vec![0.0; 3], &[1.0; 4])));
    let c = cpu.clone();
    check("copy", Box::new(move || c.copy(&full(), &mut short())));
    let c = cpu.clone();
    check(
        "gemm A",
        Box::new(move || {
            c.gemm(
                false,
                false,
                rows,
                cols,
                3,
                1.0,
                &vec![0.0; rows * 3 - 1],
                &vec![0.0; 3 * cols],
                0.0,
                &mut full(),
            )
        }),
    );
    let c = cpu.clone();
    check(
        "gemm B (transposed)",
        Box::new(move || {
            c.gemm(
                false,
                true,
                rows,
                cols,
                3,
                1.0,
                &vec![0.0; rows * 3],
                &vec![0.0; 3 * cols - 1],
                0.0,
                &mut full(),
            )
        }),
    );
    let c = cpu.clone();
    check(
        "gemm C",
        Box::new(move || {
            c.gemm(
                true,
                false,
                rows,
                cols,
                3,
                1.0,
                &vec![0.0; rows * 3],
                &vec![0.0; 3 * cols],
                0.5,
                &mut short(),
            )
        }),
    );
    let c = cpu.clone();
    check("axpby", Box::new(move || c.axpby(1.0, &short(), 1.0, &mut full())));
    let c = cpu.clone();
    check(
        "lincomb x",
        Box::new(move || c.lincomb(1.0, &short(), 1.0, &full(), &mut full())),
    );
    let c = cpu.clone();
    check(
        "lincomb z",
        Box::new(move || c.lincomb(1.0, &full(), 1.0, &short(), &mut full())),
    );
    let c = cpu.clone();
    check(
        "bias_act z",
        Box::new(move || c.bias_act(rows, cols, &mut short(), &bias(), act, &mut full())),
    );
    let c = cpu.clone();
    check(
        "bias_act a",
        Box::new(move || c.bias_act(rows, cols, &mut full(), &bias(), act, &mut short())),
    );
    let c = cpu.clone();
    check(
        "bias_act bias",
        Box::new(move || c.bias_act(rows, cols, &mut full(), &vec![0.0; cols - 1], act, &mut full())),
    );
    let c = cpu.clone();
    check(
        "layered_error q",
        Box::new(move || c.layered_error(rows, cols, &full(), Some(&short()), &mut full())),
    );
    // layered_settle: a short g, then a short s⋆.
    for (what, g_len, free_len) in [("layered_settle g", n - 1, n), ("layered_settle s_free", n, n - 1)] {
        let c = cpu.clone();
        check(
            what,
            Box::new(move || {
                let (g, sf) = (vec![0.5f32; g_len], vec![0.1f32; free_len]);
                let (mut u, mut s, mut a, mut da, mut e) = (full(), full(), full(), full(), full());
                let st = LayerState {
                    u: &mut u,
                    s: &mut s,
                    a: &mut a,
                    da: &mut da,
                    e: &mut e,
                };
                c.layered_settle(rows, cols, None, &g, -1.0, 0.5, act, &sf, st)
            }),
        );
    }
    let c = cpu.clone();
    check(
        "act_grad_mul_into src",
        Box::new(move || c.act_grad_mul_into(rows, cols, &full(), act, 2.0, &short(), &mut full())),
    );
    let c = cpu.clone();
    check(
        "hopfield_settle dc",
        Box::new(move || {
            let dc = short();
            c.hopfield_settle(rows, cols, &full(), &bias(), Some((&dc, 0.5)), act, &mut full())
        }),
    );
    let c = cpu.clone();
    check(
        "hopfield_settle s",
        Box::new(move || c.hopfield_settle(rows, cols, &full(), &bias(), None, act, &mut short())),
    );
    let c = cpu.clone();
    check(
        "act_grad_mul",
        Box::new(move || c.act_grad_mul(rows, cols, &short(), act, &mut full())),
    );
    let c = cpu.clone();
    check(
        "cost_grad o",
        Box::new(move || c.cost_grad(rows, cols, &short(), &lab(), loss, &mut full())),
    );
    let c = cpu.clone();
    check(
        "cost_grad labels",
        Box::new(move || c.cost_grad(rows, cols, &full(), &vec![0; rows - 1], loss, &mut full())),
    );
    let c = cpu.clone();
    check(
        "cost_stats o",
        Box::new(move || c.cost_stats(rows, cols, &short(), &lab(), Loss::SquaredError, &mut vec![0.0; 2])),
    );
    let c = cpu.clone();
    check(
        "cost_stats stats",
        Box::new(move || c.cost_stats(rows, cols, &full(), &lab(), loss, &mut vec![0.0; 1])),
    );
    let c = cpu.clone();
    check("argmax", Box::new(move || c.argmax(rows, cols, &short(), &mut lab())));
    let c = cpu.clone();
    check(
        "col_sum x",
        Box::new(move || c.col_sum(rows, cols, 1.0, &short(), 0.0, &mut vec![0.0; cols])),
    );
    let c = cpu.clone();
    check(
        "col_sum y",
        Box::new(move || c.col_sum(rows, cols, 1.0, &full(), 0.0, &mut vec![0.0; cols - 1])),
    );
    let c = cpu.clone();
    check("sum_sq", Box::new(move || c.sum_sq(&full(), &mut vec![])));
    let c = cpu.clone();
    check(
        "scale_by_inv_norm y",
        Box::new(move || c.scale_by_inv_norm(&full(), &vec![1.0], NormRule::Eps(1e-7), &mut short())),
    );
    let c = cpu.clone();
    check(
        "adam",
        Box::new(move || {
            let mut words = vec![];
            mep::backend::ctl::encode(&mep::backend::ctl::adam_scalars(1e-3, 0.9, 0.999, 0.0, 1), &mut words);
            c.adam(
                &mut full(),
                &short(),
                &mut full(),
                &mut full(),
                0.9,
                0.999,
                1e-8,
                &words,
                0,
            )
        }),
    );
    assert!(failures.is_empty(), "short buffers:\n{}", failures.join("\n"));
}

/// Short device scalars must be Shape errors, and zero-sized shapes must not panic
/// (a no-op or an error are both fine). These panic in `src/backend/cpu.rs` today
/// (indexing `sumsq[0]`, `chunks_mut(0)`, `o[0]` of an empty row), so the test is
/// ignored until the backend checks them. Run with `--ignored`.
#[test]
fn empty_scalars_and_zero_sizes_do_not_panic() {
    type F = Box<dyn FnOnce() -> mep::Result<()> + std::panic::UnwindSafe>;
    let mut failures = Vec::new();
    let short: Vec<(&str, F)> = vec![
        (
            "scale_by_inv_norm with an empty sumsq",
            Box::new(|| {
                Cpu::<f32>::new().scale_by_inv_norm(&vec![1.0; 4], &vec![], NormRule::Eps(1e-7), &mut vec![0.0; 4])
            }),
        ),
        (
            "spectral_clamp with an empty sumsq",
            Box::new(|| Cpu::<f32>::new().spectral_clamp(&mut vec![1.0; 4], &vec![], 0.5)),
        ),
    ];
    for (what, f) in short {
        failures.extend(expect_shape_error(what, f));
    }
    let zero: Vec<(&str, F)> = vec![
        (
            "gather_rows with row_len 0",
            Box::new(|| Cpu::<f32>::new().gather_rows(&vec![1.0; 4], 0, &vec![0, 1], 0, 2, &mut vec![0.0; 4])),
        ),
        (
            "bias_act with cols 0",
            Box::new(|| {
                Cpu::<f32>::new().bias_act(2, 0, &mut vec![0.0; 3], &vec![], ActChain::IDENTITY, &mut vec![0.0; 3])
            }),
        ),
        (
            "argmax with classes 0",
            Box::new(|| Cpu::<f32>::new().argmax(1, 0, &vec![0.0; 3], &mut vec![0; 1])),
        ),
        (
            "cost_stats with classes 0",
            Box::new(|| {
                Cpu::<f32>::new().cost_stats(1, 0, &vec![0.0; 3], &vec![0], Loss::SquaredError, &mut vec![0.0; 2])
            }),
        ),
    ];
    for (what, f) in zero {
        if std::panic::catch_unwind(f).is_err() {
            failures.push(format!("{what}: panicked"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
