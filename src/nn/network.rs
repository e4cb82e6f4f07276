//! A network's parameters on a backend, its energy, and inference.

use super::arch::Arch;
use crate::backend::{Backend, Scalar};
use crate::ep::Energy;
use crate::rng::Rng;
use crate::{MepError, Result};

/// The parameters of one block on the backend.
pub struct Params<B: Backend> {
    /// Weights, `out × in` row-major.
    pub w: B::Buf,
    /// Bias, `out` (zeros, never trained, when the Linear has no bias).
    pub b: B::Buf,
}

/// A network on backend `B`: architecture, energy (which defines the settling
/// dynamics and inference) and parameters.
pub struct Network<B: Backend> {
    /// The executor.
    pub backend: B,
    /// Blocks and widths.
    pub arch: Arch,
    /// The energy the network is trained and evaluated with.
    pub energy: Energy,
    /// Per-block parameters. Code that writes them directly (rather than through
    /// [`Network::set_from_host`]) calls [`Network::params_replaced`] afterwards.
    pub params: Vec<Params<B>>,
    /// Which network this is (unique in the process) and how many times its
    /// parameters were replaced from outside an optimizer: see [`Network::stamp`].
    stamp: (u64, u64),
}

/// Source of the process-unique network identities of [`Network::stamp`].
static NEXT_NETWORK_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl<B: Backend> Network<B> {
    /// PyTorch's default initialisation (weights and biases uniform in ±1/√in),
    /// drawn from one seeded generator in block order, weights then bias: the
    /// same seed gives the same model on every backend.
    pub fn new(backend: B, arch: Arch, energy: Energy, seed: u64) -> Result<Self> {
        energy.validate()?;
        let mut rng = Rng::new(seed);
        let mut params = Vec::with_capacity(arch.depth());
        for blk in &arch.blocks {
            let bound = 1.0 / (blk.inp as f64).sqrt();
            // Fallible: a layer too large for memory is an error naming its size.
            let mut w: Vec<B::Elem> = crate::error::try_filled(blk.out * blk.inp, B::Elem::of(0.0), "a weight matrix")?;
            w.iter_mut()
                .for_each(|v| *v = B::Elem::of(rng.uniform_range(-bound, bound)));
            let b: Vec<B::Elem> = (0..blk.out)
                .map(|_| {
                    B::Elem::of(if blk.bias {
                        rng.uniform_range(-bound, bound)
                    } else {
                        0.0
                    })
                })
                .collect();
            params.push(Params {
                w: backend.upload(&w)?,
                b: backend.upload(&b)?,
            });
        }
        Ok(Network {
            backend,
            arch,
            energy,
            params,
            stamp: (NEXT_NETWORK_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed), 0),
        })
    }

    /// Host copies of every block's (weights, bias), as f64.
    pub fn to_host(&self) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
        self.params
            .iter()
            .map(|p| {
                let w = self.backend.download(&p.w)?.into_iter().map(|v| v.f64()).collect();
                let b = self.backend.download(&p.b)?.into_iter().map(|v| v.f64()).collect();
                Ok((w, b))
            })
            .collect()
    }

    /// (identity, version): the identity is unique to this network in the process,
    /// and the version counts the replacements of its parameters from outside an
    /// optimizer ([`Network::set_from_host`], [`Network::params_replaced`]). An
    /// optimizer keeps a copy of the parameters to restore when a step diverges;
    /// when the stamp differs from the one its copy was taken at, the copy is stale
    /// (another network, or weights loaded since), and it takes a fresh one before
    /// stepping.
    pub fn stamp(&self) -> (u64, u64) {
        self.stamp
    }

    /// Records that the parameters were replaced from outside an optimizer (written
    /// directly through [`Network::params`]), so that an optimizer's copy of the
    /// parameters taken earlier is not restored over them ([`Network::stamp`]).
    pub fn params_replaced(&mut self) {
        self.stamp.1 += 1;
    }

    /// Replaces the parameters with host values (shapes checked; values must be
    /// finite, and finite in the backend's precision: 3.5e38 is refused in f32).
    pub fn set_from_host(&mut self, values: &[(Vec<f64>, Vec<f64>)]) -> Result<()> {
        if values.len() != self.arch.depth() {
            return Err(MepError::Shape(format!(
                "{} parameter blocks given for a network of {} blocks",
                values.len(),
                self.arch.depth()
            )));
        }
        for (l, ((w, b), blk)) in values.iter().zip(&self.arch.blocks).enumerate() {
            if w.len() != blk.out * blk.inp || b.len() != blk.out {
                return Err(MepError::Shape(format!(
                    "block {}: expected weights {}×{} and bias {}, got {} and {} values",
                    l + 1,
                    blk.out,
                    blk.inp,
                    blk.out,
                    w.len(),
                    b.len()
                )));
            }
            if let Some(bad) = w.iter().chain(b).find(|v| !v.is_finite()) {
                return Err(MepError::NonFinite(format!("block {} parameters contain {bad}", l + 1)));
            }
            if let Some(bad) = w.iter().chain(b).find(|&&v| !B::Elem::of(v).f64().is_finite()) {
                return Err(MepError::NonFinite(format!(
                    "block {} parameters contain {bad}, which overflows to infinity in {} (the backend's precision)",
                    l + 1,
                    std::any::type_name::<B::Elem>()
                )));
            }
        }
        // Every block was checked before any is written: a refused call changes nothing.
        for (l, (w, b)) in values.iter().enumerate() {
            let wv: Vec<B::Elem> = w.iter().map(|&v| B::Elem::of(v)).collect();
            let bv: Vec<B::Elem> = b.iter().map(|&v| B::Elem::of(v)).collect();
            self.backend.write(&mut self.params[l].w, &wv)?;
            self.backend.write(&mut self.params[l].b, &bv)?;
        }
        self.params_replaced();
        Ok(())
    }
}
