//! RMSNorm (Zhang & Sennrich 2019) as transformers' LlamaRMSNorm computes it in fp32:
//! `weight * (x * rsqrt(mean(x²) + eps))`, one row at a time; and its gradient with respect to x for a
//! frozen weight (LoRA training), derived by hand from that formula.

/// out: [rows, d] = rmsnorm(x: [rows, d]) with d = weight.len().
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    assert_eq!(
        x.len(),
        out.len(),
        "rmsnorm: x and out must have the same shape"
    );
    assert!(
        d > 0 && x.len().is_multiple_of(d),
        "rmsnorm: x must be [rows, weight.len()]"
    );
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mut acc = [0.0f32; 8];
        let mut chunks = xr.chunks_exact(8);
        for c in &mut chunks {
            for l in 0..8 {
                acc[l] += c[l] * c[l];
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
        let mean = (acc.iter().sum::<f32>() + tail) / d as f32;
        let r = 1.0 / (mean + eps).sqrt();
        for ((o, v), w) in or.iter_mut().zip(xr).zip(weight) {
            *o = w * (v * r);
        }
    }
}

/// Reference: f64 mean of squares, same formula.
pub fn rmsnorm_ref(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let d = weight.len();
    let mut out = Vec::with_capacity(x.len());
    for xr in x.chunks(d) {
        let mean = xr.iter().map(|v| *v as f64 * *v as f64).sum::<f64>() / d as f64;
        let r = 1.0 / (mean + eps as f64).sqrt();
        out.extend(
            xr.iter()
                .zip(weight)
                .map(|(v, w)| (*w as f64 * (*v as f64 * r)) as f32),
        );
    }
    out
}

/// `dx += ∂/∂x` of rmsnorm for rows of x: [rows, d], given dy: [rows, d] (d = weight.len()).
///
/// With r = rsqrt(mean(x²) + eps) and g = w ⊙ dy: dx = r·g − r³·x·(Σ g⊙x)/d.
pub fn rmsnorm_backward(x: &[f32], weight: &[f32], eps: f32, dy: &[f32], dx: &mut [f32]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{max_abs_diff, numeric_grad, project, rel_err, Rng, FD_TOL};

    /// f32 mean of 576 squares against an f64 one: relative error ≈ 1e-6 on outputs of size ~3.
    const RMSNORM_TOL: f32 = 1e-5;

    #[test]
    fn rmsnorm_matches_reference() {
        let mut rng = Rng::new(3);
        for d in [1usize, 7, 64, 576] {
            let x = rng.vec(5 * d);
            let w = rng.vec(d);
            let mut out = vec![0.0; x.len()];
            rmsnorm(&x, &w, 1e-5, &mut out);
            let d_ = max_abs_diff(&out, &rmsnorm_ref(&x, &w, 1e-5));
            assert!(d_ <= RMSNORM_TOL, "d={d}: {d_}");
        }
    }

    #[test]
    fn rmsnorm_backward_matches_finite_differences() {
        let mut rng = Rng::new(1);
        let (rows, d) = (3, 8);
        let x = rng.vec(rows * d);
        let w = rng.vec(d);
        let up = rng.vec(rows * d);
        let mut dx = vec![0.0; rows * d];
        rmsnorm_backward(&x, &w, 1e-5, &up, &mut dx);
        let num = numeric_grad(&x, 1e-2, &mut |x| {
            let mut out = vec![0.0; x.len()];
            rmsnorm(x, &w, 1e-5, &mut out);
            project(&out, &up)
        });
        assert!(rel_err(&dx, &num) < FD_TOL, "{}", rel_err(&dx, &num));
    }
}
