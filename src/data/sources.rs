//! Data sets beyond MNIST: any IDX files (any image shape, any number of classes),
//! CIFAR-10's binary format, and arrays already in memory.
//!
//! Files are checked, never trusted: a truncated file, a wrong magic number, image and
//! label counts that disagree, train and test images of different shapes, or a label
//! outside the classes are [`MepError::CorruptData`] naming the file and the problem.
//!
//! ```
//! use mep::data::{write_idx, DataSplits};
//! # fn main() -> mep::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("mep-doc-sources-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! // Four IDX files with the MNIST names: here 6 training and 2 test images of 2×3
//! // pixels, labelled 0–2.
//! write_idx(&dir.join("train-images-idx3-ubyte"), &[6, 2, 3], &(0..36).map(|i| i * 7).collect::<Vec<u8>>())?;
//! write_idx(&dir.join("train-labels-idx1-ubyte"), &[6], &[0, 1, 2, 0, 1, 2])?;
//! write_idx(&dir.join("t10k-images-idx3-ubyte"), &[2, 2, 3], &(0..12).collect::<Vec<u8>>())?;
//! write_idx(&dir.join("t10k-labels-idx1-ubyte"), &[2], &[2, 0])?;
//! let data = DataSplits::load_idx(&dir, None)?; // normalisation from the training split
//! assert_eq!((data.train.len(), data.test.len()), (6, 2));
//! assert_eq!((data.train.shape(), data.train.classes()), (&[2usize, 3][..], 3));
//! println!("{}", data.summary()); // 6 training + 2 test samples of shape 2×3 …
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};

use super::idx::{self, IdxArray};
use super::mnist::{self, Dataset};
use crate::error::{MepError, Result};

/// Inputs are normalised per pixel as `(x/255 − mean)/std`, one mean and standard
/// deviation for all pixels (and all channels).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    /// Mean of the training pixels scaled to [0, 1].
    pub mean: f32,
    /// Standard deviation of the training pixels scaled to [0, 1].
    pub std: f32,
}

/// The largest size a normalised pixel, (x − mean)/std for x in [0, 1], may reach:
/// a normalisation beyond it is refused by [`Normalization::new`]. Normalised inputs
/// are of order 1; a million is far past any useful scale but still fits f32 with
/// room for the network's products.
pub const MAX_NORMALISED: f64 = 1e6;

impl Normalization {
    /// MNIST's constants, (0.1307, 0.3081), as [`crate::Mnist::load`] applies them.
    pub const MNIST: Normalization = Normalization {
        mean: mnist::PIXEL_MEAN,
        std: mnist::PIXEL_STD,
    };

    /// A normalisation with the given mean and standard deviation.
    ///
    /// Errors: [`MepError::InvalidArgument`] (`normalize`) unless `mean` is finite,
    /// `std` finite and positive, and the normalised pixels, (x − mean)/std for x in
    /// [0, 1], stay within ±[`MAX_NORMALISED`] (a subnormal `std` such as 1e-40 would
    /// turn every pixel into ±inf or a value no network trains on).
    pub fn new(mean: f32, std: f32) -> Result<Normalization> {
        if !(mean.is_finite() && std.is_finite() && std > 0.0) {
            return Err(MepError::invalid(
                "normalize",
                format!("{mean},{std}"),
                "give MEAN,STD with a finite mean and a finite standard deviation > 0, e.g. 0.1307,0.3081",
            ));
        }
        let (m, sd) = (mean as f64, std as f64);
        let largest = m.abs().max((1.0 - m).abs()) / sd;
        if largest > MAX_NORMALISED {
            return Err(MepError::invalid(
                "normalize",
                format!("{mean},{std}"),
                format!(
                    "pixels in [0, 1] would become values up to {largest:.6e} in size (the limit is {MAX_NORMALISED:e}; normalised inputs are of order 1): give the pixels' mean and standard deviation as fractions of 255, e.g. 0.1307,0.3081"
                ),
            ));
        }
        Ok(Normalization { mean, std })
    }

    /// The mean and (population) standard deviation of `pixels / 255`, computed exactly
    /// from the histogram of the byte values.
    ///
    /// Errors: [`MepError::InvalidArgument`] (`normalize`) when there are no pixels or
    /// all are equal (the standard deviation is 0: give one explicitly).
    ///
    /// ```
    /// let n = mep::data::Normalization::of_pixels(&[0, 255])?;
    /// assert_eq!((n.mean, n.std), (0.5, 0.5));
    /// # Ok::<(), mep::MepError>(())
    /// ```
    pub fn of_pixels(pixels: &[u8]) -> Result<Normalization> {
        let mut hist = [0u64; 256];
        for &p in pixels {
            hist[p as usize] += 1;
        }
        let n = pixels.len() as f64;
        let mean = hist.iter().enumerate().map(|(v, &c)| c as f64 * v as f64).sum::<f64>() / n / 255.0;
        let var = hist
            .iter()
            .enumerate()
            .map(|(v, &c)| c as f64 * (v as f64 / 255.0 - mean).powi(2))
            .sum::<f64>()
            / n;
        let std = var.sqrt();
        if pixels.is_empty() || std.is_nan() || std <= 0.0 {
            return Err(MepError::invalid(
                "normalize",
                format!("{} training pixels, standard deviation {std}", pixels.len()),
                "the training pixels are all equal, so they cannot be standardised: give MEAN,STD explicitly (--normalize)",
            ));
        }
        Normalization::new(mean as f32, std as f32)
    }

    /// The checks of [`Normalization::new`], on a normalisation that may have been
    /// written as a struct literal (its fields are public): the loaders that take
    /// one call it.
    pub fn validate(&self) -> Result<()> {
        Normalization::new(self.mean, self.std).map(|_| ())
    }

    /// `(x/255 − mean)/std` for each byte (through a 256-entry table; for
    /// [`Normalization::MNIST`] bit-identical to [`mnist::normalize_pixels`]).
    pub fn apply(&self, pixels: &[u8]) -> Vec<f32> {
        let mut table = [0f32; 256];
        for (x, t) in table.iter_mut().enumerate() {
            *t = (x as f32 / 255.0 - self.mean) / self.std;
        }
        pixels.iter().map(|&x| table[x as usize]).collect()
    }
}

impl std::str::FromStr for Normalization {
    type Err = MepError;

    /// Parses `MEAN,STD`, e.g. `0.1307,0.3081`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            MepError::invalid(
                "normalize",
                s,
                "give MEAN,STD of the pixels scaled to [0, 1], e.g. 0.1307,0.3081",
            )
        };
        let (m, d) = s.split_once(',').ok_or_else(bad)?;
        let mean = m.trim().parse::<f32>().map_err(|_| bad())?;
        let std = d.trim().parse::<f32>().map_err(|_| bad())?;
        Normalization::new(mean, std)
    }
}

/// `28×28`, or `64` for a one-dimensional shape.
pub fn shape_text(shape: &[usize]) -> String {
    shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("×")
}

/// A training and a test split of one data set, with the normalisation applied to both.
#[derive(Clone, Debug, PartialEq)]
pub struct DataSplits {
    /// The training split.
    pub train: Dataset,
    /// The test split (same sample shape and classes as the training split).
    pub test: Dataset,
    /// The normalisation applied to both splits.
    pub normalization: Normalization,
    /// Whether `normalization` was computed from the training split (else it was given).
    pub computed: bool,
    /// Where the data came from, e.g. `idx data from data/digits`.
    pub origin: String,
}

/// What a missing file of `--dataset idx` needs.
const IDX_FIX: &str = "a data directory for IDX data holds four files named as MNIST's, each raw or .gz: \
     train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte";

/// What a missing CIFAR-10 file needs.
const CIFAR_FIX: &str = "a CIFAR-10 directory holds the binary version's data_batch_1.bin … data_batch_5.bin and \
     test_batch.bin (the cifar-10-batches-bin folder of cifar-10-binary.tar.gz)";

/// Bytes of one CIFAR-10 record: a label byte, then 3×32×32 pixels (channels, rows, columns).
pub const CIFAR_RECORD: usize = 1 + CIFAR_FEATURES;
/// Pixels of one CIFAR-10 image.
pub const CIFAR_FEATURES: usize = 3 * 32 * 32;
/// CIFAR-10's classes.
pub const CIFAR_CLASSES: usize = 10;
/// The files of CIFAR-10's training split.
pub const CIFAR_TRAIN: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The file of CIFAR-10's test split.
pub const CIFAR_TEST: &str = "test_batch.bin";

fn corrupt(path: &Path, reason: String) -> MepError {
    MepError::CorruptData {
        path: path.to_path_buf(),
        reason,
    }
}

/// The raw file `name` in `dir`, else `name.gz`, else [`MepError::MissingData`].
fn locate(dir: &Path, name: &str, fix: &str) -> Result<PathBuf> {
    mnist::locate(dir, name).map_err(|_| MepError::MissingData {
        path: dir.join(name),
        fix: fix.to_string(),
    })
}

/// An images file and its labels file, read and checked against each other: images
/// with at least two dimensions `[n, …]`, labels with one `[n]`, the same `n ≥ 1`.
struct RawSplit {
    images: IdxArray,
    labels: IdxArray,
    images_path: PathBuf,
    labels_path: PathBuf,
}

fn read_raw_split(images_path: &Path, labels_path: &Path) -> Result<RawSplit> {
    let images = idx::read_idx(images_path)?;
    let labels = idx::read_idx(labels_path)?;
    if images.dims.len() < 2 {
        return Err(corrupt(
            images_path,
            format!(
                "not an images file: its dimensions are {:?}, expected [samples, …sample shape] \
                 (magic 0x00000802 or more, e.g. 0x{:08x} for images)",
                images.dims,
                idx::MAGIC_U8_3D
            ),
        ));
    }
    if labels.dims.len() != 1 {
        return Err(corrupt(
            labels_path,
            format!(
                "not a labels file: its dimensions are {:?}, expected [samples] (magic 0x{:08x})",
                labels.dims,
                idx::MAGIC_U8_1D
            ),
        ));
    }
    if images.dims[0] != labels.dims[0] {
        return Err(corrupt(
            labels_path,
            format!(
                "{} labels for the {} images of {}: the two files must hold the same samples",
                labels.dims[0],
                images.dims[0],
                images_path.display()
            ),
        ));
    }
    if images.dims[0] == 0 {
        return Err(corrupt(images_path, "holds no samples".into()));
    }
    if images.dims[1..].contains(&0) {
        return Err(corrupt(
            images_path,
            format!("sample shape {:?} has a zero dimension", &images.dims[1..]),
        ));
    }
    Ok(RawSplit {
        images,
        labels,
        images_path: images_path.to_path_buf(),
        labels_path: labels_path.to_path_buf(),
    })
}

/// The labels of `classes` classes, as text: `0–9` (`0` for one class).
fn label_range(classes: usize) -> String {
    match classes {
        0 => "none".into(),
        1 => "0".into(),
        c => format!("0–{}", c - 1),
    }
}

/// The first label `>= classes`, as an error on `path` (`what` says where the class
/// count came from).
fn check_labels(labels: &[u8], classes: usize, path: &Path, what: &str) -> Result<()> {
    match labels.iter().position(|&l| l as usize >= classes) {
        Some(i) => Err(corrupt(
            path,
            format!(
                "label {} at index {i} is out of range: {what} (labels {})",
                labels[i],
                label_range(classes)
            ),
        )),
        None => Ok(()),
    }
}

impl RawSplit {
    fn into_dataset(self, classes: usize, norm: Normalization) -> Result<Dataset> {
        norm.validate()?;
        let shape = self.images.dims[1..].to_vec();
        let features = shape.iter().product();
        let images = norm.apply(&self.images.data);
        let labels = self.labels.data.iter().map(|&l| l as u32).collect();
        Dataset::new(images, labels, features, classes)?.with_shape(shape)
    }
}

impl Dataset {
    /// One split from an IDX images file (`[n, …sample shape]`, e.g. `[n, 8, 8]`) and an
    /// IDX labels file (`[n]`), raw or gzip-compressed, with `classes` classes,
    /// normalised by `normalization`. No checksum is verified.
    ///
    /// Errors: [`MepError::MissingData`] for a missing file; [`MepError::CorruptData`]
    /// for a malformed file (wrong magic, truncated, trailing bytes), an images file of
    /// fewer than two dimensions, a labels file of more than one, different image and
    /// label counts, no samples, or a label `>= classes`; [`MepError::InvalidArgument`]
    /// for fewer than 2 classes.
    pub fn from_idx_files(
        images: &Path,
        labels: &Path,
        classes: usize,
        normalization: Normalization,
    ) -> Result<Dataset> {
        if !(2..=u32::MAX as usize).contains(&classes) {
            return Err(MepError::invalid(
                "classes",
                classes,
                "must be between 2 and u32::MAX: a classifier needs at least two classes",
            ));
        }
        let raw = read_raw_split(images, labels)?;
        check_labels(
            &raw.labels.data,
            classes,
            labels,
            &format!("the data set has {classes} classes"),
        )?;
        raw.into_dataset(classes, normalization)
    }

    /// One split from CIFAR-10 binary files (`data_batch_N.bin`, `test_batch.bin`):
    /// each record is a label byte (0–9) and 3072 pixel bytes (3 channels of 32×32,
    /// row-major). The samples of all `files` are concatenated in order; shape
    /// `[3, 32, 32]`, 10 classes, normalised by `normalization`.
    ///
    /// Errors: [`MepError::MissingData`] for a missing file; [`MepError::CorruptData`]
    /// for an empty file, a size that is not a whole number of 3073-byte records, or a
    /// label above 9; [`MepError::InvalidArgument`] if `files` is empty.
    pub fn from_cifar10_files(files: &[PathBuf], normalization: Normalization) -> Result<Dataset> {
        let (pixels, labels) = read_cifar(files)?;
        cifar_dataset(&pixels, labels, normalization)
    }

    /// A data set from an `n × features` array of inputs (already normalised, all
    /// finite) and `n` labels below `classes`; the sample shape is `[features]` (see
    /// [`Dataset::with_shape`]). [`Dataset::new`] takes the same from a flat vector.
    ///
    /// Errors: as [`Dataset::new`] ([`MepError::Shape`] for `labels.len() != n`,
    /// [`MepError::InvalidArgument`] for a label `>= classes` or 0 features or
    /// classes, [`MepError::NonFinite`] for a NaN or infinite input).
    ///
    /// ```
    /// use mep::ndarray::array;
    /// let d = mep::Dataset::from_array(array![[0.0f32, 1.0], [1.0, 0.0], [0.5, 0.5]].view(), &[0, 1, 1], 2)?;
    /// assert_eq!((d.len(), d.features(), d.classes()), (3, 2, 2));
    /// assert!(mep::Dataset::from_array(array![[0.0f32, 1.0]].view(), &[2], 2).is_err()); // label 2 of 2 classes
    /// # Ok::<(), mep::MepError>(())
    /// ```
    pub fn from_array(images: ndarray::ArrayView2<'_, f32>, labels: &[u32], classes: usize) -> Result<Dataset> {
        let (n, features) = images.dim();
        if labels.len() != n {
            return Err(MepError::Shape(format!(
                "{n} rows of inputs but {} labels: give one label per row",
                labels.len()
            )));
        }
        Dataset::new(images.iter().copied().collect(), labels.to_vec(), features, classes)
    }

    /// A data set from raw pixel bytes (`n × product(shape)`, row-major), normalised by
    /// `normalization`, with `n = labels.len()` samples of shape `shape`.
    ///
    /// Errors: [`MepError::Shape`] if `pixels` does not hold `labels.len()` samples of
    /// `shape`; otherwise as [`Dataset::new`].
    pub fn from_pixels(
        pixels: &[u8],
        labels: Vec<u32>,
        shape: Vec<usize>,
        classes: usize,
        normalization: Normalization,
    ) -> Result<Dataset> {
        // Its fields are public: one written as a literal is checked here.
        normalization.validate()?;
        let features: usize = shape.iter().product();
        if features == 0 || labels.len().checked_mul(features) != Some(pixels.len()) {
            return Err(MepError::Shape(format!(
                "{} pixel bytes for {} labels of shape {} ({} each)",
                pixels.len(),
                labels.len(),
                shape_text(&shape),
                features
            )));
        }
        Dataset::new(normalization.apply(pixels), labels, features, classes)?.with_shape(shape)
    }
}

/// Reads CIFAR-10 records from `files`: (pixels, labels), every record checked.
fn read_cifar(files: &[PathBuf]) -> Result<(Vec<u8>, Vec<u32>)> {
    if files.is_empty() {
        return Err(MepError::invalid(
            "files",
            "none",
            "give at least one CIFAR-10 .bin file",
        ));
    }
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for path in files {
        let bytes = idx::read_maybe_gz_with_fix(path, CIFAR_FIX)?;
        if bytes.is_empty() {
            return Err(corrupt(
                path,
                format!(
                    "the file is empty: a CIFAR-10 file holds {CIFAR_RECORD}-byte records (a label byte and \
                     3×32×32 pixels each); download it again"
                ),
            ));
        }
        if bytes.len() % CIFAR_RECORD != 0 {
            return Err(corrupt(
                path,
                format!(
                    "{} bytes is not a whole number of {CIFAR_RECORD}-byte records (a label byte and 3×32×32 \
                     pixels each): {} complete records and {} bytes left over (truncated?)",
                    bytes.len(),
                    bytes.len() / CIFAR_RECORD,
                    bytes.len() % CIFAR_RECORD
                ),
            ));
        }
        for (i, rec) in bytes.chunks_exact(CIFAR_RECORD).enumerate() {
            if rec[0] as usize >= CIFAR_CLASSES {
                return Err(corrupt(
                    path,
                    format!(
                        "record {i} has label {}: CIFAR-10 labels are 0–{} (is this CIFAR-100, whose records \
                         have two label bytes?)",
                        rec[0],
                        CIFAR_CLASSES - 1
                    ),
                ));
            }
            labels.push(rec[0] as u32);
            pixels.extend_from_slice(&rec[1..]);
        }
    }
    Ok((pixels, labels))
}

fn cifar_dataset(pixels: &[u8], labels: Vec<u32>, norm: Normalization) -> Result<Dataset> {
    Dataset::from_pixels(pixels, labels, vec![3, 32, 32], CIFAR_CLASSES, norm)
}

impl DataSplits {
    /// Loads the four IDX files with MNIST's names from `dir` (each raw or `.gz`; when
    /// both `NAME` and `NAME.gz` exist the raw file is read and the `.gz` ignored), of
    /// any sample shape and class count, without checksums: the sample shape is read
    /// from the images files (train and test must agree), the class count is one more
    /// than the largest training label (test labels must be below it), and the pixels
    /// are normalised by `normalization`, or, if `None`, by the mean and standard
    /// deviation of the training pixels ([`Normalization::of_pixels`]).
    ///
    /// Errors: [`MepError::MissingData`] naming a missing file; [`MepError::CorruptData`]
    /// naming the file for anything [`Dataset::from_idx_files`] refuses, train and test
    /// images of different shapes, fewer than two classes, or a test label the training
    /// split does not have; [`MepError::InvalidArgument`] when the training pixels are
    /// all equal and no normalisation is given.
    pub fn load_idx(dir: &Path, normalization: Option<Normalization>) -> Result<DataSplits> {
        let path = |name| locate(dir, name, IDX_FIX);
        let (ti, tl, vi, vl) = (
            path(mnist::TRAIN_IMAGES)?,
            path(mnist::TRAIN_LABELS)?,
            path(mnist::TEST_IMAGES)?,
            path(mnist::TEST_LABELS)?,
        );
        let (train, test) = crate::data::join(|| read_raw_split(&ti, &tl), || read_raw_split(&vi, &vl));
        let (train, test) = (train?, test?);
        if train.images.dims[1..] != test.images.dims[1..] {
            return Err(corrupt(
                &test.images_path,
                format!(
                    "test images are {} but the training images ({}) are {}: both splits need one shape",
                    shape_text(&test.images.dims[1..]),
                    train.images_path.display(),
                    shape_text(&train.images.dims[1..])
                ),
            ));
        }
        let max = train.labels.data.iter().copied().max().unwrap_or(0);
        let classes = max as usize + 1;
        if classes < 2 {
            return Err(corrupt(
                &train.labels_path,
                "every training label is 0: a classifier needs at least two classes".into(),
            ));
        }
        check_labels(
            &test.labels.data,
            classes,
            &test.labels_path,
            &format!(
                "the training labels ({}) go up to {max}, so there are {classes} classes",
                train.labels_path.display()
            ),
        )?;
        let (normalization, computed) = match normalization {
            Some(n) => (n, false),
            None => (Normalization::of_pixels(&train.images.data)?, true),
        };
        Ok(DataSplits {
            train: train.into_dataset(classes, normalization)?,
            test: test.into_dataset(classes, normalization)?,
            normalization,
            computed,
            origin: format!("IDX data from {}", dir.display()),
        })
    }

    /// Loads MNIST from `dir`, verified by SHA-256 ([`crate::Mnist::load`]), as splits
    /// normalised with [`Normalization::MNIST`].
    ///
    /// Errors: as [`crate::Mnist::load`].
    pub fn load_mnist(dir: &Path) -> Result<DataSplits> {
        let m = mnist::Mnist::load(dir)?;
        Ok(DataSplits {
            train: m.train,
            test: m.test,
            normalization: Normalization::MNIST,
            computed: false,
            origin: format!("MNIST from {} (SHA-256 verified)", dir.display()),
        })
    }

    /// Loads CIFAR-10's binary version from `dir` (or from `dir/cifar-10-batches-bin`,
    /// where the archive unpacks): `data_batch_1.bin` … `data_batch_5.bin` for
    /// training and `test_batch.bin` for testing, each raw or `.gz` (the raw file when
    /// both exist; see
    /// [`Dataset::from_cifar10_files`]). Normalised by `normalization`, or, if `None`,
    /// by the mean and standard deviation of all training pixels (one pair for the
    /// three channels).
    ///
    /// Errors: [`MepError::MissingData`] naming a missing file; as
    /// [`Dataset::from_cifar10_files`] for a malformed one.
    pub fn load_cifar10(dir: &Path, normalization: Option<Normalization>) -> Result<DataSplits> {
        let nested = dir.join("cifar-10-batches-bin");
        let dir = if locate(dir, CIFAR_TRAIN[0], CIFAR_FIX).is_err() && nested.is_dir() {
            nested
        } else {
            dir.to_path_buf()
        };
        let train_files = CIFAR_TRAIN
            .iter()
            .map(|name| locate(&dir, name, CIFAR_FIX))
            .collect::<Result<Vec<_>>>()?;
        let test_files = [locate(&dir, CIFAR_TEST, CIFAR_FIX)?];
        let (train, test) = crate::data::join(|| read_cifar(&train_files), || read_cifar(&test_files));
        let ((train_px, train_lbl), (test_px, test_lbl)) = (train?, test?);
        let (normalization, computed) = match normalization {
            Some(n) => (n, false),
            None => (Normalization::of_pixels(&train_px)?, true),
        };
        Ok(DataSplits {
            train: cifar_dataset(&train_px, train_lbl, normalization)?,
            test: cifar_dataset(&test_px, test_lbl, normalization)?,
            normalization,
            computed,
            origin: format!("CIFAR-10 from {}", dir.display()),
        })
    }

    /// One line saying what was loaded: the origin, the sample counts, the sample
    /// shape and inputs, the classes and the normalisation (and whether it was
    /// computed from the training split).
    pub fn summary(&self) -> String {
        format!(
            "{}: {} training + {} test samples of shape {} ({} inputs), {} classes, normalised with mean {} and std {} ({})",
            self.origin,
            self.train.len(),
            self.test.len(),
            self.train.shape_text(),
            self.train.features(),
            self.train.classes(),
            self.normalization.mean,
            self.normalization.std,
            if self.computed {
                "computed from the training split"
            } else {
                "as given"
            }
        )
    }
}
