//! The model under evaluation, run one way or the other: a Hugging Face folder (kind `hf`) on the CPU
//! transformer of olive-nn, with PEFT LoRA adapters (kind `hf+adapter`, `adapter_paths`) merged into its weights
//! (W += scale·B·A, as PEFT's merge_and_unload), or an ONNX export (kind `onnx`: a folder with genai_config.json,
//! or its model.onnx) through ONNX Runtime (olive-runtime), optionally with an `.onnx_adapter` from
//! `adapter_paths` active. A Hugging Face folder on `--device gpu` runs on olive-nn's GPU transformer (adapters
//! merged on the host first). On the CPU a quantized folder (AWQ, GPTQ, Olive RTN) stays int4 as `generate` loads
//! it (the CPU int4 kernels' layout, a quarter of the f32 memory or less), with fp32 activations
//! (`QuantizedWeights::Int4Fp32`): its perplexity is the checkpoint's, that of its weights dequantized, up to f32
//! summation order (int8 activations, generate's, would move it: +0.33% on the default model's AWQ folder).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use olive_model::adapter::LoraAdapter;
use olive_nn::train::{LoraTrainer, TrainConfig};
use olive_nn::{GpuTransformer, QuantizedWeights, Transformer};
use olive_pass_api::{kinds, Model};
use olive_runtime::{OnnxModel, SearchOptions};

use crate::device::{first_gpu, Device};

/// A loaded model.
pub enum Runner {
    Cpu(Box<Transformer>),
    Gpu(Box<GpuTransformer>),
    Onnx(Box<OnnxModel>),
}

/// The folder holding the model's files (and its tokenizer).
pub fn model_folder(model: &Model) -> anyhow::Result<PathBuf> {
    let p = &model.path;
    match model.kind.as_str() {
        kinds::HF | kinds::HF_ADAPTER => {
            if !p.join("config.json").is_file() {
                bail!(
                    "{}: not a Hugging Face model folder (no config.json)",
                    p.display()
                );
            }
            Ok(p.clone())
        }
        kinds::ONNX => {
            let folder = if p.is_file() {
                p.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                p.clone()
            };
            if !olive_runtime::is_onnx_folder(&folder) {
                bail!(
                    "{}: not an ONNX model folder (no genai_config.json or model.onnx)",
                    p.display()
                );
            }
            Ok(folder)
        }
        other => bail!(
            "{}: model kind {other:?} cannot be evaluated (hf or onnx)",
            p.display()
        ),
    }
}

/// `model` with the PEFT LoRA adapter in folder `adapter` merged into its weights.
fn merge_adapter(model: Transformer, adapter: &Path) -> anyhow::Result<Transformer> {
    let what = || format!("merging the PEFT adapter {}", adapter.display());
    let lora = LoraAdapter::open(adapter).with_context(what)?;
    lora.check(model.config()).with_context(what)?;
    let weights = lora.weights().to_vec();
    let merged = LoraTrainer::with_adapter(model, weights, 0.0, TrainConfig::default())
        .and_then(|t| t.merged_model())
        .with_context(what)?;
    Ok(merged)
}

impl Runner {
    /// Loads `model` (see the module doc) on `device`.
    pub fn load(model: &Model, device: Device) -> anyhow::Result<Runner> {
        let folder = model_folder(model)?;
        if model.kind == kinds::HF || model.kind == kinds::HF_ADAPTER {
            if model.kind == kinds::HF_ADAPTER && model.adapter_paths.is_empty() {
                bail!(
                    "{}: a model of kind hf+adapter lists no adapter_paths",
                    folder.display()
                );
            }
            let loading = || format!("loading {}", folder.display());
            if device == Device::Gpu && model.adapter_paths.is_empty() {
                let t = GpuTransformer::load(&folder, first_gpu()?).with_context(loading)?;
                return Ok(Runner::Gpu(Box::new(t)));
            }
            // The GPU transformer takes dense weights; the CPU keeps a quantized folder int4.
            let mode = match device {
                Device::Cpu => QuantizedWeights::Int4Fp32,
                Device::Gpu => QuantizedWeights::Dequantize,
            };
            let mut t = Transformer::load_with(&folder, mode).with_context(loading)?;
            for adapter in &model.adapter_paths {
                t = merge_adapter(t, adapter)?;
            }
            if device == Device::Gpu {
                let t = GpuTransformer::from_cpu(&t, first_gpu()?).with_context(loading)?;
                return Ok(Runner::Gpu(Box::new(t)));
            }
            return Ok(Runner::Cpu(Box::new(t)));
        }
        if device == Device::Gpu {
            bail!(
                "{}: --device gpu runs Hugging Face folders on olive-rs's CUDA kernels; ONNX models run through \
                 ONNX Runtime's CPU execution provider here (no CUDA execution provider yet): use --device cpu",
                folder.display()
            );
        }
        let mut m = OnnxModel::load(&folder)?;
        for adapter in &model.adapter_paths {
            if adapter.extension().and_then(|e| e.to_str()) != Some("onnx_adapter") {
                bail!(
                    "{}: an ONNX model takes .onnx_adapter files as adapters",
                    adapter.display()
                );
            }
            m.activate_adapter(adapter, &adapter.display().to_string())?;
        }
        Ok(Runner::Onnx(Box::new(m)))
    }

    /// Longest sequence the model takes (max_position_embeddings, or the export's context_length).
    pub fn context_length(&self) -> usize {
        match self {
            Runner::Cpu(t) => t.config().max_position_embeddings,
            Runner::Gpu(t) => t.config().max_position_embeddings,
            Runner::Onnx(m) => m.config().model.context_length,
        }
    }

    /// The logits of every position of `ids` from an empty cache: [ids.len(), vocab].
    pub fn logits(&mut self, ids: &[u32]) -> anyhow::Result<Vec<f32>> {
        Ok(match self {
            Runner::Cpu(model) => model.forward(ids, &mut model.new_cache(ids.len()))?,
            Runner::Gpu(model) => model.forward(ids, &mut model.new_cache(ids.len())?)?,
            Runner::Onnx(model) => model.logits(ids)?,
        })
    }

    /// For each continuation, the logits of the rows that predict its tokens after `prefix`:
    /// [cont.len(), vocab]. The CPU transformer runs the prefix once and each continuation from its cached keys
    /// and values; ONNX Runtime runs prefix + continuation from an empty cache.
    pub fn continuation_logits(
        &mut self,
        prefix: &[u32],
        conts: &[&[u32]],
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        if prefix.is_empty() || conts.iter().any(|c| c.is_empty()) {
            bail!("a continuation needs a non-empty prefix and at least one token");
        }
        let longest = conts.iter().map(|c| c.len()).max().unwrap_or(0);
        match self {
            Runner::Cpu(model) => {
                let mut cache = model.new_cache(prefix.len() + longest);
                let prefix_logits = model.forward(prefix, &mut cache)?;
                continue_from(prefix.len(), &prefix_logits, conts, |tokens| {
                    cache.truncate(prefix.len());
                    Ok(model.forward(tokens, &mut cache)?)
                })
            }
            Runner::Gpu(model) => {
                let mut cache = model.new_cache(prefix.len() + longest)?;
                let prefix_logits = model.forward(prefix, &mut cache)?;
                continue_from(prefix.len(), &prefix_logits, conts, |tokens| {
                    cache.truncate(prefix.len());
                    Ok(model.forward(tokens, &mut cache)?)
                })
            }
            Runner::Onnx(model) => conts
                .iter()
                .map(|cont| {
                    let whole: Vec<u32> = prefix.iter().chain(cont.iter()).copied().collect();
                    let logits = model.logits(&whole)?;
                    let vocab = logits.len() / whole.len();
                    Ok(logits[(prefix.len() - 1) * vocab..(whole.len() - 1) * vocab].to_vec())
                })
                .collect(),
        }
    }

    /// Greedy decoding of `new_tokens` tokens after `prompt` (no end-of-sequence stop), timing each step:
    /// `on_step(i, d)` gets step 0 = the prompt's forward to the first token (prefill), then one decode step each.
    /// Sleeps `sleep` after each step, outside the timing.
    pub fn timed_generate(
        &mut self,
        prompt: &[u32],
        new_tokens: usize,
        sleep: Duration,
        mut on_step: impl FnMut(usize, Duration),
    ) -> anyhow::Result<()> {
        let max_length = prompt.len() + new_tokens;
        if max_length > self.context_length() {
            bail!(
                "{} prompt tokens + {new_tokens} new tokens exceed the model's context length {}; lower \
                 prompt_length, warmup_num or repeat_test_num",
                prompt.len(),
                self.context_length()
            );
        }
        let mut step = 0;
        let mut last = Instant::now();
        let mut callback = |_: u32| {
            on_step(step, last.elapsed());
            step += 1;
            if !sleep.is_zero() {
                std::thread::sleep(sleep);
            }
            last = Instant::now();
            true
        };
        let got = match self {
            Runner::Cpu(model) => model
                .generate(prompt, max_length, &[], &mut callback)?
                .len(),
            Runner::Gpu(model) => model
                .generate(prompt, max_length, &[], &mut callback)?
                .len(),
            Runner::Onnx(model) => {
                let options = SearchOptions {
                    max_length,
                    do_sample: false,
                    top_k: 1,
                    top_p: 1.0,
                    temperature: 1.0,
                    seed: Some(0),
                    eos_token_ids: Vec::new(),
                };
                model.generate(prompt, &options, &mut callback)?.len()
            }
        };
        if got != new_tokens {
            bail!("generated {got} tokens, expected {new_tokens}");
        }
        Ok(())
    }
}

/// The logits predicting each continuation's tokens: the prefix's last row, then the rows of
/// `forward(cont[..len − 1])` run after the cached prefix ([cont.len(), vocab] each).
fn continue_from(
    prefix_len: usize,
    prefix_logits: &[f32],
    conts: &[&[u32]],
    mut forward: impl FnMut(&[u32]) -> anyhow::Result<Vec<f32>>,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let vocab = prefix_logits.len() / prefix_len;
    // the prefix's last row predicts each continuation's first token
    let last = &prefix_logits[(prefix_len - 1) * vocab..];
    let mut out = Vec::with_capacity(conts.len());
    for cont in conts {
        let mut l = Vec::with_capacity(cont.len() * vocab);
        l.extend_from_slice(last);
        if cont.len() > 1 {
            l.extend_from_slice(&forward(&cont[..cont.len() - 1])?);
        }
        out.push(l);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::perplexity::perplexity;
    use olive_model::quantized::pack_gptq_v1;
    use olive_model::Checkpoint;
    use olive_quant::QuantSpec;
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;

    /// Perplexity of the int4 load against the same folder dequantized at load, relative: the same f32
    /// products, tiled over the outputs (measured equal to the last bit on the tiny model; a GEMM blocked
    /// otherwise may sum in another order).
    const PPL_REL: f64 = 1e-5;
    /// Inputs per quantization group.
    const GROUP: usize = 32;

    /// The golden tiny mistral (hidden 64, intermediate 160) with its decoder linears as GPTQ v1 int4 (asymmetric
    /// round-to-nearest, groups of [`GROUP`]).
    fn quantized_tiny(dst: &Path) {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/out/mistral/model");
        assert!(
            src.is_dir(),
            "{} is missing: run scripts/test.sh (it writes the golden models)",
            src.display()
        );
        let ckpt = Checkpoint::open(&src).unwrap();
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for name in ckpt.names() {
            let t = ckpt.tensor_f32(name).unwrap();
            match name.strip_suffix(".weight") {
                Some(prefix)
                    if prefix.starts_with("model.layers.") && prefix.ends_with("_proj") =>
                {
                    let spec = QuantSpec {
                        bits: 4,
                        group_size: Some(GROUP),
                        sym: false,
                    };
                    let q = olive_quant::rtn(&t.data, t.shape[0], t.shape[1], &spec).unwrap();
                    for (suffix, dtype, shape, bytes) in pack_gptq_v1(&q).unwrap() {
                        tensors.push((format!("{prefix}.{suffix}"), dtype, shape, bytes));
                    }
                }
                _ => {
                    let bytes = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                    tensors.push((name.to_string(), Dtype::F32, t.shape.clone(), bytes));
                }
            }
        }
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &dst.join("model.safetensors")).unwrap();
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap())
                .unwrap();
        config["quantization_config"] = serde_json::json!({"quant_method": "gptq", "bits": 4,
            "group_size": GROUP, "desc_act": false, "sym": false});
        std::fs::write(dst.join("config.json"), config.to_string()).unwrap();
    }

    #[test]
    fn a_quantized_folder_stays_int4_with_the_dequantized_perplexity() {
        let dir = tempfile::tempdir().unwrap();
        quantized_tiny(dir.path());
        let mut int4 = Runner::load(&Model::new(kinds::HF, dir.path()), Device::Cpu).unwrap();
        let Runner::Cpu(t) = &int4 else {
            panic!("a Hugging Face folder on the CPU runs on olive-nn")
        };
        assert!(t
            .layers()
            .iter()
            .all(|l| l.qkv_proj.int4.is_some() && l.down_proj.int4.is_some()));
        let mut dense = Runner::Cpu(Box::new(Transformer::load(dir.path()).unwrap()));
        // Windows of 40 tokens (the tiled GEMMs) and a last one of 9.
        let ids: Vec<u32> = (0..129u32).map(|i| (i * 37 + 11) % 300).collect();
        let (got, want) = (
            perplexity(&mut int4, &ids, 40, None).unwrap().perplexity(),
            perplexity(&mut dense, &ids, 40, None).unwrap().perplexity(),
        );
        let rel = (got - want).abs() / want;
        assert!(
            rel <= PPL_REL,
            "perplexity int4 {got} vs dequantized {want} (rel {rel:.2e})"
        );
        // A few tokens go through the int4 kernels' fp32 path.
        let (a, b) = (
            int4.logits(&ids[..3]).unwrap(),
            dense.logits(&ids[..3]).unwrap(),
        );
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff <= 1e-5 * scale,
            "logits of 3 tokens: max diff {diff} (scale {scale})"
        );
    }
}
