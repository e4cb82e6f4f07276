//! Optimizer element-wise kernels (`kernels/optim.cu`): axpby, lincomb, nesterov and fill, the
//! normalisation and spectral clamp that read a norm on the device, and the updates
//! whose per-step scalars come from a [`crate::backend::ctl`] buffer. One 1-D
//! grid-stride launch each.

use super::{check_len, dim32, Cuda};
use crate::backend::{ctl, NormRule};
use crate::Result;
use cudarc::driver::CudaSlice;

impl Cuda {
    /// `Backend::axpby`: the `axpby` kernel.
    pub(super) fn launch_axpby(&self, alpha: f64, x: &CudaSlice<f32>, beta: f64, y: &mut CudaSlice<f32>) -> Result<()> {
        check_len("axpby", x.len(), y.len())?;
        let n = y.len();
        if n == 0 {
            return Ok(());
        }
        let (n64, a, b) = (n as u64, alpha as f32, beta as f32);
        launch!(self, "axpby", self.grid_1d(n), [&n64, &a, x, &b, y])
    }

    /// `Backend::lincomb`: the `lincomb` kernel.
    pub(super) fn launch_lincomb(
        &self,
        alpha: f64,
        x: &CudaSlice<f32>,
        beta: f64,
        z: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_len("lincomb x", x.len(), y.len())?;
        check_len("lincomb z", z.len(), y.len())?;
        let n = y.len();
        if n == 0 {
            return Ok(());
        }
        let (n64, a, b) = (n as u64, alpha as f32, beta as f32);
        launch!(self, "lincomb", self.grid_1d(n), [&n64, &a, x, &b, z, y])
    }

    /// `Backend::nesterov`: the `nesterov` kernel.
    pub(super) fn launch_nesterov(
        &self,
        mu: f64,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        u: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_len("nesterov m", m.len(), g.len())?;
        check_len("nesterov u", u.len(), g.len())?;
        let n = g.len();
        if n == 0 {
            return Ok(());
        }
        let (n64, mu32) = (n as u64, mu as f32);
        launch!(self, "nesterov", self.grid_1d(n), [&n64, &mu32, g, m, u])
    }

    /// `Backend::fill`: the `fill` kernel.
    pub(super) fn launch_fill(&self, y: &mut CudaSlice<f32>, value: f64) -> Result<()> {
        let n = y.len();
        if n == 0 {
            return Ok(());
        }
        let (n64, v) = (n as u64, value as f32);
        launch!(self, "fill", self.grid_1d(n), [&n64, &v, y])
    }

    /// `Backend::scale_by_inv_norm`: the `scale_by_inv_norm` kernel.
    pub(super) fn launch_scale_by_inv_norm(
        &self,
        x: &CudaSlice<f32>,
        sumsq: &CudaSlice<f32>,
        rule: NormRule,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_len("scale_by_inv_norm y", y.len(), x.len())?;
        check_len("scale_by_inv_norm sumsq", sumsq.len(), 1)?;
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let (code, eps) = rule.code();
        let (n64, e) = (n as u64, eps as f32);
        launch!(
            self,
            "scale_by_inv_norm",
            self.grid_1d(n),
            [&n64, x, sumsq, &e, &code, y]
        )
    }

    /// `Backend::spectral_clamp`: the `spectral_clamp` kernel.
    pub(super) fn launch_spectral_clamp(
        &self,
        w: &mut CudaSlice<f32>,
        sumsq: &CudaSlice<f32>,
        gamma: f64,
    ) -> Result<()> {
        check_len("spectral_clamp sumsq", sumsq.len(), 1)?;
        let n = w.len();
        if n == 0 {
            return Ok(());
        }
        let (n64, g) = (n as u64, gamma as f32);
        launch!(self, "spectral_clamp", self.grid_1d(n), [&n64, w, sumsq, &g])
    }

    /// `Backend::axpby_ctl`: the `axpby_ctl` kernel.
    pub(super) fn launch_axpby_ctl(
        &self,
        ctl: &CudaSlice<u32>,
        alpha_slot: usize,
        x: &CudaSlice<f32>,
        beta_slot: usize,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_len("axpby_ctl", x.len(), y.len())?;
        check_len("axpby_ctl ctl", ctl.len(), ctl::words(alpha_slot.max(beta_slot) + 1))?;
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

    /// `Backend::adam`: the `adam` kernel.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_adam(
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
        check_len("adam ctl", ctl.len(), ctl::words(slot + 3))?;
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
}
