//! Datasets as Olive's CLI takes them (`--data_name json|text`, `--data_files`, `--split`, `--text_field`,
//! `--text_template`, `--use_chat_template`, `--max_seq_len`, `--max_samples`), tokenized through the model's
//! tokenizer.json, packed or padded into training rows, split into train/eval, or sampled for calibration.

pub mod error;
pub mod load;
pub mod samples;
pub mod text;

use std::path::Path;

pub use error::{DataError, Result};
pub use load::{load_records, resolve_files, split_data_files, DataName, Record};
pub use samples::{calibration, pack, pad, split, Rng, Sample, IGNORE_INDEX};
pub use text::{messages_of, unescape_cli, TextSource, TextTemplate, TokenizerConfig};

/// How documents become rows of `max_seq_len` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Concatenate with eos between documents, cut into full blocks.
    #[default]
    Pack,
    /// One document per row, truncated or right-padded.
    Pad,
}

/// The dataset flags, with Olive's defaults.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `--data_name`: `json` or `text`.
    pub data_name: String,
    /// `--data_files`: paths or glob patterns.
    pub data_files: Vec<String>,
    /// `--split`: only `train` for local files.
    pub split: String,
    /// `--text_field`.
    pub text_field: String,
    /// `--text_template`, with real newlines (the CLI runs [`unescape_cli`] on the flag).
    pub text_template: Option<String>,
    /// `--use_chat_template`.
    pub use_chat_template: bool,
    /// `--max_seq_len`.
    pub max_seq_len: usize,
    /// `--max_samples`: at most this many rows (train rows for [`prepare`]).
    pub max_samples: Option<usize>,
    /// Packing or padding.
    pub layout: Layout,
    /// Fraction of the records held out for evaluation, in [0, 1).
    pub eval_ratio: f64,
    /// Seed of the train/eval split.
    pub seed: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            data_name: "json".into(),
            data_files: Vec::new(),
            split: "train".into(),
            text_field: "text".into(),
            text_template: None,
            use_chat_template: false,
            max_seq_len: 1024,
            max_samples: None,
            layout: Layout::Pack,
            eval_ratio: 0.0,
            seed: 0,
        }
    }
}

impl DataConfig {
    /// Where a record's text comes from: chat template, else template, else the text field.
    pub fn text_source(&self, tokenizer_config: &TokenizerConfig) -> Result<TextSource> {
        if self.use_chat_template {
            Ok(TextSource::Chat(tokenizer_config.clone()))
        } else if let Some(t) = &self.text_template {
            Ok(TextSource::Template(TextTemplate::parse(t)?))
        } else {
            Ok(TextSource::Field(self.text_field.clone()))
        }
    }

    /// Loads the files and renders each record's text; empty texts are dropped (as Olive does).
    pub fn texts(&self, tokenizer_config: &TokenizerConfig) -> Result<Vec<String>> {
        let name: DataName = self.data_name.parse()?;
        let files = resolve_files(&self.data_files)?;
        let records = load_records(name, &files, &self.split)?;
        let source = self.text_source(tokenizer_config)?;
        let mut texts = Vec::with_capacity(records.len());
        for r in &records {
            let t = source.render(r)?;
            if !t.is_empty() {
                texts.push(t);
            }
        }
        if texts.is_empty() {
            return Err(DataError::Empty(format!(
                "no text in {}",
                self.data_files.join(", ")
            )));
        }
        Ok(texts)
    }
}

/// The model folder's tokenizer.json with the special tokens of tokenizer_config.json.
pub struct ModelTokenizer {
    /// The `tokenizers` tokenizer.
    pub tokenizer: tokenizers::Tokenizer,
    /// tokenizer_config.json.
    pub config: TokenizerConfig,
    /// Id of `eos_token`.
    pub eos_id: u32,
    /// Id of `pad_token`, else of `eos_token`.
    pub pad_id: u32,
}

impl ModelTokenizer {
    /// Loads `dir/tokenizer.json` and `dir/tokenizer_config.json`; eos must be set and in the vocabulary.
    pub fn load(dir: &Path) -> Result<Self> {
        let tokenizer = olive_model::tokenizer::load(dir)?;
        let config = TokenizerConfig::load(dir)?;
        let id = |name: &str, tok: &Option<String>| -> Result<u32> {
            let t = tok.as_deref().ok_or_else(|| DataError::Tokens {
                path: config.path.clone(),
                reason: format!("no {name} set"),
            })?;
            tokenizer.token_to_id(t).ok_or_else(|| DataError::Tokens {
                path: config.path.clone(),
                reason: format!("{name} {t:?} is not in tokenizer.json's vocabulary"),
            })
        };
        let eos_id = id("eos_token", &config.eos_token)?;
        let pad_id = if config.pad_token.is_some() {
            id("pad_token", &config.pad_token)?
        } else {
            eos_id
        };
        Ok(Self {
            tokenizer,
            config,
            eos_id,
            pad_id,
        })
    }

    /// Token ids of each text, without special tokens added (Olive's `add_special_tokens=False`).
    pub fn encode_all(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), false)
            .map_err(|e| DataError::Tokenize(e.to_string()))?;
        Ok(enc.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }
}

/// Training and evaluation rows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Prepared {
    /// Training rows, [n_train][max_seq_len].
    pub train: Vec<Sample>,
    /// Evaluation rows from the held-out records, [n_eval][max_seq_len] (empty when `eval_ratio` is 0).
    pub eval: Vec<Sample>,
}

/// The whole pipeline for finetuning: load, render, split the records, tokenize, pack or pad.
pub fn prepare(cfg: &DataConfig, tok: &ModelTokenizer) -> Result<Prepared> {
    let texts = cfg.texts(&tok.config)?;
    let (train_texts, eval_texts) = split(&texts, cfg.eval_ratio, cfg.seed)?;
    let rows = |texts: &[String], max: Option<usize>| -> Result<Vec<Sample>> {
        let docs = tok.encode_all(texts)?;
        match cfg.layout {
            Layout::Pack => pack(&docs, tok.eos_id, cfg.max_seq_len, max),
            Layout::Pad => pad(&docs, tok.pad_id, cfg.max_seq_len, max),
        }
    };
    let train = rows(&train_texts, cfg.max_samples)?;
    let eval = if eval_texts.is_empty() {
        Vec::new()
    } else {
        rows(&eval_texts, None).map_err(|e| match e {
            DataError::TooShort { tokens, needed } => DataError::BadOption {
                option: "eval_ratio",
                reason: format!(
                    "the {} held-out records have {tokens} tokens, fewer than one packed row of {needed}; \
                     raise eval_ratio or use padding",
                    eval_texts.len()
                ),
            },
            other => other,
        })?
    };
    Ok(Prepared { train, eval })
}

/// Calibration inputs for the quantizers: `n` seeded windows of `seq_len` tokens, from the configured
/// dataset, or from the project's calibration text ([`DEFAULT_CALIBRATION_TEXT`]) when `cfg` is `None`.
pub fn calibration_samples(
    cfg: Option<&DataConfig>,
    tok: &ModelTokenizer,
    n: usize,
    seq_len: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    let texts = match cfg {
        Some(c) => c.texts(&tok.config)?,
        None => paragraphs(DEFAULT_CALIBRATION_TEXT),
    };
    calibration(&tok.encode_all(&texts)?, tok.eos_id, n, seq_len, seed)
}

/// The blocks of a text separated by blank lines (one document each; a code block or a dialogue stays whole).
pub fn paragraphs(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    for line in text.lines().chain([""]) {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                docs.push(cur.join("\n"));
                cur.clear();
            }
        } else {
            cur.push(line);
        }
    }
    docs
}

/// The project's default calibration text (data/calibration.txt, written by the project).
pub const DEFAULT_CALIBRATION_TEXT: &str = include_str!("../../../data/calibration.txt");

/// The project's held-out evaluation text for perplexity (data/eval.txt, written by the project).
pub const DEFAULT_EVAL_TEXT: &str = include_str!("../../../data/eval.txt");

#[cfg(test)]
mod tests;
