//! CUDA graphs, emulated: stream capture records the work queued on the capturing
//! stream instead of running it, and a graph launch replays the recording.
//!
//! What is recorded: kernel launches (the argument bytes copied at capture time, as
//! the driver copies them), memsets, device-to-device copies and cuBLAS SGEMMs (α
//! and β read at capture time, as cuBLAS does in host pointer mode). What the real
//! driver refuses while a stream captures is refused here too, and reported: a
//! synchronisation, a copy to or from host memory, an allocation or a free (each
//! would make the captured step depend on the host, or silently run once at capture
//! instead of at every replay). A replay counts one `graph_launches` and one
//! `graph_nodes` per recorded operation, never `launches` or `cublas_calls`: those
//! count what the host pays per call, and a replayed node costs it nothing.

use crate::{count, COUNTERS};
use mep::backend::cuda::shapes::Shape;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One recorded operation.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// A kernel launch: the function's name, its launch shape and each argument's bytes.
    Launch {
        name: String,
        shape: Shape,
        args: Vec<Vec<u8>>,
    },
    /// `cuMemsetD8Async`.
    Memset { dst: u64, value: u8, bytes: usize },
    /// `cuMemcpyDtoDAsync`.
    CopyDtoD { dst: u64, src: u64, bytes: usize },
    /// `cublasSgemm_v2` (column-major, as cuBLAS takes it).
    Sgemm(Sgemm),
}

/// The arguments of one recorded SGEMM.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sgemm {
    pub handle: usize,
    pub ta: i32,
    pub tb: i32,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub alpha: f32,
    pub a: u64,
    pub lda: i32,
    pub b: u64,
    pub ldb: i32,
    pub beta: f32,
    pub c: u64,
    pub ldc: i32,
}

#[derive(Default)]
struct Graphs {
    /// Captures under way: stream → (the thread that began it, what it has recorded
    /// so far). Captures are thread-local (the mode the backend asks for): only the
    /// capturing thread is refused the calls a capture forbids.
    captures: HashMap<usize, (std::thread::ThreadId, Vec<Op>)>,
    /// Ended captures (CUgraph handles).
    graphs: HashMap<usize, Arc<Vec<Op>>>,
    /// Instantiated graphs (CUgraphExec handles).
    execs: HashMap<usize, Arc<Vec<Op>>>,
    next: usize,
}

static GRAPHS: Mutex<Option<Graphs>> = Mutex::new(None);

fn with<T>(f: impl FnOnce(&mut Graphs) -> T) -> T {
    f(GRAPHS.lock().unwrap().get_or_insert_with(Graphs::default))
}

/// The stream this thread is capturing, if any.
pub(crate) fn capturing() -> Option<usize> {
    let me = std::thread::current().id();
    with(|g| g.captures.iter().find(|(_, (t, _))| *t == me).map(|(s, _)| *s))
}

/// Whether `stream` is being captured (by any thread).
pub(crate) fn is_capturing(stream: usize) -> bool {
    with(|g| g.captures.contains_key(&stream))
}

/// Records `op` if `stream` is capturing (then the caller must not run it).
pub(crate) fn record_if_capturing(stream: usize, op: impl FnOnce() -> Op) -> bool {
    with(|g| match g.captures.get_mut(&stream) {
        Some((_, ops)) => {
            ops.push(op());
            true
        }
        None => false,
    })
}

/// Starts capturing `stream` on this thread; an error message if this thread or
/// the stream is already capturing, or the stream is the legacy default stream
/// (which cannot capture).
pub(crate) fn begin(stream: usize) -> Result<(), String> {
    if stream == 0 {
        return Err("the legacy default stream cannot be captured: create a stream".into());
    }
    if let Some(s) = capturing() {
        return Err(format!("this thread is already capturing stream {s:#x}"));
    }
    let me = std::thread::current().id();
    with(|g| {
        if g.captures.contains_key(&stream) {
            return Err(format!("stream {stream:#x} is already capturing"));
        }
        g.captures.insert(stream, (me, Vec::new()));
        Ok(())
    })
}

/// Ends the capture of `stream`, returning the new graph's handle.
pub(crate) fn end(stream: usize) -> Result<usize, String> {
    with(|g| match g.captures.remove(&stream) {
        Some((_, ops)) => {
            g.next += 16;
            let h = 0x6A00_0000 + g.next;
            g.graphs.insert(h, Arc::new(ops));
            Ok(h)
        }
        None => Err(format!("stream {stream:#x} is not capturing")),
    })
}

/// Instantiates graph `graph`, returning the executable graph's handle.
pub(crate) fn instantiate(graph: usize) -> Result<usize, String> {
    with(|g| {
        let ops = g
            .graphs
            .get(&graph)
            .cloned()
            .ok_or_else(|| format!("graph {graph:#x} does not exist"))?;
        g.next += 16;
        let h = 0x6B00_0000 + g.next;
        g.execs.insert(h, ops);
        Ok(h)
    })
}

/// The operations of executable graph `exec`, counted as one graph launch.
pub(crate) fn for_launch(exec: usize) -> Result<Arc<Vec<Op>>, String> {
    let ops =
        with(|g| g.execs.get(&exec).cloned()).ok_or_else(|| format!("executable graph {exec:#x} does not exist"))?;
    count(&COUNTERS.graph_launches);
    Ok(ops)
}

/// Counts one replayed node.
pub(crate) fn count_node() {
    count(&COUNTERS.graph_nodes);
}

/// Destroys graph `graph` (or executable graph `exec`); false if it does not exist.
pub(crate) fn destroy_graph(graph: usize) -> bool {
    with(|g| g.graphs.remove(&graph).is_some())
}

/// See [`destroy_graph`].
pub(crate) fn destroy_exec(exec: usize) -> bool {
    with(|g| g.execs.remove(&exec).is_some())
}
