//! The sdk's boundary code, run in-process through `TestHost`: configs, kinds, panics, cancellation.

use olive_pass_sdk::testing::{Progress, TestHost};
use olive_pass_sdk::{kinds, Context, Error, ErrorKind, LogLevel, Model, Pass};
use schemars::JsonSchema;
use serde::Deserialize;

/// The config of `Count`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CountConfig {
    /// How many steps to take.
    steps: u64,
    /// Panic at this step.
    #[serde(default)]
    panic_at: Option<u64>,
}

struct Count;

impl Pass for Count {
    const NAME: &'static str = "Count";
    const VERSION: &'static str = "1.2.3";
    const DESCRIPTION: &'static str = "Counts steps.";
    const ACCEPTS: &'static [&'static str] = &[kinds::HF];
    const PRODUCES: &'static [&'static str] = &[kinds::ONNX];
    const DEVICES: &'static [&'static str] = &["cpu", "gpu"];
    type Config = CountConfig;

    fn run(_model: Model, config: CountConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        for step in 1..=config.steps {
            ctx.check_cancelled()?;
            if config.panic_at == Some(step) {
                panic!("step {step} is cursed");
            }
            ctx.progress(step, config.steps, "counting");
        }
        ctx.info(&format!("counted on {}", ctx.device()));
        Ok(Model::new(kinds::ONNX, ctx.output_dir().join("model.onnx")))
    }
}

olive_pass_sdk::export_plugin! {
    name: "counter",
    version: "0.3.0",
    passes: [Count],
}

fn hf() -> Model {
    Model::new(kinds::HF, "/models/tiny")
}

#[test]
fn runs_a_pass_and_records_logs_and_progress() {
    let host = TestHost::new("/out").with_device("gpu");
    let output = host.run::<Count>(&hf(), r#"{"steps": 2}"#).unwrap();
    assert_eq!(output, Model::new(kinds::ONNX, "/out/model.onnx"));
    assert_eq!(host.logs(), [(LogLevel::Info, "counted on gpu".to_owned())]);
    let counting = |done| Progress {
        done,
        total: 2,
        message: "counting".into(),
    };
    assert_eq!(host.progress(), [counting(1), counting(2)]);
}

#[test]
fn unknown_config_fields_are_an_invalid_config_error() {
    let err = TestHost::new("/out")
        .run::<Count>(&hf(), r#"{"steps": 1, "stpes": 2}"#)
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::INVALID_CONFIG);
    assert_eq!(
        err.message.as_str(),
        "invalid config: unknown field `stpes`, expected `steps` or `panic_at` at line 1 column 20"
    );
}

#[test]
fn models_of_other_kinds_are_refused() {
    let err = TestHost::new("/out")
        .run::<Count>(&Model::new(kinds::ONNX, "/m.onnx"), r#"{"steps": 1}"#)
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::UNSUPPORTED_MODEL);
    assert_eq!(
        err.message.as_str(),
        "accepts models of kind hf, got `onnx`"
    );
}

#[test]
fn a_panic_becomes_an_error_with_its_location() {
    let err = TestHost::new("/out")
        .run::<Count>(&hf(), r#"{"steps": 3, "panic_at": 2}"#)
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::PANICKED);
    let message = err.message.as_str();
    assert!(
        message.starts_with("panicked at crates/pass-sdk/tests/sdk.rs:"),
        "{message}"
    );
    assert!(message.ends_with(": step 2 is cursed"), "{message}");
}

#[test]
fn a_cancelled_host_stops_the_pass() {
    let host = TestHost::new("/out");
    host.cancel();
    let err = host.run::<Count>(&hf(), r#"{"steps": 3}"#).unwrap_err();
    assert_eq!(
        (err.kind, err.message.as_str()),
        (ErrorKind::CANCELLED, "cancelled")
    );
    assert!(host.progress().is_empty());
}

#[test]
fn the_exported_plugin_describes_itself() {
    let manifest = OLIVE_PLUGIN.manifest("counter").unwrap();
    assert_eq!(
        (manifest.name.as_str(), manifest.version.as_str()),
        ("counter", "0.3.0")
    );
    let pass = manifest.pass("Count").unwrap();
    assert_eq!(
        (pass.version.as_str(), pass.description.as_str()),
        ("1.2.3", "Counts steps.")
    );
    assert_eq!(pass.devices, ["cpu", "gpu"]);
    let steps = &pass.config_schema["properties"]["steps"];
    assert_eq!(steps["description"], "How many steps to take.");
    assert_eq!(pass.config_schema["required"], serde_json::json!(["steps"]));
}

#[test]
fn the_plugin_names_its_passes_when_asked_for_another() {
    let err = TestHost::new("/out")
        .run_plugin(&OLIVE_PLUGIN, "Nope", &hf(), "{}")
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::UNKNOWN_PASS);
    assert_eq!(
        err.message.as_str(),
        "no pass named `Nope`; this plugin has: Count"
    );
}
