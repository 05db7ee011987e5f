//! Turns a workflow's pass entries into runnable passes before anything runs: the plugin pass behind each `type`
//! (case-insensitive, as Olive matches pass types), named data configs replaced by their contents, the target's
//! execution provider filled in where the pass takes one, and the config checked against the pass's schema.

use anyhow::{anyhow, bail};
use olive_pass_api::PassManifest;
use serde_json::{Map, Value};

use super::config::{PassEntry, Workflow};
use super::data_config::DataConfigRef;
use super::document::typed;
use super::schema;
use crate::plugins::{Discovery, Plugin};

/// A pass ready to run: the workflow entry, its plugin and the config with named references resolved.
#[derive(Debug, Clone)]
pub struct ResolvedPass {
    pub entry: PassEntry,
    pub plugin: Plugin,
    pub manifest: PassManifest,
    pub config: Map<String, Value>,
}

impl ResolvedPass {
    /// Where errors about this pass's config point.
    pub fn path(&self) -> String {
        format!("passes.{}", self.entry.name)
    }

    /// Checks a full config (fixed values plus one search point) against the pass's schema.
    pub fn check(&self, config: &Map<String, Value>) -> anyhow::Result<()> {
        schema::check(
            &self.manifest.config_schema,
            &Value::Object(config.clone()),
            &self.path(),
        )
        .map_err(|e| anyhow!("{e} (pass type `{}`)", self.manifest.name))
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

/// The plugin pass for a workflow pass type.
fn find<'a>(
    found: &'a Discovery,
    entry: &PassEntry,
) -> anyhow::Result<(&'a Plugin, &'a PassManifest)> {
    let mut matches = found.plugins.iter().flat_map(|plugin| {
        plugin
            .manifest
            .passes
            .iter()
            .filter(|pass| pass.name.eq_ignore_ascii_case(&entry.pass_type))
            .map(move |pass| (plugin, pass))
    });
    match (matches.next(), matches.next()) {
        (Some(one), None) => Ok(one),
        (Some((a, _)), Some((b, _))) => bail!(
            "passes.{}.type: `{}` is served by several plugins (`{}`, `{}`); keep one in the plugin path",
            entry.name,
            entry.pass_type,
            a.manifest.name,
            b.manifest.name
        ),
        (None, _) => bail!(
            "passes.{}.type: unknown pass type `{}`; available: {}",
            entry.name,
            entry.pass_type,
            available(found)
        ),
    }
}

/// Keys of a pass config that name a data config (Olive: `data_config`, `train_data_config`, ...).
fn is_data_key(key: &str) -> bool {
    key == "data_config" || key.ends_with("_data_config")
}

/// Resolves every pass of the workflow.
pub fn resolve(workflow: &Workflow, found: &Discovery) -> anyhow::Result<Vec<ResolvedPass>> {
    let mut out = Vec::new();
    for entry in &workflow.passes {
        let (plugin, manifest) = find(found, entry)?;
        let path = format!("passes.{}", entry.name);
        let mut config = entry.config.clone();
        for (key, value) in config.iter_mut() {
            if is_data_key(key) {
                if value.is_null() {
                    continue;
                }
                let at = format!("{path}.{key}");
                let reference: DataConfigRef = typed(value, &at)?;
                let resolved = reference
                    .resolve(&workflow.data_configs, None)
                    .map_err(|e| anyhow!("{at}: {e:#}"))?;
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
                "{path}: pass `{}` runs on {}; the target device is {}",
                manifest.name,
                manifest.devices.join(", "),
                workflow.device
            );
        }
        out.push(ResolvedPass {
            entry: entry.clone(),
            plugin: plugin.clone(),
            manifest: manifest.clone(),
            config,
        });
    }
    Ok(out)
}
