//! Quantized tiny checkpoints and LoRA fixtures shared by the int4 tests (int4_decode.rs, int4_train.rs,
//! packed.rs): a model whose shapes the CPU int4 kernels take (inputs and groups multiples of 32), the
//! common::Tiny llama packed with groups of 16 / 20 (shapes the kernels cannot take), a padded training batch
//! and the LoRA spec of the separate and fused (Phi-3) projections. Each test binary uses part of it.

use std::collections::BTreeMap;
use std::path::Path;

use olive_data::Sample;
use olive_nn::train::{LoraSpec, LoraTrainer, TrainConfig};
use olive_nn::Transformer;
use serde_json::json;

use crate::common::{self, Rng, Tiny};
use crate::int4::{f32_tensor, pack, quantization_config, write_safetensors, Layout, Tensors};

pub const VOCAB: usize = 96;
pub const HIDDEN: usize = 64;
pub const INTER: usize = 128;
pub const LAYERS: usize = 2;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = 16;

/// Every layout, separate and fused projections.
pub const CASES: [(Layout, bool); 4] = [
    (Layout::Awq, false),
    (Layout::Awq, true),
    (Layout::GptqActOrder, false),
    (Layout::GptqActOrder, true),
];

/// A tiny model (tied embeddings, random weights from `seed`) whose decoder linears are quantized in `layout`
/// with groups of `group`, fused (Phi-3: one qkv_proj and one gate_up_proj per layer) or not.
pub fn write_int4_model(dir: &Path, layout: Layout, fused: bool, group: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    let mut tensors = Tensors::new();
    tensors.insert(
        "model.embed_tokens.weight".into(),
        f32_tensor(vec![VOCAB, HIDDEN], &rng.vec(VOCAB * HIDDEN, 1.0)),
    );
    tensors.insert(
        "model.norm.weight".into(),
        f32_tensor(vec![HIDDEN], &[1.0; HIDDEN]),
    );
    let mut linears: Vec<(String, usize, usize)> = Vec::new();
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            let w: Vec<f32> = rng.vec(HIDDEN, 0.2).iter().map(|v| 1.0 + v).collect();
            tensors.insert(format!("{p}.{norm}.weight"), f32_tensor(vec![HIDDEN], &w));
        }
        let parts: &[(&str, usize, usize)] = if fused {
            &[
                ("self_attn.qkv_proj", q + 2 * kv, HIDDEN),
                ("mlp.gate_up_proj", 2 * INTER, HIDDEN),
            ]
        } else {
            &[
                ("self_attn.q_proj", q, HIDDEN),
                ("self_attn.k_proj", kv, HIDDEN),
                ("self_attn.v_proj", kv, HIDDEN),
                ("mlp.gate_proj", INTER, HIDDEN),
                ("mlp.up_proj", INTER, HIDDEN),
            ]
        };
        let others = [
            ("self_attn.o_proj", HIDDEN, q),
            ("mlp.down_proj", HIDDEN, INTER),
        ];
        for (name, out, k) in parts.iter().chain(&others) {
            linears.push((format!("{p}.{name}"), *out, *k));
        }
    }
    for (prefix, out, k) in linears {
        let w = rng.vec(out * k, 1.5 / (k as f32).sqrt());
        for (suffix, dtype, shape, bytes) in pack(layout, &w, out, k, group) {
            tensors.insert(format!("{prefix}.{suffix}"), (dtype, shape, bytes));
        }
    }
    write_safetensors(dir, &tensors);
    let config = json!({
        "model_type": if fused { "phi3" } else { "llama" },
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": INTER,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
        "quantization_config": quantization_config(layout, group),
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// The group size of the common::Tiny checkpoints in `layout`: AWQ 16 (divides every input width), GPTQ 20
/// (a ragged last group); neither a multiple of 32, so the int4 kernels cannot take them.
pub fn tiny_group(layout: Layout) -> usize {
    match layout {
        Layout::Awq => 16,
        Layout::GptqActOrder => 20,
    }
}

/// The common::Tiny llama whose decoder linears are quantized in `layout` (groups of [`tiny_group`]), fused
/// (one qkv_proj and one gate_up_proj per layer, Phi-3's layout) or not.
pub fn write_tiny_quantized(dir: &Path, layout: Layout, fused: bool) {
    let mut w = common::tiny_weights(&Tiny::llama());
    if fused {
        for i in 0..common::LAYERS {
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
    let group = tiny_group(layout);
    let mut tensors: Tensors = BTreeMap::new();
    for (name, (shape, data)) in w {
        if !(name.starts_with("model.layers.") && name.ends_with("_proj.weight")) {
            tensors.insert(name, f32_tensor(shape, &data));
            continue;
        }
        let prefix = name.trim_end_matches(".weight");
        for (suffix, dtype, shape, bytes) in pack(layout, &data, shape[0], shape[1], group) {
            tensors.insert(format!("{prefix}.{suffix}"), (dtype, shape, bytes));
        }
    }
    write_safetensors(dir, &tensors);
    let config = json!({
        "model_type": if fused { "phi3" } else { "llama" },
        "vocab_size": common::VOCAB, "hidden_size": common::HIDDEN,
        "intermediate_size": common::INTER, "num_hidden_layers": common::LAYERS,
        "num_attention_heads": common::HEADS, "num_key_value_heads": common::KV_HEADS,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
        "quantization_config": quantization_config(layout, group),
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// Two rows of `len` tokens below `vocab`, the second right-padded by `pad` (labels -100 there).
pub fn batch(len: u32, pad: u32, vocab: usize) -> Vec<Sample> {
    (0..2u32)
        .map(|r| {
            let ids: Vec<u32> = (0..len)
                .map(|t| (5 + 7 * r + 13 * t * (t + 3)) % (vocab as u32 - 3) + 3)
                .collect();
            let real = len - pad * r;
            Sample {
                attention_mask: (0..len).map(|t| u8::from(t < real)).collect(),
                labels: ids
                    .iter()
                    .zip(0..)
                    .map(|(&id, t)| if t < real { i64::from(id) } else { -100 })
                    .collect(),
                input_ids: ids,
            }
        })
        .collect()
}

/// LoRA r 4, alpha 8, dropout 0.1 on the attention and MLP projections (fused: qkv_proj and gate_up_proj).
pub fn spec(fused: bool) -> LoraSpec {
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

/// LoRA trainers ([`spec`], learning rate 1e-2) over the `dense` base and over `other`, the same checkpoint
/// loaded another way, to compare step for step.
pub fn trainers(
    dense: &Transformer,
    other: &Transformer,
    fused: bool,
    gradient_checkpointing: bool,
) -> (LoraTrainer, LoraTrainer) {
    let cfg = TrainConfig {
        learning_rate: 1e-2,
        gradient_checkpointing,
        ..TrainConfig::default()
    };
    let a = LoraTrainer::new(dense.clone(), &spec(fused), cfg.clone()).unwrap();
    let b = LoraTrainer::new(other.clone(), &spec(fused), cfg).unwrap();
    (a, b)
}
