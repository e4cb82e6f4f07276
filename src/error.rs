//! The crate's one error type. Every fallible public function returns
//! [`Result<T>`]; messages name the offending value and say how to fix it.

use std::path::PathBuf;

/// Everything that can go wrong in `mep`.
///
/// `Debug` prints the same message as `Display` (as `anyhow` does), so that a
/// `fn main() -> mep::Result<()>` ends with a readable `Error: …` line; match on the
/// variants to inspect an error's fields.
#[derive(thiserror::Error)]
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
    /// Training diverged: a parameter became NaN or infinite, the running loss became
    /// NaN, infinite or absurdly large, or a phase's states overflowed while settling.
    /// The model's parameters are restored to the last ones whose checks passed
    /// (loss included: see [`crate::optim::engine::Engine::step`]); the optimizer
    /// refuses further steps.
    #[error(
        "training diverged at step {step}: {cause}; the parameters were restored to the last ones whose checks passed ({fix})"
    )]
    Diverged {
        /// Optimizer step (1-based) at which the divergence was detected.
        step: u64,
        /// The mean loss of the batches since the previous check (with per-step
        /// checks, the failing step's batch).
        loss: f64,
        /// What diverged (the loss, which parameters, or the settling).
        cause: String,
        /// What to change: the hyper-parameters, or (when the loss was out of range
        /// before any update) the data's scale; it also names the inputs' RMS when
        /// it is far from normalised data's (above
        /// [`crate::optim::engine::INPUT_RMS_HINT`]).
        fix: String,
    },
    /// A buffer of the requested size cannot be allocated (or its size overflows).
    #[error("cannot allocate {what}: {bytes} bytes ({fix})")]
    OutOfMemory {
        /// What was being allocated, with its element count.
        what: String,
        /// The size requested, in bytes (saturated at `u128::MAX` when it overflows).
        bytes: u128,
        /// How to make it fit.
        fix: String,
    },
    /// A model's input or output size does not match a data set's (or a checkpoint's
    /// record of the data set it was trained on).
    #[error("size mismatch: the {model_side} has {model} {what} but the {data_side} has {data} ({fix})")]
    SizeMismatch {
        /// What is counted: `inputs` (features per sample) or `classes` (outputs).
        what: &'static str,
        /// The side holding `model`, e.g. `model` or `checkpoint`.
        model_side: &'static str,
        /// Its size.
        model: usize,
        /// The side holding `data`, e.g. `data set`.
        data_side: &'static str,
        /// The other size.
        data: usize,
        /// How to make them agree.
        fix: String,
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

impl std::fmt::Debug for MepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
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

/// A vector of `len` copies of `value`, allocated fallibly: an allocation the
/// system refuses is [`MepError::OutOfMemory`] naming `what` and the size, not an
/// abort of the process.
pub fn try_filled<T: Clone>(len: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| oom::<T>(len, what))?;
    v.resize(len, value);
    Ok(v)
}

/// A copy of `src`, allocated fallibly (see [`try_filled`]).
pub fn try_copy<T: Clone>(src: &[T], what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(src.len()).map_err(|_| oom::<T>(src.len(), what))?;
    v.extend_from_slice(src);
    Ok(v)
}

/// The [`MepError::OutOfMemory`] for `len` elements of `T`.
pub fn oom<T>(len: usize, what: &str) -> MepError {
    MepError::OutOfMemory {
        what: format!("{what} of {len} elements"),
        bytes: len as u128 * std::mem::size_of::<T>() as u128,
        fix: "use smaller layers or batches, or a machine with more memory".into(),
    }
}
