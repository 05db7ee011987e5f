//! Dense matrix products through cuBLAS (`cublasGemmEx`, fp32 accumulation), on row-major matrices as the rest
//! of olive-rs stores them: `C[m, n] = alpha · op(A) · op(B) + beta · C`, where `op` transposes on request. A
//! row-major matrix is its column-major transpose, so the product runs as `Cᵀ = op(B)ᵀ · op(A)ᵀ` with the
//! operands swapped and no copy. A linear layer's product for one token (decode) runs on matmul.cu's `matvec`
//! kernels instead where they apply: cuBLAS's call costs the host three times a plain launch.

use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::float::{as_i32, Float};
use super::rmsnorm::InputNorm;
use super::{Gpu, GpuError, KernelSource};

const SOURCE: KernelSource = crate::cuda_source!("matmul");
/// Weight rows a block of matmul.cu's `matvec` kernels reads (one a warp): its ROWS_PER_BLOCK, so as many outputs,
/// or half as many for the SwiGLU kernels (a gate and an up row an output).
const MATVEC_ROWS_PER_BLOCK: usize = 8;
/// The most inputs a `matvec_norm*` block normalizes in its shared memory: 4 bytes each with the norm's weight,
/// within the 48 KB a launch gets without opting in less 1 KB for the kernel's static shared memory (the norm's
/// partial sums, SwiGLU's up sums; dynamic and static count together). Past it [`linear_normed`] and the like
/// decline (the norm goes first, as its own kernel).
pub const MATVEC_NORM_MAX_K: usize = (48 * 1024 - 1024) / 4;

/// One operand: its data and whether it is used transposed.
pub struct Operand<'a, P> {
    /// The row-major data: `[rows, cols]` of op(X)ᵀ when `transposed`, else of op(X).
    pub data: &'a P,
    /// Use the stored matrix transposed.
    pub transposed: bool,
}

/// `C[m, n] = alpha · op(A)[m, k] · op(B)[k, n] + beta · C`, all row-major and dense.
#[allow(clippy::too_many_arguments)]
pub fn matmul<T, A, B, C>(
    gpu: &Gpu,
    a: Operand<'_, A>,
    b: Operand<'_, B>,
    c: &mut C,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    beta: f32,
) -> Result<(), GpuError>
where
    T: Float,
    A: DevicePtr<T>,
    B: DevicePtr<T>,
    C: DevicePtrMut<T>,
    cudarc::cublas::CudaBlas: Gemm<T>,
{
    for (name, have, want) in [
        ("A", a.data.len(), m * k),
        ("B", b.data.len(), k * n),
        ("C", c.len(), m * n),
    ] {
        if have < want {
            return Err(GpuError::Shape(format!(
                "matmul {m}x{k} · {k}x{n}: {name} holds {have} elements, expected {want}"
            )));
        }
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let op = |t: bool| {
        if t {
            cublasOperation_t::CUBLAS_OP_T
        } else {
            cublasOperation_t::CUBLAS_OP_N
        }
    };
    // Leading dimensions are the stored row lengths.
    let lda = if a.transposed { m } else { k };
    let ldb = if b.transposed { k } else { n };
    let cfg = GemmConfig {
        transa: op(b.transposed),
        transb: op(a.transposed),
        m: as_i32(n, "n")?,
        n: as_i32(m, "m")?,
        k: as_i32(k, "k")?,
        alpha: T::from_f32(alpha),
        lda: as_i32(ldb, "ldb")?,
        ldb: as_i32(lda, "lda")?,
        beta: T::from_f32(beta),
        ldc: as_i32(n, "n")?,
    };
    // SAFETY: the three buffers hold at least the elements the shapes address (checked above).
    unsafe { gpu.blas().gemm(cfg, b.data, a.data, c) }?;
    Ok(())
}

/// A linear layer's product, PyTorch's `x · Wᵀ`: `out[m, n] = x[m, k] · w[n, k]ᵀ (+ out when accumulate)`.
pub fn linear<T, X, W, O>(
    gpu: &Gpu,
    x: &X,
    w: &W,
    out: &mut O,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
) -> Result<(), GpuError>
where
    T: Float,
    X: DevicePtr<T>,
    W: DevicePtr<T>,
    O: DevicePtrMut<T>,
    cudarc::cublas::CudaBlas: Gemm<T>,
{
    let a = Operand {
        data: x,
        transposed: false,
    };
    let b = Operand {
        data: w,
        transposed: true,
    };
    if m == 1 && n > 0 && x.len() >= k && w.len() >= n * k && out.len() >= n {
        let stream = gpu.stream();
        let (x_ptr, _x) = x.device_ptr(stream);
        let (w_ptr, _w) = w.device_ptr(stream);
        let (o_ptr, _o) = out.device_ptr_mut(stream);
        if matvec::<T>(
            gpu,
            T::SUFFIX,
            (o_ptr, x_ptr, w_ptr),
            (n, k),
            Matvec::Plain { accumulate },
        )? {
            return Ok(());
        }
    }
    let beta = if accumulate { 1.0 } else { 0.0 };
    matmul(gpu, a, b, out, (m, n, k), 1.0, beta)
}

/// One row's `out[n] = rmsnorm(x[k]) · wᵀ`, the norm folded into matmul.cu's `matvec_norm_*` (decode's norm and
/// the product after it in one launch); `out` in the operands' type, or f32 (logits). `Ok(false)`, nothing
/// launched, where that kernel does not apply (as [`linear`]'s one-row path: f32 operands, k % 8 != 0, x or w not
/// 16-byte aligned; or k over the [`MATVEC_NORM_MAX_K`] inputs its block normalizes in shared memory).
pub fn linear_normed<T, X, W, O>(
    gpu: &Gpu,
    x: &X,
    norm: InputNorm<'_, T>,
    w: &W,
    out: &mut O,
    (n, k): (usize, usize),
) -> Result<bool, GpuError>
where
    T: Float,
    X: DevicePtr<T>,
    W: DevicePtr<T>,
    O: DevicePtrMut<T>,
{
    normed_matvec(gpu, T::SUFFIX, x, norm, w, out, (n, k), false)
}

/// [`linear_normed`] with f32 output.
pub fn linear_normed_f32_out<T, X, W, O>(
    gpu: &Gpu,
    x: &X,
    norm: InputNorm<'_, T>,
    w: &W,
    out: &mut O,
    (n, k): (usize, usize),
) -> Result<bool, GpuError>
where
    T: Float,
    X: DevicePtr<T>,
    W: DevicePtr<T>,
    O: DevicePtrMut<f32>,
{
    normed_matvec(
        gpu,
        &format!("{}_f32", T::SUFFIX),
        x,
        norm,
        w,
        out,
        (n, k),
        false,
    )
}

/// SwiGLU's gate_up product for one token with its gating in the write-out: `act[n] = silu(gate) ⊙ up` where
/// `[gate; up] = rmsnorm(x[k]) · w[2n, k]ᵀ` (gate rows first), each product rounded to `T` as written, then
/// silu_mul.cu's formula: matmul.cu's `matvec_norm_swiglu_*` (decode's norm, gate_up product and silu_mul in one
/// launch). `Ok(false)`, nothing launched, where that kernel does not apply (as [`linear_normed`]).
pub fn linear_normed_swiglu<T, X, W, O>(
    gpu: &Gpu,
    x: &X,
    norm: InputNorm<'_, T>,
    w: &W,
    act: &mut O,
    (n, k): (usize, usize),
) -> Result<bool, GpuError>
where
    T: Float,
    X: DevicePtr<T>,
    W: DevicePtr<T>,
    O: DevicePtrMut<T>,
{
    normed_matvec(gpu, T::SUFFIX, x, norm, w, act, (n, k), true)
}

/// `out[n]` from rmsnorm(x) and w: [n, k], or with `swiglu` SwiGLU's gate_up [2n, k] and its gated output.
#[allow(clippy::too_many_arguments)]
fn normed_matvec<T, X, W, O, E>(
    gpu: &Gpu,
    kernel: &str,
    x: &X,
    norm: InputNorm<'_, T>,
    w: &W,
    out: &mut O,
    (n, k): (usize, usize),
    swiglu: bool,
) -> Result<bool, GpuError>
where
    T: Float,
    X: DevicePtr<T>,
    W: DevicePtr<T>,
    O: DevicePtrMut<E>,
{
    let (op, w_rows) = if swiglu {
        ("linear_normed_swiglu", 2 * n)
    } else {
        ("linear_normed", n)
    };
    norm.check(op, k)?;
    for (name, have, want) in [
        ("x", x.len(), k),
        ("w", w.len(), w_rows * k),
        ("out", out.len(), n),
    ] {
        if have < want {
            return Err(GpuError::Shape(format!(
                "{op} 1x{k} · ({w_rows}x{k})ᵀ: {name} holds {have} elements, expected {want}"
            )));
        }
    }
    if n == 0 {
        return Ok(true);
    }
    let stream = gpu.stream();
    let (x_ptr, _x) = x.device_ptr(stream);
    let (w_ptr, _w) = w.device_ptr(stream);
    let (norm_ptr, _norm) = norm.weight.device_ptr(stream);
    let (o_ptr, _o) = out.device_ptr_mut(stream);
    matvec::<T>(
        gpu,
        kernel,
        (o_ptr, x_ptr, w_ptr),
        (n, k),
        Matvec::Normed {
            weight: norm_ptr,
            eps: norm.eps,
            swiglu,
        },
    )
}

/// What a [`matvec`] launch computes.
#[derive(Clone, Copy)]
enum Matvec {
    /// `matvec_<kernel>`: y = x · wᵀ, or y += with `accumulate`.
    Plain { accumulate: bool },
    /// `matvec_norm_<kernel>`: x through RMSNorm first (its weight's device address, epsilon); with `swiglu`
    /// `matvec_norm_swiglu_<kernel>`: w SwiGLU's gate_up [2n, k], y its gated [n].
    Normed { weight: u64, eps: f32, swiglu: bool },
}

/// One row's product through matmul.cu's `matvec` kernels where they apply (16-bit operands, k a multiple of 8, x,
/// w and the norm's weight 16-byte aligned): a plain launch, a third of cuBLAS's host time a call, which decode pays
/// for every layer. `Ok(false)` when it does not apply (nothing launched). The caller checked that y, x and w (the
/// device addresses) hold n, k and n · k (2n · k for SwiGLU) elements, and the norm's weight k.
fn matvec<T: Float>(
    gpu: &Gpu,
    kernel: &str,
    (y, x, w): (u64, u64, u64),
    (n, k): (usize, usize),
    what: Matvec,
) -> Result<bool, GpuError> {
    if T::SUFFIX == "f32" || k % 8 != 0 || x % 16 != 0 || w % 16 != 0 {
        return Ok(false);
    }
    if matches!(what, Matvec::Normed { weight, .. } if weight % 16 != 0 || k > MATVEC_NORM_MAX_K) {
        return Ok(false);
    }
    let name = match what {
        Matvec::Plain { .. } => format!("matvec_{kernel}"),
        Matvec::Normed { swiglu: false, .. } => format!("matvec_norm_{kernel}"),
        Matvec::Normed { swiglu: true, .. } => format!("matvec_norm_swiglu_{kernel}"),
    };
    let f = gpu.function(&SOURCE, &name)?;
    let (n_i, k_i) = (as_i32(n, "n")?, as_i32(k, "k")?);
    let accumulate = i32::from(matches!(what, Matvec::Plain { accumulate: true }));
    let outputs_per_block = match what {
        Matvec::Normed { swiglu: true, .. } => MATVEC_ROWS_PER_BLOCK / 2,
        _ => MATVEC_ROWS_PER_BLOCK,
    };
    let cfg = LaunchConfig {
        grid_dim: (as_i32(n.div_ceil(outputs_per_block), "n")? as u32, 1, 1),
        block_dim: (32 * MATVEC_ROWS_PER_BLOCK as u32, 1, 1),
        shared_mem_bytes: match what {
            Matvec::Normed { .. } => 4 * k as u32,
            Matvec::Plain { .. } => 0,
        },
    };
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(&y).arg(&x).arg(&w).arg(&n_i).arg(&k_i);
    match &what {
        Matvec::Plain { .. } => {
            launch.arg(&accumulate);
        }
        Matvec::Normed { weight, eps, .. } => {
            launch.arg(weight).arg(eps);
        }
    }
    // SAFETY: y, x and w hold n, k and n·k (2n·k for SwiGLU) elements of the kernel's types, and the norm's weight
    // k (the caller checked); k % 8 == 0 and the 16-byte alignment of x, w (so of every row of w) and the norm's
    // weight are what the kernel's vector loads need; a normed launch's shared memory holds x's k elements and the
    // norm weight's; the arguments are the named kernel's.
    unsafe { launch.launch(cfg) }?;
    Ok(true)
}

/// The cuBLAS data type of `T`.
fn data_type<T: Float>() -> cudaDataType_t {
    match T::SUFFIX {
        "bf16" => cudaDataType_t::CUDA_R_16BF,
        "f16" => cudaDataType_t::CUDA_R_16F,
        _ => cudaDataType_t::CUDA_R_32F,
    }
}

/// [`linear`] with a wider output: `out[m, n] (f32) = x[m, k] · w[n, k]ᵀ` for 16-bit x and w (logits kept in
/// f32, as transformers upcasts them).
pub fn linear_f32_out<T, X, W, O>(
    gpu: &Gpu,
    x: &X,
    w: &W,
    out: &mut O,
    (m, n, k): (usize, usize, usize),
) -> Result<(), GpuError>
where
    T: Float,
    X: DevicePtr<T>,
    W: DevicePtr<T>,
    O: DevicePtrMut<f32>,
{
    for (name, have, want) in [
        ("x", x.len(), m * k),
        ("w", w.len(), n * k),
        ("out", out.len(), m * n),
    ] {
        if have < want {
            return Err(GpuError::Shape(format!(
                "linear {m}x{k} · ({n}x{k})ᵀ: {name} holds {have} elements, expected {want}"
            )));
        }
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (alpha, beta) = (1f32, 0f32);
    let stream = gpu.stream();
    let (w_ptr, _w) = w.device_ptr(stream);
    let (x_ptr, _x) = x.device_ptr(stream);
    let (o_ptr, _o) = out.device_ptr_mut(stream);
    if m == 1
        && matvec::<T>(
            gpu,
            &format!("{}_f32", T::SUFFIX),
            (o_ptr, x_ptr, w_ptr),
            (n, k),
            Matvec::Plain { accumulate: false },
        )?
    {
        return Ok(());
    }
    // SAFETY: as in `matmul` (Cᵀ[n, m] = W · xᵀ), the buffers hold what the shapes address (checked above);
    // alpha and beta are f32 for the f32 compute type.
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *gpu.blas().handle(),
            cublasOperation_t::CUBLAS_OP_T,
            cublasOperation_t::CUBLAS_OP_N,
            as_i32(n, "n")?,
            as_i32(m, "m")?,
            as_i32(k, "k")?,
            (&alpha) as *const f32 as *const _,
            w_ptr as *const _,
            data_type::<T>(),
            as_i32(k, "k")?,
            x_ptr as *const _,
            data_type::<T>(),
            as_i32(k, "k")?,
            (&beta) as *const f32 as *const _,
            o_ptr as *mut _,
            cudaDataType_t::CUDA_R_32F,
            as_i32(n, "n")?,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }?;
    Ok(())
}
