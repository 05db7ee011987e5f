//! Backward passes of the decoder's element-wise pieces, derived by hand from the forward formulas
//! transformers uses: RMSNorm (`w ⊙ x · rsqrt(mean(x²) + eps)`), SwiGLU's `silu(gate) · up` and
//! rotate-half RoPE (a rotation, so its transpose is the rotation by the opposite angle).

use olive_kernels::cpu::{rope_apply, RopeLayout};

/// `dx += ∂/∂x` of rmsnorm for rows of x: [rows, d], given dy: [rows, d] (d = weight.len()).
///
/// With r = rsqrt(mean(x²) + eps) and g = w ⊙ dy: dx = r·g − r³·x·(Σ g⊙x)/d.
pub(crate) fn rmsnorm_backward(x: &[f32], weight: &[f32], eps: f32, dy: &[f32], dx: &mut [f32]) {
    let d = weight.len();
    for ((xr, dyr), dxr) in x
        .chunks_exact(d)
        .zip(dy.chunks_exact(d))
        .zip(dx.chunks_exact_mut(d))
    {
        let mean = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let r = 1.0 / (mean + eps).sqrt();
        let gx: f32 = xr
            .iter()
            .zip(dyr)
            .zip(weight)
            .map(|((x, dy), w)| w * dy * x)
            .sum();
        let c = r * r * r * gx / d as f32;
        for (((o, x), dy), w) in dxr.iter_mut().zip(xr).zip(dyr).zip(weight) {
            *o += r * w * dy - c * x;
        }
    }
}

/// d_gate_up: [tokens, 2·inter] from d_act: [tokens, inter] for act = silu(gate) · up, gate_up:
/// [tokens, 2·inter] (gate columns first).
pub(crate) fn silu_mul_backward(
    gate_up: &[f32],
    d_act: &[f32],
    d_gate_up: &mut [f32],
    inter: usize,
) {
    for ((gu, da), dgu) in gate_up
        .chunks_exact(2 * inter)
        .zip(d_act.chunks_exact(inter))
        .zip(d_gate_up.chunks_exact_mut(2 * inter))
    {
        let (g, u) = gu.split_at(inter);
        let (dg, du) = dgu.split_at_mut(inter);
        for i in 0..inter {
            let s = 1.0 / (1.0 + (-g[i]).exp());
            du[i] = da[i] * g[i] * s;
            dg[i] = da[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
        }
    }
}

/// The gradient through rope in place: rows of `dx` ([tokens, row_stride]) rotated back, i.e. by
/// the tables' angles negated; `neg_sin` is the forward sin table negated ([tokens, rotary_dim / 2]).
pub(crate) fn rope_backward(dx: &mut [f32], layout: RopeLayout, cos: &[f32], neg_sin: &[f32]) {
    rope_apply(dx, layout, cos, neg_sin);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use olive_kernels::cpu::{rmsnorm, silu_mul};

    /// Deterministic values in [-1, 1).
    pub(crate) fn values(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Central differences of `f` (a scalar of x) at x, in f64 on an f32 function.
    pub(crate) fn numeric_grad(x: &[f32], h: f32, f: &mut dyn FnMut(&[f32]) -> f64) -> Vec<f32> {
        let mut x = x.to_vec();
        (0..x.len())
            .map(|i| {
                let v = x[i];
                x[i] = v + h;
                let up = f(&x);
                x[i] = v - h;
                let down = f(&x);
                x[i] = v;
                ((up - down) / (2.0 * h as f64)) as f32
            })
            .collect()
    }

    /// Relative Frobenius error ‖a − b‖ / ‖b‖.
    pub(crate) fn rel_err(a: &[f32], b: &[f32]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (num / den.max(1e-30)).sqrt()
    }

    /// Σ upstream ⊙ out: the scalar whose gradient the backward pieces compute.
    fn project(out: &[f32], up: &[f32]) -> f64 {
        out.iter().zip(up).map(|(o, u)| *o as f64 * *u as f64).sum()
    }

    /// f32 central differences with h = 1e-2 on O(1) values: truncation and rounding ~1e-4 relative.
    const FD_TOL: f64 = 2e-3;

    #[test]
    fn rmsnorm_backward_matches_finite_differences() {
        let (rows, d) = (3, 8);
        let x = values(1, rows * d);
        let w = values(2, d);
        let up = values(3, rows * d);
        let mut dx = vec![0.0; rows * d];
        rmsnorm_backward(&x, &w, 1e-5, &up, &mut dx);
        let num = numeric_grad(&x, 1e-2, &mut |x| {
            let mut out = vec![0.0; x.len()];
            rmsnorm(x, &w, 1e-5, &mut out);
            project(&out, &up)
        });
        assert!(rel_err(&dx, &num) < FD_TOL, "{}", rel_err(&dx, &num));
    }

    #[test]
    fn silu_mul_backward_matches_finite_differences() {
        let (tokens, inter) = (3, 5);
        let gu: Vec<f32> = values(4, tokens * 2 * inter)
            .iter()
            .map(|v| 3.0 * v)
            .collect();
        let up = values(5, tokens * inter);
        let mut dgu = vec![0.0; gu.len()];
        silu_mul_backward(&gu, &up, &mut dgu, inter);
        let num = numeric_grad(&gu, 1e-2, &mut |gu| {
            let mut out = vec![0.0; tokens * inter];
            silu_mul(gu, &mut out, inter);
            project(&out, &up)
        });
        assert!(rel_err(&dgu, &num) < FD_TOL, "{}", rel_err(&dgu, &num));
    }

    #[test]
    fn rope_backward_matches_finite_differences() {
        // Partial rotary (12 of 16 dims) and a row wider than the rotated heads, as in a qkv row.
        let layout = RopeLayout {
            row_stride: 3 * 16 + 4,
            heads: 3,
            head_dim: 16,
            rotary_dim: 12,
        };
        let tokens = 3;
        let x = values(6, tokens * layout.row_stride);
        // Scaled tables (LongRoPE's attention factor): cos² + sin² ≠ 1.
        let angles = values(7, tokens * 6);
        let cos: Vec<f32> = angles.iter().map(|a| 1.2 * (3.0 * a).cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| 1.2 * (3.0 * a).sin()).collect();
        let neg_sin: Vec<f32> = sin.iter().map(|s| -s).collect();
        let up = values(8, x.len());
        let mut dx = up.clone();
        rope_backward(&mut dx, layout, &cos, &neg_sin);
        let num = numeric_grad(&x, 1e-2, &mut |x| {
            let mut out = x.to_vec();
            rope_apply(&mut out, layout, &cos, &sin);
            project(&out, &up)
        });
        assert!(rel_err(&dx, &num) < FD_TOL, "{}", rel_err(&dx, &num));
    }
}
