//! Errors of the model crate: each names the file, the field or tensor, and what was expected.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A field of a config file is missing or has the wrong type or value.
    #[error("{path}: field `{field}`: {expected}")]
    Field {
        path: PathBuf,
        field: String,
        expected: String,
    },
    /// config.json names an architecture this project does not support.
    #[error(
        "{path}: unsupported architecture `{found}` (expected one of: llama, mistral, phi3, qwen2)"
    )]
    UnknownArchitecture { path: PathBuf, found: String },
    /// A safetensors file is truncated or malformed.
    #[error("{path}: invalid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    /// A tensor the model needs is absent from the checkpoint.
    #[error("{folder}: tensor `{name}` not found in the checkpoint")]
    MissingTensor { folder: PathBuf, name: String },
    /// A tensor has a dtype or shape other than the one expected.
    #[error("{path}: tensor `{name}`: {reason}")]
    BadTensor {
        path: PathBuf,
        name: String,
        reason: String,
    },
    /// A tokenizer file could not be loaded or built.
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    /// A GGUF file is malformed or uses something this reader does not support.
    #[error("{path}: GGUF: {reason}")]
    Gguf { path: PathBuf, reason: String },
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn field(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        ModelError::Field {
            path: path.into(),
            field: field.into(),
            expected: expected.into(),
        }
    }
}

/// Fails with "model folder not found" unless `dir` is a folder.
pub(crate) fn require_folder(dir: &std::path::Path) -> Result<()> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(ModelError::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "model folder not found"),
        ))
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
