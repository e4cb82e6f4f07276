//! Dense matrix products: the backend's row-major GEMM as one cuBLAS SGEMM on the
//! column-major view of the operands ([`super::gemm_map`] works out which); and the
//! same with α and β read from the device (`Backend::gemm_ctl`).

use super::gemm_map::{gemm_map, CublasGemm, Operand};
use super::{check_len, cuda_err, elems, Cuda};
use crate::backend::ctl;
use crate::{MepError, Result};
use cudarc::cublas::sys::{cublasOperation_t, cublasPointerMode_t};
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

impl Cuda {
    /// `Backend::gemm`: one `cublasSgemm` on the backend's stream.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sgemm(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: f64,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        beta: f64,
        c: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let Some((cfg, g)) = gemm_config(ta, tb, m, n, k, a, b, c)? else {
            return Ok(());
        };
        let cfg = GemmConfig {
            alpha: alpha as f32,
            beta: beta as f32,
            ..cfg
        };
        let pick = |o: Operand| if o == Operand::A { a } else { b };
        self.bind()?;
        unsafe { self.queue().blas.gemm(cfg, pick(g.first), pick(g.second), c) }.map_err(cuda_err("cublasSgemm"))
    }

    /// `Backend::gemm_ctl`: one `cublasSgemm` in device pointer mode, its α and β the
    /// `f32` words of two step-scalar slots ([`ctl::f32_word`]), read by cuBLAS when
    /// the GEMM runs (so a captured step reads each step's values, as `axpby_ctl`
    /// does). The handle is put back in host pointer mode at once, whatever happened.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sgemm_ctl(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        ctl_buf: &CudaSlice<u32>,
        alpha_slot: usize,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        beta_slot: usize,
        c: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_len("gemm_ctl ctl", ctl_buf.len(), ctl::words(alpha_slot.max(beta_slot) + 1))?;
        let Some((cfg, g)) = gemm_config(ta, tb, m, n, k, a, b, c)? else {
            return Ok(());
        };
        let pick = |o: Operand| if o == Operand::A { a } else { b };
        self.bind()?;
        let lane = self.queue();
        let stream = &lane.stream;
        let (ctl_ptr, _s0) = ctl_buf.device_ptr(stream);
        let (first, _s1) = pick(g.first).device_ptr(stream);
        let (second, _s2) = pick(g.second).device_ptr(stream);
        let (out, _s3) = c.device_ptr_mut(stream);
        let word = |slot: usize| (ctl_ptr + 4 * ctl::f32_word(slot) as u64) as *const f32;
        let handle = *lane.blas.handle();
        lane.blas
            .set_pointer_mode(cublasPointerMode_t::CUBLAS_POINTER_MODE_DEVICE)
            .map_err(cuda_err("cublasSetPointerMode (device)"))?;
        // SAFETY: the operands' extents were checked above (gemm_config) and the two
        // scalars are words of `ctl_buf`, inside its checked length; every buffer
        // outlives the call (the graph or stream that runs it holds no ownership, as
        // for every launch of this backend: buffers live in the engine's workspace).
        let status = unsafe {
            cudarc::cublas::result::sgemm(
                handle,
                cfg.transa,
                cfg.transb,
                cfg.m,
                cfg.n,
                cfg.k,
                word(alpha_slot),
                first as *const f32,
                cfg.lda,
                second as *const f32,
                cfg.ldb,
                word(beta_slot),
                out as *mut f32,
                cfg.ldc,
            )
        };
        let restored = lane
            .blas
            .set_pointer_mode(cublasPointerMode_t::CUBLAS_POINTER_MODE_HOST)
            .map_err(cuda_err("cublasSetPointerMode (host)"));
        status.map_err(cuda_err("cublasSgemm (device α, β)"))?;
        restored
    }

    /// Makes the backend's context current on this thread: cuBLAS (unlike cudarc's
    /// launches) uses whatever context is current.
    fn bind(&self) -> Result<()> {
        self.inner
            .ctx
            .bind_to_thread()
            .map_err(cuda_err("binding the CUDA context"))
    }
}

/// Checks the operands of a row-major `m × n = op(A)·op(B)` product and maps it onto
/// cuBLAS's column-major call ([`gemm_map`]); `None` when C is empty (nothing to do).
/// α and β are left at 0 for the caller to set.
#[allow(clippy::too_many_arguments)]
fn gemm_config(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    a: &CudaSlice<f32>,
    b: &CudaSlice<f32>,
    c: &CudaSlice<f32>,
) -> Result<Option<(GemmConfig<f32>, CublasGemm)>> {
    check_len("gemm A", a.len(), elems("gemm A", m, k)?)?;
    check_len("gemm B", b.len(), elems("gemm B", k, n)?)?;
    check_len("gemm C", c.len(), elems("gemm C", m, n)?)?;
    if m == 0 || n == 0 {
        return Ok(None);
    }
    let g = gemm_map(ta, tb, m, n, k);
    let int = |what: &str, v: usize| {
        i32::try_from(v).map_err(|_| MepError::Shape(format!("gemm {what} = {v} exceeds cuBLAS's 32-bit limit")))
    };
    let op = |t: bool| {
        if t {
            cublasOperation_t::CUBLAS_OP_T
        } else {
            cublasOperation_t::CUBLAS_OP_N
        }
    };
    let cfg = GemmConfig {
        transa: op(g.transa),
        transb: op(g.transb),
        m: int("m", g.m)?,
        n: int("n", g.n)?,
        k: int("k", g.k)?,
        alpha: 0.0,
        lda: int("lda", g.lda)?,
        ldb: int("ldb", g.ldb)?,
        beta: 0.0,
        ldc: int("ldc", g.ldc)?,
    };
    // Test-only sabotage (feature `broken-gemm-lda`, see scripts/emulated-gpu.sh).
    #[cfg(feature = "broken-gemm-lda")]
    let cfg = GemmConfig {
        lda: cfg.lda + 1,
        ..cfg
    };
    Ok(Some((cfg, g)))
}
