//! olive-rs plugin `onnx-builder`: the `ModelBuilder` pass (Olive's name), turning a Hugging Face Llama-family
//! folder into the ONNX model, genai_config.json and tokenizer files that onnxruntime-genai runs, as
//! onnxruntime-genai's own model builder (onnxruntime_genai.models.builder) lays them out.

pub mod decoder;
pub mod linear;
pub mod special_tokens;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_quantized;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;

use olive_model::adapter::{LoraAdapter, LoraWeights};
use olive_model::quantized::QuantizationConfig;
use olive_model::{Checkpoint, ModelConfig};
use olive_onnx::extract_adapters::{extract_adapters_folder, ADAPTER_FILE};
use olive_onnx::genai_config::{GenaiConfig, GenaiModel};
use olive_onnx::graph::GraphBuilder;
use olive_onnx::matmul_nbits::NBitsConfig;
use olive_onnx::tensor::DataType;
use olive_pass_sdk::{kinds, Context, Error, Model, Pass};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::decoder::{Decoder, OPSETS};
use crate::linear::{failed, Linears};

/// Weight precision of the exported model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 weights and activations.
    Fp32,
    /// fp16 weights and activations.
    Fp16,
    /// int4 weights (MatMulNBits); fp32 activations on CPU and OpenVINO.
    Int4,
}

/// The config of `ModelBuilder`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelBuilderConfig {
    /// Weight precision: fp32, fp16 or int4.
    pub precision: Precision,
    /// int4: weights per quantization block along the input dim (16, 32, 64, 128 or 256).
    #[serde(default = "default_block_size")]
    pub int4_block_size: usize,
    /// int4: MatMulNBits accuracy_level (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations); 4 on CPU.
    #[serde(default)]
    pub int4_accuracy_level: Option<i64>,
    /// int4: symmetric quantization (no zero points).
    #[serde(default = "default_true")]
    pub int4_is_symmetric: bool,
    /// ONNX Runtime execution provider written to genai_config.json (CPUExecutionProvider, CUDAExecutionProvider,
    /// DmlExecutionProvider, ...); by default the one of the pass's device.
    #[serde(default)]
    pub execution_provider: Option<String>,
    /// olive-rs: with an adapter, add its LoRA product (scale·B·A) into the base weights instead of exporting LoRA
    /// branches: for recipes that quantize every weight (static QDQ for an NPU), where a switchable adapter cannot
    /// stay float. No adapter file can be extracted from the result.
    #[serde(default)]
    pub merge_adapter: bool,
}

fn default_block_size() -> usize {
    32
}

fn default_true() -> bool {
    true
}

/// The files onnxruntime-genai's tokenizer reads, copied when present (tokenizer.json is required).
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
];

/// `provider_options` of genai_config.json for an execution provider.
pub fn provider_options(provider: &str) -> Result<Vec<serde_json::Value>, Error> {
    let short = match provider {
        "CPUExecutionProvider" => return Ok(vec![]),
        "CUDAExecutionProvider" => "cuda",
        "DmlExecutionProvider" => "dml",
        "WebGpuExecutionProvider" => "webgpu",
        "QNNExecutionProvider" => "qnn",
        "OpenVINOExecutionProvider" => "OpenVINO",
        other => {
            return Err(Error::InvalidConfig(format!(
                "execution_provider {other} is not one onnxruntime-genai runs; expected one of \
                 CPUExecutionProvider, CUDAExecutionProvider, DmlExecutionProvider, WebGpuExecutionProvider, \
                 QNNExecutionProvider, OpenVINOExecutionProvider"
            )))
        }
    };
    Ok(vec![serde_json::json!({ short: {} })])
}

/// Exports a Hugging Face Llama-family model to ONNX for onnxruntime-genai.
pub struct ModelBuilder;

impl Pass for ModelBuilder {
    const NAME: &'static str = "ModelBuilder";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "Hugging Face Llama-family model (Llama, Mistral, Phi-3, Qwen2) to an onnxruntime-genai ONNX model.";
    const ACCEPTS: &'static [&'static str] = &[kinds::HF, kinds::HF_ADAPTER];
    const PRODUCES: &'static [&'static str] = &[kinds::ONNX];
    const DEVICES: &'static [&'static str] = &["cpu", "gpu"];
    type Config = ModelBuilderConfig;

    fn run(model: Model, config: ModelBuilderConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        let dir = &model.path;
        let hf =
            ModelConfig::from_folder(dir).map_err(|e| Error::UnsupportedModel(e.to_string()))?;
        if hf.head_dim % 16 != 0 {
            return Err(Error::UnsupportedModel(format!(
                "{}: head_dim {} is not a multiple of 16, which GroupQueryAttention needs",
                dir.join("config.json").display(),
                hf.head_dim
            )));
        }
        let checkpoint =
            Checkpoint::open(dir).map_err(|e| Error::UnsupportedModel(e.to_string()))?;
        let quant = QuantizationConfig::from_config_json(&dir.join("config.json"))
            .map_err(|e| Error::UnsupportedModel(e.to_string()))?;
        let provider = match &config.execution_provider {
            Some(p) => p.clone(),
            None if ctx.device() == "gpu" => "CUDAExecutionProvider".into(),
            None => "CPUExecutionProvider".into(),
        };
        let provider_options = provider_options(&provider)?;
        let on_cpu = provider == "CPUExecutionProvider";
        // int4 keeps fp32 activations on CPU and fp16 elsewhere, as Olive's auto-opt does; Olive's ModelBuilder
        // exports OpenVINO as "cpu" (its EP_MAP has no OpenVINO), so OpenVINO keeps fp32 activations too.
        let fp32_activations = on_cpu || provider == "OpenVINOExecutionProvider";
        let dtype = match config.precision {
            Precision::Fp32 => DataType::Float,
            Precision::Int4 if fp32_activations => DataType::Float,
            Precision::Fp16 | Precision::Int4 => DataType::Float16,
        };
        let nbits = (config.precision == Precision::Int4).then(|| NBitsConfig {
            scale_type: dtype,
            accuracy_level: config.int4_accuracy_level.or(on_cpu.then_some(4)),
            ..NBitsConfig::int4(config.int4_block_size, config.int4_is_symmetric)
        });
        let out = ctx.output_dir();
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
        let tokenizer = dir.join("tokenizer.json");
        if !tokenizer.is_file() {
            return Err(Error::UnsupportedModel(format!(
                "{}: not found; onnxruntime-genai needs the model's tokenizer.json",
                tokenizer.display()
            )));
        }
        ctx.info(&format!(
            "exporting {} ({} layers) as {:?} for {provider}",
            hf.architecture.model_type(),
            hf.num_hidden_layers,
            config.precision
        ));
        let (lora, merged) = if config.merge_adapter {
            let merged = merged_lora(&model, &hf)?;
            if !merged.is_empty() {
                ctx.info(&format!("merging LoRA into {} linears", merged.len()));
            }
            (BTreeMap::new(), merged)
        } else {
            let lora = lora_weights(&model, &hf)?;
            if !lora.is_empty() {
                ctx.info(&format!("adding LoRA branches to {} linears", lora.len()));
            }
            (lora, BTreeMap::new())
        };
        let mut g = GraphBuilder::create(&out, "model.onnx").map_err(failed)?;
        let decoder = Decoder {
            config: &hf,
            checkpoint: RefCell::new(checkpoint),
            linears: Linears { dtype, nbits, lora },
            quant,
            merged,
        };
        if let Err(e) = decoder.build(&mut g, ctx) {
            g.discard();
            return Err(e);
        }
        g.finish(OPSETS, "olive-rs").map_err(failed)?;
        write_genai_config(&hf, dir, &out, provider_options)?;
        copy_tokenizer_files(dir, &out)?;
        let mut output = Model::new(kinds::ONNX, &out);
        output.metadata.insert(
            "precision".into(),
            format!("{:?}", config.precision).to_lowercase().into(),
        );
        output
            .metadata
            .insert("execution_provider".into(), provider.into());
        Ok(output)
    }
}

/// The model's PEFT adapter (at most one), if it has one.
fn adapter(model: &Model) -> Result<Option<LoraAdapter>, Error> {
    let adapter_dir = match model.adapter_paths.as_slice() {
        [] => return Ok(None),
        [one] => one,
        more => {
            return Err(Error::UnsupportedModel(format!(
                "ModelBuilder takes one adapter, got {}; convert the others with olive-host convert-adapters",
                more.len()
            )))
        }
    };
    LoraAdapter::open(adapter_dir)
        .map(Some)
        .map_err(adapter_error)
}

fn adapter_error(e: olive_model::adapter::AdapterError) -> Error {
    Error::UnsupportedModel(e.to_string())
}

/// The PEFT adapter's weights as they are in the Hugging Face model (Phi-3's fused modules whole), checked against
/// the model, by module path (`model.layers.0.self_attn.q_proj`): what `merge_adapter` adds into the base weights.
fn merged_lora(model: &Model, hf: &ModelConfig) -> Result<BTreeMap<String, LoraWeights>, Error> {
    let Some(adapter) = adapter(model)? else {
        return Ok(BTreeMap::new());
    };
    adapter.check(hf).map_err(adapter_error)?;
    Ok(adapter
        .weights()
        .iter()
        .map(|w| (w.module.hf_key(), w.clone()))
        .collect())
}

/// The PEFT adapter's weights (at most one adapter), checked against the model, Phi-3's fused modules split,
/// padded to one rank, by ONNX module path (`model.layers.0.attn.q_proj`).
fn lora_weights(model: &Model, hf: &ModelConfig) -> Result<BTreeMap<String, LoraWeights>, Error> {
    let Some(adapter) = adapter(model)? else {
        return Ok(BTreeMap::new());
    };
    let weights = adapter.unfused(hf).map_err(adapter_error)?;
    let rank = weights.iter().map(|w| w.rank).max().unwrap_or(0);
    Ok(weights
        .iter()
        .map(|w| {
            let path = w.module.onnx_path();
            (
                path.trim_start_matches('/').replace('/', "."),
                w.padded(rank),
            )
        })
        .collect())
}

fn write_genai_config(
    hf: &ModelConfig,
    input: &Path,
    out: &Path,
    provider_options: Vec<serde_json::Value>,
) -> Result<(), Error> {
    let tokens = special_tokens::resolve(input, hf)?;
    let m = GenaiModel {
        model_type: hf.architecture.model_type(),
        bos_token_id: tokens.bos,
        eos_token_ids: &tokens.eos,
        pad_token_id: tokens.pad,
        context_length: hf.max_position_embeddings,
        vocab_size: hf.vocab_size,
        hidden_size: hf.hidden_size,
        head_size: hf.head_dim,
        num_attention_heads: hf.num_attention_heads,
        num_key_value_heads: hf.num_key_value_heads,
        num_hidden_layers: hf.num_hidden_layers,
        filename: "model.onnx",
        provider_options,
    };
    GenaiConfig::new(&m)
        .write(&out.join("genai_config.json"))
        .map_err(failed)
}

fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<(), Error> {
    for name in TOKENIZER_FILES {
        let src = from.join(name);
        if src.is_file() {
            let dst = to.join(name);
            let temp = to.join(format!(".{name}.tmp"));
            std::fs::copy(&src, &temp).map_err(|e| Error::io(&src, e))?;
            std::fs::rename(&temp, &dst).map_err(|e| Error::io(&dst, e))?;
        }
    }
    Ok(())
}

/// The config of `ExtractAdapters`: LoRA weights become inputs with a symbolic `lora_r`, saved as an ONNX Runtime
/// adapter file (Olive's layout).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractAdaptersConfig {
    /// Olive's optional_inputs: keep an empty initializer of each LoRA input's name as its default, so the model
    /// runs with no adapter active. false: the inputs are required (the OpenVINO EP ignores values fed to inputs that
    /// have a default and computes with the empty one).
    #[serde(default = "default_true")]
    pub optional_inputs: bool,
}

/// Turns the LoRA weights of an exported model into graph inputs and writes them to `adapter_weights.onnx_adapter`.
pub struct ExtractAdapters;

impl Pass for ExtractAdapters {
    const NAME: &'static str = "ExtractAdapters";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "LoRA weights of an ONNX model to optional inputs plus an ONNX Runtime .onnx_adapter file.";
    const ACCEPTS: &'static [&'static str] = &[kinds::ONNX];
    const PRODUCES: &'static [&'static str] = &[kinds::ONNX];
    const DEVICES: &'static [&'static str] = &["cpu", "gpu"];
    type Config = ExtractAdaptersConfig;

    fn run(model: Model, config: ExtractAdaptersConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        let out = ctx.output_dir();
        let count = extract_adapters_folder(&model.path, "model.onnx", &out).map_err(failed)?;
        if !config.optional_inputs && count > 0 {
            drop_input_defaults(&out.join("model.onnx"))?;
        }
        ctx.info(&format!(
            "extracted {count} adapter weights to {ADAPTER_FILE}"
        ));
        let mut output = Model::new(kinds::ONNX, &out);
        output.metadata = model.metadata;
        output
            .metadata
            .insert("adapter_parameters".into(), count.into());
        Ok(output)
    }
}

/// Removes the initializers that give graph inputs of the model at `path` a default (rewritten in place, temp file +
/// rename).
fn drop_input_defaults(path: &Path) -> Result<(), Error> {
    use prost::Message;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut model = olive_onnx::proto::ModelProto::decode(bytes.as_slice())
        .map_err(|e| Error::Failed(format!("{}: not an ONNX model: {e}", path.display())))?;
    if let Some(g) = model.graph.as_mut() {
        let inputs: std::collections::HashSet<String> =
            g.input.iter().filter_map(|i| i.name.clone()).collect();
        g.initializer
            .retain(|t| !t.name.as_ref().is_some_and(|n| inputs.contains(n)));
    }
    let temp = path.with_extension("onnx.tmp");
    std::fs::write(&temp, model.encode_to_vec()).map_err(|e| Error::io(&temp, e))?;
    std::fs::rename(&temp, path).map_err(|e| Error::io(path, e))
}

olive_pass_sdk::export_plugin! {
    name: "onnx-builder",
    version: "0.1.0",
    passes: [ModelBuilder, ExtractAdapters],
}
