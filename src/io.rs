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
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Writes `values` (per block: weights, bias) to `path` as `dtype`, atomically. F16
/// cannot hold values beyond ±65504: those are an error, not silently infinite.
pub fn save(path: &Path, arch: &Arch, energy: Energy, values: &[(Vec<f64>, Vec<f64>)], dtype: Dtype) -> Result<()> {
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
    meta.insert("arch".into(), arch.describe().into());
    meta.insert("energy".into(), energy.name().into());
    meta.insert("format".into(), "mep".into());
    header.insert("__metadata__".into(), meta.into());
    let mut data: Vec<u8> = Vec::new();
    for (l, ((w, b), blk)) in values.iter().zip(&arch.blocks).enumerate() {
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
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&(h.len() as u64).to_le_bytes())?;
        f.write_all(&h)?;
        f.write_all(&data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        MepError::io(path, e)
    })
}

/// Reads weights for `arch` from `path`; every tensor's presence, dtype and shape is checked.
pub fn load(path: &Path, arch: &Arch) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
    let bytes = std::fs::read(path).map_err(|e| MepError::io(path, e))?;
    let bad = |reason: String| MepError::ModelFile {
        path: path.into(),
        reason,
    };
    if bytes.len() < 8 {
        return Err(bad(format!(
            "{} bytes is too short for a safetensors file",
            bytes.len()
        )));
    }
    let hlen = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    if hlen > bytes.len() - 8 {
        return Err(bad(format!(
            "header length {hlen} exceeds the file size {}",
            bytes.len()
        )));
    }
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + hlen]).map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    let data = &bytes[8 + hlen..];
    let tensor = |name: &str, shape: &[usize]| -> Result<Vec<f64>> {
        let t = header.get(name).ok_or_else(|| {
            bad(format!(
                "tensor `{name}` is missing (is this a model of shape {}?)",
                arch.describe()
            ))
        })?;
        let dtype = t["dtype"].as_str().and_then(Dtype::parse).ok_or_else(|| {
            bad(format!(
                "tensor `{name}` has dtype {}, expected F32, BF16 or F16",
                t["dtype"]
            ))
        })?;
        let got: Vec<usize> = t["shape"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64().map(|v| v as usize)).collect())
            .unwrap_or_default();
        if got != shape {
            return Err(bad(format!(
                "tensor `{name}` has shape {got:?}, the model needs {shape:?}"
            )));
        }
        let off: Vec<usize> = t["data_offsets"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64().map(|v| v as usize)).collect())
            .unwrap_or_default();
        let n: usize = shape.iter().product();
        if off.len() != 2 || off[1] < off[0] || off[1] > data.len() || off[1] - off[0] != dtype.size() * n {
            return Err(bad(format!("tensor `{name}` has bad data offsets {off:?}")));
        }
        Ok(data[off[0]..off[1]]
            .chunks_exact(dtype.size())
            .map(|c| dtype.decode(c))
            .collect())
    };
    arch.blocks
        .iter()
        .enumerate()
        .map(|(l, blk)| {
            Ok((
                tensor(&format!("layers.{l}.weight"), &[blk.out, blk.inp])?,
                tensor(&format!("layers.{l}.bias"), &[blk.out])?,
            ))
        })
        .collect()
}
