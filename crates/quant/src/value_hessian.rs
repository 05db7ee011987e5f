//! The GPTQ Hessian of v_proj weighted by attention: what v_proj's error costs downstream is the error of the
//! attention context (o_proj's input), Σ_t p_qt·ΔW_v·x_t for each query q and head, so its layer-wise loss is
//! ‖ΔW_v·A‖² with A's rows a_q = Σ_t p_qt·x_t (the attention-weighted inputs), not GPTQ's ‖ΔW_v·X‖² over
//! tokens. The two differ badly with attention sinks (SmolLM2: a window's first token draws ~65% of the
//! attention of every later query from layer 12 on): uniform token weights let GPTQ's error feedback move
//! error onto the sink's rare input direction, which every query then reads (measured on smollm2 layer 18:
//! layer error 0.133 with the token Hessian, RTN 0.069, 0.016 with this one).

use olive_nn::{DecoderLayer, LayerCache, RopeTables, Workspace};

use crate::error::Result;
use crate::gptq::Hessian;

/// H = 2/n·Σ a aᵀ over every query token and head, a = Σ_t p_qt·x_t with the layer's attention probabilities
/// p (its current q/k weights) and x = `normed` ([tokens, hidden], input_layernorm's output, whole windows of
/// `seq_len`). Computed by running the attention with v_proj temporarily set to select `head_dim` input
/// channels at a time (identity rows, zero bias), so the context of each head is A's columns for those
/// channels; the weights and bias are restored before returning, also on error.
pub(crate) fn value_hessian(
    layer: &mut DecoderLayer,
    normed: &[f32],
    seq_len: usize,
    rope: &RopeTables,
) -> Result<Hessian> {
    let d = layer.dims;
    let (hidden, hd, heads, kv_heads) = (d.hidden, d.head_dim, d.heads, d.kv_heads);
    let (qw, kvw) = (d.q_width(), d.kv_width());
    let tokens = normed.len() / hidden;
    let v_rows = qw + kvw..qw + 2 * kvw;
    let saved_w = layer.qkv_proj.weight[v_rows.start * hidden..v_rows.end * hidden].to_vec();
    let saved_b = layer
        .qkv_proj
        .bias
        .as_ref()
        .map(|b| b[v_rows.clone()].to_vec());
    let mut a = vec![0f32; heads * tokens * hidden]; // [heads · tokens, hidden]
    let mut ctx = vec![0f32; tokens * qw]; // [tokens, heads · head_dim]
    let mut ws = Workspace::default();
    let mut run = |layer: &mut DecoderLayer| -> Result<()> {
        for c0 in (0..hidden).step_by(hd) {
            let width = hd.min(hidden - c0);
            let w = &mut layer.qkv_proj.weight[v_rows.start * hidden..v_rows.end * hidden]; // [kv_width, hidden]
            w.fill(0.0);
            for h in 0..kv_heads {
                for i in 0..width {
                    w[(h * hd + i) * hidden + c0 + i] = 1.0;
                }
            }
            if let Some(b) = layer.qkv_proj.bias.as_mut() {
                b[v_rows.clone()].fill(0.0);
            }
            for (xs, cs) in normed
                .chunks_exact(seq_len * hidden)
                .zip(ctx.chunks_exact_mut(seq_len * qw))
            {
                let mut cache = LayerCache::new(kvw, seq_len);
                layer.attention_context(xs, rope, &mut cache, &mut ws, cs)?;
            }
            for (t, row) in ctx.chunks_exact(qw).enumerate() {
                for j in 0..heads {
                    let dst = (j * tokens + t) * hidden + c0;
                    a[dst..dst + width].copy_from_slice(&row[j * hd..j * hd + width]);
                }
            }
        }
        Ok(())
    };
    let result = run(layer);
    layer.qkv_proj.weight[v_rows.start * hidden..v_rows.end * hidden].copy_from_slice(&saved_w);
    if let (Some(b), Some(saved)) = (layer.qkv_proj.bias.as_mut(), saved_b) {
        b[v_rows].copy_from_slice(&saved);
    }
    result?;
    let mut h = Hessian::new(hidden);
    h.add(&a);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use olive_model::{Checkpoint, ModelConfig};
    use olive_nn::Rope;

    use super::*;

    /// With one-token windows each query attends only to itself (p = 1), so every head's a is x itself and the
    /// attention-weighted Hessian equals the token Hessian; a wrong channel or head mapping would scramble it.
    /// The tiny qwen2 of tests/golden (q/k/v bias) also checks that v's weights and bias come back unchanged.
    #[test]
    fn one_token_windows_give_the_token_hessian_and_restore_v() {
        let dir = std::env::var_os("OLIVE_GOLDEN_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/out"))
            .join("qwen2/model");
        assert!(
            dir.join("config.json").exists(),
            "tiny qwen2 missing at {}: run tests/golden/gen_golden.py (`make golden`) first",
            dir.display()
        );
        let config = ModelConfig::from_folder(&dir).unwrap();
        let ckpt = Checkpoint::open(&dir).unwrap();
        let mut layer = DecoderLayer::load(&ckpt, &config, 0).unwrap();
        assert!(layer.qkv_proj.bias.is_some(), "qwen2 has a q/k/v bias");
        let (w0, b0) = (layer.qkv_proj.weight.to_vec(), layer.qkv_proj.bias.clone());
        let hidden = layer.dims.hidden;
        let x: Vec<f32> = (0..7 * hidden)
            .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * if i % hidden == 3 { 8.0 } else { 1.0 })
            .collect(); // [7, hidden]
        let tables = Rope::new(&config).tables(0, 1);
        let hv = value_hessian(&mut layer, &x, 1, &tables).unwrap();
        let mut hx = Hessian::new(hidden);
        hx.add(&x);
        let scale = hx.matrix().iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in hv.matrix().iter().zip(hx.matrix()).enumerate() {
            assert!((a - b).abs() <= 1e-5 * scale, "H[{i}]: {a} vs {b}");
        }
        assert!(layer.qkv_proj.weight.to_vec() == w0, "qkv weights changed");
        assert!(layer.qkv_proj.bias == b0, "qkv bias changed");
    }
}
