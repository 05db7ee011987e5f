//! Errors of olive-dist: each names the variable, address, rank or path at fault and what was expected.

use std::path::PathBuf;
use std::time::Duration;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, DistError>;

/// What went wrong while reading the rank layout, meeting the other ranks or finding NCCL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DistError {
    /// An environment variable holds a value that does not fit.
    #[error("{name}={value:?}: expected {expected}")]
    BadVariable {
        name: &'static str,
        value: String,
        expected: String,
    },
    /// An environment variable that the rank layout needs is not set.
    #[error("{name} is not set: {why}")]
    MissingVariable { name: &'static str, why: String },
    /// Rank 0 could not listen on the rendezvous address.
    #[error("rank 0: cannot listen on {addr} (MASTER_ADDR:MASTER_PORT): {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// The rendezvous address does not resolve to a socket address.
    #[error("rank {rank}: MASTER_ADDR:MASTER_PORT {addr} does not resolve: {reason}")]
    Resolve {
        addr: String,
        rank: usize,
        reason: String,
    },
    /// A rank could not reach rank 0 before the timeout.
    #[error("rank {rank}: could not connect to rank 0 at {addr} (MASTER_ADDR:MASTER_PORT) within {timeout:?}: {last}")]
    ConnectTimeout {
        addr: String,
        rank: usize,
        timeout: Duration,
        last: String,
    },
    /// Rank 0 waited in vain for some ranks to join.
    #[error("rank 0: ranks {missing:?} of {world_size} did not join at {addr} within {timeout:?}")]
    JoinTimeout {
        addr: String,
        missing: Vec<usize>,
        world_size: usize,
        timeout: Duration,
    },
    /// A rank waited in vain for rank 0's payload after joining.
    #[error("rank {rank}: joined rank 0 at {addr} but got no reply within {timeout:?}")]
    PayloadTimeout {
        addr: String,
        rank: usize,
        timeout: Duration,
    },
    /// A rank says a different WORLD_SIZE from rank 0's.
    #[error("rank {rank} has WORLD_SIZE={theirs} but rank 0 has WORLD_SIZE={ours}: every rank must be started with the same WORLD_SIZE")]
    WorldSizeMismatch {
        rank: usize,
        theirs: usize,
        ours: usize,
    },
    /// Two processes claim the same rank.
    #[error(
        "two processes claim RANK={rank} (WORLD_SIZE={world_size}): each rank must be started once"
    )]
    DuplicateRank { rank: usize, world_size: usize },
    /// The other side speaks another rendezvous protocol (another olive-rs version, or not olive-rs at all).
    #[error("{addr}: rendezvous protocol mismatch: {detail}")]
    Protocol { addr: String, detail: String },
    /// Rank 0 refused this rank and said why.
    #[error("rank {rank}: rank 0 at {addr} refused the group: {reason}")]
    Rejected {
        addr: String,
        rank: usize,
        reason: String,
    },
    /// A connection to another rank failed.
    #[error("rank {rank}: connection to rank {peer} ({addr}) failed while {doing}: {source}")]
    Network {
        addr: String,
        rank: usize,
        peer: usize,
        doing: &'static str,
        source: std::io::Error,
    },
    /// Another rank exited or went silent.
    #[error("rank {peer} of {world_size} exited or lost contact ({cause}); stopping rank {rank}")]
    PeerLost {
        peer: usize,
        world_size: usize,
        rank: usize,
        cause: String,
    },
    /// The payload that rank 0 makes for the group (the NCCL unique id) could not be made.
    #[error("rank 0: cannot make the group's payload: {0}")]
    Payload(String),
    /// libnccl.so.2 is in none of the places searched.
    #[error(
        "libnccl.so.2 not found; looked in:\n  {}\nset OLIVE_NCCL_LIBRARY to the file, or install the nvidia-nccl-cu13 wheel (pip install nvidia-nccl-cu13) in the active Python environment",
        .looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join("\n  ")
    )]
    NcclNotFound { looked: Vec<PathBuf> },
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}
