//! Reader and writer for IDX files, the format MNIST ships in.
//!
//! An IDX file is a 4-byte big-endian magic number `0x0000TTNN` (`TT` the
//! element type, `0x08` for unsigned bytes; `NN` the number of dimensions),
//! followed by `NN` big-endian `u32` dimension sizes and then the elements in
//! row-major order. MNIST labels are `0x00000801` (one dimension), MNIST images
//! `0x00000803` (three dimensions). Only unsigned-byte files are supported.
//!
//! Files may be gzip-compressed; compression is detected from the gzip magic
//! bytes `1f 8b`, not from the file name.

use std::io::Read;
use std::path::Path;

use crate::error::{MepError, Result};

/// The IDX element-type code for unsigned bytes (`0x08`).
pub const TYPE_U8: u8 = 0x08;
/// Magic number of a one-dimensional unsigned-byte IDX file (MNIST labels).
pub const MAGIC_U8_1D: u32 = 0x0000_0801;
/// Magic number of a three-dimensional unsigned-byte IDX file (MNIST images).
pub const MAGIC_U8_3D: u32 = 0x0000_0803;
/// The two bytes every gzip stream starts with.
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The contents of an unsigned-byte IDX file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimension sizes, outermost first (e.g. `[60000, 28, 28]`).
    pub dims: Vec<usize>,
    /// The elements in row-major order; `data.len()` is the product of `dims`.
    pub data: Vec<u8>,
}

impl IdxArray {
    /// The magic number this array is written with (`0x000008NN`, `NN` = `dims.len()`).
    pub fn magic(&self) -> u32 {
        ((TYPE_U8 as u32) << 8) | self.dims.len() as u32
    }
}

/// Reads a whole file, transparently decompressing it when it starts with the
/// gzip magic bytes. A missing file is [`MepError::MissingData`] (with `fix`
/// as the remedy), other read failures [`MepError::Io`], and a broken gzip
/// stream [`MepError::CorruptData`].
pub fn read_maybe_gz_with_fix(path: &Path, fix: &str) -> Result<Vec<u8>> {
    let raw = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(MepError::MissingData {
                path: path.to_path_buf(),
                fix: fix.to_string(),
            })
        }
        Err(e) => return Err(MepError::io(path, e)),
    };
    if raw.len() >= 2 && raw[..2] == GZIP_MAGIC {
        gunzip_capped(&raw, path)
    } else {
        Ok(raw)
    }
}

/// Decompresses a gzip'd IDX file, reading no more than the size its IDX header
/// announces (plus one byte, to detect excess): a small file that inflates to
/// gigabytes is refused as corrupt instead of exhausting memory.
fn gunzip_capped(raw: &[u8], path: &Path) -> Result<Vec<u8>> {
    let corrupt = |reason: String| MepError::CorruptData {
        path: path.to_path_buf(),
        reason,
    };
    let gz_err = |e: std::io::Error| corrupt(format!("invalid gzip stream: {e}"));
    let mut dec = flate2::read::MultiGzDecoder::new(raw);
    let mut out = Vec::new();
    (&mut dec).take(4).read_to_end(&mut out).map_err(gz_err)?;
    // Not an unsigned-byte IDX header: keep the few bytes read; the parser names the
    // problem (wrong magic) without inflating anything more.
    if out.len() < 4 || out[0] != 0 || out[1] != 0 || out[2] != TYPE_U8 || out[3] == 0 {
        return Ok(out);
    }
    let ndim = out[3] as usize;
    (&mut dec).take(4 * ndim as u64).read_to_end(&mut out).map_err(gz_err)?;
    if out.len() < 4 + 4 * ndim {
        return Ok(out); // truncated header: reported by the parser
    }
    let announced = out[4..]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64)
        .try_fold(1u64, |acc, d| acc.checked_mul(d))
        .and_then(|n| n.checked_add(out.len() as u64))
        .ok_or_else(|| corrupt("the IDX header's dimensions overflow".into()))?;
    (&mut dec)
        .take(announced - out.len() as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::OutOfMemory {
                corrupt(format!("cannot hold the {announced} bytes the IDX header announces"))
            } else {
                gz_err(e)
            }
        })?;
    if out.len() as u64 > announced {
        return Err(corrupt(format!(
            "decompresses to more than the {announced} bytes its IDX header announces"
        )));
    }
    Ok(out)
}

/// [`read_maybe_gz_with_fix`] with a generic remedy for a missing file.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    read_maybe_gz_with_fix(path, "check the path; IDX files can be raw or gzip-compressed")
}

/// Reads an unsigned-byte IDX file (raw or gzip-compressed, detected by content).
///
/// Errors: [`MepError::MissingData`] if the file does not exist,
/// [`MepError::Io`] if it cannot be read, [`MepError::CorruptData`] if it is
/// not a well-formed unsigned-byte IDX file (see [`parse_idx`]).
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    parse_idx_owned(read_maybe_gz(path)?, path)
}

/// Validates an IDX header and returns `(dims, header_len)`, checking that the
/// buffer holds exactly the data the header announces.
fn parse_header(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, usize)> {
    let corrupt = |reason: String| MepError::CorruptData {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < 4 {
        return Err(corrupt(format!(
            "truncated header: expected at least 4 bytes for the magic number, found {}",
            bytes.len()
        )));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let ndim = bytes[3] as usize;
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != TYPE_U8 || ndim == 0 {
        return Err(corrupt(format!(
            "wrong magic number: expected 0x{MAGIC_U8_1D:08x} (labels), 0x{MAGIC_U8_3D:08x} (images) \
             or another unsigned-byte IDX magic 0x000008NN, found 0x{magic:08x}"
        )));
    }
    let header_len = 4 + 4 * ndim;
    if bytes.len() < header_len {
        return Err(corrupt(format!(
            "truncated header: expected {header_len} bytes for magic and {ndim} dimension(s), found {}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| corrupt(format!("dimensions {dims:?} overflow the address space")))?;
    let body = bytes.len() - header_len;
    if body < count {
        return Err(corrupt(format!(
            "truncated data: dimensions {dims:?} need {count} data bytes, found {body}"
        )));
    }
    if body > count {
        return Err(corrupt(format!(
            "{} trailing bytes after the {count} data bytes announced by dimensions {dims:?}",
            body - count
        )));
    }
    Ok((dims, header_len))
}

/// Parses an unsigned-byte IDX file already in memory (not compressed).
///
/// `path_for_errors` is only used in error messages. Every malformation is a
/// [`MepError::CorruptData`] whose reason names the problem: a wrong magic
/// number (expected vs found), a truncated header or data (expected vs found
/// byte counts), or trailing bytes after the data.
pub fn parse_idx(bytes: &[u8], path_for_errors: &Path) -> Result<IdxArray> {
    let (dims, header_len) = parse_header(bytes, path_for_errors)?;
    Ok(IdxArray {
        dims,
        data: bytes[header_len..].to_vec(),
    })
}

/// Like [`parse_idx`], but takes ownership of the buffer and reuses it for
/// the data, avoiding a copy of large files.
pub fn parse_idx_owned(mut bytes: Vec<u8>, path_for_errors: &Path) -> Result<IdxArray> {
    let (dims, header_len) = parse_header(&bytes, path_for_errors)?;
    bytes.drain(..header_len);
    Ok(IdxArray { dims, data: bytes })
}

/// Encodes `dims` and `data` as an unsigned-byte IDX file in memory.
///
/// Fails with [`MepError::InvalidArgument`] if `dims` is empty, has more than
/// 255 entries or a dimension over `u32::MAX`, or if `data.len()` is not the
/// product of `dims`.
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Result<Vec<u8>> {
    if dims.is_empty() || dims.len() > 255 {
        return Err(MepError::invalid(
            "dims",
            format!("{dims:?}"),
            "IDX files have 1 to 255 dimensions",
        ));
    }
    if let Some(&d) = dims.iter().find(|&&d| d > u32::MAX as usize) {
        return Err(MepError::invalid("dims", d, "each IDX dimension must fit in a u32"));
    }
    let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if count != Some(data.len()) {
        return Err(MepError::invalid(
            "data",
            format!("{} bytes", data.len()),
            format!("must hold exactly the product of dims {dims:?} bytes"),
        ));
    }
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + data.len());
    out.extend_from_slice(&[0, 0, TYPE_U8, dims.len() as u8]);
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    Ok(out)
}

/// Writes an uncompressed unsigned-byte IDX file (see [`encode_idx`] for the
/// argument checks). I/O failures are [`MepError::Io`].
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8]) -> Result<()> {
    let bytes = encode_idx(dims, data)?;
    std::fs::write(path, bytes).map_err(|e| MepError::io(path, e))
}

/// Writes a gzip-compressed unsigned-byte IDX file (see [`encode_idx`]).
pub fn write_idx_gz(path: &Path, dims: &[usize], data: &[u8]) -> Result<()> {
    use std::io::Write;
    let bytes = encode_idx(dims, data)?;
    let file = std::fs::File::create(path).map_err(|e| MepError::io(path, e))?;
    let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    enc.write_all(&bytes).map_err(|e| MepError::io(path, e))?;
    enc.finish().map_err(|e| MepError::io(path, e))?;
    Ok(())
}
