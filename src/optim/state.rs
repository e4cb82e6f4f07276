//! Export and import of the optimizer's state: see [`OptimizerState`].

use super::Engine;
use crate::backend::{Backend, Scalar};
use crate::io::NamedTensor;
use crate::model::{AnyNet, Model};
use crate::nn::Network;
use crate::optim::builder::AnyEngine;
use crate::{MepError, Optimizer, Result};

/// The optimizer's state on the host, to save it with a checkpoint and continue a run
/// later bit for bit ([`crate::checkpoint`]).
///
/// The state is what an optimizer step reads from the previous one: per block the
/// momentum (SGD, Muon) or Adam's first moment of the weights and of the bias, Adam's
/// second moments, the spectral constraint's power-iteration vector, and the step
/// counter (which positions the learning-rate schedule and Adam's bias correction).
/// Everything else the engine holds is scratch, rewritten before it is read. The
/// tensors move through the backend's `download` and `write`, so the same code serves
/// the CPU and the GPU.
///
/// ```
/// use mep::{smep, Device, Sequential};
/// # fn main() -> mep::Result<()> {
/// let mut model = Sequential::new(&Device::Cpu).flatten().linear(4, 3).build(0)?;
/// let mut opt = smep(&model).build()?;
/// opt.step(&mut model, &[0.5, -1.0, 0.25, 2.0], &[1])?;
/// let state = opt.state()?; // momentum, Adam moments, power-iteration vectors, steps
/// assert_eq!(state.steps, 1);
///
/// let mut again = smep(&model).build()?; // a fresh optimizer for the same model…
/// again.set_state(&model, &state)?; // …continues where the first one stopped
/// assert_eq!(again.state()?, state);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    /// Steps taken (the schedule's position and Adam's bias correction).
    pub steps: u64,
    /// The state tensors, named `optim.layers.{l}.{m_w, v_w, m_b, v_b, power_u}`
    /// (only those the optimizer has: `v_*` for Adam, `power_u` for constrained
    /// matrices), in a fixed order.
    pub tensors: Vec<NamedTensor>,
}

impl OptimizerState {
    /// The tensor named `name`, if the state has it.
    pub fn get(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// What a state tensor holds, for error messages.
fn describe(slot: &str) -> &'static str {
    match slot {
        "m_w" => "the weights' momentum or Adam first moment",
        "v_w" => "the weights' Adam second moment",
        "m_b" => "the bias's momentum or Adam first moment",
        "v_b" => "the bias's Adam second moment",
        "power_u" => "the spectral constraint's power-iteration vector",
        _ => "an unknown state",
    }
}

type Slot<T> = (String, Vec<usize>, T);

impl<B: Backend> Engine<B> {
    /// Name, shape and buffer of every state tensor, in a fixed order.
    fn slots(&self) -> Vec<Slot<&B::Buf>> {
        let mut out = Vec::new();
        for (l, (st, blk)) in self.state.iter().zip(self.ws.arch.blocks()).enumerate() {
            let name = |slot: &str| format!("optim.layers.{l}.{slot}");
            out.push((name("m_w"), vec![blk.out, blk.inp], &st.m_w));
            if let Some(v) = &st.v_w {
                out.push((name("v_w"), vec![blk.out, blk.inp], v));
            }
            out.push((name("m_b"), vec![blk.out], &st.m_b));
            if let Some(v) = &st.v_b {
                out.push((name("v_b"), vec![blk.out], v));
            }
            if let Some((p, _)) = &st.power {
                out.push((name("power_u"), vec![blk.out.min(blk.inp)], p.vector()));
            }
        }
        out
    }

    /// [`Engine::slots`], to overwrite.
    fn slots_mut(&mut self) -> Vec<Slot<&mut B::Buf>> {
        let mut out = Vec::new();
        for (l, (st, blk)) in self.state.iter_mut().zip(self.ws.arch.blocks()).enumerate() {
            let name = |slot: &str| format!("optim.layers.{l}.{slot}");
            out.push((name("m_w"), vec![blk.out, blk.inp], &mut st.m_w));
            if let Some(v) = &mut st.v_w {
                out.push((name("v_w"), vec![blk.out, blk.inp], v));
            }
            out.push((name("m_b"), vec![blk.out], &mut st.m_b));
            if let Some(v) = &mut st.v_b {
                out.push((name("v_b"), vec![blk.out], v));
            }
            if let Some((p, _)) = &mut st.power {
                out.push((name("power_u"), vec![blk.out.min(blk.inp)], p.vector_mut()));
            }
        }
        out
    }

    /// Copies the state to the host (one download per tensor).
    pub fn export_state(&self) -> Result<OptimizerState> {
        let bk = &self.ws.backend;
        let tensors = self
            .slots()
            .into_iter()
            .map(|(name, shape, buf)| {
                Ok(NamedTensor {
                    name,
                    shape,
                    values: bk.download(buf)?.iter().map(|v| v.f64()).collect(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(OptimizerState { steps: self.t, tensors })
    }

    /// Replaces the state with `state` (exported by an optimizer of the same
    /// configuration for the same architecture), takes `net`'s current parameters as
    /// the divergence guard's last good values, and clears a recorded divergence.
    ///
    /// Errors, before anything is changed: [`MepError::Shape`] for a network other
    /// than the one this engine was built for, or naming a tensor this
    /// optimizer needs that `state` lacks, one it has that this optimizer does not
    /// (another optimizer's state), or a tensor of another shape;
    /// [`MepError::NonFinite`] naming a NaN or infinite value. A power-iteration
    /// vector that is zero, or so small that its square underflows f32 (saved by an
    /// older version after a zero matrix), is not taken: this engine keeps its own.
    pub fn import_state(&mut self, net: &Network<B>, state: &OptimizerState) -> Result<()> {
        self.check_network(net)?;
        let layout: Vec<(String, Vec<usize>)> = self.slots().into_iter().map(|(n, s, _)| (n, s)).collect();
        let slot_of = |name: &str| name.rsplit('.').next().unwrap_or(name).to_string();
        for (name, shape) in &layout {
            let Some(t) = state.get(name) else {
                return Err(MepError::Shape(format!(
                    "the saved optimizer state lacks `{name}` ({}), which this optimizer needs: it was saved by a different optimizer (preset, rules or spectral layers)",
                    describe(&slot_of(name))
                )));
            };
            if &t.shape != shape || t.values.len() != shape.iter().product::<usize>() {
                return Err(MepError::Shape(format!(
                    "the saved optimizer state `{name}` has shape {:?} ({} values), this optimizer's is {shape:?}",
                    t.shape,
                    t.values.len()
                )));
            }
            if let Some(v) = t.values.iter().find(|v| !v.is_finite()) {
                return Err(MepError::NonFinite(format!(
                    "the saved optimizer state `{name}` holds {v}"
                )));
            }
        }
        if let Some(t) = state.tensors.iter().find(|t| !layout.iter().any(|(n, _)| *n == t.name)) {
            return Err(MepError::Shape(format!(
                "the saved optimizer state holds `{}` ({}), which this optimizer does not have: it was saved by a different optimizer (preset, rules or spectral layers)",
                t.name,
                describe(&slot_of(&t.name))
            )));
        }
        let bk = self.ws.backend.clone();
        for (name, _, buf) in self.slots_mut() {
            let t = state.get(&name).expect("checked above");
            // A zero power-iteration vector never moves again (Hu = 0). Versions that
            // did not yet keep the vector on a zero matrix saved one after such a
            // matrix, with the constraint no longer acting. This engine's own vector
            // (warmed up on the same weights) takes its place.
            // (A norm whose square is not a normal f32 counts as zero: its Hu underflows.)
            let sq: f64 = t.values.iter().map(|v| v * v).sum();
            if slot_of(&name) == "power_u" && sq < f32::MIN_POSITIVE as f64 {
                continue;
            }
            let host: Vec<B::Elem> = t.values.iter().map(|&v| B::Elem::of(v)).collect();
            bk.write(buf, &host)?;
        }
        self.t = state.steps;
        // The run's bookkeeping restarts from the saved state: a divergence recorded
        // since, and the running statistics that include its batches, are dropped.
        self.take_backup(net, false)?;
        self.reset_stats()?;
        let g = &mut self.guard;
        bk.fill(&mut g.health, 0.0)?;
        g.diverged = None;
        Ok(())
    }
}

/// Saving and restoring the state (see [`crate::optim::OptimizerState`]).
impl Optimizer {
    /// A host copy of this optimizer's state: momentum, Adam moments, power-iteration
    /// vectors and the step counter.
    pub fn state(&self) -> Result<OptimizerState> {
        match &self.engine {
            AnyEngine::Cpu(e) => e.export_state(),
            AnyEngine::Cuda(e) => e.export_state(),
        }
    }

    /// Continues from `state` (taken by [`Optimizer::state`]): the next step is the
    /// one the saved optimizer would have taken next, given `model` with the
    /// parameters it had then, if this optimizer's configuration is the same.
    ///
    /// The state must have the tensors this optimizer holds (same preset, update
    /// rules and spectral layers, same architecture); its hyper-parameters may differ,
    /// which continues the run with new ones (a lower learning rate, another
    /// momentum: the step counter, hence the schedule's position, is the saved one).
    /// [`crate::checkpoint::resume`] is the strict form: it also requires the saved
    /// configuration.
    ///
    /// Errors: [`MepError::Shape`] when `model` is not the model this optimizer was
    /// built for, or `state` is another optimizer's (a tensor missing, extra or of
    /// another shape, named); [`MepError::NonFinite`] for a NaN or infinite value.
    /// Nothing is changed on error.
    pub fn set_state(&mut self, model: &Model, state: &OptimizerState) -> Result<()> {
        self.check_model(model)?;
        match (&mut self.engine, &model.net) {
            (AnyEngine::Cpu(e), AnyNet::Cpu(n)) => e.import_state(n, state),
            (AnyEngine::Cuda(e), AnyNet::Cuda(n)) => e.import_state(n, state),
            _ => Err(crate::model::device_mismatch()),
        }
    }
}
