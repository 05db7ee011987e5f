//! One decoder layer for training: the forward pass of transformers' LlamaDecoderLayer over whole
//! padded sequences with LoRA on its linears, keeping what the backward pass reads, and the backward
//! pass itself (frozen weights: only input gradients, plus the LoRA gradients on the way).

use olive_kernels::cpu::{rmsnorm, rope_apply, silu_mul, RopeLayout};

use super::attention::{attention_backward, attention_forward, QkvLayout, QUERY_BLOCK};
use super::backward::{rmsnorm_backward, rope_backward, silu_mul_backward};
use super::lora::{self, Adapted, Dropout, Mask, Site};
use crate::layer::DecoderLayer;
use crate::linear::Linear;

/// The shape of a micro-batch and the tables every layer shares.
pub(crate) struct Batch<'a> {
    /// Tokens per row.
    pub seq: usize,
    /// attention_mask: [rows · seq].
    pub key_mask: &'a [u8],
    /// RoPE tables of positions 0 .. seq: [seq, rotary_dim / 2]; neg_sin = −sin.
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    pub neg_sin: &'a [f32],
}

impl Batch<'_> {
    fn tokens(&self) -> usize {
        self.key_mask.len()
    }
}

/// What the backward pass of a layer reads (all [tokens, ·]).
pub(crate) struct Saved {
    /// The layer's input: [tokens, hidden].
    pub x: Vec<f32>,
    n1: Vec<f32>,
    /// q and k rotated, v: [tokens, q + 2·kv].
    qkv: Vec<f32>,
    /// Attention output (o_proj's input): [tokens, q].
    attn: Vec<f32>,
    /// After the attention residual: [tokens, hidden].
    mid: Vec<f32>,
    n2: Vec<f32>,
    /// [tokens, 2·intermediate]
    gate_up: Vec<f32>,
    /// silu(gate)·up (down_proj's input): [tokens, intermediate].
    act: Vec<f32>,
    /// Each module's dropout(x)·Aᵀ ([tokens, rank]) and dropout mask (None without dropout).
    u: Vec<(Vec<f32>, Option<Mask>)>,
}

fn qkv_layout(layer: &DecoderLayer, window: Option<usize>) -> QkvLayout {
    let d = layer.dims;
    QkvLayout {
        heads: d.heads,
        kv_heads: d.kv_heads,
        head_dim: d.head_dim,
        width: d.q_width() + 2 * d.kv_width(),
        window,
        scale: (d.head_dim as f32).powf(-0.5),
        query_block: QUERY_BLOCK,
    }
}

fn rope_layout(layer: &DecoderLayer) -> RopeLayout {
    let d = layer.dims;
    RopeLayout {
        row_stride: d.q_width() + 2 * d.kv_width(),
        heads: d.heads + d.kv_heads,
        head_dim: d.head_dim,
        rotary_dim: d.rotary_dim,
    }
}

/// out: [tokens, out_features] = x·Wᵀ + b plus every module of `site`; fills their `u`.
#[allow(clippy::too_many_arguments)]
fn adapted_linear(
    lin: &Linear,
    site: Site,
    mods: &[Adapted],
    first: usize,
    x: &[f32],
    dropout: Option<Dropout>,
    u: &mut [(Vec<f32>, Option<Mask>)],
) -> Vec<f32> {
    let tokens = x.len() / lin.in_features;
    let mut out = vec![0.0; tokens * lin.out_features];
    lin.forward(x, &mut out);
    for (i, m) in mods.iter().enumerate().filter(|(_, m)| m.site == site) {
        u[i] = lora::forward(m, first + i, x, &mut out, lin.out_features, dropout);
    }
    out
}

/// dx: [tokens, in] = dy·W plus the modules' input gradients; accumulates their LoRA gradients.
fn adapted_linear_backward(
    lin: &Linear,
    site: Site,
    mods: &mut [Adapted],
    x: &[f32],
    u: &[(Vec<f32>, Option<Mask>)],
    dy: &[f32],
) -> Vec<f32> {
    let tokens = x.len() / lin.in_features;
    let mut dx = vec![0.0; tokens * lin.in_features];
    lin.backward_input(dy, &mut dx);
    for (i, m) in mods.iter_mut().enumerate().filter(|(_, m)| m.site == site) {
        let (u, mask) = &u[i];
        lora::backward(m, x, (u, mask.as_ref()), dy, lin.out_features, &mut dx);
    }
    dx
}

/// Runs `layer` (with its modules `mods`, whose global indices start at `first`) on x: [tokens,
/// hidden]; returns the output and what the backward pass needs.
pub(crate) fn forward(
    layer: &DecoderLayer,
    mods: &[Adapted],
    first: usize,
    batch: &Batch,
    x: Vec<f32>,
    dropout: Option<Dropout>,
) -> (Vec<f32>, Saved) {
    let d = layer.dims;
    let tokens = batch.tokens();
    let mut u = vec![(Vec::new(), None); mods.len()];
    let mut n1 = vec![0.0; tokens * d.hidden]; // [tokens, hidden]
    rmsnorm(&x, &layer.input_layernorm, d.rms_norm_eps, &mut n1);
    let mut qkv = adapted_linear(
        &layer.qkv_proj,
        Site::Qkv,
        mods,
        first,
        &n1,
        dropout,
        &mut u,
    );
    let rl = rope_layout(layer);
    for row in qkv.chunks_exact_mut(batch.seq * rl.row_stride) {
        rope_apply(row, rl, batch.cos, batch.sin);
    }
    let mut attn = vec![0.0; tokens * d.q_width()]; // [tokens, q]
    let ql = qkv_layout(layer, d.sliding_window);
    attention_forward(&qkv, ql, batch.key_mask, batch.seq, &mut attn);
    let mut mid = adapted_linear(&layer.o_proj, Site::O, mods, first, &attn, dropout, &mut u);
    for (m, x) in mid.iter_mut().zip(&x) {
        *m += x;
    }
    let mut n2 = vec![0.0; tokens * d.hidden];
    rmsnorm(
        &mid,
        &layer.post_attention_layernorm,
        d.rms_norm_eps,
        &mut n2,
    );
    let gate_up = adapted_linear(
        &layer.gate_up_proj,
        Site::GateUp,
        mods,
        first,
        &n2,
        dropout,
        &mut u,
    );
    let mut act = vec![0.0; tokens * d.intermediate]; // [tokens, intermediate]
    silu_mul(&gate_up, &mut act, d.intermediate);
    let mut out = adapted_linear(
        &layer.down_proj,
        Site::Down,
        mods,
        first,
        &act,
        dropout,
        &mut u,
    );
    for (o, m) in out.iter_mut().zip(&mid) {
        *o += m;
    }
    let saved = Saved {
        x,
        n1,
        qkv,
        attn,
        mid,
        n2,
        gate_up,
        act,
        u,
    };
    (out, saved)
}

/// The gradient of the layer's input from dy (the gradient of its output), both [tokens, hidden];
/// adds the LoRA gradients of `mods` along the way.
pub(crate) fn backward(
    layer: &DecoderLayer,
    mods: &mut [Adapted],
    batch: &Batch,
    s: &Saved,
    dy: &[f32],
) -> Vec<f32> {
    let d = layer.dims;
    // MLP block: out = mid + down(silu(gate)·up)(rmsnorm(mid)).
    let d_act = adapted_linear_backward(&layer.down_proj, Site::Down, mods, &s.act, &s.u, dy);
    let mut d_gate_up = vec![0.0; s.gate_up.len()];
    silu_mul_backward(&s.gate_up, &d_act, &mut d_gate_up, d.intermediate);
    let d_n2 = adapted_linear_backward(
        &layer.gate_up_proj,
        Site::GateUp,
        mods,
        &s.n2,
        &s.u,
        &d_gate_up,
    );
    let mut d_mid = dy.to_vec();
    rmsnorm_backward(
        &s.mid,
        &layer.post_attention_layernorm,
        d.rms_norm_eps,
        &d_n2,
        &mut d_mid,
    );
    // Attention block: mid = x + o_proj(attention(rope(qkv(rmsnorm(x))))).
    let d_attn = adapted_linear_backward(&layer.o_proj, Site::O, mods, &s.attn, &s.u, &d_mid);
    let mut d_qkv = vec![0.0; s.qkv.len()];
    let ql = qkv_layout(layer, d.sliding_window);
    attention_backward(&s.qkv, ql, batch.key_mask, batch.seq, &d_attn, &mut d_qkv);
    let rl = rope_layout(layer);
    for row in d_qkv.chunks_exact_mut(batch.seq * rl.row_stride) {
        rope_backward(row, rl, batch.cos, batch.neg_sin);
    }
    let d_n1 = adapted_linear_backward(&layer.qkv_proj, Site::Qkv, mods, &s.n1, &s.u, &d_qkv);
    let mut dx = d_mid;
    rmsnorm_backward(&s.x, &layer.input_layernorm, d.rms_norm_eps, &d_n1, &mut dx);
    dx
}
