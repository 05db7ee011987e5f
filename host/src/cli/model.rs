//! `olive-host model create|list|show|download|delete`: a model registry speaking the MLflow REST API 2.0 (an
//! `mlflow server --serve-artifacts`, or Azure ML's MLflow endpoint `azureml://…` with a bearer token), as
//! `az ml model create --name N --version V --path P` publishes a folder.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use olive_registry::{CreateOptions, Endpoint, Registry, RetryPolicy};

#[derive(Args, Debug)]
pub struct ModelArgs {
    #[command(subcommand)]
    pub action: ModelAction,
}

/// Where the registry is and how hard to retry.
#[derive(Args, Debug)]
pub struct RegistryFlags {
    /// The tracking server: http(s)://host:port, or azureml://<region>.api.azureml.ms/mlflow/v1.0/subscriptions/…/workspaces/<ws>
    /// (token in MLFLOW_TRACKING_TOKEN). Default: MLFLOW_TRACKING_URI. Credentials: MLFLOW_TRACKING_USERNAME and
    /// MLFLOW_TRACKING_PASSWORD (basic auth) or MLFLOW_TRACKING_TOKEN (bearer).
    #[arg(long = "registry_uri")]
    pub registry_uri: Option<String>,
    /// Retries of a request after a transient failure (connection refused or reset, HTTP 5xx), with backoff from 0.5 s doubling.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
}

#[derive(Subcommand, Debug)]
pub enum ModelAction {
    /// Publish a folder as a model version (streamed, sha256-checked, resumable: rerun the same command after a failure).
    Create {
        /// The model's name (letters, digits, `-`, `_`, `.`).
        #[arg(long)]
        name: String,
        /// The version: MLflow numbers them 1, 2, …; it must be the next one, or an existing one with --overwrite.
        #[arg(long)]
        version: String,
        /// The folder (or file) to publish.
        #[arg(long)]
        path: PathBuf,
        #[arg(long, default_value = "")]
        description: String,
        /// A tag `key=value` of the version (repeatable).
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
        /// Replace the files of an existing version (its number is kept).
        #[arg(long)]
        overwrite: bool,
        #[command(flatten)]
        registry: RegistryFlags,
    },
    /// List the registered models, or the versions of one (--name).
    List {
        #[arg(long)]
        name: Option<String>,
        /// Print the registry's records as a JSON array instead of tab-separated lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        registry: RegistryFlags,
    },
    /// Show a registered model, or one version of it with its files, as JSON.
    Show {
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        registry: RegistryFlags,
    },
    /// Download a model version into a new folder, each file checked against the manifest's sha256.
    Download {
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        #[arg(long = "output_path")]
        output_path: PathBuf,
        #[command(flatten)]
        registry: RegistryFlags,
    },
    /// Delete a model version, or (without --version) the registered model and all its versions; the runs
    /// holding their files are deleted too (`mlflow gc` purges them). MLflow never reuses a version number.
    Delete {
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        registry: RegistryFlags,
    },
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("`{text}`: expected key=value")),
    }
}

fn connect(flags: &RegistryFlags) -> anyhow::Result<Registry> {
    let uri = match &flags.registry_uri {
        Some(uri) => uri.clone(),
        None => std::env::var("MLFLOW_TRACKING_URI").context(
            "no registry: pass --registry_uri or set MLFLOW_TRACKING_URI (e.g. http://127.0.0.1:5000)",
        )?,
    };
    let endpoint = Endpoint::from_uri(&uri, &|key| std::env::var(key).ok())?;
    let retry = RetryPolicy {
        retries: flags.retries,
        ..RetryPolicy::default()
    };
    Ok(Registry::new(endpoint, retry))
}

pub fn run(args: ModelArgs) -> anyhow::Result<()> {
    match args.action {
        ModelAction::Create {
            name,
            version,
            path,
            description,
            tags,
            overwrite,
            registry,
        } => {
            olive_registry::validate_name(&name)?;
            let registry = connect(&registry)?;
            let report = olive_registry::create(
                &registry,
                &CreateOptions {
                    name: &name,
                    version: &version,
                    path: &path,
                    description: &description,
                    tags: &tags,
                    overwrite,
                    progress: &crate::progress::BytesBar::new(format!(
                        "uploading {name} v{version}"
                    )),
                },
            )
            .with_context(|| {
                format!(
                    "model create {name} version {version} at {}",
                    registry.base()
                )
            })?;
            println!(
                "registered {} version {} (source {}): {} file(s) uploaded ({} bytes), {} already uploaded",
                report.version.name,
                report.version.version,
                report.version.source,
                report.uploaded_files,
                report.uploaded_bytes,
                report.skipped_files
            );
        }
        ModelAction::List {
            name,
            json,
            registry,
        } => {
            let registry = connect(&registry)?;
            match name {
                None if json => {
                    let models = registry.registered_models()?;
                    println!("{}", serde_json::to_string_pretty(&models)?);
                }
                None => {
                    for model in registry.registered_models()? {
                        let latest = model
                            .latest_versions
                            .iter()
                            .filter_map(|v| v.version.parse::<u64>().ok())
                            .max()
                            .map_or("-".to_string(), |v| v.to_string());
                        println!("{}\t{}\t{}", model.name, latest, model.description);
                    }
                }
                Some(name) => {
                    if registry.registered_model(&name)?.is_none() {
                        anyhow::bail!(
                            "model `{name}` not found in the registry at {}",
                            registry.base()
                        );
                    }
                    let versions = registry.model_versions(&name)?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&versions)?);
                    } else {
                        for v in versions {
                            println!(
                                "{}\t{}\t{}\t{}",
                                v.version, v.status, v.source, v.description
                            );
                        }
                    }
                }
            }
        }
        ModelAction::Show {
            name,
            version,
            registry,
        } => {
            let registry = connect(&registry)?;
            let value = match version {
                None => {
                    let model = registry.registered_model(&name)?.with_context(|| {
                        format!(
                            "model `{name}` not found in the registry at {}",
                            registry.base()
                        )
                    })?;
                    serde_json::to_value(model)?
                }
                Some(version) => {
                    let mv = registry.model_version(&name, &version)?.with_context(|| {
                        format!(
                            "model `{name}` version {version} not found in the registry at {}",
                            registry.base()
                        )
                    })?;
                    let files: Vec<_> = olive_registry::version_files(&registry, &mv)?
                        .into_iter()
                        .map(|(path, size, sha256)| serde_json::json!({"path": path, "size": size, "sha256": sha256}))
                        .collect();
                    let mut value = serde_json::to_value(mv)?;
                    value["files"] = serde_json::Value::Array(files);
                    value
                }
            };
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        ModelAction::Download {
            name,
            version,
            output_path,
            registry,
        } => {
            let registry = connect(&registry)?;
            let bar = crate::progress::BytesBar::new(format!("downloading {name} v{version}"));
            let bytes = olive_registry::download(&registry, &name, &version, &output_path, &bar)
                .with_context(|| {
                    format!(
                        "model download {name} version {version} from {}",
                        registry.base()
                    )
                })?;
            println!(
                "downloaded {name} version {version} to {} ({bytes} bytes, checksums verified)",
                output_path.display()
            );
        }
        ModelAction::Delete {
            name,
            version,
            registry,
        } => {
            let registry = connect(&registry)?;
            let report = olive_registry::delete(&registry, &name, version.as_deref())
                .with_context(|| format!("model delete {name} at {}", registry.base()))?;
            if report.model_deleted {
                println!(
                    "deleted model {name} and its {} version(s){}",
                    report.versions.len(),
                    if report.versions.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", report.versions.join(", "))
                    }
                );
            } else {
                println!("deleted {name} version {}", report.versions.join(", "));
            }
        }
    }
    Ok(())
}

/// The local folder behind `--model_name_or_path models:/<name>/<version>`: the version downloaded once (checksums
/// verified) into `$OLIVE_CACHE_DIR/registry/` (default `~/.cache/olive-rs`), keyed by the registry, name, version
/// and the version's manifest; None where `text` is not a `models:/` URI. The registry is `MLFLOW_TRACKING_URI`.
pub(crate) fn resolve_models_uri(text: &str) -> anyhow::Result<Option<PathBuf>> {
    let Some(rest) = text.strip_prefix("models:/") else {
        return Ok(None);
    };
    let Some((name, version)) = rest.trim_matches('/').split_once('/') else {
        anyhow::bail!("`{text}`: expected models:/<name>/<version>");
    };
    olive_registry::validate_name(name)?;
    let registry = connect(&RegistryFlags {
        registry_uri: None,
        retries: RetryPolicy::default().retries,
    })
    .with_context(|| format!("resolving {text}"))?;
    let mv = registry.model_version(name, version)?.with_context(|| {
        format!(
            "{text}: model `{name}` version {version} not found in the registry at {}",
            registry.base()
        )
    })?;
    let cache = match std::env::var_os("OLIVE_CACHE_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            Some(home) => PathBuf::from(home).join(".cache").join("olive-rs"),
            None => anyhow::bail!("no cache folder for {text}: set OLIVE_CACHE_DIR or HOME"),
        },
    };
    use sha2::Digest;
    let key = sha2::Sha256::digest(
        format!(
            "{}\n{name}\n{version}\n{}\n{}",
            registry.base(),
            mv.source,
            mv.tag("olive.manifest_sha256").unwrap_or_default()
        )
        .as_bytes(),
    );
    let key: String = key.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let folder = cache
        .join("registry")
        .join(format!("{name}-v{version}-{key}"));
    if !folder.is_dir() {
        tracing::info!(
            "downloading {text} from {} into {}",
            registry.base(),
            folder.display()
        );
        let bar = crate::progress::BytesBar::new(format!("downloading {text}"));
        if let Err(error) = olive_registry::download(&registry, name, version, &folder, &bar) {
            // Another run may have put the same version in place meanwhile.
            if !folder.is_dir() {
                return Err(error)
                    .with_context(|| format!("downloading {text} from {}", registry.base()));
            }
        }
    }
    Ok(Some(folder))
}
