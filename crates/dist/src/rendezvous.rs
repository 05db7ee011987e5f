//! Rendezvous and liveness watch over TCP, in the manner of torchrun's store at MASTER_ADDR:MASTER_PORT: the ranks
//! meet at rank 0, rank 0 hands every rank one payload (the NCCL unique id), and the connections stay open so
//! that every rank learns within seconds when another exits (EOF or reset) or goes silent (no heartbeat).
//!
//! Wire format: frames of `[length: u32 LE][kind: u8][body]`, `length` counting the kind byte. A non-leader opens
//! with HELLO (`b"OLVD"`, protocol version u32, rank u64, world size u64, all LE); rank 0 answers PAYLOAD or
//! REJECT (a reason in UTF-8). Afterwards each side sends HEARTBEAT every [`Liveness::heartbeat`] and counts a
//! connection silent for [`Liveness::silence`] as lost; DONE (rank → 0) and RELEASE (0 → all) make the end
//! barrier; LOST (0 → others: rank u64, cause) tells the others which rank rank 0 lost before it exits.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{DistError, Result};
use crate::world::World;

/// Exit status of a process stopped because another rank exited or lost contact (EX_TEMPFAIL of sysexits.h).
pub const EXIT_PEER_LOST: i32 = 75;

const MAGIC: [u8; 4] = *b"OLVD";
const VERSION: u32 = 1;
/// Largest frame accepted, kind byte included; the payload is 128 bytes, so this only stops garbage.
const MAX_FRAME: usize = 1 << 20;

const HELLO: u8 = 1;
const PAYLOAD: u8 = 2;
const REJECT: u8 = 3;
const HEARTBEAT: u8 = 4;
const DONE: u8 = 5;
const RELEASE: u8 = 6;
const LOST: u8 = 7;

/// How a group watches its connections once joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// Interval between heartbeat frames on every connection.
    pub heartbeat: Duration,
    /// A connection with no frame for this long counts as lost (a host gone without closing its sockets).
    pub silence: Duration,
}

impl Default for Liveness {
    /// A heartbeat every 5 s; 30 s of silence is a lost rank.
    fn default() -> Self {
        Liveness {
            heartbeat: Duration::from_secs(5),
            silence: Duration::from_secs(30),
        }
    }
}

/// The ranks of one run after they met: connections that stay open as a liveness watch until [`Group::finish`].
/// A watchdog thread per connection (rank 0: one per rank; others: one to rank 0) exits the process with
/// [`EXIT_PEER_LOST`] when a connection closes, resets or goes silent before the end barrier. Dropping a Group
/// without `finish` leaves the group: the other ranks see this rank as lost.
pub struct Group {
    world: World,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    rank: usize,
    world_size: usize,
    liveness: Liveness,
    links: Vec<Link>,
    state: Mutex<State>,
    changed: Condvar,
}

/// One connection: to rank 0 on a non-leader, to rank `peer` on rank 0.
struct Link {
    peer: usize,
    addr: String,
    writer: Mutex<TcpStream>,
}

#[derive(Default)]
struct State {
    /// Ranks whose DONE rank 0 has received.
    done: usize,
    /// The end barrier is passed: a closing connection is no failure.
    released: bool,
    /// This rank leaves (finish or drop): watchdogs and the heartbeat stand down.
    closing: bool,
    /// A watchdog is stopping the process; the others stay quiet.
    exiting: bool,
}

impl Group {
    /// Meets the other ranks at `world.master()` with the default [`Liveness`]; see [`Group::join_with`].
    pub fn join(
        world: &World,
        leader_payload: impl FnOnce() -> Result<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(Group, Vec<u8>)> {
        Group::join_with(world, leader_payload, timeout, Liveness::default())
    }

    /// Meets the other ranks and returns the payload that rank 0 made with `leader_payload` (called on rank 0
    /// only, once every rank has joined). Rank 0 listens at MASTER_ADDR:MASTER_PORT (on every interface unless
    /// MASTER_ADDR is a loopback address) and waits up to `timeout` for the others; the others retry connecting
    /// until `timeout`, rank 0 may start later. A rank that says another WORLD_SIZE, or a rank claimed twice,
    /// fails the join on every rank connected so far. A group of one makes its payload and opens nothing.
    pub fn join_with(
        world: &World,
        leader_payload: impl FnOnce() -> Result<Vec<u8>>,
        timeout: Duration,
        liveness: Liveness,
    ) -> Result<(Group, Vec<u8>)> {
        world.check()?;
        let deadline = Instant::now() + timeout;
        let (links, payload) = if world.world_size == 1 {
            (Vec::new(), leader_payload()?)
        } else if world.is_leader() {
            lead(world, leader_payload, timeout, deadline)?
        } else {
            follow(world, timeout, deadline)?
        };
        let shared = Arc::new(Shared {
            rank: world.rank,
            world_size: world.world_size,
            liveness,
            links,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        // Built before the threads start, so that a failed spawn drops it and closes what was started.
        let mut group = Group {
            world: world.clone(),
            shared: Arc::clone(&shared),
            threads: Vec::new(),
        };
        for index in 0..shared.links.len() {
            let link = &shared.links[index];
            let reader = link
                .stream()
                .try_clone()
                .and_then(|reader| {
                    reader
                        .set_read_timeout(Some(liveness.silence))
                        .map(|()| reader)
                })
                .map_err(|source| link.error(world.rank, "watching", source))?;
            let shared = Arc::clone(&shared);
            group
                .threads
                .push(spawn(format!("olive-dist-watch-{index}"), move || {
                    watch(&shared, index, reader)
                })?);
        }
        if !shared.links.is_empty() {
            let beat = Arc::clone(&shared);
            group
                .threads
                .push(spawn("olive-dist-heartbeat".into(), move || {
                    heartbeat(&beat)
                })?);
        }
        Ok((group, payload))
    }

    /// This rank's layout.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The end barrier: returns once every rank has called `finish`; after it the watchdogs stand down and a
    /// closing connection is no failure. A rank lost while waiting stops this process as during the run.
    pub fn finish(mut self) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        let result = if self.world.is_leader() {
            let mut state = shared.lock();
            while state.done < shared.links.len() {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            state.released = true;
            drop(state);
            shared.links.iter().try_for_each(|link| {
                link.send(shared.rank, RELEASE, &[], "sending the end of the barrier")
            })
        } else {
            let sent = shared
                .links
                .iter()
                .try_for_each(|link| link.send(shared.rank, DONE, &[], "entering the end barrier"));
            let mut state = shared.lock();
            while sent.is_ok() && !state.released {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            sent
        };
        self.close();
        result
    }

    /// Stops the heartbeat, shuts every connection and waits for this rank's threads.
    fn close(&mut self) {
        self.shared.lock().closing = true;
        self.shared.changed.notify_all();
        for link in &self.shared.links {
            // Already closed by the peer is fine: the watchdog stands down either way.
            let _ = link.stream().shutdown(Shutdown::Both);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Logs the loss, tells the other ranks (rank 0) and exits with [`EXIT_PEER_LOST`], unless this rank is
    /// leaving anyway.
    fn lost(&self, skip: usize, peer: usize, cause: &str) {
        {
            let mut state = self.lock();
            if state.released || state.closing || state.exiting {
                return;
            }
            state.exiting = true;
        }
        let message = DistError::PeerLost {
            peer,
            world_size: self.world_size,
            rank: self.rank,
            cause: cause.to_string(),
        }
        .to_string();
        tracing::error!("{message}");
        eprintln!("{message}");
        if self.rank == 0 {
            let mut body = (peer as u64).to_le_bytes().to_vec();
            body.extend_from_slice(cause.as_bytes());
            for (index, link) in self.links.iter().enumerate() {
                if index != skip {
                    // The process exits next; a rank we cannot tell learns from the closed connection.
                    let _ = link.send(self.rank, LOST, &body, "reporting a lost rank");
                }
            }
        }
        // _exit, not exit: atexit handlers and CUDA's or NCCL's static destructors can wait forever on a
        // collective kernel that waits for the lost rank.
        let _ = std::io::Write::flush(&mut std::io::stderr());
        // SAFETY: ends the process at once; nothing after this runs.
        unsafe { libc::_exit(EXIT_PEER_LOST) }
    }
}

impl Link {
    fn stream(&self) -> MutexGuard<'_, TcpStream> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, rank: usize, kind: u8, body: &[u8], doing: &'static str) -> Result<()> {
        write_frame(&mut *self.stream(), kind, body)
            .map_err(|source| self.error(rank, doing, source))
    }

    fn error(&self, rank: usize, doing: &'static str, source: io::Error) -> DistError {
        DistError::Network {
            addr: self.addr.clone(),
            rank,
            peer: self.peer,
            doing,
            source,
        }
    }
}

/// Watchdog of one connection: reads frames until the barrier passes, and stops the process on a loss.
fn watch(shared: &Shared, index: usize, mut reader: TcpStream) {
    let peer = shared.links[index].peer;
    loop {
        let cause = match read_frame(&mut reader) {
            Ok((HEARTBEAT, _)) => continue,
            Ok((DONE, _)) if shared.rank == 0 => {
                shared.lock().done += 1;
                shared.changed.notify_all();
                continue;
            }
            Ok((RELEASE, _)) if shared.rank != 0 => {
                shared.lock().released = true;
                shared.changed.notify_all();
                return;
            }
            Ok((LOST, body)) if shared.rank != 0 && body.len() >= 8 => {
                let mut rank = [0u8; 8];
                rank.copy_from_slice(&body[..8]);
                let lost = u64::from_le_bytes(rank) as usize;
                let cause = String::from_utf8_lossy(&body[8..]);
                shared.lost(index, lost, &format!("{cause}, as rank 0 saw it"));
                return;
            }
            Ok((kind, body)) => format!("unexpected frame of kind {kind} and {} bytes", body.len()),
            Err(e) => match e.kind() {
                io::ErrorKind::UnexpectedEof => "connection closed".to_string(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    format!("silent for {:?}", shared.liveness.silence)
                }
                _ => e.to_string(),
            },
        };
        shared.lost(index, peer, &cause);
        return;
    }
}

/// Sends a heartbeat on every connection each interval until this rank leaves; a failed send is left to the
/// watchdog of that connection to report.
fn heartbeat(shared: &Shared) {
    let mut state = shared.lock();
    while !state.closing {
        let (next, _) = shared
            .changed
            .wait_timeout(state, shared.liveness.heartbeat)
            .unwrap_or_else(PoisonError::into_inner);
        state = next;
        if state.closing {
            break;
        }
        drop(state);
        for link in &shared.links {
            let _ = link.send(shared.rank, HEARTBEAT, &[], "sending a heartbeat");
        }
        state = shared.lock();
    }
}

fn spawn(name: String, body: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(body)
        .map_err(|source| DistError::Io {
            path: name.into(),
            source,
        })
}

/// Rank 0: accepts every other rank, checks their hellos, makes the payload and sends it.
fn lead(
    world: &World,
    leader_payload: impl FnOnce() -> Result<Vec<u8>>,
    timeout: Duration,
    deadline: Instant,
) -> Result<(Vec<Link>, Vec<u8>)> {
    let master = world.master();
    let listener = listen(world)?;
    let bind_error = |source| DistError::Bind {
        addr: master.clone(),
        source,
    };
    listener.set_nonblocking(true).map_err(bind_error)?;
    // peers[r]: rank r's connection; peers[0] stays None.
    let mut peers: Vec<Option<(TcpStream, SocketAddr)>> =
        (0..world.world_size).map(|_| None).collect();
    let mut joined = 1;
    while joined < world.world_size {
        let (mut stream, from) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                if Instant::now() >= deadline {
                    return Err(DistError::JoinTimeout {
                        addr: master,
                        missing: (1..world.world_size)
                            .filter(|&r| peers[r].is_none())
                            .collect(),
                        world_size: world.world_size,
                        timeout,
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(bind_error(e)),
        };
        let hello = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_nodelay(true))
            .and_then(|()| stream.set_read_timeout(Some(remaining(deadline).min(HELLO_WAIT))))
            .and_then(|()| read_frame(&mut stream));
        let (kind, body) = match hello {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!("rank 0: ignoring a connection from {from} that sent no hello: {e}");
                continue;
            }
        };
        let Some((version, rank, size)) = parse_hello(kind, &body) else {
            tracing::warn!("rank 0: ignoring a connection from {from}: not an olive-rs rank");
            continue;
        };
        let refusal = if version != VERSION {
            Some(DistError::Protocol {
                addr: from.to_string(),
                detail: format!("rank {rank} speaks version {version}, rank 0 speaks {VERSION} (mixed olive-rs builds?)"),
            })
        } else if size != world.world_size {
            Some(DistError::WorldSizeMismatch {
                rank,
                theirs: size,
                ours: world.world_size,
            })
        } else if rank == 0 || rank >= world.world_size || peers[rank].is_some() {
            Some(DistError::DuplicateRank {
                rank,
                world_size: world.world_size,
            })
        } else {
            None
        };
        if let Some(error) = refusal {
            let reason = error.to_string();
            let _ = write_frame(&mut stream, REJECT, reason.as_bytes());
            reject_all(&mut peers, &reason);
            return Err(error);
        }
        peers[rank] = Some((stream, from));
        joined += 1;
    }
    let payload = leader_payload().and_then(|p| {
        if p.len() < MAX_FRAME {
            Ok(p)
        } else {
            Err(DistError::Payload(format!(
                "{} bytes, more than the {} a frame carries",
                p.len(),
                MAX_FRAME - 1
            )))
        }
    });
    let payload = match payload {
        Ok(p) => p,
        Err(e) => {
            reject_all(&mut peers, &e.to_string());
            return Err(e);
        }
    };
    let mut links = Vec::with_capacity(world.world_size - 1);
    for (rank, peer) in peers.into_iter().enumerate() {
        let Some((mut stream, from)) = peer else {
            continue;
        };
        let error = |source| DistError::Network {
            addr: from.to_string(),
            rank: 0,
            peer: rank,
            doing: "sending the payload",
            source,
        };
        write_frame(&mut stream, PAYLOAD, &payload).map_err(error)?;
        stream
            .set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(error)?;
        links.push(Link {
            peer: rank,
            addr: from.to_string(),
            writer: Mutex::new(stream),
        });
    }
    Ok((links, payload))
}

/// How long rank 0 waits for the hello of a fresh connection before it ignores it.
const HELLO_WAIT: Duration = Duration::from_secs(5);

/// A blocked send (a peer that stopped reading) gives up after this; the watchdog then reports the peer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Rank 0's listener: MASTER_ADDR itself when it is a loopback address, else every interface (as torchrun's
/// store does), so that a host name that resolves to a loopback entry on rank 0's host still takes remote ranks.
fn listen(world: &World) -> Result<TcpListener> {
    let master = world.master();
    let addrs = resolve(world)?;
    let mut last = None;
    for addr in addrs {
        let bind_to = if addr.ip().is_loopback() {
            addr
        } else if addr.is_ipv6() {
            SocketAddr::from(([0u16; 8], addr.port()))
        } else {
            SocketAddr::from(([0u8; 4], addr.port()))
        };
        match TcpListener::bind(bind_to) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(DistError::Bind {
        addr: master,
        source: last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")),
    })
}

fn resolve(world: &World) -> Result<Vec<SocketAddr>> {
    let failed = |reason: String| DistError::Resolve {
        addr: world.master(),
        rank: world.rank,
        reason,
    };
    let addrs: Vec<SocketAddr> = (world.master_addr.as_str(), world.master_port)
        .to_socket_addrs()
        .map_err(|e| failed(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(failed("no address".into()));
    }
    Ok(addrs)
}

/// Tells every rank connected so far why the join failed (best effort: the join fails here anyway).
fn reject_all(peers: &mut [Option<(TcpStream, SocketAddr)>], reason: &str) {
    for (stream, _) in peers.iter_mut().flatten() {
        let _ = write_frame(stream, REJECT, reason.as_bytes());
    }
}

/// A non-leader: connects to rank 0 (retrying until the deadline), says hello and waits for the payload.
fn follow(world: &World, timeout: Duration, deadline: Instant) -> Result<(Vec<Link>, Vec<u8>)> {
    let master = world.master();
    let addrs = resolve(world)?;
    let mut last = String::from("no attempt");
    let mut stream = 'connect: loop {
        for addr in &addrs {
            let left = remaining(deadline).min(Duration::from_secs(2));
            match TcpStream::connect_timeout(addr, left) {
                Ok(stream) => break 'connect stream,
                Err(e) => last = e.to_string(),
            }
        }
        if Instant::now() >= deadline {
            return Err(DistError::ConnectTimeout {
                addr: master,
                rank: world.rank,
                timeout,
                last,
            });
        }
        std::thread::sleep(remaining(deadline).min(Duration::from_millis(100)));
    };
    let network = |doing: &'static str| {
        let master = master.clone();
        move |source| DistError::Network {
            addr: master,
            rank: world.rank,
            peer: 0,
            doing,
            source,
        }
    };
    let mut hello = MAGIC.to_vec();
    hello.extend_from_slice(&VERSION.to_le_bytes());
    hello.extend_from_slice(&(world.rank as u64).to_le_bytes());
    hello.extend_from_slice(&(world.world_size as u64).to_le_bytes());
    stream.set_nodelay(true).map_err(network("saying hello"))?;
    write_frame(&mut stream, HELLO, &hello).map_err(network("saying hello"))?;
    // Rank 0 answers once every rank has joined; give a late joiner at least a second.
    let wait = remaining(deadline).max(Duration::from_secs(1));
    stream
        .set_read_timeout(Some(wait))
        .map_err(network("waiting for the payload"))?;
    let payload = match read_frame(&mut stream) {
        Ok((PAYLOAD, body)) => body,
        Ok((REJECT, reason)) => {
            return Err(DistError::Rejected {
                addr: master,
                rank: world.rank,
                reason: String::from_utf8_lossy(&reason).into_owned(),
            })
        }
        Ok((kind, _)) => {
            return Err(DistError::Protocol {
                addr: master,
                detail: format!("expected the payload, got a frame of kind {kind}"),
            })
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(DistError::PayloadTimeout {
                addr: master,
                rank: world.rank,
                timeout,
            })
        }
        Err(e) => return Err(network("waiting for the payload")(e)),
    };
    stream
        .set_write_timeout(Some(WRITE_TIMEOUT))
        .map_err(network("watching"))?;
    let link = Link {
        peer: 0,
        addr: master.clone(),
        writer: Mutex::new(stream),
    };
    Ok((vec![link], payload))
}

fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// HELLO body: magic, version, rank, world size; `None` when it is not an olive-rs hello.
fn parse_hello(kind: u8, body: &[u8]) -> Option<(u32, usize, usize)> {
    if kind != HELLO || body.len() != 24 || body[..4] != MAGIC {
        return None;
    }
    let version = u32::from_le_bytes(body[4..8].try_into().ok()?);
    let rank = u64::from_le_bytes(body[8..16].try_into().ok()?);
    let size = u64::from_le_bytes(body[16..24].try_into().ok()?);
    Some((
        version,
        usize::try_from(rank).ok()?,
        usize::try_from(size).ok()?,
    ))
}

fn write_frame(w: &mut impl Write, kind: u8, body: &[u8]) -> io::Result<()> {
    let length = u32::try_from(body.len() + 1)
        .ok()
        .filter(|&n| (n as usize) <= MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.extend_from_slice(&length.to_le_bytes());
    frame.push(kind);
    frame.extend_from_slice(body);
    w.write_all(&frame)?;
    w.flush()
}

fn read_frame(r: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    let mut length = [0u8; 4];
    r.read_exact(&mut length)?;
    let length = u32::from_le_bytes(length) as usize;
    if length == 0 || length > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame length {length} outside 1..={MAX_FRAME}"),
        ));
    }
    let mut frame = vec![0u8; length];
    r.read_exact(&mut frame)?;
    let body = frame.split_off(1);
    Ok((frame[0], body))
}
