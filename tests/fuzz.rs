//! Bounded mutation fuzzing on stable Rust: the IDX reader (raw and gzip) and the
//! checkpoint loader must answer every mutation of the seed corpus in
//! `tests/fuzz_corpus/` with `Ok` or a typed error, never a panic or an abort.
//!
//! Each target runs for `MEP_FUZZ_SECS` seconds (default 15; CI runs both, about
//! 30 s in all). A failure prints the seed and the mutated input's path so it can be
//! replayed with `MEP_TEST_SEED` and added to the corpus.
//! `cargo test --release --test fuzz -- --ignored regenerate_corpus` rewrites the seeds.

use mep::ep::Energy;
use mep::rng::Rng;
use mep::{Device, Sequential};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus")
}

fn budget() -> Duration {
    let secs = std::env::var("MEP_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15.0);
    Duration::from_secs_f64(secs)
}

fn seed() -> u64 {
    let s = std::env::var("MEP_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("fuzz seed {s} (replay with MEP_TEST_SEED={s})");
    s
}

/// The checkpoint seeds' models (a loader is exercised against the model it expects,
/// so mutations reach the tensor checks, not only the architecture check).
fn models() -> Vec<(&'static str, mep::Model)> {
    let layered = Sequential::new(&Device::Cpu)
        .flatten()
        .linear(6, 5)
        .relu()
        .linear(5, 3)
        .build(1)
        .unwrap();
    let hopfield = Sequential::new(&Device::Cpu)
        .linear(4, 3)
        .sigmoid()
        .linear_no_bias(3, 2)
        .energy(Energy::Hopfield { free_steps: 5 })
        .build(2)
        .unwrap();
    vec![("layered", layered), ("hopfield", hopfield)]
}

/// One mutation of `input`: bit flips, interesting bytes, truncation, extension,
/// duplicated or deleted ranges, and digit edits (which reach the JSON header's
/// numbers: shapes and offsets).
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    let rounds = 1 + rng.below(4) as usize;
    for _ in 0..rounds {
        let len = v.len().max(1);
        let at = rng.below(len as u64) as usize;
        match rng.below(8) {
            0 if !v.is_empty() => v[at] ^= 1 << rng.below(8),
            1 if !v.is_empty() => v[at] = [0, 1, 0x7f, 0x80, 0xff, b'-', b'.', b'9'][rng.below(8) as usize],
            2 => v.truncate(at),
            3 => v.extend((0..1 + rng.below(16)).map(|_| rng.below(256) as u8)),
            4 if at < v.len() => {
                let end = (at + 1 + rng.below(32) as usize).min(v.len());
                let chunk = v[at..end].to_vec();
                let to = rng.below(v.len() as u64 + 1) as usize;
                v.splice(to..to, chunk);
            }
            5 if at < v.len() => {
                let end = (at + 1 + rng.below(32) as usize).min(v.len());
                v.drain(at..end);
            }
            6 => {
                // A digit in the text part becomes another digit or a sign.
                let digits: Vec<usize> = v
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.is_ascii_digit())
                    .map(|(i, _)| i)
                    .collect();
                if !digits.is_empty() {
                    let i = digits[rng.below(digits.len() as u64) as usize];
                    v[i] = b"0123456789-.e"[rng.below(13) as usize];
                }
            }
            _ if v.len() >= 8 => {
                // A big-endian or little-endian u32 field set to an extreme.
                let i = rng.below((v.len() - 3) as u64) as usize;
                let x: u32 = [0, 1, u32::MAX, 1 << 31, 60_000][rng.below(5) as usize];
                v[i..i + 4].copy_from_slice(&if rng.below(2) == 0 {
                    x.to_be_bytes()
                } else {
                    x.to_le_bytes()
                });
            }
            _ => {}
        }
    }
    v
}

fn seeds(prefix: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir())
        .expect("tests/fuzz_corpus exists")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(prefix)
                .then(|| (name, std::fs::read(e.path()).unwrap()))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no {prefix}* seeds in tests/fuzz_corpus");
    out
}

/// Runs `target` on mutations of `seeds` until the budget is spent; a panic fails
/// the test with the input saved for replay.
fn fuzz(tag: &str, seeds: &[(String, Vec<u8>)], mut target: impl FnMut(&Path)) {
    let mut rng = Rng::new(seed());
    let dir = std::env::temp_dir().join(format!("mep-fuzz-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("input");
    let start = Instant::now();
    let mut runs = 0u64;
    // Every seed unmodified first: the corpus itself must load or fail cleanly.
    for (_, s) in seeds {
        std::fs::write(&file, s).unwrap();
        target(&file);
    }
    while start.elapsed() < budget() {
        let (name, s) = &seeds[rng.below(seeds.len() as u64) as usize];
        let input = mutate(&mut rng, s);
        std::fs::write(&file, &input).unwrap();
        if catch_unwind(AssertUnwindSafe(|| target(&file))).is_err() {
            let keep = dir.join(format!("crash-{runs}"));
            std::fs::write(&keep, &input).unwrap();
            panic!(
                "{tag}: a mutation of {name} panicked; input saved at {}",
                keep.display()
            );
        }
        runs += 1;
    }
    eprintln!(
        "{tag}: {runs} mutations in {:.1} s, no panic",
        start.elapsed().as_secs_f64()
    );
    assert!(runs > 100, "{tag}: only {runs} runs");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn idx_reader_survives_mutations() {
    fuzz("idx", &seeds("idx"), |p| {
        // Either outcome is fine; only panics and aborts are failures.
        let _ = mep::data::idx::read_idx(p);
        let _ = mep::data::mnist::load_split(p, p);
        let _ = mep::Dataset::from_idx_files(p, p, 10, mep::Normalization::MNIST);
        let _ = mep::Dataset::from_cifar10_files(&[p.to_path_buf()], mep::Normalization::MNIST);
    });
}

#[test]
fn checkpoint_loader_survives_mutations() {
    let mut ms = models();
    fuzz("ckpt", &seeds("ckpt"), |p| {
        for (_, m) in ms.iter_mut() {
            if m.load_weights(p).is_ok() {
                // Whatever loads must be usable: finite parameters, predictions.
                let params = m.parameters().unwrap();
                assert!(params
                    .iter()
                    .flat_map(|(w, b)| w.iter().chain(b))
                    .all(|v| v.is_finite()));
                // (Mutated weights may be finite yet overflow the outputs: a typed
                // error then, never a panic or an arbitrary class.)
                let x = vec![0.5f32; m.arch().inputs()];
                match m.predict(&x) {
                    Ok(_) | Err(mep::MepError::NonFinite(_)) => {}
                    Err(e) => panic!("predict after a load: {e}"),
                }
            }
        }
    });
}

/// Resumable checkpoints (weights, optimizer state, run metadata) of the seed models,
/// written here after one step (their format is checked by tests/resume.rs).
fn resumable_seeds() -> Vec<(String, Vec<u8>)> {
    let dir = std::env::temp_dir().join(format!("mep-fuzz-resumable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = models()
        .into_iter()
        .map(|(name, mut m)| {
            let mut opt = mep::smep(&m).build().unwrap();
            let (x, y) = (vec![0.25f32; m.arch().inputs()], [1u32]);
            opt.step(&mut m, &x, &y).unwrap();
            let data = mep::checkpoint::DataShape {
                shape: vec![m.arch().inputs()],
                classes: m.arch().outputs(),
                normalization: None,
            };
            let run = mep::checkpoint::RunState {
                epochs_done: 1,
                shuffle: mep::Shuffle::Seeded(0),
                batch_size: 1,
                train_samples: 1,
            };
            let path = dir.join(name);
            mep::checkpoint::save(&path, &m, &opt, &run, &data, mep::io::Dtype::F32).unwrap();
            (format!("resumable-{name}"), std::fs::read(&path).unwrap())
        })
        .collect();
    std::fs::remove_dir_all(&dir).ok();
    out
}

#[test]
fn resumable_checkpoint_loader_survives_mutations() {
    let mut ms: Vec<_> = models()
        .into_iter()
        .map(|(_, m)| {
            let opt = mep::smep(&m).build().unwrap();
            let data = mep::checkpoint::DataShape {
                shape: vec![m.arch().inputs()],
                classes: m.arch().outputs(),
                normalization: None,
            };
            (m, opt, data)
        })
        .collect();
    fuzz("resumable", &resumable_seeds(), |p| {
        let _ = mep::checkpoint::info(p);
        for (m, opt, data) in ms.iter_mut() {
            let _ = mep::checkpoint::load_model(p, m, Some(data));
            if mep::checkpoint::resume(p, m, opt, data).is_ok() {
                // Whatever resumes must train on.
                let x = vec![0.5f32; m.arch().inputs()];
                let _ = opt.step(m, &x, &[0]);
            }
        }
    });
}

#[test]
#[ignore = "rewrites tests/fuzz_corpus; run by hand when the formats change"]
fn regenerate_corpus() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let img: Vec<u8> = (0..3 * 28 * 28).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(
        dir.join("idx-images"),
        mep::data::idx::encode_idx(&[3, 28, 28], &img).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("idx-labels"),
        mep::data::idx::encode_idx(&[5], &[3, 0, 9, 1, 1]).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("idx-2d"),
        mep::data::idx::encode_idx(&[4, 6], &[1; 24]).unwrap(),
    )
    .unwrap();
    mep::data::idx::write_idx_gz(&dir.join("idx-labels-gz"), &[5], &[3, 0, 9, 1, 1]).unwrap();
    mep::data::idx::write_idx_gz(&dir.join("idx-images-gz"), &[2, 28, 28], &img[..2 * 784]).unwrap();
    for (name, m) in models() {
        m.save(dir.join(format!("ckpt-{name}-f32"))).unwrap();
        m.save_as(dir.join(format!("ckpt-{name}-bf16")), mep::io::Dtype::BF16)
            .unwrap();
    }
    let (_, m) = &models()[0];
    m.save_as(dir.join("ckpt-layered-f16"), mep::io::Dtype::F16).unwrap();
}
