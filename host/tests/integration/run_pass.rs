//! `olive-host run-pass` with a good plugin: the output appears, in Olive's layout (`model/` and
//! `model_config.json`), only on success; `--list-passes` lists the plugins' passes; `--dry_run` and
//! `--save_config_file` write a workflow that `olive-host run` runs to the same output; bad input is a
//! clear error naming the file and what is wrong, with nothing written.

use std::fs;
use std::path::Path;

use crate::support::{entries, host_exe, olive, olive_command, plugin_dir, run, s, tiny_model};

fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn copies_a_model_and_prints_the_output_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = dir.path().join("out");
    let run = olive(&[
        "run-pass",
        "--pass-name",
        "CopyModel",
        "-m",
        s(&model),
        "--output_path",
        s(&out),
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let printed: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        printed,
        serde_json::json!({"kind": "hf", "path": s(&out.join("model")), "metadata": {"copied_files": 2}})
    );
    assert_eq!(
        fs::read(out.join("model/sub/weights.bin")).unwrap(),
        [1, 2, 3]
    );
    assert_eq!(entries(&out), ["model", "model_config.json"]);
    assert_eq!(
        json_file(&out.join("model_config.json")),
        serde_json::json!({"type": "hfmodel", "config": {
            "model_path": s(&out.join("model")), "model_attributes": {"copied_files": 2}}})
    );
    assert_eq!(
        entries(dir.path()),
        ["in", "out"],
        "no staging folder is left behind"
    );
}

#[test]
fn list_passes_names_each_pass_with_its_plugin_and_needs_no_model() {
    let run = olive(&["run-pass", "--list-passes"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "Available passes:");
    let copy = lines.iter().find(|l| l.contains("CopyModel")).unwrap();
    assert!(
        copy.contains("fixture-copy 0.1.0") && copy.ends_with("cpu"),
        "{copy}"
    );
    assert!(lines
        .iter()
        .any(|l| l.contains("Panic") && l.contains("fixture-broken")));
    let passes = lines.iter().filter(|l| l.contains(". ")).count();
    assert!(
        run.stdout
            .contains(&format!("Total: {passes} passes available")),
        "{}",
        run.stdout
    );
}

#[test]
fn dry_run_writes_the_workflow_that_run_reproduces() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let (dry, direct, replay) = (
        dir.path().join("dry"),
        dir.path().join("direct"),
        dir.path().join("replay"),
    );
    let pass = [
        "run-pass",
        "--pass-name",
        "CopyModel",
        "-m",
        s(&model),
        "--pass-config",
        r#"{"exclude": ["config.json"]}"#,
    ];
    let run_dry = olive(&[&pass[..], &["-o", s(&dry), "--dry_run"]].concat());
    assert_eq!(run_dry.code, Some(0), "{}", run_dry.stderr);
    assert!(
        run_dry.stdout.contains("Dry run mode enabled"),
        "{}",
        run_dry.stdout
    );
    assert_eq!(entries(&dry), ["config.json"], "a dry run runs nothing");
    let workflow = json_file(&dry.join("config.json"));
    assert_eq!(
        workflow["passes"],
        serde_json::json!({"copymodel": {"type": "CopyModel", "exclude": ["config.json"]}})
    );
    assert_eq!(workflow["input_model"]["model_path"], s(&model));

    let run_direct = olive(&[&pass[..], &["-o", s(&direct), "--save_config_file"]].concat());
    assert_eq!(run_direct.code, Some(0), "{}", run_direct.stderr);
    assert_eq!(
        entries(&direct),
        ["config.json", "model", "model_config.json"]
    );
    assert_eq!(
        json_file(&direct.join("config.json"))["passes"],
        workflow["passes"]
    );

    // From another folder: the workflow names its paths absolutely; its cache goes there too.
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let mut command = olive_command(&[
        "run",
        "--config",
        s(&dry.join("config.json")),
        "-o",
        s(&replay),
    ]);
    command.current_dir(&elsewhere);
    let run_replay = run(command);
    assert_eq!(run_replay.code, Some(0), "{}", run_replay.stderr);
    assert_eq!(entries(&replay.join("model")), ["sub"]);
    assert_eq!(
        fs::read(replay.join("model/sub/weights.bin")).unwrap(),
        fs::read(direct.join("model/sub/weights.bin")).unwrap()
    );
    assert_eq!(entries(&direct.join("model")), ["sub"]);
    let config = |out: &Path| json_file(&out.join("model_config.json"))["config"].clone();
    assert_eq!(
        config(&replay)["model_attributes"],
        config(&direct)["model_attributes"]
    );
}

#[test]
fn the_pass_logs_and_progress_reach_the_host_log() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = dir.path().join("out");
    let run = olive(&[
        "--log_level",
        "0",
        "run-pass",
        "--pass",
        "CopyModel",
        "-m",
        s(&model),
        "-o",
        s(&out),
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("plugin `fixture-copy`, pass `CopyModel`: copied 2 files\n"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("CopyModel: 2/2 sub/weights.bin\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_onnx_file_is_an_onnx_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    fs::write(&model, b"onnx").unwrap();
    let out = dir.path().join("out");
    let run = olive(&[
        "run-pass",
        "--pass-name",
        "CopyModel",
        "-m",
        s(&model),
        "-o",
        s(&out),
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let printed: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(printed["kind"], "onnx");
    assert_eq!(printed["path"], s(&out.join("model/model.onnx")));
    assert_eq!(fs::read(out.join("model/model.onnx")).unwrap(), b"onnx");
    let config = json_file(&out.join("model_config.json"));
    assert_eq!(config["type"], "onnxmodel");
    assert_eq!(
        config["config"]["model_path"],
        s(&out.join("model/model.onnx"))
    );
}

#[test]
fn the_config_may_be_a_file_and_an_existing_output_is_replaced_with_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("stale"), "old").unwrap();
    let config = dir.path().join("copy.json");
    fs::write(&config, r#"{"exclude": ["weights.bin"]}"#).unwrap();
    let args = [
        "run-pass",
        "--plugin",
        "fixture-copy",
        "--pass-name",
        "CopyModel",
        "-m",
        s(&model),
        "-o",
        s(&out),
        "--config",
        s(&config),
    ];
    olive(&args).assert_error(&format!(
        "output path {} exists and is not empty; give --overwrite to replace it",
        out.display()
    ));
    assert_eq!(entries(&out), ["stale"]);
    let run = olive(&[&args[..], &["--overwrite"]].concat());
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(entries(&out), ["model", "model_config.json"]);
    assert_eq!(entries(&out.join("model")), ["config.json"]);
    assert_eq!(entries(dir.path()), ["copy.json", "in", "out"]);
}

#[test]
fn a_failed_pass_leaves_an_existing_output_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("keep"), "old").unwrap();
    let run = olive(&[
        "run-pass",
        "--pass-name",
        "Panic",
        "-m",
        s(&model),
        "-o",
        s(&out),
        "--overwrite",
    ]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("pass `Panic`: panicked"),
        "{}",
        run.stderr
    );
    assert_eq!(entries(&out), ["keep"]);
    assert_eq!(entries(dir.path()), ["in", "out"]);
    // An output folder whose parent did not exist leaves no parent either.
    let nested = dir.path().join("new/out");
    let run = olive(&[
        "run-pass",
        "--pass-name",
        "Panic",
        "-m",
        s(&model),
        "-o",
        s(&nested),
    ]);
    assert_eq!(run.code, Some(1));
    assert_eq!(entries(dir.path()), ["in", "out"]);
}

/// Runs CopyModel with `extra` arguments and checks it fails with `message`, writing nothing.
fn refused(extra: &[&str], message: impl FnOnce(&std::path::Path) -> String) {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = dir.path().join("out");
    let mut args = vec!["run-pass", "-m", s(&model), "--output_path", s(&out)];
    if !extra.contains(&"--pass-name") {
        args.extend(["--pass-name", "CopyModel"]);
    }
    let extra: Vec<String> = extra
        .iter()
        .map(|a| a.replace("{dir}", s(dir.path())))
        .collect();
    args.extend(extra.iter().map(String::as_str));
    olive(&args).assert_error(&message(dir.path()));
    assert_eq!(entries(dir.path()), ["in"]);
}

#[test]
fn an_unknown_config_field_is_named() {
    refused(
        &["--pass-config", r#"{"exclude": [], "exlude": 1}"#],
        |_| {
            "plugin `fixture-copy`, pass `CopyModel`: invalid config: unknown field `exlude`, expected `exclude` at line 1 column 24"
            .to_owned()
        },
    );
}

#[test]
fn a_config_file_that_is_missing_or_not_json_is_named() {
    refused(&["--config", "{dir}/missing.json"], |dir| {
        format!(
            "cannot read config file {}/missing.json: No such file or directory (os error 2)",
            dir.display()
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.json");
    fs::write(&config, "{\n  \"exclude\": [,]\n}").unwrap();
    refused(&["--config", s(&config)], |_| {
        format!(
            "config file {} is not valid JSON: expected value at line 2 column 15",
            config.display()
        )
    });
    refused(&["--config", "[1]"], |_| {
        "cannot read config file [1]: No such file or directory (os error 2)".to_owned()
    });
    fs::write(&config, "[1]").unwrap();
    refused(&["--config", s(&config)], |_| {
        format!(
            "config file {} must be a JSON object, not [1]",
            config.display()
        )
    });
}

#[test]
fn a_missing_or_unrecognised_model_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let missing = dir.path().join("nope");
    olive(&[
        "run-pass",
        "--pass-name",
        "CopyModel",
        "-m",
        s(&missing),
        "-o",
        s(&out),
    ])
    .assert_error(&format!("model path {} does not exist", missing.display()));
    olive(&["run-pass", "--pass-name", "CopyModel", "-m", s(dir.path()), "-o", s(&out)]).assert_error(&format!(
        "cannot tell what kind of model {} is: expected a Hugging Face folder (with config.json) or an ONNX model (.onnx); give --model_kind",
        dir.path().display()
    ));
    assert_eq!(entries(dir.path()), Vec::<String>::new());
}

#[test]
fn unknown_plugins_and_passes_are_named_with_what_was_found_where() {
    let host_dir = host_exe().parent().unwrap();
    let found = format!(
        "plugins found: fixture-broken, fixture-copy, fixture-no-symbol (searched {}, {}, {}/plugins; add folders with OLIVE_PLUGIN_PATH)",
        plugin_dir().display(),
        host_dir.display(),
        host_dir.display()
    );
    refused(&["--plugin", "nope"], |_| {
        format!("no plugin named `nope`; {found}")
    });
    refused(&["--pass-name", "Nope"], |_| {
        format!("no plugin has a pass `Nope`; {found}")
    });
}

#[test]
fn a_pass_refuses_kinds_and_devices_it_does_not_serve() {
    refused(&["--pass-name", "Panic", "--model_kind", "onnx"], |dir| {
        format!(
            "pass `Panic` of plugin `fixture-broken` accepts models of kind hf; {}/in is `onnx`",
            dir.display()
        )
    });
    refused(&["--device", "npu"], |_| {
        "pass `CopyModel` of plugin `fixture-copy` runs on cpu, not on `npu`".to_owned()
    });
    refused(
        &["--plugin", "fixture-copy", "--pass-name", "Panic"],
        |_| "plugin `fixture-copy` has no pass `Panic`; it has: CopyModel".to_owned(),
    );
}

#[test]
fn an_adapter_makes_an_hf_adapter_model() {
    refused(&["--adapter_path", "{dir}/in"], |dir| {
        format!(
            "adapter path {}/in is not a PEFT adapter folder (no adapter_config.json)",
            dir.display()
        )
    });
    let adapter = tempfile::tempdir().unwrap();
    fs::write(adapter.path().join("adapter_config.json"), "{}").unwrap();
    refused(&["--adapter_path", s(adapter.path())], |dir| {
        format!(
            "pass `CopyModel` of plugin `fixture-copy` accepts models of kind hf, onnx; {}/in is `hf+adapter`",
            dir.display()
        )
    });
}
