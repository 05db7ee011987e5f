//! Writing a file so that no reader ever sees half of it: the content goes into a temporary file beside the target
//! (same folder, same extension), which is renamed over the target only once it is complete.

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, Context};

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomic_with(path, |tmp| {
        let mut file = std::fs::File::create(tmp)?;
        file.write_all(bytes)?;
        Ok(())
    })
}

/// Lets `write` fill a temporary path beside `path` (writers that open a path themselves, as plotters' bitmap
/// backend does), then renames it to `path`; on failure the temporary file is removed.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{}: expected a file name", path.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".")
        .suffix(&format!(".{name}"))
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    write(tmp.path()).with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| anyhow!("cannot write {}: {}", path.display(), e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_neither_the_target_nor_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.png");
        write_atomic(&path, b"one").unwrap();
        let err = write_atomic_with(&path, |_| anyhow::bail!("plotting failed"));
        assert!(err.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
