//! genai_config.json as onnxruntime-genai reads it (src/config.cpp), limited to the fields that both
//! onnxruntime-genai 0.5.2 and 0.18 accept: their parsers reject unknown keys, so nothing else is written.
//! The layout follows onnxruntime-genai's model builder (`make_genai_config`).

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::error::{OnnxError, Result};

/// The whole file.
#[derive(Debug, Clone, Serialize)]
pub struct GenaiConfig {
    /// The model section.
    pub model: ModelSection,
    /// Generation defaults.
    pub search: Search,
}

/// `model`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSection {
    /// Beginning-of-sequence token id.
    pub bos_token_id: u32,
    /// Longest sequence the model supports.
    pub context_length: usize,
    /// The decoder ONNX model.
    pub decoder: Decoder,
    /// End-of-sequence token id(s): a number, or an array when there are several.
    pub eos_token_id: Value,
    /// Padding token id.
    pub pad_token_id: u32,
    /// Model type (`llama`, `mistral`, `phi3`, `qwen2`).
    #[serde(rename = "type")]
    pub model_type: String,
    /// Vocabulary size (logits' last dim).
    pub vocab_size: usize,
}

/// `model.decoder`.
#[derive(Debug, Clone, Serialize)]
pub struct Decoder {
    /// ONNX Runtime session options.
    pub session_options: SessionOptions,
    /// The ONNX file, relative to the config.
    pub filename: String,
    /// Dims per attention head.
    pub head_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Graph input names.
    pub inputs: Inputs,
    /// Graph output names.
    pub outputs: Outputs,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
}

/// `model.decoder.session_options`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionOptions {
    /// Log id.
    pub log_id: String,
    /// One `{provider: {options}}` object per execution provider, in priority order; empty for CPU.
    pub provider_options: Vec<Value>,
}

/// `model.decoder.inputs`.
#[derive(Debug, Clone, Serialize)]
pub struct Inputs {
    /// Token ids input.
    pub input_ids: String,
    /// Attention mask input.
    pub attention_mask: String,
    /// Past keys, `%d` = layer.
    pub past_key_names: String,
    /// Past values, `%d` = layer.
    pub past_value_names: String,
}

/// `model.decoder.outputs`.
#[derive(Debug, Clone, Serialize)]
pub struct Outputs {
    /// Logits output.
    pub logits: String,
    /// Present keys, `%d` = layer.
    pub present_key_names: String,
    /// Present values, `%d` = layer.
    pub present_value_names: String,
}

/// `search`: generation defaults.
#[derive(Debug, Clone, Serialize)]
pub struct Search {
    pub diversity_penalty: f32,
    pub do_sample: bool,
    pub early_stopping: bool,
    pub length_penalty: f32,
    pub max_length: usize,
    pub min_length: usize,
    pub no_repeat_ngram_size: usize,
    pub num_beams: usize,
    pub num_return_sequences: usize,
    /// Past and present KV share one buffer of max_length (GroupQueryAttention supports it).
    pub past_present_share_buffer: bool,
    pub repetition_penalty: f32,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
}

/// What varies between models.
#[derive(Debug, Clone)]
pub struct GenaiModel<'a> {
    pub model_type: &'a str,
    pub bos_token_id: u32,
    pub eos_token_ids: &'a [u32],
    pub pad_token_id: u32,
    pub context_length: usize,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub head_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub num_hidden_layers: usize,
    /// The ONNX file name.
    pub filename: &'a str,
    /// `provider_options` entries (empty for CPU).
    pub provider_options: Vec<Value>,
}

impl GenaiConfig {
    /// The config onnxruntime-genai's builder writes for a decoder-only model with the standard names.
    pub fn new(m: &GenaiModel<'_>) -> Self {
        let eos_token_id = match m.eos_token_ids {
            [one] => Value::from(*one),
            many => Value::from(many.to_vec()),
        };
        GenaiConfig {
            model: ModelSection {
                bos_token_id: m.bos_token_id,
                context_length: m.context_length,
                decoder: Decoder {
                    session_options: SessionOptions {
                        log_id: "onnxruntime-genai".into(),
                        provider_options: m.provider_options.clone(),
                    },
                    filename: m.filename.into(),
                    head_size: m.head_size,
                    hidden_size: m.hidden_size,
                    inputs: Inputs {
                        input_ids: "input_ids".into(),
                        attention_mask: "attention_mask".into(),
                        past_key_names: "past_key_values.%d.key".into(),
                        past_value_names: "past_key_values.%d.value".into(),
                    },
                    outputs: Outputs {
                        logits: "logits".into(),
                        present_key_names: "present.%d.key".into(),
                        present_value_names: "present.%d.value".into(),
                    },
                    num_attention_heads: m.num_attention_heads,
                    num_hidden_layers: m.num_hidden_layers,
                    num_key_value_heads: m.num_key_value_heads,
                },
                eos_token_id,
                pad_token_id: m.pad_token_id,
                model_type: m.model_type.into(),
                vocab_size: m.vocab_size,
            },
            search: Search {
                diversity_penalty: 0.0,
                do_sample: false,
                early_stopping: true,
                length_penalty: 1.0,
                max_length: m.context_length,
                min_length: 0,
                no_repeat_ngram_size: 0,
                num_beams: 1,
                num_return_sequences: 1,
                past_present_share_buffer: true,
                repetition_penalty: 1.0,
                temperature: 1.0,
                top_k: 50,
                top_p: 1.0,
            },
        }
    }

    /// Writes the config as pretty JSON to `path` (temp file + rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| OnnxError::Graph(format!("genai_config.json: {e}")))?;
        let temp = path.with_extension("json.tmp");
        std::fs::write(&temp, text + "\n").map_err(|e| OnnxError::io(&temp, e))?;
        std::fs::rename(&temp, path).map_err(|e| OnnxError::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_builders_layout() {
        let m = GenaiModel {
            model_type: "llama",
            bos_token_id: 1,
            eos_token_ids: &[2],
            pad_token_id: 2,
            context_length: 8192,
            vocab_size: 49152,
            hidden_size: 576,
            head_size: 64,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            num_hidden_layers: 30,
            filename: "model.onnx",
            provider_options: vec![],
        };
        let v = serde_json::to_value(GenaiConfig::new(&m)).unwrap();
        assert_eq!(v["model"]["type"], "llama");
        assert_eq!(v["model"]["eos_token_id"], 2);
        assert_eq!(
            v["model"]["decoder"]["inputs"]["past_key_names"],
            "past_key_values.%d.key"
        );
        assert_eq!(v["search"]["max_length"], 8192);
        let many = GenaiModel {
            eos_token_ids: &[2, 7],
            ..m
        };
        let v = serde_json::to_value(GenaiConfig::new(&many)).unwrap();
        assert_eq!(v["model"]["eos_token_id"], serde_json::json!([2, 7]));
    }
}
