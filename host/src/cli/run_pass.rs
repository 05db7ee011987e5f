//! `olive-host run-pass`: Olive's `olive run-pass` (olive/cli/run_pass.py) — runs one pass of a plugin on a model,
//! in a worker process, writing Olive's layout (`<output_path>/model` and `model_config.json`), and prints the
//! output model as JSON. `--list-passes` lists the passes of every plugin found; `--save_config_file` and
//! `--dry_run` write the one-pass workflow that `olive-host run --config` runs to the same output.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use olive_pass_api::{kinds, Model};
use serde_json::{json, Value};

use super::common::refuse_non_empty;
use super::config_file::{hf_model, lift_data_configs, workflow, ConfigFileArgs, PassSpec};
use crate::engine::PassRun;
use crate::plugins::{self, Discovery};
use crate::workflow::output::run_pass_to_output;
use crate::workflow::resolve::is_data_key;

#[derive(Args, Debug)]
pub struct RunPassArgs {
    /// The plugin to take the pass from; by default, the one plugin that has the pass.
    #[arg(long)]
    pub plugin: Option<String>,
    /// The pass to run (e.g. GptqQuantizer).
    #[arg(
        long = "pass-name",
        visible_alias = "pass",
        required_unless_present = "list_passes"
    )]
    pub pass_name: Option<String>,
    /// The pass config: a JSON object, or the path of a JSON file.
    #[arg(long = "pass-config", visible_alias = "config")]
    pub pass_config: Option<String>,
    /// List the passes of every plugin found, with their plugin, and exit.
    #[arg(long = "list-passes")]
    pub list_passes: bool,
    /// The input model: a Hugging Face folder or an ONNX model.
    #[arg(
        long = "model_name_or_path",
        short = 'm',
        required_unless_present = "list_passes"
    )]
    pub model_name_or_path: Option<PathBuf>,
    /// A PEFT adapter folder to pass along with the model.
    #[arg(long = "adapter_path", short = 'a')]
    pub adapter_path: Option<PathBuf>,
    /// The input model's kind (hf, onnx, hf+adapter, ...); by default, guessed from its files.
    #[arg(long = "model_kind")]
    pub model_kind: Option<String>,
    /// The output folder: the pass's model goes to <output_path>/model, described by
    /// <output_path>/model_config.json; both appear only if the pass succeeds.
    #[arg(long = "output_path", short = 'o', default_value = "run-pass-output")]
    pub output_path: PathBuf,
    /// Replace an existing, non-empty output folder.
    #[arg(long)]
    pub overwrite: bool,
    /// The device to run on.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Cancel the pass after this many seconds.
    #[arg(long, value_parser = super::parse_seconds)]
    pub timeout: Option<Duration>,
    /// Seconds a cancelled pass may take to stop before its worker is killed.
    #[arg(long = "cancel_grace", value_parser = super::parse_seconds, default_value = "5")]
    pub cancel_grace: Duration,
    #[command(flatten)]
    pub config_file: ConfigFileArgs,
}

pub fn run(args: RunPassArgs) -> anyhow::Result<()> {
    let found = plugins::discover(&plugins::search_path());
    if args.list_passes {
        print!("{}", list_passes(&found));
        return Ok(());
    }
    let (Some(pass_name), Some(model_path)) = (&args.pass_name, &args.model_name_or_path) else {
        bail!("--pass-name and -m/--model_name_or_path are required when not using --list-passes");
    };
    let (config_json, config) = read_config(args.pass_config.as_deref())?;
    let model = input_model(model_path, &args)?;
    let (plugin, pass) = found.pass(args.plugin.as_deref(), pass_name)?;
    let who = format!("pass `{}` of plugin `{}`", pass.name, plugin.manifest.name);
    if !pass.devices.contains(&args.device) {
        bail!(
            "{who} runs on {}, not on `{}`",
            pass.devices.join(", "),
            args.device
        );
    }
    let output = &args.output_path;
    let flow = if args.config_file.save_config_file || args.config_file.dry_run {
        let flow = one_pass_workflow(&model, &pass.name, &config, &args.device, output)?;
        if args.config_file.dry_run(&flow, output)? {
            return Ok(());
        }
        Some(flow)
    } else {
        None
    };
    refuse_non_empty(output, args.overwrite)?;
    let model = run_pass_to_output(PassRun {
        plugin,
        pass: pass.name.clone(),
        model,
        config_json,
        output_path: output.clone(),
        device: args.device,
        timeout: args.timeout,
        grace: args.cancel_grace,
    })?;
    tracing::info!("{who} wrote {}", output.display());
    if let Some(flow) = &flow {
        args.config_file.save(flow, output)?;
    }
    println!("{}", serde_json::to_string_pretty(&model)?);
    Ok(())
}

/// Every pass of every plugin found, by name, with its plugin and devices (Olive's `--list-passes`).
fn list_passes(found: &Discovery) -> String {
    let mut rows: Vec<(&str, String, String)> = found
        .plugins
        .iter()
        .flat_map(|plugin| {
            plugin.manifest.passes.iter().map(move |pass| {
                let from = format!("{} {}", plugin.manifest.name, plugin.manifest.version);
                (pass.name.as_str(), from, pass.devices.join(", "))
            })
        })
        .collect();
    if rows.is_empty() {
        return format!("No passes available: {}\n", found.summary());
    }
    rows.sort();
    let name_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let plugin_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut text = String::from("Available passes:\n");
    for (i, (name, plugin, devices)) in rows.iter().enumerate() {
        text.push_str(&format!(
            "{:3}. {name:<name_width$}  {plugin:<plugin_width$}  {devices}\n",
            i + 1
        ));
    }
    text.push_str(&format!(
        "\nTotal: {} passes available\n\nUsage: olive-host run-pass --pass-name <PassName> -m <model> -o <output>\n",
        rows.len()
    ));
    text
}

/// The pass config as given (so that the pass's errors point into it) and parsed: `{}` when absent, the argument
/// when it is a JSON object, else a file's contents.
fn read_config(arg: Option<&str>) -> anyhow::Result<(String, Value)> {
    let Some(arg) = arg else {
        return Ok(("{}".to_owned(), json!({})));
    };
    let (text, source) = if arg.trim_start().starts_with('{') {
        (arg.to_owned(), "--pass-config".to_owned())
    } else {
        let text =
            fs::read_to_string(arg).with_context(|| format!("cannot read config file {arg}"))?;
        (text, format!("config file {arg}"))
    };
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{source} is not valid JSON"))?;
    if !value.is_object() {
        bail!("{source} must be a JSON object, not {value}");
    }
    Ok((text, value))
}

/// Olive's workflow for this one pass (olive/cli/run_pass.py `_get_run_config`): paths made absolute, so that
/// `olive-host run --config <output_path>/config.json` runs it from any folder, and inline olive-data configs
/// moved into `data_configs`.
fn one_pass_workflow(
    model: &Model,
    pass_type: &str,
    config: &Value,
    device: &str,
    output: &Path,
) -> anyhow::Result<Value> {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let input = match model.kind.as_str() {
        kinds::HF | kinds::HF_ADAPTER => hf_model(
            &absolute(&model.path),
            model.adapter_paths.first().map(|a| absolute(a)).as_deref(),
        ),
        kinds::ONNX => json!({"type": "OnnxModel", "model_path": absolute(&model.path)}),
        other => bail!(
            "--save_config_file/--dry_run: an Olive workflow has no input model type for a model of kind `{other}` \
             (HfModel takes hf and hf+adapter, OnnxModel onnx)"
        ),
    };
    let provider = match device {
        "cpu" => "CPUExecutionProvider",
        "gpu" => "CUDAExecutionProvider",
        "npu" => "QNNExecutionProvider",
        other => bail!(
            "--save_config_file/--dry_run: no execution provider is known for device `{other}` (cpu, gpu, npu)"
        ),
    };
    let name = pass_type.to_ascii_lowercase();
    let pass = PassSpec {
        name: &name,
        pass_type,
        config: config.clone(),
    };
    let mut flow = workflow(
        input,
        device,
        provider,
        &[pass],
        &absolute(output),
        crate::logging::current_level(),
    );
    let data_keys: Vec<&str> = config
        .as_object()
        .map(|c| {
            c.keys()
                .map(String::as_str)
                .filter(|k| is_data_key(k))
                .collect()
        })
        .unwrap_or_default();
    lift_data_configs(&mut flow, &name, &data_keys);
    if let Some(Value::Array(data_configs)) = flow.get_mut("data_configs") {
        for data in data_configs {
            if let Some(Value::Array(files)) = data.pointer_mut("/load_dataset_config/data_files") {
                for file in files {
                    if let Value::String(path) = file {
                        if Path::new(path).is_relative() && Path::new(path).exists() {
                            *file = json!(absolute(Path::new(path)));
                        }
                    }
                }
            }
        }
    }
    Ok(flow)
}

fn input_model(path: &Path, args: &RunPassArgs) -> anyhow::Result<Model> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workflow_names_the_pass_by_type_and_lifts_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = Model::new(kinds::HF_ADAPTER, dir.path().join("m"));
        model.adapter_paths.push(dir.path().join("a"));
        let data = serde_json::to_value(olive_data::DataConfig::default()).unwrap();
        let config = json!({"bits": 4, "data_config": data});
        let flow =
            one_pass_workflow(&model, "GptqQuantizer", &config, "gpu", Path::new("out")).unwrap();
        let pass = &flow["passes"]["gptqquantizer"];
        assert_eq!(pass["type"], "GptqQuantizer");
        assert_eq!(pass["bits"], 4);
        assert_eq!(pass["data_config"], "gptqquantizer_data_config");
        assert_eq!(
            flow["input_model"]["adapter_path"],
            json!(dir.path().join("a"))
        );
        let accelerator = &flow["systems"]["local_system"]["accelerators"][0];
        assert_eq!(
            accelerator["execution_providers"][0],
            "CUDAExecutionProvider"
        );
        assert!(Path::new(flow["output_dir"].as_str().unwrap()).is_absolute());
        let onnx = Model::new(kinds::ONNX, dir.path().join("m.onnx"));
        let flow =
            one_pass_workflow(&onnx, "CopyModel", &json!({}), "cpu", Path::new("o")).unwrap();
        assert_eq!(flow["input_model"]["type"], "OnnxModel");
        let other = Model::new("pytorch", dir.path());
        let err = one_pass_workflow(&other, "CopyModel", &json!({}), "cpu", Path::new("o"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kind `pytorch`"), "{err}");
    }
}
