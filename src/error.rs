//! The crate's one error type. Every fallible public function returns
//! [`Result<T>`]; messages name the offending value and say how to fix it.

use std::path::PathBuf;

/// Everything that can go wrong in `mep`.
#[derive(Debug, thiserror::Error)]
pub enum MepError {
    /// A hyper-parameter or argument is outside its valid range.
    #[error("invalid value for `{name}`: {value} ({fix})")]
    InvalidArgument {
        /// The parameter's name as the user spells it.
        name: &'static str,
        /// The value that was given, printed.
        value: String,
        /// What a valid value looks like.
        fix: String,
    },
    /// Tensor or network shapes that do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// Non-finite values where finite ones are required (inputs, weights).
    #[error("non-finite value: {0}")]
    NonFinite(String),
    /// Training diverged: the running loss became NaN, infinite or absurdly large.
    #[error("training diverged at step {step}: loss is {loss} (lower the learning rate `lr`, `beta` or `settle_lr`, or keep the spectral constraint on)")]
    Diverged {
        /// Optimizer step (1-based) at which the divergence was detected.
        step: u64,
        /// The non-finite loss value.
        loss: f64,
    },
    /// A data file is missing.
    #[error("data file {path} not found: {fix}")]
    MissingData {
        /// The path that was looked for.
        path: PathBuf,
        /// How to obtain it.
        fix: String,
    },
    /// A data file exists but is not what it should be (bad magic, truncated, wrong checksum).
    #[error("corrupt data file {path}: {reason}")]
    CorruptData {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A model file cannot be read or does not match the network.
    #[error("model file {path}: {reason}")]
    ModelFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// CUDA was requested but cannot be used (no driver, no NVRTC, no cuBLAS, no device).
    #[error("CUDA is not usable: {0} (use `Device::Cpu` / `--device cpu`, or install an NVIDIA driver for CUDA 13 with NVRTC and cuBLAS on LD_LIBRARY_PATH)")]
    CudaUnavailable(String),
    /// A CUDA driver, NVRTC or cuBLAS call failed.
    #[error("CUDA error: {0}")]
    Cuda(String),
    /// An I/O error, with the path involved.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`MepError`].
pub type Result<T, E = MepError> = std::result::Result<T, E>;

impl MepError {
    /// Shorthand for [`MepError::InvalidArgument`].
    pub fn invalid(name: &'static str, value: impl std::fmt::Display, fix: impl Into<String>) -> Self {
        MepError::InvalidArgument {
            name,
            value: value.to_string(),
            fix: fix.into(),
        }
    }

    /// Shorthand for [`MepError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MepError::Io {
            path: path.into(),
            source,
        }
    }
}
