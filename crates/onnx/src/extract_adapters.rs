//! LoRA in ONNX graphs: the branch onnxruntime-genai's builder emits for an adapted linear (`make_matmul_lora`), and
//! Olive's ExtractAdapters pass (olive/passes/onnx/extract_adapters.py with make_inputs, dynamic_lora_r and
//! optional_inputs on): LoRA weights become optional graph inputs with a symbolic `lora_r` dimension and an empty
//! default, and their values go to an `.onnx_adapter` file.
//!
//! Names and layouts, for a linear whose genai node path is `/model/layers.0/attn/q_proj`:
//! ```text
//! x ──MatMul /model/layers.0/attn/q_proj/MatMul (base weight)──────────────┐
//!   └─MatMul .../q_proj/lora_A/MatMul (model.layers.0.attn.q_proj.lora_A.weight [in, r])
//!       └─MatMul .../q_proj/lora_B/MatMul (model.layers.0.attn.q_proj.lora_B.weight [r, out], scale folded in)
//!                                   └── Add .../q_proj/lora/Add ◄──────────┘
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use prost::Message;

use crate::adapter_format::{Adapter, AdapterFormatError, Parameter};
use crate::error::{OnnxError, Result};
use crate::external_data::read_external;
use crate::graph::{value_info, Dim, GraphBuilder};
use crate::proto::{tensor_proto::DataLocation, ModelProto, TensorProto};
use crate::tensor::{float_bytes, transpose, DataType};

/// The symbolic dimension of LoRA inputs (Olive's `dynamic_lora_r`).
pub const LORA_R: &str = "lora_r";

/// Which LoRA matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraSide {
    /// `[in, r]`: its rank is dimension 1.
    A,
    /// `[r, out]`: its rank is dimension 0.
    B,
}

impl LoraSide {
    fn label(self) -> &'static str {
        match self {
            LoraSide::A => "lora_A",
            LoraSide::B => "lora_B",
        }
    }

    /// Index of the rank dimension.
    fn rank_dim(self) -> usize {
        match self {
            LoraSide::A => 1,
            LoraSide::B => 0,
        }
    }
}

/// The weight (initializer / input / adapter parameter) name of one LoRA matrix of a linear whose genai node path is
/// `path` (`/model/layers.0/attn/q_proj` -> `model.layers.0.attn.q_proj.lora_A.weight`).
pub fn weight_name(path: &str, side: LoraSide) -> String {
    format!(
        "{}.{}.weight",
        path.trim_start_matches('/').replace('/', "."),
        side.label()
    )
}

/// The LoRA weights of one linear, as PEFT stores them.
#[derive(Debug, Clone, Copy)]
pub struct LoraBranch<'a> {
    /// genai node path of the linear (`/model/layers.0/attn/q_proj`).
    pub path: &'a str,
    pub in_features: usize,
    pub out_features: usize,
    pub rank: usize,
    /// lora_A: [rank, in_features].
    pub a: &'a [f32],
    /// lora_B: [out_features, rank].
    pub b: &'a [f32],
    /// alpha / rank (or alpha / sqrt(rank)).
    pub scale: f32,
}

impl LoraBranch<'_> {
    /// The two adapter parameters in the graph's layout: lora_A^T [in, r] and scale · lora_B^T [r, out], in `dtype`
    /// (Float or Float16, the model's activation type).
    pub fn parameters(&self, dtype: DataType) -> Result<[Parameter; 2]> {
        let (r, i, o) = (self.rank, self.in_features, self.out_features);
        if self.a.len() != r * i || self.b.len() != o * r {
            return Err(OnnxError::Shape(format!(
                "LoRA of {}: lora_A has {} values and lora_B {}, expected [{r}, {i}] and [{o}, {r}]",
                self.path,
                self.a.len(),
                self.b.len()
            )));
        }
        let a_t = transpose(self.a, r, i);
        let mut b_t = transpose(self.b, o, r);
        b_t.iter_mut().for_each(|v| *v *= self.scale);
        let bytes = |values: &[f32]| {
            float_bytes(values, dtype).ok_or_else(|| {
                OnnxError::Shape(format!(
                    "LoRA weights must be Float or Float16, not {dtype:?}"
                ))
            })
        };
        Ok([
            Parameter {
                name: weight_name(self.path, LoraSide::A),
                dims: vec![i as i64, r as i64],
                data_type: dtype.code(),
                raw_data: bytes(&a_t)?,
            },
            Parameter {
                name: weight_name(self.path, LoraSide::B),
                dims: vec![r as i64, o as i64],
                data_type: dtype.code(),
                raw_data: bytes(&b_t)?,
            },
        ])
    }
}

/// Emits the LoRA branch of a linear beside its base MatMul (output `base_out`): `x · A`, `· B`, then
/// `Add(base_out, ·)`. Returns the Add's output, which replaces `base_out` downstream.
pub fn emit_lora(
    g: &mut GraphBuilder,
    branch: &LoraBranch,
    dtype: DataType,
    x: &str,
    base_out: &str,
) -> Result<String> {
    let [a, b] = branch.parameters(dtype)?;
    let path = branch.path;
    let a_name = g.initializer(&a.name, dtype, &a.dims, &a.raw_data)?;
    let b_name = g.initializer(&b.name, dtype, &b.dims, &b.raw_data)?;
    let xa = g.node(
        "",
        "MatMul",
        &format!("{path}/lora_A/MatMul"),
        &[x, &a_name],
        vec![],
    )?;
    let xab = g.node(
        "",
        "MatMul",
        &format!("{path}/lora_B/MatMul"),
        &[&xa, &b_name],
        vec![],
    )?;
    g.node(
        "",
        "Add",
        &format!("{path}/lora/Add"),
        &[base_out, &xab],
        vec![],
    )
}

/// The weight name Olive gives the second input of a LoRA MatMul node, from the node's name
/// (`/model/layers.0/attn/q_proj/lora_A/MatMul` -> `model.layers.0.attn.q_proj.lora_A.weight`).
fn lora_node_weight(node_name: &str) -> Option<(String, LoraSide)> {
    let parts: Vec<&str> = node_name.trim_start_matches('/').split('/').collect();
    let [prefix @ .., marker, "MatMul"] = parts.as_slice() else {
        return None;
    };
    let side = match *marker {
        "lora_A" => LoraSide::A,
        "lora_B" => LoraSide::B,
        _ => return None,
    };
    if prefix.is_empty() {
        return None;
    }
    Some((weight_name(&prefix.join("/"), side), side))
}

/// Olive's ExtractAdapters on a model: every initializer that is the weight of a LoRA MatMul (found by node name as
/// Olive finds them) is renamed to its adapter name, becomes a graph input (listed once) with its rank dimension
/// `lora_r`, and keeps an empty initializer of the same name ([in, 0] / [0, out]) as the default, so that with no
/// adapter active the LoRA branch adds zero. Returns the weights, in graph order, for the `.onnx_adapter` file.
/// Initializers in external data are read from `model_dir`.
pub fn extract_adapters(model: &mut ModelProto, model_dir: &Path) -> Result<Vec<Parameter>> {
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| OnnxError::Graph("the model has no graph".into()))?;
    let initializers: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.name.clone().map(|n| (n, i)))
        .collect();
    // initializer name -> (adapter name, side), in graph order
    let mut found: BTreeMap<usize, (String, String, LoraSide)> = BTreeMap::new();
    for node in &graph.node {
        if node.op_type.as_deref() != Some("MatMul") {
            continue;
        }
        let Some((new_name, side)) = node.name.as_deref().and_then(lora_node_weight) else {
            continue;
        };
        let Some(weight) = node.input.get(1) else {
            continue;
        };
        let Some(&index) = initializers.get(weight) else {
            continue;
        };
        if graph.input.iter().any(|i| i.name.as_ref() == Some(weight)) {
            continue; // already an input: nothing to do (as Olive)
        }
        if let Some((_, earlier, _)) = found.get(&index) {
            if *earlier != new_name {
                return Err(OnnxError::Graph(format!(
                    "initializer {weight} feeds two LoRA nodes that name it {earlier} and {new_name}"
                )));
            }
        }
        found.insert(index, (weight.clone(), new_name, side));
    }
    let mut params = Vec::with_capacity(found.len());
    let mut renames: HashMap<String, String> = HashMap::new();
    for (&index, (old, new, side)) in &found {
        if old != new && initializers.contains_key(new) {
            return Err(OnnxError::Graph(format!(
                "LoRA weight {old} would be renamed {new}, but an initializer of that name exists"
            )));
        }
        let tensor = &mut graph.initializer[index];
        let dims = tensor.dims.clone();
        if dims.len() != 2 {
            return Err(OnnxError::Shape(format!(
                "LoRA weight {old}: dims {dims:?}, expected 2 dimensions"
            )));
        }
        let data_type = tensor.data_type.unwrap_or(0);
        let raw_data = tensor_bytes(tensor, model_dir)?;
        params.push(Parameter {
            name: new.clone(),
            dims: dims.clone(),
            data_type,
            raw_data,
        });
        let mut empty = dims.clone();
        empty[side.rank_dim()] = 0;
        *tensor = TensorProto {
            name: Some(new.clone()),
            data_type: Some(data_type),
            dims: empty,
            raw_data: Some(Vec::new()),
            ..Default::default()
        };
        let input_dims: Vec<Dim> = dims
            .iter()
            .enumerate()
            .map(|(d, &v)| {
                if d == side.rank_dim() {
                    Dim::sym(LORA_R)
                } else {
                    Dim::Fixed(v)
                }
            })
            .collect();
        if !graph.input.iter().any(|i| i.name.as_deref() == Some(new)) {
            // value_info takes the types olive-rs writes; the weight keeps whatever element type it had.
            let mut input = value_info(new, DataType::Float, &input_dims);
            if let Some(crate::proto::type_proto::Value::TensorType(t)) =
                input.r#type.as_mut().and_then(|t| t.value.as_mut())
            {
                t.elem_type = Some(data_type);
            }
            graph.input.push(input);
        }
        if old != new {
            renames.insert(old.clone(), new.clone());
        }
    }
    for node in &mut graph.node {
        for input in &mut node.input {
            if let Some(new) = renames.get(input) {
                *input = new.clone();
            }
        }
    }
    Ok(params)
}

/// The adapter file ExtractAdapters writes beside the model (Olive's name).
pub const ADAPTER_FILE: &str = "adapter_weights.onnx_adapter";

/// ExtractAdapters from one model folder to another: `out_dir` gets a copy of every file of `src_dir`, `model_file` rewritten with the LoRA inputs, and [`ADAPTER_FILE`]. Returns the number of
/// adapter parameters; 0 when the model has no LoRA weights (then `out_dir` is a plain copy, as Olive returns the
/// model unchanged).
pub fn extract_adapters_folder(src_dir: &Path, model_file: &str, out_dir: &Path) -> Result<usize> {
    let src_model = src_dir.join(model_file);
    let bytes = std::fs::read(&src_model).map_err(|e| OnnxError::io(&src_model, e))?;
    let mut model = ModelProto::decode(bytes.as_slice()).map_err(|e| {
        OnnxError::Graph(format!("{}: not an ONNX model: {e}", src_model.display()))
    })?;
    let parameters = extract_adapters(&mut model, src_dir)?;
    std::fs::create_dir_all(out_dir).map_err(|e| OnnxError::io(out_dir, e))?;
    let same = |a: &Path, b: &Path| {
        a.canonicalize()
            .ok()
            .is_some_and(|a| b.canonicalize().is_ok_and(|b| a == b))
    };
    if same(src_dir, out_dir) {
        return Err(OnnxError::Graph(format!(
            "{}: ExtractAdapters writes to another folder than its input",
            out_dir.display()
        )));
    }
    for entry in std::fs::read_dir(src_dir).map_err(|e| OnnxError::io(src_dir, e))? {
        let entry = entry.map_err(|e| OnnxError::io(src_dir, e))?;
        let name = entry.file_name();
        let (from, to) = (entry.path(), out_dir.join(&name));
        if name == model_file || name == ADAPTER_FILE || !from.is_file() {
            continue;
        }
        // A copy, not a hard link: onnx refuses external data files with several links ("hardlink attack").
        std::fs::copy(&from, &to).map_err(|e| OnnxError::io(&to, e))?;
    }
    if !parameters.is_empty() {
        let count = parameters.len();
        Adapter {
            parameters,
            ..Adapter::default()
        }
        .write(&out_dir.join(ADAPTER_FILE))
        .map_err(|e| match e {
            AdapterFormatError::Io { path, source } => OnnxError::Io { path, source },
            other => OnnxError::Graph(other.to_string()),
        })?;
        write_atomically(&out_dir.join(model_file), &model.encode_to_vec())?;
        return Ok(count);
    }
    write_atomically(&out_dir.join(model_file), &bytes)?;
    Ok(0)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&temp, bytes).map_err(|e| OnnxError::io(&temp, e))?;
    std::fs::rename(&temp, path).map_err(|e| OnnxError::io(path, e))
}

/// A tensor's little-endian bytes, from raw_data, the typed fields, or external data under `model_dir`.
fn tensor_bytes(t: &TensorProto, model_dir: &Path) -> Result<Vec<u8>> {
    let name = t.name.as_deref().unwrap_or("");
    if t.data_location == Some(DataLocation::External as i32) {
        return read_external(t, model_dir);
    }
    if let Some(raw) = &t.raw_data {
        return Ok(raw.clone());
    }
    match t.data_type {
        Some(1) => Ok(t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        // float16 / bfloat16 values sit in int32_data, one per element.
        Some(10) | Some(16) => Ok(t.int32_data.iter().flat_map(|&v| (v as u16).to_le_bytes()).collect()),
        other => Err(OnnxError::Graph(format!(
            "initializer {name}: data_type {other:?} without raw_data is not supported for LoRA weights"
        ))),
    }
}

#[cfg(test)]
mod tests;
