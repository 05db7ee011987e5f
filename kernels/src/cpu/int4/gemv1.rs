//! Batch-1 int4 GEMV on AVX-512 VNNI (a decode step's products), MLAS SQNBitGemm's int8-activation scheme as
//! `avx512::rows_i8` (two `vpdpbusd` per 128 inputs, per-lane weight × activation scale, zero points as
//! Σ_b s_b z_b Σ_{i∈b} x_i at the row's end), but over pairs of rows read as ONE contiguous stream: rows are
//! k / 2 bytes apart, so for k a multiple of 64 a pair fills whole 64-byte chunks against the activation
//! repeated twice: full loads only, no masked tail chunk per row (k = 576: 9 chunks a pair instead of 2 × 5),
//! the chunk holding both rows split through lane masks, both rows' zero points in one pass and one reduction
//! for the two sums. Activations are quantized once per call into a per-thread scratch (nothing allocated per
//! call); rayon splits the rows into a few large tasks, none at 1 thread. Other k (an odd multiple of 32) take
//! the general row kernels.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::cell::RefCell;

use half::f16;

use rayon::prelude::*;

use super::{avx512, scalar, ActRow, Int4Matrix, CHUNK};

/// One product's activation: quantized per block, then repeated twice (a pair of rows' worth).
struct Scratch {
    /// Permuted x (act-order matrices only): [k].
    xp: Vec<f32>,
    /// lo / hi [2 · k / 2], lane_scale [2 · k / 8], block_sum [2 · k / block] (`x` unused).
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

    /// Quantizes x [k] for `w` and repeats it twice (a pair of rows' worth).
    fn fill(&mut self, x: &[f32], w: &Int4Matrix) {
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
        let blocks = k / bs;
        for v in [&mut a.lo, &mut a.hi] {
            v.resize(2 * half, 0);
        }
        a.lane_scale.resize(2 * lanes, 0.0);
        a.block_sum.resize(2 * blocks, 0.0);
        avx512::quantize_i8(
            x,
            bs,
            &mut a.lo[..half],
            &mut a.hi[..half],
            &mut a.lane_scale[..lanes],
            &mut a.block_sum[..blocks],
        );
        a.lo.copy_within(..half, half);
        a.hi.copy_within(..half, half);
        a.lane_scale.copy_within(..lanes, lanes);
        a.block_sum.copy_within(..blocks, blocks);
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::new());
}

/// Whether a pair of rows of k inputs fills whole 64-byte chunks (k a multiple of 64); else (k an odd multiple
/// of 32) the general row kernels.
pub(super) fn takes(k: usize) -> bool {
    k.is_multiple_of(64)
}

/// `out [n] = x [k] · Wᵀ` with activations quantized to int8 per block. The caller checked AVX-512 VNNI is
/// available and `takes(w.k())`.
pub(super) fn gemv_i8(x: &[f32], w: &Int4Matrix, out: &mut [f32]) {
    gemv_i8_with(x, w, out, gfni())
}

/// [`gemv_i8`] taking the high nibbles with GFNI or not (`gfni` only where the CPU has it).
fn gemv_i8_with(x: &[f32], w: &Int4Matrix, out: &mut [f32], gfni: bool) {
    assert!(
        x.len() == w.k() && out.len() == w.n(),
        "gemv_i8: x [k], out [n]"
    );
    assert!(takes(w.k()), "gemv_i8: k must be a multiple of 64");
    let mut run = |s: &mut Scratch| {
        s.fill(x, w);
        split(w, &s.a, out, gfni);
    };
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => run(&mut s),
        // A nested call on this thread (a rayon worker that took another product while it waited).
        Err(_) => run(&mut Scratch::new()),
    })
}

/// Rows in a few tasks per thread (whole pairs each), or in one call at 1 thread.
fn split(w: &Int4Matrix, a: &ActRow, out: &mut [f32], gfni: bool) {
    let threads = rayon::current_num_threads();
    if threads <= 1 {
        return rows(w, 0, a, out, gfni);
    }
    let per = w.n().div_ceil(4 * threads).next_multiple_of(16);
    out.par_chunks_mut(per)
        .enumerate()
        .for_each(|(t, o)| rows(w, t * per, a, o, gfni));
}

/// Rows `o0 .. o0 + out.len()`: pairs on AVX-512, an odd last row on the scalar int8 row.
fn rows(w: &Int4Matrix, o0: usize, a: &ActRow, out: &mut [f32], gfni: bool) {
    let (k, blocks) = (w.k(), w.k() / w.block_size());
    assert!(o0 + out.len() <= w.n());
    assert!(
        a.lo.len() >= k
            && a.hi.len() >= k
            && a.lane_scale.len() >= k / 4
            && a.block_sum.len() >= 2 * blocks
    );
    let whole = out.len() / 2 * 2;
    let y = &mut out[..whole];
    // SAFETY: the caller checked AVX-512 VNNI (and GFNI when `gfni`) and that a pair of rows fills whole chunks; rows o0 .. o0 + whole
    // exist and the activation holds two rows' worth (both asserted above); the kernel reads nothing else.
    unsafe {
        match w.block_size() {
            32 if gfni => pairs_gfni::<32>(w, o0, a, y),
            64 if gfni => pairs_gfni::<64>(w, o0, a, y),
            _ if gfni => pairs_gfni::<128>(w, o0, a, y),
            32 => pairs_plain::<32>(w, o0, a, y),
            64 => pairs_plain::<64>(w, o0, a, y),
            _ => pairs_plain::<128>(w, o0, a, y),
        }
    }
    for (r, y) in out.iter_mut().enumerate().skip(whole) {
        let o = o0 + r;
        let (nib, z) = w.row(o);
        *y = w.with_scales(o, 1, |s| {
            let zero_term: f32 = s
                .iter()
                .zip(z)
                .zip(&a.block_sum)
                .map(|((&s, &z), &xs)| s * f32::from(z) * xs)
                .sum();
            scalar::row_i8(nib, s, w.block_size(), a) - zero_term
        });
    }
}

/// The stored (half) weight scales of stream chunk `c` (128 inputs, blocks of 32 or 64) spread over its 16
/// lanes (8 inputs each), as f32 (the rows' 2^-e applied to the sums at the end).
#[inline(always)]
unsafe fn chunk_scales<const BS: usize>(hp: *const f16, c: usize) -> __m512 {
    if BS == 64 {
        // Two scales, lanes 0..8 and 8..16 (a 32-bit load: nothing past the chunk's blocks).
        let h = _mm_cvtsi32_si128(hp.add(2 * c).cast::<i32>().read_unaligned());
        let idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
        _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_cvtph_ps(h)))
    } else {
        let h = _mm_loadl_epi64(hp.add(4 * c).cast());
        let idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_cvtph_ps(h)))
    }
}

/// Stream chunk `c` of the pair at `p` (weights) against the activation's chunk `c`: per lane
/// Σ xq · q (integer) and the factor it takes: activation scale and weight scale per lane (applied as
/// (Σ · activation scale) · weight scale), or, for blocks of 128 (one block a chunk, both scales the same on
/// every lane), their product as one scalar.
#[inline(always)]
unsafe fn chunk<const BS: usize, const GFNI: bool>(
    p: *const u8,
    sp: *const f16,
    a: &ActRow,
    c: usize,
) -> (__m512, __m512) {
    let m0f = _mm512_set1_epi8(0x0F);
    let q = p.add(64 * c);
    // Stream hint into L2, 8 KiB ahead (harmless past the end).
    _mm_prefetch::<_MM_HINT_T1>(q.wrapping_add(8192).cast());
    let v = _mm512_loadu_si512(q.cast());
    let lo = _mm512_and_si512(v, m0f);
    let hi = if GFNI {
        // Each byte shifted right by 4 in one affine transform over GF(2): output bit i = input bit i + 4.
        _mm512_gf2p8affine_epi64_epi8::<0>(v, _mm512_set1_epi64(SHR4 as i64))
    } else {
        _mm512_and_si512(_mm512_srli_epi16::<4>(v), m0f)
    };
    let xl = _mm512_loadu_si512(a.lo.as_ptr().add(64 * c).cast());
    let xh = _mm512_loadu_si512(a.hi.as_ptr().add(64 * c).cast());
    let d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xl);
    let d = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(d, hi, xh));
    if BS == CHUNK {
        let h = _mm_cvtsi32_si128(i32::from(sp.add(c).cast::<u16>().read_unaligned()));
        let ws = _mm_cvtss_f32(_mm_cvtph_ps(h));
        (d, _mm512_set1_ps(ws * *a.lane_scale.as_ptr().add(16 * c)))
    } else {
        let xs = _mm512_loadu_ps(a.lane_scale.as_ptr().add(16 * c));
        (_mm512_mul_ps(d, xs), chunk_scales::<BS>(sp, c))
    }
}

/// The lane sums of `a` and of `b`.
#[inline(always)]
unsafe fn reduce2(a: __m512, b: __m512) -> (f32, f32) {
    // 128-bit lanes t = [a0 + a2, a1 + a3, b0 + b2, b1 + b3], then [t0 + t1 | t2 + t3] = [a: 4 | b: 4].
    let t = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
        _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
    );
    let (lo, hi) = (
        _mm512_castps512_ps256(t),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(t))),
    );
    let u = _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(lo, hi),
        _mm256_permute2f128_ps::<0x31>(lo, hi),
    );
    let u = _mm256_add_ps(u, _mm256_permute_ps::<0b10_11_00_01>(u));
    let u = _mm256_add_ps(u, _mm256_permute_ps::<0b01_00_11_10>(u));
    (
        _mm256_cvtss_f32(u),
        _mm_cvtss_f32(_mm256_extractf128_ps::<1>(u)),
    )
}

/// Rows `o0 .. o0 + out.len()` (an even count) in pairs: a pair's 2 · k / 2 bytes are k / 64 whole chunks
/// against the activation repeated twice, the chunk holding both rows (k an odd multiple of 64) split
/// between them at lane 8; zero points Σ_b s_b z_b Σ_{i∈b} x_i of both rows in one pass over their 2 · blocks
/// contiguous scales and zeros, and one reduction for the two sums. The stored half scales are used as they
/// are, each row's sum times its 2^-e at the end (a power of two: the same as scaling every term).
#[inline(always)]
unsafe fn pairs<const BS: usize, const GFNI: bool>(
    w: &Int4Matrix,
    o0: usize,
    a: &ActRow,
    out: &mut [f32],
) {
    let k = w.k();
    let blocks = k / BS;
    let (nib, scales, zeros, row_scale) = w.parts();
    let lanes = k / 8;
    // Chunks wholly in the first row, whether one chunk is shared, all chunks of the pair.
    let (first, shared, all) = (lanes / 16, !lanes.is_multiple_of(16), k / 64);
    for (i, y) in out.chunks_exact_mut(2).enumerate() {
        let o = o0 + 2 * i;
        // SAFETY (all pointer arithmetic): rows o, o + 1 exist (the caller's assert); their k bytes, 2 · blocks
        // scales and zeros are contiguous; the activation holds two rows' worth, block_sum twice.
        let p = nib.as_ptr().add(o * k / 2);
        let sp = scales.as_ptr().add(o * blocks);
        let zp = zeros.as_ptr().add(o * blocks);
        let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for c in 0..first {
            let (t, ws) = chunk::<BS, GFNI>(p, sp, a, c);
            acc0 = _mm512_fmadd_ps(t, ws, acc0);
        }
        if shared {
            let (t, ws) = chunk::<BS, GFNI>(p, sp, a, first);
            acc0 = _mm512_mask3_fmadd_ps(t, ws, acc0, 0x00FF);
            acc1 = _mm512_mask3_fmadd_ps(t, ws, acc1, 0xFF00);
        }
        for c in first + shared as usize..all {
            let (t, ws) = chunk::<BS, GFNI>(p, sp, a, c);
            acc1 = _mm512_fmadd_ps(t, ws, acc1);
        }
        // Zero points: lane L of the 2 · blocks is row 0's block L, or row 1's block L − blocks.
        for base in (0..2 * blocks).step_by(16) {
            let valid = mask_below(2 * blocks - base);
            let row0 = mask_below(blocks.saturating_sub(base));
            let zf = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(
                valid,
                zp.add(base).cast(),
            )));
            let sv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(valid, sp.add(base).cast()));
            let xs = _mm512_maskz_loadu_ps(valid, a.block_sum.as_ptr().add(base));
            let zt = _mm512_mul_ps(_mm512_mul_ps(zf, sv), xs);
            acc0 = _mm512_mask_sub_ps(acc0, row0, acc0, zt);
            acc1 = _mm512_mask_sub_ps(acc1, !row0, acc1, zt);
        }
        let (y0, y1) = reduce2(acc0, acc1);
        (y[0], y[1]) = (y0 * row_scale[o], y1 * row_scale[o + 1]);
    }
}

/// `pairs` with the high nibbles taken by GFNI's affine transform (one instruction instead of a shift and a
/// mask); the caller checked GFNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,gfni,fma,f16c")]
unsafe fn pairs_gfni<const BS: usize>(w: &Int4Matrix, o0: usize, a: &ActRow, out: &mut [f32]) {
    pairs::<BS, true>(w, o0, a, out)
}

/// `pairs` with a shift and a mask for the high nibbles (AVX-512 without GFNI).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
unsafe fn pairs_plain<const BS: usize>(w: &Int4Matrix, o0: usize, a: &ActRow, out: &mut [f32]) {
    pairs::<BS, false>(w, o0, a, out)
}

/// The GF(2) 8×8 bit matrix of a byte's right shift by 4: row i (byte 7 − i) picks input bit i + 4 for
/// output bits 0..4, nothing for 4..8.
const SHR4: u64 = 0x1020_4080_0000_0000;

/// Whether this CPU has GFNI (with the AVX-512 the kernel already needs).
fn gfni() -> bool {
    std::arch::is_x86_feature_detected!("gfni")
}

/// The first min(n, 16) lanes.
#[inline(always)]
fn mask_below(n: usize) -> __mmask16 {
    if n >= 16 {
        !0
    } else {
        ((1u32 << n) - 1) as u16
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

    /// (n, k, group, act-order): a chunk shared by the rows of a pair (k = 576, 960) or not (256, 384, 640,
    /// 1536), blocks of 32 / 64 / 128, odd row counts (the scalar last row), a single row.
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
                // Without GFNI (shift and mask), then with it where the CPU has it.
                let mut y = vec![f32::NAN; n];
                for with_gfni in [false, true].into_iter().filter(|&g| !g || gfni()) {
                    pool.install(|| gemv_i8_with(&x, &m, &mut y, with_gfni));
                    let what = format!(
                        "n {n} k {k} group {gs} act-order {ao} threads {threads} gfni {with_gfni}"
                    );
                    check(&m, &x, &y, &what);
                }
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
    fn takes_k_a_multiple_of_64() {
        assert!(takes(576) && takes(1536) && takes(896) && takes(960));
        assert!(!takes(96) && !takes(160));
    }
}
