//! The CUDA backend: NVRTC-compiled kernels (`kernels/*.cu`) and cuBLAS SGEMM, in f32,
//! on one stream, except the branches of [`Backend::concurrently`], which run on side
//! streams forked from it and joined back ([`lanes`]).
//!
//! [`Cuda::new`] loads the CUDA libraries dynamically (driver, NVRTC, cuBLAS), creates
//! the context, stream and cuBLAS handle, compiles the kernels for the device's
//! architecture (cached on disk, see [`nvrtc`]) and loads them. Missing libraries or
//! devices become [`MepError::CudaUnavailable`]; nothing here panics (cudarc's panics
//! on missing libraries are probed for first and caught as a last resort).
//!
//! Every primitive only queues work on the stream — no host round trip — except the
//! `download*` functions, which wait for the copy.
//!
//! This file holds the backend itself (device, stream, buffers) and its
//! [`Backend`] implementation, which hands each primitive to the file of its family;
//! those follow `kernels/`: `settle` (element-wise forward and settling kernels),
//! `cost`, `reduce`, `optim`, `data`, [`fused`] (whole phases in one launch), [`gram`]
//! (small-matrix iterations in one launch), plus
//! `gemm` (cuBLAS), `graph` (captured steps), [`lanes`] (the streams, and what each
//! must have to itself) and `libs` (what the CUDA libraries must export).

/// Pushes kernel arguments and launches `$name` on the backend's stream. Arguments are
/// expressions of reference type (`&u32`, `&CudaSlice<f32>`, `&mut CudaSlice<f32>`).
/// Defined before the modules below so that they can use it.
macro_rules! launch {
    ($self:ident, $name:literal, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        use cudarc::driver::PushKernelArg as _;
        let f = $self.kernel($name)?;
        let mut b = $self.queue().stream.launch_builder(f);
        $( b.arg($arg); )*
        unsafe { b.launch($cfg) }
            .map(|_| ())
            .map_err(|e| $crate::MepError::Cuda(format!("launching {}: {e:?}", $name)))
    }};
}

mod cost;
mod data;
pub mod fused;
mod gemm;
pub mod gemm_map;
pub mod gram;
mod graph;
#[cfg(feature = "host-kernels")]
pub mod host;
pub mod lanes;
mod libs;
pub mod nvrtc;
mod optim;
mod reduce;
mod settle;
pub mod shapes;

/// The kernel sources, embedded by `build.rs` from `kernels/*.cu` with `common.cuh`
/// inlined: one `<NAME>_CU` constant per file, [`sources::ALL`] and
/// [`sources::ENTRIES`].
pub mod sources {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

pub use self::graph::Graph;

use self::libs::{check_libraries, versions};
use self::nvrtc::no_panic;
use self::shapes::Shape;
use super::{Backend, NormRule};
use crate::nn::activation::ActChain;
use crate::{Loss, MepError, Result};
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::Arc;

/// The CUDA backend (f32). Cloning is cheap: clones share the context, streams,
/// cuBLAS handles and kernels. While one thread runs [`Backend::concurrently`], no
/// other thread may queue work on the backend or its clones: the branches switch
/// the stream they all queue on.
#[derive(Clone)]
pub struct Cuda {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Arc<CudaContext>,
    /// The streams work is queued on ([`lanes`]): lane 0 is the backend's stream;
    /// the others run [`Backend::concurrently`]'s branches beside it.
    lanes: Vec<lanes::Lane>,
    /// The lane work is queued on now (0 outside `concurrently`).
    current: std::sync::atomic::AtomicUsize,
    /// Whether a `concurrently` is running (a nested one then runs in order).
    forked: std::sync::atomic::AtomicBool,
    /// How many lanes `concurrently` uses ([`Cuda::set_branches`]).
    branches: std::sync::atomic::AtomicUsize,
    kernels: HashMap<&'static str, CudaFunction>,
    name: String,
    /// Most blocks a grid-stride launch uses (32 per multiprocessor).
    max_blocks: u32,
    /// Use the fused phase kernels where they fit ([`Cuda::set_fused`]).
    fused: std::sync::atomic::AtomicBool,
    /// The fused phase kernels' coupling limit ([`Cuda::set_fused_max_couplings`]).
    fused_max_couplings: std::sync::atomic::AtomicUsize,
    /// The largest k of `square_products` ([`Cuda::set_square_max_k`]).
    square_max_k: std::sync::atomic::AtomicUsize,
    /// The largest k of `ns_iteration` ([`Cuda::set_ns_iteration_max_k`]).
    ns_iteration_max_k: std::sync::atomic::AtomicUsize,
}

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
        // cudarc's per-buffer events order each buffer's uses (and its free) across
        // streams, at a driver call or two per launch argument; they also get in the
        // way of graph capture. Our cross-stream order is explicit instead.
        // SAFETY: buffers are used from several streams only inside
        // `Backend::concurrently`'s branches (lanes.rs), whose fork and join events order
        // every branch after the work queued before the fork and before the work queued
        // after the join; the branches touch disjoint buffers (the trait's contract).
        // No buffer is allocated or dropped inside a branch (the engine, workspaces and
        // scratch allocate when they are built, on lane 0), so a buffer's allocation,
        // its uses and its free on its own stream are ordered by stream order and those
        // events.
        unsafe { ctx.disable_event_tracking() };
        let max_blocks = (sms.max(1) as u32).saturating_mul(32);
        let lane_count = lanes::lanes_from_env()?;
        let lanes = (0..lane_count)
            .map(|_| lanes::Lane::new(&ctx, max_blocks))
            .collect::<Result<Vec<_>>>()?;
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
        let (dv, nv, bv) = versions(Some(&lanes[0].blas));
        let name = format!("cuda:{ordinal} ({dev}, {arch} {code}; driver {dv}, NVRTC {nv}, cuBLAS {bv})");
        Ok(Cuda {
            inner: Arc::new(Inner {
                ctx,
                lanes,
                current: std::sync::atomic::AtomicUsize::new(0),
                forked: std::sync::atomic::AtomicBool::new(false),
                branches: std::sync::atomic::AtomicUsize::new(lane_count),
                kernels,
                name,
                max_blocks,
                fused: std::sync::atomic::AtomicBool::new(
                    std::env::var("MEP_CUDA_FUSED").map_or(true, |v| v.trim() != "0"),
                ),
                fused_max_couplings: std::sync::atomic::AtomicUsize::new(fused::max_couplings_from_env()?),
                square_max_k: std::sync::atomic::AtomicUsize::new(count_setting(
                    "MEP_CUDA_SQUARE_MAX_K",
                    gram::SQUARE_MAX_K,
                    "128 (0 runs every product with cuBLAS)",
                )?),
                ns_iteration_max_k: std::sync::atomic::AtomicUsize::new(count_setting(
                    "MEP_CUDA_NS_ITERATION_MAX_K",
                    gram::NS_ITERATION_MAX_K,
                    "64 (0 runs each Newton–Schulz iteration as three square_products)",
                )?),
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

    /// The backend's stream: every primitive is queued on it, except inside
    /// [`Backend::concurrently`]'s branches, which are joined back into it.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.main_lane().stream
    }

    fn kernel(&self, name: &str) -> Result<&CudaFunction> {
        self.inner
            .kernels
            .get(name)
            .ok_or_else(|| MepError::Cuda(format!("kernel `{name}` was not loaded")))
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

/// A whole-number setting from the environment variable `name`: `default` when unset,
/// an [`MepError::InvalidArgument`] naming the variable when it does not parse.
fn count_setting(name: &'static str, default: usize, example: &str) -> Result<usize> {
    parse_count_setting(name, std::env::var(name).ok(), default, example)
}

/// [`count_setting`] on a given value (`None`: unset).
fn parse_count_setting(name: &'static str, value: Option<String>, default: usize, example: &str) -> Result<usize> {
    match value {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| MepError::InvalidArgument {
            name,
            value: v.clone(),
            fix: format!("a whole number, e.g. {example}; unset it for the default {default}"),
        }),
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

/// Memory and synchronisation are implemented here; every other primitive hands over to
/// the method that launches it, in the file of its family.
impl Backend for Cuda {
    type Elem = f32;
    type Buf = CudaSlice<f32>;
    type Labels = CudaSlice<u32>;
    type Graph = Graph;

    fn name(&self) -> String {
        self.inner.name.clone()
    }

    // ---- memory ----

    fn zeros(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.lane()
            .stream
            .alloc_zeros::<f32>(len)
            .map_err(cuda_err("allocating"))
    }
    fn upload(&self, host: &[f32]) -> Result<CudaSlice<f32>> {
        self.lane().stream.clone_htod(host).map_err(cuda_err("uploading"))
    }
    fn write(&self, dst: &mut CudaSlice<f32>, host: &[f32]) -> Result<()> {
        check_len("write", dst.len(), host.len())?;
        self.lane()
            .stream
            .memcpy_htod(host, &mut dst.slice_mut(..host.len()))
            .map_err(cuda_err("writing"))
    }
    fn download(&self, buf: &CudaSlice<f32>) -> Result<Vec<f32>> {
        let v = self.lane().stream.clone_dtoh(buf).map_err(cuda_err("downloading"))?;
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
        let (ptr, _sync) = buf.device_ptr(&self.lane().stream);
        ptr as usize
    }
    fn labels_id(&self, buf: &CudaSlice<u32>) -> usize {
        let (ptr, _sync) = buf.device_ptr(&self.lane().stream);
        ptr as usize
    }
    fn upload_labels(&self, host: &[u32]) -> Result<CudaSlice<u32>> {
        self.lane()
            .stream
            .clone_htod(host)
            .map_err(cuda_err("uploading labels"))
    }
    fn write_labels(&self, dst: &mut CudaSlice<u32>, host: &[u32]) -> Result<()> {
        check_len("write_labels", dst.len(), host.len())?;
        if host.is_empty() {
            return Ok(());
        }
        self.lane()
            .stream
            .memcpy_htod(host, &mut dst.slice_mut(..host.len()))
            .map_err(cuda_err("writing labels"))
    }
    fn zeros_labels(&self, len: usize) -> Result<CudaSlice<u32>> {
        self.lane()
            .stream
            .alloc_zeros::<u32>(len)
            .map_err(cuda_err("allocating labels"))
    }
    fn download_labels(&self, buf: &CudaSlice<u32>) -> Result<Vec<u32>> {
        let v = self
            .lane()
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
        self.queue()
            .stream
            .memcpy_dtod(src, &mut dst.slice_mut(..src.len()))
            .map_err(cuda_err("copying"))
    }
    fn synchronize(&self) -> Result<()> {
        self.lane().stream.synchronize().map_err(cuda_err("synchronizing"))
    }

    // ---- data.rs ----

    fn gather_rows(
        &self,
        src: &CudaSlice<f32>,
        row_len: usize,
        idx: &CudaSlice<u32>,
        start: usize,
        count: usize,
        dst: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.launch_gather_rows(src, row_len, idx, start, count, dst)
    }

    fn gather_labels(
        &self,
        src: &CudaSlice<u32>,
        idx: &CudaSlice<u32>,
        start: usize,
        count: usize,
        dst: &mut CudaSlice<u32>,
    ) -> Result<()> {
        self.launch_gather_labels(src, idx, start, count, dst)
    }

    fn gather_batch(
        &self,
        x: &CudaSlice<f32>,
        row_len: usize,
        y: &CudaSlice<u32>,
        idx: &CudaSlice<u32>,
        start: usize,
        count: usize,
        x_dst: &mut CudaSlice<f32>,
        y_dst: &mut CudaSlice<u32>,
    ) -> Result<()> {
        self.launch_gather_batch(x, row_len, y, idx, start, count, x_dst, y_dst)
    }

    // ---- gemm.rs ----

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
        self.sgemm(ta, tb, m, n, k, alpha, a, b, beta, c)
    }

    fn gemm_ctl(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        ctl: &CudaSlice<u32>,
        alpha_slot: usize,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        beta_slot: usize,
        c: &mut CudaSlice<f32>,
        _tmp: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.sgemm_ctl(ta, tb, m, n, k, ctl, alpha_slot, a, b, beta_slot, c)
    }

    // ---- optim.rs (axpby and fill are optim.cu's too) ----

    fn axpby(&self, alpha: f64, x: &CudaSlice<f32>, beta: f64, y: &mut CudaSlice<f32>) -> Result<()> {
        self.launch_axpby(alpha, x, beta, y)
    }

    fn lincomb(
        &self,
        alpha: f64,
        x: &CudaSlice<f32>,
        beta: f64,
        z: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.launch_lincomb(alpha, x, beta, z, y)
    }

    fn nesterov(&self, mu: f64, g: &CudaSlice<f32>, m: &mut CudaSlice<f32>, u: &mut CudaSlice<f32>) -> Result<()> {
        self.launch_nesterov(mu, g, m, u)
    }

    fn fill(&self, y: &mut CudaSlice<f32>, value: f64) -> Result<()> {
        self.launch_fill(y, value)
    }

    // ---- settle.rs ----

    fn bias_act(
        &self,
        rows: usize,
        cols: usize,
        z: &mut CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        act: ActChain,
        a: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.launch_bias_act(rows, cols, None, z, bias, act, a)
    }

    fn bias_act_from(
        &self,
        rows: usize,
        cols: usize,
        p: &CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        act: ActChain,
        z: &mut CudaSlice<f32>,
        a: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.launch_bias_act(rows, cols, Some(p), z, bias, act, a)
    }

    fn layered_error(
        &self,
        rows: usize,
        cols: usize,
        u: &CudaSlice<f32>,
        q: Option<&CudaSlice<f32>>,
        e: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.launch_layered_error(rows, cols, u, q, e)
    }

    fn layered_settle(
        &self,
        rows: usize,
        cols: usize,
        q: Option<&CudaSlice<f32>>,
        g: &CudaSlice<f32>,
        c: f64,
        eta: f64,
        act: ActChain,
        s_free: &CudaSlice<f32>,
        st: crate::backend::LayerState<'_, Self>,
    ) -> Result<()> {
        self.launch_layered_settle(rows, cols, q, g, c, eta, act, s_free, st)
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
        self.launch_hopfield_settle(rows, cols, drive, bias, nudge, act, s)
    }

    fn act_grad_mul(
        &self,
        rows: usize,
        cols: usize,
        z: &CudaSlice<f32>,
        act: ActChain,
        delta: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.launch_act_grad_mul(rows, cols, z, act, delta)
    }

    fn act_grad_mul_into(
        &self,
        rows: usize,
        cols: usize,
        z: &CudaSlice<f32>,
        act: ActChain,
        scale: f64,
        src: &CudaSlice<f32>,
        dst: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.launch_act_grad_mul_into(rows, cols, z, act, scale, src, dst)
    }

    // ---- cost.rs ----

    fn cost_grad(
        &self,
        rows: usize,
        classes: usize,
        o: &CudaSlice<f32>,
        labels: &CudaSlice<u32>,
        loss: Loss,
        g: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.launch_cost_grad(rows, classes, o, labels, loss, g)
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
        self.launch_cost_stats(rows, classes, o, labels, loss, stats)
    }

    fn argmax(&self, rows: usize, classes: usize, o: &CudaSlice<f32>, out: &mut CudaSlice<u32>) -> Result<()> {
        self.launch_argmax(rows, classes, o, out)
    }

    // ---- reduce.rs ----

    fn col_sum(
        &self,
        rows: usize,
        cols: usize,
        alpha: f64,
        x: &CudaSlice<f32>,
        beta: f64,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.launch_col_sum(rows, cols, alpha, x, beta, y)
    }

    fn sum_sq(&self, x: &CudaSlice<f32>, out: &mut CudaSlice<f32>) -> Result<()> {
        self.launch_sum_sq(x, out)
    }

    fn nesterov_sum_sq(
        &self,
        mu: f64,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        u: &mut CudaSlice<f32>,
        sq: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.launch_nesterov_sum_sq(mu, g, m, u, sq)
    }

    // ---- optim.rs ----

    fn scale_by_inv_norm(
        &self,
        x: &CudaSlice<f32>,
        sumsq: &CudaSlice<f32>,
        rule: NormRule,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.launch_scale_by_inv_norm(x, sumsq, rule, y)
    }

    fn spectral_clamp(&self, w: &mut CudaSlice<f32>, sumsq: &CudaSlice<f32>, gamma: f64) -> Result<()> {
        self.launch_spectral_clamp(w, sumsq, gamma)
    }

    fn axpby_ctl(
        &self,
        ctl: &CudaSlice<u32>,
        alpha_slot: usize,
        x: &CudaSlice<f32>,
        beta_slot: usize,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.launch_axpby_ctl(ctl, alpha_slot, x, beta_slot, y)
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
        self.launch_adam(p, g, m, v, beta1, beta2, eps, ctl, slot)
    }

    // ---- fused.rs ----

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

    fn ns_iteration(
        &self,
        k: usize,
        coeffs: (f64, f64, f64),
        it: crate::backend::NsIteration<'_, Self>,
    ) -> Result<bool> {
        self.ns_iteration_fused(k, coeffs, it)
    }

    fn folds_ns_norm(&self, k: usize) -> bool {
        // Up to GRAM_MAX_K the one-launch ns_gram_poly runs all the iterations (when
        // the whole orthogonalisation is not one kernel already), without the norm.
        self.ns_iteration_fits(k) && k > gram::GRAM_MAX_K
    }

    fn square_products(
        &self,
        k: usize,
        first: crate::backend::SquareProduct<'_, Self>,
        second: Option<crate::backend::SquareProduct<'_, Self>>,
    ) -> Result<()> {
        self.launch_square_products(k, first, second)
    }

    fn newton_schulz(
        &self,
        rows: usize,
        cols: usize,
        steps: usize,
        coeffs: (f64, f64, f64),
        u: &CudaSlice<f32>,
        x: &mut CudaSlice<f32>,
    ) -> Result<bool> {
        self.ns_orthogonalize_fused(rows, cols, steps, coeffs, u, x)
    }

    fn spectral_power(
        &self,
        rows: usize,
        cols: usize,
        squarings: usize,
        iters: usize,
        w: &mut CudaSlice<f32>,
        u: &mut CudaSlice<f32>,
        norm: &mut CudaSlice<f32>,
        gamma: Option<f64>,
    ) -> Result<bool> {
        self.spectral_power_fused(rows, cols, squarings, iters, w, u, norm, gamma)
    }

    // ---- graph.rs ----

    fn concurrently(&self, n: usize, body: &mut dyn FnMut(usize) -> Result<()>) -> Result<()> {
        self.run_concurrently(n, body)
    }

    fn begin_capture(&self) -> Result<bool> {
        self.begin_graph_capture()
    }

    fn end_capture(&self) -> Result<Graph> {
        self.end_graph_capture()
    }

    fn launch_graph(&self, graph: &Graph) -> Result<()> {
        self.launch_captured_graph(graph)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unset: the default; a whole number: itself; anything else: an
    /// `InvalidArgument` naming the variable and the value.
    #[test]
    fn count_settings_parse_or_say_why_not() {
        let parse = |v: Option<&str>| parse_count_setting("MEP_X", v.map(String::from), 7, "3");
        assert_eq!(parse(None).unwrap(), 7);
        assert_eq!(parse(Some(" 0 ")).unwrap(), 0);
        assert_eq!(parse(Some("131072")).unwrap(), 131072);
        for bad in ["", "-1", "1e5", "12k"] {
            match parse(Some(bad)) {
                Err(MepError::InvalidArgument { name, value, fix }) => {
                    assert_eq!((name, value.as_str()), ("MEP_X", bad));
                    assert!(fix.contains("default 7"), "{fix}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
