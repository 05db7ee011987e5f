//! The bench's timing (olive_kernels::cuda::timing at its repetitions) and its reference point: a plain read of
//! device memory.

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
