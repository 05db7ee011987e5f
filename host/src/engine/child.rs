//! The worker process (`olive-host worker`): reads one request, loads the plugin, runs the pass,
//! and reports log, progress and the result as protocol events. A crash here ends only this process.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use olive_pass_api::{HostCallbacks, LogLevel, Model, PassContext, RStr};

use super::protocol::{self, Control, Event, Request, Stage};
use crate::plugins::load;

/// Progress events closer together than this are dropped (the last one of a run always goes).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(50);

type Channel = Arc<Mutex<Box<dyn Write + Send>>>;

/// Serves one request; an error when the pass did not succeed (the host was told why).
pub fn serve() -> anyhow::Result<()> {
    let out = protocol_channel().context("cannot set up the worker's protocol channel")?;
    let channel: Channel = Arc::new(Mutex::new(out));
    let event = run(&channel);
    emit(&channel, &event);
    match event {
        Event::Failed { message, .. } => bail!("{message}"),
        _ => Ok(()),
    }
}

fn run(channel: &Channel) -> Event {
    let failed = |stage, kind: &str, message: String| Event::Failed {
        stage,
        kind: kind.to_owned(),
        message,
    };
    let request: Request = match protocol::receive(&mut io::stdin().lock()) {
        Ok(Some(request)) => request,
        Ok(None) => return failed(Stage::Request, "error", "no request on stdin".into()),
        Err(err) => {
            return failed(
                Stage::Request,
                "error",
                format!("unreadable request: {err}"),
            )
        }
    };
    let cancelled = Arc::new(AtomicBool::new(false));
    watch_control(
        cancelled.clone(),
        request.output_dir.clone(),
        Duration::from_millis(request.grace_ms),
    );

    let loaded = match load::load(&request.library_path) {
        Ok(loaded) => loaded,
        Err(err) => return failed(Stage::Load, "error", format!("{err:#}")),
    };
    if let Err(err) = load::check_agreement(
        &loaded,
        &request.manifest,
        &request.manifest_path,
        &request.library_path,
    ) {
        return failed(Stage::Manifest, "error", format!("{err:#}"));
    }
    let model = match request.model.to_ref() {
        Ok(model) => model,
        Err(err) => return failed(Stage::Request, "error", err.to_string()),
    };
    let host = WorkerHost {
        output_dir: request.output_dir.to_string_lossy().into_owned(),
        device: request.device.clone(),
        cancelled,
        channel: channel.clone(),
        last_progress: Mutex::new(None),
    };
    let result = (loaded.module.run_pass())(
        RStr::from(request.pass.as_str()),
        model,
        RStr::from(request.config.as_str()),
        PassContext::new(&host),
    );
    match result.into_result() {
        Ok(output) => match Model::from_ref(&output) {
            Ok(model) => Event::Done { model },
            Err(err) => failed(
                Stage::Pass,
                "error",
                format!("the pass returned an invalid model: {err}"),
            ),
        },
        Err(err) => failed(Stage::Pass, err.kind.name(), err.message.into_string()),
    }
}

/// Sets `cancelled` on a cancel line. If the host goes away (stdin closes), cancels, waits `grace`
/// for the pass, removes its half-written output and exits.
fn watch_control(cancelled: Arc<AtomicBool>, output_dir: PathBuf, grace: Duration) {
    std::thread::spawn(move || loop {
        match protocol::receive::<Control>(&mut io::stdin().lock()) {
            Ok(Some(Control::Cancel)) => cancelled.store(true, Ordering::SeqCst),
            Ok(None) | Err(_) => {
                cancelled.store(true, Ordering::SeqCst);
                std::thread::sleep(grace);
                let _ = std::fs::remove_dir_all(&output_dir);
                std::process::exit(3);
            }
        }
    });
}

fn emit(channel: &Channel, event: &Event) {
    if let Ok(mut out) = channel.lock() {
        // Nothing to do if the host is gone: it reports the missing result itself.
        let _ = protocol::send(&mut *out, event);
    }
}

/// The host side of the pass's context, inside the worker.
struct WorkerHost {
    output_dir: String,
    device: String,
    cancelled: Arc<AtomicBool>,
    channel: Channel,
    last_progress: Mutex<Option<Instant>>,
}

impl HostCallbacks for WorkerHost {
    fn output_dir(&self) -> &str {
        &self.output_dir
    }

    fn device(&self) -> &str {
        &self.device
    }

    fn log(&self, level: LogLevel, message: &str) {
        emit(
            &self.channel,
            &Event::Log {
                level,
                message: message.to_owned(),
            },
        );
    }

    fn progress(&self, done: u64, total: u64, message: &str) {
        let Ok(mut last) = self.last_progress.lock() else {
            return;
        };
        let now = Instant::now();
        if done < total && last.is_some_and(|at| now.duration_since(at) < PROGRESS_INTERVAL) {
            return;
        }
        *last = Some(now);
        emit(
            &self.channel,
            &Event::Progress {
                done,
                total,
                message: message.to_owned(),
            },
        );
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

/// The protocol goes to the original stdout; stdout itself is pointed at stderr, so whatever a
/// plugin prints cannot corrupt the protocol.
#[cfg(unix)]
fn protocol_channel() -> io::Result<Box<dyn Write + Send>> {
    use std::os::fd::FromRawFd;
    // SAFETY: duplicating and redirecting this process's own standard descriptors; the new
    // descriptor is owned by the returned file alone.
    unsafe {
        let fd = libc::fcntl(libc::STDOUT_FILENO, libc::F_DUPFD_CLOEXEC, 3);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Box::new(std::fs::File::from_raw_fd(fd)))
    }
}

/// Without unix descriptors the protocol shares stdout with the plugin.
#[cfg(not(unix))]
fn protocol_channel() -> io::Result<Box<dyn Write + Send>> {
    Ok(Box::new(io::stdout()))
}
