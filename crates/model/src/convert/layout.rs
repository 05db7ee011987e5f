//! The Hugging Face layout of a llama- or qwen2-architecture GGUF: config.json from `{arch}.*`
//! metadata and llama.cpp tensor names mapped back to transformers' (the inverse of llama.cpp's
//! convert_hf_to_gguf.py `LlamaModel`, including its q/k row permutation, and `Qwen2Model`).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, TensorInfo};

/// How a GGUF tensor becomes its Hugging Face counterpart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transform {
    /// Dequantized as is.
    Copy,
    /// Dequantized, then the rows un-permuted for `n_head` heads (see [`unpermute_rows`]).
    Unpermute { n_head: usize },
}

/// One tensor of the output checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct PlannedTensor<'a> {
    pub hf_name: String,
    pub source: &'a TensorInfo,
    pub transform: Transform,
}

/// The GGUF architectures converted here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arch {
    /// Llama 2/3, Mistral, SmolLM...: llama.cpp permutes q/k rows.
    Llama,
    /// Qwen2: q/k/v biases, rows not permuted.
    Qwen2,
}

/// Hyper-parameters read from the `{arch}.*` metadata.
#[derive(Debug, Clone)]
pub(crate) struct Hparams {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub context: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Value,
    pub tied: bool,
}

impl Hparams {
    pub fn read(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.architecture()?;
        let kind = match arch {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            _ => {
                return Err(ModelError::Gguf {
                    path: gguf.path().to_path_buf(),
                    reason: format!(
                        "general.architecture `{arch}` is not supported for conversion \
                         (expected llama or qwen2)"
                    ),
                })
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let hidden: usize = gguf.get(&key("embedding_length"))?;
        let heads: usize = gguf.get(&key("attention.head_count"))?;
        if heads == 0 || !hidden.is_multiple_of(heads) {
            return Err(ModelError::field(
                gguf.path(),
                key("attention.head_count"),
                format!("{heads} does not divide embedding_length {hidden}"),
            ));
        }
        let kv_heads: usize = gguf.opt(&key("attention.head_count_kv"))?.unwrap_or(heads);
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(ModelError::field(
                gguf.path(),
                key("attention.head_count_kv"),
                format!("{kv_heads} does not divide head_count {heads}"),
            ));
        }
        let head_dim = gguf
            .opt(&key("attention.key_length"))?
            .unwrap_or(hidden / heads);
        let embed = gguf
            .tensor("token_embd.weight")
            .ok_or_else(|| ModelError::MissingTensor {
                folder: gguf.path().to_path_buf(),
                name: "token_embd.weight".into(),
            })?;
        let vocab_size = match gguf.opt(&key("vocab_size"))? {
            Some(v) => v,
            None => embed.shape().first().copied().unwrap_or(0),
        };
        let rope_scaling = match gguf.opt::<&str>(&key("rope.scaling.type"))? {
            None | Some("none") => Value::Null,
            Some("linear") => {
                let factor: f32 = gguf.get(&key("rope.scaling.factor"))?;
                json!({"rope_type": "linear", "factor": exact(factor)})
            }
            Some(other) => {
                return Err(ModelError::field(
                    gguf.path(),
                    key("rope.scaling.type"),
                    format!("`{other}` is not supported (expected none or linear)"),
                ))
            }
        };
        if gguf.tensor("rope_freqs.weight").is_some() {
            tracing::warn!(
                "{}: rope_freqs.weight (llama3 rope scaling factors) has no place in config.json; \
                 the converted model uses plain rope",
                gguf.path().display()
            );
        }
        Ok(Hparams {
            arch: kind,
            vocab_size,
            hidden,
            ffn: gguf.get(&key("feed_forward_length"))?,
            layers: gguf.get(&key("block_count"))?,
            heads,
            kv_heads,
            head_dim,
            context: gguf.opt(&key("context_length"))?.unwrap_or(2048),
            rms_eps: gguf
                .opt(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            rope_theta: gguf.opt(&key("rope.freq_base"))?.unwrap_or(10000.0),
            rope_scaling,
            tied: gguf.tensor("output.weight").is_none(),
        })
    }
}

/// An f32 from the file as the f64 with the same shortest decimal form (1e-5, not 9.9999997e-6).
fn exact(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// config.json for `LlamaForCausalLM` or `Qwen2ForCausalLM`.
pub(crate) fn hf_config(gguf: &GgufFile, hp: &Hparams) -> Result<Value> {
    let token_id = |k: &str| gguf.opt::<u32>(&format!("tokenizer.ggml.{k}"));
    let mut c = Map::new();
    match hp.arch {
        Arch::Llama => {
            c.insert("architectures".into(), json!(["LlamaForCausalLM"]));
            c.insert("model_type".into(), json!("llama"));
            c.insert("attention_bias".into(), json!(false));
            c.insert("mlp_bias".into(), json!(false));
        }
        Arch::Qwen2 => {
            c.insert("architectures".into(), json!(["Qwen2ForCausalLM"]));
            c.insert("model_type".into(), json!("qwen2"));
            c.insert("use_sliding_window".into(), json!(false));
        }
    }
    c.insert("attention_dropout".into(), json!(0.0));
    c.insert("hidden_act".into(), json!("silu"));
    c.insert("hidden_size".into(), json!(hp.hidden));
    c.insert("intermediate_size".into(), json!(hp.ffn));
    c.insert("num_hidden_layers".into(), json!(hp.layers));
    c.insert("num_attention_heads".into(), json!(hp.heads));
    c.insert("num_key_value_heads".into(), json!(hp.kv_heads));
    c.insert("head_dim".into(), json!(hp.head_dim));
    c.insert("max_position_embeddings".into(), json!(hp.context));
    c.insert("rms_norm_eps".into(), json!(exact(hp.rms_eps)));
    c.insert("rope_theta".into(), json!(exact(hp.rope_theta)));
    c.insert("rope_scaling".into(), hp.rope_scaling.clone());
    c.insert("vocab_size".into(), json!(hp.vocab_size));
    c.insert("tie_word_embeddings".into(), json!(hp.tied));
    c.insert("initializer_range".into(), json!(0.02));
    c.insert("use_cache".into(), json!(true));
    c.insert("torch_dtype".into(), json!("float32"));
    for (field, key) in [
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("pad_token_id", "padding_token_id"),
    ] {
        if let Some(id) = token_id(key)? {
            c.insert(field.into(), json!(id));
        }
    }
    Ok(Value::Object(c))
}

/// generation_config.json: the special token ids transformers' `generate` needs.
pub(crate) fn generation_config(config: &Value) -> Value {
    let mut g = Map::new();
    g.insert("_from_model_config".into(), json!(true));
    for k in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        if let Some(v) = config.get(k) {
            g.insert(k.into(), v.clone());
        }
    }
    Value::Object(g)
}

/// Maps every GGUF tensor to its Hugging Face name, checking shapes and that nothing is missing.
/// Result sorted by Hugging Face name.
pub(crate) fn plan_tensors<'a>(gguf: &'a GgufFile, hp: &Hparams) -> Result<Vec<PlannedTensor<'a>>> {
    let q_rows = hp.heads * hp.head_dim;
    let kv_rows = hp.kv_heads * hp.head_dim;
    let mut plan = BTreeMap::new();
    for t in gguf.tensors() {
        let (hf_name, shape, transform) = match t.name() {
            "token_embd.weight" => (
                "model.embed_tokens.weight".to_string(),
                vec![hp.vocab_size, hp.hidden],
                Transform::Copy,
            ),
            "output_norm.weight" => (
                "model.norm.weight".to_string(),
                vec![hp.hidden],
                Transform::Copy,
            ),
            "output.weight" => (
                "lm_head.weight".to_string(),
                vec![hp.vocab_size, hp.hidden],
                Transform::Copy,
            ),
            "rope_freqs.weight" => continue,
            name => {
                let unknown = || ModelError::BadTensor {
                    path: gguf.path().to_path_buf(),
                    name: name.to_string(),
                    reason: format!(
                        "not a tensor of the {:?} layout this converter knows",
                        hp.arch
                    ),
                };
                let rest = name.strip_prefix("blk.").ok_or_else(unknown)?;
                let (layer, part) = rest.split_once('.').ok_or_else(unknown)?;
                let layer: usize = layer.parse().map_err(|_| unknown())?;
                if layer >= hp.layers {
                    return Err(ModelError::BadTensor {
                        path: gguf.path().to_path_buf(),
                        name: name.to_string(),
                        reason: format!("layer {layer} is beyond block_count {}", hp.layers),
                    });
                }
                let qk = |n_head| match hp.arch {
                    Arch::Llama => Transform::Unpermute { n_head },
                    Arch::Qwen2 => Transform::Copy,
                };
                let (suffix, shape, transform) = match (part, hp.arch) {
                    ("attn_norm.weight", _) => {
                        ("input_layernorm.weight", vec![hp.hidden], Transform::Copy)
                    }
                    ("ffn_norm.weight", _) => (
                        "post_attention_layernorm.weight",
                        vec![hp.hidden],
                        Transform::Copy,
                    ),
                    ("attn_q.weight", _) => (
                        "self_attn.q_proj.weight",
                        vec![q_rows, hp.hidden],
                        qk(hp.heads),
                    ),
                    ("attn_k.weight", _) => (
                        "self_attn.k_proj.weight",
                        vec![kv_rows, hp.hidden],
                        qk(hp.kv_heads),
                    ),
                    ("attn_q.bias", Arch::Qwen2) => {
                        ("self_attn.q_proj.bias", vec![q_rows], Transform::Copy)
                    }
                    ("attn_k.bias", Arch::Qwen2) => {
                        ("self_attn.k_proj.bias", vec![kv_rows], Transform::Copy)
                    }
                    ("attn_v.bias", Arch::Qwen2) => {
                        ("self_attn.v_proj.bias", vec![kv_rows], Transform::Copy)
                    }
                    ("attn_v.weight", _) => (
                        "self_attn.v_proj.weight",
                        vec![kv_rows, hp.hidden],
                        Transform::Copy,
                    ),
                    ("attn_output.weight", _) => (
                        "self_attn.o_proj.weight",
                        vec![hp.hidden, q_rows],
                        Transform::Copy,
                    ),
                    ("ffn_gate.weight", _) => (
                        "mlp.gate_proj.weight",
                        vec![hp.ffn, hp.hidden],
                        Transform::Copy,
                    ),
                    ("ffn_up.weight", _) => (
                        "mlp.up_proj.weight",
                        vec![hp.ffn, hp.hidden],
                        Transform::Copy,
                    ),
                    ("ffn_down.weight", _) => (
                        "mlp.down_proj.weight",
                        vec![hp.hidden, hp.ffn],
                        Transform::Copy,
                    ),
                    _ => return Err(unknown()),
                };
                (format!("model.layers.{layer}.{suffix}"), shape, transform)
            }
        };
        if t.shape() != shape {
            return Err(ModelError::BadTensor {
                path: gguf.path().to_path_buf(),
                name: t.name().to_string(),
                reason: format!(
                    "shape {:?}, expected {shape:?} from the metadata",
                    t.shape()
                ),
            });
        }
        if let Transform::Unpermute { n_head } = transform {
            if !shape[0].is_multiple_of(2 * n_head) {
                return Err(ModelError::BadTensor {
                    path: gguf.path().to_path_buf(),
                    name: t.name().to_string(),
                    reason: format!(
                        "{} rows cannot be split into {n_head} heads of even size",
                        shape[0]
                    ),
                });
            }
        }
        if plan
            .insert(
                hf_name.clone(),
                PlannedTensor {
                    hf_name,
                    source: t,
                    transform,
                },
            )
            .is_some()
        {
            return Err(ModelError::BadTensor {
                path: gguf.path().to_path_buf(),
                name: t.name().to_string(),
                reason: "appears twice".into(),
            });
        }
    }
    let mut required = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
    ];
    for i in 0..hp.layers {
        for part in [
            "input_layernorm",
            "post_attention_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            required.push(format!("model.layers.{i}.{part}.weight"));
        }
        if hp.arch == Arch::Qwen2 {
            for proj in ["q_proj", "k_proj", "v_proj"] {
                required.push(format!("model.layers.{i}.self_attn.{proj}.bias"));
            }
        }
    }
    if let Some(missing) = required.into_iter().find(|n| !plan.contains_key(n)) {
        return Err(ModelError::MissingTensor {
            folder: gguf.path().to_path_buf(),
            name: missing,
        });
    }
    Ok(plan.into_values().collect())
}

/// Undoes llama.cpp's `LlamaModel.permute` on a q/k weight `w: [rows, cols]` (row-major), where
/// `rows = n_head * 2 * half`: GGUF row `(h, d, p)` (p fastest) goes to Hugging Face row `(h, p, d)`,
/// i.e. transformers' `reshape(n_head, half, 2, cols).swapaxes(1, 2)`.
pub(crate) fn unpermute_rows(w: &[f32], rows: usize, n_head: usize) -> Vec<f32> {
    let cols = w.len().checked_div(rows).unwrap_or(0);
    let half = rows / n_head / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for p in 0..2 {
            for d in 0..half {
                let src = (h * 2 * half + d * 2 + p) * cols;
                let dst = (h * 2 * half + p * half + d) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}
