//! Plugin discovery: manifests (`*.olive-plugin.json`) in each folder of `OLIVE_PLUGIN_PATH`, then
//! beside the executable and in its `plugins/` folder. Only manifests are read here; libraries are
//! loaded ([`load`]) in the worker process that runs a pass.

pub mod load;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use olive_pass_api::manifest::MANIFEST_SUFFIX;
use olive_pass_api::{Manifest, PassManifest, API_VERSION};

/// The environment variable listing extra plugin folders (`:`-separated, `;` on Windows).
pub const PLUGIN_PATH_VAR: &str = "OLIVE_PLUGIN_PATH";

/// A plugin whose manifest reads and whose library exists.
#[derive(Debug, Clone)]
pub struct Plugin {
    /// The manifest as read.
    pub manifest: Manifest,
    /// Where the manifest is.
    pub manifest_path: PathBuf,
    /// The library, beside the manifest.
    pub library_path: PathBuf,
}

/// A manifest that cannot be used, with why.
#[derive(Debug, Clone)]
pub struct Broken {
    /// The manifest file.
    pub manifest_path: PathBuf,
    /// The error, naming the file.
    pub error: String,
}

/// What a search found: usable plugins (first of each name wins), broken ones, and shadowed ones.
#[derive(Debug, Default)]
pub struct Discovery {
    /// The folders searched, in order.
    pub folders: Vec<PathBuf>,
    /// Usable plugins, in search order.
    pub plugins: Vec<Plugin>,
    /// Plugins with the name of an earlier one, which is used instead.
    pub shadowed: Vec<Plugin>,
    /// Manifests that cannot be used.
    pub broken: Vec<Broken>,
}

/// The plugin folders: each of `OLIVE_PLUGIN_PATH`, the executable's folder and its `plugins/`.
pub fn search_path() -> Vec<PathBuf> {
    let mut folders: Vec<PathBuf> = env::var_os(PLUGIN_PATH_VAR)
        .map(|value| {
            env::split_paths(&value)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if let Some(exe_dir) = env::current_exe().ok().as_deref().and_then(Path::parent) {
        folders.push(exe_dir.to_path_buf());
        folders.push(exe_dir.join("plugins"));
    }
    let mut unique = Vec::new();
    for folder in folders {
        if !unique.contains(&folder) {
            unique.push(folder);
        }
    }
    unique
}

/// Reads every manifest in `folders`; folders that do not exist are skipped.
pub fn discover(folders: &[PathBuf]) -> Discovery {
    let mut found = Discovery {
        folders: folders.to_vec(),
        ..Discovery::default()
    };
    for folder in folders {
        for manifest_path in manifests_in(folder) {
            match read_plugin(&manifest_path) {
                Ok(plugin)
                    if found
                        .plugins
                        .iter()
                        .any(|p| p.manifest.name == plugin.manifest.name) =>
                {
                    found.shadowed.push(plugin)
                }
                Ok(plugin) => found.plugins.push(plugin),
                Err(err) => found.broken.push(Broken {
                    manifest_path,
                    error: format!("{err:#}"),
                }),
            }
        }
    }
    found
}

/// The manifests in `folder`, sorted by file name.
fn manifests_in(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(MANIFEST_SUFFIX))
        })
        .collect();
    paths.sort();
    paths
}

/// Reads one manifest and checks its api version and that its library exists.
pub fn read_plugin(manifest_path: &Path) -> anyhow::Result<Plugin> {
    let text = fs::read_to_string(manifest_path)
        .with_context(|| format!("cannot read plugin manifest {}", manifest_path.display()))?;
    let manifest = Manifest::from_json(&text)
        .with_context(|| format!("plugin manifest {}", manifest_path.display()))?;
    if !API_VERSION.accepts(manifest.api_version) {
        bail!(
            "plugin `{}` ({}) was built for plugin api {}, and this olive-host speaks {API_VERSION}",
            manifest.name,
            manifest_path.display(),
            manifest.api_version
        );
    }
    let folder = manifest_path.parent().unwrap_or(Path::new("."));
    let library_path = folder.join(manifest.library_file_name());
    if !library_path.is_file() {
        bail!(
            "plugin `{}` ({}): its library {} does not exist",
            manifest.name,
            manifest_path.display(),
            library_path.display()
        );
    }
    Ok(Plugin {
        manifest,
        manifest_path: manifest_path.to_path_buf(),
        library_path,
    })
}

impl Discovery {
    /// The plugin named `name`, or an error naming what was found and where.
    pub fn plugin(&self, name: &str) -> anyhow::Result<&Plugin> {
        if let Some(plugin) = self.plugins.iter().find(|p| p.manifest.name == name) {
            return Ok(plugin);
        }
        if let Some(broken) = self
            .broken
            .iter()
            .find(|b| manifest_names(&b.manifest_path, name))
        {
            return Err(anyhow!("{}", broken.error));
        }
        Err(anyhow!("no plugin named `{name}`; {}", self.summary()))
    }

    /// The plugin and pass for `pass`: in `plugin` when given, else the one plugin that has it.
    pub fn pass(
        &self,
        plugin: Option<&str>,
        pass: &str,
    ) -> anyhow::Result<(&Plugin, &PassManifest)> {
        if let Some(name) = plugin {
            let plugin = self.plugin(name)?;
            let found = plugin.manifest.pass(pass).ok_or_else(|| {
                let names: Vec<_> = plugin
                    .manifest
                    .passes
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect();
                anyhow!(
                    "plugin `{name}` has no pass `{pass}`; it has: {}",
                    names.join(", ")
                )
            })?;
            return Ok((plugin, found));
        }
        let mut having = self
            .plugins
            .iter()
            .filter_map(|p| p.manifest.pass(pass).map(|found| (p, found)));
        match (having.next(), having.next()) {
            (Some(one), None) => Ok(one),
            (Some((a, _)), Some((b, _))) => bail!(
                "pass `{pass}` is in several plugins (`{}`, `{}`, ...); choose one with --plugin",
                a.manifest.name,
                b.manifest.name
            ),
            (None, _) => bail!("no plugin has a pass `{pass}`; {}", self.summary()),
        }
    }

    /// "plugins found: a, b (searched: ...)" for error messages.
    pub fn summary(&self) -> String {
        let names: Vec<_> = self
            .plugins
            .iter()
            .map(|p| p.manifest.name.as_str())
            .collect();
        let folders: Vec<_> = self
            .folders
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        let found = if names.is_empty() {
            "no plugins found".to_owned()
        } else {
            format!("plugins found: {}", names.join(", "))
        };
        format!(
            "{found} (searched {}; add folders with {PLUGIN_PATH_VAR})",
            folders.join(", ")
        )
    }
}

/// Whether a broken manifest's JSON names plugin `name` (so its error answers a lookup by name).
fn manifest_names(manifest_path: &Path, name: &str) -> bool {
    fs::read_to_string(manifest_path)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_some_and(|json| json["name"] == name)
}
