//! GGUF files (ggml's docs/gguf.md, versions 2 and 3): header, typed metadata, tensor infos, mmapped data.
//!
//! Layout, all little-endian:
//! `magic "GGUF" | version u32 | tensor_count u64 | kv_count u64 | kv* | tensor_info* | pad | data`,
//! where a string is `len u64 | bytes`, a kv is `key string | type u32 | value`, a tensor info is
//! `name string | n_dims u32 | dims u64[n_dims] | ggml_type u32 | offset u64` and the data section
//! starts at the next multiple of `general.alignment` (default 32). Every offset and size read from
//! the file is checked against its length, so a truncated or corrupt file is an error, not a panic.

mod dequant;
mod meta;
mod tokenizer;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{ModelError, Result};

pub use dequant::GgmlType;
pub use meta::{FromMeta, MetaValue};
pub use tokenizer::{build_tokenizer, TokenizerFiles};

/// `"GGUF"` read as a little-endian u32.
const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of each tensor's offset when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;
/// Arrays may nest; deeper nesting than this is taken as corruption.
const MAX_NESTING: u32 = 8;

/// One tensor's description (validated against the file at open); its bytes live in the mmapped
/// data section.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    /// Absolute byte range of the data within the file.
    start: usize,
    len: usize,
}

impl TensorInfo {
    /// llama.cpp's name, e.g. `blk.0.attn_q.weight`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dimensions in GGUF order: `dims[0]` (ne0) is the contiguous one, the reverse of a PyTorch shape.
    pub fn dims(&self) -> &[u64] {
        &self.dims
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Row-major (PyTorch) shape: the GGUF dims reversed, e.g. `[out_features, in_features]`.
    pub fn shape(&self) -> Vec<usize> {
        // Each dim was checked to fit in usize when the file was opened.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements (product of the dims).
    pub fn n_elements(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }

    /// Size of the tensor's data in the file, in bytes.
    pub fn n_bytes(&self) -> usize {
        self.len
    }
}

/// An open GGUF file: metadata parsed, tensor data mmapped.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and parses `path`; tensor data stays on disk (mmapped) until dequantized.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: the map is read-only; like every mmap reader we assume the file is not truncated
        // by another process while open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let parsed = Parser::new(path, &mmap).parse()?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap,
            version: parsed.version,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            alignment: parsed.alignment,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of the tensor data, from `general.alignment` (default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// A required metadata value of type `T`: a missing key or another type is a `Field` error.
    pub fn get<'a, T: FromMeta<'a>>(&'a self, key: &str) -> Result<T> {
        self.opt(key)?.ok_or_else(|| {
            ModelError::field(
                &self.path,
                key,
                format!("missing; expected {}", T::EXPECTED),
            )
        })
    }

    /// An optional metadata value of type `T`: `None` when absent, an error when of another type.
    pub fn opt<'a, T: FromMeta<'a>>(&'a self, key: &str) -> Result<Option<T>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(value) => T::from_meta(value).map(Some).ok_or_else(|| {
                ModelError::field(
                    &self.path,
                    key,
                    format!("expected {}, found {}", T::EXPECTED, value.type_name()),
                )
            }),
        }
    }

    /// `general.architecture`, e.g. `llama`.
    pub fn architecture(&self) -> Result<&str> {
        self.get("general.architecture")
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Raw bytes of a tensor of this file (bounds were checked at open).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<&[u8]> {
        self.mmap
            .get(info.start..info.start + info.len)
            .ok_or_else(|| {
                self.bad(format!(
                    "tensor `{}`: data range {}..{} lies outside the file",
                    info.name,
                    info.start,
                    info.start + info.len
                ))
            })
    }

    /// The tensor as f32 in row-major order (`info.shape()`).
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        self.check_dequantizable(info)?;
        let bytes = self.tensor_bytes(info)?;
        let mut out = vec![0f32; info.n_elements()];
        dequant::dequantize(info.ggml_type, bytes, &mut out)
            .map_err(|reason| self.bad(format!("tensor `{}`: {reason}", info.name)))?;
        Ok(out)
    }

    /// Fails, naming the tensor and its ggml type, when `info`'s type has no dequantizer here.
    pub fn check_dequantizable(&self, info: &TensorInfo) -> Result<()> {
        if info.ggml_type.can_dequantize() {
            return Ok(());
        }
        Err(self.bad(format!(
            "tensor `{}` has unsupported ggml type {} (id {}); supported: {}",
            info.name,
            info.ggml_type.name(),
            info.ggml_type.id(),
            GgmlType::supported_names()
        )))
    }

    fn bad(&self, reason: String) -> ModelError {
        ModelError::Gguf {
            path: self.path.clone(),
            reason,
        }
    }
}

struct Parsed {
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
}

/// A bounds-checked little-endian cursor over the file's bytes.
struct Parser<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(path: &'a Path, buf: &'a [u8]) -> Self {
        Parser { path, buf, pos: 0 }
    }

    fn err(&self, reason: impl Into<String>) -> ModelError {
        ModelError::Gguf {
            path: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let start = self.pos;
        let end = usize::try_from(n).ok().and_then(|n| start.checked_add(n));
        match end.and_then(|end| self.buf.get(start..end).map(|b| (b, end))) {
            Some((bytes, end)) => {
                self.pos = end;
                Ok(bytes)
            }
            None => Err(self.err(format!(
                "truncated: {what} at byte {start} needs {n} bytes, but the file has {} bytes",
                self.buf.len()
            ))),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let bytes = self.take(N as u64, what)?;
        bytes
            .try_into()
            .map_err(|_| self.err(format!("internal: short read of {what}")))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn parse(mut self) -> Result<Parsed> {
        let magic: [u8; 4] = self.array("magic")?;
        if magic != MAGIC {
            return Err(self.err(format!(
                "bad magic {:?} ({}), expected \"GGUF\" (47 47 55 46): not a GGUF file",
                String::from_utf8_lossy(&magic),
                magic
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )));
        }
        let version = self.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(self.err(format!(
                "unsupported GGUF version {version}, expected 2 or 3{}",
                if version == 1 {
                    " (version 1 files predate 64-bit counts; re-convert the model)"
                } else {
                    ""
                }
            )));
        }
        let n_tensors = self.u64("tensor count")?;
        let n_kv = self.u64("metadata count")?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = self.string(&format!("key of metadata entry {i}"))?;
            let ty = self.u32(&format!("type of metadata `{key}`"))?;
            let value = self.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(self.err(format!(
                        "general.alignment must be a power of two, found {v:?}"
                    )))
                }
            },
        };

        // Each tensor info takes at least 8 (name) + 4 + 4 + 8 bytes: cap the preallocation by that.
        let room = (self.buf.len() - self.pos) / 24;
        let mut infos =
            Vec::with_capacity(room.min(usize::try_from(n_tensors).unwrap_or(usize::MAX)));
        for i in 0..n_tensors {
            infos.push(self.tensor_info(i)?);
        }

        let data_start = align_up(self.pos as u64, alignment)
            .ok_or_else(|| self.err("data section offset overflows"))?;
        let file_len = self.buf.len() as u64;
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, dims, ggml_type, offset) in infos {
            if !offset.is_multiple_of(alignment) {
                return Err(self.err(format!(
                    "tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            let n_bytes = ggml_type.n_bytes(&dims).map_err(|reason| {
                self.err(format!(
                    "tensor `{name}` ({} {dims:?}): {reason}",
                    ggml_type.name()
                ))
            })?;
            let start = data_start.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(n_bytes));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_len => tensors.push(TensorInfo {
                    name,
                    dims,
                    ggml_type,
                    // Both fit in usize: they are at most the mmap's length.
                    start: start as usize,
                    len: n_bytes as usize,
                }),
                _ => {
                    return Err(self.err(format!(
                        "truncated: tensor `{name}` needs bytes {data_start}+{offset}..+{n_bytes}, \
                         but the file has {file_len} bytes"
                    )))
                }
            }
        }
        Ok(Parsed {
            version,
            metadata,
            tensors,
            alignment,
        })
    }

    fn tensor_info(&mut self, index: u64) -> Result<(String, Vec<u64>, GgmlType, u64)> {
        let name = self.string(&format!("name of tensor {index}"))?;
        let n_dims = self.u32(&format!("tensor `{name}` dimension count"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(self.err(format!(
                "tensor `{name}` has {n_dims} dimensions, expected 1 to {MAX_DIMS}"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = self.u64(&format!("tensor `{name}` dimensions"))?;
            if usize::try_from(d).is_err() {
                return Err(self.err(format!("tensor `{name}` dimension {d} is too large")));
            }
            dims.push(d);
        }
        let type_id = self.u32(&format!("tensor `{name}` type"))?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
            self.err(format!(
                "tensor `{name}` has unknown ggml type id {type_id}; supported: {}",
                GgmlType::supported_names()
            ))
        })?;
        let offset = self.u64(&format!("tensor `{name}` offset"))?;
        Ok((name, dims, ggml_type, offset))
    }

    /// One metadata value of GGUF type id `ty` (gguf.md `gguf_metadata_value_type`).
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<MetaValue> {
        let what = format!("value of metadata `{key}`");
        Ok(match ty {
            0 => MetaValue::U8(u8::from_le_bytes(self.array(&what)?)),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(&what)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match u8::from_le_bytes(self.array(&what)?) {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => {
                    return Err(
                        self.err(format!("metadata `{key}`: bool byte {b}, expected 0 or 1"))
                    )
                }
            },
            8 => MetaValue::Str(self.string(&what)?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(self.err(format!("metadata `{key}`: arrays nested too deeply")));
                }
                let elem_ty = self.u32(&what)?;
                let len = self.u64(&what)?;
                // Every element takes at least one byte: a longer array cannot fit in the file.
                let room = (self.buf.len() - self.pos) as u64;
                if len > room {
                    return Err(self.err(format!(
                        "truncated: metadata `{key}` claims {len} elements, only {room} bytes remain"
                    )));
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(u64::from_le_bytes(self.array(&what)?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(&what)?)),
            other => {
                return Err(self.err(format!(
                    "metadata `{key}` has unknown value type {other} (expected 0 to 12)"
                )))
            }
        })
    }
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    Some(x.checked_add(alignment - 1)? / alignment * alignment)
}

#[cfg(test)]
pub(crate) mod test_writer;
#[cfg(test)]
mod tests;
