//! Errors of olive-onnx: each names the file or the tensor and what was expected.

use std::path::{Path, PathBuf};

/// What went wrong building or writing an ONNX model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnnxError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A tensor's bytes do not match its dims and type.
    #[error("{0}")]
    Shape(String),
    /// The graph is malformed (duplicate names, an input nobody produces).
    #[error("{0}")]
    Graph(String),
}

impl OnnxError {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        OnnxError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

/// Result with [`OnnxError`].
pub type Result<T, E = OnnxError> = std::result::Result<T, E>;
