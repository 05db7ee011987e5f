//! A decoder-only ONNX model as onnxruntime-genai lays it out (genai_config.json + model.onnx with
//! `input_ids`, `attention_mask`, `past_key_values.N.key/value` in and `logits`, `present.N.key/value`
//! out), run step by step through ONNX Runtime with the KV cache fed back, optionally with a LoRA
//! adapter (ONNX Runtime's .onnx_adapter, `RunOptionsAddActiveLoraAdapter`) active.

use std::path::{Path, PathBuf};

use half::f16;
use ort::session::{Adapter, RunOptions, Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType};

use crate::config::{GenaiConfig, CONFIG_FILE};
use crate::error::{Result, RuntimeError};
use crate::io::GraphIo;
use crate::sampling::{Sampler, SearchOptions};

/// The file an ONNX folder without genai_config.json would hold.
pub const DEFAULT_MODEL_FILE: &str = "model.onnx";

/// Whether `path` is a folder to run with ONNX Runtime (genai_config.json or model.onnx inside).
pub fn is_onnx_folder(path: &Path) -> bool {
    path.is_dir() && (path.join(CONFIG_FILE).is_file() || path.join(DEFAULT_MODEL_FILE).is_file())
}

/// Which logits a step returns.
#[derive(Debug, Clone, Copy)]
enum Rows {
    Last,
    All,
}

/// The past key and value of every layer, as the graph last returned them.
// layers[l]: (key, value), each [1, kv_heads, past_len, head_size]
type KvCache = Vec<(DynValue, DynValue)>;

/// An exported decoder, ready to generate.
pub struct OnnxModel {
    config: GenaiConfig,
    model_path: PathBuf,
    session: Session,
    run_options: RunOptions,
    /// The names a step feeds and reads.
    io: GraphIo,
    /// The adapter file and name, once one is active.
    adapter: Option<(PathBuf, String)>,
}

impl OnnxModel {
    /// Opens `folder/genai_config.json` and the model it names, and checks the graph's inputs and
    /// outputs against the config.
    pub fn load(folder: &Path) -> Result<Self> {
        if !folder.join(CONFIG_FILE).is_file() {
            return Err(RuntimeError::Config {
                path: folder.join(CONFIG_FILE),
                reason: "not found; an ONNX model folder needs the genai_config.json that \
                         `olive-host auto-opt --use_ort_genai` (or onnxruntime-genai's builder) writes"
                    .into(),
            });
        }
        let config = GenaiConfig::load(folder)?;
        let decoder = &config.model.decoder;
        let model_path = folder.join(&decoder.filename);
        if !model_path.is_file() {
            return Err(RuntimeError::Config {
                path: folder.join(CONFIG_FILE),
                reason: format!(
                    "model.decoder.filename names {}, which does not exist",
                    model_path.display()
                ),
            });
        }
        check_provider(&config, &folder.join(CONFIG_FILE))?;

        let environment = crate::env::environment()?;
        let ort_error = |what: &str, reason: String| RuntimeError::Ort {
            path: model_path.clone(),
            what: what.to_string(),
            reason,
        };
        // Threads that sleep between ops rather than spin, as onnxruntime-genai sets them: decoding
        // runs one small graph after another, and spinning workers steal the cores the next run needs
        // (measured 1.5x faster per token here on 2 busy cores).
        let mut builder = Session::builder(environment)
            .map_err(|e| ort_error("creating the session options", e.to_string()))?
            .with_intra_op_spinning(false)
            .map_err(|e| ort_error("session.intra_op.allow_spinning", e.to_string()))?
            .with_inter_op_spinning(false)
            .map_err(|e| ort_error("session.inter_op.allow_spinning", e.to_string()))?;
        let options = &decoder.session_options;
        if let Some(n) = options.intra_op_num_threads {
            builder = builder
                .with_intra_threads(n)
                .map_err(|e| ort_error("session_options.intra_op_num_threads", e.to_string()))?;
        }
        if let Some(n) = options.inter_op_num_threads {
            builder = builder
                .with_inter_threads(n)
                .map_err(|e| ort_error("session_options.inter_op_num_threads", e.to_string()))?;
        }
        let session = builder
            .commit_from_file(&model_path)
            .map_err(|e| ort_error("loading the model", e.to_string()))?;
        let run_options =
            RunOptions::new().map_err(|e| ort_error("creating the run options", e.to_string()))?;

        let io = GraphIo::resolve(&session, &config, &model_path)?;
        Ok(OnnxModel {
            config,
            model_path,
            session,
            run_options,
            io,
            adapter: None,
        })
    }

    pub fn config(&self) -> &GenaiConfig {
        &self.config
    }

    /// The ONNX file in use.
    pub fn model_path(&self) -> &Path {
        &self.model_path
    }

    /// Activates the LoRA adapter in `file` (an .onnx_adapter) for every later run; `name` is for
    /// messages. Its parameters replace the graph inputs of the same names.
    pub fn activate_adapter(&mut self, file: &Path, name: &str) -> Result<()> {
        let adapter_error = |reason: String| RuntimeError::Adapter {
            path: file.to_path_buf(),
            name: name.to_string(),
            reason,
        };
        if !file.is_file() {
            return Err(adapter_error("no such file".into()));
        }
        let adapter = Adapter::from_file(file, None).map_err(|e| adapter_error(e.to_string()))?;
        self.run_options
            .add_adapter(&adapter)
            .map_err(|e| adapter_error(e.to_string()))?;
        self.adapter = Some((file.to_path_buf(), name.to_string()));
        Ok(())
    }

    /// Generates from `prompt` until the sequence (prompt included) reaches `options.max_length`,
    /// an end-of-sequence id comes, or `on_token` returns false. `on_token` sees every generated
    /// id, an end-of-sequence id included. Returns the generated ids.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        options: &SearchOptions,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(RuntimeError::EmptyPrompt);
        }
        let context = self.config.model.context_length;
        if options.max_length > context {
            return Err(RuntimeError::Search {
                option: "--max_length",
                reason: format!(
                    "{} is past the model's context_length {context} ({CONFIG_FILE})",
                    options.max_length
                ),
            });
        }
        let mut sampler = Sampler::new(options)?;
        let mut generated = Vec::new();
        if prompt.len() >= options.max_length {
            return Ok(generated);
        }
        let mut cache = self.empty_cache()?;
        let mut logits = self.step(prompt, 0, &mut cache, Rows::Last)?;
        loop {
            let token = sampler.next(&logits);
            generated.push(token);
            let go_on = on_token(token);
            let length = prompt.len() + generated.len();
            if !go_on || options.eos_token_ids.contains(&token) || length >= options.max_length {
                return Ok(generated);
            }
            logits = self.step(&[token], length - 1, &mut cache, Rows::Last)?;
        }
    }

    /// The logits of every position of `ids` run from an empty cache: [ids.len(), vocab] (what a
    /// perplexity needs).
    pub fn logits(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(RuntimeError::EmptyPrompt);
        }
        let mut cache = self.empty_cache()?;
        self.step(ids, 0, &mut cache, Rows::All)
    }

    /// Runs `ids` after `past_len` cached positions; returns the logits of the last one ([vocab])
    /// or of all of them ([ids.len(), vocab]), and leaves the presents in `cache`.
    fn step(
        &mut self,
        ids: &[u32],
        past_len: usize,
        cache: &mut KvCache,
        rows: Rows,
    ) -> Result<Vec<f32>> {
        let total = past_len + ids.len();
        let io = &self.io;
        let mut inputs: Vec<(String, SessionInputValue<'static>)> =
            Vec::with_capacity(3 + 2 * cache.len());
        // input_ids: [1, seq]
        let ids_i64: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        inputs.push((io.input_ids.clone(), self.index_tensor(ids.len(), ids_i64)?));
        if let Some(name) = &io.attention_mask {
            // attention_mask: [1, total]
            inputs.push((name.clone(), self.index_tensor(total, vec![1; total])?));
        }
        if let Some(name) = &io.position_ids {
            // position_ids: [1, seq]
            let positions = (past_len as i64..total as i64).collect();
            inputs.push((name.clone(), self.index_tensor(ids.len(), positions)?));
        }
        for ((key, value), (key_name, value_name)) in cache.drain(..).zip(&io.past) {
            inputs.push((key_name.clone(), key.into()));
            inputs.push((value_name.clone(), value.into()));
        }

        let what = match &self.adapter {
            Some((_, name)) => format!("running the decoder with adapter {name:?}"),
            None => "running the decoder".to_string(),
        };
        let ort_error = |reason: String| RuntimeError::Ort {
            path: self.model_path.clone(),
            what: what.clone(),
            reason,
        };
        let mut outputs = self
            .session
            .run_with_options(inputs, &self.run_options)
            .map_err(|e| ort_error(e.to_string()))?;
        for (key_name, value_name) in &io.present {
            let mut take = |name: &str| {
                outputs
                    .remove(name)
                    .ok_or_else(|| ort_error(format!("output {name:?} is missing")))
            };
            let key = take(key_name)?;
            let value = take(value_name)?;
            cache.push((key, value));
        }
        let logits = outputs
            .get(&io.logits)
            .ok_or_else(|| ort_error(format!("output {:?} is missing", io.logits)))?;
        // logits: [1, seq, vocab] (or [1, vocab] with Rows::Last); the last row is the next-token distribution.
        let kept = |shape: &[i64], len: usize| -> Result<std::ops::Range<usize>> {
            let vocab = shape.last().copied().unwrap_or(0).max(0) as usize;
            if vocab == 0 || !len.is_multiple_of(vocab) {
                return Err(ort_error(format!(
                    "logits have shape {shape:?}; expected [1, seq, vocab]"
                )));
            }
            match rows {
                Rows::Last => Ok(len - vocab..len),
                Rows::All if len == ids.len() * vocab => Ok(0..len),
                Rows::All => Err(ort_error(format!(
                    "logits have shape {shape:?}; expected one row per input id ([1, {}, vocab])",
                    ids.len()
                ))),
            }
        };
        match logits.dtype().tensor_type() {
            Some(TensorElementType::Float32) => {
                let (shape, data) = logits
                    .try_extract_tensor::<f32>()
                    .map_err(|e| ort_error(e.to_string()))?;
                Ok(data[kept(shape, data.len())?].to_vec())
            }
            Some(TensorElementType::Float16) => {
                let (shape, data) = logits
                    .try_extract_tensor::<f16>()
                    .map_err(|e| ort_error(e.to_string()))?;
                Ok(data[kept(shape, data.len())?]
                    .iter()
                    .map(|v| v.to_f32())
                    .collect())
            }
            other => Err(ort_error(format!(
                "logits have type {other:?}; expected float32 or float16"
            ))),
        }
    }

    /// A [1, len] tensor of token ids, positions or mask values in the graph's index type.
    fn index_tensor(&self, len: usize, values: Vec<i64>) -> Result<SessionInputValue<'static>> {
        let tensor = match self.io.id_type {
            TensorElementType::Int32 => {
                let values: Vec<i32> = values.into_iter().map(|v| v as i32).collect();
                Tensor::from_array(([1usize, len], values)).map(|t| t.into_dyn())
            }
            _ => Tensor::from_array(([1usize, len], values)).map(|t| t.into_dyn()),
        };
        tensor
            .map(SessionInputValue::from)
            .map_err(|e| RuntimeError::Ort {
                path: self.model_path.clone(),
                what: "creating an input tensor".into(),
                reason: e.to_string(),
            })
    }

    /// Empty past keys and values: [1, kv_heads, 0, head_size] for every layer.
    fn empty_cache(&self) -> Result<KvCache> {
        let decoder = &self.config.model.decoder;
        let shape = [1usize, decoder.num_key_value_heads, 0, decoder.head_size];
        let empty = || -> ort::Result<DynValue> {
            Ok(match self.io.kv_type {
                TensorElementType::Float16 => {
                    Tensor::<f16>::from_array((shape, Vec::new()))?.into_dyn()
                }
                _ => Tensor::<f32>::from_array((shape, Vec::new()))?.into_dyn(),
            })
        };
        let ort_error = |e: ort::Error| RuntimeError::Ort {
            path: self.model_path.clone(),
            what: "creating the empty KV cache".into(),
            reason: e.to_string(),
        };
        (0..decoder.num_hidden_layers)
            .map(|_| Ok((empty().map_err(ort_error)?, empty().map_err(ort_error)?)))
            .collect()
    }
}

/// Refuses execution providers other than CPU: the runtime creates CPU sessions only.
fn check_provider(config: &GenaiConfig, path: &Path) -> Result<()> {
    for options in &config.model.decoder.session_options.provider_options {
        if let Some(provider) = options.keys().find(|p| !p.eq_ignore_ascii_case("cpu")) {
            return Err(RuntimeError::Config {
                path: path.to_path_buf(),
                reason: format!(
                    "model.decoder.session_options.provider_options asks for {provider:?}; \
                     olive-host generate runs ONNX models on the CPU execution provider only \
                     (export with --device cpu --provider CPUExecutionProvider)"
                ),
            });
        }
    }
    Ok(())
}
