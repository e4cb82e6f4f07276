//! Saving and loading weights in the safetensors format, written atomically.
//!
//! Layout: 8-byte little-endian header length, a JSON header mapping
//! `layers.{l}.weight` (`[out, in]`) and `layers.{l}.bias` (`[out]`) to F32 byte
//! ranges, then the little-endian data. `__metadata__` records the architecture.

use crate::ep::Energy;
use crate::nn::Arch;
use crate::{MepError, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Writes `values` (per block: weights, bias) to `path`, atomically.
pub fn save(path: &Path, arch: &Arch, energy: Energy, values: &[(Vec<f64>, Vec<f64>)]) -> Result<()> {
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
                data.extend_from_slice(&(v as f32).to_le_bytes());
            }
            header.insert(
                format!("layers.{l}.{name}"),
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
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
        if t["dtype"] != "F32" {
            return Err(bad(format!("tensor `{name}` has dtype {}, expected F32", t["dtype"])));
        }
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
        if off.len() != 2 || off[1] < off[0] || off[1] > data.len() || off[1] - off[0] != 4 * n {
            return Err(bad(format!("tensor `{name}` has bad data offsets {off:?}")));
        }
        Ok(data[off[0]..off[1]]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
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
