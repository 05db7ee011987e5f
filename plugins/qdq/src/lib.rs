//! olive-rs plugin `qdq`: what an NPU such as Qualcomm's HTP (QNNExecutionProvider) needs of any ONNX model —
//! Olive's `DynamicToFixedShape` (olive/passes/onnx/dynamic_to_fixed_shape.py, onnxruntime's
//! `make_dim_param_fixed` / `make_input_shape_fixed`) and static QDQ quantization, Olive's `OnnxStaticQuantization`
//! and `OnnxQuantization` with `quant_mode: static` (olive/passes/onnx/quantization.py, which runs
//! onnxruntime.quantization.quantize_static), see [`qdq`], and Olive's `EPContextBinaryGenerator` for QNN (see
//! [`context`]). The input is a `.onnx` file or a folder holding one; the
//! output folder gets `model.onnx` (+ `model.onnx.data` for initializers of 1 KiB or more) and the input folder's
//! other files (genai_config.json, tokenizer, ...).

pub mod calibrate;
pub mod context;
pub mod data;
pub mod fixed;
pub mod histogram;
pub mod mask;
pub mod methods;
mod place;
pub mod qdq;
pub mod qtype;
pub mod residual;
pub mod types;
pub mod weights;

use std::path::Path;

use olive_onnx::proto::{GraphProto, ModelProto};
use olive_pass_sdk::{kinds, onnx_model_file, Context, Error, Model};

/// The graph of `model`, or an error saying it has none.
pub fn graph_of(model: &mut ModelProto) -> Result<&mut GraphProto, Error> {
    model
        .graph
        .as_mut()
        .ok_or_else(|| Error::UnsupportedModel("the ONNX model has no graph".into()))
}

/// Loads the input model (external data pulled in), lets `edit` change it (it gets the model file's path), and
/// writes it to the pass's output folder as `model.onnx`; `edit`'s JSON becomes the output's metadata `key`.
pub fn rewrite_model(
    model: Model,
    ctx: &Context<'_>,
    key: &str,
    edit: impl FnOnce(&mut ModelProto, &Path) -> Result<serde_json::Value, Error>,
) -> Result<Model, Error> {
    let file = onnx_model_file(&model.path)?;
    let mut onnx =
        olive_onnx::rewrite::load(&file).map_err(|e| Error::UnsupportedModel(e.to_string()))?;
    let report = edit(&mut onnx, &file)?;
    ctx.check_cancelled()?;
    let out = ctx.output_dir();
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    copy_companions(&model.path, &out)?;
    olive_onnx::rewrite::save(onnx, &out, "model.onnx")
        .map_err(|e| Error::Failed(e.to_string()))?;
    let mut output = Model::new(kinds::ONNX, &out);
    output.metadata = model.metadata;
    output.metadata.insert(key.into(), report);
    Ok(output)
}

/// Copies the input folder's files other than the model's own (`*.onnx`, external data `*.data` / `*.onnx_data`)
/// into `out`: genai_config.json, the tokenizer files, ... stay with the model (as fusion's passes keep them).
pub fn copy_companions(input: &Path, out: &Path) -> Result<(), Error> {
    if !input.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(input).map_err(|e| Error::io(input, e))? {
        let from = entry.map_err(|e| Error::io(input, e))?.path();
        let name = from
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let model_file = [".onnx", ".data", ".onnx_data"]
            .iter()
            .any(|ext| name.ends_with(ext));
        if from.is_file() && !model_file {
            std::fs::copy(&from, out.join(&name)).map_err(|e| Error::io(&from, e))?;
        }
    }
    Ok(())
}

olive_pass_sdk::export_plugin! {
    name: "qdq",
    version: env!("CARGO_PKG_VERSION"),
    passes: [
        fixed::DynamicToFixedShape,
        qdq::OnnxStaticQuantization,
        qdq::OnnxQuantization,
        context::EPContextBinaryGenerator,
    ],
}
