//! `nn.Linear` weights in PyTorch layout (W: [out, in] row-major, optional bias) and their
//! loading from Hugging Face checkpoints, including fusing separate projections into one matrix
//! (q/k/v → qkv, gate/up → gate_up: Phi-3's layout).

use olive_kernels::cpu::matmul;
use olive_model::Checkpoint;

use crate::buffer::WeightBuf;
use crate::error::{NnError, Result};

/// A dense linear layer `y = x · Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// weight: [out_features, in_features]
    pub weight: WeightBuf,
    /// bias: [out_features]
    pub bias: Option<Vec<f32>>,
    pub in_features: usize,
    pub out_features: usize,
}

impl Linear {
    /// out: [tokens, out_features] = x: [tokens, in_features] · Wᵀ + b.
    pub fn forward(&self, x: &[f32], out: &mut [f32]) {
        let tokens = x.len() / self.in_features.max(1);
        matmul(
            x,
            &self.weight,
            out,
            tokens,
            self.in_features,
            self.out_features,
        );
        if let Some(bias) = &self.bias {
            for row in out.chunks_exact_mut(self.out_features) {
                for (o, b) in row.iter_mut().zip(bias) {
                    *o += b;
                }
            }
        }
    }

    /// Rows `start .. start + len` of the weight (e.g. the k part of a fused qkv): [len, in_features].
    pub fn rows(&self, start: usize, len: usize) -> &[f32] {
        &self.weight[start * self.in_features..(start + len) * self.in_features]
    }

    /// Loads `<prefix>.weight` ([out, in]) and `<prefix>.bias` when the checkpoint has it.
    pub fn load(
        ckpt: &Checkpoint,
        prefix: &str,
        out_features: usize,
        in_features: usize,
    ) -> Result<Self> {
        Self::load_fused(ckpt, &[(prefix, out_features)], in_features)
    }

    /// Stacks the rows of several projections sharing one input, in order: `parts` are
    /// (prefix, out_features). A bias is kept when any part has one (zeros for the others).
    pub fn load_fused(
        ckpt: &Checkpoint,
        parts: &[(&str, usize)],
        in_features: usize,
    ) -> Result<Self> {
        let out_features: usize = parts.iter().map(|(_, n)| n).sum();
        let mut weight = weight_buf(out_features * in_features)?;
        let mut row = 0;
        for (prefix, n) in parts {
            let t = ckpt.tensor_f32_shaped(&format!("{prefix}.weight"), &[*n, in_features])?;
            weight[row * in_features..(row + n) * in_features].copy_from_slice(&t.data);
            row += n;
        }
        let has_bias = parts
            .iter()
            .any(|(p, _)| ckpt.contains(&format!("{p}.bias")));
        let bias = if has_bias {
            let mut bias = Vec::with_capacity(out_features);
            for (prefix, n) in parts {
                let name = format!("{prefix}.bias");
                if ckpt.contains(&name) {
                    bias.extend_from_slice(&ckpt.tensor_f32_shaped(&name, &[*n])?.data);
                } else {
                    bias.resize(bias.len() + n, 0.0);
                }
            }
            Some(bias)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            in_features,
            out_features,
        })
    }
}

/// Loads a 1-D weight such as a norm's scale: [len].
pub(crate) fn load_vector(ckpt: &Checkpoint, name: &str, len: usize) -> Result<Vec<f32>> {
    Ok(ckpt.tensor_f32_shaped(name, &[len])?.data)
}

/// The fused projection when the checkpoint stores it (`fused`), else the separate ones stacked.
pub(crate) fn load_fused_or_split(
    ckpt: &Checkpoint,
    fused: &str,
    split: &[(&str, usize)],
    in_features: usize,
) -> Result<Linear> {
    if ckpt.contains(&format!("{fused}.weight")) {
        let out: usize = split.iter().map(|(_, n)| n).sum();
        Linear::load(ckpt, fused, out, in_features)
    } else {
        Linear::load_fused(ckpt, split, in_features)
    }
}

/// `len` zeros in huge-page memory.
pub(crate) fn weight_buf(len: usize) -> Result<WeightBuf> {
    WeightBuf::zeroed(len).map_err(|source| NnError::Alloc {
        floats: len,
        source,
    })
}

/// A tensor of the checkpoint with the given shape, copied into huge-page memory.
pub(crate) fn load_matrix(ckpt: &Checkpoint, name: &str, shape: &[usize]) -> Result<WeightBuf> {
    let t = ckpt.tensor_f32_shaped(name, shape)?;
    let mut buf = weight_buf(t.data.len())?;
    buf.copy_from_slice(&t.data);
    Ok(buf)
}
