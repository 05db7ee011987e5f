//! The Llama-family decoder (Llama 2/3, Mistral, Phi-3, Qwen2) on CPU in f32, following
//! transformers' modeling code: embeddings, RMSNorm, RoPE (default, linear, llama3, LongRoPE),
//! GQA attention with a KV cache and sliding window, SwiGLU MLP, tied or separate lm_head;
//! calibration hooks for the quantizers; greedy generation with streaming detokenization; LoRA
//! fine-tuning with hand-written backward passes (`train`); the same decoder on a CUDA GPU in bf16 (`gpu`).

pub mod buffer;
pub mod cache;
pub mod error;
pub mod generate;
pub mod gpu;
pub mod int4;
pub mod layer;
pub mod linear;
pub mod model;
pub mod packed;
pub mod rope;
pub mod train;

pub use buffer::WeightBuf;
pub use cache::{KvCache, LayerCache};
pub use error::NnError;
pub use generate::{argmax, TextStream};
pub use gpu::{GpuKvCache, GpuTransformer};
pub use layer::{DecoderLayer, LayerDims, ProbePoint, Workspace};
pub use linear::{Linear, QuantizedWeights};
pub use model::Transformer;
pub use packed::PackedWeight;
pub use rope::{Rope, RopeTables};
