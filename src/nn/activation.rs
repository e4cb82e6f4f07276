//! Element-wise activations and their composition.
//!
//! The same scalar definitions are used by the CPU backend and mirrored in
//! `kernels/common.cuh`; a chain of up to [`ActChain::MAX`] activations is packed
//! into one `u32` (4 bits per activation, first applied in the lowest bits) so a
//! kernel can evaluate any composition φ and its derivative φ′ in one pass.

use num_traits::Float;

/// One element-wise activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// max(0, x).
    Relu,
    /// 1 / (1 + e^−x).
    Sigmoid,
    /// tanh(x).
    Tanh,
    /// clamp(x, 0, 1).
    HardSigmoid,
    /// x.
    Identity,
}

impl Activation {
    /// The 4-bit code used in [`ActChain::code`] (and by the CUDA kernels).
    pub const fn code(self) -> u32 {
        match self {
            Activation::Identity => 0,
            Activation::Relu => 1,
            Activation::Sigmoid => 2,
            Activation::Tanh => 3,
            Activation::HardSigmoid => 4,
        }
    }

    /// Lower-case name (`relu`, `sigmoid`, `tanh`, `hardsigmoid`, `identity`).
    pub const fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::HardSigmoid => "hardsigmoid",
        }
    }

    /// The largest slope sup f′: ¼ for the sigmoid, 1 for the others.
    pub fn max_slope(self) -> f64 {
        match self {
            Activation::Sigmoid => 0.25,
            _ => 1.0,
        }
    }

    /// f(x + u) − f(x), accurate to a few ulps of the difference itself rather than of
    /// f(x): the perturbation form of the layered nudged phase
    /// ([`crate::ep::layered::nudged_phase`]) carries a state as its free value x and
    /// a small deviation u, and f(x + u) − f(x) formed by subtraction would keep only
    /// u/ε·|f(x)| of the deviation's digits. `tanh` is the tanh to use (libm's or the
    /// CPU backend's vectorised one); `kernels/common.cuh` (`mep_act1_delta`) has the
    /// same cases.
    ///
    /// - Piecewise-linear activations: a·u when x and x + u lie on one linear piece of
    ///   slope a, 0 on one constant piece, and across a kink k the distance of the
    ///   linear side from it, (x + u) − k, formed as (x − k) + u when x is on the
    ///   constant side (x − k is exact near the kink, x + u is not).
    /// - tanh: tanh(x + u) − tanh(x) = tanh(u)·(1 − t²)/(1 + t·tanh(u)), t = tanh(x),
    ///   an identity with no cancellation; for |u| ≥ 1, where the difference is large
    ///   (or both sides saturate and the identity's denominator can round to 0), the
    ///   plain difference.
    /// - sigmoid: σ(x) = ½(1 + tanh(x/2)), so ½ of tanh's form at (x/2, u/2).
    #[inline]
    pub fn delta_by<T: Float>(self, x: T, u: T, tanh: impl Fn(T) -> T) -> T {
        let (zero, one) = (T::zero(), T::one());
        let y = x + u;
        let tanh_delta = |x: T, u: T| {
            if u.abs() >= one {
                tanh(x + u) - tanh(x)
            } else {
                let (t, tu) = (tanh(x), tanh(u));
                tu * (one - t * t) / (one + t * tu)
            }
        };
        match self {
            Activation::Identity => u,
            Activation::Relu => {
                if x > zero && y > zero {
                    u
                } else if x <= zero && y <= zero {
                    zero
                } else {
                    y.max(zero) - x.max(zero)
                }
            }
            Activation::HardSigmoid => {
                let (lo, hi) = (|v: T| v <= zero, |v: T| v >= one);
                if hi(x) {
                    // From the upper piece: y − 1 = (x − 1) + u, x − 1 exact near the
                    // kink (where x + u would round at ε·1, not at ε·|y − 1|).
                    if hi(y) {
                        zero
                    } else if lo(y) {
                        -one
                    } else {
                        (x - one) + u
                    }
                } else if lo(x) {
                    if lo(y) {
                        zero
                    } else if hi(y) {
                        one
                    } else {
                        y
                    }
                } else if hi(y) {
                    one - x
                } else if lo(y) {
                    -x
                } else {
                    u
                }
            }
            Activation::Tanh => tanh_delta(x, u),
            Activation::Sigmoid => {
                let half = T::from(0.5).unwrap_or_else(|| one / (one + one));
                half * tanh_delta(half * x, half * u)
            }
        }
    }

    /// f(x).
    #[inline]
    pub fn apply<T: Float>(self, x: T) -> T {
        let zero = T::zero();
        let one = T::one();
        match self {
            Activation::Identity => x,
            Activation::Relu => x.max(zero),
            Activation::Sigmoid => one / (one + (-x).exp()),
            Activation::Tanh => x.tanh(),
            Activation::HardSigmoid => x.max(zero).min(one),
        }
    }

    /// f′(x). At the kinks of ReLU and HardSigmoid the derivative is taken as 0
    /// (the same convention as PyTorch's ReLU and the CUDA kernels).
    #[inline]
    pub fn derivative<T: Float>(self, x: T) -> T {
        let zero = T::zero();
        let one = T::one();
        match self {
            Activation::Identity => one,
            Activation::Relu => {
                if x > zero {
                    one
                } else {
                    zero
                }
            }
            Activation::Sigmoid => {
                let s = one / (one + (-x).exp());
                s * (one - s)
            }
            Activation::Tanh => {
                let t = x.tanh();
                one - t * t
            }
            Activation::HardSigmoid => {
                if x > zero && x < one {
                    one
                } else {
                    zero
                }
            }
        }
    }
}

impl std::str::FromStr for Activation {
    type Err = crate::MepError;
    fn from_str(s: &str) -> crate::Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "relu" => Activation::Relu,
            "sigmoid" => Activation::Sigmoid,
            "tanh" => Activation::Tanh,
            "hardsigmoid" | "hard_sigmoid" | "hard-sigmoid" => Activation::HardSigmoid,
            "identity" | "none" | "linear" => Activation::Identity,
            other => {
                return Err(crate::MepError::invalid(
                    "activation",
                    other,
                    "use relu, sigmoid, tanh, hardsigmoid or identity",
                ))
            }
        })
    }
}

/// The composition φ of the activations that follow one Linear layer, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ActChain {
    code: u32,
}

impl ActChain {
    /// Most activations one chain can hold.
    pub const MAX: usize = 8;

    /// The identity chain (no activation).
    pub const IDENTITY: ActChain = ActChain { code: 0 };

    /// A chain of one activation.
    pub const fn single(a: Activation) -> Self {
        ActChain { code: a.code() }
    }

    /// Appends `a` (applied after the existing ones). Identity is skipped.
    /// Returns `None` when the chain is full.
    pub fn then(self, a: Activation) -> Option<Self> {
        if a == Activation::Identity {
            return Some(self);
        }
        let n = self.len();
        if n >= Self::MAX {
            return None;
        }
        Some(ActChain {
            code: self.code | (a.code() << (4 * n)),
        })
    }

    /// Number of (non-identity) activations.
    pub fn len(self) -> usize {
        let mut n = 0;
        let mut c = self.code;
        while c != 0 {
            n += 1;
            c >>= 4;
        }
        n
    }

    /// True for the identity chain.
    pub fn is_empty(self) -> bool {
        self.code == 0
    }

    /// The single activation of a one-element chain (`None` for identity or longer chains).
    pub fn as_single(self) -> Option<Activation> {
        if self.len() == 1 {
            self.activations().next()
        } else {
            None
        }
    }

    /// The packed code passed to kernels: 4 bits per activation, first in the low bits.
    pub fn code(self) -> u32 {
        self.code
    }

    fn activations(self) -> impl Iterator<Item = Activation> {
        let mut c = self.code;
        std::iter::from_fn(move || {
            if c == 0 {
                return None;
            }
            let a = match c & 15 {
                1 => Activation::Relu,
                2 => Activation::Sigmoid,
                3 => Activation::Tanh,
                _ => Activation::HardSigmoid,
            };
            c >>= 4;
            Some(a)
        })
    }

    /// φ(x).
    #[inline]
    pub fn apply<T: Float>(self, x: T) -> T {
        self.activations().fold(x, |x, a| a.apply(x))
    }

    /// A bound on the chain's slope: the product of its activations' largest slopes
    /// (1 for the empty chain).
    pub fn max_slope(self) -> f64 {
        self.activations().map(Activation::max_slope).product()
    }

    /// φ′(x) by the chain rule.
    #[inline]
    pub fn derivative<T: Float>(self, x: T) -> T {
        self.value_and_derivative(x).1
    }

    /// (φ(x), φ′(x)) in one pass.
    #[inline]
    pub fn value_and_derivative<T: Float>(self, x: T) -> (T, T) {
        let mut v = x;
        let mut d = T::one();
        for a in self.activations() {
            d = d * a.derivative(v);
            v = a.apply(v);
        }
        (v, d)
    }

    /// φ(x + u) − φ(x) through the chain, accurate relative to itself
    /// ([`Activation::delta_by`]): each activation's deviation is carried to the next
    /// beside its free value.
    #[inline]
    pub fn delta_by<T: Float>(self, x: T, u: T, tanh: impl Fn(T) -> T + Copy) -> T {
        let (mut v, mut d) = (x, u);
        for a in self.activations() {
            d = a.delta_by(v, d, tanh);
            v = a.apply(v);
        }
        d
    }

    /// [`ActChain::delta_by`] with libm's tanh.
    #[inline]
    pub fn delta<T: Float>(self, x: T, u: T) -> T {
        self.delta_by(x, u, T::tanh)
    }

    /// Human-readable, e.g. `relu` or `relu∘tanh` or `identity`.
    pub fn describe(self) -> String {
        if self.is_empty() {
            return "identity".into();
        }
        self.activations().map(|a| a.name()).collect::<Vec<_>>().join(",")
    }
}
