//! The parts of onnxruntime-genai's genai_config.json that drive a decoder-only model
//! (onnxruntime-genai src/config.h: model.decoder inputs/outputs name patterns, KV cache geometry,
//! token ids, session options, search defaults). Other fields are accepted and ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Result, RuntimeError};

/// File name of the config inside an exported folder.
pub const CONFIG_FILE: &str = "genai_config.json";

#[derive(Debug, Clone, Deserialize)]
pub struct GenaiConfig {
    pub model: ModelSection,
    #[serde(default)]
    pub search: SearchSection,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelSection {
    /// Architecture name (`llama`, `phi3`, `qwen2`, `mistral`, ...).
    #[serde(rename = "type")]
    pub model_type: String,
    /// Longest sequence the model supports, prompt included.
    pub context_length: usize,
    pub decoder: DecoderSection,
    /// One id or a list of ids that end generation.
    pub eos_token_id: TokenIds,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(default)]
    pub bos_token_id: Option<i64>,
    pub vocab_size: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DecoderSection {
    /// The ONNX file, relative to the folder.
    pub filename: String,
    pub head_size: usize,
    pub num_hidden_layers: usize,
    pub num_key_value_heads: usize,
    pub inputs: DecoderInputs,
    pub outputs: DecoderOutputs,
    #[serde(default)]
    pub session_options: SessionOptions,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DecoderInputs {
    pub input_ids: String,
    #[serde(default)]
    pub attention_mask: Option<String>,
    #[serde(default)]
    pub position_ids: Option<String>,
    /// Pattern with `%d` for the layer, e.g. `past_key_values.%d.key`.
    pub past_key_names: String,
    pub past_value_names: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DecoderOutputs {
    pub logits: String,
    pub present_key_names: String,
    pub present_value_names: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SessionOptions {
    /// One object per execution provider, e.g. `{"cuda": {...}}`; empty means CPU.
    #[serde(default)]
    pub provider_options: Vec<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub intra_op_num_threads: Option<usize>,
    #[serde(default)]
    pub inter_op_num_threads: Option<usize>,
}

/// Search defaults; the command line overrides them.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SearchSection {
    pub do_sample: bool,
    pub max_length: Option<usize>,
    pub top_k: usize,
    pub top_p: f32,
    pub temperature: f32,
}

impl Default for SearchSection {
    /// onnxruntime-genai's defaults (src/config.h `Search`).
    fn default() -> Self {
        SearchSection {
            do_sample: false,
            max_length: None,
            top_k: 50,
            top_p: 1.0,
            temperature: 1.0,
        }
    }
}

impl GenaiConfig {
    /// Reads `folder/genai_config.json`.
    pub fn load(folder: &Path) -> Result<Self> {
        let path = folder.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| RuntimeError::Io {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path)
    }

    /// Parses the text of a genai_config.json; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let config: GenaiConfig =
            serde_json::from_str(text).map_err(|e| config_error(path, e.to_string()))?;
        let decoder = &config.model.decoder;
        for (field, pattern) in [
            (
                "model.decoder.inputs.past_key_names",
                &decoder.inputs.past_key_names,
            ),
            (
                "model.decoder.inputs.past_value_names",
                &decoder.inputs.past_value_names,
            ),
            (
                "model.decoder.outputs.present_key_names",
                &decoder.outputs.present_key_names,
            ),
            (
                "model.decoder.outputs.present_value_names",
                &decoder.outputs.present_value_names,
            ),
        ] {
            if pattern.matches("%d").count() != 1 {
                return Err(config_error(
                    path,
                    format!("{field} is {pattern:?}; expected a name pattern with one %d for the layer index"),
                ));
            }
        }
        for (field, value) in [
            ("model.decoder.num_hidden_layers", decoder.num_hidden_layers),
            (
                "model.decoder.num_key_value_heads",
                decoder.num_key_value_heads,
            ),
            ("model.decoder.head_size", decoder.head_size),
            ("model.vocab_size", config.model.vocab_size),
            ("model.context_length", config.model.context_length),
        ] {
            if value == 0 {
                return Err(config_error(
                    path,
                    format!("{field} is 0; expected a positive number"),
                ));
            }
        }
        Ok(config)
    }

    /// Every id that ends generation.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.model.eos_token_id.to_vec()
    }
}

/// `pattern` with its `%d` replaced by `layer`.
pub fn layer_name(pattern: &str, layer: usize) -> String {
    pattern.replacen("%d", &layer.to_string(), 1)
}

fn config_error(path: &Path, reason: String) -> RuntimeError {
    RuntimeError::Config {
        path: PathBuf::from(path),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What onnxruntime-genai 0.18's builder writes for SmolLM2-135M (fp32, cpu).
    const BUILDER_CONFIG: &str = r#"{
        "model": {
            "bos_token_id": 1, "context_length": 8192,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx", "head_size": 64, "hidden_size": 576,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3
            },
            "eos_token_id": 2, "pad_token_id": 2, "type": "llama", "vocab_size": 49152
        },
        "search": {"diversity_penalty": 0.0, "do_sample": false, "early_stopping": true, "length_penalty": 1.0,
                   "max_length": 8192, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": true, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 50, "top_p": 1.0}
    }"#;

    #[test]
    fn reads_what_the_genai_builder_writes() {
        let config =
            GenaiConfig::parse(BUILDER_CONFIG, Path::new("genai_config.json")).expect("parses");
        let decoder = &config.model.decoder;
        assert_eq!(decoder.filename, "model.onnx");
        assert_eq!(
            (
                decoder.num_hidden_layers,
                decoder.num_key_value_heads,
                decoder.head_size
            ),
            (30, 3, 64)
        );
        assert_eq!(
            layer_name(&decoder.inputs.past_key_names, 7),
            "past_key_values.7.key"
        );
        assert_eq!(
            layer_name(&decoder.outputs.present_value_names, 29),
            "present.29.value"
        );
        assert_eq!(config.eos_token_ids(), vec![2]);
        assert_eq!(config.search.top_k, 50);
        assert_eq!(config.search.max_length, Some(8192));
        assert!(decoder.session_options.provider_options.is_empty());
    }

    #[test]
    fn eos_may_be_a_list() {
        let text = BUILDER_CONFIG.replace(r#""eos_token_id": 2"#, r#""eos_token_id": [2, 0]"#);
        let config = GenaiConfig::parse(&text, Path::new("g.json")).expect("parses");
        assert_eq!(config.eos_token_ids(), vec![2, 0]);
    }

    #[test]
    fn missing_field_is_named() {
        let text = BUILDER_CONFIG.replace(r#""head_size": 64,"#, "");
        let err = GenaiConfig::parse(&text, Path::new("x/genai_config.json"))
            .expect_err("head_size is required");
        let message = err.to_string();
        assert!(
            message.contains("x/genai_config.json") && message.contains("head_size"),
            "{message}"
        );
    }

    #[test]
    fn pattern_without_layer_is_refused() {
        let text = BUILDER_CONFIG.replace("present.%d.key", "present.key");
        let err = GenaiConfig::parse(&text, Path::new("genai_config.json")).expect_err("no %d");
        assert!(err.to_string().contains("present_key_names"), "{err}");
    }
}
