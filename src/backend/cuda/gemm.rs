//! Dense matrix products: the backend's row-major GEMM as one cuBLAS SGEMM on the
//! column-major view of the operands ([`super::gemm_map`] works out which).

use super::gemm_map::{gemm_map, Operand};
use super::{check_len, cuda_err, elems, Cuda};
use crate::{MepError, Result};
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::CudaSlice;

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
        check_len("gemm A", a.len(), elems("gemm A", m, k)?)?;
        check_len("gemm B", b.len(), elems("gemm B", k, n)?)?;
        check_len("gemm C", c.len(), elems("gemm C", m, n)?)?;
        if m == 0 || n == 0 {
            return Ok(());
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
            alpha: alpha as f32,
            lda: int("lda", g.lda)?,
            ldb: int("ldb", g.ldb)?,
            beta: beta as f32,
            ldc: int("ldc", g.ldc)?,
        };
        // Test-only sabotage (feature `broken-gemm-lda`, see scripts/emulated-gpu.sh).
        #[cfg(feature = "broken-gemm-lda")]
        let cfg = GemmConfig {
            lda: cfg.lda + 1,
            ..cfg
        };
        let pick = |o: Operand| if o == Operand::A { a } else { b };
        // cuBLAS (unlike cudarc's launches) uses whatever context is current on this thread.
        self.inner
            .ctx
            .bind_to_thread()
            .map_err(cuda_err("binding the CUDA context"))?;
        unsafe { self.queue().blas.gemm(cfg, pick(g.first), pick(g.second), c) }.map_err(cuda_err("cublasSgemm"))
    }
}
