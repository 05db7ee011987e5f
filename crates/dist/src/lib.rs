//! Data-parallel work over several processes, one per GPU, as torchrun lays it out: each process learns its rank
//! from the environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), meets the
//! others at rank 0's address, and then talks through NCCL.

pub mod error;
pub mod library;
pub mod nccl;
pub mod rendezvous;
pub mod world;

pub use error::{DistError, Result};
pub use library::{find_nccl_with, nccl_loader_dir, nccl_loader_dir_with};
pub use rendezvous::{Group, Liveness, EXIT_PEER_LOST};
pub use world::{free_port, World, VARIABLES};
