//! What the GPU tests share: seeded random inputs (never zeros) and relative errors against references.

/// `n` values uniform in [-scale, scale), from a fixed-seed xorshift so a failure reproduces.
pub fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// ‖out − reference‖ / ‖reference‖ in f64; infinite when `out` holds a NaN (an unwritten or broken element).
pub fn rel_error(out: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(out.len(), reference.len(), "output length");
    if out.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let (mut diff, mut norm) = (0f64, 0f64);
    for (&o, &r) in out.iter().zip(reference) {
        diff += (o as f64 - r as f64).powi(2);
        norm += (r as f64).powi(2);
    }
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}
