//! Small-matrix iterations in one launch (`kernels/gram.cu`), for matrices whose small
//! side k = min(rows, cols) is at most [`GRAM_MAX_K`] (an output layer's):
//! Newton–Schulz's orthogonalisation (one launch instead of 31 for the seed's 10×128
//! W_2, or its Gram-space iteration alone for longer matrices) and the spectral
//! constraint's power iteration and clamp (one instead of 45).
//!
//! Why only small k: each runs in one block, with the k × k matrices in shared
//! memory. At k ≤ 32 the GEMM chain it replaces is bound by launch latency (a few
//! microseconds per launch on a GPU for a few thousand FLOPs each); above it, cuBLAS
//! spreads each product over many multiprocessors where the kernel has one. Both
//! follow [`Cuda::set_fused`] (off: the caller's GEMM loop runs), which is how the
//! two paths are compared (tests/cuda_primitives.rs).
//!
//! Past that k, `square_products` (up to [`SQUARE_MAX_K`]) runs the Gram-space
//! iteration's k × k products over many blocks, with its linear epilogue and two
//! independent products per launch (`Backend::square_products`).

use super::{check_len, dim32, Cuda};
use crate::backend::{ns_horner_coeffs, square_product_unfused, NsIteration, SquareProduct};
use crate::{MepError, Result};
use cudarc::driver::{CudaSlice, LaunchArgs, LaunchConfig, PushKernelArg};

/// Largest small side k of the fused small-matrix kernels (`MEP_GRAM_MAX`: their
/// k × k arrays live in shared memory).
pub const GRAM_MAX_K: usize = 32;
/// Longest long side of a matrix whose orthogonalisation or spectral constraint is
/// fused: one block streams the whole matrix a few times (norm, Gram, product or
/// clamp), which beyond this costs more than the launches it saves. (Longer
/// matrices with k ≤ [`GRAM_MAX_K`] still get the fused Gram-space iteration,
/// `ns_gram_poly`, between cuBLAS's products.)
pub const GRAM_MAX_N: usize = 1 << 16;
/// Threads of the one block (`MEP_GRAM_THREADS`).
const THREADS: u32 = 256;
/// Largest k whose products `square_products` runs, by default
/// (`MEP_CUDA_SQUARE_MAX_K` or [`Cuda::set_square_max_k`] move it; 0 turns the kernel
/// off); above it cuBLAS does (the caller's GEMM, through
/// [`square_product_unfused`]). The kernel is a plain tiled
/// product: at k ≤ 256 a product is a few MFLOP, bound by launch latency, and the
/// launches it saves (the epilogue's lincomb, a second product's GEMM) are the gain;
/// above, cuBLAS's tuned kernels win on arithmetic. Not yet measured on a GPU:
/// `scripts/gpu-check.sh` profiles the seed step per kernel and times the seed
/// with `MEP_CUDA_SQUARE_MAX_K=0` beside the default.
pub const SQUARE_MAX_K: usize = 256;
/// Largest k whose Newton–Schulz iterations run as one `ns_iteration` launch each,
/// by default (`MEP_CUDA_NS_ITERATION_MAX_K` or [`Cuda::set_ns_iteration_max_k`] move
/// it; 0 turns the kernel off, and the iteration runs as three `square_products`).
/// The kernel's Horner form costs six k × k products per iteration where the three
/// launches do four: at k = 128 the two extra are 8 MFLOP spread over 64 blocks,
/// against two fewer launches on the step's longest chain (about 3 µs each on the
/// H200, BENCHMARKS.md §9); at k = 256 they would be 67 MFLOP on 128 blocks, whose
/// cost against the launches only a GPU can tell. Not yet measured on a GPU:
/// `scripts/gpu-check.sh` times the seed with `MEP_CUDA_NS_ITERATION_MAX_K=0` beside
/// the default. At most `MEP_NS_MAX_K` = 256 (the strips' shared memory).
pub const NS_ITERATION_MAX_K: usize = 128;
/// `MEP_SQ_TILE` and `MEP_SQ_ROWS`: the output tile of one block and its rows of
/// threads.
const SQ_TILE: u32 = 32;
const SQ_ROWS: u32 = 8;

/// One block of [`THREADS`].
const ONE_BLOCK: LaunchConfig = LaunchConfig {
    grid_dim: (1, 1, 1),
    block_dim: (THREADS, 1, 1),
    shared_mem_bytes: 0,
};

impl Cuda {
    /// Sets the largest k for which `square_products` runs the k × k products of
    /// [`crate::backend::Backend::square_products`] (default [`SQUARE_MAX_K`], or
    /// `MEP_CUDA_SQUARE_MAX_K`), for this backend and its clones; 0 sends every
    /// product to cuBLAS. [`Cuda::set_fused`]`(false)` turns it off too.
    pub fn set_square_max_k(&self, k: usize) {
        self.inner.square_max_k.store(k, std::sync::atomic::Ordering::Relaxed);
    }

    /// The largest k of `square_products` ([`Cuda::set_square_max_k`]).
    pub fn square_max_k(&self) -> usize {
        self.inner.square_max_k.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the largest k for which one `ns_iteration` launch runs an iteration of
    /// [`crate::backend::Backend::ns_iteration`] (default [`NS_ITERATION_MAX_K`], or
    /// `MEP_CUDA_NS_ITERATION_MAX_K`; at most 256, the kernel's own limit), for this
    /// backend and its clones; 0 turns it off. [`Cuda::set_fused`]`(false)` does too.
    pub fn set_ns_iteration_max_k(&self, k: usize) {
        self.inner
            .ns_iteration_max_k
            .store(k, std::sync::atomic::Ordering::Relaxed);
    }

    /// The largest k of `ns_iteration` ([`Cuda::set_ns_iteration_max_k`]).
    pub fn ns_iteration_max_k(&self) -> usize {
        self.inner
            .ns_iteration_max_k
            .load(std::sync::atomic::Ordering::Relaxed)
            .min(super::shapes::NS_MAX_K)
    }

    /// Whether `ns_iteration` runs for this k: fusion on and 0 < k ≤
    /// [`Cuda::ns_iteration_max_k`].
    pub(super) fn ns_iteration_fits(&self, k: usize) -> bool {
        self.fused() && k > 0 && k <= self.ns_iteration_max_k()
    }

    /// [`crate::backend::Backend::ns_iteration`] on CUDA: one `ns_iteration` launch
    /// for 0 < k ≤ [`Cuda::ns_iteration_max_k`] with fusion on, else `Ok(false)`.
    pub(super) fn ns_iteration_fused(
        &self,
        k: usize,
        coeffs: (f64, f64, f64),
        it: NsIteration<'_, Cuda>,
    ) -> Result<bool> {
        if !self.ns_iteration_fits(k) {
            return Ok(false);
        }
        let kk = k * k;
        check_len("ns_iteration gram", it.gram.len(), kk)?;
        if let Some(norm) = it.norm.as_ref() {
            check_len("ns_iteration sum_sq", norm.sum_sq.len(), 1)?;
        }
        check_len("ns_iteration q_next", it.q_next.len(), kk)?;
        if let Some(q) = it.q {
            check_len("ns_iteration q", q.len(), kk)?;
        }
        if let Some(next) = it.gram_next.as_ref() {
            check_len("ns_iteration gram_next", next.len(), kk)?;
        }
        let k32 = k as u32;
        let (a, b, c) = (coeffs.0 as f32, coeffs.1 as f32, coeffs.2 as f32);
        let h = ns_horner_coeffs(coeffs).map(|v| v as f32);
        let (has_q, has_next) = (u32::from(it.q.is_some()), u32::from(it.gram_next.is_some()));
        let shape = super::shapes::ns_strips(k, u32::MAX);
        let cfg = LaunchConfig {
            grid_dim: shape.grid,
            block_dim: shape.block,
            shared_mem_bytes: 0,
        };
        let f = self.kernel("ns_iteration")?;
        let mut lb = self.queue().stream.launch_builder(f);
        lb.arg(&k32).arg(&a).arg(&b).arg(&c);
        for hi in &h {
            lb.arg(hi);
        }
        // Without Q (= I) or a next Gram matrix, their slots take the Gram matrix,
        // which the kernel then neither reads as Q nor writes (has_q, has_next = 0).
        lb.arg(it.gram).arg(it.q.unwrap_or(it.gram)).arg(&has_q);
        lb.arg(&mut *it.q_next);
        match it.gram_next {
            Some(next) => lb.arg(next),
            None => lb.arg(it.gram),
        };
        lb.arg(&has_next);
        // Without a norm its slot takes the Gram matrix, which the kernel does not
        // read there (scale_in = scale_out = 0).
        let (eps, scale_in, scale_out) = it.norm.as_ref().map_or((0.0f32, 0u32, 0u32), |n| {
            (n.eps as f32, u32::from(n.scale_gram), u32::from(n.scale_q))
        });
        lb.arg(it.norm.as_ref().map_or(it.gram, |n| n.sum_sq));
        lb.arg(&eps).arg(&scale_in).arg(&scale_out);
        // SAFETY: the arguments match ns_iteration's signature in kernels/gram.cu;
        // every matrix holds k × k floats (checked above), k ≤ 256 = MEP_NS_MAX_K, and
        // the outputs are distinct from the inputs and each other (one &mut borrow
        // each); a_next is written only when has_next = 1.
        unsafe { lb.launch(cfg) }
            .map(|_| true)
            .map_err(|e| MepError::Cuda(format!("launching ns_iteration: {e:?}")))
    }

    /// [`crate::backend::Backend::ns_gram_poly`] on CUDA.
    pub(super) fn ns_gram_poly_fused(
        &self,
        k: usize,
        steps: usize,
        coeffs: (f64, f64, f64),
        gram: &CudaSlice<f32>,
        q: &mut CudaSlice<f32>,
    ) -> Result<bool> {
        if !self.fused() || k == 0 || k > GRAM_MAX_K || steps == 0 {
            return Ok(false);
        }
        check_len("ns_gram_poly gram", gram.len(), k * k)?;
        check_len("ns_gram_poly q", q.len(), k * k)?;
        let (k32, steps32) = (k as u32, dim32("Newton–Schulz steps", steps)?);
        let (a, b, c) = (coeffs.0 as f32, coeffs.1 as f32, coeffs.2 as f32);
        let f = self.kernel("ns_gram_poly")?;
        let mut lb = self.queue().stream.launch_builder(f);
        lb.arg(&k32).arg(&steps32).arg(&a).arg(&b).arg(&c).arg(gram).arg(q);
        // SAFETY: the arguments match ns_gram_poly's signature in kernels/gram.cu;
        // gram and q hold k × k floats (checked above).
        unsafe { lb.launch(ONE_BLOCK) }
            .map(|_| true)
            .map_err(|e| MepError::Cuda(format!("launching ns_gram_poly: {e:?}")))
    }

    /// [`crate::backend::Backend::newton_schulz`] on CUDA.
    pub(super) fn ns_orthogonalize_fused(
        &self,
        rows: usize,
        cols: usize,
        steps: usize,
        coeffs: (f64, f64, f64),
        u: &CudaSlice<f32>,
        x: &mut CudaSlice<f32>,
    ) -> Result<bool> {
        let k = rows.min(cols);
        if !self.fused() || k == 0 || k > GRAM_MAX_K || rows.max(cols) > GRAM_MAX_N {
            return Ok(false);
        }
        check_len("newton_schulz u", u.len(), rows * cols)?;
        check_len("newton_schulz x", x.len(), rows * cols)?;
        let (rows32, cols32) = (rows as u32, cols as u32);
        let steps32 = dim32("Newton–Schulz steps", steps)?;
        let (a, b, c) = (coeffs.0 as f32, coeffs.1 as f32, coeffs.2 as f32);
        let f = self.kernel("ns_orthogonalize")?;
        let mut lb = self.queue().stream.launch_builder(f);
        lb.arg(&rows32)
            .arg(&cols32)
            .arg(&steps32)
            .arg(&a)
            .arg(&b)
            .arg(&c)
            .arg(u)
            .arg(x);
        // SAFETY: the arguments match ns_orthogonalize's signature in kernels/gram.cu;
        // u and x hold rows × cols floats (checked above).
        unsafe { lb.launch(ONE_BLOCK) }
            .map(|_| true)
            .map_err(|e| MepError::Cuda(format!("launching ns_orthogonalize: {e:?}")))
    }

    /// [`crate::backend::Backend::spectral_power`] on CUDA.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn spectral_power_fused(
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
        let k = rows.min(cols);
        if !self.fused() || k == 0 || k > GRAM_MAX_K || rows.max(cols) > GRAM_MAX_N {
            return Ok(false);
        }
        check_len("spectral_power w", w.len(), rows * cols)?;
        check_len("spectral_power u", u.len(), k)?;
        check_len("spectral_power norm", norm.len(), 1)?;
        let (rows32, cols32) = (rows as u32, cols as u32);
        let squarings32 = dim32("spectral squarings", squarings)?;
        let iters32 = dim32("spectral iterations", iters)?;
        let (gamma32, clamp) = (gamma.unwrap_or(0.0) as f32, u32::from(gamma.is_some()));
        let f = self.kernel("spectral_power")?;
        let mut lb = self.queue().stream.launch_builder(f);
        lb.arg(&rows32).arg(&cols32).arg(&squarings32).arg(&iters32);
        lb.arg(w).arg(u).arg(norm).arg(&gamma32).arg(&clamp);
        // SAFETY: the arguments match spectral_power's signature in kernels/gram.cu;
        // w holds rows × cols floats, u k and norm 1 (checked above).
        unsafe { lb.launch(ONE_BLOCK) }
            .map(|_| true)
            .map_err(|e| MepError::Cuda(format!("launching spectral_power: {e:?}")))
    }
    /// [`crate::backend::Backend::square_products`] on CUDA: both products in one
    /// `square_products` launch for k ≤ [`Cuda::square_max_k`] with fusion on,
    /// otherwise the unfused default (lincomb and cuBLAS).
    pub(super) fn launch_square_products(
        &self,
        k: usize,
        first: SquareProduct<'_, Cuda>,
        second: Option<SquareProduct<'_, Cuda>>,
    ) -> Result<()> {
        if !self.fused() || k > self.square_max_k() {
            square_product_unfused(self, k, first)?;
            return second.map_or(Ok(()), |p| square_product_unfused(self, k, p));
        }
        let kk = k * k;
        for p in std::iter::once(&first).chain(second.as_ref()) {
            check_len("square_products x", p.x.len(), kk)?;
            check_len("square_products y", p.y.len(), kk)?;
            check_len("square_products out", p.out.len(), kk)?;
            if let Some((_, z, _, w)) = p.add {
                check_len("square_products z", z.len(), kk)?;
                check_len("square_products w", w.len(), kk)?;
            }
        }
        if k == 0 {
            return Ok(());
        }
        let products = 1 + u32::from(second.is_some());
        let tiles = (k as u32).div_ceil(SQ_TILE);
        let cfg = LaunchConfig {
            grid_dim: (tiles, tiles, products),
            block_dim: (SQ_TILE, SQ_ROWS, 1),
            shared_mem_bytes: 0,
        };
        let k32 = k as u32;
        // Per product: α, whether it adds, β, γ (z and w unread without `add`).
        let scalars = |p: &SquareProduct<'_, Cuda>| {
            let (b, g) = p.add.map_or((0.0, 0.0), |(b, _, g, _)| (b, g));
            (p.alpha as f32, u32::from(p.add.is_some()), b as f32, g as f32)
        };
        let s0 = scalars(&first);
        let s1 = second.as_ref().map_or((0.0, 0, 0.0, 0.0), scalars);
        let f = self.kernel("square_products")?;
        let mut lb = self.queue().stream.launch_builder(f);
        lb.arg(&k32);
        let (x0, y0) = (first.x, first.y);
        let (z0, w0) = first.add.map_or((x0, x0), |(_, z, _, w)| (z, w));
        push_product(&mut lb, [x0, y0, z0, w0], &s0);
        lb.arg(&mut *first.out);
        // Without a second product its slots repeat the first's inputs (never read:
        // gridDim.z = 1) and its output is the first's (never written).
        let mut second = second;
        match second.as_mut() {
            Some(p) => {
                let (z1, w1) = p.add.map_or((p.x, p.x), |(_, z, _, w)| (z, w));
                push_product(&mut lb, [p.x, p.y, z1, w1], &s1);
                lb.arg(&mut *p.out);
            }
            None => {
                push_product(&mut lb, [x0, y0, x0, x0], &s1);
                lb.arg(x0);
            }
        }
        // SAFETY: the arguments match square_products' signature in kernels/gram.cu;
        // every matrix holds k × k floats (checked above); the outputs are distinct
        // from the inputs (one &mut borrow each), and blocks with z = 1 run only when
        // a second product was given.
        unsafe { lb.launch(cfg) }
            .map(|_| ())
            .map_err(|e| MepError::Cuda(format!("launching square_products: {e:?}")))
    }
}

/// Pushes one product's inputs in `square_products`' order: x, y, α, add, z, β, w, γ
/// (`m` = [x, y, z, w], `s` = (α, add, β, γ)).
fn push_product<'a>(lb: &mut LaunchArgs<'a>, m: [&'a CudaSlice<f32>; 4], s: &'a (f32, u32, f32, f32)) {
    lb.arg(m[0])
        .arg(m[1])
        .arg(&s.0)
        .arg(&s.1)
        .arg(m[2])
        .arg(&s.2)
        .arg(m[3])
        .arg(&s.3);
}
