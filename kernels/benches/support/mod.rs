//! Shared pieces of the CPU int4 benches (`cpu_int4`, `cpu_int4_decode`): the plain memory-read loop whose
//! GB/s each bench prints next to its kernels' (a wrapping sum of u64 in 8 independent lanes, split over the
//! rayon pool's threads, so the loads and not the adds bound it). Each thread reads its part as 8 interleaved
//! streams, as a matmul reads several weight rows at once, in 256-bit loads where AVX2 is present: on the 2-core
//! Xeon dev box (300 MiB L3) one sequential scalar stream read 8.3 GB/s where the int4 kernel read 12-14.

use rayon::prelude::*;

/// The 512 MiB buffer of u64 the memory-read loop sums (more than any L3 holds).
pub fn read_buffer() -> Vec<u64> {
    (0..(512usize << 20) / 8).map(|i| i as u64).collect()
}

/// Interleaved streams a thread reads.
const STREAMS: usize = 8;

/// One pass of the memory-read loop over `buf` on the current pool; returns the sum (for `black_box`).
pub fn read_sum(buf: &[u64]) -> u64 {
    let threads = rayon::current_num_threads();
    buf.par_chunks(buf.len().div_ceil(threads))
        .map(|c| {
            let streams: Vec<&[u64]> = c.chunks(c.len().div_ceil(STREAMS)).collect();
            let steps = streams.iter().map(|s| s.len() / 8).min().unwrap_or(0);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is present; every stream holds at least 8 * steps elements.
                return unsafe { sum_streams_avx2(&streams, steps) };
            }
            let mut a = [0u64; 8];
            for step in 0..steps {
                for stream in &streams {
                    for (i, w) in stream[8 * step..8 * step + 8].iter().enumerate() {
                        a[i] = a[i].wrapping_add(*w);
                    }
                }
            }
            a.iter().fold(0u64, |x, y| x.wrapping_add(*y))
        })
        .sum()
}

/// The wrapping sum of the first `8 * steps` elements of every stream, 64 bytes of each stream in turn, in 256-bit
/// loads (the int4 kernels' width class: a scalar loop is bound by its instructions before the memory on one core).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_streams_avx2(streams: &[&[u64]], steps: usize) -> u64 {
    use std::arch::x86_64::*;
    let mut lo = _mm256_setzero_si256();
    let mut hi = _mm256_setzero_si256();
    for step in 0..steps {
        for stream in streams {
            let p = stream.as_ptr().add(8 * step) as *const __m256i;
            lo = _mm256_add_epi64(lo, _mm256_loadu_si256(p));
            hi = _mm256_add_epi64(hi, _mm256_loadu_si256(p.add(1)));
        }
    }
    let mut lanes = [0u64; 4];
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, _mm256_add_epi64(lo, hi));
    lanes.iter().fold(0u64, |x, y| x.wrapping_add(*y))
}
