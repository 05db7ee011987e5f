//! AVX-512 int4 row kernels (MLAS SQNBitGemm's AVX-512 scheme): fp32 path zero-extends each 16-byte
//! sub-block to 16 lanes (low/high nibble = inputs j / j + 16) and FMAs; int8 path splits 64 bytes into
//! low/high nibbles and runs two VNNI `vpdpbusd` (u8 levels × s8 activations) per 128 inputs, then scales
//! each 4-lane sub-block by weight scale × activation scale. One row against up to 4 activation rows.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::{ActRow, CHUNK, SUB};

/// One weight row: nibbles [k / 2], scales [blocks], zeros [blocks].
pub(super) type Row<'a> = (&'a [u8], &'a [f32], &'a [u8]);

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

/// int8 path for 1 or 2 weight rows `rows` (nibbles, scales, zeros) against 1..=8 `acts`:
/// `out[r · acts + i] = Σ_b s_b (xs_b Σ xq q − z_b · block_sum_b)`.
pub(super) fn rows_i8(rows: &[Row<'_>], bs: usize, acts: &[ActRow], out: &mut [f32]) {
    // SAFETY: as rows_f32.
    unsafe {
        match (rows.len(), acts.len()) {
            (1, 1) => i8_n::<1, 1>(rows, bs, acts, out),
            (1, 2) => i8_n::<1, 2>(rows, bs, acts, out),
            (1, 3) => i8_n::<1, 3>(rows, bs, acts, out),
            (1, 4) => i8_n::<1, 4>(rows, bs, acts, out),
            (1, 5) => i8_n::<1, 5>(rows, bs, acts, out),
            (1, 6) => i8_n::<1, 6>(rows, bs, acts, out),
            (1, 7) => i8_n::<1, 7>(rows, bs, acts, out),
            (1, _) => i8_n::<1, 8>(rows, bs, acts, out),
            (_, 1) => i8_n::<2, 1>(rows, bs, acts, out),
            (_, 2) => i8_n::<2, 2>(rows, bs, acts, out),
            (_, 3) => i8_n::<2, 3>(rows, bs, acts, out),
            (_, 4) => i8_n::<2, 4>(rows, bs, acts, out),
            (_, 5) => i8_n::<2, 5>(rows, bs, acts, out),
            (_, 6) => i8_n::<2, 6>(rows, bs, acts, out),
            (_, 7) => i8_n::<2, 7>(rows, bs, acts, out),
            _ => i8_n::<2, 8>(rows, bs, acts, out),
        }
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

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
unsafe fn i8_n<const R: usize, const NB: usize>(
    rows: &[Row<'_>],
    bs: usize,
    acts: &[ActRow],
    out: &mut [f32],
) {
    let k = rows[0].0.len() * 2;
    let k_pad = k.div_ceil(CHUNK) * CHUNK;
    assert!(
        rows.len() == R
            && acts.len() == NB
            && out.len() == R * NB
            && bs <= CHUNK
            && bs.is_power_of_two()
    );
    assert!(rows
        .iter()
        .all(|r| r.0.len() * 2 == k && r.1.len() * bs == k && r.2.len() == r.1.len()));
    assert!(acts.iter().all(|a| a.lo.len() == k_pad / 2
        && a.hi.len() == k_pad / 2
        && a.lane_scale.len() == k_pad / 8));
    let m0f = _mm512_set1_epi8(0x0F);
    // Lane l of a 128-input chunk lies in sub-block l / 4, i.e. block (l / 4) · 32 / bs of the chunk.
    let per = (bs / SUB) as i32;
    let (q1, q2, q3) = (1 / per, 2 / per, 3 / per);
    let idx = _mm512_setr_epi32(0, 0, 0, 0, q1, q1, q1, q1, q2, q2, q2, q2, q3, q3, q3, q3);
    let blocks_per_chunk = CHUNK / bs;
    let bs_shift = bs.trailing_zeros();
    let mut acc = [[_mm512_setzero_ps(); NB]; R];
    let chunks = k.div_ceil(CHUNK);
    for c in 0..chunks {
        let bytes = ((k - c * CHUNK).min(CHUNK) / 2) as u32;
        let bmask: __mmask64 = if bytes == 64 { !0 } else { (1u64 << bytes) - 1 };
        // bs is 32, 64 or 128: a shift, not a division in the loop.
        let nblk = (bytes as usize * 2) >> bs_shift;
        let smask: __mmask16 = ((1u32 << nblk) - 1) as u16;
        let mut lo = [_mm512_setzero_si512(); R];
        let mut hi = [_mm512_setzero_si512(); R];
        let mut ws = [_mm512_setzero_ps(); R];
        for r in 0..R {
            // SAFETY: masked loads read only the row's bytes and scales.
            let w = _mm512_maskz_loadu_epi8(bmask, rows[r].0.as_ptr().add(64 * c).cast());
            lo[r] = _mm512_and_si512(w, m0f);
            hi[r] = _mm512_and_si512(_mm512_srli_epi16::<4>(w), m0f);
            // Stream hint 4 KiB ahead, past the row pair being read (harmless past the end).
            _mm_prefetch::<_MM_HINT_T0>(rows[r].0.as_ptr().wrapping_add(64 * c + 4096).cast());
            ws[r] = if bs == CHUNK {
                _mm512_set1_ps(rows[r].1[c])
            } else {
                _mm512_permutexvar_ps(
                    idx,
                    _mm512_maskz_loadu_ps(smask, rows[r].1.as_ptr().add(c * blocks_per_chunk)),
                )
            };
        }
        for i in 0..NB {
            let a = &acts[i];
            // SAFETY: activation arrays are padded to k_pad.
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
    for r in 0..R {
        for i in 0..NB {
            let z = zero_term(rows[r].1, rows[r].2, &acts[i].block_sum);
            out[r * NB + i] = _mm512_reduce_add_ps(_mm512_sub_ps(acc[r][i], z));
        }
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
