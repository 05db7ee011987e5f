//! CPU kernels for the Llama-family decoder: dense matmul (`x · Wᵀ`, GEMV fast path), RMSNorm,
//! rotate-half RoPE, softmax, SwiGLU's `silu(gate) * up`, and causal GQA attention over a KV cache; and for
//! LoRA training: the backward of RMSNorm, RoPE and SwiGLU, cross-entropy with its gradient, and AdamW.

pub mod adamw;
pub mod argmax;
pub mod attention;
pub mod attention_backward;
mod attention_blocked;
mod attention_decode;
pub mod cross_entropy;
mod dot;
pub mod int4;
pub mod lora;
pub mod matmul;
pub mod matmul_strided;
pub mod rmsnorm;
pub mod rope;
pub mod rows;
pub mod silu_mul;
pub mod softmax;
pub mod w4a16;
pub mod w4a16_tiles;

#[cfg(test)]
pub(crate) mod testutil;

pub use adamw::{adamw_update, clip_coefficient, sum_squares, AdamW, AdamWStep};
pub use argmax::argmax;
pub use attention::{attention, attention_ref, AttentionDims};
pub use attention_backward::{attention_backward_ref, AttentionBatch, AttentionGrads};
pub use cross_entropy::{cross_entropy, cross_entropy_row};
pub use lora::{lora_backward_ref, lora_forward_ref, LoraDims, LoraGradsRef};
pub use matmul::{matmul, matmul_ref};
pub use matmul_strided::{matmul_strided, View};
pub use rmsnorm::{rmsnorm, rmsnorm_backward, rmsnorm_ref};
pub use rope::{rope_apply, rope_apply_ref, rope_backward, rope_tables, RopeLayout};
pub use silu_mul::{silu_mul, silu_mul_backward, silu_mul_ref};
pub use softmax::{softmax, softmax_ref};
