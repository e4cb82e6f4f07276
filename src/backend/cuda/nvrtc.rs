//! Run-time compilation of the kernels (`kernels/*.cu`, embedded by `build.rs`) with
//! NVRTC, for one GPU architecture, to PTX and (for a real architecture, `sm_XX`)
//! cubin, with a disk cache.
//!
//! Only NVRTC is needed here — no GPU, no driver — so CI can compile every kernel.
//! Options: `--gpu-architecture=<arch>` and `-default-device`; never
//! `--use_fast_math` (IEEE division, square root and denormals keep the kernels within
//! rounding of the CPU backend).
//!
//! Cache: `$MEP_PTX_CACHE`, else `$XDG_CACHE_HOME/mep/ptx`, else `$HOME/.cache/mep/ptx`;
//! one `.ptx` and one `.cubin` file per (source, arch, NVRTC version, options), named
//! by a SHA-256 of those.
//! Each file starts with a line holding the SHA-256 of the PTX after it, and is used
//! only when that checksum matches (a file truncated by a full disk or overwritten by
//! a concurrent writer is recompiled, never loaded); files are written to a unique
//! temporary name and renamed into place. Cache failures only cost a recompile.

use super::sources;
use crate::{MepError, Result};
use sha2::{Digest, Sha256};
use std::ffi::{CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Runs `f`, turning a panic (cudarc panics when a library or symbol is missing)
/// into `MepError::CudaUnavailable`.
pub(crate) fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(MepError::CudaUnavailable(format!("{what}: {msg}")))
    })
}

/// True when the NVRTC shared library can be loaded (never panics).
pub fn nvrtc_available() -> bool {
    catch_unwind(|| unsafe { cudarc::nvrtc::sys::is_culib_present() }).unwrap_or(false)
}

/// NVRTC's (major, minor) version, or `CudaUnavailable` when NVRTC cannot be loaded.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_available() {
        return Err(MepError::CudaUnavailable(
            "NVRTC (libnvrtc.so.13) not found; put its directory on LD_LIBRARY_PATH (scripts/install-nvrtc.sh installs it from PyPI)".into(),
        ));
    }
    no_panic("NVRTC", || {
        let (mut major, mut minor) = (0, 0);
        let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
        if r != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(MepError::Cuda(format!("nvrtcVersion failed: {r:?}")));
        }
        Ok((major, minor))
    })
}

/// The NVRTC options used for `arch` (e.g. `sm_90`).
fn options(arch: &str) -> Vec<String> {
    vec![format!("--gpu-architecture={arch}"), "-default-device".into()]
}

/// The PTX cache directory, if one can be named.
pub fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("MEP_PTX_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("mep").join("ptx")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("mep").join("ptx")))
}

fn check_arch(arch: &str) -> Result<()> {
    let ok = ["sm_", "compute_"].iter().any(|p| {
        arch.strip_prefix(p)
            .is_some_and(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric()))
    });
    if ok {
        Ok(())
    } else {
        Err(MepError::invalid(
            "arch",
            arch,
            "use a GPU architecture like sm_80 or sm_90",
        ))
    }
}

/// One kernel module compiled for one architecture: its PTX, and the cubin (machine
/// code) NVRTC also produces for a real architecture (`sm_XX`), when it did.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The PTX (loadable by any driver new enough for this NVRTC).
    pub ptx: String,
    /// The cubin for exactly this architecture (no JIT at load time).
    pub cubin: Option<Vec<u8>>,
}

/// Compiles one kernel source to PTX for `arch`, through the disk cache.
pub fn compile(name: &str, src: &str, arch: &str) -> Result<String> {
    compile_module(name, src, arch, cache_dir().as_deref()).map(|c| c.ptx)
}

/// [`compile`] with an explicit cache directory (`None`: no cache).
pub fn compile_cached(name: &str, src: &str, arch: &str, cache: Option<&Path>) -> Result<String> {
    compile_module(name, src, arch, cache).map(|c| c.ptx)
}

/// Compiles one kernel source for `arch` to PTX and (for `sm_XX`) a cubin, through
/// the cache directory `cache` (`None`: no cache).
pub fn compile_module(name: &str, src: &str, arch: &str, cache: Option<&Path>) -> Result<Compiled> {
    check_arch(arch)?;
    let version = nvrtc_version()?;
    let opts = options(arch);
    let mut h = Sha256::new();
    for part in [src, arch, &format!("{}.{}", version.0, version.1), &opts.join(" ")] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let key: String = h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect();
    let file = |ext: &str| cache.map(|d| d.join(format!("{name}-{arch}-{key}.{ext}")));
    let (ptx_file, cubin_file) = (file("ptx"), file("cubin"));
    if let Some(ptx) = ptx_file.as_deref().and_then(load_cached) {
        let cubin = cubin_file.as_deref().and_then(load_cached_bytes);
        // A real architecture's cubin belongs in the cache too; without it, recompile.
        if cubin.is_some() || !arch.starts_with("sm_") {
            return Ok(Compiled { ptx, cubin });
        }
    }
    let compiled = no_panic("NVRTC", || run_nvrtc(name, src, arch, &opts))?;
    if let Some(f) = ptx_file {
        store(&f, compiled.ptx.as_bytes());
    }
    if let (Some(f), Some(c)) = (cubin_file, compiled.cubin.as_ref()) {
        store(&f, c);
    }
    Ok(compiled)
}

/// One NVRTC compilation: PTX, the cubin when NVRTC made one, or the compile log as
/// the error.
fn run_nvrtc(name: &str, src: &str, arch: &str, opts: &[String]) -> Result<Compiled> {
    use cudarc::nvrtc::{result, sys};
    let err = |what: &str, e: &dyn std::fmt::Debug| MepError::Cuda(format!("NVRTC {what} {name}.cu for {arch}: {e:?}"));
    let c_src = CString::new(src).map_err(|e| err("reading", &e))?;
    let c_name = CString::new(format!("{name}.cu")).map_err(|e| err("naming", &e))?;
    let prog = result::create_program(&c_src, Some(&c_name)).map_err(|e| err("creating a program for", &e))?;
    // SAFETY: `prog` is live until destroy_program below; c_src/c_name outlive it.
    let out = unsafe {
        match result::compile_program(prog, opts) {
            Err(e) => {
                let log = result::get_program_log(prog)
                    .map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned())
                    .unwrap_or_default();
                Err(MepError::Cuda(format!(
                    "NVRTC compiling {name}.cu for {arch}: {e:?} (options {opts:?}):\n{log}"
                )))
            }
            Ok(()) => result::get_ptx(prog)
                .map_err(|e| err("reading the PTX of", &e))
                .map(|p| CStr::from_ptr(p.as_ptr()).to_string_lossy().into_owned())
                .map(|ptx| {
                    let mut size = 0usize;
                    let cubin = (sys::nvrtcGetCUBINSize(prog, &mut size) == sys::nvrtcResult::NVRTC_SUCCESS
                        && size > 0)
                        .then(|| {
                            let mut buf = vec![0u8; size];
                            (sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut std::ffi::c_char)
                                == sys::nvrtcResult::NVRTC_SUCCESS)
                                .then_some(buf)
                        })
                        .flatten();
                    Compiled { ptx, cubin }
                }),
        }
    };
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// The first line of a cache file: this prefix, then the SHA-256 (hex) of the rest.
const CHECKSUM_PREFIX: &str = "// mep-ptx-sha256 ";

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The contents of a cache file whose checksum line matches them, else `None`.
pub fn load_cached_bytes(file: &Path) -> Option<Vec<u8>> {
    let data = std::fs::read(file).ok()?;
    let nl = data.iter().position(|&b| b == b'\n')?;
    let sum = std::str::from_utf8(&data[..nl]).ok()?.strip_prefix(CHECKSUM_PREFIX)?;
    let body = &data[nl + 1..];
    (sum == sha256_hex(body)).then(|| body.to_vec())
}

/// The PTX of a cache file whose checksum line matches its contents, else `None`.
pub fn load_cached(file: &Path) -> Option<String> {
    let ptx = String::from_utf8(load_cached_bytes(file)?).ok()?;
    ptx.contains(".entry").then_some(ptx)
}

/// Writes a cache file (checksum line + contents) atomically: a temporary name
/// unique to this process and call, then a rename. Errors are ignored (the cache is
/// an optimisation).
fn store(file: &Path, body: &[u8]) {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let Some(dir) = file.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = file.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut text = format!("{CHECKSUM_PREFIX}{}\n", sha256_hex(body)).into_bytes();
    text.extend_from_slice(body);
    if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, file).is_ok() {
        return;
    }
    let _ = std::fs::remove_file(&tmp);
}

/// Compiles every kernel module (`sources::ALL`) for `arch` (e.g. `sm_90`), in
/// parallel, returning (module name, PTX) in `sources::ALL` order. Needs NVRTC only.
pub fn compile_all(arch: &str) -> Result<Vec<(String, String)>> {
    Ok(compile_all_modules(arch)?
        .into_iter()
        .map(|(n, c)| (n, c.ptx))
        .collect())
}

/// [`compile_all`] with the cubins: (module name, [`Compiled`]).
pub fn compile_all_modules(arch: &str) -> Result<Vec<(String, Compiled)>> {
    nvrtc_version()?;
    let cache = cache_dir();
    let cache = cache.as_deref();
    std::thread::scope(|s| {
        let jobs: Vec<_> = sources::ALL
            .iter()
            .map(|&(name, src)| s.spawn(move || compile_module(name, src, arch, cache).map(|p| (name.to_string(), p))))
            .collect();
        jobs.into_iter()
            .map(|j| {
                j.join()
                    .unwrap_or_else(|_| Err(MepError::Cuda("NVRTC compile thread panicked".into())))
            })
            .collect()
    })
}
