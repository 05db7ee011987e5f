//! Test helpers for the NCCL library search, shared by library.rs's unit tests and tests/library.rs: an injected
//! environment and a fake library file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A variable lookup that sees only `pairs`.
pub fn env(pairs: &[(&str, &Path)]) -> impl Fn(&str) -> Option<String> + Clone {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.display().to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

/// A file named `name` in `folder` (made), which is not a library; its canonical path.
pub fn fake(folder: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(folder).expect("make folder");
    let file = folder.join(name);
    std::fs::write(&file, b"not really NCCL").expect("write fake library");
    file.canonicalize().expect("canonical")
}
