//! The CUDA libraries the backend loads (driver, NVRTC, cuBLAS): the entry points it
//! needs from each, checked before cudarc is let near them, and the versions loaded.

use super::nvrtc;
use crate::{MepError, Result};
use cudarc::cublas::CudaBlas;

/// The driver entry points the backend reaches through cudarc (cudarc resolves each
/// on first use and panics when one is missing; checking them first keeps that panic,
/// and its text on stderr, from ever happening).
const DRIVER_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetName",
    "cuDeviceGetAttribute",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuStreamSynchronize",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamBeginCapture_v2",
    "cuStreamEndCapture",
    "cuGraphInstantiateWithFlags",
    "cuGraphLaunch",
    "cuGraphExecDestroy",
    "cuGraphDestroy",
    "cuStreamWaitEvent",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventDestroy_v2",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemAllocAsync",
    "cuMemFreeAsync",
    "cuMemsetD8Async",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuMemcpyDtoDAsync_v2",
    "cuModuleLoadData",
    "cuModuleGetFunction",
    "cuModuleUnload",
    "cuLaunchKernel",
    "cuGetErrorString",
    // Not called by the backend but by NVRTC 13, which dlopens the driver and calls
    // it; a libcuda without it makes NVRTC itself crash (found on the emulator).
    "cuGetExportTable",
];
/// The cuBLAS entry points the backend uses.
const CUBLAS_SYMBOLS: &[&str] = &[
    "cublasCreate_v2",
    "cublasDestroy_v2",
    "cublasSetStream_v2",
    "cublasSgemm_v2",
    "cublasGetVersion_v2",
    "cublasSetWorkspace_v2",
];
/// The NVRTC entry points the backend uses.
const NVRTC_SYMBOLS: &[&str] = &[
    "nvrtcVersion",
    "nvrtcCreateProgram",
    "nvrtcCompileProgram",
    "nvrtcGetPTXSize",
    "nvrtcGetPTX",
    "nvrtcGetProgramLogSize",
    "nvrtcGetProgramLog",
    "nvrtcDestroyProgram",
    "nvrtcGetCUBINSize",
    "nvrtcGetCUBIN",
];

/// Checks that the driver, NVRTC and cuBLAS libraries can be loaded and export every
/// entry point the backend calls (never panics, prints nothing).
pub(super) fn check_libraries() -> Result<()> {
    let present = |f: unsafe fn() -> bool| std::panic::catch_unwind(|| unsafe { f() }).unwrap_or(false);
    let libs: [(&str, bool, &[&str]); 3] = [
        (
            "the NVIDIA driver (libcuda.so)",
            present(cudarc::driver::sys::is_culib_present),
            DRIVER_SYMBOLS,
        ),
        (
            "NVRTC (libnvrtc.so.13)",
            present(cudarc::nvrtc::sys::is_culib_present),
            NVRTC_SYMBOLS,
        ),
        (
            "cuBLAS (libcublas.so.13)",
            present(cudarc::cublas::sys::is_culib_present),
            CUBLAS_SYMBOLS,
        ),
    ];
    let missing: Vec<&str> = libs.iter().filter(|(_, ok, _)| !ok).map(|(name, _, _)| *name).collect();
    if !missing.is_empty() {
        return Err(MepError::CudaUnavailable(format!("cannot load {}", missing.join(", "))));
    }
    // SAFETY: each library is present (checked above), so culib() returns it; `get`
    // only looks a symbol up.
    let lacks = |lib: &'static str, syms: &[&str]| -> Vec<String> {
        let l = unsafe {
            match lib {
                "driver" => cudarc::driver::sys::culib(),
                "nvrtc" => cudarc::nvrtc::sys::culib(),
                _ => cudarc::cublas::sys::culib(),
            }
        };
        syms.iter()
            .filter(|s| unsafe { l.get::<unsafe extern "C" fn()>(s.as_bytes()) }.is_err())
            .map(|s| format!("{lib} lacks {s}"))
            .collect()
    };
    let mut gaps = lacks("driver", DRIVER_SYMBOLS);
    gaps.extend(lacks("nvrtc", NVRTC_SYMBOLS));
    gaps.extend(lacks("cublas", CUBLAS_SYMBOLS));
    if gaps.is_empty() {
        Ok(())
    } else {
        Err(MepError::CudaUnavailable(format!(
            "the CUDA libraries are incomplete or too old: {}",
            gaps.join(", ")
        )))
    }
}

/// "13.0"-style version of a `major·1000 + minor·10` number.
fn cuda_version(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// The versions actually loaded: (driver API, NVRTC, cuBLAS), e.g. ("13.0", "13.0",
/// "13.0.0"). Unknown parts are "?".
pub(super) fn versions(blas: Option<&CudaBlas>) -> (String, String, String) {
    let mut d = 0;
    let driver = match unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut d) } {
        cudarc::driver::sys::CUresult::CUDA_SUCCESS => cuda_version(d),
        _ => "?".into(),
    };
    let nvrtc = nvrtc::nvrtc_version()
        .map(|(a, b)| format!("{a}.{b}"))
        .unwrap_or_else(|_| "?".into());
    let mut v = 0;
    let cublas = match blas.map(|b| unsafe { cudarc::cublas::sys::cublasGetVersion_v2(*b.handle(), &mut v) }) {
        Some(cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS) => {
            format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)
        }
        _ => "?".into(),
    };
    (driver, nvrtc, cublas)
}
