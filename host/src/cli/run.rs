//! `olive-host run --config FILE`: Olive's `olive run` (olive/cli/run.py) — run an Olive workflow file (JSON or
//! YAML) for the passes the installed plugins serve. `--model_name_or_path`/`--adapter_path` replace the input
//! model and `--output_path` the output folder, as in Olive; `--dry_run` checks the whole workflow (schema, pass
//! types and configs, data configs, metrics, input model) and stops before running anything.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use crate::plugins;
use crate::workflow::config::Workflow;
use crate::workflow::document::{self, Node};
use crate::workflow::run::{execute, prepare};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The workflow file (JSON, or YAML by its .yaml/.yml extension).
    #[arg(long = "config", visible_alias = "run-config")]
    pub config: PathBuf,
    /// Replace the workflow's input model with this Hugging Face model: a folder, a .gguf file, a hub id in the
    /// local Hugging Face cache, or models:/<name>/<version> from the registry at MLFLOW_TRACKING_URI.
    #[arg(long = "model_name_or_path", short = 'm')]
    pub model_name_or_path: Option<PathBuf>,
    /// With --model_name_or_path: a PEFT adapter folder for it.
    #[arg(long = "adapter_path")]
    pub adapter_path: Option<PathBuf>,
    /// Replace the workflow's output_dir.
    #[arg(long = "output_path", short = 'o')]
    pub output_path: Option<PathBuf>,
    /// Check the workflow and stop before running any pass.
    #[arg(long = "dry_run")]
    pub dry_run: bool,
}

/// Applies the command-line replacements to the parsed file (top-level keys win over `engine.*`, as in Olive).
fn apply_overrides(root: &mut Node, args: &RunArgs) -> anyhow::Result<()> {
    let Node::Map(entries) = root else {
        anyhow::bail!("the workflow must be a mapping");
    };
    let mut set = |key: &str, value: serde_json::Value| {
        for (k, v) in entries.iter_mut() {
            if k == "engine" {
                if let Node::Map(engine) = v {
                    engine.retain(|(ek, _)| ek != key);
                }
            }
        }
        let node = Node::from_json(&value);
        match entries.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = node,
            None => entries.push((key.to_owned(), node)),
        }
    };
    if let Some(model) = &args.model_name_or_path {
        let mut input = json!({"type": "HfModel", "model_path": model});
        if let Some(adapter) = &args.adapter_path {
            input["adapter_path"] = json!(adapter);
        }
        set("input_model", input);
    } else if args.adapter_path.is_some() {
        anyhow::bail!("--adapter_path needs --model_name_or_path");
    }
    if let Some(out) = &args.output_path {
        set("output_dir", json!(out));
    }
    Ok(())
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut root = document::read(&args.config)?;
    apply_overrides(&mut root, &args)?;
    let workflow = Workflow::from_node(&root)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", args.config.display()))?;
    let found = plugins::discover(&plugins::search_path());
    let prepared = prepare(workflow, &found)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", args.config.display()))?;
    if args.dry_run {
        println!(
            "Dry run: {} is valid ({} passes: {}); nothing was run.",
            args.config.display(),
            prepared.passes.len(),
            prepared
                .passes
                .iter()
                .map(|p| {
                    let types: Vec<&str> = p.choices.iter().map(|c| c.label.as_str()).collect();
                    format!("{} ({})", p.name, types.join(" | "))
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    }
    let report = execute(&prepared)?;
    tracing::info!("{} passes run, {} from the cache", report.ran, report.hits);
    match &report.output {
        Some(model) => println!("Model is saved at {}", model.path.display()),
        None => println!(
            "No output model produced; results are in {}",
            report.output_dir.display()
        ),
    }
    Ok(())
}
