//! Hugging Face model folders (config.json, safetensors, tokenizer.json) and GGUF files.

pub mod adapter;
pub mod checkpoint;
pub mod config;
pub mod convert;
pub mod error;
pub mod gguf;
pub mod quantized;
pub mod tokenizer;

pub use checkpoint::Checkpoint;
pub use config::{Architecture, ModelConfig, RopeScaling};
pub use error::ModelError;
