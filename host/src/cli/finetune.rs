//! `olive-host finetune`: Olive's `olive finetune` (olive/cli/finetune.py): `--method lora|qlora` runs the `LoRA` or
//! `QLoRA` pass of the lora plugin in a worker on the dataset flags' data, with Olive's LoRA flags and the
//! transformers TrainingArguments flags Olive passes through. Output, as Olive saves it:
//! `<output_path>/model` (the base model trained over, as given: hard links or copies of its files; for a .gguf
//! input, the converted folder), `<output_path>/adapter` (PEFT adapter), and `loss.csv` / `loss.png` beside them.
//! A failed run leaves no output folder. `--device gpu --num_gpus N` (and `--nnodes`, `--node_rank`, `--master_addr`,
//! `--master_port` over several hosts) runs the pass as N workers per host in torchrun's rank layout
//! (engine::run_pass_group); rank 0 alone writes the output, so a host without it writes none.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use olive_kernels::cuda::Gpu;
use olive_pass_api::{kinds, Model};
use serde_json::{json, Map, Value};

use super::common::{refuse_non_empty, resolve_hf_input};
use super::config_file::{one_pass_on_cpu, ConfigFileArgs};
use super::dataset::DatasetArgs;
use crate::device::Device;
use crate::engine::{self, publish, Launch, PassRun};
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
    /// The device to train on: cpu, or gpu (CUDA, bf16: the first GPU, or --num_gpus of them).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Data-parallel training over this many GPUs of this host, one worker process each, in torchrun's layout
    /// (needs --device gpu). Each rank takes --per_device_train_batch_size rows per micro-batch, so an optimizer
    /// step sees num_gpus x nnodes x per_device_train_batch_size x gradient_accumulation_steps rows (transformers'
    /// Trainer under torchrun).
    #[arg(long = "num_gpus", default_value_t = 1)]
    pub num_gpus: usize,
    /// Hosts training together, each running --num_gpus workers (needs --master_addr and --master_port).
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This host's place among the --nnodes hosts, from 0; node 0 runs rank 0, which alone writes the output.
    #[arg(long = "node_rank", default_value_t = 0)]
    pub node_rank: usize,
    /// Host name or address of node 0, where rank 0 listens (on one host: 127.0.0.1).
    #[arg(long = "master_addr")]
    pub master_addr: Option<String>,
    /// TCP port where rank 0 listens (on one host: a free one).
    #[arg(long = "master_port")]
    pub master_port: Option<u16>,
    /// Replace an existing, non-empty output folder.
    #[arg(long)]
    pub overwrite: bool,
    /// Cancel after this many seconds.
    #[arg(long, value_parser = super::parse_seconds)]
    pub timeout: Option<Duration>,
    #[command(flatten)]
    pub config_file: ConfigFileArgs,
    #[command(flatten)]
    pub package: crate::package::PackageArgs,
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

/// The group of workers that --num_gpus / --nnodes ask for; `None` for a single process. `gpus` counts this host's
/// CUDA GPUs (asked only for a group).
fn launch(
    args: &FinetuneArgs,
    gpus: impl FnOnce() -> anyhow::Result<usize>,
) -> anyhow::Result<Option<Launch>> {
    let (n, nodes) = (args.num_gpus, args.nnodes);
    if n == 0 {
        bail!("--num_gpus 0: give the number of GPUs of this host to train on, at least 1");
    }
    if nodes == 0 {
        bail!("--nnodes 0: give the number of hosts training together, at least 1");
    }
    if args.node_rank >= nodes {
        bail!(
            "--node_rank {}: give this host's place among the --nnodes {nodes} hosts, 0 to {}",
            args.node_rank,
            nodes - 1
        );
    }
    if n == 1 && nodes == 1 {
        return Ok(None);
    }
    let flag = if n > 1 {
        format!("--num_gpus {n}")
    } else {
        format!("--nnodes {nodes}")
    };
    if args.device != Device::Gpu {
        bail!("{flag} needs --device gpu: each worker process trains on a GPU of its own");
    }
    let count = gpus().with_context(|| format!("{flag}: cannot count this host's GPUs"))?;
    if n > count {
        bail!("--num_gpus {n}: this host has {count} CUDA GPU(s)");
    }
    let (master_addr, master_port) = if nodes > 1 {
        let need = |what: &str| {
            anyhow!("--nnodes {nodes} needs --master_addr and --master_port: {what}, the same on every host")
        };
        let addr = args
            .master_addr
            .clone()
            .ok_or_else(|| need("--master_addr is the host name or address of node 0"))?;
        let port = args
            .master_port
            .ok_or_else(|| need("--master_port is the TCP port where rank 0 listens there"))?;
        (addr, port)
    } else {
        let addr = args
            .master_addr
            .clone()
            .unwrap_or_else(|| "127.0.0.1".to_owned());
        let port = match args.master_port {
            Some(port) => port,
            None => olive_dist::free_port().context("cannot pick a free port for rank 0")?,
        };
        (addr, port)
    };
    if master_port == 0 {
        bail!("--master_port 0: give a TCP port, 1 to 65535");
    }
    if master_addr.trim().is_empty() {
        bail!("--master_addr is empty: give the host name or address of node 0");
    }
    Ok(Some(Launch {
        workers: n,
        nnodes: nodes,
        node_rank: args.node_rank,
        master_addr: master_addr.trim().to_owned(),
        master_port,
    }))
}

/// This host's CUDA GPUs. `OLIVE_FAKE_GPU_COUNT` stands in for the count in tests of the launcher on machines
/// without GPUs (whose fixture passes never touch one).
fn gpu_count() -> anyhow::Result<usize> {
    if let Some(fake) = std::env::var_os("OLIVE_FAKE_GPU_COUNT") {
        return fake
            .to_str()
            .and_then(|text| text.trim().parse().ok())
            .ok_or_else(|| anyhow!("OLIVE_FAKE_GPU_COUNT={fake:?}: expected a number of GPUs"));
    }
    Ok(Gpu::count()?)
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
    let launch = launch(&args, gpu_count)?;
    let mut workflow = one_pass_on_cpu(
        &args.model_name_or_path,
        args.method.pass(),
        &config,
        "train_data_config",
        &args.output_path,
    );
    args.package.add_to(&mut workflow);
    if args.config_file.dry_run(&workflow, &args.output_path)? {
        return Ok(());
    }
    let elsewhere = launch.as_ref().filter(|l| l.node_rank > 0);
    if elsewhere.is_none() {
        refuse_non_empty(&args.output_path, args.overwrite)?;
    }
    let input = resolve_hf_input(&args.model_name_or_path)?;
    let found = plugins::discover(&plugins::search_path());
    let (plugin, pass) = found.pass(None, args.method.pass())?;
    let pass_run = |output_path: PathBuf| PassRun {
        plugin,
        pass: pass.name.clone(),
        model: Model::new(kinds::HF, &input),
        config_json: config.to_string(),
        output_path,
        device: args.device.name().to_owned(),
        timeout: args.timeout,
        grace: Duration::from_secs(5),
    };
    if let Some(launch) = elsewhere {
        // No rank 0 here: the output is node 0's to write.
        engine::run_pass_group(&pass_run(args.output_path.clone()), launch)?;
        let ranks = launch.ranks();
        let ranks = if ranks.len() == 1 {
            format!("rank {}", ranks.start)
        } else {
            format!("ranks {}-{}", ranks.start, ranks.end - 1)
        };
        println!(
            "{ranks} (node {} of {}): done; the adapter is written by node 0",
            launch.node_rank, launch.nnodes
        );
        return Ok(());
    }
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
        match &launch {
            Some(launch) => {
                engine::run_pass_group(&pass_run(run_dir.clone()), launch)?
                    .ok_or_else(|| anyhow!("rank 0 ran on this host but left no model"))?;
            }
            None => {
                engine::run_pass(&pass_run(run_dir.clone()))?;
            }
        }
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
            let provider = match args.device.name() {
                "gpu" => "CUDAExecutionProvider",
                _ => "CPUExecutionProvider",
            };
            args.package
                .write(&model, output, args.device.name(), provider)?;
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

    fn launch_of(args: &[&str], gpus: usize) -> anyhow::Result<Option<Launch>> {
        launch(&parse(args)?, || Ok(gpus))
    }

    #[test]
    fn group_flags_get_clear_errors() {
        let err = |args: &[&str], gpus| format!("{:#}", launch_of(args, gpus).unwrap_err());
        assert_eq!(
            err(&["--num_gpus", "2"], 2),
            "--num_gpus 2 needs --device gpu: each worker process trains on a GPU of its own"
        );
        assert_eq!(
            err(&["--num_gpus", "4", "--device", "gpu"], 2),
            "--num_gpus 4: this host has 2 CUDA GPU(s)"
        );
        assert!(err(&["--num_gpus", "0"], 1).starts_with("--num_gpus 0: give"));
        assert!(err(&["--nnodes", "0"], 1).starts_with("--nnodes 0: give"));
        assert_eq!(
            err(&["--nnodes", "2", "--node_rank", "2", "--device", "gpu"], 1),
            "--node_rank 2: give this host's place among the --nnodes 2 hosts, 0 to 1"
        );
        assert!(err(&["--nnodes", "2"], 1).starts_with("--nnodes 2 needs --device gpu"));
        let no_master = err(&["--nnodes", "2", "--device", "gpu"], 1);
        assert!(
            no_master
                .starts_with("--nnodes 2 needs --master_addr and --master_port: --master_addr"),
            "{no_master}"
        );
        let no_port = err(
            &["--nnodes", "2", "--device", "gpu", "--master_addr", "node0"],
            1,
        );
        assert!(
            no_port.contains(": --master_port is the TCP port"),
            "{no_port}"
        );
        assert_eq!(
            err(
                &["--num_gpus", "2", "--device", "gpu", "--master_port", "0"],
                2
            ),
            "--master_port 0: give a TCP port, 1 to 65535"
        );
        let no_driver = launch(
            &parse(&["--num_gpus", "2", "--device", "gpu"]).unwrap(),
            || bail!("no CUDA driver"),
        );
        assert_eq!(
            format!("{:#}", no_driver.unwrap_err()),
            "--num_gpus 2: cannot count this host's GPUs: no CUDA driver"
        );
    }

    #[test]
    fn group_flags_give_torchruns_layout() {
        let not_asked = || bail!("the GPUs were counted for a single process");
        assert_eq!(
            launch(&parse(&["--device", "gpu"]).unwrap(), not_asked).unwrap(),
            None
        );
        let one_host = launch_of(&["--num_gpus", "2", "--device", "gpu"], 8)
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                one_host.workers,
                one_host.nnodes,
                one_host.node_rank,
                one_host.ranks()
            ),
            (2, 1, 0, 0..2)
        );
        assert_eq!(one_host.master_addr, "127.0.0.1");
        assert_ne!(one_host.master_port, 0, "a free port is picked");
        let second_host = launch_of(
            &[
                "--num_gpus",
                "2",
                "--device",
                "gpu",
                "--nnodes",
                "2",
                "--node_rank",
                "1",
                "--master_addr",
                "10.0.0.1",
                "--master_port",
                "29500",
            ],
            2,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            second_host,
            Launch {
                workers: 2,
                nnodes: 2,
                node_rank: 1,
                master_addr: "10.0.0.1".into(),
                master_port: 29500
            }
        );
        assert_eq!(second_host.ranks(), 2..4);
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
