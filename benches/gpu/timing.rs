//! The bench's timing (olive_kernels::cuda::timing at its repetitions, and the same calls replayed from a CUDA
//! graph) and its reference points: a plain read of device memory, an empty kernel.

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use olive_kernels::cuda::timing::{self, Reps};
use olive_kernels::cuda::{CudaSlice, Gpu, GpuError, KernelSource, LaunchConfig, PushKernelArg};

pub const SOURCE: KernelSource = KernelSource {
    file: "../../benches/gpu/membench.cu",
    code: include_str!("membench.cu"),
    arch_specific: false,
};

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
pub fn graph_us(
    gpu: &Gpu,
    mut f: impl FnMut(usize) -> Result<(), GpuError>,
) -> Result<f64, GpuError> {
    for i in 0..REPS.warmup {
        f(i)?;
    }
    let stream = gpu.stream();
    stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)?;
    let captured = (0..GRAPH_CALLS).try_for_each(&mut f);
    // The capture ends whether or not a call failed, so the stream is usable again.
    let graph = stream.end_capture(CUgraphInstantiate_flags(0));
    captured?;
    let graph =
        graph?.ok_or_else(|| GpuError::Shape("graph_us: the capture recorded nothing".into()))?;
    graph.upload()?;
    let t = timing::median_us(gpu, GRAPH_REPLAYS, |_| Ok(graph.launch()?))?;
    Ok(t / GRAPH_CALLS as f64)
}

/// An empty kernel's time, one launch at a time ([`median_us`]) and from a graph ([`graph_us`]): what any launch
/// costs in these timings.
pub fn empty_us(gpu: &Gpu) -> Result<(f64, f64), GpuError> {
    let f = gpu.function(&SOURCE, "empty")?;
    let one = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the empty kernel takes no arguments and touches no memory.
    let mut launch = |_| -> Result<(), GpuError> {
        unsafe { gpu.stream().launch_builder(&f).launch(one) }?;
        Ok(())
    };
    Ok((median_us(gpu, &mut launch)?, graph_us(gpu, &mut launch)?))
}

/// Reads of `bytes`-sized buffers (rotating over `bufs`) with the plain read kernel: µs per read, one launch at a time
/// ([`median_us`]) and from a graph ([`graph_us`]).
pub fn read_us(
    gpu: &Gpu,
    bufs: &[CudaSlice<u32>],
    sink: &mut CudaSlice<u32>,
) -> Result<(f64, f64), GpuError> {
    let f = gpu.function(&SOURCE, "read_bytes")?;
    let threads = 256u32;
    let blocks = gpu.sm_count() * 8;
    assert!(sink.len() >= (threads * blocks) as usize, "sink too small");
    let mut read = |i: usize| -> Result<(), GpuError> {
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
    };
    Ok((median_us(gpu, &mut read)?, graph_us(gpu, &mut read)?))
}

/// The GEMV's reads alone ([`SOURCE`]'s `read_tiles`): the weight tiles of an `n` x `k` int4 matrix in `bufs` (each
/// at least n * k / 2 bytes, rotated), one block of 16 warps a tile; in the tiles' own order and chunk-major. µs a
/// call, (tile order, tile order from a graph, chunk-major, chunk-major from a graph).
pub fn read_tiles_us(
    gpu: &Gpu,
    bufs: &[CudaSlice<u32>],
    sink: &mut CudaSlice<u32>,
    (n, k): (usize, usize),
) -> Result<[f64; 4], GpuError> {
    let f = gpu.function(&SOURCE, "read_tiles")?;
    let (ntiles, nchunks) = (n / 16, (k / 64) as i32);
    assert!(sink.len() >= ntiles * 512, "sink too small");
    let mut times = [0.0; 4];
    for (chunk_major, out) in [(0i32, 0usize), (1, 2)] {
        let mut read = |i: usize| -> Result<(), GpuError> {
            let buf = &bufs[i % bufs.len()];
            assert!(buf.len() * 4 >= n * k / 2, "buffer too small");
            let cfg = LaunchConfig {
                grid_dim: (ntiles as u32, 1, 1),
                block_dim: (512, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: buf holds the n / 16 x k / 64 tiles of 512 bytes read, sink one word per thread.
            unsafe {
                gpu.stream()
                    .launch_builder(&f)
                    .arg(&mut *sink)
                    .arg(buf)
                    .arg(&nchunks)
                    .arg(&chunk_major)
                    .launch(cfg)
            }?;
            Ok(())
        };
        times[out] = median_us(gpu, &mut read)?;
        times[out + 1] = graph_us(gpu, &mut read)?;
    }
    Ok(times)
}
