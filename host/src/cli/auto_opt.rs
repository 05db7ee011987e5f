//! `olive-host auto-opt`: Olive's `olive auto-opt` (olive/cli/auto_opt.py) with `--use_ort_genai`: a Hugging
//! Face model (folder or .gguf), with a PEFT adapter or not, through the recipe of the execution-provider plugin
//! that serves `--device`/`--provider` at `--precision` (ep-cpu's: the `ModelBuilder` pass), then `ExtractAdapters`
//! with an adapter, into Olive's layout, `<output_path>/model/{model.onnx, model.onnx.data, genai_config.json,
//! tokenizer files[, adapter_weights.onnx_adapter]}`. The result is first run through the provider
//! (`olive-host ep-check`: every node on it, CPU fallback off); a failed check leaves no output.
//!
//! `--enable_aot` (Olive 0.13's `olive optimize --enable_aot`, olive/cli/optimize.py: QNNExecutionProvider only)
//! ends the recipe with `EPContextBinaryGenerator`: the model is compiled into a QNN context binary ahead of time
//! (`model/model_ctx.onnx` + `model_ctx_qnn.bin`). The CPU provider cannot run an EPContext node, so the check
//! compares the context model's outputs on QNN with the CPU outputs of the last model without EPContext nodes.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use olive_pass_api::{kinds, ExecutionProvider, Model};

use super::common::{refuse_non_empty, resolve_hf_input};
use super::config_file::{hf_model, workflow, ConfigFileArgs, PassSpec};
use crate::engine::{self, PassRun};
use crate::plugins;

/// Olive's `--precision` values that ModelBuilder produces, and `uint8` / `uint16` (static QDQ activations, ep-qnn's
/// recipes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    Fp32,
    Fp16,
    Int4,
    Uint8,
    Uint16,
}

impl Precision {
    fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int4 => "int4",
            Precision::Uint8 => "uint8",
            Precision::Uint16 => "uint16",
        }
    }
}

#[derive(Args, Debug)]
pub struct AutoOptArgs {
    /// The input model: a Hugging Face folder or a .gguf file.
    #[arg(long = "model_name_or_path", short = 'm')]
    pub model_name_or_path: PathBuf,
    /// A PEFT adapter folder to export with the model.
    #[arg(long = "adapter_path")]
    pub adapter_path: Option<PathBuf>,
    /// Where the optimized model goes (its files land in `<output_path>/model`).
    #[arg(long = "output_path", short = 'o', default_value = "auto-opt-output")]
    pub output_path: PathBuf,
    /// The device the model will run on: cpu, gpu or npu.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The ONNX Runtime execution provider the model will run with.
    #[arg(long, default_value = "CPUExecutionProvider")]
    pub provider: String,
    /// The output precision.
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// Produce a model for the ONNX Runtime generate() API (the only output this command writes).
    #[arg(long = "use_ort_genai")]
    pub use_ort_genai: bool,
    /// Use the ModelBuilder pass (always the case here).
    #[arg(long = "use_model_builder")]
    pub use_model_builder: bool,
    /// Accepted for Olive compatibility: the model's code is never run.
    #[arg(long = "trust_remote_code")]
    pub trust_remote_code: bool,
    /// int4: weights per quantization block.
    #[arg(long = "int4_block_size", default_value_t = 32)]
    pub int4_block_size: usize,
    /// int4: MatMulNBits accuracy level (default 4 on CPU).
    #[arg(long = "int4_accuracy_level")]
    pub int4_accuracy_level: Option<i64>,
    /// Replace an existing, non-empty output folder.
    #[arg(long)]
    pub overwrite: bool,
    /// Cancel the export after this many seconds.
    #[arg(long, value_parser = super::parse_seconds)]
    pub timeout: Option<Duration>,
    /// Search the int4 export's block size and symmetry for the best perplexity over data/eval.txt, then decode
    /// latency, with this sampler (Olive's --enable_search; sequential when given without a value). The output
    /// folder then also holds footprints.json, search_results.json and the Pareto plots.
    #[arg(long = "enable_search", num_args = 0..=1, default_missing_value = "sequential",
          value_parser = ["random", "sequential", "tpe"])]
    pub enable_search: Option<String>,
    /// Ahead-of-time compilation (Olive's `optimize --enable_aot`), QNNExecutionProvider only: the recipe's model is
    /// compiled by the QNN HTP backend into a context binary (EPContextBinaryGenerator); model/ then holds
    /// model_ctx.onnx + model_ctx_qnn.bin, which load without graph preparation and run on QNN only.
    #[arg(long = "enable_aot")]
    pub enable_aot: bool,
    /// Seed of the search sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub config_file: ConfigFileArgs,
    #[command(flatten)]
    pub package: crate::package::PackageArgs,
}

/// Turns the export's workflow into a search over the int4 settings, ranked by perplexity then decode latency.
fn add_search(
    workflow: &mut serde_json::Value,
    args: &AutoOptArgs,
    sampler: &str,
) -> anyhow::Result<()> {
    if args.precision != Precision::Int4 {
        bail!("--enable_search searches the int4 export's settings; give --precision int4");
    }
    let categorical = |values: serde_json::Value| serde_json::json!({"olive_parameter_type": "SearchParameter", "type": "Categorical", "support": values});
    let builder = &mut workflow["passes"]["builder"];
    builder["int4_block_size"] = categorical(serde_json::json!([32, 64, 128]));
    builder["int4_is_symmetric"] = categorical(serde_json::json!([true, false]));
    workflow["evaluators"] = serde_json::json!({"common_evaluator": {"metrics": [
        {"name": "accuracy", "type": "accuracy", "sub_types": [{"name": "perplexity", "priority": 1}]},
        {"name": "latency", "type": "latency", "sub_types": [{"name": "avg", "priority": 2}]},
    ]}});
    workflow["evaluator"] = "common_evaluator".into();
    workflow["evaluate_input_model"] = false.into();
    workflow["search_strategy"] =
        serde_json::json!({"execution_order": "joint", "sampler": sampler, "seed": args.seed});
    Ok(())
}

/// Runs the export's workflow through the workflow engine (cache, evaluation, search); its output model runs
/// through the `--device`/`--provider` execution provider before it is saved.
fn run_workflow(workflow: &serde_json::Value, args: &AutoOptArgs) -> anyhow::Result<()> {
    let root = crate::workflow::document::parse(&workflow.to_string(), false)?;
    let workflow = crate::workflow::config::Workflow::from_node(&root)?;
    let mut prepared =
        crate::workflow::run::prepare(workflow, &plugins::discover(&plugins::search_path()))?;
    prepared.output_check = Some((args.device.clone(), args.provider.clone()));
    let report = crate::workflow::run::execute(&prepared)?;
    if let Some(model) = report.output {
        println!("{}", serde_json::to_string_pretty(&model)?);
    }
    Ok(())
}

/// The pass that turns LoRA weights into inputs and an adapter file.
const EXTRACT_ADAPTERS: &str = "ExtractAdapters";

/// The passes of the recipe that the plugin serving `--device`/`--provider` gives for `--precision` (plus
/// ExtractAdapters with an adapter, unless the recipe has its own: that one, with the provider's config, runs only
/// with an adapter), each config the recipe's with auto-opt's flags added where the pass's config schema has the key
/// and the recipe leaves it out.
fn recipe_steps(
    found: &plugins::Discovery,
    ep: &ExecutionProvider,
    args: &AutoOptArgs,
    input: &str,
) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    let precision = args.precision.name();
    let recipe = ep.recipe_for(precision, input).ok_or_else(|| {
        let have = crate::ep::recipe_precisions(ep);
        let from = match ep.recipes.iter().any(|r| r.input.is_some()) {
            true if input == kinds::ONNX => " from an ONNX model",
            true => " from a Hugging Face model",
            false => "",
        };
        anyhow!(
            "{} on --device {} has no recipe for --precision {precision}{from}; it has: {}",
            ep.provider,
            ep.device,
            have.join(", ")
        )
    })?;
    let mut flags = serde_json::json!({
        "precision": precision,
        "int4_block_size": args.int4_block_size,
        "execution_provider": args.provider,
    });
    if let Some(level) = args.int4_accuracy_level {
        flags["int4_accuracy_level"] = level.into();
    }
    let mut steps = Vec::new();
    for pass in &recipe.passes {
        // A recipe's own ExtractAdapters (its config for the provider) runs only with an adapter.
        if pass.pass_type == EXTRACT_ADAPTERS && args.adapter_path.is_none() {
            continue;
        }
        let (_, manifest) = found.pass(None, &pass.pass_type)?;
        let mut config = pass.config.clone();
        if let (Some(config), Some(flags), Some(keys)) = (
            config.as_object_mut(),
            flags.as_object(),
            manifest.config_schema["properties"].as_object(),
        ) {
            for (key, value) in flags {
                let explicit = key == "int4_accuracy_level";
                if keys.contains_key(key) && (explicit || !config.contains_key(key)) {
                    config.insert(key.clone(), value.clone());
                }
            }
        }
        steps.push((pass.pass_type.clone(), config));
    }
    // A recipe whose export merges the adapter into the weights (ModelBuilder's merge_adapter) leaves nothing to
    // extract.
    let merged = steps
        .iter()
        .any(|(t, c)| t == "ModelBuilder" && c["merge_adapter"] == true);
    if args.adapter_path.is_some() && !merged && !steps.iter().any(|(t, _)| t == EXTRACT_ADAPTERS) {
        steps.push((EXTRACT_ADAPTERS.to_owned(), serde_json::json!({})));
    }
    if args.enable_aot {
        steps.push(aot_step(ep, args)?);
    }
    Ok(steps)
}

/// The provider whose models `--enable_aot` compiles (as Olive's).
const AOT_PROVIDER: &str = "QNNExecutionProvider";

/// `--enable_aot`'s last step: EPContextBinaryGenerator with the provider's options (those the check runs with).
fn aot_step(
    ep: &ExecutionProvider,
    args: &AutoOptArgs,
) -> anyhow::Result<(String, serde_json::Value)> {
    if ep.provider != AOT_PROVIDER {
        bail!(
            "--enable_aot (ahead-of-time compilation into an EPContext model) is only supported with {AOT_PROVIDER}, \
             not {}",
            ep.provider
        );
    }
    if args.adapter_path.is_some() || args.enable_search.is_some() {
        bail!("--enable_aot goes with neither --adapter_path nor --enable_search");
    }
    let options: serde_json::Map<String, serde_json::Value> = ep
        .provider_options
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    Ok((
        "EPContextBinaryGenerator".to_owned(),
        serde_json::json!({"disable_cpu_fallback": true, "provider_options": options}),
    ))
}

/// Whether the ONNX model at `path` (a file or a pass's output folder) has an EPContext node.
fn has_ep_context(path: &Path) -> anyhow::Result<bool> {
    use prost::Message;
    let file = super::ep_check::model_file(path)?;
    let bytes = fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let model = olive_onnx::proto::ModelProto::decode(bytes.as_slice())
        .with_context(|| format!("{} is not an ONNX model", file.display()))?;
    Ok(model.graph.is_some_and(|g| {
        g.node
            .iter()
            .any(|n| n.op_type.as_deref() == Some(crate::ep::check::EP_CONTEXT))
    }))
}

/// The check's reference for the last of `models` (the ONNX models of the run, in order): None when it has no
/// EPContext node (its own CPU run is the reference), else the last model before it without one.
fn ep_context_reference(models: &[PathBuf]) -> anyhow::Result<Option<PathBuf>> {
    let Some((last, before)) = models.split_last() else {
        return Ok(None);
    };
    if !has_ep_context(last)? {
        return Ok(None);
    }
    for model in before.iter().rev() {
        if !has_ep_context(model)? {
            return Ok(Some(model.clone()));
        }
    }
    bail!(
        "{} is an EPContext model and no model before it is free of EPContext nodes: nothing can be the CPU \
         reference of its check",
        last.display()
    )
}

/// The workflow's name for a step (`builder` for ModelBuilder, which --enable_search tunes).
fn step_name(pass_type: &str) -> String {
    match pass_type {
        "ModelBuilder" => "builder".to_owned(),
        "ExtractAdapters" => "extract_adapters".to_owned(),
        other => other.to_ascii_lowercase(),
    }
}

pub fn run(args: AutoOptArgs) -> anyhow::Result<()> {
    let found = plugins::discover(&plugins::search_path());
    let (ep_plugin, ep) = crate::ep::find(&found, &args.device, &args.provider)?;
    tracing::debug!(
        "{} on --device {} from plugin {}",
        ep.provider,
        ep.device,
        ep_plugin.manifest.name
    );
    // An ONNX file goes to the recipe as it is (the EP recipes of ONNX passes, e.g. ep-qnn's); else a HF model.
    let onnx_input = args.model_name_or_path.is_file()
        && args
            .model_name_or_path
            .extension()
            .is_some_and(|e| e == "onnx");
    let input_kind = if onnx_input { kinds::ONNX } else { kinds::HF };
    let steps = recipe_steps(&found, ep, &args, input_kind)?;
    refuse_non_empty(&args.output_path, args.overwrite)?;
    let mut model = match onnx_input {
        true => Model::new(kinds::ONNX, &args.model_name_or_path),
        false => Model::new(kinds::HF, &resolve_hf_input(&args.model_name_or_path)?),
    };
    if let Some(adapter) = &args.adapter_path {
        if onnx_input {
            bail!("--adapter_path goes with a Hugging Face model, not an ONNX file");
        }
        if !adapter.join("adapter_config.json").is_file() {
            bail!(
                "adapter path {} is not a PEFT adapter folder (no adapter_config.json)",
                adapter.display()
            );
        }
        model.kind = kinds::HF_ADAPTER.to_owned();
        model.adapter_paths.push(adapter.clone());
    }
    let device = if args.device == "gpu" { "gpu" } else { "cpu" };
    let names: Vec<String> = steps.iter().map(|(t, _)| step_name(t)).collect();
    let passes: Vec<PassSpec> = steps
        .iter()
        .zip(&names)
        .map(|((pass_type, config), name)| PassSpec {
            name,
            pass_type,
            config: config.clone(),
        })
        .collect();
    let input_model = match onnx_input {
        true => serde_json::json!({"type": "ONNXModel", "model_path": args.model_name_or_path}),
        false => hf_model(&args.model_name_or_path, args.adapter_path.as_deref()),
    };
    let mut workflow = workflow(
        input_model,
        device,
        &args.provider,
        &passes,
        &args.output_path,
        crate::logging::current_level(),
    );
    if let Some(sampler) = &args.enable_search {
        add_search(&mut workflow, &args, sampler)?;
    }
    args.package.add_to(&mut workflow);
    if args.config_file.dry_run(&workflow, &args.output_path)? {
        return Ok(());
    }
    if args.enable_search.is_some() {
        run_workflow(&workflow, &args)?;
        return args.config_file.save(&workflow, &args.output_path);
    }
    let target = args.output_path.join("model");
    let parent = args
        .output_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".auto-opt-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a staging folder in {}", parent.display()))?;
    // The ONNX models of the run, in order (the check's reference for an EPContext model is among them).
    let mut models: Vec<PathBuf> = Vec::new();
    if onnx_input {
        models.push(args.model_name_or_path.clone());
    }
    let spinner = crate::progress::spinner(format!(
        "exporting {} to ONNX",
        args.model_name_or_path.display()
    ));
    for (i, (pass_type, config)) in steps.iter().enumerate() {
        let (plugin, pass) = found.pass(None, pass_type)?;
        model = engine::run_pass(&PassRun {
            plugin,
            pass: pass.name.clone(),
            model,
            config_json: config.to_string(),
            output_path: staging.path().join(format!("{i}-{pass_type}")),
            device: device.to_owned(),
            timeout: args.timeout,
            grace: Duration::from_secs(5),
        })?;
        if model.kind == kinds::ONNX {
            models.push(model.path.clone());
        }
    }
    spinner.finish_and_clear();
    // The result runs through its execution provider before it is put where the user looks.
    let reference = ep_context_reference(&models)?;
    crate::ep::check_in_child_against(
        &model.path,
        reference.as_deref(),
        &args.device,
        &args.provider,
    )?;
    fs::create_dir_all(&args.output_path)
        .with_context(|| format!("cannot create {}", args.output_path.display()))?;
    if target.exists() {
        fs::remove_dir_all(&target)
            .with_context(|| format!("cannot replace {}", target.display()))?;
    }
    fs::rename(&model.path, &target).with_context(|| {
        format!(
            "cannot move {} to {}",
            model.path.display(),
            target.display()
        )
    })?;
    model.path = target.clone();
    tracing::info!("wrote {}", target.display());
    args.config_file.save(&workflow, &args.output_path)?;
    args.package
        .write(&model, &args.output_path, &args.device, &args.provider)?;
    println!("{}", serde_json::to_string_pretty(&model)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use olive_onnx::proto::{GraphProto, ModelProto, NodeProto};
    use prost::Message;

    /// A folder holding `file`, a model of one node of op `op`.
    fn model(dir: &Path, name: &str, file: &str, op: &str) -> PathBuf {
        let folder = dir.join(name);
        fs::create_dir_all(&folder).unwrap();
        let node = NodeProto {
            op_type: Some(op.to_owned()),
            ..Default::default()
        };
        let graph = GraphProto {
            node: vec![node],
            ..Default::default()
        };
        let proto = ModelProto {
            graph: Some(graph),
            ..Default::default()
        };
        fs::write(folder.join(file), proto.encode_to_vec()).unwrap();
        folder
    }

    #[test]
    fn an_ep_context_model_is_checked_against_the_last_model_without_ep_context_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let fixed = model(dir.path(), "0", "model.onnx", "Add");
        let qdq = model(dir.path(), "1", "model.onnx", "QuantizeLinear");
        let ctx = model(
            dir.path(),
            "2",
            "model_ctx.onnx",
            crate::ep::check::EP_CONTEXT,
        );
        assert_eq!(
            ep_context_reference(&[fixed.clone(), qdq.clone()]).unwrap(),
            None
        );
        assert_eq!(
            ep_context_reference(&[fixed, qdq.clone(), ctx.clone()]).unwrap(),
            Some(qdq)
        );
        let err = ep_context_reference(&[ctx.clone(), ctx]).unwrap_err();
        assert!(err.to_string().contains("no model before it"), "{err}");
        assert_eq!(ep_context_reference(&[]).unwrap(), None);
    }
}
