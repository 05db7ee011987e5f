//! Errors of olive-data: every variant names the file, record and field at fault.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, DataError>;

/// What went wrong while loading or preparing a dataset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `--data_name` is not a local format.
    #[error("--data_name {0:?}: only the local formats \"json\" and \"text\" are supported (Hugging Face hub datasets are out of scope)")]
    UnsupportedDataName(String),
    /// `--split` names a split that local files do not have.
    #[error("--split {0:?}: local data files only have the split \"train\"")]
    UnknownSplit(String),
    /// A `--data_files` entry matched no file.
    #[error("--data_files {0:?}: no such file")]
    NoFiles(String),
    /// A `--data_files` glob pattern is malformed.
    #[error("--data_files {pattern:?}: bad glob pattern: {reason}")]
    BadPattern { pattern: String, reason: String },
    /// A JSON or JSONL record did not parse.
    #[error("{path}:{line}: invalid JSON: {reason}")]
    BadJson {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// A JSON value is not an object where a record was expected.
    #[error("{origin}: expected a JSON object (one record), found {found}")]
    NotARecord { origin: String, found: String },
    /// A record lacks a field that the text field, template or chat mapping needs.
    #[error("{origin}: record has no field {field:?} (available: {available})")]
    MissingField {
        origin: String,
        field: String,
        available: String,
    },
    /// A record field is not a string, number or boolean.
    #[error("{origin}: field {field:?} must be a string, found {found}")]
    FieldType {
        origin: String,
        field: String,
        found: String,
    },
    /// The text template does not parse.
    #[error("--text_template {template:?}: {reason}")]
    BadTemplate { template: String, reason: String },
    /// The tokenizer has no chat template or it fails to render.
    #[error("{path}: chat template: {reason}")]
    ChatTemplate { path: PathBuf, reason: String },
    /// tokenizer_config.json is missing a token that is needed, or the token is not in the vocabulary.
    #[error("{path}: {reason}")]
    Tokens { path: PathBuf, reason: String },
    /// Tokenization failed.
    #[error("tokenizer: {0}")]
    Tokenize(String),
    /// The model folder's tokenizer could not be loaded.
    #[error(transparent)]
    Model(#[from] olive_model::error::ModelError),
    /// No usable text after loading.
    #[error("dataset is empty: {0}")]
    Empty(String),
    /// The corpus is shorter than one sample.
    #[error("dataset has {tokens} tokens, shorter than one sample of {needed} tokens")]
    TooShort { tokens: usize, needed: usize },
    /// A numeric option is out of range.
    #[error("{option}: {reason}")]
    BadOption {
        option: &'static str,
        reason: String,
    },
}
