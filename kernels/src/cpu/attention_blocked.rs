//! Causal grouped-query attention for many query tokens at once (prefill, calibration forwards), the same
//! function as `attention` (transformers' `eager_attention_forward`: `softmax(q·kᵀ · scale + mask) · v`, query
//! head h reading KV head `h / (heads / kv_heads)`, optional sliding window) computed per block of query rows
//! and head with two `gemm` products: S = q·kᵀ over the keys the block can see, then P·v. Only the summation
//! order differs from the per-query path.

use rayon::prelude::*;

use super::attention::AttentionDims;
use super::softmax::softmax;

/// Query rows per task: a block reads the keys up to its last row (and, with a window, from its first row's).
const QUERY_BLOCK: usize = 32;

/// [`super::attention`] with the same arguments and result; q: [tokens, q_stride], k, v: [kv_len, kv_heads ·
/// head_dim] (the new tokens' keys last), out: [tokens, heads · head_dim].
pub fn attention_blocked(
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
    let kv_dim = kv_heads * head_dim;
    let tokens = out.len() / (heads * head_dim).max(1);
    let kv_len = k.len() / kv_dim.max(1);
    assert!(
        heads > 0 && kv_heads > 0 && heads % kv_heads == 0 && tokens <= kv_len,
        "attention_blocked: bad dims or more queries than keys"
    );
    assert!(tokens == 0 || q.len() >= (tokens - 1) * q_stride + heads * head_dim);
    assert_eq!(
        k.len(),
        v.len(),
        "attention_blocked: k and v differ in length"
    );
    let group = heads / kv_heads;
    let start = kv_len - tokens;
    let row = heads * head_dim;
    out.par_chunks_mut(QUERY_BLOCK * row)
        .enumerate()
        .for_each_init(Vec::new, |scores: &mut Vec<f32>, (b, ob)| {
            let t0 = b * QUERY_BLOCK;
            let bt = ob.len() / row;
            // Keys lo..hi are visible to some row of the block.
            let hi = start + t0 + bt;
            let lo = window.map_or(0, |w| (start + t0 + 1).saturating_sub(w));
            let nk = hi - lo;
            scores.resize(bt * nk, 0.0);
            for h in 0..heads {
                let g = h / group;
                // SAFETY: scores is [bt, nk] (row stride nk); the q view is rows t0..t0+bt, columns
                // h·head_dim.. of q [tokens, q_stride]; kᵀ [head_dim, nk] reads rows lo..hi, columns
                // g·head_dim.. of k [kv_len, kv_dim] (row stride 1, column stride kv_dim), inside k since
                // hi ≤ kv_len; scores is a separate, exclusively borrowed allocation.
                unsafe {
                    gemm::gemm(
                        bt,
                        nk,
                        head_dim,
                        scores.as_mut_ptr(),
                        1,
                        nk as isize,
                        false,
                        q.as_ptr().add(t0 * q_stride + h * head_dim),
                        1,
                        q_stride as isize,
                        k.as_ptr().add(lo * kv_dim + g * head_dim),
                        kv_dim as isize,
                        1,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                for (i, s) in scores.chunks_exact_mut(nk).enumerate() {
                    let pos = start + t0 + i;
                    let first = window.map_or(0, |w| (pos + 1).saturating_sub(w)) - lo;
                    let last = pos - lo;
                    s[..first].fill(0.0);
                    s[last + 1..].fill(0.0);
                    softmax(&mut s[first..=last]);
                }
                // SAFETY: the out view is rows 0..bt, columns h·head_dim.. of ob [bt, heads·head_dim]
                // (exclusively borrowed); P is scores [bt, nk]; v's view is rows lo..hi, columns g·head_dim.. of
                // v [kv_len, kv_dim]; the three do not overlap.
                unsafe {
                    gemm::gemm(
                        bt,
                        head_dim,
                        nk,
                        ob.as_mut_ptr().add(h * head_dim),
                        1,
                        row as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        nk as isize,
                        v.as_ptr().add(lo * kv_dim + g * head_dim),
                        1,
                        kv_dim as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::attention::attention_ref;
    use crate::cpu::testutil::{max_abs_diff, Rng};

    #[test]
    fn blocked_attention_matches_reference() {
        let mut rng = Rng::new(5);
        let dims = AttentionDims {
            heads: 6,
            kv_heads: 2,
            head_dim: 16,
            q_stride: 6 * 16 + 2 * 2 * 16,
        };
        let kv_dim = dims.kv_heads * dims.head_dim;
        for (tokens, kv_len, window) in [
            (1, 1, None),
            (7, 7, None),
            (70, 70, None),
            (33, 90, None),
            (70, 70, Some(5)),
            (40, 75, Some(50)),
        ] {
            let q = rng.vec(tokens * dims.q_stride);
            let k = rng.vec(kv_len * kv_dim);
            let v = rng.vec(kv_len * kv_dim);
            let mut out = vec![f32::NAN; tokens * dims.heads * dims.head_dim];
            attention_blocked(&q, &k, &v, dims, window, 0.25, &mut out);
            let want = attention_ref(&q, &k, &v, dims, window, 0.25, tokens);
            let d = max_abs_diff(&out, &want);
            // convex mixes of values in [-1, 1) through f32 products of 16 terms: a few ulps of 1
            assert!(
                d <= 1e-5,
                "tokens={tokens} kv_len={kv_len} window={window:?}: {d}"
            );
        }
    }
}
