//! AdamW on the GPU (kernels/cuda/adamw.cu): torch.optim.AdamW's step fused over fp32 params, grads and moments,
//! with clip_grad_norm_'s coefficient applied to the grads on the way, and the global gradient norm (an f64 sum
//! of squares over any number of tensors). The same step as [`crate::cpu::adamw_update`], with the scalars of
//! [`crate::cpu::AdamW::at_step`].

use super::{CudaSlice, Gpu, GpuError, LaunchConfig, PushKernelArg};
use crate::cpu::AdamWStep;

const SOURCE: super::KernelSource = crate::cuda_source!("adamw");
const THREADS: u32 = 256;

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

/// One AdamW step of `p` with gradients `g · grad_scale` (grad_scale = [`crate::cpu::clip_coefficient`], or 1)
/// and moments `m`, `v`, all [n] in f32.
pub fn adamw(
    gpu: &Gpu,
    p: &mut CudaSlice<f32>,
    g: &CudaSlice<f32>,
    m: &mut CudaSlice<f32>,
    v: &mut CudaSlice<f32>,
    step: &AdamWStep,
    grad_scale: f32,
) -> Result<(), GpuError> {
    let n = p.len();
    if g.len() != n || m.len() != n || v.len() != n {
        return Err(GpuError::Shape(format!(
            "adamw: p, g, m and v have {n}, {}, {} and {} elements",
            g.len(),
            m.len(),
            v.len()
        )));
    }
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&SOURCE, "adamw_f32")?;
    let len = n as i64;
    let (one_minus_b1, one_minus_b2) = (1.0 - step.beta1, 1.0 - step.beta2);
    // SAFETY: p, g, m and v hold n floats each.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(p)
            .arg(g)
            .arg(m)
            .arg(v)
            .arg(&len)
            .arg(&step.decay)
            .arg(&one_minus_b1)
            .arg(&step.beta2)
            .arg(&one_minus_b2)
            .arg(&step.step_size)
            .arg(&step.bc2_sqrt)
            .arg(&step.eps)
            .arg(&grad_scale)
            .launch(config(gpu, n.div_ceil(4)))
    }?;
    Ok(())
}

/// √(Σ over `grads` of Σ g²), summed in f64 on the device (waits for the stream to read it back).
pub fn global_norm(gpu: &Gpu, grads: &[&CudaSlice<f32>]) -> Result<f64, GpuError> {
    let mut acc = gpu.alloc::<f64>(1)?;
    let f = gpu.function(&SOURCE, "sum_squares_f32")?;
    for g in grads.iter().filter(|g| !g.is_empty()) {
        let len = g.len() as i64;
        // SAFETY: g holds len floats; acc one double.
        unsafe {
            gpu.stream()
                .launch_builder(&f)
                .arg(*g)
                .arg(&len)
                .arg(&mut acc)
                .launch(config(gpu, g.len()))
        }?;
    }
    Ok(gpu.download(&acc)?[0].sqrt())
}
