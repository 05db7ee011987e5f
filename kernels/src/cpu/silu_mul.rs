//! SwiGLU's gating (Shazeer 2020, "GLU Variants Improve Transformer"): `silu(gate) * up`, with
//! `silu(x) = x · sigmoid(x)` as torch computes it; and its backward, derived by hand.

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

/// d_gate_up: [tokens, 2·inter] from d_act: [tokens, inter] for act = silu(gate) · up, gate_up:
/// [tokens, 2·inter] (gate columns first). With s = sigmoid(g): d_up = d_act·g·s,
/// d_gate = d_act·up·s·(1 + g·(1 − s)).
pub fn silu_mul_backward(gate_up: &[f32], d_act: &[f32], d_gate_up: &mut [f32], inter: usize) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{max_abs_diff, numeric_grad, project, rel_err, Rng, FD_TOL};

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

    #[test]
    fn silu_mul_backward_matches_finite_differences() {
        let mut rng = Rng::new(4);
        let (tokens, inter) = (3, 5);
        let gu: Vec<f32> = rng
            .vec(tokens * 2 * inter)
            .iter()
            .map(|v| 3.0 * v)
            .collect();
        let up = rng.vec(tokens * inter);
        let mut dgu = vec![0.0; gu.len()];
        silu_mul_backward(&gu, &up, &mut dgu, inter);
        let num = numeric_grad(&gu, 1e-2, &mut |gu| {
            let mut out = vec![0.0; tokens * inter];
            silu_mul(gu, &mut out, inter);
            project(&out, &up)
        });
        assert!(rel_err(&dgu, &num) < FD_TOL, "{}", rel_err(&dgu, &num));
    }
}
