//! Runs a pass in a worker process (the host re-executed as `olive-host worker`). The pass writes
//! into a hidden staging folder beside the output, renamed into place only when the pass succeeds
//! and removed otherwise, so a failed, cancelled or crashed pass leaves nothing half-written.

pub mod child;
mod protocol;
mod signals;
mod supervisor;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use olive_pass_api::Model;

use crate::plugins::Plugin;
use protocol::Request;

/// One pass to run.
pub struct PassRun<'a> {
    /// The plugin, as discovered.
    pub plugin: &'a Plugin,
    /// The pass name.
    pub pass: String,
    /// The input model.
    pub model: Model,
    /// The pass config, as JSON text.
    pub config_json: String,
    /// Where the output model goes; an existing file or folder there is replaced on success.
    pub output_path: PathBuf,
    /// The device to run on.
    pub device: String,
    /// Cancel the pass after this long.
    pub timeout: Option<Duration>,
    /// How long a cancelled pass may take to stop before its worker is killed.
    pub grace: Duration,
}

/// Runs the pass and returns the model it wrote, with paths under `output_path`. A model of a kind the pass's
/// manifest does not accept is refused before any worker starts.
pub fn run_pass(run: &PassRun) -> anyhow::Result<Model> {
    let manifest = &run.plugin.manifest;
    let pass = manifest
        .pass(&run.pass)
        .ok_or_else(|| anyhow!("plugin `{}` has no pass `{}`", manifest.name, run.pass))?;
    if !pass.accepts.contains(&run.model.kind) {
        bail!(
            "pass `{}` of plugin `{}` accepts models of kind {}; {} is `{}`",
            pass.name,
            manifest.name,
            pass.accepts.join(", "),
            run.model.path.display(),
            run.model.kind
        );
    }
    let output = &run.output_path;
    let name = output.file_name().ok_or_else(|| {
        anyhow!(
            "output path {} does not end in a file or folder name",
            output.display()
        )
    })?;
    let parent = match output.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create the output folder {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{}.olive-tmp-", name.to_string_lossy()))
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a staging folder in {}", parent.display()))?;
    let job = supervisor::Job {
        plugin: run.plugin.manifest.name.clone(),
        request: Request {
            manifest: run.plugin.manifest.clone(),
            manifest_path: run.plugin.manifest_path.clone(),
            library_path: run.plugin.library_path.clone(),
            pass: run.pass.clone(),
            model: run.model.clone(),
            config: run.config_json.clone(),
            output_dir: staging.path().to_path_buf(),
            device: run.device.clone(),
            grace_ms: u64::try_from(run.grace.as_millis()).unwrap_or(u64::MAX),
        },
        timeout: run.timeout,
        grace: run.grace,
    };
    // On error `staging` is dropped here, removing whatever the pass wrote.
    let model = supervisor::run(&job)?;
    let staged = staging.keep();
    if let Err(err) = publish(&staged, output) {
        let _ = fs::remove_dir_all(&staged);
        return Err(err);
    }
    Ok(relocate(model, &staged, output))
}

/// Renames `staged` to `output`; an existing `output` is moved aside first and removed after.
pub(crate) fn publish(staged: &Path, output: &Path) -> anyhow::Result<()> {
    let cannot = |err: std::io::Error| {
        anyhow!(
            "cannot move the output into place at {}: {err}",
            output.display()
        )
    };
    let Ok(existing) = fs::symlink_metadata(output) else {
        return fs::rename(staged, output).map_err(cannot);
    };
    let mut aside = staged.as_os_str().to_owned();
    aside.push(".old");
    let aside = PathBuf::from(aside);
    fs::rename(output, &aside).map_err(cannot)?;
    if let Err(err) = fs::rename(staged, output) {
        let _ = fs::rename(&aside, output);
        return Err(cannot(err));
    }
    let removed = if existing.is_dir() {
        fs::remove_dir_all(&aside)
    } else {
        fs::remove_file(&aside)
    };
    if let Err(err) = removed {
        tracing::warn!(
            "cannot remove the previous output, moved to {}: {err}",
            aside.display()
        );
    }
    Ok(())
}

/// The model with paths under `staged` moved under `output`.
pub(crate) fn relocate(mut model: Model, staged: &Path, output: &Path) -> Model {
    let moved = |path: &Path| match path.strip_prefix(staged) {
        Ok(rest) if rest.as_os_str().is_empty() => output.to_path_buf(),
        Ok(rest) => output.join(rest),
        Err(_) => path.to_path_buf(),
    };
    model.path = moved(&model.path);
    model.adapter_paths = model.adapter_paths.iter().map(|p| moved(p)).collect();
    model
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_replaces_an_existing_output() {
        let dir = tempfile::tempdir().unwrap();
        let (staged, output) = (dir.path().join(".out.olive-tmp-x"), dir.path().join("out"));
        fs::create_dir(&staged).unwrap();
        fs::write(staged.join("new"), "new").unwrap();
        fs::create_dir(&output).unwrap();
        fs::write(output.join("old"), "old").unwrap();
        publish(&staged, &output).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out"]);
        assert!(output.join("new").exists() && !output.join("old").exists());
    }

    #[test]
    fn relocate_moves_paths_inside_the_staging_folder_only() {
        let mut model = Model::new("hf", "/p/.o.tmp/model");
        model.adapter_paths = vec!["/p/.o.tmp".into(), "/elsewhere/a".into()];
        let model = relocate(model, Path::new("/p/.o.tmp"), Path::new("/p/o"));
        assert_eq!(model.path, Path::new("/p/o/model"));
        assert_eq!(
            model.adapter_paths,
            [PathBuf::from("/p/o"), PathBuf::from("/elsewhere/a")]
        );
    }
}
