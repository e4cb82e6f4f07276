//! # mep — Equilibrium Propagation on NVIDIA GPUs, with a CPU reference
//!
//! `mep` trains neural networks with Equilibrium Propagation (EP): one
//! [`Optimizer::step`] runs the free phase, the nudged phase and the weight
//! update, with no backward pass. The `smep` preset combines EP with Muon
//! (orthogonalised updates) and a spectral-norm constraint.
//!
//! The algorithm is written once (`ep`, `optim`, `train`) over the primitives
//! of [`backend::Backend`]; [`backend::cpu::Cpu`] (pure Rust, multi-threaded) is the
//! reference executor and `backend::cuda::Cuda` (NVRTC kernels + cuBLAS) the
//! fast one. See `README.md` for the tutorial and `SPEC`-level maths in the
//! module docs of [`ep`].

#![warn(missing_docs)]

pub mod backend;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod ep;
pub mod error;
pub mod flops;
pub mod inspect;
pub mod io;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod model64;
pub mod nn;
pub mod optim;
pub mod plot;
pub mod rng;
pub mod train;

/// Sets the number of CPU threads (rayon's global pool and the GEMM threads). Call
/// once, before the first CPU work: building an optimizer, training or evaluating
/// on the CPU (loading data and building models may come first); later calls
/// return an error.
pub fn set_cpu_threads(n: usize) -> Result<()> {
    backend::cpu::set_threads(n)
}

pub use data::batches::Shuffle;
pub use data::mnist::{Dataset, Mnist};
pub use data::sources::{DataSplits, Normalization};
pub use device::Device;
pub use ep::{Energy, Mode, Nudging};
pub use error::{MepError, Result};
pub use inspect::Gradients;
pub use loss::Loss;
pub use model::{Model, Sequential};
pub use model64::Model64;
/// The `ndarray` version `mep` uses ([`Dataset::from_array`] takes its arrays).
pub use ndarray;
pub use nn::Activation;
pub use optim::{adam, sgd, smep, MuonScale, Optimizer, SpectralLayers};
