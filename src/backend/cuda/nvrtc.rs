//! Run-time compilation of the kernels (`kernels/*.cu`, embedded by `build.rs`) with
//! NVRTC, for one GPU architecture, with a PTX disk cache.
//!
//! Only NVRTC is needed here — no GPU, no driver — so CI can compile every kernel.
//! Options: `--gpu-architecture=<arch>` and `-default-device`; never
//! `--use_fast_math` (IEEE division, square root and denormals keep the kernels within
//! rounding of the CPU backend).
//!
//! Cache: `$MEP_PTX_CACHE`, else `$XDG_CACHE_HOME/mep/ptx`, else `$HOME/.cache/mep/ptx`;
//! one file per (source, arch, NVRTC version, options), named by a SHA-256 of those.
//! Each file starts with a line holding the SHA-256 of the PTX after it, and is used
//! only when that checksum matches (a file truncated by a full disk or overwritten by
//! a concurrent writer is recompiled, never loaded); files are written to a unique
//! temporary name and renamed into place. Cache failures only cost a recompile.

use super::sources;
use crate::{MepError, Result};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use sha2::{Digest, Sha256};
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

/// Compiles one kernel source to PTX for `arch`, through the disk cache.
pub fn compile(name: &str, src: &str, arch: &str) -> Result<String> {
    compile_cached(name, src, arch, cache_dir().as_deref())
}

/// [`compile`] with an explicit cache directory (`None`: no cache).
pub fn compile_cached(name: &str, src: &str, arch: &str, cache: Option<&Path>) -> Result<String> {
    check_arch(arch)?;
    let version = nvrtc_version()?;
    let opts = options(arch);
    let mut h = Sha256::new();
    for part in [src, arch, &format!("{}.{}", version.0, version.1), &opts.join(" ")] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let key: String = h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect();
    let file = cache.map(|d| d.join(format!("{name}-{arch}-{key}.ptx")));
    if let Some(ptx) = file.as_deref().and_then(load_cached) {
        return Ok(ptx);
    }
    let ptx = no_panic("NVRTC", || {
        let opts = CompileOptions {
            options: opts,
            name: Some(format!("{name}.cu")),
            ..Default::default()
        };
        compile_ptx_with_opts(src, opts)
            .map(|p| p.to_src())
            .map_err(|e| MepError::Cuda(format!("NVRTC compiling {name}.cu for {arch}: {}", describe(&e))))
    })?;
    if let Some(file) = file {
        store(&file, &ptx);
    }
    Ok(ptx)
}

/// The first line of a cache file: this prefix, then the SHA-256 (hex) of the rest.
const CHECKSUM_PREFIX: &str = "// mep-ptx-sha256 ";

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The PTX of a cache file whose checksum line matches its contents, else `None`.
pub fn load_cached(file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let (first, body) = text.split_once('\n')?;
    let sum = first.strip_prefix(CHECKSUM_PREFIX)?;
    (sum == sha256_hex(body) && body.contains(".entry")).then(|| body.to_string())
}

/// An NVRTC error with its compile log, readable.
fn describe(e: &cudarc::nvrtc::CompileError) -> String {
    match e {
        cudarc::nvrtc::CompileError::CompileError { nvrtc, options, log } => {
            format!("{nvrtc:?} (options {options:?}):\n{}", log.to_string_lossy())
        }
        other => format!("{other:?}"),
    }
}

/// Writes a cache file (checksum line + PTX) atomically: a temporary name unique
/// to this process and call, then a rename. Errors are ignored (the cache is an
/// optimisation).
fn store(file: &Path, ptx: &str) {
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
    let text = format!("{CHECKSUM_PREFIX}{}\n{ptx}", sha256_hex(ptx));
    if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, file).is_ok() {
        return;
    }
    let _ = std::fs::remove_file(&tmp);
}

/// Compiles every kernel module (`sources::ALL`) for `arch` (e.g. `sm_90`), in
/// parallel, returning (module name, PTX) in `sources::ALL` order. Needs NVRTC only.
pub fn compile_all(arch: &str) -> Result<Vec<(String, String)>> {
    nvrtc_version()?;
    std::thread::scope(|s| {
        let jobs: Vec<_> = sources::ALL
            .iter()
            .map(|&(name, src)| s.spawn(move || compile(name, src, arch).map(|p| (name.to_string(), p))))
            .collect();
        jobs.into_iter()
            .map(|j| {
                j.join()
                    .unwrap_or_else(|_| Err(MepError::Cuda("NVRTC compile thread panicked".into())))
            })
            .collect()
    })
}
