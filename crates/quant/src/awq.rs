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
//! evenly strided tokens, as AutoAWQ's `n_sample_token = 512`.

use olive_kernels::cpu::matmul;
use olive_nn::{DecoderLayer, LayerCache, RopeTables, Workspace};

use crate::error::Result;
use crate::grid::QuantSpec;
use crate::rtn::fake_quantize;

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

/// The inputs of the layer's linear groups on every calibration token, from the floating-point forward.
#[derive(Debug, Clone, Default)]
pub struct LayerInputs {
    /// Tokens per calibration sequence.
    pub seq_len: usize,
    /// input_layernorm output: [tokens, hidden].
    pub qkv: Vec<f32>,
    /// attention output, o_proj's input: [tokens, heads · head_dim].
    pub o: Vec<f32>,
    /// post_attention_layernorm output: [tokens, hidden].
    pub gate_up: Vec<f32>,
    /// silu(gate) · up, down_proj's input: [tokens, intermediate].
    pub down: Vec<f32>,
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
    /// Weights changed by clipping.
    pub clipped: usize,
}

/// Searches and applies AWQ's scales and clipping to `layer` (in place; the layer then computes the same function
/// in f32 up to clipping), scaling `inputs` to match. Quantize the layer's weights with RTN afterwards.
pub fn awq_layer(
    layer: &mut DecoderLayer,
    rope: &RopeTables,
    inputs: &mut LayerInputs,
    spec: &QuantSpec,
    sel: Selected,
    opts: &AwqOptions,
) -> Result<AwqLayerStats> {
    let d = layer.dims;
    let (q, kv, inter) = (d.q_width(), d.kv_width(), d.intermediate);
    let sequences = inputs.qkv.len() / (d.hidden * inputs.seq_len).max(1);
    let seqs = loss_sequences(sequences, inputs.seq_len, opts.loss_tokens);
    let mut stats = AwqLayerStats::default();
    let mut trial = layer.clone();

    if sel.q && sel.k && sel.v {
        let s = search(
            layer,
            &mut trial,
            Inspect::Attention,
            &inputs.qkv,
            &seqs,
            inputs.seq_len,
            rope,
            spec,
            opts,
        )?;
        stats.ratios.push(("attention", s.1));
        let s = s.0;
        scale_rows_inv(&mut layer.input_layernorm, 1, &s);
        scale_columns(&mut layer.qkv_proj.weight, &s);
        scale_columns(
            &mut inputs.qkv,
            &s.iter().map(|x| 1.0 / x).collect::<Vec<_>>(),
        );
    }
    if sel.v && sel.o && kv == q {
        let s = search(
            layer,
            &mut trial,
            Inspect::O,
            &inputs.o,
            &seqs,
            inputs.seq_len,
            rope,
            spec,
            opts,
        )?;
        stats.ratios.push(("o", s.1));
        let s = s.0;
        let h = d.hidden;
        scale_rows_inv(&mut layer.qkv_proj.weight[(q + kv) * h..], h, &s);
        if let Some(b) = &mut layer.qkv_proj.bias {
            scale_rows_inv(&mut b[q + kv..], 1, &s);
        }
        scale_columns(&mut layer.o_proj.weight, &s);
        scale_columns(
            &mut inputs.o,
            &s.iter().map(|x| 1.0 / x).collect::<Vec<_>>(),
        );
    }
    if sel.gate && sel.up {
        let s = search(
            layer,
            &mut trial,
            Inspect::Mlp,
            &inputs.gate_up,
            &seqs,
            inputs.seq_len,
            rope,
            spec,
            opts,
        )?;
        stats.ratios.push(("mlp", s.1));
        let s = s.0;
        scale_rows_inv(&mut layer.post_attention_layernorm, 1, &s);
        scale_columns(&mut layer.gate_up_proj.weight, &s);
        scale_columns(
            &mut inputs.gate_up,
            &s.iter().map(|x| 1.0 / x).collect::<Vec<_>>(),
        );
    }
    if sel.up && sel.down {
        let s = search(
            layer,
            &mut trial,
            Inspect::Down,
            &inputs.down,
            &seqs,
            inputs.seq_len,
            rope,
            spec,
            opts,
        )?;
        stats.ratios.push(("down", s.1));
        let s = s.0;
        let h = d.hidden;
        scale_rows_inv(&mut layer.gate_up_proj.weight[inter * h..], h, &s);
        if let Some(b) = &mut layer.gate_up_proj.bias {
            scale_rows_inv(&mut b[inter..], 1, &s);
        }
        scale_columns(&mut layer.down_proj.weight, &s);
        scale_columns(
            &mut inputs.down,
            &s.iter().map(|x| 1.0 / x).collect::<Vec<_>>(),
        );
    }

    if opts.apply_clip {
        let h = d.hidden;
        if sel.v {
            let w = &mut layer.qkv_proj.weight[(q + kv) * h..(q + 2 * kv) * h];
            stats.clipped += clip(w, kv, h, &inputs.qkv, spec, opts)?;
        }
        if sel.o {
            stats.clipped += clip(&mut layer.o_proj.weight, h, q, &inputs.o, spec, opts)?;
        }
        if sel.gate {
            let w = &mut layer.gate_up_proj.weight[..inter * h];
            stats.clipped += clip(w, inter, h, &inputs.gate_up, spec, opts)?;
        }
        if sel.up {
            let w = &mut layer.gate_up_proj.weight[inter * h..];
            stats.clipped += clip(w, inter, h, &inputs.gate_up, spec, opts)?;
        }
        if sel.down {
            stats.clipped += clip(
                &mut layer.down_proj.weight,
                h,
                inter,
                &inputs.down,
                spec,
                opts,
            )?;
        }
    }
    Ok(stats)
}

/// Indices of the calibration sequences the loss runs on: at most `loss_tokens` tokens (at least one
/// sequence), evenly spread over the `sequences`.
fn loss_sequences(sequences: usize, seq_len: usize, loss_tokens: usize) -> Vec<usize> {
    let n = (loss_tokens / seq_len.max(1)).clamp(1, sequences.max(1));
    (0..n).map(|j| j * sequences / n).collect()
}

/// The rows of the chosen sequences of x: [sequences · seq_len, width] → [seqs.len() · seq_len, width].
fn gather_sequences(x: &[f32], width: usize, seq_len: usize, seqs: &[usize]) -> Vec<f32> {
    let len = seq_len * width;
    seqs.iter()
        .flat_map(|&s| x[s * len..(s + 1) * len].iter().copied())
        .collect()
}

/// About `n` rows of x ([tokens, width]) evenly strided: [≈n, width].
fn strided_rows(x: &[f32], width: usize, n: usize) -> Vec<f32> {
    let tokens = x.len() / width;
    let step = (tokens / n.max(1)).max(1);
    x.chunks_exact(width)
        .step_by(step)
        .flat_map(|r| r.iter().copied())
        .collect()
}

/// Mean |x| per column of x: [tokens, width], summed in f64.
fn column_abs_mean(x: &[f32], width: usize) -> Vec<f32> {
    let mut sum = vec![0f64; width];
    for row in x.chunks_exact(width) {
        for (s, v) in sum.iter_mut().zip(row) {
            *s += f64::from(v.abs());
        }
    }
    let tokens = (x.len() / width).max(1) as f64;
    sum.iter().map(|s| (s / tokens) as f32).collect()
}

/// AutoAWQ's w_mean: |w| over the max |w| of its (row, group), averaged over rows: [in].
fn weight_abs_mean(w: &[f32], rows: usize, in_features: usize, spec: &QuantSpec) -> Vec<f32> {
    let gl = spec.group_len(in_features);
    let mut sum = vec![0f64; in_features];
    for row in w.chunks_exact(in_features) {
        for (g, group) in row.chunks(gl).enumerate() {
            let max = group.iter().fold(0f32, |m, v| m.max(v.abs())) + 1e-6;
            for (i, v) in group.iter().enumerate() {
                sum[g * gl + i] += f64::from(v.abs() / max);
            }
        }
    }
    sum.iter()
        .map(|s| (s / rows.max(1) as f64) as f32)
        .collect()
}

/// AutoAWQ's candidate scales for `ratio`: [in].
fn ratio_scales(x_mean: &[f32], w_mean: &[f32], ratio: f32, duo: bool) -> Vec<f32> {
    let mut s: Vec<f32> = x_mean
        .iter()
        .zip(w_mean)
        .map(|(x, w)| {
            let v = if duo {
                x.powf(ratio) / (w.powf(1.0 - ratio) + 1e-4)
            } else {
                x.powf(ratio)
            };
            v.max(1e-4)
        })
        .collect();
    let (lo, hi) = s.iter().fold((f32::INFINITY, 0f32), |(lo, hi), v| {
        (lo.min(*v), hi.max(*v))
    });
    let norm = (hi * lo).sqrt();
    for v in &mut s {
        *v /= norm;
        if !v.is_finite() {
            *v = 1.0;
        }
    }
    s
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

/// The weight a scaling group searches, [rows, in] (all rows of the inspected slot).
fn group_weight(layer: &DecoderLayer, inspect: Inspect) -> (&[f32], usize, usize) {
    let l = match inspect {
        Inspect::Attention => &layer.qkv_proj,
        Inspect::O => &layer.o_proj,
        Inspect::Mlp => &layer.gate_up_proj,
        Inspect::Down => &layer.down_proj,
    };
    (&l.weight, l.out_features, l.in_features)
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
    let mut ws = Workspace::default();
    match inspect {
        Inspect::Attention => {
            let mut ctx = vec![0f32; seq_len * d.q_width()]; // [seq_len, heads · head_dim]
            for (xs, os) in x
                .chunks_exact(seq_len * d.hidden)
                .zip(out.chunks_exact_mut(seq_len * d.hidden))
            {
                let mut cache = LayerCache::new(d.kv_width(), seq_len);
                layer.attention_context(xs, rope, &mut cache, &mut ws, &mut ctx)?;
                layer.o_proj.forward(&ctx, os);
            }
        }
        Inspect::O => layer.o_proj.forward(x, &mut out),
        Inspect::Mlp => {
            let mut act = vec![0f32; tokens * d.intermediate]; // [tokens, intermediate]
            layer.mlp_activation(x, &mut ws, &mut act);
            layer.down_proj.forward(&act, &mut out);
        }
        Inspect::Down => layer.down_proj.forward(x, &mut out),
    }
    Ok(out)
}

fn mse(a: &[f32], b: &[f32]) -> f64 {
    let sum: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    sum / a.len().max(1) as f64
}

/// `_compute_best_scale`: the scales of the best ratio, and that ratio. `trial` is a copy of `layer` whose
/// searched weight is overwritten per ratio and restored at the end.
#[allow(clippy::too_many_arguments)]
fn search(
    layer: &DecoderLayer,
    trial: &mut DecoderLayer,
    inspect: Inspect,
    x_all: &[f32],
    seqs: &[usize],
    seq_len: usize,
    rope: &RopeTables,
    spec: &QuantSpec,
    opts: &AwqOptions,
) -> Result<(Vec<f32>, f32)> {
    let (w, rows, in_features) = group_weight(layer, inspect);
    let x_mean = column_abs_mean(x_all, in_features);
    let w_mean = weight_abs_mean(w, rows, in_features, spec);
    // [loss tokens, in]: whole sequences for the attention block, tokens strided over every sequence for the
    // token-wise modules (more varied tokens for the same cost).
    let x = match inspect {
        Inspect::Attention => gather_sequences(x_all, in_features, seq_len, seqs),
        _ => strided_rows(x_all, in_features, seqs.len() * seq_len),
    };
    // The trial starts as the layer: earlier groups' scales are already folded into both.
    trial.clone_from(layer);
    let reference = inspect_output(layer, inspect, &x, seq_len, rope)?;
    let mut best: Option<(f64, Vec<f32>, f32)> = None;
    for step in 0..opts.n_grid.max(1) {
        let ratio = step as f32 / opts.n_grid.max(1) as f32;
        let s = ratio_scales(&x_mean, &w_mean, ratio, opts.duo_scaling);
        let mut scaled = w.to_vec();
        scale_columns(&mut scaled, &s);
        let mut fq = fake_quantize(&scaled, rows, in_features, spec)?;
        let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
        scale_columns(&mut fq, &inv);
        group_weight_mut(trial, inspect).copy_from_slice(&fq);
        let loss = mse(
            &inspect_output(trial, inspect, &x, seq_len, rope)?,
            &reference,
        );
        if best.as_ref().is_none_or(|(b, _, _)| loss < *b) {
            best = Some((loss, s, ratio));
        }
    }
    group_weight_mut(trial, inspect).copy_from_slice(w);
    let (_, s, ratio) = best.unwrap_or((0.0, vec![1.0; in_features], 0.0));
    Ok((s, ratio))
}

/// `_compute_best_clip` + `apply_clip` on w: [rows, in] with its input x: [tokens, in]; returns the weights
/// changed.
fn clip(
    w: &mut [f32],
    rows: usize,
    in_features: usize,
    x: &[f32],
    spec: &QuantSpec,
    opts: &AwqOptions,
) -> Result<usize> {
    let tokens = x.len() / in_features;
    let step = (tokens / opts.clip_tokens.max(1)).max(1);
    let picked: Vec<usize> = (0..tokens).step_by(step).collect();
    let m = picked.len();
    let gl = spec.group_len(in_features);
    let per_row = QuantSpec {
        group_size: None,
        ..*spec
    };
    let steps = (opts.max_shrink * opts.n_grid as f32) as usize;
    let mut changed = 0;
    for c0 in (0..in_features).step_by(gl) {
        let len = gl.min(in_features - c0);
        // xg: [m, len], wg: [rows, len]
        let xg: Vec<f32> = picked
            .iter()
            .flat_map(|&t| {
                x[t * in_features + c0..t * in_features + c0 + len]
                    .iter()
                    .copied()
            })
            .collect();
        let wg: Vec<f32> = w
            .chunks_exact(in_features)
            .flat_map(|r| r[c0..c0 + len].iter().copied())
            .collect();
        let org_max: Vec<f32> = wg
            .chunks_exact(len)
            .map(|r| r.iter().fold(0f32, |a, v| a.max(v.abs())))
            .collect();
        let mut reference = vec![0f32; m * rows]; // [m, rows]
        matmul(&xg, &wg, &mut reference, m, len, rows);
        let mut best_max = org_max.clone();
        let mut best_err = vec![f64::INFINITY; rows];
        let mut cur = vec![0f32; m * rows];
        for i in 0..steps.max(1) {
            let f = 1.0 - i as f32 / opts.n_grid.max(1) as f32;
            let clamped: Vec<f32> = wg
                .chunks_exact(len)
                .zip(&org_max)
                .flat_map(|(r, mx)| r.iter().map(move |v| v.clamp(-mx * f, mx * f)))
                .collect();
            let fq = fake_quantize(&clamped, rows, len, &per_row)?;
            matmul(&xg, &fq, &mut cur, m, len, rows);
            let mut err = vec![0f64; rows];
            for (cr, rr) in cur.chunks_exact(rows).zip(reference.chunks_exact(rows)) {
                for ((e, a), b) in err.iter_mut().zip(cr).zip(rr) {
                    *e += f64::from(a - b).powi(2);
                }
            }
            for r in 0..rows {
                if err[r] < best_err[r] {
                    best_err[r] = err[r];
                    best_max[r] = org_max[r] * f;
                }
            }
        }
        for (row, mx) in w.chunks_exact_mut(in_features).zip(&best_max) {
            for v in &mut row[c0..c0 + len] {
                let c = v.clamp(-mx, *mx);
                if c != *v {
                    changed += 1;
                    *v = c;
                }
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let n = clip(&mut clipped, rows, k, &x, &spec, &AwqOptions::default()).unwrap();
        assert!(n > 0);
        assert!(err(&clipped) <= before, "{} > {before}", err(&clipped));
    }
}
