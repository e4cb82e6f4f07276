//! A low-latency fork–join pool for the CPU backend's small parallel work.
//!
//! A seed step runs ~20 dependent GEMMs of 1–30 µs each with element-wise work
//! between them. Waking a parked thread costs 20–40 µs on the 2-core VMs this crate
//! is developed on (a futex wake plus a trip through the scheduler), so rayon's
//! sleeping workers arrive after the job is over and two threads ran the seed epoch
//! only 1.17× faster than one (BENCHMARKS.md §1, §6). Here helpers *spin* on a
//! generation counter for [`SPIN`] after their last job before they park, so inside a
//! step a fork costs about one cache-line transfer.
//!
//! The caller always works too: it claims tasks from the same counter as the
//! helpers, so a helper that is late (parked, or descheduled on a loaded machine)
//! costs nothing but its share of parallelism: the caller runs the tasks nobody
//! claimed. Only a task a helper has already claimed is waited for.
//!
//! One job is in flight at a time; a nested call, or a call from a second thread
//! while a job runs, executes its tasks inline on the calling thread.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a helper spins after its last task before it parks. Long enough to
/// bridge the serial stretches inside a training step (tens of µs between parallel
/// GEMMs), short enough that an idle pool stops burning a core almost at once
/// (see BENCHMARKS.md §6 for the measurement).
const SPIN: Duration = Duration::from_micros(200);

/// The job being run: a task body called with task indices `0..tasks`.
struct Job<'a> {
    body: &'a (dyn Fn(usize) + Sync),
}

struct Shared {
    /// High 32 bits: the job's generation; low 32 bits: the next unclaimed task.
    state: AtomicU64,
    /// The current job (valid while a task of the current generation is unfinished).
    job: AtomicPtr<Job<'static>>,
    /// Tasks of the current job.
    tasks: AtomicUsize,
    /// Tasks of the current job finished by helpers so far.
    done: AtomicUsize,
    /// A job is in flight (held by its caller).
    busy: AtomicBool,
    /// Helpers parked on `wake`.
    parked: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    /// A task panicked in a helper; the caller re-raises it.
    panicked: AtomicBool,
}

/// The pool: helpers are spawned on demand, up to the largest fork asked for.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    helpers: Mutex<usize>,
    spawned: AtomicUsize,
}

/// The process-wide pool.
pub(crate) fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        shared: Arc::new(Shared {
            state: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            tasks: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            busy: AtomicBool::new(false),
            parked: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            panicked: AtomicBool::new(false),
        }),
        helpers: Mutex::new(0),
        spawned: AtomicUsize::new(0),
    })
}

impl Pool {
    /// Runs `body(i)` for every `i in 0..tasks`, on the calling thread and up to
    /// `threads − 1` helpers, and returns when all have finished. Which thread runs
    /// which task is not fixed, so `body` must give the same result wherever it runs
    /// (every use here writes disjoint outputs).
    pub(crate) fn run(&self, threads: usize, tasks: usize, body: &(dyn Fn(usize) + Sync)) {
        let sh = &*self.shared;
        if threads <= 1 || tasks <= 1 || sh.busy.compare_exchange(false, true, Acquire, Relaxed).is_err() {
            (0..tasks).for_each(body);
            return;
        }
        self.ensure_helpers(threads - 1);
        let job = Job { body };
        // SAFETY (lifetime erased): the pointer is only dereferenced by a thread that
        // has claimed a task of this generation, and this function does not return
        // (so `job` and `body` stay alive) until every claimed task has finished.
        let ptr = &job as *const Job<'_> as *mut Job<'static>;
        sh.job.store(ptr, Relaxed);
        sh.tasks.store(tasks, Relaxed);
        sh.done.store(0, Relaxed);
        let gen = ((sh.state.load(Relaxed) >> 32) + 1) & 0xFFFF_FFFF;
        // Publishes job, tasks and done (release) and is ordered before the
        // `parked` check (SeqCst), pairing with `park`.
        sh.state.store(gen << 32, SeqCst);
        if sh.parked.load(SeqCst) > 0 {
            let _g = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.wake.notify_all();
        }
        let mine = work(sh, gen);
        // Every task is claimed now; wait for those the helpers claimed.
        let mut spins = 0u32;
        while sh.done.load(Acquire) + mine < tasks {
            spins += 1;
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                // A helper was descheduled mid-task (a loaded machine): let it run.
                std::thread::yield_now();
            }
        }
        sh.job.store(std::ptr::null_mut(), Relaxed);
        let panicked = sh.panicked.swap(false, AcqRel);
        sh.busy.store(false, Release);
        if panicked {
            panic!("a CPU backend task panicked");
        }
    }

    fn ensure_helpers(&self, want: usize) {
        if self.spawned.load(Acquire) >= want {
            return;
        }
        let mut n = self.helpers.lock().unwrap_or_else(|e| e.into_inner());
        while *n < want {
            let sh = Arc::clone(&self.shared);
            let spawned = std::thread::Builder::new()
                .name(format!("mep-cpu-{}", *n + 1))
                .spawn(move || helper(&sh));
            if spawned.is_err() {
                // No more threads: the caller runs the unclaimed tasks itself.
                break;
            }
            *n += 1;
        }
        // Counted as enough even when spawning failed, so a refusal is not retried
        // on every call.
        self.spawned.store(want.max(*n), Release);
    }
}

/// Claims and runs tasks of generation `gen` until none is left; returns how many
/// this thread ran. A panicking task is caught (the job's other tasks must still be
/// waited for, since they borrow the caller's stack) and re-raised by the caller.
fn work(sh: &Shared, gen: u64) -> usize {
    let mut ran = 0;
    let mut s = sh.state.load(Acquire);
    loop {
        let idx = (s & 0xFFFF_FFFF) as usize;
        if s >> 32 != gen || idx >= sh.tasks.load(Relaxed) {
            return ran;
        }
        match sh.state.compare_exchange_weak(s, s + 1, AcqRel, Acquire) {
            Ok(_) => {
                // SAFETY: task `idx` of generation `gen` is claimed, so the caller of
                // `Pool::run` is waiting for it and `job` is alive.
                let body = unsafe { (*sh.job.load(Relaxed)).body };
                if catch_unwind(AssertUnwindSafe(|| body(idx))).is_err() {
                    sh.panicked.store(true, Release);
                }
                ran += 1;
                s = sh.state.load(Acquire);
            }
            Err(now) => s = now,
        }
    }
}

/// A helper thread: spin for the next generation, park after [`SPIN`] without one.
fn helper(sh: &Shared) {
    let mut seen = sh.state.load(Acquire) >> 32;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        let gen = loop {
            let g = sh.state.load(Acquire) >> 32;
            if g != seen {
                break g;
            }
            spins = spins.wrapping_add(1);
            if spins % 64 == 0 && start.elapsed() > SPIN {
                break park(sh, seen);
            }
            std::hint::spin_loop();
        };
        seen = gen;
        let ran = work(sh, gen);
        if ran > 0 {
            sh.done.fetch_add(ran, Release);
        }
    }
}

/// Parks until the generation differs from `seen`; returns the new one.
fn park(sh: &Shared, seen: u64) -> u64 {
    let mut guard = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
    sh.parked.fetch_add(1, SeqCst);
    loop {
        let g = sh.state.load(SeqCst) >> 32;
        if g != seen {
            sh.parked.fetch_sub(1, SeqCst);
            return g;
        }
        guard = sh.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every task runs exactly once, whatever the thread and task counts, including
    /// jobs arriving while helpers spin, after they park, and nested jobs.
    #[test]
    fn every_task_runs_exactly_once() {
        for threads in [1, 2, 3, 8] {
            for tasks in [0, 1, 2, 5, 64] {
                for pause in [0, 300] {
                    let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                    pool().run(threads, tasks, &|i| {
                        // A nested job runs inline on this thread.
                        let inner = AtomicUsize::new(0);
                        pool().run(threads, 3, &|_| {
                            inner.fetch_add(1, Relaxed);
                        });
                        assert_eq!(inner.load(Relaxed), 3);
                        hits[i].fetch_add(1, Relaxed);
                    });
                    assert!(
                        hits.iter().all(|h| h.load(Relaxed) == 1),
                        "{threads} threads, {tasks} tasks"
                    );
                    // Long enough for the helpers to park before the next job.
                    std::thread::sleep(Duration::from_micros(pause));
                }
            }
        }
    }

    /// Jobs from several threads at once: one runs on the pool, the others inline.
    #[test]
    fn concurrent_callers_each_get_their_tasks_done() {
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let sum = AtomicUsize::new(0);
                        pool().run(2, 16, &|i| {
                            sum.fetch_add(i, Relaxed);
                        });
                        assert_eq!(sum.load(Relaxed), (0..16).sum::<usize>());
                    }
                });
            }
        });
    }

    /// A panicking task re-raises on the caller, after the other tasks finished.
    #[test]
    fn a_panicking_task_panics_the_caller_and_the_pool_still_works() {
        let r = std::panic::catch_unwind(|| {
            pool().run(2, 4, &|i| {
                if i == 3 {
                    panic!("task 3");
                }
            })
        });
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool().run(2, 4, &|_| {
            n.fetch_add(1, Relaxed);
        });
        assert_eq!(n.load(Relaxed), 4);
    }
}
