//! The CUDA kernels compiled for the host (cargo feature `host-kernels`), run with
//! CUDA's execution model, so tests without a GPU check the kernel code itself
//! against the CPU backend, and the emulated driver (`emu/`) can execute launches.
//!
//! `build.rs` compiles `kernels/*.cu` as C++ after `kernels/host_shim.h`, with one
//! trampoline per kernel taking cuLaunchKernel's `void** kernelParams`, and the runner
//! `kernels/host_runner.cpp`: one fiber per CUDA thread, a real block barrier, warp
//! shuffles with lane semantics, a random schedule from a seed, divergent barriers
//! and bad shuffle masks reported as errors (see that file).
//!
//! The wrappers mirror [`crate::backend::Backend`]'s primitives on host slices (f32),
//! with the same length checks and the same launch shapes as the CUDA backend
//! ([`super::shapes`]), except that grids are capped at [`HOST_MAX_BLOCKS`] blocks
//! so the grid-stride loops run more than once on test sizes.

use super::check_len;
use super::shapes::{grid_1d, grid_rows, Shape, ROW_BLOCK};
use crate::backend::{ctl, gather_end, NormRule};
use crate::nn::activation::ActChain;
use crate::{Loss, MepError, Result};
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};

mod ffi {
    use std::ffi::{c_char, c_void};
    extern "C" {
        pub fn mep_host_launch(
            name: *const c_char,
            grid: *const u32,
            block: *const u32,
            params: *mut *mut c_void,
            seed: u64,
            err: *mut c_char,
            errlen: usize,
        ) -> i32;
        pub fn mep_host_kernel_params(name: *const c_char, kinds: *mut *const c_char) -> i32;
    }
}

/// Most blocks of a host launch: few, so that grid-stride loops iterate on test
/// sizes (n > 768 for the 1-D kernels), and more than two, so that the random block
/// order changes the order of any cross-block floating-point accumulation.
pub const HOST_MAX_BLOCKS: u32 = 3;

/// The parameter kinds of host kernel `name`, one letter per parameter (`P` a device
/// pointer, `R` a pointer to `const`, `L` u64, `I` u32, `F` f32, as parsed from its
/// signature by build.rs), or
/// `None` when no such kernel was compiled.
pub fn kernel_params(name: &str) -> Option<String> {
    let c = CString::new(name).ok()?;
    let mut kinds: *const c_char = std::ptr::null();
    // SAFETY: the table's strings are static and NUL-terminated.
    let n = unsafe { ffi::mep_host_kernel_params(c.as_ptr(), &mut kinds) };
    if n < 0 {
        return None;
    }
    Some(unsafe { CStr::from_ptr(kinds) }.to_string_lossy().into_owned())
}

/// Size in bytes of a parameter of kind `k` (see [`kernel_params`]).
pub fn kind_size(k: char) -> usize {
    match k {
        'P' | 'R' | 'L' => 8,
        _ => 4,
    }
}

/// The schedule seed of the next launch: `$MEP_SCHEDULE_SEED` (to replay a failure),
/// else a fresh one per launch.
pub fn schedule_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    if let Some(s) = std::env::var("MEP_SCHEDULE_SEED").ok().and_then(|s| s.parse().ok()) {
        return s;
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Runs host kernel `name` on `shape` with cuLaunchKernel-style `params` (one pointer
/// to each argument's value), on the calling thread, with schedule `seed`. The
/// error text names the kernel, the failing block/thread and the seed.
///
/// # Safety
/// `params` must point to values of the kernel's parameter types, and every pointer
/// argument must be valid for what the kernel reads and writes.
pub unsafe fn launch_raw(
    name: &str,
    shape: Shape,
    params: &mut [*mut c_void],
    seed: u64,
) -> std::result::Result<(), String> {
    let c = CString::new(name).map_err(|_| format!("kernel name {name:?}"))?;
    let grid = [shape.grid.0, shape.grid.1, shape.grid.2];
    let block = [shape.block.0, shape.block.1, shape.block.2];
    let mut err = [0 as c_char; 512];
    let r = ffi::mep_host_launch(
        c.as_ptr(),
        grid.as_ptr(),
        block.as_ptr(),
        params.as_mut_ptr(),
        seed,
        err.as_mut_ptr(),
        err.len(),
    );
    if r == 0 {
        Ok(())
    } else {
        Err(CStr::from_ptr(err.as_ptr()).to_string_lossy().into_owned())
    }
}

/// Checks the argument sizes against the kernel's signature, then launches.
fn run(name: &str, shape: Shape, params: &mut [*mut c_void], sizes: &[usize]) -> Result<()> {
    let kinds = kernel_params(name).ok_or_else(|| MepError::Cuda(format!("no host kernel `{name}`")))?;
    let want: Vec<usize> = kinds.chars().map(kind_size).collect();
    if want != sizes {
        return Err(MepError::Cuda(format!(
            "host kernel `{name}` takes parameters of {want:?} bytes, given {sizes:?}"
        )));
    }
    // SAFETY: the sizes match the signature; the wrappers checked the buffer lengths.
    unsafe { launch_raw(name, shape, params, schedule_seed()) }.map_err(MepError::Cuda)
}

/// Launches `$name` with local variables as arguments (each is passed by address,
/// as cuLaunchKernel takes them, with its size checked against the signature).
macro_rules! launch {
    ($name:literal, $shape:expr, [$($arg:ident),* $(,)?]) => {{
        let mut params: Vec<*mut c_void> = vec![$(&$arg as *const _ as *mut c_void),*];
        let sizes = [$(std::mem::size_of_val(&$arg)),*];
        run($name, $shape, &mut params, &sizes)
    }};
}

/// Runs a deliberately broken kernel of `kernels/selfcheck/broken.cu` (used by the
/// tests proving the runner can fail) on `x` with `blocks` blocks of `threads`
/// threads; returns what it wrote to `out` or the runner's error.
pub fn selfcheck(
    name: &str,
    blocks: u32,
    threads: u32,
    x: &[f32],
    out: &mut [f32],
    seed: u64,
) -> std::result::Result<(), String> {
    let shape = Shape {
        grid: (blocks, 1, 1),
        block: (threads, 1, 1),
    };
    let (n, m) = (x.len() as u64, out.len() as u64);
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    let arg = |p: *const c_void| p as *mut c_void;
    // The two kernel families of broken.cu: (n, x, out) reductions and (n, y) fills.
    let mut params = if name.starts_with("broken_sum") || name.starts_with("broken_shuffle") {
        vec![
            arg(&n as *const u64 as _),
            arg(&xp as *const _ as _),
            arg(&op as *const _ as _),
        ]
    } else {
        vec![arg(&m as *const u64 as _), arg(&op as *const _ as _)]
    };
    // SAFETY: x and out are valid; the kernels index x below n and out below m.
    unsafe { launch_raw(name, shape, &mut params, seed) }
}

fn dim32(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| MepError::Shape(format!("{v} exceeds 32 bits")))
}

fn g1(n: usize) -> Shape {
    grid_1d(n, HOST_MAX_BLOCKS)
}

fn rows_shape(rows: usize) -> Shape {
    grid_rows(rows, ROW_BLOCK.1, HOST_MAX_BLOCKS)
}

/// [`crate::backend::Backend::bias_act`] with the `bias_act` kernel.
pub fn bias_act(rows: usize, cols: usize, z: &mut [f32], bias: &[f32], act: ActChain, a: &mut [f32]) -> Result<()> {
    let n = rows * cols;
    check_len("bias_act z", z.len(), n)?;
    check_len("bias_act a", a.len(), n)?;
    check_len("bias_act bias", bias.len(), cols)?;
    let (n64, c, chain) = (n as u64, dim32(cols)?, act.code());
    let (zp, bp, ap) = (z.as_mut_ptr(), bias.as_ptr(), a.as_mut_ptr());
    let src = zp as *const f32; // in place: the source is z
    launch!("bias_act", g1(n), [n64, c, src, zp, bp, chain, ap])
}

/// [`crate::backend::Backend::bias_act_from`] with the `bias_act` kernel.
pub fn bias_act_from(
    rows: usize,
    cols: usize,
    p: &[f32],
    bias: &[f32],
    act: ActChain,
    z: &mut [f32],
    a: &mut [f32],
) -> Result<()> {
    let n = rows * cols;
    check_len("bias_act_from p", p.len(), n)?;
    check_len("bias_act z", z.len(), n)?;
    check_len("bias_act a", a.len(), n)?;
    check_len("bias_act bias", bias.len(), cols)?;
    let (n64, c, chain) = (n as u64, dim32(cols)?, act.code());
    let (pp, zp, bp, ap) = (p.as_ptr(), z.as_mut_ptr(), bias.as_ptr(), a.as_mut_ptr());
    launch!("bias_act", g1(n), [n64, c, pp, zp, bp, chain, ap])
}

/// [`crate::backend::Backend::layered_error`] with the `layered_error` kernel.
pub fn layered_error(rows: usize, cols: usize, u: &[f32], q: Option<&[f32]>, e: &mut [f32]) -> Result<()> {
    let n = rows * cols;
    check_len("layered_error u", u.len(), n)?;
    check_len("layered_error e", e.len(), n)?;
    if let Some(q) = q {
        check_len("layered_error q", q.len(), n)?;
    }
    let (n64, has_q) = (n as u64, q.is_some() as u32);
    let (up, qp, ep) = (u.as_ptr(), q.unwrap_or(u).as_ptr(), e.as_mut_ptr());
    launch!("layered_error", g1(n), [n64, up, qp, has_q, ep])
}

/// The buffers [`layered_settle`] updates, as [`crate::backend::LayerState`].
pub struct HostLayerState<'a> {
    /// Deviation u = s − s⋆ (read and written).
    pub u: &'a mut [f32],
    /// s = s⋆ + u (written).
    pub s: &'a mut [f32],
    /// a = φ(s) (written).
    pub a: &'a mut [f32],
    /// Δa = φ(s⋆ + u) − φ(s⋆) (written).
    pub da: &'a mut [f32],
    /// The error before the step (written).
    pub e: &'a mut [f32],
}

/// [`crate::backend::Backend::layered_settle`] with the `layered_settle` kernel.
#[allow(clippy::too_many_arguments)]
pub fn layered_settle(
    rows: usize,
    cols: usize,
    q: Option<&[f32]>,
    g: &[f32],
    c: f64,
    eta: f64,
    act: ActChain,
    s_free: &[f32],
    st: HostLayerState<'_>,
) -> Result<()> {
    let n = rows * cols;
    for (what, len) in [
        ("g", g.len()),
        ("s_free", s_free.len()),
        ("u", st.u.len()),
        ("s", st.s.len()),
        ("a", st.a.len()),
        ("da", st.da.len()),
        ("e", st.e.len()),
    ] {
        check_len(&format!("layered_settle {what}"), len, n)?;
    }
    if let Some(q) = q {
        check_len("layered_settle q", q.len(), n)?;
    }
    let (n64, has_q, c32, eta32, chain) = (n as u64, q.is_some() as u32, c as f32, eta as f32, act.code());
    let (qp, gp, fp) = (q.unwrap_or(g).as_ptr(), g.as_ptr(), s_free.as_ptr());
    let (up, sp, ap, dp, ep) = (
        st.u.as_mut_ptr(),
        st.s.as_mut_ptr(),
        st.a.as_mut_ptr(),
        st.da.as_mut_ptr(),
        st.e.as_mut_ptr(),
    );
    launch!(
        "layered_settle",
        g1(n),
        [n64, qp, has_q, gp, c32, eta32, chain, fp, up, sp, ap, dp, ep]
    )
}

/// [`crate::backend::Backend::hopfield_settle`] with the `hopfield_settle` kernel.
pub fn hopfield_settle(
    rows: usize,
    cols: usize,
    drive: &[f32],
    bias: &[f32],
    nudge: Option<(&[f32], f64)>,
    act: ActChain,
    s: &mut [f32],
) -> Result<()> {
    let n = rows * cols;
    check_len("hopfield_settle drive", drive.len(), n)?;
    check_len("hopfield_settle s", s.len(), n)?;
    check_len("hopfield_settle bias", bias.len(), cols)?;
    if let Some((dc, _)) = nudge {
        check_len("hopfield_settle dc", dc.len(), n)?;
    }
    let (dc, beta, has) = match nudge {
        Some((dc, beta)) => (dc, beta as f32, 1u32),
        None => (drive, 0.0f32, 0u32),
    };
    let (n64, c, chain) = (n as u64, dim32(cols)?, act.code());
    let (dp, bp, cp, sp) = (drive.as_ptr(), bias.as_ptr(), dc.as_ptr(), s.as_mut_ptr());
    launch!("hopfield_settle", g1(n), [n64, c, dp, bp, cp, beta, has, chain, sp])
}

/// [`crate::backend::Backend::act_grad_mul`] with the `act_grad_mul` kernel.
pub fn act_grad_mul(rows: usize, cols: usize, z: &[f32], act: ActChain, delta: &mut [f32]) -> Result<()> {
    let n = rows * cols;
    check_len("act_grad_mul z", z.len(), n)?;
    check_len("act_grad_mul delta", delta.len(), n)?;
    let (n64, chain, zp, dp) = (n as u64, act.code(), z.as_ptr(), delta.as_mut_ptr());
    launch!("act_grad_mul", g1(n), [n64, zp, chain, dp])
}

/// [`crate::backend::Backend::act_grad_mul_into`] with the `act_grad_mul_into` kernel.
#[allow(clippy::too_many_arguments)]
pub fn act_grad_mul_into(
    rows: usize,
    cols: usize,
    z: &[f32],
    act: ActChain,
    scale: f64,
    src: &[f32],
    dst: &mut [f32],
) -> Result<()> {
    let n = rows * cols;
    check_len("act_grad_mul_into z", z.len(), n)?;
    check_len("act_grad_mul_into src", src.len(), n)?;
    check_len("act_grad_mul_into dst", dst.len(), n)?;
    let (n64, chain, sc) = (n as u64, act.code(), scale as f32);
    let (zp, sp, dp) = (z.as_ptr(), src.as_ptr(), dst.as_mut_ptr());
    launch!("act_grad_mul_into", g1(n), [n64, zp, chain, sc, sp, dp])
}

/// [`crate::backend::Backend::cost_grad`] with the `cost_grad` kernel.
pub fn cost_grad(rows: usize, classes: usize, o: &[f32], labels: &[u32], loss: Loss, g: &mut [f32]) -> Result<()> {
    let n = rows * classes;
    check_len("cost_grad o", o.len(), n)?;
    check_len("cost_grad g", g.len(), n)?;
    check_len("cost_grad labels", labels.len(), rows)?;
    let (r64, k, code, eps) = (rows as u64, dim32(classes)?, loss.code(), loss.label_smoothing() as f32);
    let (op, lp, gp) = (o.as_ptr(), labels.as_ptr(), g.as_mut_ptr());
    launch!("cost_grad", rows_shape(rows), [r64, k, op, lp, code, eps, gp])
}

/// [`crate::backend::Backend::cost_stats`] with `cost_stats_partial` and
/// `reduce_partials` (accumulates), as the CUDA backend runs them.
pub fn cost_stats(rows: usize, classes: usize, o: &[f32], labels: &[u32], loss: Loss, stats: &mut [f32]) -> Result<()> {
    check_len("cost_stats o", o.len(), rows * classes)?;
    check_len("cost_stats labels", labels.len(), rows)?;
    check_len("cost_stats stats", stats.len(), 2)?;
    let (r64, k, code, eps) = (rows as u64, dim32(classes)?, loss.code(), loss.label_smoothing() as f32);
    let shape = rows_shape(rows);
    let mut partials = vec![f32::NAN; 2 * shape.grid.0 as usize];
    let (op, lp, pp, acc) = (o.as_ptr(), labels.as_ptr(), partials.as_mut_ptr(), 0u32);
    launch!("cost_stats_partial", shape, [r64, k, op, lp, code, eps, acc, pp])?;
    reduce_partials(shape.grid.0, 2, &partials, true, stats)
}

/// The second pass of the deterministic reductions (`reduce_partials`).
fn reduce_partials(count: u32, width: u32, partials: &[f32], accumulate: bool, out: &mut [f32]) -> Result<()> {
    let (acc, pp, op) = (u32::from(accumulate), partials.as_ptr(), out.as_mut_ptr());
    launch!("reduce_partials", grid_1d(1, 1), [count, width, pp, acc, op])
}

/// [`crate::backend::Backend::argmax`] with the `argmax` kernel.
pub fn argmax(rows: usize, classes: usize, o: &[f32], out: &mut [u32]) -> Result<()> {
    check_len("argmax o", o.len(), rows * classes)?;
    check_len("argmax out", out.len(), rows)?;
    let (r64, k, op, outp) = (rows as u64, dim32(classes)?, o.as_ptr(), out.as_mut_ptr());
    launch!("argmax", rows_shape(rows), [r64, k, op, outp])
}

/// [`crate::backend::Backend::col_sum`] with the `col_sum` kernel.
pub fn col_sum(rows: usize, cols: usize, alpha: f64, x: &[f32], beta: f64, y: &mut [f32]) -> Result<()> {
    check_len("col_sum x", x.len(), rows * cols)?;
    check_len("col_sum y", y.len(), cols)?;
    let (r64, c, a, b) = (rows as u64, dim32(cols)?, alpha as f32, beta as f32);
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    launch!(
        "col_sum",
        grid_rows(cols, ROW_BLOCK.0, HOST_MAX_BLOCKS),
        [r64, c, a, xp, b, yp]
    )
}

/// [`crate::backend::Backend::sum_sq`] with the one-launch `sum_sq` kernel; the
/// ticket it re-arms is checked to be 0 afterwards.
pub fn sum_sq(x: &[f32], out: &mut [f32]) -> Result<()> {
    check_len("sum_sq out", out.len(), 1)?;
    let shape = g1(x.len());
    let mut partials = vec![f32::NAN; shape.grid.0 as usize];
    let mut ticket = [0u32];
    let (n64, xp, pp) = (x.len() as u64, x.as_ptr(), partials.as_mut_ptr());
    let (tp, op) = (ticket.as_mut_ptr(), out.as_mut_ptr());
    launch!("sum_sq", shape, [n64, xp, pp, tp, op])?;
    if ticket[0] != 0 {
        return Err(crate::MepError::Cuda(format!(
            "sum_sq left its ticket at {}, not 0",
            ticket[0]
        )));
    }
    Ok(())
}

/// [`crate::backend::Backend::nesterov_sum_sq`] with the one-launch
/// `nesterov_sum_sq` kernel; the ticket it re-arms is checked to be 0 afterwards.
pub fn nesterov_sum_sq(mu: f64, g: &[f32], m: &mut [f32], u: &mut [f32], out: &mut [f32]) -> Result<()> {
    check_len("nesterov_sum_sq m", m.len(), g.len())?;
    check_len("nesterov_sum_sq u", u.len(), g.len())?;
    check_len("nesterov_sum_sq out", out.len(), 1)?;
    let shape = g1(g.len());
    let mut partials = vec![f32::NAN; shape.grid.0 as usize];
    let mut ticket = [0u32];
    let (n64, mu32, gp, mp, up) = (g.len() as u64, mu as f32, g.as_ptr(), m.as_mut_ptr(), u.as_mut_ptr());
    let (pp, tp, op) = (partials.as_mut_ptr(), ticket.as_mut_ptr(), out.as_mut_ptr());
    launch!("nesterov_sum_sq", shape, [n64, mu32, gp, mp, up, pp, tp, op])?;
    if ticket[0] != 0 {
        return Err(crate::MepError::Cuda(format!(
            "nesterov_sum_sq left its ticket at {}, not 0",
            ticket[0]
        )));
    }
    Ok(())
}

/// [`crate::backend::Backend::axpby`] with the `axpby` kernel.
pub fn axpby(alpha: f64, x: &[f32], beta: f64, y: &mut [f32]) -> Result<()> {
    check_len("axpby", x.len(), y.len())?;
    let (n64, a, b, xp, yp) = (y.len() as u64, alpha as f32, beta as f32, x.as_ptr(), y.as_mut_ptr());
    launch!("axpby", g1(y.len()), [n64, a, xp, b, yp])
}

/// [`crate::backend::Backend::lincomb`] with the `lincomb` kernel.
pub fn lincomb(alpha: f64, x: &[f32], beta: f64, z: &[f32], y: &mut [f32]) -> Result<()> {
    check_len("lincomb x", x.len(), y.len())?;
    check_len("lincomb z", z.len(), y.len())?;
    let (n64, a, b, xp, zp, yp) = (
        y.len() as u64,
        alpha as f32,
        beta as f32,
        x.as_ptr(),
        z.as_ptr(),
        y.as_mut_ptr(),
    );
    launch!("lincomb", g1(y.len()), [n64, a, xp, b, zp, yp])
}

/// [`crate::backend::Backend::fill`] with the `fill` kernel.
pub fn fill(y: &mut [f32], value: f64) -> Result<()> {
    let (n64, v, yp) = (y.len() as u64, value as f32, y.as_mut_ptr());
    launch!("fill", g1(y.len()), [n64, v, yp])
}

/// [`crate::backend::Backend::scale_by_inv_norm`] with the `scale_by_inv_norm` kernel.
pub fn scale_by_inv_norm(x: &[f32], sumsq: &[f32], rule: NormRule, y: &mut [f32]) -> Result<()> {
    check_len("scale_by_inv_norm y", y.len(), x.len())?;
    check_len("scale_by_inv_norm sumsq", sumsq.len(), 1)?;
    let (code, eps) = rule.code();
    let (n64, e, xp, qp, yp) = (x.len() as u64, eps as f32, x.as_ptr(), sumsq.as_ptr(), y.as_mut_ptr());
    launch!("scale_by_inv_norm", g1(x.len()), [n64, xp, qp, e, code, yp])
}

/// [`crate::backend::Backend::spectral_clamp`] with the `spectral_clamp` kernel.
pub fn spectral_clamp(w: &mut [f32], sumsq: &[f32], gamma: f64) -> Result<()> {
    check_len("spectral_clamp sumsq", sumsq.len(), 1)?;
    let (n64, g, wp, qp) = (w.len() as u64, gamma as f32, w.as_mut_ptr(), sumsq.as_ptr());
    launch!("spectral_clamp", g1(w.len()), [n64, wp, qp, g])
}

/// [`crate::backend::Backend::adam`] with the `adam` kernel.
#[allow(clippy::too_many_arguments)]
pub fn adam(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    beta1: f64,
    beta2: f64,
    eps: f64,
    ctl: &[u32],
    slot: usize,
) -> Result<()> {
    let n = p.len();
    check_len("adam g", g.len(), n)?;
    check_len("adam m", m.len(), n)?;
    check_len("adam v", v.len(), n)?;
    check_len("adam ctl", ctl.len(), ctl::words(slot + 3))?;
    let (b1, b2, e, slot32) = (beta1 as f32, beta2 as f32, eps as f32, slot as u32);
    let (n64, pp, gp, mp, vp, cp) = (
        n as u64,
        p.as_mut_ptr(),
        g.as_ptr(),
        m.as_mut_ptr(),
        v.as_mut_ptr(),
        ctl.as_ptr(),
    );
    launch!("adam", g1(n), [n64, pp, gp, mp, vp, b1, b2, e, cp, slot32])
}

/// [`crate::backend::Backend::axpby_ctl`] with the `axpby_ctl` kernel.
pub fn axpby_ctl(ctl: &[u32], alpha_slot: usize, x: &[f32], beta_slot: usize, y: &mut [f32]) -> Result<()> {
    check_len("axpby_ctl", x.len(), y.len())?;
    check_len("axpby_ctl ctl", ctl.len(), ctl::words(alpha_slot.max(beta_slot) + 1))?;
    let (n64, cp, a, xp, b, yp) = (
        y.len() as u64,
        ctl.as_ptr(),
        alpha_slot as u32,
        x.as_ptr(),
        beta_slot as u32,
        y.as_mut_ptr(),
    );
    launch!("axpby_ctl", g1(y.len()), [n64, cp, a, xp, b, yp])
}

/// [`crate::backend::Backend::gather_rows`] with the `gather_rows` kernel (an
/// out-of-range index gives a zero row, as on the GPU).
pub fn gather_rows(
    src: &[f32],
    row_len: usize,
    idx: &[u32],
    start: usize,
    count: usize,
    dst: &mut [f32],
) -> Result<()> {
    check_len("gather_rows idx", idx.len(), gather_end("gather_rows", start, count)?)?;
    check_len(
        "gather_rows dst",
        dst.len(),
        super::elems("gather_rows", count, row_len)?,
    )?;
    let src_rows = (src.len() / row_len.max(1)) as u64;
    let (c64, rl, s64) = (count as u64, row_len as u64, start as u64);
    let (sp, ip, dp) = (src.as_ptr(), idx.as_ptr(), dst.as_mut_ptr());
    launch!("gather_rows", g1(count * row_len), [c64, rl, sp, src_rows, ip, s64, dp])
}

/// [`crate::backend::Backend::gather_labels`] with the `gather_labels` kernel.
pub fn gather_labels(src: &[u32], idx: &[u32], start: usize, count: usize, dst: &mut [u32]) -> Result<()> {
    check_len(
        "gather_labels idx",
        idx.len(),
        gather_end("gather_labels", start, count)?,
    )?;
    check_len("gather_labels dst", dst.len(), count)?;
    let (c64, len, s64) = (count as u64, src.len() as u64, start as u64);
    let (sp, ip, dp) = (src.as_ptr(), idx.as_ptr(), dst.as_mut_ptr());
    launch!("gather_labels", g1(count), [c64, sp, len, ip, s64, dp])
}

/// [`crate::backend::Backend::ns_iteration`] with the `ns_iteration` kernel (k ≤
/// [`super::shapes::NS_MAX_K`]),
/// on at most [`HOST_MAX_BLOCKS`] blocks, so that blocks take several strips; `norm` is
/// [`crate::backend::NsNorm`] as (sum_sq, eps, scale_gram, scale_q).
pub fn ns_iteration(
    k: usize,
    coeffs: (f64, f64, f64),
    gram: &[f32],
    q: Option<&[f32]>,
    q_next: &mut [f32],
    gram_next: Option<&mut [f32]>,
    norm: Option<(&[f32], f64, bool, bool)>,
) -> Result<()> {
    let kk = k * k;
    let max_k = super::shapes::NS_MAX_K;
    if k == 0 || k > max_k {
        return Err(MepError::Shape(format!("ns_iteration: k = {k} is not in 1..={max_k}")));
    }
    check_len("ns_iteration gram", gram.len(), kk)?;
    check_len("ns_iteration q_next", q_next.len(), kk)?;
    if let Some(q) = q {
        check_len("ns_iteration q", q.len(), kk)?;
    }
    if let Some(next) = gram_next.as_ref() {
        check_len("ns_iteration gram_next", next.len(), kk)?;
    }
    let shape = super::shapes::ns_strips(k, HOST_MAX_BLOCKS);
    let k32 = k as u32;
    let (a, b, c) = (coeffs.0 as f32, coeffs.1 as f32, coeffs.2 as f32);
    let [h0, h1, h2, h3, h4] = crate::backend::ns_horner_coeffs(coeffs).map(|v| v as f32);
    let (has_q, has_next) = (u32::from(q.is_some()), u32::from(gram_next.is_some()));
    let gp = gram.as_ptr();
    let qp = q.map_or(gp, <[f32]>::as_ptr);
    let qnp = q_next.as_mut_ptr();
    // Without a next Gram matrix the kernel writes nothing through this slot.
    let anp = gram_next.map_or(gp as *mut f32, <[f32]>::as_mut_ptr);
    if let Some((sum_sq, ..)) = norm {
        check_len("ns_iteration sum_sq", sum_sq.len(), 1)?;
    }
    // Without a norm its slot takes the Gram matrix, unread there (both flags 0).
    let np = norm.map_or(gp, |n| n.0.as_ptr());
    let (eps, scale_in, scale_out) =
        norm.map_or((0.0f32, 0u32, 0u32), |n| (n.1 as f32, u32::from(n.2), u32::from(n.3)));
    launch!(
        "ns_iteration",
        shape,
        [k32, a, b, c, h0, h1, h2, h3, h4, gp, qp, has_q, qnp, anp, has_next, np, eps, scale_in, scale_out]
    )
}
