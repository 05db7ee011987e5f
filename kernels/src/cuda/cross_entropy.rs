//! Cross-entropy over the vocabulary on the GPU (kernels/cuda/cross_entropy.cu): per-row losses of logits against
//! labels (negative = ignored), one block per row with an online max and sum, and optionally the gradient of
//! `inv_n · Σ loss` written over the logits; the same function as [`fn@crate::cpu::cross_entropy`].

use super::float::{as_i32, pack_width, row_threads, Float};
use super::{CudaSlice, Gpu, GpuError, LaunchConfig, PushKernelArg};

const SOURCE: super::KernelSource = crate::cuda_source!("cross_entropy");
/// Threads per row at most: blocks of 1024 leave one per SM (by registers), idle through each row's reduction;
/// 512 lets three rows overlap.
const MAX_THREADS: u32 = 512;

/// Per-row losses: [rows] of logits: [rows, vocab] against labels: [rows] (0 where a label is negative; NaN
/// where a label is ≥ vocab). The logits are left as they are.
pub fn cross_entropy<T: Float>(
    gpu: &Gpu,
    logits: &CudaSlice<T>,
    labels: &CudaSlice<i32>,
    vocab: usize,
) -> Result<CudaSlice<f32>, GpuError> {
    // The kernel only reads the row when not asked for the gradient.
    launch(gpu, logits, labels, vocab, None)
}

/// [`cross_entropy`], and the logits overwritten in place by the gradient of `inv_n · Σ loss`:
/// `(softmax − onehot(label)) · inv_n` (0 in ignored rows). inv_n is 1 / the labelled tokens the mean runs over.
pub fn cross_entropy_backward<T: Float>(
    gpu: &Gpu,
    logits: &mut CudaSlice<T>,
    labels: &CudaSlice<i32>,
    vocab: usize,
    inv_n: f32,
) -> Result<CudaSlice<f32>, GpuError> {
    launch(gpu, logits, labels, vocab, Some(inv_n))
}

fn launch<T: Float>(
    gpu: &Gpu,
    logits: &CudaSlice<T>,
    labels: &CudaSlice<i32>,
    vocab: usize,
    inv_n: Option<f32>,
) -> Result<CudaSlice<f32>, GpuError> {
    let rows = labels.len();
    if vocab == 0 || logits.len() != rows * vocab {
        return Err(GpuError::Shape(format!(
            "cross_entropy: logits have {} elements, expected [labels {rows}, vocab {vocab}]",
            logits.len()
        )));
    }
    let mut loss = gpu.alloc::<f32>(rows)?;
    if rows == 0 {
        return Ok(loss);
    }
    let f = gpu.function(&SOURCE, &format!("cross_entropy_{}", T::SUFFIX))?;
    let cfg = LaunchConfig {
        grid_dim: (
            u32::try_from(rows)
                .map_err(|_| GpuError::Shape(format!("cross_entropy: {rows} rows exceed u32")))?,
            1,
            1,
        ),
        block_dim: (
            row_threads(vocab, pack_width::<T>(vocab), 2).min(MAX_THREADS),
            1,
            1,
        ),
        shared_mem_bytes: 0,
    };
    let v = as_i32(vocab, "cross_entropy: vocab")?;
    let (scale, write_grad) = (inv_n.unwrap_or(0.0), i32::from(inv_n.is_some()));
    // SAFETY: logits hold rows·vocab elements of the kernel's type (written only when write_grad, in which case the
    // caller lent them mutably), labels and loss hold rows.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(logits)
            .arg(labels)
            .arg(&mut loss)
            .arg(&v)
            .arg(&scale)
            .arg(&write_grad)
            .launch(cfg)
    }?;
    Ok(loss)
}
