//! The benches' random data: a xorshift stream (seeded, so every run times the same values).

use olive_kernels::cuda::bf16;

pub struct Xorshift(u64);

impl Xorshift {
    /// A stream from `seed` (any: made odd, never zero).
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `len` bf16 values in [-1, 1] from the stream of `seed`.
pub fn bf16_values(len: usize, seed: u64) -> Vec<bf16> {
    let mut rng = Xorshift::new(seed);
    (0..len)
        .map(|_| bf16::from_f32((rng.next() % 2001) as f32 / 1000.0 - 1.0))
        .collect()
}
