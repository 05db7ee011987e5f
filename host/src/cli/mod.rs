//! The commands of olive-host, one module each; flags mirror Olive's CLI.

mod auto_opt;
mod benchmark;
mod cache;
mod common;
mod config_file;
mod convert;
mod convert_adapters;
mod dataset;
mod ep_check;
mod evaluate;
mod finetune;
mod generate;
mod model;
mod plugins;
mod quantize;
mod run;
mod run_pass;
mod worker;

use clap::{Parser, Subcommand};

pub(crate) use common::resolve_hf_input;
pub(crate) use model::resolve_models_uri;

#[derive(Parser, Debug)]
#[command(
    name = "olive-host",
    version,
    about = "Olive-compatible model optimization in one binary"
)]
pub struct Cli {
    /// Olive's log level: 0 debug, 1 info, 2 warning, 3 error, 4 critical.
    #[arg(long = "log_level", global = true, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=4))]
    pub log_level: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Optimize a Hugging Face model into an ONNX model for onnxruntime-genai (Olive's auto-opt).
    AutoOpt(auto_opt::AutoOptArgs),
    /// Benchmark models × devices × settings with the evaluators: CSV, Markdown, JSON and a plot.
    Benchmark(benchmark::BenchmarkArgs),
    /// List or clean the workflow cache.
    Cache(cache::CacheArgs),
    /// Convert a GGUF file to a Hugging Face folder.
    Convert(convert::ConvertArgs),
    /// Convert a PEFT LoRA adapter to an ONNX Runtime adapter file for a model exported with LoRA.
    ConvertAdapters(convert_adapters::ConvertAdaptersArgs),
    /// Perplexity of a model over a text, on the CPU transformer or through ONNX Runtime.
    Evaluate(evaluate::EvaluateArgs),
    /// Run an ONNX model through an execution provider: every node on it (CPU fallback off), outputs vs the CPU's.
    EpCheck(ep_check::EpCheckArgs),
    /// Fine-tune LoRA adapters on a dataset, on CPU (Olive's finetune; PEFT adapter out).
    Finetune(Box<finetune::FinetuneArgs>),
    /// Generate text greedily from a prompt, on CPU.
    Generate(generate::GenerateArgs),
    /// Publish, list, show and download models in an MLflow registry (Azure ML's `az ml model create`).
    Model(model::ModelArgs),
    /// Quantize a Hugging Face model's linears with RTN, AWQ or GPTQ (Olive's quantize).
    Quantize(quantize::QuantizeArgs),
    /// List plugins, or write a plugin library's manifest.
    Plugins(plugins::PluginsArgs),
    /// Run an Olive workflow file (JSON or YAML): passes through the cache, evaluation, search.
    Run(run::RunArgs),
    /// Run one pass of a plugin on a model, in a worker process.
    RunPass(run_pass::RunPassArgs),
    /// Run one pass for the host (internal).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::AutoOpt(args) => auto_opt::run(args),
        Command::Benchmark(args) => benchmark::run(args),
        Command::Cache(args) => cache::run(args),
        Command::Convert(args) => convert::run(args),
        Command::ConvertAdapters(args) => convert_adapters::run(args),
        Command::Evaluate(args) => evaluate::run(args),
        Command::EpCheck(args) => ep_check::run(args),
        Command::Finetune(args) => finetune::run(*args),
        Command::Generate(args) => generate::run(args),
        Command::Model(args) => model::run(args),
        Command::Plugins(args) => plugins::run(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Run(args) => run::run(args),
        Command::RunPass(args) => run_pass::run(args),
        Command::Worker(args) => worker::run(args),
    }
}

/// Parses a positive number of seconds (a flag's value).
fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("`{text}` must be a positive number of seconds"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}
