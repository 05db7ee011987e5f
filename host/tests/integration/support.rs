//! Shared set-up: builds the fixture plugins (tests/plugins/*) once with the profile these tests
//! were built with, and stages each library with its checked-in manifest in one plugin folder.

use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The fixture packages and their library base names.
pub const FIXTURES: [(&str, &str); 4] = [
    ("fixture-copy", "fixture_copy"),
    ("fixture-broken", "fixture_broken"),
    ("fixture-wrong-api", "fixture_wrong_api"),
    ("fixture-no-symbol", "fixture_no_symbol"),
];

/// The fixture whose `LoRA` pass stands in for the lora plugin's in tests of finetune's group launcher; staged in
/// a folder of its own ([`dist_plugin_dir`]).
pub const DIST_FIXTURE: (&str, &str) = ("fixture-dist", "fixture_dist");

/// olive-host hard-linked (or copied) into a folder of its own, so that the real plugins whose manifests
/// scripts/write-plugin-manifests.sh puts beside the built binary stay out of these tests' discovery.
pub fn host_exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let built = Path::new(env!("CARGO_BIN_EXE_olive-host"));
        let dir = profile_dir().join("olive-test-host");
        let exe = dir.join(built.file_name().expect("olive-host has a file name"));
        fs::create_dir_all(&dir).unwrap();
        let _ = fs::remove_file(&exe);
        if fs::hard_link(built, &exe).is_err() {
            fs::copy(built, &exe).unwrap();
        }
        exe
    })
}

/// `target/<profile>`, where cargo put olive-host and puts the fixture libraries.
pub fn profile_dir() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_olive-host"))
        .parent()
        .expect("olive-host lives in a target folder")
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is inside the workspace")
}

/// The built library of fixture `lib` (e.g. `fixture_copy`).
pub fn library(lib: &str) -> PathBuf {
    plugin_dir();
    profile_dir().join(format!("{DLL_PREFIX}{lib}{DLL_SUFFIX}"))
}

/// The checked-in manifest of fixture package `package`.
pub fn checked_in_manifest(package: &str, lib: &str) -> PathBuf {
    workspace_root()
        .join("tests/plugins")
        .join(package)
        .join(format!("{lib}.olive-plugin.json"))
}

/// The staged plugin folder with every fixture.
pub fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        build_fixtures();
        let dir = profile_dir().join("olive-test-plugins");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for (package, lib) in FIXTURES {
            stage(&dir, package, lib, |_| {});
        }
        dir
    })
}

/// A plugin folder holding only [`DIST_FIXTURE`].
pub fn dist_plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        plugin_dir();
        let dir = profile_dir().join("olive-test-plugins-dist");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let (package, lib) = DIST_FIXTURE;
        stage(&dir, package, lib, |_| {});
        dir
    })
}

/// Copies fixture `lib` into `dir` with its manifest, edited by `edit`.
pub fn stage(dir: &Path, package: &str, lib: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let file = format!("{DLL_PREFIX}{lib}{DLL_SUFFIX}");
    fs::copy(profile_dir().join(&file), dir.join(&file)).unwrap();
    let manifest = checked_in_manifest(package, lib);
    let mut json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&manifest).unwrap()).unwrap();
    edit(&mut json);
    fs::write(
        dir.join(manifest.file_name().unwrap()),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
}

/// A plugin folder holding only fixture `lib`, its manifest edited by `edit`.
pub fn doctored(
    package: &str,
    lib: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> tempfile::TempDir {
    plugin_dir();
    let dir = tempfile::tempdir().unwrap();
    stage(dir.path(), package, lib, edit);
    dir
}

/// Cargo does not promise to build other packages' cdylibs before a test runs, so build them here,
/// with the same cargo, target folder and profile.
fn build_fixtures() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(workspace_root().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(profile_dir().parent().unwrap());
    match profile_dir().file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            command.arg("--release");
        }
        Some(other) => {
            command.args(["--profile", other]);
        }
        None => panic!("unexpected target folder {}", profile_dir().display()),
    }
    for (package, _) in FIXTURES.iter().chain([&DIST_FIXTURE]) {
        command.args(["-p", package]);
    }
    let status = command
        .stdin(Stdio::null())
        .status()
        .expect("cannot run cargo to build the fixture plugins");
    assert!(
        status.success(),
        "building the fixture plugins failed: {command:?}"
    );
}

/// What an olive-host run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The `error: ...` text olive-host printed last (all lines of it).
    pub fn error(&self) -> &str {
        match self.stderr.rfind("error: ") {
            Some(at) if self.stderr[..at].is_empty() || self.stderr[..at].ends_with('\n') => {
                self.stderr[at + "error: ".len()..].trim_end()
            }
            _ => panic!("no error in stderr:\n{}", self.stderr),
        }
    }

    /// Asserts the run failed with exit status 1 and `message`.
    pub fn assert_error(&self, message: &str) {
        assert_eq!(self.error(), message, "stderr:\n{}", self.stderr);
        assert_eq!(self.code, Some(1), "stderr:\n{}", self.stderr);
    }
}

/// A command running olive-host with the staged fixtures on `OLIVE_PLUGIN_PATH`.
pub fn olive_command(args: &[&str]) -> Command {
    let mut command = Command::new(host_exe());
    command
        .env("OLIVE_PLUGIN_PATH", plugin_dir())
        .env("NO_COLOR", "1")
        .args(args);
    command
}

/// Runs olive-host with the staged fixtures.
pub fn olive(args: &[&str]) -> Run {
    run(olive_command(args))
}

/// Runs olive-host with `OLIVE_PLUGIN_PATH` set to `path`.
pub fn olive_with_path(path: &std::ffi::OsStr, args: &[&str]) -> Run {
    let mut command = olive_command(args);
    command.env("OLIVE_PLUGIN_PATH", path);
    run(command)
}

pub fn run(mut command: Command) -> Run {
    let output = command
        .stdin(Stdio::null())
        .output()
        .expect("cannot run olive-host");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A tiny Hugging Face folder `<dir>/in` (config.json and one weights file).
pub fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("in");
    fs::create_dir_all(model.join("sub")).unwrap();
    fs::write(model.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    fs::write(model.join("sub/weights.bin"), [1u8, 2, 3]).unwrap();
    model
}

/// The names in `dir`, sorted (to check that nothing was left behind).
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub fn s(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}
