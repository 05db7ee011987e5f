//! AVX-512 int4 row kernels (MLAS SQNBitGemm's AVX-512 scheme): fp32 path zero-extends each 16-byte
//! sub-block to 16 lanes (low/high nibble = inputs j / j + 16) and FMAs; int8 path splits 64 bytes into
//! low/high nibbles and runs two VNNI `vpdpbusd` (u8 levels × s8 activations) per 128 inputs, then scales
//! each 4-lane sub-block by weight scale × activation scale; one or two rows against up to 4 activation
//! rows, the weight stream prefetched into L2 8 KiB ahead. Activations are quantized here too (vectorized
//! `vcvtps2dq`, bit-equal to the scalar reference). Batches of 8 and more go to `avx512_gemm`.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::{ActRow, Int4Matrix, CHUNK, SUB};

/// fp32 path: `out[i] = Σ_b s_b (Σ x_i q − z_b Σ x_i)` for each of `acts` (1..=4).
pub(super) fn rows_f32(
    nib: &[u8],
    scales: &[f32],
    zeros: &[u8],
    bs: usize,
    acts: &[ActRow],
    out: &mut [f32],
) {
    // SAFETY: the caller (int4_matmul_with) checked Isa::Avx512 is available; lengths are checked below.
    unsafe {
        match acts.len() {
            1 => f32_n::<1>(nib, scales, zeros, bs, acts, out),
            2 => f32_n::<2>(nib, scales, zeros, bs, acts, out),
            3 => f32_n::<3>(nib, scales, zeros, bs, acts, out),
            _ => f32_n::<4>(nib, scales, zeros, bs, acts, out),
        }
    }
}

/// int8 path for `rows` (1 or 2) consecutive weight rows from `o` against 1..=4 `acts`:
/// `out[r · acts + i] = Σ_b s_b (xs_b Σ xq q − z_b · block_sum_b)`.
pub(super) fn rows_i8(w: &Int4Matrix, o: usize, rows: usize, acts: &[ActRow], out: &mut [f32]) {
    macro_rules! by_block {
        ($r:literal, $nb:literal) => {
            // SAFETY: the caller (int4_matmul_with) checked Isa::Avx512 is available; rows o..o + R exist
            // (checked below) and the kernel checks the activations' lengths.
            unsafe {
                match w.block_size() {
                    32 => gemv_i8::<$r, $nb, 32>(w, o, acts, out),
                    64 => gemv_i8::<$r, $nb, 64>(w, o, acts, out),
                    _ => gemv_i8::<$r, $nb, 128>(w, o, acts, out),
                }
            }
        };
    }
    assert!(o + rows <= w.n());
    match (rows, acts.len()) {
        (1, 1) => by_block!(1, 1),
        (1, 2) => by_block!(1, 2),
        (1, 3) => by_block!(1, 3),
        (1, _) => by_block!(1, 4),
        (_, 1) => by_block!(2, 1),
        (_, 2) => by_block!(2, 2),
        (_, 3) => by_block!(2, 3),
        _ => by_block!(2, 4),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn f32_n<const NB: usize>(
    nib: &[u8],
    scales: &[f32],
    zeros: &[u8],
    bs: usize,
    acts: &[ActRow],
    out: &mut [f32],
) {
    let k = nib.len() * 2;
    assert!(acts.len() == NB && out.len() == NB && scales.len() * bs == k);
    assert!(acts.iter().all(|a| a.x.len() >= k));
    let mask = _mm512_set1_epi32(0xF);
    let mut acc = [_mm512_setzero_ps(); NB];
    let subs = bs / SUB;
    for (b, &s) in scales.iter().enumerate() {
        let mut t = [_mm512_setzero_ps(); NB];
        for sb in b * subs..(b + 1) * subs {
            if sb % 4 == 0 {
                // Stream hint 2 KiB ahead (a prefetch past the row's end is harmless).
                _mm_prefetch::<_MM_HINT_T0>(nib.as_ptr().wrapping_add(16 * sb + 2048).cast());
            }
            // SAFETY: sb < k / 32, so bytes 16·sb..16·sb+16 and inputs 32·sb..32·sb+32 are in bounds.
            let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(nib.as_ptr().add(16 * sb).cast()));
            let lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, mask));
            let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(v));
            for i in 0..NB {
                let xp = acts[i].x.as_ptr().add(SUB * sb);
                t[i] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xp), t[i]);
                t[i] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xp.add(16)), t[i]);
            }
        }
        let sv = _mm512_set1_ps(s);
        for i in 0..NB {
            acc[i] = _mm512_fmadd_ps(t[i], sv, acc[i]);
        }
    }
    for i in 0..NB {
        out[i] = _mm512_reduce_add_ps(_mm512_sub_ps(
            acc[i],
            zero_term(scales, zeros, &acts[i].block_sum),
        ));
    }
}

/// One 128-input chunk of `R` rows against `NB` activation rows: two VNNI dot products per row and item
/// (low nibbles × inputs 32s + j, high nibbles × inputs 32s + 16 + j), then per 4-lane sub-block the
/// weight scale × activation scale. `FULL`: a whole chunk (plain loads); else `bmask` bytes / `nblk` blocks.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn chunk_i8<const R: usize, const NB: usize, const BS: usize, const FULL: bool>(
    nib: *const u8,
    row_bytes: usize,
    scales: *const f32,
    blocks: usize,
    c: usize,
    bmask: __mmask64,
    smask: __mmask16,
    acts: &[ActRow],
    acc: &mut [[__m512; NB]; R],
) {
    let m0f = _mm512_set1_epi8(0x0F);
    // Lane l of a chunk lies in sub-block l / 4, i.e. block (l / 4) · 32 / BS of the chunk.
    let per = (BS / SUB) as i32;
    let (q1, q2, q3) = (1 / per, 2 / per, 3 / per);
    let idx = _mm512_setr_epi32(0, 0, 0, 0, q1, q1, q1, q1, q2, q2, q2, q2, q3, q3, q3, q3);
    let mut lo = [_mm512_setzero_si512(); R];
    let mut hi = [_mm512_setzero_si512(); R];
    let mut ws = [_mm512_setzero_ps(); R];
    for r in 0..R {
        let p = nib.add(r * row_bytes + 64 * c);
        let v = if FULL {
            _mm512_loadu_si512(p.cast())
        } else {
            _mm512_maskz_loadu_epi8(bmask, p.cast())
        };
        // Stream hint 4 KiB ahead (harmless past the end).
        // Stream hint into L2, 8 KiB ahead (harmless past the end).
        _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(8192).cast());
        lo[r] = _mm512_and_si512(v, m0f);
        hi[r] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m0f);
        let sp = scales.add(r * blocks + c * (CHUNK / BS));
        ws[r] = if BS == CHUNK {
            _mm512_set1_ps(*sp)
        } else if FULL {
            _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_loadu_ps(sp)))
        } else {
            _mm512_permutexvar_ps(idx, _mm512_maskz_loadu_ps(smask, sp))
        };
    }
    for i in 0..NB {
        let a = &acts[i];
        let xl = _mm512_loadu_si512(a.lo.as_ptr().add(64 * c).cast());
        let xh = _mm512_loadu_si512(a.hi.as_ptr().add(64 * c).cast());
        let xs = _mm512_loadu_ps(a.lane_scale.as_ptr().add(16 * c));
        for r in 0..R {
            let d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[r], xl);
            let d = _mm512_dpbusd_epi32(d, hi[r], xh);
            let t = _mm512_mul_ps(_mm512_cvtepi32_ps(d), xs);
            acc[r][i] = _mm512_fmadd_ps(t, ws[r], acc[r][i]);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
unsafe fn gemv_i8<const R: usize, const NB: usize, const BS: usize>(
    w: &Int4Matrix,
    o: usize,
    acts: &[ActRow],
    out: &mut [f32],
) {
    let k = w.k();
    let k_pad = k.div_ceil(CHUNK) * CHUNK;
    assert!(o + R <= w.n() && acts.len() == NB && out.len() == R * NB && w.block_size() == BS);
    assert!(acts.iter().all(|a| a.lo.len() == k_pad / 2
        && a.hi.len() == k_pad / 2
        && a.lane_scale.len() == k_pad / 8));
    let (nib, _) = w.row(o);
    // The R rows' f32 scales [R, blocks].
    w.with_scales(o, R, |scales| {
        rows_with::<R, NB, BS>(w, o, nib.as_ptr(), scales, acts, out)
    })
}

/// `gemv_i8`'s rows with their decoded scales [R, blocks].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
unsafe fn rows_with<const R: usize, const NB: usize, const BS: usize>(
    w: &Int4Matrix,
    o: usize,
    nib: *const u8,
    all_scales: &[f32],
    acts: &[ActRow],
    out: &mut [f32],
) {
    let k = w.k();
    let blocks = k / BS;
    assert_eq!(all_scales.len(), R * blocks);
    let scales = all_scales.as_ptr();
    let mut acc = [[_mm512_setzero_ps(); NB]; R];
    let full = k / CHUNK;
    for c in 0..full {
        chunk_i8::<R, NB, BS, true>(nib, k / 2, scales, blocks, c, !0, !0, acts, &mut acc);
    }
    if full * CHUNK < k {
        // SAFETY (all of the above): chunk c < k_pad / 128 reads row bytes 64c.. (masked to the row) and
        // scales of its blocks; rows o..o + R are contiguous, k / 2 bytes and `blocks` scales apart.
        let bytes = (k - full * CHUNK) / 2;
        let bmask: __mmask64 = (1u64 << bytes) - 1;
        let smask: __mmask16 = ((1u32 << (2 * bytes / BS)) - 1) as u16;
        chunk_i8::<R, NB, BS, false>(
            nib,
            k / 2,
            scales,
            blocks,
            full,
            bmask,
            smask,
            acts,
            &mut acc,
        );
    }
    for r in 0..R {
        let (_, z) = w.row(o + r);
        let s = &all_scales[r * blocks..(r + 1) * blocks];
        for i in 0..NB {
            let zt = zero_term(s, z, &acts[i].block_sum);
            out[r * NB + i] = _mm512_reduce_add_ps(_mm512_sub_ps(acc[r][i], zt));
        }
    }
}

/// ORT's accuracy-level-4 activation quantization of `x` [k] (k % 32 == 0) per block of `bs` (32/64/128):
/// scale max|x| / 127, `round_ties_even(x · 127 / max|x|)` (the default MXCSR rounding of `vcvtps2dq`, so
/// bit-equal to `scalar::quantize_activations_ref`), written split into sub-block halves `lo` / `hi`
/// [k_pad / 2], per-lane scales `lane_scale` [k_pad / 8] and per-block `scale · Σ xq` into `block_sum`.
pub(super) fn quantize_i8(
    x: &[f32],
    bs: usize,
    lo: &mut [i8],
    hi: &mut [i8],
    lane_scale: &mut [f32],
    block_sum: &mut [f32],
) {
    let k = x.len();
    assert!(k.is_multiple_of(SUB) && bs.is_multiple_of(SUB) && k.is_multiple_of(bs));
    assert!(lo.len() >= k / 2 && hi.len() >= k / 2 && lane_scale.len() >= k / 8);
    assert!(block_sum.len() == k / bs);
    // SAFETY: the caller checked Isa::Avx512; every access below is within the lengths asserted above.
    unsafe { quantize_i8_impl(x, bs, lo, hi, lane_scale, block_sum) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn quantize_i8_impl(
    x: &[f32],
    bs: usize,
    lo: &mut [i8],
    hi: &mut [i8],
    lane_scale: &mut [f32],
    block_sum: &mut [f32],
) {
    let abs_mask = _mm512_set1_epi32(0x7FFF_FFFF);
    let (qmin, qmax) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
    for (b, sum) in block_sum.iter_mut().enumerate() {
        let xb = x.as_ptr().add(b * bs);
        let mut m = _mm512_setzero_ps();
        for v in 0..bs / 16 {
            let a = _mm512_castsi512_ps(_mm512_and_si512(
                _mm512_castps_si512(_mm512_loadu_ps(xb.add(16 * v))),
                abs_mask,
            ));
            m = _mm512_max_ps(m, a);
        }
        let amax = _mm512_reduce_max_ps(m);
        let scale = amax / 127.0;
        let inv = _mm512_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
        let mut qs = _mm512_setzero_si512();
        for v in 0..bs / 16 {
            let q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb.add(16 * v)), inv));
            let q = _mm512_min_epi32(_mm512_max_epi32(q, qmin), qmax);
            qs = _mm512_add_epi32(qs, q);
            // Input j = b·bs + 16v lies in sub-block j / 32, the low half when (j / 16) is even.
            let j = b * bs + 16 * v;
            let dst = if (j / 16).is_multiple_of(2) {
                lo.as_mut_ptr()
            } else {
                hi.as_mut_ptr()
            };
            _mm_storeu_si128(dst.add(16 * (j / SUB)).cast(), _mm512_cvtepi32_epi8(q));
        }
        *sum = scale * _mm512_reduce_add_epi32(qs) as f32;
        lane_scale[b * bs / 8..(b + 1) * bs / 8].fill(scale);
    }
}

/// Σ_b s_b · z_b · block_sum_b, 16 blocks a step (lanes to be summed by the caller).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn zero_term(scales: &[f32], zeros: &[u8], block_sum: &[f32]) -> __m512 {
    let nb = scales.len();
    assert!(zeros.len() == nb && block_sum.len() == nb);
    let mut acc = _mm512_setzero_ps();
    for b in (0..nb).step_by(16) {
        let m: __mmask16 = if nb - b >= 16 {
            !0
        } else {
            ((1u32 << (nb - b)) - 1) as u16
        };
        // SAFETY: masked loads stay within the nb blocks.
        let z = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(
            m,
            zeros.as_ptr().add(b).cast(),
        )));
        let s = _mm512_maskz_loadu_ps(m, scales.as_ptr().add(b));
        let x = _mm512_maskz_loadu_ps(m, block_sum.as_ptr().add(b));
        acc = _mm512_fmadd_ps(_mm512_mul_ps(z, s), x, acc);
    }
    acc
}
