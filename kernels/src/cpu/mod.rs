//! CPU kernels for the Llama-family decoder: dense matmul (`x · Wᵀ`, GEMV fast path), RMSNorm,
//! rotate-half RoPE, softmax, SwiGLU's `silu(gate) * up`, and causal GQA attention over a KV cache.

pub mod argmax;
pub mod attention;
mod attention_blocked;
mod dot;
pub mod matmul;
pub mod matmul_strided;
pub mod rmsnorm;
pub mod rope;
pub mod silu_mul;
pub mod softmax;

#[cfg(test)]
pub(crate) mod testutil;

pub use argmax::argmax;
pub use attention::{attention, attention_ref, AttentionDims};
pub use matmul::{matmul, matmul_ref};
pub use matmul_strided::{matmul_strided, View};
pub use rmsnorm::{rmsnorm, rmsnorm_ref};
pub use rope::{rope_apply, rope_apply_ref, RopeLayout};
pub use silu_mul::{silu_mul, silu_mul_ref};
pub use softmax::{softmax, softmax_ref};
