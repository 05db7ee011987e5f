//! `olive-host ep-check`: runs an ONNX model through the execution provider that a plugin serves for
//! `--device`/`--provider`, in this process, on that provider's ONNX Runtime library (see crate::ep::check):
//! every node must run on the provider with CPU fallback disabled, and the outputs must be within the plugin's
//! tolerance of the CPU provider's (or of `--reference_model`'s, for a model the CPU cannot run: an EPContext
//! model). Prints the report as JSON. `auto-opt` runs it on what it writes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use clap::Args;

use crate::{ep, plugins};

#[derive(Args, Debug)]
pub struct EpCheckArgs {
    /// The ONNX model: a .onnx file, or a folder holding model.onnx (or a single .onnx file).
    #[arg(long = "model_path", short = 'm')]
    pub model_path: PathBuf,
    /// Compare with this model's outputs on the CPU provider instead of the model's own (same inputs): for a model
    /// only the provider runs, e.g. an EPContext model (model_ctx.onnx), give the model it was compiled from.
    #[arg(long = "reference_model")]
    pub reference_model: Option<PathBuf>,
    /// The device, as auto-opt's --device.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The execution provider, as auto-opt's --provider.
    #[arg(long, default_value = "CPUExecutionProvider")]
    pub provider: String,
    /// Also write the provider's float outputs here, as JSON (`{name: [flattened values]}`).
    #[arg(long = "outputs_file")]
    pub outputs_file: Option<PathBuf>,
}

pub fn run(args: EpCheckArgs) -> anyhow::Result<()> {
    let found = plugins::discover(&plugins::search_path());
    let (_, provider) = ep::find(&found, &args.device, &args.provider)?;
    let library = ep::library(provider)?;
    // A plugin-EP library (runtime.ep_library) is checked here too, so its error is the command's.
    ep::ep_library(provider).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    // The ONNX Runtime of this process is the provider's: nothing has loaded one yet, and only this thread runs.
    std::env::set_var(olive_runtime::env::DYLIB_ENV, &library);
    let model = model_file(&args.model_path)?;
    let reference = args
        .reference_model
        .as_deref()
        .map(model_file)
        .transpose()?;
    let report = ep::check::check(&model, reference.as_deref(), provider)?;
    if let Some(file) = &args.outputs_file {
        crate::files::write_atomic(file, serde_json::to_string(&report.outputs)?.as_bytes())?;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// A model file, or a folder's model.onnx, or the folder's only .onnx file (model_ctx.onnx of an EPContext pass).
pub fn model_file(path: &Path) -> anyhow::Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let default = path.join(olive_runtime::DEFAULT_MODEL_FILE);
    if default.is_file() {
        return Ok(default);
    }
    let entries =
        std::fs::read_dir(path).with_context(|| format!("cannot read {}", path.display()))?;
    let onnx: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .collect();
    match onnx.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("{}: no .onnx file in the folder", path.display()),
        many => bail!(
            "{}: {} .onnx files and no {}; give the model file",
            path.display(),
            many.len(),
            olive_runtime::DEFAULT_MODEL_FILE
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_gives_its_model_onnx_or_its_only_onnx_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model_ctx.onnx");
        std::fs::write(&file, b"").unwrap();
        std::fs::write(dir.path().join("model_ctx_qnn.bin"), b"").unwrap();
        assert_eq!(model_file(dir.path()).unwrap(), file);
        assert_eq!(model_file(&file).unwrap(), file);
        std::fs::write(dir.path().join("other.onnx"), b"").unwrap();
        let err = model_file(dir.path()).unwrap_err().to_string();
        assert!(err.contains("2 .onnx files and no model.onnx"), "{err}");
        let default = dir.path().join("model.onnx");
        std::fs::write(&default, b"").unwrap();
        assert_eq!(model_file(dir.path()).unwrap(), default);
    }
}
