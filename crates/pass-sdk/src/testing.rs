//! Test support: a host that runs a pass in-process, through the same boundary code (config
//! parsing, kind checks, panic catching, ABI types) as a loaded library, and records what it says.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use olive_pass_api::{
    ErrorKind, HostCallbacks, LogLevel, Model, ModelError, ModelRef, PassContext, PassError,
};

use crate::{Pass, PassEntry, Plugin};

/// One progress report: `done` of `total`, with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all (0 when unknown).
    pub total: u64,
    /// What is being done.
    pub message: String,
}

/// An in-process host for tests: an output folder, a device, a cancel flag, and a record of the
/// pass's log lines and progress.
#[derive(Debug)]
pub struct TestHost {
    output_dir: String,
    device: String,
    cancelled: AtomicBool,
    logs: Mutex<Vec<(LogLevel, String)>>,
    progress: Mutex<Vec<Progress>>,
}

impl TestHost {
    /// A host whose passes write into `output_dir`, on `cpu`.
    pub fn new(output_dir: impl AsRef<Path>) -> Self {
        TestHost {
            output_dir: output_dir.as_ref().to_string_lossy().into_owned(),
            device: "cpu".to_owned(),
            cancelled: AtomicBool::new(false),
            logs: Mutex::default(),
            progress: Mutex::default(),
        }
    }

    /// The same host on another device.
    pub fn with_device(mut self, device: &str) -> Self {
        self.device = device.to_owned();
        self
    }

    /// Asks running and later passes to stop.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// The log lines so far.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.logs
            .lock()
            .map(|logs| logs.clone())
            .unwrap_or_default()
    }

    /// The progress reports so far.
    pub fn progress(&self) -> Vec<Progress> {
        self.progress
            .lock()
            .map(|progress| progress.clone())
            .unwrap_or_default()
    }

    /// Runs pass `P` on `model` with `config_json`.
    pub fn run<P: Pass>(&self, model: &Model, config_json: &str) -> Result<Model, PassError> {
        self.run_with(
            |model, ctx| PassEntry::of::<P>().run(model, config_json, ctx),
            model,
        )
    }

    /// Runs pass `pass` of `plugin` (e.g. a plugin crate's `OLIVE_PLUGIN`) on `model`.
    pub fn run_plugin(
        &self,
        plugin: &Plugin,
        pass: &str,
        model: &Model,
        config_json: &str,
    ) -> Result<Model, PassError> {
        self.run_with(
            |model, ctx| plugin.run_pass(pass, model, config_json, ctx),
            model,
        )
    }

    fn run_with(
        &self,
        run: impl FnOnce(&ModelRef, PassContext<'_>) -> Result<ModelRef, PassError>,
        model: &Model,
    ) -> Result<Model, PassError> {
        let invalid = |err: ModelError| PassError::new(ErrorKind::FAILED, err.to_string());
        let output = run(&model.to_ref().map_err(invalid)?, PassContext::new(self))?;
        Model::from_ref(&output).map_err(invalid)
    }
}

impl HostCallbacks for TestHost {
    fn output_dir(&self) -> &str {
        &self.output_dir
    }

    fn device(&self) -> &str {
        &self.device
    }

    fn log(&self, level: LogLevel, message: &str) {
        if let Ok(mut logs) = self.logs.lock() {
            logs.push((level, message.to_owned()));
        }
    }

    fn progress(&self, done: u64, total: u64, message: &str) {
        if let Ok(mut progress) = self.progress.lock() {
            progress.push(Progress {
                done,
                total,
                message: message.to_owned(),
            });
        }
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}
