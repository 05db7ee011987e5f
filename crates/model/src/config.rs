//! config.json of a Hugging Face Llama-family model (llama, mistral, phi3, qwen2), as transformers reads it:
//! both the top-level `rope_theta`/`rope_scaling` form and transformers 5's `rope_parameters` form.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{require_folder, ModelError, Result};

/// The model families this project runs; all are decoder-only Llama-style transformers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Phi3,
    Qwen2,
}

impl Architecture {
    /// The `model_type` string of config.json.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Phi3 => "phi3",
            Architecture::Qwen2 => "qwen2",
        }
    }

    fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "llama" => Some(Architecture::Llama),
            "mistral" => Some(Architecture::Mistral),
            "phi3" => Some(Architecture::Phi3),
            "qwen2" => Some(Architecture::Qwen2),
            _ => None,
        }
    }
}

/// Rotary embedding scaling beyond the default frequencies.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Phi-3's LongRoPE ("longrope", formerly "su"): per-dimension factors, short below the original context.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: usize,
        /// Scale applied to cos/sin: sqrt(1 + ln(s) / ln(original)) for the context scale s, unless given.
        attention_factor: f64,
    },
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's frequency-band scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// The fields of config.json the transformer needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Share of each head's dimensions that rotate (1.0: all of them).
    pub partial_rotary_factor: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections carry a bias (Qwen2 does).
    pub attention_bias: bool,
    /// Attention window in tokens, when the model really uses one.
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

impl ModelConfig {
    /// Reads `dir/config.json`.
    pub fn from_folder(dir: &Path) -> Result<Self> {
        require_folder(dir)?;
        Self::from_file(&dir.join("config.json"))
    }

    /// Reads a config.json file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(path, &value)
    }

    /// Interprets parsed config.json content; `path` is only used in error messages.
    pub fn from_json(path: &Path, value: &Value) -> Result<Self> {
        let fields = Fields {
            path: path.to_path_buf(),
            map: value
                .as_object()
                .ok_or_else(|| ModelError::field(path, "<root>", "a JSON object"))?,
        };
        let model_type = fields.string("model_type")?;
        let architecture = Architecture::from_model_type(&model_type).ok_or_else(|| {
            ModelError::UnknownArchitecture {
                path: path.to_path_buf(),
                found: model_type.clone(),
            }
        })?;
        if let Some(act) = fields.opt_string("hidden_act")? {
            if act != "silu" {
                return Err(ModelError::field(
                    path,
                    "hidden_act",
                    format!("\"silu\", found \"{act}\""),
                ));
            }
        }

        let hidden_size = fields.usize("hidden_size")?;
        let num_attention_heads = fields.usize("num_attention_heads")?;
        if num_attention_heads == 0
            || hidden_size % num_attention_heads != 0 && !fields.has("head_dim")
        {
            return Err(ModelError::field(
                path,
                "num_attention_heads",
                format!("a divisor of hidden_size {hidden_size}"),
            ));
        }
        let num_key_value_heads = fields
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(ModelError::field(
                path,
                "num_key_value_heads",
                format!("a divisor of num_attention_heads {num_attention_heads}"),
            ));
        }
        let head_dim = fields
            .opt_usize("head_dim")?
            .unwrap_or(hidden_size / num_attention_heads);
        let max_position_embeddings = fields.usize("max_position_embeddings")?;

        let rope = fields.rope(max_position_embeddings)?;
        let sliding_window = match architecture {
            // Qwen2 configs carry a window but only apply it with use_sliding_window.
            Architecture::Qwen2 if !fields.opt_bool("use_sliding_window")?.unwrap_or(false) => None,
            _ => fields.opt_usize("sliding_window")?,
        };
        let attention_bias = match architecture {
            Architecture::Qwen2 => true,
            _ => fields.opt_bool("attention_bias")?.unwrap_or(false),
        };
        let eos_token_ids = match fields.map.get("eos_token_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    token_id(v).ok_or_else(|| ModelError::field(path, "eos_token_id", "token ids"))
                })
                .collect::<Result<_>>()?,
            Some(v) => {
                vec![token_id(v)
                    .ok_or_else(|| ModelError::field(path, "eos_token_id", "a token id"))?]
            }
        };

        let config = ModelConfig {
            architecture,
            vocab_size: fields.usize("vocab_size")?,
            hidden_size,
            intermediate_size: fields.usize("intermediate_size")?,
            num_hidden_layers: fields.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: fields.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: rope.theta,
            partial_rotary_factor: rope.partial_rotary_factor,
            rope_scaling: rope.scaling,
            max_position_embeddings,
            tie_word_embeddings: fields.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias,
            sliding_window,
            bos_token_id: fields.opt_token("bos_token_id")?,
            eos_token_ids,
            pad_token_id: fields.opt_token("pad_token_id")?,
        };
        config.check_rope(path)?;
        Ok(config)
    }

    /// Number of rotated dimensions of each head.
    pub fn rotary_dim(&self) -> usize {
        ((self.head_dim as f64 * self.partial_rotary_factor) as usize) & !1
    }

    fn check_rope(&self, path: &Path) -> Result<()> {
        if let Some(RopeScaling::LongRope {
            short_factor,
            long_factor,
            ..
        }) = &self.rope_scaling
        {
            let half = self.rotary_dim() / 2;
            for (name, factors) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                if factors.len() != half {
                    return Err(ModelError::field(
                        path,
                        format!("rope_scaling.{name}"),
                        format!("{half} factors (rotary dim / 2), found {}", factors.len()),
                    ));
                }
            }
        }
        Ok(())
    }
}

struct Rope {
    theta: f64,
    partial_rotary_factor: f64,
    scaling: Option<RopeScaling>,
}

fn token_id(value: &Value) -> Option<u32> {
    value.as_u64().and_then(|v| u32::try_from(v).ok())
}

/// Typed access to a JSON object, with errors naming the file and field.
struct Fields<'a> {
    path: PathBuf,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> Result<String> {
        self.opt_string(key)?
            .ok_or_else(|| ModelError::field(&self.path, key, "a string (missing)"))
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(ModelError::field(
                &self.path,
                key,
                format!("a string, found {other}"),
            )),
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| ModelError::field(&self.path, key, "a positive integer (missing)"))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(n) if n > 0 => Ok(Some(n)),
                _ => Err(ModelError::field(
                    &self.path,
                    key,
                    format!("a positive integer, found {v}"),
                )),
            },
        }
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        opt_f64_in(&self.path, self.map, key, key)
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(ModelError::field(
                &self.path,
                key,
                format!("true or false, found {other}"),
            )),
        }
    }

    fn opt_token(&self, key: &str) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => token_id(v).map(Some).ok_or_else(|| {
                ModelError::field(&self.path, key, format!("a token id, found {v}"))
            }),
        }
    }

    /// Rope settings from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling` (earlier).
    fn rope(&self, max_position_embeddings: usize) -> Result<Rope> {
        let (params, params_name) = match self.get("rope_parameters") {
            Some(Value::Object(p)) => (Some(p), "rope_parameters"),
            Some(other) => {
                return Err(ModelError::field(
                    &self.path,
                    "rope_parameters",
                    format!("an object, found {other}"),
                ))
            }
            None => match self.get("rope_scaling") {
                Some(Value::Object(p)) => (Some(p), "rope_scaling"),
                Some(other) => {
                    return Err(ModelError::field(
                        &self.path,
                        "rope_scaling",
                        format!("an object, found {other}"),
                    ))
                }
                None => (None, "rope_scaling"),
            },
        };
        let theta = match params.map(|p| {
            opt_f64_in(
                &self.path,
                p,
                "rope_theta",
                &format!("{params_name}.rope_theta"),
            )
        }) {
            Some(Ok(Some(theta))) => theta,
            Some(Err(e)) => return Err(e),
            _ => self.opt_f64("rope_theta")?.unwrap_or(10000.0),
        };
        let partial_rotary_factor = match params.map(|p| {
            opt_f64_in(
                &self.path,
                p,
                "partial_rotary_factor",
                &format!("{params_name}.partial_rotary_factor"),
            )
        }) {
            Some(Ok(Some(f))) => f,
            Some(Err(e)) => return Err(e),
            _ => self.opt_f64("partial_rotary_factor")?.unwrap_or(1.0),
        };
        if !(partial_rotary_factor > 0.0 && partial_rotary_factor <= 1.0) {
            return Err(ModelError::field(
                &self.path,
                "partial_rotary_factor",
                "a number in (0, 1]",
            ));
        }
        let scaling = match params {
            None => None,
            Some(p) => self.rope_scaling(p, params_name, max_position_embeddings)?,
        };
        Ok(Rope {
            theta,
            partial_rotary_factor,
            scaling,
        })
    }

    fn rope_scaling(
        &self,
        p: &Map<String, Value>,
        name: &str,
        max_position_embeddings: usize,
    ) -> Result<Option<RopeScaling>> {
        let path = &self.path;
        let rope_type = match p.get("rope_type").or_else(|| p.get("type")) {
            None | Some(Value::Null) => "default".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(ModelError::field(
                    path,
                    format!("{name}.rope_type"),
                    format!("a string, found {other}"),
                ))
            }
        };
        let num = |key: &str| opt_f64_in(path, p, key, &format!("{name}.{key}"));
        let required = |key: &str| -> Result<f64> {
            num(key)?.ok_or_else(|| {
                ModelError::field(path, format!("{name}.{key}"), "a number (missing)")
            })
        };
        let original_max = |fallback: Option<usize>| -> Result<usize> {
            match num("original_max_position_embeddings")? {
                Some(v) if v >= 1.0 => Ok(v as usize),
                Some(v) => Err(ModelError::field(
                    path,
                    format!("{name}.original_max_position_embeddings"),
                    format!("a positive integer, found {v}"),
                )),
                None => fallback.ok_or_else(|| {
                    ModelError::field(
                        path,
                        "original_max_position_embeddings",
                        "a positive integer (missing)",
                    )
                }),
            }
        };
        match rope_type.as_str() {
            "default" => Ok(None),
            "linear" => Ok(Some(RopeScaling::Linear {
                factor: required("factor")?,
            })),
            "llama3" => Ok(Some(RopeScaling::Llama3 {
                factor: required("factor")?,
                low_freq_factor: required("low_freq_factor")?,
                high_freq_factor: required("high_freq_factor")?,
                original_max_position_embeddings: original_max(None)?,
            })),
            "longrope" | "su" => {
                let factors = |key: &str| -> Result<Vec<f64>> {
                    let field = format!("{name}.{key}");
                    match p.get(key) {
                        Some(Value::Array(items)) => items
                            .iter()
                            .map(|v| {
                                v.as_f64()
                                    .ok_or_else(|| ModelError::field(path, &field, "numbers"))
                            })
                            .collect(),
                        _ => Err(ModelError::field(path, field, "a list of numbers")),
                    }
                };
                // As transformers 5: the scale is `factor`, else max_position_embeddings / original context.
                let top_level_original = self.opt_usize("original_max_position_embeddings")?;
                let original = original_max(top_level_original.or(Some(max_position_embeddings)))?;
                let scale = match num("factor")? {
                    Some(f) => f,
                    None => max_position_embeddings as f64 / original as f64,
                };
                let attention_factor = match num("attention_factor")? {
                    Some(f) => f,
                    None => longrope_attention_factor(scale, original),
                };
                Ok(Some(RopeScaling::LongRope {
                    short_factor: factors("short_factor")?,
                    long_factor: factors("long_factor")?,
                    original_max_position_embeddings: original,
                    attention_factor,
                }))
            }
            other => Err(ModelError::field(
                path,
                format!("{name}.rope_type"),
                format!("one of default, linear, llama3, longrope; found \"{other}\""),
            )),
        }
    }
}

/// LongRoPE's attention scaling, sqrt(1 + ln(factor) / ln(original context)).
pub fn longrope_attention_factor(factor: f64, original_max_position_embeddings: usize) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        (1.0 + factor.ln() / (original_max_position_embeddings as f64).ln()).sqrt()
    }
}

fn opt_f64_in(
    path: &Path,
    map: &Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<f64>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ModelError::field(path, field, format!("a number, found {v}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ModelConfig> {
        ModelConfig::from_json(Path::new("config.json"), &v)
    }

    fn llama() -> Value {
        json!({
            "model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
            "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2
        })
    }

    #[test]
    fn reads_top_level_rope_theta() {
        let c = parse(llama()).unwrap();
        assert_eq!(c.architecture, Architecture::Llama);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.rope_theta, 100000.0);
        assert_eq!(c.eos_token_ids, vec![2]);
        assert!(c.rope_scaling.is_none());
    }

    #[test]
    fn reads_rope_parameters_form() {
        let mut v = llama();
        v.as_object_mut().unwrap().remove("rope_theta");
        v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 500000.0});
        let c = parse(v).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert!(c.rope_scaling.is_none());
    }

    #[test]
    fn reads_phi3_longrope() {
        let mut v = llama();
        v["model_type"] = json!("phi3");
        v["max_position_embeddings"] = json!(1024);
        v["original_max_position_embeddings"] = json!(64);
        v["rope_scaling"] =
            json!({"type": "longrope", "short_factor": vec![1.0; 8], "long_factor": vec![2.0; 8]});
        let c = parse(v).unwrap();
        match c.rope_scaling {
            Some(RopeScaling::LongRope {
                original_max_position_embeddings,
                ref long_factor,
                ..
            }) => {
                assert_eq!(original_max_position_embeddings, 64);
                assert_eq!(long_factor.len(), 8);
            }
            other => panic!("expected longrope, got {other:?}"),
        }
    }

    #[test]
    fn longrope_factor_count_is_checked() {
        let mut v = llama();
        v["model_type"] = json!("phi3");
        v["rope_scaling"] = json!({"type": "longrope", "short_factor": vec![1.0; 3], "long_factor": vec![2.0; 8],
                                   "original_max_position_embeddings": 64});
        let err = parse(v).unwrap_err().to_string();
        assert!(err.contains("rope_scaling.short_factor"), "{err}");
    }

    #[test]
    fn unknown_architecture_is_named() {
        let mut v = llama();
        v["model_type"] = json!("gpt_neox");
        let err = parse(v).unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains("gpt_neox"),
            "{err}"
        );
    }

    #[test]
    fn missing_field_is_named() {
        let mut v = llama();
        v.as_object_mut().unwrap().remove("hidden_size");
        let err = parse(v).unwrap_err().to_string();
        assert!(err.contains("`hidden_size`"), "{err}");
    }

    #[test]
    fn qwen2_has_bias_and_no_window_unless_enabled() {
        let mut v = llama();
        v["model_type"] = json!("qwen2");
        v["sliding_window"] = json!(32);
        v["use_sliding_window"] = json!(false);
        let c = parse(v).unwrap();
        assert!(c.attention_bias);
        assert_eq!(c.sliding_window, None);
    }
}
