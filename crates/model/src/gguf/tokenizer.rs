//! Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json, special_tokens_map.json) from
//! a GGUF's `tokenizer.ggml.*` metadata (llama.cpp's gguf-py `Keys.Tokenizer`; pre-tokenizer regexes from
//! llama.cpp's llama-vocab.cpp, laid out as the tokenizer.json the original Hub models ship).
//!
//! `tokenizer.ggml.model`:
//! - `gpt2`: byte-level BPE; the pre-tokenizer is picked from `tokenizer.ggml.pre`.
//! - `llama`: SentencePiece-style BPE with byte fallback (Llama 2, Mistral); merges come from the file
//!   or, when absent, are rebuilt from the token scores the way transformers' `generate_merges` does.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Map, Value};

use super::GgufFile;
use crate::error::{ModelError, Result};

/// llama.cpp `llama_token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
const TOKEN_UNKNOWN: i32 = 2;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

/// llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3` (and transformers' GGUF `_LLAMA3_SPLIT`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2` (transformers' Qwen2 `PRETOKENIZE_REGEX`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The contents of the three tokenizer files of a Hugging Face folder.
#[derive(Debug, Clone)]
pub struct TokenizerFiles {
    /// tokenizer.json
    pub tokenizer: Value,
    /// tokenizer_config.json
    pub tokenizer_config: Value,
    /// special_tokens_map.json
    pub special_tokens_map: Value,
}

impl TokenizerFiles {
    /// The tokenizer.json loaded by the `tokenizers` crate (checks that it is well formed).
    pub fn to_tokenizer(&self, gguf: &GgufFile) -> Result<tokenizers::Tokenizer> {
        let text = self.tokenizer.to_string();
        text.parse::<tokenizers::Tokenizer>()
            .map_err(|e| ModelError::Tokenizer {
                path: gguf.path().to_path_buf(),
                reason: format!("tokenizer.json built from the GGUF metadata does not load: {e}"),
            })
    }
}

/// The special tokens and flags common to every tokenizer model.
struct Vocab<'a> {
    tokens: Vec<&'a str>,
    token_types: Vec<i32>,
    bos: Option<usize>,
    eos: Option<usize>,
    unk: Option<usize>,
    pad: Option<usize>,
}

/// Builds the tokenizer files a Hugging Face folder of this GGUF model should hold.
pub fn build_tokenizer(gguf: &GgufFile) -> Result<TokenizerFiles> {
    let model: &str = gguf.get("tokenizer.ggml.model")?;
    let tokens: Vec<&str> = gguf.get("tokenizer.ggml.tokens")?;
    let token_types = gguf
        .opt::<Vec<i32>>("tokenizer.ggml.token_type")?
        .unwrap_or_default();
    if !token_types.is_empty() && token_types.len() != tokens.len() {
        return Err(ModelError::field(
            gguf.path(),
            "tokenizer.ggml.token_type",
            format!(
                "{} entries, expected one per token ({})",
                token_types.len(),
                tokens.len()
            ),
        ));
    }
    let id = |key: &str| -> Result<Option<usize>> {
        match gguf.opt::<usize>(key)? {
            Some(i) if i >= tokens.len() => Err(ModelError::field(
                gguf.path(),
                key,
                format!(
                    "token id {i} is outside the vocabulary of {} tokens",
                    tokens.len()
                ),
            )),
            other => Ok(other),
        }
    };
    let vocab = Vocab {
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        unk: id("tokenizer.ggml.unknown_token_id")?,
        pad: id("tokenizer.ggml.padding_token_id")?,
        tokens,
        token_types,
    };
    let add_bos = gguf.opt::<bool>("tokenizer.ggml.add_bos_token")?;
    let add_eos = gguf
        .opt::<bool>("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);
    let add_space_prefix = gguf.opt::<bool>("tokenizer.ggml.add_space_prefix")?;

    let (tokenizer, add_bos, add_prefix_space) = match model {
        "gpt2" => {
            let add_bos = add_bos.unwrap_or(false);
            let pre = gguf.opt::<&str>("tokenizer.ggml.pre")?.unwrap_or("default");
            let merges: Vec<&str> = gguf.get("tokenizer.ggml.merges")?;
            let t = byte_level(gguf, &vocab, &merges, pre, add_bos, add_eos)?;
            (t, add_bos, add_space_prefix.unwrap_or(false))
        }
        "llama" => {
            // llama.cpp adds BOS to a SentencePiece vocabulary unless the file says otherwise.
            let add_bos = add_bos.unwrap_or(true);
            let prefix = add_space_prefix.unwrap_or(true);
            let t = sentencepiece_bpe(gguf, &vocab, prefix, add_bos, add_eos)?;
            (t, add_bos, prefix)
        }
        other => {
            return Err(ModelError::Tokenizer {
                path: gguf.path().to_path_buf(),
                reason: format!(
                    "tokenizer.ggml.model `{other}` is not supported (expected `gpt2` or `llama`)"
                ),
            })
        }
    };

    let name = |i: Option<usize>| i.and_then(|i| vocab.tokens.get(i)).map(|t| t.to_string());
    let mut config = Map::new();
    config.insert("add_bos_token".into(), json!(add_bos));
    config.insert("add_eos_token".into(), json!(add_eos));
    config.insert("add_prefix_space".into(), json!(add_prefix_space));
    let decoder: Map<String, Value> = tokenizer["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let mut entry = t.as_object()?.clone();
            let id = entry.remove("id")?;
            Some((id.to_string(), Value::Object(entry)))
        })
        .collect();
    config.insert("added_tokens_decoder".into(), Value::Object(decoder));
    let mut special = Map::new();
    for (key, i) in [
        ("bos_token", vocab.bos),
        ("eos_token", vocab.eos),
        ("unk_token", vocab.unk),
        ("pad_token", vocab.pad),
    ] {
        config.insert(key.into(), json!(name(i)));
        if let Some(token) = name(i) {
            special.insert(key.into(), json!(token));
        }
    }
    if let Some(template) = gguf.opt::<&str>("tokenizer.chat_template")? {
        config.insert("chat_template".into(), json!(template));
    }
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    if let Some(ctx) = context_length(gguf)? {
        config.insert("model_max_length".into(), json!(ctx));
    }
    // The generic class loads tokenizer.json as written; a model class (GPT2Tokenizer...) would
    // rebuild its own pre-tokenizer in transformers 5 and drop e.g. the digit split.
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));

    Ok(TokenizerFiles {
        tokenizer,
        tokenizer_config: Value::Object(config),
        special_tokens_map: Value::Object(special),
    })
}

fn context_length(gguf: &GgufFile) -> Result<Option<u64>> {
    match gguf.opt::<&str>("general.architecture")? {
        Some(arch) => gguf.opt(&format!("{arch}.context_length")),
        None => Ok(None),
    }
}

/// GPT-2's `bytes_to_unicode`: printable bytes stand for themselves, the rest map to U+0100 onward.
fn byte_alphabet() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in map.iter_mut().enumerate() {
        let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
        let code = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\u{fffd}');
    }
    map
}

/// Added tokens: control tokens (and the bos/eos/unk/pad tokens) as special, user-defined ones as
/// plain added tokens. `keep` filters out tokens the model's vocabulary cannot spell.
fn added_tokens(vocab: &Vocab, keep: impl Fn(&str) -> bool) -> Vec<Value> {
    let named: HashSet<usize> = [vocab.bos, vocab.eos, vocab.unk, vocab.pad]
        .into_iter()
        .flatten()
        .collect();
    let mut added = Vec::new();
    for (i, token) in vocab.tokens.iter().enumerate() {
        let ty = vocab.token_types.get(i).copied().unwrap_or(1);
        let special = ty == TOKEN_CONTROL || named.contains(&i) || ty == TOKEN_UNKNOWN;
        if !(special || ty == TOKEN_USER_DEFINED) || !keep(token) {
            continue;
        }
        added.push(json!({
            "id": i, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": special,
        }));
    }
    added
}

/// `post_processor` adding bos/eos around each sequence, or `None` when neither is added.
fn template(vocab: &Vocab, add_bos: bool, add_eos: bool) -> Option<Value> {
    let bos = vocab
        .bos
        .filter(|_| add_bos)
        .and_then(|i| Some((i, *vocab.tokens.get(i)?)));
    let eos = vocab
        .eos
        .filter(|_| add_eos)
        .and_then(|i| Some((i, *vocab.tokens.get(i)?)));
    if bos.is_none() && eos.is_none() {
        return None;
    }
    let piece = |tok: &str, type_id: u32| json!({"SpecialToken": {"id": tok, "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    // single: [bos] A [eos]; pair: [bos] A [eos] [bos] B [eos], B's pieces with type id 1.
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Map::new();
    for (seq_id, type_id) in [("A", 0u32), ("B", 1u32)] {
        let mut part = Vec::new();
        if let Some((_, t)) = bos {
            part.push(piece(t, type_id));
        }
        part.push(seq(seq_id, type_id));
        if let Some((_, t)) = eos {
            part.push(piece(t, type_id));
        }
        if seq_id == "A" {
            single.extend(part.iter().cloned());
        }
        pair.extend(part);
    }
    for (i, t) in bos.into_iter().chain(eos) {
        specials.insert(t.to_string(), json!({"id": t, "ids": [i], "tokens": [t]}));
    }
    Some(
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}),
    )
}

/// Byte-level BPE (`tokenizer.ggml.model` = `gpt2`), laid out like the Hub's GPT-2-style tokenizers.
fn byte_level(
    gguf: &GgufFile,
    vocab: &Vocab,
    merges: &[&str],
    pre: &str,
    add_bos: bool,
    add_eos: bool,
) -> Result<Value> {
    let bytes = byte_alphabet();
    let alphabet: HashSet<char> = bytes.iter().copied().collect();
    let spelled = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    // A token written with characters outside the byte alphabet is respelled byte by byte.
    let model_vocab: Map<String, Value> = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let key = if spelled(t) {
                t.to_string()
            } else {
                t.bytes().map(|b| bytes[usize::from(b)]).collect()
            };
            (key, json!(i))
        })
        .collect();
    let merges = merges_json(&split_merges(gguf, merges)?);

    let byte_level = |use_regex: bool, trim_offsets: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": trim_offsets, "use_regex": use_regex});
    let split = |regex: &str| json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
    let mut normalizer = Value::Null;
    let mut ignore_merges = false;
    let pre_tokenizer = match pre {
        // llama.cpp: `\p{N}` then GPT-2's regex; the Hub's tokenizer.json: Digits + ByteLevel.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            json!({
                "type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true, true)],
            })
        }
        "llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" | "dbrx" | "falcon3" | "pixtral" => {
            ignore_merges = true;
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false, true)]})
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => {
            normalizer = json!({"type": "NFC"});
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false, false)]})
        }
        "default" | "gpt-2" | "gpt2" => byte_level(true, true),
        other => {
            tracing::warn!(
                "{}: pre-tokenizer `{other}` is not known here; using GPT-2's byte-level split",
                gguf.path().display()
            );
            byte_level(true, true)
        }
    };
    let byte_post = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
    let post_processor = match template(vocab, add_bos, add_eos) {
        Some(t) => json!({"type": "Sequence", "processors": [byte_post, t]}),
        None => byte_post,
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(vocab, spelled),
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": ignore_merges, "vocab": model_vocab, "merges": merges,
        },
    }))
}

/// The file's `"a b"` merges, checked.
fn split_merges<'a>(gguf: &GgufFile, merges: &[&'a str]) -> Result<Vec<(&'a str, &'a str)>> {
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ').ok_or_else(|| {
                ModelError::field(
                    gguf.path(),
                    "tokenizer.ggml.merges",
                    format!("entry {i} `{m}` is not two tokens separated by a space"),
                )
            })
        })
        .collect()
}

/// Merges as tokenizer.json spells them: `"a b"` strings, which every reader of tokenizer.json
/// (older `tokenizers`, onnxruntime-extensions) understands, or `[a, b]` pairs when a token
/// holds a space and the string form would be ambiguous.
fn merges_json(pairs: &[(&str, &str)]) -> Value {
    if pairs
        .iter()
        .any(|(a, b)| a.contains(' ') || b.contains(' '))
    {
        pairs.iter().map(|(a, b)| json!([a, b])).collect()
    } else {
        pairs
            .iter()
            .map(|(a, b)| json!(format!("{a} {b}")))
            .collect()
    }
}

/// SentencePiece-style BPE (`tokenizer.ggml.model` = `llama`), as transformers' LlamaTokenizer builds it:
/// Metaspace pre-tokenizer, byte fallback, `<0xNN>` byte tokens.
fn sentencepiece_bpe(
    gguf: &GgufFile,
    vocab: &Vocab,
    add_prefix_space: bool,
    add_bos: bool,
    add_eos: bool,
) -> Result<Value> {
    let model_vocab: Map<String, Value> = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    let merges = match gguf.opt::<Vec<&str>>("tokenizer.ggml.merges")? {
        Some(m) => merges_json(&split_merges(gguf, &m)?),
        None => {
            let scores: Vec<f32> = gguf.get("tokenizer.ggml.scores")?;
            if scores.len() != vocab.tokens.len() {
                return Err(ModelError::field(
                    gguf.path(),
                    "tokenizer.ggml.scores",
                    format!(
                        "{} entries, expected one per token ({})",
                        scores.len(),
                        vocab.tokens.len()
                    ),
                ));
            }
            merges_json(&merges_from_scores(&vocab.tokens, &scores))
        }
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_prefix_space {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let unk = vocab
        .unk
        .and_then(|i| vocab.tokens.get(i))
        .map(|t| t.to_string());
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(vocab, |_| true),
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Metaspace", "replacement": "\u{2581}",
            "prepend_scheme": if add_prefix_space { "first" } else { "never" }, "split": false,
        },
        "post_processor": template(vocab, add_bos, add_eos),
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": model_vocab, "merges": merges,
        },
    }))
}

/// Merges implied by a scored vocabulary (transformers' `generate_merges` with `vocab_scores`):
/// every split of a token into two vocabulary tokens, best score first, then longer pieces first.
fn merges_from_scores<'a>(tokens: &[&'a str], scores: &[f32]) -> Vec<(&'a str, &'a str)> {
    // Python dicts: a repeated token keeps its first position but its last id and score.
    let index: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut seen = HashSet::new();
    let mut merges: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
    for token in tokens {
        if !seen.insert(*token) {
            continue;
        }
        let score = index
            .get(token)
            .and_then(|&i| scores.get(i))
            .copied()
            .unwrap_or(0.0);
        let mut local: Vec<(usize, usize, &str, &str)> = token
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = token.split_at(at);
                Some((*index.get(l)?, *index.get(r)?, l, r))
            })
            .collect();
        local.sort_by_key(|&(il, ir, _, _)| (il, ir));
        merges.extend(
            local
                .into_iter()
                .map(|(_, _, l, r)| (score, l.chars().count(), r.chars().count(), l, r)),
        );
    }
    // Python's sorted(..., reverse=True) is stable: equal keys keep their order.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    merges.into_iter().map(|(_, _, _, l, r)| (l, r)).collect()
}
