//! The typed view of the host's [`PassContext`] that a pass receives.

use std::path::PathBuf;

use olive_pass_api::{LogLevel, PassContext};

use crate::Error;

/// The host's services for one pass run: output folder, device, log, progress, cancellation.
/// It can be shared with the pass's worker threads (`Sync`), but cannot outlive the run.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    raw: PassContext<'a>,
}

impl<'a> Context<'a> {
    /// Wraps the context the host passed to `run_pass`.
    pub fn new(raw: PassContext<'a>) -> Self {
        Context { raw }
    }

    /// The folder to write the output model into; it exists and is empty when the pass starts.
    pub fn output_dir(&self) -> PathBuf {
        PathBuf::from(self.raw.output_dir())
    }

    /// The device to run on (`cpu`, `gpu`, `npu`).
    pub fn device(&self) -> String {
        self.raw.device()
    }

    /// Logs `message` at `level`; the host routes it into its own log.
    pub fn log(&self, level: LogLevel, message: &str) {
        self.raw.log(level, message)
    }

    /// Logs at info level.
    pub fn info(&self, message: &str) {
        self.log(LogLevel::Info, message)
    }

    /// Logs at warning level.
    pub fn warn(&self, message: &str) {
        self.log(LogLevel::Warn, message)
    }

    /// Logs at debug level.
    pub fn debug(&self, message: &str) {
        self.log(LogLevel::Debug, message)
    }

    /// Reports `done` of `total` units of work (`total` 0 when unknown); shown as a progress bar.
    pub fn progress(&self, done: u64, total: u64, message: &str) {
        self.raw.progress(done, total, message)
    }

    /// Whether the host asked the pass to stop.
    pub fn is_cancelled(&self) -> bool {
        self.raw.is_cancelled()
    }

    /// `Err(Error::Cancelled)` once the host asked the pass to stop; call it between units of work.
    pub fn check_cancelled(&self) -> Result<(), Error> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}
