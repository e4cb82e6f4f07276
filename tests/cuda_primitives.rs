//! Every primitive of the CUDA backend against the CPU backend (`Cpu<f32>`) on fresh
//! random inputs, ‖Δ‖/‖ref‖ ≤ 1e-5: gemm in all four transpose combinations (β = 0
//! with NaN garbage in C, and β ≠ 0), every activation chain, both losses.
//! Skips with a message when no GPU is usable; fails then when `MEP_REQUIRE_GPU=1`.

mod common;
use common::{chains, close, gpu, randn, rng};

use mep::backend::cpu::Cpu;
use mep::backend::cuda::Cuda;
use mep::backend::Backend;
use mep::rng::Rng;
use mep::Loss;

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

        // layered_error
        let (s, p) = (randn(&mut r, n, 1.0), randn(&mut r, n, 1.0));
        let mut ec = vec![0.0; n];
        cpu.layered_error(rows, cols, &s, &p, &bias, &mut ec).unwrap();
        let mut eg = gpu.zeros(n).unwrap();
        gpu.layered_error(rows, cols, &up(&s), &up(&p), &up(&bias), &mut eg)
            .unwrap();
        close("layered_error", seed, &gpu.download(&eg).unwrap(), &ec);

        // layered_settle, hidden (c = −1) and output (c = β)
        for c in [-1.0, 0.5] {
            let g = randn(&mut r, n, 1.0);
            let (mut sc, mut ac) = (s.clone(), vec![0.0; n]);
            cpu.layered_settle(rows, cols, &ec, &g, c, 0.2, act, &mut sc, &mut ac)
                .unwrap();
            let (mut sg, mut ag) = (up(&s), gpu.zeros(n).unwrap());
            gpu.layered_settle(rows, cols, &up(&ec), &up(&g), c, 0.2, act, &mut sg, &mut ag)
                .unwrap();
            close(
                &format!("layered_settle s {name} c={c}"),
                seed,
                &gpu.download(&sg).unwrap(),
                &sc,
            );
            close(
                &format!("layered_settle a {name} c={c}"),
                seed,
                &gpu.download(&ag).unwrap(),
                &ac,
            );
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
            close(
                &format!("hopfield_settle {name} nudged={nudged}"),
                seed,
                &gpu.download(&sg).unwrap(),
                &sc,
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
    }
}

#[test]
fn cost_kernels() {
    let Some(gpu) = gpu() else { return };
    let cpu = Cpu::<f32>::new();
    for loss in [
        Loss::CrossEntropy { label_smoothing: 0.0 },
        Loss::CrossEntropy { label_smoothing: 0.1 },
        Loss::SquaredError,
    ] {
        for classes in [1, 10, 33, 1000] {
            let (seed, mut r) = rng();
            let rows = [1, 9, 64, 300][r.below(4) as usize];
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
            close(
                &format!("col_sum {rows}×{cols} β={beta}"),
                seed,
                &gpu.download(&yg).unwrap(),
                &yc,
            );
        }

        let mut qc = vec![0.0f32];
        cpu.sum_sq(&x, &mut qc).unwrap();
        let mut qg = gpu.upload(&[99.0f32]).unwrap();
        gpu.sum_sq(&xg, &mut qg).unwrap();
        close("sum_sq", seed, &gpu.download(&qg).unwrap(), &qc);

        let mut yc = vec![0.0; x.len()];
        cpu.scale_by_inv_norm(&x, &qc, 1e-7, &mut yc).unwrap();
        let mut yg = gpu.zeros(x.len()).unwrap();
        gpu.scale_by_inv_norm(&xg, &qg, 1e-7, &mut yg).unwrap();
        close("scale_by_inv_norm", seed, &gpu.download(&yg).unwrap(), &yc);

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
            close(&format!("axpby β={beta}"), seed, &gpu.download(&yg).unwrap(), &yc);
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

/// `sum_sq` and `cost_stats` are reproducible bit for bit: two passes with a fixed
/// order, no floating-point atomics (on the emulator the blocks also run in a
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
