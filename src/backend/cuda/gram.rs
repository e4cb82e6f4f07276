//! Small-matrix iterations in one launch (`kernels/gram.cu`), for matrices whose small
//! side k = min(rows, cols) is at most [`GRAM_MAX_K`] (an output layer's):
//! Newton–Schulz's orthogonalisation (one launch instead of 31 for the seed's 10×128
//! W_2, or its Gram-space iteration alone for longer matrices) and the spectral
//! constraint's power iteration and clamp (one instead of 45).
//!
//! Why only small k: each runs in one block, with the k × k matrices in shared
//! memory. At k ≤ 32 the GEMM chain it replaces is bound by launch latency (a few
//! microseconds per launch on a GPU for a few thousand FLOPs each); above it, cuBLAS
//! spreads each product over many multiprocessors where the kernel has one. Both
//! follow [`Cuda::set_fused`] (off: the caller's GEMM loop runs), which is how the
//! two paths are compared (tests/cuda_primitives.rs).

use super::{check_len, dim32, Cuda};
use crate::{MepError, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// Largest small side k of the fused small-matrix kernels (`MEP_GRAM_MAX`: their
/// k × k arrays live in shared memory).
pub const GRAM_MAX_K: usize = 32;
/// Longest long side of a matrix whose orthogonalisation or spectral constraint is
/// fused: one block streams the whole matrix a few times (norm, Gram, product or
/// clamp), which beyond this costs more than the launches it saves. (Longer
/// matrices with k ≤ [`GRAM_MAX_K`] still get the fused Gram-space iteration,
/// `ns_gram_poly`, between cuBLAS's products.)
pub const GRAM_MAX_N: usize = 1 << 16;
/// Threads of the one block (`MEP_GRAM_THREADS`).
const THREADS: u32 = 256;

/// One block of [`THREADS`].
const ONE_BLOCK: LaunchConfig = LaunchConfig {
    grid_dim: (1, 1, 1),
    block_dim: (THREADS, 1, 1),
    shared_mem_bytes: 0,
};

impl Cuda {
    /// [`crate::backend::Backend::ns_gram_poly`] on CUDA.
    pub(super) fn ns_gram_poly_fused(
        &self,
        k: usize,
        steps: usize,
        coeffs: (f64, f64, f64),
        gram: &CudaSlice<f32>,
        q: &mut CudaSlice<f32>,
    ) -> Result<bool> {
        if !self.fused() || k == 0 || k > GRAM_MAX_K || steps == 0 {
            return Ok(false);
        }
        check_len("ns_gram_poly gram", gram.len(), k * k)?;
        check_len("ns_gram_poly q", q.len(), k * k)?;
        let (k32, steps32) = (k as u32, dim32("Newton–Schulz steps", steps)?);
        let (a, b, c) = (coeffs.0 as f32, coeffs.1 as f32, coeffs.2 as f32);
        let f = self.kernel("ns_gram_poly")?;
        let mut lb = self.inner.stream.launch_builder(f);
        lb.arg(&k32).arg(&steps32).arg(&a).arg(&b).arg(&c).arg(gram).arg(q);
        // SAFETY: the arguments match ns_gram_poly's signature in kernels/gram.cu;
        // gram and q hold k × k floats (checked above).
        unsafe { lb.launch(ONE_BLOCK) }
            .map(|_| true)
            .map_err(|e| MepError::Cuda(format!("launching ns_gram_poly: {e:?}")))
    }

    /// [`crate::backend::Backend::newton_schulz`] on CUDA.
    pub(super) fn ns_orthogonalize_fused(
        &self,
        rows: usize,
        cols: usize,
        steps: usize,
        coeffs: (f64, f64, f64),
        u: &CudaSlice<f32>,
        x: &mut CudaSlice<f32>,
    ) -> Result<bool> {
        let k = rows.min(cols);
        if !self.fused() || k == 0 || k > GRAM_MAX_K || rows.max(cols) > GRAM_MAX_N {
            return Ok(false);
        }
        check_len("newton_schulz u", u.len(), rows * cols)?;
        check_len("newton_schulz x", x.len(), rows * cols)?;
        let (rows32, cols32) = (rows as u32, cols as u32);
        let steps32 = dim32("Newton–Schulz steps", steps)?;
        let (a, b, c) = (coeffs.0 as f32, coeffs.1 as f32, coeffs.2 as f32);
        let f = self.kernel("ns_orthogonalize")?;
        let mut lb = self.inner.stream.launch_builder(f);
        lb.arg(&rows32)
            .arg(&cols32)
            .arg(&steps32)
            .arg(&a)
            .arg(&b)
            .arg(&c)
            .arg(u)
            .arg(x);
        // SAFETY: the arguments match ns_orthogonalize's signature in kernels/gram.cu;
        // u and x hold rows × cols floats (checked above).
        unsafe { lb.launch(ONE_BLOCK) }
            .map(|_| true)
            .map_err(|e| MepError::Cuda(format!("launching ns_orthogonalize: {e:?}")))
    }

    /// [`crate::backend::Backend::spectral_power`] on CUDA.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn spectral_power_fused(
        &self,
        rows: usize,
        cols: usize,
        squarings: usize,
        iters: usize,
        w: &mut CudaSlice<f32>,
        u: &mut CudaSlice<f32>,
        norm: &mut CudaSlice<f32>,
        gamma: Option<f64>,
    ) -> Result<bool> {
        let k = rows.min(cols);
        if !self.fused() || k == 0 || k > GRAM_MAX_K || rows.max(cols) > GRAM_MAX_N {
            return Ok(false);
        }
        check_len("spectral_power w", w.len(), rows * cols)?;
        check_len("spectral_power u", u.len(), k)?;
        check_len("spectral_power norm", norm.len(), 1)?;
        let (rows32, cols32) = (rows as u32, cols as u32);
        let squarings32 = dim32("spectral squarings", squarings)?;
        let iters32 = dim32("spectral iterations", iters)?;
        let (gamma32, clamp) = (gamma.unwrap_or(0.0) as f32, u32::from(gamma.is_some()));
        let f = self.kernel("spectral_power")?;
        let mut lb = self.inner.stream.launch_builder(f);
        lb.arg(&rows32).arg(&cols32).arg(&squarings32).arg(&iters32);
        lb.arg(w).arg(u).arg(norm).arg(&gamma32).arg(&clamp);
        // SAFETY: the arguments match spectral_power's signature in kernels/gram.cu;
        // w holds rows × cols floats, u k and norm 1 (checked above).
        unsafe { lb.launch(ONE_BLOCK) }
            .map(|_| true)
            .map_err(|e| MepError::Cuda(format!("launching spectral_power: {e:?}")))
    }
}
