//! The host side of workers: spawns `olive-host worker` processes (one, or a group of ranks in torchrun's layout),
//! relays their log and progress, cancels them on timeout, Ctrl-C or — in a group — any worker's failure (killing
//! them after a grace period), and turns how they ended into one error.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
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

/// How often the host checks the clock and Ctrl-C while waiting for the workers.
const POLL: Duration = Duration::from_millis(20);
/// How long the host waits for the workers' output after they exited.
const READER_WAIT: Duration = Duration::from_millis(500);
/// How many of a worker's last stderr lines an error quotes.
const STDERR_TAIL: usize = 12;

/// One pass to run in a worker (or in each worker of a group).
pub struct Job {
    /// The plugin's name, for messages.
    pub plugin: String,
    /// The request the worker gets (a group member's goes to its own output folder).
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

/// One worker of a group: its rank, its environment and where its pass writes.
pub struct Member {
    /// Global rank and world size.
    pub rank: usize,
    /// Ranks in the whole group.
    pub world_size: usize,
    /// Variables set in its environment (the rank layout, LD_LIBRARY_PATH).
    pub env: Vec<(&'static str, OsString)>,
    /// The folder its pass writes into.
    pub output_dir: PathBuf,
    /// Whether its progress bar and log are shown as a lone worker's; the others' log goes to the debug level,
    /// but for their errors and warnings.
    pub lead: bool,
}

/// Why the host asked a pass to stop.
#[derive(Debug, Clone, Copy)]
enum Cancel {
    Timeout(Duration),
    Interrupt,
    /// Another rank of the group failed.
    Peer(usize),
}

impl Cancel {
    fn describe(self) -> String {
        match self {
            Cancel::Timeout(limit) => format!("the {} timeout", seconds(limit)),
            Cancel::Interrupt => "an interrupt (Ctrl-C)".to_owned(),
            Cancel::Peer(rank) => format!("rank {rank} failed"),
        }
    }
}

/// Why the host killed a worker.
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

/// Runs `job` in one worker and returns the model the pass wrote, or an error naming the plugin, the pass and
/// the cause. The rank layout's variables (`olive_dist::VARIABLES`) are removed from the worker's environment.
pub fn run(job: &Job) -> anyhow::Result<Model> {
    let (mut workers, rx) = start(job, None)?;
    supervise(job, &mut workers, &rx);
    let worker = workers.remove(0);
    let tail = worker.tail();
    worker.outcome(true).into_result(job, &worker.who, &tail)
}

/// Runs `job` in one worker per member, each with its own environment and output folder, and returns their
/// models in the members' order. When one fails, the others are cancelled (and killed after the grace period);
/// the error is the failed rank's, naming it.
pub fn run_group(job: &Job, members: &[Member]) -> anyhow::Result<Vec<Model>> {
    let (mut workers, rx) = start(job, Some(members))?;
    let trigger = supervise(job, &mut workers, &rx);
    let tails: Vec<Vec<String>> = workers.iter().map(Worker::tail).collect();
    if workers.iter().all(Worker::succeeded) {
        return workers
            .into_iter()
            .zip(&tails)
            .map(|(w, tail)| w.outcome(true).into_result(job, &w.who, tail))
            .collect();
    }
    // The rank whose failure stopped the others, told without the host's cancel; when the whole group was
    // cancelled (timeout, Ctrl-C), the first worker that had to be killed, else the first.
    let (blamed, with_cancel) = match trigger {
        Some(first) => (root_cause(&workers, first), false),
        None => (
            workers.iter().position(|w| w.killed.is_some()).unwrap_or(0),
            true,
        ),
    };
    for (i, w) in workers.iter().enumerate().filter(|(i, _)| *i != blamed) {
        if let Err(err) = w.outcome(true).into_result(job, &w.who, &tails[i]) {
            match w.killed {
                Some(_) => tracing::warn!("{err:#}"),
                None => tracing::debug!("{err:#}"),
            }
        }
    }
    let w = &workers[blamed];
    match w
        .outcome(with_cancel)
        .into_result(job, &w.who, &tails[blamed])
    {
        Err(err) => Err(err),
        Ok(_) => Err(anyhow!("{}: stopped before the pass finished", w.who)),
    }
}

/// The rank whose failure stopped the group: `first`, unless it only saw another rank go (olive-dist's
/// peer-lost exit) and another failed on its own — not cancelled, not killed by the host, not peer-lost.
fn root_cause(workers: &[Worker], first: usize) -> usize {
    if !workers[first].lost_a_peer() {
        return first;
    }
    let own = |w: &Worker| {
        !w.succeeded() && w.killed.is_none() && !w.lost_a_peer() && !w.reported_cancelled()
    };
    workers.iter().position(own).unwrap_or(first)
}

/// The workers as started, and the channel their protocol events come on, tagged with their index.
type Started = (Vec<Worker>, Receiver<(usize, Message)>);

fn start(job: &Job, members: Option<&[Member]>) -> anyhow::Result<Started> {
    signals::watch_interrupts();
    let exe = worker_exe().context("cannot find the olive-host executable to start a worker")?;
    let (tx, rx) = mpsc::channel();
    let mut workers: Vec<Worker> = Vec::new();
    let lone = [None];
    let slots: Vec<Option<&Member>> = match members {
        Some(members) => members.iter().map(Some).collect(),
        None => lone.to_vec(),
    };
    for (index, member) in slots.into_iter().enumerate() {
        match Worker::spawn(job, &exe, member, index, tx.clone()) {
            Ok(worker) => workers.push(worker),
            Err(err) => {
                for mut started in workers {
                    let _ = started.child.kill();
                    let _ = started.child.wait();
                }
                return Err(err);
            }
        }
    }
    Ok((workers, rx))
}

/// One running worker and what is known of it.
struct Worker {
    /// "plugin `p`, pass `x`" (", rank r of n" in a group).
    who: String,
    rank: usize,
    lead: bool,
    child: Child,
    stdin: Option<ChildStdin>,
    readers: Vec<thread::JoinHandle<()>>,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// The protocol ended: the worker is exiting.
    closed: bool,
    /// How it exited, once reaped.
    status: Option<std::io::Result<ExitStatus>>,
    /// Its Done or Failed event.
    last: Option<Event>,
    /// Why it was cancelled, when, and how many interrupts had come by then.
    cancel: Option<(Cancel, Instant, usize)>,
    killed: Option<Kill>,
}

impl Worker {
    fn spawn(
        job: &Job,
        exe: &std::path::Path,
        member: Option<&Member>,
        index: usize,
        tx: Sender<(usize, Message)>,
    ) -> anyhow::Result<Worker> {
        let who = match member {
            Some(m) => format!("{}, rank {} of {}", job.who(), m.rank, m.world_size),
            None => job.who(),
        };
        let mut command = Command::new(exe);
        command
            .args([
                "--log_level",
                &crate::logging::current_level().to_string(),
                "worker",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A stray WORLD_SIZE in the host's environment never makes a lone worker one rank of a group.
        for name in olive_dist::VARIABLES {
            command.env_remove(name);
        }
        let mut request = job.request.clone();
        if let Some(member) = member {
            command.envs(member.env.iter().map(|(k, v)| (k, v)));
            request.output_dir = member.output_dir.clone();
        }
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .spawn()
            .with_context(|| format!("{who}: cannot start a worker ({})", exe.display()))?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let readers = spawn_readers(&mut child, index, tx, tail.clone(), &who);
        let sent = match child.stdin.take() {
            Some(mut stdin) => protocol::send(&mut stdin, &request).map(|()| stdin),
            None => Err(std::io::Error::other("no pipe to its stdin")),
        };
        let stdin = match sent {
            Ok(stdin) => stdin,
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{who}: cannot send the request to the worker: {err}");
            }
        };
        Ok(Worker {
            who,
            rank: member.map_or(0, |m| m.rank),
            lead: member.is_none_or(|m| m.lead),
            child,
            stdin: Some(stdin),
            readers,
            tail,
            closed: false,
            status: None,
            last: None,
            cancel: None,
            killed: None,
        })
    }

    fn succeeded(&self) -> bool {
        matches!(self.last, Some(Event::Done { .. }))
    }

    /// It ended, or said it failed, without a model.
    fn failed(&self) -> bool {
        matches!(self.last, Some(Event::Failed { .. }))
            || (self.status.is_some() && !self.succeeded())
    }

    /// It exited because olive-dist's watch saw another rank go.
    fn lost_a_peer(&self) -> bool {
        matches!(&self.status, Some(Ok(status)) if status.code() == Some(olive_dist::EXIT_PEER_LOST))
    }

    fn reported_cancelled(&self) -> bool {
        matches!(&self.last, Some(Event::Failed { kind, .. })
            if ErrorKind::from_name(kind) == ErrorKind::CANCELLED)
    }

    /// Asks the pass to stop (once).
    fn cancel(&mut self, why: Cancel, interrupts: usize) {
        if self.cancel.is_some() || self.status.is_some() {
            return;
        }
        if let Some(stdin) = &mut self.stdin {
            let _ = protocol::send(stdin, &Control::Cancel);
        }
        self.cancel = Some((why, Instant::now(), interrupts));
    }

    /// Kills a cancelled worker at a further Ctrl-C, or once the grace period is over.
    fn kill_if_due(&mut self, interrupts: usize, grace: Duration) {
        let Some((_, since, interrupts_then)) = self.cancel else {
            return;
        };
        if self.killed.is_some() || self.status.is_some() {
            return;
        }
        let kill = if interrupts > interrupts_then {
            Some(Kill::Interrupt)
        } else if since.elapsed() >= grace {
            Some(Kill::Grace(grace))
        } else {
            None
        };
        if kill.is_some() {
            let _ = self.child.kill();
            self.killed = kill;
        }
    }

    /// Once the protocol closed, the exit status if the worker has exited.
    fn reap(&mut self) {
        if self.closed && self.status.is_none() {
            match self.child.try_wait() {
                Ok(Some(status)) => self.status = Some(Ok(status)),
                Ok(None) => {}
                Err(err) => self.status = Some(Err(err)),
            }
        }
    }

    /// Its last stderr lines.
    fn tail(&self) -> Vec<String> {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How it ended; `with_cancel` false leaves out the host's cancel (to tell a rank's own failure).
    fn outcome(&self, with_cancel: bool) -> Outcome<'_> {
        Outcome {
            status: self.status.as_ref(),
            last: self.last.as_ref(),
            cancel: self.cancel.filter(|_| with_cancel).map(|(why, _, _)| why),
            killed: self.killed.filter(|_| with_cancel),
        }
    }
}

/// Runs the workers until all have exited; the index of the first that failed while none was cancelled yet
/// (whose failure then cancelled the others).
fn supervise(job: &Job, workers: &mut [Worker], rx: &Receiver<(usize, Message)>) -> Option<usize> {
    let started = Instant::now();
    let mut progress = Progress::default();
    // Why the group was cancelled.
    let mut cancel: Option<Cancel> = None;
    let mut trigger = None;
    while workers.iter().any(|w| w.status.is_none()) {
        match rx.recv_timeout(POLL) {
            Ok((i, Message::Event(event))) => {
                let w = &mut workers[i];
                match event {
                    event @ (Event::Done { .. } | Event::Failed { .. }) => w.last = Some(event),
                    Event::Log { level, message } => {
                        if w.lead || matches!(level, LogLevel::Error | LogLevel::Warn) {
                            progress.suspend(|| log(level, &w.who, &message))
                        } else {
                            tracing::debug!("{}: {message}", w.who)
                        }
                    }
                    Event::Progress {
                        done,
                        total,
                        message,
                    } => {
                        if w.lead {
                            progress.update(&job.request.pass, done, total, &message)
                        } else {
                            tracing::debug!("{}: {done}/{total} {message}", w.who)
                        }
                    }
                }
            }
            Ok((i, Message::Closed)) => workers[i].closed = true,
            Err(RecvTimeoutError::Timeout) => {}
            // Every reader has ended: all protocols are closed.
            Err(RecvTimeoutError::Disconnected) => {
                workers.iter_mut().for_each(|w| w.closed = true);
                thread::sleep(POLL);
            }
        }
        workers.iter_mut().for_each(Worker::reap);
        // Interrupts count from the first pass on: one that came between passes cancels this one.
        let interrupts = signals::interrupts();
        if cancel.is_none() && trigger.is_none() {
            // A rank that failed on its own is named before one that only saw it go.
            trigger = workers
                .iter()
                .position(|w| w.failed() && !w.lost_a_peer())
                .or_else(|| workers.iter().position(Worker::failed));
        }
        if cancel.is_none() {
            let why = if let Some(i) = trigger.filter(|_| workers.len() > 1) {
                Some(Cancel::Peer(workers[i].rank))
            } else if interrupts > 0 {
                Some(Cancel::Interrupt)
            } else {
                job.timeout
                    .filter(|limit| started.elapsed() >= *limit)
                    .map(Cancel::Timeout)
            };
            if let Some(why) = why {
                let message = match (why, workers.len()) {
                    (Cancel::Peer(rank), _) => {
                        let what = match trigger.is_some_and(|i| workers[i].lost_a_peer()) {
                            true => "lost contact with another rank",
                            false => "failed",
                        };
                        format!(
                            "{}: rank {rank} {what}; stopping the other ranks",
                            job.who()
                        )
                    }
                    (_, 1) => format!("{}: cancelling after {}", workers[0].who, why.describe()),
                    (_, n) => format!(
                        "{}: cancelling all {n} ranks after {}",
                        job.who(),
                        why.describe()
                    ),
                };
                progress.suspend(|| tracing::warn!("{message}"));
                workers.iter_mut().for_each(|w| w.cancel(why, interrupts));
                cancel = Some(why);
            }
        }
        for w in workers.iter_mut() {
            w.kill_if_due(interrupts, job.grace);
        }
    }
    progress.finish();
    for w in workers.iter_mut() {
        w.stdin = None;
    }
    // The readers end with the workers, unless something a worker started still holds its pipes.
    let waited = Instant::now();
    while workers
        .iter()
        .flat_map(|w| &w.readers)
        .any(|r| !r.is_finished())
        && waited.elapsed() < READER_WAIT
    {
        thread::sleep(Duration::from_millis(5));
    }
    trigger
}

/// How a worker ended.
struct Outcome<'a> {
    status: Option<&'a std::io::Result<ExitStatus>>,
    last: Option<&'a Event>,
    cancel: Option<Cancel>,
    killed: Option<Kill>,
}

impl Outcome<'_> {
    fn into_result(self, job: &Job, who: &str, tail: &[String]) -> anyhow::Result<Model> {
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
            }) = self.last
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
        let status = match self.status {
            Some(Ok(status)) => *status,
            Some(Err(err)) => bail!("{who}: cannot wait for the worker: {err}"),
            None => bail!("{who}: the worker had not exited"),
        };
        match self.last {
            Some(Event::Done { model }) => {
                if !status.success() {
                    tracing::warn!(
                        "{who}: the worker {} after the pass finished",
                        describe_status(status)
                    );
                }
                Ok(model.clone())
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

/// Reads the worker's protocol lines into `tx` (tagged with `index`), and its stderr into the debug log and
/// `tail`.
fn spawn_readers(
    child: &mut Child,
    index: usize,
    tx: Sender<(usize, Message)>,
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
                        if tx.send((index, Message::Event(event))).is_err() {
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
            let _ = tx.send((index, Message::Closed));
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
