//! An MLflow model registry client (REST API 2.0: registered models, model versions, runs, and artifacts
//! through the tracking server's proxy `/api/2.0/mlflow-artifacts/artifacts`), as `mlflow server
//! --serve-artifacts` and Azure ML's MLflow-compatible endpoint speak it. One model version is laid out as the
//! `mlflow` client lays out a registered run artifact: a run holds the files under `model/` (the version's
//! `source`) and `olive-manifest.json` (sha256 and size per file, checked on download).

mod api;
mod delete;
mod error;
mod fetch;
mod http;
mod publish;

pub use api::{ModelVersion, RegisteredModel, Registry};
pub use delete::{delete, DeleteReport};
pub use error::RegistryError;
pub use fetch::{download, version_files};
pub use http::{Auth, Endpoint, RetryPolicy};
pub use publish::{create, validate_name, CreateOptions, CreateReport, NoProgress, Progress};
