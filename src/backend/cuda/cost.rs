//! Cost kernels on the output (`kernels/cost.cu`): the gradient ∂C/∂o, the loss and
//! accuracy statistics, and the argmax. Row-wise launches ([`super::shapes::ROW_BLOCK`]).

use super::shapes::ROW_BLOCK;
use super::{check_len, dim32, elems, Cuda};
use crate::{Loss, Result};
use cudarc::driver::{CudaSlice, LaunchConfig};

/// Most rows whose statistics one block gathers alone ([`Cuda::launch_cost_stats`]):
/// 64 per warp row of the block, a few microseconds; more take a grid and a second pass.
const ONE_BLOCK_ROWS: usize = 512;

impl Cuda {
    /// `Backend::cost_grad`: the `cost_grad` kernel.
    pub(super) fn launch_cost_grad(
        &self,
        rows: usize,
        classes: usize,
        o: &CudaSlice<f32>,
        labels: &CudaSlice<u32>,
        loss: Loss,
        g: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = elems("cost_grad", rows, classes)?;
        check_len("cost_grad o", o.len(), n)?;
        check_len("cost_grad g", g.len(), n)?;
        check_len("cost_grad labels", labels.len(), rows)?;
        if n == 0 {
            return Ok(());
        }
        let (rows64, k32, code, eps) = (
            rows as u64,
            dim32("cost_grad classes", classes)?,
            loss.code(),
            loss.label_smoothing() as f32,
        );
        launch!(
            self,
            "cost_grad",
            self.grid_rows(rows, ROW_BLOCK.1),
            [&rows64, &k32, o, labels, &code, &eps, g]
        )
    }

    /// `Backend::cost_stats`: `cost_stats_partial`, then [`Cuda::reduce_partials`].
    pub(super) fn launch_cost_stats(
        &self,
        rows: usize,
        classes: usize,
        o: &CudaSlice<f32>,
        labels: &CudaSlice<u32>,
        loss: Loss,
        stats: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_len("cost_stats o", o.len(), elems("cost_stats", rows, classes)?)?;
        check_len("cost_stats labels", labels.len(), rows)?;
        check_len("cost_stats stats", stats.len(), 2)?;
        if rows == 0 || classes == 0 {
            return Ok(());
        }
        let (rows64, k32, code, eps) = (
            rows as u64,
            dim32("cost_stats classes", classes)?,
            loss.code(),
            loss.label_smoothing() as f32,
        );
        // No atomics: bit-for-bit reproducible (kernels/cost.cu). A small batch is one
        // block that adds to the statistics itself (one launch: a training step's
        // batch); a larger one takes two passes.
        if rows <= ONE_BLOCK_ROWS {
            let one = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: ROW_BLOCK,
                shared_mem_bytes: 0,
            };
            let acc = 1u32;
            return launch!(
                self,
                "cost_stats_partial",
                one,
                [&rows64, &k32, o, labels, &code, &eps, &acc, stats]
            );
        }
        let shape = self.grid_rows(rows, ROW_BLOCK.1);
        let blocks = shape.grid_dim.0;
        let mut partials = self.lane().partials.lock().unwrap_or_else(|e| e.into_inner());
        let acc = 0u32;
        launch!(
            self,
            "cost_stats_partial",
            shape,
            [&rows64, &k32, o, labels, &code, &eps, &acc, &mut *partials]
        )?;
        self.reduce_partials(blocks, 2, &partials, true, stats)
    }

    /// `Backend::argmax`: the `argmax` kernel.
    pub(super) fn launch_argmax(
        &self,
        rows: usize,
        classes: usize,
        o: &CudaSlice<f32>,
        out: &mut CudaSlice<u32>,
    ) -> Result<()> {
        check_len("argmax o", o.len(), elems("argmax", rows, classes)?)?;
        check_len("argmax out", out.len(), rows)?;
        if rows == 0 || classes == 0 {
            return Ok(());
        }
        let (rows64, k32) = (rows as u64, dim32("argmax classes", classes)?);
        launch!(
            self,
            "argmax",
            self.grid_rows(rows, ROW_BLOCK.1),
            [&rows64, &k32, o, out]
        )
    }
}
