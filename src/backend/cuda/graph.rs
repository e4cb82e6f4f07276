//! Captured steps: the backend's stream captured into a CUDA graph
//! (`Backend::begin_capture` … `Backend::end_capture`) and replayed with one launch.
//! Branches forked from it ([`super::lanes`]) join the capture and become parallel
//! branches of the graph.

use super::{cuda_err, Cuda};
use crate::{MepError, Result};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;

impl Cuda {
    /// `Backend::begin_capture`: starts capturing the stream (in thread-local capture
    /// mode).
    pub(super) fn begin_graph_capture(&self) -> Result<bool> {
        self.main_lane()
            .stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(cuda_err("beginning a graph capture"))?;
        Ok(true)
    }

    /// `Backend::end_capture`: ends the capture and instantiates the graph.
    pub(super) fn end_graph_capture(&self) -> Result<Graph> {
        let graph = self
            .main_lane()
            .stream
            .end_capture(CUgraphInstantiate_flags(0))
            .map_err(cuda_err("ending a graph capture"))?
            .ok_or_else(|| MepError::Cuda("the graph capture recorded nothing".into()))?;
        Ok(Graph(std::sync::Mutex::new(SendGraph(graph))))
    }

    /// `Backend::launch_graph`: one replay on the stream.
    pub(super) fn launch_captured_graph(&self, graph: &Graph) -> Result<()> {
        let g = graph.0.lock().unwrap_or_else(|e| e.into_inner());
        g.0.launch().map_err(cuda_err("launching a graph"))
    }
}

/// A captured CUDA graph ([`Backend::begin_capture`](crate::backend::Backend::begin_capture)),
/// instantiated and ready to launch on the backend's stream.
pub struct Graph(std::sync::Mutex<SendGraph>);

/// cudarc's graph holds raw driver handles, so it is neither `Send` nor `Sync`.
struct SendGraph(CudaGraph);

// SAFETY: the driver's graph handles may be used from any thread as long as calls on
// one graph are serialised (CUDA's graph thread-safety rules); `Graph` serialises
// them with its mutex, and the handles stay valid until the `CudaGraph` is dropped.
unsafe impl Send for SendGraph {}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cuda::Graph")
    }
}
