//! Deliberately broken plugins: a panic, a segfault, an abort, an exit, a pass that runs until
//! cancelled, one that ignores cancellation, a wrong api version, a missing root symbol, a stale
//! manifest. Each is a clear error naming the plugin (and pass), exit status 1, nothing half-written.

use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{
    doctored, entries, olive, olive_command, olive_with_path, plugin_dir, s, tiny_model,
};

/// Runs pass `pass` on a tiny model with `extra` arguments; returns the run and how long it took,
/// after checking that nothing but the input is left in the folder.
fn run_pass(pass: &str, extra: &[&str]) -> (crate::support::Run, Duration) {
    run_pass_with(None, pass, extra)
}

fn run_pass_with(
    plugin_path: Option<&Path>,
    pass: &str,
    extra: &[&str],
) -> (crate::support::Run, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = dir.path().join("out");
    let args = [
        &[
            "run-pass",
            "--pass-name",
            pass,
            "-m",
            s(&model),
            "--output_path",
            s(&out),
        ],
        extra,
    ]
    .concat();
    let started = Instant::now();
    let run = match plugin_path {
        Some(path) => olive_with_path(path.as_os_str(), &args),
        None => olive(&args),
    };
    let took = started.elapsed();
    assert_eq!(
        entries(dir.path()),
        ["in"],
        "a failed pass leaves nothing behind\n{}",
        run.stderr
    );
    (run, took)
}

#[test]
fn a_panic_is_an_error_with_its_location() {
    let (run, _) = run_pass("Panic", &[]);
    assert_eq!(run.code, Some(1));
    let error = run.error();
    assert!(
        error.starts_with("plugin `fixture-broken`, pass `Panic`: panicked at tests/plugins/fixture-broken/src/lib.rs:"),
        "{error}"
    );
    assert!(
        error.ends_with(": deliberate panic in a fixture"),
        "{error}"
    );
}

#[test]
fn a_segfault_is_an_error_naming_the_signal() {
    run_pass("Segfault", &[]).0.assert_error(
        "plugin `fixture-broken`, pass `Segfault`: the worker process was killed by signal 11 (SIGSEGV, segmentation fault) before the pass finished",
    );
}

#[test]
fn an_abort_is_an_error_naming_the_signal() {
    run_pass("Abort", &[]).0.assert_error(
        "plugin `fixture-broken`, pass `Abort`: the worker process was killed by signal 6 (SIGABRT, aborted) before the pass finished",
    );
}

#[test]
fn an_exit_is_an_error_quoting_the_last_output_and_stdout_does_not_corrupt_the_protocol() {
    run_pass("Exit", &[]).0.assert_error(
        "plugin `fixture-broken`, pass `Exit`: the worker process exited with status 3 before the pass finished; its last output:\nnoise on stdout",
    );
}

#[test]
fn a_pass_that_never_returns_is_cancelled_at_the_timeout() {
    let (run, took) = run_pass("Hang", &["--timeout", "0.5"]);
    run.assert_error("plugin `fixture-broken`, pass `Hang`: cancelled after the 0.5s timeout");
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

#[test]
fn a_pass_that_ignores_cancellation_is_killed_after_the_grace_period() {
    let (run, took) = run_pass(
        "IgnoreCancel",
        &["--timeout", "0.5", "--cancel_grace", "0.5"],
    );
    run.assert_error(
        "plugin `fixture-broken`, pass `IgnoreCancel`: cancelled after the 0.5s timeout but did not stop within 0.5s; the worker was killed",
    );
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

#[cfg(unix)]
#[test]
fn ctrl_c_cancels_the_pass() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = dir.path().join("out");
    let mut command = olive_command(&[
        "--log_level",
        "1",
        "run-pass",
        "--pass-name",
        "Hang",
        "-m",
        s(&model),
        "-o",
        s(&out),
    ]);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    // The pass logs this once it runs; then Ctrl-C reaches it, not an unstarted worker.
    while !seen.contains("waiting for cancellation") {
        assert_ne!(
            stderr.read_line(&mut seen).unwrap(),
            0,
            "olive-host ended early:\n{seen}"
        );
    }
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: signalling the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{rest}");
    assert!(
        rest.ends_with(
            "error: plugin `fixture-broken`, pass `Hang`: cancelled after an interrupt (Ctrl-C)\n"
        ),
        "{rest}"
    );
    assert_eq!(entries(dir.path()), ["in"]);
}

#[test]
fn a_manifest_for_another_api_version_is_refused_before_loading() {
    let (run, _) = run_pass("Nothing", &["--plugin", "fixture-wrong-api"]);
    run.assert_error(&format!(
        "plugin `fixture-wrong-api` ({}/fixture_wrong_api.olive-plugin.json) was built for plugin api 99.0, and this olive-host speaks 1.1",
        plugin_dir().display()
    ));
}

#[test]
fn a_library_for_another_api_version_is_refused_at_load() {
    let dir = doctored("fixture-wrong-api", "fixture_wrong_api", |m| {
        m["api_version"] = "1.0".into()
    });
    let (run, _) = run_pass_with(Some(dir.path()), "Nothing", &[]);
    run.assert_error(&format!(
        "plugin `fixture-wrong-api`: cannot load {}/{DLL_PREFIX}fixture_wrong_api{DLL_SUFFIX}: it was built for plugin api 99.0, and this olive-host speaks 1.1",
        dir.path().display()
    ));
}

#[test]
fn a_library_without_the_root_module_is_refused_at_load() {
    let (run, _) = run_pass("Nothing", &["--plugin", "fixture-no-symbol"]);
    run.assert_error(&format!(
        "plugin `fixture-no-symbol`: cannot load {}/{DLL_PREFIX}fixture_no_symbol{DLL_SUFFIX}: it is not an olive plugin: it does not export the plugin root module (symbol `_1as_0lib_1header_0root_bmodule_bloader`)",
        plugin_dir().display()
    ));
}

#[test]
fn a_library_that_disagrees_with_its_manifest_is_refused() {
    let dir = doctored("fixture-copy", "fixture_copy", |m| {
        m["passes"][0]["version"] = "9.9.9".into()
    });
    let (run, _) = run_pass_with(Some(dir.path()), "CopyModel", &[]);
    let dir = dir.path().display();
    run.assert_error(&format!(
        "plugin `fixture-copy`: the library {dir}/{DLL_PREFIX}fixture_copy{DLL_SUFFIX} does not match its manifest {dir}/fixture_copy.olive-plugin.json: \
         the manifest says pass `CopyModel` version \"9.9.9\", the library says \"1.0.0\" (regenerate the manifest with `olive-host plugins manifest`)"
    ));
}

#[test]
fn a_missing_library_is_named() {
    let dir = doctored("fixture-copy", "fixture_copy", |_| {});
    std::fs::remove_file(
        dir.path()
            .join(format!("{DLL_PREFIX}fixture_copy{DLL_SUFFIX}")),
    )
    .unwrap();
    let (run, _) = run_pass_with(Some(dir.path()), "CopyModel", &["--plugin", "fixture-copy"]);
    let dir = dir.path().display();
    run.assert_error(&format!(
        "plugin `fixture-copy` ({dir}/fixture_copy.olive-plugin.json): its library {dir}/{DLL_PREFIX}fixture_copy{DLL_SUFFIX} does not exist"
    ));
}
