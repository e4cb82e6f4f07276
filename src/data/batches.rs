//! Seeded, shuffled mini-batches over a [`Dataset`].
//!
//! The sample order of an epoch is [`epoch_permutation`]; the CPU iterator
//! ([`Dataset::batches`], [`Dataset::epoch_batches`]) and the GPU path (which
//! uploads one permutation per epoch) both use it, so they see the same
//! batches for the same seed and epoch.

use super::mnist::Dataset;
use crate::error::{MepError, Result};
use crate::rng::Rng;

/// How the samples of an epoch are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shuffle {
    /// Data-set order, every epoch.
    None,
    /// A Fisher–Yates shuffle, deterministic in the seed and the epoch.
    Seeded(u64),
}

/// The golden-ratio constant used to decorrelate per-epoch seeds.
const EPOCH_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// The sample order for `epoch` of a data set with `n` samples.
///
/// [`Shuffle::None`] gives `0, 1, …, n−1`; [`Shuffle::Seeded(s)`](Shuffle::Seeded)
/// gives [`Rng::shuffle`] (Fisher–Yates) of that sequence with
/// `Rng::new(s ^ epoch.wrapping_mul(0x9E3779B97F4A7C15))`. The result is a
/// permutation of `0..n` and depends only on `(n, shuffle, epoch)`.
///
/// # Panics
/// If `n > u32::MAX`.
pub fn epoch_permutation(n: usize, shuffle: Shuffle, epoch: u64) -> Vec<u32> {
    assert!(
        n <= u32::MAX as usize,
        "epoch_permutation: {n} samples do not fit in u32 indices"
    );
    let mut perm: Vec<u32> = (0..n as u32).collect();
    if let Shuffle::Seeded(seed) = shuffle {
        Rng::new(seed ^ epoch.wrapping_mul(EPOCH_MIX)).shuffle(&mut perm);
    }
    perm
}

/// One mini-batch: `len` samples gathered in epoch order.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `len × features` inputs, row-major.
    pub x: Vec<f32>,
    /// `len` labels.
    pub y: Vec<u32>,
    /// The data-set indices of the samples, in batch order.
    pub indices: Vec<u32>,
    /// Number of samples (the batch size, or fewer for the last batch).
    pub len: usize,
}

/// Iterator over the mini-batches of one epoch; see [`Dataset::batches`].
#[derive(Clone, Debug)]
pub struct Batches<'a> {
    data: &'a Dataset,
    perm: Vec<u32>,
    batch_size: usize,
    pos: usize,
}

impl Batches<'_> {
    /// The epoch's sample order (a permutation of `0..n`).
    pub fn permutation(&self) -> &[u32] {
        &self.perm
    }

    /// The number of batches of the whole epoch, `ceil(n / batch_size)`.
    pub fn num_batches(&self) -> usize {
        self.perm.len().div_ceil(self.batch_size)
    }
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.pos >= self.perm.len() {
            return None;
        }
        let end = (self.pos + self.batch_size).min(self.perm.len());
        let indices = self.perm[self.pos..end].to_vec();
        self.pos = end;
        let f = self.data.features;
        let mut x = Vec::with_capacity(indices.len() * f);
        let mut y = Vec::with_capacity(indices.len());
        for &i in &indices {
            let i = i as usize;
            x.extend_from_slice(&self.data.images[i * f..(i + 1) * f]);
            y.push(self.data.labels[i]);
        }
        let len = indices.len();
        Some(Batch { x, y, indices, len })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.perm.len() - self.pos).div_ceil(self.batch_size);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches<'_> {}

impl Dataset {
    /// The mini-batches of epoch 0 in the order of
    /// `epoch_permutation(n, shuffle, 0)`, the last one partial if
    /// `batch_size` does not divide `n`.
    ///
    /// Errors: [`MepError::InvalidArgument`] if `batch_size` is 0 or the data
    /// set has more than `u32::MAX` samples.
    pub fn batches(&self, batch_size: usize, shuffle: Shuffle) -> Result<Batches<'_>> {
        self.epoch_batches(batch_size, shuffle, 0)
    }

    /// The mini-batches of `epoch` in the order of
    /// `epoch_permutation(n, shuffle, epoch)`; otherwise as [`Dataset::batches`].
    pub fn epoch_batches(&self, batch_size: usize, shuffle: Shuffle, epoch: u64) -> Result<Batches<'_>> {
        if batch_size == 0 {
            return Err(MepError::invalid("batch_size", batch_size, "must be at least 1"));
        }
        if self.n > u32::MAX as usize {
            return Err(MepError::invalid(
                "n",
                self.n,
                "data sets are limited to u32::MAX samples",
            ));
        }
        Ok(Batches {
            data: self,
            perm: epoch_permutation(self.n, shuffle, epoch),
            batch_size,
            pos: 0,
        })
    }
}
