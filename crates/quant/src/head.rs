//! The opt-in quantized lm_head of the stream, with Olive 0.13's semantics (`lm_head: true` in the Rtn and GPTQ
//! passes, olive/passes/pytorch/quant_utils.py `prepare_model` / `run_layerwise_quantization`): after the last
//! decoder layer, GPTQ takes the Hessian of the final norm's output (model.norm applied to the last layer's
//! output, the lm_head's input), RTN needs none. A tied model is untied (lm_head.* written, the embedding kept
//! float, `tie_word_embeddings: false`), as Olive's `maybe_untie_word_embeddings` does. Written in the GPTQ v1
//! layout with `lm_head: true` in quantization_config, GPTQModel's key (gptqmodel/quantization/config.py).
//!
//! AWQ: the lm_head gets RTN on the same grid. AutoAWQ (and Olive's AutoAWQ pass) never quantize the lm_head,
//! so there is no reference recipe; AWQ's scale search would fold its scales into model.norm, but scoring each
//! ratio means a [tokens, vocab] product per grid point (49152 outputs: ~20× the cost of a whole decoder layer
//! of the default model), while the lm_head's input has no massive-activation channels left after the final
//! norm for the scales to protect. RTN keeps the AWQ run's time and is what Olive's Rtn pass does for it.
//!
//! Memory: the [vocab, hidden] weight is converted to f32 and quantized in blocks of [`BLOCK_ROWS`] rows (rows
//! are independent given the grid and the Hessian); only the u8 levels of the whole head are held.

use olive_kernels::cpu::rmsnorm;
use olive_model::checkpoint::to_f32;
use olive_model::quantized::QuantizedLinear;
use olive_model::{Checkpoint, ModelConfig, ModelError};

use crate::error::{QuantError, Result};
use crate::gptq::{GptqOptions, GptqSolver, Hessian};
use crate::grid::QuantSpec;
use crate::rtn::rtn;

/// Output rows converted to f32 and quantized at a time (a multiple of 32: whole GPTQ v1 zero-point words at
/// any bit width).
pub const BLOCK_ROWS: usize = 4096;

/// Where the lm_head's float weight comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    /// `lm_head.weight`, or `model.embed_tokens.weight` for a tied model.
    pub source: String,
    /// The model ties lm_head to the embedding: the output unties it.
    pub tied: bool,
    pub vocab: usize,
    pub hidden: usize,
}

impl Head {
    /// The lm_head of the checkpoint: its own weight, else the tied embedding.
    pub fn find(ckpt: &Checkpoint, config: &ModelConfig) -> Result<Head> {
        let (vocab, hidden) = (config.vocab_size, config.hidden_size);
        let (source, tied) = if ckpt.contains("lm_head.weight") {
            ("lm_head.weight", false)
        } else if config.tie_word_embeddings {
            ("model.embed_tokens.weight", true)
        } else {
            return Err(QuantError::Unsupported(format!(
                "lm_head: {} has no lm_head.weight and config.json does not tie it to the embeddings",
                ckpt.folder().display()
            )));
        };
        let raw = ckpt.raw(source)?;
        if raw.shape != [vocab, hidden] {
            return Err(ModelError::BadTensor {
                path: ckpt.file_of(source).unwrap_or(ckpt.folder()).to_path_buf(),
                name: source.into(),
                reason: format!("shape {:?}, expected [{vocab}, {hidden}]", raw.shape),
            }
            .into());
        }
        Ok(Head {
            source: source.into(),
            tied,
            vocab,
            hidden,
        })
    }

    /// Quantizes the lm_head: GPTQ with the Hessian of `model.norm(hidden)` when `gptq` is given (`hidden`:
    /// the last layer's outputs on the calibration tokens, [tokens, hidden]), else RTN. `fit` adjusts each
    /// block to the output layout. Returns the linear and ‖W_q − W‖² / ‖W‖².
    pub fn quantize(
        &self,
        ckpt: &Checkpoint,
        config: &ModelConfig,
        spec: &QuantSpec,
        gptq: Option<(&GptqOptions, &[f32])>,
        fit: &dyn Fn(&mut QuantizedLinear),
    ) -> Result<(QuantizedLinear, f64)> {
        let solver = match gptq {
            Some((opts, hidden)) => {
                let norm = ckpt
                    .tensor_f32_shaped("model.norm.weight", &[self.hidden])?
                    .data;
                // x: [tokens, hidden], the lm_head's input
                let mut x = vec![0f32; hidden.len()];
                rmsnorm(hidden, &norm, config.rms_norm_eps as f32, &mut x);
                let mut h = Hessian::new(self.hidden);
                h.add(&x);
                drop(x);
                Some(GptqSolver::from_hessian(h, opts)?)
            }
            None => None,
        };
        let raw = ckpt.raw(&self.source)?;
        let row_bytes = raw.bytes.len() / self.vocab;
        let groups = spec.n_groups(self.hidden);
        let mut out = QuantizedLinear {
            bits: spec.bits,
            group_size: spec.group_len(self.hidden),
            in_features: self.hidden,
            out_features: self.vocab,
            q: Vec::with_capacity(self.vocab * self.hidden),
            scales: Vec::with_capacity(self.vocab * groups),
            zeros: Vec::with_capacity(self.vocab * groups),
            g_idx: None,
        };
        let (mut diff, mut norm) = (0f64, 0f64);
        for r0 in (0..self.vocab).step_by(BLOCK_ROWS) {
            let r1 = (r0 + BLOCK_ROWS).min(self.vocab);
            // w: [r1 - r0, hidden]
            let w =
                to_f32(raw.dtype, &raw.bytes[r0 * row_bytes..r1 * row_bytes]).ok_or_else(|| {
                    ModelError::BadTensor {
                        path: ckpt
                            .file_of(&self.source)
                            .unwrap_or(ckpt.folder())
                            .to_path_buf(),
                        name: self.source.clone(),
                        reason: format!("dtype {:?}, expected F32, F16 or BF16", raw.dtype),
                    }
                })?;
            let mut q = match &solver {
                Some(s) => s.quantize(&w, r1 - r0, self.hidden, spec)?.linear,
                None => rtn(&w, r1 - r0, self.hidden, spec)?,
            };
            fit(&mut q);
            for (a, b) in q.dequantize().iter().zip(&w) {
                diff += f64::from(a - b).powi(2);
                norm += f64::from(*b).powi(2);
            }
            if r0 == 0 {
                out.g_idx = q.g_idx.take();
            } else if q.g_idx != out.g_idx {
                return Err(QuantError::Unsupported(
                    "lm_head: row blocks got different act-order permutations".into(),
                ));
            }
            out.q.extend_from_slice(&q.q);
            out.scales.extend_from_slice(&q.scales);
            out.zeros.extend_from_slice(&q.zeros);
        }
        ckpt.release(&self.source);
        Ok((out, diff / norm.max(f64::MIN_POSITIVE)))
    }
}
