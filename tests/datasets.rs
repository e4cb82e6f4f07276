//! Data sets beyond MNIST (issue 10, part 1): IDX files of any shape and class count,
//! CIFAR-10's binary format, in-memory arrays, the normalisation computed from the
//! training split, every malformed file an error naming it, and the model's sizes
//! checked against the data's. Every file is written here from fresh random bytes.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use mep::data::idx::write_idx_gz;
use mep::data::sources::{CIFAR_RECORD, CIFAR_TEST, CIFAR_TRAIN};
use mep::data::{write_idx, DataSplits, Normalization};
use mep::rng::Rng;
use mep::{Dataset, Device, MepError, Sequential, Shuffle};

const NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mep-datasets-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
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

fn bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.below(256) as u8).collect()
}

fn labels(rng: &mut Rng, n: usize, classes: usize) -> Vec<u8> {
    // Every class present (so the class count read back is `classes`), then random.
    (0..n)
        .map(|i| {
            if i < classes {
                i as u8
            } else {
                rng.below(classes as u64) as u8
            }
        })
        .collect()
}

/// Mean and population standard deviation of `px / 255`, computed directly.
fn stats(px: &[u8]) -> (f64, f64) {
    let n = px.len() as f64;
    let mean = px.iter().map(|&p| p as f64 / 255.0).sum::<f64>() / n;
    let var = px.iter().map(|&p| (p as f64 / 255.0 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// A split written to `dir`: images `[n, shape…]` and labels, the images gzip'd when `gz`.
struct Split {
    px: Vec<u8>,
    lbl: Vec<u8>,
}

fn write_split(dir: &TempDir, images: &str, labels_name: &str, shape: &[usize], s: &Split, gz: bool) {
    let n = s.lbl.len();
    let dims: Vec<usize> = std::iter::once(n).chain(shape.iter().copied()).collect();
    if gz {
        write_idx_gz(&dir.path(&format!("{images}.gz")), &dims, &s.px).unwrap();
    } else {
        write_idx(&dir.path(images), &dims, &s.px).unwrap();
    }
    write_idx(&dir.path(labels_name), &[n], &s.lbl).unwrap();
}

fn random_split(rng: &mut Rng, n: usize, features: usize, classes: usize) -> Split {
    Split {
        px: bytes(rng, n * features),
        lbl: labels(rng, n, classes),
    }
}

/// Writes a random IDX data set of `shape` and `classes` (train `n`, test `m`).
fn idx_dataset(rng: &mut Rng, shape: &[usize], classes: usize, n: usize, m: usize) -> (TempDir, Split, Split) {
    let dir = TempDir::new("idx");
    let f: usize = shape.iter().product();
    let (train, test) = (random_split(rng, n, f, classes), random_split(rng, m, f, classes));
    write_split(&dir, NAMES[0], NAMES[1], shape, &train, true);
    write_split(&dir, NAMES[2], NAMES[3], shape, &test, false);
    (dir, train, test)
}

fn corrupt(err: MepError) -> (PathBuf, String) {
    match err {
        MepError::CorruptData { path, reason } => (path, reason),
        other => panic!("expected CorruptData, got {other:?}"),
    }
}

fn close(a: f32, b: f64, what: &str) {
    assert!((a as f64 - b).abs() <= 1e-5 * b.abs().max(1.0), "{what}: {a} vs {b}");
}

#[test]
fn idx_of_any_shape_and_class_count_loads_with_the_training_normalisation() {
    let seed = common::fresh_seed("idx");
    let mut rng = Rng::new(seed);
    for (shape, classes) in [(vec![8usize, 8], 4usize), (vec![5], 3), (vec![2, 3, 4], 7)] {
        let f: usize = shape.iter().product();
        let (n, m) = (20 + rng.below(30) as usize, 5 + rng.below(10) as usize);
        let (dir, train, test) = idx_dataset(&mut rng, &shape, classes, n, m);
        let d = DataSplits::load_idx(&dir.0, None).unwrap();
        assert_eq!((d.train.len(), d.test.len()), (n, m), "seed {seed}");
        assert_eq!(d.train.shape(), &shape[..]);
        assert_eq!(d.test.shape(), &shape[..]);
        assert_eq!(
            (d.train.features(), d.train.classes(), d.test.classes()),
            (f, classes, classes)
        );
        assert!(d.computed);
        let (mean, std) = stats(&train.px);
        close(d.normalization.mean, mean, "mean");
        close(d.normalization.std, std, "std");
        for (split, raw) in [(&d.train, &train), (&d.test, &test)] {
            assert_eq!(split.labels(), raw.lbl.iter().map(|&l| l as u32).collect::<Vec<_>>());
            for (i, (&x, &p)) in split.images().iter().zip(&raw.px).enumerate() {
                let want = (p as f64 / 255.0 - mean) / std;
                assert!((x as f64 - want).abs() < 1e-4, "seed {seed}: pixel {i}: {x} vs {want}");
            }
        }
        // Normalised with its own statistics, the training split has mean 0 and std 1.
        let xs: Vec<f64> = d.train.images().iter().map(|&x| x as f64).collect();
        let mu = xs.iter().sum::<f64>() / xs.len() as f64;
        let sd = (xs.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / xs.len() as f64).sqrt();
        assert!(mu.abs() < 1e-4 && (sd - 1.0).abs() < 1e-4, "{mu} {sd}");
        let line = d.summary();
        for part in [
            format!("{n} training + {m} test samples"),
            format!("{} inputs", f),
            format!("{classes} classes"),
            "computed from the training split".into(),
        ] {
            assert!(line.contains(&part), "{line} lacks {part}");
        }

        // A given normalisation is applied as given.
        let given = Normalization::new(0.25, 0.5).unwrap();
        let d = DataSplits::load_idx(&dir.0, Some(given)).unwrap();
        assert!(!d.computed && d.normalization == given);
        assert_eq!(d.train.images()[0], (train.px[0] as f32 / 255.0 - 0.25) / 0.5);
    }
}

#[test]
fn idx_files_that_disagree_or_are_malformed_are_errors_naming_the_file() {
    let mut rng = Rng::new(common::fresh_seed("idx-errors"));
    let fresh = |rng: &mut Rng| idx_dataset(rng, &[4, 4], 3, 12, 6);

    // Missing file: named, with what the directory must hold.
    let (dir, _, _) = fresh(&mut rng);
    std::fs::remove_file(dir.path(NAMES[3])).unwrap();
    match DataSplits::load_idx(&dir.0, None) {
        Err(MepError::MissingData { path, fix }) => {
            assert!(
                path.ends_with(NAMES[3]) && fix.contains("t10k-labels-idx1-ubyte"),
                "{fix}"
            )
        }
        other => panic!("{other:?}"),
    }

    // Wrong magic.
    let (dir, _, _) = fresh(&mut rng);
    let p = dir.path(NAMES[3]);
    let mut b = std::fs::read(&p).unwrap();
    b[2] = 0x0D; // float type
    std::fs::write(&p, &b).unwrap();
    let (path, reason) = corrupt(DataSplits::load_idx(&dir.0, None).unwrap_err());
    assert!(path == p && reason.contains("wrong magic"), "{reason}");

    // Truncated.
    let (dir, _, _) = fresh(&mut rng);
    let p = dir.path(NAMES[1]);
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() - 3]).unwrap();
    let (path, reason) = corrupt(DataSplits::load_idx(&dir.0, None).unwrap_err());
    assert!(path == p && reason.contains("truncated"), "{reason}");

    // More labels than images.
    let (dir, _, _) = fresh(&mut rng);
    write_idx(&dir.path(NAMES[1]), &[13], &[0; 13]).unwrap();
    let (path, reason) = corrupt(DataSplits::load_idx(&dir.0, None).unwrap_err());
    assert!(
        path == dir.path(NAMES[1]) && reason.contains("13 labels for the 12 images"),
        "{reason}"
    );

    // Train and test images of different shapes.
    let (dir, _, _) = fresh(&mut rng);
    write_idx(&dir.path(NAMES[2]), &[6, 2, 8], &[1; 96]).unwrap();
    let (path, reason) = corrupt(DataSplits::load_idx(&dir.0, None).unwrap_err());
    assert!(
        path == dir.path(NAMES[2]) && reason.contains("2×8") && reason.contains("4×4"),
        "{reason}"
    );

    // A test label the training split does not have (labels 0..3 in training).
    let (dir, _, _) = fresh(&mut rng);
    write_idx(&dir.path(NAMES[3]), &[6], &[0, 1, 2, 3, 0, 1]).unwrap();
    let (path, reason) = corrupt(DataSplits::load_idx(&dir.0, None).unwrap_err());
    assert!(
        path == dir.path(NAMES[3]) && reason.contains("label 3 at index 3") && reason.contains("3 classes"),
        "{reason}"
    );

    // Labels file with two dimensions; images file with one.
    let (dir, _, _) = fresh(&mut rng);
    write_idx(&dir.path(NAMES[1]), &[12, 1], &[0; 12]).unwrap();
    let (_, reason) = corrupt(DataSplits::load_idx(&dir.0, None).unwrap_err());
    assert!(reason.contains("not a labels file"), "{reason}");
    let (dir, _, _) = fresh(&mut rng);
    write_idx(&dir.path(NAMES[0]), &[12], &[0; 12]).unwrap();
    std::fs::remove_file(dir.path(&format!("{}.gz", NAMES[0]))).unwrap();
    let (_, reason) = corrupt(DataSplits::load_idx(&dir.0, None).unwrap_err());
    assert!(reason.contains("not an images file"), "{reason}");

    // One class only.
    let (dir, _, _) = fresh(&mut rng);
    write_idx(&dir.path(NAMES[1]), &[12], &[0; 12]).unwrap();
    write_idx(&dir.path(NAMES[3]), &[6], &[0; 6]).unwrap();
    let (_, reason) = corrupt(DataSplits::load_idx(&dir.0, None).unwrap_err());
    assert!(reason.contains("at least two classes"), "{reason}");

    // Constant training pixels: no standard deviation to divide by, unless one is given.
    let (dir, _, _) = fresh(&mut rng);
    std::fs::remove_file(dir.path(&format!("{}.gz", NAMES[0]))).unwrap();
    write_idx(&dir.path(NAMES[0]), &[12, 4, 4], &[9; 192]).unwrap();
    assert!(matches!(
        DataSplits::load_idx(&dir.0, None),
        Err(MepError::InvalidArgument { name: "normalize", .. })
    ));
    assert!(DataSplits::load_idx(&dir.0, Some(Normalization::new(0.0, 1.0).unwrap())).is_ok());

    // One split with an explicit class count: a label beyond it is named.
    let (dir, _, _) = fresh(&mut rng);
    let (img, lbl) = (dir.path(&format!("{}.gz", NAMES[0])), dir.path(NAMES[1]));
    assert_eq!(
        Dataset::from_idx_files(&img, &lbl, 3, Normalization::MNIST)
            .unwrap()
            .classes(),
        3
    );
    let (path, reason) = corrupt(Dataset::from_idx_files(&img, &lbl, 2, Normalization::MNIST).unwrap_err());
    assert!(path == lbl && reason.contains("2 classes"), "{reason}");
}

#[test]
fn normalization_parses_and_refuses_bad_values() {
    let n: Normalization = "0.5, 0.25".parse().unwrap();
    assert_eq!((n.mean, n.std), (0.5, 0.25));
    // Scales whose normalised pixels would be far past any trainable size (a
    // subnormal std, a mean of pixel bytes rather than fractions with a small std)
    // are refused too; the limit's edge on both sides.
    let edge = (1.0 / mep::data::MAX_NORMALISED) as f32;
    assert!(Normalization::new(0.0, edge * 1.001).is_ok());
    assert!(Normalization::new(0.0, edge * 0.999).is_err());
    // Its fields are public: a literal past the limit is refused where it is used.
    let literal = Normalization { mean: 0.0, std: 1e-30 };
    assert!(matches!(
        Dataset::from_pixels(&[0, 255, 3, 4], vec![0, 1], vec![2], 2, literal),
        Err(MepError::InvalidArgument { name: "normalize", .. })
    ));
    for bad in [
        "0.5", "a,b", "0.5,0", "0.5,-1", "nan,1", "0.1,inf", "0,1e-40", "0,1e-7", "1e7,1",
    ] {
        assert!(
            matches!(
                bad.parse::<Normalization>(),
                Err(MepError::InvalidArgument { name: "normalize", .. })
            ),
            "{bad}"
        );
    }
    // MNIST's constants, through the general path, are bit-identical to Mnist::load's.
    let px: Vec<u8> = (0..=255).collect();
    assert_eq!(Normalization::MNIST.apply(&px), mep::data::normalize_pixels(&px));
}

fn write_cifar(path: &Path, rng: &mut Rng, records: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(records * CIFAR_RECORD);
    for _ in 0..records {
        b.push(rng.below(10) as u8);
        b.extend(bytes(rng, CIFAR_RECORD - 1));
    }
    std::fs::write(path, &b).unwrap();
    b
}

#[test]
fn cifar10_binary_files_load_as_3x32x32_with_10_classes() {
    let seed = common::fresh_seed("cifar");
    let mut rng = Rng::new(seed);
    let top = TempDir::new("cifar");
    // Where the archive unpacks: DIR/cifar-10-batches-bin.
    let dir = top.path("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let mut train = Vec::new();
    for name in CIFAR_TRAIN {
        let records = 1 + rng.below(4) as usize;
        train.extend(write_cifar(&dir.join(name), &mut rng, records));
    }
    let test = write_cifar(&dir.join(CIFAR_TEST), &mut rng, 3);
    let d = DataSplits::load_cifar10(&top.0, None).unwrap();
    let n = train.len() / CIFAR_RECORD;
    assert_eq!((d.train.len(), d.test.len()), (n, 3));
    assert_eq!(
        (d.train.shape(), d.train.classes(), d.train.features()),
        (&[3usize, 32, 32][..], 10, 3072)
    );
    let px: Vec<u8> = train.chunks(CIFAR_RECORD).flat_map(|r| r[1..].to_vec()).collect();
    let (mean, std) = stats(&px);
    close(d.normalization.mean, mean, "mean");
    close(d.normalization.std, std, "std");
    for (split, raw) in [(&d.train, &train), (&d.test, &test)] {
        for (i, rec) in raw.chunks(CIFAR_RECORD).enumerate() {
            assert_eq!(split.labels()[i], rec[0] as u32, "seed {seed}");
            // Channel-major: pixel (c, y, x) is byte 1 + c·1024 + y·32 + x of the record.
            for j in [0, 1, 31, 32, 1023, 1024, 2048, 3071] {
                let want = (rec[1 + j] as f64 / 255.0 - mean) / std;
                assert!(
                    (split.sample(i).unwrap()[j] as f64 - want).abs() < 1e-4,
                    "seed {seed}: record {i} pixel {j}"
                );
            }
        }
    }
    // Errors: a truncated file, a label above 9, a missing batch.
    let p = dir.join(CIFAR_TRAIN[2]);
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() - 10]).unwrap();
    let (path, reason) = corrupt(DataSplits::load_cifar10(&top.0, None).unwrap_err());
    assert!(path == p && reason.contains("bytes left over"), "{reason}");
    let mut b2 = b.clone();
    b2[0] = 10;
    std::fs::write(&p, &b2).unwrap();
    let (_, reason) = corrupt(DataSplits::load_cifar10(&top.0, None).unwrap_err());
    assert!(reason.contains("record 0 has label 10"), "{reason}");
    std::fs::remove_file(&p).unwrap();
    match DataSplits::load_cifar10(&top.0, None) {
        Err(MepError::MissingData { path, .. }) => assert!(path.ends_with(CIFAR_TRAIN[2])),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Dataset::from_cifar10_files(&[], Normalization::MNIST),
        Err(MepError::InvalidArgument { .. })
    ));
}

#[test]
fn in_memory_arrays_are_validated() {
    use mep::ndarray::Array2;
    let mut rng = Rng::new(common::fresh_seed("arrays"));
    let (n, f) = (7, 5);
    let x = Array2::from_shape_fn((n, f), |_| rng.normal() as f32);
    let y: Vec<u32> = (0..n).map(|_| rng.below(3) as u32).collect();
    let d = Dataset::from_array(x.view(), &y, 3).unwrap();
    assert_eq!((d.len(), d.features(), d.classes(), d.shape()), (n, f, 3, &[f][..]));
    assert_eq!(d.images(), x.as_slice().unwrap());
    assert_eq!(d.clone().with_shape(vec![1, 5]).unwrap().shape(), &[1, 5]);
    assert!(matches!(d.with_shape(vec![2, 3]), Err(MepError::Shape(_))));
    assert!(matches!(
        Dataset::from_array(x.view(), &y[1..], 3),
        Err(MepError::Shape(_))
    ));
    assert!(matches!(
        Dataset::from_array(x.view(), &[3; 7], 3),
        Err(MepError::InvalidArgument { name: "labels", .. })
    ));
    let mut bad = x.clone();
    bad[[2, 1]] = f32::NAN;
    assert!(matches!(
        Dataset::from_array(bad.view(), &y, 3),
        Err(MepError::NonFinite(_))
    ));
    // Raw pixels with a shape.
    let px = bytes(&mut rng, 2 * 6);
    let d = Dataset::from_pixels(&px, vec![0, 1], vec![2, 3], 2, Normalization::MNIST).unwrap();
    assert_eq!(d.images(), &Normalization::MNIST.apply(&px)[..]);
    assert!(matches!(
        Dataset::from_pixels(&px[1..], vec![0, 1], vec![2, 3], 2, Normalization::MNIST),
        Err(MepError::Shape(_))
    ));
}

#[test]
fn a_model_whose_sizes_differ_from_the_data_is_refused_naming_both() {
    let data = Dataset::synthetic(32, 12, 3, 1).unwrap();
    for (inputs, outputs, what, model, got) in [(10, 3, "inputs", 10, 12), (12, 4, "outputs (classes)", 4, 3)] {
        let mut m = Sequential::new(&Device::Cpu)
            .flatten()
            .linear(inputs, 6)
            .relu()
            .linear(6, outputs)
            .build(0)
            .unwrap();
        let check = |e: MepError| match &e {
            MepError::SizeMismatch {
                what: w,
                model: a,
                data: b,
                ..
            } => {
                assert_eq!((*w, *a, *b), (what, model, got));
                let msg = e.to_string();
                assert!(
                    msg.contains(&model.to_string()) && msg.contains(&got.to_string()),
                    "{msg}"
                );
            }
            other => panic!("{other:?}"),
        };
        check(m.evaluate(&data).unwrap_err());
        let mut opt = mep::smep(&m).build().unwrap();
        let up = m.upload(&data).unwrap();
        let before = m.parameters().unwrap();
        check(
            opt.train_epoch(&mut m, &up, 8, Shuffle::Seeded(0), 0, 0, |_, _, _| {})
                .unwrap_err(),
        );
        assert_eq!(m.parameters().unwrap(), before);
    }
}

#[test]
fn label_ranges_read_as_inclusive_and_one_class_is_refused() {
    let dir = TempDir::new("ranges");
    let (img, lbl) = (dir.path(NAMES[0]), dir.path(NAMES[1]));
    write_idx(&img, &[4, 2, 2], &[7; 16]).unwrap();
    write_idx(&lbl, &[4], &[0, 1, 2, 1]).unwrap();
    match Dataset::from_idx_files(&img, &lbl, 2, Normalization::MNIST).unwrap_err() {
        MepError::CorruptData { path, reason } => {
            assert_eq!(path, lbl);
            assert!(reason.contains("labels 0–1") && !reason.contains("0..2"), "{reason}");
        }
        other => panic!("{other}"),
    }
    for classes in [0, 1] {
        assert!(
            matches!(
                Dataset::from_idx_files(&img, &lbl, classes, Normalization::MNIST),
                Err(MepError::InvalidArgument { name: "classes", .. })
            ),
            "{classes} classes"
        );
    }
}

#[test]
fn cifar_messages_name_an_empty_file_and_the_label_range() {
    let dir = TempDir::new("cifar-msg");
    let empty = dir.path("data_batch_1.bin");
    std::fs::write(&empty, b"").unwrap();
    match Dataset::from_cifar10_files(std::slice::from_ref(&empty), Normalization::MNIST).unwrap_err() {
        MepError::CorruptData { path, reason } => {
            assert_eq!(path, empty);
            assert!(
                reason.contains("the file is empty") && !reason.contains("0 bytes"),
                "{reason}"
            );
        }
        other => panic!("{other}"),
    }
    let bad = dir.path("test_batch.bin");
    let mut rec = vec![0u8; CIFAR_RECORD];
    rec[0] = 10;
    std::fs::write(&bad, &rec).unwrap();
    let e = Dataset::from_cifar10_files(std::slice::from_ref(&bad), Normalization::MNIST)
        .unwrap_err()
        .to_string();
    assert!(e.contains("labels are 0–9") && !e.contains("0..10"), "{e}");
}

#[test]
fn a_raw_file_next_to_its_gz_is_documented_as_preferred() {
    // Both present: the raw file is read (documented on Mnist::load and DataSplits::load_idx).
    let dir = TempDir::new("raw-and-gz");
    let mut rng = Rng::new(3);
    for (i, n) in [(0, 6), (2, 2)] {
        write_idx(&dir.path(NAMES[i]), &[n, 2, 2], &bytes(&mut rng, n * 4)).unwrap();
        write_idx(&dir.path(NAMES[i + 1]), &[n], &labels(&mut rng, n, 2)).unwrap();
    }
    // A broken .gz beside each raw file is ignored.
    for name in NAMES {
        std::fs::write(dir.path(&format!("{name}.gz")), b"not gzip").unwrap();
    }
    let d = DataSplits::load_idx(&dir.0, None).unwrap();
    assert_eq!((d.train.len(), d.test.len()), (6, 2));
}
