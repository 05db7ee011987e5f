//! `finetune --num_gpus N` as a group of workers in torchrun's rank layout, on a machine without GPUs: the
//! fixture-dist plugin's `LoRA` pass stands in for the lora plugin's and reports the variables each worker saw
//! (`OLIVE_FAKE_GPU_COUNT` stands in for the GPUs, `OLIVE_NCCL_LIBRARY` for NCCL). Each rank gets its own
//! RANK/LOCAL_RANK/WORLD_SIZE; only rank 0's output is published and the other ranks' scratch folders are removed;
//! one rank failing stops the others promptly with an error naming it; a single process gets none of the variables.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{dist_plugin_dir, entries, olive_command, run, s, tiny_model, Run};

/// A test folder: a tiny model, a data file, a fake NCCL library, and folders for the workers' reports and
/// scratch (TMPDIR).
struct Setup {
    dir: tempfile::TempDir,
    model: PathBuf,
    out: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_model(dir.path());
        fs::write(dir.path().join("d.jsonl"), "{\"text\": \"hi\"}\n").unwrap();
        fs::create_dir(dir.path().join("nccl")).unwrap();
        fs::write(dir.path().join("nccl/libnccl.so.2"), "not a library").unwrap();
        for folder in ["reports", "tmp"] {
            fs::create_dir(dir.path().join(folder)).unwrap();
        }
        let out = dir.path().join("out");
        Setup { dir, model, out }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `olive-host finetune` on the tiny model with `args`, and the fixture's environment plus `env`.
    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let data = self.path("d.jsonl");
        let base = [
            "finetune",
            "-m",
            s(&self.model),
            "--data_name",
            "json",
            "--data_files",
            s(&data),
            "-o",
            s(&self.out),
        ];
        let mut command = olive_command(&[&base[..], args].concat());
        command
            .env("OLIVE_PLUGIN_PATH", dist_plugin_dir())
            .env("OLIVE_FAKE_GPU_COUNT", "4")
            .env("OLIVE_NCCL_LIBRARY", self.path("nccl/libnccl.so.2"))
            .env("FIXTURE_DIST_REPORT", self.path("reports"))
            .env("TMPDIR", self.path("tmp"))
            .env("XDG_CACHE_HOME", self.path("cache"))
            .envs(env.iter().copied());
        for name in [
            "FIXTURE_DIST_FAIL_RANK",
            "FIXTURE_DIST_FAIL_HOW",
            "FIXTURE_DIST_FAIL_AFTER_MS",
            "FIXTURE_DIST_OTHERS_EXIT",
        ] {
            if !env.iter().any(|(n, _)| *n == name) {
                command.env_remove(name);
            }
        }
        command
    }

    fn finetune(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        run(self.command(args, env))
    }

    /// The reports the workers wrote, by file stem (`rank-0`, `rank-single`).
    fn reports(&self) -> BTreeMap<String, Value> {
        fs::read_dir(self.path("reports"))
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
                (
                    stem,
                    serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap(),
                )
            })
            .collect()
    }

    /// Asserts that no worker's output folder is left, nor any scratch folder.
    fn assert_no_leftovers(&self, reports: &BTreeMap<String, Value>) {
        for report in reports.values() {
            let folder = Path::new(report["output_dir"].as_str().unwrap());
            assert!(!folder.exists(), "{} was left behind", folder.display());
        }
        let scratch: Vec<String> = entries(&self.path("tmp"))
            .into_iter()
            .filter(|name| name.starts_with("olive-rank"))
            .collect();
        assert!(scratch.is_empty(), "{scratch:?}");
    }
}

/// The variables a worker of rank `rank` of `world` (with `local` per host) saw, but MASTER_PORT.
fn layout(report: &Value) -> [&str; 5] {
    [
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
    ]
    .map(|name| report[name].as_str().unwrap_or("unset"))
}

#[test]
fn each_rank_sees_its_layout_and_only_rank_0_output_is_published() {
    let setup = Setup::new();
    let run = setup.finetune(&["--device", "gpu", "--num_gpus", "3"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let reports = setup.reports();
    assert_eq!(
        reports.keys().collect::<Vec<_>>(),
        ["rank-0", "rank-1", "rank-2"]
    );
    for (rank, report) in reports.values().enumerate() {
        let rank = rank.to_string();
        assert_eq!(layout(report), [&rank, &rank, "3", "3", "127.0.0.1"]);
        assert_eq!(report["MASTER_PORT"], reports["rank-0"]["MASTER_PORT"]);
        let nccl = Path::new(report["LD_LIBRARY_PATH_first"].as_str().unwrap());
        assert!(nccl.join("libnccl.so").exists(), "{report}");
    }
    let port: u16 = reports["rank-0"]["MASTER_PORT"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(port, 0);
    let adapter: Value = serde_json::from_str(
        &fs::read_to_string(setup.out.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(adapter["written_by_rank"], "0");
    assert_eq!(entries(&setup.out), ["adapter", "model"]);
    assert!(setup.out.join("model/config.json").is_file());
    setup.assert_no_leftovers(&reports);
    assert_eq!(
        entries(setup.dir.path()),
        ["cache", "d.jsonl", "in", "nccl", "out", "reports", "tmp"]
    );
}

#[test]
fn a_failing_rank_stops_the_others_and_is_named() {
    let setup = Setup::new();
    // Made first: the first command of a test run builds the fixture plugins.
    let command = setup.command(
        &["--device", "gpu", "--num_gpus", "3"],
        &[("FIXTURE_DIST_FAIL_RANK", "1")],
    );
    let started = Instant::now();
    let run = run(command);
    let took = started.elapsed();
    run.assert_error(
        "plugin `fixture-dist`, pass `LoRA`, rank 1 of 3: deliberate failure on rank 1",
    );
    assert!(
        took < Duration::from_secs(15),
        "the other ranks waited to be cancelled; took {took:?}"
    );
    assert!(
        run.stderr
            .contains("rank 1 failed; stopping the other ranks"),
        "{}",
        run.stderr
    );
    let reports = setup.reports();
    assert_eq!(reports.len(), 3, "every rank started");
    setup.assert_no_leftovers(&reports);
    assert!(!setup.out.exists(), "a failed run leaves no output folder");
}

#[test]
fn a_rank_that_exits_is_named_with_its_status_and_output() {
    let setup = Setup::new();
    let run = setup.finetune(
        &["--device", "gpu", "--num_gpus", "3"],
        &[
            ("FIXTURE_DIST_FAIL_RANK", "2"),
            ("FIXTURE_DIST_FAIL_HOW", "exit"),
        ],
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let error = run.error();
    assert!(
        error.starts_with(
            "plugin `fixture-dist`, pass `LoRA`, rank 2 of 3: the worker process exited with status 7 before \
             the pass finished; its last output:"
        ),
        "{error}"
    );
    assert!(
        error.contains("rank 2: exiting with status 7 on purpose"),
        "{error}"
    );
    setup.assert_no_leftovers(&setup.reports());
    assert!(!setup.out.exists());
}

#[test]
fn the_rank_that_failed_is_named_rather_than_those_that_saw_it_go() {
    let setup = Setup::new();
    // Ranks 0 and 2 exit as olive-dist's watch makes them when a peer goes, before rank 1's own error arrives.
    let peer_lost = olive_dist::EXIT_PEER_LOST.to_string();
    let run = setup.finetune(
        &["--device", "gpu", "--num_gpus", "3"],
        &[
            ("FIXTURE_DIST_FAIL_RANK", "1"),
            ("FIXTURE_DIST_FAIL_AFTER_MS", "300"),
            ("FIXTURE_DIST_OTHERS_EXIT", &peer_lost),
        ],
    );
    run.assert_error(
        "plugin `fixture-dist`, pass `LoRA`, rank 1 of 3: deliberate failure on rank 1",
    );
    setup.assert_no_leftovers(&setup.reports());
    assert!(!setup.out.exists());
}

#[test]
fn a_group_without_nccl_starts_no_worker() {
    let setup = Setup::new();
    let missing = setup.path("nccl/missing.so.2");
    let mut command = setup.command(&["--device", "gpu", "--num_gpus", "2"], &[]);
    command.env("OLIVE_NCCL_LIBRARY", &missing);
    run(command).assert_error(&format!(
        "a group of workers talks through NCCL, which was not found: OLIVE_NCCL_LIBRARY={:?}: expected the path \
         of an existing libnccl.so.2 file",
        s(&missing)
    ));
    assert!(setup.reports().is_empty() && !setup.out.exists());
}

#[test]
fn the_timeout_cancels_every_rank() {
    let setup = Setup::new();
    // Rank 9 does not exist: every rank waits to be cancelled.
    let run = setup.finetune(
        &["--device", "gpu", "--num_gpus", "2", "--timeout", "0.5"],
        &[("FIXTURE_DIST_FAIL_RANK", "9")],
    );
    run.assert_error(
        "plugin `fixture-dist`, pass `LoRA`, rank 0 of 2: cancelled after the 0.5s timeout",
    );
    setup.assert_no_leftovers(&setup.reports());
    assert!(!setup.out.exists());
}

#[cfg(unix)]
#[test]
fn ctrl_c_cancels_every_rank() {
    let setup = Setup::new();
    // Rank 9 does not exist: every rank waits to be cancelled.
    let mut command = setup.command(
        &["--device", "gpu", "--num_gpus", "2"],
        &[("FIXTURE_DIST_FAIL_RANK", "9")],
    );
    let child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Both ranks report once they run; then Ctrl-C reaches running passes.
    let started = Instant::now();
    while entries(&setup.path("reports")).len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the ranks did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: signalling the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.ends_with(
            "error: plugin `fixture-dist`, pass `LoRA`, rank 0 of 2: cancelled after an interrupt (Ctrl-C)\n"
        ),
        "{stderr}"
    );
    setup.assert_no_leftovers(&setup.reports());
    assert!(!setup.out.exists());
}

#[test]
fn a_host_without_rank_0_writes_no_output() {
    let setup = Setup::new();
    let run = setup.finetune(
        &[
            "--device",
            "gpu",
            "--num_gpus",
            "2",
            "--nnodes",
            "2",
            "--node_rank",
            "1",
            "--master_addr",
            "node0.example",
            "--master_port",
            "29511",
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stdout.trim(),
        "ranks 2-3 (node 1 of 2): done; the adapter is written by node 0"
    );
    let reports = setup.reports();
    assert_eq!(reports.keys().collect::<Vec<_>>(), ["rank-2", "rank-3"]);
    assert_eq!(
        layout(&reports["rank-2"]),
        ["2", "0", "4", "2", "node0.example"]
    );
    assert_eq!(
        layout(&reports["rank-3"]),
        ["3", "1", "4", "2", "node0.example"]
    );
    assert_eq!(reports["rank-3"]["MASTER_PORT"], "29511");
    setup.assert_no_leftovers(&reports);
    assert!(!setup.out.exists());
}

#[test]
fn a_single_process_gets_none_of_the_variables() {
    let setup = Setup::new();
    let stray = [
        ("RANK", "2"),
        ("LOCAL_RANK", "0"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "10.1.1.1"),
        ("MASTER_PORT", "29500"),
    ];
    let run = setup.finetune(&[], &stray);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let reports = setup.reports();
    assert_eq!(reports.keys().collect::<Vec<_>>(), ["rank-single"]);
    assert_eq!(layout(&reports["rank-single"]), ["unset"; 5]);
    assert_eq!(reports["rank-single"]["MASTER_PORT"], Value::Null);
    assert!(setup.out.join("adapter/adapter_config.json").is_file());
}

#[test]
fn more_gpus_than_the_host_has_is_a_clear_error() {
    let setup = Setup::new();
    let run = setup.finetune(&["--device", "gpu", "--num_gpus", "5"], &[]);
    run.assert_error("--num_gpus 5: this host has 4 CUDA GPU(s)");
    assert!(setup.reports().is_empty() && !setup.out.exists());
}
