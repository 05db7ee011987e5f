//! `olive-host run-pass`: runs one pass of a plugin on a model, in a worker process, and prints
//! the output model as JSON.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use olive_pass_api::{kinds, Model};

use crate::engine::{self, PassRun};
use crate::plugins;

#[derive(Args, Debug)]
pub struct RunPassArgs {
    /// The plugin to take the pass from; by default, the one plugin that has the pass.
    #[arg(long)]
    pub plugin: Option<String>,
    /// The pass to run (e.g. GptqQuantizer).
    #[arg(long)]
    pub pass: String,
    /// The input model: a Hugging Face folder or an ONNX model.
    #[arg(long = "model_name_or_path", short = 'm')]
    pub model_name_or_path: PathBuf,
    /// A PEFT adapter folder to pass along with the model.
    #[arg(long = "adapter_path")]
    pub adapter_path: Option<PathBuf>,
    /// The input model's kind (hf, onnx, hf+adapter, ...); by default, guessed from its files.
    #[arg(long = "model_kind")]
    pub model_kind: Option<String>,
    /// The pass config: a JSON object, or the path of a JSON file.
    #[arg(long)]
    pub config: Option<String>,
    /// Where the output model goes; replaced only if the pass succeeds.
    #[arg(long = "output_path", short = 'o')]
    pub output_path: PathBuf,
    /// The device to run on.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Cancel the pass after this many seconds.
    #[arg(long, value_parser = super::parse_seconds)]
    pub timeout: Option<Duration>,
    /// Seconds a cancelled pass may take to stop before its worker is killed.
    #[arg(long = "cancel_grace", value_parser = super::parse_seconds, default_value = "5")]
    pub cancel_grace: Duration,
}

pub fn run(args: RunPassArgs) -> anyhow::Result<()> {
    let config_json = read_config(args.config.as_deref())?;
    let model = input_model(&args)?;
    let found = plugins::discover(&plugins::search_path());
    let (plugin, pass) = found.pass(args.plugin.as_deref(), &args.pass)?;
    let who = format!("pass `{}` of plugin `{}`", pass.name, plugin.manifest.name);
    if !pass.devices.contains(&args.device) {
        bail!(
            "{who} runs on {}, not on `{}`",
            pass.devices.join(", "),
            args.device
        );
    }
    let output = engine::run_pass(&PassRun {
        plugin,
        pass: pass.name.clone(),
        model,
        config_json,
        output_path: args.output_path.clone(),
        device: args.device,
        timeout: args.timeout,
        grace: args.cancel_grace,
    })?;
    tracing::info!("{who} wrote {}", args.output_path.display());
    println!("{}", serde_json::to_string_pretty(&output)?);
    Ok(())
}

/// The config text: `{}` when absent, the argument when it is a JSON object, else a file's contents.
fn read_config(arg: Option<&str>) -> anyhow::Result<String> {
    let Some(arg) = arg else {
        return Ok("{}".to_owned());
    };
    let (text, source) = if arg.trim_start().starts_with('{') {
        (arg.to_owned(), "--config".to_owned())
    } else {
        let text =
            fs::read_to_string(arg).with_context(|| format!("cannot read config file {arg}"))?;
        (text, format!("config file {arg}"))
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{source} is not valid JSON"))?;
    if !value.is_object() {
        bail!("{source} must be a JSON object, not {value}");
    }
    Ok(text)
}

fn input_model(args: &RunPassArgs) -> anyhow::Result<Model> {
    let path = &args.model_name_or_path;
    if !path.exists() {
        bail!("model path {} does not exist", path.display());
    }
    let mut kind = match &args.model_kind {
        Some(kind) => kind.clone(),
        None => guess_kind(path)?,
    };
    let mut model = Model::new(kind.clone(), path);
    if let Some(adapter) = &args.adapter_path {
        if !adapter.join("adapter_config.json").is_file() {
            bail!(
                "adapter path {} is not a PEFT adapter folder (no adapter_config.json)",
                adapter.display()
            );
        }
        if kind == kinds::HF {
            kind = kinds::HF_ADAPTER.to_owned();
        }
        model.kind = kind;
        model.adapter_paths.push(adapter.clone());
    }
    Ok(model)
}

/// `hf` for a folder with config.json, `onnx` for a .onnx file or a folder holding one.
fn guess_kind(path: &Path) -> anyhow::Result<String> {
    let is_onnx = |p: &Path| p.extension().is_some_and(|ext| ext == "onnx");
    if path.is_file() && is_onnx(path) {
        return Ok(kinds::ONNX.to_owned());
    }
    if path.join("config.json").is_file() {
        return Ok(kinds::HF.to_owned());
    }
    let holds_onnx = fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|entry| is_onnx(&entry.path()))
        })
        .unwrap_or(false);
    if holds_onnx {
        return Ok(kinds::ONNX.to_owned());
    }
    bail!(
        "cannot tell what kind of model {} is: expected a Hugging Face folder (with config.json) or an ONNX model (.onnx); give --model_kind",
        path.display()
    )
}
