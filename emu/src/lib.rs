//! `mep-emu`: an emulated GPU for CI machines without one. Built as a shared library
//! (`libmep_emu.so`) that `scripts/emulated-gpu.sh` links as `libcuda.so(.1)` and
//! `libcublas.so(.12/.13)` into a folder; with that folder first on
//! `LD_LIBRARY_PATH`, cudarc (feature `dynamic-loading`) loads it instead of the
//! NVIDIA driver and cuBLAS. NVRTC stays the real one, so the backend's PTX is real.
//!
//! It is strict where a GPU is unforgiving, and says so instead of crashing later:
//! - [`memory`]: device memory is host memory behind an allocation table, each
//!   allocation between inaccessible guard pages; out-of-bounds copies, use after
//!   free, double free are errors; fresh allocations are filled with NaN bytes.
//! - [`driver`]: modules parse the PTX `.entry` signatures ([`ptx`]); a launch
//!   checks its shape, context, stream and every argument (pointer arguments must
//!   point into live allocations, scalars must not look like device pointers, the
//!   PTX signature must match the host-compiled kernel's) and runs the kernel with
//!   `mep::backend::cuda::host::launch_raw`: one fiber per CUDA thread, random
//!   schedule, real barriers and shuffles.
//! - [`cublas`]: `cublasSgemm_v2` validates transposes, sizes, leading dimensions and
//!   operand extents, checks that no other stream's unordered work uses the
//!   operands (kernel launches get the same check: [`driver`]'s record of which
//!   streams used each allocation, ordered by events),
//!   NaN-fills C when β = 0, and computes in f64.
//!
//! Every check that fires is counted in [`Counters::errors`], printed on stderr and
//! returned to the caller as an error code (kernel failures are sticky, like a real
//! context after a fault). What the host pays is counted too (launches, cuBLAS calls,
//! copies, synchronisations, graph launches): read it with the exported
//! `mep_emu_counters`, or set `MEP_EMU_COUNTERS=FILE` to get it as one JSON object,
//! rewritten at every synchronisation and at exit.
//!
//! Settings: `MEP_EMU_TRACE=FILE` (one line per kernel or GEMM run, see [`trace`]),
//! `MEP_EMU_SMS` (multiprocessors reported, default 1 so that grids stay
//! small and grid-stride loops iterate), `MEP_SCHEDULE_SEED` (replay one schedule, and
//! one order of every graph replay), `MEP_EMU_GRAPH_ORDER=capture` (replay graphs in
//! capture order instead of a random order that respects their dependencies, see
//! [`graph`]).

pub mod cublas;
pub mod driver;
pub mod graph;
pub mod memory;
pub mod ptx;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What the host paid, and how many emulator checks fired.
pub struct Counters {
    /// `cuLaunchKernel` calls.
    pub launches: AtomicU64,
    /// cuBLAS calls that do work (GEMMs).
    pub cublas_calls: AtomicU64,
    /// Host-to-device copies.
    pub copies_htod: AtomicU64,
    /// Device-to-host copies.
    pub copies_dtoh: AtomicU64,
    /// Device-to-device copies.
    pub copies_dtod: AtomicU64,
    /// Memsets.
    pub memsets: AtomicU64,
    /// Stream, context and event synchronisations.
    pub syncs: AtomicU64,
    /// `cuGraphLaunch` calls.
    pub graph_launches: AtomicU64,
    /// Operations replayed by graph launches (kernels, copies, memsets, GEMMs).
    pub graph_nodes: AtomicU64,
    /// Of those, the ones on each replayed graph's longest chain of dependent
    /// operations (what a GPU cannot overlap; `graph_nodes` where a graph is one
    /// chain).
    pub graph_path_nodes: AtomicU64,
    /// Device allocations.
    pub allocs: AtomicU64,
    /// Device frees.
    pub frees: AtomicU64,
    /// Emulator checks that fired.
    pub errors: AtomicU64,
}

/// The process-wide counters.
pub static COUNTERS: Counters = Counters {
    launches: AtomicU64::new(0),
    cublas_calls: AtomicU64::new(0),
    copies_htod: AtomicU64::new(0),
    copies_dtoh: AtomicU64::new(0),
    copies_dtod: AtomicU64::new(0),
    memsets: AtomicU64::new(0),
    syncs: AtomicU64::new(0),
    graph_launches: AtomicU64::new(0),
    graph_nodes: AtomicU64::new(0),
    graph_path_nodes: AtomicU64::new(0),
    allocs: AtomicU64::new(0),
    frees: AtomicU64::new(0),
    errors: AtomicU64::new(0),
};

/// Counter names, in the order `mep_emu_counters` writes them.
pub const COUNTER_NAMES: [&str; 13] = [
    "launches",
    "cublas_calls",
    "copies_htod",
    "copies_dtoh",
    "copies_dtod",
    "memsets",
    "syncs",
    "graph_launches",
    "graph_nodes",
    "graph_path_nodes",
    "allocs",
    "frees",
    "errors",
];

fn counter_values() -> [u64; 13] {
    let c = &COUNTERS;
    [
        &c.launches,
        &c.cublas_calls,
        &c.copies_htod,
        &c.copies_dtoh,
        &c.copies_dtod,
        &c.memsets,
        &c.syncs,
        &c.graph_launches,
        &c.graph_nodes,
        &c.graph_path_nodes,
        &c.allocs,
        &c.frees,
        &c.errors,
    ]
    .map(|a| a.load(Relaxed))
}

/// Adds one to a counter.
pub(crate) fn count(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// An emulator check fired: counts it and says what on stderr (one line, prefixed
/// `mep-emu: error:` so scripts can find it).
pub(crate) fn check_failed(msg: &str) {
    count(&COUNTERS.errors);
    eprintln!("mep-emu: error: {msg}");
}

/// Appends one line to `$MEP_EMU_TRACE`, if set: what ran, in order (kernels with
/// their grid and block, GEMMs with their sizes), eager or replayed from a graph. For
/// reading a step's node list when deciding what to fuse.
pub(crate) fn trace(line: impl FnOnce() -> String) {
    use std::io::Write;
    static FILE: std::sync::OnceLock<Option<std::sync::Mutex<std::fs::File>>> = std::sync::OnceLock::new();
    let f = FILE.get_or_init(|| {
        let path = std::env::var_os("MEP_EMU_TRACE")?;
        std::fs::File::create(path).ok().map(std::sync::Mutex::new)
    });
    if let Some(f) = f {
        let _ = writeln!(f.lock().unwrap(), "{}", line());
    }
}

/// Writes the counters to `$MEP_EMU_COUNTERS` (JSON), if set; atomically (temporary
/// file + rename) so a reader never sees half a file.
pub(crate) fn write_counters_file() {
    let Some(path) = std::env::var_os("MEP_EMU_COUNTERS") else {
        return;
    };
    let fields: Vec<String> = COUNTER_NAMES
        .iter()
        .zip(counter_values())
        .map(|(n, v)| format!("\"{n}\":{v}"))
        .collect();
    let tmp = format!("{}.tmp.{}", path.to_string_lossy(), std::process::id());
    if std::fs::write(&tmp, format!("{{{}}}\n", fields.join(","))).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
}

/// Copies up to `len` counters (in [`COUNTER_NAMES`] order) to `out`; returns how
/// many exist. For tests: `dlsym(libcuda, "mep_emu_counters")`.
///
/// # Safety
/// `out` must be valid for `len` writes (or `len` = 0).
#[no_mangle]
pub unsafe extern "C" fn mep_emu_counters(out: *mut u64, len: usize) -> usize {
    let v = counter_values();
    for (i, x) in v.iter().enumerate().take(len) {
        *out.add(i) = *x;
    }
    v.len()
}

/// The counter names, comma-separated, NUL-terminated ([`COUNTER_NAMES`]; a unit
/// test checks that they agree).
#[no_mangle]
pub extern "C" fn mep_emu_counter_names() -> *const std::ffi::c_char {
    c"launches,cublas_calls,copies_htod,copies_dtoh,copies_dtod,memsets,syncs,graph_launches,graph_nodes,graph_path_nodes,allocs,frees,errors"
        .as_ptr()
}

#[cfg(test)]
mod tests {
    #[test]
    fn exported_counter_names_match_the_table() {
        let exported = unsafe { std::ffi::CStr::from_ptr(super::mep_emu_counter_names()) };
        assert_eq!(exported.to_str().unwrap(), super::COUNTER_NAMES.join(","));
    }
}
