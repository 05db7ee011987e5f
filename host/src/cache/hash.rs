//! Content keys: SHA-256 of canonical JSON for configs, and of file contents for input models. A file's hash is
//! remembered by path, size, modification time and inode, so a multi-gigabyte input is read once, not every run.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Hex characters kept of a key (96 bits).
const KEY_LEN: usize = 24;

/// The key of a JSON value (serde_json writes object keys sorted, so equal values give equal text).
pub fn key_of(value: &Value) -> String {
    let digest = Sha256::digest(value.to_string().as_bytes());
    hex(&digest)[..KEY_LEN].to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    sha256: String,
}

/// Hashes files and folders, remembering file hashes in a JSON file.
pub struct ContentHasher {
    memo_path: PathBuf,
    memo: BTreeMap<PathBuf, Stamp>,
    changed: bool,
}

impl ContentHasher {
    /// Reads the memo at `memo_path` (an unreadable memo is started afresh).
    pub fn open(memo_path: &Path) -> Self {
        let memo = fs::read_to_string(memo_path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        ContentHasher {
            memo_path: memo_path.to_path_buf(),
            memo,
            changed: false,
        }
    }

    /// The hash of a file, or of a folder's files (relative names and contents, in name order).
    pub fn tree(&mut self, path: &Path) -> anyhow::Result<String> {
        let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_file() {
            return self.file(path, &meta);
        }
        let mut files = Vec::new();
        collect(path, path, &mut files)?;
        files.sort();
        let mut listing = Vec::new();
        for rel in files {
            let full = path.join(&rel);
            let meta = fs::metadata(&full)?;
            listing.push(Value::from(vec![
                Value::from(rel.to_string_lossy().into_owned()),
                Value::from(self.file(&full, &meta)?),
            ]));
        }
        Ok(key_of(&Value::Array(listing)))
    }

    fn file(&mut self, path: &Path, meta: &fs::Metadata) -> anyhow::Result<String> {
        let path = fs::canonicalize(path)?;
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        if let Some(stamp) = self.memo.get(&path) {
            if stamp.size == meta.len() && stamp.mtime_ns == mtime_ns && stamp.inode == meta.ino() {
                return Ok(stamp.sha256.clone());
            }
        }
        let mut file =
            fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let sha256 = hex(&hasher.finalize());
        self.memo.insert(
            path,
            Stamp {
                size: meta.len(),
                mtime_ns,
                inode: meta.ino(),
                sha256: sha256.clone(),
            },
        );
        self.changed = true;
        Ok(sha256)
    }

    /// Writes the memo back if it grew (best effort: a lost memo only costs re-reading).
    pub fn save(&self) {
        if !self.changed {
            return;
        }
        if let Ok(bytes) = serde_json::to_vec(&self.memo) {
            if let Err(e) = crate::files::write_atomic(&self.memo_path, &bytes) {
                tracing::debug!("cannot save file hashes: {e:#}");
            }
        }
    }
}

/// Relative paths of the files under `dir` (hidden staging folders included: a model folder has none).
fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for item in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let item = item?;
        let path = item.path();
        if item.file_type()?.is_dir() || fs::metadata(&path)?.is_dir() {
            collect(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_path_buf());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_contents_give_equal_keys_and_a_change_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for d in [&a, &b] {
            fs::create_dir_all(d.join("sub")).unwrap();
            fs::write(d.join("config.json"), "{}").unwrap();
            fs::write(d.join("sub/w"), "weights").unwrap();
        }
        let mut h = ContentHasher::open(&dir.path().join("memo.json"));
        let (ka, kb) = (h.tree(&a).unwrap(), h.tree(&b).unwrap());
        assert_eq!(ka, kb);
        h.save();
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::write(b.join("sub/w"), "weightz").unwrap();
        let mut h = ContentHasher::open(&dir.path().join("memo.json"));
        assert_eq!(h.tree(&a).unwrap(), ka);
        assert_ne!(h.tree(&b).unwrap(), ka);
    }

    #[test]
    fn config_keys_ignore_key_order() {
        let x: Value = serde_json::from_str(r#"{"a": 1, "b": {"c": 2, "d": 3}}"#).unwrap();
        let y: Value = serde_json::from_str(r#"{"b": {"d": 3, "c": 2}, "a": 1}"#).unwrap();
        assert_eq!(key_of(&x), key_of(&y));
        assert_ne!(key_of(&x), key_of(&serde_json::json!({"a": 2})));
    }
}
