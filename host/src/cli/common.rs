//! Checks every model-producing command makes first: the input model and the output folder.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The Hugging Face folder behind `--model_name_or_path`: the folder itself, a .gguf converted once into the
/// cache, an Olive output folder (its `model_config.json` names the model folder), a hub id (`org/name`) whose
/// snapshot is in the local Hugging Face cache (nothing is downloaded), or `models:/<name>/<version>` from the
/// MLflow registry at `MLFLOW_TRACKING_URI` (downloaded once into the cache).
pub fn resolve_hf_input(model_name_or_path: &Path) -> anyhow::Result<PathBuf> {
    let downloaded = super::model::resolve_models_uri(&model_name_or_path.to_string_lossy())?;
    let model_name_or_path = downloaded.as_deref().unwrap_or(model_name_or_path);
    let input = match hub_dir().and_then(|hub| hub_snapshot(model_name_or_path, &hub)) {
        Some(snapshot) => snapshot,
        None => olive_model::convert::resolve_model_path(model_name_or_path)
            .with_context(|| format!("reading {}", model_name_or_path.display()))?,
    };
    if !input.join("config.json").is_file() {
        if let Some(inner) = olive_output_model(&input)? {
            return Ok(inner);
        }
        let hint = match hub_dir().filter(|_| looks_like_hub_id(model_name_or_path)) {
            Some(hub) => format!(
                " or a hub id with a snapshot in the local Hugging Face cache (looked in {}, from $HF_HUB_CACHE, \
                 $HF_HOME/hub or ~/.cache/huggingface/hub; nothing is downloaded)",
                hub_repo(model_name_or_path, &hub).join("snapshots").display()
            ),
            None => String::new(),
        };
        if !input.exists() {
            bail!(
                "{} not found: give a Hugging Face model folder, a .gguf file{hint}",
                model_name_or_path.display()
            );
        }
        bail!(
            "{} is not a Hugging Face model folder (no config.json), a .gguf file{hint}",
            model_name_or_path.display()
        );
    }
    Ok(input)
}

/// The model folder an Olive output folder's `model_config.json` names (Olive's CLI accepts such folders).
fn olive_output_model(folder: &Path) -> anyhow::Result<Option<PathBuf>> {
    let path = folder.join("model_config.json");
    let Ok(text) = fs::read_to_string(&path) else {
        return Ok(None);
    };
    let config: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let Some(model_path) = config
        .pointer("/config/model_path")
        .and_then(|v| v.as_str())
    else {
        bail!("{}: config.model_path missing", path.display());
    };
    let mut model = PathBuf::from(model_path);
    if model.is_relative() {
        model = folder.join(model);
    }
    if !model.join("config.json").is_file() && folder.join("model/config.json").is_file() {
        // The folder was moved after Olive wrote it: its model is still beside the file.
        model = folder.join("model");
    }
    Ok(model.join("config.json").is_file().then_some(model))
}

fn looks_like_hub_id(path: &Path) -> bool {
    let text = path.to_string_lossy();
    let parts: Vec<&str> = text.split('/').collect();
    parts.len() == 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && *p != "." && *p != "..")
        && !path.exists()
}

/// The Hugging Face hub cache folder, as huggingface_hub finds it.
fn hub_dir() -> Option<PathBuf> {
    std::env::var_os("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
        })
}

/// The folder of hub id `org/name` in the hub cache `hub`.
fn hub_repo(path: &Path, hub: &Path) -> PathBuf {
    hub.join(format!(
        "models--{}",
        path.to_string_lossy().replace('/', "--")
    ))
}

/// The snapshot of hub id `org/name` in the hub cache `hub` (refs/main, else the only snapshot).
fn hub_snapshot(path: &Path, hub: &Path) -> Option<PathBuf> {
    if !looks_like_hub_id(path) {
        return None;
    }
    let repo = hub_repo(path, hub);
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = fs::read_to_string(repo.join("refs/main")) {
        let snapshot = snapshots.join(rev.trim());
        if snapshot.is_dir() {
            return Some(snapshot);
        }
    }
    let mut all: Vec<PathBuf> = fs::read_dir(&snapshots)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    (all.len() == 1).then(|| all.remove(0))
}

/// An existing output folder must be empty unless `--overwrite` is given.
pub fn refuse_non_empty(path: &Path, overwrite: bool) -> anyhow::Result<()> {
    if path.is_file() {
        bail!("output path {} is a file; give a folder", path.display());
    }
    let non_empty = fs::read_dir(path)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if non_empty && !overwrite {
        bail!(
            "output path {} exists and is not empty; give --overwrite to replace it",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_empty_output_needs_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        assert!(refuse_non_empty(&dir.path().join("new"), false).is_ok());
        assert!(refuse_non_empty(dir.path(), false).is_ok());
        fs::write(dir.path().join("x"), "x").unwrap();
        let err = refuse_non_empty(dir.path(), false).unwrap_err().to_string();
        assert!(err.contains("--overwrite"), "{err}");
        assert!(refuse_non_empty(dir.path(), true).is_ok());
    }

    #[test]
    fn hub_ids_resolve_to_the_local_snapshot_and_olive_outputs_to_their_model() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = dir.path().join("hub/models--org--tiny/snapshots/abc");
        fs::create_dir_all(&snapshot).unwrap();
        fs::write(snapshot.join("config.json"), "{}").unwrap();
        let hub = dir.path().join("hub");
        assert_eq!(
            hub_snapshot(Path::new("org/tiny"), &hub),
            Some(snapshot.clone())
        );
        assert_eq!(hub_snapshot(Path::new("org/other"), &hub), None);
        let out = dir.path().join("out");
        fs::create_dir_all(out.join("model")).unwrap();
        fs::write(out.join("model/config.json"), "{}").unwrap();
        fs::write(
            out.join("model_config.json"),
            r#"{"type": "hfmodel", "config": {"model_path": "/moved/away/model"}}"#,
        )
        .unwrap();
        assert_eq!(resolve_hf_input(&out).unwrap(), out.join("model"));
    }

    #[test]
    fn a_folder_without_config_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_hf_input(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no config.json"), "{err}");
    }
}
