//! The host ↔ worker protocol: JSON lines. The host writes a [`Request`] then [`Control`] lines on
//! the worker's stdin; the worker writes [`Event`] lines on its stdout (the plugin's own stdout is
//! redirected to stderr, so only these lines travel there).

use std::io::{BufRead, Write};
use std::path::PathBuf;

use olive_pass_api::{LogLevel, Manifest, Model};
use serde::{Deserialize, Serialize};

/// What the worker is asked to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The plugin's manifest, which the loaded library must agree with.
    pub manifest: Manifest,
    /// Where the manifest was found.
    pub manifest_path: PathBuf,
    /// The library to load.
    pub library_path: PathBuf,
    /// The pass to run.
    pub pass: String,
    /// The input model.
    pub model: Model,
    /// The pass config, as JSON text.
    pub config: String,
    /// The folder the pass writes into.
    pub output_dir: PathBuf,
    /// The device to run on.
    pub device: String,
    /// How long the worker waits for a cancelled pass once the host is gone, in milliseconds.
    pub grace_ms: u64,
}

/// A message from the host after the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// Ask the pass to stop.
    Cancel,
}

/// Where in the worker a failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Reading the request.
    Request,
    /// Loading the library.
    Load,
    /// Checking the library against its manifest.
    Manifest,
    /// Running the pass.
    Pass,
}

/// A message from the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A log line from the pass.
    Log {
        /// Its level.
        level: LogLevel,
        /// The message.
        message: String,
    },
    /// Progress from the pass.
    Progress {
        /// Units done.
        done: u64,
        /// Units in all (0 when unknown).
        total: u64,
        /// What is being done.
        message: String,
    },
    /// The pass finished; the model it wrote.
    Done {
        /// The output model.
        model: Model,
    },
    /// The worker or the pass failed.
    Failed {
        /// Where.
        stage: Stage,
        /// The pass error kind (`olive_pass_api::ErrorKind::name`), or `error`.
        kind: String,
        /// The message.
        message: String,
    },
}

/// Writes `message` as one JSON line and flushes.
pub fn send<T: Serialize>(out: &mut impl Write, message: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

/// Reads one JSON line; `Ok(None)` at end of input.
pub fn receive<T: for<'de> Deserialize<'de>>(
    input: &mut impl BufRead,
) -> std::io::Result<Option<T>> {
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    serde_json::from_str(&line).map(Some).map_err(|err| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{err}: {}", line.trim_end()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_json_lines() {
        let mut out = Vec::new();
        send(
            &mut out,
            &Event::Log {
                level: LogLevel::Warn,
                message: "hi".into(),
            },
        )
        .unwrap();
        send(&mut out, &Control::Cancel).unwrap();
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "{\"type\":\"log\",\"level\":\"warn\",\"message\":\"hi\"}\n{\"type\":\"cancel\"}\n"
        );
        let mut input = out.as_slice();
        let event: Option<Event> = receive(&mut input).unwrap();
        assert_eq!(
            event,
            Some(Event::Log {
                level: LogLevel::Warn,
                message: "hi".into()
            })
        );
        assert_eq!(
            receive::<Control>(&mut input).unwrap(),
            Some(Control::Cancel)
        );
        assert_eq!(receive::<Control>(&mut input).unwrap(), None);
    }
}
