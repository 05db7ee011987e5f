//! SwiGLU's gating (Shazeer 2020, "GLU Variants Improve Transformer"): `silu(gate) * up`, with
//! `silu(x) = x · sigmoid(x)` as torch computes it.

/// out[t, i] = silu(gate_up[t, i]) · gate_up[t, inter + i]; gate_up: [tokens, 2·inter] (gate
/// columns first, the layout of Phi-3's fused `gate_up_proj`), out: [tokens, inter].
pub fn silu_mul(gate_up: &[f32], out: &mut [f32], inter: usize) {
    assert!(inter > 0, "silu_mul: inter must be positive");
    assert_eq!(
        gate_up.len(),
        2 * out.len(),
        "silu_mul: gate_up must be [tokens, 2·inter]"
    );
    assert_eq!(
        out.len() % inter,
        0,
        "silu_mul: out must be [tokens, inter]"
    );
    for (gu, o) in gate_up
        .chunks_exact(2 * inter)
        .zip(out.chunks_exact_mut(inter))
    {
        let (g, u) = gu.split_at(inter);
        for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }
}

/// Reference in f64.
pub fn silu_mul_ref(gate_up: &[f32], inter: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for gu in gate_up.chunks(2 * inter) {
        for i in 0..inter {
            let g = gu[i] as f64;
            out.push((g / (1.0 + (-g).exp()) * gu[inter + i] as f64) as f32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{max_abs_diff, Rng};

    /// One f32 exp and three roundings on values of size ≤ 10: a few ulps of 10.
    const SILU_TOL: f32 = 1e-5;

    #[test]
    fn silu_mul_matches_reference() {
        let mut rng = Rng::new(5);
        let inter = 37;
        let gate_up: Vec<f32> = rng.vec(3 * 2 * inter).iter().map(|v| v * 10.0).collect();
        let mut out = vec![0.0; 3 * inter];
        silu_mul(&gate_up, &mut out, inter);
        assert!(max_abs_diff(&out, &silu_mul_ref(&gate_up, inter)) <= SILU_TOL);
    }
}
