//! Training over a quantized base kept packed (`QuantizedWeights::Packed`, on-the-fly dequantization: what
//! the GPU trainer uploads from, and the CPU QLoRA fallback for linears the int4 kernels cannot take; the CPU's
//! int4 path is tests/int4_train.rs) against the same base dequantized at load: tiny models quantized in-test
//! to AutoAWQ GEMM and to GPTQ v1 with an act-order g_idx and a ragged last group, separate and fused (Phi-3)
//! projections. Logits, loss, LoRA gradients, optimizer steps and the merged model must agree bit for bit.

// Only the weight generator of the shared helpers is used here.
#[allow(dead_code)]
mod common;
mod int4;

use std::collections::BTreeMap;
use std::path::Path;

use common::{tiny_weights, Tiny, HIDDEN, INTER, LAYERS, VOCAB};
use int4::quantize;
use olive_data::Sample;
use olive_model::quantized::{pack_awq_gemm, pack_gptq_v1};
use olive_nn::train::{LoraSpec, LoraTrainer, TrainConfig};
use olive_nn::{QuantizedWeights, Transformer};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

#[derive(Clone, Copy, Debug)]
enum Layout {
    /// AutoAWQ GEMM, groups of 16 (they divide every input width).
    Awq,
    /// GPTQ v1, groups of 20 (ragged last group) in a permuted order (act-order).
    GptqActOrder,
}

/// A tiny model whose decoder linears are quantized in `layout` (fused: one qkv_proj and one
/// gate_up_proj per layer, Phi-3's layout).
fn write_quantized(dir: &Path, layout: Layout, fused: bool) {
    let mut w = tiny_weights(&Tiny::llama());
    if fused {
        for i in 0..LAYERS {
            for (block, parts, name) in [
                ("self_attn", &["q_proj", "k_proj", "v_proj"][..], "qkv_proj"),
                ("mlp", &["gate_proj", "up_proj"][..], "gate_up_proj"),
            ] {
                let (mut rows, mut data, mut cols) = (0, Vec::new(), 0);
                for p in parts {
                    let (shape, d) = w
                        .remove(&format!("model.layers.{i}.{block}.{p}.weight"))
                        .unwrap();
                    (rows, cols) = (rows + shape[0], shape[1]);
                    data.extend(d);
                }
                w.insert(
                    format!("model.layers.{i}.{block}.{name}.weight"),
                    (vec![rows, cols], data),
                );
            }
        }
    }
    let mut tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (name, (shape, data)) in w {
        let linear = name.starts_with("model.layers.") && name.ends_with("_proj.weight");
        if !linear {
            let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            tensors.insert(name, (Dtype::F32, shape, bytes));
            continue;
        }
        let prefix = name.trim_end_matches(".weight");
        let (out, k) = (shape[0], shape[1]);
        let packed = match layout {
            Layout::Awq => pack_awq_gemm(&quantize(&data, out, k, 16, None)).unwrap(),
            Layout::GptqActOrder => {
                let groups = k.div_ceil(20) as u32;
                let g_idx = (0..k as u32).map(|i| (i * 7 + 3) % groups).collect();
                pack_gptq_v1(&quantize(&data, out, k, 20, Some(g_idx))).unwrap()
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
            json!({"quant_method": "awq", "bits": 4, "group_size": 16, "version": "gemm"})
        }
        Layout::GptqActOrder => json!({"quant_method": "gptq", "bits": 4, "group_size": 20,
                                       "desc_act": true, "sym": false}),
    };
    let config = json!({
        "model_type": if fused { "phi3" } else { "llama" },
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": INTER,
        "num_hidden_layers": LAYERS, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
        "quantization_config": quantization,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// Two rows of 12 tokens, the second right-padded by 3.
fn batch() -> Vec<Sample> {
    (0..2u32)
        .map(|r| {
            let ids: Vec<u32> = (0..12u32)
                .map(|t| (5 + 7 * r + 13 * t * (t + 3)) % (VOCAB as u32 - 3) + 3)
                .collect();
            let pad = 3 * r as usize;
            Sample {
                attention_mask: (0..12).map(|t| u8::from(t < 12 - pad)).collect(),
                labels: ids
                    .iter()
                    .enumerate()
                    .map(|(t, &id)| if t < 12 - pad { i64::from(id) } else { -100 })
                    .collect(),
                input_ids: ids,
            }
        })
        .collect()
}

fn spec(fused: bool) -> LoraSpec {
    let targets: &[&str] = if fused {
        &["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    } else {
        &["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    };
    LoraSpec {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        target_modules: targets.iter().map(|t| t.to_string()).collect(),
        use_rslora: false,
    }
}

fn bits_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn packed_base_trains_exactly_as_the_dequantized_one() {
    for (layout, fused) in [
        (Layout::Awq, false),
        (Layout::Awq, true),
        (Layout::GptqActOrder, false),
        (Layout::GptqActOrder, true),
    ] {
        let case = format!("{layout:?} fused {fused}");
        let dir = tempfile::tempdir().unwrap();
        write_quantized(dir.path(), layout, fused);
        let dense = Transformer::load(dir.path()).unwrap();
        let packed = Transformer::load_with(dir.path(), QuantizedWeights::Packed).unwrap();
        assert!(
            packed
                .layers()
                .iter()
                .all(|l| l.qkv_proj.packed.is_some() && l.down_proj.packed.is_some()),
            "{case}"
        );
        assert!(
            dense.layers().iter().all(|l| l.qkv_proj.packed.is_none()),
            "{case}"
        );
        // 4-bit levels plus a scale and a zero point per group: under a quarter of f32.
        assert!(
            4 * packed.linear_weight_bytes() < dense.linear_weight_bytes(),
            "{case}"
        );

        let ids = &batch()[0].input_ids;
        let want = dense.forward(ids, &mut dense.new_cache(ids.len())).unwrap();
        let got = packed
            .forward(ids, &mut packed.new_cache(ids.len()))
            .unwrap();
        assert!(bits_equal(&got, &want), "{case}: logits differ");

        for checkpointing in [false, true] {
            let cfg = TrainConfig {
                learning_rate: 1e-2,
                gradient_checkpointing: checkpointing,
                ..TrainConfig::default()
            };
            let mut a = LoraTrainer::new(dense.clone(), &spec(fused), cfg.clone()).unwrap();
            let mut b = LoraTrainer::new(packed.clone(), &spec(fused), cfg).unwrap();
            let steps = [batch()];
            let (la, ga) = a.loss_and_gradients(&steps).unwrap();
            let (lb, gb) = b.loss_and_gradients(&steps).unwrap();
            assert_eq!(la.to_bits(), lb.to_bits(), "{case}: loss");
            assert!(
                ga.iter().any(|g| g.b.iter().any(|v| *v != 0.0)),
                "{case}: no gradient"
            );
            for (x, y) in ga.iter().zip(&gb) {
                assert!(
                    bits_equal(&x.a, &y.a) && bits_equal(&x.b, &y.b),
                    "{case}: gradients"
                );
            }
            for _ in 0..3 {
                let (sa, sb) = (a.train_step(&steps).unwrap(), b.train_step(&steps).unwrap());
                assert_eq!(sa.loss.to_bits(), sb.loss.to_bits(), "{case}: step loss");
            }
            let (ea, eb) = (
                a.eval_loss(&steps[0]).unwrap(),
                b.eval_loss(&steps[0]).unwrap(),
            );
            assert_eq!(ea.to_bits(), eb.to_bits(), "{case}: eval loss");
            let (ma, mb) = (a.merged_model().unwrap(), b.merged_model().unwrap());
            let la = ma.forward(ids, &mut ma.new_cache(ids.len())).unwrap();
            let lb = mb.forward(ids, &mut mb.new_cache(ids.len())).unwrap();
            assert!(bits_equal(&la, &lb), "{case}: merged logits");
        }
    }
}
