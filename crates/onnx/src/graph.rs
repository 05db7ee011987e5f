//! A small builder of ONNX graphs (onnx-ml.proto, IR version 10) whose initializers all live in one
//! external data file beside the model (onnx/docs/ExternalData.md). Weights are streamed to that file as
//! they are added, so memory holds one tensor at a time and models over 2 GB work (the protobuf itself
//! holds no raw weights). [`GraphBuilder::finish`] writes `<name>` and `<name>.data` atomically.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::{OnnxError, Result};
use crate::external_data::ExternalDataWriter;
use crate::proto::{
    attribute_proto::AttributeType, tensor_shape_proto::dimension, tensor_shape_proto::Dimension,
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::tensor::DataType;

/// IR version written (ONNX 1.16+; ONNX Runtime 1.17+ reads it).
pub const IR_VERSION: i64 = 10;

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A named symbolic size (`batch_size`, `sequence_length`, ...).
    Symbolic(String),
}

impl Dim {
    /// A symbolic dimension.
    pub fn sym(name: &str) -> Self {
        Dim::Symbolic(name.to_string())
    }
}

impl From<usize> for Dim {
    fn from(v: usize) -> Self {
        Dim::Fixed(v as i64)
    }
}

/// A `ValueInfoProto` of a tensor of `dtype` with `dims`.
pub fn value_info(name: &str, dtype: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(v) => dimension::Value::DimValue(*v),
                Dim::Symbolic(s) => dimension::Value::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(dtype.code()),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn attr(name: &str, kind: AttributeType) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(kind as i32),
        ..Default::default()
    }
}

/// An INT attribute.
pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        i: Some(v),
        ..attr(name, AttributeType::Int)
    }
}

/// A FLOAT attribute.
pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        f: Some(v),
        ..attr(name, AttributeType::Float)
    }
}

/// An INTS attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        ints: v.to_vec(),
        ..attr(name, AttributeType::Ints)
    }
}

/// A TENSOR attribute (small, inline: `Constant` values).
pub fn attr_tensor(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        t: Some(t),
        ..attr(name, AttributeType::Tensor)
    }
}

/// A GRAPH attribute (`If` branches).
pub fn attr_graph(name: &str, g: GraphProto) -> AttributeProto {
    AttributeProto {
        g: Some(g),
        ..attr(name, AttributeType::Graph)
    }
}

/// An inline (raw_data) tensor, for small constants.
pub fn inline_tensor(name: &str, dtype: DataType, dims: &[i64], bytes: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        data_type: Some(dtype.code()),
        dims: dims.to_vec(),
        raw_data: Some(bytes),
        ..Default::default()
    }
}

/// A node; `""` in `inputs`/`outputs` leaves an optional slot empty.
pub fn node(
    domain: &str,
    op_type: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: Some(name.to_string()),
        op_type: Some(op_type.to_string()),
        domain: (!domain.is_empty()).then(|| domain.to_string()),
        attribute: attrs,
        ..Default::default()
    }
}

/// Builds one model: graph inputs/outputs, nodes, and initializers streamed to external data.
#[derive(Debug)]
pub struct GraphBuilder {
    dir: PathBuf,
    file_name: String,
    data: ExternalDataWriter,
    graph: GraphProto,
    names: HashSet<String>,
}

impl GraphBuilder {
    /// Starts `dir/file_name`, its weights going to `dir/file_name.data`.
    pub fn create(dir: &Path, file_name: &str) -> Result<Self> {
        let data = ExternalDataWriter::create(dir, &format!("{file_name}.data"))?;
        Ok(GraphBuilder {
            dir: dir.to_path_buf(),
            file_name: file_name.to_string(),
            data,
            graph: GraphProto {
                name: Some("main_graph".into()),
                ..Default::default()
            },
            names: HashSet::new(),
        })
    }

    /// Adds a graph input.
    pub fn input(&mut self, name: &str, dtype: DataType, dims: &[Dim]) {
        self.graph.input.push(value_info(name, dtype, dims));
    }

    /// Adds a graph output.
    pub fn output(&mut self, name: &str, dtype: DataType, dims: &[Dim]) {
        self.graph.output.push(value_info(name, dtype, dims));
    }

    /// Writes an initializer's bytes (little-endian `dims` of `dtype`) to the data file; returns its name.
    pub fn initializer(
        &mut self,
        name: &str,
        dtype: DataType,
        dims: &[i64],
        bytes: &[u8],
    ) -> Result<String> {
        self.claim(name)?;
        let t = self.data.tensor(name, dtype, dims, bytes)?;
        self.graph.initializer.push(t);
        Ok(name.to_string())
    }

    /// Adds a node with explicit outputs (`""` leaves an optional one off).
    pub fn node_outputs(
        &mut self,
        domain: &str,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> Result<()> {
        self.claim(name)?;
        self.graph
            .node
            .push(node(domain, op_type, name, inputs, outputs, attrs));
        Ok(())
    }

    /// Adds a one-output node named `name`; returns its output, `<name>/output_0`.
    pub fn node(
        &mut self,
        domain: &str,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> Result<String> {
        let out = format!("{name}/output_0");
        self.node_outputs(domain, op_type, name, inputs, &[&out], attrs)?;
        Ok(out)
    }

    /// A `Constant` node holding an int64 tensor; returns its output.
    pub fn constant_i64(&mut self, name: &str, dims: &[i64], values: &[i64]) -> Result<String> {
        let t = inline_tensor("", DataType::Int64, dims, crate::tensor::i64_bytes(values));
        self.node("", "Constant", name, &[], vec![attr_tensor("value", t)])
    }

    fn claim(&mut self, name: &str) -> Result<()> {
        if !self.names.insert(name.to_string()) {
            return Err(OnnxError::Graph(format!(
                "duplicate node or initializer name {name}"
            )));
        }
        Ok(())
    }

    /// Writes the model with `opsets` (domain, version) and renames both files into place; returns
    /// the model's path.
    pub fn finish(self, opsets: &[(&str, i64)], producer: &str) -> Result<PathBuf> {
        let model = ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import: opsets
                .iter()
                .map(|(d, v)| OperatorSetIdProto {
                    domain: Some(d.to_string()),
                    version: Some(*v),
                })
                .collect(),
            producer_name: Some(producer.to_string()),
            producer_version: Some(env!("CARGO_PKG_VERSION").into()),
            graph: Some(self.graph),
            ..Default::default()
        };
        let path = self.dir.join(&self.file_name);
        let temp = self.dir.join(format!(".{}.tmp", self.file_name));
        if let Err(e) = std::fs::write(&temp, model.encode_to_vec()) {
            self.data.discard();
            return Err(OnnxError::io(&temp, e));
        }
        self.data.finish()?;
        std::fs::rename(&temp, &path).map_err(|e| OnnxError::io(&path, e))?;
        Ok(path)
    }

    /// Drops the temporary files of an unfinished model.
    pub fn discard(self) {
        self.data.discard();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::f32_bytes;

    #[test]
    fn writes_a_model_with_external_weights() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = GraphBuilder::create(dir.path(), "m.onnx").unwrap();
        g.input("x", DataType::Float, &[Dim::sym("batch"), Dim::from(2)]);
        let w = g
            .initializer(
                "w",
                DataType::Float,
                &[2, 2],
                &f32_bytes(&[1.0, 2.0, 3.0, 4.0]),
            )
            .unwrap();
        let y = g.node("", "MatMul", "/mm", &["x", &w], vec![]).unwrap();
        assert_eq!(y, "/mm/output_0");
        g.node_outputs("", "Identity", "/id", &[&y], &["y"], vec![])
            .unwrap();
        assert!(g.node("", "Identity", "/id", &["y"], vec![]).is_err());
        g.output("y", DataType::Float, &[Dim::sym("batch"), Dim::from(2)]);
        let path = g.finish(&[("", 21)], "test").unwrap();
        let model = ModelProto::decode(&*std::fs::read(&path).unwrap()).unwrap();
        let graph = model.graph.unwrap();
        assert_eq!(graph.initializer[0].raw_data, None);
        assert_eq!(
            graph.initializer[0].external_data[0].value.as_deref(),
            Some("m.onnx.data")
        );
        assert_eq!(
            std::fs::read(dir.path().join("m.onnx.data")).unwrap().len(),
            16
        );
        assert_eq!(graph.node.len(), 2);
        assert_eq!(model.ir_version, Some(IR_VERSION));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
