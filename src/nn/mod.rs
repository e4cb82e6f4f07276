//! Networks: activations, the block structure ([`Arch`]) and parameters on a
//! backend ([`Network`]).

pub mod activation;
pub mod arch;
pub mod network;

pub use activation::{ActChain, Activation};
pub use arch::{Arch, Block, Layer};
pub use network::{Network, Params};
