//! SwiGLU's gating on the GPU (kernels/cuda/silu_mul.cu; Shazeer 2020): act = silu(gate) · up from the fused
//! [gate | up] rows, and its backward; the same functions as [`fn@crate::cpu::silu_mul`] and
//! [`crate::cpu::silu_mul_backward`].

use super::float::{as_i32, pack_width, Float};
use super::{CudaSlice, Gpu, GpuError, LaunchConfig, PushKernelArg};

const SOURCE: super::KernelSource = crate::cuda_source!("silu_mul");
const THREADS: u32 = 256;

/// Tokens of gate_up: [tokens, 2·inter], checking the shapes of the other operands (`others`: [tokens, k·inter]
/// with their k).
fn tokens_of(gate_up: usize, inter: usize, others: &[(usize, usize)]) -> Result<usize, GpuError> {
    let tokens = gate_up / (2 * inter).max(1);
    if inter == 0
        || gate_up != tokens * 2 * inter
        || others.iter().any(|&(len, k)| len != tokens * k * inter)
    {
        return Err(GpuError::Shape(format!(
            "silu_mul: gate_up has {gate_up} elements, the others {others:?} (elements, columns / inter); \
             expected [tokens, 2·{inter}] and [tokens, k·{inter}]"
        )));
    }
    Ok(tokens)
}

fn config(gpu: &Gpu, work: usize) -> LaunchConfig {
    let blocks = work
        .div_ceil(THREADS as usize)
        .clamp(1, gpu.sm_count() as usize * 16) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// act: [tokens, inter] = silu(gate) · up of gate_up: [tokens, 2·inter] (gate columns first).
pub fn silu_mul<T: Float>(
    gpu: &Gpu,
    gate_up: &CudaSlice<T>,
    inter: usize,
    act: &mut CudaSlice<T>,
) -> Result<(), GpuError> {
    let tokens = tokens_of(gate_up.len(), inter, &[(act.len(), 1)])?;
    if tokens == 0 {
        return Ok(());
    }
    let f = gpu.function(&SOURCE, &format!("silu_mul_{}", T::SUFFIX))?;
    let (t, i) = (tokens as i64, as_i32(inter, "silu_mul: inter")?);
    let cfg = config(gpu, tokens * inter / pack_width::<T>(inter));
    // SAFETY: gate_up holds tokens·2·inter elements and act tokens·inter, of the kernel's type.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(act)
            .arg(gate_up)
            .arg(&t)
            .arg(&i)
            .launch(cfg)
    }?;
    Ok(())
}

/// d_gate_up: [tokens, 2·inter] from d_act: [tokens, inter] and the forward's gate_up: [tokens, 2·inter].
pub fn silu_mul_backward<T: Float>(
    gpu: &Gpu,
    gate_up: &CudaSlice<T>,
    d_act: &CudaSlice<T>,
    inter: usize,
    d_gate_up: &mut CudaSlice<T>,
) -> Result<(), GpuError> {
    let tokens = tokens_of(
        gate_up.len(),
        inter,
        &[(d_act.len(), 1), (d_gate_up.len(), 2)],
    )?;
    if tokens == 0 {
        return Ok(());
    }
    let f = gpu.function(&SOURCE, &format!("silu_mul_backward_{}", T::SUFFIX))?;
    let (t, i) = (tokens as i64, as_i32(inter, "silu_mul: inter")?);
    let cfg = config(gpu, tokens * inter / pack_width::<T>(inter));
    // SAFETY: gate_up and d_gate_up hold tokens·2·inter elements, d_act tokens·inter, of the kernel's type.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(d_gate_up)
            .arg(gate_up)
            .arg(d_act)
            .arg(&t)
            .arg(&i)
            .launch(cfg)
    }?;
    Ok(())
}
