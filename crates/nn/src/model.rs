//! The whole decoder: token embeddings, the decoder layers, the final RMSNorm and the lm_head
//! (tied to the embeddings or separate), as transformers' `LlamaForCausalLM` and its Mistral,
//! Phi-3 and Qwen2 siblings compute them; with a hook on each layer's input for calibration.

use std::path::Path;

use olive_kernels::cpu::int4::{int4_matmul_into, Activations, Int4Matrix};
use olive_kernels::cpu::{matmul, rmsnorm};
use olive_model::quantized::is_quantized;
use olive_model::{Checkpoint, ModelConfig};
use tracing::{debug, info};

use crate::buffer::WeightBuf;
use crate::cache::KvCache;
use crate::error::{NnError, Result};
use crate::int4::rtn_int4;
use crate::layer::{DecoderLayer, LayerDims};
use crate::linear::{load_matrix, load_vector, Linear, QuantizedWeights};
use crate::rope::Rope;

/// Which rows of logits a forward pass computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogitRows {
    /// One row per input token.
    All,
    /// Only the last token's row (decoding needs nothing else).
    Last,
}

/// A Llama-family causal LM with f32 weights.
#[derive(Debug, Clone)]
pub struct Transformer {
    config: ModelConfig,
    /// embed_tokens: [vocab, hidden]
    embed_tokens: WeightBuf,
    layers: Vec<DecoderLayer>,
    /// norm: [hidden]
    norm: Vec<f32>,
    /// lm_head: [vocab, hidden]; None when tied to `embed_tokens`.
    lm_head: Option<WeightBuf>,
    /// The lm_head rounded to int4 ([`Transformer::round_lm_head_int4`]): used for the logits
    /// instead of the float one.
    lm_head_int4: Option<Int4Matrix>,
    rope: Rope,
}

/// A [vocab, hidden] table (`<prefix>.weight`, or a quantized one in any layout crates/model reads, dequantized).
pub(crate) fn table(
    ckpt: &Checkpoint,
    prefix: &str,
    vocab: usize,
    hidden: usize,
) -> Result<WeightBuf> {
    if is_quantized(ckpt, prefix) {
        Ok(Linear::load(ckpt, prefix, vocab, hidden)?.weight)
    } else {
        load_matrix(ckpt, &format!("{prefix}.weight"), &[vocab, hidden])
    }
}

impl Transformer {
    /// Loads a Hugging Face folder (config.json and safetensors).
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_with(dir, QuantizedWeights::Dequantize)
    }

    /// [`Transformer::load`], keeping quantized linears as `mode` says.
    pub fn load_with(dir: &Path, mode: QuantizedWeights) -> Result<Self> {
        let config = ModelConfig::from_folder(dir)?;
        let ckpt = Checkpoint::open(dir)?;
        Self::from_checkpoint_with(config, &ckpt, mode)
    }

    /// Builds the model from a parsed config and an opened checkpoint.
    pub fn from_checkpoint(config: ModelConfig, ckpt: &Checkpoint) -> Result<Self> {
        Self::from_checkpoint_with(config, ckpt, QuantizedWeights::Dequantize)
    }

    /// [`Transformer::from_checkpoint`], keeping quantized linears as `mode` says.
    pub fn from_checkpoint_with(
        config: ModelConfig,
        ckpt: &Checkpoint,
        mode: QuantizedWeights,
    ) -> Result<Self> {
        let (vocab, hidden) = (config.vocab_size, config.hidden_size);
        let embed_tokens = table(ckpt, "model.embed_tokens", vocab, hidden)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| DecoderLayer::load_with(ckpt, &config, i, mode))
            .collect::<Result<Vec<_>>>()?;
        let norm = load_vector(ckpt, "model.norm.weight", hidden)?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(table(ckpt, "lm_head", vocab, hidden)?)
        };
        debug!(
            folder = %ckpt.folder().display(),
            layers = layers.len(),
            tied = lm_head.is_none(),
            "loaded transformer"
        );
        Ok(Transformer {
            rope: Rope::new(&config),
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            lm_head_int4: None,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn layers(&self) -> &[DecoderLayer] {
        &self.layers
    }

    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// The decoder layers, for changing their weights (merging an adapter).
    pub fn layers_mut(&mut self) -> &mut [DecoderLayer] {
        &mut self.layers
    }

    /// Bytes of the decoder layers' linear weights (dense f32 or packed).
    pub fn linear_weight_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| [&l.qkv_proj, &l.o_proj, &l.gate_up_proj, &l.down_proj])
            .map(|lin| lin.weight_bytes())
            .sum()
    }

    /// The final RMSNorm's weight: [hidden].
    pub fn final_norm(&self) -> &[f32] {
        &self.norm
    }

    /// The lm_head weight: [vocab, hidden] (the token embeddings when tied).
    pub fn lm_head(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embed_tokens)
    }

    /// The int4 lm_head the logits come from, after [`Transformer::round_lm_head_int4`].
    pub fn lm_head_int4(&self) -> Option<&Int4Matrix> {
        self.lm_head_int4.as_ref()
    }

    /// Rounds the float lm_head to int4 (RTN, blocks of 32) as onnxruntime-genai's int4 exports do, when the
    /// decoder linears are int4 ([`QuantizedWeights::Int4`]): it is most of the bytes a decode step reads.
    /// The logits are then no longer the checkpoint's. Returns whether it did.
    pub fn round_lm_head_int4(&mut self) -> bool {
        if !self.layers.iter().any(|l| l.qkv_proj.int4.is_some()) {
            info!("lm_head stays float: the decoder linears are not int4");
            return false;
        }
        let (vocab, hidden) = (self.config.vocab_size, self.config.hidden_size);
        let head = self.lm_head.as_deref().unwrap_or(&self.embed_tokens);
        match rtn_int4(head, vocab, hidden) {
            Ok(m) => {
                self.lm_head_int4 = Some(m);
                true
            }
            Err(why) => {
                info!("lm_head stays float: the CPU int4 kernels cannot take it ({why})");
                false
            }
        }
    }

    /// The token embeddings: [vocab, hidden].
    pub fn embed_tokens(&self) -> &[f32] {
        &self.embed_tokens
    }

    /// Whether the lm_head is the token embeddings.
    pub fn tied(&self) -> bool {
        self.lm_head.is_none()
    }

    /// An empty KV cache with room for `capacity` tokens (it grows past that if needed).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let width = LayerDims::from_config(&self.config).kv_width();
        KvCache::new(self.layers.len(), width, capacity)
    }

    /// Logits: [tokens.len(), vocab] for `tokens` at positions `cache.len() ..`; appends them to
    /// the cache. Prefill any length, then decode a token at a time.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        self.run(tokens, cache, LogitRows::All, &mut |_, _| {})?;
        Ok(cache.logits.clone())
    }

    /// Logits of the last token only: [vocab], kept in the cache (nothing is allocated once the
    /// cache's buffers have grown: the decode loop's call).
    pub fn forward_last<'c>(&self, tokens: &[u32], cache: &'c mut KvCache) -> Result<&'c [f32]> {
        self.run(tokens, cache, LogitRows::Last, &mut |_, _| {})?;
        Ok(&cache.logits)
    }

    /// [`Transformer::forward`], calling `hook(layer_index, hidden)` with each decoder layer's
    /// input hidden states ([tokens, hidden]) before the layer runs.
    pub fn forward_with_hook(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        hook: &mut (dyn FnMut(usize, &[f32]) + Send),
    ) -> Result<Vec<f32>> {
        self.run(tokens, cache, LogitRows::All, hook)?;
        Ok(cache.logits.clone())
    }

    /// Token embeddings: out = [tokens.len(), hidden].
    pub fn embed(&self, tokens: &[u32], out: &mut Vec<f32>) -> Result<()> {
        let hidden = self.config.hidden_size;
        out.clear();
        for &t in tokens {
            let row = self
                .embed_tokens
                .get(t as usize * hidden..(t as usize + 1) * hidden)
                .ok_or(NnError::TokenOutOfRange {
                    token: t,
                    vocab_size: self.config.vocab_size,
                })?;
            out.extend_from_slice(row);
        }
        Ok(())
    }

    /// The forward pass; leaves the logits in `cache.logits` ([rows, vocab]).
    pub(crate) fn run(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        rows: LogitRows,
        hook: &mut (dyn FnMut(usize, &[f32]) + Send),
    ) -> Result<()> {
        // Run the pass on a rayon worker: the ~150 parallel kernels of a decode step then start
        // from inside the pool instead of each waking a blocked caller thread.
        rayon::scope(|_| self.run_in_pool(tokens, cache, rows, hook))
    }

    fn run_in_pool(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        rows: LogitRows,
        hook: &mut (dyn FnMut(usize, &[f32]) + Send),
    ) -> Result<()> {
        let width = LayerDims::from_config(&self.config).kv_width();
        let found_width = cache.layers.first().map_or(width, |l| l.width());
        if cache.layers.len() != self.layers.len() || found_width != width {
            return Err(NnError::CacheMismatch {
                found_layers: cache.layers.len(),
                found_width,
                layers: self.layers.len(),
                width,
            });
        }
        let (hidden_size, vocab) = (self.config.hidden_size, self.config.vocab_size);
        let KvCache {
            layers: layer_caches,
            workspace,
            tables,
            hidden,
            final_normed,
            logits,
        } = cache;
        let start = layer_caches.first().map_or(0, |l| l.len());
        // hidden: [tokens, hidden]
        self.embed(tokens, hidden)?;
        self.rope.fill_tables(start, tokens.len(), tables);
        for (i, (layer, lc)) in self.layers.iter().zip(layer_caches.iter_mut()).enumerate() {
            hook(i, hidden);
            layer.forward(hidden, tables, lc, workspace)?;
        }
        let kept = match rows {
            LogitRows::All => &hidden[..],
            LogitRows::Last => &hidden[hidden.len().saturating_sub(hidden_size)..],
        };
        let m = kept.len() / hidden_size;
        final_normed.resize(m * hidden_size, 0.0); // [m, hidden]
        rmsnorm(
            kept,
            &self.norm,
            self.config.rms_norm_eps as f32,
            final_normed,
        );
        logits.resize(m * vocab, 0.0); // [m, vocab]
        match &self.lm_head_int4 {
            Some(head) => int4_matmul_into(final_normed, m, head, Activations::Int8, logits),
            None => {
                let head = self.lm_head.as_deref().unwrap_or(&self.embed_tokens);
                matmul(final_normed, head, logits, m, hidden_size, vocab);
            }
        }
        Ok(())
    }
}
