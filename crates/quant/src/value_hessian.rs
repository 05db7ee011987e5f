//! The GPTQ Hessian of v_proj weighted by attention: what v_proj's error costs downstream is the error of the
//! attention context (o_proj's input), Σ_t p_qt·ΔW_v·x_t for each query q and head, so its layer-wise loss is
//! ‖ΔW_v·A‖² with A's rows a_q = Σ_t p_qt·x_t (the attention-weighted inputs), not GPTQ's ‖ΔW_v·X‖² over
//! tokens. The two differ badly with attention sinks (SmolLM2: a window's first token draws ~65% of the
//! attention of every later query from layer 12 on): uniform token weights let GPTQ's error feedback move
//! error onto the sink's rare input direction, which every query then reads (measured on smollm2 layer 18:
//! layer error 0.133 with the token Hessian, RTN 0.069, 0.016 with this one).
//!
//! The attention probabilities are those of `olive_nn`'s attention (q/k projection with bias, RoPE, causal
//! softmax of q·kᵀ/√head_dim, optional sliding window), computed once per window and head. A is never formed:
//! per window Σ_heads A_hᵀA_h = Xᵀ·M·X with M = Σ_heads P_hᵀP_h ([window, window], causal blocks of P only).

use olive_kernels::cpu::{rope_apply, softmax, RopeLayout};
use olive_nn::{DecoderLayer, RopeTables};
use rayon::prelude::*;

use crate::device::Compute;
use crate::error::{QuantError, Result};
use crate::gptq::Hessian;
use crate::linalg::product;

/// Query rows per causal block: a block of rows reads only the keys up to its last row.
const CAUSAL_BLOCK: usize = 64;

/// H = 2/n·Σ a aᵀ over every query token and head, a = Σ_t p_qt·x_t with the layer's attention probabilities
/// p (its current q/k weights) and x = `normed` ([tokens, hidden], input_layernorm's output, whole windows of
/// `seq_len`).
pub(crate) fn value_hessian(
    compute: &Compute,
    layer: &DecoderLayer,
    normed: &[f32],
    seq_len: usize,
    rope: &RopeTables,
) -> Result<Hessian> {
    let d = layer.dims;
    let (hidden, hd, heads, kv_heads) = (d.hidden, d.head_dim, d.heads, d.kv_heads);
    let window = seq_len * hidden;
    if window == 0 || !normed.len().is_multiple_of(window) {
        return Err(QuantError::Shape {
            what: "v_proj's calibration input",
            shape: format!("[windows · {seq_len}, {hidden}]"),
            expected: normed.len().div_ceil(window.max(1)) * window,
            got: normed.len(),
        });
    }
    let (qw, kvw) = (d.q_width(), d.kv_width());
    let qk_width = qw + kvw;
    let group = heads / kv_heads.max(1);
    let scale = (hd as f32).powf(-0.5);
    let w_qk = &layer.qkv_proj.weight[..qk_width * hidden]; // [q + kv, hidden]
    let tokens = normed.len() / hidden;
    let mut qk_all = vec![0f32; tokens * qk_width]; // [tokens, q + kv]
    compute.matmul(normed, w_qk, &mut qk_all, (tokens, hidden, qk_width))?;
    if let Some(b) = &layer.qkv_proj.bias {
        for row in qk_all.chunks_exact_mut(qk_width) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
    }
    let mut p = vec![0f32; seq_len * seq_len]; // [seq_len, seq_len], one head's probabilities
    let mut m = vec![0f32; seq_len * seq_len]; // [seq_len, seq_len], Σ_heads PᵀP
    let mut mx_all = vec![0f32; tokens * hidden]; // [tokens, hidden], M·X per window
    let mut hq = vec![0f32; seq_len * hd]; // [seq_len, head_dim]
    let mut hk = vec![0f32; seq_len * hd]; // [seq_len, head_dim]
    let mut h = Hessian::new(hidden);
    for ((xs, qk), mx) in normed
        .chunks_exact(window)
        .zip(qk_all.chunks_exact_mut(seq_len * qk_width))
        .zip(mx_all.chunks_exact_mut(window))
    {
        let layout = RopeLayout {
            row_stride: qk_width,
            heads: heads + kv_heads,
            head_dim: hd,
            rotary_dim: d.rotary_dim,
        };
        rope_apply(qk, layout, rope.cos(), rope.sin());
        m.fill(0.0);
        for j in 0..heads {
            let g = j / group;
            for ((row, q), k) in qk
                .chunks_exact(qk_width)
                .zip(hq.chunks_exact_mut(hd))
                .zip(hk.chunks_exact_mut(hd))
            {
                q.copy_from_slice(&row[j * hd..(j + 1) * hd]);
                k.copy_from_slice(&row[qw + g * hd..qw + (g + 1) * hd]);
            }
            causal_scores(&hq, &hk, seq_len, hd, &mut p);
            p.par_chunks_mut(seq_len)
                .enumerate()
                .with_min_len(16)
                .for_each(|(t, row)| {
                    let lo = d.sliding_window.map_or(0, |w| (t + 1).saturating_sub(w));
                    row[..lo].fill(0.0);
                    row[t + 1..].fill(0.0);
                    row[lo..=t].iter_mut().for_each(|v| *v *= scale);
                    softmax(&mut row[lo..=t]);
                });
            add_causal_gram(&p, seq_len, &mut m);
        }
        // SAFETY: mx [seq_len, hidden], m [seq_len, seq_len] and xs [seq_len, hidden] are whole buffers with
        // their row strides; mx is exclusively borrowed and separate from m and xs.
        unsafe {
            product(
                seq_len,
                hidden,
                seq_len,
                (mx.as_mut_ptr(), hidden as isize, 1),
                None,
                (m.as_ptr(), seq_len as isize, 1),
                (xs.as_ptr(), hidden as isize, 1),
                1.0,
            );
        }
    }
    // Σ over windows of Xᵀ·(M·X) in one product.
    h.add_product_on(compute, normed, &mx_all, heads * tokens)?;
    Ok(h)
}

/// The causal part of the scores q·kᵀ: rows t of s ([n, n]) hold q_t·k_j for j ≤ the last row of t's block
/// (later columns are left as they were); q, k: [n, hd].
fn causal_scores(q: &[f32], k: &[f32], n: usize, hd: usize, s: &mut [f32]) {
    for r0 in (0..n).step_by(CAUSAL_BLOCK) {
        let r1 = (r0 + CAUSAL_BLOCK).min(n);
        // S[r0..r1, 0..r1] = Q[r0..r1] · K[0..r1]ᵀ
        // SAFETY: the s view is rows r0..r1, columns 0..r1 of s [n, n]; q [n, hd] rows r0..r1; Kᵀ [hd, r1] reads
        // k [n, hd] with row stride 1, column stride hd; s is exclusively borrowed, separate from q and k.
        unsafe {
            product(
                r1 - r0,
                r1,
                hd,
                (s.as_mut_ptr().add(r0 * n), n as isize, 1),
                None,
                (q.as_ptr().add(r0 * hd), hd as isize, 1),
                (k.as_ptr(), 1, hd as isize),
                1.0,
            );
        }
    }
}

/// m ([n, n]) += Pᵀ·P for P ([n, n]) zero above its diagonal: each block of rows of P is nonzero only in the
/// columns up to its last row.
fn add_causal_gram(p: &[f32], n: usize, m: &mut [f32]) {
    for r0 in (0..n).step_by(CAUSAL_BLOCK) {
        let r1 = (r0 + CAUSAL_BLOCK).min(n);
        // M[0..r1, 0..r1] += P[r0..r1, 0..r1]ᵀ · P[r0..r1, 0..r1]
        // SAFETY: the m view is rows and columns 0..r1 of m [n, n]; Pᵀ [r1, r1 − r0] reads p [n, n] from row r0
        // with row stride 1, column stride n; P[r0..r1, 0..r1] has row stride n; m is exclusively borrowed and
        // separate from p.
        unsafe {
            product(
                r1,
                r1,
                r1 - r0,
                (m.as_mut_ptr(), n as isize, 1),
                Some(1.0),
                (p.as_ptr().add(r0 * n), 1, n as isize),
                (p.as_ptr().add(r0 * n), n as isize, 1),
                1.0,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use olive_model::{Checkpoint, ModelConfig};
    use olive_nn::{LayerCache, Rope, Workspace};

    use super::*;

    fn golden_model(case: &str) -> PathBuf {
        let dir = std::env::var_os("OLIVE_GOLDEN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/out"))
            .join(case)
            .join("model");
        assert!(
            dir.join("config.json").exists(),
            "tiny {case} missing at {}: run tests/golden/gen_golden.py (`make golden`) first",
            dir.display()
        );
        dir
    }

    /// A by running the layer's own attention with v_proj set to pass `head_dim` input channels at a time
    /// (identity rows, zero bias): each head's context is then A's columns for those channels.
    fn hessian_through_attention(
        layer: &DecoderLayer,
        x: &[f32],
        seq_len: usize,
        rope: &RopeTables,
    ) -> Hessian {
        let d = layer.dims;
        let (hidden, hd, qw, kvw) = (d.hidden, d.head_dim, d.q_width(), d.kv_width());
        let tokens = x.len() / hidden;
        let mut probe = layer.clone();
        let mut a = vec![0f32; d.heads * tokens * hidden]; // [heads · tokens, hidden]
        let mut ctx = vec![0f32; tokens * qw];
        let mut ws = Workspace::default();
        for c0 in (0..hidden).step_by(hd) {
            let width = hd.min(hidden - c0);
            let w = &mut probe.qkv_proj.weight[(qw + kvw) * hidden..];
            w.fill(0.0);
            for h in 0..d.kv_heads {
                for i in 0..width {
                    w[(h * hd + i) * hidden + c0 + i] = 1.0;
                }
            }
            if let Some(b) = probe.qkv_proj.bias.as_mut() {
                b[qw + kvw..].fill(0.0);
            }
            for (xs, cs) in x
                .chunks_exact(seq_len * hidden)
                .zip(ctx.chunks_exact_mut(seq_len * qw))
            {
                let mut cache = LayerCache::new(kvw, seq_len);
                probe
                    .attention_context(xs, rope, &mut cache, &mut ws, cs)
                    .unwrap();
            }
            for (t, row) in ctx.chunks_exact(qw).enumerate() {
                for j in 0..d.heads {
                    let dst = (j * tokens + t) * hidden + c0;
                    a[dst..dst + width].copy_from_slice(&row[j * hd..j * hd + width]);
                }
            }
        }
        let mut h = Hessian::new(hidden);
        h.add(&a);
        h
    }

    fn inputs(tokens: usize, hidden: usize) -> Vec<f32> {
        (0..tokens * hidden)
            .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * if i % hidden == 3 { 8.0 } else { 1.0 })
            .collect() // [tokens, hidden]
    }

    fn assert_close(got: &Hessian, want: &Hessian, what: &str) {
        let scale = want.matrix().iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in got.matrix().iter().zip(want.matrix()).enumerate() {
            assert!((a - b).abs() <= 1e-5 * scale, "{what}: H[{i}]: {a} vs {b}");
        }
    }

    /// The probabilities computed here equal those of the layer's own attention: q/k bias (qwen2), LongRoPE
    /// (phi3_longrope), partial rotary (train_phi3), sliding window (mistral), GQA, several windows.
    #[test]
    fn equals_the_hessian_through_the_layers_own_attention() {
        for case in ["smollm2", "qwen2", "mistral", "phi3_longrope", "train_phi3"] {
            let dir = golden_model(case);
            let config = ModelConfig::from_folder(&dir).unwrap();
            let ckpt = Checkpoint::open(&dir).unwrap();
            let layer = DecoderLayer::load(&ckpt, &config, 0).unwrap();
            let seq_len = 37;
            let x = inputs(3 * seq_len, layer.dims.hidden);
            let tables = Rope::new(&config).tables(0, seq_len);
            let want = hessian_through_attention(&layer, &x, seq_len, &tables);
            assert_close(
                &value_hessian(&Compute::cpu(), &layer, &x, seq_len, &tables).unwrap(),
                &want,
                case,
            );
        }
    }

    /// With one-token windows each query attends only to itself (p = 1), so every head's a is x itself and the
    /// attention-weighted Hessian equals the token Hessian; a wrong channel or head mapping would scramble it.
    #[test]
    fn one_token_windows_give_the_token_hessian() {
        let dir = golden_model("qwen2");
        let config = ModelConfig::from_folder(&dir).unwrap();
        let ckpt = Checkpoint::open(&dir).unwrap();
        let layer = DecoderLayer::load(&ckpt, &config, 0).unwrap();
        assert!(layer.qkv_proj.bias.is_some(), "qwen2 has a q/k/v bias");
        let x = inputs(7, layer.dims.hidden);
        let tables = Rope::new(&config).tables(0, 1);
        let mut hx = Hessian::new(layer.dims.hidden);
        hx.add(&x);
        assert_close(
            &value_hessian(&Compute::cpu(), &layer, &x, 1, &tables).unwrap(),
            &hx,
            "one-token windows",
        );
    }
}
