//! Fused phases (`kernels/fused.cu`): a whole nudged phase of the layered energy, or
//! all the sweeps of a Hopfield phase, in one launch instead of a few launches and
//! GEMMs per sweep and layer; and Newton–Schulz's Gram-space iteration for Gram
//! matrices of at most [`NS_MAX_K`]² (an output layer's), in one launch instead of 26.
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
use crate::backend::{Backend, HopfieldPhase, LayeredPhase};
use crate::{MepError, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Most blocks (layers) the kernel takes (its argument slots).
pub const MAX_DEPTH: usize = 4;
/// Most units of all blocks together (its shared-memory arrays, `MEP_FUSED_UNITS`).
pub const MAX_UNITS: usize = 2048;
/// Most coupling weights Σ_{l≥2} n_l·n_{l−1} (e.g. 256×256) for which the fused
/// kernel is used.
pub const MAX_COUPLINGS: usize = 65536;
/// Threads per block (`MEP_FUSED_THREADS`).
const THREADS: u32 = 128;

/// Whether the fused kernel takes these shapes (the limits above).
pub fn fits(widths: &[usize]) -> bool {
    let couplings: usize = widths.windows(2).map(|w| w[0] * w[1]).sum();
    !widths.is_empty()
        && widths.len() <= MAX_DEPTH
        && widths.iter().sum::<usize>() <= MAX_UNITS
        && couplings <= MAX_COUPLINGS
}

impl Cuda {
    /// Turns the fused phase kernels on or off for this backend and its clones
    /// (default on, unless `MEP_CUDA_FUSED=0`). Off, phases run primitive by
    /// primitive; the results agree to rounding (the sums are ordered differently).
    pub fn set_fused(&self, on: bool) {
        self.inner.fused.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the fused phase kernels are on ([`Cuda::set_fused`]).
    pub fn fused(&self) -> bool {
        self.inner.fused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// [`Backend::layered_nudged_fused`] on CUDA.
    pub(super) fn layered_nudged_phase(&self, ph: LayeredPhase<'_, Self>) -> Result<bool> {
        let depth = ph.widths.len();
        if !self.fused() || !fits(ph.widths) || ph.rows == 0 {
            return Ok(false);
        }
        for (what, len) in [
            ("acts", ph.acts.len()),
            ("weights", ph.weights.len()),
            ("biases", ph.biases.len()),
            ("s", ph.s.len()),
            ("a", ph.a.len()),
            ("e", ph.e.len()),
        ] {
            if len != depth {
                return Err(MepError::Shape(format!(
                    "fused layered phase: {len} {what} for {depth} blocks"
                )));
            }
        }
        for l in 0..depth {
            let n = elems("fused layered phase", ph.rows, ph.widths[l])?;
            check_len("fused layered phase s", ph.s[l].len(), n)?;
            check_len("fused layered phase a", ph.a[l].len(), n)?;
            check_len("fused layered phase e", ph.e[l].len(), n)?;
            check_len("fused layered phase bias", ph.biases[l].len(), ph.widths[l])?;
            if l > 0 {
                check_len(
                    "fused layered phase W",
                    ph.weights[l].len(),
                    ph.widths[l] * ph.widths[l - 1],
                )?;
            }
        }
        check_len(
            "fused layered phase p0",
            ph.p0.len(),
            elems("p0", ph.rows, ph.widths[0])?,
        )?;
        check_len("fused layered phase labels", ph.labels.len(), ph.rows)?;
        let grid = dim32("fused layered phase rows", ph.rows)?;

        // Unused slots repeat the last block's buffers (never read or written: the
        // kernel loops over `depth` blocks only).
        let pick = |l: usize| l.min(depth - 1);
        let n: Vec<u32> = (0..MAX_DEPTH)
            .map(|l| if l < depth { ph.widths[l] as u32 } else { 0 })
            .collect();
        let acts: Vec<u32> = (0..MAX_DEPTH).map(|l| ph.acts[pick(l)].code()).collect();
        let (depth32, steps) = (depth as u32, dim32("settle steps", ph.steps)?);
        let (code, eps) = (ph.loss.code(), ph.loss.label_smoothing() as f32);
        let (beta, omega) = (ph.beta as f32, ph.omega as f32);
        let w = |l: usize| ph.weights[pick(l).max(1).min(depth - 1)];
        let b = |l: usize| ph.biases[pick(l)];
        // Raw pointers for the mutable per-block buffers, so that unused slots can
        // repeat a buffer (cudarc's builder takes each `&mut` once).
        let ptrs = |bufs: &mut [cudarc::driver::CudaSlice<f32>]| -> Vec<u64> {
            (0..MAX_DEPTH).map(|l| self.buf_id(&bufs[pick(l)]) as u64).collect()
        };
        let (s, a, e) = (ptrs(ph.s), ptrs(ph.a), ptrs(ph.e));
        let f = self.kernel("layered_nudged_phase")?;
        let mut lb = self.inner.stream.launch_builder(f);
        lb.arg(&depth32);
        for v in &n {
            lb.arg(v);
        }
        for v in &acts {
            lb.arg(v);
        }
        let (w2, w3, w4) = (w(1), w(2), w(3));
        lb.arg(w2).arg(w3).arg(w4);
        let (b1, b2, b3, b4) = (b(0), b(1), b(2), b(3));
        lb.arg(b1).arg(b2).arg(b3).arg(b4);
        lb.arg(ph.p0).arg(ph.labels);
        lb.arg(&code).arg(&eps).arg(&beta).arg(&omega).arg(&steps);
        for v in s.iter().chain(&a).chain(&e) {
            lb.arg(v);
        }
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the argument list matches layered_nudged_phase's signature in
        // kernels/fused.cu; every buffer was checked above to hold what the kernel
        // reads or writes for `rows` rows of the given widths.
        unsafe { lb.launch(cfg) }
            .map(|_| true)
            .map_err(|e| MepError::Cuda(format!("launching layered_nudged_phase: {e:?}")))
    }
}

impl Cuda {
    /// [`Backend::hopfield_settle_fused`] on CUDA.
    pub(super) fn hopfield_settle_phase(&self, ph: HopfieldPhase<'_, Self>) -> Result<bool> {
        let depth = ph.widths.len();
        if !self.fused() || !fits(ph.widths) || ph.rows == 0 {
            return Ok(false);
        }
        for (what, len) in [
            ("acts", ph.acts.len()),
            ("weights", ph.weights.len()),
            ("biases", ph.biases.len()),
            ("s", ph.s.len()),
        ] {
            if len != depth {
                return Err(MepError::Shape(format!(
                    "fused Hopfield settle: {len} {what} for {depth} blocks"
                )));
            }
        }
        for l in 0..depth {
            let n = elems("fused Hopfield settle", ph.rows, ph.widths[l])?;
            check_len("fused Hopfield settle s", ph.s[l].len(), n)?;
            check_len("fused Hopfield settle bias", ph.biases[l].len(), ph.widths[l])?;
            if l > 0 {
                check_len(
                    "fused Hopfield settle W",
                    ph.weights[l].len(),
                    ph.widths[l] * ph.widths[l - 1],
                )?;
            }
        }
        check_len(
            "fused Hopfield settle p0",
            ph.p0.len(),
            elems("p0", ph.rows, ph.widths[0])?,
        )?;
        check_len("fused Hopfield settle labels", ph.labels.len(), ph.rows)?;
        check_len("fused Hopfield settle rowres", ph.rowres.len(), ph.rows)?;
        let grid = dim32("fused Hopfield settle rows", ph.rows)?;
        let pick = |l: usize| l.min(depth - 1);
        let n: Vec<u32> = (0..MAX_DEPTH)
            .map(|l| if l < depth { ph.widths[l] as u32 } else { 0 })
            .collect();
        let acts: Vec<u32> = (0..MAX_DEPTH).map(|l| ph.acts[pick(l)].code()).collect();
        let (depth32, sweeps) = (depth as u32, dim32("settle sweeps", ph.sweeps)?);
        let (code, eps) = (ph.loss.code(), ph.loss.label_smoothing() as f32);
        let (beta, nudge) = match ph.nudge {
            Some(b) => (b as f32, 1u32),
            None => (0.0f32, 0u32),
        };
        let clamped = u32::from(ph.clamped);
        let w = |l: usize| ph.weights[pick(l).max(1).min(depth - 1)];
        let b = |l: usize| ph.biases[pick(l)];
        let s: Vec<u64> = (0..MAX_DEPTH).map(|l| self.buf_id(&ph.s[pick(l)]) as u64).collect();
        let f = self.kernel("hopfield_settle_phase")?;
        let mut lb = self.inner.stream.launch_builder(f);
        lb.arg(&depth32);
        for v in &n {
            lb.arg(v);
        }
        for v in &acts {
            lb.arg(v);
        }
        let (w2, w3, w4) = (w(1), w(2), w(3));
        lb.arg(w2).arg(w3).arg(w4);
        let (b1, b2, b3, b4) = (b(0), b(1), b(2), b(3));
        lb.arg(b1).arg(b2).arg(b3).arg(b4);
        lb.arg(ph.p0).arg(ph.labels);
        lb.arg(&code)
            .arg(&eps)
            .arg(&beta)
            .arg(&nudge)
            .arg(&clamped)
            .arg(&sweeps);
        for v in &s {
            lb.arg(v);
        }
        lb.arg(&mut *ph.rowres);
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the argument list matches hopfield_settle_phase's signature in
        // kernels/fused.cu; every buffer was checked above to hold what the kernel
        // reads or writes for `rows` rows of the given widths.
        unsafe { lb.launch(cfg) }
            .map(|_| true)
            .map_err(|e| MepError::Cuda(format!("launching hopfield_settle_phase: {e:?}")))
    }
}

/// Largest Gram size k (k × k, k = min(rows, cols) of the matrix) of the fused
/// Newton–Schulz iteration (`MEP_NS_MAX`: four k × k arrays in shared memory). Above
/// it, cuBLAS's GEMMs use many multiprocessors where the kernel has one block.
pub const NS_MAX_K: usize = 32;

impl Cuda {
    /// [`Backend::ns_gram_poly`] on CUDA.
    pub(super) fn ns_gram_poly_fused(
        &self,
        k: usize,
        steps: usize,
        coeffs: (f64, f64, f64),
        gram: &cudarc::driver::CudaSlice<f32>,
        q: &mut cudarc::driver::CudaSlice<f32>,
    ) -> Result<bool> {
        if !self.fused() || k == 0 || k > NS_MAX_K || steps == 0 {
            return Ok(false);
        }
        check_len("ns_gram_poly gram", gram.len(), k * k)?;
        check_len("ns_gram_poly q", q.len(), k * k)?;
        let (k32, steps32) = (k as u32, dim32("Newton–Schulz steps", steps)?);
        let (a, b, c) = (coeffs.0 as f32, coeffs.1 as f32, coeffs.2 as f32);
        let f = self.kernel("ns_gram_poly")?;
        let mut lb = self.inner.stream.launch_builder(f);
        lb.arg(&k32).arg(&steps32).arg(&a).arg(&b).arg(&c).arg(gram).arg(q);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match ns_gram_poly's signature in kernels/fused.cu;
        // gram and q hold k × k floats (checked above).
        unsafe { lb.launch(cfg) }
            .map(|_| true)
            .map_err(|e| MepError::Cuda(format!("launching ns_gram_poly: {e:?}")))
    }
}
