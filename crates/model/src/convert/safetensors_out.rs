//! A streaming writer of F32 safetensors files (huggingface/safetensors format: `u64` header length,
//! JSON header padded with spaces to 8 bytes, then the tensors' bytes back to back, little-endian).
//!
//! The header is written first from the shapes, then each tensor is produced and written in turn,
//! so at most one tensor is in memory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::{ModelError, Result};

/// Writes `tensors` (name, row-major shape) to `path`, calling `produce(i)` for the data of tensor `i`.
/// The file is fsynced before returning.
pub(crate) fn write_f32(
    path: &Path,
    tensors: &[(String, Vec<usize>)],
    mut produce: impl FnMut(usize) -> Result<Vec<f32>>,
) -> Result<()> {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * 4;
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = Value::Object(header).to_string().into_bytes();
    header.resize(header.len().div_ceil(8) * 8, b' ');

    let io = |e| ModelError::io(path, e);
    let file = File::create(path).map_err(io)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&header).map_err(io)?;
    let mut buf = Vec::with_capacity(1 << 16);
    for (i, (name, shape)) in tensors.iter().enumerate() {
        let data = produce(i)?;
        let expected = shape.iter().product::<usize>();
        if data.len() != expected {
            return Err(ModelError::BadTensor {
                path: path.to_path_buf(),
                name: name.clone(),
                reason: format!("{} values produced for shape {shape:?}", data.len()),
            });
        }
        for chunk in data.chunks(1 << 14) {
            buf.clear();
            buf.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
            w.write_all(&buf).map_err(io)?;
        }
    }
    let file = w
        .into_inner()
        .map_err(|e| ModelError::io(path, e.into_error()))?;
    file.sync_all().map_err(io)
}
