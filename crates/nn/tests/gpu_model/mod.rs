//! Random-weight Hugging Face checkpoints for the GPU tests (one per architecture: Llama tied, Qwen2 with q/k/v
//! biases, Mistral with a sliding window, Phi-3 fused with LongRoPE; F32 or int4 AutoAWQ GEMM / GPTQ v1 act-order),
//! shared by the transformer and the training tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::int4::{f32_tensor, pack, quantization_config, write_safetensors, Layout, Tensors};

pub const VOCAB: usize = 300;
pub const LAYERS: usize = 2;

pub struct Arch {
    pub model_type: &'static str,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub inter: usize,
    pub fused: bool,
    pub bias: bool,
    pub tie: bool,
    pub extra: Value,
}

pub fn arch(model_type: &'static str) -> Arch {
    let base = Arch {
        model_type,
        hidden: 256,
        heads: 4,
        kv_heads: 2,
        inter: 512,
        fused: false,
        bias: false,
        tie: true,
        extra: json!({}),
    };
    match model_type {
        "qwen2" => Arch {
            bias: true,
            tie: false,
            ..base
        },
        "mistral" => Arch {
            extra: json!({"sliding_window": 16}),
            ..base
        },
        // head_dim 96; LongRoPE with an original context of 32, so a 40-token prompt takes the long factors.
        "phi3" => Arch {
            hidden: 384,
            fused: true,
            tie: false,
            extra: json!({
                "original_max_position_embeddings": 32,
                "max_position_embeddings": 256,
                "rope_scaling": {"type": "longrope",
                    "short_factor": (0..48).map(|i| 1.0 + i as f64 / 48.0).collect::<Vec<_>>(),
                    "long_factor": (0..48).map(|i| 1.5 + i as f64 / 24.0).collect::<Vec<_>>()},
            }),
            ..base
        },
        _ => base,
    }
}

/// Deterministic values in [-scale, scale).
pub fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
pub enum Weights {
    F32,
    Awq,
    GptqActOrder,
}

pub fn write_model(dir: &Path, a: &Arch, weights: Weights) {
    let head_dim = a.hidden / a.heads;
    let (q, kv) = (a.heads * head_dim, a.kv_heads * head_dim);
    let mut t: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    let mut seed = 1;
    let mut put = |t: &mut BTreeMap<_, _>, name: String, shape: Vec<usize>, scale: f32| {
        seed += 1;
        let n = shape.iter().product();
        t.insert(name, (shape, random(n, seed, scale)));
    };
    put(
        &mut t,
        "model.embed_tokens.weight".into(),
        vec![VOCAB, a.hidden],
        1.0,
    );
    if !a.tie {
        put(&mut t, "lm_head.weight".into(), vec![VOCAB, a.hidden], 0.1);
    }
    put(&mut t, "model.norm.weight".into(), vec![a.hidden], 1.0);
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            put(&mut t, format!("{p}.{norm}.weight"), vec![a.hidden], 1.0);
        }
        let ws = |k: usize| 1.0 / (k as f32).sqrt();
        let attn: Vec<(&str, usize)> = if a.fused {
            vec![("qkv_proj", q + 2 * kv)]
        } else {
            vec![("q_proj", q), ("k_proj", kv), ("v_proj", kv)]
        };
        for (name, rows) in attn {
            put(
                &mut t,
                format!("{p}.self_attn.{name}.weight"),
                vec![rows, a.hidden],
                ws(a.hidden),
            );
            if a.bias {
                put(
                    &mut t,
                    format!("{p}.self_attn.{name}.bias"),
                    vec![rows],
                    0.5,
                );
            }
        }
        put(
            &mut t,
            format!("{p}.self_attn.o_proj.weight"),
            vec![a.hidden, q],
            ws(q),
        );
        let mlp: Vec<(&str, usize)> = if a.fused {
            vec![("gate_up_proj", 2 * a.inter)]
        } else {
            vec![("gate_proj", a.inter), ("up_proj", a.inter)]
        };
        for (name, rows) in mlp {
            put(
                &mut t,
                format!("{p}.mlp.{name}.weight"),
                vec![rows, a.hidden],
                ws(a.hidden),
            );
        }
        put(
            &mut t,
            format!("{p}.mlp.down_proj.weight"),
            vec![a.hidden, a.inter],
            ws(a.inter),
        );
    }
    let layout = match weights {
        Weights::F32 => None,
        Weights::Awq => Some(Layout::Awq),
        Weights::GptqActOrder => Some(Layout::GptqActOrder),
    };
    let mut tensors = Tensors::new();
    for (name, (shape, data)) in t {
        let linear = name.starts_with("model.layers.") && name.ends_with("_proj.weight");
        let Some(layout) = layout.filter(|_| linear) else {
            tensors.insert(name, f32_tensor(shape, &data));
            continue;
        };
        let prefix = name.trim_end_matches(".weight");
        for (suffix, dtype, shape, bytes) in pack(layout, &data, shape[0], shape[1], 64) {
            tensors.insert(format!("{prefix}.{suffix}"), (dtype, shape, bytes));
        }
    }
    write_safetensors(dir, &tensors);
    let mut config = json!({
        "model_type": a.model_type, "vocab_size": VOCAB, "hidden_size": a.hidden,
        "intermediate_size": a.inter, "num_hidden_layers": LAYERS, "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": a.tie, "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2,
    });
    for (k, v) in a.extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    if a.model_type == "mistral" {
        config["use_sliding_window"] = json!(true);
    }
    if let Some(layout) = layout {
        config["quantization_config"] = quantization_config(layout, 64);
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}
