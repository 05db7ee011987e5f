//! AWQ (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration") on one
//! Llama-family decoder layer in f32, as AutoAWQ computes it (casper-hansen/AutoAWQ awq/quantize/quantizer.py
//! `_search_best_scale` / `_compute_best_scale` / `_search_best_clip` / `_compute_best_clip`, scale.py
//! `apply_scale` / `apply_clip`, models/llama.py `get_layers_for_scaling`):
//! 1. per scaling group — input_layernorm → q,k,v (inspecting the whole attention block), v → o (only when v's
//!    outputs equal o's inputs: AutoAWQ skips it under GQA), post_attention_layernorm → gate,up (inspecting the
//!    MLP), up → down — a grid of `n_grid` ratios r, s = x_mean^r / (w_mean^(1−r) + 1e-4) normalised by
//!    sqrt(max·min), loss = MSE of the inspected module's output with weights Q(W·s)/s; the best s is folded
//!    into the previous op (norm weight, v rows or up rows) and the linears' columns;
//! 2. clipping: per output row and group, the max |w| shrunk over (1 − i/n_grid), i < max_shrink·n_grid, that
//!    minimises the group's output error on a token subsample; q/k are not clipped (the q·kᵀ product).
//!
//! Speed on small CPUs: the loss runs on about `loss_tokens` tokens (AutoAWQ runs all 128×512 tokens on a GPU):
//! whole calibration sequences, evenly spread, for the attention block; tokens strided over every sequence for
//! the token-wise modules. x_mean still uses every token. Clipping uses `clip_tokens`
//! evenly strided tokens, as AutoAWQ's `n_sample_token = 512`. Memory: only those subsets of the layer's inputs
//! are kept (`LayerInputs`), and each ratio's trial weight is written into the layer itself (no layer copy). Every
//! change to the layer's weights is reported to `Compute::changed`, which keeps a GPU's copy of them current.
//! On a GPU holding the layer, each scale grid and clip search runs on the device (`gpu`), the CPU code being the
//! reference it reproduces.

use std::time::Instant;

use olive_nn::{DecoderLayer, LayerDims, RopeTables};
use rayon::prelude::*;

use crate::device::{attention_context, Compute, GroupX};
use crate::error::Result;
use crate::grid::{dequantize_value, group_params, quantize_value, QuantSpec};

mod gpu;
mod scales;

use scales::{ratio_scales, weight_abs_mean};

/// AWQ's search settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AwqOptions {
    /// Ratios tried by the scale search and shrink steps of the clip search (AutoAWQ: 20).
    pub n_grid: usize,
    /// s = x_mean^r / w_mean^(1−r) (AutoAWQ's default `duo_scaling`); false: s = x_mean^r.
    pub duo_scaling: bool,
    /// Run the clipping search (AutoAWQ's `apply_clip`, default on).
    pub apply_clip: bool,
    /// Largest fraction of max |w| the clip search removes (AutoAWQ: 0.5).
    pub max_shrink: f32,
    /// Calibration tokens the scale-search loss runs on (whole sequences, evenly spread).
    pub loss_tokens: usize,
    /// Tokens the clip search runs on (evenly strided).
    pub clip_tokens: usize,
}

impl Default for AwqOptions {
    fn default() -> Self {
        AwqOptions {
            n_grid: 20,
            duo_scaling: true,
            apply_clip: true,
            max_shrink: 0.5,
            loss_tokens: 1024,
            clip_tokens: 512,
        }
    }
}

/// Which linear group an input feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputOf {
    /// input_layernorm's output: q, k, v.
    Qkv,
    /// the attention context: o.
    O,
    /// post_attention_layernorm's output: gate, up.
    GateUp,
    /// silu(gate) · up: down.
    Down,
}

/// One linear group's input on the calibration tokens, reduced to what the search reads.
#[derive(Debug, Clone, Default)]
struct GroupInput {
    /// Mean |x| per input channel over every calibration token: [in].
    abs_mean: Vec<f32>,
    /// The rows the scale-search loss runs on: [loss rows, in].
    loss: Vec<f32>,
    /// The rows the clip search runs on: [clip rows, in].
    clip: Vec<f32>,
}

impl GroupInput {
    /// Multiplies column i of the kept rows by f[i].
    fn scale(&mut self, f: &[f32]) {
        scale_columns(&mut self.loss, f);
        scale_columns(&mut self.clip, f);
    }
}

/// The inputs of a layer's linear groups from the floating-point forward, kept as AWQ reads them: the mean |x|
/// over every token, and the loss and clip subsets (not the whole [tokens, in] inputs).
#[derive(Debug, Clone)]
pub struct LayerInputs {
    dims: LayerDims,
    seq_len: usize,
    loss_tokens: usize,
    clip_tokens: usize,
    qkv: GroupInput,
    o: GroupInput,
    gate_up: GroupInput,
    down: GroupInput,
}

impl LayerInputs {
    /// Empty inputs of a layer with `dims`, calibration windows of `seq_len` tokens.
    pub fn new(dims: LayerDims, seq_len: usize, opts: &AwqOptions) -> Self {
        LayerInputs {
            dims,
            seq_len,
            loss_tokens: opts.loss_tokens,
            clip_tokens: opts.clip_tokens,
            qkv: GroupInput::default(),
            o: GroupInput::default(),
            gate_up: GroupInput::default(),
            down: GroupInput::default(),
        }
    }

    /// Keeps what the search reads of a group's input x: [tokens, in], whole windows of `seq_len`; the loss
    /// rows are whole windows, evenly spread, for the attention block (q/k/v), and tokens strided over every
    /// window for the token-wise modules (more varied tokens for the same cost).
    pub fn record(&mut self, group: InputOf, x: &[f32]) -> Result<()> {
        self.record_from(&Compute::cpu(), group, &GroupX::Host(x))
    }

    /// [`LayerInputs::record`] for x where the layer's forward left it: on a GPU the means and the kept rows are
    /// taken there, and only they come back.
    pub(crate) fn record_from(
        &mut self,
        compute: &Compute,
        group: InputOf,
        x: &GroupX<'_>,
    ) -> Result<()> {
        let width = self.width(group);
        let (loss, clip) = self.kept_rows(group, x.len() / width.max(1));
        *self.input_mut(group) = GroupInput {
            abs_mean: x.column_abs_mean(compute, width)?,
            loss: x.rows(compute, width, &loss)?,
            clip: x.rows(compute, width, &clip)?,
        };
        Ok(())
    }

    fn width(&self, group: InputOf) -> usize {
        let d = self.dims;
        match group {
            InputOf::Qkv | InputOf::GateUp => d.hidden,
            InputOf::O => d.q_width(),
            InputOf::Down => d.intermediate,
        }
    }

    fn input_mut(&mut self, group: InputOf) -> &mut GroupInput {
        match group {
            InputOf::Qkv => &mut self.qkv,
            InputOf::O => &mut self.o,
            InputOf::GateUp => &mut self.gate_up,
            InputOf::Down => &mut self.down,
        }
    }

    /// The rows of a group's input of `tokens` rows that the loss and the clip search keep.
    fn kept_rows(&self, group: InputOf, tokens: usize) -> (Vec<u32>, Vec<u32>) {
        let seq_len = self.seq_len.max(1);
        let seqs = loss_sequences(tokens / seq_len, seq_len, self.loss_tokens);
        let loss = match group {
            InputOf::Qkv => seqs
                .iter()
                .flat_map(|&s| (s * seq_len..(s + 1) * seq_len).map(|r| r as u32))
                .collect(),
            _ => strided_rows(tokens, seqs.len() * seq_len),
        };
        (loss, strided_rows(tokens, self.clip_tokens))
    }
}

/// Which of a layer's projections are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    pub q: bool,
    pub k: bool,
    pub v: bool,
    pub o: bool,
    pub gate: bool,
    pub up: bool,
    pub down: bool,
}

/// The modules whose output a scale search compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inspect {
    /// o_proj(attention(qkv(x))): scales q/k/v.
    Attention,
    /// o_proj(x): scales o (v → o).
    O,
    /// down(silu(gate(x)) · up(x)): scales gate/up.
    Mlp,
    /// down(x): scales down (up → down).
    Down,
}

/// What the search did to one layer (for logs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AwqLayerStats {
    /// Best ratio of each scaling group searched, in order (attention, o, mlp, down).
    pub ratios: Vec<(&'static str, f32)>,
    /// For each of `ratios`, how far the next-best ratio's loss lies above the best one's, relative to it (a choice
    /// within float noise of a tie may differ between devices).
    pub margins: Vec<f64>,
    /// Weights changed by clipping.
    pub clipped: usize,
    /// Wall seconds of the scale searches and of the clip search.
    pub search_seconds: f64,
    pub clip_seconds: f64,
}

/// Searches and applies AWQ's scales and clipping to `layer` (in place; the layer then computes the same function
/// in f32 up to clipping), scaling `inputs` to match. Quantize the layer's weights with RTN afterwards.
pub fn awq_layer(
    compute: &Compute,
    layer: &mut DecoderLayer,
    rope: &RopeTables,
    inputs: &mut LayerInputs,
    spec: &QuantSpec,
    sel: Selected,
    opts: &AwqOptions,
) -> Result<AwqLayerStats> {
    let d = layer.dims;
    let (q, kv, inter, h) = (d.q_width(), d.kv_width(), d.intermediate, d.hidden);
    let seq_len = inputs.seq_len;
    let mut stats = AwqLayerStats::default();
    let inverse = |s: &[f32]| s.iter().map(|x| 1.0 / x).collect::<Vec<_>>();
    let t0 = Instant::now();

    if sel.q && sel.k && sel.v {
        let (s, ratio, margin) = search(
            compute,
            layer,
            Inspect::Attention,
            &inputs.qkv,
            seq_len,
            rope,
            spec,
            opts,
        )?;
        stats.ratios.push(("attention", ratio));
        stats.margins.push(margin);
        scale_rows_inv(&mut layer.input_layernorm, 1, &s);
        scale_columns(&mut layer.qkv_proj.weight, &s);
        compute.changed(&layer.qkv_proj.weight)?;
        inputs.qkv.scale(&inverse(&s));
    }
    if sel.v && sel.o && kv == q {
        let (s, ratio, margin) = search(
            compute,
            layer,
            Inspect::O,
            &inputs.o,
            seq_len,
            rope,
            spec,
            opts,
        )?;
        stats.ratios.push(("o", ratio));
        stats.margins.push(margin);
        scale_rows_inv(&mut layer.qkv_proj.weight[(q + kv) * h..], h, &s);
        if let Some(b) = &mut layer.qkv_proj.bias {
            scale_rows_inv(&mut b[q + kv..], 1, &s);
        }
        scale_columns(&mut layer.o_proj.weight, &s);
        compute.changed(&layer.qkv_proj.weight[(q + kv) * h..])?;
        compute.changed(&layer.o_proj.weight)?;
        inputs.o.scale(&inverse(&s));
    }
    if sel.gate && sel.up {
        let (s, ratio, margin) = search(
            compute,
            layer,
            Inspect::Mlp,
            &inputs.gate_up,
            seq_len,
            rope,
            spec,
            opts,
        )?;
        stats.ratios.push(("mlp", ratio));
        stats.margins.push(margin);
        scale_rows_inv(&mut layer.post_attention_layernorm, 1, &s);
        scale_columns(&mut layer.gate_up_proj.weight, &s);
        compute.changed(&layer.gate_up_proj.weight)?;
        inputs.gate_up.scale(&inverse(&s));
    }
    if sel.up && sel.down {
        let (s, ratio, margin) = search(
            compute,
            layer,
            Inspect::Down,
            &inputs.down,
            seq_len,
            rope,
            spec,
            opts,
        )?;
        stats.ratios.push(("down", ratio));
        stats.margins.push(margin);
        scale_rows_inv(&mut layer.gate_up_proj.weight[inter * h..], h, &s);
        if let Some(b) = &mut layer.gate_up_proj.bias {
            scale_rows_inv(&mut b[inter..], 1, &s);
        }
        scale_columns(&mut layer.down_proj.weight, &s);
        compute.changed(&layer.gate_up_proj.weight[inter * h..])?;
        compute.changed(&layer.down_proj.weight)?;
        inputs.down.scale(&inverse(&s));
    }
    stats.search_seconds = t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    if opts.apply_clip {
        if sel.v {
            let w = &mut layer.qkv_proj.weight[(q + kv) * h..(q + 2 * kv) * h];
            stats.clipped += clip(compute, w, kv, h, &inputs.qkv.clip, spec, opts)?;
        }
        if sel.o {
            stats.clipped += clip(
                compute,
                &mut layer.o_proj.weight,
                h,
                q,
                &inputs.o.clip,
                spec,
                opts,
            )?;
        }
        if sel.gate {
            let w = &mut layer.gate_up_proj.weight[..inter * h];
            stats.clipped += clip(compute, w, inter, h, &inputs.gate_up.clip, spec, opts)?;
        }
        if sel.up {
            let w = &mut layer.gate_up_proj.weight[inter * h..];
            stats.clipped += clip(compute, w, inter, h, &inputs.gate_up.clip, spec, opts)?;
        }
        if sel.down {
            let w = &mut layer.down_proj.weight;
            stats.clipped += clip(compute, w, h, inter, &inputs.down.clip, spec, opts)?;
        }
    }
    stats.clip_seconds = t0.elapsed().as_secs_f64();
    Ok(stats)
}

/// Indices of the calibration sequences the loss runs on: at most `loss_tokens` tokens (at least one
/// sequence), evenly spread over the `sequences`.
fn loss_sequences(sequences: usize, seq_len: usize, loss_tokens: usize) -> Vec<usize> {
    let n = (loss_tokens / seq_len.max(1)).clamp(1, sequences.max(1));
    (0..n).map(|j| j * sequences / n).collect()
}

/// About `n` rows of `tokens`, evenly strided.
fn strided_rows(tokens: usize, n: usize) -> Vec<u32> {
    let step = (tokens / n.max(1)).max(1);
    (0..tokens).step_by(step).map(|r| r as u32).collect()
}

/// w[:, i] *= s[i] for w: [rows, s.len()].
fn scale_columns(w: &mut [f32], s: &[f32]) {
    for row in w.chunks_exact_mut(s.len()) {
        for (v, f) in row.iter_mut().zip(s) {
            *v *= f;
        }
    }
}

/// Row r of w ([s.len(), width]) divided by s[r] (a norm weight with width 1, or a linear's rows).
fn scale_rows_inv(w: &mut [f32], width: usize, s: &[f32]) {
    for (row, f) in w.chunks_exact_mut(width).zip(s) {
        for v in row {
            *v /= f;
        }
    }
}

/// [rows, in] of the weight a scaling group searches (all rows of the inspected slot).
fn group_shape(layer: &DecoderLayer, inspect: Inspect) -> (usize, usize) {
    let l = match inspect {
        Inspect::Attention => &layer.qkv_proj,
        Inspect::O => &layer.o_proj,
        Inspect::Mlp => &layer.gate_up_proj,
        Inspect::Down => &layer.down_proj,
    };
    (l.out_features, l.in_features)
}

fn group_weight_mut(layer: &mut DecoderLayer, inspect: Inspect) -> &mut [f32] {
    match inspect {
        Inspect::Attention => &mut layer.qkv_proj.weight,
        Inspect::O => &mut layer.o_proj.weight,
        Inspect::Mlp => &mut layer.gate_up_proj.weight,
        Inspect::Down => &mut layer.down_proj.weight,
    }
}

/// The inspected module's output on x (whole sequences of `seq_len` tokens for the attention block).
fn inspect_output(
    compute: &Compute,
    layer: &DecoderLayer,
    inspect: Inspect,
    x: &[f32],
    seq_len: usize,
    rope: &RopeTables,
) -> Result<Vec<f32>> {
    let d = layer.dims;
    let width = match inspect {
        Inspect::Attention | Inspect::Mlp => d.hidden,
        Inspect::O => d.q_width(),
        Inspect::Down => d.intermediate,
    };
    let tokens = x.len() / width;
    let mut out = vec![0f32; tokens * d.hidden]; // [tokens, hidden]
    match inspect {
        Inspect::Attention => {
            let mut ctx = vec![0f32; tokens * d.q_width()]; // [tokens, heads · head_dim]
            attention_context(compute, layer, x, seq_len, rope, &mut ctx)?;
            compute.linear(&layer.o_proj, &ctx, &mut out)?;
        }
        Inspect::O => compute.linear(&layer.o_proj, x, &mut out)?,
        Inspect::Mlp => compute.mlp(layer, x, None, Some(&mut out))?,
        Inspect::Down => compute.linear(&layer.down_proj, x, &mut out)?,
    }
    Ok(out)
}

fn mse(a: &[f32], b: &[f32]) -> f64 {
    let sum: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    sum / a.len().max(1) as f64
}

/// `_compute_best_scale`: the scales of the best ratio, and that ratio. Each ratio's weight Q(W·s)/s is written
/// into the layer for its forward; the original weight is restored before returning, also on error. On a GPU
/// holding the layer the whole grid runs there (`gpu::search`). Also returns the margin of [`choose`].
#[allow(clippy::too_many_arguments)]
fn search(
    compute: &Compute,
    layer: &mut DecoderLayer,
    inspect: Inspect,
    input: &GroupInput,
    seq_len: usize,
    rope: &RopeTables,
    spec: &QuantSpec,
    opts: &AwqOptions,
) -> Result<(Vec<f32>, f32, f64)> {
    if let Some(found) = gpu::search(compute, layer, inspect, input, seq_len, rope, spec, opts)? {
        return Ok(found);
    }
    let (rows, in_features) = group_shape(layer, inspect);
    let original = group_weight_mut(layer, inspect).to_vec(); // [rows, in]
    let w_mean = weight_abs_mean(&original, rows, in_features, spec);
    let reference = inspect_output(compute, layer, inspect, &input.loss, seq_len, rope)?;
    let n = opts.n_grid.max(1);
    let mut losses = Vec::with_capacity(n);
    let mut grid = || -> Result<()> {
        for step in 0..n {
            let ratio = step as f32 / n as f32;
            let s = ratio_scales(&input.abs_mean, &w_mean, ratio, opts.duo_scaling);
            let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
            let trial = group_weight_mut(layer, inspect);
            scaled_fake_quantize(&original, in_features, &s, &inv, spec, trial);
            compute.changed(trial)?;
            let out = inspect_output(compute, layer, inspect, &input.loss, seq_len, rope)?;
            losses.push(mse(&out, &reference));
        }
        Ok(())
    };
    let searched = grid();
    group_weight_mut(layer, inspect).copy_from_slice(&original);
    let restored = compute.changed(group_weight_mut(layer, inspect));
    searched?;
    restored?;
    let (step, margin) = choose(&losses);
    let ratio = step as f32 / n as f32;
    let s = ratio_scales(&input.abs_mean, &w_mean, ratio, opts.duo_scaling);
    Ok((s, ratio, margin))
}

/// AutoAWQ's choice among the grid's losses: the first of the smallest (step 0 when none is smaller), and how far
/// the next-best loss lies above it, relative to it (+∞ with one candidate).
fn choose(losses: &[f64]) -> (usize, f64) {
    let mut best = 0;
    for (i, &l) in losses.iter().enumerate().skip(1) {
        if l < losses[best] {
            best = i;
        }
    }
    let b = losses.get(best).copied().unwrap_or(0.0);
    let margin = losses
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .map(|(_, &l)| (l - b) / b.abs().max(f64::MIN_POSITIVE))
        .fold(f64::INFINITY, f64::min);
    (best, margin)
}

/// out = Q(w·s)·(1/s) for w: [rows, in], the RTN grid of each (row, group) found on w·s (what `fake_quantize`
/// computes on the scaled weight, without its copies); inv[i] = 1 / s[i]. The reference of the GPU kernel
/// `olive_kernels::cuda::awq_search::scaled_fake_quantize`.
pub fn scaled_fake_quantize(
    w: &[f32],
    in_features: usize,
    s: &[f32],
    inv: &[f32],
    spec: &QuantSpec,
    out: &mut [f32],
) {
    let gl = spec.group_len(in_features);
    out.par_chunks_mut(in_features)
        .zip(w.par_chunks(in_features))
        .with_min_len(8)
        .for_each_init(
            || vec![0f32; gl],
            |buf, (o, w)| {
                for (((o, w), s), inv) in o
                    .chunks_mut(gl)
                    .zip(w.chunks(gl))
                    .zip(s.chunks(gl))
                    .zip(inv.chunks(gl))
                {
                    let buf = &mut buf[..w.len()];
                    buf.iter_mut()
                        .zip(w)
                        .zip(s)
                        .for_each(|((b, w), s)| *b = w * s);
                    let (scale, zero) = group_params(buf, spec.bits, spec.sym);
                    if scale.is_normal() {
                        let (z, maxq) = (f32::from(zero), f32::from(spec.max_level()));
                        for ((o, &b), inv) in o.iter_mut().zip(buf.iter()).zip(inv) {
                            *o = on_grid(b, scale, z, maxq) * inv;
                        }
                    } else {
                        for ((o, &b), inv) in o.iter_mut().zip(buf.iter()).zip(inv) {
                            let q = quantize_value(b, scale, zero, spec.bits);
                            *o = dequantize_value(q, scale, zero) * inv;
                        }
                    }
                }
            },
        );
}

/// `dequantize_value(quantize_value(x, ..))` in f32 arithmetic only, which the compiler vectorises; the same value
/// while |x / scale| < 2^22 (rounding half to even by the 1.5 · 2^23 shift), true for x on the grid's own group
/// when `scale` is a normal number (|x| ≤ range = scale · maxq).
#[inline]
fn on_grid(x: f32, scale: f32, zero: f32, maxq: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    let level = (((x / scale + SHIFT) - SHIFT) + zero).clamp(0.0, maxq);
    (level - zero) * scale
}

/// `_compute_best_clip` + `apply_clip` on w: [rows, in] with its input rows x: [tokens, in] (the clip subset);
/// returns the weights changed (and reports the change to `compute`, which may hold w). A row's error over the
/// tokens, Σ_t ((q − w)·x_t)², is computed as d·G·dᵀ with d = q − w and G = XᵀX of the group's inputs
/// ([len, len]): the same sum as AutoAWQ's, without the [rows, tokens] outputs (len² instead of len·tokens per
/// row) and without the cancellation of subtracting two outputs.
fn clip(
    compute: &Compute,
    w: &mut [f32],
    rows: usize,
    in_features: usize,
    x: &[f32],
    spec: &QuantSpec,
    opts: &AwqOptions,
) -> Result<usize> {
    let gl = spec.group_len(in_features);
    if let Some(best) = gpu::clip_maxima(compute, w, (rows, in_features), x, spec, opts)? {
        let mut changed = 0;
        for (gi, c0) in (0..in_features).step_by(gl.max(1)).enumerate() {
            let len = gl.min(in_features - c0);
            changed += clamp_group(
                w,
                in_features,
                c0..c0 + len,
                &best[gi * rows..(gi + 1) * rows],
            );
        }
        if changed > 0 {
            compute.changed(w)?;
        }
        return Ok(changed);
    }
    let m = x.len() / in_features;
    let steps = (opts.max_shrink * opts.n_grid as f32) as usize;
    let steps = steps.max(1);
    let mut changed = 0;
    let mut xt: Vec<f32> = Vec::with_capacity(gl * m); // [len, m], the group's inputs transposed
    let mut wg: Vec<f32> = Vec::with_capacity(rows * gl); // [rows, len]
    let mut d = vec![0f32; steps * rows * gl]; // [steps · rows, len]: Q(clamp(w)) − w per shrink step
    let mut e = vec![0f32; steps * rows * gl]; // [steps · rows, len]: d · G
    let mut g = vec![0f32; gl * gl]; // [len, len]: Xᵀ·X of the group's inputs
    for c0 in (0..in_features).step_by(gl) {
        let len = gl.min(in_features - c0);
        xt.clear();
        xt.extend((c0..c0 + len).flat_map(|c| x.iter().skip(c).step_by(in_features)));
        wg.clear();
        wg.extend(w.chunks_exact(in_features).flat_map(|r| &r[c0..c0 + len]));
        let org_max: Vec<f32> = wg
            .chunks_exact(len)
            .map(|r| r.iter().fold(0f32, |a, v| a.max(v.abs())))
            .collect();
        let (g, d, e) = (
            &mut g[..len * len],
            &mut d[..steps * rows * len],
            &mut e[..steps * rows * len],
        );
        compute.matmul(&xt, &xt, g, (len, m, len))?;
        for (i, d) in d.chunks_exact_mut(rows * len).enumerate() {
            let f = 1.0 - i as f32 / opts.n_grid.max(1) as f32;
            clamped_fake_quantize(&wg, &org_max, f, len, spec, d);
            d.iter_mut().zip(&wg).for_each(|(q, w)| *q -= w);
        }
        // The output error of a row over the tokens, ‖d·Xᵀ‖² = d·G·dᵀ (G symmetric): one product for all steps.
        compute.matmul(d, g, e, (steps * rows, len, len))?;
        let err: Vec<f64> = e
            .par_chunks(len)
            .zip(d.par_chunks(len))
            .with_min_len(64)
            .map(|(e, d)| {
                e.iter()
                    .zip(d)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum()
            })
            .collect(); // [steps · rows]
        let mut best_max = org_max.clone();
        let mut best_err = vec![f64::INFINITY; rows];
        for (i, err) in err.chunks_exact(rows).enumerate() {
            let f = 1.0 - i as f32 / opts.n_grid.max(1) as f32;
            for r in 0..rows {
                if err[r] < best_err[r] {
                    best_err[r] = err[r];
                    best_max[r] = org_max[r] * f;
                }
            }
        }
        changed += clamp_group(w, in_features, c0..c0 + len, &best_max);
    }
    if changed > 0 {
        compute.changed(w)?;
    }
    Ok(changed)
}

/// Clamps columns `cols` of each row r of w: [rows, in_features] to ±max[r]; returns the weights changed.
fn clamp_group(
    w: &mut [f32],
    in_features: usize,
    cols: std::ops::Range<usize>,
    max: &[f32],
) -> usize {
    let mut changed = 0;
    for (row, mx) in w.chunks_exact_mut(in_features).zip(max) {
        for v in &mut row[cols.clone()] {
            let c = v.clamp(-mx, *mx);
            if c != *v {
                changed += 1;
                *v = c;
            }
        }
    }
    changed
}

/// out = Q(clamp(w, ±f·max_r)) for w: [rows, len], one grid per row found on the clamped row. The reference of
/// the GPU kernel `olive_kernels::cuda::awq_search::clip_candidates` (which returns out − w).
pub fn clamped_fake_quantize(
    w: &[f32],
    max: &[f32],
    f: f32,
    len: usize,
    spec: &QuantSpec,
    out: &mut [f32],
) {
    out.par_chunks_mut(len)
        .zip(w.par_chunks(len))
        .zip(max.par_iter())
        .with_min_len(16)
        .for_each(|((o, w), mx)| {
            let lim = mx * f;
            o.iter_mut()
                .zip(w)
                .for_each(|(o, v)| *o = v.clamp(-lim, lim));
            let (scale, zero) = group_params(o, spec.bits, spec.sym);
            if scale.is_normal() {
                let (z, maxq) = (f32::from(zero), f32::from(spec.max_level()));
                o.iter_mut().for_each(|o| *o = on_grid(*o, scale, z, maxq));
            } else {
                for o in o.iter_mut() {
                    *o = dequantize_value(quantize_value(*o, scale, zero, spec.bits), scale, zero);
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtn::fake_quantize;
    use olive_kernels::cpu::matmul;

    #[test]
    fn ratio_zero_without_duo_is_identity_and_scales_are_normalised() {
        let x = [1.0f32, 4.0, 0.25];
        let w = [0.5f32, 0.5, 0.5];
        assert_eq!(ratio_scales(&x, &w, 0.0, false), vec![1.0; 3]);
        let s = ratio_scales(&x, &w, 0.5, false);
        let (lo, hi) = (s[2], s[1]);
        assert!(((lo * hi).sqrt() - 1.0).abs() < 1e-6, "{s:?}");
        assert!((s[1] / s[0] - 2.0).abs() < 1e-5, "{s:?}");
    }

    #[test]
    fn clipping_never_increases_the_group_output_error() {
        // One outlier weight per row, one group per row: the search minimises exactly this error.
        let (rows, k, tokens) = (4, 32, 64);
        let mut w: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 80.0)
            .collect();
        for r in 0..rows {
            w[r * k + r] = 1.0;
        }
        let x: Vec<f32> = (0..tokens * k)
            .map(|i| ((i * 13 % 11) as f32 - 5.0) / 5.0)
            .collect();
        let spec = QuantSpec {
            bits: 3,
            group_size: Some(32),
            sym: false,
        };
        let err = |w: &[f32]| {
            let fq = fake_quantize(w, rows, k, &spec).unwrap();
            let (mut a, mut b) = (vec![0f32; tokens * rows], vec![0f32; tokens * rows]);
            let orig: Vec<f32> = (0..rows * k)
                .map(|i| {
                    if i % k == i / k {
                        1.0
                    } else {
                        ((i * 37 % 17) as f32 - 8.0) / 80.0
                    }
                })
                .collect();
            matmul(&x, &orig, &mut a, tokens, k, rows);
            matmul(&x, &fq, &mut b, tokens, k, rows);
            mse(&a, &b)
        };
        let before = err(&w);
        let mut clipped = w.clone();
        let n = clip(
            &Compute::cpu(),
            &mut clipped,
            rows,
            k,
            &x,
            &spec,
            &AwqOptions::default(),
        )
        .unwrap();
        assert!(n > 0);
        assert!(err(&clipped) <= before, "{} > {before}", err(&clipped));
    }
}
