//! Mini-batch assembly (`kernels/data.cu`): row and label gathers through an index
//! permutation, so an epoch's batches are drawn from a data set uploaded once.

use super::{check_len, elems, Cuda};
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
        check_len("gather_rows idx", idx.len(), start + count)?;
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

    /// `Backend::gather_labels`: the `gather_labels` kernel.
    pub(super) fn launch_gather_labels(
        &self,
        src: &CudaSlice<u32>,
        idx: &CudaSlice<u32>,
        start: usize,
        count: usize,
        dst: &mut CudaSlice<u32>,
    ) -> Result<()> {
        check_len("gather_labels idx", idx.len(), start + count)?;
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
