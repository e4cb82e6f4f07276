//! Data: IDX file I/O, MNIST loading and normalisation, other data sets (any IDX
//! files, CIFAR-10, in-memory arrays: [`sources`]), and seeded mini-batching.
//!
//! ```no_run
//! use mep::data::{Mnist, Shuffle, DEFAULT_DATA_DIR};
//! # fn main() -> mep::Result<()> {
//! let mnist = Mnist::load(std::path::Path::new(DEFAULT_DATA_DIR))?;
//! for batch in mnist.train.batches(64, Shuffle::Seeded(0))? {
//!     assert_eq!(batch.x.len(), batch.len * 784);
//! }
//! # Ok(())
//! # }
//! ```

pub mod batches;
pub mod idx;
pub mod mnist;
pub mod sources;

pub use batches::{epoch_permutation, Batch, Batches, Shuffle};
pub use idx::{parse_idx, read_idx, write_idx, IdxArray};
pub use mnist::{load_split, normalize_pixels, Dataset, Mnist, DEFAULT_DATA_DIR};
pub use sources::{DataSplits, Normalization, MAX_NORMALISED};

/// Runs `a` here and `b` on a scoped thread of its own, at once, and returns both
/// results: loading overlaps the reading and decoding of files without starting
/// rayon's global pool, so [`crate::set_cpu_threads`] still works after data is loaded.
/// A panic in `b` is resumed here.
pub(crate) fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA,
    B: FnOnce() -> RB + Send,
    RB: Send,
{
    std::thread::scope(|s| {
        let hb = s.spawn(b);
        let ra = a();
        (ra, hb.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    })
}
