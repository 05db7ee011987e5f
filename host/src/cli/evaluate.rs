//! `olive-host evaluate`: perplexity of a model over a text, on the CPU transformer (a Hugging Face folder or
//! .gguf) or through ONNX Runtime (an exported ONNX folder, optionally with a LoRA adapter), so the two can be
//! compared. Prints a JSON object.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use olive_nn::Transformer;
use olive_runtime::OnnxModel;

use super::common::resolve_hf_input;
use crate::evaluate::perplexity::{windows, Nll};

#[derive(Args, Debug)]
pub struct EvaluateArgs {
    /// A Hugging Face folder, a .gguf file, or an ONNX folder (genai_config.json + model.onnx).
    #[arg(long = "model_name_or_path", short = 'm')]
    pub model_name_or_path: PathBuf,
    /// The text to score (UTF-8); default: the project's held-out evaluation text (data/eval.txt).
    #[arg(long = "text_file")]
    pub text_file: Option<PathBuf>,
    /// Tokens per window; each window is scored from an empty cache.
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// An ONNX Runtime LoRA adapter file (.onnx_adapter) to activate (ONNX folders).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

/// Scores windows one forward pass at a time.
enum Scorer {
    Cpu(Box<Transformer>),
    Onnx(Box<OnnxModel>),
}

impl Scorer {
    fn logits(&mut self, ids: &[u32]) -> anyhow::Result<Vec<f32>> {
        Ok(match self {
            Scorer::Cpu(model) => model.forward(ids, &mut model.new_cache(ids.len()))?,
            Scorer::Onnx(model) => model.logits(ids)?,
        })
    }
}

pub fn run(args: EvaluateArgs) -> anyhow::Result<()> {
    if args.window < 2 {
        bail!("--window {} is too short: a window predicts all its tokens but the first; give 2 or more", args.window);
    }
    let (folder, mut scorer, runtime) = if olive_runtime::is_onnx_folder(&args.model_name_or_path) {
        let mut model = OnnxModel::load(&args.model_name_or_path)?;
        if let Some(adapter) = &args.adapter {
            model.activate_adapter(adapter, &adapter.display().to_string())?;
        }
        (
            args.model_name_or_path.clone(),
            Scorer::Onnx(Box::new(model)),
            "onnxruntime",
        )
    } else {
        if args.adapter.is_some() {
            bail!("--adapter takes an .onnx_adapter file and applies to ONNX folders; export the model with \
                   `olive-host auto-opt --adapter_path` first");
        }
        let folder = resolve_hf_input(&args.model_name_or_path)?;
        let model =
            Transformer::load(&folder).with_context(|| format!("loading {}", folder.display()))?;
        (folder, Scorer::Cpu(Box::new(model)), "olive-nn")
    };
    let text = match &args.text_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the text file {}", path.display()))?,
        None => olive_data::DEFAULT_EVAL_TEXT.to_owned(),
    };
    let tokenizer = olive_model::tokenizer::load(&folder)?;
    let ids = tokenizer
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("tokenizing the text: {e}"))?
        .get_ids()
        .to_vec();
    let windows = windows(&ids, args.window);
    if windows.is_empty() {
        bail!(
            "the text has {} tokens; a perplexity needs at least 2",
            ids.len()
        );
    }
    let bar = crate::progress::bar(windows.len() as u64, "perplexity");
    let mut nll = Nll::default();
    for w in &windows {
        nll.add(&scorer.logits(w)?, w);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let result = serde_json::json!({
        "perplexity": nll.perplexity(),
        "predicted_tokens": nll.predicted,
        "windows": windows.len(),
        "runtime": runtime,
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
