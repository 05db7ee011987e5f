//! Seeded test data: splitmix64 normals, correlated calibration inputs and the output error of a
//! quantized weight.

/// Deterministic N(0, 1) samples (splitmix64 + Box–Muller).
pub struct Normal(u64);

impl Normal {
    pub fn new(seed: u64) -> Self {
        Normal(seed)
    }

    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub fn sample(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }

    pub fn vec(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| self.sample() * scale).collect()
    }
}

/// x [tokens, n] = z · (I + 0.4·M) with columns scaled by exp(0.7·N(0, 1)): correlated, unequal columns.
pub fn correlated_inputs(tokens: usize, n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Normal::new(seed);
    let mix: Vec<f32> = (0..n * n)
        .map(|i| if i / n == i % n { 1.0 } else { 0.0 } + 0.4 * rng.sample())
        .collect();
    let col_scale: Vec<f32> = (0..n).map(|_| (0.7 * rng.sample()).exp()).collect();
    let z = rng.vec(tokens * n, 1.0);
    let mut x = vec![0f32; tokens * n];
    for t in 0..tokens {
        for j in 0..n {
            let s: f32 = (0..n).map(|k| z[t * n + k] * mix[k * n + j]).sum();
            x[t * n + j] = s * col_scale[j];
        }
    }
    x
}

/// Σ over tokens of ‖x_t · (W − Ŵ)ᵀ‖², x [tokens, n], W and Ŵ [out, n].
pub fn output_error(x: &[f32], w: &[f32], w_hat: &[f32], n: usize) -> f64 {
    let diff: Vec<f64> = w
        .iter()
        .zip(w_hat)
        .map(|(a, b)| f64::from(*a) - f64::from(*b))
        .collect();
    x.chunks(n)
        .map(|xt| {
            diff.chunks(n)
                .map(|d| {
                    let y: f64 = xt.iter().zip(d).map(|(a, b)| f64::from(*a) * b).sum();
                    y * y
                })
                .sum::<f64>()
        })
        .sum()
}
