//! Backward passes of the decoder's element-wise pieces (RMSNorm, SwiGLU's `silu(gate) · up`, rotate-half
//! RoPE): they live beside their forwards in olive_kernels::cpu, the CPU references of the CUDA kernels;
//! and the finite-difference helpers the training tests share.

pub(crate) use olive_kernels::cpu::{rmsnorm_backward, rope_backward, silu_mul_backward};

#[cfg(test)]
pub(crate) mod tests {
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
}
