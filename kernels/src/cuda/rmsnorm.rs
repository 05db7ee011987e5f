//! RMSNorm on the GPU (kernels/cuda/rmsnorm.cu; Zhang & Sennrich 2019, as transformers' LlamaRMSNorm): the
//! forward and the gradient with respect to x for a frozen weight, one block per row, the same functions as
//! [`fn@crate::cpu::rmsnorm`] and [`crate::cpu::rmsnorm_backward`].

use super::float::{as_i32, pack_width, row_threads, Float};
use super::{CudaSlice, Gpu, GpuError, LaunchConfig, PushKernelArg};

const SOURCE: super::KernelSource = crate::cuda_source!("rmsnorm");
/// Packs of a row each thread holds in registers: the forward's and the backward's (rmsnorm.cu's CACHE, CACHE_BWD).
const CACHE: usize = 4;
const CACHE_BWD: usize = 2;

/// RMSNorm folded into the product that reads its output (one token's: [`super::gemm::linear_normed`],
/// [`super::w4a16::w4a16_normed`]): the product's input x is the norm's input. The dense GEMV takes each element as
/// [`rmsnorm`] would write it (`weight[i] · (x[i] · r)` rounded once; r summed in another order, so it may differ in
/// its last bit); the int4 kernels round `weight[i] · (x[i] · p)` once instead, p the power of two at or under r, and
/// multiply their sums by r / p: one rounding an element too, at another point (prelude.cuh's `rms_split`).
#[derive(Clone, Copy)]
pub struct InputNorm<'a, T> {
    /// The norm's weight: [in_features].
    pub weight: &'a CudaSlice<T>,
    pub eps: f32,
}

impl<T> InputNorm<'_, T> {
    /// An error unless the weight has `k` elements (`what`: the product).
    pub(crate) fn check(&self, what: &str, k: usize) -> Result<(), GpuError> {
        if self.weight.len() != k {
            return Err(GpuError::Shape(format!(
                "{what}: the input norm's weight has {} elements, expected in_features = {k}",
                self.weight.len()
            )));
        }
        Ok(())
    }
}

/// Rows of `x` for a weight of `d` elements, checking that x is [rows, d].
fn rows_of(x: usize, d: usize) -> Result<u32, GpuError> {
    if d == 0 || !x.is_multiple_of(d) {
        return Err(GpuError::Shape(format!(
            "rmsnorm: x has {x} elements, not [rows, {d}] for a weight of {d}"
        )));
    }
    u32::try_from(x / d).map_err(|_| GpuError::Shape(format!("rmsnorm: {} rows exceed u32", x / d)))
}

/// Rows of a forward's x for a weight of `d` elements, checking that out has x's shape (`what`: the kernel).
fn forward_rows(what: &str, x: usize, out: usize, d: usize) -> Result<u32, GpuError> {
    let rows = rows_of(x, d)?;
    if out != x {
        return Err(GpuError::Shape(format!(
            "{what}: out has {out} elements, x {x}"
        )));
    }
    Ok(rows)
}

fn config<T>(rows: u32, d: usize, per_thread: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows, 1, 1),
        block_dim: (row_threads(d, pack_width::<T>(d), per_thread), 1, 1),
        shared_mem_bytes: 0,
    }
}

/// out: [rows, d] = rmsnorm(x: [rows, d]) with weight: [d].
pub fn rmsnorm<T: Float>(
    gpu: &Gpu,
    x: &CudaSlice<T>,
    weight: &CudaSlice<T>,
    eps: f32,
    out: &mut CudaSlice<T>,
) -> Result<(), GpuError> {
    let d = weight.len();
    let rows = forward_rows("rmsnorm", x.len(), out.len(), d)?;
    if rows == 0 {
        return Ok(());
    }
    let f = gpu.function(&SOURCE, &format!("rmsnorm_{}", T::SUFFIX))?;
    let d_i = as_i32(d, "rmsnorm: d")?;
    // SAFETY: out and x hold rows·d elements, weight d, of the type the kernel is instantiated for.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(out)
            .arg(x)
            .arg(weight)
            .arg(&d_i)
            .arg(&eps)
            .launch(config::<T>(rows, d, CACHE))
    }?;
    Ok(())
}

/// out: [rows, d] = rmsnorm(x: [rows, d]) with weight: [d] in f32, bit for bit as [`fn@crate::cpu::rmsnorm`]
/// computes it (the same sums in the same order, each operation rounded on its own): for calibration forwards
/// whose GPU and CPU runs must agree.
pub fn rmsnorm_f32_as_cpu(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    weight: &CudaSlice<f32>,
    eps: f32,
    out: &mut CudaSlice<f32>,
) -> Result<(), GpuError> {
    let d = weight.len();
    let rows = forward_rows("rmsnorm_f32_as_cpu", x.len(), out.len(), d)?;
    if rows == 0 {
        return Ok(());
    }
    let f = gpu.function(&SOURCE, "rmsnorm_f32_as_cpu")?;
    let (rows_i, d_i) = (
        as_i32(rows as usize, "rmsnorm_f32_as_cpu: rows")?,
        as_i32(d, "rmsnorm_f32_as_cpu: d")?,
    );
    // SAFETY: out and x hold rows·d f32, weight d; a block takes 32 rows with 8 threads each.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(out)
            .arg(x)
            .arg(weight)
            .arg(&rows_i)
            .arg(&d_i)
            .arg(&eps)
            .launch(LaunchConfig {
                grid_dim: (rows.div_ceil(32), 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            })
    }?;
    Ok(())
}

/// dx: [rows, d] = (dx if `accumulate` else 0) + ∂rmsnorm/∂x given dy: [rows, d], for x: [rows, d] and a
/// frozen weight: [d].
pub fn rmsnorm_backward<T: Float>(
    gpu: &Gpu,
    x: &CudaSlice<T>,
    weight: &CudaSlice<T>,
    eps: f32,
    dy: &CudaSlice<T>,
    dx: &mut CudaSlice<T>,
    accumulate: bool,
) -> Result<(), GpuError> {
    let d = weight.len();
    let rows = rows_of(x.len(), d)?;
    if dy.len() != x.len() || dx.len() != x.len() {
        return Err(GpuError::Shape(format!(
            "rmsnorm_backward: x, dy and dx have {}, {} and {} elements",
            x.len(),
            dy.len(),
            dx.len()
        )));
    }
    if rows == 0 {
        return Ok(());
    }
    let f = gpu.function(&SOURCE, &format!("rmsnorm_backward_{}", T::SUFFIX))?;
    let d_i = as_i32(d, "rmsnorm: d")?;
    let acc = i32::from(accumulate);
    // SAFETY: dx, x and dy hold rows·d elements, weight d, of the kernel's type.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(dx)
            .arg(x)
            .arg(weight)
            .arg(dy)
            .arg(&d_i)
            .arg(&eps)
            .arg(&acc)
            .launch(config::<T>(rows, d, CACHE_BWD))
    }?;
    Ok(())
}
