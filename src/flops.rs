//! The GEMMs of one optimizer step, counted analytically from the configuration:
//! the FLOP count behind BENCHMARKS.md's bounds and `mep-mnist`'s GFLOP/s, and the
//! shape list `mep-gemm-rate` times on a device. `tests/flops.rs` checks the list
//! against the GEMMs the CPU backend actually runs ([`crate::backend::cpu::Cpu::recording`]).
//! Element-wise work is not counted (it is memory bound and small).

use crate::ep::{Energy, Mode};
use crate::nn::Arch;
use crate::optim::{MatrixRule, OptimConfig};

/// One row-major GEMM call: C (m×n) = op(A) (m×k) · op(B) (k×n).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GemmShape {
    /// A is transposed.
    pub ta: bool,
    /// B is transposed.
    pub tb: bool,
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
}

impl GemmShape {
    const fn new(ta: bool, tb: bool, m: usize, n: usize, k: usize) -> Self {
        GemmShape { ta, tb, m, n, k }
    }

    /// 2·m·n·k.
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// Receives the GEMMs of a step in call order. Repeated groups (settle steps,
/// sweeps, power iterations) go through [`Sink::rep`], so counting them costs O(1)
/// per group however large the repeat count: the FLOP count never materialises a
/// list entry per settle step (a huge `settle_steps` would otherwise exhaust memory).
struct Sink<'a> {
    /// `Some`: the list of every GEMM (expanded); `None`: count only.
    list: Option<&'a mut Vec<GemmShape>>,
    /// How many times the current group runs (product of the enclosing repeats).
    mult: f64,
    /// Total FLOPs.
    flops: f64,
    /// Total GEMM calls (saturating).
    calls: u128,
}

impl Sink<'_> {
    fn push(&mut self, g: GemmShape) {
        self.flops += self.mult * g.flops();
        self.calls = self.calls.saturating_add(self.mult as u128);
        if let Some(list) = self.list.as_deref_mut() {
            list.push(g);
        }
    }

    /// Runs `body` `n` times (listing) or once with the multiplier scaled (counting).
    fn rep(&mut self, n: usize, mut body: impl FnMut(&mut Self)) {
        if self.list.is_some() {
            for _ in 0..n {
                body(self);
            }
        } else {
            let outer = self.mult;
            self.mult *= n as f64;
            body(self);
            self.mult = outer;
        }
    }
}

/// Every GEMM of one [`crate::optim::Engine::step`] on `rows` samples, in call order.
///
/// Errors: [`crate::MepError::OutOfMemory`] when the list is too long to hold (e.g.
/// `settle_steps` in the billions); [`step_flops`] counts such steps without a list.
pub fn step_gemms(arch: &Arch, energy: Energy, cfg: &OptimConfig, rows: usize) -> crate::Result<Vec<GemmShape>> {
    let mut count = Sink {
        list: None,
        mult: 1.0,
        flops: 0.0,
        calls: 0,
    };
    walk(arch, energy, cfg, rows, &mut count);
    let calls = usize::try_from(count.calls).unwrap_or(usize::MAX);
    let mut list = Vec::new();
    list.try_reserve_exact(calls)
        .map_err(|_| crate::error::oom::<GemmShape>(calls, "the list of a step's GEMMs"))?;
    walk(
        arch,
        energy,
        cfg,
        rows,
        &mut Sink {
            list: Some(&mut list),
            mult: 1.0,
            flops: 0.0,
            calls: 0,
        },
    );
    Ok(list)
}

/// Feeds every GEMM of one step, in call order, to `g`.
fn walk(arch: &Arch, energy: Energy, cfg: &OptimConfig, rows: usize, g: &mut Sink) {
    let b = &arch.blocks;
    let last = b.len() - 1;
    let forward = |g: &mut Sink| {
        for blk in b {
            g.push(GemmShape::new(false, true, rows, blk.out, blk.inp));
        }
    };
    let estimate = |g: &mut Sink| {
        for blk in b {
            g.push(GemmShape::new(true, false, blk.out, blk.inp, rows));
        }
    };
    // The estimate's last term, each ∂W_l followed by W_l's update (ep::FinalTerm).
    let final_term = |g: &mut Sink| {
        for (l, blk) in b.iter().enumerate() {
            g.push(GemmShape::new(true, false, blk.out, blk.inp, rows));
            update_gemms(arch, energy, cfg, l, g);
        }
    };
    let errors = |g: &mut Sink| {
        for blk in &b[1..] {
            g.push(GemmShape::new(false, true, rows, blk.out, blk.inp));
        }
    };
    let (free_coef, phase_list) = cfg.grad.nudging.phases(cfg.grad.beta);
    let phases = phase_list.len();
    let clamped = cfg.grad.nudging.clamps();
    match (cfg.grad.mode, energy) {
        (Mode::Backprop, _) => {
            forward(g);
            for l in (0..=last).rev() {
                g.push(GemmShape::new(true, false, b[l].out, b[l].inp, rows));
                if l > 0 {
                    g.push(GemmShape::new(false, false, rows, b[l].inp, b[l].out));
                }
            }
        }
        (Mode::Ep, Energy::LayeredLeastSquares) => {
            forward(g);
            for phase in 0..phases {
                if clamped && last > 0 {
                    // The clamped phase recomputes the free W_L φ(s_{L−1}).
                    g.push(GemmShape::new(false, true, rows, b[last].out, b[last].inp));
                }
                g.rep(cfg.grad.settle_steps, |g| {
                    // Backward sweep of the errors, then the forward sweep.
                    for l in (0..last).rev() {
                        g.push(GemmShape::new(false, false, rows, b[l + 1].inp, b[l + 1].out));
                    }
                    errors(g);
                });
                errors(g);
                // The settle residual: its squared norm by 1×1 GEMMs, one feedback per layer.
                if !clamped {
                    g.push(GemmShape::new(false, true, 1, 1, rows * b[last].out));
                }
                for l in 0..last {
                    g.push(GemmShape::new(false, false, rows, b[l + 1].inp, b[l + 1].out));
                    g.push(GemmShape::new(false, true, 1, 1, rows * b[l].out));
                }
                if phase + 1 < phases {
                    estimate(g);
                } else {
                    final_term(g);
                }
            }
        }
        (Mode::Ep, Energy::Hopfield { free_steps }) => {
            // `swept`: layers swept, from the bottom (the output is not swept while
            // clamped); the last sweep's change is summed by one 1×1 GEMM per layer.
            let sweeps = |g: &mut Sink, n: usize, swept: usize| {
                g.rep(n, |g| {
                    for l in 0..swept {
                        if l > 0 {
                            g.push(GemmShape::new(false, true, rows, b[l].out, b[l].inp));
                        }
                        if l < last {
                            g.push(GemmShape::new(false, false, rows, b[l].out, b[l + 1].out));
                        }
                    }
                });
                if n > 0 {
                    for blk in b {
                        g.push(GemmShape::new(false, true, 1, 1, rows * blk.out));
                    }
                }
            };
            g.push(GemmShape::new(false, true, rows, b[0].out, b[0].inp));
            sweeps(g, free_steps, b.len());
            if free_coef != 0.0 {
                estimate(g);
            }
            let swept = if clamped { last } else { b.len() };
            for phase in 0..phases {
                sweeps(g, cfg.grad.settle_steps, swept);
                if phase + 1 < phases {
                    estimate(g);
                } else {
                    final_term(g);
                }
            }
        }
    }
    if cfg.grad.mode == Mode::Backprop {
        for l in 0..b.len() {
            update_gemms(arch, energy, cfg, l, g);
        }
    }
}

/// Feeds the GEMMs of block l's matrix update (Muon's orthogonalisation, the spectral
/// constraint) to `g`.
fn update_gemms(arch: &Arch, energy: Energy, cfg: &OptimConfig, l: usize, g: &mut Sink) {
    let b = &arch.blocks;
    let blk = &b[l];
    let (rows_w, cols_w) = (blk.out, blk.inp);
    let wide = rows_w <= cols_w;
    let k = rows_w.min(cols_w);
    let gram = if wide {
        GemmShape::new(false, true, k, k, cols_w)
    } else {
        GemmShape::new(true, false, k, k, rows_w)
    };
    if let MatrixRule::Muon { ns_steps, .. } = cfg.matrix {
        g.push(gram);
        for i in 0..ns_steps {
            g.push(GemmShape::new(false, false, k, k, k));
            if i > 0 {
                g.push(GemmShape::new(false, false, k, k, k));
            }
            if i + 1 < ns_steps {
                g.push(GemmShape::new(false, false, k, k, k));
                g.push(GemmShape::new(false, false, k, k, k));
            }
        }
        if ns_steps > 0 {
            g.push(GemmShape::new(false, false, rows_w, cols_w, k));
        }
    }
    let hopfield = matches!(energy, Energy::Hopfield { .. });
    if cfg
        .spectral
        .layers
        .bound(l, b.len(), hopfield, cfg.spectral.gamma)
        .is_some()
    {
        g.push(gram);
        for _ in 0..crate::optim::spectral::SQUARINGS {
            g.push(GemmShape::new(false, false, k, k, k));
        }
        g.rep(cfg.spectral.power_iters.max(1), |g| {
            g.push(GemmShape::new(false, false, 1, k, k));
        });
        g.push(if wide {
            GemmShape::new(false, false, 1, cols_w, rows_w)
        } else {
            GemmShape::new(false, true, 1, rows_w, cols_w)
        });
    }
}

/// GEMM FLOPs of one step on `rows` samples (counted without listing the GEMMs, so
/// any `settle_steps` is fine).
pub fn step_flops(arch: &Arch, energy: Energy, cfg: &OptimConfig, rows: usize) -> f64 {
    let mut count = Sink {
        list: None,
        mult: 1.0,
        flops: 0.0,
        calls: 0,
    };
    walk(arch, energy, cfg, rows, &mut count);
    count.flops
}

/// GEMM FLOPs of one epoch of `n` samples in batches of `batch` (last batch partial).
pub fn epoch_flops(arch: &Arch, energy: Energy, cfg: &OptimConfig, n: usize, batch: usize) -> f64 {
    let full = n / batch;
    let rest = n % batch;
    let mut f = full as f64 * step_flops(arch, energy, cfg, batch);
    if rest > 0 {
        f += step_flops(arch, energy, cfg, rest);
    }
    f
}

/// Measures how fast backend `bk` runs the GEMM list `gemms` alone (FLOP/s): one
/// buffer set per distinct shape, filled with small pseudo-random values, one warm-up
/// pass, then `reps` timed passes over the whole list in call order. This is the
/// "same GEMM shapes, same run" reference a training step's achieved rate is compared
/// with (`mep-mnist --gemm-rate`).
pub fn gemm_rate<B: crate::backend::Backend>(bk: &B, gemms: &[GemmShape], reps: usize) -> crate::Result<f64> {
    use crate::backend::Scalar;
    let mut distinct: Vec<GemmShape> = gemms.to_vec();
    distinct.sort();
    distinct.dedup();
    let mut rng = crate::rng::Rng::new(7);
    let mut fill = |n: usize| -> crate::Result<B::Buf> {
        let v: Vec<B::Elem> = (0..n).map(|_| B::Elem::of(rng.uniform_range(-0.5, 0.5))).collect();
        bk.upload(&v)
    };
    let mut bufs = Vec::with_capacity(distinct.len());
    for g in &distinct {
        bufs.push((fill(g.m * g.k)?, fill(g.k * g.n)?, bk.zeros(g.m * g.n)?));
    }
    let index: Vec<usize> = gemms
        .iter()
        .map(|g| distinct.binary_search(g).expect("shape listed"))
        .collect();
    let pass = |bufs: &mut Vec<(B::Buf, B::Buf, B::Buf)>| -> crate::Result<()> {
        for (g, &i) in gemms.iter().zip(&index) {
            let (a, b, c) = &mut bufs[i];
            bk.gemm(g.ta, g.tb, g.m, g.n, g.k, 1.0, a, b, 0.0, c)?;
        }
        Ok(())
    };
    pass(&mut bufs)?;
    bk.synchronize()?;
    let start = std::time::Instant::now();
    for _ in 0..reps.max(1) {
        pass(&mut bufs)?;
    }
    bk.synchronize()?;
    let seconds = start.elapsed().as_secs_f64();
    let flops: f64 = gemms.iter().map(GemmShape::flops).sum::<f64>() * reps.max(1) as f64;
    Ok(flops / seconds)
}
