//! The CUDA backend: NVRTC-compiled kernels (`kernels/*.cu`) and cuBLAS SGEMM, all on
//! one stream, in f32.
//!
//! [`Cuda::new`] loads the CUDA libraries dynamically (driver, NVRTC, cuBLAS), creates
//! the context, stream and cuBLAS handle, compiles the kernels for the device's
//! architecture (cached on disk, see [`nvrtc`]) and loads them. Missing libraries or
//! devices become [`MepError::CudaUnavailable`]; nothing here panics (cudarc's panics
//! on missing libraries are probed for first and caught as a last resort).
//!
//! Every primitive only queues work on the stream — no host round trip — except the
//! `download*` functions, which wait for the copy.

pub mod fused;
pub mod gemm_map;
#[cfg(feature = "host-kernels")]
pub mod host;
pub mod nvrtc;
pub mod shapes;

/// The kernel sources, embedded by `build.rs` from `kernels/*.cu` with `common.cuh`
/// inlined: one `<NAME>_CU` constant per file, [`sources::ALL`] and
/// [`sources::ENTRIES`].
pub mod sources {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

use self::gemm_map::{gemm_map, Operand};
use self::nvrtc::no_panic;
use super::Backend;
use crate::nn::activation::ActChain;
use crate::{Loss, MepError, Result};
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::Arc;

use self::shapes::{Shape, ROW_BLOCK};

/// The CUDA backend (f32). Cloning is cheap: clones share the context, stream,
/// cuBLAS handle and kernels.
#[derive(Clone)]
pub struct Cuda {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: HashMap<&'static str, CudaFunction>,
    name: String,
    /// Most blocks a grid-stride launch uses (32 per multiprocessor).
    max_blocks: u32,
    /// Per-block partial sums of the two-pass reductions (2 × `max_blocks` floats).
    /// Every use is queued on the one stream, so clones sharing it never overlap.
    partials: std::sync::Mutex<CudaSlice<f32>>,
    /// cuBLAS's workspace (`cublasSetWorkspace`): owned here so that it outlives
    /// every GEMM queued with the handle.
    _blas_workspace: CudaSlice<u8>,
    /// Use the fused phase kernels where they fit ([`Cuda::set_fused`]).
    fused: std::sync::atomic::AtomicBool,
}

/// Bytes of the cuBLAS workspace.
const BLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// A driver/cuBLAS error as [`MepError::Cuda`].
fn cuda_err<E: std::fmt::Debug>(what: &'static str) -> impl FnOnce(E) -> MepError {
    move |e| MepError::Cuda(format!("{what}: {e:?}"))
}

/// A driver error during set-up as [`MepError::CudaUnavailable`].
fn unavailable<E: std::fmt::Debug>(what: &'static str) -> impl FnOnce(E) -> MepError {
    move |e| MepError::CudaUnavailable(format!("{what}: {e:?}"))
}

/// `got ≥ want`, else a [`MepError::Shape`] naming the buffer.
pub(crate) fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got < want {
        return Err(MepError::Shape(format!(
            "{what}: buffer has {got} elements, needs {want}"
        )));
    }
    Ok(())
}

/// rows·cols, or a [`MepError::Shape`] on overflow.
fn elems(what: &str, rows: usize, cols: usize) -> Result<usize> {
    rows.checked_mul(cols)
        .ok_or_else(|| MepError::Shape(format!("{what}: {rows}×{cols} overflows")))
}

/// A dimension as `u32` (kernel argument), or a [`MepError::Shape`].
fn dim32(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| MepError::Shape(format!("{what}: {v} exceeds the kernels' 32-bit limit")))
}

/// Describes CUDA device `ordinal`, e.g. `cuda:0 (NVIDIA H200, sm_90)`; the same as
/// [`Cuda::probe`]. Never panics: missing libraries or devices are
/// [`MepError::CudaUnavailable`].
pub fn probe(ordinal: usize) -> Result<String> {
    Cuda::probe(ordinal)
}

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
fn check_libraries() -> Result<()> {
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
fn versions(blas: Option<&CudaBlas>) -> (String, String, String) {
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

/// Creates the context of device `ordinal`, checking the ordinal first.
fn open_context(ordinal: usize) -> Result<Arc<CudaContext>> {
    check_libraries()?;
    let count = CudaContext::device_count().map_err(unavailable("cuInit / device count"))?;
    if ordinal >= count.max(0) as usize {
        return Err(MepError::CudaUnavailable(format!(
            "no CUDA device {ordinal} ({count} found)"
        )));
    }
    CudaContext::new(ordinal).map_err(unavailable("creating the CUDA context"))
}

/// (`NVIDIA H200`, `sm_90`) of a context's device.
fn device_info(ctx: &Arc<CudaContext>) -> Result<(String, String)> {
    let name = ctx.name().map_err(unavailable("device name"))?;
    let (major, minor) = ctx.compute_capability().map_err(unavailable("compute capability"))?;
    Ok((name, format!("sm_{major}{minor}")))
}

/// Pushes kernel arguments and launches `$name` on the backend's stream. Arguments are
/// expressions of reference type (`&u32`, `&CudaSlice<f32>`, `&mut CudaSlice<f32>`).
macro_rules! launch {
    ($self:ident, $name:literal, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        let f = $self.kernel($name)?;
        let mut b = $self.inner.stream.launch_builder(f);
        $( b.arg($arg); )*
        unsafe { b.launch($cfg) }
            .map(|_| ())
            .map_err(|e| MepError::Cuda(format!("launching {}: {e:?}", $name)))
    }};
}

impl Cuda {
    /// Opens device `ordinal`: loads the CUDA libraries, creates a context, a stream
    /// and a cuBLAS handle, and compiles (or reads from the PTX cache) and loads the
    /// kernels. [`MepError::CudaUnavailable`] when the libraries, the device or a
    /// driver new enough for NVRTC 13's PTX is missing.
    ///
    /// Each backend has a stream of its own, and orders only its own work: a buffer
    /// belongs to the backend that made it (models, optimizers and uploaded data
    /// sets each stay on theirs), so two backends of one device never race.
    pub fn new(ordinal: usize) -> Result<Cuda> {
        no_panic("initialising CUDA", || Self::open(ordinal))
    }

    fn open(ordinal: usize) -> Result<Cuda> {
        let ctx = open_context(ordinal)?;
        let (dev, arch) = device_info(&ctx)?;
        let sms = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .unwrap_or(16);
        // Everything is queued on one stream, so cudarc's per-buffer events (which order
        // work across streams) would only add a driver call to every launch; and graph
        // capture needs a stream of its own (the legacy default stream cannot capture).
        // SAFETY: no buffer of this context is ever used from a second stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(unavailable("creating a stream"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(unavailable("creating the cuBLAS handle"))?;
        // cuBLAS's own workspace, given explicitly so that a GEMM never allocates: one
        // captured into a graph must not (the capture would fail or bake in a
        // temporary). 32 MiB is what NVIDIA recommends for Hopper.
        let blas_workspace = stream
            .alloc_zeros::<u8>(BLAS_WORKSPACE_BYTES)
            .map_err(unavailable("allocating the cuBLAS workspace"))?;
        {
            let (ptr, _sync) = blas_workspace.device_ptr(&stream);
            // SAFETY: the handle is live; the workspace is BLAS_WORKSPACE_BYTES of device
            // memory (256-byte aligned, as every allocation), kept alive in `Inner`
            // beside the handle.
            let status = unsafe {
                cudarc::cublas::sys::cublasSetWorkspace_v2(
                    *blas.handle(),
                    ptr as *mut std::ffi::c_void,
                    BLAS_WORKSPACE_BYTES,
                )
            };
            if status != cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(MepError::CudaUnavailable(format!(
                    "setting the cuBLAS workspace: {status:?}"
                )));
            }
        }
        let mut kernels = HashMap::new();
        // An architecture this NVRTC cannot target (e.g. pre-Turing under CUDA 13) makes
        // CUDA unusable rather than broken.
        let modules = nvrtc::compile_all_modules(&arch).map_err(|e| match e {
            MepError::Cuda(m) => MepError::CudaUnavailable(m),
            e => e,
        })?;
        // Cubin for this exact architecture first (no JIT, nothing left to the driver's
        // PTX compiler); PTX where the driver refuses the cubin or NVRTC made none.
        let mut code = "cubin";
        for (module_name, compiled) in modules {
            let from_cubin = compiled.cubin.and_then(|c| ctx.load_module(Ptx::from_binary(c)).ok());
            let module = match from_cubin {
                Some(m) => m,
                None => {
                    code = "PTX";
                    ctx.load_module(Ptx::from_src(compiled.ptx)).map_err(|e| {
                        MepError::CudaUnavailable(format!(
                            "loading the {module_name} kernels for {arch}: {e:?} (the driver may be older than NVRTC 13; update it to CUDA 13 or newer)"
                        ))
                    })?
                }
            };
            let names = sources::ENTRIES
                .iter()
                .find(|(m, _)| *m == module_name)
                .map(|(_, n)| *n)
                .unwrap_or(&[]);
            for &kname in names {
                let f = module
                    .load_function(kname)
                    .map_err(cuda_err("loading a kernel function"))?;
                kernels.insert(kname, f);
            }
        }
        let (dv, nv, bv) = versions(Some(&blas));
        let name = format!("cuda:{ordinal} ({dev}, {arch} {code}; driver {dv}, NVRTC {nv}, cuBLAS {bv})");
        let max_blocks = (sms.max(1) as u32).saturating_mul(32);
        let partials = stream
            .alloc_zeros::<f32>(2 * max_blocks as usize)
            .map_err(unavailable("allocating the reduction scratch"))?;
        Ok(Cuda {
            inner: Arc::new(Inner {
                ctx,
                stream,
                blas,
                kernels,
                name,
                max_blocks,
                partials: std::sync::Mutex::new(partials),
                _blas_workspace: blas_workspace,
                fused: std::sync::atomic::AtomicBool::new(
                    std::env::var("MEP_CUDA_FUSED").map_or(true, |v| v.trim() != "0"),
                ),
            }),
        })
    }

    /// Describes device `ordinal`, e.g. `cuda:0 (NVIDIA H200, sm_90; driver 13.0,
    /// NVRTC 13.0)`, after proving it usable: the probe kernel (`kernels/probe.cu`) is
    /// compiled with NVRTC (through the PTX cache), loaded by the driver, launched and
    /// its output checked. Never panics: missing libraries or devices, a module the
    /// driver refuses or a wrong result are [`MepError::CudaUnavailable`].
    pub fn probe(ordinal: usize) -> Result<String> {
        no_panic("probing CUDA", || {
            let ctx = open_context(ordinal)?;
            let (dev, arch) = device_info(&ctx)?;
            probe_kernel(&ctx, &arch)?;
            let (dv, nv, _) = versions(None);
            Ok(format!("cuda:{ordinal} ({dev}, {arch}; driver {dv}, NVRTC {nv})"))
        })
    }

    /// The device's context (for callers that need raw cudarc access).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.inner.ctx
    }

    /// The stream every primitive is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    fn kernel(&self, name: &str) -> Result<&CudaFunction> {
        self.inner
            .kernels
            .get(name)
            .ok_or_else(|| MepError::Cuda(format!("kernel `{name}` was not loaded")))
    }

    /// Second pass of the deterministic reductions: `out[k] (+)= Σ_b partials[b·width + k]`
    /// over `blocks` partials, in a fixed order (one block, `reduce_partials`).
    fn reduce_partials(
        &self,
        blocks: u32,
        width: u32,
        partials: &CudaSlice<f32>,
        accumulate: bool,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let acc = u32::from(accumulate);
        launch!(
            self,
            "reduce_partials",
            config(shapes::grid_1d(1, 1)),
            [&blocks, &width, partials, &acc, out]
        )
    }

    /// 1-D grid-stride launch shape for `n` elements.
    fn grid_1d(&self, n: usize) -> LaunchConfig {
        config(shapes::grid_1d(n, self.inner.max_blocks))
    }

    /// Launch shape of the row-wise kernels: `items` rows (or column tiles of 32)
    /// spread over blocks of `ROW_BLOCK`, `per_block` at a time.
    fn grid_rows(&self, items: usize, per_block: u32) -> LaunchConfig {
        config(shapes::grid_rows(items, per_block, self.inner.max_blocks))
    }
}

fn config(s: Shape) -> LaunchConfig {
    LaunchConfig {
        grid_dim: s.grid,
        block_dim: s.block,
        shared_mem_bytes: 0,
    }
}

/// Compiles, loads and runs `probe_iota` on 100 elements, checking every output.
fn probe_kernel(ctx: &Arc<CudaContext>, arch: &str) -> Result<()> {
    let ptx = nvrtc::compile("probe", sources::PROBE_CU, arch).map_err(|e| match e {
        MepError::Cuda(m) => MepError::CudaUnavailable(m),
        e => e,
    })?;
    let module = ctx.load_module(Ptx::from_src(ptx)).map_err(unavailable(
        "the driver refused the probe kernel (is it older than NVRTC 13? update it to CUDA 13 or newer)",
    ))?;
    let f = module
        .load_function("probe_iota")
        .map_err(unavailable("loading the probe kernel"))?;
    let stream = ctx.default_stream();
    let n = 100usize;
    let mut out = stream.alloc_zeros::<u32>(n).map_err(unavailable("allocating"))?;
    let n64 = n as u64;
    let mut b = stream.launch_builder(&f);
    b.arg(&n64);
    b.arg(&mut out);
    // SAFETY: probe_iota(u64 n, u32* out) writes out[0..n); out has n elements.
    unsafe { b.launch(config(shapes::grid_1d(n, 1))) }.map_err(unavailable("launching the probe kernel"))?;
    let got = stream
        .clone_dtoh(&out)
        .map_err(unavailable("reading the probe's output"))?;
    stream.synchronize().map_err(unavailable("running the probe kernel"))?;
    if got.iter().enumerate().any(|(i, &v)| v != i as u32 + 1) {
        return Err(MepError::CudaUnavailable(
            "the probe kernel ran but computed wrong values".into(),
        ));
    }
    Ok(())
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.inner.name)
    }
}

impl Backend for Cuda {
    type Elem = f32;
    type Buf = CudaSlice<f32>;
    type Labels = CudaSlice<u32>;
    type Graph = Graph;

    fn name(&self) -> String {
        self.inner.name.clone()
    }

    fn zeros(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.inner
            .stream
            .alloc_zeros::<f32>(len)
            .map_err(cuda_err("allocating"))
    }
    fn upload(&self, host: &[f32]) -> Result<CudaSlice<f32>> {
        self.inner.stream.clone_htod(host).map_err(cuda_err("uploading"))
    }
    fn write(&self, dst: &mut CudaSlice<f32>, host: &[f32]) -> Result<()> {
        check_len("write", dst.len(), host.len())?;
        self.inner
            .stream
            .memcpy_htod(host, &mut dst.slice_mut(..host.len()))
            .map_err(cuda_err("writing"))
    }
    fn download(&self, buf: &CudaSlice<f32>) -> Result<Vec<f32>> {
        let v = self.inner.stream.clone_dtoh(buf).map_err(cuda_err("downloading"))?;
        self.synchronize()?;
        Ok(v)
    }
    fn len(&self, buf: &CudaSlice<f32>) -> usize {
        buf.len()
    }
    fn labels_len(&self, buf: &CudaSlice<u32>) -> usize {
        buf.len()
    }
    fn buf_id(&self, buf: &CudaSlice<f32>) -> usize {
        let (ptr, _sync) = buf.device_ptr(&self.inner.stream);
        ptr as usize
    }
    fn labels_id(&self, buf: &CudaSlice<u32>) -> usize {
        let (ptr, _sync) = buf.device_ptr(&self.inner.stream);
        ptr as usize
    }
    fn upload_labels(&self, host: &[u32]) -> Result<CudaSlice<u32>> {
        self.inner.stream.clone_htod(host).map_err(cuda_err("uploading labels"))
    }
    fn write_labels(&self, dst: &mut CudaSlice<u32>, host: &[u32]) -> Result<()> {
        check_len("write_labels", dst.len(), host.len())?;
        if host.is_empty() {
            return Ok(());
        }
        self.inner
            .stream
            .memcpy_htod(host, &mut dst.slice_mut(..host.len()))
            .map_err(cuda_err("writing labels"))
    }
    fn zeros_labels(&self, len: usize) -> Result<CudaSlice<u32>> {
        self.inner
            .stream
            .alloc_zeros::<u32>(len)
            .map_err(cuda_err("allocating labels"))
    }
    fn download_labels(&self, buf: &CudaSlice<u32>) -> Result<Vec<u32>> {
        let v = self
            .inner
            .stream
            .clone_dtoh(buf)
            .map_err(cuda_err("downloading labels"))?;
        self.synchronize()?;
        Ok(v)
    }
    fn copy(&self, src: &CudaSlice<f32>, dst: &mut CudaSlice<f32>) -> Result<()> {
        check_len("copy", dst.len(), src.len())?;
        if src.is_empty() {
            return Ok(());
        }
        self.inner
            .stream
            .memcpy_dtod(src, &mut dst.slice_mut(..src.len()))
            .map_err(cuda_err("copying"))
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.stream.synchronize().map_err(cuda_err("synchronizing"))
    }

    fn gather_rows(
        &self,
        src: &CudaSlice<f32>,
        row_len: usize,
        idx: &CudaSlice<u32>,
        start: usize,
        count: usize,
        dst: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_len("gather_rows idx", idx.len(), start + count)?;
        let n = elems("gather_rows", count, row_len)?;
        check_len("gather_rows dst", dst.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let (count64, row_len64, start64) = (count as u64, row_len as u64, start as u64);
        let src_rows = (src.len() / row_len.max(1)) as u64;
        launch!(
            self,
            "gather_rows",
            self.grid_1d(n),
            [&count64, &row_len64, src, &src_rows, idx, &start64, dst]
        )
    }

    fn gather_labels(
        &self,
        src: &CudaSlice<u32>,
        idx: &CudaSlice<u32>,
        start: usize,
        count: usize,
        dst: &mut CudaSlice<u32>,
    ) -> Result<()> {
        check_len("gather_labels idx", idx.len(), start + count)?;
        check_len("gather_labels dst", dst.len(), count)?;
        if count == 0 {
            return Ok(());
        }
        let (count64, src_len, start64) = (count as u64, src.len() as u64, start as u64);
        launch!(
            self,
            "gather_labels",
            self.grid_1d(count),
            [&count64, src, &src_len, idx, &start64, dst]
        )
    }

    fn gemm(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: f64,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        beta: f64,
        c: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_len("gemm A", a.len(), elems("gemm A", m, k)?)?;
        check_len("gemm B", b.len(), elems("gemm B", k, n)?)?;
        check_len("gemm C", c.len(), elems("gemm C", m, n)?)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let g = gemm_map(ta, tb, m, n, k);
        let int = |what: &str, v: usize| {
            i32::try_from(v).map_err(|_| MepError::Shape(format!("gemm {what} = {v} exceeds cuBLAS's 32-bit limit")))
        };
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        let cfg = GemmConfig {
            transa: op(g.transa),
            transb: op(g.transb),
            m: int("m", g.m)?,
            n: int("n", g.n)?,
            k: int("k", g.k)?,
            alpha: alpha as f32,
            lda: int("lda", g.lda)?,
            ldb: int("ldb", g.ldb)?,
            beta: beta as f32,
            ldc: int("ldc", g.ldc)?,
        };
        // Test-only sabotage (feature `broken-gemm-lda`, see scripts/emulated-gpu.sh).
        #[cfg(feature = "broken-gemm-lda")]
        let cfg = GemmConfig {
            lda: cfg.lda + 1,
            ..cfg
        };
        let pick = |o: Operand| if o == Operand::A { a } else { b };
        // cuBLAS (unlike cudarc's launches) uses whatever context is current on this thread.
        self.inner
            .ctx
            .bind_to_thread()
            .map_err(cuda_err("binding the CUDA context"))?;
        unsafe { self.inner.blas.gemm(cfg, pick(g.first), pick(g.second), c) }.map_err(cuda_err("cublasSgemm"))
    }

    fn axpby(&self, alpha: f64, x: &CudaSlice<f32>, beta: f64, y: &mut CudaSlice<f32>) -> Result<()> {
        check_len("axpby", x.len(), y.len())?;
        let n = y.len();
        if n == 0 {
            return Ok(());
        }
        let (n64, a, b) = (n as u64, alpha as f32, beta as f32);
        launch!(self, "axpby", self.grid_1d(n), [&n64, &a, x, &b, y])
    }

    fn fill(&self, y: &mut CudaSlice<f32>, value: f64) -> Result<()> {
        let n = y.len();
        if n == 0 {
            return Ok(());
        }
        let (n64, v) = (n as u64, value as f32);
        launch!(self, "fill", self.grid_1d(n), [&n64, &v, y])
    }

    fn bias_act(
        &self,
        rows: usize,
        cols: usize,
        z: &mut CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        act: ActChain,
        a: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = elems("bias_act", rows, cols)?;
        check_len("bias_act z", z.len(), n)?;
        check_len("bias_act a", a.len(), n)?;
        check_len("bias_act bias", bias.len(), cols)?;
        if n == 0 {
            return Ok(());
        }
        let (n64, cols32, chain) = (n as u64, dim32("bias_act cols", cols)?, act.code());
        launch!(self, "bias_act", self.grid_1d(n), [&n64, &cols32, z, bias, &chain, a])
    }

    fn layered_error(
        &self,
        rows: usize,
        cols: usize,
        s: &CudaSlice<f32>,
        p: &CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        e: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = elems("layered_error", rows, cols)?;
        check_len("layered_error s", s.len(), n)?;
        check_len("layered_error p", p.len(), n)?;
        check_len("layered_error e", e.len(), n)?;
        check_len("layered_error bias", bias.len(), cols)?;
        if n == 0 {
            return Ok(());
        }
        let (n64, cols32) = (n as u64, dim32("layered_error cols", cols)?);
        launch!(self, "layered_error", self.grid_1d(n), [&n64, &cols32, s, p, bias, e])
    }

    fn layered_settle(
        &self,
        rows: usize,
        cols: usize,
        e: &CudaSlice<f32>,
        g: &CudaSlice<f32>,
        c: f64,
        eta: f64,
        act: ActChain,
        s: &mut CudaSlice<f32>,
        a: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = elems("layered_settle", rows, cols)?;
        for (what, len) in [("e", e.len()), ("g", g.len()), ("s", s.len()), ("a", a.len())] {
            check_len(&format!("layered_settle {what}"), len, n)?;
        }
        if n == 0 {
            return Ok(());
        }
        let (n64, c32, eta32, chain) = (n as u64, c as f32, eta as f32, act.code());
        launch!(
            self,
            "layered_settle",
            self.grid_1d(n),
            [&n64, e, g, &c32, &eta32, &chain, s, a]
        )
    }

    fn hopfield_settle(
        &self,
        rows: usize,
        cols: usize,
        drive: &CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        nudge: Option<(&CudaSlice<f32>, f64)>,
        act: ActChain,
        s: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = elems("hopfield_settle", rows, cols)?;
        check_len("hopfield_settle drive", drive.len(), n)?;
        check_len("hopfield_settle s", s.len(), n)?;
        check_len("hopfield_settle bias", bias.len(), cols)?;
        if let Some((dc, _)) = nudge {
            check_len("hopfield_settle dc", dc.len(), n)?;
        }
        if n == 0 {
            return Ok(());
        }
        // Without a nudge the kernel never reads dc; pass `drive` as a valid pointer.
        let (dc, beta, has) = match nudge {
            Some((dc, beta)) => (dc, beta as f32, 1u32),
            None => (drive, 0.0f32, 0u32),
        };
        let (n64, cols32, chain) = (n as u64, dim32("hopfield_settle cols", cols)?, act.code());
        launch!(
            self,
            "hopfield_settle",
            self.grid_1d(n),
            [&n64, &cols32, drive, bias, dc, &beta, &has, &chain, s]
        )
    }

    fn act_grad_mul(
        &self,
        rows: usize,
        cols: usize,
        z: &CudaSlice<f32>,
        act: ActChain,
        delta: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = elems("act_grad_mul", rows, cols)?;
        check_len("act_grad_mul z", z.len(), n)?;
        check_len("act_grad_mul delta", delta.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let (n64, chain) = (n as u64, act.code());
        launch!(self, "act_grad_mul", self.grid_1d(n), [&n64, z, &chain, delta])
    }

    fn cost_grad(
        &self,
        rows: usize,
        classes: usize,
        o: &CudaSlice<f32>,
        labels: &CudaSlice<u32>,
        loss: Loss,
        g: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = elems("cost_grad", rows, classes)?;
        check_len("cost_grad o", o.len(), n)?;
        check_len("cost_grad g", g.len(), n)?;
        check_len("cost_grad labels", labels.len(), rows)?;
        if n == 0 {
            return Ok(());
        }
        let (rows64, k32, code, eps) = (
            rows as u64,
            dim32("cost_grad classes", classes)?,
            loss.code(),
            loss.label_smoothing() as f32,
        );
        launch!(
            self,
            "cost_grad",
            self.grid_rows(rows, ROW_BLOCK.1),
            [&rows64, &k32, o, labels, &code, &eps, g]
        )
    }

    fn cost_stats(
        &self,
        rows: usize,
        classes: usize,
        o: &CudaSlice<f32>,
        labels: &CudaSlice<u32>,
        loss: Loss,
        stats: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_len("cost_stats o", o.len(), elems("cost_stats", rows, classes)?)?;
        check_len("cost_stats labels", labels.len(), rows)?;
        check_len("cost_stats stats", stats.len(), 2)?;
        if rows == 0 || classes == 0 {
            return Ok(());
        }
        let (rows64, k32, code, eps) = (
            rows as u64,
            dim32("cost_stats classes", classes)?,
            loss.code(),
            loss.label_smoothing() as f32,
        );
        // Two passes, no atomics: bit-for-bit reproducible (kernels/cost.cu).
        let shape = self.grid_rows(rows, ROW_BLOCK.1);
        let blocks = shape.grid_dim.0;
        let mut partials = self.inner.partials.lock().unwrap_or_else(|e| e.into_inner());
        launch!(
            self,
            "cost_stats_partial",
            shape,
            [&rows64, &k32, o, labels, &code, &eps, &mut *partials]
        )?;
        self.reduce_partials(blocks, 2, &partials, true, stats)
    }

    fn argmax(&self, rows: usize, classes: usize, o: &CudaSlice<f32>, out: &mut CudaSlice<u32>) -> Result<()> {
        check_len("argmax o", o.len(), elems("argmax", rows, classes)?)?;
        check_len("argmax out", out.len(), rows)?;
        if rows == 0 || classes == 0 {
            return Ok(());
        }
        let (rows64, k32) = (rows as u64, dim32("argmax classes", classes)?);
        launch!(
            self,
            "argmax",
            self.grid_rows(rows, ROW_BLOCK.1),
            [&rows64, &k32, o, out]
        )
    }

    fn col_sum(
        &self,
        rows: usize,
        cols: usize,
        alpha: f64,
        x: &CudaSlice<f32>,
        beta: f64,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_len("col_sum x", x.len(), elems("col_sum", rows, cols)?)?;
        check_len("col_sum y", y.len(), cols)?;
        if cols == 0 {
            return Ok(());
        }
        let (rows64, cols32, a, b) = (rows as u64, dim32("col_sum cols", cols)?, alpha as f32, beta as f32);
        launch!(
            self,
            "col_sum",
            self.grid_rows(cols, ROW_BLOCK.0),
            [&rows64, &cols32, &a, x, &b, y]
        )
    }

    fn sum_sq(&self, x: &CudaSlice<f32>, out: &mut CudaSlice<f32>) -> Result<()> {
        check_len("sum_sq out", out.len(), 1)?;
        let n = x.len();
        let shape = self.grid_1d(n);
        let blocks = shape.grid_dim.0;
        let mut partials = self.inner.partials.lock().unwrap_or_else(|e| e.into_inner());
        // Two passes, no atomics: bit-for-bit reproducible (kernels/reduce.cu). With
        // n = 0 every block writes a 0 partial.
        let n64 = n as u64;
        launch!(self, "sum_sq_partial", shape, [&n64, x, &mut *partials])?;
        self.reduce_partials(blocks, 1, &partials, false, out)
    }

    fn scale_by_inv_norm(
        &self,
        x: &CudaSlice<f32>,
        sumsq: &CudaSlice<f32>,
        eps: f64,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_len("scale_by_inv_norm y", y.len(), x.len())?;
        check_len("scale_by_inv_norm sumsq", sumsq.len(), 1)?;
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let (n64, e) = (n as u64, eps as f32);
        launch!(self, "scale_by_inv_norm", self.grid_1d(n), [&n64, x, sumsq, &e, y])
    }

    fn spectral_clamp(&self, w: &mut CudaSlice<f32>, sumsq: &CudaSlice<f32>, gamma: f64) -> Result<()> {
        check_len("spectral_clamp sumsq", sumsq.len(), 1)?;
        let n = w.len();
        if n == 0 {
            return Ok(());
        }
        let (n64, g) = (n as u64, gamma as f32);
        launch!(self, "spectral_clamp", self.grid_1d(n), [&n64, w, sumsq, &g])
    }

    fn axpby_ctl(
        &self,
        ctl: &CudaSlice<u32>,
        alpha_slot: usize,
        x: &CudaSlice<f32>,
        beta_slot: usize,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_len("axpby_ctl", x.len(), y.len())?;
        check_len("axpby_ctl ctl", ctl.len(), 2 * alpha_slot.max(beta_slot) + 2)?;
        let n = y.len();
        if n == 0 {
            return Ok(());
        }
        let (n64, a, b) = (
            n as u64,
            dim32("axpby_ctl alpha_slot", alpha_slot)?,
            dim32("axpby_ctl beta_slot", beta_slot)?,
        );
        launch!(self, "axpby_ctl", self.grid_1d(n), [&n64, ctl, &a, x, &b, y])
    }

    fn adam(
        &self,
        p: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        beta1: f64,
        beta2: f64,
        eps: f64,
        ctl: &CudaSlice<u32>,
        slot: usize,
    ) -> Result<()> {
        let n = p.len();
        check_len("adam g", g.len(), n)?;
        check_len("adam m", m.len(), n)?;
        check_len("adam v", v.len(), n)?;
        check_len("adam ctl", ctl.len(), 2 * slot + 6)?;
        if n == 0 {
            return Ok(());
        }
        let (n64, b1, b2, e, slot32) = (
            n as u64,
            beta1 as f32,
            beta2 as f32,
            eps as f32,
            dim32("adam slot", slot)?,
        );
        launch!(
            self,
            "adam",
            self.grid_1d(n),
            [&n64, p, g, m, v, &b1, &b2, &e, ctl, &slot32]
        )
    }

    fn layered_nudged_fused(&self, phase: crate::backend::LayeredPhase<'_, Self>) -> Result<bool> {
        self.layered_nudged_phase(phase)
    }

    fn hopfield_settle_fused(&self, phase: crate::backend::HopfieldPhase<'_, Self>) -> Result<bool> {
        self.hopfield_settle_phase(phase)
    }

    fn ns_gram_poly(
        &self,
        k: usize,
        steps: usize,
        coeffs: (f64, f64, f64),
        gram: &CudaSlice<f32>,
        q: &mut CudaSlice<f32>,
    ) -> Result<bool> {
        self.ns_gram_poly_fused(k, steps, coeffs, gram, q)
    }

    fn begin_capture(&self) -> Result<bool> {
        self.inner
            .stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(cuda_err("beginning a graph capture"))?;
        Ok(true)
    }

    fn end_capture(&self) -> Result<Graph> {
        let graph = self
            .inner
            .stream
            .end_capture(CUgraphInstantiate_flags(0))
            .map_err(cuda_err("ending a graph capture"))?
            .ok_or_else(|| MepError::Cuda("the graph capture recorded nothing".into()))?;
        Ok(Graph(std::sync::Mutex::new(SendGraph(graph))))
    }

    fn launch_graph(&self, graph: &Graph) -> Result<()> {
        let g = graph.0.lock().unwrap_or_else(|e| e.into_inner());
        g.0.launch().map_err(cuda_err("launching a graph"))
    }
}

/// A captured CUDA graph ([`Backend::begin_capture`]), instantiated and ready to
/// launch on the backend's stream.
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
