//! `model create`: a folder published as a registered model version the way the `mlflow` client lays one out
//! (a run's artifacts hold `model/` and `olive-manifest.json`; the version's `source` is the run's `.../model`),
//! streamed file by file, checksummed (sha256), resumable (each uploaded file is recorded as a run tag, so a
//! rerun of the same name/version skips it), and all-or-nothing (no version exists until every file is up).

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::api::{proxy_path, ModelVersion, Registry, Run, Tag};
use crate::RegistryError;

/// The experiment whose runs hold uploaded model files.
pub(crate) const EXPERIMENT: &str = "olive-host model uploads";
/// The run tag naming the `name/version` a run uploads.
const TARGET_TAG: &str = "olive.registry.target";
/// The manifest beside `model/` in the run's artifacts.
pub(crate) const MANIFEST: &str = "olive-manifest.json";
/// Version tag: the sha256 of the manifest.
pub(crate) const MANIFEST_TAG: &str = "olive.manifest_sha256";
/// Version tag: `uploading` while an overwrite replaces the files, `complete` after.
pub(crate) const STATE_TAG: &str = "olive.state";
/// The manifest's format name.
pub(crate) const MANIFEST_FORMAT: &str = "olive-registry-manifest/1";

/// What to publish.
pub struct CreateOptions<'a> {
    pub name: &'a str,
    pub version: &'a str,
    /// A folder (every file under it) or a single file.
    pub path: &'a Path,
    pub description: &'a str,
    pub tags: &'a [(String, String)],
    /// Replace the files of an existing version (its number is kept).
    pub overwrite: bool,
    /// Told the total bytes of the folder, then the bytes uploaded (or found uploaded) so far.
    pub progress: &'a dyn Progress,
}

/// What a transfer reports as it goes (a progress bar, or nothing).
pub trait Progress: Sync {
    /// The bytes the whole transfer moves.
    fn total(&self, bytes: u64);
    /// The bytes moved so far (it may go back when a request is retried).
    fn position(&self, bytes: u64);
}

/// No progress reports.
pub struct NoProgress;

impl Progress for NoProgress {
    fn total(&self, _: u64) {}
    fn position(&self, _: u64) {}
}

/// What `create` did.
#[derive(Debug)]
pub struct CreateReport {
    pub version: ModelVersion,
    pub uploaded_files: usize,
    pub uploaded_bytes: u64,
    /// Files already uploaded by an interrupted earlier attempt (same path, size and sha256).
    pub skipped_files: usize,
}

/// One local file to publish.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// The path under the model folder, `/`-separated.
    pub rel: String,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// Registered model names: Azure ML's rule (a letter or digit, then letters, digits, `-`, `_`, `.`; at most 255),
/// which also keeps `models:/<name>/<version>` unambiguous for MLflow.
pub fn validate_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid {
            what: format!("--name `{name}`"),
            reason: "a model name is 1-255 characters: a letter or digit, then letters, digits, `-`, `_` or `.`".to_string(),
        })
    }
}

/// A version number: MLflow numbers versions 1, 2, 3, ...
pub(crate) fn validate_version(version: &str) -> Result<u64, RegistryError> {
    match version.parse::<u64>() {
        Ok(n) if n >= 1 && n.to_string() == version => Ok(n),
        _ => Err(RegistryError::Invalid {
            what: format!("--version `{version}`"),
            reason: "MLflow model versions are whole numbers from 1".to_string(),
        }),
    }
}

/// The sha256 of a file, read in 1 MiB pieces, as lowercase hex.
pub(crate) fn sha256_file(path: &Path) -> Result<String, RegistryError> {
    let mut file = std::fs::File::open(path).map_err(|e| RegistryError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|e| RegistryError::io(path, e))?;
        if n == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buffer[..n]);
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every file under `root` (or `root` itself where it is a file), sorted, with sizes and checksums.
pub(crate) fn collect(root: &Path) -> Result<Vec<Entry>, RegistryError> {
    let meta = std::fs::metadata(root).map_err(|e| RegistryError::Invalid {
        what: format!("--path {}", root.display()),
        reason: format!("cannot read it: {e}"),
    })?;
    let mut files = Vec::new();
    if meta.is_file() {
        let name =
            root.file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| RegistryError::Invalid {
                    what: format!("--path {}", root.display()),
                    reason: "the file name is not UTF-8".to_string(),
                })?;
        files.push((name.to_string(), root.to_path_buf()));
    } else {
        walk(root, "", &mut files)?;
    }
    if files.is_empty() {
        return Err(RegistryError::Invalid {
            what: format!("--path {}", root.display()),
            reason: "the folder holds no files".to_string(),
        });
    }
    files.sort();
    files
        .into_iter()
        .map(|(rel, path)| {
            let size = std::fs::metadata(&path)
                .map_err(|e| RegistryError::io(&path, e))?
                .len();
            let sha256 = sha256_file(&path)?;
            Ok(Entry {
                rel,
                path,
                size,
                sha256,
            })
        })
        .collect()
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> Result<(), RegistryError> {
    let entries = std::fs::read_dir(dir).map_err(|e| RegistryError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| RegistryError::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_str().ok_or_else(|| RegistryError::Invalid {
            what: format!("{}", path.display()),
            reason: "the file name is not UTF-8".to_string(),
        })?;
        let rel = format!("{prefix}{name}");
        let meta = std::fs::metadata(&path).map_err(|e| RegistryError::io(&path, e))?;
        if meta.is_dir() {
            walk(&path, &format!("{rel}/"), out)?;
        } else if meta.is_file() {
            out.push((rel, path));
        }
    }
    Ok(())
}

/// The manifest of a set of files (JSON, written to the run's artifacts).
pub(crate) fn manifest(name: &str, version: &str, entries: &[Entry]) -> serde_json::Value {
    let files: Vec<_> = entries
        .iter()
        .map(|e| serde_json::json!({"path": e.rel, "size": e.size, "sha256": e.sha256}))
        .collect();
    serde_json::json!({"format": MANIFEST_FORMAT, "name": name, "version": version, "files": files})
}

/// The run tag recording that `entry` is uploaded (key from the path's hash: tag keys allow few characters).
fn uploaded_tag(entry: &Entry) -> Tag {
    let key = hex(&Sha256::digest(entry.rel.as_bytes()));
    Tag {
        key: format!("olive.uploaded.{}", &key[..32]),
        value: format!("{} {}", entry.sha256, entry.size),
    }
}

/// Uploads the files a run does not hold yet under `<root>/model/`; returns (uploaded, bytes, skipped).
fn upload(
    registry: &Registry,
    run: &Run,
    root: &str,
    entries: &[Entry],
    progress: &dyn Progress,
) -> Result<(usize, u64, usize), RegistryError> {
    let (mut uploaded, mut bytes, mut skipped) = (0, 0, 0);
    progress.total(entries.iter().map(|e| e.size).sum());
    let mut done = 0;
    for entry in entries {
        let tag = uploaded_tag(entry);
        if run.tags.contains(&tag) {
            tracing::info!(
                "{}: already uploaded (sha256 {}), skipped",
                entry.rel,
                &entry.sha256[..12]
            );
            skipped += 1;
            done += entry.size;
            progress.position(done);
            continue;
        }
        tracing::info!("uploading {} ({} bytes)", entry.rel, entry.size);
        registry.put_artifact(
            &format!("{root}/model/{}", entry.rel),
            &entry.path,
            entry.size,
            &|sent| progress.position(done + sent),
        )?;
        done += entry.size;
        registry.set_run_tag(&run.id, &tag)?;
        uploaded += 1;
        bytes += entry.size;
    }
    Ok((uploaded, bytes, skipped))
}

/// Deletes the files under `<root>/model/` that are not `entries`: an overwrite's stale files, and the partial
/// temp files a server killed mid-upload leaves (`.artifact.uploading.*`), so the version holds exactly the folder.
fn remove_strays(registry: &Registry, root: &str, entries: &[Entry]) -> Result<(), RegistryError> {
    let mut stored = Vec::new();
    crate::fetch::list_files(registry, &format!("{root}/model"), "", &mut stored)?;
    for stray in stored
        .iter()
        .filter(|s| !entries.iter().any(|e| e.rel == s.rel))
    {
        tracing::info!("deleting {} from the store (not in the folder)", stray.rel);
        registry.delete_artifact(&format!("{root}/model/{}", stray.rel))?;
    }
    Ok(())
}

/// Uploads the manifest (from a temp file) and returns its sha256.
fn upload_manifest(
    registry: &Registry,
    root: &str,
    manifest: &serde_json::Value,
) -> Result<String, RegistryError> {
    let text = serde_json::to_vec_pretty(manifest).map_err(|e| RegistryError::Invalid {
        what: "manifest".to_string(),
        reason: e.to_string(),
    })?;
    let temp =
        tempfile::NamedTempFile::new().map_err(|e| RegistryError::io(std::env::temp_dir(), e))?;
    std::fs::write(temp.path(), &text).map_err(|e| RegistryError::io(temp.path(), e))?;
    registry.put_artifact(
        &format!("{root}/{MANIFEST}"),
        temp.path(),
        text.len() as u64,
        &|_| {},
    )?;
    Ok(hex(&Sha256::digest(&text)))
}

fn version_tags(options: &CreateOptions, entries: &[Entry], manifest_sha: &str) -> Vec<Tag> {
    let mut tags: Vec<Tag> = options
        .tags
        .iter()
        .map(|(k, v)| Tag {
            key: k.clone(),
            value: v.clone(),
        })
        .collect();
    tags.push(Tag {
        key: MANIFEST_TAG.into(),
        value: manifest_sha.into(),
    });
    tags.push(Tag {
        key: "olive.files".into(),
        value: entries.len().to_string(),
    });
    tags.push(Tag {
        key: "olive.bytes".into(),
        value: entries.iter().map(|e| e.size).sum::<u64>().to_string(),
    });
    tags.push(Tag {
        key: STATE_TAG.into(),
        value: "complete".into(),
    });
    tags
}

/// Publishes `options.path` as version `options.version` of `options.name`.
pub fn create(registry: &Registry, options: &CreateOptions) -> Result<CreateReport, RegistryError> {
    validate_name(options.name)?;
    let number = validate_version(options.version)?;
    for (key, _) in options.tags {
        if key.is_empty() || key.starts_with("olive.") {
            return Err(RegistryError::Invalid {
                what: format!("--tag `{key}`"),
                reason: "a tag key is not empty and does not start with `olive.` (kept for the manifest)".to_string(),
            });
        }
    }
    let entries = collect(options.path)?;
    let model = registry.registered_model(options.name)?;
    let versions = match &model {
        Some(_) => registry.model_versions(options.name)?,
        None => Vec::new(),
    };
    if let Some(existing) = versions.iter().find(|v| v.version == options.version) {
        if !options.overwrite {
            return Err(RegistryError::VersionExists {
                name: options.name.to_string(),
                version: options.version.to_string(),
            });
        }
        return overwrite(registry, options, existing, &entries);
    }
    let deleted = model
        .as_ref()
        .map_or(0, |m| crate::delete::deleted_up_to(&m.tags));
    let next = versions
        .iter()
        .filter_map(|v| v.version.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
        .max(deleted)
        + 1;
    if number != next {
        return Err(RegistryError::Invalid {
            what: format!("--version {}", options.version),
            reason: format!(
                "MLflow numbers the versions of a model itself: the next version of `{}` is {next}",
                options.name
            ),
        });
    }

    let experiment = registry.experiment_id(EXPERIMENT)?;
    let target = format!("{}/{}", options.name, options.version);
    let filter = format!("tags.`{TARGET_TAG}` = '{target}' and attributes.status = 'RUNNING'");
    let found = registry
        .search_runs(&experiment, &filter)?
        .into_iter()
        .next();
    let resumed = found.is_some();
    let run = match found {
        Some(run) => {
            tracing::info!("resuming the upload of {target} in run {}", run.id);
            run
        }
        None => registry.create_run(
            &experiment,
            &format!("{}-v{}", options.name, options.version),
            &[Tag {
                key: TARGET_TAG.into(),
                value: target.clone(),
            }],
        )?,
    };
    let result = publish_new(registry, options, &run, &entries, model.is_none(), resumed);
    if let Err(error) = &result {
        if error.is_transient() {
            tracing::warn!("the upload of {target} stopped; files already uploaded are kept in run {}: rerun the same command to resume", run.id);
        } else if registry.delete_run(&run.id).is_err() {
            tracing::warn!("could not delete run {} of the failed upload", run.id);
        }
    }
    result
}

/// Uploads into `run`, then registers the version; a version or model created here is deleted on failure.
fn publish_new(
    registry: &Registry,
    options: &CreateOptions,
    run: &Run,
    entries: &[Entry],
    create_model: bool,
    resumed: bool,
) -> Result<CreateReport, RegistryError> {
    let root = proxy_path(&run.artifact_uri)?;
    let (uploaded_files, uploaded_bytes, skipped_files) =
        upload(registry, run, &root, entries, options.progress)?;
    if resumed {
        remove_strays(registry, &root, entries)?;
    }
    let manifest_sha = upload_manifest(
        registry,
        &root,
        &manifest(options.name, options.version, entries),
    )?;
    if create_model {
        registry.create_registered_model(options.name, options.description)?;
    }
    let source = format!("{}/model", run.artifact_uri.trim_end_matches('/'));
    let tags = version_tags(options, entries, &manifest_sha);
    let created =
        registry.create_model_version(options.name, &source, &run.id, &tags, options.description);
    let outcome = created.and_then(|version| {
        if version.version != options.version {
            // A version deleted by another client took the number; this one is burnt too once deleted.
            let _ = registry.delete_model_version(options.name, &version.version);
            let burnt = version.version.parse::<u64>().unwrap_or(0);
            let _ = registry.set_registered_model_tag(
                options.name,
                &Tag {
                    key: crate::delete::DELETED_TAG.into(),
                    value: burnt.to_string(),
                },
            );
            return Err(RegistryError::Invalid {
                what: format!("--version {}", options.version),
                reason: format!(
                    "the registry numbered the new version {} (versions deleted earlier are not reused); nothing was \
                     registered; the next version is {}",
                    version.version,
                    burnt + 1
                ),
            });
        }
        registry.finish_run(&run.id)?;
        Ok(version)
    });
    match outcome {
        Ok(version) => Ok(CreateReport {
            version,
            uploaded_files,
            uploaded_bytes,
            skipped_files,
        }),
        Err(error) => {
            if create_model {
                let _ = registry.delete_registered_model(options.name);
            }
            Err(error)
        }
    }
}

/// Replaces the files of an existing version made by `create`: changed files uploaded, stale ones deleted, the
/// manifest and tags rewritten; the version is tagged `uploading` meanwhile so a download refuses it.
fn overwrite(
    registry: &Registry,
    options: &CreateOptions,
    existing: &ModelVersion,
    entries: &[Entry],
) -> Result<CreateReport, RegistryError> {
    let what = format!("model `{}` version {}", options.name, options.version);
    if existing.tag(MANIFEST_TAG).is_none() || existing.run_id.is_empty() {
        return Err(RegistryError::Invalid {
            what,
            reason: "it was not published by olive-host (no manifest), so it cannot be overwritten in place; delete it first".to_string(),
        });
    }
    let run = registry.run(&existing.run_id)?;
    let root = proxy_path(&run.artifact_uri)?;
    let set = |key: &str, value: &str| {
        registry.set_model_version_tag(
            options.name,
            options.version,
            &Tag {
                key: key.into(),
                value: value.into(),
            },
        )
    };
    set(STATE_TAG, "uploading")?;
    let (uploaded_files, uploaded_bytes, skipped_files) =
        upload(registry, &run, &root, entries, options.progress)?;
    remove_strays(registry, &root, entries)?;
    let manifest_sha = upload_manifest(
        registry,
        &root,
        &manifest(options.name, options.version, entries),
    )?;
    for tag in version_tags(options, entries, &manifest_sha) {
        set(&tag.key, &tag.value)?;
    }
    if !options.description.is_empty() {
        registry.update_model_version(options.name, options.version, options.description)?;
    }
    let version = registry
        .model_version(options.name, options.version)?
        .ok_or(RegistryError::NotFound { what })?;
    Ok(CreateReport {
        version,
        uploaded_files,
        uploaded_bytes,
        skipped_files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["ft-for-travel", "a", "Phi_3.5.v1"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "a/b", "a:b", "-a", ".a", "a b", "ü", &"a".repeat(256)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(validate_version("1").unwrap(), 1);
        for bad in ["0", "01", "-1", "v1", "1.0", ""] {
            assert!(validate_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn collects_files_with_checksums() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.bin"), b"abc").unwrap();
        std::fs::write(dir.path().join("a.txt"), b"").unwrap();
        let entries = collect(dir.path()).unwrap();
        let rels: Vec<_> = entries.iter().map(|e| e.rel.as_str()).collect();
        assert_eq!(rels, ["a.txt", "sub/b.bin"]);
        assert_eq!(
            entries[1].sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(entries[1].size, 3);
        assert!(collect(&dir.path().join("missing")).is_err());
        let empty = tempfile::tempdir().unwrap();
        assert!(collect(empty.path()).is_err());
    }
}
