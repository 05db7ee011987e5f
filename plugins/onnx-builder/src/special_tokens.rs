//! bos/eos/pad token ids for genai_config.json, resolved as onnxruntime-genai's builder does
//! (`resolve_special_token_ids`): config.json first, then generation_config.json, then the tokenizer's
//! special tokens (tokenizer_config.json names them, tokenizer.json gives their ids); bos defaults to 1,
//! pad to the first eos.

use std::path::Path;

use olive_model::ModelConfig;
use olive_pass_sdk::Error;
use serde_json::Value;

/// Resolved ids.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecialTokens {
    pub bos: u32,
    pub eos: Vec<u32>,
    pub pad: u32,
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn ids(v: &Value) -> Vec<u32> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .into_iter()
            .collect(),
        Value::Array(a) => a.iter().flat_map(ids).collect(),
        _ => vec![],
    }
}

/// The id of special token `key` (`eos_token`, ...) named in tokenizer_config.json, looked up in tokenizer.json.
fn tokenizer_token(dir: &Path, key: &str) -> Option<u32> {
    let config = read_json(&dir.join("tokenizer_config.json"))?;
    let content = match config.get(key)? {
        Value::String(s) => s.clone(),
        Value::Object(o) => o.get("content")?.as_str()?.to_string(),
        _ => return None,
    };
    let tokenizer = read_json(&dir.join("tokenizer.json"))?;
    let added = tokenizer.get("added_tokens").and_then(Value::as_array);
    added
        .into_iter()
        .flatten()
        .find(|t| t.get("content").and_then(Value::as_str) == Some(content.as_str()))
        .and_then(|t| t.get("id"))
        .or_else(|| tokenizer.get("model")?.get("vocab")?.get(&content))
        .and_then(Value::as_u64)
        .and_then(|x| u32::try_from(x).ok())
}

/// Resolves the ids for the model in `dir`.
pub fn resolve(dir: &Path, hf: &ModelConfig) -> Result<SpecialTokens, Error> {
    let generation = read_json(&dir.join("generation_config.json"));
    let from_generation = |key: &str| {
        generation
            .as_ref()
            .and_then(|g| g.get(key))
            .map(ids)
            .unwrap_or_default()
    };
    let mut eos = hf.eos_token_ids.clone();
    if eos.is_empty() {
        eos = from_generation("eos_token_id");
    }
    if eos.is_empty() {
        eos = tokenizer_token(dir, "eos_token").into_iter().collect();
    }
    let Some(&first_eos) = eos.first() else {
        return Err(Error::UnsupportedModel(format!(
            "{}: no eos_token_id in config.json or generation_config.json, and no eos_token in \
             tokenizer_config.json; onnxruntime-genai needs one",
            dir.display()
        )));
    };
    let bos = hf
        .bos_token_id
        .or_else(|| from_generation("bos_token_id").first().copied())
        .or_else(|| tokenizer_token(dir, "bos_token"))
        .unwrap_or(1);
    let pad = hf
        .pad_token_id
        .or_else(|| from_generation("pad_token_id").first().copied())
        .or_else(|| tokenizer_token(dir, "pad_token"))
        .unwrap_or(first_eos);
    Ok(SpecialTokens { bos, eos, pad })
}
