//! Olive's workflow schema (olive/workflows/run/config.py `RunConfig`, olive/engine/config.py, Olive 0.13):
//! `input_model`, `systems`, `data_configs`, `evaluators`, `passes`, and the engine's fields either under `engine`
//! or at the top level (Olive nests unknown top-level keys into `engine`). Like Olive's `NestedConfig`, a model,
//! system or pass may give its parameters under `config` or beside `type`. Everything is checked here, before any
//! pass runs, with errors naming the key path.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::data_config::WorkflowDataConfig;
use super::document::{typed, Node};

/// A parsed workflow.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub workflow_id: String,
    pub input_model: InputModel,
    /// Olive's `data_configs`, each with its `name`.
    pub data_configs: Vec<WorkflowDataConfig>,
    /// Olive's `evaluators`: name → evaluator config (`metrics`).
    pub evaluators: Vec<(String, Value)>,
    /// The passes, in the file's order.
    pub passes: Vec<PassEntry>,
    pub engine: Engine,
    /// The device of the target system's first accelerator (`cpu` when no system is named).
    pub device: String,
    /// The target's execution providers, first preferred.
    pub execution_providers: Vec<String>,
}

/// The input model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputModel {
    /// `hf` (Olive's HfModel) or `onnx` (OnnxModel), as olive_pass_api's kinds.
    pub kind: String,
    pub model_path: PathBuf,
    /// An ONNX file name inside `model_path` (OnnxModel's `onnx_file_name`).
    pub onnx_file_name: Option<String>,
    /// A PEFT adapter folder (HfModel's `adapter_path`).
    pub adapter_path: Option<PathBuf>,
}

/// One pass of the workflow: its name and its configs — one, or a list of alternatives that a search chooses
/// among (Olive's `passes: {name: [config, ...]}`).
#[derive(Debug, Clone, PartialEq)]
pub struct PassEntry {
    pub name: String,
    pub choices: Vec<PassChoice>,
    /// The pass's own evaluator, when it names one.
    pub evaluator: Option<EvaluatorRef>,
}

/// One config of a pass: Olive's pass type and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct PassChoice {
    /// The pass type as written (matched to a plugin's pass case-insensitively, as Olive does).
    pub pass_type: String,
    /// Parameters from `config` and beside `type`, merged.
    pub config: Map<String, Value>,
}

/// An evaluator: a name in `evaluators`, or one given inline.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum EvaluatorRef {
    Name(String),
    Inline(Value),
}

/// The engine's fields (olive/engine/config.py `EngineConfig` + `RunEngineConfig`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Engine {
    /// `search_strategy`: a mapping, `true` (Olive's joint TPE default) or `false`/absent (no search).
    #[serde(default)]
    pub search_strategy: Option<Value>,
    /// The system the passes run on (a name in `systems`, or inline).
    #[serde(default)]
    pub host: Option<Value>,
    /// The system models are evaluated on.
    #[serde(default)]
    pub target: Option<Value>,
    #[serde(default)]
    pub evaluator: Option<EvaluatorRef>,
    #[serde(default = "yes")]
    pub evaluate_input_model: bool,
    #[serde(default)]
    pub output_dir: Option<PathBuf>,
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// Olive's `cache_config` (`cache_dir`, `clean_cache`, ...), which takes the place of the flat fields.
    #[serde(default)]
    pub cache_config: Option<CacheConfig>,
    #[serde(default)]
    pub clean_cache: bool,
    #[serde(default)]
    pub clean_evaluation_cache: bool,
    #[serde(default = "default_log_level")]
    pub log_severity_level: u8,
    #[serde(default)]
    pub plot_pareto_frontier: bool,
    #[serde(default)]
    pub no_artifacts: bool,
    /// Olive's `packaging_config` (one or a list; Zipfile only), checked by `Workflow::packaging`.
    #[serde(default)]
    pub packaging_config: Option<Value>,
    #[serde(default)]
    pub enable_shared_cache: bool,
    #[serde(default)]
    pub ort_log_severity_level: Option<u8>,
    #[serde(default)]
    pub ort_py_log_severity_level: Option<u8>,
    #[serde(default)]
    pub log_to_file: bool,
}

/// Olive's `cache_config`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    #[serde(default)]
    pub clean_cache: bool,
    #[serde(default)]
    pub clean_evaluation_cache: bool,
    #[serde(default)]
    pub enable_shared_cache: bool,
    #[serde(default)]
    pub update_shared_cache: bool,
    #[serde(default)]
    pub account_name: Option<String>,
    #[serde(default)]
    pub container_name: Option<String>,
}

fn yes() -> bool {
    true
}

/// Olive's DEFAULT_CACHE_DIR.
fn default_cache_dir() -> PathBuf {
    PathBuf::from(".olive-cache")
}

fn default_log_level() -> u8 {
    1
}

/// Top-level keys that are not engine fields.
const SECTIONS: &[&str] = &[
    "workflow_id",
    "input_model",
    "systems",
    "data_configs",
    "evaluators",
    "engine",
    "passes",
];

impl Workflow {
    /// Reads the workflow's sections from a parsed file. Relative paths in it are relative to the current folder,
    /// as in Olive.
    pub fn from_node(root: &Node) -> anyhow::Result<Self> {
        let mut engine = Map::new();
        let mut sections = Map::new();
        for (key, value) in root.entries("")? {
            if SECTIONS.contains(&key.as_str()) {
                sections.insert(key.clone(), value.to_json());
            } else {
                engine.insert(key.clone(), value.to_json());
            }
        }
        if let Some(nested) = sections.remove("engine") {
            let Value::Object(nested) = nested else {
                bail!("engine: expected a mapping");
            };
            for (key, value) in nested {
                if engine.contains_key(&key) {
                    bail!("engine.{key}: given both under `engine` and at the top level");
                }
                engine.insert(key, value);
            }
        }
        let engine: Engine = typed(&Value::Object(engine), "engine")?;
        warn_ignored(&engine);

        let workflow_id = match sections.get("workflow_id") {
            None => "default_workflow".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => bail!("workflow_id: expected a string, found {other}"),
        };
        let input_model = sections
            .get("input_model")
            .ok_or_else(|| anyhow!("input_model: missing; every workflow names its input model"))
            .and_then(input_model)?;
        let systems = match sections.get("systems") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => bail!("systems: expected a mapping of system names, found {other}"),
        };
        let (device, execution_providers) = target_device(&systems, &engine)?;
        let data_configs = data_configs(sections.get("data_configs"))?;
        let evaluators = match sections.get("evaluators") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Some(other) => {
                bail!("evaluators: expected a mapping of evaluator names, found {other}")
            }
        };
        let passes = match root.entries("")?.iter().find(|(k, _)| k == "passes") {
            None => Vec::new(),
            Some((_, node)) => passes(node)?,
        };
        let workflow = Workflow {
            workflow_id,
            input_model,
            data_configs,
            evaluators,
            passes,
            engine,
            device,
            execution_providers,
        };
        workflow.check_references()?;
        workflow.packaging()?;
        Ok(workflow)
    }

    /// The zips to write of the output model (Olive's `packaging_config`).
    pub fn packaging(&self) -> anyhow::Result<Vec<crate::package::PackagingConfig>> {
        match &self.engine.packaging_config {
            None => Ok(Vec::new()),
            Some(value) => crate::package::parse_configs(value),
        }
    }

    /// The cache folder (`cache_config.cache_dir` over `cache_dir`).
    pub fn cache_dir(&self) -> &Path {
        match &self.engine.cache_config {
            Some(c) => &c.cache_dir,
            None => &self.engine.cache_dir,
        }
    }

    /// Whether the cache is cleaned before the run.
    pub fn clean_cache(&self) -> bool {
        self.engine
            .cache_config
            .as_ref()
            .map_or(self.engine.clean_cache, |c| c.clean_cache)
    }

    /// Whether stored evaluations are dropped before the run.
    pub fn clean_evaluation_cache(&self) -> bool {
        self.engine
            .cache_config
            .as_ref()
            .map_or(self.engine.clean_evaluation_cache, |c| {
                c.clean_evaluation_cache
            })
    }

    /// Where outputs go: `output_dir`, else the current folder (Olive's default).
    pub fn output_dir(&self) -> PathBuf {
        self.engine
            .output_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// The evaluator config for a pass's output: the pass's own, else the engine's.
    pub fn evaluator_for(
        &self,
        pass: Option<&PassEntry>,
    ) -> anyhow::Result<Option<(String, Value)>> {
        let chosen = pass
            .and_then(|p| p.evaluator.as_ref())
            .or(self.engine.evaluator.as_ref());
        match chosen {
            None => Ok(None),
            Some(EvaluatorRef::Inline(v)) => Ok(Some(("evaluator".to_owned(), v.clone()))),
            Some(EvaluatorRef::Name(name)) => self
                .evaluators
                .iter()
                .find(|(n, _)| n == name)
                .map(|(n, v)| Some((format!("evaluators.{n}"), v.clone())))
                .ok_or_else(|| {
                    anyhow!(
                        "evaluator `{name}` is not in `evaluators` (defined: {})",
                        names(self.evaluators.iter().map(|(n, _)| n.as_str()))
                    )
                }),
        }
    }

    /// Every evaluator name used exists.
    fn check_references(&self) -> anyhow::Result<()> {
        self.evaluator_for(None)?;
        for pass in &self.passes {
            self.evaluator_for(Some(pass))
                .map_err(|e| anyhow!("passes.{}.evaluator: {e}", pass.name))?;
        }
        Ok(())
    }
}

fn names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<_> = names.collect();
    if all.is_empty() {
        "none".to_owned()
    } else {
        all.join(", ")
    }
}

/// Olive features accepted for compatibility that do nothing here.
fn warn_ignored(engine: &Engine) {
    let mut ignored = Vec::new();
    if engine.enable_shared_cache
        || engine
            .cache_config
            .as_ref()
            .is_some_and(|c| c.enable_shared_cache || c.update_shared_cache)
    {
        ignored.push("enable_shared_cache (there is no shared cache; the local cache is used)");
    }
    if engine.log_to_file {
        ignored.push("log_to_file");
    }
    for field in ignored {
        tracing::warn!("engine.{field}: not supported here; ignored");
    }
}

/// A `{type, config: {...}}` or `{type, ...}` mapping as (type, merged parameters), Olive's NestedConfig rule.
fn nested(value: &Value, path: &str) -> anyhow::Result<(String, Map<String, Value>)> {
    let Value::Object(map) = value else {
        bail!("{path}: expected a mapping with `type`, found {value}");
    };
    let mut params = Map::new();
    let mut kind = None;
    for (key, v) in map {
        match key.as_str() {
            "type" => match v {
                Value::String(s) => kind = Some(s.clone()),
                other => bail!("{path}.type: expected a string, found {other}"),
            },
            "config" => match v {
                Value::Object(inner) => {
                    for (k, v) in inner {
                        if params.insert(k.clone(), v.clone()).is_some() {
                            bail!("{path}.config.{k}: given both in `config` and beside `type`");
                        }
                    }
                }
                Value::Null => {}
                other => bail!("{path}.config: expected a mapping, found {other}"),
            },
            _ => {
                if params.insert(key.clone(), v.clone()).is_some() {
                    bail!("{path}.{key}: given both in `config` and beside `type`");
                }
            }
        }
    }
    let kind = kind.ok_or_else(|| anyhow!("{path}.type: missing"))?;
    Ok((kind, params))
}

/// HfModel and OnnxModel; other model types are named as unsupported.
fn input_model(value: &Value) -> anyhow::Result<InputModel> {
    let (kind, mut params) = nested(value, "input_model")?;
    let kind = match kind.to_ascii_lowercase().as_str() {
        "hfmodel" => "hf",
        "onnxmodel" => "onnx",
        _ => bail!("input_model.type: `{kind}` is not supported; expected HfModel or OnnxModel"),
    };
    let path_field =
        |params: &mut Map<String, Value>, key: &str| -> anyhow::Result<Option<PathBuf>> {
            match params.remove(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(PathBuf::from(s))),
                Some(other) => bail!("input_model.{key}: expected a path, found {other}"),
            }
        };
    let model_path = path_field(&mut params, "model_path")?
        .ok_or_else(|| anyhow!("input_model.model_path: missing"))?;
    let adapter_path = path_field(&mut params, "adapter_path")?;
    let onnx_file_name = match params.remove("onnx_file_name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => bail!("input_model.onnx_file_name: expected a string, found {other}"),
    };
    if kind == "onnx" && adapter_path.is_some() {
        bail!("input_model.adapter_path: only an HfModel takes an adapter");
    }
    // Loading hints for PyTorch (task, load_kwargs, io_config, ...) have no meaning for our loaders.
    let known_hints = [
        "task",
        "load_kwargs",
        "io_config",
        "model_attributes",
        "generative",
        "inference_settings",
        "use_ort_extensions",
        "external_initializers_file_name",
        "constant_inputs_file_name",
        "model_loading_args",
    ];
    for key in params.keys() {
        if !known_hints.contains(&key.as_str()) {
            bail!(
                "input_model.{key}: unknown field; expected model_path, adapter_path, onnx_file_name or Olive's \
                 loading hints ({})",
                known_hints.join(", ")
            );
        }
        tracing::debug!("input_model.{key}: a PyTorch loading hint, not used here");
    }
    Ok(InputModel {
        kind: kind.to_owned(),
        model_path,
        onnx_file_name,
        adapter_path,
    })
}

/// The device and execution providers of the engine's target (a system name or inline), else the CPU.
fn target_device(
    systems: &Map<String, Value>,
    engine: &Engine,
) -> anyhow::Result<(String, Vec<String>)> {
    for (name, system) in systems {
        let (kind, _) = nested(system, &format!("systems.{name}"))?;
        if !kind.eq_ignore_ascii_case("LocalSystem") {
            bail!(
                "systems.{name}.type: `{kind}` is not supported; only LocalSystem runs here (no Docker, AzureML or \
                 Python environment systems)"
            );
        }
    }
    let system = |field: &str, value: &Option<Value>| -> anyhow::Result<Option<(String, Value)>> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(name)) => systems
                .get(name)
                .map(|s| Some((format!("systems.{name}"), s.clone())))
                .ok_or_else(|| {
                    anyhow!(
                        "engine.{field}: system `{name}` is not in `systems` (defined: {})",
                        names(systems.keys().map(String::as_str))
                    )
                }),
            Some(inline) => Ok(Some((format!("engine.{field}"), inline.clone()))),
        }
    };
    system("host", &engine.host)?;
    let Some((path, target)) = system("target", &engine.target)? else {
        return Ok(("cpu".to_owned(), vec!["CPUExecutionProvider".to_owned()]));
    };
    let (kind, params) = nested(&target, &path)?;
    if !kind.eq_ignore_ascii_case("LocalSystem") {
        bail!("{path}.type: `{kind}` is not supported; only LocalSystem runs here");
    }
    let accelerators = match params.get("accelerators") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(other) => bail!("{path}.accelerators: expected a list, found {other}"),
    };
    let Some(first) = accelerators.first() else {
        return Ok(("cpu".to_owned(), vec!["CPUExecutionProvider".to_owned()]));
    };
    let device = match first.get("device") {
        None | Some(Value::Null) => "cpu".to_owned(),
        Some(Value::String(d)) => d.to_ascii_lowercase(),
        Some(other) => bail!("{path}.accelerators[0].device: expected a string, found {other}"),
    };
    let providers: Vec<String> = match first.get("execution_providers") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => typed(v, &format!("{path}.accelerators[0].execution_providers"))?,
    };
    Ok((device, providers))
}

/// `data_configs`: a list of Olive data configs with unique `name`s.
fn data_configs(value: Option<&Value>) -> anyhow::Result<Vec<WorkflowDataConfig>> {
    let configs: Vec<WorkflowDataConfig> = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(v) => typed(v, "data_configs")?,
    };
    for (i, c) in configs.iter().enumerate() {
        if configs[..i].iter().any(|other| other.name == c.name) {
            bail!(
                "data_configs[{i}].name: `{}` is used twice; names must be unique",
                c.name
            );
        }
    }
    Ok(configs)
}

/// `passes`: name → a pass config, or a list of alternative configs (Olive's form; a search picks one).
fn passes(node: &Node) -> anyhow::Result<Vec<PassEntry>> {
    let mut out = Vec::new();
    for (name, value) in node.entries("passes")? {
        let path = format!("passes.{name}");
        let items: Vec<(String, Value)> = match value {
            Node::List(items) if items.is_empty() => {
                bail!("{path}: an empty list; give a pass config")
            }
            Node::List(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| (format!("{path}[{i}]"), item.to_json()))
                .collect(),
            other => vec![(path.clone(), other.to_json())],
        };
        let mut choices = Vec::new();
        let mut evaluator = None;
        for (at, item) in items {
            let (pass_type, mut config) = nested(&item, &at)?;
            match config.remove("evaluator") {
                None | Some(Value::Null) => {}
                Some(v) => {
                    let this: EvaluatorRef = typed(&v, &format!("{at}.evaluator"))?;
                    if evaluator.as_ref().is_some_and(|e| e != &this) {
                        bail!(
                            "{at}.evaluator: the alternatives of one pass must share one evaluator"
                        );
                    }
                    evaluator = Some(this);
                }
            }
            if let Some(host) = config.remove("host") {
                if !host.is_null() {
                    tracing::warn!("{at}.host: every pass runs on the local system here; ignored");
                }
            }
            choices.push(PassChoice { pass_type, config });
        }
        out.push(PassEntry {
            name: name.clone(),
            choices,
            evaluator,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::document::parse;

    fn workflow(text: &str) -> anyhow::Result<Workflow> {
        Workflow::from_node(&parse(text, false)?)
    }

    #[test]
    fn olive_forms_are_read() {
        let w = workflow(
            r#"{
              "input_model": {"type": "HfModel", "config": {"model_path": "m", "task": "text-generation"}},
              "systems": {"local_system": {"type": "LocalSystem",
                  "accelerators": [{"device": "CPU", "execution_providers": ["CPUExecutionProvider"]}]}},
              "passes": {"q": {"type": "GptqQuantizer", "bits": 4, "config": {"group_size": 64}},
                         "b": [{"type": "ModelBuilder", "precision": "int4"}]},
              "engine": {"target": "local_system", "cache_dir": "c"},
              "output_dir": "out", "evaluate_input_model": false
            }"#,
        )
        .unwrap();
        assert_eq!(w.input_model.kind, "hf");
        assert_eq!(w.input_model.model_path, Path::new("m"));
        assert_eq!(w.device, "cpu");
        let names: Vec<_> = w.passes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["q", "b"]);
        assert_eq!(w.passes[0].choices[0].config["group_size"], 64);
        assert_eq!(w.passes[0].choices[0].config["bits"], 4);
        assert_eq!(w.passes[1].choices[0].pass_type, "ModelBuilder");
        assert_eq!(w.cache_dir(), Path::new("c"));
        assert_eq!(w.output_dir(), Path::new("out"));
        assert!(!w.engine.evaluate_input_model);
    }

    #[test]
    fn errors_name_the_key_path() {
        let base = r#""input_model": {"type": "HfModel", "model_path": "m"}"#;
        let cases = [
            (
                format!(r#"{{{base}, "evaluate_input_model": "yes"}}"#),
                "engine.evaluate_input_model: invalid type",
            ),
            (
                format!(r#"{{{base}, "cache_dri": "x"}}"#),
                "engine.cache_dri: unknown field `cache_dri`",
            ),
            (
                format!(r#"{{{base}, "passes": {{"q": {{"bits": 4}}}}}}"#),
                "passes.q.type: missing",
            ),
            (
                format!(r#"{{{base}, "evaluator": "e"}}"#),
                "evaluator `e` is not in `evaluators`",
            ),
            (
                format!(r#"{{{base}, "target": "gpu_system"}}"#),
                "engine.target: system `gpu_system` is not in `systems`",
            ),
            (
                r#"{"input_model": {"type": "PyTorchModel", "model_path": "m"}}"#.to_owned(),
                "input_model.type: `PyTorchModel` is not supported",
            ),
            (
                format!(r#"{{{base}, "data_configs": [{{"name": "d"}}, {{"name": "d"}}]}}"#),
                "data_configs[1].name: `d` is used twice",
            ),
            (
                format!(r#"{{{base}, "systems": {{"s": {{"type": "Docker"}}}}}}"#),
                "systems.s.type: `Docker` is not supported",
            ),
        ];
        for (text, expected) in cases {
            let err = format!("{:#}", workflow(&text).unwrap_err());
            assert!(
                err.contains(expected),
                "{text}\n→ {err}\nexpected {expected}"
            );
        }
    }
}
