//! Cross-entropy over a vocabulary as torch's `cross_entropy` computes it (log_softmax + nll, labels −100
//! ignored), max-subtracted for stability, with the gradient of `inv_n · loss` with respect to the logits:
//! `(softmax − onehot(label)) · inv_n` (inv_n = 1 / the labelled tokens the mean runs over, which a
//! gradient-accumulation step counts over all its micro-batches).

/// The loss of one row of logits against `token`: `max + ln Σ exp(v − max) − row[token]`, f32 exps (as
/// torch's log_softmax) summed in f64. The row is overwritten: with `inv_n`, by the gradient of
/// `inv_n · loss`; without, by the exps.
pub fn cross_entropy_row(row: &mut [f32], token: usize, inv_n: Option<f32>) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let target = row[token];
    let mut sum = 0.0f64;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let loss = max as f64 + sum.ln() - target as f64;
    if let Some(inv_n) = inv_n {
        // d logits = (softmax − onehot) · inv_n, in place.
        let scale = (inv_n as f64 / sum) as f32;
        for v in row.iter_mut() {
            *v *= scale;
        }
        row[token] -= inv_n;
    }
    loss
}

/// Per-row losses of logits: [rows, vocab] against labels: [rows], and the gradient of `inv_n · Σ losses`:
/// [rows, vocab]. A negative label (−100) counts nothing: loss 0, gradient 0.
///
/// Panics on a label ≥ vocab.
pub fn cross_entropy(
    logits: &[f32],
    vocab: usize,
    labels: &[i32],
    inv_n: f32,
) -> (Vec<f64>, Vec<f32>) {
    assert_eq!(
        logits.len(),
        labels.len() * vocab,
        "cross_entropy: logits must be [labels.len(), vocab]"
    );
    let mut grad = logits.to_vec();
    let losses = grad
        .chunks_exact_mut(vocab)
        .zip(labels)
        .map(|(row, &label)| match usize::try_from(label) {
            Ok(token) => {
                assert!(
                    token < vocab,
                    "cross_entropy: label {token} ≥ vocab {vocab}"
                );
                cross_entropy_row(row, token, Some(inv_n))
            }
            Err(_) => {
                row.fill(0.0);
                0.0
            }
        })
        .collect();
    (losses, grad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{numeric_grad, rel_err, Rng, FD_TOL};

    #[test]
    fn loss_is_log_softmax_and_gradient_matches_finite_differences() {
        let mut rng = Rng::new(11);
        let vocab = 13;
        // Large logits: without the max subtraction exp overflows f32.
        let logits: Vec<f32> = rng.vec(3 * vocab).iter().map(|v| 4.0 * v + 100.0).collect();
        let labels = [5, -100, 12];
        let (losses, grad) = cross_entropy(&logits, vocab, &labels, 0.5);
        let row = &logits[..vocab];
        let lse = row
            .iter()
            .map(|v| (*v as f64 - 100.0).exp())
            .sum::<f64>()
            .ln()
            + 100.0;
        assert!((losses[0] - (lse - row[5] as f64)).abs() < 1e-5);
        assert_eq!(losses[1], 0.0);
        assert!(grad[vocab..2 * vocab].iter().all(|g| *g == 0.0));
        // Central differences on values near 100 lose precision in f32: shift the rows to 0 first
        // (the loss does not change under a per-row shift).
        let shifted: Vec<f32> = logits.iter().map(|v| v - 100.0).collect();
        let num = numeric_grad(&shifted, 1e-2, &mut |x| {
            0.5 * cross_entropy(x, vocab, &labels, 0.5).0.iter().sum::<f64>()
        });
        assert!(rel_err(&grad, &num) < FD_TOL, "{}", rel_err(&grad, &num));
    }
}
