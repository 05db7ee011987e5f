//! Runs a pass in a worker process (the host re-executed as `olive-host worker`). The pass writes
//! into a hidden staging folder beside the output, renamed into place only when the pass succeeds
//! and removed otherwise, so a failed, cancelled or crashed pass leaves nothing half-written. A pass may also run
//! as a group of workers, one per GPU, in torchrun's rank layout (`run_pass_group`); rank 0's output is the one
//! kept.

pub mod child;
mod protocol;
mod signals;
mod supervisor;

use std::ffi::OsString;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use olive_dist::World;
use olive_pass_api::Model;
use tempfile::TempDir;

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
    check_accepts(run)?;
    let staging = staging_folder(&run.output_path)?;
    // On error `staging` is dropped here, removing whatever the pass wrote.
    let model = supervisor::run(&job(run, staging.path()))?;
    finish(model, staging, &run.output_path)
}

/// How a pass runs as a group of workers in torchrun's rank layout: one per GPU of this host, over one or more
/// hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Workers on this host, one per GPU (LOCAL_WORLD_SIZE).
    pub workers: usize,
    /// Hosts in the group, each with as many workers.
    pub nnodes: usize,
    /// This host's place among them: its workers are the global ranks `node_rank * workers ..`.
    pub node_rank: usize,
    /// The host name or address where rank 0 listens (MASTER_ADDR).
    pub master_addr: String,
    /// The port where rank 0 listens (MASTER_PORT).
    pub master_port: u16,
}

impl Launch {
    /// The global ranks of this host's workers.
    pub fn ranks(&self) -> Range<usize> {
        let first = self.node_rank * self.workers;
        first..first + self.workers
    }

    /// Each local worker's place in the group, checked.
    fn worlds(&self) -> anyhow::Result<Vec<World>> {
        if self.workers == 0 || self.nnodes == 0 || self.node_rank >= self.nnodes {
            bail!(
                "a group of {} workers on each of {} hosts has no host {}",
                self.workers,
                self.nnodes,
                self.node_rank
            );
        }
        self.ranks()
            .enumerate()
            .map(|(local_rank, rank)| {
                let world = World {
                    rank,
                    local_rank,
                    world_size: self.workers * self.nnodes,
                    local_world_size: self.workers,
                    master_addr: self.master_addr.clone(),
                    master_port: self.master_port,
                };
                world.check().context("the group's rank layout")?;
                Ok(world)
            })
            .collect()
    }
}

/// Runs the pass as the group `launch` describes: each worker gets its rank's variables
/// (`olive_dist::World::env`) and LD_LIBRARY_PATH led by the folder where NCCL loads from; the pass itself joins
/// the group. Rank 0 writes into the staging folder that becomes `output_path`; the other ranks write into scratch
/// folders removed afterwards. When any worker fails, the others are stopped and the error names the rank.
/// Returns rank 0's model (paths under `output_path`) when rank 0 is on this host; otherwise `None`, and
/// `output_path` is not touched.
pub fn run_pass_group(run: &PassRun, launch: &Launch) -> anyhow::Result<Option<Model>> {
    check_accepts(run)?;
    let worlds = launch.worlds()?;
    let nccl = olive_dist::nccl_loader_dir()
        .context("a group of workers talks through NCCL, which was not found")?;
    let mut library_path = vec![nccl];
    if let Some(existing) = std::env::var_os("LD_LIBRARY_PATH") {
        library_path.extend(std::env::split_paths(&existing));
    }
    let library_path = std::env::join_paths(library_path)
        .context("cannot put NCCL's folder on LD_LIBRARY_PATH")?;
    let staging = match worlds.first() {
        Some(world) if world.is_leader() => Some(staging_folder(&run.output_path)?),
        _ => None,
    };
    let mut scratch = Vec::new();
    let mut members = Vec::new();
    for world in &worlds {
        let output_dir = match &staging {
            Some(staging) if world.is_leader() => staging.path().to_path_buf(),
            _ => {
                let dir = tempfile::Builder::new()
                    .prefix(&format!("olive-rank{}-", world.rank))
                    .tempdir()
                    .context("cannot create a scratch folder for a worker")?;
                let path = dir.path().to_path_buf();
                scratch.push(dir);
                path
            }
        };
        let mut env: Vec<(&'static str, OsString)> = world
            .env()
            .into_iter()
            .map(|(name, value)| (name, OsString::from(value)))
            .collect();
        env.push(("LD_LIBRARY_PATH", library_path.clone()));
        members.push(supervisor::Member {
            rank: world.rank,
            world_size: world.world_size,
            env,
            output_dir,
            lead: world.local_rank == 0,
        });
    }
    let template = members
        .first()
        .map_or_else(std::env::temp_dir, |m| m.output_dir.clone());
    // On error the staging and scratch folders are dropped here, removing whatever the passes wrote.
    let models = supervisor::run_group(&job(run, &template), &members)?;
    drop(scratch);
    match (staging, models.into_iter().next()) {
        (Some(staging), Some(model)) => finish(model, staging, &run.output_path).map(Some),
        _ => Ok(None),
    }
}

/// Refuses a model of a kind the pass's manifest does not accept.
fn check_accepts(run: &PassRun) -> anyhow::Result<()> {
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
    Ok(())
}

/// A hidden staging folder beside `output`, which becomes it on success.
fn staging_folder(output: &Path) -> anyhow::Result<TempDir> {
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
    tempfile::Builder::new()
        .prefix(&format!(".{}.olive-tmp-", name.to_string_lossy()))
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a staging folder in {}", parent.display()))
}

/// The worker's job for `run`, writing into `output_dir`.
fn job(run: &PassRun, output_dir: &Path) -> supervisor::Job {
    supervisor::Job {
        plugin: run.plugin.manifest.name.clone(),
        request: Request {
            manifest: run.plugin.manifest.clone(),
            manifest_path: run.plugin.manifest_path.clone(),
            library_path: run.plugin.library_path.clone(),
            pass: run.pass.clone(),
            model: run.model.clone(),
            config: run.config_json.clone(),
            output_dir: output_dir.to_path_buf(),
            device: run.device.clone(),
            grace_ms: u64::try_from(run.grace.as_millis()).unwrap_or(u64::MAX),
        },
        timeout: run.timeout,
        grace: run.grace,
    }
}

/// Moves the staged output into place and points the model at it.
fn finish(model: Model, staging: TempDir, output: &Path) -> anyhow::Result<Model> {
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
