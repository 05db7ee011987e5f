//! The element types of the kernels: f32, bf16 and f16 data with fp32 math inside ([`Float`]; a kernel for type `T`
//! is named `<op>_<T::SUFFIX>`), and the 16-bit ones the tensor-core kernels take ([`Half`]).

use cudarc::driver::sys::CUtensorMapDataType;

use super::{bf16, f16, DeviceRepr, ValidAsZeroBits};

/// A float type those kernels take.
pub trait Float: DeviceRepr + ValidAsZeroBits + Copy + Default + Unpin {
    /// `f32`, `bf16` or `f16`.
    const SUFFIX: &'static str;
    /// `v` rounded to nearest even.
    fn from_f32(v: f32) -> Self;
    /// The value widened to f32 (exact).
    fn to_f32(self) -> f32;
}

impl Float for f32 {
    const SUFFIX: &'static str = "f32";
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Float for bf16 {
    const SUFFIX: &'static str = "bf16";
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

impl Float for f16 {
    const SUFFIX: &'static str = "f16";
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// The 16-bit floats (bf16, f16): the activations of the tensor-core kernels (attention, LoRA, W4A16) and the
/// narrow side of [`super::convert`].
pub trait Half: Float + Send + Sync {
    /// Its CUDA C++ type, for kernels instantiated by name.
    const CUDA_TYPE: &'static str;
    /// Its element type in a tensor map (the copy engine's 2-D copies).
    const TENSOR_MAP_TYPE: CUtensorMapDataType;
    /// Its bit pattern.
    fn to_bits(self) -> u16;
}

impl Half for bf16 {
    const CUDA_TYPE: &'static str = "__nv_bfloat16";
    const TENSOR_MAP_TYPE: CUtensorMapDataType =
        CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
    fn to_bits(self) -> u16 {
        bf16::to_bits(self)
    }
}

impl Half for f16 {
    const CUDA_TYPE: &'static str = "__half";
    const TENSOR_MAP_TYPE: CUtensorMapDataType =
        CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
    fn to_bits(self) -> u16 {
        f16::to_bits(self)
    }
}

/// Elements per 16-byte access of `T` where `len` (a row length) is a multiple of it, else 1: the kernels
/// pick the same width from the same row length.
pub(crate) fn pack_width<T>(len: usize) -> usize {
    let v = 16 / std::mem::size_of::<T>();
    if len.is_multiple_of(v) {
        v
    } else {
        1
    }
}

/// `n` as the i32 a kernel takes, or a [`super::GpuError::Shape`] naming `what`.
pub(crate) fn as_i32(n: usize, what: &str) -> Result<i32, super::GpuError> {
    i32::try_from(n).map_err(|_| super::GpuError::Shape(format!("{what} = {n} exceeds i32")))
}

/// Threads for one block per row of `len` elements read `pack` at a time, `per_thread` packs each: a multiple
/// of 32, 32 ..= 1024.
pub(crate) fn row_threads(len: usize, pack: usize, per_thread: usize) -> u32 {
    (len / pack).div_ceil(32 * per_thread).clamp(1, 32) as u32 * 32
}
