//! Errors of the registry client: each names the URL or file and what was expected.

use std::path::PathBuf;

/// What can go wrong talking to an MLflow registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry URI has a form this client does not speak.
    #[error("registry URI `{uri}`: {reason}")]
    Uri { uri: String, reason: String },
    /// The registry could not be reached (connection refused, reset, timeout) after every retry.
    #[error("registry unreachable at {url} after {attempts} attempt(s): {reason}")]
    Unreachable {
        url: String,
        attempts: u32,
        reason: String,
    },
    /// The registry refused the credentials (HTTP 401/403).
    #[error("registry at {url} refused the credentials (HTTP {status}): {message}; set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN")]
    Auth {
        url: String,
        status: u16,
        message: String,
    },
    /// The registry answered a request with an error status.
    #[error("registry request {url} failed (HTTP {status}{code}): {message}")]
    Api {
        url: String,
        status: u16,
        code: String,
        message: String,
    },
    /// A registry answer was not the JSON expected.
    #[error("registry answer from {url} is not what was expected: {reason}")]
    Response { url: String, reason: String },
    /// A local file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An argument is not valid (name, version, tag, path).
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    /// The model version exists already and overwriting was not asked for.
    #[error("model `{name}` version {version} exists already in the registry; pass --overwrite to replace its files")]
    VersionExists { name: String, version: String },
    /// The registered model or version does not exist.
    #[error("{what} not found in the registry")]
    NotFound { what: String },
    /// A downloaded file does not have the checksum its manifest records.
    #[error("{}: sha256 {actual} does not match the manifest's {expected}", path.display())]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

impl RegistryError {
    /// Whether the failure came from the network or the server being down: the upload state is kept for a resume.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Api { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RegistryError::Io {
            path: path.into(),
            source,
        }
    }
}
