//! `olive-host ep-check`: runs an ONNX model through the execution provider that a plugin serves for
//! `--device`/`--provider`, in this process, on that provider's ONNX Runtime library (see crate::ep::check):
//! every node must run on the provider with CPU fallback disabled, and the outputs must be within the plugin's
//! tolerance of the CPU provider's. Prints the report as JSON. `auto-opt` runs it on what it writes.

use std::path::PathBuf;

use clap::Args;

use crate::{ep, plugins};

#[derive(Args, Debug)]
pub struct EpCheckArgs {
    /// The ONNX model: a .onnx file, or a folder holding model.onnx.
    #[arg(long = "model_path", short = 'm')]
    pub model_path: PathBuf,
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
    let model = if args.model_path.is_dir() {
        args.model_path.join(olive_runtime::DEFAULT_MODEL_FILE)
    } else {
        args.model_path.clone()
    };
    let report = ep::check::check(&model, provider)?;
    if let Some(file) = &args.outputs_file {
        crate::files::write_atomic(file, serde_json::to_string(&report.outputs)?.as_bytes())?;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
