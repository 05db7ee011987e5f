//! Flash-style causal GQA attention over a KV cache on the GPU (kernels/cuda/attention.cu; FlashAttention-2, Dao
//! 2023): [`forward`] (tiled for prefill, split over the KV length for decode), optionally keeping each row's
//! log-sum-exp, and [`backward`] (dQ, dK, dV from the kept log-sum-exp). The same function as
//! [`crate::cpu::attention_ref`]: query t at position `kv_len − tokens + t`, key j visible when `j ≤ pos`, within the
//! sliding window, and (with a key mask) unmasked.

use super::float::{as_i32, Half};
use super::rope::RopeFreqs;
use super::{CachedLen, CudaSlice, DeviceRepr, Gpu, GpuError, LaunchConfig, PushKernelArg};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::LaunchArgs;

const SOURCE: super::KernelSource = crate::cuda_source!("attention");
/// Threads per block of every attention kernel.
const THREADS: u32 = 128;
/// Query rows and key rows of one tile (attention.cu's BR, BC).
const TILE: usize = 64;
/// The decode kernel's most query rows per KV head (group · tokens), attention.cu's MAXR.
const DECODE_MAX_ROWS: usize = 16;
/// A decode split's chunk of keys is a multiple of this (two of the kernel's 64-key tiles).
pub const DECODE_KEYS: usize = 128;

/// Where an operand's rows sit in its device buffer: row r of head h starts at element
/// `offset + r·stride + h·head_dim` (a fused qkv row: q at offset 0, k at heads·head_dim, stride its width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    /// Elements before row 0.
    pub offset: usize,
    /// Elements from one row to the next.
    pub stride: usize,
}

impl Rows {
    /// Packed rows of `width` elements from offset 0.
    pub fn packed(width: usize) -> Self {
        Rows {
            offset: 0,
            stride: width,
        }
    }

    /// Whether `rows` rows of `width` elements from here fit a buffer of `len` elements.
    pub fn fit(&self, rows: usize, width: usize, len: usize) -> bool {
        rows == 0 || (width <= self.stride && self.offset + (rows - 1) * self.stride + width <= len)
    }
}

/// An operand: a device buffer and where its rows are.
#[derive(Debug)]
pub struct Operand<'a, T> {
    /// The buffer.
    pub data: &'a CudaSlice<T>,
    /// Its rows.
    pub rows: Rows,
}

impl<T> Clone for Operand<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Operand<'_, T> {}

/// The problem: `batch` sequences of `tokens` new queries over `kv_len` keys each (the new tokens' keys last).
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// Sequences; q and out hold batch·tokens rows, k and v batch·kv_len.
    pub batch: usize,
    /// Queries per sequence.
    pub tokens: usize,
    /// Keys per sequence, ≥ tokens.
    pub kv_len: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; divides `heads`.
    pub kv_heads: usize,
    /// 64, 96 or 128.
    pub head_dim: usize,
    /// Mistral's sliding window: key j visible from position p when `p − j < window`.
    pub window: Option<usize>,
    /// Softmax scale (1/√head_dim).
    pub scale: f32,
}

/// The inputs: q, k, v and an optional key mask ([batch·kv_len], 0 = hidden, e.g. padding).
#[derive(Debug)]
pub struct Inputs<'a, T> {
    /// Queries: batch·tokens rows of heads·head_dim.
    pub q: Operand<'a, T>,
    /// Keys: batch·kv_len rows of kv_heads·head_dim.
    pub k: Operand<'a, T>,
    /// Values: as the keys.
    pub v: Operand<'a, T>,
    /// Per-key visibility, or every key visible.
    pub key_mask: Option<&'a CudaSlice<u8>>,
}

impl<T> Clone for Inputs<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Inputs<'_, T> {}

/// A captured decode step's own rows for [`forward_after`], which folds [`super::rope::rope_append`]'s work into
/// the attention (no launch of its own): `qkv`'s rows hold the step's queries, its keys from column `k_column` and
/// its values kv_heads·head_dim after them, all unrotated; the kernel rotates the queries and keys as
/// [`super::rope::rope`] does at the step's positions (LongRoPE's long set once kv_len passes its original context)
/// and writes the keys and values to the cache there.
pub struct Step<'a, T> {
    /// The step's rows (the queries' heads from column 0).
    pub qkv: Operand<'a, T>,
    /// The keys' first column in a row.
    pub k_column: usize,
    /// The KV cache's keys: [kv_len, kv_heads·head_dim], rows past the step's positions unread.
    pub keys: &'a mut CudaSlice<T>,
    /// Its values: as the keys.
    pub values: &'a mut CudaSlice<T>,
    /// The model's rotary frequencies.
    pub freqs: &'a RopeFreqs,
    /// The dims of a head they rotate (the rest pass through); twice the frequencies.
    pub rotary_dim: usize,
}

/// The gradients [`backward`] writes (f32, overwritten): dq like q, dk and dv like k and v.
#[derive(Debug)]
pub struct Grads<'a> {
    /// dL/dq and its rows.
    pub dq: (&'a mut CudaSlice<f32>, Rows),
    /// dL/dk and its rows.
    pub dk: (&'a mut CudaSlice<f32>, Rows),
    /// dL/dv and its rows.
    pub dv: (&'a mut CudaSlice<f32>, Rows),
}

/// attention.cu's AttnParams, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Params {
    batch: i32,
    tokens: i32,
    kv_len: i32,
    heads: i32,
    kv_heads: i32,
    q_off: i32,
    q_stride: i32,
    k_off: i32,
    k_stride: i32,
    v_off: i32,
    v_stride: i32,
    o_off: i32,
    o_stride: i32,
    do_off: i32,
    do_stride: i32,
    dk_off: i32,
    dk_stride: i32,
    dv_off: i32,
    dv_stride: i32,
    dq_off: i32,
    dq_stride: i32,
    window: i32,
    has_mask: i32,
    splits: i32,
    scale: f32,
}

// SAFETY: a plain #[repr(C)] struct of 4-byte numbers, laid out as attention.cu's AttnParams.
unsafe impl DeviceRepr for Params {}

/// attention.cu's RopeStep, field for field (all zero: no rotation).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RopeParams {
    original: i32,
    rotary_dim: i32,
    k_col: i32,
    scaling: f32,
}

// SAFETY: a plain #[repr(C)] struct of 4-byte numbers, laid out as attention.cu's RopeStep.
unsafe impl DeviceRepr for RopeParams {}

/// What a decode launch reads: the inputs as given, or a captured step's rows that it rotates and appends.
enum DecodeInputs<'i, 'a, T> {
    Given(&'i Inputs<'a, T>),
    Step(Step<'a, T>),
}

fn shape_error(what: String) -> GpuError {
    GpuError::Shape(format!("attention: {what}"))
}

fn int(name: &str, v: usize) -> Result<i32, GpuError> {
    as_i32(v, &format!("attention: {name}"))
}

/// The rows `r` of a buffer of `len` elements reach `rows` rows of `width` (16-byte aligned for the vector loads
/// when `aligned`).
fn check_rows(
    name: &str,
    r: Rows,
    len: usize,
    rows: usize,
    width: usize,
    aligned: bool,
) -> Result<(), GpuError> {
    if aligned && (!r.offset.is_multiple_of(8) || !r.stride.is_multiple_of(8)) {
        return Err(shape_error(format!(
            "{name}: offset {} and stride {} must be multiples of 8 elements (16-byte rows)",
            r.offset, r.stride
        )));
    }
    if !r.fit(rows, width, len) {
        return Err(shape_error(format!(
            "{name}: {rows} rows of {width} at offset {} stride {} do not fit its {len} elements",
            r.offset, r.stride
        )));
    }
    Ok(())
}

impl AttentionShape {
    fn check(&self) -> Result<(), GpuError> {
        if ![64, 96, 128].contains(&self.head_dim) {
            return Err(shape_error(format!(
                "head_dim {} (64, 96 or 128 expected)",
                self.head_dim
            )));
        }
        if self.heads == 0 || self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(shape_error(format!(
                "kv_heads {} must divide heads {}",
                self.kv_heads, self.heads
            )));
        }
        if self.tokens > self.kv_len {
            return Err(shape_error(format!(
                "{} queries over {} keys (the new tokens' keys are part of the cache)",
                self.tokens, self.kv_len
            )));
        }
        if self.window == Some(0) {
            return Err(shape_error("a window of 0 keys".into()));
        }
        Ok(())
    }

    fn params<T>(&self, inputs: &Inputs<'_, T>) -> Result<Params, GpuError> {
        let (hd, b) = (self.head_dim, self.batch);
        check_rows(
            "q",
            inputs.q.rows,
            inputs.q.data.len(),
            b * self.tokens,
            self.heads * hd,
            true,
        )?;
        for (name, op) in [("k", inputs.k), ("v", inputs.v)] {
            check_rows(
                name,
                op.rows,
                op.data.len(),
                b * self.kv_len,
                self.kv_heads * hd,
                true,
            )?;
        }
        if let Some(mask) = inputs.key_mask {
            if mask.len() != b * self.kv_len {
                return Err(shape_error(format!(
                    "key_mask has {} entries, expected batch·kv_len = {}",
                    mask.len(),
                    b * self.kv_len
                )));
            }
        }
        Ok(Params {
            batch: int("batch", b)?,
            tokens: int("tokens", self.tokens)?,
            kv_len: int("kv_len", self.kv_len)?,
            heads: int("heads", self.heads)?,
            kv_heads: int("kv_heads", self.kv_heads)?,
            q_off: int("q offset", inputs.q.rows.offset)?,
            q_stride: int("q stride", inputs.q.rows.stride)?,
            k_off: int("k offset", inputs.k.rows.offset)?,
            k_stride: int("k stride", inputs.k.rows.stride)?,
            v_off: int("v offset", inputs.v.rows.offset)?,
            v_stride: int("v stride", inputs.v.rows.stride)?,
            window: int("window", self.window.unwrap_or(0))?,
            has_mask: i32::from(inputs.key_mask.is_some()),
            scale: self.scale,
            ..Params::default()
        })
    }

    /// Rows of query heads per KV head: the decode kernel takes them all in one block.
    fn rows_per_kv_head(&self) -> usize {
        self.heads / self.kv_heads * self.tokens
    }
}

/// Shared memory of the tiled forward: two buffers each of K and V, [64, D+8] (16-bit; Q passes through one).
fn forward_smem(d: usize) -> usize {
    4 * TILE * (d + 8) * 2
}

/// Shared memory of the decode kernel: Q [16, D+8] and two buffers each of K and V [64, D+8] (16-bit).
fn decode_smem(d: usize) -> usize {
    (DECODE_MAX_ROWS + 4 * TILE) * (d + 8) * 2
}

/// Shared memory of the backward: K, V and two buffers each of Q and dO [64, D+8], dS [64, 72] (16-bit), lse and
/// delta [64] (f32).
fn backward_smem(d: usize) -> usize {
    6 * TILE * (d + 8) * 2 + TILE * (TILE + 8) * 2 + 2 * TILE * 4
}

/// attention.cu's kernel `name` from its build for element type T and head size `hd` (each build holds one).
fn function<T: Half>(
    gpu: &Gpu,
    hd: usize,
    name: &str,
) -> Result<cudarc::driver::CudaFunction, GpuError> {
    let hd = hd.to_string();
    gpu.function_with(&SOURCE, &[("ATTN_NAME", T::SUFFIX), ("ATTN_D", &hd)], name)
}

/// The kernel `attention_<kind>_<T>_<hd>`, allowed `smem` bytes of dynamic shared memory.
fn kernel<T: Half>(
    gpu: &Gpu,
    kind: &str,
    hd: usize,
    smem: usize,
) -> Result<cudarc::driver::CudaFunction, GpuError> {
    let f = function::<T>(gpu, hd, &format!("attention_{kind}_{}_{hd}", T::SUFFIX))?;
    if smem > 48 * 1024 {
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            int("shared memory", smem)?,
        )?;
    }
    Ok(f)
}

/// A null device pointer for an absent optional argument.
const NULL: u64 = 0;

/// Pushes q, k, v and the key mask (a null pointer without one): every attention kernel takes them in this order.
fn push_inputs<'a, T>(launch: &mut LaunchArgs<'a>, inputs: &Inputs<'a, T>) {
    launch
        .arg(inputs.q.data)
        .arg(inputs.k.data)
        .arg(inputs.v.data);
    match inputs.key_mask {
        Some(m) => launch.arg(m),
        None => launch.arg(&NULL),
    };
}

/// out (rows `out_rows`, batch·tokens rows of heads·head_dim) = attention of `inputs`; with `lse`, also each row's
/// natural log-sum-exp of its scaled scores ([batch, heads, tokens]; −∞ for a row that sees no key), which
/// [`backward`] needs. Few queries per KV head (decode) run split over the KV length, the rest tiled.
pub fn forward<T: Half>(
    gpu: &Gpu,
    shape: &AttentionShape,
    inputs: &Inputs<'_, T>,
    out: (&mut CudaSlice<T>, Rows),
    lse: Option<&mut CudaSlice<f32>>,
) -> Result<(), GpuError> {
    let p = forward_params(shape, inputs, &out, lse.as_deref())?;
    let (hd, b) = (shape.head_dim, shape.batch);
    if b * shape.heads * shape.tokens == 0 {
        return Ok(());
    }
    if shape.rows_per_kv_head() <= DECODE_MAX_ROWS {
        let inputs = DecodeInputs::Given(inputs);
        return decode(gpu, shape, p, inputs, out.0, lse, None, None);
    }
    let smem = forward_smem(hd);
    let f = kernel::<T>(gpu, "fwd", hd, smem)?;
    let cfg = LaunchConfig {
        grid_dim: (
            shape.tokens.div_ceil(TILE) as u32,
            shape.heads as u32,
            b as u32,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(&p);
    push_inputs(&mut launch, inputs);
    launch.arg(out.0);
    match lse {
        Some(l) => launch.arg(l),
        None => launch.arg(&NULL),
    };
    // SAFETY: every operand's rows were checked against its buffer; lse (when given) has batch·heads·tokens entries.
    unsafe { launch.launch(cfg) }?;
    Ok(())
}

/// [`forward`] of a decode step after a KV cache's `past` positions, which the kernels read from device memory when
/// they run (a decode step captured in a CUDA graph): kv_len = past + shape.tokens, the step's keys and values
/// rotated and appended to the cache by the same launch ([`Step`]). `shape.kv_len` is the most it can be
/// (past.max + tokens): the cache is checked against it and the KV length's splits sized for it, the kernels then
/// spreading the live keys over them. One sequence, no key mask, at most 16 query rows per KV head. `part` is the
/// splits' scratch, kept by the caller so that a captured step allocates nothing, and its length the number of
/// splits: [`decode_scratch_len`] floats ([`decode_part_len`] for the default splits).
pub fn forward_after<T: Half>(
    gpu: &Gpu,
    shape: &AttentionShape,
    step: Step<'_, T>,
    out: (&mut CudaSlice<T>, Rows),
    past: CachedLen<'_>,
    part: &mut CudaSlice<f32>,
) -> Result<(), GpuError> {
    past.check("attention")?;
    if shape.batch != 1
        || shape.rows_per_kv_head() > DECODE_MAX_ROWS
        || shape.kv_len != past.max + shape.tokens
    {
        return Err(shape_error(format!(
            "a step after the cache's length on the device takes one sequence, at most {DECODE_MAX_ROWS} query \
             rows a KV head and kv_len = the most positions held + tokens; got batch {}, {} rows a KV head, kv_len \
             {} for {} + {}",
            shape.batch,
            shape.rows_per_kv_head(),
            shape.kv_len,
            past.max,
            shape.tokens
        )));
    }
    let (hd, kv_w) = (shape.head_dim, shape.kv_heads * shape.head_dim);
    let rotary = step.rotary_dim;
    if !step.freqs.rotate(rotary, hd) {
        return Err(shape_error(format!(
            "rotary_dim {rotary} must be even, > 0, <= head_dim {hd} and twice the {} frequencies",
            step.freqs.half()
        )));
    }
    let new_rows = Rows {
        offset: step.qkv.rows.offset + step.k_column,
        stride: step.qkv.rows.stride,
    };
    check_rows(
        "the step's keys and values",
        new_rows,
        step.qkv.data.len(),
        shape.tokens,
        2 * kv_w,
        false,
    )?;
    let p = {
        let inputs = Inputs {
            q: step.qkv,
            k: Operand {
                data: &*step.keys,
                rows: Rows::packed(kv_w),
            },
            v: Operand {
                data: &*step.values,
                rows: Rows::packed(kv_w),
            },
            key_mask: None,
        };
        forward_params(shape, &inputs, &out, None)?
    };
    if shape.tokens == 0 {
        return Ok(());
    }
    let inputs = DecodeInputs::Step(step);
    decode(gpu, shape, p, inputs, out.0, None, Some(past), Some(part))
}

/// The checked kernel parameters of a forward writing `out` (and `lse`, when given).
fn forward_params<T: Half>(
    shape: &AttentionShape,
    inputs: &Inputs<'_, T>,
    out: &(&mut CudaSlice<T>, Rows),
    lse: Option<&CudaSlice<f32>>,
) -> Result<Params, GpuError> {
    shape.check()?;
    let mut p = shape.params(inputs)?;
    let (hd, b) = (shape.head_dim, shape.batch);
    check_rows(
        "out",
        out.1,
        out.0.len(),
        b * shape.tokens,
        shape.heads * hd,
        true,
    )?;
    p.o_off = int("out offset", out.1.offset)?;
    p.o_stride = int("out stride", out.1.stride)?;
    let rows = b * shape.heads * shape.tokens;
    if let Some(lse) = lse {
        if lse.len() != rows {
            return Err(shape_error(format!(
                "lse has {} entries, expected batch·heads·tokens = {rows}",
                lse.len()
            )));
        }
    }
    Ok(p)
}

/// Splits of the KV length a decode launch takes by default on `gpu` (`splits_for` of its multiprocessors).
pub fn decode_splits(gpu: &Gpu, shape: &AttentionShape) -> usize {
    splits_for(gpu.sm_count() as usize, shape)
}

/// Splits of the keys a decode step reads ([`decode_keys`]) on a GPU of `sms` multiprocessors. A split takes about
/// 2·√keys keys (to the nearest whole [`DECODE_KEYS`]), where its keys (read one after another) and the merge's
/// splits cost about the same, but no fewer than leave two blocks a multiprocessor (enough to read the cache at full
/// bandwidth). Chosen from `gpu-bench attention` on an H200 (SmolLM2/TinyLlama/Phi-3.5/Llama-3-8B shapes at 1K to 64K
/// keys, with the one-pass combine), where it is within 6% of the sweep's fastest split count in all 28 cases and
/// the fastest in 26 (benches/RESULTS.md).
fn splits_for(sms: usize, shape: &AttentionShape) -> usize {
    let keys = decode_keys(shape);
    let blocks = (2 * sms / (shape.batch * shape.kv_heads).max(1)).max(1);
    let balance = ((2 * keys.isqrt() + DECODE_KEYS / 2) / DECODE_KEYS).max(1);
    let fill = keys.div_ceil(blocks).div_ceil(DECODE_KEYS);
    keys.div_ceil(balance.max(fill) * DECODE_KEYS)
}

/// Keys a decode step over `shape` reads: from the first its first query row sees (the window's first, with a
/// sliding window) to kv_len, as attention.cu's `decode_first_key`.
pub fn decode_keys(shape: &AttentionShape) -> usize {
    match shape.window {
        Some(window) => shape.kv_len.min(window + shape.tokens - 1),
        None => shape.kv_len,
    }
}

/// Keys a decode split takes of `keys` ([`decode_keys`]) split `splits` ways (`splits` ≥ 1): their share rounded up
/// to whole [`DECODE_KEYS`] (at least one), as attention.cu's `decode_chunk`; the splits past the keys take none.
pub fn decode_chunk(keys: usize, splits: usize) -> usize {
    keys.div_ceil(splits)
        .div_ceil(DECODE_KEYS)
        .max(1)
        .saturating_mul(DECODE_KEYS)
}

/// Floats of the scratch [`forward_after`] takes for `shape` at the default splits ([`decode_splits`]).
pub fn decode_part_len(gpu: &Gpu, shape: &AttentionShape) -> usize {
    decode_scratch_len(shape, decode_splits(gpu, shape))
}

/// Floats of a scratch that splits `shape`'s KV length `splits` ways: the splits' partial rows,
/// [batch, heads, tokens, splits, head_dim + 2].
pub fn decode_scratch_len(shape: &AttentionShape, splits: usize) -> usize {
    shape.batch * shape.heads * shape.tokens * splits * (shape.head_dim + 2)
}

/// The splits a decode scratch of `len` floats holds for `shape` ([`decode_scratch_len`]); None where `len` is no
/// such length for a whole number of splits ≥ 1.
fn scratch_splits(shape: &AttentionShape, len: usize) -> Option<usize> {
    let split = decode_scratch_len(shape, 1);
    (split > 0 && len >= split && len.is_multiple_of(split)).then(|| len / split)
}

/// The decode kernel split over the KV length and the combine of its splits (`p` checked by [`forward_params`]),
/// through `part`'s splits ([`decode_scratch_len`] floats), or the default splits ([`decode_splits`]) through a
/// buffer of its own; with `past`, both read kv_len on the device and `shape.kv_len` is its bound, and a step of one
/// split is one launch (the decode kernel writes the output itself). More splits go through the combine, whose
/// blocks (a row each) merged faster than the decode kernel's last block merging a KV head's rows in the launch
/// (H200 int4 decode: +0.8% to +4% at 2 to 16 splits of TinyLlama's and SmolLM2's shapes, +1.1% to +1.7% at 2 to 8
/// of Phi-3.5's; benches/RESULTS.md).
#[allow(clippy::too_many_arguments)]
fn decode<T: Half>(
    gpu: &Gpu,
    shape: &AttentionShape,
    mut p: Params,
    inputs: DecodeInputs<'_, '_, T>,
    out: &mut CudaSlice<T>,
    lse: Option<&mut CudaSlice<f32>>,
    past: Option<CachedLen<'_>>,
    part: Option<&mut CudaSlice<f32>>,
) -> Result<(), GpuError> {
    let (hd, b) = (shape.head_dim, shape.batch);
    let splits = match &part {
        Some(part) => scratch_splits(shape, part.len()).ok_or_else(|| {
            shape_error(format!(
                "the decode scratch holds {} floats, expected decode_scratch_len: a multiple of {} (a split)",
                part.len(),
                decode_scratch_len(shape, 1),
            ))
        })?,
        None => decode_splits(gpu, shape),
    };
    p.splits = int("splits", splits)?;
    let rows_len = decode_scratch_len(shape, splits);
    let mut own;
    let part = match part {
        Some(part) => part,
        None => {
            // SAFETY: uninitialised on purpose: the combine reads only the live splits, each of which the decode
            // kernel writes in full before.
            own = unsafe { gpu.stream().alloc::<f32>(rows_len) }?;
            &mut own
        }
    };
    let direct = past.is_some() && splits == 1;
    let smem = decode_smem(hd);
    let f = kernel::<T>(gpu, "decode", hd, smem)?;
    let cfg = LaunchConfig {
        grid_dim: (splits as u32, shape.kv_heads as u32, b as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(&p);
    match past {
        Some(l) => launch.arg(l.len),
        None => launch.arg(&NULL),
    };
    let mut rope = RopeParams::default();
    let mut freqs = None;
    match inputs {
        DecodeInputs::Given(inputs) => push_inputs(&mut launch, inputs),
        DecodeInputs::Step(step) => {
            // Both of LongRoPE's sets: the kernel picks by the kv_len it reads.
            let f = step.freqs;
            rope = RopeParams {
                original: f
                    .long
                    .as_ref()
                    .map_or(Ok(0), |(_, o)| int("original context", *o))?,
                rotary_dim: int("rotary_dim", step.rotary_dim)?,
                k_col: int("k_column", step.k_column)?,
                scaling: f.attention_scaling,
            };
            freqs = Some((&f.short, f.long.as_ref().map(|(l, _)| l)));
            launch
                .arg(step.qkv.data)
                .arg(step.keys)
                .arg(step.values)
                .arg(&NULL);
        }
    }
    launch.arg(&mut *part);
    if direct {
        launch.arg(&mut *out);
    } else {
        launch.arg(&NULL);
    }
    match freqs {
        Some((short, long)) => {
            launch.arg(short);
            match long {
                Some(l) => launch.arg(l),
                None => launch.arg(&NULL),
            }
        }
        None => launch.arg(&NULL).arg(&NULL),
    };
    launch.arg(&rope);
    // SAFETY: the rows of q, k, v and the mask were checked against their buffers for shape.kv_len keys, which
    // bounds the kernel's kv_len (`past` at most past.max), and a step's own keys and values against q's buffer;
    // inv_freq (and the long set) hold rotary_dim / 2 frequencies; part holds rows·splits·(head_dim + 2) floats, the
    // kernel's [batch, heads, tokens, splits, D + 2]; out's rows were checked.
    unsafe { launch.launch(cfg) }?;
    if direct {
        return Ok(());
    }
    let f = kernel::<T>(gpu, "combine", hd, 0)?;
    let cfg = LaunchConfig {
        grid_dim: (int("rows", b * shape.heads * shape.tokens)? as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(&p);
    match past {
        Some(l) => launch.arg(l.len),
        None => launch.arg(&NULL),
    };
    launch.arg(&*part).arg(out);
    match lse {
        Some(l) => launch.arg(l),
        None => launch.arg(&NULL),
    };
    // SAFETY: out's rows were checked; the live splits of part were written above; lse has rows entries.
    unsafe { launch.launch(cfg) }?;
    Ok(())
}

/// The gradients of `Σ d_out ⊙ attention(inputs)` with respect to q, k and v, written to `grads` (overwritten; a
/// key no query sees gets zeros). `out` and `lse` are [`forward`]'s output and log-sum-exp for these inputs.
pub fn backward<T: Half>(
    gpu: &Gpu,
    shape: &AttentionShape,
    inputs: &Inputs<'_, T>,
    out: Operand<'_, T>,
    d_out: Operand<'_, T>,
    lse: &CudaSlice<f32>,
    grads: Grads<'_>,
) -> Result<(), GpuError> {
    shape.check()?;
    let mut p = shape.params(inputs)?;
    let (hd, b) = (shape.head_dim, shape.batch);
    let (q_rows, kv_rows) = (b * shape.tokens, b * shape.kv_len);
    let (q_width, kv_width) = (shape.heads * hd, shape.kv_heads * hd);
    check_rows("out", out.rows, out.data.len(), q_rows, q_width, true)?;
    check_rows("d_out", d_out.rows, d_out.data.len(), q_rows, q_width, true)?;
    let Grads { dq, dk, dv } = grads;
    check_rows("dq", dq.1, dq.0.len(), q_rows, q_width, false)?;
    check_rows("dk", dk.1, dk.0.len(), kv_rows, kv_width, false)?;
    check_rows("dv", dv.1, dv.0.len(), kv_rows, kv_width, false)?;
    let rows = q_rows * shape.heads;
    if lse.len() != rows {
        return Err(shape_error(format!(
            "lse has {} entries, expected batch·heads·tokens = {rows}",
            lse.len()
        )));
    }
    p.o_off = int("out offset", out.rows.offset)?;
    p.o_stride = int("out stride", out.rows.stride)?;
    p.do_off = int("d_out offset", d_out.rows.offset)?;
    p.do_stride = int("d_out stride", d_out.rows.stride)?;
    p.dq_off = int("dq offset", dq.1.offset)?;
    p.dq_stride = int("dq stride", dq.1.stride)?;
    p.dk_off = int("dk offset", dk.1.offset)?;
    p.dk_stride = int("dk stride", dk.1.stride)?;
    p.dv_off = int("dv offset", dv.1.offset)?;
    p.dv_stride = int("dv stride", dv.1.stride)?;
    if kv_rows == 0 {
        return Ok(());
    }
    let mut delta = gpu.alloc::<f32>(rows.max(1))?;
    let mut dq_acc = gpu.alloc::<f32>((q_rows * q_width).max(1))?;
    let warps = THREADS as usize / 32;
    if rows > 0 {
        let f = kernel::<T>(gpu, "delta", hd, 0)?;
        let cfg = LaunchConfig {
            grid_dim: (int("rows", rows.div_ceil(warps))? as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: out and d_out rows checked; delta has one float per (b, h, t) row.
        unsafe {
            gpu.stream()
                .launch_builder(&f)
                .arg(&p)
                .arg(out.data)
                .arg(d_out.data)
                .arg(&mut delta)
                .launch(cfg)
        }?;
    }
    let smem = backward_smem(hd);
    let f = kernel::<T>(gpu, "bwd", hd, smem)?;
    let cfg = LaunchConfig {
        grid_dim: (
            shape.kv_len.div_ceil(TILE) as u32,
            shape.kv_heads as u32,
            b as u32,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(&p);
    push_inputs(&mut launch, inputs);
    launch
        .arg(d_out.data)
        .arg(lse)
        .arg(&delta)
        .arg(&mut dq_acc)
        .arg(&mut *dk.0)
        .arg(&mut *dv.0);
    // SAFETY: every operand's rows were checked; dq_acc is the zeroed [batch·tokens, heads, head_dim] accumulator.
    unsafe { launch.launch(cfg) }?;
    if rows > 0 {
        let f = function::<T>(gpu, hd, "attention_dq_copy")?;
        let n = q_rows * q_width;
        let cfg = LaunchConfig {
            grid_dim: (
                n.div_ceil(256).min(gpu.sm_count() as usize * 16) as u32,
                1,
                1,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let head_dim = int("head_dim", hd)?;
        // SAFETY: dq's rows were checked; dq_acc holds batch·tokens·heads·head_dim floats.
        unsafe {
            gpu.stream()
                .launch_builder(&f)
                .arg(&p)
                .arg(&head_dim)
                .arg(&dq_acc)
                .arg(&mut *dq.0)
                .launch(cfg)
        }?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{decode_keys, decode_scratch_len, scratch_splits, splits_for, AttentionShape};

    fn one_token(heads: usize, kv_heads: usize, head_dim: usize) -> AttentionShape {
        AttentionShape {
            batch: 1,
            tokens: 1,
            kv_len: 4096,
            heads,
            kv_heads,
            head_dim,
            window: None,
            scale: 0.125,
        }
    }

    #[test]
    fn decode_splits_are_among_the_fastest_of_the_h200_sweep() {
        // (heads, kv_heads, head_dim) of SmolLM2, TinyLlama, Phi-3.5, Llama-3-8B; the split counts `gpu-bench
        // attention` measured within 6% of the fastest at 1K, 2K, 3K, 4K, 8K, 16K and 64K keys on an H200 (132
        // multiprocessors; benches/RESULTS.md).
        type NearBest = ((usize, usize, usize), [&'static [usize]; 7]);
        let near_best: [NearBest; 4] = [
            (
                (9, 3, 64),
                [
                    &[8],
                    &[16],
                    &[24],
                    &[32],
                    &[32, 64],
                    &[43, 64],
                    &[86, 103, 128],
                ],
            ),
            (
                (32, 4, 64),
                [&[8], &[16], &[24], &[32], &[32, 64], &[64], &[64]],
            ),
            (
                (32, 32, 96),
                [
                    &[4, 8],
                    &[8],
                    &[8],
                    &[7, 8, 11, 16],
                    &[8, 16],
                    &[8, 16],
                    &[6, 8, 16, 32, 52, 64],
                ],
            ),
            (
                (32, 8, 128),
                [
                    &[8],
                    &[16],
                    &[12, 24],
                    &[16, 32],
                    &[22, 32],
                    &[26, 32, 43],
                    &[32],
                ],
            ),
        ];
        let lens = [1024, 2048, 3072, 4096, 8192, 16384, 65536];
        for ((heads, kv_heads, head_dim), splits) in near_best {
            for (kv_len, good) in lens.into_iter().zip(splits) {
                let shape = AttentionShape {
                    kv_len,
                    ..one_token(heads, kv_heads, head_dim)
                };
                let picked = splits_for(132, &shape);
                assert!(
                    good.contains(&picked),
                    "{heads}/{kv_heads}/{head_dim} at {kv_len} keys: {picked} splits, measured near the best {good:?}"
                );
            }
        }
        // 2·√kv_len goes to the nearest 128 keys: 9216 keys take 192 as 256 (36 splits), 9000 take 188 as 128;
        // short caches take one split a 128 keys.
        let smol = one_token(9, 3, 64);
        for (kv_len, want) in [(9216, 36), (9000, 71), (300, 3)] {
            assert_eq!(splits_for(132, &AttentionShape { kv_len, ..smol }), want);
        }
        // A batch that fills the GPU by itself takes one split.
        let wide = AttentionShape {
            batch: 16,
            ..one_token(32, 32, 96)
        };
        assert_eq!(splits_for(132, &wide), 1);
        // With a sliding window only the window's keys are split: Mistral-7B's 4096 at 32K keys as a 4096-key cache.
        let mistral = AttentionShape {
            kv_len: 32768,
            ..one_token(32, 8, 128)
        };
        assert_eq!(splits_for(132, &mistral), 32);
        let windowed = AttentionShape {
            window: Some(4096),
            ..mistral
        };
        assert_eq!(decode_keys(&windowed), 4096);
        let cache_4096 = AttentionShape {
            kv_len: 4096,
            ..one_token(32, 8, 128)
        };
        assert_eq!(splits_for(132, &windowed), splits_for(132, &cache_4096));
        // Four rows read from the first row's window to the last row: 4099 keys.
        assert_eq!(
            decode_keys(&AttentionShape {
                tokens: 4,
                ..windowed
            }),
            4099
        );
        // A window longer than the cache leaves all its keys.
        assert_eq!(
            decode_keys(&AttentionShape {
                kv_len: 100,
                ..windowed
            }),
            100
        );
    }

    #[test]
    fn a_decode_scratchs_length_says_its_splits() {
        let shape = AttentionShape {
            batch: 1,
            tokens: 2,
            kv_len: 4096,
            heads: 8,
            kv_heads: 2,
            head_dim: 64,
            window: None,
            scale: 0.125,
        };
        for splits in 1..70 {
            let len = decode_scratch_len(&shape, splits);
            assert_eq!(len, 8 * 2 * splits * 66);
            assert_eq!(scratch_splits(&shape, len), Some(splits));
            assert_eq!(scratch_splits(&shape, len - 1), None);
            assert_eq!(scratch_splits(&shape, len + 1), None);
        }
        for len in [0, 1, 2, 3] {
            assert_eq!(scratch_splits(&shape, len), None, "{len} floats");
        }
    }
}
