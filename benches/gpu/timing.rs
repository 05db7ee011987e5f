//! The bench's timing (olive_kernels::cuda::timing at its repetitions, and the same calls replayed from a CUDA
//! graph) and its reference points as calls to time: a plain read of device memory, the GEMV's reads alone, an empty
//! kernel.

use olive_kernels::cuda::timing::{self, Reps};
use olive_kernels::cuda::{
    CudaSlice, Edges, Gpu, GpuError, KernelSource, LaunchConfig, PushKernelArg,
};

pub const SOURCE: KernelSource = KernelSource {
    file: "../../benches/gpu/membench.cu",
    code: include_str!("membench.cu"),
    arch_specific: false,
};

/// Bytes the rotated copies of an operand must exceed, so that no timing reads it from the L2 (an H100's or H200's
/// is 50 MB).
pub const ROTATE_BYTES: usize = 120 << 20;

/// Copies of an operand of `bytes` that together pass [`ROTATE_BYTES`], at most 32.
pub fn rotated_copies(bytes: usize) -> usize {
    ROTATE_BYTES.div_ceil(bytes).clamp(1, 32)
}

/// The bench's repetitions: 5 untimed calls, then 60 timed one by one.
pub const REPS: Reps = Reps {
    warmup: 5,
    timed: 60,
};

/// Median device time of one call of `f` in microseconds over [`REPS`] (`f(i)` gets the call's number).
pub fn median_us(gpu: &Gpu, f: impl FnMut(usize) -> Result<(), GpuError>) -> Result<f64, GpuError> {
    timing::median_us(gpu, REPS, f)
}

/// Calls captured into one CUDA graph by [`graph_us`].
const GRAPH_CALLS: usize = 20;
/// Replays of that graph timed one by one.
const GRAPH_REPLAYS: Reps = Reps {
    warmup: 2,
    timed: 15,
};

/// Device time of one call of `f` with [`GRAPH_CALLS`] calls (`f(i)` gets the call's number) captured into a CUDA
/// graph and the graph replayed: the calls follow each other with no host launch and no timing event between them,
/// as in a captured model step. Median over [`GRAPH_REPLAYS`], divided by the calls.
fn graph_us(gpu: &Gpu, f: impl FnMut(usize) -> Result<(), GpuError>) -> Result<f64, GpuError> {
    graph_calls_us(gpu, GRAPH_CALLS, f)
}

/// [`graph_us`] with `calls` calls in the graph (at least one).
pub fn graph_calls_us(
    gpu: &Gpu,
    calls: usize,
    mut f: impl FnMut(usize) -> Result<(), GpuError>,
) -> Result<f64, GpuError> {
    for i in 0..REPS.warmup {
        f(i)?;
    }
    let calls = calls.max(1);
    let graph = gpu.capture(Edges::InOrder, || (0..calls).try_for_each(&mut f))?;
    let t = timing::median_us(gpu, GRAPH_REPLAYS, |_| gpu.replay(&graph))?;
    Ok(t / calls as f64)
}

/// [`median_us`] and [`graph_us`] of the same calls: µs one launch at a time and from a graph.
pub fn both_us(
    gpu: &Gpu,
    mut f: impl FnMut(usize) -> Result<(), GpuError>,
) -> Result<(f64, f64), GpuError> {
    Ok((median_us(gpu, &mut f)?, graph_us(gpu, &mut f)?))
}

/// A launch of the empty kernel (what any launch costs in these timings), as a call for the timings above.
pub fn empty_call(gpu: &Gpu) -> Result<impl FnMut(usize) -> Result<(), GpuError> + '_, GpuError> {
    let f = gpu.function(&SOURCE, "empty")?;
    let one = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    Ok(move |_| {
        // SAFETY: the empty kernel takes no arguments and touches no memory.
        unsafe { gpu.stream().launch_builder(&f).launch(one) }?;
        Ok(())
    })
}

/// A read of one of `bufs` (call i reads `bufs[i % len]`) with the plain read kernel, as a call for the timings
/// above; `sink` takes a word a thread (at least 8 blocks of 256 a multiprocessor).
pub fn read_call<'a>(
    gpu: &'a Gpu,
    bufs: &'a [CudaSlice<u32>],
    sink: &'a mut CudaSlice<u32>,
) -> Result<impl FnMut(usize) -> Result<(), GpuError> + 'a, GpuError> {
    let f = gpu.function(&SOURCE, "read_bytes")?;
    let threads = 256u32;
    let blocks = gpu.sm_count() * 8;
    assert!(sink.len() >= (threads * blocks) as usize, "sink too small");
    Ok(move |i: usize| {
        let buf = &bufs[i % bufs.len()];
        let n16 = (buf.len() / 4) as i64;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: buf holds n16 16-byte vectors (len a multiple of 4 words), sink one word per thread.
        unsafe {
            gpu.stream()
                .launch_builder(&f)
                .arg(&mut *sink)
                .arg(buf)
                .arg(&n16)
                .launch(cfg)
        }?;
        Ok(())
    })
}

/// The GEMV's reads alone (`read_tiles`) as a call for the timings above: the weight tiles of an `n` x `k` int4
/// matrix in one of `bufs` (each at least n * k / 2 bytes; call i reads `bufs[i % len]`), one block of 16 warps a
/// tile, in the tiles' own order or chunk-major; `sink` takes a word a thread (n / 16 blocks of 512).
pub fn read_tiles_call<'a>(
    gpu: &'a Gpu,
    bufs: &'a [CudaSlice<u32>],
    sink: &'a mut CudaSlice<u32>,
    (n, k): (usize, usize),
    chunk_major: bool,
) -> Result<impl FnMut(usize) -> Result<(), GpuError> + 'a, GpuError> {
    let f = gpu.function(&SOURCE, "read_tiles")?;
    let (ntiles, nchunks, chunk_major) = (n / 16, (k / 64) as i32, i32::from(chunk_major));
    assert!(sink.len() >= ntiles * 512, "sink too small");
    assert!(
        bufs.iter().all(|b| b.len() * 4 >= n * k / 2),
        "buffer too small"
    );
    Ok(move |i: usize| {
        let cfg = LaunchConfig {
            grid_dim: (ntiles as u32, 1, 1),
            block_dim: (512, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the buffer holds the n / 16 x k / 64 tiles of 512 bytes read, sink one word per thread.
        unsafe {
            gpu.stream()
                .launch_builder(&f)
                .arg(&mut *sink)
                .arg(&bufs[i % bufs.len()])
                .arg(&nchunks)
                .arg(&chunk_major)
                .launch(cfg)
        }?;
        Ok(())
    })
}
