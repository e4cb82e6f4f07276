//! Mini-batch assembly (`kernels/data.cu`): row and label gathers through an index
//! permutation (separately, or both in one launch), so an epoch's batches are drawn from a data set uploaded once.

use super::{check_len, elems, Cuda};
use crate::backend::gather_end;
use crate::Result;
use cudarc::driver::CudaSlice;

impl Cuda {
    /// `Backend::gather_rows`: the `gather_rows` kernel.
    pub(super) fn launch_gather_rows(
        &self,
        src: &CudaSlice<f32>,
        row_len: usize,
        idx: &CudaSlice<u32>,
        start: usize,
        count: usize,
        dst: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_len("gather_rows idx", idx.len(), gather_end("gather_rows", start, count)?)?;
        let n = elems("gather_rows", count, row_len)?;
        check_len("gather_rows dst", dst.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let (count64, row_len64, start64) = (count as u64, row_len as u64, start as u64);
        let src_rows = (src.len() / row_len.max(1)) as u64;
        launch!(
            self,
            "gather_rows",
            self.grid_1d(n),
            [&count64, &row_len64, src, &src_rows, idx, &start64, dst]
        )
    }

    /// `Backend::gather_batch`: the `gather_batch` kernel (both gathers in one launch).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_gather_batch(
        &self,
        x: &CudaSlice<f32>,
        row_len: usize,
        y: &CudaSlice<u32>,
        idx: &CudaSlice<u32>,
        start: usize,
        count: usize,
        x_dst: &mut CudaSlice<f32>,
        y_dst: &mut CudaSlice<u32>,
    ) -> Result<()> {
        if row_len == 0 {
            // No elements to carry the labels: the two gathers separately.
            self.launch_gather_rows(x, row_len, idx, start, count, x_dst)?;
            return self.launch_gather_labels(y, idx, start, count, y_dst);
        }
        check_len("gather_batch idx", idx.len(), gather_end("gather_batch", start, count)?)?;
        let n = elems("gather_batch", count, row_len)?;
        check_len("gather_batch rows dst", x_dst.len(), n)?;
        check_len("gather_batch labels dst", y_dst.len(), count)?;
        if n == 0 {
            return Ok(());
        }
        let (count64, row_len64, start64) = (count as u64, row_len as u64, start as u64);
        let (src_rows, y_len) = ((x.len() / row_len) as u64, y.len() as u64);
        launch!(
            self,
            "gather_batch",
            self.grid_1d(n),
            [&count64, &row_len64, x, &src_rows, y, &y_len, idx, &start64, x_dst, y_dst]
        )
    }

    /// `Backend::gather_labels`: the `gather_labels` kernel.
    pub(super) fn launch_gather_labels(
        &self,
        src: &CudaSlice<u32>,
        idx: &CudaSlice<u32>,
        start: usize,
        count: usize,
        dst: &mut CudaSlice<u32>,
    ) -> Result<()> {
        check_len(
            "gather_labels idx",
            idx.len(),
            gather_end("gather_labels", start, count)?,
        )?;
        check_len("gather_labels dst", dst.len(), count)?;
        if count == 0 {
            return Ok(());
        }
        let (count64, src_len, start64) = (count as u64, src.len() as u64, start as u64);
        launch!(
            self,
            "gather_labels",
            self.grid_1d(count),
            [&count64, src, &src_len, idx, &start64, dst]
        )
    }
}
