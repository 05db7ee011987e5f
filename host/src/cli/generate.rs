//! `olive-host generate`: greedy decoding with the KV cache on CPU, streaming the text to stdout.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use olive_nn::{TextStream, Transformer};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A Hugging Face folder or a .gguf file.
    #[arg(long = "model_name_or_path", short = 'm')]
    pub model_name_or_path: PathBuf,
    /// The prompt, as given (no chat template is applied).
    #[arg(long)]
    pub prompt: String,
    /// Longest sequence, prompt included (as onnxruntime-genai's max_length).
    #[arg(long = "max_length", default_value_t = 256, conflicts_with = "max_new_tokens")]
    pub max_length: usize,
    /// Number of tokens to generate at most, instead of --max_length.
    #[arg(long = "max_new_tokens")]
    pub max_new_tokens: Option<usize>,
    /// Keep going past end-of-sequence tokens (for benchmarks).
    #[arg(long = "ignore_eos")]
    pub ignore_eos: bool,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let folder = olive_model::convert::resolve_model_path(&args.model_name_or_path)
        .with_context(|| format!("opening {}", args.model_name_or_path.display()))?;
    let loading = crate::progress::spinner(format!("loading {}", folder.display()));
    let model = Transformer::load(&folder)?;
    let tokenizer = olive_model::tokenizer::load(&folder)?;
    loading.finish_and_clear();

    let encoding = tokenizer
        .encode(args.prompt.as_str(), true)
        .map_err(|e| anyhow::anyhow!("{}: tokenizing the prompt: {e}", folder.join("tokenizer.json").display()))?;
    let prompt = encoding.get_ids();
    if prompt.is_empty() {
        bail!("--prompt: the prompt tokenizes to no tokens");
    }
    let max_length = match args.max_new_tokens {
        Some(n) => prompt.len() + n,
        None => args.max_length,
    };
    if prompt.len() >= max_length {
        bail!(
            "--max_length {max_length}: the prompt already has {} tokens; raise --max_length",
            prompt.len()
        );
    }
    let eos = if args.ignore_eos { Vec::new() } else { model.config().eos_token_ids.clone() };

    let mut stream = TextStream::new(&tokenizer, true);
    let mut stdout = std::io::stdout().lock();
    let start = Instant::now();
    let mut first_token_at = None;
    let mut stream_error = None;
    let generated = model.generate(prompt, max_length, &eos, |id| {
        first_token_at.get_or_insert_with(Instant::now);
        let written = match stream.push(id) {
            Ok(Some(text)) => stdout.write_all(text.as_bytes()).and_then(|_| stdout.flush()).map_err(anyhow::Error::from),
            Ok(None) => Ok(()),
            Err(e) => Err(e.into()),
        };
        match written {
            Ok(()) => true,
            Err(e) => {
                stream_error = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = stream_error {
        return Err(e.context("streaming the generated text"));
    }
    if let Some(rest) = stream.finish()? {
        stdout.write_all(rest.as_bytes())?;
    }
    writeln!(stdout)?;

    let end = Instant::now();
    if let Some(first) = first_token_at {
        let prefill = first.duration_since(start).as_secs_f64();
        let decoded = generated.len().saturating_sub(1);
        let decode = end.duration_since(first).as_secs_f64();
        tracing::info!("prefill: {} tokens in {prefill:.3} s", prompt.len());
        tracing::info!(
            "decode: {decoded} tokens in {decode:.3} s ({:.1} tokens/s)",
            decoded as f64 / decode.max(1e-9)
        );
    }
    Ok(())
}
