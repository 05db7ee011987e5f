//! Rotary position embedding (Su et al. 2021, RoFormer) in the rotate-half layout of Hugging Face
//! transformers: with h = rotary_dim / 2, `y[i] = x[i]·cos[i] - x[i+h]·sin[i]` and
//! `y[i+h] = x[i+h]·cos[i] + x[i]·sin[i]` for i < h; dims past rotary_dim pass through
//! (partial rotary). The cos/sin tables come from an inv_freq (the rope type and its scaling live there) and
//! a factor on both (LongRoPE's attention factor), as transformers builds them. The backward is the rotation
//! by the opposite angle (the transpose).

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

/// cos/sin of positions `start .. start + len`, each [len, inv_freq.len()], as transformers' rotary
/// embedding computes them in f32: `angle = pos as f32 · inv_freq[i]`, `cos = cos(angle) · scaling`,
/// `sin = sin(angle) · scaling`. Replaces the contents of `cos` and `sin`.
pub fn rope_tables(
    inv_freq: &[f32],
    start: usize,
    len: usize,
    scaling: f32,
    cos: &mut Vec<f32>,
    sin: &mut Vec<f32>,
) {
    cos.clear();
    sin.clear();
    for pos in start..start + len {
        for f in inv_freq {
            let angle = pos as f32 * f;
            cos.push(angle.cos() * scaling);
            sin.push(angle.sin() * scaling);
        }
    }
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

/// The gradient through rope in place: rows of `dx` ([tokens, row_stride]) rotated back, i.e. by
/// the tables' angles negated; `neg_sin` is the forward sin table negated ([tokens, rotary_dim / 2]).
pub fn rope_backward(dx: &mut [f32], layout: RopeLayout, cos: &[f32], neg_sin: &[f32]) {
    rope_apply(dx, layout, cos, neg_sin);
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
    use crate::cpu::testutil::{max_abs_diff, numeric_grad, project, rel_err, Rng, FD_TOL};

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

    #[test]
    fn rope_backward_matches_finite_differences() {
        let mut rng = Rng::new(6);
        // Partial rotary (12 of 16 dims) and a row wider than the rotated heads, as in a qkv row.
        let layout = RopeLayout {
            row_stride: 3 * 16 + 4,
            heads: 3,
            head_dim: 16,
            rotary_dim: 12,
        };
        let tokens = 3;
        let x = rng.vec(tokens * layout.row_stride);
        // Scaled tables (LongRoPE's attention factor): cos² + sin² ≠ 1.
        let inv_freq: Vec<f32> = rng.vec(6).iter().map(|v| 3.0 * v).collect();
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        rope_tables(&inv_freq, 1, tokens, 1.2, &mut cos, &mut sin);
        let neg_sin: Vec<f32> = sin.iter().map(|s| -s).collect();
        let up = rng.vec(x.len());
        let mut dx = up.clone();
        rope_backward(&mut dx, layout, &cos, &neg_sin);
        let num = numeric_grad(&x, 1e-2, &mut |x| {
            let mut out = x.to_vec();
            rope_apply(&mut out, layout, &cos, &sin);
            project(&out, &up)
        });
        assert!(rel_err(&dx, &num) < FD_TOL, "{}", rel_err(&dx, &num));
    }

    #[test]
    fn tables_are_scaled_cos_and_sin_of_position_times_frequency() {
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        rope_tables(&[1.0, 0.25], 3, 2, 1.5, &mut cos, &mut sin);
        assert_eq!(cos.len(), 4);
        assert!((cos[0] - 1.5 * 3f32.cos()).abs() < 1e-6);
        assert!((sin[3] - 1.5 * 1f32.sin()).abs() < 1e-6);
    }
}
