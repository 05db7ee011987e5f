//! f32 attention of whole calibration windows on the GPU (kernels/cuda/attention_windows.cu), for AWQ's scale
//! search: RoPE from host tables on q and k, then causal (sliding-window) GQA attention per window, in f32
//! throughout. The same function as [`crate::cpu::rope_apply`] on a fused qkv row followed by
//! [`fn@crate::cpu::attention`] per window, up to summation order.

use cudarc::driver::sys::CUfunction_attribute;

use super::float::as_i32;
use super::{CudaSlice, DeviceRepr, Gpu, GpuError, LaunchConfig, PushKernelArg};

const SOURCE: super::KernelSource = crate::cuda_source!("attention_windows");
/// Query rows and key rows of a tile (the kernel's WIN_QT, WIN_KT).
const TILE: usize = 32;
/// Largest head_dim the kernel takes (WIN_MAXD).
const MAX_HEAD_DIM: usize = 256;

/// The windows and heads of [`attention_windows_f32`].
#[derive(Clone, Copy, Debug)]
pub struct WindowShape {
    /// Windows, each `seq` tokens from position 0.
    pub windows: usize,
    /// Tokens per window.
    pub seq: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; divides `heads`.
    pub kv_heads: usize,
    /// Floats per head (at most 256).
    pub head_dim: usize,
    /// Leading dims of each q/k head that rotate (even, ≤ head_dim).
    pub rotary_dim: usize,
    /// Sliding window: key j visible from position p when p − j < window.
    pub window: Option<usize>,
    /// Factor on q·k.
    pub scale: f32,
}

/// attention_windows.cu's WindowParams, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Params {
    seq: i32,
    heads: i32,
    kv_heads: i32,
    head_dim: i32,
    rotary_dim: i32,
    width: i32,
    window: i32,
    scale: f32,
}

// SAFETY: a plain #[repr(C)] struct of 4-byte numbers, laid out as attention_windows.cu's WindowParams.
unsafe impl DeviceRepr for Params {}

/// out: [windows · seq, heads · head_dim] = attention of qkv: [windows · seq, (heads + 2 · kv_heads) · head_dim]
/// (q, k, v heads side by side), q and k rotated by `cos`, `sin`: [≥ seq, rotary_dim / 2] (positions 0.. of a
/// window).
pub fn attention_windows_f32(
    gpu: &Gpu,
    shape: &WindowShape,
    qkv: &CudaSlice<f32>,
    (cos, sin): (&CudaSlice<f32>, &CudaSlice<f32>),
    out: &mut CudaSlice<f32>,
) -> Result<(), GpuError> {
    let WindowShape {
        windows,
        seq,
        heads,
        kv_heads,
        head_dim,
        rotary_dim,
        window,
        scale,
    } = *shape;
    let bad = |why: String| Err(GpuError::Shape(format!("attention_windows: {why}")));
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return bad(format!(
            "kv_heads {kv_heads} must divide heads {heads} (both > 0)"
        ));
    }
    if head_dim == 0 || head_dim > MAX_HEAD_DIM || rotary_dim % 2 != 0 || rotary_dim > head_dim {
        return bad(format!(
            "head_dim {head_dim} must be 1..={MAX_HEAD_DIM} and rotary_dim {rotary_dim} even and ≤ head_dim"
        ));
    }
    let width = (heads + 2 * kv_heads) * head_dim;
    let tokens = windows * seq;
    let half = rotary_dim / 2;
    for (name, have, want) in [
        ("qkv", qkv.len(), tokens * width),
        ("out", out.len(), tokens * heads * head_dim),
    ] {
        if have != want {
            return bad(format!("{name} holds {have} floats, expected {want}"));
        }
    }
    if cos.len() < seq * half || sin.len() != cos.len() {
        return bad(format!(
            "cos and sin must be equal [≥ {seq}, {half}] tables (got {} and {})",
            cos.len(),
            sin.len()
        ));
    }
    if windows > 65535 {
        return bad(format!("{windows} windows: at most 65535 (the grid's z)"));
    }
    if tokens == 0 {
        return Ok(());
    }
    let int = |name: &str, v: usize| as_i32(v, &format!("attention_windows: {name}"));
    let params = Params {
        seq: int("seq", seq)?,
        heads: int("heads", heads)?,
        kv_heads: int("kv_heads", kv_heads)?,
        head_dim: int("head_dim", head_dim)?,
        rotary_dim: int("rotary_dim", rotary_dim)?,
        width: int("width", width)?,
        window: int("window", window.unwrap_or(0))?,
        scale,
    };
    // q and k tiles [32][head_dim + 1], v [32][head_dim], probabilities [32][33].
    let smem = 4 * (2 * TILE * (head_dim + 1) + TILE * head_dim + TILE * (TILE + 1));
    let f = gpu.function(&SOURCE, "attention_windows_f32")?;
    if smem > 48 * 1024 {
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            int("shared memory", smem)?,
        )?;
    }
    let launch = LaunchConfig {
        grid_dim: (seq.div_ceil(TILE) as u32, heads as u32, windows as u32),
        block_dim: (128, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    // SAFETY: qkv, out, cos and sin hold the elements checked above, which the kernel indexes by params; the
    // dynamic shared memory is what the kernel's tiles take for this head_dim.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(&params)
            .arg(qkv)
            .arg(cos)
            .arg(sin)
            .arg(out)
            .launch(launch)
    }?;
    Ok(())
}
