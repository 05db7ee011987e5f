//! olive-rs plugin `fusion`: graph passes for any ONNX model — Olive's `OnnxPeepholeOptimizer`
//! (olive/passes/onnx/peephole_optimizer.py), `OrtTransformersOptimization` (olive/passes/onnx/transformer_optimization.py,
//! which runs onnxruntime.transformers.optimizer) and the MatMulNBits weight quantizers `OnnxBlockWiseRtnQuantization`
//! / `OnnxMatMul4Quantizer` ([`blockwise`]), `OnnxDynamicQuantization` ([`dynamic`]) and
//! `DecomposeGroupQueryAttention` ([`gqa`]: com.microsoft GroupQueryAttention as standard ops, for OpenVINO; a static KV
//! layout for NPUs) and `DecomposeSkipSimplifiedLayerNormalization` ([`rms`], for QNN), with the config keys Olive users pass. The input is a `.onnx` file or a
//! folder holding one; the output folder gets `model.onnx` (+ `model.onnx.data` for initializers of 1 KiB or more)
//! and the folder's other files.

mod attention;
pub mod blockwise;
pub mod dtypes;
pub mod dynamic;
mod embed;
pub mod float16;
mod fold;
mod gather_quant;
mod gelu;
mod gemm;
pub mod gqa;
pub mod graph;
mod int32_inputs;
mod norm;
pub mod peephole;
pub mod rms;
pub mod transformers;

use std::collections::BTreeMap;
use std::path::Path;

use olive_pass_sdk::{kinds, onnx_model_file, Context, Error, Model, Pass};
use schemars::JsonSchema;
use serde::Deserialize;

/// The keys of Olive's external-data options (olive/passes/onnx/common.py `get_external_data_config`): accepted;
/// olive-rs always writes initializers of 1 KiB or more to one `model.onnx.data`.
#[derive(Debug, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ExternalDataKeys {
    /// Olive's save_as_external_data (olive-rs: initializers of 1 KiB or more always go to model.onnx.data).
    #[serde(default)]
    pub save_as_external_data: Option<bool>,
    /// Olive's all_tensors_to_one_file (olive-rs: always one file).
    #[serde(default)]
    pub all_tensors_to_one_file: Option<bool>,
    /// Olive's external_data_name (olive-rs: always model.onnx.data).
    #[serde(default)]
    pub external_data_name: Option<String>,
    /// Olive's size_threshold (olive-rs: 1024 bytes).
    #[serde(default)]
    pub size_threshold: Option<u64>,
    /// Olive's convert_attribute (olive-rs: attributes stay inline).
    #[serde(default)]
    pub convert_attribute: Option<bool>,
}

/// The config of `OnnxPeepholeOptimizer` (Olive's keys; the clean-ups olive-rs runs are the same whichever
/// optimizer Olive would have used for them).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeepholeConfig {
    /// Olive: run onnxscript's optimizer (olive-rs: constant folding, Identity/no-op Cast and dead node removal).
    #[serde(default = "yes")]
    pub onnxscript_optimize: bool,
    /// Olive: run onnxoptimizer's passes (olive-rs: the same clean-ups).
    #[serde(default = "yes")]
    pub onnxoptimizer_optimize: bool,
    /// Olive: fuse consecutive Reshapes (Reshape(Reshape(x, s1), s2) with a constant s2 -> Reshape(x, s2)).
    #[serde(default = "yes")]
    pub fuse_reshape_operations: bool,
    /// Olive: set the com.microsoft opset to 1 (olive-rs writes version 1 whenever it adds com.microsoft ops).
    #[serde(default)]
    pub fix_com_microsoft_opset: bool,
    /// Olive: remove Cast chains (not done by olive-rs: true is refused).
    #[serde(default)]
    pub cast_chain_elimination: bool,
    #[serde(flatten)]
    pub external: ExternalDataKeys,
}

fn yes() -> bool {
    true
}

/// Olive's OnnxPeepholeOptimizer: constant folding and clean-ups.
pub struct OnnxPeepholeOptimizer;

impl Pass for OnnxPeepholeOptimizer {
    const NAME: &'static str = "OnnxPeepholeOptimizer";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "Constant folding, Identity / no-op Cast / Reshape-chain removal and dead node removal on any ONNX model.";
    const ACCEPTS: &'static [&'static str] = &[kinds::ONNX];
    const PRODUCES: &'static [&'static str] = &[kinds::ONNX];
    const DEVICES: &'static [&'static str] = &["cpu", "gpu", "npu"];
    type Config = PeepholeConfig;

    fn run(model: Model, c: PeepholeConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        if c.cast_chain_elimination {
            return Err(Error::InvalidConfig(
                "cast_chain_elimination: olive-rs does not remove Cast chains; leave it false"
                    .into(),
            ));
        }
        let run = c.onnxscript_optimize || c.onnxoptimizer_optimize;
        rewrite_model(model, ctx, |onnx| {
            let graph = graph_of(onnx)?;
            let before = graph.node.len();
            if !run {
                return Ok(serde_json::json!({"nodes_before": before, "nodes_after": before}));
            }
            let done =
                peephole::optimize_with(graph, c.fuse_reshape_operations).map_err(Error::Failed)?;
            ctx.info(&format!(
                "peephole: {} folded, {} Identity/Cast removed, {} dead; {before} -> {} nodes",
                done.folded,
                done.bypassed,
                done.dead,
                graph.node.len()
            ));
            Ok(serde_json::json!({"nodes_before": before, "nodes_after": graph.node.len()}))
        })
    }
}

/// The config of `OrtTransformersOptimization` (Olive's keys).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransformersConfig {
    /// Transformer model type (onnxruntime.transformers.optimizer's MODEL_TYPES); default bert.
    #[serde(default)]
    pub model_type: Option<String>,
    /// Number of attention heads (0: detect from the graph's Reshapes).
    #[serde(default)]
    pub num_heads: i64,
    /// Number of key/value heads.
    #[serde(default)]
    pub num_key_value_heads: i64,
    /// Hidden size (0: detect).
    #[serde(default)]
    pub hidden_size: i64,
    /// FusionOptions switches (enable_gelu, enable_layer_norm, enable_skip_layer_norm, enable_bias_gelu,
    /// enable_bias_skip_layer_norm, enable_gelu_approximation, ...): booleans by name.
    #[serde(default)]
    pub optimization_options: Option<BTreeMap<String, serde_json::Value>>,
    /// ONNX Runtime graph optimization level for its offline pass (olive-rs applies its own fusions; accepted).
    #[serde(default)]
    pub opt_level: Option<i64>,
    /// Target GPU inference (the fusions are the same).
    #[serde(default)]
    pub use_gpu: bool,
    /// Only ONNX Runtime's own optimizer, no fusions (refused: olive-rs has no ONNX Runtime optimizer inside).
    #[serde(default)]
    pub only_onnxruntime: bool,
    /// Convert to float16 after the fusions (ONNX Runtime's float16 converter with its defaults).
    #[serde(default)]
    pub float16: bool,
    /// Keep fp32 inputs/outputs with float16.
    #[serde(default = "yes")]
    pub keep_io_types: bool,
    /// float16: ops kept in fp32.
    #[serde(default)]
    pub force_fp32_ops: Option<Vec<String>>,
    /// float16: nodes kept in fp32.
    #[serde(default)]
    pub force_fp32_nodes: Option<Vec<String>>,
    /// float16: inputs forced to fp16.
    #[serde(default)]
    pub force_fp16_inputs: Option<BTreeMap<String, Vec<i64>>>,
    /// MultiHeadAttention to GroupQueryAttention (float16 only; refused).
    #[serde(default)]
    pub use_gqa: bool,
    /// int64 graph inputs to int32 at the end (Casts of them to int32 dropped).
    #[serde(default)]
    pub input_int32: bool,
    #[serde(flatten)]
    pub external: ExternalDataKeys,
}

/// Olive's OrtTransformersOptimization: transformer fusions to ONNX Runtime's com.microsoft ops.
pub struct OrtTransformersOptimization;

impl Pass for OrtTransformersOptimization {
    const NAME: &'static str = "OrtTransformersOptimization";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "Transformer fusions (LayerNorm, SkipLayerNorm, EmbedLayerNorm, Gelu, BiasGelu, FastGelu, Attention, Gemm) after the peephole clean-ups.";
    const ACCEPTS: &'static [&'static str] = &[kinds::ONNX];
    const PRODUCES: &'static [&'static str] = &[kinds::ONNX];
    const DEVICES: &'static [&'static str] = &["cpu", "gpu"];
    type Config = TransformersConfig;

    fn run(model: Model, c: TransformersConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        let options = transformers::Options::from_config(&c).map_err(Error::InvalidConfig)?;
        rewrite_counted(model, ctx, |onnx| {
            let counts = transformers::optimize(onnx, &options).map_err(Error::Failed)?;
            let report = serde_json::to_value(&counts).map_err(|e| Error::Failed(e.to_string()))?;
            Ok((format!("fusions: {counts:?}"), report))
        })
    }
}

fn graph_of(
    model: &mut olive_onnx::proto::ModelProto,
) -> Result<&mut olive_onnx::proto::GraphProto, Error> {
    model
        .graph
        .as_mut()
        .ok_or_else(|| Error::UnsupportedModel("the ONNX model has no graph".into()))
}

/// [`rewrite_model`] for a rewrite that reports what it did: `edit` returns a summary line and a JSON object of
/// counts; the log line adds the node counts before and after, the report `nodes_before` and `nodes_after`.
fn rewrite_counted(
    model: Model,
    ctx: &Context<'_>,
    edit: impl FnOnce(&mut olive_onnx::proto::ModelProto) -> Result<(String, serde_json::Value), Error>,
) -> Result<Model, Error> {
    rewrite_model(model, ctx, |onnx| {
        let before = graph_of(onnx)?.node.len();
        let (summary, mut report) = edit(onnx)?;
        let after = graph_of(onnx)?.node.len();
        ctx.info(&format!("{summary}; {before} -> {after} nodes"));
        report["nodes_before"] = before.into();
        report["nodes_after"] = after.into();
        Ok(report)
    })
}

/// Loads the model, applies `edit`, writes `model.onnx` (+ data) into the output folder with the input folder's
/// other files, and returns the output model with `edit`'s report in its metadata under `fusion`.
fn rewrite_model(
    model: Model,
    ctx: &Context<'_>,
    edit: impl FnOnce(&mut olive_onnx::proto::ModelProto) -> Result<serde_json::Value, Error>,
) -> Result<Model, Error> {
    let file = onnx_model_file(&model.path)?;
    let mut onnx =
        olive_onnx::rewrite::load(&file).map_err(|e| Error::UnsupportedModel(e.to_string()))?;
    let report = edit(&mut onnx)?;
    ctx.check_cancelled()?;
    let out = ctx.output_dir();
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    if model.path.is_dir() {
        let data_files = external_locations(&file);
        for entry in std::fs::read_dir(&model.path).map_err(|e| Error::io(&model.path, e))? {
            let entry = entry.map_err(|e| Error::io(&model.path, e))?;
            let from = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !from.is_file()
                || from == file
                || data_files.contains(&name)
                || name == "model.onnx.data"
            {
                continue;
            }
            std::fs::copy(&from, out.join(&name)).map_err(|e| Error::io(&from, e))?;
        }
    }
    olive_onnx::rewrite::save(onnx, &out, "model.onnx")
        .map_err(|e| Error::Failed(e.to_string()))?;
    let mut output = Model::new(kinds::ONNX, &out);
    output.metadata = model.metadata;
    output.metadata.insert("fusion".into(), report);
    Ok(output)
}

/// The external data files the model at `file` refers to (to leave them out of the copied folder).
fn external_locations(file: &Path) -> Vec<String> {
    use prost::Message;
    let Ok(bytes) = std::fs::read(file) else {
        return Vec::new();
    };
    let Ok(m) = olive_onnx::proto::ModelProto::decode(bytes.as_slice()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = m
        .graph
        .iter()
        .flat_map(|g| &g.initializer)
        .flat_map(|t| &t.external_data)
        .filter(|e| e.key.as_deref() == Some("location"))
        .filter_map(|e| e.value.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

olive_pass_sdk::export_plugin! {
    name: "fusion",
    version: "0.1.0",
    passes: [
        OnnxPeepholeOptimizer,
        OrtTransformersOptimization,
        blockwise::OnnxBlockWiseRtnQuantization,
        blockwise::OnnxMatMul4Quantizer,
        dynamic::OnnxDynamicQuantization,
        float16::OnnxFloatToFloat16,
        gqa::DecomposeGroupQueryAttention,
        rms::DecomposeSkipSimplifiedLayerNormalization,
    ],
}

#[cfg(test)]
mod tests;
