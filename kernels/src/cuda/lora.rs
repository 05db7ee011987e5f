//! LoRA forward and backward on the GPU (kernels/cuda/lora.cu), the function of [`crate::cpu::lora_forward_ref`] /
//! [`crate::cpu::lora_backward_ref`]: `y += scale·(x·Aᵀ)·Bᵀ`, then `g = scale·dy·B`, `dx += g·A`,
//! `grad_A += gᵀ·x`, `grad_B += scale·dyᵀ·u`. A: [rank, in] and B: [out, rank] stay fp32 (PEFT's layouts and
//! master weights); x, y, dy, dx are 16-bit, possibly column ranges of wider rows (a fused qkv / gate-up output).
//!
//! Fused: the update is added into y in place (one read-modify-write of y, no delta tensor, the scale folded in)
//! and the fp32 masters are rounded to 16 bits as their tiles load (no converted copies). Not fused: x·Aᵀ and ·Bᵀ
//! are two kernels with u ([tokens, rank] fp32, small) between them — one kernel for both was 2× the base GEMM's
//! time (see lora.cu); and the frozen base product (cuBLAS, or the int4 kernels) — folding LoRA into its epilogue
//! would save one pass over y but means owning the base GEMM.

use super::attention::{Operand, Rows};
use super::float::{as_i32, Half};
use super::{CudaSlice, DeviceRepr, Gpu, GpuError, LaunchConfig, PushKernelArg};
use crate::cpu::LoraDims;

const SOURCE: super::KernelSource = crate::cuda_source!("lora");
const THREADS: u32 = 128;
/// Tokens, and input/output features, per block tile (lora.cu's TILE).
const TILE: usize = 64;
/// The largest rank the kernels take (four 16-column fragments).
pub const MAX_RANK: usize = 64;

/// The adapter's weights: A [rank, in] and B [out, rank], fp32.
#[derive(Clone, Copy, Debug)]
pub struct Adapter<'a> {
    /// lora_A.
    pub a: &'a CudaSlice<f32>,
    /// lora_B.
    pub b: &'a CudaSlice<f32>,
}

/// What [`backward`] adds to: the weights' gradients (fp32) and, when given, x's gradient (16-bit rows).
#[derive(Debug)]
pub struct LoraGrads<'a, T> {
    /// dL/dA += gᵀ·x: [rank, in].
    pub grad_a: &'a mut CudaSlice<f32>,
    /// dL/dB += scale·dyᵀ·u: [out, rank].
    pub grad_b: &'a mut CudaSlice<f32>,
    /// dL/dx += g·A: tokens rows of in.
    pub dx: Option<(&'a mut CudaSlice<T>, Rows)>,
}

/// lora.cu's LoraParams, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Params {
    tokens: i32,
    n_in: i32,
    n_out: i32,
    rank: i32,
    x_off: i32,
    x_stride: i32,
    y_off: i32,
    y_stride: i32,
    p_j: i32,
    p_i: i32,
    q_o: i32,
    q_j: i32,
    out_slice: i32,
    tokens_per_block: i32,
    in_slice: i32,
    c_m: i32,
    c_j: i32,
    scale_u: f32,
    scale_y: f32,
}

// SAFETY: a plain #[repr(C)] struct of 4-byte numbers, laid out as lora.cu's LoraParams.
unsafe impl DeviceRepr for Params {}

fn error(what: String) -> GpuError {
    GpuError::Shape(format!("lora: {what}"))
}

fn int(name: &str, v: usize) -> Result<i32, GpuError> {
    as_i32(v, &format!("lora: {name}"))
}

/// `rows` rows of `width` at `r` fit a buffer of `len` elements.
fn check_rows(name: &str, r: Rows, len: usize, rows: usize, width: usize) -> Result<(), GpuError> {
    if !r.fit(rows, width, len) {
        return Err(error(format!(
            "{name}: {rows} rows of {width} at offset {} stride {} do not fit its {len} elements",
            r.offset, r.stride
        )));
    }
    Ok(())
}

fn check_dims(d: &LoraDims, w: &Adapter<'_>) -> Result<(), GpuError> {
    if d.rank == 0 || d.rank > MAX_RANK {
        return Err(error(format!("rank {} (1 to {MAX_RANK} expected)", d.rank)));
    }
    if w.a.len() != d.rank * d.in_features || w.b.len() != d.out_features * d.rank {
        return Err(error(format!(
            "A has {} and B {} floats, expected [{r}, {}] and [{}, {r}]",
            w.a.len(),
            w.b.len(),
            d.in_features,
            d.out_features,
            r = d.rank
        )));
    }
    Ok(())
}

/// Blocks along a second grid axis: enough for about 4 per multiprocessor with `first` blocks on the first axis, at
/// most one per 64-wide tile of `len`; returns (slices, slice length, a multiple of 64).
fn slices(gpu: &Gpu, first: usize, len: usize) -> (usize, usize) {
    let want = (4 * gpu.sm_count() as usize)
        .div_ceil(first.max(1))
        .clamp(1, len.div_ceil(TILE).max(1));
    let slice = len.div_ceil(want).div_ceil(TILE).max(1) * TILE;
    (len.div_ceil(slice).max(1), slice)
}

/// u (zeroed first) = scale_u·X·Pᵀ ([tokens, rank]), then, with `y`, Y += scale_y·u·Qᵀ over `n_out` columns.
fn down_up<T: Half>(
    gpu: &Gpu,
    mut p: Params,
    x: Operand<'_, T>,
    pq: (&CudaSlice<f32>, &CudaSlice<f32>),
    y: Option<&mut CudaSlice<T>>,
    u: &mut CudaSlice<f32>,
) -> Result<(), GpuError> {
    let blocks = (p.tokens as usize).div_ceil(TILE);
    let (in_splits, in_slice) = slices(gpu, blocks, p.n_in as usize);
    p.in_slice = int("in_slice", in_slice)?;
    gpu.stream().memset_zeros(u)?;
    let f = gpu.function(&SOURCE, &format!("lora_down_{}", T::SUFFIX))?;
    let cfg = LaunchConfig {
        grid_dim: (int("token blocks", blocks)? as u32, in_splits as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the callers checked x's rows against its buffer; P holds rank·n_in floats at its strides; u holds
    // tokens·rank.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(&p)
            .arg(x.data)
            .arg(pq.0)
            .arg(&mut *u)
            .launch(cfg)
    }?;
    let Some(y) = y else { return Ok(()) };
    let (out_splits, out_slice) = slices(gpu, blocks, p.n_out as usize);
    p.out_slice = int("out_slice", out_slice)?;
    let f = gpu.function(&SOURCE, &format!("lora_up_{}", T::SUFFIX))?;
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, out_splits as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the callers checked y's rows for n_out columns; Q holds n_out·rank floats at its strides.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(&p)
            .arg(&*u)
            .arg(pq.1)
            .arg(y)
            .launch(cfg)
    }?;
    Ok(())
}

/// Runs lora_outer: C(m, j) += alpha·Σ_t M[t, m]·W[t, j] for m < n_m, C(m, j) = c[m·c_m + j·c_j].
fn outer<T: Half>(
    gpu: &Gpu,
    mut p: Params,
    m: Operand<'_, T>,
    w: &CudaSlice<f32>,
    c: &mut CudaSlice<f32>,
) -> Result<(), GpuError> {
    let (tokens, n_m) = (p.tokens as usize, p.n_in as usize);
    let m_blocks = n_m.div_ceil(TILE);
    let (t_slices, per) = slices(gpu, m_blocks, tokens);
    p.tokens_per_block = int("tokens per block", per)?;
    let f = gpu.function(&SOURCE, &format!("lora_outer_{}", T::SUFFIX))?;
    let cfg = LaunchConfig {
        grid_dim: (int("blocks", m_blocks)? as u32, t_slices as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: M's rows were checked by the caller; W holds tokens·rank floats; C's strides stay inside its n_m·rank.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(&p)
            .arg(m.data)
            .arg(w)
            .arg(c)
            .launch(cfg)
    }?;
    Ok(())
}

/// y (rows `y.1`, `out_features` columns) += scale·(x·Aᵀ)·Bᵀ, and u = x·Aᵀ ([tokens, rank] fp32, kept for
/// [`backward`]). x: tokens rows of in_features.
pub fn forward<T: Half>(
    gpu: &Gpu,
    d: &LoraDims,
    x: Operand<'_, T>,
    w: Adapter<'_>,
    y: (&mut CudaSlice<T>, Rows),
    u: &mut CudaSlice<f32>,
) -> Result<(), GpuError> {
    check_dims(d, &w)?;
    check_rows("x", x.rows, x.data.len(), d.tokens, d.in_features)?;
    check_rows("y", y.1, y.0.len(), d.tokens, d.out_features)?;
    if u.len() != d.tokens * d.rank {
        return Err(error(format!(
            "u has {} floats, expected tokens·rank = {}",
            u.len(),
            d.tokens * d.rank
        )));
    }
    if d.tokens == 0 {
        return Ok(());
    }
    let p = Params {
        tokens: int("tokens", d.tokens)?,
        n_in: int("in_features", d.in_features)?,
        n_out: int("out_features", d.out_features)?,
        rank: int("rank", d.rank)?,
        x_off: int("x offset", x.rows.offset)?,
        x_stride: int("x stride", x.rows.stride)?,
        y_off: int("y offset", y.1.offset)?,
        y_stride: int("y stride", y.1.stride)?,
        p_j: int("in_features", d.in_features)?,
        p_i: 1,
        q_o: int("rank", d.rank)?,
        q_j: 1,
        scale_u: 1.0,
        scale_y: d.scale,
        ..Params::default()
    };
    down_up(gpu, p, x, (w.a, w.b), Some(y.0), u)
}

/// The backward of [`forward`] for dy (tokens rows of out_features): adds to `grads`; `u` is forward's.
pub fn backward<T: Half>(
    gpu: &Gpu,
    d: &LoraDims,
    x: Operand<'_, T>,
    dy: Operand<'_, T>,
    u: &CudaSlice<f32>,
    w: Adapter<'_>,
    grads: LoraGrads<'_, T>,
) -> Result<(), GpuError> {
    check_dims(d, &w)?;
    check_rows("x", x.rows, x.data.len(), d.tokens, d.in_features)?;
    check_rows("dy", dy.rows, dy.data.len(), d.tokens, d.out_features)?;
    if let Some((dx, rows)) = &grads.dx {
        check_rows("dx", *rows, dx.len(), d.tokens, d.in_features)?;
    }
    if u.len() != d.tokens * d.rank
        || grads.grad_a.len() != w.a.len()
        || grads.grad_b.len() != w.b.len()
    {
        return Err(error(format!(
            "u, grad_A, grad_B have {}, {}, {} floats, expected {}, {}, {}",
            u.len(),
            grads.grad_a.len(),
            grads.grad_b.len(),
            d.tokens * d.rank,
            w.a.len(),
            w.b.len()
        )));
    }
    if d.tokens == 0 {
        return Ok(());
    }
    let base = Params {
        tokens: int("tokens", d.tokens)?,
        rank: int("rank", d.rank)?,
        ..Params::default()
    };
    // g = scale·dy·B (P(j, o) = B[o·rank + j]), then dx += g·A (Q(i, j) = A[j·in + i]).
    let mut g = gpu.alloc::<f32>(d.tokens * d.rank)?;
    let (dx, dx_rows) = match grads.dx {
        Some((dx, rows)) => (Some(dx), rows),
        None => (None, Rows::packed(0)),
    };
    let p = Params {
        n_in: int("out_features", d.out_features)?,
        n_out: if dx.is_some() {
            int("in_features", d.in_features)?
        } else {
            0
        },
        x_off: int("dy offset", dy.rows.offset)?,
        x_stride: int("dy stride", dy.rows.stride)?,
        y_off: int("dx offset", dx_rows.offset)?,
        y_stride: int("dx stride", dx_rows.stride)?,
        p_j: 1,
        p_i: base.rank,
        q_o: 1,
        q_j: int("in_features", d.in_features)?,
        scale_u: d.scale,
        scale_y: 1.0,
        ..base
    };
    down_up(gpu, p, dy, (w.b, w.a), dx, &mut g)?;
    // grad_B(o, j) += scale·Σ_t dy[t, o]·u[t, j]
    let p = Params {
        n_in: int("out_features", d.out_features)?,
        x_off: int("dy offset", dy.rows.offset)?,
        x_stride: int("dy stride", dy.rows.stride)?,
        c_m: base.rank,
        c_j: 1,
        scale_u: d.scale,
        ..base
    };
    outer(gpu, p, dy, u, grads.grad_b)?;
    // grad_A(j, i) += Σ_t g[t, j]·x[t, i]
    let p = Params {
        n_in: int("in_features", d.in_features)?,
        x_off: int("x offset", x.rows.offset)?,
        x_stride: int("x stride", x.rows.stride)?,
        c_m: 1,
        c_j: int("in_features", d.in_features)?,
        scale_u: 1.0,
        ..base
    };
    outer(gpu, p, x, &g, grads.grad_a)
}
