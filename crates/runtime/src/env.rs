//! The ONNX Runtime shared library, loaded once per process from ORT_DYLIB_PATH (the `ort` crate's
//! load-dynamic mode; scripts/install.sh points it at libonnxruntime from the onnxruntime wheel).

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::logging::LogLevel;

use crate::error::{Result, RuntimeError};

/// The variable naming the library.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// The library named by `value` (the content of ORT_DYLIB_PATH), checked to be a file.
pub fn dylib_path(value: Option<OsString>) -> Result<PathBuf> {
    let value = value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| RuntimeError::LibraryMissing {
            reason: format!("{DYLIB_ENV} is not set"),
        })?;
    let path = PathBuf::from(value);
    if !path.is_file() {
        return Err(RuntimeError::LibraryMissing {
            reason: format!("{DYLIB_ENV}={} is not a file", path.display()),
        });
    }
    Ok(path)
}

/// The process's ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<&'static Environment> {
    if let Some(environment) = ENVIRONMENT.get() {
        return Ok(environment);
    }
    let _guard = LOADING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(environment) = ENVIRONMENT.get() {
        return Ok(environment);
    }
    let path = dylib_path(std::env::var_os(DYLIB_ENV))?;
    let load_error = |reason: String| RuntimeError::LibraryLoad {
        path: path.clone(),
        reason,
    };
    let environment = ort::init_from(&path)
        .map_err(|e| load_error(e.to_string()))?
        .with_name("olive-rs")
        .build()
        .map_err(|e| load_error(e.to_string()))?;
    // ONNX Runtime's own messages (graph transformers, arena reservations, initializers that are
    // also inputs, as every LoRA weight is) are noise unless debugging.
    environment.set_log_level(if tracing::enabled!(tracing::Level::DEBUG) {
        LogLevel::Warning
    } else {
        LogLevel::Error
    });
    tracing::debug!("ONNX Runtime loaded from {}", path.display());
    Ok(ENVIRONMENT.get_or_init(|| environment))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_or_missing_library_says_to_run_the_set_up() {
        for value in [
            None,
            Some(OsString::new()),
            Some(OsString::from("/nonexistent/libonnxruntime.so")),
        ] {
            let err = dylib_path(value).expect_err("no library");
            let message = err.to_string();
            assert!(
                message.contains(DYLIB_ENV) && message.contains("scripts/install.sh"),
                "{message}"
            );
        }
    }
}
