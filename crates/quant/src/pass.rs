//! What the `Rtn`, `AutoAWQQuantizer` and `GptqQuantizer` pass plugins share (feature `pass`): the grid, module
//! and calibration fields of their configs (Olive's names: bits, group_size with −1 per channel, sym; the
//! calibration data as olive_data's `DataConfig`), the calibration windows, and running [`quantize_model`]
//! with the host's progress bar, log and cancellation.

use olive_data::{calibration_samples, DataConfig, ModelTokenizer};
use olive_pass_sdk::{kinds, Context, Error, Model};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::error::QuantError;
use crate::grid::QuantSpec;
use crate::stream::{
    quantize_model, ErrorMetric, Event, Method, OutputFormat, QuantizeOptions, Selected,
};

/// Calibration windows when the config names none: 16 windows of 512 tokens (≈ 8k tokens, about the size of the
/// project's calibration text), which keeps AWQ and GPTQ of the default model at a few minutes on 2 cores.
pub const DEFAULT_SAMPLES: usize = 16;
/// Tokens per calibration window by default.
pub const DEFAULT_SEQ_LEN: usize = 512;

/// The output layout a config asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// AWQ: AutoAWQ GEMM when every linear fits it (4 bits, group dividing in_features), else GPTQ v1;
    /// RTN and GPTQ: GPTQ v1.
    #[default]
    Auto,
    /// GPTQ v1 (`quant_method: gptq`).
    Gptq,
    /// AutoAWQ GEMM (`quant_method: awq`, `version: gemm`).
    Awq,
    /// Olive's own (`quant_method: olive`; the layout quantized embeddings need).
    Olive,
}

/// The fields every quantizer pass has, gathered from its typed config.
#[derive(Debug, Clone)]
pub struct Common {
    pub bits: u8,
    pub group_size: i64,
    pub sym: bool,
    pub modules: Vec<String>,
    /// Quantize the lm_head too (Olive's `lm_head`; also on when `modules` names it).
    pub lm_head: bool,
    /// Quantize the embeddings (Olive's `embeds`, Rtn only; also on when `modules` names embed_tokens).
    pub embeds: bool,
    pub data_config: Option<DataConfig>,
    pub n_samples: Option<usize>,
    pub seq_len: Option<usize>,
    pub seed: u64,
    pub format: Format,
    /// Olive's per-module `overrides` (module name -> bits / symmetric / group_size).
    pub overrides: Option<Overrides>,
    /// GPUs the decoder layers are spread over with device gpu (olive-rs's `num_gpus`; 1: GPU 0).
    pub num_gpus: usize,
}

/// Olive's `overrides`: per-module settings keyed by module name.
pub type Overrides = serde_json::Map<String, serde_json::Value>;

/// Declares a quantizer pass's typed config: the fields every quantizer has (`bits`, `group_size`, `sym`,
/// `modules`, `lm_head`, `format`, `data_config`, `n_samples`, `seq_len`, `seed`, `overrides`, with Olive's names
/// and this module's defaults, and olive-rs's own `num_gpus`), then the method's own, in one struct with
/// `deny_unknown_fields` (serde's `flatten` would lose that) and a JSON schema listing every field. `bits` and
/// `format` take per-pass doc lines; the struct gets `fn common(&self) -> Common`. The plugin crate needs serde,
/// schemars and olive_data as dependencies.
#[macro_export]
macro_rules! quantizer_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            bits: $bits_doc:literal,
            format: $format_doc:literal,
            $(
                $(#[$fmeta:meta])*
                pub $field:ident : $ty:ty,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            #[doc = $bits_doc]
            #[serde(default = "olive_quant::pass::default_bits")]
            pub bits: u8,
            /// Inputs per quantization group (32, 64, 128, ...; one that does not divide in_features leaves a
            /// shorter last group); -1: one group per output channel.
            #[serde(default = "olive_quant::pass::default_group_size")]
            pub group_size: i64,
            /// Symmetric grid (zero point 2^(bits-1)); false: asymmetric min-max grid.
            #[serde(default)]
            pub sym: bool,
            /// Modules to quantize: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (Phi-3: qkv_proj,
            /// gate_up_proj) and lm_head; default every decoder linear. embed_tokens is not quantized.
            #[serde(default = "olive_quant::pass::default_modules")]
            pub modules: Vec<String>,
            /// Quantize the lm_head too (Olive's lm_head; GPTQ v1 layout with lm_head true; a tied model is
            /// untied).
            #[serde(default)]
            pub lm_head: bool,
            #[doc = $format_doc]
            #[serde(default)]
            pub format: olive_quant::pass::Format,
            /// Calibration dataset (Olive's dataset flags); null: the project's calibration text
            /// (data/calibration.txt).
            #[serde(default)]
            #[schemars(schema_with = "olive_quant::pass::data_config_schema")]
            pub data_config: Option<olive_data::DataConfig>,
            /// Calibration windows (default: data_config.max_samples, else 16).
            #[serde(default)]
            pub n_samples: Option<usize>,
            /// Tokens per calibration window (default 512).
            #[serde(default)]
            pub seq_len: Option<usize>,
            /// Seed of the calibration windows' offsets.
            #[serde(default = "olive_quant::pass::default_seed")]
            pub seed: u64,
            /// Olive's per-module overrides (module name -> bits / symmetric / group_size): only null or empty
            /// here; every module takes the pass's one setting.
            #[serde(default)]
            pub overrides: Option<olive_quant::pass::Overrides>,
            /// olive-rs extension (not an Olive option): with device gpu, the decoder layers are spread over
            /// GPUs 0..num_gpus of this host in contiguous blocks, each layer calibrated on its GPU; the output is
            /// byte-identical to one GPU's. More than 1 needs device gpu and that many CUDA devices.
            #[serde(default = "olive_quant::pass::default_num_gpus")]
            pub num_gpus: usize,
            $(
                $(#[$fmeta])*
                pub $field: $ty,
            )*
        }

        impl $name {
            /// The fields every quantizer has.
            pub fn common(&self) -> olive_quant::pass::Common {
                olive_quant::pass::Common {
                    bits: self.bits,
                    group_size: self.group_size,
                    sym: self.sym,
                    modules: self.modules.clone(),
                    lm_head: self.lm_head,
                    embeds: false,
                    data_config: self.data_config.clone(),
                    n_samples: self.n_samples,
                    seq_len: self.seq_len,
                    seed: self.seed,
                    format: self.format,
                    overrides: self.overrides.clone(),
                    num_gpus: self.num_gpus,
                }
            }
        }
    };
}

/// Default of `bits`.
pub fn default_bits() -> u8 {
    4
}

/// Default of `group_size`.
pub fn default_group_size() -> i64 {
    128
}

/// Default of `modules`: every decoder linear.
pub fn default_modules() -> Vec<String> {
    [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    .map(String::from)
    .to_vec()
}

/// Default of `num_gpus`: one GPU (or the CPU).
pub fn default_num_gpus() -> usize {
    1
}

/// Default of `seed`.
pub fn default_seed() -> u64 {
    42
}

/// The JSON schema of `data_config` (olive_data's `DataConfig`, an object with Olive's dataset flags).
pub fn data_config_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": ["object", "null"],
        "description": "Calibration dataset (olive_data DataConfig: data_name, data_files, text_field, text_template, \
                        use_chat_template, max_seq_len, max_samples, ...); null: the project's calibration text"
    })
}

fn invalid(e: QuantError) -> Error {
    match e {
        QuantError::Cancelled => Error::Cancelled,
        QuantError::AlreadyQuantized { .. } | QuantError::Model(_) => {
            Error::UnsupportedModel(e.to_string())
        }
        QuantError::Io { .. } | QuantError::Json { .. } | QuantError::Nn(_) => {
            Error::Failed(e.to_string())
        }
        other => Error::InvalidConfig(other.to_string()),
    }
}

/// The device of the pass's `device` and the config's `num_gpus`.
fn device(device: &str, num_gpus: usize) -> Result<crate::Device, Error> {
    match (device, num_gpus) {
        (_, 0) => Err(Error::InvalidConfig(
            "num_gpus 0: expected 1 or more GPUs to spread the decoder layers over".into(),
        )),
        ("cpu", 1) => Ok(crate::Device::Cpu),
        ("cpu", n) => Err(Error::InvalidConfig(format!(
            "num_gpus {n}: spreading the decoder layers over GPUs needs device gpu (the workflow's accelerator \
             device; quantize --device gpu); this pass runs on cpu"
        ))),
        ("gpu", n) => {
            if n > 1 {
                let found = olive_kernels::cuda::Gpu::count()
                    .map_err(|e| Error::InvalidConfig(format!("num_gpus {n}: {e}")))?;
                if n > found {
                    return Err(Error::InvalidConfig(format!(
                        "num_gpus {n}: the driver reports {found} CUDA device(s) on this machine"
                    )));
                }
            }
            Ok(crate::Device::Gpu { count: n })
        }
        (other, _) => Err(Error::InvalidConfig(format!(
            "device `{other}`: the quantizers run on cpu or gpu"
        ))),
    }
}

/// Runs `method` on the model with the common fields, writing into the context's output folder.
pub fn run(
    model: Model,
    common: Common,
    method: Method,
    ctx: &Context<'_>,
) -> Result<Model, Error> {
    let group_size = match common.group_size {
        -1 => None,
        g if g > 0 => Some(g as usize),
        g => {
            return Err(Error::InvalidConfig(format!(
                "group_size {g}: expected a positive number of inputs per group (32, 64, 128, ...) or -1 for one \
                 group per output channel"
            )))
        }
    };
    if let Some(module) = common.overrides.as_ref().and_then(|o| o.keys().next()) {
        return Err(Error::InvalidConfig(format!(
            "overrides.{module}: per-module settings (mixed precision) are not supported; every module takes the \
             pass's bits, sym and group_size (leave overrides null or empty)"
        )));
    }
    let (modules, lm_head, embeds) = Selected::from_names(&common.modules).map_err(invalid)?;
    let embeds = embeds || common.embeds;
    if embeds && !matches!(method, Method::Rtn) {
        return Err(Error::InvalidConfig(
            "modules: embed_tokens: only the Rtn pass quantizes embeddings (as in Olive)".into(),
        ));
    }
    let options = QuantizeOptions {
        method,
        spec: QuantSpec {
            bits: common.bits,
            group_size,
            sym: common.sym,
        },
        modules,
        lm_head: lm_head || common.lm_head,
        embeds,
        format: match common.format {
            Format::Auto => OutputFormat::Auto,
            Format::Gptq => OutputFormat::GptqV1,
            Format::Awq => OutputFormat::AwqGemm,
            Format::Olive => OutputFormat::Olive,
        },
        device: device(&ctx.device(), common.num_gpus)?,
    };
    options.spec.validate().map_err(invalid)?;
    let windows = if matches!(method, Method::Rtn) && common.data_config.is_none() {
        Vec::new()
    } else {
        let n = common
            .n_samples
            .or(common.data_config.as_ref().and_then(|d| d.max_samples))
            .unwrap_or(DEFAULT_SAMPLES);
        let seq_len = common.seq_len.unwrap_or(DEFAULT_SEQ_LEN);
        let tok = ModelTokenizer::load(&model.path)
            .map_err(|e| Error::UnsupportedModel(e.to_string()))?;
        let windows =
            calibration_samples(common.data_config.as_ref(), &tok, n, seq_len, common.seed)
                .map_err(|e| Error::InvalidConfig(format!("calibration data: {e}")))?;
        ctx.info(&format!(
            "calibration: {} windows of {seq_len} tokens from {}",
            windows.len(),
            if common.data_config.is_some() {
                "the dataset"
            } else {
                "the project's calibration text"
            }
        ));
        windows
    };
    let out = ctx.output_dir();
    let summary = quantize_model(&model.path, &out, &options, &windows, &mut |event| {
        match event {
            Event::Log(line) => ctx.info(line),
            Event::Layer(r) => {
                let what = match r.metric {
                    ErrorMetric::Output => "output error",
                    ErrorMetric::Weight => "weight error",
                };
                let line = format!(
                    "layer {}/{}: {what} {:.3e} ({:.1} s)",
                    r.index + 1,
                    r.layers,
                    r.error,
                    r.seconds
                );
                ctx.progress(r.index as u64 + 1, r.layers as u64, &line);
                ctx.debug(&line);
            }
        }
        !ctx.is_cancelled()
    })
    .map_err(invalid)?;
    ctx.info(&format!(
        "quantized {} linears of {} layers to {} bits in {:.1} s ({:?}); mean layer error {:.3e}",
        summary.quantized_linears,
        summary.layers,
        common.bits,
        summary.seconds,
        summary.format,
        summary.mean_error
    ));
    let mut output = Model::new(kinds::HF, &out);
    output.metadata.insert(
        "quant_method".into(),
        match summary.format {
            OutputFormat::AwqGemm => "awq",
            OutputFormat::Olive => "olive",
            _ => "gptq",
        }
        .into(),
    );
    output.metadata.insert("bits".into(), common.bits.into());
    output
        .metadata
        .insert("group_size".into(), common.group_size.into());
    output
        .metadata
        .insert("mean_layer_error".into(), summary.mean_error.into());
    Ok(output)
}

/// Test support for the quantizer plugins: a tiny random Llama folder with a word-level tokenizer.
pub mod testing {
    use std::path::Path;

    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    use serde_json::json;

    /// Writes config.json, model.safetensors (2 layers, hidden 64, 4 heads / 2 KV heads, intermediate 128,
    /// vocab 64, random weights from `seed`), tokenizer.json (word level, whitespace split; unknown words map to
    /// `<unk>`) and tokenizer_config.json into `dir`.
    pub fn write_tiny_llama(dir: &Path, seed: u64) -> std::io::Result<()> {
        let (hidden, heads, kv_heads, head_dim, inter, layers, vocab) = (64, 4, 2, 16, 128, 2, 64);
        std::fs::create_dir_all(dir)?;
        let config = json!({
            "model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "vocab_size": vocab, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": true, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2
        });
        std::fs::write(dir.join("config.json"), config.to_string())?;
        let words = [
            "<unk>", "<s>", "</s>", "the", "a", "of", "and", "to", "in", "is", "for", "you", "it",
            "on", "with", "that", "are", "as", "can", "at", "or", "your", "be", "this", "from",
            "by", "an", "most", "best",
        ];
        let vocab_map: serde_json::Map<String, serde_json::Value> = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), json!(i)))
            .collect();
        let tok = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null,
            "decoder": null, "model": {"type": "WordLevel", "vocab": vocab_map, "unk_token": "<unk>"}});
        std::fs::write(dir.join("tokenizer.json"), tok.to_string())?;
        std::fs::write(
            dir.join("tokenizer_config.json"),
            json!({"eos_token": "</s>", "bos_token": "<s>"}).to_string(),
        )?;
        let mut state = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut uniform = move |scale: f32| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        };
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        let (q, kv) = (heads * head_dim, kv_heads * head_dim);
        let mut lin =
            |name: String, out: usize, inp: usize, t: &mut Vec<(String, Vec<usize>, Vec<f32>)>| {
                let s = 1.0 / (inp as f32).sqrt();
                t.push((
                    name,
                    vec![out, inp],
                    (0..out * inp).map(|_| uniform(s)).collect(),
                ));
            };
        lin(
            "model.embed_tokens.weight".into(),
            vocab,
            hidden,
            &mut tensors,
        );
        for i in 0..layers {
            let p = format!("model.layers.{i}");
            for (n, o, k) in [
                ("self_attn.q_proj", q, hidden),
                ("self_attn.k_proj", kv, hidden),
                ("self_attn.v_proj", kv, hidden),
                ("self_attn.o_proj", hidden, q),
                ("mlp.gate_proj", inter, hidden),
                ("mlp.up_proj", inter, hidden),
                ("mlp.down_proj", hidden, inter),
            ] {
                lin(format!("{p}.{n}.weight"), o, k, &mut tensors);
            }
            for n in ["input_layernorm", "post_attention_layernorm"] {
                tensors.push((format!("{p}.{n}.weight"), vec![hidden], vec![1.0; hidden]));
            }
        }
        tensors.push(("model.norm.weight".into(), vec![hidden], vec![1.0; hidden]));
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
            .collect();
        let views = bytes
            .iter()
            .map(|(n, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(std::io::Error::other)?;
        safetensors::serialize_to_file(views, None, &dir.join("model.safetensors"))
            .map_err(std::io::Error::other)
    }
}
