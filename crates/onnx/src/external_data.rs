//! ONNX external data (onnx/docs/ExternalData.md): tensor bytes in a side file, referenced from the
//! `TensorProto` by `location` / `offset` / `length` entries with `data_location = EXTERNAL`. Offsets are
//! aligned to 4096 bytes (the page size ONNX Runtime memory-maps with). The file is written under a
//! temporary name and renamed into place by [`ExternalDataWriter::finish`].

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{OnnxError, Result};
use crate::proto::{tensor_proto::DataLocation, StringStringEntryProto, TensorProto};
use crate::tensor::DataType;

/// Alignment of each tensor's offset in the data file.
pub const ALIGNMENT: u64 = 4096;

/// Appends tensors to one external data file.
#[derive(Debug)]
pub struct ExternalDataWriter {
    file: BufWriter<File>,
    temp: PathBuf,
    path: PathBuf,
    location: String,
    offset: u64,
}

impl ExternalDataWriter {
    /// Starts `dir/location` (written as `dir/.location.tmp` until [`finish`](Self::finish)).
    pub fn create(dir: &Path, location: &str) -> Result<Self> {
        let path = dir.join(location);
        let temp = dir.join(format!(".{location}.tmp"));
        let file = File::create(&temp).map_err(|e| OnnxError::io(&temp, e))?;
        Ok(ExternalDataWriter {
            file: BufWriter::with_capacity(1 << 20, file),
            temp,
            path,
            location: location.to_string(),
            offset: 0,
        })
    }

    /// The file name tensors refer to.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Writes `bytes` at the next aligned offset; returns (offset, length).
    pub fn append(&mut self, bytes: &[u8]) -> Result<(u64, u64)> {
        let aligned = self.offset.div_ceil(ALIGNMENT) * ALIGNMENT;
        let padding = (aligned - self.offset) as usize;
        if padding > 0 {
            self.file
                .write_all(&vec![0u8; padding])
                .map_err(|e| OnnxError::io(&self.temp, e))?;
        }
        self.file
            .write_all(bytes)
            .map_err(|e| OnnxError::io(&self.temp, e))?;
        self.offset = aligned + bytes.len() as u64;
        Ok((aligned, bytes.len() as u64))
    }

    /// A `TensorProto` named `name` whose `bytes` (little-endian, `dims` of `dtype`) live in this file.
    pub fn tensor(
        &mut self,
        name: &str,
        dtype: DataType,
        dims: &[i64],
        bytes: &[u8],
    ) -> Result<TensorProto> {
        let count: i64 = dims.iter().product();
        if dtype.byte_len(count as u128) != bytes.len() as u128 {
            return Err(OnnxError::Shape(format!(
                "tensor {name}: dims {dims:?} of {dtype:?} need {} bytes, got {}",
                dtype.byte_len(count as u128),
                bytes.len()
            )));
        }
        let (offset, length) = self.append(bytes)?;
        Ok(external_tensor(
            name,
            dtype.code(),
            dims,
            &self.location,
            offset,
            length,
        ))
    }

    /// Flushes, syncs and renames the file into place; returns its final path.
    pub fn finish(self) -> Result<PathBuf> {
        let file = self
            .file
            .into_inner()
            .map_err(|e| OnnxError::io(&self.temp, e.into_error()))?;
        file.sync_all().map_err(|e| OnnxError::io(&self.temp, e))?;
        drop(file);
        std::fs::rename(&self.temp, &self.path).map_err(|e| OnnxError::io(&self.path, e))?;
        Ok(self.path)
    }

    /// Removes the temporary file (on failure paths).
    pub fn discard(self) {
        let temp = self.temp.clone();
        drop(self.file);
        // Best effort: the temp file is hidden and named after the model.
        let _ = std::fs::remove_file(temp);
    }
}

/// A `TensorProto` that points at `length` bytes at `offset` of `location`.
pub fn external_tensor(
    name: &str,
    data_type: i32,
    dims: &[i64],
    location: &str,
    offset: u64,
    length: u64,
) -> TensorProto {
    let entry = |k: &str, v: String| StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    TensorProto {
        name: Some(name.into()),
        data_type: Some(data_type),
        dims: dims.to_vec(),
        external_data: vec![
            entry("location", location.into()),
            entry("offset", offset.to_string()),
            entry("length", length.to_string()),
        ],
        data_location: Some(DataLocation::External as i32),
        ..Default::default()
    }
}

/// The bytes of an initializer stored as external data: its `location` under `dir`, from `offset`, `length` bytes
/// (to the end of the file without one).
pub fn read_external(t: &TensorProto, dir: &Path) -> Result<Vec<u8>> {
    let name = t.name.as_deref().unwrap_or("");
    let entry = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key.as_deref() == Some(key))
            .and_then(|e| e.value.clone())
    };
    let location = entry("location").ok_or_else(|| {
        OnnxError::Graph(format!(
            "initializer {name}: external data without a location"
        ))
    })?;
    let number = |key: &str| -> Result<Option<u64>> {
        entry(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    OnnxError::Graph(format!(
                        "initializer {name}: external data {key} `{v}` is not a number"
                    ))
                })
            })
            .transpose()
    };
    let path = dir.join(&location);
    let mut file = std::fs::File::open(&path).map_err(|e| OnnxError::io(&path, e))?;
    file.seek(SeekFrom::Start(number("offset")?.unwrap_or(0)))
        .map_err(|e| OnnxError::io(&path, e))?;
    let mut bytes = Vec::new();
    match number("length")? {
        Some(len) => {
            bytes.resize(len as usize, 0);
            file.read_exact(&mut bytes)
                .map_err(|e| OnnxError::io(&path, e))?;
        }
        None => {
            file.read_to_end(&mut bytes)
                .map_err(|e| OnnxError::io(&path, e))?;
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_start_on_4k_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ExternalDataWriter::create(dir.path(), "m.onnx.data").unwrap();
        let a = w.tensor("a", DataType::Float, &[3], &[1u8; 12]).unwrap();
        let b = w.tensor("b", DataType::Int64, &[1], &[2u8; 8]).unwrap();
        assert!(w.tensor("c", DataType::Float, &[2], &[0u8; 4]).is_err());
        let path = w.finish().unwrap();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), 4096 + 8);
        assert_eq!(&data[4096..], &[2u8; 8]);
        let get = |t: &TensorProto, k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key.as_deref() == Some(k))
                .and_then(|e| e.value.clone())
                .unwrap()
        };
        assert_eq!(get(&a, "offset"), "0");
        assert_eq!(get(&b, "offset"), "4096");
        assert_eq!(get(&b, "length"), "8");
        assert_eq!(get(&b, "location"), "m.onnx.data");
        assert!(!dir.path().join(".m.onnx.data.tmp").exists());
    }
}
