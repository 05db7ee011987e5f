//! Numerically stable softmax over one row: `exp(x - max) / Σ exp(x - max)`.

/// In-place softmax of `x`; entries equal to -inf get probability 0.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return;
    }
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Reference in f64.
pub fn softmax_ref(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = x.iter().map(|v| (*v as f64 - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| (v / s) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{max_abs_diff, Rng};

    /// Probabilities in [0, 1] from f32 exps and an f32 sum of ≤ 1000 terms: ≤ 1e-6 off.
    const SOFTMAX_TOL: f32 = 1e-6;

    #[test]
    fn softmax_matches_reference() {
        let mut rng = Rng::new(11);
        for n in [1usize, 5, 64, 1000] {
            let x: Vec<f32> = rng.vec(n).iter().map(|v| v * 20.0).collect();
            let mut got = x.clone();
            softmax(&mut got);
            assert!(max_abs_diff(&got, &softmax_ref(&x)) <= SOFTMAX_TOL, "n={n}");
        }
        let mut masked = vec![1.0, f32::NEG_INFINITY, 1.0];
        softmax(&mut masked);
        assert_eq!(masked, vec![0.5, 0.0, 0.5]);
    }
}
