//! Turns a workflow's pass entries into runnable passes before anything runs: the plugin pass behind each `type`
//! (case-insensitive, as Olive matches pass types), named data configs replaced by their contents, the target's
//! execution provider filled in where the pass takes one. A pass with several alternative configs keeps them all;
//! a search chooses one per trial through the pass's `type` search parameter (see [`ResolvedPass::choose`]).

use anyhow::{anyhow, bail};
use olive_pass_api::PassManifest;
use serde_json::{Map, Value};

use super::config::{PassChoice, Workflow};
use super::data_config::DataConfigRef;
use super::document::typed;
use super::schema;
use crate::plugins::{Discovery, Plugin};

/// The key of the search parameter that picks among a pass's alternatives.
pub const CHOICE_KEY: &str = "type";

/// A pass ready to run.
#[derive(Debug, Clone)]
pub struct ResolvedPass {
    /// The pass's name in the workflow.
    pub name: String,
    pub choices: Vec<Choice>,
}

/// One config of a pass, with its plugin and its named references resolved.
#[derive(Debug, Clone)]
pub struct Choice {
    /// How a search names this alternative: the pass type, numbered when two alternatives share one.
    pub label: String,
    pub plugin: Plugin,
    pub manifest: PassManifest,
    pub config: Map<String, Value>,
}

impl ResolvedPass {
    /// Where errors about this pass's config point.
    pub fn path(&self) -> String {
        format!("passes.{}", self.name)
    }

    /// The alternative a full config (fixed values plus one search point) selects, and the config it runs with.
    pub fn choose(
        &self,
        config: &Map<String, Value>,
    ) -> anyhow::Result<(&Choice, Map<String, Value>)> {
        if let [only] = self.choices.as_slice() {
            return Ok((only, config.clone()));
        }
        let mut config = config.clone();
        let label = config.remove(CHOICE_KEY);
        let choice = self
            .choices
            .iter()
            .find(|c| label.as_ref().and_then(Value::as_str) == Some(c.label.as_str()))
            .ok_or_else(|| {
                anyhow!(
                    "{}.{CHOICE_KEY}: no alternative is `{label:?}`",
                    self.path()
                )
            })?;
        Ok((choice, config))
    }

    /// Checks a full config against the chosen pass's schema.
    pub fn check(&self, config: &Map<String, Value>) -> anyhow::Result<()> {
        let (choice, config) = self.choose(config)?;
        schema::check(
            &choice.manifest.config_schema,
            &Value::Object(config),
            &self.path(),
        )
        .map_err(|e| anyhow!("{e} (pass type `{}`)", choice.manifest.name))
    }
}

/// Every pass type the discovered plugins serve, for "unknown pass type" errors.
fn available(found: &Discovery) -> String {
    let mut names: Vec<String> = found
        .plugins
        .iter()
        .flat_map(|p| p.manifest.passes.iter().map(|pass| pass.name.clone()))
        .collect();
    names.sort_unstable();
    names.join(", ")
}

/// The plugin pass for a workflow pass type; `at` is the pass config's key path.
fn find<'a>(
    found: &'a Discovery,
    choice: &PassChoice,
    at: &str,
) -> anyhow::Result<(&'a Plugin, &'a PassManifest)> {
    let mut matches = found.plugins.iter().flat_map(|plugin| {
        plugin
            .manifest
            .passes
            .iter()
            .filter(|pass| pass.name.eq_ignore_ascii_case(&choice.pass_type))
            .map(move |pass| (plugin, pass))
    });
    match (matches.next(), matches.next()) {
        (Some(one), None) => Ok(one),
        (Some((a, _)), Some((b, _))) => bail!(
            "{at}.type: `{}` is served by several plugins (`{}`, `{}`); keep one in the plugin path",
            choice.pass_type,
            a.manifest.name,
            b.manifest.name
        ),
        (None, _) => bail!(
            "{at}.type: unknown pass type `{}`; available: {}",
            choice.pass_type,
            available(found)
        ),
    }
}

/// Keys of a pass config that name a data config (Olive: `data_config`, `train_data_config`, ...).
pub(crate) fn is_data_key(key: &str) -> bool {
    key == "data_config" || key.ends_with("_data_config")
}

/// Resolves one config of a pass.
fn resolve_choice(
    workflow: &Workflow,
    found: &Discovery,
    choice: &PassChoice,
    at: &str,
) -> anyhow::Result<(Plugin, PassManifest, Map<String, Value>)> {
    let (plugin, manifest) = find(found, choice, at)?;
    let mut config = choice.config.clone();
    for (key, value) in config.iter_mut() {
        if is_data_key(key) && !value.is_null() {
            let path = format!("{at}.{key}");
            let reference: DataConfigRef = typed(value, &path)?;
            let resolved = reference
                .resolve(&workflow.data_configs, None)
                .map_err(|e| anyhow!("{path}: {e:#}"))?;
            *value = resolved.pass_value();
        }
    }
    let takes_provider = manifest
        .config_schema
        .pointer("/properties/execution_provider")
        .is_some();
    if takes_provider && !config.contains_key("execution_provider") {
        if let Some(ep) = workflow.execution_providers.first() {
            config.insert("execution_provider".into(), Value::String(ep.clone()));
        }
    }
    if !manifest.devices.iter().any(|d| d == &workflow.device) {
        bail!(
            "{at}: pass `{}` runs on {}; the target device is {}",
            manifest.name,
            manifest.devices.join(", "),
            workflow.device
        );
    }
    Ok((plugin.clone(), manifest.clone(), config))
}

/// Resolves every pass of the workflow.
pub fn resolve(workflow: &Workflow, found: &Discovery) -> anyhow::Result<Vec<ResolvedPass>> {
    let mut out = Vec::new();
    for entry in &workflow.passes {
        let several = entry.choices.len() > 1;
        let mut choices: Vec<Choice> = Vec::new();
        for (i, choice) in entry.choices.iter().enumerate() {
            let at = if several {
                format!("passes.{}[{i}]", entry.name)
            } else {
                format!("passes.{}", entry.name)
            };
            let (plugin, manifest, config) = resolve_choice(workflow, found, choice, &at)?;
            let mut label = manifest.name.clone();
            if choices.iter().any(|c| c.label == label) {
                label = format!("{label}#{i}");
            }
            choices.push(Choice {
                label,
                plugin,
                manifest,
                config,
            });
        }
        out.push(ResolvedPass {
            name: entry.name.clone(),
            choices,
        });
    }
    Ok(out)
}
