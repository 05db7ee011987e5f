//! The inputs and outputs a package's manifest lists: an ONNX model's graph inputs (initializers left out) and
//! outputs with their element types and shapes (symbolic dimensions by name), read from the ONNX file (for an
//! onnxruntime-genai folder, the decoder genai_config.json names); a Hugging Face causal LM's forward inputs and
//! logits, with the vocabulary size and dtype from its config.json.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use olive_onnx::proto::tensor_proto::{DataLocation, DataType};
use olive_onnx::proto::tensor_shape_proto::dimension::Value as DimValue;
use olive_onnx::proto::{type_proto, ModelProto, ValueInfoProto};
use olive_pass_api::{kinds, Model};
use prost::Message;
use serde_json::{json, Value};

/// What the manifest and the sample need to know about the model.
pub struct Io {
    pub inputs: Vec<Value>,
    pub outputs: Vec<Value>,
    /// Where they were read: the ONNX file (relative to `model/`) or `config.json`.
    pub source: String,
    /// The ONNX file relative to `model/` (None for a Hugging Face model).
    pub onnx_file: Option<String>,
    /// Whether `model/` holds a genai_config.json.
    pub genai: bool,
}

/// The inputs and outputs of `model`.
pub fn inputs_outputs(model: &Model) -> anyhow::Result<Io> {
    if model.kind == kinds::ONNX {
        let (folder, file) = onnx_file(&model.path)?;
        let proto = read_proto(&folder.join(&file))?;
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| anyhow!("{}: no graph", folder.join(&file).display()))?;
        let initializers: std::collections::HashSet<&str> = graph
            .initializer
            .iter()
            .filter_map(|t| t.name.as_deref())
            .collect();
        let inputs = graph
            .input
            .iter()
            .filter(|i| !initializers.contains(i.name.as_deref().unwrap_or_default()))
            .map(value_info)
            .collect();
        let outputs = graph.output.iter().map(value_info).collect();
        return Ok(Io {
            inputs,
            outputs,
            source: file.clone(),
            onnx_file: Some(file),
            genai: model.path.is_dir() && model.path.join("genai_config.json").is_file(),
        });
    }
    let config_path = model.path.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let config: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", config_path.display()))?;
    let vocab = config
        .get("vocab_size")
        .or_else(|| config.pointer("/text_config/vocab_size"))
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("{}: vocab_size missing", config_path.display()))?;
    let dtype = config
        .get("torch_dtype")
        .or_else(|| config.get("dtype"))
        .and_then(Value::as_str)
        .unwrap_or("float32");
    let tokens = json!(["batch_size", "sequence_length"]);
    Ok(Io {
        inputs: vec![
            json!({"name": "input_ids", "dtype": "int64", "shape": tokens}),
            json!({"name": "attention_mask", "dtype": "int64", "shape": tokens}),
        ],
        outputs: vec![
            json!({"name": "logits", "dtype": dtype, "shape": ["batch_size", "sequence_length", vocab]}),
        ],
        source: "config.json".to_owned(),
        onnx_file: None,
        genai: false,
    })
}

/// The folder and the main ONNX file (relative to it) of an ONNX model: the file itself; in a folder, the decoder
/// genai_config.json names, else `model.onnx`, else the folder's only `.onnx` file.
fn onnx_file(path: &Path) -> anyhow::Result<(PathBuf, String)> {
    if !path.is_dir() {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("{}: expected an ONNX file", path.display()))?;
        let folder = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        return Ok((folder, name.to_owned()));
    }
    let genai = path.join("genai_config.json");
    if genai.is_file() {
        let text = std::fs::read_to_string(&genai)
            .with_context(|| format!("cannot read {}", genai.display()))?;
        let config: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", genai.display()))?;
        let Some(file) = config
            .pointer("/model/decoder/filename")
            .and_then(Value::as_str)
        else {
            bail!("{}: model.decoder.filename missing", genai.display());
        };
        return Ok((path.to_path_buf(), file.to_owned()));
    }
    if path.join("model.onnx").is_file() {
        return Ok((path.to_path_buf(), "model.onnx".to_owned()));
    }
    let onnx: Vec<String> = std::fs::read_dir(path)
        .with_context(|| format!("cannot list {}", path.display()))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".onnx"))
        .collect();
    match onnx.as_slice() {
        [one] => Ok((path.to_path_buf(), one.clone())),
        [] => bail!("{}: no .onnx file", path.display()),
        _ => bail!(
            "{}: several .onnx files ({}) and no genai_config.json naming the decoder",
            path.display(),
            onnx.join(", ")
        ),
    }
}

fn read_proto(path: &Path) -> anyhow::Result<ModelProto> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    ModelProto::decode(bytes.as_slice())
        .with_context(|| format!("{}: not an ONNX model", path.display()))
}

/// The external data files (relative to the model's folder) a single-file ONNX model's initializers name.
pub fn external_data_files(path: &Path) -> anyhow::Result<Vec<String>> {
    let proto = read_proto(path)?;
    let mut files: Vec<String> = proto
        .graph
        .iter()
        .flat_map(|g| &g.initializer)
        .filter(|t| t.data_location == Some(DataLocation::External as i32))
        .flat_map(|t| &t.external_data)
        .filter(|kv| kv.key.as_deref() == Some("location"))
        .filter_map(|kv| kv.value.clone())
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// `{name, dtype, shape}` of a graph input or output; a symbolic dimension by its name, an unnamed one as null.
fn value_info(info: &ValueInfoProto) -> Value {
    let name = info.name.clone().unwrap_or_default();
    match info.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => {
            let shape: Vec<Value> = t
                .shape
                .iter()
                .flat_map(|s| &s.dim)
                .map(|d| match &d.value {
                    Some(DimValue::DimValue(v)) => json!(v),
                    Some(DimValue::DimParam(p)) => json!(p),
                    None => Value::Null,
                })
                .collect();
            let shape = if t.shape.is_some() {
                Value::Array(shape)
            } else {
                Value::Null
            };
            json!({"name": name, "dtype": dtype_name(t.elem_type.unwrap_or(0)), "shape": shape})
        }
        _ => json!({"name": name, "dtype": "non-tensor", "shape": Value::Null}),
    }
}

/// numpy's name of an ONNX element type.
fn dtype_name(elem_type: i32) -> String {
    match DataType::try_from(elem_type) {
        Ok(DataType::Float) => "float32".into(),
        Ok(DataType::Double) => "float64".into(),
        Ok(DataType::Float16) => "float16".into(),
        Ok(DataType::Bfloat16) => "bfloat16".into(),
        Ok(DataType::Bool) => "bool".into(),
        Ok(other) => other.as_str_name().to_ascii_lowercase(),
        Err(_) => format!("onnx-type-{elem_type}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_models_list_forward_inputs_and_logits() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"vocab_size": 32, "torch_dtype": "bfloat16"}"#,
        )
        .unwrap();
        let io = inputs_outputs(&Model::new(kinds::HF, dir.path())).unwrap();
        assert_eq!(io.inputs[0]["name"], "input_ids");
        assert_eq!(
            io.outputs[0],
            json!({"name": "logits", "dtype": "bfloat16", "shape": ["batch_size", "sequence_length", 32]})
        );
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let err = inputs_outputs(&Model::new(kinds::HF, dir.path()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("vocab_size missing"), "{err}");
    }

    #[test]
    fn onnx_element_types_get_numpy_names() {
        assert_eq!(dtype_name(DataType::Float as i32), "float32");
        assert_eq!(dtype_name(DataType::Int64 as i32), "int64");
        assert_eq!(dtype_name(DataType::Uint8 as i32), "uint8");
    }
}
