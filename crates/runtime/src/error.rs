//! Errors of the ONNX runtime crate; each names the file or option and what was expected.

use std::path::PathBuf;

/// Result with [`RuntimeError`].
pub type Result<T> = std::result::Result<T, RuntimeError>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// ORT_DYLIB_PATH is unset or names no file: the set-up has not run.
    #[error(
        "ONNX Runtime library not found: {reason}; run scripts/install.sh, then \
         `source target/olive-env.sh` (it sets ORT_DYLIB_PATH to libonnxruntime from the onnxruntime wheel)"
    )]
    LibraryMissing { reason: String },
    /// The ONNX Runtime library exists but could not be loaded or initialized.
    #[error("loading ONNX Runtime from {path}: {reason}")]
    LibraryLoad { path: PathBuf, reason: String },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// genai_config.json is not valid JSON or lacks a field the runtime needs.
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    /// The graph's inputs or outputs do not match what genai_config.json names.
    #[error("{path}: {reason}")]
    Graph { path: PathBuf, reason: String },
    /// ONNX Runtime failed while creating the session or running the model.
    #[error("{path}: {what}: {reason}")]
    Ort {
        path: PathBuf,
        what: String,
        reason: String,
    },
    /// The LoRA adapter file could not be loaded or activated.
    #[error("{path}: adapter {name:?}: {reason}")]
    Adapter {
        path: PathBuf,
        name: String,
        reason: String,
    },
    /// A search option is out of range.
    #[error("{option}: {reason}")]
    Search {
        option: &'static str,
        reason: String,
    },
    /// The prompt has no tokens.
    #[error("the prompt has no tokens")]
    EmptyPrompt,
}
