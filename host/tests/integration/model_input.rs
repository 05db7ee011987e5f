//! Bad model input to `generate`: each case is a clear error naming the file and what is wrong, exit 1.

use std::fs;
use std::path::Path;

use safetensors::{tensor::TensorView, Dtype};

use crate::support::{olive, s};

const CONFIG: &str = r#"{"model_type": "llama", "vocab_size": 8, "hidden_size": 4, "intermediate_size": 8,
  "num_hidden_layers": 1, "num_attention_heads": 1, "num_key_value_heads": 1,
  "max_position_embeddings": 16, "tie_word_embeddings": true}"#;

/// Writes a config and a checkpoint of `tensors` (name, dtype, shape) filled with zeros.
fn model(dir: &Path, config: &str, tensors: &[(&str, Dtype, &[usize])]) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("config.json"), config).unwrap();
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, d, shape)| vec![0u8; shape.iter().product::<usize>() * d.bitsize() / 8])
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, d, shape), b)| {
            (
                name.to_string(),
                TensorView::new(*d, shape.to_vec(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn generate(model: &Path) -> crate::support::Run {
    olive(&[
        "generate",
        "--model_name_or_path",
        s(model),
        "--prompt",
        "hi",
        "--max_length",
        "4",
    ])
}

fn assert_fails_with(run: &crate::support::Run, parts: &[&str]) {
    assert_eq!(run.code, Some(1), "stderr:\n{}", run.stderr);
    let error = run.error();
    for part in parts {
        assert!(error.contains(part), "`{part}` not in the error:\n{error}");
    }
}

#[test]
fn missing_folder() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    assert_fails_with(&generate(&missing), &[s(&missing), "not found"]);
}

#[test]
fn unknown_architecture() {
    let dir = tempfile::tempdir().unwrap();
    model(
        dir.path(),
        &CONFIG.replace("\"llama\"", "\"gpt_neox\""),
        &[],
    );
    assert_fails_with(
        &generate(dir.path()),
        &["config.json", "unsupported architecture `gpt_neox`"],
    );
}

#[test]
fn truncated_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    model(
        dir.path(),
        CONFIG,
        &[("model.embed_tokens.weight", Dtype::F32, &[8, 4])],
    );
    let file = dir.path().join("model.safetensors");
    let bytes = fs::read(&file).unwrap();
    fs::write(&file, &bytes[..bytes.len() - 7]).unwrap();
    assert_fails_with(
        &generate(dir.path()),
        &[s(&file), "invalid safetensors", "truncated"],
    );
}

#[test]
fn missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    model(
        dir.path(),
        CONFIG,
        &[("model.embed_tokens.weight", Dtype::F32, &[8, 4])],
    );
    assert_fails_with(
        &generate(dir.path()),
        &[
            s(dir.path()),
            "`model.layers.0.input_layernorm.weight` not found",
        ],
    );
}

#[test]
fn wrong_dtype() {
    let dir = tempfile::tempdir().unwrap();
    model(
        dir.path(),
        CONFIG,
        &[("model.embed_tokens.weight", Dtype::I32, &[8, 4])],
    );
    assert_fails_with(
        &generate(dir.path()),
        &[
            "model.safetensors",
            "`model.embed_tokens.weight`",
            "dtype I32",
        ],
    );
}

#[test]
fn wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    model(
        dir.path(),
        CONFIG,
        &[("model.embed_tokens.weight", Dtype::F32, &[8, 3])],
    );
    assert_fails_with(
        &generate(dir.path()),
        &[
            "`model.embed_tokens.weight`",
            "shape [8, 3], expected [8, 4]",
        ],
    );
}
