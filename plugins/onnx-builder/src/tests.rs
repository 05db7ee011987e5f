//! Unit tests of ModelBuilder on synthetic tiny checkpoints (config.json + model.safetensors written here):
//! graph structure, external data, the LongRoPE If, int4, the LoRA hook and config validation. Numerical parity
//! with transformers and the onnxruntime-genai runs are in tests/python/test_auto_opt.py.

use std::collections::BTreeMap;
use std::path::Path;

use olive_onnx::graph::GraphBuilder;
use olive_onnx::proto::{ModelProto, NodeProto};
use olive_onnx::tensor::DataType;
use olive_pass_sdk::testing::TestHost;
use olive_pass_sdk::{kinds, Model};
use prost::Message;
use safetensors::tensor::TensorView;
use serde_json::json;

use olive_model::adapter::{LoraModule, LoraWeights, Projection};

use crate::linear::{LinearSpec, Linears};
use crate::ModelBuilder;

pub(crate) const HIDDEN: usize = 32;
pub(crate) const INTER: usize = 48;
const VOCAB: usize = 40;
pub(crate) const LAYERS: usize = 2;

/// Writes a tiny model of `model_type` (2 heads of 16, 1 kv head) with deterministic weights.
pub(crate) fn tiny_model(dir: &Path, model_type: &str, extra: serde_json::Value) {
    let mut config = json!({
        "model_type": model_type, "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": INTER,
        "num_hidden_layers": LAYERS, "num_attention_heads": 2, "num_key_value_heads": 1,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64,
        "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2,
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    let (q, kv) = (32, 16);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![VOCAB, HIDDEN]),
        ("model.norm.weight".into(), vec![HIDDEN]),
    ];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        shapes.push((format!("{p}.input_layernorm.weight"), vec![HIDDEN]));
        shapes.push((format!("{p}.post_attention_layernorm.weight"), vec![HIDDEN]));
        shapes.push((format!("{p}.self_attn.o_proj.weight"), vec![HIDDEN, q]));
        shapes.push((format!("{p}.mlp.down_proj.weight"), vec![HIDDEN, INTER]));
        if model_type == "phi3" {
            shapes.push((
                format!("{p}.self_attn.qkv_proj.weight"),
                vec![q + 2 * kv, HIDDEN],
            ));
            shapes.push((
                format!("{p}.mlp.gate_up_proj.weight"),
                vec![2 * INTER, HIDDEN],
            ));
        } else {
            for (name, out) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                shapes.push((format!("{p}.self_attn.{name}.weight"), vec![out, HIDDEN]));
            }
            shapes.push((format!("{p}.mlp.gate_proj.weight"), vec![INTER, HIDDEN]));
            shapes.push((format!("{p}.mlp.up_proj.weight"), vec![INTER, HIDDEN]));
        }
    }
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|j| ((i * 31 + j * 7) % 13) as f32 / 13.0 - 0.5)
                .collect();
            (name, shape, olive_onnx::tensor::f32_bytes(&values))
        })
        .collect();
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(name, shape, bytes)| {
            (
                name.clone(),
                TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
}

pub(crate) fn export(model_dir: &Path, out: &Path, config: &str) -> Result<ModelProto, String> {
    let host = TestHost::new(out);
    host.run::<ModelBuilder>(&Model::new(kinds::HF, model_dir), config)
        .map_err(|e| e.to_string())?;
    let bytes = std::fs::read(out.join("model.onnx")).unwrap();
    Ok(ModelProto::decode(&*bytes).unwrap())
}

pub(crate) fn nodes<'a>(m: &'a ModelProto, op: &str) -> Vec<&'a NodeProto> {
    let g = m.graph.as_ref().unwrap();
    g.node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some(op))
        .collect()
}

fn attr(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .and_then(|a| a.i)
}

#[test]
fn llama_fp32_graph_matches_genais_layout() {
    let (input, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    tiny_model(input.path(), "llama", json!({}));
    let m = export(input.path(), out.path(), r#"{"precision": "fp32"}"#).unwrap();
    let g = m.graph.as_ref().unwrap();
    let names = |v: &[olive_onnx::proto::ValueInfoProto]| -> Vec<String> {
        v.iter().map(|x| x.name.clone().unwrap()).collect()
    };
    assert_eq!(
        names(&g.input),
        [
            "input_ids",
            "attention_mask",
            "past_key_values.0.key",
            "past_key_values.0.value",
            "past_key_values.1.key",
            "past_key_values.1.value"
        ]
    );
    assert_eq!(
        names(&g.output)[..3],
        ["logits", "present.0.key", "present.0.value"]
    );
    let gqa = nodes(&m, "GroupQueryAttention");
    assert_eq!(gqa.len(), LAYERS);
    // packed QKV, no trailing optional inputs (onnxruntime-genai 0.5.2's ORT accepts 7..9)
    assert_eq!(gqa[0].input.len(), 9);
    assert_eq!(&gqa[0].input[1..3], ["", ""]);
    assert_eq!(gqa[0].input[7..], ["cos_cache", "sin_cache"]);
    assert_eq!(
        (attr(gqa[0], "num_heads"), attr(gqa[0], "kv_num_heads")),
        (Some(2), Some(1))
    );
    assert_eq!(attr(gqa[0], "do_rotary"), Some(1));
    assert_eq!(
        nodes(&m, "SkipSimplifiedLayerNormalization").len(),
        2 * LAYERS
    );
    assert_eq!(
        m.opset_import
            .iter()
            .find(|o| o.domain.as_deref() == Some(""))
            .unwrap()
            .version,
        Some(21)
    );
    for t in &g.initializer {
        assert!(
            t.raw_data.is_none() && !t.external_data.is_empty(),
            "{:?}",
            t.name
        );
    }
    // tied embeddings: lm_head is the embedding transposed
    assert!(g
        .initializer
        .iter()
        .any(|t| t.name.as_deref() == Some("lm_head.MatMul.weight")
            && t.dims == [HIDDEN as i64, VOCAB as i64]));
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("genai_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["model"]["decoder"]["head_size"], 16);
    assert_eq!(config["model"]["context_length"], 64);
    assert_eq!(
        config["model"]["decoder"]["session_options"]["provider_options"],
        json!([])
    );
    assert!(out.path().join("tokenizer.json").is_file());
    assert!(out.path().join("model.onnx.data").is_file());
}

#[test]
fn phi3_longrope_switches_caches_on_total_length() {
    let (input, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let factors: Vec<f64> = (0..8).map(|i| 1.0 + i as f64 / 10.0).collect();
    tiny_model(
        input.path(),
        "phi3",
        json!({
            "tie_word_embeddings": false,
            "original_max_position_embeddings": 16,
            "rope_scaling": {"type": "longrope", "short_factor": factors, "long_factor": factors},
        }),
    );
    // phi3 with untied embeddings needs lm_head
    let err = export(input.path(), out.path(), r#"{"precision": "fp32"}"#).unwrap_err();
    assert!(err.contains("lm_head.weight"), "{err}");
    tiny_model(
        input.path(),
        "phi3",
        json!({
            "original_max_position_embeddings": 16,
            "rope_scaling": {"type": "longrope", "short_factor": factors, "long_factor": factors},
        }),
    );
    let m = export(input.path(), out.path(), r#"{"precision": "fp32"}"#).unwrap();
    let ifs = nodes(&m, "If");
    assert_eq!(ifs.len(), 1);
    assert_eq!(ifs[0].output, ["cos_cache", "sin_cache"]);
    let g = m.graph.as_ref().unwrap();
    let dims = |name: &str| {
        g.initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(name))
            .unwrap()
            .dims
            .clone()
    };
    assert_eq!(dims("cos_cache_small"), [16, 8]);
    assert_eq!(dims("cos_cache_large"), [64, 8]);
    // Phi-3's fused gate_up_proj is split into gate and up MatMuls
    assert!(g
        .node
        .iter()
        .any(|n| n.name.as_deref() == Some("/model/layers.0/mlp/gate_proj/MatMul")));
}

#[test]
fn int4_puts_every_linear_in_matmulnbits() {
    let (input, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    tiny_model(input.path(), "qwen2", json!({"attention_bias": true}));
    let err = export(input.path(), out.path(), r#"{"precision": "int4"}"#).unwrap_err();
    assert!(err.contains("q_proj.bias"), "{err}");
    std::fs::remove_dir_all(input.path()).unwrap();
    std::fs::create_dir(input.path()).unwrap();
    tiny_model(input.path(), "llama", json!({}));
    let m = export(
        input.path(),
        out.path(),
        r#"{"precision": "int4", "int4_block_size": 16}"#,
    )
    .unwrap();
    let nbits = nodes(&m, "MatMulNBits");
    assert_eq!(nbits.len(), LAYERS * 5 + 1);
    assert!(nodes(&m, "MatMul").is_empty());
    assert_eq!(
        (
            attr(nbits[0], "block_size"),
            attr(nbits[0], "accuracy_level")
        ),
        (Some(16), Some(4))
    );
    let logits = m
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .find(|n| n.output.iter().any(|o| o == "logits"));
    assert_eq!(logits.and_then(|n| n.op_type.as_deref()), Some("Identity"));
    // symmetric by default (no zero points); asymmetric adds them as a 4th input
    assert_eq!(nbits[0].input.len(), 3);
    let m = export(
        input.path(),
        out.path(),
        r#"{"precision": "int4", "int4_is_symmetric": false, "int4_accuracy_level": 1}"#,
    )
    .unwrap();
    let nbits = nodes(&m, "MatMulNBits");
    assert_eq!(nbits[0].input.len(), 4);
    assert!(nbits[0].input[3].ends_with("_zero_points"));
    assert_eq!(attr(nbits[0], "accuracy_level"), Some(1));
}

#[test]
fn fp16_weights_and_io() {
    let (input, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    tiny_model(input.path(), "mistral", json!({"sliding_window": 8}));
    let m = export(input.path(), out.path(), r#"{"precision": "fp16"}"#).unwrap();
    let g = m.graph.as_ref().unwrap();
    let matmul_weights: Vec<_> = g
        .initializer
        .iter()
        .filter(|t| t.name.as_ref().unwrap().ends_with("MatMul.weight"))
        .collect();
    assert!(matmul_weights
        .iter()
        .all(|t| t.data_type == Some(DataType::Float16.code())));
    assert_eq!(
        attr(nodes(&m, "GroupQueryAttention")[0], "local_window_size"),
        Some(8)
    );
}

#[test]
fn bad_configs_and_models_are_refused() {
    let (input, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    tiny_model(input.path(), "llama", json!({}));
    assert!(export(input.path(), out.path(), r#"{"precision": "fp8"}"#).is_err());
    let err = export(
        input.path(),
        out.path(),
        r#"{"precision": "fp32", "bogus": 1}"#,
    )
    .unwrap_err();
    assert!(err.contains("bogus"), "{err}");
    let err = export(
        input.path(),
        out.path(),
        r#"{"precision": "fp32", "execution_provider": "FooExecutionProvider"}"#,
    )
    .unwrap_err();
    assert!(err.contains("CUDAExecutionProvider"), "{err}");
    tiny_model(input.path(), "llama", json!({"head_dim": 8}));
    let err = export(input.path(), out.path(), r#"{"precision": "fp32"}"#).unwrap_err();
    assert!(err.contains("head_dim 8"), "{err}");
}

#[test]
fn lora_branch_is_added_to_the_base_linear() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = GraphBuilder::create(dir.path(), "m.onnx").unwrap();
    let mut lora = BTreeMap::new();
    lora.insert(
        "model.layers.0.attn.q_proj".to_string(),
        LoraWeights {
            module: LoraModule {
                layer: 0,
                projection: Projection::Q,
            },
            rank: 2,
            in_features: 4,
            out_features: 3,
            a: vec![0.5; 2 * 4],
            b: vec![0.25; 3 * 2],
            scale: 2.0,
        },
    );
    let linears = Linears {
        dtype: DataType::Float,
        nbits: None,
        lora,
    };
    let spec = |name: &str| LinearSpec {
        basename: format!("/model/layers.0/attn/{name}"),
        weight: crate::linear::Weight::Float(vec![1.0; 3 * 4]),
        out_features: 3,
        in_features: 4,
        bias: Some(vec![0.0; 3]),
        output: None,
    };
    let out = linears.emit(&mut g, spec("q_proj"), "x").unwrap();
    assert_eq!(out, "/model/layers.0/attn/q_proj/Add/output_0");
    let plain = linears.emit(&mut g, spec("k_proj"), "x").unwrap();
    assert_eq!(plain, "/model/layers.0/attn/k_proj/Add/output_0");
    g.finish(&[("", 21)], "test").unwrap();
    let m = ModelProto::decode(&*std::fs::read(dir.path().join("m.onnx")).unwrap()).unwrap();
    let g = m.graph.unwrap();
    let find = |name: &str| {
        g.node
            .iter()
            .find(|n| n.name.as_deref() == Some(name))
            .unwrap()
    };
    assert_eq!(
        find("/model/layers.0/attn/q_proj/lora_A/MatMul").input,
        ["x", "model.layers.0.attn.q_proj.lora_A.weight"]
    );
    assert_eq!(
        find("/model/layers.0/attn/q_proj/lora/Add").input,
        [
            "/model/layers.0/attn/q_proj/MatMul/output_0",
            "/model/layers.0/attn/q_proj/lora_B/MatMul/output_0"
        ]
    );
    let dims = |name: &str| {
        g.initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(name))
            .unwrap()
            .dims
            .clone()
    };
    assert_eq!(dims("model.layers.0.attn.q_proj.lora_A.weight"), [4, 2]);
    assert_eq!(dims("model.layers.0.attn.q_proj.lora_B.weight"), [2, 3]);
    assert!(!g
        .node
        .iter()
        .any(|n| n.name.as_deref() == Some("/model/layers.0/attn/k_proj/lora/Add")));
}
