//! Reference LoRA (Hu et al. 2021) in f64, as PEFT's `lora.Linear` adds it to a frozen linear:
//! `y += scale · (x·Aᵀ)·Bᵀ` with A: [rank, in] and B: [out, rank] (PEFT's layouts), and its backward
//! (`g = scale·dy·B`, `grad_A = gᵀ·x`, `grad_B = scale·dyᵀ·u`, `dx = g·A`) — the math of the CPU trainer's
//! `olive_nn` LoRA modules (dropout aside), which the GPU kernels (kernels/cuda/lora.cu) are checked against.

/// Sizes and scale of one adapted linear.
#[derive(Clone, Copy, Debug)]
pub struct LoraDims {
    /// Rows of x.
    pub tokens: usize,
    /// Columns of x (the linear's input features).
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// r.
    pub rank: usize,
    /// lora_alpha / r (or / √r with rsLoRA).
    pub scale: f32,
}

/// What [`lora_backward_ref`] returns.
#[derive(Clone, Debug)]
pub struct LoraGradsRef {
    /// g = scale·dy·B: [tokens, rank].
    pub g: Vec<f32>,
    /// dL/dA = gᵀ·x: [rank, in].
    pub grad_a: Vec<f32>,
    /// dL/dB = scale·dyᵀ·u: [out, rank].
    pub grad_b: Vec<f32>,
    /// LoRA's share of dL/dx = g·A: [tokens, in].
    pub dx: Vec<f32>,
}

/// Σ_k a(i, k)·b(k, j) in f64 for an [n, m] result.
fn product(
    n: usize,
    m: usize,
    inner: usize,
    a: impl Fn(usize, usize) -> f64,
    b: impl Fn(usize, usize) -> f64,
    scale: f64,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * m);
    for i in 0..n {
        for j in 0..m {
            out.push((scale * (0..inner).map(|k| a(i, k) * b(k, j)).sum::<f64>()) as f32);
        }
    }
    out
}

fn check(d: &LoraDims, x: &[f32], a: &[f32], b: &[f32]) {
    assert_eq!(
        x.len(),
        d.tokens * d.in_features,
        "lora: x must be [tokens, in]"
    );
    assert_eq!(
        a.len(),
        d.rank * d.in_features,
        "lora: A must be [rank, in]"
    );
    assert_eq!(
        b.len(),
        d.out_features * d.rank,
        "lora: B must be [out, rank]"
    );
}

/// (u = x·Aᵀ: [tokens, rank], the update scale·u·Bᵀ: [tokens, out]) for x: [tokens, in].
pub fn lora_forward_ref(x: &[f32], a: &[f32], b: &[f32], d: LoraDims) -> (Vec<f32>, Vec<f32>) {
    check(&d, x, a, b);
    let (n_in, r) = (d.in_features, d.rank);
    let u = product(
        d.tokens,
        r,
        n_in,
        |t, i| x[t * n_in + i] as f64,
        |i, j| a[j * n_in + i] as f64,
        1.0,
    );
    // From u in f64 again, not from its f32 rounding.
    let u64: Vec<f64> = (0..d.tokens * r)
        .map(|idx| {
            let (t, j) = (idx / r, idx % r);
            (0..n_in)
                .map(|i| x[t * n_in + i] as f64 * a[j * n_in + i] as f64)
                .sum()
        })
        .collect();
    let delta = product(
        d.tokens,
        d.out_features,
        r,
        |t, j| u64[t * r + j],
        |j, o| b[o * r + j] as f64,
        d.scale as f64,
    );
    (u, delta)
}

/// The gradients of `Σ dy ⊙ (scale·x·Aᵀ·Bᵀ)` (dy: [tokens, out]).
pub fn lora_backward_ref(x: &[f32], dy: &[f32], a: &[f32], b: &[f32], d: LoraDims) -> LoraGradsRef {
    check(&d, x, a, b);
    assert_eq!(
        dy.len(),
        d.tokens * d.out_features,
        "lora: dy must be [tokens, out]"
    );
    let (n_in, n_out, r, s) = (d.in_features, d.out_features, d.rank, d.scale as f64);
    let g = product(
        d.tokens,
        r,
        n_out,
        |t, o| dy[t * n_out + o] as f64,
        |o, j| b[o * r + j] as f64,
        s,
    );
    let u = product(
        d.tokens,
        r,
        n_in,
        |t, i| x[t * n_in + i] as f64,
        |i, j| a[j * n_in + i] as f64,
        1.0,
    );
    LoraGradsRef {
        grad_a: product(
            r,
            n_in,
            d.tokens,
            |j, t| g[t * r + j] as f64,
            |t, i| x[t * n_in + i] as f64,
            1.0,
        ),
        grad_b: product(
            n_out,
            r,
            d.tokens,
            |o, t| dy[t * n_out + o] as f64,
            |t, j| u[t * r + j] as f64,
            s,
        ),
        dx: product(
            d.tokens,
            n_in,
            r,
            |t, j| g[t * r + j] as f64,
            |j, i| a[j * n_in + i] as f64,
            1.0,
        ),
        g,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{numeric_grad, project, rel_err, Rng, FD_TOL};

    #[test]
    fn backward_matches_finite_differences_of_forward() {
        let mut rng = Rng::new(9);
        let d = LoraDims {
            tokens: 3,
            in_features: 5,
            out_features: 4,
            rank: 2,
            scale: 1.5,
        };
        let (x, a, b) = (rng.vec(15), rng.vec(10), rng.vec(8));
        let dy = rng.vec(12);
        let grads = lora_backward_ref(&x, &dy, &a, &b, d);
        let f = |x: &[f32], a: &[f32], b: &[f32]| project(&lora_forward_ref(x, a, b, d).1, &dy);
        let want_dx = numeric_grad(&x, 1e-2, &mut |v| f(v, &a, &b));
        let want_da = numeric_grad(&a, 1e-2, &mut |v| f(&x, v, &b));
        let want_db = numeric_grad(&b, 1e-2, &mut |v| f(&x, &a, v));
        assert!(rel_err(&grads.dx, &want_dx) < FD_TOL);
        assert!(rel_err(&grads.grad_a, &want_da) < FD_TOL);
        assert!(rel_err(&grads.grad_b, &want_db) < FD_TOL);
        // u is x·Aᵀ: row 0, rank 1.
        let u01: f32 = (0..5).map(|i| x[i] * a[5 + i]).sum();
        assert!((lora_forward_ref(&x, &a, &b, d).0[1] - u01).abs() < 1e-6);
    }
}
