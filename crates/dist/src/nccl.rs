//! NCCL collectives between the ranks of a data-parallel run, through cudarc's bindings (NCCL opened at run time,
//! as the launcher's `nccl_loader_dir` makes it loadable): one communicator per rank on a stream of its own, so the
//! gradient all-reduces of the layers already done overlap the backward pass still running on the GPU's compute
//! stream. NCCL's all-reduce gives every rank the same bits, so ranks that apply the same update stay identical.

use std::sync::Arc;

use cudarc::nccl::{group_end, group_start, Comm as NcclComm, Id, ReduceOp};
use olive_kernels::cuda::{CudaSlice, CudaStream, Gpu, GpuError};

/// What went wrong in a collective.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommError {
    /// libnccl could not be opened by the names cudarc looks for.
    #[error(
        "NCCL (libnccl.so) is not on the loader path; olive-host's launcher puts it there for its workers \
         (OLIVE_NCCL_LIBRARY names the file where it is not found)"
    )]
    Unavailable,
    /// The unique id handed over by rank 0 is not NCCL's 128 bytes.
    #[error("the NCCL unique id from rank 0 has {0} bytes, not 128")]
    BadId(usize),
    /// An NCCL call failed.
    #[error("NCCL {op} failed on rank {rank} of {world_size}: {code}")]
    Nccl {
        op: &'static str,
        rank: usize,
        world_size: usize,
        code: String,
    },
    /// A CUDA call around a collective failed.
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

type Result<T> = std::result::Result<T, CommError>;

/// Fails with [`CommError::Unavailable`] where NCCL cannot be opened (cudarc would panic at the first call).
fn ensure_loaded() -> Result<()> {
    // SAFETY: only tries to dlopen the library by its names.
    if unsafe { cudarc::nccl::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(CommError::Unavailable)
    }
}

/// A new NCCL unique id (rank 0 makes it; the rendezvous hands it to the others).
pub fn unique_id() -> Result<Vec<u8>> {
    ensure_loaded()?;
    let id = Id::new().map_err(|e| CommError::Nccl {
        op: "ncclGetUniqueId",
        rank: 0,
        world_size: 0,
        code: format!("{e:?}"),
    })?;
    Ok(id.internal().iter().map(|&c| c as u8).collect())
}

/// This rank's NCCL communicator on `gpu`.
pub struct Comm {
    nccl: NcclComm,
    /// The communicator's stream (the GPU's compute stream is `gpu.stream()`).
    stream: Arc<CudaStream>,
    gpu: Arc<Gpu>,
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Comm(rank {} of {} on {:?})",
            self.rank(),
            self.world_size(),
            self.gpu
        )
    }
}

impl Comm {
    /// Joins the communicator of `world_size` ranks that rank 0's `id` names, as rank `rank`; blocks until every
    /// rank has joined.
    pub fn init(gpu: Arc<Gpu>, rank: usize, world_size: usize, id: &[u8]) -> Result<Comm> {
        ensure_loaded()?;
        let bytes: [u8; 128] = id.try_into().map_err(|_| CommError::BadId(id.len()))?;
        let id = Id::uninit(bytes.map(|b| b as std::ffi::c_char));
        let stream = gpu.context().new_stream().map_err(GpuError::from)?;
        let nccl = NcclComm::from_rank(stream.clone(), rank, world_size, id).map_err(|e| {
            CommError::Nccl {
                op: "ncclCommInitRank",
                rank,
                world_size,
                code: format!("{e:?}"),
            }
        })?;
        Ok(Comm { nccl, stream, gpu })
    }

    pub fn rank(&self) -> usize {
        self.nccl.rank()
    }

    pub fn world_size(&self) -> usize {
        self.nccl.world_size()
    }

    /// The GPU this rank runs on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    fn failed(&self, op: &'static str, e: impl std::fmt::Debug) -> CommError {
        CommError::Nccl {
            op,
            rank: self.rank(),
            world_size: self.world_size(),
            code: format!("{e:?}"),
        }
    }

    /// Queues the sum over the ranks of each of `buffers`, in place, as one NCCL group (one bucket), after the
    /// work queued on the GPU's compute stream so far. Returns at once; [`Comm::wait`] makes the compute stream
    /// wait for it.
    pub fn all_reduce_sum(&self, buffers: &mut [&mut CudaSlice<f32>]) -> Result<()> {
        self.stream
            .join(self.gpu.stream())
            .map_err(GpuError::from)?;
        group_start().map_err(|e| self.failed("ncclGroupStart", e))?;
        let mut queued = Ok(());
        for buffer in buffers.iter_mut() {
            if let Err(e) = self.nccl.all_reduce_in_place(*buffer, &ReduceOp::Sum) {
                queued = Err(self.failed("ncclAllReduce", e));
                break;
            }
        }
        // The group is closed even when a call in it failed.
        let ended = group_end()
            .map(|_| ())
            .map_err(|e| self.failed("ncclGroupEnd", e));
        queued.and(ended)
    }

    /// Makes the GPU's compute stream wait for every collective queued so far (the wait is on the stream itself:
    /// the GPU's buffers carry no per-buffer events, see `Gpu`).
    pub fn wait(&self) -> Result<()> {
        self.gpu
            .stream()
            .join(&self.stream)
            .map_err(GpuError::from)?;
        Ok(())
    }

    /// The sums over the ranks of a few host values (blocking; for counts and losses).
    pub fn sum_host(&self, values: &[f64]) -> Result<Vec<f64>> {
        let mut buffer = self.stream.clone_htod(values).map_err(GpuError::from)?;
        self.nccl
            .all_reduce_in_place(&mut buffer, &ReduceOp::Sum)
            .map_err(|e| self.failed("ncclAllReduce", e))?;
        Ok(self.stream.clone_dtoh(&buffer).map_err(GpuError::from)?)
    }

    /// Gives every rank rank 0's contents of `buffer` (after the compute stream's queued work; the compute
    /// stream waits for it).
    pub fn broadcast_from_leader(&self, buffer: &mut CudaSlice<f32>) -> Result<()> {
        self.stream
            .join(self.gpu.stream())
            .map_err(GpuError::from)?;
        self.nccl
            .broadcast_in_place(buffer, 0)
            .map_err(|e| self.failed("ncclBroadcast", e))?;
        self.wait()
    }
}
