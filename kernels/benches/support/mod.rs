//! Shared pieces of the CPU int4 benches (`cpu_int4`, `cpu_int4_decode`): the plain memory-read loop whose
//! GB/s each bench prints next to its kernels' (a wrapping sum of u64 in 8 independent lanes, split over the
//! rayon pool's threads, so the loads and not the adds bound it).

use rayon::prelude::*;

/// The 512 MiB buffer of u64 the memory-read loop sums (more than any L3 holds).
pub fn read_buffer() -> Vec<u64> {
    (0..(512usize << 20) / 8).map(|i| i as u64).collect()
}

/// One pass of the memory-read loop over `buf` on the current pool; returns the sum (for `black_box`).
pub fn read_sum(buf: &[u64]) -> u64 {
    let threads = rayon::current_num_threads();
    buf.par_chunks(buf.len().div_ceil(threads))
        .map(|c| {
            let mut a = [0u64; 8];
            for w in c.chunks_exact(8) {
                for i in 0..8 {
                    a[i] = a[i].wrapping_add(w[i]);
                }
            }
            a.iter().fold(0u64, |x, y| x.wrapping_add(*y))
        })
        .sum()
}
