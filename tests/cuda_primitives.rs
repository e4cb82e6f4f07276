//! Every primitive of the CUDA backend against the CPU backend (`Cpu<f32>`) on fresh
//! random inputs, ‖Δ‖/‖ref‖ ≤ 1e-5: gemm in all four transpose combinations (β = 0
//! with NaN garbage in C, and β ≠ 0), every activation chain, both losses.
//! Skips with a message when no GPU is usable; fails then when `MEP_REQUIRE_GPU=1`.

mod common;
use common::{chains, close, close_delta, close_to_scale, gpu, norm_rules_match_the_cpu, randn, rel_err, rng};

use mep::backend::cpu::Cpu;
use mep::backend::cuda::Cuda;
use mep::backend::{Backend, LayerState, NormRule};
use mep::rng::Rng;
use mep::{Loss, MepError};

/// Shapes around the launch granularity (32-lane rows, 256-thread blocks, 8-row blocks).
fn shape(r: &mut Rng) -> (usize, usize) {
    (
        [1, 7, 64, 129, 300][r.below(5) as usize],
        [1, 10, 33, 256, 1000][r.below(5) as usize],
    )
}

#[test]
fn memory_round_trips_and_shape_errors() {
    let Some(gpu) = gpu() else { return };
    let (seed, mut r) = rng();
    let h = randn(&mut r, 1000, 1.0);
    let d = gpu.upload(&h).unwrap();
    assert_eq!(gpu.len(&d), 1000);
    assert_eq!(gpu.download(&d).unwrap(), h, "upload/download (seed {seed})");
    let mut z = gpu.zeros(1200).unwrap();
    assert!(gpu.download(&z).unwrap().iter().all(|&v| v == 0.0));
    gpu.copy(&d, &mut z).unwrap();
    assert_eq!(&gpu.download(&z).unwrap()[..1000], &h[..]);
    let h2 = randn(&mut r, 500, 1.0);
    gpu.write(&mut z, &h2).unwrap();
    assert_eq!(&gpu.download(&z).unwrap()[..500], &h2[..]);
    let l = gpu.upload_labels(&[3, 1, 4, 1, 5]).unwrap();
    assert_eq!(gpu.download_labels(&l).unwrap(), vec![3, 1, 4, 1, 5]);
    assert_eq!(gpu.download_labels(&gpu.zeros_labels(4).unwrap()).unwrap(), vec![0; 4]);
    // Short buffers are Shape errors, never panics.
    let mut small = gpu.zeros(10).unwrap();
    assert!(gpu.copy(&d, &mut small).is_err());
    assert!(gpu.write(&mut small, &h).is_err());
    assert!(gpu.gemm(false, false, 4, 4, 4, 1.0, &small, &d, 0.0, &mut z).is_err());
    let mut stats = gpu.zeros(1).unwrap();
    assert!(gpu
        .cost_stats(2, 5, &small, &l, Loss::SquaredError, &mut stats)
        .is_err());
    gpu.synchronize().unwrap();
}

#[test]
fn gemm_all_transposes() {
    let Some(gpu) = gpu() else { return };
    let cpu = Cpu::<f32>::new();
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        for beta in [0.0, 0.5, -1.25] {
            let (seed, mut r) = rng();
            let dims = [1, 3, 17, 64, 128, 257];
            let (m, n, k) = (
                dims[r.below(6) as usize],
                dims[r.below(6) as usize],
                dims[r.below(6) as usize],
            );
            let alpha = r.uniform_range(-2.0, 2.0);
            let (a, b) = (randn(&mut r, m * k, 1.0), randn(&mut r, k * n, 1.0));
            let mut c0 = randn(&mut r, m * n, 1.0);
            if beta == 0.0 {
                c0.iter_mut().step_by(3).for_each(|v| *v = f32::NAN);
            }
            let mut cc = c0.clone();
            cpu.gemm(ta, tb, m, n, k, alpha, &a, &b, beta, &mut cc).unwrap();
            let (ga, gb) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
            let mut gc = gpu.upload(&c0).unwrap();
            gpu.gemm(ta, tb, m, n, k, alpha, &ga, &gb, beta, &mut gc).unwrap();
            close(
                &format!("gemm ta={ta} tb={tb} {m}×{n}×{k} β={beta}"),
                seed,
                &gpu.download(&gc).unwrap(),
                &cc,
            );
        }
    }
}

/// `gemm_ctl` (one cuBLAS call reading α and β from the device) against the CPU's
/// GEMM then `axpby_ctl`, eagerly and from a captured graph replayed after the step
/// scalars changed (it must read the replay's values, not the capture's); with β = 0
/// C's old NaNs must not leak in; and the handle must be back in host pointer mode
/// afterwards (a plain GEMM still right).
#[test]
fn gemm_ctl_reads_its_scalars_when_it_runs() {
    let Some(gpu) = gpu() else { return };
    let cpu = Cpu::<f32>::new();
    let words = |scalars: &[f64]| {
        let mut w = vec![];
        mep::backend::ctl::encode(scalars, &mut w);
        w
    };
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        for beta_zero in [false, true] {
            let (seed, mut r) = rng();
            let dims = [1, 3, 17, 64, 128, 257];
            let mut dim = || dims[r.below(6) as usize];
            let (m, n, k) = (dim(), dim(), dim());
            let mut scalars: Vec<f64> = (0..5).map(|_| r.uniform_range(-2.0, 2.0)).collect();
            if beta_zero {
                scalars[4] = 0.0;
            }
            let (a, b) = (randn(&mut r, m * k, 1.0), randn(&mut r, k * n, 1.0));
            let mut c0 = randn(&mut r, m * n, 1.0);
            if beta_zero {
                c0.iter_mut().step_by(3).for_each(|v| *v = f32::NAN);
            }
            let what = format!("gemm_ctl ta={ta} tb={tb} {m}×{n}×{k} β=0: {beta_zero}");
            let reference = |scalars: &[f64]| {
                let (mut cc, mut tmp) = (c0.clone(), vec![0.0; m * n]);
                let ctl = words(scalars);
                cpu.gemm_ctl(ta, tb, m, n, k, &ctl, 2, &a, &b, 4, &mut cc, &mut tmp)
                    .unwrap();
                cc
            };
            let (ga, gb) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
            let mut gtmp = gpu.zeros(m * n).unwrap();
            let mut ctl = gpu.upload_labels(&words(&scalars)).unwrap();
            // Eager.
            let mut gc = gpu.upload(&c0).unwrap();
            gpu.gemm_ctl(ta, tb, m, n, k, &ctl, 2, &ga, &gb, 4, &mut gc, &mut gtmp)
                .unwrap();
            let first = reference(&scalars);
            close(&format!("{what} eager"), seed, &gpu.download(&gc).unwrap(), &first);
            // Captured, then replayed with other scalars.
            let mut gc = gpu.upload(&c0).unwrap();
            if gpu.begin_capture().unwrap() {
                let body = gpu.gemm_ctl(ta, tb, m, n, k, &ctl, 2, &ga, &gb, 4, &mut gc, &mut gtmp);
                let graph = gpu.end_capture();
                body.unwrap();
                let graph = graph.unwrap();
                let mut later = scalars.clone();
                later[2] = r.uniform_range(-2.0, 2.0);
                if !beta_zero {
                    later[4] = r.uniform_range(-2.0, 2.0);
                }
                gpu.write_labels(&mut ctl, &words(&later)).unwrap();
                gpu.launch_graph(&graph).unwrap();
                let replayed = gpu.download(&gc).unwrap();
                close(&format!("{what} replayed"), seed, &replayed, &reference(&later));
                assert!(
                    replayed
                        .iter()
                        .zip(&first)
                        .any(|(x, y)| (x - y).abs() > 1e-3 * y.abs().max(1.0)),
                    "{what}: the replay gave the capture's result (seed {seed})"
                );
            }
            // Host pointer mode again: a plain GEMM with host scalars.
            let mut gc = gpu.upload(&c0).unwrap();
            let mut cc = c0.clone();
            let beta = if beta_zero { 0.0 } else { 0.75 };
            cpu.gemm(ta, tb, m, n, k, -1.5, &a, &b, beta, &mut cc).unwrap();
            gpu.gemm(ta, tb, m, n, k, -1.5, &ga, &gb, beta, &mut gc).unwrap();
            close(
                &format!("{what} plain gemm after"),
                seed,
                &gpu.download(&gc).unwrap(),
                &cc,
            );
            // A ctl buffer without the slots is a typed error, not a fault.
            let short = gpu.upload_labels(&words(&scalars[..3])).unwrap();
            let err = gpu.gemm_ctl(ta, tb, m, n, k, &short, 2, &ga, &gb, 4, &mut gc, &mut gtmp);
            assert!(err.is_err(), "{what}: a 3-slot ctl buffer was read at slot 4");
        }
    }
}

#[test]
fn elementwise_settle_kernels() {
    let Some(gpu) = gpu() else { return };
    let cpu = Cpu::<f32>::new();
    for act in chains() {
        let (seed, mut r) = rng();
        let (rows, cols) = shape(&mut r);
        let n = rows * cols;
        let name = act.describe();
        let up = |v: &Vec<f32>| gpu.upload(v).unwrap();

        // bias_act
        let (z0, bias) = (randn(&mut r, n, 2.0), randn(&mut r, cols, 1.0));
        let (mut zc, mut ac) = (z0.clone(), vec![0.0; n]);
        cpu.bias_act(rows, cols, &mut zc, &bias, act, &mut ac).unwrap();
        let (mut zg, mut ag) = (up(&z0), gpu.zeros(n).unwrap());
        gpu.bias_act(rows, cols, &mut zg, &up(&bias), act, &mut ag).unwrap();
        close(&format!("bias_act z {name}"), seed, &gpu.download(&zg).unwrap(), &zc);
        close(&format!("bias_act a {name}"), seed, &gpu.download(&ag).unwrap(), &ac);
        // bias_act_from: the same from a source kept apart (left as it was), into NaN garbage
        let nan = vec![f32::NAN; n];
        let (pg, mut zg, mut ag) = (up(&z0), up(&nan), up(&nan));
        gpu.bias_act_from(rows, cols, &pg, &up(&bias), act, &mut zg, &mut ag)
            .unwrap();
        close(
            &format!("bias_act_from z {name}"),
            seed,
            &gpu.download(&zg).unwrap(),
            &zc,
        );
        close(
            &format!("bias_act_from a {name}"),
            seed,
            &gpu.download(&ag).unwrap(),
            &ac,
        );
        close(
            &format!("bias_act_from p {name}"),
            seed,
            &gpu.download(&pg).unwrap(),
            &z0,
        );

        // layered_error (perturbation form): e ← u − q, or u (no q); exact in f32.
        let (u, q) = (randn(&mut r, n, 1e-3), randn(&mut r, n, 1e-3));
        for q in [Some(&q), None] {
            let mut ec = vec![0.0; n];
            cpu.layered_error(rows, cols, &u, q, &mut ec).unwrap();
            let mut eg = gpu.zeros(n).unwrap();
            let qg = q.map(&up);
            gpu.layered_error(rows, cols, &up(&u), qg.as_ref(), &mut eg).unwrap();
            assert_eq!(
                gpu.download(&eg).unwrap(),
                ec,
                "layered_error q={} (seed {seed})",
                q.is_some()
            );
        }

        // layered_settle, hidden (c = −1, with q) and output (c = β, the first layer's
        // form without q): the error u − q, the step on u, s = s⋆ + u, a = φ(s) and Δa;
        // the outputs start as NaN garbage.
        let s_free = randn(&mut r, n, 2.0);
        let s: Vec<f32> = (0..n).map(|i| s_free[i] + u[i]).collect();
        for (c, with_q) in [(-1.0, true), (0.5, false)] {
            let g = randn(&mut r, n, 1.0);
            let nan = vec![f32::NAN; n];
            let q_arg = with_q.then_some(&q);
            // (The CPU's a and Δa are checked against f64 in cpu_primitives; the GPU's
            // against the CPU's below.)
            let (mut uc, mut sc) = (u.clone(), s.clone());
            // a = φ(s) on entry, as the phase keeps it (the CPU reads φ′ off it; the
            // GPU's starts as NaN garbage, so it must not).
            let mut a0 = s.clone();
            cpu.bias_act(rows, cols, &mut s.clone(), &vec![0.0; cols], act, &mut a0)
                .unwrap();
            let (mut ac, mut dc, mut ec) = (a0, nan.clone(), nan.clone());
            let st = LayerState {
                u: &mut uc,
                s: &mut sc,
                a: &mut ac,
                da: &mut dc,
                e: &mut ec,
            };
            cpu.layered_settle(rows, cols, q_arg, &g, c, 0.2, act, &s_free, st)
                .unwrap();
            let (mut ug, mut sg) = (up(&u), up(&s));
            let (mut ag, mut dg, mut eg) = (up(&nan), up(&nan), up(&nan));
            let st = LayerState {
                u: &mut ug,
                s: &mut sg,
                a: &mut ag,
                da: &mut dg,
                e: &mut eg,
            };
            let qg = q_arg.map(&up);
            gpu.layered_settle(rows, cols, qg.as_ref(), &up(&g), c, 0.2, act, &up(&s_free), st)
                .unwrap();
            let what = format!("layered_settle {name} c={c} q={with_q}");
            assert_eq!(gpu.download(&eg).unwrap(), ec, "{what} e (seed {seed})");
            // u against the terms its step sums, |u| + η(|e| + |c·φ′(s)·g|): f32 (and
            // the GPU's fused multiply-adds) round relative to them.
            let mut d = vec![1.0; n];
            cpu.act_grad_mul(rows, cols, &s, act, &mut d).unwrap();
            let terms: Vec<f64> = (0..n)
                .map(|i| {
                    let (e, cdg) = (ec[i] as f64, c * (d[i] * g[i]) as f64);
                    (u[i] as f64).abs() + 0.2 * (e.abs() + cdg.abs())
                })
                .collect();
            let u_gpu = gpu.download(&ug).unwrap();
            close_to_scale(&format!("{what} u"), seed, &u_gpu, &uc, &terms);
            // s, a and Δa of the u the GPU stored (its own rounding is checked above).
            let s_gpu = gpu.download(&sg).unwrap();
            let s_want: Vec<f32> = (0..n).map(|i| s_free[i] + u_gpu[i]).collect();
            assert_eq!(s_gpu, s_want, "{what} s: not s⋆ + u (seed {seed})");
            let (mut s_of_gpu, mut a_want) = (s_gpu.clone(), vec![0.0; n]);
            cpu.bias_act(rows, cols, &mut s_of_gpu, &vec![0.0; cols], act, &mut a_want)
                .unwrap();
            close(&format!("{what} a"), seed, &gpu.download(&ag).unwrap(), &a_want);
            let (mut u2, mut s2, mut a2, mut d2, mut e2) =
                (vec![0.0; n], s_gpu.clone(), vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            // Δa of the GPU's u on the CPU: a step with η = 0 from it.
            u2.copy_from_slice(&u_gpu);
            let st = LayerState {
                u: &mut u2,
                s: &mut s2,
                a: &mut a2,
                da: &mut d2,
                e: &mut e2,
            };
            cpu.layered_settle(rows, cols, None, &g, c, 0.0, act, &s_free, st)
                .unwrap();
            close_delta(&format!("{what} Δa"), seed, &gpu.download(&dg).unwrap(), &d2, &u_gpu);
        }

        // hopfield_settle, free and nudged
        let (drive, dc) = (randn(&mut r, n, 2.0), randn(&mut r, n, 1.0));
        for nudged in [false, true] {
            let mut sc = vec![0.0; n];
            cpu.hopfield_settle(rows, cols, &drive, &bias, nudged.then_some((&dc, 0.3)), act, &mut sc)
                .unwrap();
            let mut sg = gpu.zeros(n).unwrap();
            let dcg = up(&dc);
            gpu.hopfield_settle(
                rows,
                cols,
                &up(&drive),
                &up(&bias),
                nudged.then_some((&dcg, 0.3)),
                act,
                &mut sg,
            )
            .unwrap();
            // Against the terms of φ's argument, |drive| + |bias| + |β·dc| (every chain's
            // slope is at most 1): the argument can nearly cancel on small shapes.
            let terms: Vec<f64> = (0..n)
                .map(|i| {
                    let nudge = if nudged { 0.3 * dc[i].abs() } else { 0.0 };
                    (drive[i].abs() + bias[i % cols].abs() + nudge) as f64
                })
                .collect();
            close_to_scale(
                &format!("hopfield_settle {name} nudged={nudged}"),
                seed,
                &gpu.download(&sg).unwrap(),
                &sc,
                &terms,
            );
        }

        // act_grad_mul
        let d0 = randn(&mut r, n, 1.0);
        let mut dcpu = d0.clone();
        cpu.act_grad_mul(rows, cols, &z0, act, &mut dcpu).unwrap();
        let mut dg = up(&d0);
        gpu.act_grad_mul(rows, cols, &up(&z0), act, &mut dg).unwrap();
        close(
            &format!("act_grad_mul {name}"),
            seed,
            &gpu.download(&dg).unwrap(),
            &dcpu,
        );

        // act_grad_mul_into, scaled, into NaN garbage
        let scale = 2.0 * r.uniform() - 1.0;
        let mut dcpu = vec![f32::NAN; n];
        cpu.act_grad_mul_into(rows, cols, &z0, act, scale, &d0, &mut dcpu)
            .unwrap();
        let mut dg = up(&vec![f32::NAN; n]);
        gpu.act_grad_mul_into(rows, cols, &up(&z0), act, scale, &up(&d0), &mut dg)
            .unwrap();
        close(
            &format!("act_grad_mul_into {name}"),
            seed,
            &gpu.download(&dg).unwrap(),
            &dcpu,
        );
    }
}

#[test]
fn cost_kernels() {
    let Some(gpu) = gpu() else { return };
    let cpu = Cpu::<f32>::new();
    let mut case = 0;
    for loss in [
        Loss::CrossEntropy { label_smoothing: 0.0 },
        Loss::CrossEntropy { label_smoothing: 0.1 },
        Loss::SquaredError,
    ] {
        for classes in [1, 10, 33, 1000] {
            let (seed, mut r) = rng();
            // Up to 512 rows the statistics are one launch, above it two passes: every
            // size comes round among the 12 (loss, classes) cases.
            case += 1;
            let rows = [1, 9, 64, 300, 512, 513, 1100][(case + r.below(2) as usize) % 7];
            let mut o = randn(&mut r, rows * classes, 3.0);
            if rows > 1 && classes > 1 {
                o[classes + 1] = o[classes]; // a tie
            }
            let labels: Vec<u32> = (0..rows).map(|_| r.below(classes as u64) as u32).collect();
            let (og, lg) = (gpu.upload(&o).unwrap(), gpu.upload_labels(&labels).unwrap());

            let mut gc = vec![0.0; rows * classes];
            cpu.cost_grad(rows, classes, &o, &labels, loss, &mut gc).unwrap();
            let mut gg = gpu.zeros(rows * classes).unwrap();
            gpu.cost_grad(rows, classes, &og, &lg, loss, &mut gg).unwrap();
            close(
                &format!("cost_grad {loss:?} {rows}×{classes}"),
                seed,
                &gpu.download(&gg).unwrap(),
                &gc,
            );

            let start = vec![2.5f32, 3.0];
            let mut sc = start.clone();
            cpu.cost_stats(rows, classes, &o, &labels, loss, &mut sc).unwrap();
            let mut sg = gpu.upload(&start).unwrap();
            gpu.cost_stats(rows, classes, &og, &lg, loss, &mut sg).unwrap();
            let sgh = gpu.download(&sg).unwrap();
            close(&format!("cost_stats {loss:?} {rows}×{classes}"), seed, &sgh, &sc);
            assert_eq!(sgh[1], sc[1], "cost_stats correct count (seed {seed})");

            let mut ac = vec![0; rows];
            cpu.argmax(rows, classes, &o, &mut ac).unwrap();
            let mut ag = gpu.zeros_labels(rows).unwrap();
            gpu.argmax(rows, classes, &og, &mut ag).unwrap();
            assert_eq!(
                gpu.download_labels(&ag).unwrap(),
                ac,
                "argmax {rows}×{classes} (seed {seed})"
            );
        }
    }
}

#[test]
fn reductions_and_optimizer_kernels() {
    let Some(gpu) = gpu() else { return };
    let cpu = Cpu::<f32>::new();
    for _ in 0..4 {
        let (seed, mut r) = rng();
        let (rows, cols) = shape(&mut r);
        let x = randn(&mut r, rows * cols, 1.0);
        let xg = gpu.upload(&x).unwrap();

        for beta in [0.0, 0.5] {
            let mut y0 = randn(&mut r, cols, 1.0);
            if beta == 0.0 {
                y0[0] = f32::NAN;
            }
            let mut yc = y0.clone();
            cpu.col_sum(rows, cols, 0.75, &x, beta, &mut yc).unwrap();
            let mut yg = gpu.upload(&y0).unwrap();
            gpu.col_sum(rows, cols, 0.75, &xg, beta, &mut yg).unwrap();
            // A column's sum can nearly cancel (and the GPU adds in another order):
            // against the terms it sums, 0.75·Σ|x| + |β·y|.
            let terms: Vec<f64> = (0..cols)
                .map(|j| {
                    let col: f64 = (0..rows).map(|i| x[i * cols + j].abs() as f64).sum();
                    0.75 * col + if beta == 0.0 { 0.0 } else { (beta * y0[j] as f64).abs() }
                })
                .collect();
            close_to_scale(
                &format!("col_sum {rows}×{cols} β={beta}"),
                seed,
                &gpu.download(&yg).unwrap(),
                &yc,
                &terms,
            );
        }

        let mut qc = vec![0.0f32];
        cpu.sum_sq(&x, &mut qc).unwrap();
        let mut qg = gpu.upload(&[99.0f32]).unwrap();
        gpu.sum_sq(&xg, &mut qg).unwrap();
        close("sum_sq", seed, &gpu.download(&qg).unwrap(), &qc);

        let mut yc = vec![0.0; x.len()];
        cpu.scale_by_inv_norm(&x, &qc, NormRule::Eps(1e-7), &mut yc).unwrap();
        let mut yg = gpu.zeros(x.len()).unwrap();
        gpu.scale_by_inv_norm(&xg, &qg, NormRule::Eps(1e-7), &mut yg).unwrap();
        close("scale_by_inv_norm", seed, &gpu.download(&yg).unwrap(), &yc);
        norm_rules_match_the_cpu(seed, &x, qc[0], |rule, s| {
            let mut yg = gpu.upload(&vec![5.0f32; x.len()]).unwrap();
            gpu.scale_by_inv_norm(&xg, &gpu.upload(&[s]).unwrap(), rule, &mut yg)
                .unwrap();
            gpu.download(&yg).unwrap()
        });

        let sigma = (qc[0] as f64).sqrt();
        for gamma in [0.5 * sigma, 2.0 * sigma] {
            let mut wc = x.clone();
            cpu.spectral_clamp(&mut wc, &qc, gamma).unwrap();
            let mut wg = gpu.upload(&x).unwrap();
            gpu.spectral_clamp(&mut wg, &qg, gamma).unwrap();
            close(
                &format!("spectral_clamp γ={gamma}"),
                seed,
                &gpu.download(&wg).unwrap(),
                &wc,
            );
        }

        for beta in [0.0, -0.5] {
            let mut y0 = randn(&mut r, x.len(), 1.0);
            if beta == 0.0 {
                y0[0] = f32::NAN;
            }
            let mut yc = y0.clone();
            cpu.axpby(1.5, &x, beta, &mut yc).unwrap();
            let mut yg = gpu.upload(&y0).unwrap();
            gpu.axpby(1.5, &xg, beta, &mut yg).unwrap();
            // Sums of two terms, which can nearly cancel: against |α·x| + |β·y|.
            let terms = |y: &[f32]| -> Vec<f64> {
                let by = |y: f32| if beta == 0.0 { 0.0 } else { (beta * y as f64).abs() };
                x.iter().zip(y).map(|(x, y)| 1.5 * x.abs() as f64 + by(*y)).collect()
            };
            let yg = gpu.download(&yg).unwrap();
            close_to_scale(&format!("axpby β={beta}"), seed, &yg, &yc, &terms(&y0));
            // lincomb into a NaN-filled third buffer.
            let z = randn(&mut r, x.len(), 1.0);
            let mut lc = vec![f32::NAN; x.len()];
            cpu.lincomb(1.5, &x, beta, &z, &mut lc).unwrap();
            let mut lg = gpu.upload(&vec![f32::NAN; x.len()]).unwrap();
            gpu.lincomb(1.5, &xg, beta, &gpu.upload(&z).unwrap(), &mut lg).unwrap();
            let lg = gpu.download(&lg).unwrap();
            close_to_scale(&format!("lincomb β={beta}"), seed, &lg, &lc, &terms(&z));
            // nesterov: the kernel against the CPU's axpby then lincomb.
            let (mut mc, mut uc) = (z.clone(), vec![f32::NAN; x.len()]);
            cpu.nesterov(0.9, &x, &mut mc, &mut uc).unwrap();
            let mut mg = gpu.upload(&z).unwrap();
            let mut ug = gpu.upload(&vec![f32::NAN; x.len()]).unwrap();
            gpu.nesterov(0.9, &xg, &mut mg, &mut ug).unwrap();
            close("nesterov m", seed, &gpu.download(&mg).unwrap(), &mc);
            close("nesterov u", seed, &gpu.download(&ug).unwrap(), &uc);
            // nesterov_sum_sq: against the CPU, and bit for bit against CUDA's own
            // nesterov then sum_sq (its sum runs on the same launch shape).
            let (mut mc2, mut uc2, mut qc) = (z.clone(), vec![f32::NAN; x.len()], vec![f32::NAN]);
            cpu.nesterov_sum_sq(0.9, &x, &mut mc2, &mut uc2, &mut qc).unwrap();
            let mut mg2 = gpu.upload(&z).unwrap();
            let mut ug2 = gpu.upload(&vec![f32::NAN; x.len()]).unwrap();
            let mut qg = gpu.upload(&[f32::NAN]).unwrap();
            gpu.nesterov_sum_sq(0.9, &xg, &mut mg2, &mut ug2, &mut qg).unwrap();
            close("nesterov_sum_sq m", seed, &gpu.download(&mg2).unwrap(), &mc2);
            close("nesterov_sum_sq u", seed, &gpu.download(&ug2).unwrap(), &uc2);
            close("nesterov_sum_sq Σu²", seed, &gpu.download(&qg).unwrap(), &qc);
            let mut qsep = gpu.upload(&[f32::NAN]).unwrap();
            gpu.sum_sq(&ug, &mut qsep).unwrap();
            assert_eq!(gpu.download(&mg2).unwrap(), gpu.download(&mg).unwrap(), "seed {seed}");
            assert_eq!(gpu.download(&ug2).unwrap(), gpu.download(&ug).unwrap(), "seed {seed}");
            assert_eq!(
                gpu.download(&qg).unwrap(),
                gpu.download(&qsep).unwrap(),
                "seed {seed}: nesterov_sum_sq's sum differs from sum_sq's"
            );
        }

        let mut fg = gpu.zeros(x.len()).unwrap();
        gpu.fill(&mut fg, 0.25).unwrap();
        assert!(gpu.download(&fg).unwrap().iter().all(|&v| v == 0.25));

        let n = x.len();
        let (mut pc, mut mc, mut vc) = (x.clone(), vec![0.0; n], vec![0.0; n]);
        let (mut pg, mut mg, mut vg) = (gpu.upload(&x).unwrap(), gpu.zeros(n).unwrap(), gpu.zeros(n).unwrap());
        for t in 1..=3 {
            let g = randn(&mut r, n, 1.0);
            // The step scalars sit behind two unrelated slots, as in the engine's layout.
            let mut words = Vec::new();
            mep::backend::ctl::encode(&[7.0, -2.0], &mut words);
            mep::backend::ctl::encode(&mep::backend::ctl::adam_scalars(1e-3, 0.9, 0.999, 0.01, t), &mut words);
            let ctl_g = gpu.upload_labels(&words).unwrap();
            cpu.adam(&mut pc, &g, &mut mc, &mut vc, 0.9, 0.999, 1e-8, &words, 2)
                .unwrap();
            gpu.adam(
                &mut pg,
                &gpu.upload(&g).unwrap(),
                &mut mg,
                &mut vg,
                0.9,
                0.999,
                1e-8,
                &ctl_g,
                2,
            )
            .unwrap();
            // axpby_ctl reads α and β from the slots it is given.
            let y0 = randn(&mut r, n, 1.0);
            let (mut yc, mut yg) = (y0.clone(), gpu.upload(&y0).unwrap());
            cpu.axpby_ctl(&words, 1, &g, 0, &mut yc).unwrap();
            gpu.axpby_ctl(&ctl_g, 1, &gpu.upload(&g).unwrap(), 0, &mut yg).unwrap();
            let want: Vec<f32> = g.iter().zip(&y0).map(|(gi, yi)| -2.0 * gi + 7.0 * yi).collect();
            close("axpby_ctl vs definition", seed, &yc, &want);
            close("axpby_ctl", seed, &gpu.download(&yg).unwrap(), &yc);
        }
        close("adam p", seed, &gpu.download(&pg).unwrap(), &pc);
        close("adam m", seed, &gpu.download(&mg).unwrap(), &mc);
        close("adam v", seed, &gpu.download(&vg).unwrap(), &vc);
    }
}

#[test]
fn gathers() {
    let Some(gpu) = gpu() else { return };
    let cpu = Cpu::<f32>::new();
    let (seed, mut r) = rng();
    let (rows, row_len) = (200, 784);
    let src = randn(&mut r, rows * row_len, 1.0);
    let labels: Vec<u32> = (0..rows as u32).map(|i| i % 10).collect();
    let mut idx: Vec<u32> = (0..rows as u32).collect();
    r.shuffle(&mut idx);
    let (start, count) = (64, 64);
    let mut dc = vec![0.0; count * row_len];
    cpu.gather_rows(&src, row_len, &idx, start, count, &mut dc).unwrap();
    let ig = gpu.upload_labels(&idx).unwrap();
    let mut dg = gpu.zeros(count * row_len).unwrap();
    gpu.gather_rows(&gpu.upload(&src).unwrap(), row_len, &ig, start, count, &mut dg)
        .unwrap();
    assert_eq!(gpu.download(&dg).unwrap(), dc, "gather_rows (seed {seed})");

    let mut lc = vec![0; count];
    cpu.gather_labels(&labels, &idx, start, count, &mut lc).unwrap();
    let mut lg = gpu.zeros_labels(count).unwrap();
    gpu.gather_labels(&gpu.upload_labels(&labels).unwrap(), &ig, start, count, &mut lg)
        .unwrap();
    assert_eq!(gpu.download_labels(&lg).unwrap(), lc, "gather_labels (seed {seed})");

    // Both in one launch, into buffers holding garbage.
    let mut bx = gpu.upload(&vec![f32::NAN; count * row_len]).unwrap();
    let mut by = gpu.upload_labels(&vec![u32::MAX; count]).unwrap();
    let (sg, lgs) = (gpu.upload(&src).unwrap(), gpu.upload_labels(&labels).unwrap());
    gpu.gather_batch(&sg, row_len, &lgs, &ig, start, count, &mut bx, &mut by)
        .unwrap();
    assert_eq!(gpu.download(&bx).unwrap(), dc, "gather_batch rows (seed {seed})");
    assert_eq!(
        gpu.download_labels(&by).unwrap(),
        lc,
        "gather_batch labels (seed {seed})"
    );

    // A range whose end overflows usize is a shape error in every gather, not a panic
    // or a wrapped bound that lets the kernel read before the indices.
    let far = usize::MAX - 1;
    let overflow = [
        gpu.gather_rows(&sg, row_len, &ig, far, count, &mut dg),
        gpu.gather_labels(&lgs, &ig, far, count, &mut lg),
        gpu.gather_batch(&sg, row_len, &lgs, &ig, far, count, &mut bx, &mut by),
    ];
    for (name, r) in ["gather_rows", "gather_labels", "gather_batch"].iter().zip(overflow) {
        assert!(
            matches!(r, Err(MepError::Shape(_))),
            "{name} with start + count > usize::MAX: {r:?}"
        );
    }
}

#[test]
fn probe_never_panics() {
    match Cuda::probe(0) {
        Ok(d) => eprintln!("probe: {d}"),
        Err(e) => eprintln!("probe: {e}"),
    }
    assert!(Cuda::probe(1_000_000).is_err());
}

/// The 60-second preflight of scripts/gpu-check.sh: the versions actually loaded
/// (printed as a `preflight:` line, copied into env.txt), one kernel, one GEMM.
#[test]
fn preflight() {
    let Some(g) = gpu() else { return };
    println!("preflight: {}", g.name());
    let mut y = g.zeros(1000).unwrap();
    g.fill(&mut y, 2.5).unwrap();
    assert!(g.download(&y).unwrap().iter().all(|&v| v == 2.5), "fill kernel");
    let (m, n, k) = (3, 2, 4);
    let a: Vec<f32> = (0..m * k).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..k * n).map(|i| 1.0 - i as f32).collect();
    let (da, db) = (g.upload(&a).unwrap(), g.upload(&b).unwrap());
    let mut dc = g.upload(&vec![f32::NAN; m * n]).unwrap();
    g.gemm(false, false, m, n, k, 1.0, &da, &db, 0.0, &mut dc).unwrap();
    let c = g.download(&dc).unwrap();
    for i in 0..m {
        for j in 0..n {
            let want: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            assert_eq!(c[i * n + j], want, "gemm C[{i},{j}] (small integers: exact)");
        }
    }
}

/// `sum_sq` and `cost_stats` are reproducible bit for bit: per-block partials added
/// in a fixed order (by a second launch, or by `sum_sq`'s last block whichever block
/// that is), no floating-point atomics (on the emulator the blocks also run in a
/// different random order each time, so atomics would show).
#[test]
fn reductions_repeat_bit_for_bit() {
    let Some(g) = gpu() else { return };
    let (seed, mut r) = rng();
    let x = g.upload(&randn(&mut r, 300_001, 1.0)).unwrap();
    let (rows, classes) = (1000, 10);
    let o = g.upload(&randn(&mut r, rows * classes, 2.0)).unwrap();
    let labels: Vec<u32> = (0..rows).map(|_| r.below(classes as u64) as u32).collect();
    let labels = g.upload_labels(&labels).unwrap();
    let mut out = g.zeros(1).unwrap();
    let mut stats = g.zeros(2).unwrap();
    let mut first: Option<(Vec<u32>, Vec<u32>)> = None;
    for _ in 0..4 {
        g.sum_sq(&x, &mut out).unwrap();
        g.fill(&mut stats, 0.0).unwrap();
        let loss = Loss::CrossEntropy { label_smoothing: 0.1 };
        g.cost_stats(rows, classes, &o, &labels, loss, &mut stats).unwrap();
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<u32>>();
        let now = (bits(g.download(&out).unwrap()), bits(g.download(&stats).unwrap()));
        match &first {
            None => first = Some(now),
            Some(f) => assert_eq!(&now, f, "seed {seed}: a repeated reduction changed its bits"),
        }
    }
}

/// ‖a − b‖ in f64.
fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// One gradient computation on the batch loaded in `ws`: the estimates (every ∂W,
/// then every ∂b) and the final states s_l of its rows, downloaded.
fn estimate<B: Backend<Elem = f32>>(
    bk: &B,
    net: &mep::nn::Network<B>,
    cfg: &mep::ep::GradConfig,
    ws: &mut mep::ep::Workspace<B>,
    rows: usize,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let arch = &net.arch;
    let mut grads = mep::ep::Grads::new(bk, arch).unwrap();
    mep::ep::compute_gradients(net, cfg, ws, rows, &mut grads).unwrap();
    let g = grads
        .w
        .iter()
        .chain(&grads.b)
        .map(|b| bk.download(b).unwrap())
        .collect();
    let s = (0..arch.depth())
        .map(|l| bk.download(&ws.s[l]).unwrap()[..rows * arch.blocks()[l].out].to_vec())
        .collect();
    (g, s)
}

/// The fused layered nudged phase (`kernels/fused.cu`) against the same sweeps run
/// primitive by primitive on the CPU, and against the CUDA backend's own unfused
/// path: random depths (1–4 blocks), widths, activations (the output's too), both
/// losses (cross-entropy with label smoothing), ±β, relaxations, sweep counts and
/// batch sizes. States, activations and final errors of every block must agree.
/// Then the whole one-sided estimate (`compute_gradients`), where the fused kernel
/// also runs the free phase and each row's loss statistics: the gradients, the
/// states and the summed statistics against the CPU's forward pass and `cost_stats`.
#[test]
fn fused_layered_phase_matches_the_sweeps() {
    use mep::ep::{layered, Energy, GradConfig, Mode, Nudging, Phase, Workspace};
    use mep::nn::{Activation, Arch, Layer, Network};
    let Some(gpu) = gpu() else { return };
    let cpu = Cpu::<f32>::new();
    let (seed, mut r) = rng();
    let acts = [
        Activation::Relu,
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::HardSigmoid,
    ];
    for case in 0..14 {
        let depth = 1 + r.below(4) as usize;
        let mut widths = vec![3 + r.below(60) as usize];
        for l in 0..depth {
            widths.push(if l + 1 == depth {
                2 + r.below(12) as usize
            } else {
                2 + r.below(70) as usize
            });
        }
        let mut layers = vec![Layer::Flatten];
        for l in 0..depth {
            layers.push(Layer::Linear {
                inp: widths[l],
                out: widths[l + 1],
                bias: r.below(4) != 0,
            });
            if l + 1 < depth || r.below(3) == 0 {
                layers.push(Layer::Act(acts[r.below(4) as usize]));
            }
        }
        let arch = Arch::from_layers(&layers).unwrap();
        let rows = 1 + r.below(40) as usize;
        let loss = if r.below(2) == 0 {
            Loss::CrossEntropy {
                label_smoothing: [0.0, 0.1][r.below(2) as usize],
            }
        } else {
            Loss::SquaredError
        };
        let beta: f64 = [0.5, -0.5, 0.05, 1.0][r.below(4) as usize];
        let cfg = GradConfig {
            mode: Mode::Ep,
            beta: beta.abs(),
            settle_steps: r.below(7) as usize,
            settle_lr: [0.5, 1.0, 0.3][r.below(3) as usize],
            nudging: Nudging::OneSided,
            loss,
        };
        let x = randn(&mut r, rows * widths[0], 1.0);
        let y: Vec<u32> = (0..rows).map(|_| r.below(widths[depth] as u64) as u32).collect();
        let what = format!(
            "case {case}: {} batch {rows} {loss:?} β {beta} {cfg:?}",
            arch.describe()
        );
        // Each backend: the forward pass, then one nudged phase; (s, a, e) per block.
        fn run<B: Backend<Elem = f32>>(
            bk: &B,
            arch: &Arch,
            seed: u64,
            cfg: &GradConfig,
            phase: Phase,
            x: &[f32],
            y: &[u32],
        ) -> (Vec<[Vec<f32>; 3]>, f64) {
            let net = Network::new(bk.clone(), arch.clone(), Energy::LayeredLeastSquares, seed).unwrap();
            let mut ws = Workspace::new(bk, arch, y.len()).unwrap();
            let rows = ws.load_host_batch(x, y).unwrap();
            layered::forward(&net, &mut ws, rows).unwrap();
            layered::nudged_phase(&net, cfg, phase, &mut ws, rows).unwrap();
            let state = (0..arch.depth())
                .map(|l| {
                    let n = rows * arch.blocks()[l].out;
                    let get = |b: &B::Buf| bk.download(b).unwrap()[..n].to_vec();
                    [get(&ws.s[l]), get(&ws.a[l]), get(&ws.e[l])]
                })
                .collect();
            (state, ws.residuals().unwrap()[0])
        }
        // Every third case a clamped phase (the output set to o⋆ + t(y − o⋆), then
        // kept) instead of a nudged one.
        let phase = match case % 3 {
            2 => Phase::Clamp([1.0, 0.5, -0.5][r.below(3) as usize]),
            _ => Phase::Nudge(beta),
        };
        let what = format!("{what}, {phase:?}");
        let (want, want_res) = run(&cpu, &arch, seed, &cfg, phase, &x, &y);
        gpu.set_fused(true);
        let (fused, fused_res) = run(&gpu, &arch, seed, &cfg, phase, &x, &y);
        gpu.set_fused(false);
        let (unfused, unfused_res) = run(&gpu, &arch, seed, &cfg, phase, &x, &y);
        gpu.set_fused(true);
        // The settle residual (RMS per row of ‖∇_s F‖ at the final state): the fused
        // kernel sums it per row, the unfused path with a GEMM over the batch.
        let state_rms = (want
            .iter()
            .map(|b| b[0].iter().map(|v| (*v as f64).powi(2)).sum::<f64>())
            .sum::<f64>()
            / rows as f64)
            .sqrt();
        for (name, got) in [("fused", fused_res), ("unfused", unfused_res)] {
            let tol = 1e-5 * want_res + 1e-7 * state_rms.max(1.0);
            assert!(
                (got - want_res).abs() <= tol,
                "{what}: {name} residual {got:e} against the CPU's {want_res:e} (seed {seed})"
            );
        }
        for l in 0..depth {
            for (k, name) in ["s", "a", "e"].iter().enumerate() {
                // The errors are differences of nearly equal states: compare them on
                // the scale of the states.
                let (got_f, got_u, w) = (&fused[l][k], &unfused[l][k], &want[l][k]);
                let tol = |got: &[f32]| {
                    let d = got
                        .iter()
                        .zip(w)
                        .map(|(g, v)| (g - v) as f64 * (g - v) as f64)
                        .sum::<f64>()
                        .sqrt();
                    let scale = want[l][0]
                        .iter()
                        .map(|v| (*v as f64).powi(2))
                        .sum::<f64>()
                        .sqrt()
                        .max(1e-3);
                    d / scale
                };
                let (ef, eu) = (tol(got_f), tol(got_u));
                assert!(
                    ef < 2e-5,
                    "{what}: fused {name}_{} differs from the CPU by {ef:e} (seed {seed})",
                    l + 1
                );
                assert!(
                    eu < 2e-5,
                    "{what}: unfused {name}_{} differs from the CPU by {eu:e} (seed {seed})",
                    l + 1
                );
            }
        }

        // The whole estimate, one-sided or symmetric (alternately: fused, the two
        // phases then run side by side, each with its own free phase): (gradients,
        // final states s_l, [Σ loss, hits], the free outputs' near ties, which
        // rounding may break either way, the settle residual).
        // Every rule in turn (symmetric and CCpL: fused, their two phases side by side,
        // each with its own free phase).
        let nudging = Nudging::ALL[case % Nudging::ALL.len()];
        let cfg = GradConfig {
            nudging,
            loss: if nudging.clamps() { Loss::SquaredError } else { cfg.loss },
            ..cfg
        };
        let what = format!("{what}, {:?}", cfg.nudging);
        #[allow(clippy::type_complexity)]
        fn run_step<B: Backend<Elem = f32>>(
            bk: &B,
            arch: &Arch,
            seed: u64,
            cfg: &GradConfig,
            x: &[f32],
            y: &[u32],
        ) -> (Vec<Vec<f32>>, Vec<Vec<f32>>, Vec<f32>, usize, f64) {
            let net = Network::new(bk.clone(), arch.clone(), Energy::LayeredLeastSquares, seed).unwrap();
            let mut ws = Workspace::new(bk, arch, y.len()).unwrap();
            let rows = ws.load_host_batch(x, y).unwrap();
            layered::forward(&net, &mut ws, rows).unwrap();
            let classes = arch.outputs();
            let out = bk.download(&ws.a[arch.depth() - 1]).unwrap();
            let ties = (0..rows)
                .filter(|r| {
                    let mut o: Vec<f32> = out[r * classes..(r + 1) * classes].to_vec();
                    o.sort_by(|a, b| b.total_cmp(a));
                    o.len() > 1 && (o[0] - o[1]).abs() <= 1e-4 * o[0].abs().max(1.0)
                })
                .count();
            let (g, s) = estimate(bk, &net, cfg, &mut ws, rows);
            (g, s, bk.download(&ws.stats).unwrap(), ties, ws.residuals().unwrap()[0])
        }
        let want = run_step(&cpu, &arch, seed, &cfg, &x, &y);
        let norm = |v: &[f32]| v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        let states = want.1.iter().map(|s| norm(s).powi(2)).sum::<f64>().sqrt();
        for fused in [true, false] {
            gpu.set_fused(fused);
            let got = run_step(&gpu, &arch, seed, &cfg, &x, &y);
            let name = if fused {
                "fused (with the free phase; two phases side by side)"
            } else {
                "unfused"
            };
            for (l, (g, w)) in got.1.iter().zip(&want.1).enumerate() {
                close(&format!("{what}: {name} estimate's s_{}", l + 1), seed, g, w);
            }
            // An estimate is −(1/(β·rows)) Σ e·aᵀ with e a difference of nearly equal
            // states: its rounding is the states' (1e-5 of their norm) times the
            // inputs' norm, over β·rows.
            let scale = states * (norm(&x) + states) / (cfg.beta * rows as f64);
            for (i, (g, w)) in got.0.iter().zip(&want.0).enumerate() {
                let d = distance(g, w);
                let tol = 1e-4 * norm(w) + 1e-5 * scale;
                assert!(
                    d <= tol,
                    "{what}: {name} gradient {i} differs by {d:e} > {tol:e} (seed {seed})"
                );
            }
            let tol = 1e-5 * want.4 + 1e-7 * states.max(1.0) / (rows as f64).sqrt();
            assert!(
                (got.4 - want.4).abs() <= tol,
                "{what}: {name} residual {:e} against the CPU's {:e} (seed {seed})",
                got.4,
                want.4
            );
            let (loss_g, loss_w) = (got.2[0] as f64, want.2[0] as f64);
            assert!(
                (loss_g - loss_w).abs() <= 1e-5 * loss_w.abs() + 1e-6 * rows as f64,
                "{what}: {name} loss sum {loss_g} against the CPU's {loss_w} (seed {seed})"
            );
            assert!(
                (got.2[1] - want.2[1]).abs() as usize <= want.3,
                "{what}: {name} hits {} against the CPU's {} ({} near ties; seed {seed})",
                got.2[1],
                want.2[1],
                want.3
            );
        }
        gpu.set_fused(true);
    }
}

/// The fused Hopfield settle (`kernels/fused.cu`) against the sweeps run primitive by
/// primitive on the CPU and by the CUDA backend's unfused path: whole EP gradient
/// computations (free phase, then the rule's phases: nudged, symmetric, clamped) on
/// random depths (1–4 blocks), widths and activations. The gradient estimates, the
/// final states and both settle residuals must agree.
#[test]
fn fused_hopfield_settle_matches_the_sweeps() {
    use mep::ep::{Energy, GradConfig, Mode, Nudging, Workspace};
    use mep::nn::{Activation, Arch, Layer, Network};
    let Some(gpu) = gpu() else { return };
    let cpu = Cpu::<f32>::new();
    let (seed, mut r) = rng();
    let acts = [
        Activation::Relu,
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::HardSigmoid,
    ];
    for case in 0..2 * Nudging::ALL.len() {
        let depth = 1 + r.below(4) as usize;
        let mut widths = vec![3 + r.below(50) as usize];
        for l in 0..depth {
            widths.push(if l + 1 == depth {
                2 + r.below(12) as usize
            } else {
                2 + r.below(60) as usize
            });
        }
        // Every rule in turn, twice (symmetric and CCpL: their two phases side by side
        // when fused; the clamped rules: the output set before the fused settle).
        let nudging = Nudging::ALL[case % Nudging::ALL.len()];
        let mut layers = vec![Layer::Flatten];
        for l in 0..depth {
            layers.push(Layer::Linear {
                inp: widths[l],
                out: widths[l + 1],
                bias: r.below(4) != 0,
            });
            layers.push(Layer::Act(acts[r.below(4) as usize]));
        }
        let arch = Arch::from_layers(&layers).unwrap();
        let rows = 1 + r.below(40) as usize;
        let loss = if nudging.clamps() || r.below(2) == 0 {
            Loss::SquaredError
        } else {
            Loss::CrossEntropy { label_smoothing: 0.1 }
        };
        let cfg = GradConfig {
            mode: Mode::Ep,
            beta: [0.5, 0.1, 1.0][r.below(3) as usize],
            // At least one sweep: with none the estimate is a difference of equal
            // terms, pure rounding noise.
            settle_steps: 1 + r.below(6) as usize,
            settle_lr: 0.5,
            nudging,
            loss,
        };
        let energy = Energy::Hopfield {
            free_steps: 1 + r.below(10) as usize,
        };
        let x = randn(&mut r, rows * widths[0], 1.0);
        let y: Vec<u32> = (0..rows).map(|_| r.below(widths[depth] as u64) as u32).collect();
        let what = format!("case {case}: {} batch {rows} {energy:?} {cfg:?}", arch.describe());
        // Each backend: one gradient computation; (grads, states, residuals).
        #[allow(clippy::type_complexity)]
        fn run<B: Backend<Elem = f32>>(
            bk: &B,
            arch: &Arch,
            energy: Energy,
            seed: u64,
            cfg: &GradConfig,
            x: &[f32],
            y: &[u32],
        ) -> (Vec<Vec<f32>>, Vec<Vec<f32>>, [f64; 2], Vec<f32>) {
            let net = Network::new(bk.clone(), arch.clone(), energy, seed).unwrap();
            let mut ws = Workspace::new(bk, arch, y.len()).unwrap();
            let rows = ws.load_host_batch(x, y).unwrap();
            // Stale states (a previous batch's, in every buffer a phase may settle
            // into): the free phase starts from zero whatever they hold.
            let mut r = Rng::new(seed ^ 0x57a1e);
            for s in ws.s.iter_mut().chain(ws.s_free.iter_mut()).chain(ws.a_free.iter_mut()) {
                let len = bk.download(s).unwrap().len();
                bk.write(s, &randn(&mut r, len, 1.0)).unwrap();
            }
            let (g, s) = estimate(bk, &net, cfg, &mut ws, rows);
            (g, s, ws.residuals().unwrap(), bk.download(&ws.stats).unwrap())
        }
        let want = run(&cpu, &arch, energy, seed, &cfg, &x, &y);
        gpu.set_fused(true);
        let fused = run(&gpu, &arch, energy, seed, &cfg, &x, &y);
        gpu.set_fused(false);
        let unfused = run(&gpu, &arch, energy, seed, &cfg, &x, &y);
        gpu.set_fused(true);
        // An estimate is a difference of phase terms divided by β·rows: rounding in the
        // terms, of size ‖s_l‖·‖s_{l−1}‖/(β·rows) (‖s_l‖·√rows/(β·rows) for a bias), is
        // what it can carry beyond its own relative error.
        let norm = |v: &[f32]| v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        let xn = norm(&x);
        let denom = cfg.beta * rows as f64;
        let term_scale = |i: usize| {
            if i < depth {
                norm(&want.1[i]) * if i == 0 { xn } else { norm(&want.1[i - 1]) } / denom
            } else {
                norm(&want.1[i - depth]) * (rows as f64).sqrt() / denom
            }
        };
        for (name, got) in [("fused", &fused), ("unfused", &unfused)] {
            for (i, (g, w)) in got.0.iter().zip(&want.0).enumerate() {
                let d = distance(g, w);
                let tol = 1e-4 * norm(w) + 1e-5 * term_scale(i);
                assert!(
                    d <= tol,
                    "{what}: {name} gradient {i} differs by {d:e} > {tol:e} (seed {seed})"
                );
            }
            for (l, (g, w)) in got.1.iter().zip(&want.1).enumerate() {
                close(&format!("{what}: {name} s_{}", l + 1), seed, g, w);
            }
            // A residual is the RMS over rows of the last sweep's ‖Δs‖, a difference of
            // two sweeps' states: by the triangle inequality it moves by at most the
            // states' own rounding (1e-5 of their norm, as `close` allows above) twice,
            // over √rows. (A relative bound alone fails when the sweeps nearly agree:
            // seed 1796046821957381154, 0.0017143 vs 0.0017140.)
            let states = want.1.iter().map(|s| norm(s).powi(2)).sum::<f64>().sqrt();
            for k in 0..2 {
                let (g, w) = (got.2[k], want.2[k]);
                let tol = 1e-4 * w.abs() + 2e-5 * states / (rows as f64).sqrt();
                assert!(
                    (g - w).abs() <= tol,
                    "{what}: {name} residual {k}: {g} vs {w} (|Δ| {:e} > {tol:e}; seed {seed})",
                    (g - w).abs()
                );
            }
            // The free output's summed loss and hits (the free state the nudged
            // phases started from).
            let (g, w) = (&got.3, &want.3);
            assert!(
                (g[0] - w[0]).abs() <= 1e-4 * w[0].abs() + 1e-4 && g[1] == w[1],
                "{what}: {name} loss statistics {g:?} vs {w:?} (seed {seed})"
            );
        }
    }
}

/// Two backends of one device, each on its own stream, used alternately from one
/// thread (two models in one process): each computes what the CPU computes, and
/// neither's cuBLAS calls are mistaken for the other's.
#[test]
fn two_backends_of_one_device_work_side_by_side() {
    let Some(a) = gpu() else { return };
    let b = Cuda::new(0).unwrap();
    let (seed, mut r) = rng();
    let (m, n, k) = (
        1 + r.below(30) as usize,
        1 + r.below(30) as usize,
        1 + r.below(30) as usize,
    );
    let (x, w) = (randn(&mut r, m * k, 1.0), randn(&mut r, k * n, 1.0));
    let cpu = Cpu::<f32>::new();
    let mut want = vec![0.0; m * n];
    cpu.gemm(false, false, m, n, k, 1.0, &x, &w, 0.0, &mut want).unwrap();
    let want2: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
    let (xa, wa, xb, wb) = (
        a.upload(&x).unwrap(),
        a.upload(&w).unwrap(),
        b.upload(&x).unwrap(),
        b.upload(&w).unwrap(),
    );
    let (mut ca, mut cb) = (a.zeros(m * n).unwrap(), b.zeros(m * n).unwrap());
    for _ in 0..3 {
        a.fill(&mut ca, 1.0).unwrap();
        b.fill(&mut cb, 1.0).unwrap();
        a.gemm(false, false, m, n, k, 1.0, &xa, &wa, 0.0, &mut ca).unwrap();
        b.gemm(false, false, m, n, k, 2.0, &xb, &wb, 0.0, &mut cb).unwrap();
    }
    close("backend a", seed, &a.download(&ca).unwrap(), &want);
    close("backend b", seed, &b.download(&cb).unwrap(), &want2);
}

/// The fused Newton–Schulz kernels (k ≤ 32, `kernels/gram.cu`: the whole
/// orthogonalisation, or the Gram-space iteration alone for matrices longer than
/// 65 536) against the CPU's GEMM loop and the CUDA backend's own: whole
/// orthogonalisations of random wide and tall matrices whose smaller side is 1–32
/// (and one just above, which must take the GEMM path), for 0–6 iterations.
#[test]
fn fused_newton_schulz_matches_the_gemm_iteration() {
    use mep::optim::newton_schulz::{orthogonalize, NsScratch};
    let Some(gpu) = gpu() else { return };
    let cpu = Cpu::<f32>::new();
    let (seed, mut r) = rng();
    for case in 0..15 {
        // Cases 11 and 13 are past the one-block kernels' k: the Gram-space products run
        // as `square_products` (13 is the seed's W₁, 128×784); case 14 is past that
        // kernel's k too (cuBLAS and lincomb); case 12 is past the whole fused
        // orthogonalisation's length (the Gram-space iteration alone is fused).
        let k = match case {
            11 => 33,
            12 => 1 + r.below(4) as usize,
            13 => 128,
            14 => 257,
            _ => 1 + r.below(32) as usize,
        };
        let other = match case {
            12 => 65537 + r.below(100) as usize,
            13 => 784,
            _ => k + r.below(60) as usize,
        };
        let (rows, cols) = if r.below(2) == 0 { (k, other) } else { (other, k) };
        let steps = if case == 12 {
            1 + r.below(6) as usize
        } else {
            r.below(7) as usize
        };
        let u = randn(&mut r, rows * cols, 1.0);
        let mut sc = NsScratch::new(&cpu, rows, cols).unwrap();
        orthogonalize(&cpu, rows, cols, steps, &u, &mut sc).unwrap();
        let ug = gpu.upload(&u).unwrap();
        for fused in [true, false] {
            gpu.set_fused(fused);
            let mut sg = NsScratch::new(&gpu, rows, cols).unwrap();
            orthogonalize(&gpu, rows, cols, steps, &ug, &mut sg).unwrap();
            // Each iteration multiplies a small singular value by up to a = 3.4445, and
            // its rounding error with it: the two summation orders may differ by
            // about f32's ε·aˢᵗᵉᵖˢ.
            let got = gpu.download(&sg.x).unwrap();
            let d = got
                .iter()
                .zip(&sc.x)
                .map(|(g, w)| ((g - w) as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            let n = sc.x.iter().map(|w| (*w as f64).powi(2)).sum::<f64>().sqrt();
            let tol = 1e-6 * 3.5f64.powi(steps as i32);
            assert!(
                d / n <= tol,
                "case {case}: {rows}×{cols}, {steps} steps, fused {fused}: ‖Δ‖/‖ref‖ = {:e} > {tol:e} (seed {seed})",
                d / n
            );
        }
        gpu.set_fused(true);
    }
}

/// `ns_iteration` (`kernels/gram.cu`: one Newton–Schulz iteration in one launch, by
/// row strips, P·A·P by Horner's rule) on the CUDA backend against its f64
/// definition, for k around the strips (1, 2, 3, 33, 127, 128) with and without Q and
/// the next Gram matrix; past the limit (129 by default, any k when it is 0 or fusion
/// is off) it declines and writes nothing.
#[test]
fn ns_iteration_matches_its_definition() {
    use mep::backend::NsIteration;
    use mep::optim::newton_schulz::NS_COEFFS;
    let Some(gpu) = gpu() else { return };
    if std::env::var_os("MEP_CUDA_NS_ITERATION_MAX_K").is_none() {
        assert_eq!(gpu.ns_iteration_max_k(), 128, "the default limit");
    }
    let (seed, mut r) = rng();
    for k in [1usize, 2, 3, 33, 127, 128, 129] {
        let (a, q) = common::ns_inputs(&mut r, k);
        let qg = gpu.upload(&q).unwrap();
        let nan = vec![f32::NAN; k * k];
        for (with_q, with_next) in [(false, true), (true, true), (true, false)] {
            // NsNorm's (scale_gram, scale_q), or none: one drawn per case (the host
            // test, tests/host_kernels.rs, runs them all).
            let norm = common::NS_NORMS[r.below(4) as usize];
            let eps = 1e-7;
            let case = common::ns_case(&mut r, k, NS_COEFFS, &a, with_q.then_some(&q[..]), norm, eps);
            let (ig, sg) = (gpu.upload(&case.gram).unwrap(), gpu.upload(&[case.sum_sq]).unwrap());
            for (fused, max_k) in [(true, 128), (true, 0), (false, 128)] {
                gpu.set_fused(fused);
                gpu.set_ns_iteration_max_k(max_k);
                let (mut qn, mut an) = (gpu.upload(&nan).unwrap(), gpu.upload(&nan).unwrap());
                let it = NsIteration {
                    gram: &ig,
                    q: with_q.then_some(&qg),
                    q_next: &mut qn,
                    gram_next: with_next.then_some(&mut an),
                    norm: norm.map(|(scale_gram, scale_q)| mep::backend::NsNorm {
                        sum_sq: &sg,
                        eps,
                        scale_gram,
                        scale_q,
                    }),
                };
                let folds = gpu.folds_ns_norm(k);
                let ran = gpu.ns_iteration(k, NS_COEFFS, it).unwrap();
                let what = format!("k = {k}, Q given {with_q}, norm {norm:?}, fused {fused}, max k {max_k}");
                let (qn, an) = (gpu.download(&qn).unwrap(), gpu.download(&an).unwrap());
                assert_eq!(ran, fused && k <= max_k, "{what}: ran {ran}");
                assert_eq!(folds, ran && k > 32, "{what}: folds_ns_norm said {folds}");
                if !ran {
                    assert!(
                        qn.iter().chain(&an).all(|v| v.is_nan()),
                        "{what}: wrote although it declined"
                    );
                    continue;
                }
                common::within(&format!("{what}: P·Q"), seed, &qn, &case.want_q);
                if with_next {
                    common::within(&format!("{what}: P·A·P"), seed, &an, &case.want_a);
                } else {
                    assert!(an.iter().all(|v| v.is_nan()), "{what}: wrote A' unasked (seed {seed})");
                }
            }
        }
    }
    gpu.set_fused(true);
    gpu.set_ns_iteration_max_k(128);
}

/// `square_products` (`kernels/gram.cu`: one or two k × k products with the epilogue
/// β·z + γ·w, one launch) against its f64 definition, on the CUDA backend with fusion
/// on (the kernel up to k = 256, cuBLAS past it) and off (lincomb and cuBLAS), and on
/// the CPU's default: fresh random matrices with NaN garbage in the outputs, k around
/// the 32-wide tiles (1, 31, 32, 33, 64, 65, 128, 129, 255, 256) and past the limit
/// (257), one product or two, each with or without the added terms.
#[test]
fn square_products_match_their_definition() {
    use mep::backend::SquareProduct;
    let Some(gpu) = gpu() else { return };
    if std::env::var_os("MEP_CUDA_SQUARE_MAX_K").is_none() {
        assert_eq!(gpu.square_max_k(), 256, "the default limit");
    }
    let cpu = Cpu::<f32>::new();
    let (seed, mut r) = rng();
    for k in [1usize, 31, 32, 33, 64, 65, 128, 129, 255, 256, 257] {
        let kk = k * k;
        // Two products' inputs (x, y, z, w each) and coefficients (α, β, γ).
        let m: Vec<Vec<f32>> = (0..8).map(|_| randn(&mut r, kk, 1.0)).collect();
        let coef: Vec<f64> = (0..6).map(|_| 4.0 * r.uniform() - 2.0).collect();
        let (add0, add1, two) = (r.below(2) == 0, r.below(2) == 0, r.below(3) != 0);
        // f64 reference and the bound on its rounding: Σ|α·x·y| + |β·z| + |γ·w| per entry.
        let reference = |p: usize, add: bool| -> (Vec<f64>, Vec<f64>) {
            let (x, y, z, w) = (&m[4 * p], &m[4 * p + 1], &m[4 * p + 2], &m[4 * p + 3]);
            let (a, b, g) = (coef[3 * p], coef[3 * p + 1], coef[3 * p + 2]);
            let mut want = vec![0.0; kk];
            let mut scale = vec![0.0; kk];
            for i in 0..k {
                for j in 0..k {
                    let (mut s, mut sa) = (0.0f64, 0.0f64);
                    for t in 0..k {
                        let v = x[i * k + t] as f64 * y[t * k + j] as f64;
                        s += v;
                        sa += v.abs();
                    }
                    let e = i * k + j;
                    want[e] = a * s;
                    scale[e] = (a * sa).abs();
                    if add {
                        want[e] += b * z[e] as f64 + g * w[e] as f64;
                        scale[e] += (b * z[e] as f64).abs() + (g * w[e] as f64).abs();
                    }
                }
            }
            (want, scale)
        };
        let refs = [reference(0, add0), reference(1, add1)];
        let check = |what: &str, p: usize, got: &[f32]| {
            let (want, scale) = &refs[p];
            for e in 0..kk {
                // f32 rounding over a k-term sum: a few ε·k of the absolute sum.
                let tol = 4.0 * f32::EPSILON as f64 * (k as f64 + 2.0) * scale[e] + 1e-30;
                let d = (got[e] as f64 - want[e]).abs();
                assert!(
                    d <= tol,
                    "{what}: k = {k}, product {p} (add {}), entry {e}: got {}, want {} (|Δ| {d:e} > {tol:e}; seed {seed})",
                    [add0, add1][p],
                    got[e],
                    want[e]
                );
            }
        };
        // Runs both products on `bk` and returns the outputs.
        fn run<B: Backend<Elem = f32>>(
            bk: &B,
            k: usize,
            m: &[Vec<f32>],
            coef: &[f64],
            adds: (bool, bool),
            two: bool,
        ) -> (Vec<f32>, Vec<f32>) {
            let b: Vec<B::Buf> = m.iter().map(|v| bk.upload(v).unwrap()).collect();
            let nan = vec![f32::NAN; k * k];
            let mut o0 = bk.upload(&nan).unwrap();
            let mut o1 = bk.upload(&nan).unwrap();
            let first = SquareProduct {
                alpha: coef[0],
                x: &b[0],
                y: &b[1],
                add: adds.0.then_some((coef[1], &b[2], coef[2], &b[3])),
                out: &mut o0,
            };
            let second = SquareProduct {
                alpha: coef[3],
                x: &b[4],
                y: &b[5],
                add: adds.1.then_some((coef[4], &b[6], coef[5], &b[7])),
                out: &mut o1,
            };
            if two {
                bk.square_products(k, first, Some(second)).unwrap();
            } else {
                bk.square_products(k, first, None).unwrap();
                bk.square_products(k, second, None).unwrap();
            }
            (bk.download(&o0).unwrap(), bk.download(&o1).unwrap())
        }
        let (c0, c1) = run(&cpu, k, &m, &coef, (add0, add1), two);
        check("cpu", 0, &c0);
        check("cpu", 1, &c1);
        let mut outs = Vec::new();
        // Fused (the kernel up to k = 256), fused off, and the kernel's k limit at 0.
        for (fused, max_k) in [(true, 256), (false, 256), (true, 0)] {
            gpu.set_fused(fused);
            gpu.set_square_max_k(max_k);
            let (g0, g1) = run(&gpu, k, &m, &coef, (add0, add1), two);
            let what = format!("cuda (fused {fused}, max k {max_k}, two in one call {two})");
            check(&what, 0, &g0);
            check(&what, 1, &g1);
            outs.push((g0, g1));
        }
        gpu.set_fused(true);
        gpu.set_square_max_k(256);
        // A limit of 0 takes exactly the unfused path (lincomb and cuBLAS).
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(&outs[2].0) == bits(&outs[1].0) && bits(&outs[2].1) == bits(&outs[1].1),
            "k = {k}: MEP_CUDA_SQUARE_MAX_K = 0 did not take the unfused path (seed {seed})"
        );
    }
}

/// The fused spectral constraint (`kernels/gram.cu`: Gram matrix, squarings, power
/// iterations, σ̂² and the clamp in one launch) against the GEMM sequence on the CPU
/// and on the CUDA backend's unfused path: random wide and tall matrices with a small
/// side of 1–32 (and 33, past the limit: the GEMM path), a bound γ below or above σ,
/// several steps in a row so that the persistent vector carries over.
#[test]
fn fused_spectral_constraint_matches_the_gemm_iteration() {
    use mep::optim::spectral::PowerIter;
    let Some(gpu) = gpu() else { return };
    let cpu = Cpu::<f32>::new();
    let (seed, mut r) = rng();
    for case in 0..12 {
        let k = if case == 11 { 33 } else { 1 + r.below(32) as usize };
        let other = k + r.below(300) as usize;
        let (rows, cols) = if r.below(2) == 0 { (k, other) } else { (other, k) };
        let w0 = randn(&mut r, rows * cols, 0.3);
        let iters = r.below(3) as usize;
        let start = 1000 + case as u64;
        // The CPU reference: its σ̂² after the warm-up fixes γ, below or above σ.
        let mut wc = w0.clone();
        let mut pc = PowerIter::new(&cpu, &wc, rows, cols, start).unwrap();
        let sigma = pc.sigma_sq(&cpu).unwrap().sqrt();
        let gamma = sigma * [0.8, 1.25][r.below(2) as usize];
        let mut want = Vec::new();
        for _ in 0..3 {
            pc.constrain(&cpu, &mut wc, gamma, iters).unwrap();
            want.push((pc.sigma_sq(&cpu).unwrap(), wc.clone()));
            // Move W between steps, as an update would.
            for v in wc.iter_mut() {
                *v *= 1.1;
            }
        }
        for fused in [true, false] {
            gpu.set_fused(fused);
            let mut wg = gpu.upload(&w0).unwrap();
            let mut pg = PowerIter::new(&gpu, &wg, rows, cols, start).unwrap();
            for (step, (sq, w)) in want.iter().enumerate() {
                pg.constrain(&gpu, &mut wg, gamma, iters).unwrap();
                let what = format!(
                    "case {case}: {rows}×{cols}, γ/σ {:.2}, {iters} iterations, step {step}, fused {fused}",
                    gamma / sigma
                );
                let got_sq = pg.sigma_sq(&gpu).unwrap();
                assert!(
                    (got_sq - sq).abs() <= 1e-4 * sq,
                    "{what}: σ̂² {got_sq} against the CPU's {sq}"
                );
                let got = gpu.download(&wg).unwrap();
                close(&what, seed, &got, w);
                let mut host = got;
                for v in host.iter_mut() {
                    *v *= 1.1;
                }
                gpu.write(&mut wg, &host).unwrap();
            }
        }
        gpu.set_fused(true);
    }
}

/// The spectral constraint at magnitudes whose powers under- or overflow f32 (W·2^±40)
/// and after a zero matrix, on the fused kernel and the GEMM path against the CPU: a
/// zero W leaves the power-iteration vector as it was (bit for bit the CPU's), and the
/// estimates and rescaled matrices that follow agree.
#[test]
fn the_spectral_constraint_holds_at_any_magnitude_on_both_paths() {
    use mep::optim::spectral::PowerIter;
    let Some(gpu) = gpu() else { return };
    let cpu = Cpu::<f32>::new();
    let (seed, mut r) = rng();
    for case in 0..6 {
        let k = if case == 5 { 33 } else { 1 + r.below(32) as usize };
        let other = k + r.below(100) as usize;
        let (rows, cols) = if case % 2 == 0 { (k, other) } else { (other, k) };
        let start = 2000 + case as u64;
        let scale = 2f32.powi([-40, 40, 0][case % 3]);
        let w0: Vec<f32> = randn(&mut r, rows * cols, 0.3).into_iter().map(|v| v * scale).collect();
        let zero = vec![0.0f32; rows * cols];
        // The CPU: warm-up on W, a constrain on a zero matrix, a constrain on W again.
        let mut pc = PowerIter::new(&cpu, &w0, rows, cols, start).unwrap();
        let gamma = 0.5 * pc.sigma_sq(&cpu).unwrap().sqrt();
        let u_warm = pc.vector_host(&cpu).unwrap();
        pc.constrain(&cpu, &mut zero.clone(), gamma, 1).unwrap();
        let mut wc = w0.clone();
        pc.constrain(&cpu, &mut wc, gamma, 1).unwrap();
        let want_sq = pc.sigma_sq(&cpu).unwrap();
        for fused in [true, false] {
            gpu.set_fused(fused);
            let what = format!("case {case}: {rows}×{cols}, W·{scale:e}, fused {fused} (seed {seed})");
            let mut wg = gpu.upload(&w0).unwrap();
            let mut pg = PowerIter::new(&gpu, &wg, rows, cols, start).unwrap();
            let u0 = pg.vector_host(&gpu).unwrap();
            assert!(rel_err(&u0, &u_warm) < 1e-4, "{what}: warm-up vector against the CPU's");
            let mut zg = gpu.upload(&zero).unwrap();
            pg.constrain(&gpu, &mut zg, gamma, 1).unwrap();
            assert_eq!(pg.sigma_sq(&gpu).unwrap(), 0.0, "{what}: σ̂² of a zero matrix");
            let u1 = pg.vector_host(&gpu).unwrap();
            assert_eq!(u1, u0, "{what}: a zero matrix moved the vector");
            pg.constrain(&gpu, &mut wg, gamma, 1).unwrap();
            let got_sq = pg.sigma_sq(&gpu).unwrap();
            assert!(
                (got_sq - want_sq).abs() <= 1e-4 * want_sq,
                "{what}: σ̂² {got_sq} against the CPU's {want_sq}"
            );
            close(&what, seed, &gpu.download(&wg).unwrap(), &wc);
        }
        gpu.set_fused(true);
    }
}

/// The fused phase's coupling limit (`Cuda::set_fused_max_couplings`, default 65 536)
/// decides the path: at the network's coupling count the fused kernel runs (its
/// results bit for bit), one below it the primitives do (the unfused results bit for
/// bit).
#[test]
fn the_coupling_limit_picks_the_path() {
    use mep::ep::{layered, Energy, GradConfig, Mode, Nudging, Phase, Workspace};
    use mep::nn::{Activation, Arch, Layer, Network};
    let Some(gpu) = gpu() else { return };
    let (seed, mut r) = rng();
    let layers = [
        Layer::Flatten,
        Layer::Linear {
            inp: 20,
            out: 30,
            bias: true,
        },
        Layer::Act(Activation::Tanh),
        Layer::Linear {
            inp: 30,
            out: 30,
            bias: true,
        },
        Layer::Act(Activation::Relu),
        Layer::Linear {
            inp: 30,
            out: 5,
            bias: true,
        },
    ];
    let couplings = 30 * 30 + 30 * 5;
    let arch = Arch::from_layers(&layers).unwrap();
    let cfg = GradConfig {
        mode: Mode::Ep,
        beta: 0.5,
        settle_steps: 6,
        settle_lr: 1.0,
        nudging: Nudging::OneSided,
        loss: Loss::CrossEntropy { label_smoothing: 0.0 },
    };
    let rows = 17;
    let x = randn(&mut r, rows * 20, 1.0);
    let y: Vec<u32> = (0..rows).map(|_| r.below(5) as u32).collect();
    let run = |fused: bool, limit: usize| {
        gpu.set_fused(fused);
        gpu.set_fused_max_couplings(limit);
        let net = Network::new(gpu.clone(), arch.clone(), Energy::LayeredLeastSquares, seed).unwrap();
        let mut ws = Workspace::new(&gpu, &arch, rows).unwrap();
        let n = ws.load_host_batch(&x, &y).unwrap();
        layered::forward(&net, &mut ws, n).unwrap();
        layered::nudged_phase(&net, &cfg, Phase::Nudge(0.5), &mut ws, n).unwrap();
        (0..3).map(|l| gpu.download(&ws.s[l]).unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(gpu.fused_max_couplings(), 65536, "the default limit");
    let fused = run(true, couplings);
    let unfused = run(false, couplings);
    let below = run(true, couplings - 1);
    let again = run(true, couplings);
    assert_ne!(
        fused, unfused,
        "fused and unfused states agree bit for bit (seed {seed}): the test cannot tell the paths apart"
    );
    assert_eq!(
        below, unfused,
        "one below the coupling count the primitives must run (seed {seed})"
    );
    assert_eq!(
        again, fused,
        "at the coupling count the fused kernel must run (seed {seed})"
    );
}
