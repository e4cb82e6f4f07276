//! Lanes: the streams the backend queues work on. Lane 0 is the backend's stream
//! (everything runs there by default, and graphs are captured from it); the others
//! run the branches of [`Backend::concurrently`](crate::backend::Backend::concurrently)
//! beside it. Each lane has what two concurrent branches must not share: its stream,
//! its cuBLAS handle and workspace, and the scratch of the reductions.
//!
//! A fork records an event on lane 0 that every side lane waits on; the join records
//! an event on each side lane that lane 0 waits on. Captured, this is how CUDA
//! builds a graph with parallel branches (the side streams join the capture through
//! the fork event, and must be joined back before it ends); run eagerly, the branches
//! overlap on the GPU.

use super::{cuda_err, unavailable, Cuda};
use crate::{MepError, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Bytes of each lane's cuBLAS workspace.
const BLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// Lanes created with the backend (and the default number of branches run at once).
/// Three: at the seed network the estimate's four branches and the residual sum
/// then finish two operations after the fork (three with two lanes), and W₁'s
/// Newton–Schulz chain has a lane to itself while W₂'s update and both bias updates
/// share the others (BENCHMARKS §7d). `MEP_CUDA_BRANCHES=N` sets it (1: everything
/// on one stream).
pub const DEFAULT_LANES: usize = 3;

/// Most lanes `MEP_CUDA_BRANCHES` may ask for.
pub const MAX_LANES: usize = 8;

/// One stream and what its work must not share with another's.
pub(super) struct Lane {
    pub(super) stream: Arc<CudaStream>,
    pub(super) blas: CudaBlas,
    /// Per-block partial sums of the two-pass reductions (2 × `max_blocks` floats).
    pub(super) partials: Mutex<CudaSlice<f32>>,
    /// The one-launch reductions' ticket (`kernels/reduce.cu`, `sum_sq`): 0 between
    /// launches (each re-arms it). Locked after `partials` where both are taken.
    pub(super) ticket: Mutex<CudaSlice<u32>>,
    /// Side lanes: recorded at the end of their branches, and lane 0 waits on it.
    /// Lane 0: recorded at the fork, and the side lanes wait on it.
    pub(super) done: CudaEvent,
    /// Operations queued since the last fork (kernels, GEMMs, copies): what
    /// `concurrently` balances the branches by.
    queued: AtomicUsize,
    /// cuBLAS's workspace (`cublasSetWorkspace`): owned here so that it outlives
    /// every GEMM queued with the handle.
    _blas_workspace: CudaSlice<u8>,
}

impl Lane {
    /// A new stream with its cuBLAS handle, workspace and reduction scratch.
    pub(super) fn new(ctx: &Arc<CudaContext>, max_blocks: u32) -> Result<Lane> {
        let stream = ctx.new_stream().map_err(unavailable("creating a stream"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(unavailable("creating a cuBLAS handle"))?;
        // cuBLAS's own workspace, given explicitly so that a GEMM never allocates: one
        // captured into a graph must not (the capture would fail or bake in a
        // temporary). 32 MiB is what NVIDIA recommends for Hopper.
        let workspace = stream
            .alloc_zeros::<u8>(BLAS_WORKSPACE_BYTES)
            .map_err(unavailable("allocating the cuBLAS workspace"))?;
        {
            let (ptr, _sync) = workspace.device_ptr(&stream);
            // SAFETY: the handle is live; the workspace is BLAS_WORKSPACE_BYTES of device
            // memory (256-byte aligned, as every allocation), kept alive in the lane
            // beside the handle.
            let status = unsafe {
                cudarc::cublas::sys::cublasSetWorkspace_v2(
                    *blas.handle(),
                    ptr as *mut std::ffi::c_void,
                    BLAS_WORKSPACE_BYTES,
                )
            };
            if status != cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(MepError::CudaUnavailable(format!(
                    "setting the cuBLAS workspace: {status:?}"
                )));
            }
        }
        let partials = stream
            .alloc_zeros::<f32>(2 * max_blocks as usize)
            .map_err(unavailable("allocating the reduction scratch"))?;
        let ticket = stream
            .alloc_zeros::<u32>(1)
            .map_err(unavailable("allocating the reduction ticket"))?;
        let done = ctx.new_event(None).map_err(unavailable("creating an event"))?;
        Ok(Lane {
            stream,
            blas,
            partials: Mutex::new(partials),
            ticket: Mutex::new(ticket),
            done,
            queued: AtomicUsize::new(0),
            _blas_workspace: workspace,
        })
    }
}

/// `MEP_CUDA_BRANCHES`: how many lanes to create (1 ..= [`MAX_LANES`]).
pub(super) fn lanes_from_env() -> Result<usize> {
    let n = super::count_setting(
        "MEP_CUDA_BRANCHES",
        DEFAULT_LANES,
        "3 (1 runs everything on one stream)",
    )?;
    check_lanes("MEP_CUDA_BRANCHES", n)
}

fn check_lanes(name: &'static str, n: usize) -> Result<usize> {
    if (1..=MAX_LANES).contains(&n) {
        Ok(n)
    } else {
        Err(MepError::InvalidArgument {
            name,
            value: n.to_string(),
            fix: format!("1 to {MAX_LANES} (1 runs everything on one stream)"),
        })
    }
}

impl Cuda {
    /// The lane work is queued on now.
    pub(super) fn lane(&self) -> &Lane {
        &self.inner.lanes[self.inner.current.load(Relaxed)]
    }

    /// The lane the next operation is queued on, counted as queued there.
    pub(super) fn queue(&self) -> &Lane {
        let lane = self.lane();
        lane.queued.fetch_add(1, Relaxed);
        lane
    }

    /// The backend's own stream (lane 0).
    pub(super) fn main_lane(&self) -> &Lane {
        &self.inner.lanes[0]
    }

    /// How many branches [`Backend::concurrently`](crate::backend::Backend::concurrently)
    /// runs at once (the lanes created, [`DEFAULT_LANES`] unless `MEP_CUDA_BRANCHES`
    /// said otherwise).
    pub fn branches(&self) -> usize {
        self.inner.branches.load(Relaxed)
    }

    /// Sets how many branches run at once: 1 queues everything on the backend's
    /// stream, in order; at most the lanes created with the backend
    /// (`MEP_CUDA_BRANCHES`, default [`DEFAULT_LANES`]). Steps captured before keep
    /// the layout they were captured with.
    pub fn set_branches(&self, n: usize) -> Result<()> {
        let have = self.inner.lanes.len();
        if n == 0 || n > have {
            return Err(MepError::InvalidArgument {
                name: "branches",
                value: n.to_string(),
                fix: format!("1 to {have} (the lanes this backend was created with; set MEP_CUDA_BRANCHES before creating it for more, up to {MAX_LANES})"),
            });
        }
        self.inner.branches.store(n, Relaxed);
        Ok(())
    }

    /// `Backend::concurrently`: L = min(n, [`Cuda::branches`]) lanes forked from and
    /// joined back into lane 0; each branch goes to the lane with the fewest
    /// operations queued since the fork (the lowest such lane on a tie), so a caller
    /// that lists its longest branches first gets them on lanes of their own. The
    /// assignment depends only on what the branches queue, so a captured step
    /// replays the eager one. Nested calls run their branches in order on the
    /// current lane.
    pub(super) fn run_concurrently(&self, n: usize, body: &mut dyn FnMut(usize) -> Result<()>) -> Result<()> {
        let lanes = self.branches().min(n);
        if lanes <= 1 || self.inner.forked.swap(true, Relaxed) {
            return (0..n).try_for_each(body);
        }
        let result = self.fork_join(lanes, n, body);
        self.inner.forked.store(false, Relaxed);
        result
    }

    /// [`Cuda::run_concurrently`]'s fork, branches and join, over `lanes` ≥ 2 lanes.
    fn fork_join(&self, lanes: usize, n: usize, body: &mut dyn FnMut(usize) -> Result<()>) -> Result<()> {
        let main = self.main_lane();
        let fork = &main.done;
        fork.record(&main.stream)
            .map_err(cuda_err("recording the fork event"))?;
        for lane in &self.inner.lanes[1..lanes] {
            lane.stream.wait(fork).map_err(cuda_err("waiting on the fork event"))?;
        }
        let used = &self.inner.lanes[..lanes];
        for lane in used {
            lane.queued.store(0, Relaxed);
        }
        let mut result = Ok(());
        for i in 0..n {
            let least = (0..lanes).min_by_key(|&l| used[l].queued.load(Relaxed)).unwrap_or(0);
            self.inner.current.store(least, Relaxed);
            result = body(i);
            if result.is_err() {
                break;
            }
        }
        self.inner.current.store(0, Relaxed);
        // Join every side lane back, after an error too: a capture must end joined.
        for lane in &self.inner.lanes[1..lanes] {
            let joined = lane
                .done
                .record(&lane.stream)
                .and_then(|()| main.stream.wait(&lane.done));
            if let Err(e) = joined {
                return Err(MepError::Cuda(format!("joining a branch: {e:?}")));
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lane_counts_are_checked() {
        assert_eq!(super::check_lanes("X", 1).unwrap(), 1);
        assert_eq!(super::check_lanes("X", super::MAX_LANES).unwrap(), super::MAX_LANES);
        for bad in [0, super::MAX_LANES + 1] {
            let e = super::check_lanes("X", bad).unwrap_err().to_string();
            assert!(e.contains("X") && e.contains(&bad.to_string()), "{e}");
        }
    }
}
