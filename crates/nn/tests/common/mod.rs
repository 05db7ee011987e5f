//! Test support: tiny random-weight Hugging Face folders (config.json + model.safetensors) of
//! each architecture, written in-test, and a max-abs-diff measure.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};

pub const VOCAB: usize = 50;
pub const HIDDEN: usize = 32;
pub const INTER: usize = 48;
pub const LAYERS: usize = 2;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = 8;

/// What varies between the tiny models.
#[derive(Clone)]
pub struct Tiny {
    pub model_type: &'static str,
    /// Store q/k/v as one qkv_proj and gate/up as one gate_up_proj (Phi-3's layout).
    pub fused: bool,
    /// q/k/v biases (Qwen2).
    pub bias: bool,
    pub tie: bool,
    pub sliding_window: Option<usize>,
    pub rope_scaling: Option<Value>,
    pub seed: u64,
}

impl Tiny {
    pub fn llama() -> Self {
        Tiny {
            model_type: "llama",
            fused: false,
            bias: false,
            tie: true,
            sliding_window: None,
            rope_scaling: None,
            seed: 1,
        }
    }
}

/// Deterministic values in [-1, 1) (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        (bits as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next_f32() * scale).collect()
    }
}

/// The tensors of a tiny model in the unfused (Llama) layout: name -> (shape, data).
pub fn tiny_weights(t: &Tiny) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut rng = Rng::new(t.seed);
    let mut w = BTreeMap::new();
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    let mut put = |name: String, shape: Vec<usize>, data: Vec<f32>| {
        w.insert(name, (shape, data));
    };
    put(
        "model.embed_tokens.weight".into(),
        vec![VOCAB, HIDDEN],
        rng.vec(VOCAB * HIDDEN, 1.0),
    );
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        let norm = |rng: &mut Rng| {
            rng.vec(HIDDEN, 0.2)
                .iter()
                .map(|v| 1.0 + v)
                .collect::<Vec<_>>()
        };
        put(
            format!("{p}.input_layernorm.weight"),
            vec![HIDDEN],
            norm(&mut rng),
        );
        put(
            format!("{p}.post_attention_layernorm.weight"),
            vec![HIDDEN],
            norm(&mut rng),
        );
        for (name, out, inp) in [
            ("self_attn.q_proj", q, HIDDEN),
            ("self_attn.k_proj", kv, HIDDEN),
            ("self_attn.v_proj", kv, HIDDEN),
            ("self_attn.o_proj", HIDDEN, q),
            ("mlp.gate_proj", INTER, HIDDEN),
            ("mlp.up_proj", INTER, HIDDEN),
            ("mlp.down_proj", HIDDEN, INTER),
        ] {
            let scale = 1.5 / (inp as f32).sqrt();
            put(
                format!("{p}.{name}.weight"),
                vec![out, inp],
                rng.vec(out * inp, scale),
            );
            if t.bias
                && ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"].contains(&name)
            {
                put(format!("{p}.{name}.bias"), vec![out], rng.vec(out, 0.3));
            }
        }
    }
    put(
        "model.norm.weight".into(),
        vec![HIDDEN],
        rng.vec(HIDDEN, 0.2).iter().map(|v| 1.0 + v).collect(),
    );
    if !t.tie {
        put(
            "lm_head.weight".into(),
            vec![VOCAB, HIDDEN],
            rng.vec(VOCAB * HIDDEN, 0.5),
        );
    }
    w
}

/// Stacks `parts` (in order) into one tensor `fused`, removing them.
fn fuse(w: &mut BTreeMap<String, (Vec<usize>, Vec<f32>)>, parts: &[String], fused: String) {
    let mut rows = 0;
    let mut data = Vec::new();
    let mut cols = 0;
    for p in parts {
        let (shape, d) = w.remove(p).expect("part present");
        rows += shape[0];
        cols = shape[1];
        data.extend(d);
    }
    w.insert(fused, (vec![rows, cols], data));
}

/// Writes config.json and model.safetensors of a tiny model into `dir`.
pub fn write_tiny(dir: &Path, t: &Tiny) {
    let mut w = tiny_weights(t);
    if t.fused {
        for i in 0..LAYERS {
            let a = format!("model.layers.{i}.self_attn");
            let m = format!("model.layers.{i}.mlp");
            fuse(
                &mut w,
                &[
                    format!("{a}.q_proj.weight"),
                    format!("{a}.k_proj.weight"),
                    format!("{a}.v_proj.weight"),
                ],
                format!("{a}.qkv_proj.weight"),
            );
            fuse(
                &mut w,
                &[
                    format!("{m}.gate_proj.weight"),
                    format!("{m}.up_proj.weight"),
                ],
                format!("{m}.gate_up_proj.weight"),
            );
        }
    }
    let mut config = json!({
        "model_type": t.model_type,
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": t.tie,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
    });
    if let Some(window) = t.sliding_window {
        config["sliding_window"] = json!(window);
        if t.model_type == "qwen2" {
            config["use_sliding_window"] = json!(true);
        }
    }
    if let Some(rs) = &t.rope_scaling {
        config["rope_scaling"] = rs.clone();
    }
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    let bytes: BTreeMap<String, (Vec<usize>, Vec<u8>)> = w
        .into_iter()
        .map(|(k, (shape, d))| (k, (shape, d.iter().flat_map(|v| v.to_le_bytes()).collect())))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(k, (shape, b))| {
            (
                k.clone(),
                TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

/// Largest |a[i] - b[i]|.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
