//! CUDA graphs, emulated: stream capture records the work queued on the capturing
//! streams instead of running it, and a graph launch replays the recording.
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
//!
//! Several streams, as the driver captures them: an event recorded on a capturing
//! stream marks the operations before it; another stream that waits on that event
//! joins the capture, and its operations depend on those. Each recorded operation
//! keeps the operations it depends on (its stream's last one, and those of the
//! events its stream waited on), so a graph is a DAG. Ending the capture on a stream
//! other than the one that began it, or before every joined stream's work has been
//! joined back into it (an event recorded on the side stream, waited on by the
//! origin), is an error, as it is on a GPU. A replay runs the operations in a random
//! order that respects the dependencies (`MEP_EMU_GRAPH_ORDER=capture` keeps the
//! capture order), so a missing dependency changes results instead of hiding, and
//! counts `graph_path_nodes`: the longest chain of dependent operations, what a GPU
//! cannot overlap.

use crate::{count, COUNTERS};
use mep::backend::cuda::shapes::Shape;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
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
    pub alpha: Scalar,
    pub a: u64,
    pub lda: i32,
    pub b: u64,
    pub ldb: i32,
    pub beta: Scalar,
    pub c: u64,
    pub ldc: i32,
}

/// An SGEMM's α or β as the call passed it: a value read at the call (host pointer
/// mode) or a device address read when the GEMM runs (device pointer mode, so that a
/// replayed graph reads each replay's value).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scalar {
    Host(f32),
    Device(u64),
}

/// A recorded operation and the operations (indices into the graph) it depends on.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub op: Op,
    pub deps: Vec<usize>,
}

/// A capture under way.
struct Capture {
    /// The thread that began it (captures are thread-local, the mode the backend
    /// asks for: only this thread is refused the calls a capture forbids).
    thread: std::thread::ThreadId,
    /// The stream that began it: the one that must end it.
    origin: usize,
    nodes: Vec<Node>,
}

/// An instantiated graph: its nodes and the length of its longest dependency chain.
struct Exec {
    nodes: Arc<Vec<Node>>,
    path: u64,
}

#[derive(Default)]
struct Graphs {
    /// Captures under way, by capture id.
    captures: HashMap<usize, Capture>,
    /// Capturing streams: stream → (capture id, the nodes its next operation
    /// depends on).
    streams: HashMap<usize, (usize, Vec<usize>)>,
    /// Events recorded on capturing streams: event → (capture id, the nodes it marks).
    events: HashMap<usize, (usize, Vec<usize>)>,
    /// Ended captures (CUgraph handles).
    graphs: HashMap<usize, Arc<Vec<Node>>>,
    /// Instantiated graphs (CUgraphExec handles).
    execs: HashMap<usize, Exec>,
    next: usize,
}

static GRAPHS: Mutex<Option<Graphs>> = Mutex::new(None);

fn with<T>(f: impl FnOnce(&mut Graphs) -> T) -> T {
    f(GRAPHS.lock().unwrap().get_or_insert_with(Graphs::default))
}

/// The origin stream of the capture this thread runs, if any.
pub(crate) fn capturing() -> Option<usize> {
    let me = std::thread::current().id();
    with(|g| g.captures.values().find(|c| c.thread == me).map(|c| c.origin))
}

/// Whether `stream` is being captured (by any thread).
pub(crate) fn is_capturing(stream: usize) -> bool {
    with(|g| g.streams.contains_key(&stream))
}

/// Records `op` if `stream` is capturing (then the caller must not run it).
pub(crate) fn record_if_capturing(stream: usize, op: impl FnOnce() -> Op) -> bool {
    with(|g| {
        let Some((id, frontier)) = g.streams.get_mut(&stream) else {
            return false;
        };
        let nodes = &mut g
            .captures
            .get_mut(id)
            .expect("a capturing stream's capture exists")
            .nodes;
        nodes.push(Node {
            op: op(),
            deps: std::mem::replace(frontier, vec![nodes.len()]),
        });
        true
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
        return Err(format!("this thread is already capturing (from stream {s:#x})"));
    }
    let me = std::thread::current().id();
    with(|g| {
        if g.streams.contains_key(&stream) {
            return Err(format!("stream {stream:#x} is already capturing"));
        }
        g.next += 16;
        let id = g.next;
        g.captures.insert(
            id,
            Capture {
                thread: me,
                origin: stream,
                nodes: Vec::new(),
            },
        );
        g.streams.insert(stream, (id, Vec::new()));
        Ok(())
    })
}

/// `cuEventRecord(event, stream)`: while `stream` captures, the event marks the
/// operations queued on it so far; recorded outside a capture, it marks none.
pub(crate) fn record_event(event: usize, stream: usize) {
    with(|g| match g.streams.get(&stream) {
        Some((id, frontier)) => {
            let mark = (*id, frontier.clone());
            g.events.insert(event, mark);
        }
        None => {
            g.events.remove(&event);
        }
    })
}

/// `cuStreamWaitEvent(stream, event)` for an event recorded during a capture: the
/// stream's next operations depend on the event's, and a stream not capturing
/// joins the capture. An error message where the wait would cross captures, or
/// where a capturing stream waits on an event recorded outside any capture (the
/// driver refuses both: the graph could not hold the dependency).
pub(crate) fn wait_event(stream: usize, event: usize) -> Result<(), String> {
    with(|g| {
        let mark = g.events.get(&event).cloned();
        match (g.streams.get_mut(&stream), mark) {
            (None, None) => Ok(()),
            (None, Some((id, deps))) => {
                g.streams.insert(stream, (id, deps));
                Ok(())
            }
            (Some(_), None) => Err(format!(
                "capturing stream {stream:#x} waits on event {event:#x}, which was not recorded in a capture"
            )),
            (Some((id, frontier)), Some((eid, deps))) => {
                if *id != eid {
                    return Err(format!(
                        "stream {stream:#x} waits on event {event:#x} of another capture"
                    ));
                }
                for d in deps {
                    if !frontier.contains(&d) {
                        frontier.push(d);
                    }
                }
                Ok(())
            }
        }
    })
}

/// The nodes `frontier` depends on, itself included.
fn ancestors(nodes: &[Node], frontier: &[usize]) -> HashSet<usize> {
    let mut seen = HashSet::new();
    let mut todo: Vec<usize> = frontier.to_vec();
    while let Some(i) = todo.pop() {
        if seen.insert(i) {
            todo.extend(&nodes[i].deps);
        }
    }
    seen
}

/// Ends the capture begun on `stream`, returning the new graph's handle. Every
/// recorded operation must have been joined back into `stream` (else the driver's
/// `CUDA_ERROR_STREAM_CAPTURE_UNJOINED`); the capture ends either way, for every
/// stream in it.
pub(crate) fn end(stream: usize) -> Result<usize, String> {
    with(|g| {
        let (id, frontier) = g
            .streams
            .get(&stream)
            .cloned()
            .ok_or_else(|| format!("stream {stream:#x} is not capturing"))?;
        let origin = g.captures[&id].origin;
        if origin != stream {
            return Err(format!(
                "stream {stream:#x} joined a capture begun on stream {origin:#x}: only that stream can end it"
            ));
        }
        let cap = g.captures.remove(&id).expect("the capture exists");
        g.streams.retain(|_, (c, _)| *c != id);
        g.events.retain(|_, (c, _)| *c != id);
        let joined = ancestors(&cap.nodes, &frontier);
        if joined.len() != cap.nodes.len() {
            return Err(format!(
                "{} of {} captured operations were not joined back into the origin stream {stream:#x} (record an event on each forked stream and make the origin wait on it)",
                cap.nodes.len() - joined.len(),
                cap.nodes.len()
            ));
        }
        g.next += 16;
        let h = 0x6A00_0000 + g.next;
        g.graphs.insert(h, Arc::new(cap.nodes));
        Ok(h)
    })
}

/// The number of nodes on the longest dependency chain.
pub(crate) fn longest_path(nodes: &[Node]) -> u64 {
    // Capture appends a node after everything it depends on: indices are a
    // topological order.
    let mut depth = vec![0u64; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        depth[i] = 1 + n.deps.iter().map(|&d| depth[d]).max().unwrap_or(0);
    }
    depth.into_iter().max().unwrap_or(0)
}

/// An order of `nodes` that respects every dependency: chosen at random among the
/// ready nodes with xorshift state `seed`, or the capture order for `seed = None`.
pub(crate) fn replay_order(nodes: &[Node], seed: Option<u64>) -> Vec<usize> {
    let Some(mut s) = seed else {
        return (0..nodes.len()).collect();
    };
    let mut waiting: Vec<usize> = nodes.iter().map(|n| n.deps.len()).collect();
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        for &d in &n.deps {
            users[d].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..nodes.len()).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    s |= 1;
    while !ready.is_empty() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let i = ready.swap_remove((s % ready.len() as u64) as usize);
        order.push(i);
        for &u in &users[i] {
            waiting[u] -= 1;
            if waiting[u] == 0 {
                ready.push(u);
            }
        }
    }
    order
}

/// Instantiates graph `graph`, returning the executable graph's handle.
pub(crate) fn instantiate(graph: usize) -> Result<usize, String> {
    with(|g| {
        let nodes = g
            .graphs
            .get(&graph)
            .cloned()
            .ok_or_else(|| format!("graph {graph:#x} does not exist"))?;
        g.next += 16;
        let h = 0x6B00_0000 + g.next;
        let path = longest_path(&nodes);
        g.execs.insert(h, Exec { nodes, path });
        Ok(h)
    })
}

/// The operations of executable graph `exec`, counted as one graph launch (and its
/// longest chain in `graph_path_nodes`).
pub(crate) fn for_launch(exec: usize) -> Result<Arc<Vec<Node>>, String> {
    let (nodes, path) = with(|g| g.execs.get(&exec).map(|e| (e.nodes.clone(), e.path)))
        .ok_or_else(|| format!("executable graph {exec:#x} does not exist"))?;
    count(&COUNTERS.graph_launches);
    COUNTERS.graph_path_nodes.fetch_add(path, Relaxed);
    Ok(nodes)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn memset(i: u64) -> Op {
        Op::Memset {
            dst: i,
            value: 0,
            bytes: 0,
        }
    }

    /// A fork-join capture on streams 1 (origin) and 2, from several threads' view:
    /// the test holds its own stream numbers, which no other test uses.
    #[test]
    fn fork_join_capture_builds_a_dag() {
        let (a, b, fork, join) = (0x7100, 0x7200, 0x7300, 0x7400);
        begin(a).unwrap();
        assert!(record_if_capturing(a, || memset(0))); // 0
        record_event(fork, a);
        wait_event(b, fork).unwrap();
        assert!(is_capturing(b));
        assert!(record_if_capturing(a, || memset(1))); // 1: after 0
        assert!(record_if_capturing(b, || memset(2))); // 2: after 0
        assert!(record_if_capturing(b, || memset(3))); // 3: after 2
        record_event(join, b);
        wait_event(a, join).unwrap();
        assert!(record_if_capturing(a, || memset(4))); // 4: after 1 and 3
        let h = end(a).unwrap();
        assert!(!is_capturing(b), "ending the capture ends it on joined streams");
        let nodes = with(|g| g.graphs[&h].clone());
        let deps: Vec<Vec<usize>> = nodes.iter().map(|n| n.deps.clone()).collect();
        assert_eq!(deps, vec![vec![], vec![0], vec![0], vec![2], vec![1, 3]]);
        assert_eq!(longest_path(&nodes), 4);
        // Every random order respects the dependencies, and some put 2 before 1.
        let mut swapped = false;
        for seed in 1..200u64 {
            let order = replay_order(&nodes, Some(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
            let pos = |i: usize| order.iter().position(|&x| x == i).unwrap();
            assert_eq!(order.len(), 5);
            for (i, n) in nodes.iter().enumerate() {
                assert!(n.deps.iter().all(|&d| pos(d) < pos(i)), "{order:?}");
            }
            swapped |= pos(2) < pos(1);
        }
        assert!(swapped, "the random order never ran the side branch first");
        assert_eq!(replay_order(&nodes, None), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn unjoined_side_streams_and_foreign_events_are_refused() {
        let (a, b, fork, stray) = (0x8100, 0x8200, 0x8300, 0x8400);
        begin(a).unwrap();
        record_event(fork, a);
        wait_event(b, fork).unwrap();
        assert!(record_if_capturing(b, || memset(0)));
        assert!(end(b).unwrap_err().contains("only that stream can end it"));
        let e = end(a).unwrap_err();
        assert!(e.contains("1 of 1 captured operations were not joined"), "{e}");
        assert!(!is_capturing(a) && !is_capturing(b));
        // An event recorded outside any capture cannot be waited on inside one.
        record_event(stray, 0x8500);
        begin(a).unwrap();
        assert!(wait_event(a, stray).unwrap_err().contains("not recorded in a capture"));
        end(a).unwrap();
    }
}
