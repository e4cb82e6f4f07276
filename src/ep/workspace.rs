//! Buffers reused across steps: states, errors, GEMM outputs and gradients.

use crate::backend::Backend;
use crate::nn::Arch;
use crate::Result;

/// Where a fused phase left its per-row residuals
/// ([`Workspace::add_row_residuals`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowResiduals {
    /// `f`: a phase run alone, or the last of two side by side.
    Last,
    /// `f_side`: the first of two phases side by side.
    Side,
    /// `r[0]`: a fused Hopfield free phase whose state the nudged phases start from.
    Free,
}

/// Per-batch scratch space on the backend, sized for up to `rows_cap` samples.
/// Index `l` holds block l+1's buffers (`rows × n_{l+1}`).
pub struct Workspace<B: Backend> {
    pub(crate) backend: B,
    pub(crate) arch: Arch,
    /// Capacity in samples.
    pub rows_cap: usize,
    /// Input batch, `rows × n_0`.
    pub x: B::Buf,
    /// Labels of the batch.
    pub y: B::Labels,
    /// States: pre-activations (layered) or post-activations (Hopfield).
    pub s: Vec<B::Buf>,
    /// φ(s) for the layered energy (unused by Hopfield).
    pub a: Vec<B::Buf>,
    /// Free-phase copies of `s` (nudged phases restart from them). When two fused
    /// nudged phases run side by side: the layered energy's first phase's states
    /// (each phase runs its own free phase, no copies). With the Hopfield energy's
    /// fused settle, its free states (the nudged phases start from them).
    pub s_free: Vec<B::Buf>,
    /// Free-phase copies of `a` (or, side by side, the first phase's φ(s): with the
    /// Hopfield energy, whose states are post-activations, its final states).
    pub a_free: Vec<B::Buf>,
    /// Side by side: the first phase's errors e_l.
    pub e_side: Vec<B::Buf>,
    /// Side by side: the first phase's per-row residuals (`rows`).
    pub f_side: B::Buf,
    /// Side by side: the second phase's per-row loss statistics (`rows × 2`), which
    /// repeat the first's and are not summed.
    pub rowstats_spare: B::Buf,
    /// Layered errors e_l, or backprop deltas.
    pub e: Vec<B::Buf>,
    /// Layered nudged phases: each state's deviation u = s − s⋆ from the free state,
    /// kept apart so the EP estimate keeps its digits ([`crate::ep::layered`]).
    pub u: Vec<B::Buf>,
    /// Layered nudged phases: Δa = φ(s⋆ + u) − φ(s⋆), likewise.
    pub da: Vec<B::Buf>,
    /// GEMM outputs W_l φ(s_{l−1}); `p[0]` = W_1 x is constant during a phase.
    pub p: Vec<B::Buf>,
    /// Scratch `rows × max_width` (feedback W_{l+1}ᵀ e_{l+1}, Hopfield drive, a
    /// fused phase's per-row residuals).
    pub f: B::Buf,
    /// ∂C/∂o, `rows × n_L`.
    pub dc: B::Buf,
    /// Device-side running [loss sum, correct count] of free-phase outputs.
    pub stats: B::Buf,
    /// Per-row [loss, correct] of a free phase run inside a fused nudged phase
    /// (`rows × 2`), summed into `stats` beside the estimate.
    pub rowstats: B::Buf,
    /// Per-layer scratch for the settle residuals (`rows × n_l`; `r[0]` also takes a
    /// fused Hopfield free phase's per-row residuals).
    pub r: Vec<B::Buf>,
    /// Device-side running residuals: `[0]` Σ‖∇_s F‖² at the end of every nudged phase
    /// (layered) or Σ‖Δs‖² of the last nudged sweep (Hopfield); `[1]` Σ‖Δs‖² of the
    /// last free sweep (Hopfield). One buffer of length 1 each, so a 1×1 GEMM (a dot
    /// product) can accumulate into it.
    pub resid: [B::Buf; 2],
    /// Rows counted into `resid[0]` and `resid[1]` (host side: no device read).
    pub resid_rows: [u64; 2],
}

fn bufs<B: Backend>(b: &B, arch: &Arch, rows: usize) -> Result<Vec<B::Buf>> {
    arch.blocks.iter().map(|blk| b.zeros(rows * blk.out)).collect()
}

impl<B: Backend> Workspace<B> {
    /// Buffers for batches of up to `rows_cap` samples.
    pub fn new(backend: &B, arch: &Arch, rows_cap: usize) -> Result<Self> {
        let rows_cap = rows_cap.max(1);
        let b = backend;
        Ok(Workspace {
            backend: b.clone(),
            arch: arch.clone(),
            rows_cap,
            x: b.zeros(rows_cap * arch.inputs())?,
            y: b.zeros_labels(rows_cap)?,
            s: bufs(b, arch, rows_cap)?,
            a: bufs(b, arch, rows_cap)?,
            s_free: bufs(b, arch, rows_cap)?,
            a_free: bufs(b, arch, rows_cap)?,
            e_side: bufs(b, arch, rows_cap)?,
            f_side: b.zeros(rows_cap)?,
            rowstats_spare: b.zeros(rows_cap * 2)?,
            e: bufs(b, arch, rows_cap)?,
            u: bufs(b, arch, rows_cap)?,
            da: bufs(b, arch, rows_cap)?,
            p: bufs(b, arch, rows_cap)?,
            f: b.zeros(rows_cap * arch.max_width())?,
            dc: b.zeros(rows_cap * arch.outputs())?,
            stats: b.zeros(2)?,
            rowstats: b.zeros(rows_cap * 2)?,
            r: bufs(b, arch, rows_cap)?,
            resid: [b.zeros(1)?, b.zeros(1)?],
            resid_rows: [0, 0],
        })
    }

    /// Grows the buffers when a batch larger than the capacity arrives (keeps `stats`).
    pub fn ensure_rows(&mut self, rows: usize) -> Result<()> {
        if rows > self.rows_cap {
            let mut grown = Workspace::new(&self.backend, &self.arch, rows)?;
            std::mem::swap(&mut grown.stats, &mut self.stats);
            std::mem::swap(&mut grown.resid, &mut self.resid);
            grown.resid_rows = self.resid_rows;
            *self = grown;
        }
        Ok(())
    }

    /// Adds Σ of the squares of the first `n` entries of `v` to `resid[slot]`: a
    /// 1×n by n×1 GEMM accumulating with β = 1 (a dot product that stays on the
    /// device and reads only the batch's rows, not the stale rows past them).
    pub(crate) fn add_sq(backend: &B, v: &B::Buf, n: usize, acc: &mut B::Buf) -> Result<()> {
        backend.gemm(false, true, 1, 1, n, 1.0, v, v, 1.0, acc)
    }

    /// Adds the per-row residuals a fused phase left in the first `rows` entries of
    /// `from` to `resid[slot]`, and counts the rows.
    pub(crate) fn add_row_residuals(&mut self, rows: usize, slot: usize, from: RowResiduals) -> Result<()> {
        let f = match from {
            RowResiduals::Last => &self.f,
            RowResiduals::Side => &self.f_side,
            RowResiduals::Free => &self.r[0],
        };
        self.backend.col_sum(rows, 1, 1.0, f, 1.0, &mut self.resid[slot])?;
        self.resid_rows[slot] += rows as u64;
        Ok(())
    }

    /// Adds the per-row loss and hit a fused free phase left in `rowstats` (its first
    /// `rows` rows) to `stats`, as [`Backend::cost_stats`] would have.
    pub(crate) fn add_row_stats(&mut self, rows: usize) -> Result<()> {
        self.backend.col_sum(rows, 2, 1.0, &self.rowstats, 1.0, &mut self.stats)
    }

    /// Zeroes the running residuals.
    pub fn reset_residuals(&mut self) -> Result<()> {
        self.resid_rows = [0, 0];
        for r in self.resid.iter_mut() {
            self.backend.fill(r, 0.0)?;
        }
        Ok(())
    }

    /// Root-mean-square per-sample residuals since the last reset, [nudged, free]
    /// (0 where nothing was counted). Reads two device scalars.
    pub fn residuals(&self) -> Result<[f64; 2]> {
        let mut out = [0.0; 2];
        for (i, o) in out.iter_mut().enumerate() {
            if self.resid_rows[i] > 0 {
                let v = self.backend.download(&self.resid[i])?[0];
                *o = (crate::backend::Scalar::f64(v) / self.resid_rows[i] as f64).sqrt();
            }
        }
        Ok(out)
    }

    /// Copies a host batch into `x` and `y`.
    pub fn load_host_batch(&mut self, x: &[B::Elem], y: &[u32]) -> Result<usize> {
        let rows = y.len();
        self.ensure_rows(rows)?;
        self.backend.write(&mut self.x, x)?;
        self.backend.write_labels(&mut self.y, y)?;
        Ok(rows)
    }

    /// Copies the free-phase states `s` (and `a` when `with_a`: the layered energy
    /// keeps φ(s) beside s; Hopfield states need no second copy) into the free copies.
    pub(crate) fn save_free(&mut self, with_a: bool) -> Result<()> {
        for l in 0..self.s.len() {
            self.backend.copy(&self.s[l], &mut self.s_free[l])?;
            if with_a {
                self.backend.copy(&self.a[l], &mut self.a_free[l])?;
            }
        }
        Ok(())
    }

    /// Restores `s` (and `a` when `with_a`) from the free-phase copies.
    pub(crate) fn restore_free(&mut self, with_a: bool) -> Result<()> {
        for l in 0..self.s.len() {
            self.backend.copy(&self.s_free[l], &mut self.s[l])?;
            if with_a {
                self.backend.copy(&self.a_free[l], &mut self.a[l])?;
            }
        }
        Ok(())
    }
}

/// Gradient (estimate) buffers, one pair per block, shaped like the parameters.
pub struct Grads<B: Backend> {
    /// ∂/∂W_l, `out × in`.
    pub w: Vec<B::Buf>,
    /// ∂/∂b_l, `out`.
    pub b: Vec<B::Buf>,
}

impl<B: Backend> Grads<B> {
    /// Zero gradients for `arch`.
    pub fn new(backend: &B, arch: &Arch) -> Result<Self> {
        Ok(Grads {
            w: arch
                .blocks
                .iter()
                .map(|b| backend.zeros(b.out * b.inp))
                .collect::<Result<_>>()?,
            b: arch
                .blocks
                .iter()
                .map(|b| backend.zeros(b.out))
                .collect::<Result<_>>()?,
        })
    }

    /// Each layer's (∂W, ∂b), for independent branches ([`Backend::concurrently`]).
    pub(crate) fn layers(&mut self) -> Vec<(&mut B::Buf, &mut B::Buf)> {
        self.w.iter_mut().zip(self.b.iter_mut()).collect()
    }
}
