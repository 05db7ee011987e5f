//! The rank layout of one process, read from torchrun's environment variables (RANK, LOCAL_RANK, WORLD_SIZE,
//! LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), and the launcher's side: the variables to set and a free port.

use std::net::TcpListener;

use crate::error::{DistError, Result};

/// The variables that make a process one rank of a group; a single-GPU run removes them from a worker's
/// environment so that a stray WORLD_SIZE never makes it distributed.
pub const VARIABLES: [&str; 6] = [
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
];

/// Where this process stands among the ranks: global and per-host positions and rank 0's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    /// Global rank, `0..world_size`; rank 0 leads the rendezvous and alone writes outputs.
    pub rank: usize,
    /// Rank on this host, `0..local_world_size`: the GPU ordinal this process uses.
    pub local_rank: usize,
    /// Number of ranks over all hosts.
    pub world_size: usize,
    /// Number of ranks on this host.
    pub local_world_size: usize,
    /// Host name or IP address where rank 0 listens.
    pub master_addr: String,
    /// TCP port where rank 0 listens.
    pub master_port: u16,
}

impl World {
    /// Reads the rank layout from the process environment; see [`World::from_vars`].
    pub fn from_env() -> Result<Option<World>> {
        World::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the rank layout through `get` (a variable's value, `None` when unset). `None` when WORLD_SIZE is
    /// unset, or is 1 with RANK unset (a plain single process); otherwise every variable of [`VARIABLES`] must
    /// be set and consistent, and the error names the first one that is not.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<World>> {
        let Some(world_size) = get("WORLD_SIZE") else {
            return Ok(None);
        };
        let world_size = parse_count("WORLD_SIZE", &world_size, "a number of ranks, at least 1")?;
        if world_size == 1 && get("RANK").is_none() {
            return Ok(None);
        }
        let need = |name: &'static str| {
            get(name).ok_or_else(|| DistError::MissingVariable {
                name,
                why: format!(
                    "WORLD_SIZE={world_size} is set, so this process is one rank of a group and needs all of {}",
                    VARIABLES.join(", ")
                ),
            })
        };
        let rank = parse_count("RANK", &need("RANK")?, "a rank, 0 or more")?;
        let local_rank = parse_count(
            "LOCAL_RANK",
            &need("LOCAL_RANK")?,
            "a rank on this host, 0 or more",
        )?;
        let local_world_size = parse_count(
            "LOCAL_WORLD_SIZE",
            &need("LOCAL_WORLD_SIZE")?,
            "a number of ranks on this host, at least 1",
        )?;
        let master_addr = need("MASTER_ADDR")?.trim().to_string();
        let port = need("MASTER_PORT")?;
        let master_port = match port.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(DistError::BadVariable {
                    name: "MASTER_PORT",
                    value: port,
                    expected: "a TCP port, 1 to 65535".into(),
                })
            }
        };
        let world = World {
            rank,
            local_rank,
            world_size,
            local_world_size,
            master_addr,
            master_port,
        };
        world.check()?;
        Ok(Some(world))
    }

    /// Checks that the fields fit together (the launcher builds Worlds directly); the error names the variable.
    pub fn check(&self) -> Result<()> {
        let bad = |name: &'static str, value: usize, expected: String| {
            Err(DistError::BadVariable {
                name,
                value: value.to_string(),
                expected,
            })
        };
        if self.world_size == 0 {
            return bad("WORLD_SIZE", 0, "a number of ranks, at least 1".into());
        }
        if self.local_world_size == 0 {
            return bad(
                "LOCAL_WORLD_SIZE",
                0,
                "a number of ranks on this host, at least 1".into(),
            );
        }
        if self.rank >= self.world_size {
            return bad(
                "RANK",
                self.rank,
                format!("less than WORLD_SIZE={}", self.world_size),
            );
        }
        if self.local_world_size > self.world_size {
            return bad(
                "LOCAL_WORLD_SIZE",
                self.local_world_size,
                format!("at most WORLD_SIZE={}", self.world_size),
            );
        }
        if self.local_rank >= self.local_world_size {
            return bad(
                "LOCAL_RANK",
                self.local_rank,
                format!("less than LOCAL_WORLD_SIZE={}", self.local_world_size),
            );
        }
        if self.master_addr.is_empty() {
            return Err(DistError::BadVariable {
                name: "MASTER_ADDR",
                value: String::new(),
                expected: "the host name or IP address of rank 0".into(),
            });
        }
        if self.master_port == 0 {
            return bad("MASTER_PORT", 0, "a TCP port, 1 to 65535".into());
        }
        Ok(())
    }

    /// The variables (names of [`VARIABLES`], same order) that the launcher sets for this rank's process.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("RANK", self.rank.to_string()),
            ("LOCAL_RANK", self.local_rank.to_string()),
            ("WORLD_SIZE", self.world_size.to_string()),
            ("LOCAL_WORLD_SIZE", self.local_world_size.to_string()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", self.master_port.to_string()),
        ]
    }

    /// Whether this is global rank 0 (the rendezvous leader, the one rank that writes outputs).
    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    /// `MASTER_ADDR:MASTER_PORT` as written in messages (IPv6 literals in brackets).
    pub fn master(&self) -> String {
        if self.master_addr.contains(':') {
            format!("[{}]:{}", self.master_addr, self.master_port)
        } else {
            format!("{}:{}", self.master_addr, self.master_port)
        }
    }
}

/// A TCP port free on 127.0.0.1 now, for MASTER_PORT of a single-host group. Another process may take it before
/// rank 0 binds it; rank 0's bind error then names the address.
pub fn free_port() -> Result<u16> {
    let io = |source| DistError::Io {
        path: "127.0.0.1:0".into(),
        source,
    };
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(io)?;
    Ok(listener.local_addr().map_err(io)?.port())
}

fn parse_count(name: &'static str, value: &str, expected: &str) -> Result<usize> {
    let bad = || DistError::BadVariable {
        name,
        value: value.to_string(),
        expected: expected.to_string(),
    };
    let n = value.trim().parse::<usize>().map_err(|_| bad())?;
    if n == 0 && name.ends_with("WORLD_SIZE") {
        return Err(bad());
    }
    Ok(n)
}
