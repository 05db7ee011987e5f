//! Precision conversion on the device (kernels/cuda/convert.cu): f32 to and from bf16/f16, rounding to nearest
//! even as the `half` crate does on the CPU, so a tensor converted on either side is bit-identical.

use super::float::Half;
use super::{CudaSlice, DeviceRepr, Gpu, GpuError, LaunchConfig, PushKernelArg};

const SOURCE: super::KernelSource = crate::cuda_source!("convert");
const THREADS: u32 = 256;

/// `input` rounded to `H`.
pub fn from_f32<H: Half>(gpu: &Gpu, input: &CudaSlice<f32>) -> Result<CudaSlice<H>, GpuError> {
    let mut out = gpu.alloc::<H>(input.len())?;
    launch(gpu, &format!("f32_to_{}", H::SUFFIX), &mut out, input)?;
    Ok(out)
}

/// `input` widened to f32.
pub fn to_f32<H: Half>(gpu: &Gpu, input: &CudaSlice<H>) -> Result<CudaSlice<f32>, GpuError> {
    let mut out = gpu.alloc::<f32>(input.len())?;
    launch(gpu, &format!("{}_to_f32", H::SUFFIX), &mut out, input)?;
    Ok(out)
}

fn launch<A: DeviceRepr, B: DeviceRepr>(
    gpu: &Gpu,
    kernel: &str,
    out: &mut CudaSlice<A>,
    input: &CudaSlice<B>,
) -> Result<(), GpuError> {
    let n = input.len();
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&SOURCE, kernel)?;
    let blocks = n
        .div_ceil(THREADS as usize * 4)
        .min(gpu.sm_count() as usize * 32) as u32;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let len = n as i64;
    // SAFETY: `out` and `input` hold `n` elements each, the types the kernel takes.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(out)
            .arg(input)
            .arg(&len)
            .launch(cfg)
    }?;
    Ok(())
}
