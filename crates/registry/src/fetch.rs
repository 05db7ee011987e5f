//! `model download`: a model version's files fetched through the artifact proxy into a temp folder beside the
//! output, each checked against the sha256 and size of the manifest `create` wrote, then renamed into place.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::api::{proxy_path, ModelVersion, Registry};
use crate::publish::{hex, Progress, MANIFEST, MANIFEST_FORMAT, MANIFEST_TAG, STATE_TAG};
use crate::RegistryError;

/// One file a manifest lists.
#[derive(Clone, Debug, serde::Deserialize)]
pub(crate) struct ManifestFile {
    #[serde(rename = "path")]
    pub rel: String,
    pub size: u64,
    /// None for a version not published by olive-host (listed from the artifact store: no checksum).
    #[serde(default)]
    pub sha256: Option<String>,
}

#[derive(serde::Deserialize)]
struct Manifest {
    format: String,
    files: Vec<ManifestFile>,
}

/// The files of `version` from its manifest at `<root>/olive-manifest.json`, checked against the version's tag.
pub(crate) fn read_manifest(
    registry: &Registry,
    root: &str,
    version: &ModelVersion,
) -> Result<Vec<ManifestFile>, RegistryError> {
    let path = format!("{root}/{MANIFEST}");
    let mut text = Vec::new();
    registry
        .get_artifact(&path)?
        .take(256 << 20)
        .read_to_end(&mut text)
        .map_err(|e| RegistryError::Unreachable {
            url: path.clone(),
            attempts: 1,
            reason: e.to_string(),
        })?;
    let actual = hex(&Sha256::digest(&text));
    let expected = version.tag(MANIFEST_TAG).unwrap_or_default();
    if actual != expected {
        return Err(RegistryError::Checksum {
            path: PathBuf::from(path),
            expected: expected.to_string(),
            actual,
        });
    }
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| RegistryError::Response {
            url: path.clone(),
            reason: format!("manifest: {e}"),
        })?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(RegistryError::Response {
            url: path,
            reason: format!(
                "manifest format `{}`, expected `{MANIFEST_FORMAT}`",
                manifest.format
            ),
        });
    }
    for file in &manifest.files {
        if file.rel.is_empty()
            || file.rel.starts_with('/')
            || file.rel.split('/').any(|s| s == ".." || s.is_empty())
        {
            return Err(RegistryError::Response {
                url: path,
                reason: format!("manifest lists an unsafe path `{}`", file.rel),
            });
        }
    }
    Ok(manifest.files)
}

/// Every file under the artifact folder `dir`, recursively (for versions without a manifest).
pub(crate) fn list_files(
    registry: &Registry,
    dir: &str,
    prefix: &str,
    out: &mut Vec<ManifestFile>,
) -> Result<(), RegistryError> {
    for info in registry.list_artifacts(dir)? {
        let name = info
            .path
            .rsplit('/')
            .next()
            .unwrap_or(&info.path)
            .to_string();
        if name.is_empty() || name == ".." || name == "." {
            continue;
        }
        let rel = format!("{prefix}{name}");
        if info.is_dir {
            list_files(registry, &format!("{dir}/{name}"), &format!("{rel}/"), out)?;
        } else {
            let size = match &info.file_size {
                Some(serde_json::Value::Number(n)) => n.as_u64(),
                Some(serde_json::Value::String(s)) => s.parse().ok(),
                _ => None,
            };
            out.push(ManifestFile {
                rel,
                size: size.unwrap_or(0),
                sha256: None,
            });
        }
    }
    Ok(())
}

/// The files of a version: from its manifest where `create` published it, else listed from the store.
pub fn version_files(
    registry: &Registry,
    version: &ModelVersion,
) -> Result<Vec<(String, u64, Option<String>)>, RegistryError> {
    let files = files_of(registry, version)?;
    Ok(files
        .into_iter()
        .map(|f| (f.rel, f.size, f.sha256))
        .collect())
}

fn files_of(
    registry: &Registry,
    version: &ModelVersion,
) -> Result<Vec<ManifestFile>, RegistryError> {
    let source = proxy_path(&version.source)?;
    if version.tag(MANIFEST_TAG).is_some() {
        let root = source.rsplit_once('/').map_or("", |(parent, _)| parent);
        read_manifest(registry, root, version)
    } else {
        let mut files = Vec::new();
        list_files(registry, &source, "", &mut files)?;
        Ok(files)
    }
}

/// Downloads version `version` of `name` into the new folder `output` (which must not exist); returns the bytes.
/// `progress` is told the total bytes, then the bytes downloaded so far.
pub fn download(
    registry: &Registry,
    name: &str,
    version: &str,
    output: &Path,
    progress: &dyn Progress,
) -> Result<u64, RegistryError> {
    let what = format!("model `{name}` version {version}");
    let mv = registry
        .model_version(name, version)?
        .ok_or_else(|| RegistryError::NotFound { what: what.clone() })?;
    if mv.tag(STATE_TAG) == Some("uploading") {
        return Err(RegistryError::Invalid { what, reason: "an overwrite of its files is under way or was interrupted; rerun `model create --overwrite`".to_string() });
    }
    if output.exists() {
        return Err(RegistryError::Invalid {
            what: format!("--output_path {}", output.display()),
            reason: "exists already; pick a new folder".to_string(),
        });
    }
    let files = files_of(registry, &mv)?;
    let source = proxy_path(&mv.source)?;
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| RegistryError::io(&parent, e))?;
    let temp = tempfile::Builder::new()
        .prefix(".olive-download-")
        .tempdir_in(&parent)
        .map_err(|e| RegistryError::io(&parent, e))?;
    progress.total(files.iter().map(|f| f.size).sum());
    let mut total = 0;
    for file in &files {
        let target = temp.path().join(&file.rel);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| RegistryError::io(dir, e))?;
        }
        tracing::info!("downloading {} ({} bytes)", file.rel, file.size);
        let url = format!("{source}/{}", file.rel);
        let mut reader = registry.get_artifact(&url)?;
        let mut out = std::fs::File::create(&target).map_err(|e| RegistryError::io(&target, e))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = reader
                .read(&mut buffer)
                .map_err(|e| RegistryError::Unreachable {
                    url: url.clone(),
                    attempts: 1,
                    reason: e.to_string(),
                })?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            out.write_all(&buffer[..n])
                .map_err(|e| RegistryError::io(&target, e))?;
            size += n as u64;
            progress.position(total + size);
        }
        out.sync_all().map_err(|e| RegistryError::io(&target, e))?;
        let actual = hex(&hasher.finalize());
        if let Some(expected) = &file.sha256 {
            if *expected != actual {
                return Err(RegistryError::Checksum {
                    path: PathBuf::from(&file.rel),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        if file.sha256.is_some() && size != file.size {
            return Err(RegistryError::Response {
                url,
                reason: format!("{size} bytes, the manifest says {}", file.size),
            });
        }
        total += size;
    }
    let kept = temp.keep();
    std::fs::rename(&kept, output).map_err(|e| {
        let _ = std::fs::remove_dir_all(&kept);
        RegistryError::io(output, e)
    })?;
    Ok(total)
}
