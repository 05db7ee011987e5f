//! `olive-host generate`: text from a prompt, streamed to stdout. A Hugging Face folder or a GGUF
//! file runs greedily on olive-nn's transformer, on the CPU or (`--device gpu`) on our CUDA kernels; an ONNX folder in onnxruntime-genai's
//! layout (genai_config.json, model.onnx) runs through ONNX Runtime (olive-runtime), greedy or
//! sampled as onnxruntime-genai's search options, with an optional LoRA adapter.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::bail;
use clap::Args;
use olive_nn::{GpuTransformer, QuantizedWeights, TextStream, Transformer};
use olive_runtime::{OnnxModel, SearchOptions};
use tokenizers::Tokenizer;

use crate::device::{first_gpu, Device};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A Hugging Face folder, a .gguf file, or an ONNX folder (genai_config.json + model.onnx).
    #[arg(long = "model_name_or_path", short = 'm')]
    pub model_name_or_path: PathBuf,
    /// The prompt, as given (no chat template is applied).
    #[arg(long)]
    pub prompt: String,
    /// Longest sequence, prompt included (as onnxruntime-genai's max_length).
    #[arg(
        long = "max_length",
        default_value_t = 256,
        conflicts_with = "max_new_tokens"
    )]
    pub max_length: usize,
    /// Number of tokens to generate at most, instead of --max_length.
    #[arg(long = "max_new_tokens")]
    pub max_new_tokens: Option<usize>,
    /// Keep going past end-of-sequence tokens (for benchmarks).
    #[arg(long = "ignore_eos")]
    pub ignore_eos: bool,
    /// Sample the next token instead of taking the most likely one (ONNX folders).
    #[arg(long = "do_sample")]
    pub do_sample: bool,
    /// With --do_sample: sample among the k most likely tokens (0: all); default from genai_config.json's search.
    #[arg(long = "top_k", requires = "do_sample")]
    pub top_k: Option<usize>,
    /// With --do_sample: sample among the most likely tokens that make up this probability; default from genai_config.json.
    #[arg(long = "top_p", requires = "do_sample")]
    pub top_p: Option<f32>,
    /// With --do_sample: divide the logits by this before the softmax; default from genai_config.json.
    #[arg(long, requires = "do_sample")]
    pub temperature: Option<f32>,
    /// With --do_sample: seed of the random generator, for reproducible output (default: from the clock).
    #[arg(long, requires = "do_sample")]
    pub seed: Option<u64>,
    /// An ONNX Runtime LoRA adapter file (.onnx_adapter) to activate (ONNX folders).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// A name for the adapter in messages (default: the file name).
    #[arg(long = "adapter_name", requires = "adapter")]
    pub adapter_name: Option<String>,
    /// Where a Hugging Face model runs: cpu (f32; int4 checkpoints stay int4), or gpu (bf16 on
    /// olive-rs's CUDA kernels; int4 checkpoints stay int4).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// On the CPU, an int4 checkpoint's float lm_head is rounded to int4 (RTN, blocks of 32) as
    /// onnxruntime-genai's int4 exports do: faster decoding, logits no longer exactly the checkpoint's.
    #[arg(long = "int4_lm_head")]
    pub int4_lm_head: bool,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    // A registered model (`models:/<name>/<version>`) is downloaded once into the cache and run from there.
    let args = match super::model::resolve_models_uri(&args.model_name_or_path.to_string_lossy())? {
        Some(folder) => GenerateArgs {
            model_name_or_path: folder,
            ..args
        },
        None => args,
    };
    if olive_runtime::is_onnx_folder(&args.model_name_or_path) {
        if args.device == Device::Gpu {
            bail!(
                "--device gpu runs Hugging Face folders on olive-rs's CUDA kernels; {} is an ONNX folder, which \
                 runs through ONNX Runtime's CPU execution provider here: use --device cpu",
                args.model_name_or_path.display()
            );
        }
        return run_onnx(&args);
    }
    if args.do_sample || args.adapter.is_some() {
        bail!(
            "--do_sample and --adapter need an ONNX folder (genai_config.json + model.onnx, as \
             `olive-host auto-opt --use_ort_genai` writes); {} runs greedily on the CPU transformer",
            args.model_name_or_path.display()
        );
    }
    let folder = super::common::resolve_hf_input(&args.model_name_or_path)?;
    let loading = crate::progress::spinner(format!("loading {}", folder.display()));
    let model = match args.device {
        // A quantized checkpoint stays int4 (the CPU int4 kernels, int8 activations as ORT's accuracy level 4).
        Device::Cpu => {
            let mut model = Transformer::load_with(&folder, QuantizedWeights::Int4)?;
            if args.int4_lm_head && !model.round_lm_head_int4() {
                bail!(
                    "--int4_lm_head: {} has no int4 decoder linears the CPU kernels take, or its lm_head \
                     does not fit them (hidden size a multiple of 32); run without it",
                    folder.display()
                );
            }
            Model::Cpu(model)
        }
        Device::Gpu if args.int4_lm_head => bail!("--int4_lm_head is for --device cpu"),
        Device::Gpu => Model::Gpu(GpuTransformer::load(&folder, first_gpu()?)?),
    };
    let tokenizer = olive_model::tokenizer::load(&folder)?;
    loading.finish_and_clear();

    let prompt = encode_prompt(&tokenizer, &args.prompt, &folder)?;
    let max_length = max_length(&args, prompt.len())?;
    let config = match &model {
        Model::Cpu(m) => m.config(),
        Model::Gpu(m) => m.config(),
    };
    let eos = if args.ignore_eos {
        Vec::new()
    } else {
        config.eos_token_ids.clone()
    };
    stream_to_stdout(&tokenizer, prompt.len(), |on_token| {
        Ok(match &model {
            Model::Cpu(m) => m.generate(&prompt, max_length, &eos, on_token)?,
            Model::Gpu(m) => m.generate(&prompt, max_length, &eos, on_token)?,
        })
    })
}

/// The transformer on its device.
enum Model {
    Cpu(Transformer),
    Gpu(GpuTransformer),
}

/// The ONNX Runtime path: genai_config.json drives the decoding loop.
fn run_onnx(args: &GenerateArgs) -> anyhow::Result<()> {
    let folder = &args.model_name_or_path;
    let loading = crate::progress::spinner(format!("loading {}", folder.display()));
    let mut model = OnnxModel::load(folder)?;
    let tokenizer = olive_model::tokenizer::load(folder)?;
    if let Some(adapter) = &args.adapter {
        let name = args.adapter_name.clone().unwrap_or_else(|| {
            adapter
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        model.activate_adapter(adapter, &name)?;
        tracing::info!("adapter {name:?} active ({})", adapter.display());
    }
    loading.finish_and_clear();

    let prompt = encode_prompt(&tokenizer, &args.prompt, folder)?;
    let search = &model.config().search;
    let options = SearchOptions {
        max_length: max_length(args, prompt.len())?,
        do_sample: args.do_sample,
        top_k: args.top_k.unwrap_or(search.top_k),
        top_p: args.top_p.unwrap_or(search.top_p),
        temperature: args.temperature.unwrap_or(search.temperature),
        seed: args.seed,
        eos_token_ids: if args.ignore_eos {
            Vec::new()
        } else {
            model.config().eos_token_ids()
        },
    };
    tracing::debug!(?options, "search options");
    stream_to_stdout(&tokenizer, prompt.len(), |on_token| {
        Ok(model.generate(&prompt, &options, on_token)?)
    })
}

/// The prompt's ids, special tokens added as the tokenizer's post-processor says.
fn encode_prompt(tokenizer: &Tokenizer, prompt: &str, folder: &Path) -> anyhow::Result<Vec<u32>> {
    let encoding = tokenizer.encode(prompt, true).map_err(|e| {
        anyhow::anyhow!(
            "{}: tokenizing the prompt: {e}",
            folder.join("tokenizer.json").display()
        )
    })?;
    if encoding.get_ids().is_empty() {
        bail!("--prompt: the prompt tokenizes to no tokens");
    }
    Ok(encoding.get_ids().to_vec())
}

/// The longest sequence from --max_new_tokens or --max_length, checked against the prompt.
fn max_length(args: &GenerateArgs, prompt_len: usize) -> anyhow::Result<usize> {
    let max_length = match args.max_new_tokens {
        Some(n) => prompt_len + n,
        None => args.max_length,
    };
    if prompt_len >= max_length {
        bail!("--max_length {max_length}: the prompt already has {prompt_len} tokens; raise --max_length");
    }
    Ok(max_length)
}

/// Runs `generate` with a callback that streams each id's text to stdout; logs prefill and decode
/// timings at info level.
fn stream_to_stdout(
    tokenizer: &Tokenizer,
    prompt_len: usize,
    generate: impl FnOnce(&mut dyn FnMut(u32) -> bool) -> anyhow::Result<Vec<u32>>,
) -> anyhow::Result<()> {
    let mut stream = TextStream::new(tokenizer, true);
    let mut stdout = std::io::stdout().lock();
    let start = Instant::now();
    let mut first_token_at = None;
    let mut stream_error = None;
    let generated = generate(&mut |id| {
        first_token_at.get_or_insert_with(Instant::now);
        let written = match stream.push(id) {
            Ok(Some(text)) => stdout
                .write_all(text.as_bytes())
                .and_then(|_| stdout.flush())
                .map_err(anyhow::Error::from),
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
    tracing::debug!("generated ids: {generated:?}");
    if let Some(rest) = stream.finish()? {
        stdout.write_all(rest.as_bytes())?;
    }
    writeln!(stdout)?;

    let end = Instant::now();
    if let Some(first) = first_token_at {
        let prefill = first.duration_since(start).as_secs_f64();
        let decoded = generated.len().saturating_sub(1);
        let decode = end.duration_since(first).as_secs_f64();
        tracing::info!("prefill: {prompt_len} tokens in {prefill:.3} s");
        tracing::info!(
            "decode: {decoded} tokens in {decode:.3} s ({:.1} tokens/s)",
            decoded as f64 / decode.max(1e-9)
        );
    }
    Ok(())
}
