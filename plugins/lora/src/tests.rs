//! In-process tests of the LoRA and QLoRA passes on a tiny Llama (config.json + model.safetensors + a word-level
//! tokenizer written here): the output layout, a falling loss, the adapter read back by olive-model's PEFT reader,
//! and the errors for bad data, bad configs and missing target modules. PEFT's own loading and the logits parity
//! with transformers are in tests/python/test_finetune.py.

use std::path::{Path, PathBuf};

use olive_model::adapter::LoraAdapter;
use olive_model::ModelConfig;
use olive_pass_sdk::testing::TestHost;
use olive_pass_sdk::{kinds, Model};
use safetensors::tensor::TensorView;
use serde_json::{json, Value};

use crate::{Lora, QLora};

const WORDS: &[&str] = &[
    "<unk>",
    "<eos>",
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "g",
    "h",
    "user",
    "assistant",
    ":",
];
const HIDDEN: usize = 32;
const INTER: usize = 64;
const LAYERS: usize = 2;

/// A tiny llama (2 heads of 16, 1 kv head) with seeded uniform weights and a word-level tokenizer.
fn tiny_model(dir: &Path) {
    let vocab = WORDS.len();
    let config = json!({
        "model_type": "llama", "vocab_size": vocab, "hidden_size": HIDDEN, "intermediate_size": INTER,
        "num_hidden_layers": LAYERS, "num_attention_heads": 2, "num_key_value_heads": 1,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 128,
        "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 1,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, HIDDEN]),
        ("model.norm.weight".into(), vec![HIDDEN]),
    ];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        shapes.push((format!("{p}.input_layernorm.weight"), vec![HIDDEN]));
        shapes.push((format!("{p}.post_attention_layernorm.weight"), vec![HIDDEN]));
        for (name, out, inp) in [
            ("self_attn.q_proj", 32, HIDDEN),
            ("self_attn.k_proj", 16, HIDDEN),
            ("self_attn.v_proj", 16, HIDDEN),
            ("self_attn.o_proj", HIDDEN, 32),
            ("mlp.gate_proj", INTER, HIDDEN),
            ("mlp.up_proj", INTER, HIDDEN),
            ("mlp.down_proj", HIDDEN, INTER),
        ] {
            shapes.push((format!("{p}.{name}.weight"), vec![out, inp]));
        }
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if name.ends_with("norm.weight") {
                vec![1.0; n]
            } else {
                (0..n)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.4
                    })
                    .collect()
            };
            (
                name,
                shape,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let vocab_map: serde_json::Map<String, Value> = WORDS
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), json!(i)))
        .collect();
    let tok = json!({"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 1, "content": "<eos>", "single_word": false, "lstrip": false, "rstrip": false,
                          "normalized": false, "special": true}],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab_map, "unk_token": "<unk>"}});
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({"eos_token": "<eos>"}).to_string(),
    )
    .unwrap();
}

/// 40 records whose response follows from the prompt (learnable), as JSON lines.
fn travel_like_data(dir: &Path) -> PathBuf {
    let pairs = [
        ("a b", "c d"),
        ("e f", "g h"),
        ("a c", "e g"),
        ("b d", "f h"),
    ];
    let lines: Vec<String> = (0..40)
        .map(|i| {
            let (p, r) = pairs[i % pairs.len()];
            json!({"prompt": p, "response": r}).to_string()
        })
        .collect();
    let path = dir.join("data.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

struct Setup {
    _dir: tempfile::TempDir,
    model: Model,
    data: PathBuf,
    out: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    std::fs::create_dir(&model_dir).unwrap();
    tiny_model(&model_dir);
    let data = travel_like_data(dir.path());
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    Setup {
        model: Model::new(kinds::HF, &model_dir),
        data,
        out,
        _dir: dir,
    }
}

fn config(data: &Path, extra: Value) -> String {
    let mut c = json!({
        "r": 4, "alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"],
        "train_data_config": {"data_name": "json", "data_files": [data.display().to_string()],
            "text_template": "user : {prompt} assistant : {response}", "max_seq_len": 16, "eval_ratio": 0.2,
            "seed": 1},
        "training_args": {"learning_rate": 0.02, "max_steps": 12, "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 2, "warmup_ratio": 0.0, "eval_steps": 4, "gradient_checkpointing": false},
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c.to_string()
}

fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

#[test]
fn lora_trains_and_writes_a_peft_adapter_and_the_curve() {
    let s = setup();
    let host = TestHost::new(&s.out);
    let out = host
        .run::<Lora>(&s.model, &config(&s.data, json!({})))
        .unwrap();
    assert_eq!(out.kind, kinds::HF_ADAPTER);
    assert_eq!(out.path, s.model.path);
    assert_eq!(out.adapter_paths, [s.out.join("adapter")]);
    let adapter = LoraAdapter::open(&s.out.join("adapter")).unwrap();
    let hf = ModelConfig::from_folder(&s.model.path).unwrap();
    adapter.check(&hf).unwrap();
    assert_eq!(adapter.weights().len(), 3 * LAYERS);
    assert!(adapter
        .weights()
        .iter()
        .any(|w| w.b.iter().any(|&b| b != 0.0)));
    let rows = csv_rows(&s.out.join("loss.csv"));
    // Step 0 (evaluation before training) and 12 steps; evaluation at 4, 8, 12.
    assert_eq!(rows.len(), 13);
    assert_eq!(rows[0][0], "0");
    let evals: Vec<f32> = rows.iter().filter_map(|r| r[5].parse().ok()).collect();
    assert_eq!(evals.len(), 4);
    assert!(
        evals[3] < evals[0] * 0.8,
        "eval loss did not fall: {evals:?}"
    );
    let losses: Vec<f32> = rows[1..].iter().map(|r| r[1].parse().unwrap()).collect();
    assert!(
        losses[11] < losses[0] * 0.8,
        "loss did not fall: {losses:?}"
    );
    assert!(s.out.join("loss.png").metadata().unwrap().len() > 1000);
    let progress = host.progress();
    let last = progress.last().unwrap();
    assert_eq!((last.done, last.total), (12, 12));
    assert!(last.message.contains("tok/s"), "{}", last.message);
}

#[test]
fn training_is_reproducible_with_a_seed() {
    let adapters: Vec<_> = (0..2)
        .map(|_| {
            let s = setup();
            let extra = json!({"lora_dropout": 0.1, "training_args": {"max_steps": 3, "seed": 7,
                "per_device_train_batch_size": 2}});
            TestHost::new(&s.out)
                .run::<Lora>(&s.model, &config(&s.data, extra))
                .unwrap();
            LoraAdapter::open(&s.out.join("adapter"))
                .unwrap()
                .weights()
                .to_vec()
        })
        .collect();
    assert_eq!(adapters[0], adapters[1]);
}

#[test]
fn qlora_trains_over_an_int4_copy_and_leaves_only_the_adapter() {
    let s = setup();
    let extra = json!({"training_args": {"max_steps": 4, "per_device_train_batch_size": 2}, "group_size": 16});
    let out = TestHost::new(&s.out)
        .run::<QLora>(&s.model, &config(&s.data, extra.clone()))
        .unwrap();
    assert_eq!(out.path, s.model.path);
    LoraAdapter::open(&s.out.join("adapter")).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&s.out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["adapter", "loss.csv", "loss.png"]);

    // A base that is already int4 (the GPTQ copy QLoRA makes, with the tokenizer) is trained over as it is.
    let int4 = s.out.parent().unwrap().join("int4");
    std::fs::create_dir(&int4).unwrap();
    let int4_model = TestHost::new(&int4)
        .run::<MakeInt4>(&s.model, "{}")
        .unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(s.model.path.join(f), int4.join(f)).unwrap();
    }
    let out2 = s.out.parent().unwrap().join("out2");
    std::fs::create_dir(&out2).unwrap();
    let host = TestHost::new(&out2);
    host.run::<QLora>(&int4_model, &config(&s.data, extra))
        .unwrap();
    assert!(host
        .logs()
        .iter()
        .any(|(_, m)| m.contains("already quantized")));
    LoraAdapter::open(&out2.join("adapter")).unwrap();
}

/// Writes QLoRA's int4 copy of a model (GPTQ, groups of 16) into the output folder.
struct MakeInt4;

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct NoConfig {}

impl olive_pass_sdk::Pass for MakeInt4 {
    const NAME: &'static str = "MakeInt4";
    const VERSION: &'static str = "0.0.0";
    const DESCRIPTION: &'static str = "test: QLoRA's int4 copy";
    const ACCEPTS: &'static [&'static str] = &[kinds::HF];
    const PRODUCES: &'static [&'static str] = &[kinds::HF];
    const DEVICES: &'static [&'static str] = &["cpu"];
    type Config = NoConfig;

    fn run(
        model: Model,
        _: NoConfig,
        ctx: &olive_pass_sdk::Context<'_>,
    ) -> Result<Model, olive_pass_sdk::Error> {
        let dir = crate::qlora::quantized_base(&model.path, 4, 16, &ctx.output_dir(), ctx)?;
        Ok(Model::new(kinds::HF, dir))
    }
}

/// Runs LoRA with `extra` config fields (and `data` as the data file) and returns the error message.
fn error_of(s: &Setup, data: &Path, extra: Value) -> String {
    let err = TestHost::new(&s.out)
        .run::<Lora>(&s.model, &config(data, extra))
        .unwrap_err();
    err.message.to_string()
}

#[test]
fn bad_inputs_get_clear_errors() {
    let s = setup();
    let dir = s.data.parent().unwrap();
    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": \"a\",\n",
    )
    .unwrap();
    let msg = error_of(&s, &bad, json!({}));
    assert!(msg.contains("bad.jsonl:2"), "{msg}");

    let missing = dir.join("missing.jsonl");
    std::fs::write(&missing, "{\"prompt\": \"a b\", \"answer\": \"c\"}\n").unwrap();
    let msg = error_of(&s, &missing, json!({}));
    assert!(msg.contains("response"), "{msg}");

    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let msg = error_of(&s, &empty, json!({}));
    assert!(msg.contains("empty"), "{msg}");

    let msg = error_of(&s, &s.data, json!({"training_args": {"max_steps": 0}}));
    assert!(msg.contains("max_steps"), "{msg}");

    let msg = error_of(
        &s,
        &s.data,
        json!({"target_modules": ["q_proj", "qkv_proj"]}),
    );
    assert!(
        msg.contains("`qkv_proj`") && msg.contains("gate_proj"),
        "{msg}"
    );

    let msg = error_of(&s, &s.data, json!({"lora_rank": 4}));
    assert!(msg.contains("lora_rank"), "{msg}");

    // Device gpu where there is no CUDA device (CI) fails before anything is written.
    if olive_kernels::cuda::Gpu::get(0).is_err() {
        let err = TestHost::new(&s.out)
            .with_device("gpu")
            .run::<Lora>(&s.model, &config(&s.data, json!({})))
            .unwrap_err();
        assert!(
            err.message.contains("device gpu: no CUDA device"),
            "{}",
            err.message
        );
    }
    let err = TestHost::new(&s.out)
        .with_device("npu")
        .run::<Lora>(&s.model, &config(&s.data, json!({})))
        .unwrap_err();
    assert!(err.message.contains("cpu or a CUDA gpu"), "{}", err.message);
    // Nothing was written by any failed run.
    assert_eq!(std::fs::read_dir(&s.out).unwrap().count(), 0);
}

#[test]
fn olive_cli_names_and_defaults_are_accepted() {
    let c: crate::LoraConfig = serde_json::from_value(json!({
        "lora_r": 8, "lora_alpha": 16, "train_data_config": {"data_files": ["x.jsonl"]},
    }))
    .unwrap();
    assert_eq!((c.r, c.alpha, c.lora_dropout), (8, 16.0, 0.05));
    assert_eq!(c.training_args.learning_rate, 2e-4);
    assert_eq!(c.training_args.per_device_train_batch_size, 8);
    assert_eq!(c.training_args.total_steps(17, 1).unwrap(), 9); // 3 epochs of ceil(17 / 8) steps
    assert_eq!(c.training_args.total_steps(17, 2).unwrap(), 6); // 2 ranks: 3 epochs of ceil(17 / 16) steps
    let q: crate::QLoraConfig = serde_json::from_value(json!({
        "train_data_config": {"data_files": ["x.jsonl"]}, "bits": 4,
    }))
    .unwrap();
    assert_eq!((q.r, q.group_size), (64, 64));
    let err = serde_json::from_value::<crate::LoraConfig>(json!({
        "train_data_config": {"data_files": ["x.jsonl"]}, "training_args": {"max_step": 3},
    }))
    .unwrap_err();
    assert!(err.to_string().contains("max_step"), "{err}");
}

#[test]
fn each_rank_takes_its_own_rows_of_the_global_batch() {
    let rows: Vec<olive_data::Sample> = (0..10u32)
        .map(|i| olive_data::Sample {
            input_ids: vec![i],
            attention_mask: vec![1],
            labels: vec![i as i64],
        })
        .collect();
    let ids = |rank| -> Vec<u32> {
        crate::ranks::shard(rows.clone(), rank, 4)
            .iter()
            .map(|s| s.input_ids[0])
            .collect()
    };
    assert_eq!(ids(0), [0, 1, 2, 3]);
    assert_eq!(ids(1), [4, 5, 6, 7]);
    // A short last batch leaves the last ranks fewer rows, or none.
    assert_eq!(ids(2), [8, 9]);
    assert!(ids(3).is_empty());
}
