//! torch.optim.AdamW's step (`_single_tensor_adamw`, not amsgrad, not maximize; Loshchilov & Hutter 2019,
//! decoupled weight decay, with Kingma & Ba's bias correction), and the global gradient norm and clipping
//! coefficient of torch.nn.utils.clip_grad_norm_.

/// AdamW's hyper-parameters at one step.
#[derive(Debug, Clone, Copy)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// The scalars one step's element updates share, computed once in f64 as torch does in Python floats.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    /// 1 − lr · weight_decay.
    pub decay: f32,
    /// lr / (1 − beta1^t).
    pub step_size: f32,
    /// √(1 − beta2^t).
    pub bc2_sqrt: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

impl AdamW {
    /// The scalars of step `t` (1-based).
    pub fn at_step(&self, t: i32) -> AdamWStep {
        let (b1, b2) = (self.beta1 as f64, self.beta2 as f64);
        AdamWStep {
            decay: (1.0 - self.lr as f64 * self.weight_decay as f64) as f32,
            step_size: (self.lr as f64 / (1.0 - b1.powi(t))) as f32,
            bc2_sqrt: (1.0 - b2.powi(t)).sqrt() as f32,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
        }
    }
}

/// One AdamW step of params `p` with gradients `g` and moments `m`, `v` (all the same length), in f32.
pub fn adamw_update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamWStep) {
    assert!(
        g.len() == p.len() && m.len() == p.len() && v.len() == p.len(),
        "adamw_update: p, g, m and v differ in length"
    );
    let (b1, b2) = (s.beta1, s.beta2);
    for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *p *= s.decay;
        *m += (g - *m) * (1.0 - b1);
        *v = *v * b2 + (1.0 - b2) * g * g;
        let denom = v.sqrt() / s.bc2_sqrt + s.eps;
        *p -= s.step_size * *m / denom;
    }
}

/// Σ g², in f64 (the global norm is the root of its sum over all gradients).
pub fn sum_squares(g: &[f32]) -> f64 {
    g.iter().map(|v| (*v as f64) * (*v as f64)).sum()
}

/// clip_grad_norm_'s factor on every gradient: `max_norm / (norm + 1e-6)`, clamped to 1.
pub fn clip_coefficient(norm: f64, max_norm: f32) -> f32 {
    (max_norm as f64 / (norm + 1e-6)).min(1.0) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::Rng;

    /// f32 updates of O(1) moments against an f64 evaluation: a few ulps of the step.
    const ADAMW_TOL: f64 = 1e-6;

    #[test]
    fn three_steps_match_the_textbook_formula_in_f64() {
        let mut rng = Rng::new(21);
        let n = 37;
        let opt = AdamW {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut p = rng.vec(n);
        let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
        let mut p64: Vec<f64> = p.iter().map(|x| *x as f64).collect();
        let (mut m64, mut v64) = (vec![0.0f64; n], vec![0.0f64; n]);
        for t in 1..=3 {
            let g = rng.vec(n);
            adamw_update(&mut p, &g, &mut m, &mut v, &opt.at_step(t));
            let (b1, b2, lr) = (0.9f64, 0.99f64, 1e-2f64);
            for i in 0..n {
                let gi = g[i] as f64;
                p64[i] *= 1.0 - lr * 0.1;
                m64[i] = b1 * m64[i] + (1.0 - b1) * gi;
                v64[i] = b2 * v64[i] + (1.0 - b2) * gi * gi;
                let m_hat = m64[i] / (1.0 - b1.powi(t));
                let v_hat = v64[i] / (1.0 - b2.powi(t));
                p64[i] -= lr * m_hat / (v_hat.sqrt() + 1e-8);
            }
        }
        let err = p
            .iter()
            .zip(&p64)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(err < ADAMW_TOL, "{err}");
    }

    #[test]
    fn clipping_scales_down_only_above_the_limit() {
        assert_eq!(clip_coefficient(0.5, 1.0), 1.0);
        assert!((clip_coefficient(4.0, 1.0) - 0.25).abs() < 1e-6);
        assert_eq!(sum_squares(&[3.0, 4.0]), 25.0);
    }
}
