//! Errors of LoRA training: targets the model does not have, adapters that do not fit it, batches
//! that cannot be trained on, and settings out of range.

use crate::error::NnError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The frozen model failed (token ids, shapes).
    #[error(transparent)]
    Nn(#[from] NnError),
    /// A LoRA target module matches no linear layer of the model.
    #[error(
        "target module `{module}` does not exist in this {architecture} model (its linear layers: {available})"
    )]
    UnknownTarget {
        module: String,
        architecture: String,
        available: String,
    },
    /// Initial adapter weights that do not fit the model.
    #[error("adapter module `{module}`: {reason}")]
    Adapter { module: String, reason: String },
    /// A batch that cannot be trained on (shapes, ids, no label tokens).
    #[error("batch: {0}")]
    Batch(String),
    /// The data-parallel group failed (NCCL, or a communicator on another GPU).
    #[error("data-parallel training: {0}")]
    Distributed(String),
    /// A LoRA or training setting outside its range.
    #[error("setting `{field}`: {expected}")]
    Setting {
        field: &'static str,
        expected: String,
    },
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
