//! Local dataset files as Hugging Face `datasets` loads them: `json` (JSON Lines, a JSON list of objects, or
//! `{"data": [...]}`) and `text` (one row per line, column `text`), split `train`.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{DataError, Result};

/// One row of the dataset with where it came from (for error messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// `file:line N` or `file: record N`.
    pub origin: String,
    /// The row's columns.
    pub fields: Map<String, Value>,
}

impl Record {
    /// The field as text (numbers and booleans printed as Python's `str.format` would, roughly).
    pub fn text(&self, field: &str) -> Result<String> {
        match self.fields.get(field) {
            None => Err(DataError::MissingField {
                origin: self.origin.clone(),
                field: field.to_string(),
                available: self.fields.keys().cloned().collect::<Vec<_>>().join(", "),
            }),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(Value::Bool(b)) => Ok(if *b { "True" } else { "False" }.to_string()),
            Some(other) => Err(DataError::FieldType {
                origin: self.origin.clone(),
                field: field.to_string(),
                found: json_kind(other).to_string(),
            }),
        }
    }
}

/// The local formats of `--data_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataName {
    /// JSON Lines, a JSON list of objects, or `{"data": [...]}`.
    Json,
    /// Plain text, one row per non-empty line in column `text`.
    Text,
}

impl std::str::FromStr for DataName {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            other => Err(DataError::UnsupportedDataName(other.to_string())),
        }
    }
}

/// Splits Olive's comma-separated `--data_files` value into entries.
pub fn split_data_files(arg: &str) -> Vec<String> {
    arg.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Expands paths and glob patterns (sorted matches) into files; an entry matching nothing is an error.
pub fn resolve_files(entries: &[String]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in entries {
        if entry.contains(['*', '?', '[']) {
            let paths = glob::glob(entry).map_err(|e| DataError::BadPattern {
                pattern: entry.clone(),
                reason: e.to_string(),
            })?;
            let mut matched: Vec<PathBuf> = paths
                .filter_map(std::result::Result::ok)
                .filter(|p| p.is_file())
                .collect();
            if matched.is_empty() {
                return Err(DataError::NoFiles(entry.clone()));
            }
            matched.sort();
            files.extend(matched);
        } else {
            let path = PathBuf::from(entry);
            if !path.is_file() {
                return Err(DataError::NoFiles(entry.clone()));
            }
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(DataError::Empty("no --data_files given".into()));
    }
    Ok(files)
}

/// Loads every record of `files` in order; `split` must be `train` (local files have no other split).
pub fn load_records(name: DataName, files: &[PathBuf], split: &str) -> Result<Vec<Record>> {
    if split != "train" {
        return Err(DataError::UnknownSplit(split.to_string()));
    }
    let mut records = Vec::new();
    for path in files {
        let content = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.clone(),
            source,
        })?;
        match name {
            DataName::Text => records.extend(text_records(path, &content)),
            DataName::Json => records.extend(json_records(path, &content)?),
        }
    }
    Ok(records)
}

fn text_records(path: &Path, content: &str) -> Vec<Record> {
    content
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let mut fields = Map::new();
            fields.insert("text".into(), Value::String(l.to_string()));
            Record {
                origin: format!("{}:line {}", path.display(), i + 1),
                fields,
            }
        })
        .collect()
}

fn json_records(path: &Path, content: &str) -> Result<Vec<Record>> {
    let trimmed = content.trim_start();
    let whole: Option<Value> = if trimmed.starts_with('[') || trimmed.starts_with('{') {
        serde_json::from_str(content).ok()
    } else {
        None
    };
    let list = match whole {
        Some(Value::Array(items)) => Some(items),
        Some(Value::Object(mut obj)) => match obj.remove("data") {
            Some(Value::Array(items)) => Some(items),
            Some(other) => {
                obj.insert("data".into(), other);
                return Ok(vec![to_record(
                    Value::Object(obj),
                    format!("{}:line 1", path.display()),
                )?]);
            }
            None => {
                return Ok(vec![to_record(
                    Value::Object(obj),
                    format!("{}:line 1", path.display()),
                )?])
            }
        },
        _ => None,
    };
    if let Some(items) = list {
        return items
            .into_iter()
            .enumerate()
            .map(|(i, v)| to_record(v, format!("{}: record {}", path.display(), i + 1)))
            .collect();
    }
    if trimmed.starts_with('[') {
        // A JSON list that failed to parse as a whole: report serde's position.
        let reason = serde_json::from_str::<Value>(content)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let line = serde_json::from_str::<Value>(content)
            .err()
            .map_or(1, |e| e.line());
        return Err(DataError::BadJson {
            path: path.to_path_buf(),
            line,
            reason,
        });
    }
    let mut out = Vec::new();
    for (i, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| DataError::BadJson {
            path: path.to_path_buf(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        out.push(to_record(
            value,
            format!("{}:line {}", path.display(), i + 1),
        )?);
    }
    Ok(out)
}

fn to_record(value: Value, origin: String) -> Result<Record> {
    match value {
        Value::Object(fields) => Ok(Record { origin, fields }),
        other => Err(DataError::NotARecord {
            origin,
            found: json_kind(&other).to_string(),
        }),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
