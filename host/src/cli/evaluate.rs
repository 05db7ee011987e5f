//! `olive-host evaluate`: perplexity of a model over a text, on the CPU transformer (a Hugging Face folder or
//! .gguf) or through ONNX Runtime (an exported ONNX folder, optionally with a LoRA adapter), so the two can be
//! compared; prints a JSON object. With `--metrics` it runs the workflow evaluators (host/src/evaluate) instead
//! and prints Olive's metric result (`{"<metric>-<sub_type>": {value, priority, higher_is_better}}`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use olive_pass_api::{kinds, Model};
use serde_json::{json, Value};

use super::common::resolve_hf_input;
use crate::device::Device;
use crate::evaluate::perplexity::perplexity;
use crate::evaluate::runner::Runner;
use crate::evaluate::{choice, evaluate_with, metric, Options};

#[derive(Args, Debug)]
pub struct EvaluateArgs {
    /// A Hugging Face folder, a .gguf file, or an ONNX folder (genai_config.json + model.onnx).
    #[arg(long = "model_name_or_path", short = 'm')]
    pub model_name_or_path: PathBuf,
    /// The text to score (UTF-8); default: the project's held-out evaluation text (data/eval.txt).
    #[arg(long = "text_file")]
    pub text_file: Option<PathBuf>,
    /// Tokens per window; each window is scored from an empty cache.
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// An ONNX Runtime LoRA adapter file (.onnx_adapter) to activate (ONNX folders), or a PEFT LoRA adapter
    /// folder to merge (Hugging Face models); repeat for several.
    #[arg(long)]
    pub adapter: Vec<PathBuf>,
    /// Metrics to run, comma-separated: perplexity, accuracy_score, latency (per-token decode), prefill_latency,
    /// throughput (decode tokens/s), size_on_disk, memory (peak RSS).
    #[arg(long, value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// Multiple-choice questions for accuracy_score (JSON Lines: question, choices, answer); default:
    /// data/multiple_choice.jsonl.
    #[arg(long = "choices_file")]
    pub choices_file: Option<PathBuf>,
    /// Rank choices by log-likelihood per character (lm-eval's acc_norm).
    #[arg(long = "length_normalized")]
    pub length_normalized: bool,
    /// Untimed runs before the latency samples.
    #[arg(long = "warmup_num", default_value_t = 10)]
    pub warmup_num: usize,
    /// Timed runs.
    #[arg(long = "repeat_test_num", default_value_t = 20)]
    pub repeat_test_num: usize,
    /// Prompt tokens for latency, throughput and memory (from --text_file or data/eval.txt).
    #[arg(long = "prompt_length", default_value_t = 128)]
    pub prompt_length: usize,
    /// Also write how each multiple-choice question was scored (log-likelihood of each choice) to this JSON file.
    #[arg(long = "details_file")]
    pub details_file: Option<PathBuf>,
    /// Where the model runs: cpu, or gpu (a Hugging Face folder on olive-rs's CUDA kernels, bf16).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Load the model and run one forward pass of N tokens, then exit (the memory metric's child process).
    #[arg(long = "memory_probe", hide = true)]
    pub memory_probe: Option<usize>,
}

/// The model as the evaluators take it.
fn model_of(args: &EvaluateArgs) -> anyhow::Result<Model> {
    if olive_runtime::is_onnx_folder(&args.model_name_or_path) {
        let mut model = Model::new(kinds::ONNX, &args.model_name_or_path);
        model.adapter_paths.extend(args.adapter.iter().cloned());
        return Ok(model);
    }
    let mut model = Model::new(kinds::HF, resolve_hf_input(&args.model_name_or_path)?);
    if let Some(a) = args.adapter.iter().find(|a| !a.is_dir()) {
        bail!(
            "--adapter {}: a Hugging Face model takes PEFT adapter folders (adapter_config.json + \
               adapter_model.safetensors); .onnx_adapter files apply to ONNX exports",
            a.display()
        );
    }
    if !args.adapter.is_empty() {
        model.kind = kinds::HF_ADAPTER.to_owned();
        model.adapter_paths.extend(args.adapter.iter().cloned());
    }
    Ok(model)
}

fn text(args: &EvaluateArgs) -> anyhow::Result<Option<String>> {
    args.text_file
        .as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the text file {}", p.display()))
        })
        .transpose()
}

/// The metric a `--metrics` name stands for.
fn metric_of(name: &str, args: &EvaluateArgs) -> anyhow::Result<Value> {
    let latency = |mode: &str| {
        json!({"warmup_num": args.warmup_num, "repeat_test_num": args.repeat_test_num, "mode": mode,
               "prompt_length": args.prompt_length})
    };
    let subs = |names: &[&str], config: Value| -> Value {
        names
            .iter()
            .map(|n| json!({"name": n, "metric_config": config}))
            .collect()
    };
    let all = ["avg", "min", "max", "p50", "p75", "p90", "p95", "p99"];
    Ok(match name {
        "perplexity" => json!({"name": name, "type": "accuracy",
            "sub_types": [{"name": "perplexity", "metric_config": {"window": args.window}}]}),
        "accuracy_score" => json!({"name": name, "type": "accuracy",
            "sub_types": [{"name": "accuracy_score", "metric_config": {"length_normalized": args.length_normalized}}]}),
        "latency" => json!({"name": name, "type": "latency", "sub_types": subs(&all, latency("decode"))}),
        "prefill_latency" => json!({"name": name, "type": "latency", "sub_types": subs(&all, latency("prefill"))}),
        "throughput" => json!({"name": name, "type": "throughput", "sub_types": subs(&["avg", "p50", "min", "max"], latency("decode"))}),
        "size_on_disk" => json!({"name": name, "type": "size_on_disk", "sub_types": [{"name": "bytes"}]}),
        "memory" => {
            let config = json!({"prompt_length": args.prompt_length});
            let mut subs = vec![json!({"name": "peak_rss", "metric_config": config})];
            if args.device == Device::Gpu {
                subs.push(json!({"name": "peak_device_memory", "metric_config": config}));
            }
            json!({"name": name, "type": "memory", "sub_types": subs})
        }
        other => bail!("--metrics {other:?}: choose among perplexity, accuracy_score, latency, prefill_latency, \
                        throughput, size_on_disk, memory"),
    })
}

fn run_metrics(args: &EvaluateArgs) -> anyhow::Result<()> {
    let metrics = args
        .metrics
        .iter()
        .map(|n| metric_of(n, args).and_then(|v| Ok(serde_json::from_value::<metric::Metric>(v)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let plans = metric::validate(&metrics, &[], None)?;
    let model = model_of(args)?;
    let default_questions = match &args.choices_file {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Some(choice::parse_questions(&text, &p.display().to_string())?)
        }
        None => None,
    };
    let options = Options {
        olive_host: None,
        default_text: text(args)?,
        default_questions,
        device: args.device,
    };
    let evaluation = evaluate_with(&plans, &model, &options)?;
    if let Some(path) = &args.details_file {
        let details: serde_json::Map<String, Value> = evaluation
            .choices
            .iter()
            .map(|(name, scored)| (name.clone(), json!(scored)))
            .collect();
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&details)?)
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{}", serde_json::to_string_pretty(&evaluation.result)?);
    Ok(())
}

/// The memory metric's child: load, one forward of `n` tokens of the evaluation text, then print the peak RSS
/// and, on the GPU, the peak bytes held in the device's memory pool.
fn memory_probe(args: &EvaluateArgs, n: usize) -> anyhow::Result<()> {
    let model = model_of(args)?;
    let folder = crate::evaluate::runner::model_folder(&model)?;
    let text = text(args)?.unwrap_or_else(|| olive_data::DEFAULT_EVAL_TEXT.to_owned());
    let tokenizer = olive_model::tokenizer::load(&folder)?;
    let ids = tokenizer
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("tokenizing the text: {e}"))?
        .get_ids()
        .to_vec();
    if ids.len() < n {
        bail!("--memory_probe {n}: the text has only {} tokens", ids.len());
    }
    let mut runner = Runner::load(&model, args.device)?;
    runner.logits(&ids[..n])?;
    // The kernel's high-water mark of this process alone (a fork's ru_maxrss starts from its parent's).
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("/proc/self/status has no VmHWM"))?;
    println!("peak_rss {}", kib * 1024);
    if args.device == Device::Gpu {
        let peak = crate::device::first_gpu()?.peak_pool_bytes()?;
        if peak == 0 {
            bail!("the GPU reports no memory-pool allocations (a driver without stream-ordered allocation)");
        }
        println!("peak_device_memory {peak}");
    }
    Ok(())
}

pub fn run(args: EvaluateArgs) -> anyhow::Result<()> {
    if let Some(n) = args.memory_probe {
        return memory_probe(&args, n);
    }
    if !args.metrics.is_empty() {
        return run_metrics(&args);
    }
    let model = model_of(&args)?;
    let folder = crate::evaluate::runner::model_folder(&model)?;
    let runtime = match (model.kind == kinds::ONNX, args.device) {
        (true, _) => "onnxruntime",
        (false, Device::Cpu) => "olive-nn",
        (false, Device::Gpu) => "olive-nn (gpu)",
    };
    let mut runner = Runner::load(&model, args.device)?;
    let text = text(&args)?.unwrap_or_else(|| olive_data::DEFAULT_EVAL_TEXT.to_owned());
    let tokenizer = olive_model::tokenizer::load(&folder)?;
    let ids = tokenizer
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("tokenizing the text: {e}"))?
        .get_ids()
        .to_vec();
    if args.window < 2 {
        bail!("--window {} is too short: a window predicts all its tokens but the first; give 2 or more", args.window);
    }
    let nll = perplexity(&mut runner, &ids, args.window, None)?;
    let result = json!({
        "perplexity": nll.perplexity(),
        "predicted_tokens": nll.predicted,
        "windows": crate::evaluate::perplexity::windows(&ids, args.window).len(),
        "runtime": runtime,
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
