//! Batch-1 int4 GEMV on AVX-512 VNNI (a decode step's products), MLAS SQNBitGemm's int8-activation scheme as
//! `avx512::rows_i8` (two `vpdpbusd` per 128 inputs, per-lane weight × activation scale, zero points as
//! Σ_b s_b z_b Σ_{i∈b} x_i at the row's end), but over a range of rows read as ONE contiguous stream: rows are
//! k / 2 bytes apart, so a period of G = 1 row (k a multiple of 128) or G = 2 rows (k an odd multiple of 64,
//! e.g. 576) fills whole 64-byte chunks against the activation repeated G times: full loads only, no masked
//! tail chunk per row, one chunk of a pair shared by its two rows through lane masks. Activations are
//! quantized once per call into a per-thread scratch (nothing allocated per call); rayon splits the rows into a
//! few large tasks, none at 1 thread. Other k (an odd multiple of 32) take the general row kernels.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::cell::RefCell;

use rayon::prelude::*;

use super::{avx512, scalar, ActRow, Int4Matrix, CHUNK};

/// One product's activation: quantized per block, then repeated G times (the stream's period).
struct Scratch {
    /// Permuted x (act-order matrices only): [k].
    xp: Vec<f32>,
    /// lo / hi [G · k / 2], lane_scale [G · k / 8], block_sum [k / block] (`x` unused).
    a: ActRow,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            xp: Vec::new(),
            a: ActRow {
                x: Vec::new(),
                lo: Vec::new(),
                hi: Vec::new(),
                lane_scale: Vec::new(),
                block_sum: Vec::new(),
            },
        }
    }

    /// Quantizes x [k] for `w` and repeats it `g` times.
    fn fill(&mut self, x: &[f32], w: &Int4Matrix, g: usize) {
        let (k, bs) = (w.k(), w.block_size());
        let Scratch { xp, a } = self;
        let x = match w.perm() {
            Some(p) => {
                xp.clear();
                xp.extend(p.iter().map(|&i| x[i as usize]));
                &xp[..]
            }
            None => x,
        };
        let (half, lanes) = (k / 2, k / 8);
        for (v, len) in [(&mut a.lo, g * half), (&mut a.hi, g * half)] {
            v.resize(len, 0);
        }
        a.lane_scale.resize(g * lanes, 0.0);
        a.block_sum.resize(k / bs, 0.0);
        avx512::quantize_i8(
            x,
            bs,
            &mut a.lo[..half],
            &mut a.hi[..half],
            &mut a.lane_scale[..lanes],
            &mut a.block_sum,
        );
        for c in 1..g {
            a.lo.copy_within(..half, c * half);
            a.hi.copy_within(..half, c * half);
            a.lane_scale.copy_within(..lanes, c * lanes);
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::new());
}

/// Rows per stream period for k: 1 when a row's k / 2 bytes fill whole 64-byte chunks, 2 when they fill half
/// of one more; None otherwise (k an odd multiple of 32: the general row kernels).
pub(super) fn period(k: usize) -> Option<usize> {
    match (k / 2) % 64 {
        0 => Some(1),
        32 => Some(2),
        _ => None,
    }
}

/// `out [n] = x [k] · Wᵀ` with activations quantized to int8 per block. The caller checked AVX-512 VNNI is
/// available and `period(w.k())` is Some.
pub(super) fn gemv_i8(x: &[f32], w: &Int4Matrix, out: &mut [f32]) {
    assert!(
        x.len() == w.k() && out.len() == w.n(),
        "gemv_i8: x [k], out [n]"
    );
    let g = period(w.k()).expect("gemv_i8: k / 2 must be a multiple of 32 bytes");
    let mut run = |s: &mut Scratch| {
        s.fill(x, w, g);
        split(w, g, &s.a, out);
    };
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => run(&mut s),
        // A nested call on this thread (a rayon worker that took another product while it waited).
        Err(_) => run(&mut Scratch::new()),
    })
}

/// Rows in a few tasks per thread (whole periods each), or in one call at 1 thread.
fn split(w: &Int4Matrix, g: usize, a: &ActRow, out: &mut [f32]) {
    let threads = rayon::current_num_threads();
    if threads <= 1 {
        return rows(w, g, 0, a, out);
    }
    let per = w.n().div_ceil(4 * threads).next_multiple_of(16);
    out.par_chunks_mut(per)
        .enumerate()
        .for_each(|(t, o)| rows(w, g, t * per, a, o));
}

/// Rows `o0 .. o0 + out.len()`.
fn rows(w: &Int4Matrix, g: usize, o0: usize, a: &ActRow, out: &mut [f32]) {
    let (k, blocks) = (w.k(), w.k() / w.block_size());
    assert!(o0 + out.len() <= w.n());
    assert!(
        a.lo.len() >= g * k / 2
            && a.hi.len() >= g * k / 2
            && a.lane_scale.len() >= g * k / 8
            && a.block_sum.len() == blocks
    );
    let whole = out.len() / g * g;
    // SAFETY: the caller checked AVX-512 VNNI; rows o0 .. o0 + whole exist and the activation holds g
    // periods (both asserted above); the kernels read nothing else.
    unsafe {
        match (g, w.block_size()) {
            (1, 32) => stream::<1, 32>(w, o0, a, &mut out[..whole]),
            (1, 64) => stream::<1, 64>(w, o0, a, &mut out[..whole]),
            (1, _) => stream::<1, 128>(w, o0, a, &mut out[..whole]),
            (_, 32) => stream::<2, 32>(w, o0, a, &mut out[..whole]),
            // k an odd multiple of 64 has no blocks of 128.
            _ => stream::<2, 64>(w, o0, a, &mut out[..whole]),
        }
    }
    // A last row short of a period (an odd row count with G = 2): the scalar int8 row.
    let (nib, scales, zeros) = w.parts();
    for (r, y) in out.iter_mut().enumerate().skip(whole) {
        let o = o0 + r;
        let (s, z) = (
            &scales[o * blocks..(o + 1) * blocks],
            &zeros[o * blocks..(o + 1) * blocks],
        );
        let zero_term: f32 = s
            .iter()
            .zip(z)
            .zip(&a.block_sum)
            .map(|((&s, &z), &xs)| s * f32::from(z) * xs)
            .sum();
        *y = scalar::row_i8(&nib[o * k / 2..(o + 1) * k / 2], s, w.block_size(), a) - zero_term;
    }
}

/// The weight scales of stream chunk `c` (128 inputs) spread over its 16 lanes (8 inputs each).
#[inline(always)]
unsafe fn chunk_scales<const BS: usize>(sp: *const f32, c: usize) -> __m512 {
    match BS {
        128 => _mm512_set1_ps(*sp.add(c)),
        64 => {
            // Two scales, lanes 0..8 and 8..16 (a 64-bit load: nothing past the chunk's blocks).
            let s = _mm_castpd_ps(_mm_load_sd(sp.add(2 * c).cast()));
            let idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
            _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(s))
        }
        _ => {
            let s = _mm_loadu_ps(sp.add(4 * c));
            let idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
            _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(s))
        }
    }
}

/// Stream chunk `c` of the period at `p` (weights) against the activation's chunk `c`: per lane
/// Σ xq · q (integer) · activation scale, and the lanes' weight scales.
#[inline(always)]
unsafe fn chunk<const BS: usize>(
    p: *const u8,
    sp: *const f32,
    a: &ActRow,
    c: usize,
) -> (__m512, __m512) {
    let m0f = _mm512_set1_epi8(0x0F);
    let q = p.add(64 * c);
    // Stream hint into L2, 8 KiB ahead (harmless past the end).
    _mm_prefetch::<_MM_HINT_T1>(q.wrapping_add(8192).cast());
    let v = _mm512_loadu_si512(q.cast());
    let lo = _mm512_and_si512(v, m0f);
    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m0f);
    let xl = _mm512_loadu_si512(a.lo.as_ptr().add(64 * c).cast());
    let xh = _mm512_loadu_si512(a.hi.as_ptr().add(64 * c).cast());
    let d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xl);
    let d = _mm512_dpbusd_epi32(d, hi, xh);
    let xs = _mm512_loadu_ps(a.lane_scale.as_ptr().add(16 * c));
    (
        _mm512_mul_ps(_mm512_cvtepi32_ps(d), xs),
        chunk_scales::<BS>(sp, c),
    )
}

/// Σ_b s_b · z_b · block_sum_b over one row's blocks, lanes to be summed.
#[inline(always)]
unsafe fn zero_term(s: *const f32, z: *const u8, block_sum: &[f32]) -> __m512 {
    let nb = block_sum.len();
    let mut acc = _mm512_setzero_ps();
    for b in (0..nb).step_by(16) {
        let m: __mmask16 = if nb - b >= 16 {
            !0
        } else {
            ((1u32 << (nb - b)) - 1) as u16
        };
        let zf = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(
            m,
            z.add(b).cast(),
        )));
        let sv = _mm512_maskz_loadu_ps(m, s.add(b));
        let xs = _mm512_maskz_loadu_ps(m, block_sum.as_ptr().add(b));
        acc = _mm512_fmadd_ps(_mm512_mul_ps(zf, sv), xs, acc);
    }
    acc
}

/// Rows `o0 .. o0 + out.len()` (a multiple of G) in periods of G rows: G · k / 128 full chunks each, the
/// middle chunk of a pair split between its rows at lane 8.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
unsafe fn stream<const G: usize, const BS: usize>(
    w: &Int4Matrix,
    o0: usize,
    a: &ActRow,
    out: &mut [f32],
) {
    let k = w.k();
    let blocks = k / BS;
    let (nib, scales, zeros) = w.parts();
    // Chunks of one row (G = 1) or of the pair's first row before the shared one (G = 2).
    let m = k / CHUNK;
    for (i, y) in out.chunks_exact_mut(G).enumerate() {
        let o = o0 + i * G;
        // SAFETY (all pointer arithmetic): rows o .. o + G exist (the caller's assert), their G · k / 2 bytes
        // and G · blocks scales are contiguous; the activation holds G periods.
        let p = nib.as_ptr().add(o * k / 2);
        let sp = scales.as_ptr().add(o * blocks);
        let mut acc = [_mm512_setzero_ps(); G];
        for c in 0..m {
            let (t, ws) = chunk::<BS>(p, sp, a, c);
            acc[0] = _mm512_fmadd_ps(t, ws, acc[0]);
        }
        if G == 2 {
            let (t, ws) = chunk::<BS>(p, sp, a, m);
            acc[0] = _mm512_mask3_fmadd_ps(t, ws, acc[0], 0x00FF);
            acc[G - 1] = _mm512_mask3_fmadd_ps(t, ws, acc[G - 1], 0xFF00);
            for c in m + 1..2 * m + 1 {
                let (t, ws) = chunk::<BS>(p, sp, a, c);
                acc[G - 1] = _mm512_fmadd_ps(t, ws, acc[G - 1]);
            }
        }
        for (r, y) in y.iter_mut().enumerate() {
            let zt = zero_term(
                sp.add(r * blocks),
                zeros.as_ptr().add((o + r) * blocks),
                &a.block_sum,
            );
            *y = _mm512_reduce_add_ps(_mm512_sub_ps(acc[r], zt));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::int4::{int4_matmul_with, Activations, Isa};
    use crate::cpu::testutil::Rng;
    use crate::cpu::w4a16::W4Levels;

    /// Against the scalar int8 path (the same integer block dots, another f32 summation order):
    /// |y − y_scalar| ≤ SUM_ORDER_REL · Σ_i |x_i · w_i| + SUM_ORDER_ABS.
    const SUM_ORDER_REL: f64 = 1e-5;
    const SUM_ORDER_ABS: f64 = 1e-6;

    fn matrix(rng: &mut Rng, n: usize, k: usize, gs: usize, act_order: bool) -> Int4Matrix {
        let groups = k.div_ceil(gs);
        let mut unit = || (rng.next_f32() * 0.5 + 0.5).clamp(0.0, 0.999);
        let q = (0..n * k).map(|_| (unit() * 16.0) as u8).collect();
        let scales = (0..n * groups).map(|_| 0.01 + 0.05 * unit()).collect();
        let zeros = (0..n * groups).map(|_| (unit() * 17.0) as u8).collect();
        // Act-order: input i in group (i · 7 mod k) / gs, a permutation of the inputs.
        let g_idx = act_order.then(|| (0..k).map(|i| ((i * 7 % k) / gs) as u32).collect());
        Int4Matrix::from_levels(&W4Levels {
            n,
            k,
            group_size: gs,
            q,
            scales,
            zeros,
            g_idx,
        })
        .expect("pack")
    }

    /// (n, k, group, act-order): periods of 2 rows (k = 576, 960) and of 1 (256, 384, 640, 1536), blocks of
    /// 32 / 64 / 128, odd row counts (the scalar last row), fewer rows than a period.
    const SHAPES: [(usize, usize, usize, bool); 9] = [
        (33, 576, 128, false),
        (17, 576, 32, false),
        (1, 576, 64, false),
        (13, 576, 64, true),
        (5, 960, 32, false),
        (9, 256, 128, false),
        (21, 384, 64, false),
        (7, 640, 128, true),
        (40, 1536, 128, false),
    ];

    fn check(m: &Int4Matrix, x: &[f32], got: &[f32], what: &str) {
        let want = int4_matmul_with(x, 1, m, Activations::Int8, Isa::Scalar).expect("scalar");
        let w = m.dequantize();
        for (o, (g, s)) in got.iter().zip(&want).enumerate() {
            let l1: f64 = x
                .iter()
                .zip(&w[o * m.k()..(o + 1) * m.k()])
                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                .sum();
            let tol = SUM_ORDER_REL * l1 + SUM_ORDER_ABS;
            assert!(
                ((g - s) as f64).abs() <= tol,
                "{what} row {o}: {g} vs scalar int8 {s} (tol {tol})"
            );
        }
    }

    #[test]
    fn stream_gemv_matches_the_scalar_int8_path() {
        if !Isa::Avx512.available() {
            eprintln!("gemv1: no AVX-512/VNNI on this CPU, the stream GEMV is not exercised here");
            return;
        }
        let mut rng = Rng::new(31);
        for (n, k, gs, ao) in SHAPES {
            let m = matrix(&mut rng, n, k, gs, ao);
            let x = rng.vec(k);
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool");
                let mut y = vec![f32::NAN; n];
                pool.install(|| gemv_i8(&x, &m, &mut y));
                check(
                    &m,
                    &x,
                    &y,
                    &format!("n {n} k {k} group {gs} act-order {ao} threads {threads}"),
                );
                // The public entry points take this path for batch 1.
                let via =
                    pool.install(|| int4_matmul_with(&x, 1, &m, Activations::Int8, Isa::Avx512));
                assert_eq!(via.expect("avx512"), y);
            }
        }
    }

    #[test]
    fn nested_calls_use_their_own_scratch() {
        if !Isa::Avx512.available() {
            eprintln!("gemv1: no AVX-512/VNNI on this CPU, the stream GEMV is not exercised here");
            return;
        }
        // Products of different shapes from rayon tasks: a worker waiting on its own product's rows may run
        // another task's product on the same thread (the scratch is then busy).
        let mut rng = Rng::new(32);
        let cases: Vec<(Int4Matrix, Vec<f32>)> = (0..12)
            .map(|i| {
                let (n, k, gs, ao) = SHAPES[i % SHAPES.len()];
                let m = matrix(&mut rng, n * 40, k, gs, ao);
                let x = rng.vec(k);
                (m, x)
            })
            .collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool");
        let ys: Vec<Vec<f32>> = pool.install(|| {
            cases
                .par_iter()
                .map(|(m, x)| {
                    let mut y = vec![f32::NAN; m.n()];
                    gemv_i8(x, m, &mut y);
                    y
                })
                .collect()
        });
        for (i, ((m, x), y)) in cases.iter().zip(&ys).enumerate() {
            check(m, x, y, &format!("case {i}"));
        }
    }

    #[test]
    fn periods() {
        assert_eq!(period(576), Some(2));
        assert_eq!(period(1536), Some(1));
        assert_eq!(period(896), Some(1));
        assert_eq!(period(960), Some(2));
        assert_eq!(period(96), None);
        assert_eq!(period(160), None);
    }
}
