//! Element-wise kernels of the forward pass and of the EP settling dynamics
//! (`kernels/settle.cu`): one 1-D grid-stride launch each.

use super::{check_len, dim32, elems, Cuda};
use crate::backend::LayerState;
use crate::nn::activation::ActChain;
use crate::Result;
use cudarc::driver::CudaSlice;

impl Cuda {
    /// `Backend::bias_act` (`src` = None: in place) and `Backend::bias_act_from`
    /// (`src` = Some(p)): the `bias_act` kernel.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_bias_act(
        &self,
        rows: usize,
        cols: usize,
        src: Option<&CudaSlice<f32>>,
        z: &mut CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        act: ActChain,
        a: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = elems("bias_act", rows, cols)?;
        check_len("bias_act z", z.len(), n)?;
        check_len("bias_act a", a.len(), n)?;
        check_len("bias_act bias", bias.len(), cols)?;
        if let Some(p) = src {
            check_len("bias_act_from p", p.len(), n)?;
        }
        if n == 0 {
            return Ok(());
        }
        // The source by address: z itself (in place) cannot be borrowed twice.
        let src_ptr = crate::backend::Backend::buf_id(self, src.unwrap_or(z)) as u64;
        let (n64, cols32, chain) = (n as u64, dim32("bias_act cols", cols)?, act.code());
        launch!(
            self,
            "bias_act",
            self.grid_1d(n),
            [&n64, &cols32, &src_ptr, z, bias, &chain, a]
        )
    }

    /// `Backend::layered_error`: the `layered_error` kernel.
    pub(super) fn launch_layered_error(
        &self,
        rows: usize,
        cols: usize,
        u: &CudaSlice<f32>,
        q: Option<&CudaSlice<f32>>,
        e: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = elems("layered_error", rows, cols)?;
        check_len("layered_error u", u.len(), n)?;
        check_len("layered_error e", e.len(), n)?;
        if let Some(q) = q {
            check_len("layered_error q", q.len(), n)?;
        }
        if n == 0 {
            return Ok(());
        }
        // q by address (u stands in, unread, when there is none).
        let q_ptr = crate::backend::Backend::buf_id(self, q.unwrap_or(u)) as u64;
        let (n64, has_q) = (n as u64, q.is_some() as u32);
        launch!(self, "layered_error", self.grid_1d(n), [&n64, u, &q_ptr, &has_q, e])
    }

    /// `Backend::layered_settle`: the `layered_settle` kernel.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_layered_settle(
        &self,
        rows: usize,
        cols: usize,
        q: Option<&CudaSlice<f32>>,
        g: &CudaSlice<f32>,
        c: f64,
        eta: f64,
        act: ActChain,
        s_free: &CudaSlice<f32>,
        st: LayerState<'_, Self>,
    ) -> Result<()> {
        let n = elems("layered_settle", rows, cols)?;
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
        if n == 0 {
            return Ok(());
        }
        let q_ptr = crate::backend::Backend::buf_id(self, q.unwrap_or(g)) as u64;
        let (n64, has_q, c32, eta32, chain) = (n as u64, q.is_some() as u32, c as f32, eta as f32, act.code());
        let LayerState { u, s, a, da, e } = st;
        launch!(
            self,
            "layered_settle",
            self.grid_1d(n),
            [&n64, &q_ptr, &has_q, g, &c32, &eta32, &chain, s_free, u, s, a, da, e]
        )
    }

    /// `Backend::hopfield_settle`: the `hopfield_settle` kernel.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_hopfield_settle(
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

    /// `Backend::act_grad_mul`: the `act_grad_mul` kernel.
    pub(super) fn launch_act_grad_mul(
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

    /// `Backend::act_grad_mul_into`: the `act_grad_mul_into` kernel.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_act_grad_mul_into(
        &self,
        rows: usize,
        cols: usize,
        z: &CudaSlice<f32>,
        act: ActChain,
        scale: f64,
        src: &CudaSlice<f32>,
        dst: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = elems("act_grad_mul_into", rows, cols)?;
        check_len("act_grad_mul_into z", z.len(), n)?;
        check_len("act_grad_mul_into src", src.len(), n)?;
        check_len("act_grad_mul_into dst", dst.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let (n64, chain, scale32) = (n as u64, act.code(), scale as f32);
        launch!(
            self,
            "act_grad_mul_into",
            self.grid_1d(n),
            [&n64, z, &chain, &scale32, src, dst]
        )
    }
}
