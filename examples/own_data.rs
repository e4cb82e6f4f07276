//! Your own data: writes a small data set as IDX files with MNIST's names to DIR
//! (default `data/quadrants`): 8×8 greyscale images of 4 classes, class `c` bright in
//! quadrant `c` over noise, 2000 for training and 500 for testing. Then loads it the
//! way `mep-mnist --dataset idx --data-dir DIR` does (shape, classes and normalisation
//! read from the files) and trains one epoch with the library API.
//!
//! ```sh
//! cargo run --release --example own_data -- data/quadrants
//! ```

use mep::data::{write_idx, DataSplits};
use mep::rng::Rng;
use mep::{smep, Device, MepError, Sequential, Shuffle};
use std::path::Path;

/// Writes `n` images (`[n, 8, 8]`) and labels (`[n]`) under the given file names.
fn write_quadrants(dir: &Path, images: &str, labels: &str, n: usize, rng: &mut Rng) -> mep::Result<()> {
    let (mut px, mut lbl) = (Vec::with_capacity(n * 64), Vec::with_capacity(n));
    for _ in 0..n {
        let class = rng.below(4) as usize;
        lbl.push(class as u8);
        for y in 0..8 {
            for x in 0..8 {
                let noise = rng.below(90) as u8;
                px.push(if (y / 4) * 2 + x / 4 == class {
                    140 + noise
                } else {
                    noise
                });
            }
        }
    }
    write_idx(&dir.join(images), &[n, 8, 8], &px)?;
    write_idx(&dir.join(labels), &[n], &lbl)
}

fn main() -> mep::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "data/quadrants".into());
    if dir.trim().is_empty() {
        // An empty argument would write the files into the current directory.
        return Err(MepError::invalid(
            "DIR",
            "\"\"",
            "give the directory to write the data set to, e.g. data/quadrants (or no argument for that default)",
        ));
    }
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).map_err(|e| MepError::io(dir, e))?;
    let mut rng = Rng::new(0);
    write_quadrants(
        dir,
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        2000,
        &mut rng,
    )?;
    write_quadrants(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 500, &mut rng)?;

    // Shape, classes and normalisation come from the files (None: computed from the
    // training split; Some(Normalization::new(mean, std)?) to give them).
    let data = DataSplits::load_idx(dir, None)?;
    println!("{}", data.summary());

    let device = Device::auto();
    let (inputs, classes) = (data.train.features(), data.train.classes());
    let mut model = Sequential::new(&device)
        .flatten()
        .linear(inputs, 32)
        .relu()
        .linear(32, classes)
        .build(0)?;
    let mut optimizer = smep(&model).build()?;
    for batch in data.train.epoch_batches(16, Shuffle::Seeded(0), 0)? {
        optimizer.step(&mut model, &batch.x, &batch.y)?;
    }
    println!("test accuracy {:.2}%", 100.0 * model.accuracy(&data.test)?);
    Ok(())
}
