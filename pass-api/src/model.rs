//! Models cross the ABI as on-disk artifacts: [`ModelRef`] on the wire, [`Model`] on each side.

use std::path::PathBuf;

use abi_stable::std_types::{RString, RVec};
use abi_stable::StableAbi;
use serde::{Deserialize, Serialize};

/// Well-known model kinds. The set is open: a plugin may accept or produce other kinds.
pub mod kinds {
    /// A Hugging Face folder: `config.json`, `*.safetensors`, tokenizer files.
    pub const HF: &str = "hf";
    /// An ONNX model: a `.onnx` file, or a folder holding one (plus external data, genai config).
    pub const ONNX: &str = "onnx";
    /// A Hugging Face base model with PEFT adapters listed in `adapter_paths`.
    pub const HF_ADAPTER: &str = "hf+adapter";
}

/// A model on disk, as it crosses the ABI. Paths are UTF-8; `metadata_json` is a JSON object.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    /// The model kind, one of [`kinds`] or a plugin's own.
    pub kind: RString,
    /// The model file or folder.
    pub path: RString,
    /// PEFT adapter folders, in order; empty for most kinds.
    pub adapter_paths: RVec<RString>,
    /// Anything else about the model, as a JSON object (`{}` when there is nothing).
    pub metadata_json: RString,
}

/// A model on disk, as each side holds it: the serde form of [`ModelRef`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// The model kind, one of [`kinds`] or a plugin's own.
    pub kind: String,
    /// The model file or folder.
    pub path: PathBuf,
    /// PEFT adapter folders, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adapter_paths: Vec<PathBuf>,
    /// Anything else about the model.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// A [`Model`] that cannot cross the ABI, or a [`ModelRef`] that is not a valid model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A path is not UTF-8, which the ABI requires.
    #[error("model path {0:?} is not valid UTF-8")]
    NonUtf8Path(PathBuf),
    /// `metadata_json` is not a JSON object.
    #[error("model metadata is not a JSON object: {0}")]
    Metadata(String),
}

impl Model {
    /// A model of `kind` at `path`, with no adapters and no metadata.
    pub fn new(kind: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Model {
            kind: kind.into(),
            path: path.into(),
            adapter_paths: Vec::new(),
            metadata: Default::default(),
        }
    }

    /// The ABI form of this model.
    pub fn to_ref(&self) -> Result<ModelRef, ModelError> {
        let utf8 = |path: &PathBuf| {
            path.to_str()
                .map(RString::from)
                .ok_or_else(|| ModelError::NonUtf8Path(path.clone()))
        };
        Ok(ModelRef {
            kind: RString::from(self.kind.as_str()),
            path: utf8(&self.path)?,
            adapter_paths: self
                .adapter_paths
                .iter()
                .map(utf8)
                .collect::<Result<_, _>>()?,
            metadata_json: RString::from(
                serde_json::Value::Object(self.metadata.clone()).to_string(),
            ),
        })
    }

    /// The model an ABI [`ModelRef`] describes; empty metadata text counts as `{}`.
    pub fn from_ref(model: &ModelRef) -> Result<Self, ModelError> {
        let metadata = if model.metadata_json.trim().is_empty() {
            serde_json::Map::new()
        } else {
            match serde_json::from_str(&model.metadata_json) {
                Ok(serde_json::Value::Object(map)) => map,
                Ok(other) => return Err(ModelError::Metadata(format!("got {other}"))),
                Err(err) => return Err(ModelError::Metadata(err.to_string())),
            }
        };
        Ok(Model {
            kind: model.kind.to_string(),
            path: PathBuf::from(model.path.as_str()),
            adapter_paths: model
                .adapter_paths
                .iter()
                .map(|p| PathBuf::from(p.as_str()))
                .collect(),
            metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_abi_form() {
        let mut model = Model::new(kinds::HF_ADAPTER, "/m/base");
        model.adapter_paths.push("/m/adapter".into());
        model.metadata.insert("dtype".into(), "float16".into());
        let abi = model.to_ref().unwrap();
        assert_eq!(abi.metadata_json.as_str(), r#"{"dtype":"float16"}"#);
        assert_eq!(Model::from_ref(&abi).unwrap(), model);
    }

    #[test]
    fn metadata_must_be_an_object() {
        let mut abi = Model::new(kinds::ONNX, "/m/model.onnx").to_ref().unwrap();
        abi.metadata_json = RString::from("[1]");
        assert_eq!(
            Model::from_ref(&abi).unwrap_err().to_string(),
            "model metadata is not a JSON object: got [1]"
        );
        abi.metadata_json = RString::new();
        assert!(Model::from_ref(&abi).unwrap().metadata.is_empty());
    }

    #[test]
    fn serde_form_omits_empty_fields() {
        let json = serde_json::to_string(&Model::new(kinds::HF, "/m")).unwrap();
        assert_eq!(json, r#"{"kind":"hf","path":"/m"}"#);
    }
}
