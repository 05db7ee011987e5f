//! The LoRA pass as one rank of a data-parallel run (`olive-host finetune --num_gpus N`, which starts one worker a
//! GPU with torchrun's variables): the rank trains on GPU LOCAL_RANK, meets the others through olive-dist's
//! rendezvous (rank 0's NCCL id, then the liveness watch), takes its rows of every global micro-batch as
//! transformers' Trainer does under torchrun (per_device_train_batch_size rows a rank), and hands its NCCL
//! communicator to the GPU trainer. Only rank 0 writes the adapter and the loss curve.

use std::sync::Arc;
use std::time::Duration;

use olive_data::Sample;
use olive_dist::nccl::{self, Comm};
use olive_dist::{DistError, Group, World};
use olive_kernels::cuda::Gpu;
use olive_pass_sdk::Error;

/// How long a rank waits for the others to reach the rendezvous (they load nothing before it).
const JOIN_TIMEOUT: Duration = Duration::from_secs(300);

/// This process's place in the run and its liveness link to the other ranks.
pub struct Rank {
    world: World,
    group: Group,
}

fn failed(e: impl std::fmt::Display) -> Error {
    Error::Failed(e.to_string())
}

impl Rank {
    /// The run's layout from the environment: None for a single-process run.
    pub fn layout() -> Result<Option<World>, Error> {
        World::from_env()
            .map(|w| w.filter(|w| w.world_size > 1))
            .map_err(|e| Error::InvalidConfig(format!("data-parallel layout: {e}")))
    }

    /// Meets the other ranks of `world` and joins their NCCL communicator on `gpu`.
    pub fn join(world: World, gpu: &Arc<Gpu>) -> Result<(Rank, Comm), Error> {
        let (group, id) = Group::join(
            &world,
            || nccl::unique_id().map_err(|e| DistError::Payload(e.to_string())),
            JOIN_TIMEOUT,
        )
        .map_err(failed)?;
        let comm = Comm::init(gpu.clone(), world.rank, world.world_size, &id).map_err(failed)?;
        Ok((Rank { world, group }, comm))
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    /// Whether this rank writes the outputs.
    pub fn is_leader(&self) -> bool {
        self.world.is_leader()
    }

    /// This rank's rows of a global micro-batch of `per_device` rows a rank.
    pub fn shard(&self, rows: Vec<Sample>, per_device: usize) -> Vec<Sample> {
        shard(rows, self.world.rank, per_device)
    }

    /// Waits until every rank is done (after rank 0 has written the outputs); leaving is then no failure.
    pub fn finish(self) -> Result<(), Error> {
        self.group.finish().map_err(failed)
    }
}

/// Rank `rank`'s rows of a global micro-batch: rows `rank·per_device ..` up to `per_device` of them (rank 0 the
/// first), as transformers' Trainer splits a batch over torchrun's ranks.
pub fn shard(mut rows: Vec<Sample>, rank: usize, per_device: usize) -> Vec<Sample> {
    let start = (rank * per_device).min(rows.len());
    let end = (start + per_device).min(rows.len());
    rows.truncate(end);
    rows.split_off(start)
}
