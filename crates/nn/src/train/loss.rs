//! Causal-LM cross-entropy as transformers' `ForCausalLMLoss` computes it (labels shifted left by one,
//! -100 ignored, summed and divided by `num_items_in_batch`), fused with the lm_head matmul: logits
//! are computed for a block of labelled positions at a time, so [tokens, vocab] is never held whole.
//! The gradient of the loss with respect to the lm_head's input comes out of the same blocks.

use olive_kernels::cpu::{cross_entropy_row, matmul, matmul_strided, View};
use rayon::prelude::*;

/// Logits a block may hold: 16 M floats (64 MiB) — 341 positions of a 49152-token vocabulary.
/// Each block repacks the whole lm_head in the matmul, so blocks should not be too small.
const BLOCK_FLOATS: usize = 16 << 20;

/// One labelled position: the row of the lm_head input it reads and the token it must predict.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pub row: usize,
    pub token: usize,
}

/// The positions that predict a label (`labels[t + 1] != -100` within each row of `seq` tokens).
pub(crate) fn targets(labels: &[i64], seq: usize) -> Vec<Target> {
    let mut out = Vec::new();
    for (b, row) in labels.chunks_exact(seq).enumerate() {
        for t in 0..seq.saturating_sub(1) {
            if let Ok(token) = usize::try_from(row[t + 1]) {
                out.push(Target {
                    row: b * seq + t,
                    token,
                });
            }
        }
    }
    out
}

/// Σ over `targets` of −log softmax(x·headᵀ)[token], with x: [tokens, hidden] and head: [vocab, hidden].
/// With `grad = Some((inv_n, dx))`, also adds ∂(sum · inv_n)/∂x to dx: [tokens, hidden].
pub(crate) fn cross_entropy(
    x: &[f32],
    head: &[f32],
    hidden: usize,
    targets: &[Target],
    mut grad: Option<(f32, &mut [f32])>,
) -> f64 {
    let vocab = head.len() / hidden;
    let block = (BLOCK_FLOATS / vocab).max(1);
    let mut total = 0.0f64;
    let mut sel = Vec::new();
    let mut logits = Vec::new();
    let mut d_sel = Vec::new();
    for chunk in targets.chunks(block) {
        let m = chunk.len();
        sel.clear();
        for t in chunk {
            sel.extend_from_slice(&x[t.row * hidden..(t.row + 1) * hidden]); // [m, hidden]
        }
        logits.resize(m * vocab, 0.0); // [m, vocab]
        matmul(&sel, head, &mut logits, m, hidden, vocab);
        let inv_n = grad.as_ref().map(|(inv_n, _)| *inv_n);
        // Per-row losses summed in order: the total does not depend on rayon's splitting.
        let losses: Vec<f64> = logits
            .par_chunks_exact_mut(vocab)
            .zip(chunk.par_iter())
            .map(|(row, t)| cross_entropy_row(row, t.token, inv_n))
            .collect();
        total += losses.iter().sum::<f64>();
        if let Some((_, dx)) = grad.as_mut() {
            d_sel.resize(m * hidden, 0.0); // [m, hidden] = d logits · head
            matmul_strided(
                m,
                hidden,
                vocab,
                View::rows(&logits, vocab),
                View::rows(head, hidden),
                &mut d_sel,
                hidden,
                1.0,
                false,
            );
            for (t, d) in chunk.iter().zip(d_sel.chunks_exact(hidden)) {
                for (o, v) in dx[t.row * hidden..(t.row + 1) * hidden].iter_mut().zip(d) {
                    *o += v;
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::backward::tests::{numeric_grad, rel_err, values};

    #[test]
    fn targets_shift_labels_and_skip_ignored() {
        let labels = [5, 6, -100, 7, /* row 2 */ -100, 8, 9, -100];
        let t: Vec<(usize, usize)> = targets(&labels, 4)
            .iter()
            .map(|t| (t.row, t.token))
            .collect();
        assert_eq!(t, vec![(0, 6), (2, 7), (4, 8), (5, 9)]);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (tokens, hidden, vocab) = (4, 6, 11);
        let x = values(21, tokens * hidden);
        let head: Vec<f32> = values(22, vocab * hidden).iter().map(|v| 2.0 * v).collect();
        let t = [
            Target { row: 0, token: 3 },
            Target { row: 1, token: 10 },
            Target { row: 3, token: 0 },
        ];
        let mut dx = vec![0.0; x.len()];
        let loss = cross_entropy(&x, &head, hidden, &t, Some((0.25, &mut dx)));
        let plain = cross_entropy(&x, &head, hidden, &t, None);
        assert_eq!(loss.to_bits(), plain.to_bits());
        let num = numeric_grad(&x, 1e-2, &mut |x| {
            0.25 * cross_entropy(x, &head, hidden, &t, None)
        });
        let e = rel_err(&dx, &num);
        assert!(e < 2e-3, "{e}");
        // Row 2 predicts nothing: no gradient.
        assert!(dx[2 * hidden..3 * hidden].iter().all(|v| *v == 0.0));
    }
}
