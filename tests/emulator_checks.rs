//! The emulated GPU (`emu/`) fails where a real GPU would punish a bug: out-of-bounds
//! and use-after-free accesses, double frees, GEMM operands that overrun their
//! buffers, reads of uninitialised memory (NaN-filled). Each check must fire (return
//! an error and count it). Runs only when the emulator is the loaded driver
//! (`scripts/emu-libdir.sh` first on `LD_LIBRARY_PATH`); skips otherwise.

mod common;
use common::{emulator_counters, gpu};

use cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{result, DevicePtr};
use mep::backend::cuda::Cuda;
use mep::backend::Backend;
use std::process::Command;

/// The CUDA backend on the emulator, or `None` (skip) on a real GPU or none.
fn emulated() -> Option<Cuda> {
    let g = gpu()?;
    if emulator_counters().is_none() {
        eprintln!("skipping: not the emulated GPU");
        return None;
    }
    Some(g)
}

/// The emulator's counter `name`.
fn counter(name: &str) -> u64 {
    emulator_counters()
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap()
        .1
}

fn errors() -> u64 {
    counter("errors")
}

/// [`emulated`] with two streams for `concurrently`'s branches, or `None` (skip).
fn emulated_with_two_lanes() -> Option<Cuda> {
    let cuda = emulated()?;
    match cuda.set_branches(2) {
        Ok(()) => Some(cuda),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

/// Runs `f`, which must fail, and checks that the emulator counted one more error.
fn must_fire<T, E: std::fmt::Debug>(what: &str, f: impl FnOnce() -> Result<T, E>) {
    let before = errors();
    assert!(f().is_err(), "{what}: the emulator accepted it");
    assert!(
        errors() > before,
        "{what}: failed but was not counted as an emulator error"
    );
}

#[test]
fn out_of_bounds_copies_are_errors() {
    let Some(g) = emulated() else { return };
    let buf = g.zeros(10).unwrap();
    let stream = g.stream().clone();
    let (p, _sync) = buf.device_ptr(&stream);
    must_fire("11 floats into 10", || unsafe {
        result::memcpy_htod_async(p, &[0f32; 11], stream.cu_stream())
    });
    let mut host = [0f32; 11];
    must_fire("11 floats out of 10", || unsafe {
        result::memcpy_dtoh_async(&mut host, p, stream.cu_stream())
    });
    must_fire("a copy starting past the end", || unsafe {
        result::memcpy_htod_async(p + 40, &[0f32; 1], stream.cu_stream())
    });
}

#[test]
fn double_free_is_an_error() {
    let Some(g) = emulated() else { return };
    g.context().bind_to_thread().unwrap();
    let p = unsafe { result::malloc_sync(64) }.unwrap();
    unsafe { result::free_sync(p) }.unwrap();
    must_fire("double free", || unsafe { result::free_sync(p) });
    must_fire("free of an interior address", || {
        let q = unsafe { result::malloc_sync(64) }.unwrap();
        let r = unsafe { result::free_sync(q + 4) };
        unsafe { result::free_sync(q) }.unwrap();
        r
    });
}

#[test]
fn fresh_allocations_read_as_nan() {
    let Some(g) = emulated() else { return };
    let fresh = unsafe { g.stream().alloc::<f32>(7) }.unwrap();
    let v = g.download(&fresh).unwrap();
    assert!(
        v.iter().all(|x| x.is_nan()),
        "uninitialised device memory read as {v:?}"
    );
}

#[test]
fn gemm_operands_are_validated() {
    let Some(g) = emulated() else { return };
    let blas = CudaBlas::new(g.stream().clone()).unwrap();
    let (m, n, k) = (4, 3, 5);
    let a = g.upload(&vec![1.0; m * k]).unwrap();
    let b = g.upload(&vec![1.0; k * n]).unwrap();
    let mut c = g.zeros(m * n).unwrap();
    let cfg = GemmConfig {
        transa: CUBLAS_OP_N,
        transb: CUBLAS_OP_N,
        m: m as i32,
        n: n as i32,
        k: k as i32,
        alpha: 1.0f32,
        lda: m as i32,
        ldb: k as i32,
        beta: 0.0f32,
        ldc: m as i32,
    };
    g.context().bind_to_thread().unwrap();
    unsafe { blas.gemm(cfg, &a, &b, &mut c) }.unwrap();
    assert!(g.download(&c).unwrap().iter().all(|&x| x == k as f32));
    for (what, bad) in [
        (
            "lda below the rows of A",
            GemmConfig {
                lda: m as i32 - 1,
                ..cfg
            },
        ),
        (
            "lda one too large (A overruns)",
            GemmConfig {
                lda: m as i32 + 1,
                ..cfg
            },
        ),
        (
            "ldc one too large (C overruns)",
            GemmConfig {
                ldc: m as i32 + 1,
                ..cfg
            },
        ),
        (
            "k larger than B",
            GemmConfig {
                k: k as i32 + 1,
                lda: m as i32,
                ..cfg
            },
        ),
    ] {
        must_fire(what, || unsafe { blas.gemm(bad, &a, &b, &mut c) });
    }
}

const CHILD: &str = "MEP_EMU_CHILD";

/// A kernel launched on freed memory fails (and, like a fault on a GPU, leaves the
/// context unusable, hence a child process).
#[test]
fn launch_on_freed_memory_fails() {
    if std::env::var_os(CHILD).is_some() {
        let g = emulated().unwrap();
        let mut y = g.zeros(8).unwrap();
        let (p, sync) = y.device_ptr(g.stream());
        drop(sync);
        unsafe { result::free_sync(p) }.unwrap();
        match g.fill(&mut y, 1.0) {
            Ok(()) => println!("FILL=ok"),
            Err(e) => println!("FILL=error {e}"),
        }
        std::mem::forget(y); // its memory is gone already
        return;
    }
    if emulated().is_none() {
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["launch_on_freed_memory_fails", "--exact", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains("FILL=error"),
        "the launch succeeded:\n{stdout}\n{stderr}"
    );
    assert!(stderr.contains("use after free"), "no use-after-free report:\n{stderr}");
}

/// The emulator refuses cubins (it runs the host build of each PTX entry), as a
/// driver refuses a cubin for another architecture: the backend then loads the PTX,
/// and says so in its name.
#[test]
fn refused_cubins_fall_back_to_ptx() {
    let Some(g) = emulated() else { return };
    assert!(g.name().contains("sm_90 PTX;"), "{}", g.name());
}

/// A GEMM on one backend's stream over a buffer another stream last used would race
/// that stream's work on a GPU: the emulator refuses it. Each backend on its own
/// buffers is fine (tests/cuda_primitives.rs, two_backends_of_one_device_work_side_by_side).
#[test]
fn gemm_on_another_streams_buffer_is_an_error() {
    let Some(a) = emulated() else { return };
    let b = Cuda::new(0).unwrap();
    let (x, w) = (a.upload(&[1.0; 6]).unwrap(), a.upload(&[1.0; 6]).unwrap());
    let mut c = a.zeros(4).unwrap();
    a.fill(&mut c, 2.0).unwrap(); // c last used on a's stream
    must_fire("a GEMM on b's stream writing a buffer a's stream last wrote", || {
        b.gemm(false, false, 2, 2, 3, 1.0, &x, &w, 0.0, &mut c)
    });
    // On its own stream the same GEMM is accepted.
    a.gemm(false, false, 2, 2, 3, 1.0, &x, &w, 0.0, &mut c).unwrap();
    assert_eq!(a.download(&c).unwrap(), vec![3.0; 4]);
}

/// While a stream captures a graph, what the driver refuses during capture is
/// refused: a copy to host memory (it would synchronise) and an allocation (it would
/// run once, at capture, not at every replay). The capture then still ends cleanly.
#[test]
fn host_copies_and_allocations_are_refused_while_capturing() {
    let Some(a) = emulated() else { return };
    let mut y = a.zeros(8).unwrap();
    assert!(a.begin_capture().unwrap());
    a.fill(&mut y, 1.0).unwrap(); // recorded, not run
    must_fire("a device-to-host copy while capturing", || a.download(&y));
    must_fire("an allocation while capturing", || a.zeros(8));
    let graph = a.end_capture().unwrap();
    assert_eq!(
        a.download(&y).unwrap(),
        vec![0.0; 8],
        "a captured fill ran at capture time"
    );
    a.launch_graph(&graph).unwrap();
    assert_eq!(a.download(&y).unwrap(), vec![1.0; 8], "the replay did not run the fill");
}

/// `concurrently`'s branches run on separate streams ordered by events: independent
/// branches pass, and work after the join sees all their results, eagerly and as
/// parallel graph branches. A branch that reads what another writes (or writes what
/// another reads) breaks `concurrently`'s contract and would race on a GPU: the
/// emulator refuses it, and the branches are still joined (a capture ends cleanly).
#[test]
fn branches_are_ordered_by_events_and_races_between_them_are_errors() {
    let Some(cuda) = emulated_with_two_lanes() else { return };
    let x = cuda.upload(&[1.0, 2.0, 3.0]).unwrap();
    let (mut y, mut z) = (cuda.zeros(3).unwrap(), cuda.zeros(3).unwrap());
    // y = 2x and z = 3x side by side (the caller adds z = y + z after the join).
    let independent = |y: &mut _, z: &mut _| {
        let mut outs = [Some(y), Some(z)];
        cuda.concurrently(2, &mut |i| cuda.axpby(2.0 + i as f64, &x, 0.0, outs[i].take().unwrap()))
    };
    independent(&mut y, &mut z).unwrap();
    cuda.axpby(1.0, &y, 1.0, &mut z).unwrap();
    assert_eq!(cuda.download(&z).unwrap(), vec![5.0, 10.0, 15.0]);
    // The same as a captured graph, replayed twice: z = 5x again each time.
    assert!(cuda.begin_capture().unwrap());
    independent(&mut y, &mut z).unwrap();
    cuda.axpby(1.0, &y, 1.0, &mut z).unwrap();
    let graph = cuda.end_capture().unwrap();
    for _ in 0..2 {
        cuda.fill(&mut z, f64::NAN).unwrap();
        cuda.launch_graph(&graph).unwrap();
        assert_eq!(cuda.download(&z).unwrap(), vec![5.0, 10.0, 15.0]);
    }
    // Branch 1 reads y while branch 0 writes it; then the other way round.
    must_fire("a branch reading what another branch writes", || {
        cuda.concurrently(2, &mut |i| match i {
            0 => cuda.axpby(1.0, &x, 0.0, &mut y),
            _ => cuda.axpby(1.0, &y, 0.0, &mut z),
        })
    });
    must_fire("a branch writing what another branch reads", || {
        cuda.concurrently(2, &mut |i| match i {
            0 => cuda.axpby(1.0, &y, 0.0, &mut z),
            _ => cuda.axpby(1.0, &x, 0.0, &mut y),
        })
    });
    // Joined despite the errors: the backend's stream sees both branches' work.
    cuda.axpby(1.0, &x, 1.0, &mut y).unwrap();
    assert!(cuda.download(&y).is_ok());
}

/// `concurrently` balances its branches over the lanes by the work each has queued
/// since the fork: one long branch (three operations) and two short ones on two
/// lanes put both short ones beside the long one, so a captured graph's longest chain
/// is the long branch and the operation after the join (4 of 6 nodes), not 5 as it
/// would be with the short branches dealt out in turn.
#[test]
fn branches_are_balanced_by_queued_work() {
    let Some(cuda) = emulated_with_two_lanes() else { return };
    let x = cuda.upload(&[1.0, 2.0]).unwrap();
    let mut ys: Vec<_> = (0..3).map(|_| cuda.zeros(2).unwrap()).collect();
    let mut z = cuda.zeros(2).unwrap();
    assert!(cuda.begin_capture().unwrap());
    {
        let mut outs: Vec<_> = ys.iter_mut().collect();
        cuda.concurrently(3, &mut |i| {
            let y = &mut *outs[i];
            let ops = if i == 0 { 3 } else { 1 };
            (0..ops).try_for_each(|_| cuda.axpby(1.0, &x, 1.0, y))
        })
        .unwrap();
    }
    cuda.axpby(1.0, &ys[2], 0.0, &mut z).unwrap();
    let graph = cuda.end_capture().unwrap();
    // Other tests in this process may replay graphs at the same time: replay until
    // one replay's counts are this graph's alone (6 nodes).
    let mut replays = 0.0;
    let mut got = (0, 0);
    while got.0 != 6 && replays < 5.0 {
        let (n0, p0) = (counter("graph_nodes"), counter("graph_path_nodes"));
        cuda.launch_graph(&graph).unwrap();
        replays += 1.0;
        got = (counter("graph_nodes") - n0, counter("graph_path_nodes") - p0);
    }
    assert_eq!(got, (6, 4), "(nodes, longest chain) of the captured branches");
    assert_eq!(cuda.download(&ys[0]).unwrap(), vec![3.0 * replays, 6.0 * replays]);
    assert_eq!(cuda.download(&z).unwrap(), vec![replays, 2.0 * replays]);
}

/// A `concurrently` inside a branch runs its branches in order on that branch's
/// lane: two nested one-operation branches and one outer one-operation branch on two
/// lanes give a chain of 3 of 4 nodes (the nested pair, then the operation after the
/// join), and the results are those of running everything in order.
#[test]
fn nested_branches_run_in_order() {
    let Some(cuda) = emulated_with_two_lanes() else { return };
    let x = cuda.upload(&[1.0, 2.0]).unwrap();
    let (mut y, mut z) = (cuda.zeros(2).unwrap(), cuda.zeros(2).unwrap());
    assert!(cuda.begin_capture().unwrap());
    cuda.concurrently(2, &mut |i| match i {
        // y = x, then y = 2y: in order, on one lane.
        0 => cuda.concurrently(2, &mut |j| match j {
            0 => cuda.axpby(1.0, &x, 0.0, &mut y),
            _ => cuda.axpby(1.0, &x, 1.0, &mut y),
        }),
        _ => cuda.axpby(3.0, &x, 0.0, &mut z),
    })
    .unwrap();
    cuda.axpby(1.0, &y, 1.0, &mut z).unwrap(); // z = 3x + 2x
    let graph = cuda.end_capture().unwrap();
    let mut got = (0, 0);
    for _ in 0..5 {
        let (n0, p0) = (counter("graph_nodes"), counter("graph_path_nodes"));
        cuda.launch_graph(&graph).unwrap();
        got = (counter("graph_nodes") - n0, counter("graph_path_nodes") - p0);
        if got.0 == 4 {
            break;
        }
    }
    assert_eq!(got, (4, 3), "(nodes, longest chain) of the nested branches");
    assert_eq!(cuda.download(&z).unwrap(), vec![5.0, 10.0]);
}
