//! The user's tutorial (`smep` on MNIST, one epoch), line for line in Rust.
//!
//! Run: `bash scripts/fetch-mnist.sh && cargo run --release --example quickstart`

use mep::{smep, Device, Loss, Mnist, Mode, Sequential, Shuffle};
use std::path::Path;

fn main() -> mep::Result<()> {
    // Check device
    let device = Device::auto();
    println!("Using device: {device}");

    // 1. Data loading: MNIST, normalised with mean 0.1307 and std 0.3081.
    let mnist = Mnist::load(Path::new(mep::data::mnist::DEFAULT_DATA_DIR))?;
    let train = &mnist.train;

    // 2. Model definition: Flatten, Linear(784, 128), ReLU, Linear(128, 10).
    let mut model = Sequential::new(&device)
        .flatten()
        .linear(28 * 28, 128)
        .relu()
        .linear(128, 10)
        .build(0)?;

    // 3. Optimizer setup (SMEP): spectral constraint + Muon + Equilibrium Propagation.
    let mut optimizer = smep(&model)
        .mode(Mode::Ep)
        .lr(0.05)
        .beta(0.5)
        .settle_steps(15)
        .loss(Loss::CrossEntropy)
        .build()?;

    // 4. Training loop: one step runs the free phase, the nudged phase and the update.
    let epochs = 1;
    for epoch in 0..epochs {
        let batches = train.epoch_batches(64, Shuffle::Seeded(0), epoch)?;
        let n_batches = batches.num_batches();
        for (batch_idx, batch) in batches.enumerate() {
            // EP step: free phase -> nudged phase -> update. No backward().
            optimizer.step(&mut model, &batch.x, &batch.y)?;

            if batch_idx % 100 == 0 {
                // Accuracy of the free phase on the batches since the last print.
                let stats = optimizer.stats()?;
                println!(
                    "Epoch {} | Batch {batch_idx}/{n_batches} | Acc: {:.2}%",
                    epoch + 1,
                    100.0 * stats.accuracy
                );
                optimizer.reset_stats()?;
            }
        }
    }
    println!("Test accuracy: {:.2}%", 100.0 * model.accuracy(&mnist.test)?);
    Ok(())
}
