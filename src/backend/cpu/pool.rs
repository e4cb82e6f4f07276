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
//!
//! The job's generation, task count and next unclaimed task share one atomic word,
//! so a claim is checked against the count of the job it claims from. (With the
//! count in a word of its own, a helper that had read the last job's exhausted
//! state and then the next job's larger count could claim a task of the next job
//! before it was published, and run it twice, once uncounted: CI saw
//! `panels_do_not_change_results` compare a product still being written.)

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a helper spins after its last task before it parks. Long enough to
/// bridge the serial stretches inside a training step (tens of µs between parallel
/// GEMMs), short enough that an idle pool stops burning a core almost at once
/// (see BENCHMARKS.md §6 for the measurement).
const SPIN: Duration = Duration::from_micros(200);

/// Most threads per available core the CPU backend runs: oversubscription is allowed
/// (it is slower, not wrong), but a pool of thousands of spinning helpers per core
/// only looks hung.
pub(crate) const MAX_THREADS_PER_CORE: usize = 8;

/// The most threads the CPU backend runs: [`MAX_THREADS_PER_CORE`] × the available
/// cores, read once. (`available_parallelism` reads the cgroup's CPU quota files
/// on every call: about 35 µs in a container, which [`Pool::run`] paid on every
/// fork: a 2-task job cost 40 µs instead of well under one, and two threads ran
/// the seed epoch 1.4× slower than one on a Zen 3 VM, BENCHMARKS.md §6c.)
pub(crate) fn max_threads() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    MAX_THREADS_PER_CORE * *CORES.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Refuses a thread count of 0 or above [`max_threads`], naming the limit: for
/// `set_threads` (src/backend/cpu/mod.rs) to call before it builds rayon's pool.
pub(crate) fn check_threads(n: usize) -> crate::Result<()> {
    let max = max_threads();
    let cores = max / MAX_THREADS_PER_CORE;
    if n == 0 {
        return Err(crate::MepError::invalid("threads", n, "must be at least 1"));
    }
    if n > max {
        return Err(crate::MepError::invalid(
            "threads",
            n,
            format!(
                "at most {max} ({MAX_THREADS_PER_CORE} × the {cores} available core{}): more threads only take turns on the same cores",
                if cores == 1 { "" } else { "s" }
            ),
        ));
    }
    Ok(())
}

/// The job being run: a task body called with task indices `0..tasks`.
struct Job<'a> {
    body: &'a (dyn Fn(usize) + Sync),
}

/// Most tasks in one job (the width of a [`State`] field); [`Pool::run`] splits
/// larger calls into several jobs.
const MAX_TASKS: usize = 0xFFFF;

/// The shared job word: bits 63–32 the generation, 31–16 the task count, 15–0 the
/// next unclaimed task (at most the count, so claiming never carries into it).
#[derive(Clone, Copy)]
struct State(u64);

impl State {
    fn new(gen: u64, tasks: usize) -> State {
        State(gen << 32 | (tasks as u64) << 16)
    }
    fn gen(self) -> u64 {
        self.0 >> 32
    }
    fn tasks(self) -> usize {
        (self.0 >> 16 & 0xFFFF) as usize
    }
    fn next(self) -> usize {
        (self.0 & 0xFFFF) as usize
    }
}

struct Shared {
    /// The current job's [`State`].
    state: AtomicU64,
    /// The current job (valid while a task of the current generation is unfinished).
    job: AtomicPtr<Job<'static>>,
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
        if tasks > MAX_TASKS {
            for base in (0..tasks).step_by(MAX_TASKS) {
                let n = MAX_TASKS.min(tasks - base);
                self.run(threads, n, &|i| body(base + i));
            }
            return;
        }
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
        sh.done.store(0, Relaxed);
        #[cfg(test)]
        tests::race_window();
        let gen = (State(sh.state.load(Relaxed)).gen() + 1) & 0xFFFF_FFFF;
        // Publishes job and done (release) and is ordered before the `parked`
        // check (SeqCst), pairing with `park`.
        sh.state.store(State::new(gen, tasks).0, SeqCst);
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
        // A larger rayon pool (built outside `set_threads`) still gets at most
        // `max_threads()` threads here: the caller runs the tasks nobody claims.
        let want = want.min(max_threads() - 1);
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
        let st = State(s);
        let idx = st.next();
        if st.gen() != gen || idx >= st.tasks() {
            return ran;
        }
        #[cfg(test)]
        tests::race_window();
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
    let mut seen = State(sh.state.load(Acquire)).gen();
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        let gen = loop {
            let g = State(sh.state.load(Acquire)).gen();
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
        let g = State(sh.state.load(SeqCst)).gen();
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

    /// Set by a test that wants the pool's racy stretches widened.
    static WIDEN: AtomicBool = AtomicBool::new(false);

    /// A pause of a few µs, varying from call to call, at the points where the
    /// pool's threads race (between reading the job word and claiming from it,
    /// between writing a job and publishing it), while [`WIDEN`] is set.
    pub(super) fn race_window() {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        if WIDEN.load(Relaxed) {
            let c = CALLS.fetch_add(1, Relaxed).wrapping_mul(2_654_435_761) >> 7;
            for _ in 0..c % 2000 {
                std::hint::spin_loop();
            }
        }
    }

    /// A thread count far above the cores is refused by name, and a pool asked for
    /// one anyway (a rayon pool built elsewhere) spawns at most `max_threads() − 1`
    /// helpers and still runs every task once.
    #[test]
    fn thread_counts_are_bounded_by_the_cores() {
        let max = max_threads();
        assert!(check_threads(max).is_ok() && check_threads(1).is_ok());
        for n in [0, max + 1, 100_000] {
            let err = check_threads(n).unwrap_err().to_string();
            assert!(err.contains("`threads`") && err.contains(&n.to_string()), "{err}");
        }
        assert!(check_threads(max + 1)
            .unwrap_err()
            .to_string()
            .contains(&format!("at most {max}")));
        let runs: Vec<AtomicUsize> = (0..64).map(|_| AtomicUsize::new(0)).collect();
        pool().run(100_000, runs.len(), &|t| {
            runs[t].fetch_add(1, Relaxed);
        });
        assert!(runs.iter().all(|r| r.load(Relaxed) == 1));
        let helpers = *pool().helpers.lock().unwrap();
        assert!(helpers < max, "{helpers} helpers for at most {max} threads");
    }

    /// Back-to-back jobs whose task counts grow and shrink, with the racy
    /// stretches widened: every task runs exactly once, and `run` returns only
    /// after the last has finished. (With the task count in a word of its own, a
    /// helper claimed a task of the next job before it was published: this test
    /// failed at once on that pool, a helper running a task index past its job's
    /// count.)
    #[test]
    fn back_to_back_jobs_run_each_task_once_and_are_waited_for() {
        WIDEN.store(true, Relaxed);
        let mut bad = Vec::new();
        for job in 0..20_000usize {
            let tasks = 2 + job % 4;
            let runs: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            pool().run(3, tasks, &|t| {
                // Finish late enough for an early return to be seen.
                for _ in 0..(t * 37 + job) % 300 {
                    std::hint::spin_loop();
                }
                runs[t].fetch_add(1, Relaxed);
            });
            let counts: Vec<usize> = runs.iter().map(|r| r.load(Relaxed)).collect();
            if counts.iter().any(|&c| c != 1) {
                bad.push((job, counts));
            }
        }
        WIDEN.store(false, Relaxed);
        assert!(
            bad.is_empty(),
            "{} of 20000 jobs ran a task other than once, e.g. {:?}",
            bad.len(),
            &bad[..bad.len().min(3)]
        );
    }

    /// A call with more tasks than one job holds runs as several jobs.
    #[test]
    fn more_tasks_than_one_job_holds_all_run_once() {
        let tasks = MAX_TASKS * 2 + 7;
        let runs: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
        pool().run(2, tasks, &|t| {
            runs[t].fetch_add(1, Relaxed);
        });
        assert!(runs.iter().all(|r| r.load(Relaxed) == 1));
    }

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
