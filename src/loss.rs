//! Costs on the network output o (SPEC §2), per sample; batch sums, never means.

/// The cost C(o, y).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// C = −Σ_k q_k log softmax(o)_k with q = (1 − ε)·onehot(y) + ε/K
    /// (ε = `label_smoothing`, 0 by default). ∂C/∂o = softmax(o) − q.
    CrossEntropy {
        /// Label smoothing ε in [0, 1).
        label_smoothing: f64,
    },
    /// C = ½‖o − onehot(y)‖². ∂C/∂o = o − onehot(y).
    SquaredError,
}

impl Loss {
    /// Cross-entropy without label smoothing (the seed's `loss_type="cross_entropy"`).
    #[allow(non_upper_case_globals)]
    pub const CrossEntropy: Loss = Loss::CrossEntropy { label_smoothing: 0.0 };

    /// Kernel code: 0 cross-entropy, 1 squared error.
    pub fn code(self) -> u32 {
        match self {
            Loss::CrossEntropy { .. } => 0,
            Loss::SquaredError => 1,
        }
    }

    /// Human-readable: `cross-entropy` or `squared error`.
    pub fn name(self) -> &'static str {
        match self {
            Loss::CrossEntropy { .. } => "cross-entropy",
            Loss::SquaredError => "squared error",
        }
    }

    /// The largest curvature ‖∂²C/∂o²‖ of the cost over all outputs: ½ for
    /// cross-entropy (the softmax Hessian diag(p) − ppᵀ, whatever the smoothing; ½ when
    /// two classes share the probability), 1 for squared error. What bounds the
    /// nudged phases' β (`Engine::new`).
    pub fn max_curvature(self) -> f64 {
        match self {
            Loss::CrossEntropy { .. } => 0.5,
            Loss::SquaredError => 1.0,
        }
    }

    /// ε for cross-entropy, 0 otherwise.
    pub fn label_smoothing(self) -> f64 {
        match self {
            Loss::CrossEntropy { label_smoothing } => label_smoothing,
            Loss::SquaredError => 0.0,
        }
    }

    /// Checks ε ∈ [0, 1).
    pub fn validate(self) -> crate::Result<()> {
        let ls = self.label_smoothing();
        if !(0.0..1.0).contains(&ls) {
            return Err(crate::MepError::invalid("label_smoothing", ls, "must be in [0, 1)"));
        }
        Ok(())
    }

    /// [`Loss::validate`], and refuses cross-entropy on a single output, where it is
    /// 0 whatever the network does: every entry point that evaluates or trains a
    /// network with a loss (the optimizer builder, [`crate::optim::Engine::new`],
    /// the inspection functions) calls it.
    pub(crate) fn validate_for(self, arch: &crate::nn::Arch) -> crate::Result<()> {
        self.validate()?;
        if matches!(self, Loss::CrossEntropy { .. }) && arch.outputs() < 2 {
            return Err(crate::MepError::invalid(
                "loss",
                "cross-entropy",
                format!(
                    "the softmax of a single output is 1 whatever the input, so the cross-entropy of this {} model is always 0 and nothing would train: give the model one output per class (at least 2; labels run from 0 to outputs − 1, so a yes/no task needs 2 outputs)",
                    arch.describe()
                ),
            ));
        }
        Ok(())
    }
}

impl std::str::FromStr for Loss {
    type Err = crate::MepError;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "cross_entropy" | "ce" => Ok(Loss::CrossEntropy { label_smoothing: 0.0 }),
            "squared_error" | "mse" | "se" => Ok(Loss::SquaredError),
            other => Err(crate::MepError::invalid(
                "loss",
                other,
                "use cross_entropy or squared_error",
            )),
        }
    }
}
