//! Rotary position embedding (Su et al. 2021, RoFormer) in the rotate-half layout of Hugging Face
//! transformers: with h = rotary_dim / 2, `y[i] = x[i]·cos[i] - x[i+h]·sin[i]` and
//! `y[i+h] = x[i+h]·cos[i] + x[i]·sin[i]` for i < h; dims past rotary_dim pass through
//! (partial rotary). The cos/sin tables (scaling, attention factor) are computed by the caller.

/// Where the heads sit in `x` and how many dims of each head rotate.
#[derive(Clone, Copy, Debug)]
pub struct RopeLayout {
    /// Floats from one token's row to the next.
    pub row_stride: usize,
    /// Heads per row, starting at column 0.
    pub heads: usize,
    /// Floats per head.
    pub head_dim: usize,
    /// Leading dims of each head that rotate (even, ≤ head_dim).
    pub rotary_dim: usize,
}

/// Rotates each head of each row in place.
///
/// x: [tokens, row_stride]; cos, sin: [tokens, rotary_dim / 2].
pub fn rope_apply(x: &mut [f32], layout: RopeLayout, cos: &[f32], sin: &[f32]) {
    let RopeLayout {
        row_stride,
        heads,
        head_dim,
        rotary_dim,
    } = layout;
    let half = rotary_dim / 2;
    assert!(
        half > 0 && rotary_dim % 2 == 0 && rotary_dim <= head_dim,
        "rope_apply: bad rotary_dim"
    );
    assert!(
        heads * head_dim <= row_stride,
        "rope_apply: heads overflow the row"
    );
    assert_eq!(
        cos.len(),
        sin.len(),
        "rope_apply: cos and sin differ in length"
    );
    assert_eq!(
        cos.len() % half,
        0,
        "rope_apply: cos must be [tokens, rotary_dim / 2]"
    );
    let tokens = cos.len() / half;
    if tokens == 0 {
        return;
    }
    assert!(
        x.len() >= (tokens - 1) * row_stride + heads * head_dim,
        "rope_apply: x too short"
    );
    for t in 0..tokens {
        let (c, s) = (
            &cos[t * half..(t + 1) * half],
            &sin[t * half..(t + 1) * half],
        );
        let row = &mut x[t * row_stride..t * row_stride + heads * head_dim];
        for head in row.chunks_exact_mut(head_dim) {
            let (lo, hi) = head[..rotary_dim].split_at_mut(half);
            for i in 0..half {
                let (a, b) = (lo[i], hi[i]);
                lo[i] = a * c[i] - b * s[i];
                hi[i] = b * c[i] + a * s[i];
            }
        }
    }
}

/// Reference: transformers' `q * cos + rotate_half(q) * sin` with the tables doubled to
/// rotary_dim (`cat(freqs, freqs)`), in f64, returning a new buffer.
pub fn rope_apply_ref(x: &[f32], layout: RopeLayout, cos: &[f32], sin: &[f32]) -> Vec<f32> {
    let half = layout.rotary_dim / 2;
    let tokens = cos.len() / half;
    let mut out = x.to_vec();
    for t in 0..tokens {
        let c: Vec<f64> = (0..layout.rotary_dim)
            .map(|i| cos[t * half + i % half] as f64)
            .collect();
        let s: Vec<f64> = (0..layout.rotary_dim)
            .map(|i| sin[t * half + i % half] as f64)
            .collect();
        for h in 0..layout.heads {
            let base = t * layout.row_stride + h * layout.head_dim;
            let q: Vec<f64> = (0..layout.rotary_dim).map(|i| x[base + i] as f64).collect();
            for i in 0..layout.rotary_dim {
                let rotated = if i < half { -q[i + half] } else { q[i - half] };
                out[base + i] = (q[i] * c[i] + rotated * s[i]) as f32;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{max_abs_diff, Rng};

    /// Two f32 products and a sum of values in [-1, 1): a few ulps of 1.
    const ROPE_TOL: f32 = 1e-6;

    #[test]
    fn rope_matches_reference() {
        let mut rng = Rng::new(9);
        // Full rotary and partial rotary (3/4 of head_dim, as Phi-4-mini); a stride wider than
        // the heads, as in a fused qkv row.
        for (rotary_dim, row_stride) in [(16usize, 3 * 16 + 5), (12, 3 * 16)] {
            let layout = RopeLayout {
                row_stride,
                heads: 3,
                head_dim: 16,
                rotary_dim,
            };
            let tokens = 4;
            let x = rng.vec(tokens * row_stride);
            let cos = rng.vec(tokens * rotary_dim / 2);
            let sin = rng.vec(tokens * rotary_dim / 2);
            let mut got = x.clone();
            rope_apply(&mut got, layout, &cos, &sin);
            let want = rope_apply_ref(&x, layout, &cos, &sin);
            assert!(
                max_abs_diff(&got, &want) <= ROPE_TOL,
                "rotary_dim={rotary_dim}"
            );
        }
    }
}
