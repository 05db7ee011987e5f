//! `olive-host convert-adapters`: a PEFT LoRA adapter to an ONNX Runtime adapter file (`.onnx_adapter`) for a model
//! exported with LoRA (ModelBuilder + ExtractAdapters): the same parameter names and layouts (lora_A [in, r],
//! lora_B [r, out] with the scale folded in), Phi-3's fused projections split. Flags mirror Olive's
//! `olive convert-adapters` (olive/cli/convert_adapters.py), plus `--base_model` to check the adapter against.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use olive_model::adapter::{LoraAdapter, LoraWeights, Projection};
use olive_model::ModelConfig;
use olive_onnx::adapter_format::{self, Adapter, Parameter};
use olive_onnx::extract_adapters::{weight_name, LoraBranch, LoraSide};
use olive_onnx::proto::{tensor_shape_proto::dimension::Value as DimValue, type_proto, ModelProto};
use olive_onnx::tensor::DataType;
use prost::Message;

#[derive(Args, Debug)]
pub struct ConvertAdaptersArgs {
    /// The PEFT adapter folder (adapter_config.json, adapter_model.safetensors).
    #[arg(long = "adapter_path", short = 'a')]
    pub adapter_path: PathBuf,
    /// Format to save the weights in.
    #[arg(long = "adapter_format", default_value = "onnx_adapter", value_parser = ["onnx_adapter"])]
    pub adapter_format: String,
    /// The adapter file to write (`.onnx_adapter` replaces any other extension).
    #[arg(long = "output_path", short = 'o')]
    pub output_path: PathBuf,
    /// Data type of the adapter weights; default: the exported model's (with --base_model an ONNX model), else
    /// float32.
    #[arg(long, value_parser = ["float32", "float16"])]
    pub dtype: Option<String>,
    /// The base model to check the adapter against: a Hugging Face folder (config.json), or the exported ONNX model
    /// (its folder or its .onnx file), whose LoRA inputs then fix names, shapes and dtype. Default: the adapter's
    /// base_model_name_or_path when that is a local folder.
    #[arg(long = "base_model")]
    pub base_model: Option<PathBuf>,
}

/// A LoRA input of an exported model: its fixed dims (None where symbolic) and element type.
struct LoraInput {
    dims: Vec<Option<i64>>,
    elem_type: i32,
}

pub fn run(args: ConvertAdaptersArgs) -> anyhow::Result<()> {
    let adapter = LoraAdapter::open(&args.adapter_path)?;
    let base = args.base_model.clone().or_else(|| {
        let named = adapter
            .config()
            .base_model_name_or_path
            .as_deref()
            .map(PathBuf::from)?;
        named.is_dir().then_some(named)
    });
    let mut dtype = args.dtype.as_deref().map(parse_dtype);
    // The LoRA inputs of an exported base model: those the adapter lacks get zeros.
    let mut model_inputs = None;
    let weights = match &base {
        Some(base) if base.join("config.json").is_file() => {
            let config = ModelConfig::from_folder(base)?;
            adapter.unfused(&config)?
        }
        Some(base) => {
            let model_path = onnx_model_path(base)?;
            let inputs = lora_inputs(&model_path)?;
            let weights = unfused_for_onnx(&adapter, &inputs, &model_path)?;
            let model_dtype = check_against_onnx(&weights, &inputs, &model_path)?;
            match dtype {
                Some(d) if d != model_dtype => bail!(
                    "--dtype {} does not match the LoRA inputs of {} ({:?})",
                    args.dtype.as_deref().unwrap_or_default(),
                    model_path.display(),
                    model_dtype
                ),
                _ => dtype = Some(model_dtype),
            }
            model_inputs = Some(inputs);
            weights
        }
        None => {
            if let Some(fused) = adapter
                .weights()
                .iter()
                .find(|w| !w.module.projection.parts().is_empty())
            {
                bail!(
                    "module `{}` is fused: pass --base_model (a Hugging Face folder or the exported ONNX model) \
                     to split it as the exported model does",
                    fused.module.hf_key()
                );
            }
            tracing::warn!(
                "no --base_model: the adapter is not checked against the model it will run with"
            );
            adapter.weights().to_vec()
        }
    };
    let dtype = dtype.unwrap_or(DataType::Float);
    // One lora_r per adapter file: modules of a smaller rank (rank_pattern) get zero padding.
    let rank = weights.iter().map(|w| w.rank).max().unwrap_or(0);
    let mut parameters = Vec::with_capacity(2 * weights.len());
    for w in weights.iter().map(|w| w.padded(rank)) {
        let path = w.module.onnx_path();
        parameters.extend(branch(&w, &path).parameters(dtype)?);
    }
    match &model_inputs {
        Some(inputs) => parameters.extend(zero_parameters(inputs, &parameters, rank, dtype)),
        None => tracing::warn!(
            "the adapter covers {} modules: should the exported model have LoRA inputs for more, pass it as \
             --base_model so they get zeros of rank {rank} (ONNX Runtime binds one lora_r for all LoRA inputs)",
            weights.len()
        ),
    }
    let output = output_path(&args.output_path);
    Adapter {
        parameters,
        ..Adapter::default()
    }
    .write(&output)
    .with_context(|| format!("writing {}", output.display()))?;
    println!("Exported adapter weights to {}", output.display());
    Ok(())
}

fn parse_dtype(name: &str) -> DataType {
    if name == "float16" {
        DataType::Float16
    } else {
        DataType::Float
    }
}

fn branch<'a>(w: &'a LoraWeights, path: &'a str) -> LoraBranch<'a> {
    LoraBranch {
        path,
        in_features: w.in_features,
        out_features: w.out_features,
        rank: w.rank,
        a: &w.a,
        b: &w.b,
        scale: w.scale,
    }
}

/// Zero weights of rank `rank` for the model's LoRA inputs the adapter does not cover: ONNX Runtime binds the
/// symbolic `lora_r` once per run, so an input left to its empty default ([in, 0]) beside rank-r ones fails.
fn zero_parameters(
    inputs: &HashMap<String, LoraInput>,
    covered: &[Parameter],
    rank: usize,
    dtype: DataType,
) -> Vec<Parameter> {
    let mut names: Vec<&String> = inputs
        .keys()
        .filter(|name| !covered.iter().any(|p| &p.name == *name))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let dims: Vec<i64> = inputs[name]
                .dims
                .iter()
                .map(|d| d.unwrap_or(rank as i64))
                .collect();
            let count = dims.iter().product::<i64>().max(0) as usize;
            Parameter {
                name: name.clone(),
                dims,
                data_type: dtype.code(),
                raw_data: vec![0; dtype.byte_len(count as u128) as usize],
            }
        })
        .collect()
}

/// Olive's `save_weights`: the format's suffix replaces the output's extension.
fn output_path(path: &Path) -> PathBuf {
    if path
        .extension()
        .is_some_and(|e| e == adapter_format::EXTENSION)
    {
        path.to_path_buf()
    } else {
        path.with_extension(adapter_format::EXTENSION)
    }
}

/// The .onnx file of a base model given as a file or an export folder (genai_config.json's decoder filename, else
/// model.onnx).
fn onnx_model_path(base: &Path) -> anyhow::Result<PathBuf> {
    if base.is_file() {
        return Ok(base.to_path_buf());
    }
    let genai = base.join("genai_config.json");
    let file = std::fs::read_to_string(&genai)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| {
            v["model"]["decoder"]["filename"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "model.onnx".to_string());
    let path = base.join(file);
    if !path.is_file() {
        bail!(
            "{}: --base_model must be a Hugging Face folder (config.json) or an exported ONNX model (model.onnx)",
            base.display()
        );
    }
    Ok(path)
}

/// The graph inputs of a model whose names end in `.lora_A.weight` / `.lora_B.weight`.
fn lora_inputs(model_path: &Path) -> anyhow::Result<HashMap<String, LoraInput>> {
    let bytes =
        std::fs::read(model_path).with_context(|| format!("reading {}", model_path.display()))?;
    let model = ModelProto::decode(bytes.as_slice())
        .with_context(|| format!("{}: not an ONNX model", model_path.display()))?;
    let mut out = HashMap::new();
    for input in model.graph.iter().flat_map(|g| &g.input) {
        let Some(name) = input.name.as_deref() else {
            continue;
        };
        if !(name.ends_with(".lora_A.weight") || name.ends_with(".lora_B.weight")) {
            continue;
        }
        let Some(type_proto::Value::TensorType(t)) =
            input.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            continue;
        };
        let dims = t
            .shape
            .iter()
            .flat_map(|s| &s.dim)
            .map(|d| match d.value {
                Some(DimValue::DimValue(v)) => Some(v),
                _ => None,
            })
            .collect();
        out.insert(
            name.to_string(),
            LoraInput {
                dims,
                elem_type: t.elem_type.unwrap_or(0),
            },
        );
    }
    if out.is_empty() {
        bail!(
            "{}: the model has no LoRA inputs (export it with --adapter_path so ExtractAdapters makes them)",
            model_path.display()
        );
    }
    Ok(out)
}

/// Splits fused projections by the output sizes of the model's inputs for their parts.
fn unfused_for_onnx(
    adapter: &LoraAdapter,
    inputs: &HashMap<String, LoraInput>,
    model_path: &Path,
) -> anyhow::Result<Vec<LoraWeights>> {
    let mut out = Vec::new();
    for w in adapter.weights() {
        let parts: &[Projection] = w.module.projection.parts();
        if parts.is_empty() {
            out.push(w.clone());
            continue;
        }
        let mut rows = Vec::with_capacity(parts.len());
        let mut start = 0usize;
        for &projection in parts {
            let part = olive_model::adapter::LoraModule {
                layer: w.module.layer,
                projection,
            };
            let name = weight_name(&part.onnx_path(), LoraSide::B);
            let size = inputs
                .get(&name)
                .and_then(|i| i.dims.get(1).copied().flatten())
                .with_context(|| {
                    format!(
                        "module `{}`: {} has no input `{name}` with a fixed output size to split the fused adapter by",
                        w.module.hf_key(),
                        model_path.display()
                    )
                })?;
            rows.push((projection, start..start + size as usize));
            start += size as usize;
        }
        if start != w.out_features {
            bail!(
                "module `{}` (in {}): lora_B has {} rows, but the model's {} inputs need {start}: the adapter was \
                 trained for another base model",
                w.module.hf_key(),
                adapter.folder().display(),
                w.out_features,
                parts.iter().map(|p| p.name()).collect::<Vec<_>>().join("/")
            );
        }
        out.extend(w.split_rows(&rows));
    }
    Ok(out)
}

/// Checks every weight against the model's LoRA inputs; returns the inputs' element type.
fn check_against_onnx(
    weights: &[LoraWeights],
    inputs: &HashMap<String, LoraInput>,
    model_path: &Path,
) -> anyhow::Result<DataType> {
    let mut dtype = None;
    for w in weights {
        let path = w.module.onnx_path();
        for (side, fixed_dim, size) in [
            (LoraSide::A, 0, w.in_features),
            (LoraSide::B, 1, w.out_features),
        ] {
            let name = weight_name(&path, side);
            let input = inputs.get(&name).with_context(|| {
                format!(
                    "module `{}` (adapter {}): {} has no input `{name}`: the model was exported without LoRA on \
                     this module",
                    w.module.hf_key(),
                    path,
                    model_path.display()
                )
            })?;
            let expected = input.dims.get(fixed_dim).copied().flatten();
            if input.dims.len() != 2 || expected != Some(size as i64) {
                bail!(
                    "module `{}`: the adapter's {name} needs dimension {fixed_dim} of size {size}, but {} declares \
                     {:?}: the adapter was trained for another base model",
                    w.module.hf_key(),
                    model_path.display(),
                    input.dims
                );
            }
            let input_dtype = match input.elem_type {
                1 => DataType::Float,
                10 => DataType::Float16,
                other => bail!(
                    "{}: input `{name}` has element type {other}, expected float or float16",
                    model_path.display()
                ),
            };
            dtype.get_or_insert(input_dtype);
        }
    }
    Ok(dtype.unwrap_or(DataType::Float))
}
