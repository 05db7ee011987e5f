//! Turning records into training text as Olive's `text_gen_pre_process` does: a text field, a Python
//! `str.format`-style template with `{field}` placeholders, or the tokenizer's Jinja chat template
//! (tokenizer_config.json `chat_template`, rendered as transformers' `apply_chat_template(tokenize=False)`).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{DataError, Result};
use crate::load::Record;

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Field(String),
}

/// A `{field}` template; `{{` and `}}` stand for literal braces, as in Python's `str.format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextTemplate {
    pieces: Vec<Piece>,
}

impl TextTemplate {
    /// Parses `template` as given (see [`unescape_cli`] for shell-quoted `\n`).
    pub fn parse(template: &str) -> Result<Self> {
        let bad = |reason: &str| DataError::BadTemplate {
            template: template.to_string(),
            reason: reason.to_string(),
        };
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => return Err(bad("unclosed '{' placeholder")),
                            Some(ch) => name.push(ch),
                        }
                    }
                    if name.is_empty() || name.contains([':', '!', '[', '.']) {
                        return Err(bad(&format!(
                            "placeholder {{{name}}} must be a plain field name"
                        )));
                    }
                    if !lit.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Field(name));
                }
                '}' => return Err(bad("single '}' (write '}}' for a literal brace)")),
                other => lit.push(other),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Literal(lit));
        }
        Ok(Self { pieces })
    }

    /// The placeholder names in order of appearance.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Field(f) => Some(f.as_str()),
            Piece::Literal(_) => None,
        })
    }

    /// Fills the placeholders from `record`; a missing field names the record and the field.
    pub fn render(&self, record: &Record) -> Result<String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Field(f) => out.push_str(&record.text(f)?),
            }
        }
        Ok(out)
    }
}

/// Turns the two-character escapes `\n`, `\t`, `\r` and `\\` that a shell passes literally into the
/// characters they name. Olive hands `--text_template` to `str.format` unchanged, so its text keeps a
/// literal backslash-n; the lab's template means newlines, so our CLI unescapes it.
pub fn unescape_cli(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let rep = match chars.peek() {
                Some('n') => Some('\n'),
                Some('t') => Some('\t'),
                Some('r') => Some('\r'),
                Some('\\') => Some('\\'),
                _ => None,
            };
            if let Some(r) = rep {
                chars.next();
                out.push(r);
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// tokenizer_config.json's special tokens and chat template.
#[derive(Debug, Clone, Default)]
pub struct TokenizerConfig {
    /// Where it was read from (for errors).
    pub path: PathBuf,
    /// `bos_token`, if any.
    pub bos_token: Option<String>,
    /// `eos_token`, if any.
    pub eos_token: Option<String>,
    /// `pad_token`, if any.
    pub pad_token: Option<String>,
    /// `chat_template` (Jinja source), if any.
    pub chat_template: Option<String>,
}

impl TokenizerConfig {
    /// Reads `dir/tokenizer_config.json`; a token may be a string or `{"content": ...}`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer_config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| DataError::Io {
            path: path.clone(),
            source,
        })?;
        let v: Value = serde_json::from_str(&text).map_err(|e| DataError::BadJson {
            path: path.clone(),
            line: e.line(),
            reason: e.to_string(),
        })?;
        let token = |key: &str| match v.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(String::from),
            _ => None,
        };
        let chat_template = match v.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: transformers picks "default".
            Some(Value::Array(items)) => items
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(String::from),
            _ => None,
        };
        Ok(Self {
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
            pad_token: token("pad_token"),
            chat_template,
            path,
        })
    }

    /// Renders `messages` (`[{"role", "content"}]`) through the chat template.
    pub fn apply_chat_template(
        &self,
        messages: &Value,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let err = |reason: String| DataError::ChatTemplate {
            path: self.path.clone(),
            reason,
        };
        let source = self
            .chat_template
            .as_deref()
            .ok_or_else(|| err("tokenizer_config.json has no chat_template".into()))?;
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Python string/dict methods (`.strip()`, `.startswith()`, `.items()`) that Hugging Face templates use.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", source)
            .map_err(|e| err(e.to_string()))?;
        let tmpl = env.get_template("chat").map_err(|e| err(e.to_string()))?;
        let ctx = serde_json::json!({
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token.clone().unwrap_or_default(),
            "eos_token": self.eos_token.clone().unwrap_or_default(),
            "pad_token": self.pad_token.clone().unwrap_or_default(),
        });
        tmpl.render(ctx).map_err(|e| err(e.to_string()))
    }
}

/// Where a record's text comes from (Olive's priority: chat template, then template, then field).
#[derive(Debug, Clone)]
pub enum TextSource {
    /// One column, `--text_field`.
    Field(String),
    /// `--text_template`.
    Template(TextTemplate),
    /// `--use_chat_template`: a `messages` column, or `prompt`/`response` as a user and an assistant turn.
    Chat(TokenizerConfig),
}

impl TextSource {
    /// The text of one record.
    pub fn render(&self, record: &Record) -> Result<String> {
        match self {
            Self::Field(f) => record.text(f),
            Self::Template(t) => t.render(record),
            Self::Chat(cfg) => cfg.apply_chat_template(&messages_of(record)?, false),
        }
    }
}

/// The chat turns of a record: its `messages` list as is, else `prompt` (user) and `response` (assistant).
pub fn messages_of(record: &Record) -> Result<Value> {
    if let Some(m) = record.fields.get("messages") {
        return Ok(m.clone());
    }
    let prompt = record.text("prompt")?;
    let response = record.text("response")?;
    Ok(serde_json::json!([
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": response},
    ]))
}
