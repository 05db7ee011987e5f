//! Decoding from int4 weights (`QuantizedWeights::Int4`: the CPU int4 kernels, activations quantized to int8 per
//! weight block as ONNX Runtime's MatMulNBits accuracy level 4) against the same checkpoint dequantized at load:
//! tiny models whose shapes the kernels take (inputs and groups multiples of 32), quantized in-test to AutoAWQ
//! GEMM and to GPTQ v1 with an act-order g_idx, separate and fused (Phi-3) projections; and the tiny models of
//! tests/packed.rs (groups of 16 and 20), which the kernels cannot take and which load dense.

#[allow(dead_code)]
mod common;
mod int4;

use std::collections::BTreeMap;
use std::path::Path;

use common::{max_abs_diff, Rng};
use int4::quantize;
use olive_model::quantized::{pack_awq_gemm, pack_gptq_v1};
use olive_nn::{Linear, QuantizedWeights, Transformer};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

const VOCAB: usize = 96;
const HIDDEN: usize = 64;
const INTER: usize = 128;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const GROUP: usize = 32;

/// f32 summation-order slack of a dot product, relative to Σ|x·w| (the kernels' own tests use 1e-5).
const F32_REL: f32 = 1e-5;

/// Model-level tolerance of the int4 path's logits against the dense path's, as a fraction of the dense logits'
/// largest magnitude (f32 lm_head). Each linear is within half an int8 step per input of the dense product, about
/// 1/254 of Σ|x·w| per block (checked exactly below, `assert_within_int8_bound`); a token passes 8 such linears
/// (2 layers × qkv, o, gate_up, down) with RMSNorm, attention and SwiGLU between them, and these models measure
/// 0.87e-2 (AWQ) to 1.23e-2 (act-order GPTQ): twice the worst measured.
const LOGITS_REL: f32 = 0.025;
/// The same with the int4 lm_head, whose RTN rounding (up to half a level per weight) comes on top: measured
/// 3.5e-2 to 3.7e-2, twice that.
const LOGITS_REL_INT4_HEAD: f32 = 0.075;

#[derive(Clone, Copy, Debug)]
enum Layout {
    /// AutoAWQ GEMM, groups of 32.
    Awq,
    /// GPTQ v1, groups of 32 in a permuted order (act-order).
    GptqActOrder,
}

/// A tiny model (tied embeddings) whose decoder linears are quantized in `layout`, fused or not.
fn write_int4_model(dir: &Path, layout: Layout, fused: bool) {
    let mut rng = Rng::new(7);
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    let mut float: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    float.insert(
        "model.embed_tokens.weight".into(),
        (vec![VOCAB, HIDDEN], rng.vec(VOCAB * HIDDEN, 1.0)),
    );
    float.insert(
        "model.norm.weight".into(),
        (vec![HIDDEN], vec![1.0; HIDDEN]),
    );
    let mut linears: Vec<(String, usize, usize)> = Vec::new();
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            let w = rng.vec(HIDDEN, 0.2).iter().map(|v| 1.0 + v).collect();
            float.insert(format!("{p}.{norm}.weight"), (vec![HIDDEN], w));
        }
        let attn: &[(&str, usize, usize)] = if fused {
            &[("self_attn.qkv_proj", q + 2 * kv, HIDDEN)]
        } else {
            &[
                ("self_attn.q_proj", q, HIDDEN),
                ("self_attn.k_proj", kv, HIDDEN),
                ("self_attn.v_proj", kv, HIDDEN),
            ]
        };
        let mlp: &[(&str, usize, usize)] = if fused {
            &[("mlp.gate_up_proj", 2 * INTER, HIDDEN)]
        } else {
            &[
                ("mlp.gate_proj", INTER, HIDDEN),
                ("mlp.up_proj", INTER, HIDDEN),
            ]
        };
        let others = [
            ("self_attn.o_proj", HIDDEN, q),
            ("mlp.down_proj", HIDDEN, INTER),
        ];
        for (name, out, k) in attn.iter().chain(mlp).chain(&others) {
            linears.push((format!("{p}.{name}"), *out, *k));
        }
    }
    let mut tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = float
        .into_iter()
        .map(|(n, (shape, d))| {
            let bytes = d.iter().flat_map(|v| v.to_le_bytes()).collect();
            (n, (Dtype::F32, shape, bytes))
        })
        .collect();
    for (prefix, out, k) in linears {
        let w = rng.vec(out * k, 1.5 / (k as f32).sqrt());
        let packed = match layout {
            Layout::Awq => pack_awq_gemm(&quantize(&w, out, k, GROUP, None)).unwrap(),
            Layout::GptqActOrder => {
                let groups = (k / GROUP) as u32;
                // 7 is coprime with the 2 and 4 groups: every group gets GROUP inputs.
                let g_idx = (0..k as u32).map(|i| (i * 7 + 3) % groups).collect();
                pack_gptq_v1(&quantize(&w, out, k, GROUP, Some(g_idx))).unwrap()
            }
        };
        for (suffix, dtype, shape, bytes) in packed {
            tensors.insert(format!("{prefix}.{suffix}"), (dtype, shape, bytes));
        }
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let quantization = match layout {
        Layout::Awq => {
            json!({"quant_method": "awq", "bits": 4, "group_size": GROUP, "version": "gemm"})
        }
        Layout::GptqActOrder => json!({"quant_method": "gptq", "bits": 4, "group_size": GROUP,
                                       "desc_act": true, "sym": false}),
    };
    let config = json!({
        "model_type": if fused { "phi3" } else { "llama" },
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": INTER,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
        "quantization_config": quantization,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// |int4 − dense| per output of `x` [tokens, k]: within half an int8 step per input (the activations of each
/// weight block quantized with scale max|x_block| / 127) times the dense weights, plus the f32 slack.
fn assert_within_int8_bound(int4: &Linear, dense: &Linear, x: &[f32], what: &str) {
    let m = int4.int4.as_ref().expect("an int4 linear");
    let (k, n) = (dense.in_features, dense.out_features);
    let tokens = x.len() / k;
    let (mut got, mut want) = (vec![0f32; tokens * n], vec![0f32; tokens * n]);
    int4.forward(x, &mut got);
    dense.forward(x, &mut want);
    let original = |j: usize| m.perm().map_or(j, |p| p[j] as usize);
    let bs = m.block_size();
    for t in 0..tokens {
        let xt = &x[t * k..(t + 1) * k];
        for o in 0..n {
            let w = &dense.weight[o * k..(o + 1) * k];
            let (mut bound, mut abs) = (0f32, 0f32);
            for b in 0..k / bs {
                let idx = (b * bs..(b + 1) * bs).map(original);
                let xmax = idx.clone().fold(0f32, |a, i| a.max(xt[i].abs()));
                bound += xmax / 254.0 * idx.clone().map(|i| w[i].abs()).sum::<f32>();
                abs += idx.map(|i| (xt[i] * w[i]).abs()).sum::<f32>();
            }
            let tol = bound + F32_REL * abs + 1e-6;
            let (g, e) = (got[t * n + o], want[t * n + o]);
            assert!(
                (g - e).abs() <= tol,
                "{what} token {t} out {o}: {g} vs {e} (bound {tol})"
            );
        }
    }
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |a, x| a.max(x.abs()))
}

const PROMPT: [u32; 9] = [5, 17, 42, 8, 91, 33, 60, 12, 77];

#[test]
fn int4_decoding_stays_within_the_int8_activation_bound() {
    for (layout, fused) in [
        (Layout::Awq, false),
        (Layout::Awq, true),
        (Layout::GptqActOrder, false),
        (Layout::GptqActOrder, true),
    ] {
        let case = format!("{layout:?} fused {fused}");
        let dir = tempfile::tempdir().unwrap();
        write_int4_model(dir.path(), layout, fused);
        let dense = Transformer::load(dir.path()).unwrap();
        let mut int4 = Transformer::load_with(dir.path(), QuantizedWeights::Int4).unwrap();

        // Every decoder linear is held as int4 only: a quarter of f32 or less.
        for l in int4.layers() {
            for lin in [&l.qkv_proj, &l.o_proj, &l.gate_up_proj, &l.down_proj] {
                assert!(
                    lin.int4.is_some() && lin.packed.is_none() && lin.weight.is_empty(),
                    "{case}"
                );
            }
        }
        assert!(
            4 * int4.linear_weight_bytes() < dense.linear_weight_bytes(),
            "{case}"
        );
        // Each linear: the exact int8-activation bound; its dequantized weight is the dense one, bit for bit
        // (what the backward pass and adapter merging see).
        let mut rng = Rng::new(11);
        for (i, (a, b)) in int4.layers().iter().zip(dense.layers()).enumerate() {
            for (name, x, y) in [
                ("qkv", &a.qkv_proj, &b.qkv_proj),
                ("o", &a.o_proj, &b.o_proj),
                ("gate_up", &a.gate_up_proj, &b.gate_up_proj),
                ("down", &a.down_proj, &b.down_proj),
            ] {
                let what = format!("{case} layer {i} {name}");
                assert_within_int8_bound(x, y, &rng.vec(3 * y.in_features, 2.0), &what);
                let same = x.with_weight(|w| {
                    w.iter()
                        .zip(&y.weight[..])
                        .all(|(p, q)| p.to_bits() == q.to_bits())
                });
                assert!(
                    same,
                    "{what}: dequantized int4 weight differs from the dense one"
                );
            }
        }

        // Whole model, prefill and decode steps: logits within the model-level tolerance.
        let (mut dc, mut ic) = (dense.new_cache(16), int4.new_cache(16));
        let mut worst = 0f32;
        for step in [&PROMPT[..], &[3], &[44], &[90]] {
            let d = dense.forward(step, &mut dc).unwrap();
            let q = int4.forward(step, &mut ic).unwrap();
            worst = worst.max(max_abs_diff(&q, &d) / max_abs(&d));
        }
        assert!(
            worst <= LOGITS_REL,
            "{case}: logits off by {worst} of their scale"
        );
        assert!(
            worst > 0.0,
            "{case}: the int4 path gave the dense logits exactly"
        );

        // Greedy tokens where the dense model's choice is clear stay the same.
        let want = dense
            .generate(&PROMPT, PROMPT.len() + 8, &[], |_| true)
            .unwrap();
        let got = int4
            .generate(&PROMPT, PROMPT.len() + 8, &[], |_| true)
            .unwrap();
        assert_eq!(got, want, "{case}: greedy tokens");

        // Rounding the lm_head to int4 (as genai's int4 exports do) keeps the logits within the looser tolerance.
        assert!(
            int4.lm_head_int4().is_none(),
            "{case}: int4 lm_head by default"
        );
        assert!(int4.round_lm_head_int4(), "{case}");
        let head = int4.lm_head_int4().expect("an int4 lm_head");
        assert!(4 * head.bytes() < 4 * VOCAB * HIDDEN, "{case}");
        let dense_logits = dense.forward(&PROMPT, &mut dense.new_cache(16)).unwrap();
        let int4_logits = int4.forward(&PROMPT, &mut int4.new_cache(16)).unwrap();
        let scale = max_abs(&dense_logits);
        let err = max_abs_diff(&int4_logits, &dense_logits);
        assert!(
            err <= LOGITS_REL_INT4_HEAD * scale,
            "{case}: int4 lm_head logits off by {err} (scale {scale})"
        );
        eprintln!(
            "{case}: worst logits error {worst:.2e} of their scale, int4 lm_head {:.2e}",
            err / scale
        );
    }
}

#[test]
fn shapes_the_kernels_cannot_take_load_dense() {
    // Inputs of 48 and groups of 16: not multiples of 32.
    let dir = tempfile::tempdir().unwrap();
    let w = common::tiny_weights(&common::Tiny::llama());
    let mut tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (name, (shape, data)) in w {
        if name.starts_with("model.layers.") && name.ends_with("_proj.weight") {
            let prefix = name.trim_end_matches(".weight");
            let q = quantize(&data, shape[0], shape[1], 16, None);
            for (suffix, dtype, shape, bytes) in pack_awq_gemm(&q).unwrap() {
                tensors.insert(format!("{prefix}.{suffix}"), (dtype, shape, bytes));
            }
        } else {
            let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            tensors.insert(name, (Dtype::F32, shape, bytes));
        }
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    let config = json!({
        "model_type": "llama", "vocab_size": common::VOCAB, "hidden_size": common::HIDDEN,
        "intermediate_size": common::INTER, "num_hidden_layers": common::LAYERS,
        "num_attention_heads": common::HEADS, "num_key_value_heads": common::KV_HEADS,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
        "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 16, "version": "gemm"},
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();

    let dense = Transformer::load(dir.path()).unwrap();
    let mut int4 = Transformer::load_with(dir.path(), QuantizedWeights::Int4).unwrap();
    assert!(int4.layers().iter().all(|l| l.qkv_proj.int4.is_none()
        && l.down_proj.int4.is_none()
        && !l.qkv_proj.weight.is_empty()));
    assert!(!int4.round_lm_head_int4());
    let ids = [5u32, 9, 14, 3];
    let a = dense.forward(&ids, &mut dense.new_cache(4)).unwrap();
    let b = int4.forward(&ids, &mut int4.new_cache(4)).unwrap();
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
}
