//! Causal grouped-query attention (Ainslie et al. 2023, GQA) over a KV cache, as transformers'
//! `eager_attention_forward` computes it: `softmax(q·kᵀ · scale + mask) · v`, each query head
//! reading KV head `h / (heads / kv_heads)`, with an optional sliding window
//! (key j visible from position p when `j <= p` and `p - j < window`, Mistral's rule).
//! From `BLOCKED_MIN_TOKENS` queries on, `attention_blocked` computes the same with `gemm` per block of queries;
//! below, `attention_decode` on AVX-512 (head_dim a multiple of 16 up to 128), else the row loop here.

use rayon::prelude::*;

use super::attention_blocked::attention_blocked;
use super::attention_decode::attention_decode;
use super::dot::dot;
use super::softmax::softmax;

/// Query tokens from which `attention` runs blocked `gemm` products (`attention_blocked`) instead of a
/// dot product per query and key.
const BLOCKED_MIN_TOKENS: usize = 8;

/// Head counts and the query row layout.
#[derive(Clone, Copy, Debug)]
pub struct AttentionDims {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; divides `heads`.
    pub kv_heads: usize,
    /// Floats per head.
    pub head_dim: usize,
    /// Floats from one query row to the next (≥ heads·head_dim: queries may sit in a fused qkv row).
    pub q_stride: usize,
}

/// Attention of `tokens` new queries over `kv_len` cached keys (the new tokens' keys included,
/// last), so query t sits at position `kv_len - tokens + t`.
///
/// q: [tokens, q_stride] (heads·head_dim at column 0); k, v: [kv_len, kv_heads·head_dim];
/// out: [tokens, heads·head_dim].
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: AttentionDims,
    window: Option<usize>,
    scale: f32,
    out: &mut [f32],
) {
    let AttentionDims {
        heads,
        kv_heads,
        head_dim,
        q_stride,
    } = dims;
    let (tokens, kv_len, kv_dim) = check(q, k, v, dims, out);
    if tokens == 0 {
        return;
    }
    if tokens >= BLOCKED_MIN_TOKENS {
        attention_blocked(q, k, v, dims, window, scale, out);
        return;
    }
    if attention_decode(q, k, v, dims, window, scale, (tokens, kv_len), out) {
        return;
    }
    let group = heads / kv_heads;
    let start = kv_len - tokens;
    out.par_chunks_mut(head_dim).enumerate().for_each_init(
        Vec::new,
        |scores: &mut Vec<f32>, (idx, o)| {
            let (t, h) = (idx / heads, idx % heads);
            let g = h / group;
            let pos = start + t;
            let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let qh = &q[t * q_stride + h * head_dim..][..head_dim];
            scores.clear();
            scores.extend(
                (lo..=pos).map(|j| dot(qh, &k[j * kv_dim + g * head_dim..][..head_dim]) * scale),
            );
            softmax(scores);
            o.fill(0.0);
            for (j, p) in (lo..=pos).zip(scores.iter()) {
                let vj = &v[j * kv_dim + g * head_dim..][..head_dim];
                for (o, v) in o.iter_mut().zip(vj) {
                    *o += p * v;
                }
            }
        },
    );
}

/// Checks the shapes; returns (tokens, kv_len, kv_dim).
fn check(q: &[f32], k: &[f32], v: &[f32], d: AttentionDims, out: &[f32]) -> (usize, usize, usize) {
    assert!(
        d.heads > 0 && d.kv_heads > 0 && d.head_dim > 0,
        "attention: empty dims"
    );
    assert_eq!(
        d.heads % d.kv_heads,
        0,
        "attention: kv_heads must divide heads"
    );
    assert!(
        d.heads * d.head_dim <= d.q_stride,
        "attention: heads overflow the query row"
    );
    let kv_dim = d.kv_heads * d.head_dim;
    assert_eq!(k.len(), v.len(), "attention: k and v differ in length");
    assert_eq!(
        k.len() % kv_dim,
        0,
        "attention: k must be [kv_len, kv_heads·head_dim]"
    );
    assert_eq!(
        out.len() % (d.heads * d.head_dim),
        0,
        "attention: out must be [tokens, heads·head_dim]"
    );
    let tokens = out.len() / (d.heads * d.head_dim);
    let kv_len = k.len() / kv_dim;
    assert!(tokens <= kv_len, "attention: more queries than cached keys");
    assert!(tokens == 0 || q.len() >= (tokens - 1) * d.q_stride + d.heads * d.head_dim);
    (tokens, kv_len, kv_dim)
}

/// Reference: per head, the full score row with a -inf mask, f64 softmax and sums.
pub fn attention_ref(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: AttentionDims,
    window: Option<usize>,
    scale: f32,
    tokens: usize,
) -> Vec<f32> {
    let AttentionDims {
        heads,
        kv_heads,
        head_dim,
        q_stride,
    } = dims;
    let kv_dim = kv_heads * head_dim;
    let kv_len = k.len() / kv_dim;
    let mut out = vec![0.0f32; tokens * heads * head_dim];
    for t in 0..tokens {
        let pos = kv_len - tokens + t;
        for h in 0..heads {
            let g = h / (heads / kv_heads);
            let scores: Vec<f64> = (0..kv_len)
                .map(|j| {
                    let visible = j <= pos && window.is_none_or(|w| pos - j < w);
                    if !visible {
                        return f64::NEG_INFINITY;
                    }
                    let s: f64 = (0..head_dim)
                        .map(|d| {
                            q[t * q_stride + h * head_dim + d] as f64
                                * k[j * kv_dim + g * head_dim + d] as f64
                        })
                        .sum();
                    s * scale as f64
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..head_dim {
                let o: f64 = (0..kv_len)
                    .map(|j| e[j] / sum * v[j * kv_dim + g * head_dim + d] as f64)
                    .sum();
                out[(t * heads + h) * head_dim + d] = o as f32;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{max_abs_diff, Rng};

    /// Outputs are convex mixes of values in [-1, 1) through f32 dots of 16 terms and an f32
    /// softmax: a few ulps of 1 each.
    const ATTENTION_TOL: f32 = 1e-5;

    #[test]
    fn attention_matches_reference() {
        let mut rng = Rng::new(21);
        let dims = AttentionDims {
            heads: 6,
            kv_heads: 2,
            head_dim: 16,
            q_stride: 6 * 16 + 2 * 2 * 16,
        };
        let kv_dim = dims.kv_heads * dims.head_dim;
        for (tokens, kv_len, window) in [
            (7, 7, None),
            (1, 9, None),
            (3, 10, None),
            (7, 7, Some(3)),
            (1, 9, Some(4)),
        ] {
            let q = rng.vec(tokens * dims.q_stride);
            let k = rng.vec(kv_len * kv_dim);
            let v = rng.vec(kv_len * kv_dim);
            let mut out = vec![f32::NAN; tokens * dims.heads * dims.head_dim];
            attention(&q, &k, &v, dims, window, 0.25, &mut out);
            let want = attention_ref(&q, &k, &v, dims, window, 0.25, tokens);
            let d = max_abs_diff(&out, &want);
            assert!(
                d <= ATTENTION_TOL,
                "tokens={tokens} kv_len={kv_len} window={window:?}: {d}"
            );
        }
    }

    #[test]
    fn decode_attention_matches_reference_at_model_head_dims() {
        // SmolLM2's 9 query / 3 KV heads of 64, and head_dim 48 / 128 (other register counts of
        // `attention_decode`), a query or two over short and long caches, with and without a window.
        let mut rng = Rng::new(22);
        for head_dim in [64usize, 48, 128] {
            let dims = AttentionDims {
                heads: 9,
                kv_heads: 3,
                head_dim,
                q_stride: 9 * head_dim + 2 * 3 * head_dim,
            };
            let kv_dim = dims.kv_heads * head_dim;
            for (tokens, kv_len, window) in [
                (1, 1, None),
                (1, 147, None),
                (2, 40, None),
                (1, 147, Some(16)),
            ] {
                let q = rng.vec(tokens * dims.q_stride);
                let k = rng.vec(kv_len * kv_dim);
                let v = rng.vec(kv_len * kv_dim);
                let want = attention_ref(&q, &k, &v, dims, window, 0.125, tokens);
                // One thread runs the heads in a loop, more one task a head.
                for threads in [1, 2] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .expect("pool");
                    let mut out = vec![f32::NAN; tokens * dims.heads * head_dim];
                    pool.install(|| attention(&q, &k, &v, dims, window, 0.125, &mut out));
                    let d = max_abs_diff(&out, &want);
                    assert!(
                        d <= ATTENTION_TOL,
                        "head_dim {head_dim} tokens={tokens} kv_len={kv_len} window={window:?} \
                         threads {threads}: {d}"
                    );
                }
            }
        }
    }
}
