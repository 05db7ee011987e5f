//! What the element-wise and reduction kernels' tests share: inputs rounded to the kernel's type (the CPU
//! reference then sees exactly what the GPU reads), NaN-poisoned outputs, and the tolerance of each type.

use olive_kernels::cuda::float::Float;
use olive_kernels::cuda::{CudaSlice, Gpu};

/// fp32 data: the same fp32 formulas in another order, with the device's expf/rsqrtf/sincosf (≤ 2 ulp).
pub const F32_REL: f64 = 1e-5;
/// bf16 data: inputs are already bf16, the math is fp32, so the output's one rounding to an 8-bit mantissa
/// (≤ 2^-9 relative per element, ~1.1e-3 rms) is the error.
pub const BF16_REL: f64 = 4e-3;
/// fp16 data: likewise with an 11-bit mantissa (≤ 2^-12 per element, ~1.4e-4 rms).
pub const F16_REL: f64 = 5e-4;

/// The tolerance for outputs of type `T` against an fp32/f64 reference on the same (rounded) inputs.
pub fn tol<T: Float>() -> f64 {
    match T::SUFFIX {
        "f32" => F32_REL,
        "bf16" => BF16_REL,
        _ => F16_REL,
    }
}

/// `host` rounded to `T` on the device, and the rounded values as f32 for the reference.
pub fn upload_as<T: Float>(gpu: &Gpu, host: &[f32]) -> (CudaSlice<T>, Vec<f32>) {
    let data: Vec<T> = host.iter().map(|v| T::from_f32(*v)).collect();
    let rounded = data.iter().map(|v| v.to_f32()).collect();
    (gpu.upload(&data).unwrap(), rounded)
}

/// `n` NaNs of type `T` on the device: an element the kernel fails to write stays NaN and fails the check.
pub fn poisoned<T: Float>(gpu: &Gpu, n: usize) -> CudaSlice<T> {
    gpu.upload(&vec![T::from_f32(f32::NAN); n]).unwrap()
}

/// A device buffer widened to f32 on the host.
pub fn download_f32<T: Float>(gpu: &Gpu, dev: &CudaSlice<T>) -> Vec<f32> {
    gpu.download(dev)
        .unwrap()
        .into_iter()
        .map(Float::to_f32)
        .collect()
}
