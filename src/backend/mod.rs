//! The backend interface: the primitives that every executor implements.
//!
//! The algorithm (EP phases, Backprop mode, optimizers, training loop) is written
//! once, in terms of these primitives, in `crate::ep`, `crate::optim` and
//! `crate::train`. [`cpu::Cpu`] (pure Rust, multi-threaded) is the reference;
//! `cuda::Cuda` (NVRTC kernels + cuBLAS) must agree with it.
//!
//! Conventions:
//! - Every matrix is a dense row-major buffer; shapes are passed explicitly.
//!   Batched states are `batch × features`; weights are `out × in` (PyTorch's layout).
//! - Device scalars (norms, loss sums) are buffers of length 1 so a step never has to
//!   read a value back to the host.
//! - Scalar hyper-parameters are passed as `f64` and rounded to [`Backend::Elem`] by
//!   the backend.

pub mod cpu;
pub mod ctl;
pub mod cuda;

use crate::nn::activation::ActChain;
use crate::{Loss, Result};

/// Floating-point element type of a backend (f32 everywhere; f64 on the CPU for
/// reference tests).
pub trait Scalar:
    num_traits::Float
    + num_traits::FromPrimitive
    + ndarray::LinalgScalar
    + std::iter::Sum
    + Send
    + Sync
    + std::fmt::Debug
    + Default
    + 'static
{
    /// Rounds an `f64` to this type.
    fn of(x: f64) -> Self;
    /// Widens to `f64`.
    fn f64(self) -> f64;
    /// tanh, branch-free in f32 (within 2 ulp: `cpu::fast_math`) so that the CPU
    /// backend's element-wise loops vectorise; libm's in f64.
    fn tanh_simd(self) -> Self;
    /// The logistic sigmoid 1/(1 + e^{−x}), likewise.
    fn sigmoid_simd(self) -> Self;
}

impl Scalar for f32 {
    #[inline]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn tanh_simd(self) -> Self {
        cpu::fast_math::tanh_f32(self)
    }
    #[inline(always)]
    fn sigmoid_simd(self) -> Self {
        cpu::fast_math::sigmoid_f32(self)
    }
}

impl Scalar for f64 {
    #[inline]
    fn of(x: f64) -> Self {
        x
    }
    #[inline]
    fn f64(self) -> f64 {
        self
    }
    #[inline]
    fn tanh_simd(self) -> Self {
        self.tanh()
    }
    #[inline]
    fn sigmoid_simd(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
}

/// An executor of the primitives. Cloning is cheap (a handle).
pub trait Backend: Clone + Send + Sync + 'static {
    /// Element type of [`Backend::Buf`].
    type Elem: Scalar;
    /// A buffer of `Elem`s in the backend's memory.
    type Buf: Send + Sync;
    /// A buffer of `u32`s (labels, indices, [`ctl`] step scalars) in the backend's memory.
    type Labels: Send + Sync;
    /// Captured device work, replayed by [`Backend::launch_graph`] (a CUDA graph);
    /// `()` where capture is not supported.
    type Graph: Send + Sync;

    /// Short description, e.g. `cpu (2 threads, f32)` or `cuda:0 (NVIDIA H200, sm_90)`.
    fn name(&self) -> String;

    // ---- memory -------------------------------------------------------------

    /// A zero-filled buffer of `len` elements.
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    /// Copies host data into a new buffer.
    fn upload(&self, host: &[Self::Elem]) -> Result<Self::Buf>;
    /// Copies host data into an existing buffer of the same length.
    fn write(&self, dst: &mut Self::Buf, host: &[Self::Elem]) -> Result<()>;
    /// Copies a buffer to the host.
    fn download(&self, buf: &Self::Buf) -> Result<Vec<Self::Elem>>;
    /// Number of elements of a buffer.
    fn len(&self, buf: &Self::Buf) -> usize;
    /// Number of entries of a label buffer.
    fn labels_len(&self, buf: &Self::Labels) -> usize;
    /// The identity of a buffer's storage (its address): two live buffers never
    /// share one. Captured steps are keyed by the buffers they touch.
    fn buf_id(&self, buf: &Self::Buf) -> usize;
    /// [`Backend::buf_id`] for a label buffer.
    fn labels_id(&self, buf: &Self::Labels) -> usize;
    /// Copies host labels/indices into a new buffer.
    fn upload_labels(&self, host: &[u32]) -> Result<Self::Labels>;
    /// Copies host labels/indices into the start of an existing buffer.
    fn write_labels(&self, dst: &mut Self::Labels, host: &[u32]) -> Result<()>;
    /// A zero-filled label buffer of `len` entries.
    fn zeros_labels(&self, len: usize) -> Result<Self::Labels>;
    /// Copies a label buffer to the host.
    fn download_labels(&self, buf: &Self::Labels) -> Result<Vec<u32>>;
    /// dst ← src (same length).
    fn copy(&self, src: &Self::Buf, dst: &mut Self::Buf) -> Result<()>;
    /// Waits until all queued work is done (no-op on the CPU).
    fn synchronize(&self) -> Result<()>;

    // ---- data ---------------------------------------------------------------

    /// dst[i, :] = src[idx[start + i], :] for i < count; rows have `row_len` elements.
    fn gather_rows(
        &self,
        src: &Self::Buf,
        row_len: usize,
        idx: &Self::Labels,
        start: usize,
        count: usize,
        dst: &mut Self::Buf,
    ) -> Result<()>;
    /// `dst[i] = src[idx[start + i]]` for i < count.
    fn gather_labels(
        &self,
        src: &Self::Labels,
        idx: &Self::Labels,
        start: usize,
        count: usize,
        dst: &mut Self::Labels,
    ) -> Result<()>;

    /// A mini-batch's rows and labels through the same indices: [`Backend::gather_rows`]
    /// of `x` into `x_dst`, then [`Backend::gather_labels`] of `y` into `y_dst` (the
    /// default issues the two; a backend may do both in one pass).
    #[allow(clippy::too_many_arguments)]
    fn gather_batch(
        &self,
        x: &Self::Buf,
        row_len: usize,
        y: &Self::Labels,
        idx: &Self::Labels,
        start: usize,
        count: usize,
        x_dst: &mut Self::Buf,
        y_dst: &mut Self::Labels,
    ) -> Result<()> {
        self.gather_rows(x, row_len, idx, start, count, x_dst)?;
        self.gather_labels(y, idx, start, count, y_dst)
    }

    // ---- dense linear algebra -------------------------------------------------

    /// C (m×n) ← α·op(A)·op(B) + β·C, row-major; op(A) is m×k (A is k×m when `ta`),
    /// op(B) is k×n (B is n×k when `tb`). With β = 0, C's old contents are ignored.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: f64,
        a: &Self::Buf,
        b: &Self::Buf,
        beta: f64,
        c: &mut Self::Buf,
    ) -> Result<()>;

    /// [`Backend::gemm`] with α and β read from the [`ctl`] scalar slots `alpha_slot`
    /// and `beta_slot` (as [`Backend::axpby_ctl`] reads them): an update
    /// C ← α·op(A)·op(B) + β·C whose scalars change from step to step. `tmp` (m×n) is
    /// scratch: the default forms op(A)·op(B) there and then runs
    /// [`Backend::axpby_ctl`] (two passes, the CPU's); a backend may do it as one
    /// product (CUDA: cuBLAS reading α and β from device memory).
    #[allow(clippy::too_many_arguments)]
    fn gemm_ctl(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        ctl: &Self::Labels,
        alpha_slot: usize,
        a: &Self::Buf,
        b: &Self::Buf,
        beta_slot: usize,
        c: &mut Self::Buf,
        tmp: &mut Self::Buf,
    ) -> Result<()> {
        self.gemm(ta, tb, m, n, k, 1.0, a, b, 0.0, tmp)?;
        self.axpby_ctl(ctl, alpha_slot, tmp, beta_slot, c)
    }

    // ---- element-wise -----------------------------------------------------------

    /// y ← α·x + β·y.
    fn axpby(&self, alpha: f64, x: &Self::Buf, beta: f64, y: &mut Self::Buf) -> Result<()>;
    /// y ← α·x + β·z (y's old contents are ignored): [`Backend::axpby`] into a third
    /// buffer, which saves a copy and a launch where an operand must be kept.
    fn lincomb(&self, alpha: f64, x: &Self::Buf, beta: f64, z: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    /// Nesterov momentum's buffer and direction: m ← μ·m + g, then u ← g + μ·m (with
    /// the new m). The default is [`Backend::axpby`] then [`Backend::lincomb`]; a
    /// backend may do both in one pass, with the same arithmetic.
    fn nesterov(&self, mu: f64, g: &Self::Buf, m: &mut Self::Buf, u: &mut Self::Buf) -> Result<()> {
        self.axpby(1.0, g, mu, m)?;
        self.lincomb(1.0, g, mu, m, u)
    }
    /// [`Backend::nesterov`], then `sq[0] ← Σ u²` ([`Backend::sum_sq`]): Muon's
    /// direction and the norm its orthogonalisation starts from. The default is the
    /// two calls; a backend may fuse them, with the same arithmetic.
    fn nesterov_sum_sq(
        &self,
        mu: f64,
        g: &Self::Buf,
        m: &mut Self::Buf,
        u: &mut Self::Buf,
        sq: &mut Self::Buf,
    ) -> Result<()> {
        self.nesterov(mu, g, m, u)?;
        self.sum_sq(u, sq)
    }
    /// y ← value everywhere.
    fn fill(&self, y: &mut Self::Buf, value: f64) -> Result<()>;
    /// Forward block: z (rows×cols) ← z + bias (broadcast over rows); a ← φ(z).
    fn bias_act(
        &self,
        rows: usize,
        cols: usize,
        z: &mut Self::Buf,
        bias: &Self::Buf,
        act: ActChain,
        a: &mut Self::Buf,
    ) -> Result<()>;
    /// [`Backend::bias_act`] from a source kept apart: z ← p + bias; a ← φ(z). The
    /// default copies p into z first; a backend may read p directly (one pass, the
    /// same rounding).
    #[allow(clippy::too_many_arguments)]
    fn bias_act_from(
        &self,
        rows: usize,
        cols: usize,
        p: &Self::Buf,
        bias: &Self::Buf,
        act: ActChain,
        z: &mut Self::Buf,
        a: &mut Self::Buf,
    ) -> Result<()> {
        self.copy(p, z)?;
        self.bias_act(rows, cols, z, bias, act, a)
    }
    /// Layered-energy error in perturbation form (see [`crate::ep::layered`]):
    /// e ← u − q, where u = s − s⋆ is the layer's deviation from the free state and
    /// q = W_l Δa_{l−1} the drive's, Δa_{l−1} = φ(s⋆_{l−1} + u_{l−1}) − φ(s⋆_{l−1});
    /// `q = None` for the first layer, whose input is clamped (e = u). It equals
    /// s − W_l φ(s_{l−1}) − b_l because the free state has e = 0, with the
    /// deviation's digits kept.
    fn layered_error(
        &self,
        rows: usize,
        cols: usize,
        u: &Self::Buf,
        q: Option<&Self::Buf>,
        e: &mut Self::Buf,
    ) -> Result<()>;
    /// Fused layered settle step in perturbation form at the current state, with
    /// `st.s` = s⋆ + u and `st.a` = φ(st.s) on entry (a backend may read φ′ off a,
    /// where that is φ′ bit for bit): the error
    /// e ← u − q exactly as [`Backend::layered_error`] forms it (written to `st.e`),
    /// then u ← u − η·(e + c·φ′(s) ⊙ g) (φ′ at the old s), s ← s⋆ + u, a ← φ(s) and
    /// Δa ← φ(s⋆ + u) − φ(s⋆) as [`ActChain::delta_by`] forms it, with s⋆ =
    /// `s_free`. Hidden layers pass g = Wᵀe*_{l+1} and c = −1; the output layer passes
    /// g = ∂C/∂o and c = β.
    #[allow(clippy::too_many_arguments)]
    fn layered_settle(
        &self,
        rows: usize,
        cols: usize,
        q: Option<&Self::Buf>,
        g: &Self::Buf,
        c: f64,
        eta: f64,
        act: ActChain,
        s_free: &Self::Buf,
        st: LayerState<'_, Self>,
    ) -> Result<()>;
    /// Fused Hopfield settle: s ← φ(drive + bias − β·dc), where drive holds the GEMM
    /// outputs W_l s_{l−1} + W_{l+1}ᵀ s_{l+1} and `nudge` = Some((dc, β)) adds the
    /// output nudge.
    #[allow(clippy::too_many_arguments)]
    fn hopfield_settle(
        &self,
        rows: usize,
        cols: usize,
        drive: &Self::Buf,
        bias: &Self::Buf,
        nudge: Option<(&Self::Buf, f64)>,
        act: ActChain,
        s: &mut Self::Buf,
    ) -> Result<()>;
    /// Backprop through an activation: δ ← δ ⊙ φ′(z).
    fn act_grad_mul(&self, rows: usize, cols: usize, z: &Self::Buf, act: ActChain, delta: &mut Self::Buf)
        -> Result<()>;
    /// [`Backend::act_grad_mul`] into another buffer, scaled: dst ← (scale·src) ⊙ φ′(z)
    /// (dst's old contents are ignored). It replaces a copy or an
    /// [`Backend::axpby`] followed by the in-place form, with the same rounding.
    #[allow(clippy::too_many_arguments)]
    fn act_grad_mul_into(
        &self,
        rows: usize,
        cols: usize,
        z: &Self::Buf,
        act: ActChain,
        scale: f64,
        src: &Self::Buf,
        dst: &mut Self::Buf,
    ) -> Result<()>;

    // ---- cost --------------------------------------------------------------------

    /// Per-sample cost gradient g ← ∂C/∂o (rows×classes), not divided by the batch.
    fn cost_grad(
        &self,
        rows: usize,
        classes: usize,
        o: &Self::Buf,
        labels: &Self::Labels,
        loss: Loss,
        g: &mut Self::Buf,
    ) -> Result<()>;
    /// `stats[0] += Σ_rows C(o, y)`; `stats[1] += #rows whose argmax(o) == y`.
    /// `stats` has length 2 and stays on the device.
    fn cost_stats(
        &self,
        rows: usize,
        classes: usize,
        o: &Self::Buf,
        labels: &Self::Labels,
        loss: Loss,
        stats: &mut Self::Buf,
    ) -> Result<()>;
    /// `out[r] = argmax_k o[r, k]` (first maximum).
    fn argmax(&self, rows: usize, classes: usize, o: &Self::Buf, out: &mut Self::Labels) -> Result<()>;

    // ---- reductions --------------------------------------------------------------------

    /// y (cols) ← α·Σ_rows x (rows×cols) + β·y. Bias gradients.
    fn col_sum(&self, rows: usize, cols: usize, alpha: f64, x: &Self::Buf, beta: f64, y: &mut Self::Buf) -> Result<()>;
    /// `out[0] ← Σ x²`. `out` has length 1.
    fn sum_sq(&self, x: &Self::Buf, out: &mut Self::Buf) -> Result<()>;

    // ---- optimizer element-wise ---------------------------------------------------------

    /// `y ← x / ‖x‖` by `rule`, with `sumsq[0]` (the squared norm) read on the device:
    /// the Newton–Schulz input, the spectral constraint's Gram matrices and
    /// power-iteration vectors. See [`NormRule`] for the cases where the norm is 0 or
    /// not finite.
    fn scale_by_inv_norm(&self, x: &Self::Buf, sumsq: &Self::Buf, rule: NormRule, y: &mut Self::Buf) -> Result<()>;
    /// Spectral constraint: with `σ̂ = √sumsq[0]`, if σ̂ > γ then w ← w·γ/σ̂.
    fn spectral_clamp(&self, w: &mut Self::Buf, sumsq: &Self::Buf, gamma: f64) -> Result<()>;
    /// y ← α·x + β·y with α and β read from the [`ctl`] scalar slots `alpha_slot` and
    /// `beta_slot` of `ctl` (on the device: a captured step reads the values of the
    /// step it runs in). With β = 0, y's old contents are ignored.
    fn axpby_ctl(
        &self,
        ctl: &Self::Labels,
        alpha_slot: usize,
        x: &Self::Buf,
        beta_slot: usize,
        y: &mut Self::Buf,
    ) -> Result<()>;
    /// Adam with decoupled weight decay, its per-step scalars read from the [`ctl`]
    /// slots `slot`, `slot + 1`, `slot + 2` = (decay, step, inv_sqrt_bc2) as
    /// [`ctl::adam_scalars`] computes them:
    /// m ← β1 m + (1−β1) g; v ← β2 v + (1−β2) g²;
    /// p ← p·decay − step · m / (√v · inv_sqrt_bc2 + eps).
    #[allow(clippy::too_many_arguments)]
    fn adam(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        beta1: f64,
        beta2: f64,
        eps: f64,
        ctl: &Self::Labels,
        slot: usize,
    ) -> Result<()>;

    // ---- fused phases -----------------------------------------------------------------------

    /// The layered energy's whole nudged phase in one fused operation, when the backend
    /// has one for these shapes: exactly the sweeps [`crate::ep::layered::nudged_phase`]
    /// issues primitive by primitive (and the final errors and the per-row residuals
    /// its `residual` would sum), done by one kernel.
    /// `Ok(false)` (the default, and the CPU's answer) means it has none: the caller
    /// runs the sweeps itself. Backends choose by shape (see the CUDA backend's
    /// `fused` module for the limits and why).
    fn layered_nudged_fused(&self, phase: LayeredPhase<'_, Self>) -> Result<bool> {
        let _ = phase;
        Ok(false)
    }

    /// `sweeps` Hopfield settle sweeps in one fused operation, when the backend has one
    /// for these shapes: exactly what [`crate::ep::hopfield`]'s settle issues primitive
    /// by primitive, with `rowres[r]` = the last sweep's Σ_l ‖Δs_l‖² of row r.
    /// `Ok(false)` (the default, and the CPU's answer): the caller runs the sweeps.
    fn hopfield_settle_fused(&self, phase: HopfieldPhase<'_, Self>) -> Result<bool> {
        let _ = phase;
        Ok(false)
    }

    /// One or two products of `k × k` row-major matrices, each with a linear epilogue
    /// ([`SquareProduct`]): `out ← α·(x·y) + (β·z + γ·w)`, or `out ← α·(x·y)` without
    /// [`SquareProduct::add`]. The two are independent (no output may be the other's
    /// input), so a backend may run them in one launch. The default runs each as
    /// [`square_product_unfused`]: [`Backend::lincomb`] then a [`Backend::gemm`]
    /// with β = 1 that adds the product; a fused backend computes the same
    /// arithmetic, with the product's sum in its own order.
    fn square_products(
        &self,
        k: usize,
        first: SquareProduct<'_, Self>,
        second: Option<SquareProduct<'_, Self>>,
    ) -> Result<()> {
        square_product_unfused(self, k, first)?;
        second.map_or(Ok(()), |p| square_product_unfused(self, k, p))
    }

    /// One iteration of Newton–Schulz's polynomial in Gram space, fused, when the
    /// backend has one for this `k` ([`NsIteration`]): from the `k × k` A = `gram` and
    /// Q, with P = aI + bA + cA², it writes Q ← P·Q (P itself when Q = I) into
    /// `q_next` and, when asked, A ← P·A·P into `gram_next`, the values
    /// [`crate::optim::newton_schulz::orthogonalize`]'s iteration computes with
    /// [`Backend::square_products`]. The association may differ: the CUDA kernel forms
    /// P·A·P as A·p(A)² by Horner's rule ([`ns_horner_coeffs`]), which lets one launch
    /// do the iteration. With [`NsIteration::norm`], A and the new Q are scaled as it
    /// says. `Ok(false)` (the default, and the CPU's answer): the caller issues the
    /// products. A backend takes every iteration of a `k` or none.
    fn ns_iteration(&self, k: usize, coeffs: (f64, f64, f64), it: NsIteration<'_, Self>) -> Result<bool> {
        let _ = (k, coeffs, it);
        Ok(false)
    }

    /// Whether, for this `k`, the backend runs Newton–Schulz's iterations one
    /// [`Backend::ns_iteration`] at a time with the normalisation folded in
    /// ([`NsNorm`]); asked before the Gram matrix is formed, which is then U's own
    /// and [`Backend::ns_gram_poly`] is not offered. The default: no.
    fn folds_ns_norm(&self, k: usize) -> bool {
        let _ = k;
        false
    }

    /// Newton–Schulz's polynomial iteration in Gram space, fused, when the backend has
    /// one for this `k`: from A = `gram` (`k × k`) and Q₀ = I, each of `steps` (≥ 1)
    /// iterations forms P = aI + bA + cA², Q ← P·Q and A ← P·A·P, exactly as
    /// [`crate::optim::newton_schulz::orthogonalize`] issues them; the final Q goes
    /// to `q` and `gram` is left as it was. `Ok(false)` (the default, and the CPU's
    /// answer): the caller iterates.
    fn ns_gram_poly(
        &self,
        k: usize,
        steps: usize,
        coeffs: (f64, f64, f64),
        gram: &Self::Buf,
        q: &mut Self::Buf,
    ) -> Result<bool> {
        let _ = (k, steps, coeffs, gram, q);
        Ok(false)
    }

    /// Newton–Schulz's whole orthogonalisation, fused, when the backend has one for
    /// these shapes: `x` ← what [`crate::optim::newton_schulz::orthogonalize`] computes
    /// from the `rows × cols` matrix `u` with `steps` iterations of `coeffs`, in the
    /// same operations. `Ok(false)` (the default, and the CPU's answer): the caller
    /// issues them.
    fn newton_schulz(
        &self,
        rows: usize,
        cols: usize,
        steps: usize,
        coeffs: (f64, f64, f64),
        u: &Self::Buf,
        x: &mut Self::Buf,
    ) -> Result<bool> {
        let _ = (rows, cols, steps, coeffs, u, x);
        Ok(false)
    }

    /// The spectral constraint's power iteration, fused, when the backend has one for
    /// these shapes: for the `rows × cols` matrix `w`, exactly what
    /// [`crate::optim::spectral`] issues with GEMMs (the Gram matrix, `squarings`
    /// normalised squarings, max(`iters`, 1) iterations on the persistent vector `u`,
    /// σ̂² into `norm`), then, with `gamma = Some(γ)`, [`Backend::spectral_clamp`].
    /// `Ok(false)` (the default, and the CPU's answer): the caller issues them.
    #[allow(clippy::too_many_arguments)]
    fn spectral_power(
        &self,
        rows: usize,
        cols: usize,
        squarings: usize,
        iters: usize,
        w: &mut Self::Buf,
        u: &mut Self::Buf,
        norm: &mut Self::Buf,
        gamma: Option<f64>,
    ) -> Result<bool> {
        let _ = (rows, cols, squarings, iters, w, u, norm, gamma);
        Ok(false)
    }

    // ---- independent work ----------------------------------------------------------------

    /// Runs `body(0)`, …, `body(n − 1)`: work the caller guarantees to be independent
    /// (no call writes a buffer another one reads or writes; shared inputs are only
    /// read). A backend may queue the calls on queues that run concurrently — CUDA
    /// puts each branch on the one of its L streams with the least work queued since
    /// the fork (so list the longest branches first), forked from its stream and
    /// joined back by events, and a captured step holds them as parallel graph
    /// branches — and work queued after this returns is ordered after all of them.
    /// The default (the CPU) runs them in order; so does a nested call. The first
    /// error stops the remaining calls and is returned.
    fn concurrently(&self, n: usize, body: &mut dyn FnMut(usize) -> crate::Result<()>) -> crate::Result<()> {
        (0..n).try_for_each(body)
    }

    // ---- captured steps ------------------------------------------------------------------

    /// Starts capturing the work queued from now on (instead of running it) into a
    /// graph, if the backend can; `Ok(false)` (the default: the CPU) means it cannot,
    /// and the work runs eagerly as usual. Between this and [`Backend::end_capture`]
    /// nothing may read or write host memory through the backend.
    fn begin_capture(&self) -> Result<bool> {
        Ok(false)
    }
    /// Ends a capture started by [`Backend::begin_capture`] and returns the graph,
    /// ready to launch.
    fn end_capture(&self) -> Result<Self::Graph> {
        Err(crate::MepError::Cuda(format!(
            "{}: this backend does not capture graphs",
            self.name()
        )))
    }
    /// Queues one replay of a captured graph.
    fn launch_graph(&self, graph: &Self::Graph) -> Result<()> {
        let _ = graph;
        Err(crate::MepError::Cuda(format!(
            "{}: this backend does not capture graphs",
            self.name()
        )))
    }
}

/// How [`Backend::scale_by_inv_norm`] turns `s = sumsq[0]`, a squared norm, into the
/// factor applied to `x`. The rule's code (`NormRule::code`) is what the CUDA kernel
/// `scale_by_inv_norm` (`kernels/optim.cu`) switches on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NormRule {
    /// `y ← x / (√s + eps)`: `eps` keeps a zero `x` at zero.
    Eps(f64),
    /// `y ← x·2^(−e)`, where `s = m·2^e` with `m` in [½, 1) (`e` clamped to
    /// [−126, 126]): `x` divided by `s` to within a factor of 2, by a power of two, so
    /// exactly: whatever is computed from `y` scales back without rounding. With `s`
    /// = ‖W‖² = tr(WWᵀ) it brings a Gram matrix of any magnitude to trace ~1, whose
    /// powers neither underflow nor overflow. `y ← x` when `s` is 0 or not finite.
    /// (Unlike the other rules, `s` here need not be `x`'s own squared norm.)
    InversePowerOfTwo,
    /// `y ← x / √s` when `s` is positive and finite; otherwise `y` keeps its value. A
    /// power iteration keeps its last direction instead of collapsing to 0 (which
    /// would never recover) when the matrix it iterates on is 0.
    OrKeep,
}

impl NormRule {
    /// The rule as the kernels take it: (code, eps) with code 0 = `Eps`,
    /// 1 = `InversePowerOfTwo`, 2 = `OrKeep`.
    pub fn code(self) -> (u32, f64) {
        match self {
            NormRule::Eps(eps) => (0, eps),
            NormRule::InversePowerOfTwo => (1, 0.0),
            NormRule::OrKeep => (2, 0.0),
        }
    }
}

/// `2^(−e)` for a positive, finite `s = m·2^e` with `m` in [½, 1) (C's `frexp`
/// exponent, read from the bits), `e` clamped to [−126, 126] so that the factor is a
/// normal f32 (as the kernel clamps it; below 2^−126 it is no longer exact).
pub(crate) fn pow2_below_inv(s: f64) -> f64 {
    let e = ((s.to_bits() >> 52) & 0x7ff) as i32 - 1022;
    2f64.powi(-e.clamp(-126, 126))
}

/// The end `start + count` of a gather's index range, or a [`MepError::Shape`] naming
/// the primitive when it overflows `usize` (the gathers' arguments come from callers of
/// the public trait, not only from the batch iterator).
pub(crate) fn gather_end(what: &str, start: usize, count: usize) -> Result<usize> {
    start
        .checked_add(count)
        .ok_or_else(|| crate::MepError::Shape(format!("{what}: start {start} + count {count} overflows")))
}

/// One product of [`Backend::square_products`]: `out ← α·(x·y) + (β·z + γ·w)` for
/// `k × k` row-major matrices (`out ← α·(x·y)` when `add` is `None`).
pub struct SquareProduct<'a, B: Backend> {
    /// α.
    pub alpha: f64,
    /// The left factor.
    pub x: &'a B::Buf,
    /// The right factor.
    pub y: &'a B::Buf,
    /// The added terms (β, z, γ, w), if any.
    pub add: Option<(f64, &'a B::Buf, f64, &'a B::Buf)>,
    /// The result; its old contents are ignored.
    pub out: &'a mut B::Buf,
}

/// One Newton–Schulz iteration's buffers for [`Backend::ns_iteration`] (all `k × k`,
/// row-major; the outputs distinct from the inputs and from each other).
pub struct NsIteration<'a, B: Backend> {
    /// A, the iteration's Gram matrix (symmetric).
    pub gram: &'a B::Buf,
    /// Q, the product of the previous iterations' polynomials; `None` for Q = I.
    pub q: Option<&'a B::Buf>,
    /// Receives P·Q (or P).
    pub q_next: &'a mut B::Buf,
    /// Receives P·A·P, the next iteration's Gram matrix; `None` after the last.
    pub gram_next: Option<&'a mut B::Buf>,
    /// The normalisation, when `gram` is the Gram matrix of an unnormalised U.
    pub norm: Option<NsNorm<'a, B>>,
}

/// Newton–Schulz's normalisation X₀ = U / (‖U‖_F + eps) folded into the Gram-space
/// iterations ([`Backend::ns_iteration`]): with s = 1 / (√`sum_sq[0]` + eps), the
/// iteration's A is s²·`gram` when `scale_gram` (the first iteration, `gram` = UUᵀ)
/// and `q_next` receives s·P·Q when `scale_q` (the last), so that the result is
/// Q·U = (Q/‖U‖)·U with no normalised copy of U formed.
pub struct NsNorm<'a, B: Backend> {
    /// Σ u² (one element).
    pub sum_sq: &'a B::Buf,
    /// The eps of the normalisation.
    pub eps: f64,
    /// A = s²·gram.
    pub scale_gram: bool,
    /// q_next ← s·P·Q.
    pub scale_q: bool,
}

/// The coefficients (h₀ … h₄) = (c², 2bc, b² + 2ac, 2ab, a²) of Horner's rule for
/// A·p(A)² = P·A·P with p(A) = aI + bA + cA² ([`Backend::ns_iteration`]):
/// H = h₀A + h₁I, then H ← H·A + hᵢI for i = 2, 3, 4, and A·p(A)² = H·A.
pub fn ns_horner_coeffs((a, b, c): (f64, f64, f64)) -> [f64; 5] {
    [c * c, 2.0 * b * c, b * b + 2.0 * a * c, 2.0 * a * b, a * a]
}

/// [`Backend::square_products`]' default for one product, in the backend's own
/// primitives: with `add`, [`Backend::lincomb`] forms β·z + γ·w in `out` and a
/// [`Backend::gemm`] with β = 1 adds α·x·y; without, one GEMM with β = 0.
pub fn square_product_unfused<B: Backend>(bk: &B, k: usize, p: SquareProduct<'_, B>) -> Result<()> {
    match p.add {
        Some((beta, z, gamma, w)) => {
            bk.lincomb(beta, z, gamma, w, p.out)?;
            bk.gemm(false, false, k, k, k, p.alpha, p.x, p.y, 1.0, p.out)
        }
        None => bk.gemm(false, false, k, k, k, p.alpha, p.x, p.y, 0.0, p.out),
    }
}

/// What both fused phases ([`LayeredPhase`], [`HopfieldPhase`]) settle: a network's
/// blocks and parameters, the batch (its clamped input's drive and its labels), the
/// cost, and the states, one buffer per block (`rows × n_l`).
///
/// The blocks and parameters are the network's own slices, so a caller builds this
/// without allocating (eager steps reach it every step).
pub struct PhaseNet<'a, B: Backend> {
    /// Samples.
    pub rows: usize,
    /// The blocks: each one's width n_l (`out`) and activation chain φ_l (`act`).
    pub blocks: &'a [crate::nn::Block],
    /// Each block's weights W_l (`w`, `n_l × n_{l−1}`; W_1 is not read: see `p0`) and
    /// bias b_l (`b`).
    pub params: &'a [crate::nn::Params<B>],
    /// W_1 x (`rows × n_1`): the clamped input's drive of the first block.
    pub p0: &'a B::Buf,
    /// The labels of the rows.
    pub labels: &'a B::Labels,
    /// The cost C (of the nudge).
    pub loss: Loss,
    /// States s_l (read and written; only written by a Hopfield settle that starts
    /// elsewhere, see [`HopfieldStart`]).
    pub s: &'a mut [B::Buf],
}

/// One layer's state in a perturbation-form layered settle step
/// ([`Backend::layered_settle`]); every buffer is rows × cols.
pub struct LayerState<'a, B: Backend> {
    /// The deviation u = s − s⋆ from the free state (read and written).
    pub u: &'a mut B::Buf,
    /// The state s = s⋆ + u (written).
    pub s: &'a mut B::Buf,
    /// a = φ(s) (read: φ(s) of the state on entry; written).
    pub a: &'a mut B::Buf,
    /// Δa = φ(s⋆ + u) − φ(s⋆), accurate relative to itself (written).
    pub da: &'a mut B::Buf,
    /// The error e = u − q at the state before the step (written).
    pub e: &'a mut B::Buf,
}

/// The operands of a fused layered nudged phase ([`Backend::layered_nudged_fused`]):
/// `steps` sweeps at signed strength `beta` with relaxation `omega`, from the free
/// state in `net.s`, leaving the final state there (and its φ in `a`) and its errors
/// in `e`, all in the perturbation form of [`crate::ep::layered`]: the sweeps move
/// u = s − s⋆ and Δa, and e_l = u_l − W_l Δa_{l−1}.
pub struct LayeredPhase<'a, B: Backend> {
    /// The network, the batch and the states s_l.
    pub net: PhaseNet<'a, B>,
    /// Signed nudging strength β (unused when `clamp` is set).
    pub beta: f64,
    /// `Some(t)`: a clamped phase instead of a nudged one, as
    /// [`crate::ep::layered::nudged_phase`] runs [`crate::ep::Phase::Clamp`]: before the
    /// sweeps, the output state s_L ← s_L − t·(a_L − onehot(y)) (the squared error's
    /// gradient, whatever `net.loss`; after the free phase when `free` is set),
    /// a_L = s_L; the sweeps then keep s_L, and the residual leaves the output out.
    pub clamp: Option<f64>,
    /// Relaxation ω of each sweep.
    pub omega: f64,
    /// Sweeps.
    pub steps: usize,
    /// Activations a_l = φ_l(s_l) of the final state (written).
    pub a: &'a mut [B::Buf],
    /// Errors of the final state (written).
    pub e: &'a mut [B::Buf],
    /// Per row r (the first `rows` entries, written): the final state's settle
    /// residual Σ_l ‖∇_{s_l}F‖², as [`crate::ep::layered`] computes it unfused.
    pub rowres: &'a mut B::Buf,
    /// `Some(rowstats)`: the phase starts with the free phase instead of the states in
    /// `net.s` and `a` (which it then only writes): the forward pass from `net.p0`
    /// (s_l = W_l a_{l−1} + b_l, a_l = φ_l(s_l), as [`crate::ep::layered::forward`]),
    /// and for each row r of its output o, `rowstats[2r]` = C(o, y) and
    /// `rowstats[2r + 1]` = 1 if argmax o = y else 0 (the terms
    /// [`Backend::cost_stats`] sums; at least `2·rows` entries, written).
    pub free: Option<&'a mut B::Buf>,
}

/// Where a fused Hopfield settle starts ([`HopfieldPhase::start`]).
pub enum HopfieldStart<'a, B: Backend> {
    /// From the states in `net.s`, settled in place.
    Current,
    /// From zero states (a free phase): exactly [`Backend::fill`] with 0 on every s_l
    /// before the sweeps; `net.s` is only written.
    Zero,
    /// From these states (one buffer for each of the first k ≤ L blocks, `rows × n_l`,
    /// only read): exactly [`Backend::copy`] of each into `net.s` before the sweeps;
    /// blocks past the k start from their current states in `net.s` (a clamped
    /// output set by the caller). Two phases can so settle from one free state at
    /// once, each into its own `net.s`.
    From(&'a [B::Buf]),
}

/// The operands of fused Hopfield settling ([`Backend::hopfield_settle_fused`]):
/// `sweeps` Gauss–Seidel sweeps from `start`, leaving the final states in `net.s`,
/// the output nudged by −β·∂C/∂o when `nudge` is `Some(β)`, or not swept at all when
/// `clamped`.
pub struct HopfieldPhase<'a, B: Backend> {
    /// The network, the batch and the states s_l.
    pub net: PhaseNet<'a, B>,
    /// The output's nudge β, if nudged.
    pub nudge: Option<f64>,
    /// The output state is fixed (a clamped phase).
    pub clamped: bool,
    /// Sweeps.
    pub sweeps: usize,
    /// The states the sweeps start from.
    pub start: HopfieldStart<'a, B>,
    /// Per-row Σ‖Δs‖² of the last sweep (at least `rows` entries; written).
    pub rowres: &'a mut B::Buf,
}
