//! `olive-host plugins list|manifest`: the installed plugins, and writing a library's manifest.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use crate::plugins::{self, load, Plugin};

#[derive(Args, Debug)]
pub struct PluginsArgs {
    #[command(subcommand)]
    pub command: PluginsCommand,
}

#[derive(Subcommand, Debug)]
pub enum PluginsCommand {
    /// List each plugin found (file, version, passes), and broken ones with why.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a plugin library's manifest (`<library>.olive-plugin.json`), read from the library itself.
    Manifest {
        /// The plugin library (e.g. target/release/libquant_gptq.so).
        library: PathBuf,
        /// The folder to write the manifest into; by default, beside the library.
        #[arg(long = "output_dir")]
        output_dir: Option<PathBuf>,
    },
}

pub fn run(args: PluginsArgs) -> anyhow::Result<()> {
    match args.command {
        PluginsCommand::List { json } => {
            let found = plugins::discover(&plugins::search_path());
            if json {
                println!("{}", serde_json::to_string_pretty(&as_json(&found))?);
            } else {
                print!("{}", as_text(&found));
            }
            Ok(())
        }
        PluginsCommand::Manifest {
            library,
            output_dir,
        } => {
            let path = load::write_manifest(&library, output_dir.as_deref())?;
            println!("{}", path.display());
            Ok(())
        }
    }
}

fn as_text(found: &plugins::Discovery) -> String {
    let mut text = String::new();
    for plugin in &found.plugins {
        text.push_str(&plugin_text(plugin));
    }
    if !found.shadowed.is_empty() {
        text.push_str("\nshadowed by an earlier plugin of the same name:\n");
        for plugin in &found.shadowed {
            text.push_str(&format!(
                "  {} {}  {}\n",
                plugin.manifest.name,
                plugin.manifest.version,
                plugin.library_path.display()
            ));
        }
    }
    if !found.broken.is_empty() {
        text.push_str("\nbroken:\n");
        for broken in &found.broken {
            text.push_str(&format!("  {}\n", broken.error));
        }
    }
    if found.plugins.is_empty() {
        let folders: Vec<_> = found
            .folders
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        text.push_str(&format!(
            "no plugins found (searched {}; add folders with {})\n",
            folders.join(", "),
            plugins::PLUGIN_PATH_VAR
        ));
    }
    text
}

fn plugin_text(plugin: &Plugin) -> String {
    let manifest = &plugin.manifest;
    let mut text = format!(
        "{} {}  {}\n",
        manifest.name,
        manifest.version,
        plugin.library_path.display()
    );
    for pass in &manifest.passes {
        text.push_str(&format!(
            "  {} {}  {} -> {}  [{}]  {}\n",
            pass.name,
            pass.version,
            pass.accepts.join(", "),
            pass.produces.join(", "),
            pass.devices.join(", "),
            pass.description
        ));
    }
    for ep in &manifest.execution_providers {
        let precisions = crate::ep::recipe_precisions(ep);
        text.push_str(&format!(
            "  serves --device {} --provider {}  (onnxruntime library: {} {}; auto-opt precisions: {})\n",
            ep.device,
            ep.provider,
            ep.runtime.package,
            ep.runtime.version.as_deref().unwrap_or("any version"),
            precisions.join(", ")
        ));
    }
    text
}

fn as_json(found: &plugins::Discovery) -> serde_json::Value {
    let plugin = |plugin: &Plugin| {
        json!({
            "name": plugin.manifest.name,
            "version": plugin.manifest.version,
            "api_version": plugin.manifest.api_version,
            "library": plugin.library_path,
            "manifest": plugin.manifest_path,
            "passes": plugin.manifest.passes,
            "execution_providers": plugin.manifest.execution_providers,
        })
    };
    json!({
        "plugins": found.plugins.iter().map(plugin).collect::<Vec<_>>(),
        "shadowed": found.shadowed.iter().map(plugin).collect::<Vec<_>>(),
        "broken": found.broken.iter().map(|b| json!({"manifest": b.manifest_path, "error": b.error})).collect::<Vec<_>>(),
        "searched": found.folders,
    })
}
