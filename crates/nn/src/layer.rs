//! One Llama-family decoder layer (pre-norm): `h += o_proj(attn(rope(qkv(rmsnorm(h)))))`, then
//! `h += down(silu(gate) * up)(rmsnorm(h))`, as transformers' LlamaDecoderLayer (and the Mistral,
//! Phi-3 and Qwen2 variants: sliding window, fused projections, q/k/v bias) computes it.

use olive_kernels::cpu::{attention, rmsnorm, rope_apply, silu_mul, AttentionDims, RopeLayout};
use olive_model::{Checkpoint, ModelConfig};

use crate::cache::LayerCache;
use crate::error::{NnError, Result};
use crate::linear::{load_fused_or_split, load_vector, Linear, QuantizedWeights};
use crate::rope::RopeTables;

/// Where a probe sees the input of a group of linear layers (what a quantizer calibrates on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbePoint {
    /// Input of q/k/v (`input_layernorm` output): [tokens, hidden].
    Qkv,
    /// Input of o_proj (attention output): [tokens, heads · head_dim].
    O,
    /// Input of gate/up (`post_attention_layernorm` output): [tokens, hidden].
    GateUp,
    /// Input of down_proj (`silu(gate) * up`): [tokens, intermediate].
    Down,
}

/// Sizes of one layer, from config.json.
#[derive(Debug, Clone, Copy)]
pub struct LayerDims {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub rotary_dim: usize,
    pub rms_norm_eps: f32,
    pub sliding_window: Option<usize>,
}

impl LayerDims {
    pub fn from_config(config: &ModelConfig) -> Self {
        LayerDims {
            hidden: config.hidden_size,
            heads: config.num_attention_heads,
            kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim,
            intermediate: config.intermediate_size,
            rotary_dim: config.rotary_dim(),
            rms_norm_eps: config.rms_norm_eps as f32,
            sliding_window: config.sliding_window,
        }
    }

    /// Floats of the query part of a qkv row.
    pub fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Floats a token of the KV cache holds (for k, and again for v).
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// Scratch buffers of a forward pass; they grow to the largest call and are then reused.
#[derive(Debug, Clone, Default)]
pub struct Workspace {
    normed: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
}

/// The first `n` floats of `buf`, growing it when needed.
fn take(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
    &mut buf[..n]
}

/// The weights of one decoder layer, projections fused (Phi-3's layout, whatever the checkpoint's).
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub dims: LayerDims,
    /// input_layernorm: [hidden]
    pub input_layernorm: Vec<f32>,
    /// qkv_proj: [q_width + 2 · kv_width, hidden], rows q, then k, then v.
    pub qkv_proj: Linear,
    /// o_proj: [hidden, q_width]
    pub o_proj: Linear,
    /// post_attention_layernorm: [hidden]
    pub post_attention_layernorm: Vec<f32>,
    /// gate_up_proj: [2 · intermediate, hidden], rows gate, then up.
    pub gate_up_proj: Linear,
    /// down_proj: [hidden, intermediate]
    pub down_proj: Linear,
}

impl DecoderLayer {
    /// Loads layer `index` (`model.layers.{index}.*`), from fused (Phi-3) or separate projections.
    pub fn load(ckpt: &Checkpoint, config: &ModelConfig, index: usize) -> Result<Self> {
        Self::load_with(ckpt, config, index, QuantizedWeights::Dequantize)
    }

    /// [`DecoderLayer::load`], keeping quantized linears as `mode` says.
    pub fn load_with(
        ckpt: &Checkpoint,
        config: &ModelConfig,
        index: usize,
        mode: QuantizedWeights,
    ) -> Result<Self> {
        let dims = LayerDims::from_config(config);
        let p = format!("model.layers.{index}");
        let (h, q, kv, inter) = (
            dims.hidden,
            dims.q_width(),
            dims.kv_width(),
            dims.intermediate,
        );
        let attn = format!("{p}.self_attn");
        let mlp = format!("{p}.mlp");
        Ok(DecoderLayer {
            dims,
            input_layernorm: load_vector(ckpt, &format!("{p}.input_layernorm.weight"), h)?,
            qkv_proj: load_fused_or_split(
                ckpt,
                &format!("{attn}.qkv_proj"),
                &[
                    (&format!("{attn}.q_proj"), q),
                    (&format!("{attn}.k_proj"), kv),
                    (&format!("{attn}.v_proj"), kv),
                ],
                h,
                mode,
            )?,
            o_proj: Linear::load_fused_with(ckpt, &[(&format!("{attn}.o_proj"), h)], q, mode)?,
            post_attention_layernorm: load_vector(
                ckpt,
                &format!("{p}.post_attention_layernorm.weight"),
                h,
            )?,
            gate_up_proj: load_fused_or_split(
                ckpt,
                &format!("{mlp}.gate_up_proj"),
                &[
                    (&format!("{mlp}.gate_proj"), inter),
                    (&format!("{mlp}.up_proj"), inter),
                ],
                h,
                mode,
            )?,
            down_proj: Linear::load_fused_with(
                ckpt,
                &[(&format!("{mlp}.down_proj"), h)],
                inter,
                mode,
            )?,
        })
    }

    /// Runs the layer on `hidden` ([tokens, hidden], updated in place) at positions
    /// `cache.len() ..`, appending their keys and values to `cache`; `rope` must cover those positions.
    pub fn forward(
        &self,
        hidden: &mut [f32],
        rope: &RopeTables,
        cache: &mut LayerCache,
        ws: &mut Workspace,
    ) -> Result<()> {
        self.forward_probed(hidden, rope, cache, ws, &mut |_, _| {})
    }

    /// [`DecoderLayer::forward`], showing `probe` the input of each group of linear layers.
    pub fn forward_probed(
        &self,
        hidden: &mut [f32],
        rope: &RopeTables,
        cache: &mut LayerCache,
        ws: &mut Workspace,
        probe: &mut dyn FnMut(ProbePoint, &[f32]),
    ) -> Result<()> {
        let d = self.dims;
        if !hidden.len().is_multiple_of(d.hidden) {
            return Err(NnError::HiddenShape {
                len: hidden.len(),
                hidden_size: d.hidden,
            });
        }
        let tokens = hidden.len() / d.hidden;
        if rope.start() != cache.len() || rope.len() != tokens {
            return Err(NnError::PositionMismatch {
                table_start: rope.start(),
                table_len: rope.len(),
                cache_len: cache.len(),
                tokens,
            });
        }
        let Workspace {
            normed,
            qkv,
            attn,
            proj,
            gate_up,
            act,
        } = ws;

        // Attention block.
        let normed = take(normed, tokens * d.hidden); // [tokens, hidden]
        rmsnorm(hidden, &self.input_layernorm, d.rms_norm_eps, normed);
        probe(ProbePoint::Qkv, normed);
        let attn = take(attn, tokens * d.q_width()); // [tokens, heads · head_dim]
        self.attention_core(normed, rope, cache, qkv, attn);
        probe(ProbePoint::O, attn);
        let proj = take(proj, tokens * d.hidden); // [tokens, hidden]
        self.o_proj.forward(attn, proj);
        add_assign(hidden, proj);

        // MLP block.
        rmsnorm(
            hidden,
            &self.post_attention_layernorm,
            d.rms_norm_eps,
            normed,
        );
        probe(ProbePoint::GateUp, normed);
        let act = take(act, tokens * d.intermediate); // [tokens, intermediate]
        self.mlp_core(normed, gate_up, act);
        probe(ProbePoint::Down, act);
        self.down_proj.forward(act, proj);
        add_assign(hidden, proj);
        Ok(())
    }

    /// The attention block up to o_proj's input (what a quantizer inspects one block at a time):
    /// out: [tokens, heads · head_dim] from `normed` ([tokens, hidden], input_layernorm's output) at
    /// positions `cache.len() ..`, appending their keys and values to `cache`.
    pub fn attention_context(
        &self,
        normed: &[f32],
        rope: &RopeTables,
        cache: &mut LayerCache,
        ws: &mut Workspace,
        out: &mut [f32],
    ) -> Result<()> {
        let d = self.dims;
        let tokens = normed.len() / d.hidden.max(1);
        if normed.len() != tokens * d.hidden || out.len() != tokens * d.q_width() {
            return Err(NnError::HiddenShape {
                len: normed.len(),
                hidden_size: d.hidden,
            });
        }
        if rope.start() != cache.len() || rope.len() != tokens {
            return Err(NnError::PositionMismatch {
                table_start: rope.start(),
                table_len: rope.len(),
                cache_len: cache.len(),
                tokens,
            });
        }
        self.attention_core(normed, rope, cache, &mut ws.qkv, out);
        Ok(())
    }

    /// The MLP block up to down_proj's input: out: [tokens, intermediate] = silu(gate) · up of
    /// `normed` ([tokens, hidden], post_attention_layernorm's output).
    pub fn mlp_activation(&self, normed: &[f32], ws: &mut Workspace, out: &mut [f32]) {
        self.mlp_core(normed, &mut ws.gate_up, out);
    }

    /// q/k/v, RoPE, cache append and attention: out [tokens, q_width] from normed [tokens, hidden].
    fn attention_core(
        &self,
        normed: &[f32],
        rope: &RopeTables,
        cache: &mut LayerCache,
        qkv: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let d = self.dims;
        let tokens = normed.len() / d.hidden;
        let (q, kv) = (d.q_width(), d.kv_width());
        let qkv_width = q + 2 * kv;
        let qkv = take(qkv, tokens * qkv_width); // [tokens, q + 2·kv]
        self.qkv_proj.forward(normed, qkv);
        // q and k heads sit side by side at the start of each row: rotate them together.
        let layout = RopeLayout {
            row_stride: qkv_width,
            heads: d.heads + d.kv_heads,
            head_dim: d.head_dim,
            rotary_dim: d.rotary_dim,
        };
        rope_apply(qkv, layout, rope.cos(), rope.sin());
        for row in qkv.chunks_exact(qkv_width) {
            cache.push(&row[q..q + kv], &row[q + kv..]);
        }
        let dims = AttentionDims {
            heads: d.heads,
            kv_heads: d.kv_heads,
            head_dim: d.head_dim,
            q_stride: qkv_width,
        };
        let scale = (d.head_dim as f32).powf(-0.5);
        attention(
            qkv,
            cache.keys(),
            cache.values(),
            dims,
            d.sliding_window,
            scale,
            out,
        );
    }

    /// gate_up and silu · up: out [tokens, intermediate] from normed [tokens, hidden].
    fn mlp_core(&self, normed: &[f32], gate_up: &mut Vec<f32>, out: &mut [f32]) {
        let d = self.dims;
        let tokens = normed.len() / d.hidden;
        let gate_up = take(gate_up, tokens * 2 * d.intermediate); // [tokens, 2·intermediate]
        self.gate_up_proj.forward(normed, gate_up);
        silu_mul(gate_up, out, d.intermediate);
    }
}

fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
