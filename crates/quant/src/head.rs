//! The opt-in quantized lm_head and embeddings of the stream, with Olive 0.13's semantics (`lm_head: true` in the Rtn and GPTQ
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
//! Embeddings (Olive's `embeds: true`, Rtn only as in Olive): RTN of `model.embed_tokens` [vocab, hidden] in
//! Olive's own layout (QuantEmbedding = QuantLinear's tensors), the only layout with quantized embeddings. Tied
//! models: lm_head and embeddings both quantized stay tied (the lm_head reads the quantized embedding, as Olive's
//! `tie_quant_word_embeddings` does); one side alone unties them (the other keeps the float weight).
//!
//! Memory: the [vocab, hidden] weight is converted to f32 and quantized in blocks of [`BLOCK_ROWS`] rows (rows
//! are independent given the grid and the Hessian); only the u8 levels of the whole head are held.

use olive_kernels::cpu::rmsnorm;
use olive_model::checkpoint::to_f32;
use olive_model::quantized::QuantizedLinear;
use olive_model::{Checkpoint, ModelConfig, ModelError};

use serde_json::Value;

use crate::error::{QuantError, Result};
use crate::gptq::{GptqOptions, GptqSolver, Hessian};
use crate::grid::QuantSpec;
use crate::rtn::rtn;
use crate::stream::{Event, Method, OutputFormat};
use crate::writer::OutTensor;

/// Output rows converted to f32 and quantized at a time (a multiple of 32: whole GPTQ v1 zero-point words at
/// any bit width).
pub const BLOCK_ROWS: usize = 4096;

/// Where the lm_head's float weight comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    /// The module written: `lm_head` or `model.embed_tokens`.
    pub prefix: &'static str,
    /// `lm_head.weight`, or `model.embed_tokens.weight` for a tied model or the embeddings.
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
        ckpt.raw_shaped(source, &[vocab, hidden])?;
        Ok(Head {
            prefix: "lm_head",
            source: source.into(),
            tied,
            vocab,
            hidden,
        })
    }

    /// The embedding table; `tied` when the model's lm_head reads it.
    pub fn embedding(ckpt: &Checkpoint, config: &ModelConfig) -> Result<Head> {
        let (vocab, hidden) = (config.vocab_size, config.hidden_size);
        let source = "model.embed_tokens.weight";
        ckpt.raw_shaped(source, &[vocab, hidden])?;
        Ok(Head {
            prefix: "model.embed_tokens",
            source: source.into(),
            tied: config.tie_word_embeddings && !ckpt.contains("lm_head.weight"),
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

/// The lm_head and the embeddings the stream quantizes besides the decoder layers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tables {
    /// The lm_head quantized on its own (`None` when it stays float or stays tied to a quantized embedding).
    pub head: Option<Head>,
    pub embeds: Option<Head>,
    /// A tied model with both sides quantized: the lm_head reads the quantized embedding.
    pub tied_head: bool,
}

/// The tensors the tables add to the last shard, the input tensors they replace, and config.json edits.
#[derive(Debug, Default)]
pub(crate) struct TablesOut {
    pub tensors: Vec<OutTensor<'static>>,
    pub replaced: Vec<String>,
    pub edits: Vec<(&'static str, Value)>,
    pub quantized: usize,
}

impl Tables {
    /// Which tables to quantize for the options `lm_head` and `embeds`.
    pub fn plan(
        ckpt: &Checkpoint,
        config: &ModelConfig,
        lm_head: bool,
        embeds: bool,
    ) -> Result<Tables> {
        let embeds = embeds.then(|| Head::embedding(ckpt, config)).transpose()?;
        // tied and both quantized: the lm_head is the quantized embedding
        let tied_head = lm_head && embeds.as_ref().is_some_and(|e| e.tied);
        let head = match tied_head {
            true => None,
            false => lm_head.then(|| Head::find(ckpt, config)).transpose()?,
        };
        Ok(Tables {
            head,
            embeds,
            tied_head,
        })
    }

    /// Whether the lm_head is quantized (alone or through the tied embedding).
    pub fn lm_head_quantized(&self) -> bool {
        self.head.is_some() || self.tied_head
    }

    /// Both quantized sides of a tied model stay tied.
    pub fn stay_tied(&self) -> bool {
        self.tied_head
    }

    /// Quantizes the tables (GPTQ for the lm_head of a GPTQ run with calibration `hidden`, else RTN), packed as
    /// `format`; `fit` adjusts each block to the layout.
    #[allow(clippy::too_many_arguments)]
    pub fn quantize(
        &self,
        ckpt: &Checkpoint,
        config: &ModelConfig,
        spec: &QuantSpec,
        method: &Method,
        hidden: &[f32],
        format: OutputFormat,
        fit: &dyn Fn(&mut QuantizedLinear),
        events: &mut dyn FnMut(Event<'_>) -> bool,
    ) -> Result<TablesOut> {
        let mut out = TablesOut::default();
        for (table, gptq) in [
            (
                self.head.as_ref(),
                match method {
                    Method::Gptq(g) if !hidden.is_empty() => Some((g, hidden)),
                    _ => None,
                },
            ),
            (self.embeds.as_ref(), None),
        ] {
            let Some(t) = table else { continue };
            let t0 = std::time::Instant::now();
            let (q, error) = t.quantize(ckpt, config, spec, gptq, fit)?;
            let untie = t.tied && !self.stay_tied();
            let line = format!(
                "{} [{}, {}]: {} weight error {error:.3e} ({:.1} s){}",
                t.prefix,
                t.vocab,
                t.hidden,
                if gptq.is_some() { "GPTQ" } else { "RTN" },
                t0.elapsed().as_secs_f64(),
                if untie {
                    "; untied (tie_word_embeddings false)"
                } else if t.tied {
                    "; the lm_head stays tied to it"
                } else {
                    ""
                }
            );
            if !events(Event::Log(&line)) {
                return Err(QuantError::Cancelled);
            }
            let dtype = ckpt.raw(&t.source)?.dtype;
            let packed = match format {
                OutputFormat::Olive => olive_model::quantized::pack_olive(&q, spec.sym, dtype),
                _ => olive_model::quantized::pack_gptq_v1(&q),
            }
            .map_err(|source| QuantError::Pack {
                module: t.prefix.into(),
                source,
            })?;
            for (suffix, dtype, shape, bytes) in packed {
                out.tensors.push(OutTensor {
                    name: format!("{}.{suffix}", t.prefix),
                    dtype,
                    shape,
                    bytes: bytes.into(),
                });
            }
            out.replaced.push(format!("{}.weight", t.prefix));
            out.quantized += 1;
            if untie {
                out.edits = vec![("tie_word_embeddings", Value::Bool(false))];
                if t.prefix == "model.embed_tokens" {
                    // the float lm_head keeps the original embedding
                    let raw = ckpt.raw(&t.source)?;
                    out.tensors.push(OutTensor {
                        name: "lm_head.weight".into(),
                        dtype: raw.dtype,
                        shape: raw.shape.to_vec(),
                        bytes: raw.bytes.to_vec().into(),
                    });
                    ckpt.release(&t.source);
                }
            }
        }
        Ok(out)
    }
}
