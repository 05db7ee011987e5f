//! The host side of a worker: spawns `olive-host worker`, relays its log and progress, cancels it on
//! timeout or Ctrl-C (killing it after a grace period), and turns how it ended into one error.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use olive_pass_api::{ErrorKind, LogLevel, Model};

use super::protocol::{self, Control, Event, Request, Stage};
use super::signals;

/// How often the host checks the clock and Ctrl-C while waiting for the worker.
const POLL: Duration = Duration::from_millis(20);
/// How long the host waits for the worker's output after it exited.
const READER_WAIT: Duration = Duration::from_millis(500);
/// How many of the worker's last stderr lines an error quotes.
const STDERR_TAIL: usize = 12;

/// One pass to run in a worker.
pub struct Job {
    /// The plugin's name, for messages.
    pub plugin: String,
    /// The request the worker gets.
    pub request: Request,
    /// Cancel the pass after this long.
    pub timeout: Option<Duration>,
    /// How long a cancelled pass may take to stop before its worker is killed.
    pub grace: Duration,
}

impl Job {
    /// "plugin `p`, pass `x`", which starts every message about this job.
    fn who(&self) -> String {
        format!("plugin `{}`, pass `{}`", self.plugin, self.request.pass)
    }
}

/// Why the host asked the pass to stop.
#[derive(Debug, Clone, Copy)]
enum Cancel {
    Timeout(Duration),
    Interrupt,
}

impl Cancel {
    fn describe(self) -> String {
        match self {
            Cancel::Timeout(limit) => format!("the {} timeout", seconds(limit)),
            Cancel::Interrupt => "an interrupt (Ctrl-C)".to_owned(),
        }
    }
}

/// Why the host killed the worker.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// The cancelled pass outlasted the grace period.
    Grace(Duration),
    /// A Ctrl-C after the pass was cancelled.
    Interrupt,
}

enum Message {
    Event(Event),
    Closed,
}

/// Runs `job` in a worker and returns the model the pass wrote, or an error naming the plugin,
/// the pass and the cause.
pub fn run(job: &Job) -> anyhow::Result<Model> {
    let who = job.who();
    signals::watch_interrupts();
    let exe = worker_exe().context("cannot find the olive-host executable to start a worker")?;
    let mut command = Command::new(&exe);
    command
        .args([
            "--log_level",
            &crate::logging::current_level().to_string(),
            "worker",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command
        .spawn()
        .with_context(|| format!("{who}: cannot start a worker ({})", exe.display()))?;
    let (tx, rx) = mpsc::channel();
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let readers = spawn_readers(&mut child, tx, tail.clone(), &who);
    let sent = match child.stdin.take() {
        Some(mut stdin) => protocol::send(&mut stdin, &job.request).map(|()| stdin),
        None => Err(std::io::Error::other("no pipe to its stdin")),
    };
    let mut stdin = match sent {
        Ok(stdin) => stdin,
        Err(err) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{who}: cannot send the request to the worker: {err}");
        }
    };
    let outcome = supervise(job, &mut child, &mut stdin, &rx, &who);
    drop(stdin);
    // The readers end with the worker, unless something it started still holds its pipes.
    let waited = Instant::now();
    while readers.iter().any(|r| !r.is_finished()) && waited.elapsed() < READER_WAIT {
        thread::sleep(Duration::from_millis(5));
    }
    let tail: Vec<String> = tail
        .lock()
        .map(|t| t.iter().cloned().collect())
        .unwrap_or_default();
    outcome.into_result(job, &tail)
}

/// How a worker ended.
struct Outcome {
    status: std::io::Result<ExitStatus>,
    last: Option<Event>,
    cancel: Option<Cancel>,
    killed: Option<Kill>,
}

fn supervise(
    job: &Job,
    child: &mut Child,
    stdin: &mut ChildStdin,
    rx: &Receiver<Message>,
    who: &str,
) -> Outcome {
    let started = Instant::now();
    let mut progress = Progress::default();
    let mut last = None;
    // Why the pass was cancelled, when, and how many interrupts had come by then.
    let mut cancel: Option<(Cancel, Instant, usize)> = None;
    let mut killed = None;
    let mut closed = false;
    let status = loop {
        // Once the protocol closes, the worker is exiting; the clock still runs until it has.
        if closed {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) => thread::sleep(POLL),
                Err(err) => break Err(err),
            }
        } else {
            match rx.recv_timeout(POLL) {
                Ok(Message::Event(event @ (Event::Done { .. } | Event::Failed { .. }))) => {
                    last = Some(event)
                }
                Ok(Message::Event(Event::Log { level, message })) => {
                    progress.suspend(|| log(level, who, &message))
                }
                Ok(Message::Event(Event::Progress {
                    done,
                    total,
                    message,
                })) => progress.update(&job.request.pass, done, total, &message),
                Ok(Message::Closed) | Err(RecvTimeoutError::Disconnected) => closed = true,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        // Interrupts count from the first pass on: one that came between passes cancels this one.
        let interrupts = signals::interrupts();
        if cancel.is_none() {
            let why = if interrupts > 0 {
                Some(Cancel::Interrupt)
            } else {
                job.timeout
                    .filter(|limit| started.elapsed() >= *limit)
                    .map(Cancel::Timeout)
            };
            if let Some(why) = why {
                progress.suspend(|| tracing::warn!("{who}: cancelling after {}", why.describe()));
                let _ = protocol::send(stdin, &Control::Cancel);
                cancel = Some((why, Instant::now(), interrupts));
            }
        }
        if let Some((_, since, interrupts_then)) = cancel {
            // A further Ctrl-C kills at once; otherwise the pass gets the grace period.
            let kill = if killed.is_some() {
                None
            } else if interrupts > interrupts_then {
                Some(Kill::Interrupt)
            } else if since.elapsed() >= job.grace {
                Some(Kill::Grace(job.grace))
            } else {
                None
            };
            if kill.is_some() {
                let _ = child.kill();
                killed = kill;
            }
        }
    };
    progress.finish();
    Outcome {
        status,
        last,
        cancel: cancel.map(|(why, _, _)| why),
        killed,
    }
}

impl Outcome {
    fn into_result(self, job: &Job, tail: &[String]) -> anyhow::Result<Model> {
        let who = job.who();
        if let Some(cancel) = self.cancel {
            match self.killed {
                Some(Kill::Grace(grace)) => bail!(
                    "{who}: cancelled after {} but did not stop within {}; the worker was killed",
                    cancel.describe(),
                    seconds(grace)
                ),
                Some(Kill::Interrupt) => {
                    bail!(
                        "{who}: cancelled after {}; the worker was killed at a further interrupt",
                        cancel.describe()
                    )
                }
                None => {}
            }
            if let Some(Event::Failed {
                stage: Stage::Pass,
                kind,
                message,
            }) = &self.last
            {
                if ErrorKind::from_name(kind) != ErrorKind::CANCELLED {
                    bail!(
                        "{who}: {message} (while being cancelled after {})",
                        cancel.describe()
                    );
                }
            }
            bail!("{who}: cancelled after {}", cancel.describe());
        }
        let status = self
            .status
            .with_context(|| format!("{who}: cannot wait for the worker"))?;
        match self.last {
            Some(Event::Done { model }) => {
                if !status.success() {
                    tracing::warn!(
                        "{who}: the worker {} after the pass finished",
                        describe_status(status)
                    );
                }
                Ok(model)
            }
            Some(Event::Failed { stage, message, .. }) => Err(match stage {
                Stage::Pass => anyhow!("{who}: {message}"),
                Stage::Load | Stage::Manifest => anyhow!("plugin `{}`: {message}", job.plugin),
                Stage::Request => anyhow!("{who}: the worker rejected its request: {message}"),
            }),
            _ => {
                let output = if tail.is_empty() {
                    String::new()
                } else {
                    format!("; its last output:\n{}", tail.join("\n"))
                };
                bail!(
                    "{who}: the worker process {} before the pass finished{output}",
                    describe_status(status)
                )
            }
        }
    }
}

fn describe_status(status: ExitStatus) -> String {
    #[cfg(unix)]
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
        return format!("was killed by {}", signals::describe_signal(signal));
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => format!("ended with {status}"),
    }
}

/// Reads the worker's protocol lines into `tx`, and its stderr into the debug log and `tail`.
fn spawn_readers(
    child: &mut Child,
    tx: Sender<Message>,
    tail: Arc<Mutex<VecDeque<String>>>,
    who: &str,
) -> Vec<thread::JoinHandle<()>> {
    let mut readers = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let who = who.to_owned();
        readers.push(thread::spawn(move || {
            let mut input = BufReader::new(stdout);
            loop {
                match protocol::receive::<Event>(&mut input) {
                    Ok(Some(event)) => {
                        if tx.send(Message::Event(event)).is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
                        tracing::warn!("{who}: unreadable message from the worker: {err}")
                    }
                    Err(_) => break,
                }
            }
            let _ = tx.send(Message::Closed);
        }));
    }
    if let Some(stderr) = child.stderr.take() {
        let who = who.to_owned();
        readers.push(thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                tracing::debug!("{who}: worker stderr: {line}");
                if let Ok(mut tail) = tail.lock() {
                    if tail.len() == STDERR_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            }
        }));
    }
    readers
}

fn log(level: LogLevel, who: &str, message: &str) {
    match level {
        LogLevel::Error => tracing::error!("{who}: {message}"),
        LogLevel::Warn => tracing::warn!("{who}: {message}"),
        LogLevel::Info => tracing::info!("{who}: {message}"),
        LogLevel::Debug => tracing::debug!("{who}: {message}"),
        LogLevel::Trace => tracing::trace!("{who}: {message}"),
    }
}

/// The pass's progress bar on stderr, made on the first report; hidden when stderr is not a TTY.
#[derive(Default)]
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn update(&mut self, pass: &str, done: u64, total: u64, message: &str) {
        tracing::debug!("{pass}: {done}/{total} {message}");
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(None, crate::progress::draw_target())
                .with_prefix(pass.to_owned());
            if let Ok(style) =
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        if total > 0 {
            bar.set_length(total);
        }
        bar.set_position(done);
        bar.set_message(message.to_owned());
    }

    fn suspend(&self, f: impl FnOnce()) {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// This executable, for the worker. On Linux, /proc/self/exe: it still runs this very binary when the file was
/// replaced on disk during a long run (a rebuild or an upgrade), where the path would start the new one or none.
fn worker_exe() -> std::io::Result<std::path::PathBuf> {
    let proc_self = std::path::Path::new("/proc/self/exe");
    if proc_self.exists() {
        return Ok(proc_self.to_path_buf());
    }
    std::env::current_exe()
}

/// "1s", "0.5s".
fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}
