//! Test helpers: a small deterministic generator (xorshift64*), a max-abs-diff measure, and central
//! differences for checking hand-derived gradients.

/// Deterministic pseudo-random f32 values in [-1, 1).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        (bits as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub(crate) fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next_f32()).collect()
    }
}

/// Largest |a[i] - b[i]|.
pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// f32 central differences with h = 1e-2 on O(1) values: truncation and rounding ~1e-4 relative.
pub(crate) const FD_TOL: f64 = 2e-3;

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

/// Σ upstream ⊙ out: the scalar whose gradient a backward computes.
pub(crate) fn project(out: &[f32], up: &[f32]) -> f64 {
    out.iter().zip(up).map(|(o, u)| *o as f64 * *u as f64).sum()
}
