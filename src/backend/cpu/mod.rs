//! The CPU reference backend: GEMMs from the `gemm` crate split into row panels
//! (`gemm.rs`) and element-wise loops, both run on a spinning fork–join pool
//! (`pool.rs`). Generic over the element type so tests can run the very same
//! algorithm in f64.
//!
//! Every primitive here is the plain definition from [`super::Backend`]'s docs;
//! the CUDA kernels are checked against these.

pub(crate) mod fast_math;
mod gemm;
mod pool;
mod simd;

use super::{gather_end, pow2_below_inv, Backend, LayerState, NormRule, Scalar};
use crate::flops::GemmShape;
use crate::nn::activation::ActChain;
use crate::{Loss, MepError, Result};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

/// Element-wise loops shorter than this run on one thread. With rayon's sleeping
/// workers the threshold was 2^18 (a wake cost more than a 100k-element pass); the
/// spinning [`pool`] forks in about a microsecond, so passes over the seed's weight
/// matrices (100k elements) are split (BENCHMARKS.md §6).
const PAR_MIN: usize = 1 << 15;

/// Chunk of the reproducible parallel sum in `sum_sq`.
const SUM_CHUNK: usize = 1 << 13;

/// The CPU backend, computing in `T` (f32 for training, f64 for reference tests).
#[derive(Clone, Debug, Default)]
pub struct Cpu<T: Scalar = f32> {
    _t: PhantomData<T>,
    /// When set, every GEMM's shape is appended here (see [`Cpu::recording`]).
    recorder: Option<Arc<Mutex<Vec<GemmShape>>>>,
}

impl<T: Scalar> Cpu<T> {
    /// A CPU backend. It uses as many threads as the rayon pool it is called from
    /// has (see [`crate::set_cpu_threads`]); results do not depend on that number.
    pub fn new() -> Self {
        Cpu {
            _t: PhantomData,
            recorder: None,
        }
    }

    /// A CPU backend that records the shape of every GEMM it runs (clones share the
    /// record). Used to check the analytic FLOP counts of [`crate::flops`].
    pub fn recording() -> Self {
        Cpu {
            _t: PhantomData,
            recorder: Some(Arc::new(Mutex::new(Vec::new()))),
        }
    }

    /// The GEMMs recorded so far (empty unless built by [`Cpu::recording`]), and
    /// clears the record.
    pub fn take_recorded(&self) -> Vec<GemmShape> {
        self.recorder
            .as_ref()
            .map(|r| std::mem::take(&mut *r.lock().unwrap_or_else(|e| e.into_inner())))
            .unwrap_or_default()
    }
}

/// Runs `f(&mut y[i], x[i])` for all i, in parallel when the buffer is large. The
/// closure sees elements, not indices, so the loop has no bounds checks; the loop
/// is a function of its own ([`simd::zip`]) whose `&mut` parameter tells the
/// compiler that writes to `y` cannot change what `f` captured, so the captured
/// scalars stay in registers and the loop vectorises (inlined into the task closure,
/// where `y` comes from a raw pointer, it reloaded them every element and ran
/// scalar: 10% of a one-thread seed epoch).
#[inline]
fn map_with<T: Send + Sync + Copy, F: Fn(&mut T, T) + Sync + Send>(y: &mut [T], x: &[T], f: F) {
    let d = Disjoint::new(y);
    par_ranges(d.len.min(x.len()), 1, |lo, hi| {
        // SAFETY: the ranges of `par_ranges` are disjoint and in bounds.
        simd::zip(unsafe { d.part(lo, hi) }, &x[lo..hi], &f)
    });
}

/// Runs `f(&mut y[i], x[i], z[i])` for all i, in parallel when the buffers are large.
#[inline]
fn map_with2<T: Send + Sync + Copy, F: Fn(&mut T, T, T) + Sync + Send>(y: &mut [T], x: &[T], z: &[T], f: F) {
    let d = Disjoint::new(y);
    par_ranges(d.len.min(x.len()).min(z.len()), 1, |lo, hi| {
        // SAFETY: the ranges of `par_ranges` are disjoint and in bounds.
        simd::zip2(unsafe { d.part(lo, hi) }, &x[lo..hi], &z[lo..hi], &f)
    });
}

/// Runs `f(&mut y[i])` for all i, in parallel when the buffer is large.
#[inline]
fn map_each<T: Send, F: Fn(&mut T) + Sync + Send>(y: &mut [T], f: F) {
    let d = Disjoint::new(y);
    par_ranges(d.len, 1, |lo, hi| {
        // SAFETY: the ranges of `par_ranges` are disjoint and in bounds.
        simd::each(unsafe { d.part(lo, hi) }, &f);
    });
}

/// Splits `0..items` (each `size` elements long) into one contiguous range per
/// thread and runs `f(lo, hi)` on each, on the [`pool`], when the work is at least
/// [`PAR_MIN`] elements; otherwise `f(0, items)` on this thread. Ranges of more than
/// one item start at multiples of 16 items (whole cache lines for f32 vectors).
fn par_ranges(items: usize, size: usize, f: impl Fn(usize, usize) + Sync) {
    let threads = rayon::current_num_threads();
    if threads < 2 || items * size < PAR_MIN || items < 2 {
        f(0, items);
        return;
    }
    let align = if size == 1 { 16 } else { 1 };
    let per = items.div_ceil(threads).next_multiple_of(align);
    let tasks = items.div_ceil(per);
    pool::pool().run(threads, tasks, &|t| f(t * per, ((t + 1) * per).min(items)));
}

/// One buffer handed to the pool's tasks, each of which takes a disjoint part.
struct Disjoint<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: tasks only reach the buffer through `part` on disjoint ranges, while the
// `&mut` borrow that made it is held by the caller of the parallel loop.
unsafe impl<T: Send> Send for Disjoint<T> {}
unsafe impl<T: Send> Sync for Disjoint<T> {}

impl<T> Disjoint<T> {
    fn new(y: &mut [T]) -> Self {
        Disjoint {
            ptr: y.as_mut_ptr(),
            len: y.len(),
        }
    }

    /// Elements `lo..hi`.
    ///
    /// # Safety
    /// No two live parts may overlap, and `lo ≤ hi ≤ len`.
    #[allow(clippy::mut_from_ref)]
    unsafe fn part(&self, lo: usize, hi: usize) -> &mut [T] {
        debug_assert!(lo <= hi && hi <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(lo), hi - lo)
    }
}

/// Σ v² of one chunk with [`SUM_LANES`] independent accumulators, added in a fixed
/// order at the end: a single running sum is one long dependent chain of additions
/// (4 cycles each) that the compiler may not reorder, while independent lanes
/// vectorise. The order is fixed, so the result is still reproducible.
#[inline]
fn chunk_sum_sq<T: Scalar>(c: &[T]) -> T {
    let mut lanes = [T::zero(); SUM_LANES];
    let mut it = c.chunks_exact(SUM_LANES);
    for block in &mut it {
        for (acc, &v) in lanes.iter_mut().zip(block) {
            *acc = *acc + v * v;
        }
    }
    let mut total = it.remainder().iter().fold(T::zero(), |s, &v| s + v * v);
    for acc in lanes {
        total = total + acc;
    }
    total
}

/// Independent accumulators of [`chunk_sum_sq`] (two AVX-512 registers of f32).
const SUM_LANES: usize = 32;

/// Runs `f(r, row)` over the rows of a row-major matrix, in parallel when large.
#[inline]
fn map_rows<T: Send, F: Fn(usize, &mut [T]) + Sync + Send>(y: &mut [T], cols: usize, f: F) {
    let d = Disjoint::new(y);
    par_ranges(d.len / cols, cols, |lo, hi| {
        // SAFETY: disjoint row ranges of the matrix.
        simd::rows(unsafe { d.part(lo * cols, hi * cols) }, cols, lo, &f);
    });
}

/// [`map_rows`] over two matrices of the same shape at once.
#[inline]
fn map_rows2<T: Send, F: Fn(usize, &mut [T], &mut [T]) + Sync + Send>(y: &mut [T], z: &mut [T], cols: usize, f: F) {
    let (dy, dz) = (Disjoint::new(y), Disjoint::new(z));
    par_ranges(dy.len.min(dz.len) / cols, cols, |lo, hi| {
        // SAFETY: disjoint row ranges of two distinct matrices.
        let (py, pz) = unsafe { (dy.part(lo * cols, hi * cols), dz.part(lo * cols, hi * cols)) };
        simd::rows2(py, pz, cols, lo, &f);
    });
}

/// [`map_rows`] over five matrices of the same shape at once.
#[inline]
fn map_rows5<T: Send, F: Fn(usize, [&mut [T]; 5]) + Sync + Send>(m: [&mut [T]; 5], cols: usize, f: F) {
    let d = m.map(Disjoint::new);
    let rows = d.iter().map(|p| p.len).min().unwrap_or(0) / cols;
    par_ranges(rows, cols, |lo, hi| {
        // SAFETY: disjoint row ranges of five distinct matrices.
        let parts = std::array::from_fn(|k| unsafe { d[k].part(lo * cols, hi * cols) });
        simd::rows5(parts, cols, lo, &f);
    });
}

/// Expands `$body` with `$vd` bound to a closure `x -> (φ(x), φ′(x))` and, in the
/// three-name form, `$dl` to a closure `(x, u, φ(x + u)) -> φ(x + u) − φ(x)` formed
/// without cancellation ([`ActChain::delta_by`]) and `$dd` to `(x, φ(x)) -> φ′(x)`,
/// which a single activation reads off φ(x) (bit for bit the φ′ of `$vd`: tanh's
/// 1 − t², the sigmoid's σ(1 − σ), the kinks' tests on φ(x)) and a chain computes
/// from x; all monomorphised for the common single activations (so the loops
/// vectorise), falling back to the generic chain otherwise.
// The closures are `move`: they capture `zero`, `one` and `act` by value, which lets
// LLVM vectorise the loops that call them (by reference it kept a scalar, branchy loop
// on an Intel Xeon: ~40 µs per 64×128 ReLU settle call instead of ~10; issue 11).
// The deltas of tanh and the sigmoid compute both of `delta_by`'s cases and select,
// so that they stay branch-free; the plain difference reuses φ(x + u), which the
// settle step computes anyway.
macro_rules! with_act {
    ($T:ty, $act:expr, |$vd:ident| $body:expr) => {
        with_act!($T, $act, |$vd, _delta_unused, _slope_unused| $body)
    };
    ($T:ty, $act:expr, |$vd:ident, $dl:ident, $dd:ident| $body:expr) => {{
        use crate::nn::activation::Activation as A;
        let act: ActChain = $act;
        let (zero, one) = (<$T>::zero(), <$T>::one());
        let half = <$T>::of(0.5);
        // tanh(x + u) − tanh(x) from t = tanh(x), tanh(u) and tanh(x + u).
        let tanh_delta = move |t: $T, tu: $T, ty: $T, u: $T| {
            let formula = tu * (one - t * t) / (one + t * tu);
            if u.abs() >= one {
                ty - t
            } else {
                formula
            }
        };
        if act.is_empty() {
            let $vd = move |x: $T| (x, one);
            let $dl = move |_x: $T, u: $T, _fy: $T| u;
            let $dd = move |_x: $T, _a: $T| one;
            $body
        } else {
            match act.as_single() {
                Some(A::Relu) => {
                    let $vd = move |x: $T| if x > zero { (x, one) } else { (zero, zero) };
                    let $dl = move |x: $T, u: $T, _fy: $T| A::Relu.delta_by(x, u, <$T>::tanh_simd);
                    let $dd = move |_x: $T, a: $T| if a > zero { one } else { zero };
                    $body
                }
                Some(A::HardSigmoid) => {
                    let $vd = move |x: $T| {
                        if x > zero && x < one {
                            (x, one)
                        } else {
                            (x.max(zero).min(one), zero)
                        }
                    };
                    let $dl = move |x: $T, u: $T, _fy: $T| A::HardSigmoid.delta_by(x, u, <$T>::tanh_simd);
                    let $dd = move |_x: $T, a: $T| if a > zero && a < one { one } else { zero };
                    $body
                }
                // Branch-free in f32 (fast_math.rs): libm's scalar calls kept these
                // loops 5–8× slower than ReLU's.
                Some(A::Tanh) => {
                    let $vd = move |x: $T| {
                        let t = x.tanh_simd();
                        (t, one - t * t)
                    };
                    let $dl = move |x: $T, u: $T, fy: $T| tanh_delta(x.tanh_simd(), u.tanh_simd(), fy, u);
                    let $dd = move |_x: $T, a: $T| one - a * a;
                    $body
                }
                Some(A::Sigmoid) => {
                    let $vd = move |x: $T| {
                        let s = x.sigmoid_simd();
                        (s, s * (one - s))
                    };
                    // σ(v) = ½(1 + tanh(v/2)): ½ of tanh's delta at (x/2, u/2).
                    let $dl = move |x: $T, u: $T, fy: $T| {
                        let t = (half * x).tanh_simd();
                        let ty = fy + fy - one;
                        half * tanh_delta(t, (half * u).tanh_simd(), ty, half * u)
                    };
                    let $dd = move |_x: $T, a: $T| a * (one - a);
                    $body
                }
                _ => {
                    let $vd = move |x: $T| act.value_and_derivative(x);
                    let $dl = move |x: $T, u: $T, _fy: $T| act.delta_by(x, u, <$T>::tanh_simd);
                    let $dd = move |x: $T, _a: $T| act.value_and_derivative(x).1;
                    $body
                }
            }
        }
    }};
}

/// Row-wise primitives need rows of at least one element.
fn check_cols(what: &str, cols: usize) -> Result<()> {
    if cols == 0 {
        return Err(MepError::Shape(format!("{what}: rows of 0 elements")));
    }
    Ok(())
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got < want {
        return Err(MepError::Shape(format!(
            "{what}: buffer has {got} elements, needs {want}"
        )));
    }
    Ok(())
}

/// Numerically stable log-sum-exp of a row and its maximum's index.
#[inline]
fn row_lse_argmax<T: Scalar>(o: &[T]) -> (T, usize) {
    let mut mx = o[0];
    let mut arg = 0;
    for (k, &v) in o.iter().enumerate() {
        if v > mx {
            mx = v;
            arg = k;
        }
    }
    let s: T = o.iter().map(|&v| (v - mx).exp()).sum();
    (mx + s.ln(), arg)
}

/// Target distribution entry q_k for label y (label smoothing ε over K classes).
#[inline]
fn target<T: Scalar>(k: usize, y: usize, eps: T, classes: usize) -> T {
    let base = eps / T::of(classes as f64);
    if k == y {
        T::one() - eps + base
    } else {
        base
    }
}

impl<T: Scalar> Backend for Cpu<T> {
    type Elem = T;
    type Buf = Vec<T>;
    type Labels = Vec<u32>;
    type Graph = ();

    fn name(&self) -> String {
        let threads = rayon::current_num_threads();
        format!(
            "cpu ({threads} thread{}, {})",
            if threads == 1 { "" } else { "s" },
            std::any::type_name::<T>()
        )
    }

    // Fallible allocation: a size the system refuses is an error, not an abort.
    fn zeros(&self, len: usize) -> Result<Vec<T>> {
        crate::error::try_filled(len, T::zero(), "a CPU buffer")
    }
    fn upload(&self, host: &[T]) -> Result<Vec<T>> {
        crate::error::try_copy(host, "a CPU buffer")
    }
    fn write(&self, dst: &mut Vec<T>, host: &[T]) -> Result<()> {
        check_len("write", dst.len(), host.len())?;
        dst[..host.len()].copy_from_slice(host);
        Ok(())
    }
    fn download(&self, buf: &Vec<T>) -> Result<Vec<T>> {
        Ok(buf.clone())
    }
    fn len(&self, buf: &Vec<T>) -> usize {
        buf.len()
    }
    fn labels_len(&self, buf: &Vec<u32>) -> usize {
        buf.len()
    }
    fn buf_id(&self, buf: &Vec<T>) -> usize {
        buf.as_ptr() as usize
    }
    fn labels_id(&self, buf: &Vec<u32>) -> usize {
        buf.as_ptr() as usize
    }
    fn upload_labels(&self, host: &[u32]) -> Result<Vec<u32>> {
        crate::error::try_copy(host, "a CPU label buffer")
    }
    fn write_labels(&self, dst: &mut Vec<u32>, host: &[u32]) -> Result<()> {
        check_len("write_labels", dst.len(), host.len())?;
        dst[..host.len()].copy_from_slice(host);
        Ok(())
    }
    fn zeros_labels(&self, len: usize) -> Result<Vec<u32>> {
        crate::error::try_filled(len, 0, "a CPU label buffer")
    }
    fn download_labels(&self, buf: &Vec<u32>) -> Result<Vec<u32>> {
        Ok(buf.clone())
    }
    fn copy(&self, src: &Vec<T>, dst: &mut Vec<T>) -> Result<()> {
        check_len("copy", dst.len(), src.len())?;
        dst[..src.len()].copy_from_slice(src);
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn gather_rows(
        &self,
        src: &Vec<T>,
        row_len: usize,
        idx: &Vec<u32>,
        start: usize,
        count: usize,
        dst: &mut Vec<T>,
    ) -> Result<()> {
        check_cols("gather_rows", row_len)?;
        check_len("gather_rows idx", idx.len(), gather_end("gather_rows", start, count)?)?;
        let n = count
            .checked_mul(row_len)
            .ok_or_else(|| MepError::Shape(format!("gather_rows: {count} rows of {row_len} overflow")))?;
        check_len("gather_rows dst", dst.len(), n)?;
        let rows = src.len() / row_len.max(1);
        for (i, out) in dst.chunks_mut(row_len).take(count).enumerate() {
            let r = idx[start + i] as usize;
            if r >= rows {
                return Err(MepError::Shape(format!("gather_rows: index {r} out of {rows} rows")));
            }
            out.copy_from_slice(&src[r * row_len..(r + 1) * row_len]);
        }
        Ok(())
    }

    fn gather_labels(
        &self,
        src: &Vec<u32>,
        idx: &Vec<u32>,
        start: usize,
        count: usize,
        dst: &mut Vec<u32>,
    ) -> Result<()> {
        check_len(
            "gather_labels idx",
            idx.len(),
            gather_end("gather_labels", start, count)?,
        )?;
        check_len("gather_labels dst", dst.len(), count)?;
        for i in 0..count {
            let r = idx[start + i] as usize;
            dst[i] = *src
                .get(r)
                .ok_or_else(|| MepError::Shape(format!("gather_labels: index {r} out of {}", src.len())))?;
        }
        Ok(())
    }

    fn gemm(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: f64,
        a: &Vec<T>,
        b: &Vec<T>,
        beta: f64,
        c: &mut Vec<T>,
    ) -> Result<()> {
        if let Some(r) = &self.recorder {
            r.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(GemmShape { ta, tb, m, n, k });
        }
        check_len("gemm A", a.len(), m * k)?;
        check_len("gemm B", b.len(), k * n)?;
        check_len("gemm C", c.len(), m * n)?;
        gemm::gemm(
            rayon::current_num_threads(),
            ta,
            tb,
            m,
            n,
            k,
            T::of(alpha),
            &a[..m * k],
            &b[..k * n],
            T::of(beta),
            &mut c[..m * n],
        );
        Ok(())
    }

    fn axpby(&self, alpha: f64, x: &Vec<T>, beta: f64, y: &mut Vec<T>) -> Result<()> {
        check_len("axpby", x.len(), y.len())?;
        let (a, b) = (T::of(alpha), T::of(beta));
        if beta == 0.0 {
            map_with(y, x, |v, xv| *v = a * xv);
        } else {
            map_with(y, x, |v, xv| *v = a * xv + b * *v);
        }
        Ok(())
    }

    fn lincomb(&self, alpha: f64, x: &Vec<T>, beta: f64, z: &Vec<T>, y: &mut Vec<T>) -> Result<()> {
        check_len("lincomb x", x.len(), y.len())?;
        check_len("lincomb z", z.len(), y.len())?;
        let (a, b) = (T::of(alpha), T::of(beta));
        map_with2(y, x, z, |v, xv, zv| *v = a * xv + b * zv);
        Ok(())
    }

    fn fill(&self, y: &mut Vec<T>, value: f64) -> Result<()> {
        y.fill(T::of(value));
        Ok(())
    }

    fn bias_act(
        &self,
        rows: usize,
        cols: usize,
        z: &mut Vec<T>,
        bias: &Vec<T>,
        act: ActChain,
        a: &mut Vec<T>,
    ) -> Result<()> {
        check_cols("bias_act", cols)?;
        check_len("bias_act z", z.len(), rows * cols)?;
        check_len("bias_act a", a.len(), rows * cols)?;
        check_len("bias_act bias", bias.len(), cols)?;
        let n = rows * cols;
        let bias = &bias[..cols];
        with_act!(T, act, |vd| {
            map_rows2(&mut z[..n], &mut a[..n], cols, |_, zr, ar| {
                for ((zv, av), &b) in zr.iter_mut().zip(ar.iter_mut()).zip(bias) {
                    *zv = *zv + b;
                    *av = vd(*zv).0;
                }
            })
        });
        Ok(())
    }

    fn layered_error(&self, rows: usize, cols: usize, u: &Vec<T>, q: Option<&Vec<T>>, e: &mut Vec<T>) -> Result<()> {
        check_cols("layered_error", cols)?;
        let n = rows * cols;
        check_len("layered_error u", u.len(), n)?;
        check_len("layered_error e", e.len(), n)?;
        match q {
            Some(q) => {
                check_len("layered_error q", q.len(), n)?;
                map_rows(&mut e[..n], cols, |r, er| {
                    let (ur, qr) = (&u[r * cols..(r + 1) * cols], &q[r * cols..(r + 1) * cols]);
                    for ((ev, &uv), &qv) in er.iter_mut().zip(ur).zip(qr) {
                        *ev = uv - qv;
                    }
                });
            }
            None => e[..n].copy_from_slice(&u[..n]),
        }
        Ok(())
    }

    fn layered_settle(
        &self,
        rows: usize,
        cols: usize,
        q: Option<&Vec<T>>,
        g: &Vec<T>,
        c: f64,
        eta: f64,
        act: ActChain,
        s_free: &Vec<T>,
        st: LayerState<'_, Self>,
    ) -> Result<()> {
        check_cols("layered_settle", cols)?;
        let n = rows * cols;
        for (what, len) in [
            ("layered_settle g", g.len()),
            ("layered_settle s_free", s_free.len()),
            ("layered_settle u", st.u.len()),
            ("layered_settle s", st.s.len()),
            ("layered_settle a", st.a.len()),
            ("layered_settle da", st.da.len()),
            ("layered_settle e", st.e.len()),
        ] {
            check_len(what, len, n)?;
        }
        if let Some(q) = q {
            check_len("layered_settle q", q.len(), n)?;
        }
        let (c, eta) = (T::of(c), T::of(eta));
        let (g, s_free, q) = (&g[..n], &s_free[..n], q.map(|q| &q[..n]));
        let bufs = [
            &mut st.u[..n],
            &mut st.s[..n],
            &mut st.a[..n],
            &mut st.da[..n],
            &mut st.e[..n],
        ];
        with_act!(T, act, |vd, dl, dd| {
            map_rows5(bufs, cols, |i, [ur, sr, ar, dr, er]| {
                let off = i * cols;
                let (gr, fr) = (&g[off..off + cols], &s_free[off..off + cols]);
                // One element: the error (exactly as layered_error forms it), the step
                // with φ′ at the old s, then s, a and Δa of the new deviation.
                let step = |uv: &mut T, sv: &mut T, av: &mut T, dv: &mut T, ev: &mut T, err: T, gv: T, fv: T| {
                    *ev = err;
                    // φ′ at the old s, off a = φ(s) where one activation allows.
                    let nu = *uv - eta * (err + c * dd(*sv, *av) * gv);
                    *uv = nu;
                    let ns = fv + nu;
                    *sv = ns;
                    let fy = vd(ns).0;
                    *av = fy;
                    *dv = dl(fv, nu, fy);
                };
                let outs = ur
                    .iter_mut()
                    .zip(sr.iter_mut())
                    .zip(ar.iter_mut())
                    .zip(dr.iter_mut())
                    .zip(er.iter_mut());
                // Two loops rather than an Option per element, so that both vectorise.
                match q {
                    Some(q) => {
                        let ins = q[off..off + cols].iter().zip(gr).zip(fr);
                        for (((((uv, sv), av), dv), ev), ((&qv, &gv), &fv)) in outs.zip(ins) {
                            let err = *uv - qv;
                            step(uv, sv, av, dv, ev, err, gv, fv);
                        }
                    }
                    None => {
                        for (((((uv, sv), av), dv), ev), (&gv, &fv)) in outs.zip(gr.iter().zip(fr)) {
                            let err = *uv;
                            step(uv, sv, av, dv, ev, err, gv, fv);
                        }
                    }
                }
            })
        });
        Ok(())
    }

    fn hopfield_settle(
        &self,
        rows: usize,
        cols: usize,
        drive: &Vec<T>,
        bias: &Vec<T>,
        nudge: Option<(&Vec<T>, f64)>,
        act: ActChain,
        s: &mut Vec<T>,
    ) -> Result<()> {
        check_cols("hopfield_settle", cols)?;
        let n = rows * cols;
        check_len("hopfield_settle drive", drive.len(), n)?;
        check_len("hopfield_settle s", s.len(), n)?;
        check_len("hopfield_settle bias", bias.len(), cols)?;
        let bias = &bias[..cols];
        let (dc, beta) = match nudge {
            Some((dc, beta)) => {
                check_len("hopfield_settle dc", dc.len(), n)?;
                (Some(dc), T::of(beta))
            }
            None => (None, T::zero()),
        };
        with_act!(T, act, |vd| {
            map_rows(&mut s[..n], cols, |r, sr| {
                let dr = &drive[r * cols..(r + 1) * cols];
                match dc {
                    Some(dc) => {
                        let cr = &dc[r * cols..(r + 1) * cols];
                        for (((sv, &d), &b), &cv) in sr.iter_mut().zip(dr).zip(bias).zip(cr) {
                            *sv = vd(d + b - beta * cv).0;
                        }
                    }
                    None => {
                        for ((sv, &d), &b) in sr.iter_mut().zip(dr).zip(bias) {
                            *sv = vd(d + b).0;
                        }
                    }
                }
            })
        });
        Ok(())
    }

    fn act_grad_mul(&self, rows: usize, cols: usize, z: &Vec<T>, act: ActChain, delta: &mut Vec<T>) -> Result<()> {
        let n = rows * cols;
        check_len("act_grad_mul z", z.len(), n)?;
        check_len("act_grad_mul delta", delta.len(), n)?;
        with_act!(T, act, |vd| map_with(&mut delta[..n], &z[..n], |v, zv| *v =
            *v * vd(zv).1));
        Ok(())
    }

    fn act_grad_mul_into(
        &self,
        rows: usize,
        cols: usize,
        z: &Vec<T>,
        act: ActChain,
        scale: f64,
        src: &Vec<T>,
        dst: &mut Vec<T>,
    ) -> Result<()> {
        let n = rows * cols;
        check_len("act_grad_mul_into z", z.len(), n)?;
        check_len("act_grad_mul_into src", src.len(), n)?;
        check_len("act_grad_mul_into dst", dst.len(), n)?;
        let scale = T::of(scale);
        with_act!(T, act, |vd| map_with2(
            &mut dst[..n],
            &src[..n],
            &z[..n],
            |d, sv, zv| *d = (scale * sv) * vd(zv).1
        ));
        Ok(())
    }

    fn cost_grad(
        &self,
        rows: usize,
        classes: usize,
        o: &Vec<T>,
        labels: &Vec<u32>,
        loss: Loss,
        g: &mut Vec<T>,
    ) -> Result<()> {
        check_cols("cost_grad", classes)?;
        let n = rows * classes;
        check_len("cost_grad o", o.len(), n)?;
        check_len("cost_grad g", g.len(), n)?;
        check_len("cost_grad labels", labels.len(), rows)?;
        let eps = T::of(loss.label_smoothing());
        map_rows(&mut g[..n], classes, |r, gr| {
            let orow = &o[r * classes..(r + 1) * classes];
            let y = labels[r] as usize;
            match loss {
                Loss::CrossEntropy { .. } => {
                    let (lse, _) = row_lse_argmax(orow);
                    for k in 0..classes {
                        gr[k] = (orow[k] - lse).exp() - target(k, y, eps, classes);
                    }
                }
                Loss::SquaredError => {
                    for k in 0..classes {
                        gr[k] = orow[k] - if k == y { T::one() } else { T::zero() };
                    }
                }
            }
        });
        Ok(())
    }

    fn cost_stats(
        &self,
        rows: usize,
        classes: usize,
        o: &Vec<T>,
        labels: &Vec<u32>,
        loss: Loss,
        stats: &mut Vec<T>,
    ) -> Result<()> {
        check_cols("cost_stats", classes)?;
        check_len("cost_stats o", o.len(), rows * classes)?;
        check_len("cost_stats labels", labels.len(), rows)?;
        check_len("cost_stats stats", stats.len(), 2)?;
        let eps = T::of(loss.label_smoothing());
        let mut total = T::zero();
        let mut correct = 0usize;
        for r in 0..rows {
            let orow = &o[r * classes..(r + 1) * classes];
            let y = labels[r] as usize;
            let (lse, arg) = row_lse_argmax(orow);
            if arg == y {
                correct += 1;
            }
            total = total
                + match loss {
                    Loss::CrossEntropy { .. } => {
                        (0..classes).map(|k| target(k, y, eps, classes) * (lse - orow[k])).sum()
                    }
                    Loss::SquaredError => {
                        let half = T::of(0.5);
                        (0..classes)
                            .map(|k| {
                                let d = orow[k] - if k == y { T::one() } else { T::zero() };
                                half * d * d
                            })
                            .sum()
                    }
                };
        }
        stats[0] = stats[0] + total;
        stats[1] = stats[1] + T::of(correct as f64);
        Ok(())
    }

    fn argmax(&self, rows: usize, classes: usize, o: &Vec<T>, out: &mut Vec<u32>) -> Result<()> {
        check_cols("argmax", classes)?;
        check_len("argmax o", o.len(), rows * classes)?;
        check_len("argmax out", out.len(), rows)?;
        for r in 0..rows {
            out[r] = row_lse_argmax(&o[r * classes..(r + 1) * classes]).1 as u32;
        }
        Ok(())
    }

    fn col_sum(&self, rows: usize, cols: usize, alpha: f64, x: &Vec<T>, beta: f64, y: &mut Vec<T>) -> Result<()> {
        check_cols("col_sum", cols)?;
        check_len("col_sum x", x.len(), rows * cols)?;
        check_len("col_sum y", y.len(), cols)?;
        let (a, b) = (T::of(alpha), T::of(beta));
        let mut acc = vec![T::zero(); cols];
        for row in x[..rows * cols].chunks(cols) {
            for (s, &v) in acc.iter_mut().zip(row) {
                *s = *s + v;
            }
        }
        for (yv, s) in y[..cols].iter_mut().zip(acc) {
            *yv = if beta == 0.0 { a * s } else { a * s + b * *yv };
        }
        Ok(())
    }

    fn sum_sq(&self, x: &Vec<T>, out: &mut Vec<T>) -> Result<()> {
        check_len("sum_sq out", out.len(), 1)?;
        // Fixed chunks, partial sums collected in order: the same result whatever the
        // thread count or work stealing does (a plain parallel sum is not reproducible).
        let mut parts = vec![T::zero(); x.len().div_ceil(SUM_CHUNK)];
        let d = Disjoint::new(&mut parts);
        par_ranges(d.len, SUM_CHUNK, |lo, hi| {
            // SAFETY: disjoint ranges of `parts`.
            let xs = &x[lo * SUM_CHUNK..(hi * SUM_CHUNK).min(x.len())];
            simd::chunks(unsafe { d.part(lo, hi) }, xs, SUM_CHUNK, &chunk_sum_sq);
        });
        out[0] = parts.into_iter().sum();
        Ok(())
    }

    fn scale_by_inv_norm(&self, x: &Vec<T>, sumsq: &Vec<T>, rule: NormRule, y: &mut Vec<T>) -> Result<()> {
        check_len("scale_by_inv_norm y", y.len(), x.len())?;
        check_len("scale_by_inv_norm sumsq", sumsq.len(), 1)?;
        let s = sumsq[0];
        let usable = s > T::zero() && s.f64().is_finite();
        // In T's own arithmetic, as the kernel does in f32 (a power of two is exact in
        // either).
        let inv = match rule {
            NormRule::Eps(eps) => T::one() / (s.sqrt() + T::of(eps)),
            NormRule::InversePowerOfTwo if usable => T::of(pow2_below_inv(s.f64())),
            NormRule::InversePowerOfTwo => T::one(),
            NormRule::OrKeep if usable => T::one() / s.sqrt(),
            NormRule::OrKeep => return Ok(()),
        };
        map_with(&mut y[..x.len()], x, |v, xv| *v = xv * inv);
        Ok(())
    }

    fn spectral_clamp(&self, w: &mut Vec<T>, sumsq: &Vec<T>, gamma: f64) -> Result<()> {
        check_len("spectral_clamp sumsq", sumsq.len(), 1)?;
        let sigma = sumsq[0].sqrt();
        let g = T::of(gamma);
        if sigma > g {
            let f = g / sigma;
            map_each(w, |v| *v = *v * f);
        }
        Ok(())
    }

    fn axpby_ctl(&self, ctl: &Vec<u32>, alpha_slot: usize, x: &Vec<T>, beta_slot: usize, y: &mut Vec<T>) -> Result<()> {
        let alpha = ctl_scalar(ctl, alpha_slot, "axpby_ctl alpha")?;
        let beta = ctl_scalar(ctl, beta_slot, "axpby_ctl beta")?;
        self.axpby(alpha, x, beta, y)
    }

    fn adam(
        &self,
        p: &mut Vec<T>,
        g: &Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
        beta1: f64,
        beta2: f64,
        eps: f64,
        ctl: &Vec<u32>,
        slot: usize,
    ) -> Result<()> {
        let n = p.len();
        check_len("adam g", g.len(), n)?;
        check_len("adam m", m.len(), n)?;
        check_len("adam v", v.len(), n)?;
        let decay = T::of(ctl_scalar(ctl, slot, "adam decay")?);
        let step = T::of(ctl_scalar(ctl, slot + 1, "adam step")?);
        let inv_sqrt_bc2 = T::of(ctl_scalar(ctl, slot + 2, "adam inv_sqrt_bc2")?);
        let (b1, b2) = (T::of(beta1), T::of(beta2));
        let one = T::one();
        let e = T::of(eps);
        for i in 0..n {
            let gi = g[i];
            m[i] = b1 * m[i] + (one - b1) * gi;
            v[i] = b2 * v[i] + (one - b2) * gi * gi;
            p[i] = p[i] * decay - step * m[i] / (v[i].sqrt() * inv_sqrt_bc2 + e);
        }
        Ok(())
    }
}

/// Scalar slot `slot` of a [`crate::backend::ctl`] buffer, or a shape error naming `what`.
fn ctl_scalar(ctl: &[u32], slot: usize, what: &str) -> Result<f64> {
    crate::backend::ctl::scalar(ctl, slot).ok_or_else(|| {
        MepError::Shape(format!(
            "{what}: step-scalar slot {slot} is past the end of a {}-word buffer",
            ctl.len()
        ))
    })
}

/// Sets the CPU thread count: rayon's global pool, whose size the backend's own
/// GEMM and element-wise pool follows.
pub fn set_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(MepError::invalid("threads", n, "must be at least 1"));
    }
    pool::check_threads(n)?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| {
            MepError::invalid(
                "threads",
                n,
                format!("the CPU thread pool was already started ({e}); set threads before any work"),
            )
        })
}
