//! silu_mul.cu against kernels/src/cpu/silu_mul.rs: SwiGLU's forward against the f64 reference and its backward
//! against the CPU backward, in f32/bf16/f16, with inter sizes on the 16-byte path (1536, 8192) and off it (1537).

use olive_kernels::cpu::{silu_mul_backward as backward_ref, silu_mul_ref};
use olive_kernels::cuda::float::Float;
use olive_kernels::cuda::silu_mul::{silu_mul, silu_mul_backward};
use olive_kernels::cuda::{bf16, f16, test_gpu, Gpu};

use super::common::{random, rel_error};
use super::floats::{download_f32, poisoned, tol, upload_as};

fn check<T: Float>(gpu: &Gpu, tokens: usize, inter: usize, seed: u64) {
    // Gates over [-6, 6): both tails of the sigmoid.
    let (gu, guh) = upload_as::<T>(gpu, &random(tokens * 2 * inter, seed, 6.0));
    let (da, dah) = upload_as::<T>(gpu, &random(tokens * inter, seed + 1, 1.0));

    let mut act = poisoned::<T>(gpu, tokens * inter);
    silu_mul(gpu, &gu, inter, &mut act).unwrap();
    let fwd = rel_error(&download_f32(gpu, &act), &silu_mul_ref(&guh, inter));

    let mut dgu = poisoned::<T>(gpu, tokens * 2 * inter);
    silu_mul_backward(gpu, &gu, &da, inter, &mut dgu).unwrap();
    let mut want = vec![0.0; tokens * 2 * inter];
    backward_ref(&guh, &dah, &mut want, inter);
    let bwd = rel_error(&download_f32(gpu, &dgu), &want);

    eprintln!(
        "silu_mul {} inter={inter}: forward {fwd:.2e}, backward {bwd:.2e} (tol {:.0e})",
        T::SUFFIX,
        tol::<T>()
    );
    assert!(
        fwd <= tol::<T>() && bwd <= tol::<T>(),
        "{} inter={inter}",
        T::SUFFIX
    );
}

#[test]
fn silu_mul_forward_and_backward_match_the_cpu() {
    let Some(gpu) = test_gpu("gpu::silu_mul::silu_mul_forward_and_backward_match_the_cpu") else {
        return;
    };
    for (i, inter) in [1536usize, 8192, 1537].into_iter().enumerate() {
        let seed = 200 + 10 * i as u64;
        check::<f32>(&gpu, 33, inter, seed);
        check::<bf16>(&gpu, 33, inter, seed);
        check::<f16>(&gpu, 33, inter, seed);
    }
}
