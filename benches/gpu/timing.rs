//! Device-side timing: CUDA events between consecutive launches of the timed function, queued behind a spin kernel
//! so the host is ahead of the GPU and the events see kernel time only; the median over the repetitions.

use cudarc::driver::sys::CUevent_flags;
use olive_kernels::cuda::{CudaSlice, Gpu, GpuError, KernelSource, LaunchConfig, PushKernelArg};

pub const SOURCE: KernelSource = KernelSource {
    file: "../../benches/gpu/membench.cu",
    code: include_str!("membench.cu"),
};

/// Launches after the warm-up, timed one by one.
const REPS: usize = 60;
/// Untimed launches first (module load, cuBLAS heuristics, clocks up).
const WARMUP: usize = 5;
/// Spin before the timed launches: longer than the host takes to queue them (~10 µs each).
const SPIN_CYCLES: i64 = 8_000_000;

/// Median device time of one call of `f` in microseconds; `f(i)` gets the repetition number (to rotate inputs).
pub fn median_us(
    gpu: &Gpu,
    mut f: impl FnMut(usize) -> Result<(), GpuError>,
) -> Result<f64, GpuError> {
    for i in 0..WARMUP {
        f(i)?;
    }
    let spin = gpu.function(&SOURCE, "spin")?;
    let one = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the spin kernel takes one i64 and touches no memory.
    unsafe {
        gpu.stream()
            .launch_builder(&spin)
            .arg(&SPIN_CYCLES)
            .launch(one)
    }?;
    let stream = gpu.stream();
    let mut events = Vec::with_capacity(REPS + 1);
    events.push(stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?);
    for i in 0..REPS {
        f(WARMUP + i)?;
        events.push(stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?);
    }
    gpu.synchronize()?;
    let mut times = events
        .windows(2)
        .map(|w| w[0].elapsed_ms(&w[1]).map(|ms| f64::from(ms) * 1e3))
        .collect::<Result<Vec<f64>, _>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Reads of `bytes`-sized buffers (rotating over `bufs`) with the plain read kernel: median µs per read.
pub fn read_us(
    gpu: &Gpu,
    bufs: &[CudaSlice<u32>],
    sink: &mut CudaSlice<u32>,
) -> Result<f64, GpuError> {
    let f = gpu.function(&SOURCE, "read_bytes")?;
    let threads = 256u32;
    let blocks = gpu.sm_count() * 8;
    assert!(sink.len() >= (threads * blocks) as usize, "sink too small");
    median_us(gpu, |i| {
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
