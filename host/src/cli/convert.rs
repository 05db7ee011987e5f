//! `olive-host convert`: a GGUF file to a Hugging Face folder (config.json, model.safetensors, tokenizer files).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The GGUF file to convert.
    #[arg(long = "model_name_or_path", short = 'm')]
    pub model_name_or_path: PathBuf,
    /// The Hugging Face folder to write; it appears only when the conversion succeeded.
    #[arg(long = "output_path", short = 'o')]
    pub output_path: PathBuf,
    /// Replace an existing, non-empty output folder.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let spinner =
        crate::progress::spinner(format!("converting {}", args.model_name_or_path.display()));
    olive_model::convert::gguf_to_hf_with(
        &args.model_name_or_path,
        &args.output_path,
        args.overwrite,
    )
    .with_context(|| format!("converting {}", args.model_name_or_path.display()))?;
    spinner.finish_and_clear();
    tracing::info!("wrote {}", args.output_path.display());
    Ok(())
}
