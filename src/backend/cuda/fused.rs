//! Fused phases (`kernels/fused.cu`): a whole nudged phase of the layered energy, or
//! all the sweeps of a Hopfield phase, in one launch instead of a few launches and
//! GEMMs per sweep and layer. (The optimizer's small-matrix iterations are fused in
//! [`super::gram`].)
//!
//! When: every block settles one sample with its states in shared memory and the
//! couplings W_2 … W_L read from L1/L2, so the fused kernel pays off while the
//! couplings are small (its per-sample matrix-vector products redo what one batched
//! GEMM does once). The limits below are the kernel's own (shared memory, argument
//! slots) plus a size bound on the couplings; anything beyond them runs the sweeps
//! primitive by primitive (cuBLAS GEMMs plus the element-wise `layered_settle`).
//! `MEP_CUDA_FUSED=0` (or [`Cuda::set_fused`]) turns the fused path off, which is
//! how the two are compared (tests/cuda_primitives.rs, scripts/gpu-check.sh).

use super::{check_len, dim32, elems, Cuda};
use crate::backend::{Backend, HopfieldPhase, HopfieldStart, LayeredPhase, PhaseNet};
use crate::nn::Block;
use crate::{MepError, Result};
use cudarc::driver::{CudaSlice, LaunchArgs, LaunchConfig, PushKernelArg};

/// Most blocks (layers) the kernel takes (its argument slots).
pub const MAX_DEPTH: usize = 4;
/// Most units of all blocks together (its shared-memory arrays, `MEP_FUSED_UNITS`).
pub const MAX_UNITS: usize = 2048;
/// Most coupling weights Σ_{l≥2} n_l·n_{l−1} (e.g. 256×256) for which the fused
/// kernel is used, by default: every block re-reads the couplings for its sample at
/// every sweep, where the unfused path's GEMMs read them once per sweep for the whole
/// batch. Not yet measured across sizes on a GPU; `MEP_CUDA_FUSED_MAX_COUPLINGS` (or
/// [`Cuda::set_fused_max_couplings`]) moves the limit, which is how
/// `scripts/gpu-check.sh` measures it.
pub const MAX_COUPLINGS: usize = 65536;
/// Threads per block (`MEP_FUSED_THREADS`).
const THREADS: u32 = 128;

/// Whether the fused kernels take a network of these blocks: the kernel's own limits
/// above, and at most `max_couplings` coupling weights ([`MAX_COUPLINGS`] by default).
pub fn fits(blocks: &[Block], max_couplings: usize) -> bool {
    let couplings: usize = blocks.windows(2).map(|w| w[0].out * w[1].out).sum();
    !blocks.is_empty()
        && blocks.len() <= MAX_DEPTH
        && blocks.iter().map(|b| b.out).sum::<usize>() <= MAX_UNITS
        && couplings <= max_couplings
}

/// The coupling limit from `MEP_CUDA_FUSED_MAX_COUPLINGS` ([`MAX_COUPLINGS`] when unset).
pub(super) fn max_couplings_from_env() -> Result<usize> {
    super::count_setting("MEP_CUDA_FUSED_MAX_COUPLINGS", MAX_COUPLINGS, "131072")
}

/// The arguments both phase kernels share (`kernels/fused.cu`: the leading `depth`,
/// `n1..n4`, `act1..act4`, `w2..w4`, `b1..b4`, `p0`, `labels`, `loss`, `eps`, and the
/// state pointers `s1..s4`), gathered from a checked [`PhaseNet`]. Slots past the
/// network's depth repeat its last block's buffers (never read or written: the kernels
/// loop over `depth` blocks only) and have width 0.
struct NetArgs<'a> {
    /// One block of [`THREADS`] per row.
    grid: u32,
    depth: u32,
    /// Widths n_l (0 past the depth).
    n: [u32; MAX_DEPTH],
    /// Activation chains ([`crate::nn::activation::ActChain::code`]).
    acts: [u32; MAX_DEPTH],
    /// W_2 … W_4 (W_1 is not an argument: its product with the input is `p0`).
    w: [&'a CudaSlice<f32>; MAX_DEPTH - 1],
    b: [&'a CudaSlice<f32>; MAX_DEPTH],
    p0: &'a CudaSlice<f32>,
    labels: &'a CudaSlice<u32>,
    /// [`crate::Loss::code`] and its label smoothing.
    loss: u32,
    eps: f32,
    /// s_1 … s_4 as raw device pointers, so that unused slots can repeat a buffer
    /// (cudarc's builder takes each `&mut` once).
    s: [u64; MAX_DEPTH],
}

impl<'a> NetArgs<'a> {
    /// Pushes the leading arguments, `depth` through `eps` (the kernel's own scalars
    /// follow them, then [`NetArgs::push_states`]).
    fn push_leading(&'a self, lb: &mut LaunchArgs<'a>) {
        lb.arg(&self.depth);
        for v in self.n.iter().chain(&self.acts) {
            lb.arg(v);
        }
        for w in self.w {
            lb.arg(w);
        }
        for b in self.b {
            lb.arg(b);
        }
        lb.arg(self.p0).arg(self.labels).arg(&self.loss).arg(&self.eps);
    }

    /// Pushes `s1..s4`.
    fn push_states(&'a self, lb: &mut LaunchArgs<'a>) {
        for v in &self.s {
            lb.arg(v);
        }
    }
}

/// [`check_len`] for buffer `part` of phase `what`, naming both (the message is only
/// built on failure: eager steps check every step).
fn check_part(what: &str, part: &str, got: usize, want: usize) -> Result<()> {
    if got < want {
        return check_len(&format!("{what} {part}"), got, want);
    }
    Ok(())
}

/// The launch shape of both phase kernels: one block of [`THREADS`] per row.
fn row_blocks(grid: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl Cuda {
    /// Turns the fused phase kernels on or off for this backend and its clones
    /// (default on, unless `MEP_CUDA_FUSED=0`). Off, phases run primitive by
    /// primitive; the results agree to rounding (the sums are ordered differently).
    pub fn set_fused(&self, on: bool) {
        self.inner.fused.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets the most coupling weights for which the fused phase kernels are used, for
    /// this backend and its clones (default [`MAX_COUPLINGS`], or
    /// `MEP_CUDA_FUSED_MAX_COUPLINGS`); the kernel's own limits still apply.
    pub fn set_fused_max_couplings(&self, n: usize) {
        self.inner
            .fused_max_couplings
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The coupling limit of the fused phase kernels ([`Cuda::set_fused_max_couplings`]).
    pub fn fused_max_couplings(&self) -> usize {
        self.inner
            .fused_max_couplings
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the fused phase kernels are on ([`Cuda::set_fused`]).
    pub fn fused(&self) -> bool {
        self.inner.fused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Device pointers of one buffer per block, padded to [`MAX_DEPTH`] slots with the
    /// last block's (see [`NetArgs`]).
    fn slot_ptrs(&self, bufs: &[CudaSlice<f32>]) -> [u64; MAX_DEPTH] {
        std::array::from_fn(|l| self.buf_id(&bufs[l.min(bufs.len() - 1)]) as u64)
    }

    /// The shared arguments of a phase over `net`, after checking every buffer against
    /// the shapes (errors name the phase, `what`); `None` when the fused kernels are off
    /// or do not take these shapes (the caller then runs the sweeps itself).
    fn phase_args<'a>(&self, what: &str, net: &'a PhaseNet<'_, Self>) -> Result<Option<NetArgs<'a>>> {
        let blocks = net.blocks;
        let depth = blocks.len();
        if !self.fused() || !fits(blocks, self.fused_max_couplings()) || net.rows == 0 {
            return Ok(None);
        }
        for (name, len) in [("params", net.params.len()), ("s", net.s.len())] {
            if len != depth {
                return Err(MepError::Shape(format!("{what}: {len} {name} for {depth} blocks")));
            }
        }
        for (l, blk) in blocks.iter().enumerate() {
            check_part(what, "s", net.s[l].len(), elems(what, net.rows, blk.out)?)?;
            check_part(what, "bias", net.params[l].b.len(), blk.out)?;
            if l > 0 {
                check_part(what, "W", net.params[l].w.len(), blk.out * blocks[l - 1].out)?;
            }
        }
        check_part(what, "p0", net.p0.len(), elems("p0", net.rows, blocks[0].out)?)?;
        check_part(what, "labels", net.labels.len(), net.rows)?;
        let pick = |l: usize| l.min(depth - 1);
        Ok(Some(NetArgs {
            grid: dim32(what, net.rows)?,
            depth: depth as u32,
            n: std::array::from_fn(|l| blocks.get(l).map_or(0, |b| b.out as u32)),
            acts: std::array::from_fn(|l| blocks[pick(l)].act.code()),
            w: std::array::from_fn(|l| &net.params[pick(l + 1).max(1).min(depth - 1)].w),
            b: std::array::from_fn(|l| &net.params[pick(l)].b),
            p0: net.p0,
            labels: net.labels,
            loss: net.loss.code(),
            eps: net.loss.label_smoothing() as f32,
            s: self.slot_ptrs(net.s),
        }))
    }

    /// [`Backend::layered_nudged_fused`] on CUDA.
    pub(super) fn layered_nudged_phase(&self, ph: LayeredPhase<'_, Self>) -> Result<bool> {
        const WHAT: &str = "fused layered phase";
        let Some(args) = self.phase_args(WHAT, &ph.net)? else {
            return Ok(false);
        };
        let depth = ph.net.blocks.len();
        for (name, len) in [("a", ph.a.len()), ("e", ph.e.len())] {
            if len != depth {
                return Err(MepError::Shape(format!("{WHAT}: {len} {name} for {depth} blocks")));
            }
        }
        for (l, blk) in ph.net.blocks.iter().enumerate() {
            let n = elems(WHAT, ph.net.rows, blk.out)?;
            check_part(WHAT, "a", ph.a[l].len(), n)?;
            check_part(WHAT, "e", ph.e[l].len(), n)?;
        }
        check_part(WHAT, "rowres", ph.rowres.len(), ph.net.rows)?;
        if let Some(stats) = ph.free.as_ref() {
            check_part(WHAT, "rowstats", stats.len(), 2 * ph.net.rows)?;
        }
        let steps = dim32("settle steps", ph.steps)?;
        let (beta, omega) = (ph.beta as f32, ph.omega as f32);
        let (a, e) = (self.slot_ptrs(ph.a), self.slot_ptrs(ph.e));
        let f = self.kernel("layered_nudged_phase")?;
        let mut lb = self.queue().stream.launch_builder(f);
        args.push_leading(&mut lb);
        lb.arg(&beta).arg(&omega).arg(&steps);
        args.push_states(&mut lb);
        for v in a.iter().chain(&e) {
            lb.arg(v);
        }
        lb.arg(&mut *ph.rowres);
        // Without the free phase, rowstats' slot takes p0 (neither read nor written
        // then).
        let free = u32::from(ph.free.is_some());
        lb.arg(&free);
        match ph.free {
            Some(stats) => lb.arg(stats),
            None => lb.arg(ph.net.p0),
        };
        let (clamped, clamp_t) = match ph.clamp {
            Some(t) => (1u32, t as f32),
            None => (0u32, 0.0f32),
        };
        lb.arg(&clamped).arg(&clamp_t);
        // SAFETY: the argument list matches layered_nudged_phase's signature in
        // kernels/fused.cu; every buffer was checked above to hold what the kernel
        // reads or writes for `rows` rows of the given widths; rowstats is written
        // only when free = 1.
        unsafe { lb.launch(row_blocks(args.grid)) }
            .map(|_| true)
            .map_err(|e| MepError::Cuda(format!("launching layered_nudged_phase: {e:?}")))
    }

    /// [`Backend::hopfield_settle_fused`] on CUDA.
    pub(super) fn hopfield_settle_phase(&self, ph: HopfieldPhase<'_, Self>) -> Result<bool> {
        const WHAT: &str = "fused Hopfield settle";
        let Some(args) = self.phase_args(WHAT, &ph.net)? else {
            return Ok(false);
        };
        check_part(WHAT, "rowres", ph.rowres.len(), ph.net.rows)?;
        let sweeps = dim32("settle sweeps", ph.sweeps)?;
        let (beta, nudge) = match ph.nudge {
            Some(b) => (b as f32, 1u32),
            None => (0.0f32, 0u32),
        };
        let clamped = u32::from(ph.clamped);
        // The states read first: net.s itself (in place), or other buffers; with
        // from_zero, none (the slots then repeat net.s, unread).
        let (from_zero, start) = match ph.start {
            HopfieldStart::Zero => (1u32, args.s),
            HopfieldStart::Current => (0, args.s),
            HopfieldStart::From(bufs) => {
                let depth = ph.net.blocks.len();
                if bufs.len() > depth {
                    return Err(MepError::Shape(format!(
                        "{WHAT}: {} start states for {depth} blocks",
                        bufs.len()
                    )));
                }
                let mut start = args.s;
                for (l, (buf, blk)) in bufs.iter().zip(ph.net.blocks).enumerate() {
                    check_part(WHAT, "start states", buf.len(), elems(WHAT, ph.net.rows, blk.out)?)?;
                    start[l] = self.buf_id(buf) as u64;
                }
                // Blocks past the given states read their own (in_l = s_l: in place).
                (0, start)
            }
        };
        let f = self.kernel("hopfield_settle_phase")?;
        let mut lb = self.queue().stream.launch_builder(f);
        args.push_leading(&mut lb);
        lb.arg(&beta).arg(&nudge).arg(&clamped).arg(&sweeps).arg(&from_zero);
        for v in &start {
            lb.arg(v);
        }
        args.push_states(&mut lb);
        lb.arg(&mut *ph.rowres);
        // SAFETY: the argument list matches hopfield_settle_phase's signature in
        // kernels/fused.cu; every buffer was checked above to hold what the kernel
        // reads or writes for `rows` rows of the given widths (the start states too).
        unsafe { lb.launch(row_blocks(args.grid)) }
            .map(|_| true)
            .map_err(|e| MepError::Cuda(format!("launching hopfield_settle_phase: {e:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::{fits, MAX_COUPLINGS, MAX_DEPTH, MAX_UNITS};
    use crate::nn::activation::ActChain;
    use crate::nn::Block;

    fn blocks(widths: &[usize]) -> Vec<Block> {
        widths
            .windows(2)
            .map(|w| Block {
                inp: w[0],
                out: w[1],
                bias: true,
                act: ActChain::IDENTITY,
            })
            .collect()
    }

    /// The coupling limit counts W_2 … W_L (not W_1) and is inclusive; the kernel's
    /// own limits hold whatever the coupling limit says.
    #[test]
    fn the_limits_are_where_they_say() {
        // 784–256–256–10: 256·256 + 256·10 = 68 096 couplings.
        let b = blocks(&[784, 256, 256, 10]);
        assert!(!fits(&b, MAX_COUPLINGS));
        assert!(fits(&b, 68_096));
        assert!(!fits(&b, 68_095));
        // The tutorial's 784–128–10: 1 280 couplings; W_1 (784·128) is not one.
        assert!(fits(&blocks(&[784, 128, 10]), 1_280));
        assert!(!fits(&blocks(&[784, 128, 10]), 1_279));
        // Depth and units cap, whatever the coupling limit.
        assert!(!fits(&blocks(&[4; MAX_DEPTH + 2]), usize::MAX));
        assert!(!fits(&blocks(&[4, MAX_UNITS, 1]), usize::MAX));
        assert!(fits(&blocks(&[4, MAX_UNITS - 1, 1]), usize::MAX));
        assert!(!fits(&[], usize::MAX));
    }
}
