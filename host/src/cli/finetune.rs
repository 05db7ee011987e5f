//! `olive-host finetune`: Olive's `olive finetune` (olive/cli/finetune.py): `--method lora|qlora` runs the `LoRA` or
//! `QLoRA` pass of the lora plugin in a worker on the dataset flags' data, with Olive's LoRA flags and the
//! transformers TrainingArguments flags Olive passes through. Output, as Olive saves it:
//! `<output_path>/model` (the base model trained over, as given: hard links or copies of its files; for a .gguf
//! input, the converted folder), `<output_path>/adapter` (PEFT adapter), and `loss.csv` / `loss.png` beside them.
//! A failed run leaves no output folder.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use olive_pass_api::{kinds, Model};
use serde_json::{json, Map, Value};

use super::common::{refuse_non_empty, resolve_hf_input};
use super::config_file::{one_pass_on_cpu, ConfigFileArgs};
use super::dataset::DatasetArgs;
use crate::device::Device;
use crate::engine::{self, publish, PassRun};
use crate::plugins;

/// Olive's `--method` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    Lora,
    Qlora,
}

impl Method {
    /// The pass that runs it (Olive's pass type name).
    fn pass(self) -> &'static str {
        match self {
            Method::Lora => "LoRA",
            Method::Qlora => "QLoRA",
        }
    }
}

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// The base model: a Hugging Face folder (float, or AWQ/GPTQ quantized) or a .gguf file.
    #[arg(long = "model_name_or_path", short = 'm')]
    pub model_name_or_path: PathBuf,
    /// Accepted for Olive compatibility: the model's code is never run.
    #[arg(long = "trust_remote_code")]
    pub trust_remote_code: bool,
    /// lora: LoRA over the base as given; qlora: LoRA over a 4-bit base (a float base is rounded to int4 first).
    #[arg(long, value_enum, default_value_t = Method::Lora)]
    pub method: Method,
    /// LoRA rank.
    #[arg(long = "lora_r", default_value_t = 64)]
    pub lora_r: usize,
    /// LoRA alpha (the update is scaled by alpha / r).
    #[arg(long = "lora_alpha", default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// Dropout on the LoRA branch's input during training.
    #[arg(long = "lora_dropout", default_value_t = 0.05)]
    pub lora_dropout: f64,
    /// The linears to adapt, comma-separated (q_proj,v_proj, ... or all-linear); default: PEFT's choice for the
    /// architecture (q_proj,v_proj; o_proj,qkv_proj for Phi-3).
    #[arg(long = "target_modules")]
    pub target_modules: Option<String>,
    /// The float type of the saved adapter; training computes in float32 on CPU (Olive's default bfloat16 is a
    /// GPU setting).
    #[arg(long = "torch_dtype", default_value = "float32", value_parser = ["float32", "bfloat16", "float16"])]
    pub torch_dtype: String,
    #[command(flatten)]
    pub data: DatasetArgs,
    /// Olive's name for the training split (the same as --split; local files have only `train`).
    #[arg(long = "train_split", conflicts_with = "split")]
    pub train_split: Option<String>,
    /// Olive's evaluation split: local files have only `train`; hold records out with --eval_split_ratio instead.
    #[arg(long = "eval_split")]
    pub eval_split: Option<String>,
    /// Fraction of the records held out (seeded) to report an evaluation loss during training.
    #[arg(long = "eval_split_ratio", default_value_t = 0.0)]
    pub eval_split_ratio: f64,
    /// Optimizer steps; -1 trains --num_train_epochs epochs.
    #[arg(long = "max_steps", allow_negative_numbers = true)]
    pub max_steps: Option<i64>,
    /// Epochs over the training rows when --max_steps is -1 (default 3).
    #[arg(long = "num_train_epochs")]
    pub num_train_epochs: Option<f64>,
    /// Peak learning rate of AdamW (default 2e-4).
    #[arg(long = "learning_rate")]
    pub learning_rate: Option<f64>,
    /// Learning-rate schedule after warm-up: constant (default), constant_with_warmup, linear, cosine.
    #[arg(long = "lr_scheduler_type")]
    pub lr_scheduler_type: Option<String>,
    /// Fraction of the steps spent warming up (default 0.03).
    #[arg(long = "warmup_ratio")]
    pub warmup_ratio: Option<f64>,
    /// Warm-up steps, overriding --warmup_ratio.
    #[arg(long = "warmup_steps")]
    pub warmup_steps: Option<usize>,
    /// AdamW weight decay (default 0).
    #[arg(long = "weight_decay")]
    pub weight_decay: Option<f64>,
    /// Global gradient-norm clip, 0 for none (default 1).
    #[arg(long = "max_grad_norm")]
    pub max_grad_norm: Option<f64>,
    /// Rows per micro-batch (default 8).
    #[arg(long = "per_device_train_batch_size")]
    pub per_device_train_batch_size: Option<usize>,
    /// Rows per evaluation batch (default 8).
    #[arg(long = "per_device_eval_batch_size")]
    pub per_device_eval_batch_size: Option<usize>,
    /// Micro-batches per optimizer step (default 1).
    #[arg(long = "gradient_accumulation_steps")]
    pub gradient_accumulation_steps: Option<usize>,
    /// Recompute activations in the backward pass (default true): `--gradient_checkpointing true|false`.
    #[arg(long = "gradient_checkpointing")]
    pub gradient_checkpointing: Option<bool>,
    /// Evaluate every this many steps (default: ten times over the run).
    #[arg(long = "eval_steps")]
    pub eval_steps: Option<usize>,
    /// Seed of the LoRA initialization, dropout, row order and eval split.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where the output goes: `model/`, `adapter/`, `loss.csv`, `loss.png`.
    #[arg(long = "output_path", short = 'o', default_value = "finetuned-adapter")]
    pub output_path: PathBuf,
    /// The device to train on: cpu, or gpu (the first CUDA GPU, bf16).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Replace an existing, non-empty output folder.
    #[arg(long)]
    pub overwrite: bool,
    /// Cancel after this many seconds.
    #[arg(long, value_parser = super::parse_seconds)]
    pub timeout: Option<Duration>,
    #[command(flatten)]
    pub config_file: ConfigFileArgs,
}

/// The transformers TrainingArguments flags that were given, as the pass's `training_args` (the pass holds the
/// defaults).
fn training_args(args: &FinetuneArgs) -> anyhow::Result<Map<String, Value>> {
    if let Some(steps) = args.max_steps {
        if steps == 0 || steps < -1 {
            bail!("--max_steps {steps}: give a positive number of optimizer steps (or -1 to train --num_train_epochs epochs)");
        }
    }
    let mut t = Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            t.insert(key.to_owned(), v);
        }
    };
    put("max_steps", args.max_steps.map(Value::from));
    put("num_train_epochs", args.num_train_epochs.map(Value::from));
    put("learning_rate", args.learning_rate.map(Value::from));
    put(
        "lr_scheduler_type",
        args.lr_scheduler_type.clone().map(Value::from),
    );
    put("warmup_ratio", args.warmup_ratio.map(Value::from));
    put("warmup_steps", args.warmup_steps.map(Value::from));
    put("weight_decay", args.weight_decay.map(Value::from));
    put("max_grad_norm", args.max_grad_norm.map(Value::from));
    put(
        "per_device_train_batch_size",
        args.per_device_train_batch_size.map(Value::from),
    );
    put(
        "per_device_eval_batch_size",
        args.per_device_eval_batch_size.map(Value::from),
    );
    put(
        "gradient_accumulation_steps",
        args.gradient_accumulation_steps.map(Value::from),
    );
    put(
        "gradient_checkpointing",
        args.gradient_checkpointing.map(Value::from),
    );
    put("eval_steps", args.eval_steps.map(Value::from));
    put("seed", Some(args.seed.into()));
    Ok(t)
}

/// The pass config (`LoRA` / `QLoRA`): Olive's LoRA fields, the dataset and the training arguments.
fn pass_config(args: &FinetuneArgs) -> anyhow::Result<Value> {
    if let Some(split) = &args.eval_split {
        if !split.is_empty() {
            bail!(
                "--eval_split {split}: local data files have only the split \"train\"; hold out a fraction of \
                 the records with --eval_split_ratio (e.g. 0.1) instead"
            );
        }
    }
    if !(0.0..1.0).contains(&args.eval_split_ratio) {
        bail!(
            "--eval_split_ratio {}: give a fraction in [0, 1)",
            args.eval_split_ratio
        );
    }
    let mut data = args.data.data_config()?.ok_or_else(|| {
        anyhow!("finetune needs training data: give --data_name json|text and --data_files")
    })?;
    if let Some(split) = &args.train_split {
        data.split = split.clone();
    }
    data.eval_ratio = args.eval_split_ratio;
    data.seed = args.seed;
    let mut config = json!({
        "r": args.lora_r,
        "alpha": args.lora_alpha,
        "lora_dropout": args.lora_dropout,
        "torch_dtype": args.torch_dtype,
        "train_data_config": serde_json::to_value(&data)?,
        "training_args": Value::Object(training_args(args)?),
    });
    if let Some(targets) = &args.target_modules {
        let list: Vec<&str> = targets
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        if list.is_empty() {
            bail!("--target_modules {targets:?}: give module names separated by commas, e.g. q_proj,v_proj");
        }
        config["target_modules"] = json!(list);
    }
    Ok(config)
}

/// Puts the files of `from` (a Hugging Face folder) into `to`: hard links to the real files where the file system
/// allows, else copies; sub-folders are followed.
fn link_or_copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let entries = fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", from.display()))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        // Follow symlinks (Hugging Face cache snapshots link to blobs) to link the file itself.
        let real =
            fs::canonicalize(&src).with_context(|| format!("cannot resolve {}", src.display()))?;
        if real.is_dir() {
            link_or_copy_tree(&real, &dst)?;
        } else if fs::hard_link(&real, &dst).is_err() {
            fs::copy(&real, &dst)
                .with_context(|| format!("cannot copy {} to {}", real.display(), dst.display()))?;
        }
    }
    Ok(())
}

pub fn run(args: FinetuneArgs) -> anyhow::Result<()> {
    let config = pass_config(&args)?;
    let workflow = one_pass_on_cpu(
        &args.model_name_or_path,
        args.method.pass(),
        &config,
        "train_data_config",
        &args.output_path,
    );
    if args.config_file.dry_run(&workflow, &args.output_path)? {
        return Ok(());
    }
    refuse_non_empty(&args.output_path, args.overwrite)?;
    let input = resolve_hf_input(&args.model_name_or_path)?;
    let found = plugins::discover(&plugins::search_path());
    let name = args.method.pass();
    let (plugin, pass) = found.pass(None, name)?;
    let model = Model::new(kinds::HF, &input);
    let output = &args.output_path;
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let created_parent = !parent.exists();
    fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let result = (|| -> anyhow::Result<Model> {
        let staging = tempfile::Builder::new()
            .prefix(".finetune-")
            .tempdir_in(&parent)
            .with_context(|| format!("cannot create a staging folder in {}", parent.display()))?;
        let run_dir = staging.path().join("run");
        engine::run_pass(&PassRun {
            plugin,
            pass: pass.name.clone(),
            model,
            config_json: config.to_string(),
            output_path: run_dir.clone(),
            device: args.device.name().to_owned(),
            timeout: args.timeout,
            grace: Duration::from_secs(5),
        })?;
        link_or_copy_tree(&input, &run_dir.join("model"))?;
        publish(&run_dir, output)?;
        let mut model = Model::new(kinds::HF_ADAPTER, output.join("model"));
        model.adapter_paths.push(output.join("adapter"));
        Ok(model)
    })();
    match result {
        Ok(model) => {
            tracing::info!(
                "wrote {} (model/, adapter/, loss.csv, loss.png)",
                output.display()
            );
            args.config_file.save(&workflow, output)?;
            println!("{}", serde_json::to_string_pretty(&model)?);
            Ok(())
        }
        Err(e) => {
            if created_parent {
                let _ = fs::remove_dir(&parent);
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: FinetuneArgs,
    }

    fn parse(args: &[&str]) -> Result<FinetuneArgs, clap::Error> {
        Cli::try_parse_from(["x", "-m", "m"].into_iter().chain(args.iter().copied()))
            .map(|c| c.args)
    }

    const DATA: &[&str] = &["--data_name", "json", "--data_files", "d.jsonl"];

    fn config(args: &[&str]) -> anyhow::Result<Value> {
        let all: Vec<&str> = DATA.iter().chain(args).copied().collect();
        pass_config(&parse(&all)?)
    }

    #[test]
    fn the_labs_command_gives_olives_lora_config() {
        let c = config(&[
            "--method",
            "lora",
            "--text_template",
            r"<|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}<|end|>",
            "--max_steps",
            "100",
        ])
        .unwrap();
        assert_eq!(
            (c["r"].as_u64(), c["alpha"].as_f64()),
            (Some(64), Some(16.0))
        );
        assert_eq!(
            c["train_data_config"]["text_template"],
            "<|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}<|end|>"
        );
        assert_eq!(c["training_args"], json!({"max_steps": 100, "seed": 42}));
        assert!(c.get("target_modules").is_none());
    }

    #[test]
    fn training_flags_and_targets_pass_through() {
        let c = config(&[
            "--lora_r",
            "8",
            "--target_modules",
            "q_proj, v_proj,o_proj",
            "--learning_rate",
            "1e-3",
            "--per_device_train_batch_size",
            "2",
            "--gradient_accumulation_steps",
            "4",
            "--seed",
            "7",
            "--eval_split_ratio",
            "0.1",
            "--gradient_checkpointing",
            "false",
            "--train_split",
            "train",
        ])
        .unwrap();
        assert_eq!(c["r"], 8);
        assert_eq!(c["target_modules"], json!(["q_proj", "v_proj", "o_proj"]));
        assert_eq!(
            c["training_args"],
            json!({"learning_rate": 1e-3, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4,
                   "gradient_checkpointing": false, "seed": 7})
        );
        assert_eq!(c["train_data_config"]["eval_ratio"], 0.1);
        assert_eq!(c["train_data_config"]["seed"], 7);
    }

    #[test]
    fn bad_flags_get_clear_errors() {
        let err = |args: &[&str]| config(args).unwrap_err().to_string();
        assert!(err(&["--max_steps", "0"]).contains("positive number of optimizer steps"));
        assert!(err(&["--eval_split", "test"]).contains("--eval_split_ratio"));
        assert!(err(&["--eval_split_ratio", "1.5"]).contains("[0, 1)"));
        assert!(err(&["--target_modules", ","]).contains("module names"));
        let no_data = pass_config(&parse(&[]).unwrap()).unwrap_err().to_string();
        assert!(no_data.contains("--data_files"), "{no_data}");
        assert!(parse(&["--method", "dora"]).is_err());
        assert!(parse(&["--device", "npu"]).is_err());
        assert!(parse(&["--split", "train", "--train_split", "train"]).is_err());
    }

    #[test]
    fn the_model_folder_is_linked_and_publish_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("config.json"), "{}").unwrap();
        fs::write(src.join("sub").join("x"), "x").unwrap();
        std::os::unix::fs::symlink(src.join("config.json"), src.join("link.json")).unwrap();
        let staged = dir.path().join(".stage");
        link_or_copy_tree(&src, &staged.join("model")).unwrap();
        let model = staged.join("model");
        assert_eq!(
            fs::read_to_string(model.join("sub").join("x")).unwrap(),
            "x"
        );
        assert!(!fs::symlink_metadata(model.join("link.json"))
            .unwrap()
            .file_type()
            .is_symlink());
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("old"), "old").unwrap();
        publish(&staged, &out).unwrap();
        assert!(out.join("model").join("config.json").is_file() && !out.join("old").exists());
        assert!(!staged.exists());
    }
}
