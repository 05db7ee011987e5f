//! `nn.Linear` weights in PyTorch layout (W: [out, in] row-major, optional bias) and their
//! loading from Hugging Face checkpoints, including fusing separate projections into one matrix
//! (q/k/v → qkv, gate/up → gate_up: Phi-3's layout). A pre-quantized linear (`<prefix>.qweight`, AutoAWQ GEMM
//! or GPTQ per config.json's `quantization_config`, `olive_model::quantized`) is dequantized to f32 at load,
//! or kept packed and dequantized at each use ([`QuantizedWeights::Packed`], QLoRA's frozen int4 base), or kept
//! in the CPU int4 kernels' layout and multiplied as int4 ([`QuantizedWeights::Int4`], ORT MatMulNBits'
//! accuracy level 4: activations quantized to int8 per weight block; [`QuantizedWeights::Int4Training`] for
//! QLoRA, whose backward dx = dy · W dequantizes a tile of rows at a time, `crate::int4::backward_input`;
//! [`QuantizedWeights::Int4Fp32`] with fp32 activations, the dequantized model's products up to f32 order).

use olive_kernels::cpu::int4::{int4_matmul_into, Activations, Int4Matrix};
use olive_kernels::cpu::w4a16::W4Levels;
use olive_kernels::cpu::{matmul, matmul_strided, View};
use olive_model::quantized::{is_quantized, quantized_linear, QuantizationConfig, QuantizedLinear};
use olive_model::{Checkpoint, ModelError};
use tracing::info;

use crate::buffer::WeightBuf;
use crate::error::{NnError, Result};
use crate::packed::PackedWeight;

/// How a loader keeps the linears of a pre-quantized checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuantizedWeights {
    /// Dequantized to f32 once (inference: the dense kernels at full speed).
    #[default]
    Dequantize,
    /// Kept as packed levels, scales and zero points, dequantized into a per-thread scratch at each
    /// use: the memory of one matrix instead of the model, forward and backward equal to the
    /// dequantize-at-load model's bit for bit (the GPU trainer's upload; the CPU's fallback for what the
    /// int4 kernels cannot take in [`QuantizedWeights::Int4Training`]).
    Packed,
    /// Kept as int4 in the CPU int4 kernels' layout (`olive_kernels::cpu::int4`) and multiplied with
    /// activations quantized to int8 per weight block (inference: decoding reads a quarter of the bytes of
    /// f32, or less). A linear the kernels cannot take (more than 4 bits, inputs or group not a multiple of
    /// 32, parts of a fused projection quantized differently) is dequantized as with `Dequantize`.
    Int4,
    /// QLoRA's frozen base on the CPU: int4 as with [`QuantizedWeights::Int4`] (forward through the int4
    /// kernels, activations int8 per weight block: an error of at most half an int8 step of the block's
    /// largest input, the order of bf16's rounding that QLoRA's usual bf16 compute accepts), the backward's
    /// dx = dy · W from tiles of rows dequantized into a scratch of 1 MiB; what the kernels cannot take is
    /// kept [`QuantizedWeights::Packed`], never dense, so the base holds its packed size.
    Int4Training,
    /// Int4 as with [`QuantizedWeights::Int4`] (the same loader and fallback) but with fp32 activations: the
    /// products of the dequantize-at-load model up to f32 summation order (perplexity that is the
    /// checkpoint's), a batch of tokens as dense GEMMs over tiles of dequantized rows, a few tokens through
    /// the int4 kernels' fp32 path.
    Int4Fp32,
}

/// From this many tokens on, an fp32-activation int4 product runs as dense GEMMs over dequantized tiles.
const F32_TILE_MIN_TOKENS: usize = 8;

/// A linear layer `y = x · Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// weight: [out_features, in_features]; empty when `packed` or `int4` holds the weight.
    pub weight: WeightBuf,
    /// The weight as packed integer levels (a quantized checkpoint loaded with
    /// [`QuantizedWeights::Packed`]); None for a dense weight.
    pub packed: Option<PackedWeight>,
    /// The weight in the CPU int4 kernels' layout (a quantized checkpoint loaded with
    /// [`QuantizedWeights::Int4`]); None otherwise.
    pub int4: Option<Int4Matrix>,
    /// How the activations of the int4 product enter it: fp32 from [`QuantizedWeights::Int4Fp32`], else int8 per
    /// block.
    pub int4_act: Activations,
    /// bias: [out_features]
    pub bias: Option<Vec<f32>>,
    pub in_features: usize,
    pub out_features: usize,
}

impl Linear {
    /// out: [tokens, out_features] = x: [tokens, in_features] · Wᵀ + b.
    pub fn forward(&self, x: &[f32], out: &mut [f32]) {
        let tokens = x.len() / self.in_features.max(1);
        match &self.int4 {
            Some(m) if self.int4_act == Activations::F32 && tokens >= F32_TILE_MIN_TOKENS => {
                crate::int4::forward_f32_tiles(m, x, tokens, out)
            }
            Some(m) => int4_matmul_into(x, tokens, m, self.int4_act, out),
            None => {
                self.with_weight(|w| matmul(x, w, out, tokens, self.in_features, self.out_features))
            }
        }
        if let Some(bias) = &self.bias {
            for row in out.chunks_exact_mut(self.out_features) {
                for (o, b) in row.iter_mut().zip(bias) {
                    *o += b;
                }
            }
        }
    }

    /// dx: [tokens, in_features] = dy: [tokens, out_features] · W, the input gradient of the product (the
    /// bias takes no part). An int4 weight is dequantized a tile of rows at a time, never whole.
    pub fn backward_input(&self, dy: &[f32], dx: &mut [f32]) {
        let tokens = dy.len() / self.out_features.max(1);
        if let Some(m) = &self.int4 {
            return crate::int4::backward_input(m, dy, tokens, dx);
        }
        self.with_weight(|w| {
            matmul_strided(
                tokens,
                self.in_features,
                self.out_features,
                View::rows(dy, self.out_features),
                View::rows(w, self.in_features),
                dx,
                self.in_features,
                1.0,
                false,
            )
        });
    }

    /// Calls `f` with the float weight [out_features, in_features]: the dense one, or the packed one
    /// dequantized into this thread's scratch (the same values the dequantize-at-load path holds), or the
    /// int4 one dequantized (the same values again: (q − z) · s in f32).
    pub fn with_weight<R>(&self, f: impl FnOnce(&[f32]) -> R) -> R {
        match (&self.packed, &self.int4) {
            (Some(p), _) => p.with_dequantized(f),
            (None, Some(m)) => f(&m.dequantize()),
            (None, None) => f(&self.weight),
        }
    }

    /// Turns a packed or int4 weight into a dense one (e.g. before merging an adapter into it).
    pub fn densify(&mut self) -> Result<()> {
        if let Some(p) = self.packed.take() {
            let mut weight = weight_buf(self.out_features * self.in_features)?;
            p.dequantize_into(&mut weight);
            self.weight = weight;
        }
        if let Some(m) = self.int4.take() {
            let mut weight = weight_buf(self.out_features * self.in_features)?;
            weight.copy_from_slice(&m.dequantize());
            self.weight = weight;
        }
        Ok(())
    }

    /// Bytes the weight holds (dense f32, packed or int4).
    pub fn weight_bytes(&self) -> usize {
        match (&self.packed, &self.int4) {
            (Some(p), _) => p.bytes(),
            (None, Some(m)) => m.bytes(),
            (None, None) => 4 * self.weight.len(),
        }
    }

    /// Rows `start .. start + len` of the dense weight (e.g. the k part of a fused qkv): [len,
    /// in_features]; empty when the weight is packed or int4.
    pub fn rows(&self, start: usize, len: usize) -> &[f32] {
        if self.packed.is_some() || self.int4.is_some() {
            return &[];
        }
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
        Self::load_fused_with(ckpt, parts, in_features, QuantizedWeights::Dequantize)
    }

    /// [`Linear::load_fused`]; quantized parts are kept packed with [`QuantizedWeights::Packed`], or int4
    /// with [`QuantizedWeights::Int4`] where the kernels take them, when all parts are quantized alike (bits,
    /// groups, g_idx), else dequantized.
    pub fn load_fused_with(
        ckpt: &Checkpoint,
        parts: &[(&str, usize)],
        in_features: usize,
        mode: QuantizedWeights,
    ) -> Result<Self> {
        let out_features: usize = parts.iter().map(|(_, n)| n).sum();
        let all_quantized = parts.iter().all(|(p, _)| is_quantized(ckpt, p));
        let compact = mode != QuantizedWeights::Dequantize;
        let int4_mode = matches!(
            mode,
            QuantizedWeights::Int4 | QuantizedWeights::Int4Training | QuantizedWeights::Int4Fp32
        );
        let quantized = if compact && all_quantized {
            let mut qs = parts
                .iter()
                .map(|(p, n)| read_quantized(ckpt, p, *n, in_features))
                .collect::<Result<Vec<_>>>()?;
            match qs.len() {
                1 => qs.pop(),
                _ => QuantizedLinear::concat(&qs),
            }
        } else {
            None
        };
        // Int4: the levels go into the kernels' layout, or are dequantized where it cannot take them.
        let (mut packed, mut int4, mut rejected) = (None, None, None);
        match (mode, quantized) {
            (_, Some(q)) if int4_mode => match to_int4(&q, parts, mode) {
                Some(m) => int4 = Some(m),
                // Training keeps what the kernels cannot take packed: the base stays compact.
                None if mode == QuantizedWeights::Int4Training => {
                    packed = Some(PackedWeight::new(&q))
                }
                None => rejected = Some(q),
            },
            (_, Some(q)) => packed = Some(PackedWeight::new(&q)),
            (_, None) => {}
        }
        let weight = if packed.is_some() || int4.is_some() {
            weight_buf(0)?
        } else if let Some(q) = rejected {
            let mut weight = weight_buf(out_features * in_features)?;
            weight.copy_from_slice(&q.dequantize());
            weight
        } else {
            let mut weight = weight_buf(out_features * in_features)?;
            let mut row = 0;
            for (prefix, n) in parts {
                let rows = &mut weight[row * in_features..(row + n) * in_features];
                if is_quantized(ckpt, prefix) {
                    rows.copy_from_slice(
                        &read_quantized(ckpt, prefix, *n, in_features)?.dequantize(),
                    );
                } else {
                    let t = read_f32(ckpt, &format!("{prefix}.weight"), &[*n, in_features])?;
                    rows.copy_from_slice(&t);
                }
                row += n;
            }
            weight
        };
        let has_bias = parts
            .iter()
            .any(|(p, _)| ckpt.contains(&format!("{p}.bias")));
        let bias = if has_bias {
            let mut bias = Vec::with_capacity(out_features);
            for (prefix, n) in parts {
                let name = format!("{prefix}.bias");
                if ckpt.contains(&name) {
                    bias.extend_from_slice(&read_f32(ckpt, &name, &[*n])?);
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
            packed,
            int4,
            int4_act: match mode {
                QuantizedWeights::Int4Fp32 => Activations::F32,
                _ => Activations::Int8,
            },
            bias,
            in_features,
            out_features,
        })
    }
}

/// The CPU int4 kernels' layout of `q`, or None (logged) when they cannot take it: the linear is then
/// dequantized (`Int4`) or kept packed (`Int4Training`).
fn to_int4(
    q: &QuantizedLinear,
    parts: &[(&str, usize)],
    mode: QuantizedWeights,
) -> Option<Int4Matrix> {
    let name = parts.first().map_or("", |(prefix, _)| *prefix);
    let fallback = match mode {
        QuantizedWeights::Int4Training => "kept packed",
        _ => "dequantized to f32",
    };
    if q.bits > 4 {
        info!(
            "{name}: {}-bit weights; {fallback} (the int4 kernels take 4 bits at most)",
            q.bits
        );
        return None;
    }
    // Levels of 2 and 3 bits are int4 levels too.
    let levels = W4Levels {
        n: q.out_features,
        k: q.in_features,
        group_size: q.group_size,
        q: q.q.clone(),
        scales: q.scales.clone(),
        zeros: q.zeros.clone(),
        g_idx: q.g_idx.clone(),
    };
    match Int4Matrix::from_levels(&levels) {
        Ok(m) => Some(m),
        Err(why) => {
            info!("{name}: the CPU int4 kernels cannot take it ({why}); {fallback}");
            None
        }
    }
}

/// The quantized linear at `prefix` ([out, in] once dequantized), per config.json's
/// `quantization_config`.
fn read_quantized(
    ckpt: &Checkpoint,
    prefix: &str,
    out: usize,
    in_features: usize,
) -> Result<QuantizedLinear> {
    let path = ckpt.folder().join("config.json");
    let cfg =
        QuantizationConfig::from_config_json(&path)?.ok_or_else(|| ModelError::BadTensor {
            path: path.clone(),
            name: format!("{prefix}.qweight"),
            reason: "a quantized tensor but config.json has no quantization_config".into(),
        })?;
    let q = quantized_linear(ckpt, prefix, &cfg)?;
    for part in ["qweight", "qzeros", "scales", "g_idx"] {
        ckpt.release(&format!("{prefix}.{part}"));
    }
    if (q.out_features, q.in_features) != (out, in_features) {
        return Err(ModelError::BadTensor {
            path,
            name: format!("{prefix}.qweight"),
            reason: format!(
                "unpacks to [out, in] = [{}, {}], expected [{out}, {in_features}]",
                q.out_features, q.in_features
            ),
        }
        .into());
    }
    Ok(q)
}

/// Loads a 1-D weight such as a norm's scale: [len].
pub(crate) fn load_vector(ckpt: &Checkpoint, name: &str, len: usize) -> Result<Vec<f32>> {
    read_f32(ckpt, name, &[len])
}

/// The fused projection when the checkpoint stores it (`fused`), else the separate ones stacked.
pub(crate) fn load_fused_or_split(
    ckpt: &Checkpoint,
    fused: &str,
    split: &[(&str, usize)],
    in_features: usize,
    mode: QuantizedWeights,
) -> Result<Linear> {
    if ckpt.contains(&format!("{fused}.weight")) || is_quantized(ckpt, fused) {
        let out: usize = split.iter().map(|(_, n)| n).sum();
        Linear::load_fused_with(ckpt, &[(fused, out)], in_features, mode)
    } else {
        Linear::load_fused_with(ckpt, split, in_features, mode)
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
    let t = read_f32(ckpt, name, shape)?;
    let mut buf = weight_buf(t.len())?;
    buf.copy_from_slice(&t);
    Ok(buf)
}

/// A tensor of the checkpoint with the given shape as f32, its mapped pages released once copied
/// (they would count in the resident set until the checkpoint is dropped).
fn read_f32(ckpt: &Checkpoint, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let t = ckpt.tensor_f32_shaped(name, shape)?;
    ckpt.release(name);
    Ok(t.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use olive_model::quantized::{pack_gptq_v1, QuantizedLinear};
    use safetensors::tensor::TensorView;

    #[test]
    fn gptq_linear_loads_dequantized() {
        let dir = tempfile::tempdir().unwrap();
        let q = QuantizedLinear {
            bits: 4,
            group_size: 16,
            in_features: 24,
            out_features: 8,
            q: (0..8 * 24).map(|i| (i % 16) as u8).collect(),
            scales: (0..16).map(|i| (i + 1) as f32 / 64.0).collect(),
            zeros: (0..16).map(|i| (i % 15 + 1) as u8).collect(),
            g_idx: None,
        };
        let packed = pack_gptq_v1(&q).unwrap();
        let views: Vec<(String, TensorView)> = packed
            .iter()
            .map(|(n, d, s, b)| {
                (
                    format!("m.down.{n}"),
                    TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        let err = Linear::load(&ckpt, "m.down", 8, 24)
            .unwrap_err()
            .to_string();
        assert!(err.contains("config.json"), "{err}");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 16, "sym": false}}"#,
        )
        .unwrap();
        let l = Linear::load(&ckpt, "m.down", 8, 24).unwrap();
        assert_eq!(&l.weight[..], &q.dequantize()[..]);
        let err = Linear::load(&ckpt, "m.down", 8, 32)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected [8, 32]"), "{err}");
    }
}
