//! Inverted dropout on the GPU (kernels/cuda/dropout.cu) with the counter-based mask olive-nn's LoRA trainer draws
//! on the CPU (its reference: `olive_nn::train`'s dropout mask; the GPU trainer's parity test trains with dropout
//! against it): element i kept when 16 bits of splitmix64(key ^ (i/4)·C) reach round(p·65536), kept elements
//! scaled by 1/(1−p). The mask is a function of (key, i): the backward applies the same mask to the gradient.

use super::float::Float;
use super::{CudaSlice, Gpu, GpuError, LaunchConfig, PushKernelArg};

const SOURCE: super::KernelSource = crate::cuda_source!("dropout");
const THREADS: u32 = 256;

/// A drawn mask: drop probability in [0, 1) and the stream's key.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutMask {
    pub p: f32,
    pub key: u64,
}

/// out = (out if `accumulate` else 0) + mask ⊙ x / (1 − p), out and x of the same length.
pub fn dropout<T: Float>(
    gpu: &Gpu,
    x: &CudaSlice<T>,
    mask: DropoutMask,
    out: &mut CudaSlice<T>,
    accumulate: bool,
) -> Result<(), GpuError> {
    if out.len() != x.len() || !(0.0..1.0).contains(&mask.p) {
        return Err(GpuError::Shape(format!(
            "dropout: out has {} elements, x {}, p {} (expected equal lengths and p in [0, 1))",
            out.len(),
            x.len(),
            mask.p
        )));
    }
    if x.is_empty() {
        return Ok(());
    }
    let f = gpu.function(&SOURCE, &format!("dropout_{}", T::SUFFIX))?;
    let n = x.len() as i64;
    let threshold = (mask.p as f64 * 65536.0).round() as u32;
    let keep = 1.0 / (1.0 - mask.p);
    let acc = i32::from(accumulate);
    let cfg = LaunchConfig {
        grid_dim: (
            x.len()
                .div_ceil(THREADS as usize)
                .clamp(1, gpu.sm_count() as usize * 16) as u32,
            1,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: out and x hold n elements of the kernel's type.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(out)
            .arg(x)
            .arg(&n)
            .arg(&mask.key)
            .arg(&threshold)
            .arg(&keep)
            .arg(&acc)
            .launch(cfg)
    }?;
    Ok(())
}
