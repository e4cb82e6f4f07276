//! The shape of a `Sequential`: Linear blocks, each followed by its activation chain.

use super::activation::{ActChain, Activation};
use crate::{MepError, Result};

/// One layer as the user lists it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Layer {
    /// Flattens each sample to a vector (inputs are stored flat, so this only
    /// documents intent; it must come before the first Linear).
    Flatten,
    /// Fully connected `out × in` weights, with or without a bias.
    Linear {
        /// Input features.
        inp: usize,
        /// Output features.
        out: usize,
        /// Whether the layer has a bias.
        bias: bool,
    },
    /// An element-wise activation.
    Act(Activation),
}

/// Block l: Linear l followed by the activations up to the next Linear (φ_l).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Block {
    /// Input features (n_{l−1}).
    pub inp: usize,
    /// Output features (n_l).
    pub out: usize,
    /// Whether the Linear has a bias (when false the bias stays zero and is not trained).
    pub bias: bool,
    /// φ_l.
    pub act: ActChain,
}

/// The validated structure of a network: its blocks, in order.
///
/// Only [`Arch::from_layers`] and [`Arch::mlp`] build one, so every `Arch` is
/// valid: at least one block, widths that chain, no zero width, and a parameter
/// count whose f64 storage fits in memory's address space (read the blocks with
/// [`Arch::blocks`]). An empty or broken `Arch` cannot be written by hand:
///
/// ```compile_fail
/// let arch = mep::nn::Arch { blocks: Vec::new() }; // private field
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Arch {
    /// Blocks 1..L (private so that an `Arch` cannot be made invalid after validation).
    pub(crate) blocks: Vec<Block>,
}

/// The largest number of elements one buffer may hold: its f64 bytes must fit in
/// `isize::MAX` (Rust's allocation limit), so sizes computed from it never overflow.
pub const MAX_ELEMENTS: usize = isize::MAX as usize / 8;

impl Arch {
    /// Groups a layer list into blocks, checking that widths chain, that the list
    /// starts (after an optional Flatten) with a Linear, and that no size is zero.
    pub fn from_layers(layers: &[Layer]) -> Result<Arch> {
        let mut blocks: Vec<Block> = Vec::new();
        for (i, layer) in layers.iter().enumerate() {
            match *layer {
                Layer::Flatten => {
                    if !blocks.is_empty() {
                        return Err(MepError::invalid(
                            "flatten",
                            format!("layer {i}"),
                            "Flatten must come before the first Linear (inputs are flat vectors after it)",
                        ));
                    }
                }
                Layer::Linear { inp, out, bias } => {
                    if inp == 0 || out == 0 {
                        return Err(MepError::invalid(
                            "linear",
                            format!("Linear({inp}, {out}) at layer {i}"),
                            "in and out features must be at least 1",
                        ));
                    }
                    // Overflow-safe: `out * inp` must not wrap (Linear(1 << 63, 2) would
                    // otherwise have a 0-element weight buffer).
                    if !matches!(out.checked_mul(inp), Some(n) if n <= MAX_ELEMENTS) {
                        return Err(MepError::invalid(
                            "linear",
                            format!("Linear({inp}, {out}) at layer {i}"),
                            format!("its {inp}×{out} weight matrix exceeds {MAX_ELEMENTS} elements, more than any memory can hold"),
                        ));
                    }
                    if let Some(prev) = blocks.last() {
                        if prev.out != inp {
                            return Err(MepError::Shape(format!(
                                "layer {i} is Linear({inp}, {out}) but the previous Linear outputs {} features; use Linear({}, {out})",
                                prev.out, prev.out
                            )));
                        }
                    }
                    blocks.push(Block {
                        inp,
                        out,
                        bias,
                        act: ActChain::IDENTITY,
                    });
                }
                Layer::Act(a) => {
                    let Some(last) = blocks.last_mut() else {
                        return Err(MepError::invalid(
                            "activation",
                            format!("{} at layer {i}", a.name()),
                            "an activation must follow a Linear layer",
                        ));
                    };
                    last.act = last.act.then(a).ok_or_else(|| {
                        MepError::invalid(
                            "activation",
                            format!("{} at layer {i}", a.name()),
                            format!("at most {} activations may follow one Linear", ActChain::MAX),
                        )
                    })?;
                }
            }
        }
        if blocks.is_empty() {
            return Err(MepError::invalid(
                "layers",
                "no Linear layer",
                "add at least one .linear(in, out)",
            ));
        }
        let total = blocks
            .iter()
            .try_fold(0usize, |acc, b| acc.checked_add(b.out * b.inp)?.checked_add(b.out));
        if !matches!(total, Some(n) if n <= MAX_ELEMENTS) {
            return Err(MepError::invalid(
                "layers",
                format!("{} blocks", blocks.len()),
                format!("the parameters exceed {MAX_ELEMENTS} elements, more than any memory can hold"),
            ));
        }
        Ok(Arch { blocks })
    }

    /// A fully connected network `sizes[0] → … → sizes[L]`, with `hidden` after every
    /// hidden Linear and nothing after the last (logits).
    pub fn mlp(sizes: &[usize], hidden: Activation) -> Result<Arch> {
        let mut layers = vec![Layer::Flatten];
        for (i, w) in sizes.windows(2).enumerate() {
            layers.push(Layer::Linear {
                inp: w[0],
                out: w[1],
                bias: true,
            });
            if i + 2 < sizes.len() {
                layers.push(Layer::Act(hidden));
            }
        }
        Arch::from_layers(&layers)
    }

    /// Blocks 1..L, in order.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// Number of blocks L.
    pub fn depth(&self) -> usize {
        self.blocks.len()
    }

    /// Input features n_0.
    pub fn inputs(&self) -> usize {
        self.blocks[0].inp
    }

    /// Output features n_L.
    pub fn outputs(&self) -> usize {
        self.blocks[self.blocks.len() - 1].out
    }

    /// Widest layer (workspace sizing).
    pub fn max_width(&self) -> usize {
        self.blocks.iter().map(|b| b.inp.max(b.out)).max().unwrap_or(0)
    }

    /// Number of trainable scalars.
    pub fn parameters(&self) -> usize {
        self.blocks
            .iter()
            .map(|b| b.inp * b.out + if b.bias { b.out } else { 0 })
            .sum()
    }

    /// [`Arch::describe`], plus the blocks without a bias when there are any, e.g.
    /// `784-128(relu)-10 without a bias in block 2`: what tells apart two structures
    /// that differ only in their biases (the messages of a model mismatch use it).
    pub fn describe_with_biases(&self) -> String {
        let missing: Vec<String> = (self.blocks.iter().enumerate())
            .filter(|(_, b)| !b.bias)
            .map(|(l, _)| (l + 1).to_string())
            .collect();
        match missing.len() {
            0 => self.describe(),
            1 => format!("{} without a bias in block {}", self.describe(), missing[0]),
            _ => format!("{} without biases in blocks {}", self.describe(), missing.join(", ")),
        }
    }

    /// E.g. `784-128(relu)-10` (the checkpoint's `arch` entry; biases are recorded
    /// apart, see [`Arch::describe_with_biases`]).
    pub fn describe(&self) -> String {
        let mut s = self.inputs().to_string();
        for b in &self.blocks {
            s.push_str(&format!("-{}", b.out));
            if !b.act.is_empty() {
                s.push_str(&format!("({})", b.act.describe()));
            }
        }
        s
    }
}
