//! `--save_config_file` and `--dry_run` (olive/cli/base.py): a command writes the Olive workflow it runs — its
//! input model, its passes with their configs, its data as Olive data configs — to `<output_path>/config.json`, so
//! `olive-host run --config` (or Olive) can run it again; `--dry_run` writes it and stops before anything runs.

use std::path::Path;

use clap::Args;
use olive_data::{DataConfig, Layout};
use serde_json::{json, Map, Value};

use crate::files::write_atomic;

#[derive(Args, Debug, Clone, Copy, Default)]
pub struct ConfigFileArgs {
    /// Write the workflow this command runs to <output_path>/config.json.
    #[arg(long = "save_config_file")]
    pub save_config_file: bool,
    /// Write the workflow to <output_path>/config.json and stop: nothing is run.
    #[arg(long = "dry_run")]
    pub dry_run: bool,
}

/// One pass of a command's workflow: its name, Olive's pass type and its config.
pub struct PassSpec<'a> {
    pub name: &'a str,
    pub pass_type: &'a str,
    pub config: Value,
}

/// Olive's workflow for a command on a local system with one accelerator.
pub fn workflow(
    input_model: Value,
    device: &str,
    provider: &str,
    passes: &[PassSpec],
    output_path: &Path,
    log_level: u8,
) -> Value {
    let mut pass_map = Map::new();
    for pass in passes {
        let mut entry = Map::new();
        entry.insert("type".into(), Value::String(pass.pass_type.to_owned()));
        if let Value::Object(config) = &pass.config {
            entry.extend(config.clone());
        }
        pass_map.insert(pass.name.to_owned(), Value::Object(entry));
    }
    json!({
        "input_model": input_model,
        "systems": {"local_system": {
            "type": "LocalSystem",
            "accelerators": [{"device": device, "execution_providers": [provider]}],
        }},
        "passes": pass_map,
        "host": "local_system",
        "target": "local_system",
        "output_dir": output_path,
        "log_severity_level": log_level,
    })
}

/// The workflow of a command that runs one pass on a Hugging Face model on the CPU, its inline data config at
/// `data_key` moved into `data_configs` (quantize, finetune).
pub fn one_pass_on_cpu(
    model: &Path,
    pass_type: &str,
    config: &Value,
    data_key: &str,
    output_path: &Path,
) -> Value {
    let name = pass_type.to_ascii_lowercase();
    let pass = PassSpec {
        name: &name,
        pass_type,
        config: config.clone(),
    };
    let mut flow = workflow(
        hf_model(model, None),
        "cpu",
        "CPUExecutionProvider",
        &[pass],
        output_path,
        crate::logging::current_level(),
    );
    lift_data_configs(&mut flow, &name, &[data_key]);
    flow
}

/// An HfModel input.
pub fn hf_model(path: &Path, adapter: Option<&Path>) -> Value {
    let mut model = json!({"type": "HfModel", "model_path": path});
    if let Some(adapter) = adapter {
        model["adapter_path"] = json!(adapter);
    }
    model
}

/// Moves each inline `olive_data` config found at `keys` of a pass config into the workflow's `data_configs` in
/// Olive's form, leaving its name in the pass config.
pub fn lift_data_configs(workflow: &mut Value, pass: &str, keys: &[&str]) {
    let mut lifted = Vec::new();
    if let Some(Value::Object(config)) = workflow.pointer_mut(&format!("/passes/{pass}")) {
        for key in keys {
            let Some(value) = config.get(*key) else {
                continue;
            };
            let Ok(data) = serde_json::from_value::<DataConfig>(value.clone()) else {
                continue;
            };
            let name = format!("{pass}_{key}");
            lifted.push(olive_data_config(&name, &data));
            config.insert((*key).to_owned(), Value::String(name));
        }
    }
    if !lifted.is_empty() {
        if let Value::Array(list) = &mut workflow["data_configs"] {
            list.extend(lifted);
        } else {
            workflow["data_configs"] = Value::Array(lifted);
        }
    }
}

/// An olive-data config in Olive's DataConfig form (HuggingfaceContainer over local files).
pub fn olive_data_config(name: &str, data: &DataConfig) -> Value {
    let mut pre = json!({
        "max_seq_len": data.max_seq_len,
        "strategy": match data.layout { Layout::Pack => "join", Layout::Pad => "line-by-line" },
        "random_seed": data.seed,
    });
    if let Some(n) = data.max_samples {
        pre["max_samples"] = json!(n);
    }
    if data.use_chat_template {
        pre["chat_template"] = json!(true);
    } else if let Some(template) = &data.text_template {
        pre["text_template"] = json!(template);
    } else {
        pre["text_cols"] = json!([data.text_field]);
    }
    if data.eval_ratio > 0.0 {
        pre["eval_ratio"] = json!(data.eval_ratio);
    }
    json!({
        "name": name,
        "type": "HuggingfaceContainer",
        "load_dataset_config": {"data_name": data.data_name, "data_files": data.data_files, "split": data.split},
        "pre_process_data_config": pre,
    })
}

impl ConfigFileArgs {
    /// With `--dry_run`, writes the workflow and returns true: the command stops here.
    pub fn dry_run(&self, workflow: &Value, output_path: &Path) -> anyhow::Result<bool> {
        if !self.dry_run {
            return Ok(false);
        }
        write(workflow, output_path)?;
        println!("Dry run mode enabled. Configuration file is generated but no optimization is performed.");
        Ok(true)
    }

    /// With `--save_config_file`, writes the workflow (after the command has written its output, which replaces
    /// the output folder).
    pub fn save(&self, workflow: &Value, output_path: &Path) -> anyhow::Result<()> {
        if self.save_config_file {
            write(workflow, output_path)?;
        }
        Ok(())
    }
}

fn write(workflow: &Value, output_path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(output_path)?;
    let path = output_path.join("config.json");
    write_atomic(&path, &serde_json::to_vec_pretty(workflow)?)?;
    println!("Config file saved at {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::data_config::WorkflowDataConfig;

    #[test]
    fn data_configs_round_trip_through_olives_form() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.jsonl");
        std::fs::write(&file, "{\"prompt\": \"a\", \"response\": \"b\"}\n").unwrap();
        let data = DataConfig {
            data_files: vec![file.display().to_string()],
            text_template: Some("<|user|>\n{prompt}<|end|>\n{response}".into()),
            max_seq_len: 64,
            max_samples: Some(8),
            layout: Layout::Pad,
            eval_ratio: 0.1,
            seed: 3,
            ..DataConfig::default()
        };
        let olive: WorkflowDataConfig =
            serde_json::from_value(olive_data_config("d", &data)).unwrap();
        assert_eq!(olive.resolve(None).unwrap().data, data);
    }

    #[test]
    fn inline_data_moves_to_data_configs() {
        let data = serde_json::to_value(DataConfig::default()).unwrap();
        let mut w = workflow(
            hf_model(Path::new("m"), None),
            "cpu",
            "CPUExecutionProvider",
            &[PassSpec {
                name: "lora",
                pass_type: "LoRA",
                config: json!({"r": 4, "train_data_config": data}),
            }],
            Path::new("out"),
            1,
        );
        lift_data_configs(&mut w, "lora", &["train_data_config"]);
        assert_eq!(
            w["passes"]["lora"]["train_data_config"],
            "lora_train_data_config"
        );
        assert_eq!(w["data_configs"][0]["name"], "lora_train_data_config");
        assert_eq!(w["passes"]["lora"]["type"], "LoRA");
    }
}
