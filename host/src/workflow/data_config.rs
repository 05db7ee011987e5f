//! A workflow's `data_configs` entries in Olive's DataConfig schema (olive/data/config.py of olive-ai 0.13:
//! `name`, `type` = HuggingfaceContainer, `load_dataset_config` = huggingface_dataset's arguments,
//! `pre_process_data_config` = text_generation's TextGenParams or huggingface_pre_process's max_length / padding /
//! truncation, `dataloader_config`), mapped onto local files
//! only: the result is an [`olive_data::DataConfig`], which the evaluators read and which the quantize and LoRA
//! pass plugins take as their `data_config` / `train_data_config` field ([`ResolvedData::pass_value`]).
//!
//! Olive's components are NestedConfig: their parameters sit either beside `type` or under `params`; both are
//! read. What needs the Hugging Face hub (a dataset name other than `json`/`text`) or a user script is an error
//! that says what to pass instead.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use olive_data::{DataConfig, Layout};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One entry of a workflow's `data_configs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDataConfig {
    /// Letters, digits and underscores (Olive's rule).
    pub name: String,
    /// The container: `HuggingfaceContainer` (the only one with local-file meaning here).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_script: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_dir: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_dataset_config: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_process_data_config: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_process_data_config: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataloader_config: Option<Map<String, Value>>,
}

/// A metric's or pass's `data_config`: the name of a workflow data config, or one written inline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DataConfigRef {
    Name(String),
    Inline(Box<WorkflowDataConfig>),
}

/// A data config mapped onto local files.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResolvedData {
    /// The workflow name of the data config.
    pub name: String,
    /// Files, text rendering, tokenization and row layout, as olive-data takes them.
    pub data: DataConfig,
    /// `dataloader_config.batch_size` (Olive: 1).
    pub batch_size: usize,
}

impl ResolvedData {
    /// The JSON the quantizer plugins take as `data_config` and the LoRA plugin as `train_data_config`.
    pub fn pass_value(&self) -> Value {
        serde_json::to_value(&self.data).unwrap_or(Value::Null)
    }
}

impl DataConfigRef {
    /// The data config this names among `configs` (or the inline one), mapped onto local files; relative
    /// `data_files` are taken from `base` (the workflow file's folder) when given, else from the working folder.
    pub fn resolve(
        &self,
        configs: &[WorkflowDataConfig],
        base: Option<&Path>,
    ) -> anyhow::Result<ResolvedData> {
        match self {
            DataConfigRef::Name(name) => find(configs, name)?.resolve(base),
            DataConfigRef::Inline(c) => c.resolve(base),
        }
    }
}

/// The data config called `name`; the error lists the names there are.
pub fn find<'a>(
    configs: &'a [WorkflowDataConfig],
    name: &str,
) -> anyhow::Result<&'a WorkflowDataConfig> {
    configs.iter().find(|c| c.name == name).ok_or_else(|| {
        let names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
        anyhow!(
            "data config {name:?} is not among the workflow's data_configs ({})",
            if names.is_empty() {
                "none defined".to_string()
            } else {
                names.join(", ")
            }
        )
    })
}

/// A component's parameters: those under `params` and those beside `type` (Olive's NestedConfig).
fn params(
    component: &Option<Map<String, Value>>,
    key: &str,
) -> anyhow::Result<(Option<String>, Map<String, Value>)> {
    let Some(map) = component else {
        return Ok((None, Map::new()));
    };
    let mut out = Map::new();
    let mut kind = None;
    for (k, v) in map {
        match k.as_str() {
            "type" => kind = v.as_str().map(str::to_owned),
            "params" => {
                let inner = v
                    .as_object()
                    .ok_or_else(|| anyhow!("{key}.params: expected an object"))?;
                for (pk, pv) in inner {
                    if out.insert(pk.clone(), pv.clone()).is_some() {
                        bail!("{key}.{pk}: given both beside type and under params");
                    }
                }
            }
            _ => {
                if out.insert(k.clone(), v.clone()).is_some() {
                    bail!("{key}.{k}: given both beside type and under params");
                }
            }
        }
    }
    // Olive fills unset parameters with null; null means the default here too
    out.retain(|_, v| !v.is_null());
    Ok((kind, out))
}

fn check_type(kind: &Option<String>, key: &str, allowed: &[&str]) -> anyhow::Result<()> {
    match kind {
        Some(t) if !allowed.iter().any(|a| a.eq_ignore_ascii_case(t)) => {
            bail!(
                "{key}.type {t:?}: only {} is supported (local files)",
                allowed.join(" or ")
            )
        }
        _ => Ok(()),
    }
}

fn string(v: &Value, key: &str) -> anyhow::Result<String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{key}: expected a string, found {v}"))
}

fn count(v: &Value, key: &str) -> anyhow::Result<usize> {
    v.as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| anyhow!("{key}: expected a nonnegative integer, found {v}"))
}

fn boolean(v: &Value, key: &str) -> anyhow::Result<bool> {
    v.as_bool()
        .ok_or_else(|| anyhow!("{key}: expected true or false, found {v}"))
}

fn strings(v: &Value, key: &str) -> anyhow::Result<Vec<String>> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, x)| string(x, &format!("{key}[{i}]")))
            .collect(),
        other => bail!("{key}: expected a string or a list of strings, found {other}"),
    }
}

impl WorkflowDataConfig {
    /// Maps this data config onto local files (see the module doc); errors name the key path.
    pub fn resolve(&self, base: Option<&Path>) -> anyhow::Result<ResolvedData> {
        self.resolve_inner(base)
            .with_context(|| format!("data config {:?}", self.name))
    }

    fn resolve_inner(&self, base: Option<&Path>) -> anyhow::Result<ResolvedData> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            bail!(
                "name {:?}: only letters, digits and underscores (Olive's rule)",
                self.name
            );
        }
        if let Some(t) = &self.kind {
            if !t.eq_ignore_ascii_case("HuggingfaceContainer") {
                bail!("type {t:?}: only HuggingfaceContainer (with local data_files) is supported");
            }
        }
        for (key, v) in [
            ("user_script", &self.user_script),
            ("script_dir", &self.script_dir),
        ] {
            if v.as_ref().is_some_and(|v| !v.is_null()) {
                bail!("{key}: olive-host runs no user scripts; describe the data with load_dataset_config and \
                       pre_process_data_config");
            }
        }
        let mut data = DataConfig::default();
        self.load_dataset(&mut data, base)?;
        self.pre_process(&mut data)?;
        let (kind, post) = params(&self.post_process_data_config, "post_process_data_config")?;
        check_type(
            &kind,
            "post_process_data_config",
            &["text_generation_post_process"],
        )?;
        if let Some(k) = post.keys().next() {
            bail!(
                "post_process_data_config.{k}: not supported (the evaluators read logits directly)"
            );
        }
        let (kind, loader) = params(&self.dataloader_config, "dataloader_config")?;
        check_type(&kind, "dataloader_config", &["default_dataloader"])?;
        let mut batch_size = 1;
        for (k, v) in &loader {
            match k.as_str() {
                "batch_size" => batch_size = count(v, "dataloader_config.batch_size")?.max(1),
                other => bail!("dataloader_config.{other}: not supported; accepted: batch_size"),
            }
        }
        Ok(ResolvedData {
            name: self.name.clone(),
            data,
            batch_size,
        })
    }

    fn load_dataset(&self, data: &mut DataConfig, base: Option<&Path>) -> anyhow::Result<()> {
        const KEY: &str = "load_dataset_config";
        let (kind, p) = params(&self.load_dataset_config, KEY)?;
        check_type(&kind, KEY, &["huggingface_dataset"])?;
        let hub = |what: &str| {
            anyhow!("{KEY}.{what}: the dataset would come from the Hugging Face hub, which olive-host does not \
                     reach; save it locally and pass {KEY}.data_name \"json\" (JSON/JSON Lines) or \"text\" with \
                     {KEY}.data_files")
        };
        let name = match p.get("data_name") {
            Some(v) => string(v, &format!("{KEY}.data_name"))?,
            None => bail!("{KEY}.data_name: missing; give \"json\" or \"text\" with data_files"),
        };
        if name != "json" && name != "text" {
            return Err(hub(&format!("data_name {name:?}")));
        }
        data.data_name = name;
        let mut split = None;
        for (k, v) in &p {
            let key = format!("{KEY}.{k}");
            match k.as_str() {
                "data_name" | "data_files" => {}
                "split" => split = Some(string(v, &key)?),
                "subset" | "data_dir" => return Err(hub(k)),
                "trust_remote_code" | "streaming" => {}
                other => {
                    bail!("{KEY}.{other}: not supported; accepted: data_name, data_files, split")
                }
            }
        }
        let files = match p.get("data_files") {
            None => bail!("{KEY}.data_files: missing; local data needs data_files (olive-host does not reach the \
                           Hugging Face hub)"),
            // datasets' {split: files}: the named split's files (Olive's default split is "validation")
            Some(Value::Object(by_split)) => {
                let s = split.clone().unwrap_or_else(|| "validation".into());
                let v = by_split.get(&s).ok_or_else(|| {
                    anyhow!("{KEY}.data_files has no split {s:?} (it has {}); set {KEY}.split",
                            by_split.keys().cloned().collect::<Vec<_>>().join(", "))
                })?;
                split = None;
                strings(v, &format!("{KEY}.data_files.{s}"))?
            }
            Some(v) => strings(v, &format!("{KEY}.data_files"))?,
        };
        data.data_files = files
            .into_iter()
            .map(|f| match base {
                Some(b) if Path::new(&f).is_relative() => b.join(&f).display().to_string(),
                _ => f,
            })
            .collect();
        // local files are one split, "train"; olive-data refuses any other
        data.split = split.unwrap_or_else(|| "train".into());
        // a missing file is an error now, before any pass or evaluation runs
        olive_data::resolve_files(&data.data_files)
            .map_err(|e| anyhow!("{KEY}.data_files: {e}"))?;
        Ok(())
    }

    fn pre_process(&self, data: &mut DataConfig) -> anyhow::Result<()> {
        const KEY: &str = "pre_process_data_config";
        let (kind, p) = params(&self.pre_process_data_config, KEY)?;
        check_type(
            &kind,
            KEY,
            &[
                "huggingface_pre_process",
                "tokenizer_pre_process",
                "text_generation_huggingface_pre_process",
            ],
        )?;
        let mut text_cols: Option<Vec<String>> = None;
        for (k, v) in &p {
            let key = format!("{KEY}.{k}");
            match k.as_str() {
                "max_seq_len" => data.max_seq_len = count(v, &key)?,
                "max_samples" => data.max_samples = Some(count(v, &key)?),
                "text_cols" | "input_cols" => text_cols = Some(strings(v, &key)?),
                "text_template" => data.text_template = Some(string(v, &key)?),
                "chat_template" => match v {
                    Value::Bool(b) => data.use_chat_template = *b,
                    _ => bail!("{key}: only true/false (the tokenizer's own chat template) is supported"),
                },
                "message_col" if v.as_str() == Some("messages") => {}
                "strategy" => {
                    data.layout = match string(v, &key)?.replace('_', "-").as_str() {
                        "join" => Layout::Pack,
                        "line-by-line" => Layout::Pad,
                        other => bail!("{key} {other:?}: supported are \"join\" and \"line-by-line\""),
                    }
                }
                "random_seed" => data.seed = v.as_u64().ok_or_else(|| anyhow!("{key}: expected an integer"))?,
                // olive-rs: the fraction of records held out for evaluation (finetune's --eval_split_ratio)
                "eval_ratio" => {
                    data.eval_ratio = v
                        .as_f64()
                        .filter(|r| (0.0..1.0).contains(r))
                        .ok_or_else(|| anyhow!("{key}: expected a number in [0, 1)"))?
                }
                "pad_to_max_len" if boolean(v, &key)? => {}
                // huggingface_pre_process / tokenizer_pre_process (encoder calibration, OnnxStaticQuantization):
                // rows of max_length tokens, one text each when padded
                "max_length" => data.max_seq_len = count(v, &key)?,
                "padding" => {
                    data.layout = match v {
                        Value::Bool(true) => Layout::Pad,
                        Value::String(p) if p == "max_length" || p == "longest" => Layout::Pad,
                        Value::Bool(false) => Layout::Pack,
                        _ => bail!("{key} {v}: supported are true, false, \"max_length\" and \"longest\""),
                    }
                }
                "truncation" => {
                    boolean(v, &key)?;
                }
                "padding_side" if v.as_str() == Some("right") => {}
                "drop_short_sequences" if !boolean(v, &key)? => {}
                "joiner" if v.as_str() == Some("\n\n") => {}
                // tokenization never adds special tokens here (Olive's packing also adds none inside the text)
                "add_special_tokens" => {
                    boolean(v, &key)?;
                }
                // filled in by Olive itself, or without effect on local text data
                "model_name" | "trust_remote_code" | "task" | "processing_batch_size" | "use_attention_mask"
                | "random_retries" | "batch_size" => {}
                other => bail!(
                    "{KEY}.{other}{}: not supported; accepted: max_seq_len, max_samples, text_cols, \
                     text_template, chat_template, strategy (join | line-by-line), random_seed, max_length, \
                     padding, truncation",
                    if matches!(other, "message_col" | "pad_to_max_len" | "padding_side" | "drop_short_sequences"
                        | "joiner") { format!(" = {v}") } else { String::new() }
                ),
            }
        }
        if let Some(cols) = text_cols {
            match cols.as_slice() {
                [one] => data.text_field = one.clone(),
                _ if data.text_template.is_some() || data.use_chat_template => {}
                _ => bail!("{KEY}.text_cols {cols:?}: give one column, or a text_template naming the columns"),
            }
        }
        if data.max_seq_len < 2 {
            bail!("{KEY}.max_seq_len {}: must be at least 2", data.max_seq_len);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(v: Value) -> WorkflowDataConfig {
        serde_json::from_value(v).unwrap()
    }

    fn err(v: Value) -> String {
        let dir = files(&["f"]);
        format!("{:#}", config(v).resolve(Some(dir.path())).unwrap_err())
    }

    /// A folder with the (empty) data files the configs name.
    fn files(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for n in names {
            let p = dir.path().join(n);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "{}\n").unwrap();
        }
        dir
    }

    #[test]
    fn olive_quantize_data_config_maps_to_olive_data() {
        // the shape Olive's CLI writes for `--data_name json --data_files f.jsonl --text_template ...`
        let c = config(json!({
            "name": "calib", "type": "HuggingfaceContainer",
            "load_dataset_config": {"data_name": "json", "split": "train", "data_files": "d/f.jsonl",
                                    "subset": null, "trust_remote_code": false},
            "pre_process_data_config": {"text_template": "{prompt} {response}", "max_seq_len": 256,
                                        "max_samples": 8, "strategy": "line-by-line", "model_name": "m"},
            "dataloader_config": {"batch_size": 4}
        }));
        let dir = files(&["d/f.jsonl"]);
        let r = c.resolve(Some(dir.path())).unwrap();
        assert_eq!(r.name, "calib");
        assert_eq!(r.batch_size, 4);
        assert_eq!(
            r.data.data_files,
            [dir.path().join("d/f.jsonl").display().to_string()]
        );
        assert_eq!(r.data.split, "train");
        assert_eq!(r.data.text_template.as_deref(), Some("{prompt} {response}"));
        assert_eq!(
            (r.data.max_seq_len, r.data.max_samples, r.data.layout),
            (256, Some(8), Layout::Pad)
        );
        // the plugins' data_config field takes this JSON back as an olive_data::DataConfig
        let back: DataConfig = serde_json::from_value(r.pass_value()).unwrap();
        assert_eq!(back, r.data);
    }

    #[test]
    fn encoder_tokenizer_keys_map_to_rows() {
        // Olive's BERT calibration data config (huggingface_pre_process with padding to max_length)
        let c = config(json!({
            "name": "calib", "type": "HuggingfaceContainer",
            "load_dataset_config": {"data_name": "text", "data_files": "f"},
            "pre_process_data_config": {"input_cols": ["text"], "max_length": 128, "padding": "max_length",
                                        "truncation": true, "max_samples": 16}
        }));
        let dir = files(&["f"]);
        let r = c.resolve(Some(dir.path())).unwrap();
        assert_eq!(
            (r.data.max_seq_len, r.data.layout, r.data.max_samples),
            (128, Layout::Pad, Some(16))
        );
        let e = err(
            json!({"name": "w", "load_dataset_config": {"data_name": "json", "data_files": "f"},
                           "pre_process_data_config": {"padding": "do_not_pad"}}),
        );
        assert!(
            e.contains("pre_process_data_config.padding \"do_not_pad\""),
            "{e}"
        );
    }

    #[test]
    fn params_nest_under_params_or_beside_type() {
        let c = config(json!({
            "name": "t",
            "load_dataset_config": {"type": "huggingface_dataset",
                                    "params": {"data_name": "text", "data_files": ["a.txt", "b.txt"]}},
            "pre_process_data_config": {"params": {"text_cols": ["text"], "strategy": "join"}}
        }));
        let dir = files(&["a.txt", "b.txt", "tr.jsonl", "te.jsonl"]);
        let at = |f: &str| dir.path().join(f).display().to_string();
        let r = c.resolve(Some(dir.path())).unwrap();
        assert_eq!(r.data.data_name, "text");
        assert_eq!(r.data.data_files, [at("a.txt"), at("b.txt")]);
        assert_eq!(
            (r.data.text_field.as_str(), r.data.layout),
            ("text", Layout::Pack)
        );
        // datasets' {split: files} takes the named split
        let c = config(
            json!({"name": "s", "load_dataset_config": {"data_name": "json", "split": "test",
            "data_files": {"train": "tr.jsonl", "test": "te.jsonl"}}}),
        );
        let r = c.resolve(Some(dir.path())).unwrap();
        assert_eq!(
            (r.data.data_files.as_slice(), r.data.split.as_str()),
            (&[at("te.jsonl")][..], "train")
        );
    }

    #[test]
    fn hub_data_and_unknown_keys_are_clear_errors() {
        let cases = [
            (json!({"name": "w", "load_dataset_config": {"data_name": "wikitext", "subset": "wikitext-2-raw-v1"}}),
             "data config \"w\": load_dataset_config.data_name \"wikitext\": the dataset would come from the Hugging Face hub"),
            (json!({"name": "w", "load_dataset_config": {"data_name": "json", "data_files": ["f", "gone.jsonl"]}}),
             "data config \"w\": load_dataset_config.data_files: --data_files \"/"),
            (json!({"name": "w", "load_dataset_config": {"data_name": "json"}}),
             "load_dataset_config.data_files: missing; local data needs data_files"),
            (json!({"name": "w", "load_dataset_config": {"data_name": "json", "data_files": "f", "subset": "x"}}),
             "load_dataset_config.subset: the dataset would come from the Hugging Face hub"),
            (json!({"name": "w", "load_dataset_config": {"data_name": "json", "data_files": "f", "col_filters": {"a": 1}}}),
             "load_dataset_config.col_filters: not supported; accepted: data_name, data_files, split"),
            (json!({"name": "w", "load_dataset_config": {"data_name": "json", "data_files": "f"},
                    "pre_process_data_config": {"max_seq_len": "long"}}),
             "pre_process_data_config.max_seq_len: expected a nonnegative integer"),
            (json!({"name": "w", "load_dataset_config": {"data_name": "json", "data_files": "f"},
                    "pre_process_data_config": {"strategy": "join-random"}}),
             "pre_process_data_config.strategy \"join-random\""),
            (json!({"name": "w", "load_dataset_config": {"data_name": "json", "data_files": "f"},
                    "pre_process_data_config": {"pad_to_max_len": false}}),
             "pre_process_data_config.pad_to_max_len = false: not supported"),
            (json!({"name": "w", "type": "RawDataContainer"}), "type \"RawDataContainer\": only HuggingfaceContainer"),
            (json!({"name": "w", "user_script": "u.py"}), "user_script: olive-host runs no user scripts"),
            (json!({"name": "bad name"}), "name \"bad name\": only letters, digits and underscores"),
            (json!({"name": "w", "load_dataset_config": {"data_name": "json", "data_files": "f"},
                    "dataloader_config": {"shuffle": true}}), "dataloader_config.shuffle: not supported"),
        ];
        for (v, want) in cases {
            let got = err(v);
            assert!(got.contains(want), "want {want:?} in {got:?}");
        }
        let e =
            serde_json::from_value::<WorkflowDataConfig>(json!({"name": "w", "load_config": {}}))
                .unwrap_err();
        assert!(e.to_string().contains("unknown field `load_config`"), "{e}");
    }

    #[test]
    fn names_are_found_or_listed() {
        let cs = vec![config(
            json!({"name": "a", "load_dataset_config": {"data_name": "json", "data_files": "f"}}),
        )];
        let dir = files(&["f", "x.txt"]);
        let base = Some(dir.path());
        assert!(DataConfigRef::Name("a".into()).resolve(&cs, base).is_ok());
        let e = DataConfigRef::Name("b".into())
            .resolve(&cs, base)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("data config \"b\" is not among the workflow's data_configs (a)"),
            "{e}"
        );
        let inline: DataConfigRef = serde_json::from_value(json!({"name": "i",
            "load_dataset_config": {"data_name": "text", "data_files": "x.txt"}}))
        .unwrap();
        assert_eq!(inline.resolve(&cs, base).unwrap().name, "i");
    }
}
