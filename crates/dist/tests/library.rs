//! nccl_loader_dir_with end to end with an injected environment: OLIVE_NCCL_LIBRARY, the cache folder under
//! $HOME or $XDG_CACHE_HOME, and processes racing to make the same folder.

use std::path::{Path, PathBuf};

use olive_dist::library::{LIBRARY, LINK_NAME};
use olive_dist::{nccl_loader_dir_with, DistError};

mod support;
use support::env;

fn fake(folder: &Path) -> PathBuf {
    support::fake(folder, LIBRARY)
}

#[test]
fn olive_nccl_library_is_linked_under_home() {
    let temp = tempfile::tempdir().expect("temp dir");
    let library = fake(&temp.path().join("somewhere"));
    let home = temp.path().join("home");
    let dir = nccl_loader_dir_with(env(&[("OLIVE_NCCL_LIBRARY", &library), ("HOME", &home)]))
        .expect("loader folder");
    assert!(
        dir.starts_with(home.join(".cache/olive-rs/nccl")),
        "{dir:?}"
    );
    assert_eq!(
        std::fs::read_link(dir.join(LINK_NAME)).expect("link"),
        library
    );
    assert_eq!(
        std::fs::read(dir.join(LINK_NAME)).expect("through the link"),
        b"not really NCCL"
    );
}

#[test]
fn xdg_cache_home_wins_over_home() {
    let temp = tempfile::tempdir().expect("temp dir");
    let library = fake(&temp.path().join("somewhere"));
    let cache = temp.path().join("xdg");
    let dir = nccl_loader_dir_with(env(&[
        ("OLIVE_NCCL_LIBRARY", &library),
        ("HOME", &temp.path().join("home")),
        ("XDG_CACHE_HOME", &cache),
    ]))
    .expect("loader folder");
    assert!(dir.starts_with(cache.join("olive-rs/nccl")), "{dir:?}");
}

#[test]
fn a_missing_olive_nccl_library_is_an_error_not_a_fallback() {
    let temp = tempfile::tempdir().expect("temp dir");
    let missing = temp.path().join("no").join(LIBRARY);
    fake(
        &temp
            .path()
            .join("venv/lib/python3.11/site-packages/nvidia/nccl/lib"),
    );
    let error = nccl_loader_dir_with(env(&[
        ("OLIVE_NCCL_LIBRARY", &missing),
        ("VIRTUAL_ENV", &temp.path().join("venv")),
        ("HOME", temp.path()),
    ]))
    .expect_err("a bad OLIVE_NCCL_LIBRARY");
    match &error {
        DistError::BadVariable { name, value, .. } => {
            assert_eq!(
                (*name, value.as_str()),
                ("OLIVE_NCCL_LIBRARY", missing.to_str().expect("utf-8"))
            );
        }
        other => panic!("expected a bad OLIVE_NCCL_LIBRARY, got {other}"),
    }
}

#[test]
fn racing_threads_get_one_complete_folder() {
    let temp = tempfile::tempdir().expect("temp dir");
    let library = fake(&temp.path().join("somewhere"));
    let home = temp.path().join("home");
    let get = env(&[("OLIVE_NCCL_LIBRARY", &library), ("HOME", &home)]);
    let dirs: Vec<PathBuf> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let get = get.clone();
                s.spawn(move || nccl_loader_dir_with(get).expect("loader folder"))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert!(dirs.iter().all(|d| d == &dirs[0]), "{dirs:?}");
    assert_eq!(
        std::fs::read_link(dirs[0].join(LINK_NAME)).expect("link"),
        library
    );
    let left: Vec<_> = std::fs::read_dir(home.join(".cache/olive-rs/nccl"))
        .expect("cache root")
        .collect();
    assert_eq!(left.len(), 1, "temporary folders left behind: {left:?}");
}

/// On a machine with NCCL (the GPU machine, or here with VIRTUAL_ENV=$OLIVE_TEST_VENV): the process
/// environment leads to a libnccl.so that loads under the name cudarc uses and reports its version.
/// `cargo test --release -p olive-dist --test library -- --ignored --nocapture`
#[test]
#[ignore = "needs NCCL installed (the nvidia-nccl wheel or a system libnccl.so.2)"]
fn the_environment_provides_a_loadable_nccl() {
    let dir = match olive_dist::nccl_loader_dir() {
        Ok(dir) => dir,
        Err(e) => panic!("{e}"),
    };
    let link = dir.join(LINK_NAME);
    println!("{} -> {:?}", link.display(), std::fs::read_link(&link));
    let name = std::ffi::CString::new(link.to_str().expect("utf-8 path")).expect("no NUL");
    // SAFETY: dlopen/dlsym with NUL-terminated names; ncclGetVersion writes one int and needs no GPU.
    unsafe {
        let handle = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        assert!(!handle.is_null(), "dlopen {} failed", link.display());
        let symbol = libc::dlsym(handle, c"ncclGetVersion".as_ptr());
        assert!(!symbol.is_null(), "no ncclGetVersion in {}", link.display());
        let get_version: extern "C" fn(*mut i32) -> i32 = std::mem::transmute(symbol);
        let mut version = 0i32;
        assert_eq!(get_version(&mut version), 0, "ncclGetVersion failed");
        println!("NCCL version code {version}");
        assert!(version >= 22000, "NCCL {version} is older than 2.20");
    }
}
