//! cross_entropy.cu against kernels/src/cpu/cross_entropy.rs: per-row losses (f64 reference) and the gradient
//! written over the logits, with ignored (−100) rows, labels at both ends of the vocabulary, logits far from 0
//! (the max subtraction), vocabularies of SmolLM2 (49152), a 200k one (200064) and an odd one (32001, the
//! one-element path), in f32/bf16/f16; the loss-only launch leaves the logits alone; a label past the
//! vocabulary gives a NaN loss.

use olive_kernels::cpu::cross_entropy as reference;
use olive_kernels::cuda::cross_entropy::{cross_entropy, cross_entropy_backward};
use olive_kernels::cuda::float::Float;
use olive_kernels::cuda::{bf16, f16, test_gpu, Gpu};

use super::common::{random, rel_error};
use super::floats::{download_f32, tol, upload_as};

/// Losses: an f32 sum of exps over up to 200k terms against an f64 one, on the same logits.
const LOSS_REL: f64 = 1e-5;

fn check<T: Float>(gpu: &Gpu, vocab: usize, seed: u64) {
    let labels: Vec<i32> = vec![0, 17, -100, (vocab - 1) as i32, 5, -100, 1234, 42];
    let rows = labels.len();
    // Logits around 30 (exp(30) overflows nothing, exp(90) would in f32 without the max subtraction); f16 holds them.
    let host: Vec<f32> = random(rows * vocab, seed, 8.0)
        .iter()
        .map(|v| v + 30.0)
        .collect();
    let (mut logits, lh) = upload_as::<T>(gpu, &host);
    let dev_labels = gpu.upload(&labels).unwrap();
    let inv_n = 1.0 / 6.0;
    let (want_loss, want_grad) = reference(&lh, vocab, &labels, inv_n);
    let want_loss: Vec<f32> = want_loss.iter().map(|v| *v as f32).collect();

    let only = gpu
        .download(&cross_entropy(gpu, &logits, &dev_labels, vocab).unwrap())
        .unwrap();
    let untouched = download_f32(gpu, &logits) == lh;
    let loss = gpu
        .download(&cross_entropy_backward(gpu, &mut logits, &dev_labels, vocab, inv_n).unwrap())
        .unwrap();
    let (e_only, e_loss) = (rel_error(&only, &want_loss), rel_error(&loss, &want_loss));
    let e_grad = rel_error(&download_f32(gpu, &logits), &want_grad);
    eprintln!(
        "cross_entropy {} vocab={vocab}: loss {e_loss:.2e} (loss only {e_only:.2e}, tol {LOSS_REL:.0e}), \
         d logits {e_grad:.2e} (tol {:.0e})",
        T::SUFFIX,
        tol::<T>()
    );
    assert!(untouched, "the loss-only launch wrote the logits");
    assert!(
        e_only <= LOSS_REL && e_loss <= LOSS_REL && e_grad <= tol::<T>(),
        "{} vocab={vocab}",
        T::SUFFIX
    );
}

#[test]
fn cross_entropy_loss_and_gradient_match_the_cpu() {
    let Some(gpu) = test_gpu("gpu::cross_entropy::cross_entropy_loss_and_gradient_match_the_cpu")
    else {
        return;
    };
    for (i, vocab) in [49152usize, 200_064, 32001].into_iter().enumerate() {
        let seed = 500 + 10 * i as u64;
        check::<f32>(&gpu, vocab, seed);
        check::<bf16>(&gpu, vocab, seed);
        check::<f16>(&gpu, vocab, seed);
    }
}

#[test]
fn a_label_past_the_vocabulary_gives_nan() {
    let Some(gpu) = test_gpu("gpu::cross_entropy::a_label_past_the_vocabulary_gives_nan") else {
        return;
    };
    let vocab = 1000;
    let logits = gpu.upload(&random(2 * vocab, 600, 1.0)).unwrap();
    let labels = gpu.upload(&[3i32, vocab as i32]).unwrap();
    let loss = gpu
        .download(&cross_entropy(&gpu, &logits, &labels, vocab).unwrap())
        .unwrap();
    assert!(loss[0].is_finite() && loss[1].is_nan(), "{loss:?}");
}
