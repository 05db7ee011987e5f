//! Rotary position embedding on the GPU (kernels/cuda/rope.cu; RoFormer's rotate-half layout as transformers),
//! in place on the q/k heads of a row layout, the cos/sin computed in the kernel from an inv_freq exactly as
//! [`crate::cpu::rope_tables`] builds them (default, linear, llama3 or LongRoPE's short/long factors, with
//! LongRoPE's attention factor); the backward rotates by the opposite angle. The same functions as
//! [`crate::cpu::rope_apply`] and [`crate::cpu::rope_backward`] on those tables.

use super::float::{as_i32, Float};
use super::{CudaSlice, Gpu, GpuError, LaunchConfig, PushKernelArg};
use crate::cpu::RopeLayout;

const SOURCE: super::KernelSource = crate::cuda_source!("rope");
/// Threads per block (one block per token).
const THREADS: usize = 256;
/// Most rotary_dim / 2 the kernel takes (rope.cu's MAX_HALF: its cos/sin tables in shared memory).
const MAX_HALF: usize = 256;

/// A model's rotary frequencies on the device: inv_freq: [rotary_dim / 2], and LongRoPE's long-factor set
/// with the original context it takes over beyond (nn's `Rope::inv_freq` rule: picked per call from the
/// sequence length the call reaches), and the factor on cos and sin.
pub struct RopeFreqs {
    pub(crate) short: CudaSlice<f32>,
    pub(crate) long: Option<(CudaSlice<f32>, usize)>,
    pub(crate) attention_scaling: f32,
}

impl RopeFreqs {
    /// Uploads `short` (the only set without LongRoPE) and LongRoPE's `(long, original_max_position)`.
    pub fn new(
        gpu: &Gpu,
        short: &[f32],
        long: Option<(&[f32], usize)>,
        attention_scaling: f32,
    ) -> Result<Self, GpuError> {
        if short.is_empty() || long.is_some_and(|(l, _)| l.len() != short.len()) {
            return Err(GpuError::Shape(format!(
                "rope: inv_freq sets of {} and {:?} frequencies; both must be rotary_dim / 2 > 0",
                short.len(),
                long.map(|(l, _)| l.len())
            )));
        }
        Ok(Self {
            short: gpu.upload(short)?,
            long: long
                .map(|(l, original)| gpu.upload(l).map(|l| (l, original)))
                .transpose()?,
            attention_scaling,
        })
    }

    /// The inv_freq of a call whose sequence reaches `seq_len` tokens.
    pub fn inv_freq(&self, seq_len: usize) -> &CudaSlice<f32> {
        match &self.long {
            Some((long, original)) if seq_len > *original => long,
            _ => &self.short,
        }
    }

    /// Frequencies per set: rotary_dim / 2.
    pub fn half(&self) -> usize {
        self.short.len()
    }

    /// Whether these frequencies rotate `rotary_dim` dims of heads of `head_dim`: rotary_dim even, above 0, at most
    /// head_dim and twice the frequencies.
    pub(crate) fn rotate(&self, rotary_dim: usize, head_dim: usize) -> bool {
        rotary_dim > 0
            && rotary_dim.is_multiple_of(2)
            && rotary_dim <= head_dim
            && rotary_dim / 2 == self.half()
    }
}

/// Where the tokens of a call sit: rows of `seq` tokens, token t of a row at position `offset + t` (offset = the
/// KV cache's length when decoding; 0 for a training batch).
#[derive(Clone, Copy, Debug)]
pub struct Positions {
    /// Tokens per row (sequence).
    pub seq: usize,
    /// Position of each row's first token.
    pub offset: usize,
}

/// Rotates the heads of x: [tokens, layout.row_stride] in place (tokens a multiple of `positions.seq`).
pub fn rope<T: Float>(
    gpu: &Gpu,
    x: &mut CudaSlice<T>,
    layout: RopeLayout,
    freqs: &RopeFreqs,
    positions: Positions,
) -> Result<(), GpuError> {
    launch(gpu, x, layout, freqs, positions, 1.0, None)
}

/// The KV cache [`rope_append`] writes to: keys and values [capacity, width] each, taken from the rows of x at
/// column `k_column` (keys, after their rotation) and `k_column + width` (values).
pub struct CacheAppend<'a, T> {
    pub keys: &'a mut CudaSlice<T>,
    pub values: &'a mut CudaSlice<T>,
    pub k_column: usize,
    pub width: usize,
}

/// [`rope`] on the rows x: [tokens, layout.row_stride] of one sequence after `offset` positions, and in the same
/// launch the rows' rotated keys and their values written to `cache` at their positions. (A decode step captured in
/// a CUDA graph has its attention do this: [`super::attention::forward_after`].)
pub fn rope_append<T: Float>(
    gpu: &Gpu,
    x: &mut CudaSlice<T>,
    layout: RopeLayout,
    freqs: &RopeFreqs,
    offset: usize,
    cache: CacheAppend<'_, T>,
) -> Result<(), GpuError> {
    let seq = x.len() / layout.row_stride.max(1);
    let CacheAppend {
        k_column, width, ..
    } = cache;
    let rows = (offset + seq) * width;
    if width == 0
        || k_column + 2 * width > layout.row_stride
        || cache.keys.len() < rows
        || cache.values.len() < rows
    {
        return Err(GpuError::Shape(format!(
            "rope: a cache of {} keys and {} values cannot take {seq} rows of {width} after {offset} positions, \
             nor can rows of {} hold them from column {k_column}",
            cache.keys.len(),
            cache.values.len(),
            layout.row_stride
        )));
    }
    let positions = Positions { seq, offset };
    launch(gpu, x, layout, freqs, positions, 1.0, Some(cache))
}

/// The gradient through [`rope`] in place: dx: [tokens, layout.row_stride] rotated back.
pub fn rope_backward<T: Float>(
    gpu: &Gpu,
    dx: &mut CudaSlice<T>,
    layout: RopeLayout,
    freqs: &RopeFreqs,
    positions: Positions,
) -> Result<(), GpuError> {
    launch(gpu, dx, layout, freqs, positions, -1.0, None)
}

/// The kernel over `positions`; with `append` (checked by the caller), the keys and values also go to the cache.
fn launch<T: Float>(
    gpu: &Gpu,
    x: &mut CudaSlice<T>,
    layout: RopeLayout,
    freqs: &RopeFreqs,
    positions: Positions,
    sin_sign: f32,
    append: Option<CacheAppend<'_, T>>,
) -> Result<(), GpuError> {
    let RopeLayout {
        row_stride,
        heads,
        head_dim,
        rotary_dim,
    } = layout;
    let half = rotary_dim / 2;
    let bad = |why: String| Err(GpuError::Shape(format!("rope: {why}")));
    if !freqs.rotate(rotary_dim, head_dim) || half > MAX_HALF {
        return bad(format!(
            "rotary_dim {rotary_dim} must be even, > 0, ≤ head_dim {head_dim}, ≤ {} and twice the {} frequencies",
            2 * MAX_HALF,
            freqs.half()
        ));
    }
    if heads * head_dim > row_stride || row_stride == 0 || !x.len().is_multiple_of(row_stride) {
        return bad(format!(
            "x ({} elements) must be [tokens, row_stride {row_stride}] holding {heads} heads of {head_dim}",
            x.len()
        ));
    }
    let tokens = x.len() / row_stride;
    if positions.seq == 0 || !tokens.is_multiple_of(positions.seq) {
        return bad(format!("{tokens} tokens are not rows of {}", positions.seq));
    }
    if tokens == 0 {
        return Ok(());
    }
    let inv_freq = freqs.inv_freq(positions.offset + positions.seq);
    let f = gpu.function(&SOURCE, &format!("rope_{}", T::SUFFIX))?;
    // Threads along a head's first half, each taking the kernel's pack of elements (rope.cu's choice).
    let v = 16 / std::mem::size_of::<T>();
    let v = if half % v == 0 && head_dim % v == 0 && row_stride % v == 0 {
        v
    } else {
        1
    };
    let bx = (half / v).clamp(1, THREADS);
    let by = (THREADS / bx).clamp(1, heads.max(1));
    let cfg = LaunchConfig {
        grid_dim: (
            u32::try_from(tokens)
                .map_err(|_| GpuError::Shape(format!("rope: {tokens} tokens exceed u32")))?,
            1,
            1,
        ),
        block_dim: (bx as u32, by as u32, 1),
        shared_mem_bytes: 0,
    };
    // Positions reach offset + seq: the kernel takes them as i32.
    as_i32(positions.offset + positions.seq, "rope: offset + seq")?;
    let args = [
        as_i32(positions.seq, "rope: seq")?,
        as_i32(row_stride, "rope: row_stride")?,
        as_i32(heads, "rope: heads")?,
        as_i32(head_dim, "rope: head_dim")?,
        as_i32(rotary_dim, "rope: rotary_dim")?,
        positions.offset as i32,
    ];
    let null = 0u64;
    let mut builder = gpu.stream().launch_builder(&f);
    builder.arg(x).arg(inv_freq);
    for a in &args {
        builder.arg(a);
    }
    builder.arg(&freqs.attention_scaling).arg(&sin_sign);
    let (k_column, width);
    match append {
        Some(cache) => {
            (k_column, width) = (
                as_i32(cache.k_column, "rope: k_column")?,
                as_i32(cache.width, "rope: cache width")?,
            );
            builder.arg(cache.keys).arg(cache.values);
        }
        None => {
            (k_column, width) = (0, 0);
            builder.arg(&null).arg(&null);
        }
    }
    builder.arg(&k_column).arg(&width);
    // SAFETY: x holds tokens·row_stride elements of the kernel's type, every head inside its row; inv_freq holds
    // rotary_dim / 2 floats; the caches (when given) hold positions.offset + tokens rows of width, which x's rows
    // hold from k_column twice over.
    unsafe { builder.launch(cfg) }?;
    Ok(())
}
