//! rmsnorm.cu against kernels/src/cpu/rmsnorm.rs: the forward against the f64 reference, the backward (fresh and
//! accumulating into dx) against the CPU backward, in f32/bf16/f16, at row lengths that take the 16-byte path
//! (576, 3072) and the one-element path (an odd 4097).

use olive_kernels::cpu::{rmsnorm as rmsnorm_cpu, rmsnorm_backward as backward_ref, rmsnorm_ref};
use olive_kernels::cuda::float::Float;
use olive_kernels::cuda::rmsnorm::{rmsnorm, rmsnorm_backward, rmsnorm_f32_as_cpu};
use olive_kernels::cuda::{bf16, f16, test_gpu, Gpu};

use super::common::{random, rel_error};
use super::floats::{download_f32, poisoned, tol, upload_as};

const EPS: f32 = 1e-5;

fn check<T: Float>(gpu: &Gpu, d: usize, rows: usize, seed: u64) {
    let (x, xh) = upload_as::<T>(gpu, &random(rows * d, seed, 2.0));
    let (w, wh) = upload_as::<T>(gpu, &random(d, seed + 1, 1.0));
    let (dy, dyh) = upload_as::<T>(gpu, &random(rows * d, seed + 2, 1.0));

    let mut out = poisoned::<T>(gpu, rows * d);
    rmsnorm(gpu, &x, &w, EPS, &mut out).unwrap();
    let fwd = rel_error(&download_f32(gpu, &out), &rmsnorm_ref(&xh, &wh, EPS));

    let mut dx = poisoned::<T>(gpu, rows * d);
    rmsnorm_backward(gpu, &x, &w, EPS, &dy, &mut dx, false).unwrap();
    let mut want = vec![0.0; rows * d];
    backward_ref(&xh, &wh, EPS, &dyh, &mut want);
    let bwd = rel_error(&download_f32(gpu, &dx), &want);

    // Accumulating: dx starts as a residual gradient.
    let (mut dx, mut want) = upload_as::<T>(gpu, &random(rows * d, seed + 3, 1.0));
    rmsnorm_backward(gpu, &x, &w, EPS, &dy, &mut dx, true).unwrap();
    backward_ref(&xh, &wh, EPS, &dyh, &mut want);
    let acc = rel_error(&download_f32(gpu, &dx), &want);

    eprintln!(
        "rmsnorm {} d={d}: forward {fwd:.2e}, backward {bwd:.2e}, accumulating {acc:.2e} (tol {:.0e})",
        T::SUFFIX,
        tol::<T>()
    );
    assert!(
        fwd <= tol::<T>() && bwd <= tol::<T>() && acc <= tol::<T>(),
        "{} d={d}",
        T::SUFFIX
    );
}

#[test]
fn rmsnorm_forward_and_backward_match_the_cpu() {
    let Some(gpu) = test_gpu("gpu::rmsnorm::rmsnorm_forward_and_backward_match_the_cpu") else {
        return;
    };
    for (i, d) in [576usize, 3072, 4097].into_iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        check::<f32>(&gpu, d, 37, seed);
        check::<bf16>(&gpu, d, 37, seed);
        check::<f16>(&gpu, d, 37, seed);
    }
}

/// rmsnorm_f32_as_cpu equals cpu::rmsnorm bit for bit, with and without a tail past the row's chunks of 8, over
/// more rows than one block takes.
#[test]
fn f32_as_cpu_equals_the_cpu_bit_for_bit() {
    let Some(gpu) = test_gpu("gpu::rmsnorm::f32_as_cpu_equals_the_cpu_bit_for_bit") else {
        return;
    };
    for (i, (d, rows)) in [(3072usize, 67usize), (4099, 33), (5, 3)]
        .into_iter()
        .enumerate()
    {
        let seed = 200 + 10 * i as u64;
        let (x, w) = (random(rows * d, seed, 2.0), random(d, seed + 1, 1.0));
        let mut want = vec![0f32; rows * d];
        rmsnorm_cpu(&x, &w, EPS, &mut want);
        let mut out = gpu.upload(&vec![f32::NAN; rows * d]).unwrap();
        rmsnorm_f32_as_cpu(
            &gpu,
            &gpu.upload(&x).unwrap(),
            &gpu.upload(&w).unwrap(),
            EPS,
            &mut out,
        )
        .unwrap();
        let got = gpu.download(&out).unwrap();
        let differing = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differing,
            0,
            "d={d} rows={rows}: {differing} of {} values differ",
            rows * d
        );
    }
}
