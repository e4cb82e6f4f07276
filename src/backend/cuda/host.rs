//! The CUDA kernels compiled for the host (cargo feature `host-kernels`), so tests
//! without a GPU can compare the kernel code itself with the CPU backend.
//!
//! `build.rs` compiles `kernels/*.cu` as C++ after `kernels/host_shim.h`, which turns
//! the CUDA built-ins into plain C++ (thread-local `threadIdx`/`blockIdx`/`blockDim`/
//! `gridDim`). [`launch`] runs a grid sequentially, one thread index after another.
//! That is exact for the cooperation-free kernels at any launch shape; the kernels
//! that cooperate are launched so that each cooperating group is one thread (see
//! `host_shim.h`): the row-wise cost kernels with one lane per row, `sum_sq` with
//! one-thread blocks, `col_sum` with one row-thread per column.
//!
//! The wrappers mirror [`crate::backend::Backend`]'s primitives on host slices (f32),
//! with the same length checks as the CUDA backend.

use super::{check_len, AdamScalars};
use crate::nn::activation::ActChain;
use crate::{Loss, MepError, Result};

#[allow(missing_docs)]
mod ffi {
    extern "C" {
        pub fn mep_host_set_dims(gx: u32, gy: u32, bx: u32, by: u32);
        pub fn mep_host_set_index(bix: u32, biy: u32, tix: u32, tiy: u32);

        pub fn bias_act(n: u64, cols: u32, z: *mut f32, bias: *const f32, chain: u32, a: *mut f32);
        pub fn layered_error(n: u64, cols: u32, s: *const f32, p: *const f32, bias: *const f32, e: *mut f32);
        pub fn layered_settle(
            n: u64,
            e: *const f32,
            g: *const f32,
            c: f32,
            eta: f32,
            chain: u32,
            s: *mut f32,
            a: *mut f32,
        );
        pub fn hopfield_settle(
            n: u64,
            cols: u32,
            drive: *const f32,
            bias: *const f32,
            dc: *const f32,
            beta: f32,
            has_nudge: u32,
            chain: u32,
            s: *mut f32,
        );
        pub fn act_grad_mul(n: u64, z: *const f32, chain: u32, delta: *mut f32);

        pub fn cost_grad(rows: u64, classes: u32, o: *const f32, labels: *const u32, loss: u32, eps: f32, g: *mut f32);
        pub fn cost_stats(
            rows: u64,
            classes: u32,
            o: *const f32,
            labels: *const u32,
            loss: u32,
            eps: f32,
            stats: *mut f32,
        );
        pub fn argmax(rows: u64, classes: u32, o: *const f32, out: *mut u32);

        pub fn col_sum(rows: u64, cols: u32, alpha: f32, x: *const f32, beta: f32, y: *mut f32);
        pub fn sum_sq(n: u64, x: *const f32, out: *mut f32);

        pub fn axpby(n: u64, alpha: f32, x: *const f32, beta: f32, y: *mut f32);
        pub fn fill(n: u64, value: f32, y: *mut f32);
        pub fn scale_by_inv_norm(n: u64, x: *const f32, sumsq: *const f32, eps: f32, y: *mut f32);
        pub fn spectral_clamp(n: u64, w: *mut f32, sumsq: *const f32, gamma: f32);
        pub fn adam(
            n: u64,
            p: *mut f32,
            g: *const f32,
            m: *mut f32,
            v: *mut f32,
            beta1: f32,
            beta2: f32,
            decay: f32,
            step: f32,
            inv_sqrt_bc2: f32,
            eps: f32,
        );

        pub fn gather_rows(
            count: u64,
            row_len: u64,
            src: *const f32,
            src_rows: u64,
            idx: *const u32,
            start: u64,
            dst: *mut f32,
        );
        pub fn gather_labels(count: u64, src: *const u32, src_len: u64, idx: *const u32, start: u64, dst: *mut u32);
    }
}

/// Runs `thread` once per thread index of a `grid` × `block` launch (x, y), in order,
/// with the shim's `gridDim`/`blockDim`/`blockIdx`/`threadIdx` set for the call.
pub fn launch(grid: (u32, u32), block: (u32, u32), mut thread: impl FnMut()) {
    // SAFETY: the setters only write the calling thread's thread-local launch state.
    unsafe { ffi::mep_host_set_dims(grid.0, grid.1, block.0, block.1) };
    for by in 0..grid.1 {
        for bx in 0..grid.0 {
            for ty in 0..block.1 {
                for tx in 0..block.0 {
                    unsafe { ffi::mep_host_set_index(bx, by, tx, ty) };
                    thread();
                }
            }
        }
    }
}

/// A small 1-D shape that still exercises the grid-stride loops: 3 blocks of 7.
const GRID_1D: (u32, u32) = (3, 1);
const BLOCK_1D: (u32, u32) = (7, 1);
/// Row kernels: one lane per row, 3 rows per block, 2 blocks (grid-stride over rows).
const GRID_ROWS: (u32, u32) = (2, 1);
const BLOCK_ROWS: (u32, u32) = (1, 3);

fn dim32(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| MepError::Shape(format!("{v} exceeds 32 bits")))
}

fn elementwise(f: impl FnMut()) {
    launch(GRID_1D, BLOCK_1D, f)
}

/// [`crate::backend::Backend::bias_act`] with the `bias_act` kernel.
pub fn bias_act(rows: usize, cols: usize, z: &mut [f32], bias: &[f32], act: ActChain, a: &mut [f32]) -> Result<()> {
    let n = rows * cols;
    check_len("bias_act z", z.len(), n)?;
    check_len("bias_act a", a.len(), n)?;
    check_len("bias_act bias", bias.len(), cols)?;
    let cols = dim32(cols)?;
    elementwise(|| unsafe {
        ffi::bias_act(
            n as u64,
            cols,
            z.as_mut_ptr(),
            bias.as_ptr(),
            act.code(),
            a.as_mut_ptr(),
        )
    });
    Ok(())
}

/// [`crate::backend::Backend::layered_error`] with the `layered_error` kernel.
pub fn layered_error(rows: usize, cols: usize, s: &[f32], p: &[f32], bias: &[f32], e: &mut [f32]) -> Result<()> {
    let n = rows * cols;
    check_len("layered_error s", s.len(), n)?;
    check_len("layered_error p", p.len(), n)?;
    check_len("layered_error e", e.len(), n)?;
    check_len("layered_error bias", bias.len(), cols)?;
    let cols = dim32(cols)?;
    elementwise(|| unsafe {
        ffi::layered_error(n as u64, cols, s.as_ptr(), p.as_ptr(), bias.as_ptr(), e.as_mut_ptr())
    });
    Ok(())
}

/// [`crate::backend::Backend::layered_settle`] with the `layered_settle` kernel.
#[allow(clippy::too_many_arguments)]
pub fn layered_settle(
    rows: usize,
    cols: usize,
    e: &[f32],
    g: &[f32],
    c: f64,
    eta: f64,
    act: ActChain,
    s: &mut [f32],
    a: &mut [f32],
) -> Result<()> {
    let n = rows * cols;
    for (what, len) in [("e", e.len()), ("g", g.len()), ("s", s.len()), ("a", a.len())] {
        check_len(&format!("layered_settle {what}"), len, n)?;
    }
    elementwise(|| unsafe {
        ffi::layered_settle(
            n as u64,
            e.as_ptr(),
            g.as_ptr(),
            c as f32,
            eta as f32,
            act.code(),
            s.as_mut_ptr(),
            a.as_mut_ptr(),
        )
    });
    Ok(())
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
        Some((dc, beta)) => (dc, beta as f32, 1),
        None => (drive, 0.0, 0),
    };
    let cols = dim32(cols)?;
    elementwise(|| unsafe {
        ffi::hopfield_settle(
            n as u64,
            cols,
            drive.as_ptr(),
            bias.as_ptr(),
            dc.as_ptr(),
            beta,
            has,
            act.code(),
            s.as_mut_ptr(),
        )
    });
    Ok(())
}

/// [`crate::backend::Backend::act_grad_mul`] with the `act_grad_mul` kernel.
pub fn act_grad_mul(rows: usize, cols: usize, z: &[f32], act: ActChain, delta: &mut [f32]) -> Result<()> {
    let n = rows * cols;
    check_len("act_grad_mul z", z.len(), n)?;
    check_len("act_grad_mul delta", delta.len(), n)?;
    elementwise(|| unsafe { ffi::act_grad_mul(n as u64, z.as_ptr(), act.code(), delta.as_mut_ptr()) });
    Ok(())
}

/// [`crate::backend::Backend::cost_grad`] with the `cost_grad` kernel.
pub fn cost_grad(rows: usize, classes: usize, o: &[f32], labels: &[u32], loss: Loss, g: &mut [f32]) -> Result<()> {
    let n = rows * classes;
    check_len("cost_grad o", o.len(), n)?;
    check_len("cost_grad g", g.len(), n)?;
    check_len("cost_grad labels", labels.len(), rows)?;
    let (k, eps) = (dim32(classes)?, loss.label_smoothing() as f32);
    launch(GRID_ROWS, BLOCK_ROWS, || unsafe {
        ffi::cost_grad(
            rows as u64,
            k,
            o.as_ptr(),
            labels.as_ptr(),
            loss.code(),
            eps,
            g.as_mut_ptr(),
        )
    });
    Ok(())
}

/// [`crate::backend::Backend::cost_stats`] with the `cost_stats` kernel (accumulates).
pub fn cost_stats(rows: usize, classes: usize, o: &[f32], labels: &[u32], loss: Loss, stats: &mut [f32]) -> Result<()> {
    check_len("cost_stats o", o.len(), rows * classes)?;
    check_len("cost_stats labels", labels.len(), rows)?;
    check_len("cost_stats stats", stats.len(), 2)?;
    let (k, eps) = (dim32(classes)?, loss.label_smoothing() as f32);
    launch(GRID_ROWS, BLOCK_ROWS, || unsafe {
        ffi::cost_stats(
            rows as u64,
            k,
            o.as_ptr(),
            labels.as_ptr(),
            loss.code(),
            eps,
            stats.as_mut_ptr(),
        )
    });
    Ok(())
}

/// [`crate::backend::Backend::argmax`] with the `argmax` kernel.
pub fn argmax(rows: usize, classes: usize, o: &[f32], out: &mut [u32]) -> Result<()> {
    check_len("argmax o", o.len(), rows * classes)?;
    check_len("argmax out", out.len(), rows)?;
    let k = dim32(classes)?;
    launch(GRID_ROWS, BLOCK_ROWS, || unsafe {
        ffi::argmax(rows as u64, k, o.as_ptr(), out.as_mut_ptr())
    });
    Ok(())
}

/// [`crate::backend::Backend::col_sum`] with the `col_sum` kernel (blocks of 4 columns
/// × 1 row-thread, 2 blocks: grid-stride over column tiles).
pub fn col_sum(rows: usize, cols: usize, alpha: f64, x: &[f32], beta: f64, y: &mut [f32]) -> Result<()> {
    check_len("col_sum x", x.len(), rows * cols)?;
    check_len("col_sum y", y.len(), cols)?;
    let c = dim32(cols)?;
    launch((2, 1), (4, 1), || unsafe {
        ffi::col_sum(rows as u64, c, alpha as f32, x.as_ptr(), beta as f32, y.as_mut_ptr())
    });
    Ok(())
}

/// [`crate::backend::Backend::sum_sq`] with the `sum_sq` kernel (zeroes `out[0]` first,
/// as the CUDA backend's memset does).
pub fn sum_sq(x: &[f32], out: &mut [f32]) -> Result<()> {
    check_len("sum_sq out", out.len(), 1)?;
    out[0] = 0.0;
    launch((3, 1), (1, 1), || unsafe {
        ffi::sum_sq(x.len() as u64, x.as_ptr(), out.as_mut_ptr())
    });
    Ok(())
}

/// [`crate::backend::Backend::axpby`] with the `axpby` kernel.
pub fn axpby(alpha: f64, x: &[f32], beta: f64, y: &mut [f32]) -> Result<()> {
    check_len("axpby", x.len(), y.len())?;
    elementwise(|| unsafe { ffi::axpby(y.len() as u64, alpha as f32, x.as_ptr(), beta as f32, y.as_mut_ptr()) });
    Ok(())
}

/// [`crate::backend::Backend::fill`] with the `fill` kernel.
pub fn fill(y: &mut [f32], value: f64) -> Result<()> {
    elementwise(|| unsafe { ffi::fill(y.len() as u64, value as f32, y.as_mut_ptr()) });
    Ok(())
}

/// [`crate::backend::Backend::scale_by_inv_norm`] with the `scale_by_inv_norm` kernel.
pub fn scale_by_inv_norm(x: &[f32], sumsq: &[f32], eps: f64, y: &mut [f32]) -> Result<()> {
    check_len("scale_by_inv_norm y", y.len(), x.len())?;
    check_len("scale_by_inv_norm sumsq", sumsq.len(), 1)?;
    elementwise(|| unsafe {
        ffi::scale_by_inv_norm(x.len() as u64, x.as_ptr(), sumsq.as_ptr(), eps as f32, y.as_mut_ptr())
    });
    Ok(())
}

/// [`crate::backend::Backend::spectral_clamp`] with the `spectral_clamp` kernel.
pub fn spectral_clamp(w: &mut [f32], sumsq: &[f32], gamma: f64) -> Result<()> {
    check_len("spectral_clamp sumsq", sumsq.len(), 1)?;
    elementwise(|| unsafe { ffi::spectral_clamp(w.len() as u64, w.as_mut_ptr(), sumsq.as_ptr(), gamma as f32) });
    Ok(())
}

/// [`crate::backend::Backend::adam`] with the `adam` kernel.
#[allow(clippy::too_many_arguments)]
pub fn adam(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    t: u64,
) -> Result<()> {
    let n = p.len();
    check_len("adam g", g.len(), n)?;
    check_len("adam m", m.len(), n)?;
    check_len("adam v", v.len(), n)?;
    let k = AdamScalars::new(lr, beta1, beta2, eps, weight_decay, t);
    elementwise(|| unsafe {
        ffi::adam(
            n as u64,
            p.as_mut_ptr(),
            g.as_ptr(),
            m.as_mut_ptr(),
            v.as_mut_ptr(),
            k.beta1,
            k.beta2,
            k.decay,
            k.step,
            k.inv_sqrt_bc2,
            k.eps,
        )
    });
    Ok(())
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
    check_len("gather_rows idx", idx.len(), start + count)?;
    check_len("gather_rows dst", dst.len(), count * row_len)?;
    let src_rows = (src.len() / row_len.max(1)) as u64;
    elementwise(|| unsafe {
        ffi::gather_rows(
            count as u64,
            row_len as u64,
            src.as_ptr(),
            src_rows,
            idx.as_ptr(),
            start as u64,
            dst.as_mut_ptr(),
        )
    });
    Ok(())
}

/// [`crate::backend::Backend::gather_labels`] with the `gather_labels` kernel.
pub fn gather_labels(src: &[u32], idx: &[u32], start: usize, count: usize, dst: &mut [u32]) -> Result<()> {
    check_len("gather_labels idx", idx.len(), start + count)?;
    check_len("gather_labels dst", dst.len(), count)?;
    elementwise(|| unsafe {
        ffi::gather_labels(
            count as u64,
            src.as_ptr(),
            src.len() as u64,
            idx.as_ptr(),
            start as u64,
            dst.as_mut_ptr(),
        )
    });
    Ok(())
}
