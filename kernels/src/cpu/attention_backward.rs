//! Reference attention with its gradients (f64), for the GPU's training attention: the function of
//! [`super::attention_ref`] over a batch of sequences with an optional key mask (a padded key is hidden; a row
//! that sees no key outputs zeros), its per-row log-sum-exp, and the backward pass by the softmax Jacobian
//! (`dS = P ⊙ (dP − rowsum(P ⊙ dP))`, `dq = scale·dS·k`, `dk = scale·dSᵀ·q`, `dv = Pᵀ·dO`), as the CPU
//! trainer's `olive_nn` attention computes it with dense blocks.

use super::AttentionDims;

/// The batch, window, scale and key mask of one call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionBatch<'a> {
    /// Sequences.
    pub batch: usize,
    /// Queries per sequence; query t sits at position `kv_len − tokens + t`.
    pub tokens: usize,
    /// Keys per sequence.
    pub kv_len: usize,
    /// Sliding window (key j visible from p when `p − j < window`).
    pub window: Option<usize>,
    /// Softmax scale.
    pub scale: f32,
    /// [batch·kv_len], 0 = hidden.
    pub key_mask: Option<&'a [u8]>,
}

/// What [`attention_backward_ref`] returns, in the layouts of its inputs.
#[derive(Clone, Debug)]
pub struct AttentionGrads {
    /// [batch·tokens, heads·head_dim].
    pub out: Vec<f32>,
    /// [batch, heads, tokens]: natural log of Σ exp(scale·q·k) over visible keys; −∞ where none is.
    pub lse: Vec<f32>,
    /// [batch·tokens, heads·head_dim].
    pub dq: Vec<f32>,
    /// [batch·kv_len, kv_heads·head_dim].
    pub dk: Vec<f32>,
    /// [batch·kv_len, kv_heads·head_dim].
    pub dv: Vec<f32>,
}

/// Attention of q ([batch·tokens, q_stride]), k, v ([batch·kv_len, kv_heads·head_dim]) and the gradients of
/// `Σ d_out ⊙ out` (d_out: [batch·tokens, heads·head_dim]).
pub fn attention_backward_ref(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: AttentionDims,
    shape: AttentionBatch<'_>,
    d_out: &[f32],
) -> AttentionGrads {
    let AttentionDims {
        heads,
        kv_heads,
        head_dim: hd,
        q_stride,
    } = dims;
    let AttentionBatch {
        batch,
        tokens,
        kv_len,
        window,
        scale,
        key_mask,
    } = shape;
    let (kv_dim, q_width) = (kv_heads * hd, heads * hd);
    assert_eq!(
        k.len(),
        batch * kv_len * kv_dim,
        "k: [batch·kv_len, kv_dim]"
    );
    assert_eq!(v.len(), k.len(), "v: as k");
    assert_eq!(
        d_out.len(),
        batch * tokens * q_width,
        "d_out: [batch·tokens, heads·head_dim]"
    );
    let scale = scale as f64;
    let mut g = AttentionGrads {
        out: vec![0.0; batch * tokens * q_width],
        lse: vec![f32::NEG_INFINITY; batch * heads * tokens],
        dq: vec![0.0; batch * tokens * q_width],
        dk: vec![0.0; k.len()],
        dv: vec![0.0; v.len()],
    };
    let (mut dk, mut dv) = (vec![0f64; k.len()], vec![0f64; v.len()]);
    for b in 0..batch {
        for t in 0..tokens {
            let pos = kv_len - tokens + t;
            let row = b * tokens + t;
            for h in 0..heads {
                let kvh = h / (heads / kv_heads);
                let qh = &q[row * q_stride + h * hd..][..hd];
                let at = |j: usize, d: usize| (b * kv_len + j) * kv_dim + kvh * hd + d;
                let visible = |j: usize| {
                    j <= pos
                        && window.is_none_or(|w| pos - j < w)
                        && key_mask.is_none_or(|m| m[b * kv_len + j] != 0)
                };
                let scores: Vec<f64> = (0..kv_len)
                    .map(|j| {
                        if !visible(j) {
                            return f64::NEG_INFINITY;
                        }
                        scale
                            * (0..hd)
                                .map(|d| qh[d] as f64 * k[at(j, d)] as f64)
                                .sum::<f64>()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if max == f64::NEG_INFINITY {
                    continue;
                }
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                g.lse[(b * heads + h) * tokens + t] = (max + sum.ln()) as f32;
                let p: Vec<f64> = scores.iter().map(|s| (s - max).exp() / sum).collect();
                let d_o = &d_out[row * q_width + h * hd..][..hd];
                // dP[j] = dO · v_j; dS = P ⊙ (dP − Σ P ⊙ dP)
                let dp: Vec<f64> = (0..kv_len)
                    .map(|j| (0..hd).map(|d| d_o[d] as f64 * v[at(j, d)] as f64).sum())
                    .collect();
                let pdp: f64 = p.iter().zip(&dp).map(|(p, d)| p * d).sum();
                for d in 0..hd {
                    let o: f64 = (0..kv_len).map(|j| p[j] * v[at(j, d)] as f64).sum();
                    g.out[row * q_width + h * hd + d] = o as f32;
                    let dq: f64 = (0..kv_len)
                        .map(|j| p[j] * (dp[j] - pdp) * k[at(j, d)] as f64)
                        .sum();
                    g.dq[row * q_width + h * hd + d] = (scale * dq) as f32;
                }
                for j in (0..kv_len).filter(|&j| p[j] > 0.0) {
                    let ds = p[j] * (dp[j] - pdp);
                    for d in 0..hd {
                        dk[at(j, d)] += scale * ds * qh[d] as f64;
                        dv[at(j, d)] += p[j] * d_o[d] as f64;
                    }
                }
            }
        }
    }
    g.dk = dk.iter().map(|&x| x as f32).collect();
    g.dv = dv.iter().map(|&x| x as f32).collect();
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::attention_ref;
    use crate::cpu::testutil::{numeric_grad, project, rel_err, Rng, FD_TOL};

    const DIMS: AttentionDims = AttentionDims {
        heads: 4,
        kv_heads: 2,
        head_dim: 4,
        q_stride: 16,
    };

    #[test]
    fn forward_equals_attention_ref_and_lse_normalizes() {
        let mut rng = Rng::new(5);
        let (tokens, kv_len) = (3, 7);
        let q = rng.vec(tokens * 16);
        let (k, v) = (rng.vec(kv_len * 8), rng.vec(kv_len * 8));
        let shape = AttentionBatch {
            batch: 1,
            tokens,
            kv_len,
            window: Some(5),
            scale: 0.5,
            key_mask: None,
        };
        let g = attention_backward_ref(&q, &k, &v, DIMS, shape, &rng.vec(tokens * 16));
        let want = attention_ref(&q, &k, &v, DIMS, Some(5), 0.5, tokens);
        assert!(rel_err(&g.out, &want) < 1e-6);
        // Query 0 of head 0 at position 4 sees keys 0..=4: its lse is the log of their summed exponentials.
        let direct: f64 = (0..5)
            .map(|j| {
                (0.5 * (0..4)
                    .map(|d| q[d] as f64 * k[j * 8 + d] as f64)
                    .sum::<f64>())
                .exp()
            })
            .sum();
        assert!((g.lse[0] as f64 - direct.ln()).abs() < 1e-6);
    }

    #[test]
    fn gradients_match_finite_differences_with_mask_window_and_cache_offset() {
        let mut rng = Rng::new(6);
        let (batch, tokens, kv_len) = (2, 3, 5);
        // Sequence 1 hides key 3; query 0 of sequence 0 (position 2) sees nothing but key 2 in a window of 1.
        let mask = [1, 1, 1, 1, 1, 1, 1, 1, 0, 1];
        for window in [None, Some(2)] {
            let shape = AttentionBatch {
                batch,
                tokens,
                kv_len,
                window,
                scale: 0.7,
                key_mask: Some(&mask),
            };
            let q = rng.vec(batch * tokens * 16);
            let k = rng.vec(batch * kv_len * 8);
            let v = rng.vec(batch * kv_len * 8);
            let up = rng.vec(batch * tokens * 16);
            let g = attention_backward_ref(&q, &k, &v, DIMS, shape, &up);
            let f = |q: &[f32], k: &[f32], v: &[f32]| {
                project(&attention_backward_ref(q, k, v, DIMS, shape, &up).out, &up)
            };
            let dq = numeric_grad(&q, 1e-2, &mut |x| f(x, &k, &v));
            let dk = numeric_grad(&k, 1e-2, &mut |x| f(&q, x, &v));
            let dv = numeric_grad(&v, 1e-2, &mut |x| f(&q, &k, x));
            for (name, got, want) in [("dq", &g.dq, dq), ("dk", &g.dk, dk), ("dv", &g.dv, dv)] {
                let e = rel_err(got, &want);
                assert!(e < FD_TOL, "{name} window {window:?}: {e}");
            }
            // The hidden key gets no gradient.
            assert!(g.dk[(kv_len + 3) * 8..(kv_len + 4) * 8]
                .iter()
                .all(|&x| x == 0.0));
        }
    }
}
