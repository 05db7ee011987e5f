//! rmsnorm.cu against kernels/src/cpu/rmsnorm.rs: the forward against the f64 reference, the backward (fresh and
//! accumulating into dx) against the CPU backward, in f32/bf16/f16, at row lengths that take the 16-byte path
//! (576, 3072) and the one-element path (an odd 4097).

use olive_kernels::cpu::{rmsnorm_backward as backward_ref, rmsnorm_ref};
use olive_kernels::cuda::float::Float;
use olive_kernels::cuda::rmsnorm::{rmsnorm, rmsnorm_backward};
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
