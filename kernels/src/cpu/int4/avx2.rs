//! AVX2 int4 row kernels (MLAS SQNBitGemm's AVX2 scheme): fp32 path zero-extends each sub-block's bytes
//! to 8-lane halves and FMAs; int8 path splits 32 bytes into low/high nibbles, `vpmaddubsw` (u8 levels ×
//! s8 activations, pairs ≤ 3810 so no saturation) then `vpmaddwd` by ones, and scales each 4-lane
//! sub-block by weight scale × activation scale. One row against up to 4 activation rows.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::{ActRow, CHUNK, SUB};

/// fp32 path: `out[i] = Σ_b s_b (Σ x_i q − z_b Σ x_i)` for each of `acts` (1..=4).
pub(super) fn rows_f32(
    nib: &[u8],
    scales: &[f32],
    zeros: &[u8],
    bs: usize,
    acts: &[ActRow],
    out: &mut [f32],
) {
    // SAFETY: the caller (int4_matmul_with) checked Isa::Avx2 is available; lengths are checked below.
    unsafe {
        match acts.len() {
            1 => f32_n::<1>(nib, scales, zeros, bs, acts, out),
            2 => f32_n::<2>(nib, scales, zeros, bs, acts, out),
            3 => f32_n::<3>(nib, scales, zeros, bs, acts, out),
            _ => f32_n::<4>(nib, scales, zeros, bs, acts, out),
        }
    }
}

/// int8 path: `out[i] = Σ_b s_b (xs_b Σ xq q − z_b · block_sum_b)` for each of `acts` (1..=4).
pub(super) fn rows_i8(
    nib: &[u8],
    scales: &[f32],
    zeros: &[u8],
    bs: usize,
    acts: &[ActRow],
    out: &mut [f32],
) {
    // SAFETY: as rows_f32.
    unsafe {
        match acts.len() {
            1 => i8_n::<1>(nib, scales, zeros, bs, acts, out),
            2 => i8_n::<2>(nib, scales, zeros, bs, acts, out),
            3 => i8_n::<3>(nib, scales, zeros, bs, acts, out),
            _ => i8_n::<4>(nib, scales, zeros, bs, acts, out),
        }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma")]
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
    let mask = _mm256_set1_epi32(0xF);
    let mut acc = [_mm256_setzero_ps(); NB];
    let subs = bs / SUB;
    for (b, &s) in scales.iter().enumerate() {
        let mut t = [_mm256_setzero_ps(); NB];
        for sb in b * subs..(b + 1) * subs {
            if sb % 4 == 0 {
                // Stream hint 2 KiB ahead (a prefetch past the row's end is harmless).
                _mm_prefetch::<_MM_HINT_T0>(nib.as_ptr().wrapping_add(16 * sb + 2048).cast());
            }
            // SAFETY: sb < k / 32: bytes 16·sb..16·sb+16 and inputs 32·sb..32·sb+32 are in bounds.
            let p = nib.as_ptr().add(16 * sb);
            let v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast()));
            let v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8).cast()));
            let l0 = _mm256_cvtepi32_ps(_mm256_and_si256(v0, mask));
            let l1 = _mm256_cvtepi32_ps(_mm256_and_si256(v1, mask));
            let h0 = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(v0));
            let h1 = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(v1));
            for i in 0..NB {
                let xp = acts[i].x.as_ptr().add(SUB * sb);
                t[i] = _mm256_fmadd_ps(l0, _mm256_loadu_ps(xp), t[i]);
                t[i] = _mm256_fmadd_ps(l1, _mm256_loadu_ps(xp.add(8)), t[i]);
                t[i] = _mm256_fmadd_ps(h0, _mm256_loadu_ps(xp.add(16)), t[i]);
                t[i] = _mm256_fmadd_ps(h1, _mm256_loadu_ps(xp.add(24)), t[i]);
            }
        }
        let sv = _mm256_set1_ps(s);
        for i in 0..NB {
            acc[i] = _mm256_fmadd_ps(t[i], sv, acc[i]);
        }
    }
    for i in 0..NB {
        out[i] = hsum(_mm256_sub_ps(
            acc[i],
            zero_term(scales, zeros, &acts[i].block_sum),
        ));
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn i8_n<const NB: usize>(
    nib: &[u8],
    scales: &[f32],
    zeros: &[u8],
    bs: usize,
    acts: &[ActRow],
    out: &mut [f32],
) {
    let k = nib.len() * 2;
    let k_pad = k.div_ceil(CHUNK) * CHUNK;
    assert!(acts.len() == NB && out.len() == NB && scales.len() * bs == k);
    assert!(acts.iter().all(|a| a.lo.len() == k_pad / 2
        && a.hi.len() == k_pad / 2
        && a.lane_scale.len() == k_pad / 8));
    let m0f = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); NB];
    let subs = k / SUB;
    // 64 inputs (two sub-blocks, 32 bytes) a step; an odd last sub-block is loaded alone.
    for c in 0..subs.div_ceil(2) {
        let (s0, s1) = (2 * c, (2 * c + 1).min(subs - 1));
        // SAFETY: bytes 32c..32c+32 are in the row unless the last sub-block is alone (then 16 are read);
        // activation arrays are padded to k_pad.
        if c % 2 == 0 {
            _mm_prefetch::<_MM_HINT_T0>(nib.as_ptr().wrapping_add(32 * c + 2048).cast());
        }
        let w = if 2 * c + 1 < subs {
            _mm256_loadu_si256(nib.as_ptr().add(32 * c).cast())
        } else {
            _mm256_zextsi128_si256(_mm_loadu_si128(nib.as_ptr().add(32 * c).cast()))
        };
        let lo = _mm256_and_si256(w, m0f);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(w), m0f);
        let ws = _mm256_set_m128(
            _mm_set1_ps(scales[s1 * SUB / bs]),
            _mm_set1_ps(scales[s0 * SUB / bs]),
        );
        for i in 0..NB {
            let a = &acts[i];
            let xl = _mm256_loadu_si256(a.lo.as_ptr().add(32 * c).cast());
            let xh = _mm256_loadu_si256(a.hi.as_ptr().add(32 * c).cast());
            let p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xl), _mm256_maddubs_epi16(hi, xh));
            let d = _mm256_madd_epi16(p, ones);
            let sc = _mm256_mul_ps(ws, _mm256_loadu_ps(a.lane_scale.as_ptr().add(8 * c)));
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), sc, acc[i]);
        }
    }
    for i in 0..NB {
        out[i] = hsum(_mm256_sub_ps(
            acc[i],
            zero_term(scales, zeros, &acts[i].block_sum),
        ));
    }
}

/// Σ_b s_b · z_b · block_sum_b, 8 blocks a step (lanes to be summed by the caller).
#[target_feature(enable = "avx2,fma")]
unsafe fn zero_term(scales: &[f32], zeros: &[u8], block_sum: &[f32]) -> __m256 {
    let nb = scales.len();
    assert!(zeros.len() == nb && block_sum.len() == nb);
    let mut acc = _mm256_setzero_ps();
    let full = nb / 8 * 8;
    for b in (0..full).step_by(8) {
        // SAFETY: b + 8 ≤ nb.
        let z = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
            zeros.as_ptr().add(b).cast(),
        )));
        let s = _mm256_loadu_ps(scales.as_ptr().add(b));
        let x = _mm256_loadu_ps(block_sum.as_ptr().add(b));
        acc = _mm256_fmadd_ps(_mm256_mul_ps(z, s), x, acc);
    }
    let rest: f32 = (full..nb)
        .map(|b| scales[b] * f32::from(zeros[b]) * block_sum[b])
        .sum();
    _mm256_add_ps(acc, _mm256_setr_ps(rest, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
}
