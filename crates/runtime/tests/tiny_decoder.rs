//! OnnxModel on a tiny decoder in onnxruntime-genai's layout (genai_config.json, model.onnx with
//! input_ids / attention_mask / past_key_values.0.* in, logits / present.0.* out) whose next token
//! is a known function of everything it has seen: the cache carries every id fed so far, and
//! next = (sum of those ids + attention_mask length) mod VOCAB. A run that drops or repeats cache
//! entries, or feeds a wrong mask, picks other tokens. Needs ORT_DYLIB_PATH (target/olive-env.sh).

use std::path::Path;

use olive_onnx::adapter_format::{Adapter, Parameter};
use olive_onnx::graph::{attr_int, Dim, GraphBuilder};
use olive_onnx::tensor::DataType;
use olive_runtime::{OnnxModel, RuntimeError, SearchOptions};

const VOCAB: usize = 8;
/// The token the test adapter forces (its `bias` parameter adds 10 to this logit).
const ADAPTER_TOKEN: u32 = 5;

struct Spec {
    /// Type of the KV cache and of the logits.
    float: DataType,
    /// Adds a graph input `bias` [VOCAB] with an all-zero default, added to the logits.
    bias_input: bool,
    /// Adds a graph input nobody feeds and that has no default.
    stray_input: bool,
}

const F32: Spec = Spec {
    float: DataType::Float,
    bias_input: true,
    stray_input: false,
};

fn require_ort() {
    if std::env::var_os(olive_runtime::env::DYLIB_ENV).is_none() {
        panic!("ORT_DYLIB_PATH is not set: run `source target/olive-env.sh` (scripts/install.sh writes it) first");
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes model.onnx and genai_config.json into `dir`.
fn write_tiny_decoder(dir: &Path, spec: &Spec) {
    let mut g = GraphBuilder::create(dir, "model.onnx").expect("graph");
    let float = spec.float;
    let kv_dims = [
        Dim::from(1),
        Dim::from(1),
        Dim::sym("past_sequence_length"),
        Dim::from(1),
    ];
    let present_dims = [
        Dim::from(1),
        Dim::from(1),
        Dim::sym("total_sequence_length"),
        Dim::from(1),
    ];
    g.input(
        "input_ids",
        DataType::Int64,
        &[Dim::from(1), Dim::sym("sequence_length")],
    );
    g.input(
        "attention_mask",
        DataType::Int64,
        &[Dim::from(1), Dim::sym("total_sequence_length")],
    );
    g.input("past_key_values.0.key", float, &kv_dims);
    g.input("past_key_values.0.value", float, &kv_dims);
    g.output(
        "logits",
        float,
        &[Dim::from(1), Dim::sym("sequence_length"), Dim::from(VOCAB)],
    );
    g.output("present.0.key", float, &present_dims);
    g.output("present.0.value", float, &present_dims);

    let to = |t: DataType| vec![attr_int("to", t.code() as i64)];
    // new: [1, 1, seq, 1], the ids as cache entries
    let ids = g
        .node("", "Cast", "/ids/Cast", &["input_ids"], to(float))
        .expect("node");
    let shape4 = g
        .constant_i64("/shape4", &[4], &[1, 1, -1, 1])
        .expect("node");
    let new = g
        .node("", "Reshape", "/new/Reshape", &[&ids, &shape4], vec![])
        .expect("node");
    for kind in ["key", "value"] {
        g.node_outputs(
            "",
            "Concat",
            &format!("/present/{kind}/Concat"),
            &[&format!("past_key_values.0.{kind}"), &new],
            &[&format!("present.0.{kind}")],
            vec![attr_int("axis", 2)],
        )
        .expect("node");
    }
    // next = (sum(cache) + sum(attention_mask)) mod VOCAB
    let cache = g
        .node(
            "",
            "Cast",
            "/cache/Cast",
            &["present.0.key"],
            to(DataType::Float),
        )
        .expect("node");
    let cache_sum = g
        .node(
            "",
            "ReduceSum",
            "/cache/ReduceSum",
            &[&cache],
            vec![attr_int("keepdims", 0)],
        )
        .expect("node");
    let cache_sum = g
        .node(
            "",
            "Cast",
            "/cache/sum/Cast",
            &[&cache_sum],
            to(DataType::Int64),
        )
        .expect("node");
    let mask_sum = g
        .node(
            "",
            "ReduceSum",
            "/mask/ReduceSum",
            &["attention_mask"],
            vec![attr_int("keepdims", 0)],
        )
        .expect("node");
    let total = g
        .node("", "Add", "/total/Add", &[&cache_sum, &mask_sum], vec![])
        .expect("node");
    let vocab = g
        .constant_i64("/vocab", &[], &[VOCAB as i64])
        .expect("node");
    let next = g
        .node("", "Mod", "/next/Mod", &[&total, &vocab], vec![])
        .expect("node");
    let shape1 = g.constant_i64("/shape1", &[1], &[1]).expect("node");
    // next: [1] (OneHot wants indices of rank 1 or more)
    let next = g
        .node("", "Reshape", "/next/Reshape", &[&next, &shape1], vec![])
        .expect("node");
    let off_on = g
        .initializer(
            "one_hot_values",
            DataType::Float,
            &[2],
            &f32_bytes(&[0.0, 1.0]),
        )
        .expect("initializer");
    // row: [1, VOCAB]
    let mut row = g
        .node(
            "",
            "OneHot",
            "/next/OneHot",
            &[&next, &vocab, &off_on],
            vec![],
        )
        .expect("node");
    if spec.bias_input {
        g.input("bias", DataType::Float, &[Dim::from(VOCAB)]);
        g.initializer(
            "bias",
            DataType::Float,
            &[VOCAB as i64],
            &f32_bytes(&[0.0; VOCAB]),
        )
        .expect("initializer");
        row = g
            .node("", "Add", "/bias/Add", &[&row, "bias"], vec![])
            .expect("node");
    }
    if spec.stray_input {
        g.input("stray", DataType::Float, &[Dim::from(1)]);
        row = g
            .node("", "Add", "/stray/Add", &[&row, "stray"], vec![])
            .expect("node");
    }
    // logits: [1, seq, VOCAB], every position the same row
    let ids_shape = g
        .node("", "Shape", "/ids/Shape", &["input_ids"], vec![])
        .expect("node");
    let vocab_1 = g
        .constant_i64("/vocab_1", &[1], &[VOCAB as i64])
        .expect("node");
    let shape3 = g
        .node(
            "",
            "Concat",
            "/shape3/Concat",
            &[&ids_shape, &vocab_1],
            vec![attr_int("axis", 0)],
        )
        .expect("node");
    let logits = g
        .node("", "Expand", "/logits/Expand", &[&row, &shape3], vec![])
        .expect("node");
    g.node_outputs(
        "",
        "Cast",
        "/logits/Cast",
        &[&logits],
        &["logits"],
        to(float),
    )
    .expect("node");
    g.finish(&[("", 17)], "olive-rs tests").expect("model");

    let config = serde_json::json!({
        "model": {
            "type": "llama", "context_length": 64, "vocab_size": VOCAB, "eos_token_id": [7], "pad_token_id": 7,
            "bos_token_id": 1,
            "decoder": {
                "filename": "model.onnx", "head_size": 1, "hidden_size": 1, "num_attention_heads": 1,
                "num_hidden_layers": 1, "num_key_value_heads": 1,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"}
            }
        },
        "search": {"do_sample": false, "max_length": 64, "top_k": 50, "top_p": 1.0, "temperature": 1.0}
    });
    std::fs::write(dir.join("genai_config.json"), config.to_string()).expect("config");
}

/// What the tiny decoder generates greedily, computed directly.
fn expected(prompt: &[u32], max_length: usize, eos: &[u32]) -> Vec<u32> {
    let mut seen: Vec<u32> = prompt.to_vec();
    let mut out = Vec::new();
    while seen.len() < max_length {
        let next = ((seen.iter().sum::<u32>() as usize + seen.len()) % VOCAB) as u32;
        out.push(next);
        seen.push(next);
        if eos.contains(&next) {
            break;
        }
    }
    out
}

fn greedy(max_length: usize, eos: Vec<u32>) -> SearchOptions {
    SearchOptions {
        max_length,
        do_sample: false,
        top_k: 50,
        top_p: 1.0,
        temperature: 1.0,
        seed: None,
        eos_token_ids: eos,
    }
}

fn load(spec: &Spec) -> (tempfile::TempDir, OnnxModel) {
    require_ort();
    let dir = tempfile::tempdir().expect("temp dir");
    write_tiny_decoder(dir.path(), spec);
    let model = OnnxModel::load(dir.path()).expect("the tiny decoder loads");
    (dir, model)
}

#[test]
fn greedy_follows_the_cache_and_the_mask() {
    let (_dir, mut model) = load(&F32);
    for prompt in [vec![3u32], vec![1, 2, 3, 4, 6]] {
        let want = expected(&prompt, 20, &[]);
        let mut seen = Vec::new();
        let got = model
            .generate(&prompt, &greedy(20, vec![]), |id| {
                seen.push(id);
                true
            })
            .expect("generates");
        assert_eq!(got, want, "prompt {prompt:?}");
        assert_eq!(seen, got, "the callback sees every id");
        assert_eq!(prompt.len() + got.len(), 20, "stops at max_length");
    }
}

#[test]
fn stops_at_eos_and_when_the_callback_says_so() {
    let (_dir, mut model) = load(&F32);
    let eos = model.config().eos_token_ids();
    let prompt = [1u32, 2, 3, 4, 6];
    let want = expected(&prompt, 40, &eos);
    assert!(
        want.len() < 35 && want.last() == Some(&7),
        "the reference reaches eos 7: {want:?}"
    );
    let got = model
        .generate(&prompt, &greedy(40, eos.clone()), |_| true)
        .expect("generates");
    assert_eq!(got, want);

    let mut calls = 0;
    let got = model
        .generate(&prompt, &greedy(40, eos), |_| {
            calls += 1;
            calls < 3
        })
        .expect("generates");
    assert_eq!(got.len(), 3);
}

#[test]
fn float16_cache_and_logits_follow_the_graph() {
    let (_dir, mut model) = load(&Spec {
        float: DataType::Float16,
        bias_input: false,
        stray_input: false,
    });
    let prompt = [2u32, 5];
    let got = model
        .generate(&prompt, &greedy(16, vec![]), |_| true)
        .expect("generates");
    assert_eq!(got, expected(&prompt, 16, &[]));
}

#[test]
fn adapter_overrides_the_default_input() {
    let (dir, mut model) = load(&F32);
    let mut bias = [0.0f32; VOCAB];
    bias[ADAPTER_TOKEN as usize] = 10.0;
    let adapter = Adapter {
        adapter_version: 1,
        model_version: 1,
        parameters: vec![Parameter {
            name: "bias".into(),
            dims: vec![VOCAB as i64],
            data_type: DataType::Float.code(),
            raw_data: f32_bytes(&bias),
        }],
    };
    let file = dir.path().join("adapter_weights.onnx_adapter");
    adapter.write(&file).expect("adapter file");

    let prompt = [1u32, 2];
    let without = model
        .generate(&prompt, &greedy(10, vec![]), |_| true)
        .expect("generates");
    assert_eq!(
        without,
        expected(&prompt, 10, &[]),
        "the all-zero default bias changes nothing"
    );
    model
        .activate_adapter(&file, "force5")
        .expect("adapter loads");
    let with = model
        .generate(&prompt, &greedy(10, vec![]), |_| true)
        .expect("generates");
    assert_eq!(with, vec![ADAPTER_TOKEN; 8]);

    let err = model
        .activate_adapter(&dir.path().join("missing.onnx_adapter"), "missing")
        .expect_err("no file");
    assert!(matches!(err, RuntimeError::Adapter { .. }), "{err}");
    assert!(err.to_string().contains("missing.onnx_adapter"), "{err}");
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let (_dir, mut model) = load(&F32);
    let sample = |model: &mut OnnxModel, seed| {
        let options = SearchOptions {
            do_sample: true,
            top_k: 0,
            seed: Some(seed),
            ..greedy(40, vec![])
        };
        model
            .generate(&[1, 2], &options, |_| true)
            .expect("generates")
    };
    // The logits are one-hot (1 against 0): the greedy token has probability e/(e+7) = 0.28 only.
    let a = sample(&mut model, 1);
    assert_eq!(a, sample(&mut model, 1));
    assert_ne!(a, sample(&mut model, 2));
    assert_ne!(a, expected(&[1, 2], 40, &[]));
}

#[test]
fn bad_folders_are_clear_errors() {
    require_ort();
    let dir = tempfile::tempdir().expect("temp dir");
    let err = OnnxModel::load(dir.path()).err().expect("no config");
    assert!(err.to_string().contains("genai_config.json"), "{err}");

    write_tiny_decoder(
        dir.path(),
        &Spec {
            float: DataType::Float,
            bias_input: false,
            stray_input: true,
        },
    );
    let err = OnnxModel::load(dir.path()).err().expect("stray input");
    assert!(err.to_string().contains("\"stray\""), "{err}");

    let config_path = dir.path().join("genai_config.json");
    let config = std::fs::read_to_string(&config_path).expect("config");
    std::fs::write(
        &config_path,
        config.replace("present.%d.value", "kv.%d.value"),
    )
    .expect("config");
    let err = OnnxModel::load(dir.path()).err().expect("unknown output");
    assert!(err.to_string().contains("kv.0.value"), "{err}");

    std::fs::write(
        &config_path,
        config.replace(
            "\"provider_options\":[]",
            "\"provider_options\":[{\"cuda\":{}}]",
        ),
    )
    .expect("config");
    let err = OnnxModel::load(dir.path()).err().expect("cuda");
    assert!(err.to_string().contains("\"cuda\""), "{err}");
}

#[test]
fn max_length_past_the_context_is_refused() {
    let (_dir, mut model) = load(&F32);
    let err = model
        .generate(&[1], &greedy(65, vec![]), |_| true)
        .expect_err("context is 64");
    assert!(
        err.to_string().contains("--max_length") && err.to_string().contains("64"),
        "{err}"
    );
    assert!(matches!(
        model.generate(&[], &greedy(8, vec![]), |_| true),
        Err(RuntimeError::EmptyPrompt)
    ));
}
