//! Tests of the PEFT adapter reader: config parsing, weights, validation against base models, Phi-3 splitting.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

use super::*;

fn model(model_type: &str) -> ModelConfig {
    let value = json!({
        "model_type": model_type, "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
    });
    ModelConfig::from_json(Path::new("config.json"), &value).expect("config")
}

fn config_json(r: usize, targets: Value) -> Value {
    json!({"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": targets,
           "base_model_name_or_path": "tiny", "modules_to_save": null, "rank_pattern": {}, "alpha_pattern": {}})
}

/// Values i * 0.01 so every element differs.
fn values(n: usize, offset: f32) -> Vec<f32> {
    (0..n).map(|i| offset + i as f32 * 0.01).collect()
}

/// Writes an adapter folder with the given config and (name, shape) tensors of F32 values.
fn write_adapter(dir: &Path, config: &Value, tensors: &[(&str, Vec<usize>)]) {
    std::fs::write(dir.join(CONFIG_FILE), config.to_string()).expect("write config");
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n = shape.iter().product();
            let bytes = values(n, i as f32)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (name.to_string(), shape.clone(), bytes)
        })
        .collect();
    let views: HashMap<String, TensorView> = data
        .iter()
        .map(|(name, shape, bytes)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), bytes).expect("view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(&views, None, &dir.join(WEIGHTS_FILE))
        .expect("write safetensors");
}

fn name(layer: usize, block: &str, proj: &str, side: &str) -> String {
    format!("base_model.model.model.layers.{layer}.{block}.{proj}.{side}.weight")
}

#[test]
fn config_parses_list_regex_and_patterns() {
    let mut value = config_json(8, json!(["q_proj", "v_proj"]));
    value["rank_pattern"] = json!({"v_proj": 4});
    value["alpha_pattern"] = json!({"layers.1.self_attn.q_proj": 2});
    let config = LoraConfig::from_json(Path::new("a.json"), &value).expect("parse");
    assert_eq!(config.r, 8);
    assert_eq!(config.rank_for("model.layers.0.self_attn.v_proj"), 4);
    assert_eq!(config.rank_for("model.layers.0.self_attn.q_proj"), 8);
    assert_eq!(config.scale_for("model.layers.0.self_attn.q_proj"), 2.0);
    assert_eq!(config.scale_for("model.layers.1.self_attn.q_proj"), 0.25);
    assert!(config.targets("model.layers.0.self_attn.q_proj"));
    assert!(!config.targets("model.layers.0.self_attn.k_proj"));

    let mut value = config_json(4, json!(r".*\.(q|k)_proj"));
    value["use_rslora"] = json!(true);
    let config = LoraConfig::from_json(Path::new("a.json"), &value).expect("parse");
    assert!(config.targets("model.layers.3.self_attn.k_proj"));
    assert!(!config.targets("model.layers.3.self_attn.v_proj"));
    assert_eq!(config.scale_for("model.layers.3.self_attn.k_proj"), 8.0);
}

#[test]
fn config_rejects_unsupported_adapters() {
    let cases = [
        ("peft_type", json!("IA3"), "LORA"),
        ("use_dora", json!(true), "DoRA"),
        ("fan_in_fan_out", json!(true), "Conv1D"),
        ("modules_to_save", json!(["lm_head"]), "lm_head"),
        ("r", json!(0), "positive"),
        ("target_modules", json!(7), "list"),
    ];
    for (field, bad, expected) in cases {
        let mut value = config_json(4, json!(["q_proj"]));
        value[field] = bad;
        let err = LoraConfig::from_json(Path::new("adapter_config.json"), &value).expect_err(field);
        let text = err.to_string();
        assert!(
            text.contains(field) && text.contains(expected),
            "{field}: {text}"
        );
    }
}

#[test]
fn reads_weights_with_rank_and_scale() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_adapter(
        dir.path(),
        &config_json(2, json!(["q_proj"])),
        &[
            (&name(1, "self_attn", "q_proj", "lora_A"), vec![2, 16]),
            (&name(1, "self_attn", "q_proj", "lora_B"), vec![16, 2]),
        ],
    );
    let adapter = LoraAdapter::open(dir.path()).expect("open");
    let [w] = adapter.weights() else {
        panic!("one module expected")
    };
    assert_eq!(
        w.module,
        LoraModule {
            layer: 1,
            projection: Projection::Q
        }
    );
    assert_eq!(
        (w.rank, w.in_features, w.out_features, w.scale),
        (2, 16, 16, 8.0)
    );
    assert_eq!(w.module.onnx_path(), "/model/layers.1/attn/q_proj");
    assert_eq!((w.a.len(), w.b.len()), (32, 32));
    assert_eq!(w.b[3], 1.0 + 0.03);
    adapter.check(&model("llama")).expect("fits llama");
}

fn error_of(dir: &Path, model_type: &str) -> String {
    match LoraAdapter::open(dir).and_then(|a| a.check(&model(model_type))) {
        Ok(()) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn errors_name_the_module_and_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = name(0, "self_attn", "k_proj", "lora_A");
    let b = name(0, "self_attn", "k_proj", "lora_B");

    // rank mismatch against the config
    write_adapter(
        dir.path(),
        &config_json(4, json!(["k_proj"])),
        &[(&a, vec![2, 16]), (&b, vec![8, 2])],
    );
    let text = error_of(dir.path(), "llama");
    assert!(
        text.contains("model.layers.0.self_attn.k_proj")
            && text.contains("rank")
            && text.contains(WEIGHTS_FILE),
        "{text}"
    );

    // wrong base: k_proj out is 2 kv heads x 4 = 8, not 12
    write_adapter(
        dir.path(),
        &config_json(2, json!(["k_proj"])),
        &[(&a, vec![2, 16]), (&b, vec![12, 2])],
    );
    let text = error_of(dir.path(), "llama");
    assert!(
        text.contains("model.layers.0.self_attn.k_proj") && text.contains("[8, 2]"),
        "{text}"
    );

    // a module phi3 lacks
    write_adapter(
        dir.path(),
        &config_json(2, json!(["k_proj"])),
        &[(&a, vec![2, 16]), (&b, vec![8, 2])],
    );
    let text = error_of(dir.path(), "phi3");
    assert!(
        text.contains("k_proj") && text.contains("qkv_proj"),
        "{text}"
    );

    // a target module llama lacks
    let config = config_json(2, json!(["qkv_proj"]));
    let qkv_a = name(0, "self_attn", "qkv_proj", "lora_A");
    let qkv_b = name(0, "self_attn", "qkv_proj", "lora_B");
    write_adapter(
        dir.path(),
        &config,
        &[(&qkv_a, vec![2, 16]), (&qkv_b, vec![32, 2])],
    );
    let text = error_of(dir.path(), "llama");
    assert!(
        text.contains("`qkv_proj`") && text.contains(CONFIG_FILE),
        "{text}"
    );

    // a layer past the model's
    let far_a = name(5, "mlp", "down_proj", "lora_A");
    let far_b = name(5, "mlp", "down_proj", "lora_B");
    write_adapter(
        dir.path(),
        &config_json(2, json!(["down_proj"])),
        &[(&far_a, vec![2, 24]), (&far_b, vec![16, 2])],
    );
    let text = error_of(dir.path(), "llama");
    assert!(
        text.contains("model.layers.5.mlp.down_proj") && text.contains("2 layers"),
        "{text}"
    );

    // lora_B missing
    write_adapter(
        dir.path(),
        &config_json(2, json!(["k_proj"])),
        &[(&a, vec![2, 16])],
    );
    let text = error_of(dir.path(), "llama");
    assert!(
        text.contains("model.layers.0.self_attn.k_proj") && text.contains("lora_B"),
        "{text}"
    );

    // not a LoRA tensor
    write_adapter(
        dir.path(),
        &config_json(2, json!(["k_proj"])),
        &[("base_model.model.lm_head.weight", vec![32, 16])],
    );
    let text = error_of(dir.path(), "llama");
    assert!(
        text.contains("lm_head") && text.contains("modules_to_save"),
        "{text}"
    );
}

#[test]
fn pickled_weights_get_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join(CONFIG_FILE),
        config_json(2, json!(["q_proj"])).to_string(),
    )
    .expect("config");
    std::fs::write(dir.path().join(WEIGHTS_FILE_BIN), b"pickle").expect("bin");
    let text = error_of(dir.path(), "llama");
    assert!(
        text.contains(WEIGHTS_FILE_BIN) && text.contains("safe_serialization"),
        "{text}"
    );
}

#[test]
fn phi3_fused_projections_split_like_genai() {
    let dir = tempfile::tempdir().expect("tempdir");
    // phi3: q 16, kv 8 each -> qkv out 32; gate_up out 48
    write_adapter(
        dir.path(),
        &config_json(2, json!(["qkv_proj", "gate_up_proj"])),
        &[
            (&name(0, "self_attn", "qkv_proj", "lora_A"), vec![2, 16]),
            (&name(0, "self_attn", "qkv_proj", "lora_B"), vec![32, 2]),
            (&name(1, "mlp", "gate_up_proj", "lora_A"), vec![2, 16]),
            (&name(1, "mlp", "gate_up_proj", "lora_B"), vec![48, 2]),
        ],
    );
    let adapter = LoraAdapter::open(dir.path()).expect("open");
    let phi3 = model("phi3");
    let parts = adapter.unfused(&phi3).expect("split");
    let names: Vec<String> = parts.iter().map(|w| w.module.onnx_path()).collect();
    assert_eq!(
        names,
        [
            "/model/layers.0/attn/q_proj",
            "/model/layers.0/attn/k_proj",
            "/model/layers.0/attn/v_proj",
            "/model/layers.1/mlp/gate_proj",
            "/model/layers.1/mlp/up_proj"
        ]
    );
    let qkv = &adapter.weights()[0];
    assert_eq!(parts[1].out_features, 8);
    assert_eq!(parts[1].a, qkv.a);
    assert_eq!(parts[1].b, qkv.b[16 * 2..24 * 2]);
    assert_eq!(parts[2].b, qkv.b[24 * 2..32 * 2]);
    let gate_up = &adapter.weights()[1];
    assert_eq!(parts[4].b, gate_up.b[24 * 2..48 * 2]);
    for w in &parts {
        let (i, o) = w.module.projection.features(&phi3);
        assert_eq!((w.in_features, w.out_features, w.b.len()), (i, o, o * 2));
    }
}

/// B·A of a module, [out, in].
fn product(w: &LoraWeights) -> Vec<f32> {
    let mut out = vec![0.0; w.out_features * w.in_features];
    for o in 0..w.out_features {
        for i in 0..w.in_features {
            out[o * w.in_features + i] = (0..w.rank)
                .map(|k| w.b[o * w.rank + k] * w.a[k * w.in_features + i])
                .sum();
        }
    }
    out
}

#[test]
fn padding_the_rank_keeps_the_product() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config_json(2, json!(["o_proj"]));
    config["rank_pattern"] = json!({"o_proj": 2});
    write_adapter(
        dir.path(),
        &config,
        &[
            (&name(0, "self_attn", "o_proj", "lora_A"), vec![2, 16]),
            (&name(0, "self_attn", "o_proj", "lora_B"), vec![16, 2]),
        ],
    );
    let adapter = LoraAdapter::open(dir.path()).expect("open");
    let w = &adapter.weights()[0];
    let padded = w.padded(5);
    assert_eq!(
        (padded.rank, padded.a.len(), padded.b.len(), padded.scale),
        (5, 80, 80, w.scale)
    );
    assert_eq!(product(&padded), product(w));
    assert_eq!(w.padded(1), *w);
}

#[test]
fn missing_files_are_named_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = error_of(&dir.path().join("nope"), "llama");
    assert!(text.ends_with("nope: adapter folder not found"), "{text}");
    let text = error_of(dir.path(), "llama");
    assert!(
        text.contains(CONFIG_FILE) && text.contains("os error 2"),
        "{text}"
    );
    let err = LoraAdapter::open(dir.path()).expect_err("no config");
    assert!(
        std::error::Error::source(&err).is_none(),
        "the OS error is in the message, not repeated as a source"
    );
    std::fs::write(dir.path().join(CONFIG_FILE), "{").expect("write");
    let text = error_of(dir.path(), "llama");
    assert!(text.contains("invalid JSON"), "{text}");
}
