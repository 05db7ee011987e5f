//! Runs an exported ONNX decoder folder (onnxruntime-genai's layout: genai_config.json, model.onnx,
//! tokenizer.json) through ONNX Runtime with the `ort` crate: KV cache, greedy or top-k/top-p
//! sampling, LoRA adapters (.onnx_adapter).
//!
//! ```no_run
//! # fn main() -> olive_runtime::Result<()> {
//! use olive_runtime::{OnnxModel, SearchOptions};
//! let mut model = OnnxModel::load(std::path::Path::new("models/phi/onnx-ao/model"))?;
//! let options = SearchOptions {
//!     max_length: 64, do_sample: false, top_k: 50, top_p: 1.0, temperature: 1.0, seed: None,
//!     eos_token_ids: model.config().eos_token_ids(),
//! };
//! let ids = model.generate(&[1, 2, 3], &options, |_id| true)?;
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod env;
mod error;
mod io;
mod model;
pub mod sampling;

pub use config::GenaiConfig;
pub use error::{Result, RuntimeError};
pub use model::{is_onnx_folder, OnnxModel, DEFAULT_MODEL_FILE};
pub use sampling::{Sampler, SearchOptions};
