//! Resumable runs: a checkpoint that carries, besides the weights, the optimizer's
//! state ([`OptimizerState`]: momentum, Adam moments, power-iteration vectors, step
//! counter, hence the schedule's position), where the run stands ([`RunState`]:
//! epochs done, the shuffle's seed, batch size, training samples) and the data set's
//! shape ([`DataShape`]). A run saved after epoch `k` and resumed gives, on the CPU, the
//! same weights bit for bit as the run that never stopped.
//!
//! The file is the safetensors checkpoint of [`crate::io`] (`layers.*` as
//! [`crate::Model::save`] writes them, so [`crate::Model::load_weights`] reads it)
//! with the state tensors `optim.layers.*` (always F32) and metadata entries. It
//! records the architecture, activations, energy, data shape and optimizer
//! configuration, and refuses to load into anything else, naming the difference.
//!
//! ```
//! use mep::checkpoint::{self, DataShape, RunState};
//! use mep::{smep, Dataset, Device, Sequential, Shuffle};
//! # fn main() -> mep::Result<()> {
//! # let path = std::env::temp_dir().join(format!("mep-doc-ckpt-{}.safetensors", std::process::id()));
//! let data = Dataset::synthetic(64, 6, 3, 0)?;
//! let build = || Sequential::new(&Device::Cpu).flatten().linear(6, 8).relu().linear(8, 3).build(0);
//! let (mut model, shuffle) = (build()?, Shuffle::Seeded(0));
//! let mut opt = smep(&model).build()?;
//! let train = model.upload(&data)?;
//! opt.train_epoch(&mut model, &train, 16, shuffle, 0, 0, |_, _, _| {})?;
//! let run = RunState { epochs_done: 1, shuffle, batch_size: 16, train_samples: data.len() };
//! checkpoint::save(&path, &model, &opt, &run, &DataShape::of(&data), mep::io::Dtype::F32)?;
//!
//! // Later, in another process: the same model and optimizer, then resume.
//! let mut model2 = build()?;
//! let mut opt2 = smep(&model2).build()?;
//! let run = checkpoint::resume(&path, &mut model2, &mut opt2, &DataShape::of(&data))?;
//! run.check_continues(shuffle, 16, data.len())?;
//! assert_eq!((run.epochs_done, opt2.steps()), (1, opt.steps()));
//! assert_eq!(model2.parameters()?, model.parameters()?);
//! # std::fs::remove_file(&path).ok();
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use crate::data::mnist::Dataset;
use crate::data::sources::shape_text;
use crate::data::Normalization;
use crate::io::{self, Dtype};
use crate::optim::OptimizerState;
use crate::{MepError, Model, Optimizer, Result, Shuffle};

/// Where a run stands after an epoch: what continuing it needs beyond the weights and
/// the optimizer's state. The shuffle of epoch `e` is a pure function of the seed and
/// `e` ([`crate::data::epoch_permutation`]), so the seed and the epoch count are the
/// shuffler's whole state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunState {
    /// Epochs completed; the next epoch to train has this number (0-based).
    pub epochs_done: u64,
    /// The shuffle of every epoch.
    pub shuffle: Shuffle,
    /// Samples per step.
    pub batch_size: usize,
    /// Training samples per epoch.
    pub train_samples: usize,
}

impl RunState {
    /// Checks that a run with this `shuffle`, `batch_size` and `train_samples` continues
    /// the saved one (otherwise the resumed epochs would not be those the saved run
    /// would have trained).
    ///
    /// Errors: [`MepError::InvalidArgument`] naming the first difference (`seed`,
    /// `batch-size` or `train-subset`) with both values.
    pub fn check_continues(&self, shuffle: Shuffle, batch_size: usize, train_samples: usize) -> Result<()> {
        if shuffle != self.shuffle {
            // In the user's words (the seed), not the metadata's spelling.
            let said = |s: Shuffle| match s {
                Shuffle::Seeded(seed) => format!("seed {seed}"),
                Shuffle::None => "no shuffling".to_string(),
            };
            let value = match shuffle {
                Shuffle::Seeded(seed) => seed.to_string(),
                Shuffle::None => "none (no shuffling)".to_string(),
            };
            return Err(MepError::invalid(
                "seed",
                value,
                format!(
                    "the checkpoint's run shuffled with {}: resume with the seed of the run that saved it (it orders every epoch's samples)",
                    said(self.shuffle)
                ),
            ));
        }
        if batch_size != self.batch_size {
            return Err(MepError::invalid(
                "batch-size",
                batch_size,
                format!(
                    "the checkpoint's run used batches of {}: resume with the batch size of the run that saved it",
                    self.batch_size
                ),
            ));
        }
        if train_samples != self.train_samples {
            return Err(MepError::invalid(
                "train-subset",
                format!("{train_samples} training samples"),
                format!(
                    "the checkpoint's run trained on {}: resume on the same training data (and --train-subset) as the run that saved it",
                    self.train_samples
                ),
            ));
        }
        Ok(())
    }
}

/// The shape of the data a model was trained on: one sample's shape and the classes,
/// and, when known, how its inputs were normalised.
#[derive(Clone, Debug, PartialEq)]
pub struct DataShape {
    /// One sample's shape (see [`Dataset::shape`]).
    pub shape: Vec<usize>,
    /// Number of classes.
    pub classes: usize,
    /// The normalisation of the inputs (pixels scaled to [0, 1], then standardised),
    /// when the data came from pixels through one ([`DataShape::of`] cannot tell:
    /// set it with [`DataShape::with_normalization`]). A checkpoint records it, and
    /// data normalised otherwise is refused, since the weights expect the inputs'
    /// scale they were trained on.
    pub normalization: Option<Normalization>,
}

impl DataShape {
    /// The shape of `data` (normalisation unknown).
    pub fn of(data: &Dataset) -> DataShape {
        DataShape {
            shape: data.shape().to_vec(),
            classes: data.classes(),
            normalization: None,
        }
    }

    /// The same shape, recording that the inputs were normalised by `n`.
    pub fn with_normalization(mut self, n: Normalization) -> DataShape {
        self.normalization = Some(n);
        self
    }

    /// Inputs per sample (the product of the shape).
    pub fn features(&self) -> usize {
        self.shape.iter().product()
    }

    /// Refuses `data` (this is a checkpoint's record) when its inputs or classes differ,
    /// with a [`MepError::SizeMismatch`] naming both sizes and shapes, or when both
    /// record a normalisation and they differ, with a [`MepError::InvalidArgument`]
    /// (`normalize`) naming the checkpoint's.
    pub fn check(&self, data: &DataShape) -> Result<()> {
        let fix = || {
            format!(
                "the checkpoint was trained on samples of shape {} with {} classes, the data set has shape {} and {} classes: use the data it was trained on",
                shape_text(&self.shape),
                self.classes,
                shape_text(&data.shape),
                data.classes
            )
        };
        if self.features() != data.features() {
            return Err(MepError::SizeMismatch {
                what: "inputs",
                model_side: "checkpoint",
                model: self.features(),
                data_side: "data set",
                data: data.features(),
                fix: fix(),
            });
        }
        if self.classes != data.classes {
            return Err(MepError::SizeMismatch {
                what: "classes",
                model_side: "checkpoint",
                model: self.classes,
                data_side: "data set",
                data: data.classes,
                fix: fix(),
            });
        }
        if let (Some(saved), Some(now)) = (self.normalization, data.normalization) {
            if saved != now {
                return Err(MepError::invalid(
                    "normalize",
                    format!("{},{}", now.mean, now.std),
                    format!(
                        "the checkpoint's training data were normalised with mean {} and standard deviation {}, and its weights expect inputs on that scale: normalise these the same way (mep-mnist: --normalize {},{})",
                        saved.mean, saved.std, saved.mean, saved.std
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// What a checkpoint file says about itself ([`info`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Info {
    /// Where the saved run stood (`None` for a weights-only file).
    pub run: Option<RunState>,
    /// The data it was trained on (`None` for a weights-only file).
    pub data: Option<DataShape>,
    /// Whether it carries the optimizer's state (and can be resumed).
    pub resumable: bool,
    /// The architecture it records (`None` for files not written by `mep`).
    pub arch: Option<String>,
}

fn shuffle_text(s: Shuffle) -> String {
    match s {
        Shuffle::None => "none".into(),
        Shuffle::Seeded(seed) => format!("seeded:{seed}"),
    }
}

/// Metadata keys of a full checkpoint.
const STEPS: &str = "optim_steps";
const CONFIG: &str = "optim_config";

/// Writes a resumable checkpoint to `path`, atomically (see [`crate::io::save`]): the
/// weights as `dtype` (a resumed run continues bit for bit only from F32 weights), the
/// optimizer's state as F32, `run`, `data` and the optimizer's configuration.
///
/// Errors: [`MepError::Shape`] when `optimizer` was built for another model; as
/// [`crate::io::save`] for the file.
pub fn save(
    path: impl AsRef<Path>,
    model: &Model,
    optimizer: &Optimizer,
    run: &RunState,
    data: &DataShape,
    dtype: Dtype,
) -> Result<()> {
    optimizer.check_model(model)?;
    if run.batch_size == 0 {
        return Err(MepError::invalid(
            "batch_size",
            0,
            "a run's batches hold at least 1 sample",
        ));
    }
    if run.train_samples == 0 {
        return Err(MepError::invalid(
            "train_samples",
            0,
            "a run trains on at least 1 sample",
        ));
    }
    if data.classes < 2 || data.shape.is_empty() || data.shape.contains(&0) {
        return Err(MepError::invalid(
            "data",
            format!("shape {} with {} classes", shape_text(&data.shape), data.classes),
            "a data shape has positive dimensions and at least 2 classes (DataShape::of a data set)",
        ));
    }
    // The record must describe the data this model can train on, or a later resume
    // on the right data would be refused over sizes that were never true.
    for (what, model_size, data_size) in [
        ("inputs", model.arch().inputs(), data.features()),
        ("classes", model.arch().outputs(), data.classes),
    ] {
        if model_size != data_size {
            return Err(MepError::SizeMismatch {
                what,
                model_side: "model",
                model: model_size,
                data_side: "data shape to record",
                data: data_size,
                fix: format!(
                    "the data shape saved with a checkpoint is the training data's (DataShape::of(&train)), which must fit the {} model: shape {} with {} classes does not",
                    model.arch().describe(),
                    shape_text(&data.shape),
                    data.classes
                ),
            });
        }
    }
    let state = optimizer.state()?;
    let meta: Vec<(String, String)> = [
        (STEPS, state.steps.to_string()),
        (CONFIG, format!("{:?}", optimizer.config())),
        ("epochs_done", run.epochs_done.to_string()),
        ("shuffle", shuffle_text(run.shuffle)),
        ("batch_size", run.batch_size.to_string()),
        ("train_samples", run.train_samples.to_string()),
        (
            "data_shape",
            data.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","),
        ),
        ("classes", data.classes.to_string()),
    ]
    .into_iter()
    .chain(
        data.normalization
            .map(|n| ("normalization", format!("{},{}", n.mean, n.std))),
    )
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    io::save_with(
        path.as_ref(),
        model.arch(),
        model.energy(),
        &model.parameters()?,
        dtype,
        &meta,
        &state.tensors,
    )
}

fn parse<T: std::str::FromStr>(path: &Path, meta: &BTreeMap<String, String>, key: &str) -> Result<Option<T>> {
    match meta.get(key) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| MepError::ModelFile {
            path: path.into(),
            reason: format!("metadata `{key}` is `{v}`, which cannot be read (a damaged or foreign checkpoint)"),
        }),
    }
}

/// [`parse`] of a count that must be at least `min`.
fn parse_count(path: &Path, meta: &BTreeMap<String, String>, key: &str, min: usize) -> Result<Option<usize>> {
    match parse::<usize>(path, meta, key)? {
        Some(v) if v < min => Err(MepError::ModelFile {
            path: path.into(),
            reason: format!(
                "metadata `{key}` is `{v}`, but it must be at least {min} (a damaged or altered checkpoint)"
            ),
        }),
        other => Ok(other),
    }
}

/// The metadata keys of a full checkpoint's run state and data shape.
const RUN_KEYS: [&str; 4] = ["epochs_done", "shuffle", "batch_size", "train_samples"];
const DATA_KEYS: [&str; 2] = ["data_shape", "classes"];

fn info_of(path: &Path, meta: &BTreeMap<String, String>) -> Result<Info> {
    let bad = |reason: String| MepError::ModelFile {
        path: path.into(),
        reason,
    };
    // A file that records any of mep's checkpoint entries must be mep's, and whole.
    let ours: Vec<&str> = RUN_KEYS
        .iter()
        .chain(&DATA_KEYS)
        .chain(&[STEPS, CONFIG])
        .copied()
        .filter(|k| meta.contains_key(*k))
        .collect();
    if let Some(first) = ours.first() {
        let format = meta.get("format").map(String::as_str);
        if format != Some("mep") {
            return Err(bad(format!(
                "metadata `format` is {}, but the file records `{first}` as mep's checkpoints do: mep writes \
                 `format` = `mep` (a damaged or altered checkpoint; save it again)",
                format.map_or("missing".to_string(), |f| format!("`{f}`"))
            )));
        }
    }
    for group in [&RUN_KEYS[..], &DATA_KEYS[..], &[STEPS, CONFIG][..]] {
        let present = group.iter().filter(|k| meta.contains_key(**k)).count();
        if present > 0 && present < group.len() {
            let missing: Vec<&str> = group.iter().copied().filter(|k| !meta.contains_key(*k)).collect();
            return Err(bad(format!(
                "metadata `{}` is missing, though the file records {}: a damaged or altered checkpoint",
                missing.join("`, `"),
                group
                    .iter()
                    .filter(|k| meta.contains_key(**k))
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let data = match (meta.get("data_shape"), parse_count(path, meta, "classes", 2)?) {
        (Some(shape), Some(classes)) => {
            let shape = shape
                .split(',')
                .map(|d| d.trim().parse::<usize>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .ok()
                .filter(|s| !s.is_empty() && !s.contains(&0))
                .ok_or_else(|| {
                    bad(format!(
                        "metadata `data_shape` is `{shape}`, not a list of positive sizes"
                    ))
                })?;
            // f32's shortest round-trip text: read back, it is the same value.
            let normalization = match meta.get("normalization") {
                None => None,
                Some(text) => Some(
                    text.parse::<Normalization>()
                        .map_err(|_| bad(format!("metadata `normalization` is `{text}`, not MEAN,STD")))?,
                ),
            };
            Some(DataShape {
                shape,
                classes,
                normalization,
            })
        }
        _ => None,
    };
    let shuffle = match meta.get("shuffle").map(String::as_str) {
        None => None,
        Some("none") => Some(Shuffle::None),
        Some(s) => Some(Shuffle::Seeded(
            s.strip_prefix("seeded:")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| bad(format!("metadata `shuffle` is `{s}`, expected none or seeded:N")))?,
        )),
    };
    let run = match (
        parse::<u64>(path, meta, "epochs_done")?,
        shuffle,
        parse_count(path, meta, "batch_size", 1)?,
        parse_count(path, meta, "train_samples", 1)?,
    ) {
        (Some(epochs_done), Some(shuffle), Some(batch_size), Some(train_samples)) => Some(RunState {
            epochs_done,
            shuffle,
            batch_size,
            train_samples,
        }),
        _ => None,
    };
    parse::<u64>(path, meta, STEPS)?;
    Ok(Info {
        run,
        data,
        resumable: meta.contains_key(STEPS) && meta.contains_key(CONFIG),
        arch: meta.get("arch").cloned(),
    })
}

/// Reads what the checkpoint at `path` records about itself, without loading it.
///
/// Errors: [`MepError::Io`] if it cannot be read; [`MepError::ModelFile`] if it is not a
/// safetensors file or its metadata is damaged.
pub fn info(path: impl AsRef<Path>) -> Result<Info> {
    let path = path.as_ref();
    info_of(path, &io::read_metadata(path)?)
}

/// Loads the weights of the checkpoint at `path` into `model` (full checkpoints and
/// weights-only files alike), after checking the data shape it records, if any, against
/// `data`. Returns what the file records ([`Info`]).
///
/// Errors: [`MepError::SizeMismatch`] when the recorded data shape differs from
/// `data`'s; as [`crate::Model::load_weights`] otherwise (another architecture,
/// activations or energy is refused, naming the difference).
pub fn load_model(path: impl AsRef<Path>, model: &mut Model, data: Option<&DataShape>) -> Result<Info> {
    let path = path.as_ref();
    let info = info(path)?;
    if let (Some(saved), Some(data)) = (&info.data, data) {
        saved.check(data)?;
    }
    model.load_weights(path).map_err(|e| in_file(path, e))?;
    Ok(info)
}

/// `e` naming the checkpoint `path` when it does not already name a file: a model's
/// refusal of a checkpoint's values (shapes, non-finite values) becomes a
/// [`MepError::ModelFile`]; errors of other kinds (I/O, CUDA…) stay as they are.
fn in_file(path: &Path, e: MepError) -> MepError {
    match e {
        MepError::Shape(_) | MepError::NonFinite(_) | MepError::InvalidArgument { .. } => MepError::ModelFile {
            path: path.into(),
            reason: e.to_string(),
        },
        other => other,
    }
}

/// A value of a `Debug` rendering: its text and, for `Name { field: value, … }`,
/// `Name(value, …)`, `[…]` and `(…)`, its parts (field names for structs).
#[derive(Debug)]
struct DebugValue<'a> {
    text: &'a str,
    head: &'a str,
    open: Option<char>,
    parts: Vec<(Option<&'a str>, DebugValue<'a>)>,
}

/// Parses a `Debug` rendering (as `{:?}` writes it); `None` when it is not one.
fn parse_debug(s: &str) -> Option<DebugValue<'_>> {
    fn skip_ws(s: &str, i: &mut usize) {
        while s[*i..].starts_with(char::is_whitespace) {
            *i += s[*i..].chars().next().map_or(1, char::len_utf8);
        }
    }
    fn value<'a>(s: &'a str, i: &mut usize, depth: usize) -> Option<DebugValue<'a>> {
        if depth > 64 {
            return None;
        }
        skip_ws(s, i);
        let start = *i;
        if s[*i..].starts_with('"') {
            let mut escaped = false;
            for (k, c) in s[*i + 1..].char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => {
                        *i += k + 2;
                        let text = &s[start..*i];
                        return Some(DebugValue {
                            text,
                            head: text,
                            open: None,
                            parts: vec![],
                        });
                    }
                    _ => {}
                }
            }
            return None;
        }
        while let Some(c) = s[*i..].chars().next() {
            if ",:{}()[]".contains(c) {
                break;
            }
            *i += c.len_utf8();
        }
        let head = s[start..*i].trim();
        skip_ws(s, i);
        let open = s[*i..].chars().next().filter(|c| "{([".contains(*c));
        let Some(open) = open else {
            return (!head.is_empty()).then_some(DebugValue {
                text: head,
                head,
                open: None,
                parts: vec![],
            });
        };
        let close = match open {
            '{' => '}',
            '(' => ')',
            _ => ']',
        };
        *i += 1;
        let mut parts = Vec::new();
        loop {
            skip_ws(s, i);
            if s[*i..].starts_with(close) {
                *i += 1;
                break;
            }
            if s[*i..].starts_with("..") {
                *i += 2;
                continue;
            }
            let name = if open == '{' {
                let colon = s[*i..].find(':')?;
                let name = s[*i..*i + colon].trim();
                *i += colon + 1;
                Some(name)
            } else {
                None
            };
            parts.push((name, value(s, i, depth + 1)?));
            skip_ws(s, i);
            if s[*i..].starts_with(',') {
                *i += 1;
            } else if !s[*i..].starts_with(close) {
                return None;
            }
        }
        Some(DebugValue {
            text: s[start..*i].trim(),
            head,
            open: Some(open),
            parts,
        })
    }
    let mut i = 0;
    let v = value(s, &mut i, 0)?;
    skip_ws(s, &mut i);
    (i == s.len()).then_some(v)
}

/// The differing leaves of two parsed renderings, as `(field path, saved, ours)`.
fn debug_diff<'a>(path: &str, a: &DebugValue<'a>, b: &DebugValue<'a>, out: &mut Vec<(String, &'a str, &'a str)>) {
    if a.text == b.text {
        return;
    }
    let same_shape = a.head == b.head
        && a.open.is_some()
        && a.open == b.open
        && a.parts.len() == b.parts.len()
        && a.parts.iter().zip(&b.parts).all(|(x, y)| x.0 == y.0);
    if !same_shape {
        out.push((path.to_string(), a.text, b.text));
        return;
    }
    for (k, ((name, x), (_, y))) in a.parts.iter().zip(&b.parts).enumerate() {
        let key = name.map_or_else(|| k.to_string(), str::to_string);
        let sub = if path.is_empty() { key } else { format!("{path}.{key}") };
        debug_diff(&sub, x, y, out);
    }
}

/// The fields where two `Debug` renderings of a configuration differ, each with both
/// values; `run` (the checkpoint's run) explains a different cosine schedule length.
fn config_difference(saved: &str, ours: &str, run: Option<&RunState>) -> String {
    let mut diffs = Vec::new();
    match (parse_debug(saved), parse_debug(ours)) {
        (Some(a), Some(b)) => debug_diff("", &a, &b, &mut diffs),
        _ => diffs.push((String::new(), saved, ours)),
    }
    if diffs.is_empty() {
        diffs.push((String::new(), saved, ours));
    }
    let mut text = diffs
        .iter()
        .map(|(field, a, b)| {
            if field.is_empty() {
                format!("the checkpoint's optimizer is `{a}`, this one is `{b}`")
            } else {
                format!("`{field}: {a}` in the checkpoint, `{field}: {b}` now")
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    if let Some((_, a, _)) = diffs.iter().find(|(f, _, _)| f.ends_with("total_steps")) {
        text.push_str(
            " (the cosine schedule spans the whole run, epochs × steps per epoch, and a step per epoch is a batch: \
             a different --epochs, --batch-size or --train-subset changes its length",
        );
        if let Some(run) = run {
            let per_epoch = run.train_samples.div_ceil(run.batch_size.max(1)) as u64;
            text.push_str(&format!(
                "; the checkpoint's run had {} training samples in batches of {} ({per_epoch} steps per epoch)",
                run.train_samples, run.batch_size
            ));
            if let Some(epochs) = a.parse::<u64>().ok().filter(|t| per_epoch > 0 && t % per_epoch == 0) {
                let epochs = epochs / per_epoch;
                text.push_str(&format!(" for {epochs} epoch{}", if epochs == 1 { "" } else { "s" }));
            }
        }
        text.push_str(": resume with the settings of the run that saved the checkpoint)");
    }
    text
}

/// Continues a run from the checkpoint at `path`: loads the weights into `model` and
/// the optimizer's state into `optimizer` (built for `model` with the configuration of
/// the saved run) and returns where the run stood. Train on with epoch numbers from
/// [`RunState::epochs_done`] and the saved shuffle and batch size
/// ([`RunState::check_continues`]).
///
/// Errors, before anything is changed: [`MepError::ModelFile`] for a checkpoint
/// without optimizer state (weights only: [`load_model`] reads it), another
/// architecture, activations or energy, or another optimizer configuration, naming
/// the difference; [`MepError::SizeMismatch`] when the data shape differs from
/// `data`'s; [`MepError::Shape`] when `optimizer` was built for another model.
pub fn resume(
    path: impl AsRef<Path>,
    model: &mut Model,
    optimizer: &mut Optimizer,
    data: &DataShape,
) -> Result<RunState> {
    resume_impl(path.as_ref(), model, optimizer, data, None)
}

/// [`resume`] for a run that goes on with `shuffle`, `batch_size` and `train_samples`:
/// [`RunState::check_continues`] runs before the optimizer configurations are
/// compared, so a different batch size or training set is named as such rather than
/// as the different length of a cosine schedule it causes.
///
/// Errors: as [`resume`] and [`RunState::check_continues`], before anything is changed.
pub fn resume_continuing(
    path: impl AsRef<Path>,
    model: &mut Model,
    optimizer: &mut Optimizer,
    data: &DataShape,
    shuffle: Shuffle,
    batch_size: usize,
    train_samples: usize,
) -> Result<RunState> {
    resume_impl(
        path.as_ref(),
        model,
        optimizer,
        data,
        Some((shuffle, batch_size, train_samples)),
    )
}

fn resume_impl(
    path: &Path,
    model: &mut Model,
    optimizer: &mut Optimizer,
    data: &DataShape,
    current: Option<(Shuffle, usize, usize)>,
) -> Result<RunState> {
    let bad = |reason: String| MepError::ModelFile {
        path: path.into(),
        reason,
    };
    optimizer.check_model(model)?;
    let meta = io::read_metadata(path)?;
    let info = info_of(path, &meta)?;
    let (true, Some(run)) = (info.resumable, info.run) else {
        return Err(bad(
            "holds model weights only, without the optimizer's state (saved by Model::save, or by mep-mnist before \
             resumable checkpoints): it cannot be resumed; evaluate or fine-tune it with --load (Model::load_weights), \
             or start a new run"
                .into(),
        ));
    };
    if let Some(saved) = &info.data {
        saved.check(data)?;
    }
    if let Some((shuffle, batch_size, train_samples)) = current {
        run.check_continues(shuffle, batch_size, train_samples)?;
    }
    let loaded = io::load_with(path, model.arch(), model.energy())?;
    let ours = format!("{:?}", optimizer.config());
    let saved = &meta[CONFIG];
    if *saved != ours {
        return Err(bad(format!(
            "the checkpoint's optimizer configuration differs: {}; build the optimizer as the saved run did",
            config_difference(saved, &ours, Some(&run))
        )));
    }
    let steps = parse::<u64>(path, &meta, STEPS)?.expect("resumable");
    let state = OptimizerState {
        steps,
        tensors: loaded
            .extra
            .into_iter()
            .filter(|t| t.name.starts_with("optim."))
            .collect(),
    };
    let before = model.parameters()?;
    model.set_parameters(&loaded.values).map_err(|e| in_file(path, e))?;
    if let Err(e) = optimizer.set_state(model, &state) {
        model.set_parameters(&before)?;
        return Err(bad(e.to_string()));
    }
    Ok(run)
}
