//! What a workflow run leaves in `output_dir`, in Olive's layout (olive/cache.py `save_model`): the chosen model
//! as `model/` (and a PEFT adapter as `adapter/`) with `model_config.json` describing it, plus the footprints and
//! metrics files. The model is copied out of the cache through a staging folder, so an interrupted save never
//! leaves a half-written `model/`. A CLI command that runs one pass (olive/cli/base.py `_run_workflow`) leaves the
//! same layout: `run_pass_to_output`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use olive_pass_api::{kinds, Model};
use serde_json::{json, Value};

use crate::engine::{self, publish, relocate, PassRun};
use crate::files::write_atomic;

/// Runs one pass so that `run.output_path` becomes an Olive output folder: the pass's model as `model/` (a
/// folder; a single-file model inside it) and `model_config.json` describing it. Both are written into a hidden
/// staging folder beside the output and renamed into place together, replacing what was there; a failed pass
/// leaves the output as it was (and no parent folder this call created). Returns the model at its final place,
/// by absolute path.
pub fn run_pass_to_output(mut run: PassRun) -> anyhow::Result<Model> {
    let output = std::path::absolute(&run.output_path).with_context(|| {
        format!(
            "cannot resolve the output path {}",
            run.output_path.display()
        )
    })?;
    let (Some(parent), Some(name)) = (output.parent(), output.file_name()) else {
        anyhow::bail!(
            "output path {} does not end in a folder name",
            output.display()
        );
    };
    let created_parent = !parent.exists();
    fs::create_dir_all(parent)
        .with_context(|| format!("cannot create the output folder {}", parent.display()))?;
    let result = (|| -> anyhow::Result<Model> {
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{}.olive-tmp-", name.to_string_lossy()))
            .tempdir_in(parent)
            .with_context(|| format!("cannot create a staging folder in {}", parent.display()))?;
        run.output_path = staging.path().join("model");
        let model = relocate(engine::run_pass(&run)?, staging.path(), &output);
        write_atomic(
            &staging.path().join("model_config.json"),
            &serde_json::to_vec_pretty(&model_config(&model))?,
        )?;
        let staged = staging.keep();
        if let Err(err) = publish(&staged, &output) {
            let _ = fs::remove_dir_all(&staged);
            return Err(err);
        }
        Ok(model)
    })();
    if result.is_err() && created_parent {
        let _ = fs::remove_dir(parent);
    }
    result
}

/// Copies `model` into `output_dir` and writes `model_config.json`; returns the model at its new place.
pub fn save_model(model: &Model, output_dir: &Path) -> anyhow::Result<Model> {
    fs::create_dir_all(output_dir)
        .with_context(|| format!("cannot create the output folder {}", output_dir.display()))?;
    let mut saved = model.clone();
    saved.path = place(&model.path, &output_dir.join("model"))?;
    saved.adapter_paths = match model.adapter_paths.as_slice() {
        [] => Vec::new(),
        [one] => vec![place(one, &output_dir.join("adapter"))?],
        many => many
            .iter()
            .enumerate()
            .map(|(i, a)| place(a, &output_dir.join(format!("adapter_{i}"))))
            .collect::<anyhow::Result<_>>()?,
    };
    write_atomic(
        &output_dir.join("model_config.json"),
        &serde_json::to_vec_pretty(&model_config(&saved))?,
    )?;
    Ok(saved)
}

/// Olive's model config JSON for a saved model.
pub fn model_config(model: &Model) -> Value {
    let kind = match model.kind.as_str() {
        kinds::ONNX => "onnxmodel",
        _ => "hfmodel",
    };
    let mut config = json!({ "model_path": model.path });
    if let Some(adapter) = model.adapter_paths.first() {
        config["adapter_path"] = json!(adapter);
    }
    if !model.metadata.is_empty() {
        config["model_attributes"] = Value::Object(model.metadata.clone());
    }
    json!({ "type": kind, "config": config })
}

/// Copies the file or folder `source` to `target` (a folder's contents go into `target/`); returns where the
/// model's own path ends up (a file stays a file inside `target/`).
fn place(source: &Path, target: &Path) -> anyhow::Result<PathBuf> {
    let parent = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", target.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{}.olive-tmp-", name.to_string_lossy()))
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a staging folder in {}", parent.display()))?;
    let placed = if source.is_dir() {
        copy_tree(source, staging.path())?;
        target.to_path_buf()
    } else {
        let file = source
            .file_name()
            .ok_or_else(|| anyhow!("{} has no file name", source.display()))?;
        fs::copy(source, staging.path().join(file))
            .with_context(|| format!("cannot copy {}", source.display()))?;
        target.join(file)
    };
    publish(&staging.keep(), target)?;
    Ok(placed)
}

/// Copies a folder's contents recursively (real copies: ONNX's loader refuses hard-linked external data).
pub fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for item in fs::read_dir(from).with_context(|| format!("cannot list {}", from.display()))? {
        let item = item?;
        let (src, dst) = (item.path(), to.join(item.file_name()));
        if fs::metadata(&src)?.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            fs::copy(&src, &dst).with_context(|| format!("cannot copy {}", src.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_and_its_adapter_land_in_olives_layout() {
        let dir = tempfile::tempdir().unwrap();
        let (m, a) = (dir.path().join("cache/m"), dir.path().join("cache/a"));
        fs::create_dir_all(m.join("sub")).unwrap();
        fs::write(m.join("config.json"), "{}").unwrap();
        fs::write(m.join("sub/x"), "x").unwrap();
        fs::create_dir_all(&a).unwrap();
        fs::write(a.join("adapter_config.json"), "{}").unwrap();
        let mut model = Model::new("hf", &m);
        model.adapter_paths = vec![a];
        let out = dir.path().join("out");
        let saved = save_model(&model, &out).unwrap();
        assert_eq!(saved.path, out.join("model"));
        assert!(out.join("model/sub/x").is_file());
        assert!(out.join("adapter/adapter_config.json").is_file());
        let config: Value =
            serde_json::from_str(&fs::read_to_string(out.join("model_config.json")).unwrap())
                .unwrap();
        assert_eq!(config["type"], "hfmodel");
        assert_eq!(config["config"]["adapter_path"], json!(out.join("adapter")));
        // Saving again replaces the folder.
        fs::remove_file(m.join("sub/x")).unwrap();
        save_model(&model, &out).unwrap();
        assert!(!out.join("model/sub/x").exists());
        let names: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }
}
