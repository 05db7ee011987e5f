//! Greedy token choice on the GPU (kernels/cuda/argmax.cu): [`fn@crate::cpu::argmax`] of each row, so that a greedy
//! decode step brings one index back to the host instead of its logits.

use super::float::as_i32;
use super::{CudaSlice, CudaView, Gpu, GpuError, LaunchConfig, PushKernelArg};

const SOURCE: super::KernelSource = crate::cuda_source!("argmax");
/// Threads a row (argmax.cu's THREADS).
const THREADS: u32 = 1024;

/// out[r] = [`fn@crate::cpu::argmax`] of row r of x: [out.len(), n].
pub fn argmax_rows(
    gpu: &Gpu,
    x: &CudaView<'_, f32>,
    n: usize,
    out: &mut CudaSlice<u32>,
) -> Result<(), GpuError> {
    let rows = out.len();
    if n == 0 || x.len() != rows * n {
        return Err(GpuError::Shape(format!(
            "argmax: {} logits are not {rows} rows of {n} > 0",
            x.len()
        )));
    }
    if rows == 0 {
        return Ok(());
    }
    let f = gpu.function(&SOURCE, "argmax_rows")?;
    let cfg = LaunchConfig {
        grid_dim: (as_i32(rows, "argmax: rows")? as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let n = as_i32(n, "argmax: row length")?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(x).arg(&n).arg(out);
    // SAFETY: x holds rows·n floats, out rows indices.
    unsafe { launch.launch(cfg) }?;
    Ok(())
}
