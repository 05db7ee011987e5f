//! Errors of the transformer: model files that do not fit, token ids outside the vocabulary,
//! caches and position tables that do not match the call.

use olive_model::ModelError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NnError {
    /// The config or a weight tensor could not be read, or has the wrong shape.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A token id is not below the vocabulary size.
    #[error("token id {token} is outside the vocabulary (vocab_size {vocab_size})")]
    TokenOutOfRange { token: u32, vocab_size: usize },
    /// Hidden states whose length is not a whole number of rows.
    #[error("hidden states of {len} floats are not [tokens, {hidden_size}]")]
    HiddenShape { len: usize, hidden_size: usize },
    /// Rope tables built for other positions than the ones the layer runs at.
    #[error(
        "rope tables cover {table_len} positions from {table_start}, but the layer runs {tokens} \
         tokens from position {cache_len} (build them with Rope::tables(cache.len(), tokens))"
    )]
    PositionMismatch {
        table_start: usize,
        table_len: usize,
        cache_len: usize,
        tokens: usize,
    },
    /// A KV cache made for a model of another shape.
    #[error("KV cache holds {found_layers} layers of {found_width} floats a token; this model needs {layers} of {width}")]
    CacheMismatch {
        found_layers: usize,
        found_width: usize,
        layers: usize,
        width: usize,
    },
    /// A KV cache without room for the positions a call appends.
    #[error("the KV cache has room for {capacity} positions, but {needed} were asked for (make it with a larger capacity)")]
    CacheFull { capacity: usize, needed: usize },
    /// Memory for a weight buffer could not be mapped.
    #[error("could not allocate {floats} floats of weights: {source}")]
    Alloc {
        floats: usize,
        #[source]
        source: std::io::Error,
    },
    /// `generate` was given no prompt token to start from.
    #[error("generate needs at least one prompt token")]
    EmptyPrompt,
    /// The tokenizer failed to decode generated ids.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The GPU could not be used, or a kernel failed.
    #[error(transparent)]
    Gpu(#[from] olive_kernels::cuda::GpuError),
}

pub type Result<T, E = NnError> = std::result::Result<T, E>;
