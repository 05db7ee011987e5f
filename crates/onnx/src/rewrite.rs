//! Reading an existing ONNX model for graph rewriting (onnx-ml.proto; external data per onnx/docs/ExternalData.md):
//! [`load`] decodes a model and pulls every external initializer into memory, [`Value`] is a constant tensor's
//! contents for folding and pattern checks, and [`save`] writes the rewritten model atomically, its large
//! initializers in one `<file>.data` beside it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::{OnnxError, Result};
use crate::external_data::{read_external, ExternalDataWriter};
use crate::proto::{tensor_proto::DataLocation, ModelProto, TensorProto};

/// Initializers of at least this many bytes go to the external data file on [`save`] (onnx's default threshold).
pub const EXTERNAL_THRESHOLD: usize = 1024;

/// A constant tensor's elements, row-major.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Elements {
    /// FLOAT (1).
    F32(Vec<f32>),
    /// INT32 (6).
    I32(Vec<i32>),
    /// INT64 (7).
    I64(Vec<i64>),
    /// BOOL (9).
    Bool(Vec<bool>),
}

/// A constant tensor: dims and elements.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// The shape (`[]` for a scalar).
    pub dims: Vec<i64>,
    /// The elements, as many as the dims' product.
    pub elements: Elements,
}

impl Value {
    /// A tensor of f32 elements.
    pub fn f32(dims: Vec<i64>, v: Vec<f32>) -> Self {
        Value {
            dims,
            elements: Elements::F32(v),
        }
    }

    /// A tensor of i64 elements.
    pub fn i64(dims: Vec<i64>, v: Vec<i64>) -> Self {
        Value {
            dims,
            elements: Elements::I64(v),
        }
    }

    /// The element count.
    pub fn len(&self) -> usize {
        match &self.elements {
            Elements::F32(v) => v.len(),
            Elements::I32(v) => v.len(),
            Elements::I64(v) => v.len(),
            Elements::Bool(v) => v.len(),
        }
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `TensorProto.DataType` number.
    pub fn data_type(&self) -> i32 {
        match &self.elements {
            Elements::F32(_) => 1,
            Elements::I32(_) => 6,
            Elements::I64(_) => 7,
            Elements::Bool(_) => 9,
        }
    }

    /// The elements as f64 (bools as 0/1), for comparisons and casts.
    pub fn as_f64(&self) -> Vec<f64> {
        match &self.elements {
            Elements::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Elements::I32(v) => v.iter().map(|&x| x as f64).collect(),
            Elements::I64(v) => v.iter().map(|&x| x as f64).collect(),
            Elements::Bool(v) => v.iter().map(|&x| x as u8 as f64).collect(),
        }
    }

    /// The elements as i64 when they are integers.
    pub fn as_i64(&self) -> Option<Vec<i64>> {
        match &self.elements {
            Elements::I32(v) => Some(v.iter().map(|&x| x as i64).collect()),
            Elements::I64(v) => Some(v.clone()),
            _ => None,
        }
    }

    /// The one element of a tensor with a single element, as f64.
    pub fn scalar(&self) -> Option<f64> {
        (self.len() == 1).then(|| self.as_f64()[0])
    }

    /// Little-endian bytes of the elements.
    pub fn bytes(&self) -> Vec<u8> {
        match &self.elements {
            Elements::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Elements::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Elements::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Elements::Bool(v) => v.iter().map(|&x| x as u8).collect(),
        }
    }

    /// A `TensorProto` named `name` holding this value in `raw_data`.
    pub fn to_tensor(&self, name: &str) -> TensorProto {
        TensorProto {
            name: Some(name.to_string()),
            data_type: Some(self.data_type()),
            dims: self.dims.clone(),
            raw_data: Some(self.bytes()),
            ..Default::default()
        }
    }

    /// The value of an in-memory tensor (after [`load`]); `None` for element types other than
    /// float/int32/int64/bool or malformed data.
    pub fn from_tensor(t: &TensorProto) -> Option<Value> {
        let count: i64 = t.dims.iter().product();
        let count = usize::try_from(count).ok()?;
        let elements = match (t.data_type?, &t.raw_data) {
            (1, Some(raw)) => Elements::F32(chunks(raw, f32::from_le_bytes)?),
            (6, Some(raw)) => Elements::I32(chunks(raw, i32::from_le_bytes)?),
            (7, Some(raw)) => Elements::I64(chunks(raw, i64::from_le_bytes)?),
            (9, Some(raw)) => Elements::Bool(raw.iter().map(|&b| b != 0).collect()),
            (1, None) => Elements::F32(t.float_data.clone()),
            (6, None) => Elements::I32(t.int32_data.clone()),
            (7, None) => Elements::I64(t.int64_data.clone()),
            (9, None) => Elements::Bool(t.int32_data.iter().map(|&b| b != 0).collect()),
            _ => return None,
        };
        let value = Value {
            dims: t.dims.clone(),
            elements,
        };
        (value.len() == count).then_some(value)
    }
}

fn chunks<const N: usize, T>(raw: &[u8], f: fn([u8; N]) -> T) -> Option<Vec<T>> {
    if !raw.len().is_multiple_of(N) {
        return None;
    }
    raw.chunks_exact(N)
        .map(|c| c.try_into().ok().map(f))
        .collect()
}

/// Reads `path` as an ONNX model and brings every externally stored initializer into `raw_data` (read from the
/// model's folder). A file that is not an ONNX model is an error naming it.
pub fn load(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).map_err(|e| OnnxError::io(path, e))?;
    let mut model = ModelProto::decode(bytes.as_slice()).map_err(|e| {
        OnnxError::Graph(format!(
            "{}: not an ONNX model (protobuf decoding failed: {e})",
            path.display()
        ))
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let graph = match model.graph.as_mut() {
        Some(g) if model.ir_version.is_some() && !(g.node.is_empty() && g.output.is_empty()) => g,
        _ => {
            return Err(OnnxError::Graph(format!(
                "{}: not an ONNX model (no ir_version or no graph with nodes and outputs)",
                path.display()
            )))
        }
    };
    for t in &mut graph.initializer {
        if t.data_location == Some(DataLocation::External as i32) {
            let bytes = read_external(t, dir)?;
            t.raw_data = Some(bytes);
            t.external_data.clear();
            t.data_location = None;
        }
    }
    Ok(model)
}

/// Writes `model` as `dir/file_name`, initializers of [`EXTERNAL_THRESHOLD`] bytes or more moved to
/// `dir/file_name.data` (no data file when there are none); both appear only when complete. Returns the
/// model's path.
pub fn save(mut model: ModelProto, dir: &Path, file_name: &str) -> Result<PathBuf> {
    let location = format!("{file_name}.data");
    let mut data = ExternalDataWriter::create(dir, &location)?;
    let mut external = 0usize;
    if let Some(graph) = model.graph.as_mut() {
        for t in &mut graph.initializer {
            let Some(raw) = t
                .raw_data
                .as_ref()
                .filter(|r| r.len() >= EXTERNAL_THRESHOLD)
            else {
                continue;
            };
            let (offset, length) = match data.append(raw) {
                Ok(v) => v,
                Err(e) => {
                    data.discard();
                    return Err(e);
                }
            };
            let name = t.name.clone().unwrap_or_default();
            let dtype = t.data_type.unwrap_or(0);
            *t = crate::external_data::external_tensor(
                &name, dtype, &t.dims, &location, offset, length,
            );
            external += 1;
        }
    }
    let path = dir.join(file_name);
    let temp = dir.join(format!(".{file_name}.tmp"));
    if let Err(e) = std::fs::write(&temp, model.encode_to_vec()) {
        data.discard();
        return Err(OnnxError::io(&temp, e));
    }
    if external > 0 {
        data.finish()?;
    } else {
        data.discard();
    }
    std::fs::rename(&temp, &path).map_err(|e| OnnxError::io(&path, e))?;
    Ok(path)
}

/// The names every node output and graph input/initializer already uses, for making fresh ones.
pub fn used_names(model: &ModelProto) -> HashSet<String> {
    let mut names = HashSet::new();
    if let Some(g) = &model.graph {
        names.extend(g.input.iter().filter_map(|i| i.name.clone()));
        names.extend(g.initializer.iter().filter_map(|t| t.name.clone()));
        for n in &g.node {
            names.extend(n.output.iter().cloned());
            names.extend(n.name.iter().cloned());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Dim, GraphBuilder};
    use crate::tensor::{f32_bytes, DataType};

    #[test]
    fn round_trips_a_model_with_external_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = GraphBuilder::create(dir.path(), "m.onnx").unwrap();
        g.input("x", DataType::Float, &[Dim::from(1), Dim::from(512)]);
        let big: Vec<f32> = (0..512).map(|i| i as f32).collect();
        g.initializer("w", DataType::Float, &[512], &f32_bytes(&big))
            .unwrap();
        g.initializer("s", DataType::Float, &[1], &f32_bytes(&[2.0]))
            .unwrap();
        let y = g.node("", "Add", "/add", &["x", "w"], vec![]).unwrap();
        g.node_outputs("", "Mul", "/mul", &[&y, "s"], &["y"], vec![])
            .unwrap();
        g.output("y", DataType::Float, &[Dim::from(1), Dim::from(512)]);
        let path = g.finish(&[("", 17)], "test").unwrap();
        let model = load(&path).unwrap();
        let graph = model.graph.as_ref().unwrap();
        let w = Value::from_tensor(&graph.initializer[0]).unwrap();
        assert_eq!(w, Value::f32(vec![512], big));
        let out = tempfile::tempdir().unwrap();
        let saved = save(model, out.path(), "o.onnx").unwrap();
        let again = load(&saved).unwrap();
        let graph = again.graph.unwrap();
        assert_eq!(
            Value::from_tensor(&graph.initializer[1]).unwrap().scalar(),
            Some(2.0)
        );
        assert_eq!(
            std::fs::metadata(out.path().join("o.onnx.data"))
                .unwrap()
                .len(),
            2048,
            "the big initializer is external, the small one inline"
        );
        let junk = out.path().join("junk.onnx");
        std::fs::write(&junk, b"this is not a model").unwrap();
        let err = load(&junk).unwrap_err().to_string();
        assert!(err.contains("not an ONNX model"), "{err}");
    }
}
