//! Dot products of f32 rows, the inner loop of GEMV and attention: AVX2+FMA when the CPU has them
//! (checked once at run time), a portable loop with independent accumulators otherwise.

use std::sync::OnceLock;

/// The instruction set the dot products run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    /// x86-64 with AVX2 and FMA.
    Avx2Fma,
    /// Anything else: plain Rust the compiler vectorizes for the build target.
    Portable,
}

fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2Fma;
            }
        }
        Isa::Portable
    })
}

/// `out[r] = Σ_i rows[r·k + i] · x[i]` with `k = x.len()`; rows: [out.len(), k].
pub(crate) fn dot_rows(x: &[f32], rows: &[f32], out: &mut [f32]) {
    assert_eq!(
        rows.len(),
        x.len() * out.len(),
        "dot_rows: rows must be [out.len(), x.len()]"
    );
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` returned Avx2Fma only after detecting both features on this CPU.
        Isa::Avx2Fma => unsafe { avx2::dot_rows(x, rows, out) },
        _ => portable_dot_rows(x, rows, out),
    }
}

/// `Σ_i a[i] · b[i]`.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut out = [0.0f32];
    dot_rows(a, b, &mut out);
    out[0]
}

/// Lanes of the portable loop: 16 independent sums let the compiler use full vector registers.
const LANES: usize = 16;

fn portable_dot(x: &[f32], w: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (xc, xt) = x.split_at(x.len() - x.len() % LANES);
    let (wc, wt) = w.split_at(xc.len());
    for (xs, ws) in xc.chunks_exact(LANES).zip(wc.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += xs[l] * ws[l];
        }
    }
    let tail: f32 = xt.iter().zip(wt).map(|(a, b)| a * b).sum();
    acc.iter().sum::<f32>() + tail
}

fn portable_dot_rows(x: &[f32], rows: &[f32], out: &mut [f32]) {
    let k = x.len();
    for (o, w) in out.iter_mut().zip(rows.chunks_exact(k.max(1))) {
        *o = portable_dot(x, w);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// One row: two accumulators of 8 lanes, 16 floats a step.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn dot1(x: &[f32], w: &[f32]) -> f32 {
        let k = x.len();
        debug_assert_eq!(w.len(), k);
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut a = _mm256_setzero_ps();
        let mut b = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: every load reads 8 floats at offset i with i + 8 <= k (i + 16 <= k for the pair).
        unsafe {
            while i + 16 <= k {
                a = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(i)), _mm256_loadu_ps(xp.add(i)), a);
                b = _mm256_fmadd_ps(
                    _mm256_loadu_ps(wp.add(i + 8)),
                    _mm256_loadu_ps(xp.add(i + 8)),
                    b,
                );
                i += 16;
            }
            if i + 8 <= k {
                a = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(i)), _mm256_loadu_ps(xp.add(i)), a);
                i += 8;
            }
        }
        let mut s = hsum(_mm256_add_ps(a, b));
        while i < k {
            s += x[i] * w[i];
            i += 1;
        }
        s
    }

    /// Four rows against one x: each x load feeds four FMAs.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn dot4(x: &[f32], w: &[f32], out: &mut [f32]) {
        let k = x.len();
        debug_assert_eq!(w.len(), 4 * k);
        let xp = x.as_ptr();
        let wp = w.as_ptr();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: row r reads w[r·k + i .. r·k + i + 8] with i + 8 <= k, inside w (4·k floats);
        // x reads x[i .. i + 8] inside x.
        unsafe {
            while i + 8 <= k {
                let xv = _mm256_loadu_ps(xp.add(i));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(r * k + i)), xv, *a);
                }
                i += 8;
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let mut s = hsum(*a);
            for j in i..k {
                s += x[j] * w[r * k + j];
            }
            out[r] = s;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_rows(x: &[f32], rows: &[f32], out: &mut [f32]) {
        let k = x.len();
        if k == 0 {
            out.fill(0.0);
            return;
        }
        let mut outs = out.chunks_exact_mut(4);
        let mut ws = rows.chunks_exact(4 * k);
        for (o, w) in (&mut outs).zip(&mut ws) {
            dot4(x, w, o);
        }
        for (o, w) in outs
            .into_remainder()
            .iter_mut()
            .zip(ws.remainder().chunks_exact(k))
        {
            *o = dot1(x, w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{max_abs_diff, Rng};

    /// f32 sums of up to 1000 products of values in [-1, 1), summed in another order than the
    /// plain loop: rounding differences stay near sqrt(k)·eps·|sum| ≈ 1e-5.
    const DOT_TOL: f32 = 1e-4;

    #[test]
    fn dot_rows_matches_plain_sum() {
        let mut rng = Rng::new(1);
        for k in [0usize, 1, 7, 8, 15, 16, 17, 64, 576, 1000] {
            for n in [1usize, 3, 4, 5, 9] {
                let x = rng.vec(k);
                let w = rng.vec(n * k);
                let mut got = vec![0.0; n];
                dot_rows(&x, &w, &mut got);
                let want: Vec<f32> = (0..n)
                    .map(|r| {
                        (0..k)
                            .map(|i| x[i] as f64 * w[r * k + i] as f64)
                            .sum::<f64>() as f32
                    })
                    .collect();
                assert!(max_abs_diff(&got, &want) <= DOT_TOL, "k={k} n={n}");
                let mut port = vec![0.0; n];
                portable_dot_rows(&x, &w, &mut port);
                assert!(
                    max_abs_diff(&port, &want) <= DOT_TOL,
                    "portable k={k} n={n}"
                );
            }
        }
    }
}
