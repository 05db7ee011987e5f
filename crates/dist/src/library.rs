//! Finding NCCL's libnccl.so.2 for cudarc, whose dynamic loading opens NCCL only by names such as `libnccl.so`
//! or `libnccl.so.13`, never `.so.2`: a cached folder holding `libnccl.so` -> the library found, which the
//! launcher puts first on the workers' LD_LIBRARY_PATH.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{DistError, Result};

/// The file name NCCL 2 installs (its SONAME).
pub const LIBRARY: &str = "libnccl.so.2";
/// The name that cudarc opens, a symlink in the loader folder.
pub const LINK_NAME: &str = "libnccl.so";

/// [`nccl_loader_dir_with`] on the process environment.
pub fn nccl_loader_dir() -> Result<PathBuf> {
    nccl_loader_dir_with(|name| std::env::var(name).ok())
}

/// Finds libnccl.so.2 ([`find_nccl_with`]) and returns a folder holding `libnccl.so`, a symlink to it:
/// `$XDG_CACHE_HOME/olive-rs/nccl/<hash of the path>`, else `$HOME/.cache/olive-rs/nccl/<hash>`. The folder is
/// made in a temporary folder and renamed into place, so processes racing to make it all get a complete one.
pub fn nccl_loader_dir_with(get: impl Fn(&str) -> Option<String>) -> Result<PathBuf> {
    let library = find_nccl_with(&get)?;
    let root = match (get("XDG_CACHE_HOME"), get("HOME")) {
        (Some(cache), _) if !cache.is_empty() => PathBuf::from(cache),
        (_, Some(home)) if !home.is_empty() => Path::new(&home).join(".cache"),
        _ => {
            return Err(DistError::MissingVariable {
                name: "HOME",
                why: "the NCCL loader folder is kept under $XDG_CACHE_HOME or $HOME/.cache".into(),
            })
        }
    }
    .join("olive-rs")
    .join("nccl");
    loader_dir(&library, &root)
}

/// Where libnccl.so.2 is, searched in this order: `$OLIVE_NCCL_LIBRARY` (the file itself; an error if it is not a
/// file), each folder of `$LD_LIBRARY_PATH`, `$CUDA_PATH/lib64`, `$CUDA_HOME/lib64`, `/usr/local/cuda/lib64`,
/// `/usr/lib/<arch>-linux-gnu`, then the `nvidia/nccl/lib` folder of the nvidia-nccl wheel in the Python
/// environments `$VIRTUAL_ENV`, `<dir>/..` for each `<dir>` of `$PATH` holding `python3`, and `~/.local`
/// (`lib/python3*/site-packages` or `dist-packages` under each). Python is not run.
pub fn find_nccl_with(get: impl Fn(&str) -> Option<String>) -> Result<PathBuf> {
    let system = [
        PathBuf::from("/usr/local/cuda/lib64"),
        PathBuf::from(format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH)),
    ];
    search(&get, &system)
}

/// The search of [`find_nccl_with`] with the fixed system folders given (tests pass none).
fn search(get: &impl Fn(&str) -> Option<String>, system: &[PathBuf]) -> Result<PathBuf> {
    if let Some(path) = get("OLIVE_NCCL_LIBRARY").filter(|p| !p.is_empty()) {
        if Path::new(&path).is_file() {
            return absolute(Path::new(&path));
        }
        return Err(DistError::BadVariable {
            name: "OLIVE_NCCL_LIBRARY",
            value: path,
            expected: format!("the path of an existing {LIBRARY} file"),
        });
    }
    let mut folders: Vec<PathBuf> = Vec::new();
    if let Some(paths) = get("LD_LIBRARY_PATH") {
        folders.extend(split_paths(&paths));
    }
    for name in ["CUDA_PATH", "CUDA_HOME"] {
        if let Some(root) = get(name).filter(|r| !r.is_empty()) {
            folders.push(Path::new(&root).join("lib64"));
        }
    }
    folders.extend(system.iter().cloned());
    let mut prefixes: Vec<PathBuf> = Vec::new();
    if let Some(venv) = get("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        prefixes.push(PathBuf::from(venv));
    }
    if let Some(paths) = get("PATH") {
        for dir in split_paths(&paths) {
            if dir.join("python3").exists() {
                if let Some(prefix) = dir.parent() {
                    prefixes.push(prefix.to_path_buf());
                }
            }
        }
    }
    if let Some(home) = get("HOME").filter(|h| !h.is_empty()) {
        prefixes.push(Path::new(&home).join(".local"));
    }
    for prefix in &prefixes {
        folders.extend(wheel_folders(prefix));
    }
    let mut looked: Vec<PathBuf> = Vec::new();
    for folder in folders {
        let file = folder.join(LIBRARY);
        if looked.contains(&file) {
            continue;
        }
        if file.is_file() {
            return absolute(&file);
        }
        looked.push(file);
    }
    // The Python prefixes without a python3* folder never became candidates; name them too.
    looked.extend(prefixes.iter().map(|p| {
        p.join("lib/python3*/site-packages/nvidia/nccl/lib")
            .join(LIBRARY)
    }));
    looked.dedup();
    Err(DistError::NcclNotFound { looked })
}

/// `<prefix>/lib/python3*/{site,dist}-packages/nvidia/nccl/lib` for each python3* folder, in name order.
fn wheel_folders(prefix: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(prefix.join("lib")) else {
        return Vec::new();
    };
    let mut pythons: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().as_bytes().starts_with(b"python3"))
        .map(|e| e.path())
        .collect();
    pythons.sort();
    pythons
        .iter()
        .flat_map(|p| {
            ["site-packages", "dist-packages"]
                .map(|packages| p.join(packages).join("nvidia/nccl/lib"))
        })
        .collect()
}

fn split_paths(list: &str) -> impl Iterator<Item = PathBuf> + '_ {
    list.split(':').filter(|p| !p.is_empty()).map(PathBuf::from)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    path.canonicalize().map_err(|source| DistError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// `<root>/<hash>/libnccl.so` -> `library`, made through a temporary folder and a rename.
fn loader_dir(library: &Path, root: &Path) -> Result<PathBuf> {
    let key = format!("{:016x}", fnv1a(library.as_os_str().as_bytes()));
    let dir = root.join(&key);
    let ready = || std::fs::read_link(dir.join(LINK_NAME)).is_ok_and(|target| target == library);
    if ready() {
        return Ok(dir);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DistError::Io { path, source }
    };
    std::fs::create_dir_all(root).map_err(io(root))?;
    // Unique among processes (pid) and among threads of this one (counter).
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = root.join(format!(".{key}.tmp-{}-{n}", std::process::id()));
    std::fs::create_dir(&temp).map_err(io(&temp))?;
    let made = std::os::unix::fs::symlink(library, temp.join(LINK_NAME))
        .map_err(io(&temp.join(LINK_NAME)))
        .and_then(|()| match std::fs::rename(&temp, &dir) {
            Ok(()) => Ok(()),
            // Another process made it first.
            Err(_) if ready() => Ok(()),
            // A stale folder (a link elsewhere): replace it.
            Err(_) => {
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::rename(&temp, &dir).map_err(io(&dir))
            }
        });
    if temp.exists() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    made.map(|()| dir)
}

/// 64-bit FNV-1a: a hash that stays the same across builds, for cache folder names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
#[path = "../tests/support/mod.rs"]
mod support;

#[cfg(test)]
mod tests {
    use super::support::env;
    use super::*;

    fn fake(folder: &Path) -> PathBuf {
        super::support::fake(folder, LIBRARY)
    }

    #[test]
    fn finds_the_wheel_in_a_virtual_env() {
        let temp = tempfile::tempdir().expect("temp dir");
        let venv = temp.path().join("venv");
        let file = fake(&venv.join("lib/python3.11/site-packages/nvidia/nccl/lib"));
        let found = search(&env(&[("VIRTUAL_ENV", &venv)]), &[]).expect("found");
        assert_eq!(found, file);
    }

    #[test]
    fn finds_the_wheel_beside_python_on_path() {
        let temp = tempfile::tempdir().expect("temp dir");
        let prefix = temp.path().join("opt/torch/.venv");
        std::fs::create_dir_all(prefix.join("bin")).expect("bin");
        std::fs::write(prefix.join("bin/python3"), b"").expect("python3");
        let file = fake(&prefix.join("lib/python3.12/site-packages/nvidia/nccl/lib"));
        let path = format!(
            "{}:{}",
            temp.path().join("nothing").display(),
            prefix.join("bin").display()
        );
        let found =
            search(&|name: &str| (name == "PATH").then(|| path.clone()), &[]).expect("found");
        assert_eq!(found, file);
    }

    #[test]
    fn ld_library_path_comes_before_the_python_environment() {
        let temp = tempfile::tempdir().expect("temp dir");
        let venv = temp.path().join("venv");
        fake(&venv.join("lib/python3.11/site-packages/nvidia/nccl/lib"));
        let first = fake(&temp.path().join("nccl/lib"));
        let get = env(&[
            ("VIRTUAL_ENV", &venv),
            ("LD_LIBRARY_PATH", &temp.path().join("nccl/lib")),
        ]);
        assert_eq!(search(&get, &[]).expect("found"), first);
    }

    #[test]
    fn not_found_lists_every_place() {
        let temp = tempfile::tempdir().expect("temp dir");
        let venv = temp.path().join("venv");
        let cuda = temp.path().join("cuda");
        let get = env(&[("VIRTUAL_ENV", &venv), ("CUDA_HOME", &cuda)]);
        let error = search(&get, &[temp.path().join("system")]).expect_err("nothing to find");
        let text = error.to_string();
        for place in [
            cuda.join("lib64").join(LIBRARY),
            temp.path().join("system").join(LIBRARY),
            venv.join("lib/python3*/site-packages/nvidia/nccl/lib")
                .join(LIBRARY),
        ] {
            assert!(
                text.contains(&place.display().to_string()),
                "{place:?} missing from:\n{text}"
            );
        }
        assert!(
            text.contains("OLIVE_NCCL_LIBRARY") && text.contains("nvidia-nccl-cu13"),
            "{text}"
        );
    }

    #[test]
    fn the_link_folder_is_reused_and_a_stale_one_replaced() {
        let temp = tempfile::tempdir().expect("temp dir");
        let one = fake(&temp.path().join("a"));
        let root = temp.path().join("cache");
        let dir = loader_dir(&one, &root).expect("made");
        assert_eq!(std::fs::read_link(dir.join(LINK_NAME)).expect("link"), one);
        assert_eq!(loader_dir(&one, &root).expect("reused"), dir);
        // A folder of the same name pointing elsewhere is replaced.
        std::fs::remove_file(dir.join(LINK_NAME)).expect("unlink");
        std::os::unix::fs::symlink("/elsewhere", dir.join(LINK_NAME)).expect("stale link");
        assert_eq!(loader_dir(&one, &root).expect("replaced"), dir);
        assert_eq!(std::fs::read_link(dir.join(LINK_NAME)).expect("link"), one);
        let names: Vec<_> = std::fs::read_dir(&root).expect("root").collect();
        assert_eq!(names.len(), 1, "temporary folders left behind: {names:?}");
    }
}
