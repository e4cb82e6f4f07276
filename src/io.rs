//! Saving and loading weights in the safetensors format, written atomically.
//!
//! Layout: 8-byte little-endian header length, a JSON header mapping
//! `layers.{l}.weight` (`[out, in]`) and `layers.{l}.bias` (`[out]`) to byte ranges
//! of F32 (default), BF16 or F16 data (half-size checkpoints, through the `half`
//! crate), then the little-endian data. `__metadata__` records the architecture.
//! Loading accepts all three and widens to the model's precision.

/// Element type of a saved tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// IEEE single precision (exact for f32 models).
    F32,
    /// bfloat16: f32's range, 8 significant bits (half the size).
    BF16,
    /// IEEE half precision: 11 significant bits, range ±65504 (half the size).
    F16,
}

impl Dtype {
    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::BF16 => "BF16",
            Dtype::F16 => "F16",
        }
    }

    fn parse(name: &str) -> Option<Dtype> {
        match name {
            "F32" => Some(Dtype::F32),
            "BF16" => Some(Dtype::BF16),
            "F16" => Some(Dtype::F16),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::BF16 | Dtype::F16 => 2,
        }
    }

    fn encode(self, v: f64, out: &mut Vec<u8>) {
        match self {
            Dtype::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
            Dtype::BF16 => out.extend_from_slice(&half::bf16::from_f64(v).to_le_bytes()),
            Dtype::F16 => out.extend_from_slice(&half::f16::from_f64(v).to_le_bytes()),
        }
    }

    fn decode(self, b: &[u8]) -> f64 {
        match self {
            Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            Dtype::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f64(),
            Dtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
        }
    }
}

impl std::str::FromStr for Dtype {
    type Err = MepError;
    fn from_str(s: &str) -> Result<Self> {
        Dtype::parse(&s.to_ascii_uppercase()).ok_or_else(|| MepError::invalid("dtype", s, "use f32, bf16 or f16"))
    }
}

use crate::ep::Energy;
use crate::nn::Arch;
use crate::{MepError, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Suffix of the temporary files a save writes next to its destination.
const TMP_SUFFIX: &str = ".mep-tmp";

/// Distinguishes concurrent saves of one process (with the pid and the clock, the
/// temporary name is unique per call).
static SAVE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The metadata entries a checkpoint records about its model.
fn model_metadata(arch: &Arch, energy: Energy) -> [(&'static str, String); 3] {
    [
        ("arch", arch.describe()),
        ("energy", energy_name(energy)),
        ("bias", bias_pattern(arch)),
    ]
}

/// `layered`, or `hopfield(free_steps=N)`: the energy with the parameter that
/// changes the model's function.
fn energy_name(energy: Energy) -> String {
    match energy {
        Energy::Hopfield { free_steps } => format!("hopfield(free_steps={free_steps})"),
        other => other.name().to_string(),
    }
}

/// One character per block: `b` with a bias, `-` without.
fn bias_pattern(arch: &Arch) -> String {
    arch.blocks().iter().map(|b| if b.bias { 'b' } else { '-' }).collect()
}

/// The temporary files of saves to `path`: `.{file name}.{pid}.{unique}.mep-tmp` in
/// the same directory (same file system, so the final rename is atomic).
fn tmp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.")
}

/// The directory a save to `path` writes in.
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether process `pid` is alive, where that can be known (Linux: `/proc`). `None`
/// elsewhere, where stale temporary files are left alone rather than guessed at.
fn process_alive(pid: u32) -> Option<bool> {
    if !Path::new("/proc/self").exists() {
        return None;
    }
    Some(Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes the temporary files that earlier, killed saves to `path` left behind
/// (their process no longer exists). Best effort: a failure here never fails a save.
pub fn remove_stale_temporaries(path: &Path) {
    let prefix = tmp_prefix(path);
    let Ok(entries) = std::fs::read_dir(parent_dir(path)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix).and_then(|r| r.strip_suffix(TMP_SUFFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && process_alive(pid) == Some(false) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// `path` as an error message shows it: quoted when it is empty.
fn shown(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        "\"\"".into()
    } else {
        path.display().to_string()
    }
}

/// The file a save to `path` writes: `path` itself, or, when `path` is a symbolic link
/// (or a chain of them), the file the link points to (which may not exist yet), so
/// that the save replaces the target's contents and keeps the link.
///
/// Errors: [`MepError::InvalidArgument`] (`save`) for an empty path, a path ending in
/// a separator (a directory's), a directory, or an existing file that is not a regular
/// file (a device, FIFO or socket: a save would replace it by a regular file);
/// [`MepError::Io`] when the path cannot be examined.
pub fn resolve_destination(path: &Path) -> Result<PathBuf> {
    let file_fix = "give a file path such as model.safetensors";
    if path.as_os_str().is_empty() {
        return Err(MepError::invalid(
            "save",
            shown(path),
            format!("the path is empty: {file_fix}"),
        ));
    }
    let text = path.as_os_str().to_string_lossy();
    if text.ends_with(std::path::is_separator)
        || path.file_name().is_none()
        || text == "."
        || text.ends_with("/.")
        || (std::path::MAIN_SEPARATOR != '/' && text.ends_with(&format!("{}.", std::path::MAIN_SEPARATOR)))
    {
        return Err(MepError::invalid(
            "save",
            shown(path),
            format!("names a directory, not a file: {file_fix} (without a trailing separator)"),
        ));
    }
    let mut dest = path.to_path_buf();
    for _ in 0..40 {
        let meta = match std::fs::symlink_metadata(&dest) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(dest),
            Err(e) => return Err(MepError::io(&dest, e)),
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target = std::fs::read_link(&dest).map_err(|e| MepError::io(&dest, e))?;
            dest = if target.is_absolute() {
                target
            } else {
                parent_dir(&dest).join(target)
            };
            continue;
        }
        if kind.is_file() {
            return Ok(dest);
        }
        let via = if dest == path {
            String::new()
        } else {
            format!(" (the link's target {})", dest.display())
        };
        if kind.is_dir() {
            return Err(MepError::invalid(
                "save",
                shown(path),
                format!("is a directory{via}: {file_fix}"),
            ));
        }
        return Err(MepError::invalid(
            "save",
            shown(path),
            format!(
                "exists{via} and is not a regular file (a device, FIFO or socket), which a save would replace: \
                 give the path of a regular file"
            ),
        ));
    }
    Err(MepError::invalid(
        "save",
        shown(path),
        "too many levels of symbolic links (a loop?): give the path of a regular file",
    ))
}

/// Checks, before any work is done, that a save to `path` can succeed: the path is not
/// empty and does not end in a separator, it (or the target of the symbolic link it
/// is) is a regular file or does not exist yet, and its directory exists and accepts a
/// new file. `mep-mnist --save` calls it before training so that a bad destination does
/// not lose a trained model.
///
/// Errors: as [`resolve_destination`]; [`MepError::Io`] naming the directory when no
/// file can be created in it.
pub fn check_writable(path: &Path) -> Result<()> {
    let dest = resolve_destination(path)?;
    let (tmp, file) = create_temporary(&dest)?;
    drop(file);
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

/// Creates a fresh temporary file next to `path`, exclusively (never reusing or
/// truncating an existing file, so two saves can never share one).
fn create_temporary(path: &Path) -> Result<(PathBuf, std::fs::File)> {
    let dir = parent_dir(path);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    loop {
        let n = SAVE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(
            "{}{}.{n}-{nanos}{TMP_SUFFIX}",
            tmp_prefix(path),
            std::process::id()
        ));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            // Another save took this name (only possible across processes sharing
            // a pid namespace quirk); the counter gives the next one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(MepError::io(
                    &dir,
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot create a file in this directory for {}: {e}", path.display()),
                    ),
                ))
            }
        }
    }
}

/// Writes `values` (per block: weights, bias) to `path` as `dtype`, atomically: a
/// uniquely named temporary file in the same directory is written, synced and renamed
/// over `path`, so `path` holds either its old contents or the complete new ones.
/// Temporary files of earlier saves whose process died are removed. When `path` is a
/// symbolic link, its target is written (the link stays).
///
/// Errors: [`MepError::InvalidArgument`] (`save`) for a destination that cannot be a
/// file (see [`resolve_destination`]: empty, a directory, a device…);
/// [`MepError::NonFinite`] if a parameter is NaN or infinite (such a file could
/// not be loaded back); F16 cannot hold values beyond ±65504: those are an error, not
/// silently infinite; [`MepError::Shape`] if `values` does not fit `arch`.
pub fn save(path: &Path, arch: &Arch, energy: Energy, values: &[(Vec<f64>, Vec<f64>)], dtype: Dtype) -> Result<()> {
    save_with(path, arch, energy, values, dtype, &[], &[])
}

/// A named tensor of a checkpoint beyond the model's weights (e.g. the optimizer's
/// state, see [`crate::checkpoint`]): row-major values of `shape`.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// The tensor's name in the file (never starting with `layers.`).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, row-major (`shape`'s product of them).
    pub values: Vec<f64>,
}

/// [`save`] with extra `__metadata__` entries `extra_meta` and extra tensors `extra`, which
/// are always stored as F32 (an f32 model's optimizer state round-trips exactly).
///
/// Errors: as [`save`]; [`MepError::Shape`] for an extra tensor whose values do not
/// fill its shape or whose name starts with `layers.`; [`MepError::NonFinite`] for a
/// NaN or infinite extra value.
pub fn save_with(
    path: &Path,
    arch: &Arch,
    energy: Energy,
    values: &[(Vec<f64>, Vec<f64>)],
    dtype: Dtype,
    extra_meta: &[(String, String)],
    extra: &[NamedTensor],
) -> Result<()> {
    let dest = resolve_destination(path)?;
    for t in extra {
        if t.name.starts_with("layers.") || t.shape.iter().product::<usize>() != t.values.len() {
            return Err(MepError::Shape(format!(
                "extra tensor `{}` of shape {:?} with {} values",
                t.name,
                t.shape,
                t.values.len()
            )));
        }
        if let Some(v) = t.values.iter().find(|v| !v.is_finite()) {
            return Err(MepError::NonFinite(format!(
                "the optimizer state `{}` holds {v}: a checkpoint must hold finite values",
                t.name
            )));
        }
    }
    if values.len() != arch.depth() {
        return Err(MepError::Shape(format!(
            "{} parameter blocks for a network of {} blocks",
            values.len(),
            arch.depth()
        )));
    }
    for (l, ((w, b), blk)) in values.iter().zip(arch.blocks()).enumerate() {
        if Some(w.len()) != blk.out.checked_mul(blk.inp) || b.len() != blk.out {
            return Err(MepError::Shape(format!(
                "block {}: weights {}×{} and bias {} expected, {} and {} values given",
                l + 1,
                blk.out,
                blk.inp,
                blk.out,
                w.len(),
                b.len()
            )));
        }
        if let Some(v) = w.iter().chain(b).find(|v| !v.is_finite()) {
            return Err(MepError::NonFinite(format!(
                "block {} has a parameter {v}: a checkpoint must hold finite values (the model diverged; reload the last good checkpoint)",
                l + 1
            )));
        }
    }
    if dtype == Dtype::F16 {
        if let Some(v) = values
            .iter()
            .flat_map(|(w, b)| w.iter().chain(b))
            .find(|v| v.abs() > 65504.0)
        {
            return Err(MepError::invalid(
                "dtype",
                "f16",
                format!("a parameter is {v}, beyond f16's ±65504: save as f32 or bf16"),
            ));
        }
    }
    let mut header = serde_json::Map::new();
    let mut meta = serde_json::Map::new();
    for (k, v) in model_metadata(arch, energy) {
        meta.insert(k.into(), v.into());
    }
    meta.insert("format".into(), "mep".into());
    for (k, v) in extra_meta {
        meta.insert(k.clone(), v.clone().into());
    }
    header.insert("__metadata__".into(), meta.into());
    let total: usize = values.iter().map(|(w, b)| w.len() + b.len()).sum::<usize>()
        + extra.iter().map(|t| t.values.len() * 2).sum::<usize>();
    let mut data: Vec<u8> = Vec::new();
    data.try_reserve_exact(total.saturating_mul(dtype.size()))
        .map_err(|_| MepError::OutOfMemory {
            what: format!("the checkpoint buffer for {total} parameters"),
            bytes: total as u128 * dtype.size() as u128,
            fix: "free memory, or save as bf16/f16 (half the size)".into(),
        })?;
    for t in extra {
        let start = data.len();
        for &v in &t.values {
            Dtype::F32.encode(v, &mut data);
        }
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.shape, "data_offsets": [start, data.len()]}),
        );
    }
    for (l, ((w, b), blk)) in values.iter().zip(arch.blocks()).enumerate() {
        for (name, shape, vals) in [("weight", vec![blk.out, blk.inp], w), ("bias", vec![blk.out], b)] {
            let start = data.len();
            for &v in vals {
                dtype.encode(v, &mut data);
            }
            header.insert(
                format!("layers.{l}.{name}"),
                serde_json::json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).map_err(|e| MepError::ModelFile {
        path: path.into(),
        reason: e.to_string(),
    })?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    remove_stale_temporaries(&dest);
    let (tmp, mut f) = create_temporary(&dest)?;
    let mut write = || -> std::io::Result<()> {
        f.write_all(&(h.len() as u64).to_le_bytes())?;
        f.write_all(&h)?;
        f.write_all(&data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &dest)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        MepError::io(&dest, e)
    })
}

/// Reads weights for a model of architecture `arch` and energy `energy` from `path`.
///
/// The file is parsed by the `safetensors` crate (header, shapes, offsets: contiguous,
/// non-overlapping, covering the data exactly, no trailing bytes). A checkpoint written
/// by `mep` records its model's architecture (widths and activations), biases and
/// energy; one that differs from `arch`/`energy` is refused, naming the difference.
/// Then every tensor's presence, dtype and shape is checked, and every value must be
/// finite. Every error is a [`MepError::ModelFile`] (or [`MepError::Io`]) naming `path`.
pub fn load(path: &Path, arch: &Arch, energy: Energy) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
    Ok(load_with(path, arch, energy)?.values)
}

/// Everything a checkpoint holds: see [`load_with`].
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// Per block: weights (`out × in`, row-major) and bias, as [`load`] returns them.
    pub values: Vec<(Vec<f64>, Vec<f64>)>,
    /// The `__metadata__` entries (empty for files not written by `mep`).
    pub metadata: std::collections::BTreeMap<String, String>,
    /// The tensors other than `layers.*` (the optimizer's state), in name order.
    pub extra: Vec<NamedTensor>,
}

/// The `__metadata__` entries of the safetensors file at `path` (empty when it has
/// none), without checking them against a model.
///
/// Errors: [`MepError::Io`] if the file cannot be read, [`MepError::ModelFile`] if it
/// is not a safetensors file.
pub fn read_metadata(path: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    let bytes = std::fs::read(path).map_err(|e| MepError::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| MepError::ModelFile {
        path: path.into(),
        reason: format!("not a valid safetensors file: {e:?}"),
    })?;
    Ok(meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default())
}

/// [`load`], also returning the file's metadata and its tensors beyond the model's
/// weights (checked as the weights are: dtype F32, BF16 or F16).
pub fn load_with(path: &Path, arch: &Arch, energy: Energy) -> Result<Loaded> {
    let bytes = std::fs::read(path).map_err(|e| MepError::io(path, e))?;
    let bad = |reason: String| MepError::ModelFile {
        path: path.into(),
        reason,
    };
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a valid safetensors file: {e:?}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a valid safetensors file: {e:?}")))?;
    if let Some(meta) = meta.metadata() {
        let format = meta.get("format").map(String::as_str);
        if format != Some("mep") && meta.contains_key("arch") {
            return Err(bad(format!(
                "metadata `format` is {}, but the file records an `arch` as mep's checkpoints do: a damaged or \
                 altered checkpoint (mep writes `format` = `mep`); save the model again",
                format.map_or("missing".to_string(), |f| format!("`{f}`"))
            )));
        }
        if format == Some("mep") {
            for (key, ours) in model_metadata(arch, energy) {
                // Older mep checkpoints lack `bias` and name the energy without its
                // parameters: compare what is there.
                let Some(theirs) = meta.get(key) else { continue };
                let same = match key {
                    "energy" => {
                        *theirs == ours || (!theirs.contains('(') && ours.split('(').next() == Some(theirs.as_str()))
                    }
                    _ => *theirs == ours,
                };
                if !same {
                    return Err(bad(format!(
                        "the checkpoint's {key} is `{theirs}` but the model's is `{ours}`: build the model as it was saved"
                    )));
                }
            }
        }
    }
    let tensor = |name: &str, shape: &[usize]| -> Result<Vec<f64>> {
        let t = st.tensor(name).map_err(|_| {
            bad(format!(
                "tensor `{name}` is missing (is this a model of shape {}?)",
                arch.describe()
            ))
        })?;
        let dtype = match t.dtype() {
            safetensors::Dtype::F32 => Dtype::F32,
            safetensors::Dtype::BF16 => Dtype::BF16,
            safetensors::Dtype::F16 => Dtype::F16,
            other => {
                return Err(bad(format!(
                    "tensor `{name}` has dtype {other:?}, expected F32, BF16 or F16"
                )))
            }
        };
        if t.shape() != shape {
            return Err(bad(format!(
                "tensor `{name}` has shape {:?}, the model needs {shape:?}",
                t.shape()
            )));
        }
        let values: Vec<f64> = t.data().chunks_exact(dtype.size()).map(|c| dtype.decode(c)).collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!(
                "tensor `{name}` holds {} at index {i}: a checkpoint must hold finite values (the run that saved \
                 it diverged, or the file is damaged); load an earlier checkpoint",
                values[i]
            )));
        }
        Ok(values)
    };
    let expected = 2 * arch.depth();
    let names = st.names();
    let layers = names.iter().filter(|n| n.starts_with("layers.")).count();
    if layers != expected {
        return Err(bad(format!(
            "{layers} weight tensors, but a {} model has {expected} (a weight and a bias per block)",
            arch.describe()
        )));
    }
    let values = arch
        .blocks()
        .iter()
        .enumerate()
        .map(|(l, blk)| {
            Ok((
                tensor(&format!("layers.{l}.weight"), &[blk.out, blk.inp])?,
                tensor(&format!("layers.{l}.bias"), &[blk.out])?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut extra_names: Vec<&String> = names.into_iter().filter(|n| !n.starts_with("layers.")).collect();
    extra_names.sort();
    let mut extra = Vec::with_capacity(extra_names.len());
    for name in extra_names {
        let shape = st
            .tensor(name)
            .map_err(|e| bad(format!("tensor `{name}`: {e:?}")))?
            .shape()
            .to_vec();
        extra.push(NamedTensor {
            name: name.clone(),
            values: tensor(name, &shape)?,
            shape,
        });
    }
    let metadata = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Ok(Loaded {
        values,
        metadata,
        extra,
    })
}
