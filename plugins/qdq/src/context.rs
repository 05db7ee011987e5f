//! Olive's `EPContextBinaryGenerator` (olive/passes/onnx/context_binary.py) for QNNExecutionProvider: the model is
//! compiled by the QNN HTP backend once, ahead of time, and saved as an EPContext model — ONNX Runtime's
//! `ep.context_enable=1` with `ep.context_file_path` (`model_ctx.onnx`) and `ep.context_embed_mode`
//! (`embed_context`: the context binary inside the model, else beside it as a `.bin` the EPContext nodes name).
//! As Olive does with onnxruntime >= 1.25, the QNN plugin-EP library (the onnxruntime-qnn wheel's
//! `libonnxruntime_providers_qnn.so`, path in OLIVE_ORT_QNN_DYLIB) is registered with ONNX Runtime and the session
//! is appended to its devices; the session is only created (which writes the context model), never run.
//!
//! Output: `model_ctx.onnx` (+ its `.bin` when not embedded) and the input folder's other files (tokenizer, ...). The context model runs only on QNN, with the same
//! outputs as the input model on QNN.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use olive_pass_sdk::{kinds, onnx_model_file, Context, Error, Model, Pass};
use ort::session::Session;
use schemars::JsonSchema;
use serde::Deserialize;

/// The provider (the only one Olive's pass serves).
pub const PROVIDER: &str = "QNNExecutionProvider";
/// The variable naming the QNN plugin-EP library (scripts/install.sh; the ep-qnn plugin's `ep_library`).
pub const LIBRARY_ENV: &str = "OLIVE_ORT_QNN_DYLIB";
/// The context model's file name.
pub const CONTEXT_MODEL: &str = "model_ctx.onnx";

/// The config of `EPContextBinaryGenerator` (Olive's keys).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextConfig {
    /// Olive: embed the context binary in the model (`ep.context_embed_mode=1`); default a `.bin` beside it.
    #[serde(default)]
    pub embed_context: bool,
    /// Olive: weight sharing between the parts of a composite model (not supported: true is refused).
    #[serde(default)]
    pub weight_sharing: bool,
    /// Olive: QNN provider options (default `backend_type: htp`).
    #[serde(default)]
    pub provider_options: Option<serde_json::Map<String, serde_json::Value>>,
    /// Olive: extra session config entries.
    #[serde(default)]
    pub session_options: Option<serde_json::Map<String, serde_json::Value>>,
    /// Olive: `session.disable_cpu_ep_fallback` (then a node QNN refuses is an error, not a CPU node).
    #[serde(default)]
    pub disable_cpu_fallback: bool,
    /// olive-rs: the QNN plugin-EP library (default: the path in OLIVE_ORT_QNN_DYLIB).
    #[serde(default)]
    pub ep_library: Option<PathBuf>,
    /// The target provider (auto-opt's flag): QNNExecutionProvider only.
    #[serde(default)]
    pub execution_provider: Option<String>,
}

/// The plugin-EP libraries registered in this process (a second registration is an error in ONNX Runtime).
static REGISTERED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Creates a QNN session on `input` that writes the EPContext model `output`.
fn generate(input: &Path, output: &Path, c: &ContextConfig) -> Result<(), Error> {
    let library = match &c.ep_library {
        Some(p) => p.clone(),
        None => std::env::var_os(LIBRARY_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| {
                Error::Failed(format!(
                    "{PROVIDER}: {LIBRARY_ENV} is not set (the onnxruntime-qnn wheel's \
                     libonnxruntime_providers_qnn.so; scripts/install.sh sets it) and ep_library is not given"
                ))
            })?,
    };
    if !library.is_file() {
        return Err(Error::Failed(format!(
            "{PROVIDER}: the plugin-EP library {} is not a file",
            library.display()
        )));
    }
    let environment = olive_runtime::env::environment()
        .map_err(|e| Error::Failed(format!("EPContext generation needs ONNX Runtime: {e}")))?;
    {
        let mut registered = REGISTERED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !registered.contains(&library) {
            environment
                .register_ep_library(PROVIDER, &library)
                .map_err(|e| {
                    Error::Failed(format!(
                        "{PROVIDER}: the plugin-EP library {} cannot be registered: {e}",
                        library.display()
                    ))
                })?;
            registered.push(library.clone());
        }
    }
    let devices: Vec<_> = environment
        .devices()
        .filter(|d| d.ep().is_ok_and(|name| name == PROVIDER))
        .collect();
    if devices.is_empty() {
        return Err(Error::Failed(format!(
            "{PROVIDER}: the plugin-EP library {} reports no device",
            library.display()
        )));
    }
    let mut options = vec![(format!("{PROVIDER}.backend_type"), "htp".to_string())];
    for (k, v) in c.provider_options.iter().flatten() {
        options.retain(|(key, _)| key != &format!("{PROVIDER}.{k}"));
        options.push((format!("{PROVIDER}.{k}"), text(v)));
    }
    let fail = |what: &str, e: ort::Error| Error::Failed(format!("{PROVIDER}: {what}: {e}"));
    let mut entries = vec![
        ("ep.context_enable".to_string(), "1".to_string()),
        (
            "ep.context_embed_mode".into(),
            u8::from(c.embed_context).to_string(),
        ),
        ("ep.context_file_path".into(), output.display().to_string()),
        (
            "session.disable_cpu_ep_fallback".into(),
            u8::from(c.disable_cpu_fallback).to_string(),
        ),
    ];
    for (k, v) in c.session_options.iter().flatten() {
        entries.push((k.clone(), text(v)));
    }
    let mut builder = Session::builder(environment).map_err(|e| fail("session options", e))?;
    for (k, v) in &entries {
        builder = builder
            .with_config_entry(k, v)
            .map_err(|e| fail(&format!("session option {k}={v}"), e.into()))?;
    }
    let mut builder = builder.with_devices(devices, Some(&options)).map_err(|e| {
        fail(
            &format!("appending the provider with {options:?}"),
            e.into(),
        )
    })?;
    builder
        .commit_from_file(input)
        .map_err(|e| fail(&format!("compiling {}", input.display()), e))?;
    if !output.is_file() {
        return Err(Error::Failed(format!(
            "{PROVIDER}: the session was created but wrote no context model {} (no node went to QNN?)",
            output.display()
        )));
    }
    Ok(())
}

/// Olive's EPContextBinaryGenerator for QNN.
pub struct EPContextBinaryGenerator;

impl Pass for EPContextBinaryGenerator {
    const NAME: &'static str = "EPContextBinaryGenerator";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "QNN EPContext model (model_ctx.onnx + context binary) compiled by the QNN HTP backend ahead of time, as Olive's EPContextBinaryGenerator.";
    const ACCEPTS: &'static [&'static str] = &[kinds::ONNX];
    const PRODUCES: &'static [&'static str] = &[kinds::ONNX];
    const DEVICES: &'static [&'static str] = &["npu"];
    type Config = ContextConfig;

    fn run(model: Model, c: ContextConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        if c.weight_sharing {
            return Err(Error::InvalidConfig(
                "weight_sharing: olive-rs compiles one model (no composite models); leave it false"
                    .into(),
            ));
        }
        if let Some(ep) = c.execution_provider.as_deref().filter(|ep| *ep != PROVIDER) {
            return Err(Error::InvalidConfig(format!(
                "execution_provider `{ep}`: EPContextBinaryGenerator serves {PROVIDER} only (as Olive's)"
            )));
        }
        let input = onnx_model_file(&model.path)?;
        let out = ctx.output_dir();
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
        let output = out.join(CONTEXT_MODEL);
        generate(&input, &output, &c)?;
        crate::copy_companions(&model.path, &out)?;
        ctx.check_cancelled()?;
        let mut result = Model::new(kinds::ONNX, &out);
        result.metadata = model.metadata;
        result.metadata.insert(
            "ep_context".into(),
            serde_json::json!({"ep": PROVIDER, "embed_context": c.embed_context, "file": CONTEXT_MODEL}),
        );
        Ok(result)
    }
}
