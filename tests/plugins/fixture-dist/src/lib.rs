//! Test fixture for the host's group launcher (`finetune --num_gpus N`): a `LoRA` pass standing in for the lora
//! plugin's, which reads torchrun's variables (RANK, LOCAL_RANK, WORLD_SIZE, ...) from its own environment as a
//! worker of the group gets them. finetune fixes the pass config, so the test drives it through the environment
//! the workers inherit:
//! - `FIXTURE_DIST_REPORT`: a folder where each worker writes `rank-<RANK>.json` (`rank-single.json` without RANK)
//!   with the variables it saw, the first LD_LIBRARY_PATH entry and its output folder;
//! - `FIXTURE_DIST_FAIL_RANK`: the rank that fails, by `FIXTURE_DIST_FAIL_HOW` = `error` (a pass error, the
//!   default) or `exit` (the process exits with status 7), after `FIXTURE_DIST_FAIL_AFTER_MS` milliseconds; the
//!   other ranks then wait to be cancelled, or with `FIXTURE_DIST_OTHERS_EXIT` set exit at once with that status
//!   (as olive-dist's watch does when it sees a rank go).
//!
//! Every rank writes `adapter/adapter_config.json` naming itself, so a test can tell whose output was published.

use std::fs;
use std::time::{Duration, Instant};

use olive_dist::VARIABLES;
use olive_pass_sdk::{kinds, Context, Error, Model, Pass};
use serde_json::{json, Map, Value};

/// How long a rank waits to be cancelled after another failed.
const CANCEL_WAIT: Duration = Duration::from_secs(60);

/// Reports its rank layout, writes an adapter naming its rank, and fails on the rank the test asks.
pub struct LoRA;

impl Pass for LoRA {
    const NAME: &'static str = "LoRA";
    const VERSION: &'static str = "1.0.0";
    const DESCRIPTION: &'static str =
        "Reports the worker's rank layout and writes an adapter naming its rank (a test stand-in).";
    const ACCEPTS: &'static [&'static str] = &[kinds::HF];
    const PRODUCES: &'static [&'static str] = &[kinds::HF_ADAPTER];
    const DEVICES: &'static [&'static str] = &["cpu", "gpu"];
    /// finetune's LoRA config, taken whole and unread.
    type Config = Value;

    fn run(model: Model, _config: Value, ctx: &Context<'_>) -> Result<Model, Error> {
        let out = ctx.output_dir();
        let var = |name: &str| std::env::var(name).ok();
        let rank = var("RANK");
        let adapter = out.join("adapter");
        fs::create_dir_all(&adapter).map_err(|e| Error::io(&adapter, e))?;
        let config = adapter.join("adapter_config.json");
        fs::write(&config, json!({ "written_by_rank": rank }).to_string())
            .map_err(|e| Error::io(&config, e))?;
        if let Some(folder) = var("FIXTURE_DIST_REPORT") {
            let mut report: Map<String, Value> = VARIABLES
                .iter()
                .map(|name| (name.to_string(), var(name).into()))
                .collect();
            let library_path = var("LD_LIBRARY_PATH").unwrap_or_default();
            let first = library_path.split(':').next().unwrap_or_default();
            report.insert("LD_LIBRARY_PATH_first".into(), first.into());
            report.insert("output_dir".into(), out.display().to_string().into());
            let name = format!("rank-{}.json", rank.as_deref().unwrap_or("single"));
            let file = std::path::Path::new(&folder).join(name);
            fs::write(&file, Value::Object(report).to_string()).map_err(|e| Error::io(&file, e))?;
        }
        if let Some(failing) = var("FIXTURE_DIST_FAIL_RANK") {
            if rank.as_deref() == Some(failing.as_str()) {
                let delay = var("FIXTURE_DIST_FAIL_AFTER_MS").and_then(|ms| ms.parse().ok());
                std::thread::sleep(Duration::from_millis(delay.unwrap_or(0)));
                if var("FIXTURE_DIST_FAIL_HOW").as_deref() == Some("exit") {
                    eprintln!("rank {failing}: exiting with status 7 on purpose");
                    std::process::exit(7);
                }
                return Err(Error::Failed(format!(
                    "deliberate failure on rank {failing}"
                )));
            }
            if let Some(code) = var("FIXTURE_DIST_OTHERS_EXIT").and_then(|c| c.parse().ok()) {
                eprintln!("rank {failing} is gone; exiting with status {code}");
                std::process::exit(code);
            }
            let since = Instant::now();
            while since.elapsed() < CANCEL_WAIT {
                ctx.check_cancelled()?;
                std::thread::sleep(Duration::from_millis(10));
            }
            return Err(Error::Failed(format!(
                "rank {failing} failed but this rank was not cancelled within {CANCEL_WAIT:?}"
            )));
        }
        let mut output = Model::new(kinds::HF_ADAPTER, &model.path);
        output.adapter_paths.push(adapter);
        Ok(output)
    }
}

olive_pass_sdk::export_plugin! {
    name: "fixture-dist",
    version: "0.1.0",
    passes: [LoRA],
}
