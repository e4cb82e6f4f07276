//! Optimizers: the `smep` preset (spectral constraint + Muon + EP), `sgd` and
//! `adam`, each usable in EP or Backprop mode (SPEC §3).

pub mod builder;
pub mod config;
pub mod engine;
pub mod newton_schulz;
pub mod spectral;

pub use builder::{adam, sgd, smep, Optimizer, OptimizerBuilder};
pub use config::{
    min_beta, min_beta_for, MatrixRule, MuonScale, OptimConfig, Schedule, Spectral, SpectralLayers, VectorRule,
    BETA_FLOOR_EPSILONS, DEFAULT_SETTLE_LR,
};
pub use engine::{Engine, OptimizerState, StepStats};
