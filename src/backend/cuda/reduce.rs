//! Reductions (`kernels/reduce.cu`): column sums (bias gradients) and sums of squares
//! (norms). The whole-buffer ones go through per-block partials in `Inner::partials`,
//! added in a fixed order (no floating-point atomics), so they repeat bit for bit.

use super::shapes::ROW_BLOCK;
use super::{check_len, config, dim32, elems, shapes, Cuda};
use crate::Result;
use cudarc::driver::CudaSlice;

impl Cuda {
    /// `Backend::col_sum`: the `col_sum` kernel.
    pub(super) fn launch_col_sum(
        &self,
        rows: usize,
        cols: usize,
        alpha: f64,
        x: &CudaSlice<f32>,
        beta: f64,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_len("col_sum x", x.len(), elems("col_sum", rows, cols)?)?;
        check_len("col_sum y", y.len(), cols)?;
        if cols == 0 {
            return Ok(());
        }
        let (rows64, cols32, a, b) = (rows as u64, dim32("col_sum cols", cols)?, alpha as f32, beta as f32);
        launch!(
            self,
            "col_sum",
            self.grid_rows(cols, ROW_BLOCK.0),
            [&rows64, &cols32, &a, x, &b, y]
        )
    }

    /// `Backend::sum_sq`: the `sum_sq` kernel, one launch (its last block adds the
    /// partials, as [`Cuda::reduce_partials`] would in a second launch).
    pub(super) fn launch_sum_sq(&self, x: &CudaSlice<f32>, out: &mut CudaSlice<f32>) -> Result<()> {
        check_len("sum_sq out", out.len(), 1)?;
        let n = x.len();
        let shape = self.grid_1d(n);
        let mut partials = self.lane().partials.lock().unwrap_or_else(|e| e.into_inner());
        let mut ticket = self.lane().ticket.lock().unwrap_or_else(|e| e.into_inner());
        // No atomics on the sums: bit-for-bit reproducible (kernels/reduce.cu). With
        // n = 0 every block writes a 0 partial. The ticket is 0 between launches.
        let n64 = n as u64;
        launch!(self, "sum_sq", shape, [&n64, x, &mut *partials, &mut *ticket, out])
    }

    /// `Backend::nesterov_sum_sq`: the `nesterov_sum_sq` kernel, one launch on the
    /// shape of `sum_sq` (so the sum is sum_sq(u)'s bit for bit).
    pub(super) fn launch_nesterov_sum_sq(
        &self,
        mu: f64,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        u: &mut CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_len("nesterov_sum_sq m", m.len(), g.len())?;
        check_len("nesterov_sum_sq u", u.len(), g.len())?;
        check_len("nesterov_sum_sq out", out.len(), 1)?;
        let n = g.len();
        let shape = self.grid_1d(n);
        let mut partials = self.lane().partials.lock().unwrap_or_else(|e| e.into_inner());
        let mut ticket = self.lane().ticket.lock().unwrap_or_else(|e| e.into_inner());
        let (n64, mu32) = (n as u64, mu as f32);
        launch!(
            self,
            "nesterov_sum_sq",
            shape,
            [&n64, &mu32, g, m, u, &mut *partials, &mut *ticket, out]
        )
    }

    /// Second pass of the deterministic reductions: `out[k] (+)= Σ_b partials[b·width + k]`
    /// over `blocks` partials, in a fixed order (one block, `reduce_partials`).
    pub(super) fn reduce_partials(
        &self,
        blocks: u32,
        width: u32,
        partials: &CudaSlice<f32>,
        accumulate: bool,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let acc = u32::from(accumulate);
        launch!(
            self,
            "reduce_partials",
            config(shapes::grid_1d(1, 1)),
            [&blocks, &width, partials, &acc, out]
        )
    }
}
