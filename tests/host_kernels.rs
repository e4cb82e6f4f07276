//! The CUDA kernels, compiled for the host (feature `host-kernels`, see
//! `kernels/host_shim.h`), run by `kernels/host_runner.cpp` (one fiber per CUDA thread,
//! real barriers and shuffles, random schedule) with the backend's launch shapes,
//! against the CPU backend (`Cpu<f32>`) on fresh random inputs:
//! every activation chain, both losses, ‖Δ‖/‖ref‖ ≤ 1e-5. Each test prints its seed
//! on failure. Run: `cargo test --features host-kernels --test host_kernels`.
#![cfg(feature = "host-kernels")]

use mep::backend::cpu::Cpu;
use mep::backend::cuda::host;
use mep::backend::{Backend, LayerState, NormRule};
use mep::nn::activation::ActChain;
use mep::rng::Rng;
use mep::Loss;

mod common;
use common::{chains, close, close_delta, norm_rules_match_the_cpu, randn, rng};

/// Up to 40×60: often beyond 3 blocks of 256, so the grid-stride loops iterate.
fn shape(rng: &mut Rng) -> (usize, usize) {
    (1 + rng.below(40) as usize, 1 + rng.below(60) as usize)
}

fn losses() -> [Loss; 3] {
    [
        Loss::CrossEntropy { label_smoothing: 0.0 },
        Loss::CrossEntropy { label_smoothing: 0.1 },
        Loss::SquaredError,
    ]
}

#[test]
fn bias_act() {
    let cpu = Cpu::<f32>::new();
    for act in chains() {
        let (seed, mut r) = rng();
        let (rows, cols) = shape(&mut r);
        let z0 = randn(&mut r, rows * cols, 2.0);
        let bias = randn(&mut r, cols, 1.0);
        let (mut zc, mut ac) = (z0.clone(), vec![0.0; rows * cols]);
        cpu.bias_act(rows, cols, &mut zc, &bias, act, &mut ac).unwrap();
        let z0_copy = z0.clone();
        let (mut zh, mut ah) = (z0, vec![f32::NAN; rows * cols]);
        host::bias_act(rows, cols, &mut zh, &bias, act, &mut ah).unwrap();
        close(&format!("bias_act z {}", act.describe()), seed, &zh, &zc);
        close(&format!("bias_act a {}", act.describe()), seed, &ah, &ac);
        let n = rows * cols;
        let (p, mut zf, mut af) = (z0_copy.clone(), vec![f32::NAN; n], vec![f32::NAN; n]);
        host::bias_act_from(rows, cols, &p, &bias, act, &mut zf, &mut af).unwrap();
        close(&format!("bias_act_from z {}", act.describe()), seed, &zf, &zc);
        close(&format!("bias_act_from a {}", act.describe()), seed, &af, &ac);
        assert_eq!(p, z0_copy, "bias_act_from wrote to its source (seed {seed})");
    }
}

#[test]
fn layered_error() {
    let cpu = Cpu::<f32>::new();
    let (seed, mut r) = rng();
    let (rows, cols) = shape(&mut r);
    let (u, q) = (randn(&mut r, rows * cols, 1e-3), randn(&mut r, rows * cols, 1e-3));
    for q in [Some(&q), None] {
        let mut ec = vec![0.0; rows * cols];
        cpu.layered_error(rows, cols, &u, q, &mut ec).unwrap();
        let mut eh = vec![f32::NAN; rows * cols];
        host::layered_error(rows, cols, &u, q.map(|q| &q[..]), &mut eh).unwrap();
        assert_eq!(eh, ec, "layered_error q={} (seed {seed})", q.is_some());
    }
}

#[test]
fn layered_settle() {
    let cpu = Cpu::<f32>::new();
    for act in chains() {
        for (c, with_q) in [(-1.0, true), (0.7, false)] {
            let (seed, mut r) = rng();
            let (rows, cols) = shape(&mut r);
            let n = rows * cols;
            let (q, g, u0) = (randn(&mut r, n, 1e-3), randn(&mut r, n, 1.0), randn(&mut r, n, 1e-3));
            let s_free = randn(&mut r, n, 2.0);
            let s0: Vec<f32> = (0..n).map(|i| s_free[i] + u0[i]).collect();
            let eta = r.uniform_range(0.05, 0.5);
            let q = with_q.then_some(&q);
            let (mut uc, mut sc) = (u0.clone(), s0.clone());
            // a = φ(s) on entry, as the phase keeps it (the CPU reads φ′ off it).
            let mut a0 = s0.clone();
            cpu.bias_act(rows, cols, &mut a0.clone(), &vec![0.0; cols], act, &mut a0)
                .unwrap();
            let (mut ac, mut dc, mut ec) = (a0, vec![0.0; n], vec![0.0; n]);
            let st = LayerState {
                u: &mut uc,
                s: &mut sc,
                a: &mut ac,
                da: &mut dc,
                e: &mut ec,
            };
            cpu.layered_settle(rows, cols, q, &g, c, eta, act, &s_free, st).unwrap();
            let (mut uh, mut sh) = (u0, s0);
            let (mut ah, mut dh, mut eh) = (vec![f32::NAN; n], vec![f32::NAN; n], vec![f32::NAN; n]);
            let st = host::HostLayerState {
                u: &mut uh,
                s: &mut sh,
                a: &mut ah,
                da: &mut dh,
                e: &mut eh,
            };
            host::layered_settle(rows, cols, q.map(|q| &q[..]), &g, c, eta, act, &s_free, st).unwrap();
            let what = format!("layered_settle {} c={c} q={with_q}", act.describe());
            assert_eq!(eh, ec, "{what} e (seed {seed})");
            close(&format!("{what} u"), seed, &uh, &uc);
            close(&format!("{what} s"), seed, &sh, &sc);
            close(&format!("{what} a"), seed, &ah, &ac);
            close_delta(&format!("{what} Δa"), seed, &dh, &dc, &uc);
        }
    }
}

#[test]
fn hopfield_settle() {
    let cpu = Cpu::<f32>::new();
    for act in chains() {
        for nudged in [false, true] {
            let (seed, mut r) = rng();
            let (rows, cols) = shape(&mut r);
            let n = rows * cols;
            let (drive, bias, dc) = (randn(&mut r, n, 2.0), randn(&mut r, cols, 1.0), randn(&mut r, n, 1.0));
            let beta = r.uniform_range(0.1, 1.0);
            let mut sc = vec![0.0; n];
            cpu.hopfield_settle(rows, cols, &drive, &bias, nudged.then_some((&dc, beta)), act, &mut sc)
                .unwrap();
            let mut sh = vec![f32::NAN; n];
            host::hopfield_settle(
                rows,
                cols,
                &drive,
                &bias,
                nudged.then_some((&dc[..], beta)),
                act,
                &mut sh,
            )
            .unwrap();
            close(
                &format!("hopfield_settle {} nudged={nudged}", act.describe()),
                seed,
                &sh,
                &sc,
            );
        }
    }
}

#[test]
fn act_grad_mul() {
    let cpu = Cpu::<f32>::new();
    for act in chains() {
        let (seed, mut r) = rng();
        let (rows, cols) = shape(&mut r);
        let n = rows * cols;
        let (z, d0) = (randn(&mut r, n, 2.0), randn(&mut r, n, 1.0));
        let mut dc = d0.clone();
        cpu.act_grad_mul(rows, cols, &z, act, &mut dc).unwrap();
        let mut dh = d0;
        host::act_grad_mul(rows, cols, &z, act, &mut dh).unwrap();
        close(&format!("act_grad_mul {}", act.describe()), seed, &dh, &dc);
    }
}

#[test]
fn act_grad_mul_into() {
    let cpu = Cpu::<f32>::new();
    for act in chains() {
        let (seed, mut r) = rng();
        let (rows, cols) = shape(&mut r);
        let n = rows * cols;
        let (z, src) = (randn(&mut r, n, 2.0), randn(&mut r, n, 1.0));
        let scale = r.uniform_range(-2.0, 2.0);
        let mut dc = vec![f32::NAN; n];
        cpu.act_grad_mul_into(rows, cols, &z, act, scale, &src, &mut dc)
            .unwrap();
        let mut dh = vec![f32::NAN; n];
        host::act_grad_mul_into(rows, cols, &z, act, scale, &src, &mut dh).unwrap();
        close(&format!("act_grad_mul_into {}", act.describe()), seed, &dh, &dc);
    }
}

fn cost_inputs(r: &mut Rng) -> (usize, usize, Vec<f32>, Vec<u32>) {
    let rows = 1 + r.below(12) as usize;
    let classes = [1, 2, 10, 33, 100][r.below(5) as usize];
    let mut o = randn(r, rows * classes, 3.0);
    if rows > 1 && classes > 1 {
        o[classes + 1] = o[classes]; // a tie: argmax must pick the first
    }
    let labels = (0..rows).map(|_| r.below(classes as u64) as u32).collect();
    (rows, classes, o, labels)
}

#[test]
fn cost_grad() {
    let cpu = Cpu::<f32>::new();
    for loss in losses() {
        for _ in 0..5 {
            let (seed, mut r) = rng();
            let (rows, classes, o, labels) = cost_inputs(&mut r);
            let mut gc = vec![0.0; rows * classes];
            cpu.cost_grad(rows, classes, &o, &labels, loss, &mut gc).unwrap();
            let mut gh = vec![f32::NAN; rows * classes];
            host::cost_grad(rows, classes, &o, &labels, loss, &mut gh).unwrap();
            close(&format!("cost_grad {loss:?} {rows}×{classes}"), seed, &gh, &gc);
        }
    }
}

#[test]
fn cost_stats_and_argmax() {
    let cpu = Cpu::<f32>::new();
    for loss in losses() {
        for _ in 0..5 {
            let (seed, mut r) = rng();
            let (rows, classes, o, labels) = cost_inputs(&mut r);
            let start = vec![1.5f32, 2.0]; // accumulates onto existing stats
            let mut sc = start.clone();
            cpu.cost_stats(rows, classes, &o, &labels, loss, &mut sc).unwrap();
            let mut sh = start;
            host::cost_stats(rows, classes, &o, &labels, loss, &mut sh).unwrap();
            close(&format!("cost_stats {loss:?} {rows}×{classes}"), seed, &sh, &sc);
            assert_eq!(sh[1], sc[1], "cost_stats correct count (seed {seed})");

            let mut ac = vec![0; rows];
            cpu.argmax(rows, classes, &o, &mut ac).unwrap();
            let mut ah = vec![u32::MAX; rows];
            host::argmax(rows, classes, &o, &mut ah).unwrap();
            assert_eq!(ah, ac, "argmax {rows}×{classes} (seed {seed})");
        }
    }
}

#[test]
fn col_sum() {
    let cpu = Cpu::<f32>::new();
    for beta in [0.0, 0.5] {
        let (seed, mut r) = rng();
        let (rows, cols) = shape(&mut r);
        let x = randn(&mut r, rows * cols, 1.0);
        let mut y0 = randn(&mut r, cols, 1.0);
        if beta == 0.0 {
            y0[0] = f32::NAN; // β = 0 ignores y
        }
        let alpha = r.uniform_range(-2.0, 2.0);
        let mut yc = y0.clone();
        cpu.col_sum(rows, cols, alpha, &x, beta, &mut yc).unwrap();
        let mut yh = y0;
        host::col_sum(rows, cols, alpha, &x, beta, &mut yh).unwrap();
        close(&format!("col_sum β={beta}"), seed, &yh, &yc);
    }
}

#[test]
fn sum_sq_and_norm_scalings() {
    let cpu = Cpu::<f32>::new();
    let (seed, mut r) = rng();
    let n = 1 + r.below(500) as usize;
    let x = randn(&mut r, n, 1.0);
    let (mut qc, mut qh) = (vec![0.0f32], vec![123.0f32]); // sum_sq writes, not accumulates
    cpu.sum_sq(&x, &mut qc).unwrap();
    host::sum_sq(&x, &mut qh).unwrap();
    close("sum_sq", seed, &qh, &qc);
    // Many blocks (the last to finish adds the partials), in several random orders.
    let big_n = 20_000 + r.below(20_000) as usize;
    let big = randn(&mut r, big_n, 1.0);
    let mut qbig = vec![0.0f32];
    cpu.sum_sq(&big, &mut qbig).unwrap();
    for _ in 0..3 {
        let mut q = vec![f32::NAN];
        host::sum_sq(&big, &mut q).unwrap();
        close("sum_sq, many blocks", seed, &q, &qbig);
    }

    // nesterov_sum_sq: m, u against the CPU, Σu² bit for bit the one-launch sum_sq's,
    // with many blocks; the ticket is checked re-armed by host::nesterov_sum_sq.
    let m0 = randn(&mut r, big_n, 1.0);
    let (mut mc, mut uc, mut qn) = (m0.clone(), vec![0.0f32; big_n], vec![0.0f32]);
    cpu.nesterov_sum_sq(0.9, &big, &mut mc, &mut uc, &mut qn).unwrap();
    let (mut mh, mut uh, mut qh2) = (m0, vec![f32::NAN; big_n], vec![f32::NAN]);
    host::nesterov_sum_sq(0.9, &big, &mut mh, &mut uh, &mut qh2).unwrap();
    close("nesterov_sum_sq m", seed, &mh, &mc);
    close("nesterov_sum_sq u", seed, &uh, &uc);
    close("nesterov_sum_sq Σu²", seed, &qh2, &qn);
    let mut qu = vec![f32::NAN];
    host::sum_sq(&uh, &mut qu).unwrap();
    assert_eq!(qh2, qu, "seed {seed}: nesterov_sum_sq's sum differs from sum_sq's");

    let mut yc = vec![0.0; n];
    cpu.scale_by_inv_norm(&x, &qc, NormRule::Eps(1e-7), &mut yc).unwrap();
    let mut yh = vec![f32::NAN; n];
    host::scale_by_inv_norm(&x, &qc, NormRule::Eps(1e-7), &mut yh).unwrap();
    close("scale_by_inv_norm", seed, &yh, &yc);
    norm_rules_match_the_cpu(seed, &x, qc[0], |rule, s| {
        let mut yh = vec![5.0f32; n];
        host::scale_by_inv_norm(&x, &[s], rule, &mut yh).unwrap();
        yh
    });

    let sigma = (qc[0] as f64).sqrt();
    for gamma in [sigma * 0.5, sigma * 2.0] {
        let (mut wc, mut wh) = (x.clone(), x.clone());
        cpu.spectral_clamp(&mut wc, &qc, gamma).unwrap();
        host::spectral_clamp(&mut wh, &qc, gamma).unwrap();
        close(&format!("spectral_clamp γ={gamma}"), seed, &wh, &wc);
    }
}

/// `ns_iteration` (one Newton–Schulz iteration by row strips, P·A·P by Horner's rule)
/// against its f64 definition in the P·A·P form: Gram matrices as orthogonalisation
/// meets them, with and without Q and the next Gram matrix, k from 1 to past a
/// strip's multiple of 3 blocks (each block takes several strips), NaN in the outputs.
#[test]
fn ns_iteration_matches_its_definition() {
    use mep::optim::newton_schulz::NS_COEFFS;
    let (seed, mut r) = rng();
    for k in [1usize, 2, 5, 6, 7, 33, 64 + r.below(40) as usize] {
        let (a, q) = common::ns_inputs(&mut r, k);
        for (with_q, with_next) in [(false, true), (true, true), (true, false)] {
            for norm in common::NS_NORMS {
                let eps = 1e-7;
                let case = common::ns_case(&mut r, k, NS_COEFFS, &a, with_q.then_some(&q[..]), norm, eps);
                let (mut qn, mut an) = (vec![f32::NAN; k * k], vec![f32::NAN; k * k]);
                let ss = [case.sum_sq];
                host::ns_iteration(
                    k,
                    NS_COEFFS,
                    &case.gram,
                    with_q.then_some(&q[..]),
                    &mut qn,
                    with_next.then_some(&mut an[..]),
                    norm.map(|(g, q)| (&ss[..], eps, g, q)),
                )
                .unwrap();
                let what = format!("k = {k}, Q given {with_q}, norm {norm:?}");
                common::within(&format!("{what}: P·Q"), seed, &qn, &case.want_q);
                if with_next {
                    common::within(&format!("{what}: P·A·P"), seed, &an, &case.want_a);
                } else {
                    assert!(an.iter().all(|v| v.is_nan()), "{what}: wrote A' unasked (seed {seed})");
                }
            }
        }
    }
}

#[test]
fn axpby_fill_adam() {
    let cpu = Cpu::<f32>::new();
    let (seed, mut r) = rng();
    let n = 1 + r.below(300) as usize;
    let x = randn(&mut r, n, 1.0);
    for beta in [0.0, -0.75] {
        let mut y0 = randn(&mut r, n, 1.0);
        if beta == 0.0 {
            y0[0] = f32::NAN;
        }
        let (mut yc, mut yh) = (y0.clone(), y0);
        cpu.axpby(1.25, &x, beta, &mut yc).unwrap();
        host::axpby(1.25, &x, beta, &mut yh).unwrap();
        close(&format!("axpby β={beta}"), seed, &yh, &yc);
    }

    let (mut fc, mut fh) = (vec![0.0; n], vec![0.0; n]);
    cpu.fill(&mut fc, -3.5).unwrap();
    host::fill(&mut fh, -3.5).unwrap();
    close("fill", seed, &fh, &fc);

    let p0 = randn(&mut r, n, 1.0);
    let (mut pc, mut mc, mut vc) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
    let (mut ph, mut mh, mut vh) = (p0, vec![0.0; n], vec![0.0; n]);
    for t in 1..=4 {
        let g = randn(&mut r, n, 1.0);
        let mut words = vec![];
        mep::backend::ctl::encode(&[0.5], &mut words);
        mep::backend::ctl::encode(&mep::backend::ctl::adam_scalars(1e-3, 0.9, 0.999, 0.01, t), &mut words);
        cpu.adam(&mut pc, &g, &mut mc, &mut vc, 0.9, 0.999, 1e-8, &words, 1)
            .unwrap();
        host::adam(&mut ph, &g, &mut mh, &mut vh, 0.9, 0.999, 1e-8, &words, 1).unwrap();
        let y0 = randn(&mut r, n, 1.0);
        let (mut yc, mut yh) = (y0.clone(), y0.clone());
        cpu.axpby_ctl(&words, 2, &g, 0, &mut yc).unwrap();
        host::axpby_ctl(&words, 2, &g, 0, &mut yh).unwrap();
        close("axpby_ctl", seed, &yh, &yc);
    }
    close("adam p", seed, &ph, &pc);
    close("adam m", seed, &mh, &mc);
    close("adam v", seed, &vh, &vc);
}

#[test]
fn gathers() {
    let cpu = Cpu::<f32>::new();
    let (seed, mut r) = rng();
    let (rows, row_len) = (5 + r.below(20) as usize, 1 + r.below(30) as usize);
    let src = randn(&mut r, rows * row_len, 1.0);
    let labels: Vec<u32> = (0..rows as u32).map(|i| i * 7 + 1).collect();
    let mut idx: Vec<u32> = (0..rows as u32).collect();
    r.shuffle(&mut idx);
    let (start, count) = (2, rows - 3);

    let mut dc = vec![0.0; count * row_len];
    cpu.gather_rows(&src, row_len, &idx, start, count, &mut dc).unwrap();
    let mut dh = vec![f32::NAN; count * row_len];
    host::gather_rows(&src, row_len, &idx, start, count, &mut dh).unwrap();
    assert_eq!(dh, dc, "gather_rows (seed {seed})");

    let mut lc = vec![0; count];
    cpu.gather_labels(&labels, &idx, start, count, &mut lc).unwrap();
    let mut lh = vec![u32::MAX; count];
    host::gather_labels(&labels, &idx, start, count, &mut lh).unwrap();
    assert_eq!(lh, lc, "gather_labels (seed {seed})");
}

#[test]
fn short_buffers_are_shape_errors() {
    let mut a = vec![0.0f32; 3];
    assert!(host::bias_act(2, 2, &mut [0.0; 4], &[0.0; 2], ActChain::IDENTITY, &mut a).is_err());
    assert!(host::cost_stats(2, 3, &[0.0; 6], &[0, 1], Loss::SquaredError, &mut [0.0]).is_err());
    assert!(host::gather_rows(&[0.0; 4], 2, &[0, 1], 1, 2, &mut [0.0; 4]).is_err());
}

// The runner can fail: each deliberately broken kernel of kernels/selfcheck/broken.cu
// is reported, as a wrong result (a missing barrier) or as an error (bad shuffle
// mask, divergent barriers). Fixed schedule seeds make these deterministic.

#[test]
fn runner_catches_a_missing_syncthreads() {
    let x = vec![1.0f32; 256];
    for seed in 1..=5u64 {
        let mut out = [0.0f32];
        host::selfcheck("broken_sum_nosync", 1, 256, &x, &mut out, seed).unwrap();
        assert_ne!(
            out[0], 256.0,
            "seed {seed}: the unsynchronised block sum came out right"
        );
    }
    // The same reduction with its barriers (the real sum_sq) is right.
    let mut q = [f32::NAN];
    host::sum_sq(&x, &mut q).unwrap();
    assert_eq!(q[0], 256.0);
}

#[test]
fn runner_rejects_a_wrong_shuffle_mask() {
    let x: Vec<f32> = (0..32).map(|i| i as f32).collect();
    for seed in 1..=3u64 {
        let err = host::selfcheck("broken_shuffle_mask", 1, 32, &x, &mut [0.0], seed).unwrap_err();
        assert!(err.contains("__shfl_xor_sync") && err.contains("mask"), "{err}");
    }
}

#[test]
fn runner_rejects_divergent_barriers_instead_of_hanging() {
    for name in ["broken_divergent_barrier", "broken_early_exit"] {
        for seed in 1..=3u64 {
            let err = host::selfcheck(name, 1, 64, &[], &mut [0.0; 8], seed).unwrap_err();
            assert!(err.contains("divergent __syncthreads"), "{name}: {err}");
            assert!(err.contains(&format!("seed {seed}")), "{name}: {err}");
        }
    }
}

#[test]
fn cooperative_kernels_are_exact_under_many_schedules() {
    // Row kernels with full 32-lane shuffles and col_sum's shared-memory tree, over
    // shapes that make the grid-stride loops iterate (HOST_MAX_BLOCKS blocks).
    let cpu = Cpu::<f32>::new();
    let (seed, mut r) = rng();
    for _ in 0..4 {
        let (rows, classes) = (1 + r.below(70) as usize, 1 + r.below(70) as usize);
        let o = randn(&mut r, rows * classes, 3.0);
        let labels: Vec<u32> = (0..rows).map(|_| r.below(classes as u64) as u32).collect();
        let mut ac = vec![0u32; rows];
        cpu.argmax(rows, classes, &o, &mut ac).unwrap();
        let mut ah = vec![u32::MAX; rows];
        host::argmax(rows, classes, &o, &mut ah).unwrap();
        assert_eq!(ah, ac, "seed {seed}: argmax {rows}×{classes}");
        let loss = Loss::CrossEntropy { label_smoothing: 0.1 };
        let (mut gc, mut gh) = (vec![0.0; rows * classes], vec![f32::NAN; rows * classes]);
        cpu.cost_grad(rows, classes, &o, &labels, loss, &mut gc).unwrap();
        host::cost_grad(rows, classes, &o, &labels, loss, &mut gh).unwrap();
        close(&format!("cost_grad {rows}×{classes}"), seed, &gh, &gc);
        let (mut yc, mut yh) = (vec![0.0; classes], vec![f32::NAN; classes]);
        cpu.col_sum(rows, classes, 1.0, &o, 0.0, &mut yc).unwrap();
        host::col_sum(rows, classes, 1.0, &o, 0.0, &mut yh).unwrap();
        close(&format!("col_sum {rows}×{classes}"), seed, &yh, &yc);
    }
}

#[test]
fn reductions_repeat_bit_for_bit_under_different_schedules() {
    // Each launch draws a fresh schedule (and block order); the two-pass reductions
    // must not care.
    let (seed, mut r) = rng();
    let x = randn(&mut r, 20_000, 1.0);
    let (rows, classes) = (300, 10);
    let o = randn(&mut r, rows * classes, 2.0);
    let labels: Vec<u32> = (0..rows).map(|_| r.below(classes as u64) as u32).collect();
    let run = || {
        let (mut q, mut st) = ([0.0f32], [0.0f32; 2]);
        host::sum_sq(&x, &mut q).unwrap();
        host::cost_stats(rows, classes, &o, &labels, Loss::SquaredError, &mut st).unwrap();
        [q[0].to_bits(), st[0].to_bits(), st[1].to_bits()]
    };
    let first = run();
    for _ in 0..5 {
        assert_eq!(run(), first, "seed {seed}: a repeated reduction changed its bits");
    }
}

#[test]
fn runner_exposes_order_dependent_float_atomics() {
    // The old single-pass sum_sq (one atomicAdd per block): under the runner's random
    // block order its bits change from schedule to schedule, which is what
    // reductions_repeat_bit_for_bit_under_different_schedules would catch.
    // Eight block sums can happen to round alike in every order (seed
    // 1796032077748170696 gave one bit pattern in 12 orders), so up to three data
    // draws, 24 orders each, before concluding the runner hides the order.
    let (seed, mut r) = rng();
    let mut patterns = 0;
    for _ in 0..3 {
        let x = randn(&mut r, 8 * 256 * 4, 1.0);
        let bits: std::collections::HashSet<u32> = (1..=24u64)
            .map(|s| {
                let mut out = [0.0f32];
                host::selfcheck("broken_sum_atomic", 8, 256, &x, &mut out, s).unwrap();
                out[0].to_bits()
            })
            .collect();
        patterns = bits.len();
        if patterns > 1 {
            break;
        }
    }
    assert!(
        patterns > 1,
        "seed {seed}: 24 block orders of each of 3 inputs gave identical atomic sums"
    );
}
