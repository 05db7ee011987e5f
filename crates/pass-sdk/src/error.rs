//! The error a pass returns, turned into the ABI's [`PassError`] at the boundary.

use std::path::{Path, PathBuf};

use olive_pass_api::{ErrorKind, PassError};

/// Why a pass failed. Messages name the file or field and what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The host asked the pass to stop.
    #[error("cancelled")]
    Cancelled,
    /// The input model is not one the pass can work on.
    #[error("{0}")]
    UnsupportedModel(String),
    /// The config parsed but its values do not make sense together.
    #[error("{0}")]
    InvalidConfig(String),
    /// Reading or writing a file failed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// Any other failure.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            error,
        }
    }

    /// The ABI kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Cancelled => ErrorKind::CANCELLED,
            Error::UnsupportedModel(_) => ErrorKind::UNSUPPORTED_MODEL,
            Error::InvalidConfig(_) => ErrorKind::INVALID_CONFIG,
            Error::Io { .. } | Error::Failed(_) => ErrorKind::FAILED,
        }
    }
}

impl From<Error> for PassError {
    fn from(err: Error) -> Self {
        PassError::new(err.kind(), err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_name_the_file() {
        let err = Error::io(
            "/m/config.json",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        let abi = PassError::from(err);
        assert_eq!(abi.kind, ErrorKind::FAILED);
        assert_eq!(abi.message.as_str(), "/m/config.json: entity not found");
    }
}
