//! Checks every model-producing command makes first: the input model and the output folder.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The Hugging Face folder behind `--model_name_or_path`: the folder itself, or a .gguf converted once into the
/// cache.
pub fn resolve_hf_input(model_name_or_path: &Path) -> anyhow::Result<PathBuf> {
    let input = olive_model::convert::resolve_model_path(model_name_or_path)
        .with_context(|| format!("reading {}", model_name_or_path.display()))?;
    if !input.join("config.json").is_file() {
        bail!(
            "{} is not a Hugging Face model folder (no config.json) or a .gguf file",
            model_name_or_path.display()
        );
    }
    Ok(input)
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
    fn a_folder_without_config_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_hf_input(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no config.json"), "{err}");
    }
}
