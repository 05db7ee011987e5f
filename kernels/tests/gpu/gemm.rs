//! gemm.rs (cuBLAS) against an f64 product of the same (rounded) inputs, every transpose combination.

use olive_kernels::cuda::float::Float;
use olive_kernels::cuda::gemm::{
    linear, linear_normed, linear_normed_f32_out, linear_normed_swiglu, matmul, Operand,
    MATVEC_NORM_MAX_K,
};
use olive_kernels::cuda::rmsnorm::{rmsnorm, InputNorm};
use olive_kernels::cuda::silu_mul::silu_mul;
use olive_kernels::cuda::{bf16, f16, test_gpu, Gpu};

use super::common::{random, rel_error};
use super::floats::{download_f32, poisoned, tol, upload_as};

/// bf16 operands and output: the output's 8-bit mantissa rounds each element by up to 2^-9 relative; fp32
/// accumulation adds far less.
const BF16_REL: f64 = 1e-2;
/// f32 throughout (cuBLAS's default math, no TF32): summation-order differences only.
const F32_REL: f64 = 1e-5;

fn check<T: Float>(gpu: &Gpu, (m, n, k): (usize, usize, usize), tol: f64)
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let round = |v: Vec<f32>| -> Vec<T> { v.into_iter().map(T::from_f32).collect() };
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let a = round(random(m * k, 1 + m as u64, 1.0));
        let b = round(random(k * n, 2 + n as u64, 1.0));
        let c0 = round(random(m * n, 3, 1.0));
        // Element (i, j) of op(X) for X stored row-major, transposed on request.
        let at = |x: &[T], i: usize, j: usize, rows: usize, cols: usize, t: bool| {
            let _ = rows;
            if t {
                x[j * rows + i].to_f32() as f64
            } else {
                x[i * cols + j].to_f32() as f64
            }
        };
        let mut reference = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|p| at(&a, i, p, m, k, ta) * at(&b, p, j, k, n, tb))
                    .sum();
                reference[i * n + j] = (0.5 * dot - 2.0 * c0[i * n + j].to_f32() as f64) as f32;
            }
        }
        let (da, db) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
        let mut dc = gpu.upload(&c0).unwrap();
        let a_op = Operand {
            data: &da,
            transposed: ta,
        };
        let b_op = Operand {
            data: &db,
            transposed: tb,
        };
        matmul(gpu, a_op, b_op, &mut dc, (m, n, k), 0.5, -2.0).unwrap();
        let out: Vec<f32> = gpu
            .download(&dc)
            .unwrap()
            .into_iter()
            .map(T::to_f32)
            .collect();
        let err = rel_error(&out, &reference);
        assert!(
            err <= tol,
            "{m}x{k}x{n} ta={ta} tb={tb} {}: rel error {err:.2e}",
            T::SUFFIX
        );
    }
}

#[test]
fn matmul_matches_an_f64_product_for_every_transpose() {
    let Some(gpu) = test_gpu("gpu::gemm::matmul_matches_an_f64_product_for_every_transpose") else {
        return;
    };
    for shape in [(1, 1, 1), (7, 130, 33), (64, 96, 200), (1, 3072, 256)] {
        check::<bf16>(&gpu, shape, BF16_REL);
        check::<f32>(&gpu, shape, F32_REL);
    }
}

#[test]
fn linear_is_x_times_w_transposed_and_accumulates() {
    let Some(gpu) = test_gpu("gpu::gemm::linear_is_x_times_w_transposed_and_accumulates") else {
        return;
    };
    let (m, n, k) = (5, 17, 40);
    let (x, w, base) = (
        random(m * k, 11, 1.0),
        random(n * k, 12, 1.0),
        random(m * n, 13, 1.0),
    );
    let mut reference = base.clone();
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k)
                .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                .sum();
            reference[i * n + j] += dot as f32;
        }
    }
    let mut out = gpu.upload(&base).unwrap();
    linear(
        &gpu,
        &gpu.upload(&x).unwrap(),
        &gpu.upload(&w).unwrap(),
        &mut out,
        (m, n, k),
        true,
    )
    .unwrap();
    let err = rel_error(&gpu.download(&out).unwrap(), &reference);
    assert!(err <= F32_REL, "rel error {err:.2e}");
    let short = gpu.upload(&x[..10]).unwrap();
    let e = linear(
        &gpu,
        &short,
        &gpu.upload(&w).unwrap(),
        &mut out,
        (m, n, k),
        false,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("A holds 10 elements, expected 200"),
        "{e}"
    );
}

#[test]
fn linear_f32_out_keeps_the_product_in_f32() {
    let Some(gpu) = test_gpu("gpu::gemm::linear_f32_out_keeps_the_product_in_f32") else {
        return;
    };
    let (m, n, k) = (3, 1001, 64);
    let x: Vec<bf16> = random(m * k, 21, 1.0)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let w: Vec<bf16> = random(n * k, 22, 1.0)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let mut reference = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k)
                .map(|p| x[i * k + p].to_f64() * w[j * k + p].to_f64())
                .sum();
            reference[i * n + j] = dot as f32;
        }
    }
    let mut out = gpu.upload(&vec![f32::NAN; m * n]).unwrap();
    let (dx, dw) = (gpu.upload(&x).unwrap(), gpu.upload(&w).unwrap());
    olive_kernels::cuda::gemm::linear_f32_out(&gpu, &dx, &dw, &mut out, (m, n, k)).unwrap();
    let err = rel_error(&gpu.download(&out).unwrap(), &reference);
    assert!(err <= F32_REL, "rel error {err:.2e}");
}

/// One token's `linear` (matmul.cu's `matvec` where k % 8 == 0 and x and w are 16-byte aligned, cuBLAS
/// otherwise) against kernels/src/cpu/matmul.rs at m = 1 on the same rounded inputs, with and without
/// accumulating, and `linear_f32_out` likewise.
fn check_one_token<T: Float>(gpu: &Gpu, (n, k): (usize, usize), x_offset: usize, seed: u64)
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let (x, x_f) = upload_as::<T>(gpu, &random(x_offset + k, seed, 1.0));
    let (w, w_f) = upload_as::<T>(gpu, &random(n * k, seed + 1, 1.0));
    let (base, base_f) = upload_as::<T>(gpu, &random(n, seed + 2, 1.0));
    let x_view = x.slice(x_offset..);
    let mut product = vec![0f32; n];
    olive_kernels::cpu::matmul::matmul(&x_f[x_offset..], &w_f, &mut product, 1, k, n);
    for accumulate in [false, true] {
        let mut out = if accumulate {
            base.clone()
        } else {
            poisoned::<T>(gpu, n)
        };
        linear(gpu, &x_view, &w, &mut out, (1, n, k), accumulate).unwrap();
        let reference: Vec<f32> = (0..n)
            .map(|i| product[i] + if accumulate { base_f[i] } else { 0.0 })
            .collect();
        let err = rel_error(&download_f32(gpu, &out), &reference);
        assert!(
            err <= tol::<T>(),
            "{} n {n} k {k} x offset {x_offset} accumulate {accumulate}: rel error {err:.2e}",
            T::SUFFIX
        );
    }
    // f32 logits: against f64 sums (the CPU's f32 sums in their own order would differ by about as much).
    let exact: Vec<f32> = (0..n)
        .map(|i| {
            let row = &w_f[i * k..(i + 1) * k];
            let dot: f64 = row
                .iter()
                .zip(&x_f[x_offset..])
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            dot as f32
        })
        .collect();
    let mut logits = gpu.upload(&vec![f32::NAN; n]).unwrap();
    olive_kernels::cuda::gemm::linear_f32_out(gpu, &x_view, &w, &mut logits, (1, n, k)).unwrap();
    let err = rel_error(&gpu.download(&logits).unwrap(), &exact);
    assert!(
        err <= F32_REL,
        "{} f32 out n {n} k {k} x offset {x_offset}: rel error {err:.2e}",
        T::SUFFIX
    );
}

/// One row's `linear_normed` / `linear_normed_f32_out` (RMSNorm folded into the GEMV) against the rmsnorm kernel
/// followed by `linear` / `linear_f32_out`: the same normalized inputs but for r's summation order (an input may
/// round to its neighbour), so within the 16-bit product's tolerance; declined (nothing launched) where the GEMV
/// does not apply.
fn check_one_token_normed<T: Float>(gpu: &Gpu, (n, k): (usize, usize), seed: u64)
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let (x, _) = upload_as::<T>(gpu, &random(k, seed, 1.0));
    let (w, _) = upload_as::<T>(gpu, &random(n * k, seed + 1, 1.0));
    let (norm_w, _) = upload_as::<T>(gpu, &random(k, seed + 2, 1.0));
    let norm = InputNorm {
        weight: &norm_w,
        eps: 1e-6,
    };
    let mut normed = poisoned::<T>(gpu, k);
    rmsnorm(gpu, &x, &norm_w, norm.eps, &mut normed).unwrap();
    let mut want = poisoned::<T>(gpu, n);
    linear(gpu, &normed, &w, &mut want, (1, n, k), false).unwrap();
    let mut out = poisoned::<T>(gpu, n);
    let applies = k % 8 == 0 && k <= MATVEC_NORM_MAX_K;
    assert_eq!(
        linear_normed(gpu, &x, norm, &w, &mut out, (n, k)).unwrap(),
        applies,
        "{} n {n} k {k}",
        T::SUFFIX
    );
    if applies {
        let err = rel_error(&download_f32(gpu, &out), &download_f32(gpu, &want));
        assert!(
            err <= tol::<T>(),
            "{} n {n} k {k}: rel error {err:.2e}",
            T::SUFFIX
        );
    }
    let mut want = gpu.upload(&vec![f32::NAN; n]).unwrap();
    olive_kernels::cuda::gemm::linear_f32_out(gpu, &normed, &w, &mut want, (1, n, k)).unwrap();
    let mut logits = gpu.upload(&vec![f32::NAN; n]).unwrap();
    assert_eq!(
        linear_normed_f32_out(gpu, &x, norm, &w, &mut logits, (n, k)).unwrap(),
        applies
    );
    if applies {
        let got = gpu.download(&logits).unwrap();
        let err = rel_error(&got, &gpu.download(&want).unwrap());
        assert!(
            err <= tol::<T>(),
            "{} f32 out n {n} k {k}: rel error {err:.2e}",
            T::SUFFIX
        );
    }
}

#[test]
fn one_token_normed_linear_matches_rmsnorm_then_linear() {
    let Some(gpu) = test_gpu("gpu::gemm::one_token_normed_linear_matches_rmsnorm_then_linear")
    else {
        return;
    };
    for (i, (n, k)) in [
        (1001, 576),
        (3072, 8192),
        (49152, 576),
        (33, 44),
        (5, MATVEC_NORM_MAX_K),
        (5, MATVEC_NORM_MAX_K + 8),
    ]
    .into_iter()
    .enumerate()
    {
        check_one_token_normed::<bf16>(&gpu, (n, k), 700 + 10 * i as u64);
        check_one_token_normed::<f16>(&gpu, (n, k), 705 + 10 * i as u64);
    }
}

/// One row's `linear_normed_swiglu` (RMSNorm, SwiGLU's gate_up product and its gating in one kernel) against
/// rmsnorm, `linear` and silu_mul one after the other: both round the gate and up products as written, so they
/// differ by the products' summation order only (an input of silu_mul may round to its neighbour), within the
/// 16-bit product's tolerance; declined (act untouched) where the GEMV does not apply; a gate_up of n rows, not 2n,
/// is a shape error.
fn check_one_token_normed_swiglu<T: Float>(gpu: &Gpu, (half, k): (usize, usize), seed: u64)
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let (x, _) = upload_as::<T>(gpu, &random(k, seed, 1.0));
    let (w, _) = upload_as::<T>(gpu, &random(2 * half * k, seed + 1, 1.0));
    let (norm_w, _) = upload_as::<T>(gpu, &random(k, seed + 2, 1.0));
    let norm = InputNorm {
        weight: &norm_w,
        eps: 1e-6,
    };
    let mut normed = poisoned::<T>(gpu, k);
    rmsnorm(gpu, &x, &norm_w, norm.eps, &mut normed).unwrap();
    let mut gate_up = poisoned::<T>(gpu, 2 * half);
    linear(gpu, &normed, &w, &mut gate_up, (1, 2 * half, k), false).unwrap();
    let mut want = poisoned::<T>(gpu, half);
    silu_mul(gpu, &gate_up, half, &mut want).unwrap();
    let mut act = poisoned::<T>(gpu, half);
    let applies = k % 8 == 0 && k <= MATVEC_NORM_MAX_K;
    assert_eq!(
        linear_normed_swiglu(gpu, &x, norm, &w, &mut act, (half, k)).unwrap(),
        applies,
        "{} half {half} k {k}",
        T::SUFFIX
    );
    let got = download_f32(gpu, &act);
    if applies {
        let err = rel_error(&got, &download_f32(gpu, &want));
        assert!(
            err <= tol::<T>(),
            "{} half {half} k {k}: rel error {err:.2e}",
            T::SUFFIX
        );
    } else {
        assert!(
            got.iter().all(|v| v.is_nan()),
            "declined, yet act was written"
        );
    }
    let up_missing = w.slice(..half * k);
    assert!(linear_normed_swiglu(gpu, &x, norm, &up_missing, &mut act, (half, k)).is_err());
}

#[test]
fn one_token_normed_swiglu_matches_rmsnorm_linear_then_silu_mul() {
    let Some(gpu) =
        test_gpu("gpu::gemm::one_token_normed_swiglu_matches_rmsnorm_linear_then_silu_mul")
    else {
        return;
    };
    for (i, (half, k)) in [
        (1536, 576),
        (8192, 3072),
        (1001, 2048),
        (33, 44),
        (5, MATVEC_NORM_MAX_K),
        (5, MATVEC_NORM_MAX_K + 8),
    ]
    .into_iter()
    .enumerate()
    {
        check_one_token_normed_swiglu::<bf16>(&gpu, (half, k), 800 + 10 * i as u64);
        check_one_token_normed_swiglu::<f16>(&gpu, (half, k), 805 + 10 * i as u64);
    }
}

#[test]
fn one_token_linear_matches_the_cpu_matmul() {
    let Some(gpu) = test_gpu("gpu::gemm::one_token_linear_matches_the_cpu_matmul") else {
        return;
    };
    // (n, k, x offset): the kernel's shapes (a ragged last block of rows, k not a multiple of 256), then k % 8 != 0
    // and an x 2 bytes off 16-byte alignment (both cuBLAS).
    for (i, (n, k, offset)) in [
        (1001, 576, 0),
        (17, 40, 0),
        (3072, 8192, 0),
        (33, 44, 0),
        (40, 64, 1),
    ]
    .into_iter()
    .enumerate()
    {
        check_one_token::<bf16>(&gpu, (n, k), offset, 300 + 10 * i as u64);
        check_one_token::<f16>(&gpu, (n, k), offset, 305 + 10 * i as u64);
    }
}
