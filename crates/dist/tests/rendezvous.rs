//! Group::join / finish and the liveness watch, with each rank a separate process over loopback: the tests run
//! this test executable again with `--exact rank_body --ignored` and the rank's variables in its environment.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use olive_dist::{free_port, DistError, Group, Liveness, World, EXIT_PEER_LOST, VARIABLES};

/// Bytes of the payload, as NCCL's unique id.
const PAYLOAD_BYTES: usize = 128;
/// A rank waits this long at the rendezvous.
const JOIN_TIMEOUT_S: u64 = 20;

fn payload_for(seed: u8) -> Vec<u8> {
    (0..PAYLOAD_BYTES)
        .map(|i| (i as u8).wrapping_mul(7) ^ seed)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The body of one rank, run in a child process (ignored in a normal run). TEST_DIST_MODE: `finish` (end
/// barrier, exit 0) or `hold` (wait for the watchdog to stop the process); TEST_DIST_SEED picks the payload;
/// TEST_DIST_SILENCE_MS shortens the liveness watch.
#[test]
#[ignore = "one rank of a group; the other tests run it in child processes"]
fn rank_body() {
    let get = |name: &str| std::env::var(name).ok();
    let Some(mode) = get("TEST_DIST_MODE") else {
        // Run by `cargo test -- --ignored` rather than by start(): nothing to be a rank of.
        eprintln!("rank_body only runs as a child process of the rendezvous tests");
        return;
    };
    let world = match World::from_env() {
        Ok(Some(world)) => world,
        other => panic!("rank_body needs the rank variables: {other:?}"),
    };
    let seed: u8 = get("TEST_DIST_SEED")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let liveness = match get("TEST_DIST_SILENCE_MS").and_then(|s| s.parse().ok()) {
        Some(ms) => Liveness {
            heartbeat: Duration::from_millis(ms / 5),
            silence: Duration::from_millis(ms),
        },
        None => Liveness::default(),
    };
    let joined = Group::join_with(
        &world,
        || Ok(payload_for(seed)),
        Duration::from_secs(JOIN_TIMEOUT_S),
        liveness,
    );
    let (group, payload) = match joined {
        Ok(joined) => joined,
        Err(e) => {
            eprintln!("join failed: {e}");
            std::process::exit(3);
        }
    };
    println!("payload {}", hex(&payload));
    match mode.as_str() {
        "hold" => {
            std::thread::sleep(Duration::from_secs(120));
            eprintln!("still running after 120 s");
            std::process::exit(4);
        }
        _ => {
            if let Err(e) = group.finish() {
                eprintln!("finish failed: {e}");
                std::process::exit(5);
            }
            println!("finished");
        }
    }
}

/// One rank's process and what it printed so far.
struct Rank {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(stream: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut text = into.lock().expect("output buffer");
            text.push_str(&line);
            text.push('\n');
        }
    })
}

fn start(world: &World, extra: &[(&str, String)]) -> Rank {
    let exe = std::env::current_exe().expect("the test executable");
    let mut command = Command::new(exe);
    command
        .args([
            "--exact",
            "rank_body",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in VARIABLES {
        command.env_remove(name);
    }
    command.envs(world.env());
    command.env("TEST_DIST_MODE", "finish");
    for (name, value) in extra {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("start a rank");
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let readers = vec![
        collect(
            child.stdout.take().expect("piped stdout"),
            Arc::clone(&stdout),
        ),
        collect(
            child.stderr.take().expect("piped stderr"),
            Arc::clone(&stderr),
        ),
    ];
    Rank {
        child,
        stdout,
        stderr,
        readers,
    }
}

impl Rank {
    /// Waits for the exit (killing the process after `limit`) and returns the exit code and both outputs.
    fn wait(mut self, limit: Duration) -> (Option<i32>, String, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("poll a rank") {
                break Some(status);
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for reader in self.readers {
            let _ = reader.join();
        }
        let out = self.stdout.lock().expect("stdout").clone();
        let err = self.stderr.lock().expect("stderr").clone();
        (status.and_then(|s| s.code()), out, err)
    }

    fn printed(&self, what: &str) -> bool {
        self.stdout.lock().expect("stdout").contains(what)
    }
}

fn world(rank: usize, world_size: usize, port: u16) -> World {
    World {
        rank,
        local_rank: rank,
        world_size,
        local_world_size: world_size,
        master_addr: "127.0.0.1".into(),
        master_port: port,
    }
}

/// Starts `world_size` ranks in the given order (rank 0 last, to exercise the connect retry).
fn start_group(world_size: usize, port: u16, extra: &[(&str, String)]) -> Vec<Rank> {
    let mut ranks: Vec<Option<Rank>> = (0..world_size).map(|_| None).collect();
    for rank in (0..world_size).rev() {
        ranks[rank] = Some(start(&world(rank, world_size, port), extra));
        std::thread::sleep(Duration::from_millis(100));
    }
    ranks.into_iter().flatten().collect()
}

fn wait_until_joined(ranks: &[Rank]) {
    let start = Instant::now();
    while !ranks.iter().all(|r| r.printed("payload ")) {
        assert!(
            start.elapsed() < Duration::from_secs(JOIN_TIMEOUT_S),
            "the ranks did not join"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_group_of_one_gets_its_own_payload() {
    let world = world(0, 1, 1);
    let (group, payload) =
        Group::join(&world, || Ok(payload_for(9)), Duration::from_secs(1)).expect("join alone");
    assert_eq!(payload, payload_for(9));
    assert_eq!(group.world(), &world);
    group.finish().expect("finish alone");
}

#[test]
fn three_ranks_share_the_payload_and_finish_cleanly() {
    let port = free_port().expect("a free port");
    let ranks = start_group(3, port, &[("TEST_DIST_SEED", "42".into())]);
    let want = hex(&payload_for(42));
    for (rank, process) in ranks.into_iter().enumerate() {
        let (code, out, err) = process.wait(Duration::from_secs(30));
        assert_eq!(code, Some(0), "rank {rank} failed:\n{out}\n{err}");
        // libtest prints "test rank_body ... " before the body's first line.
        let got: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_once("payload ").map(|(_, hex)| hex))
            .collect();
        assert_eq!(got, [want.as_str()], "rank {rank}'s payload");
        assert!(
            out.contains("finished"),
            "rank {rank} did not pass the barrier:\n{out}"
        );
    }
}

#[test]
fn a_world_size_mismatch_fails_both_sides() {
    let port = free_port().expect("a free port");
    let leader = start(&world(0, 2, port), &[]);
    let other = start(&world(1, 3, port), &[]);
    let message = "rank 1 has WORLD_SIZE=3 but rank 0 has WORLD_SIZE=2";
    for (rank, process) in [leader, other].into_iter().enumerate() {
        let (code, out, err) = process.wait(Duration::from_secs(30));
        assert_eq!(code, Some(3), "rank {rank}:\n{out}\n{err}");
        assert!(err.contains(message), "rank {rank} says:\n{err}");
    }
}

#[test]
fn a_duplicate_rank_fails_every_rank() {
    let port = free_port().expect("a free port");
    let ranks = vec![
        start(&world(1, 3, port), &[]),
        start(&world(1, 3, port), &[]),
        start(&world(0, 3, port), &[]),
    ];
    for (i, process) in ranks.into_iter().enumerate() {
        let (code, out, err) = process.wait(Duration::from_secs(30));
        assert_eq!(code, Some(3), "process {i}:\n{out}\n{err}");
        assert!(
            err.contains("two processes claim RANK=1 (WORLD_SIZE=3)"),
            "process {i} says:\n{err}"
        );
    }
}

/// Kills `victim` once every rank has joined and checks that each other rank stops with EXIT_PEER_LOST,
/// naming the victim, well within the 60 s that the issue allows.
fn kill_and_watch(victim: usize, extra: &[(&str, String)], signal: i32, cause: &str) {
    let port = free_port().expect("a free port");
    let mut extra = extra.to_vec();
    extra.push(("TEST_DIST_MODE", "hold".into()));
    let mut ranks = start_group(3, port, &extra);
    wait_until_joined(&ranks);
    let pid = libc::pid_t::try_from(ranks[victim].child.id()).expect("a pid");
    // SAFETY: kill(2) on a child process of this test that has not been waited for.
    assert_eq!(
        unsafe { libc::kill(pid, signal) },
        0,
        "signal rank {victim}"
    );
    let killed = Instant::now();
    let victim_process = ranks.remove(victim);
    for (i, process) in ranks.into_iter().enumerate() {
        let rank = if i < victim { i } else { i + 1 };
        let (code, out, err) = process.wait(Duration::from_secs(60));
        let took = killed.elapsed();
        assert_eq!(code, Some(EXIT_PEER_LOST), "rank {rank}:\n{out}\n{err}");
        let message = format!("rank {victim} of 3 exited or lost contact (");
        assert!(err.contains(&message), "rank {rank} says:\n{err}");
        assert!(
            err.contains(cause),
            "rank {rank} does not say {cause:?}:\n{err}"
        );
        assert!(
            err.contains(&format!("; stopping rank {rank}")),
            "rank {rank} says:\n{err}"
        );
        assert!(took < Duration::from_secs(10), "rank {rank} took {took:?}");
    }
    let mut victim_process = victim_process;
    let _ = victim_process.child.kill();
    let _ = victim_process.wait(Duration::from_secs(10));
}

#[test]
fn a_killed_rank_stops_every_other_rank() {
    kill_and_watch(1, &[], libc::SIGKILL, "connection closed");
}

#[test]
fn a_killed_leader_stops_every_other_rank() {
    kill_and_watch(0, &[], libc::SIGKILL, "connection closed");
}

#[test]
fn a_silent_rank_is_lost_after_the_silence_limit() {
    // SIGSTOP keeps the sockets open but stops the heartbeats, as a host that vanished without closing.
    kill_and_watch(
        2,
        &[("TEST_DIST_SILENCE_MS", "1500".into())],
        libc::SIGSTOP,
        "silent for 1.5s",
    );
}

/// A loopback port held by a socket that is bound but never listens: connecting to it is refused, and no other
/// test's rank 0 can take it meanwhile. The socket closes when the returned descriptor is dropped.
fn refusing_port() -> (std::os::fd::OwnedFd, u16) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a fresh descriptor, checked; the address structs are zeroed then filled.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let bound = libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), len);
        assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
        let mut got: libc::sockaddr_in = std::mem::zeroed();
        let mut got_len = len;
        let named = libc::getsockname(
            fd,
            (&mut got as *mut libc::sockaddr_in).cast(),
            &mut got_len,
        );
        assert_eq!(named, 0, "getsockname: {}", std::io::Error::last_os_error());
        (owned, u16::from_be(got.sin_port))
    }
}

#[test]
fn a_connect_timeout_names_the_address() {
    let (_held, port) = refusing_port();
    let started = Instant::now();
    let error = match Group::join(
        &world(1, 2, port),
        || Ok(Vec::new()),
        Duration::from_millis(500),
    ) {
        Err(e) => e,
        Ok(_) => panic!("joined a group with no rank 0"),
    };
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(error, DistError::ConnectTimeout { rank: 1, .. }),
        "{error}"
    );
    let text = error.to_string();
    assert!(
        text.contains(&format!("could not connect to rank 0 at 127.0.0.1:{port}")),
        "{text}"
    );
}

#[test]
fn a_leader_alone_names_the_missing_ranks() {
    let port = free_port().expect("a free port");
    let error = match Group::join(
        &world(0, 3, port),
        || Ok(Vec::new()),
        Duration::from_millis(300),
    ) {
        Err(e) => e,
        Ok(_) => panic!("rank 0 formed a group alone"),
    };
    let text = error.to_string();
    assert!(
        text.contains(&format!(
            "ranks [1, 2] of 3 did not join at 127.0.0.1:{port}"
        )),
        "{text}"
    );
}
