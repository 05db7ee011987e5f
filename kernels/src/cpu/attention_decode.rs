//! Attention of a few query tokens over the KV cache (decoding), the same `softmax(q·kᵀ · scale) · v` per
//! query head as `attention`'s row loop, on AVX-512 for head_dim a multiple of 16 up to 128: the query head held
//! in registers for the scores (head_dim / 16 FMAs and one reduction per key), the standard max-subtracted f32
//! softmax, then the value mix with the head's output in registers (head_dim / 16 accumulators, normalized
//! once at the end). One call runs all heads in a loop at 1 thread (one scores buffer), else one rayon task a
//! head. Other shapes or CPUs: `attention`'s portable loop.

use rayon::prelude::*;

use super::attention::AttentionDims;

/// Runs the heads when this CPU and head_dim allow; returns false (out untouched) otherwise.
/// q: [tokens, q_stride]; k, v: [kv_len, kv_heads · head_dim]; out: [tokens, heads · head_dim]; query t at
/// position `kv_len - tokens + t`; key j visible from p when j ≤ p and p − j < window.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_decode(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: AttentionDims,
    window: Option<usize>,
    scale: f32,
    (tokens, kv_len): (usize, usize),
    out: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let hd = dims.head_dim;
        if !(hd.is_multiple_of(16) && hd <= 128 && std::arch::is_x86_feature_detected!("avx512f")) {
            return false;
        }
        // The caller (`attention`'s `check`) validated every length these read.
        let heads = dims.heads;
        let group = heads / dims.kv_heads;
        let kv_dim = dims.kv_heads * hd;
        assert!(k.len() >= kv_len * kv_dim && v.len() >= kv_len * kv_dim);
        assert!(out.len() == tokens * heads * hd);
        let start = kv_len - tokens;
        let one = |scores: &mut Vec<f32>, idx: usize, o: &mut [f32]| {
            let (t, h) = (idx / heads, idx % heads);
            let pos = start + t;
            let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let qh = &q[t * dims.q_stride + h * hd..][..hd];
            let off = (h / group) * hd;
            // SAFETY: AVX-512F checked above; keys/values lo..=pos < kv_len of kv_dim floats each (asserted),
            // head offset + head_dim ≤ kv_dim; qh and o are head_dim long.
            unsafe {
                match hd / 16 {
                    1 => head::<1>(qh, k, v, (kv_dim, off), (lo, pos), scale, scores, o),
                    2 => head::<2>(qh, k, v, (kv_dim, off), (lo, pos), scale, scores, o),
                    3 => head::<3>(qh, k, v, (kv_dim, off), (lo, pos), scale, scores, o),
                    4 => head::<4>(qh, k, v, (kv_dim, off), (lo, pos), scale, scores, o),
                    5 => head::<5>(qh, k, v, (kv_dim, off), (lo, pos), scale, scores, o),
                    6 => head::<6>(qh, k, v, (kv_dim, off), (lo, pos), scale, scores, o),
                    7 => head::<7>(qh, k, v, (kv_dim, off), (lo, pos), scale, scores, o),
                    _ => head::<8>(qh, k, v, (kv_dim, off), (lo, pos), scale, scores, o),
                }
            }
        };
        if rayon::current_num_threads() <= 1 {
            let mut scores = Vec::with_capacity(kv_len);
            for (idx, o) in out.chunks_exact_mut(hd).enumerate() {
                one(&mut scores, idx, o);
            }
        } else {
            out.par_chunks_mut(hd)
                .enumerate()
                .for_each_init(Vec::new, |scores, (idx, o)| one(scores, idx, o));
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (q, k, v, dims, window, scale, tokens, kv_len, out);
        false
    }
}

/// One query head (head_dim = 16 · NC) over keys `lo ..= pos` of the KV head at column `off`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn head<const NC: usize>(
    qh: &[f32],
    k: &[f32],
    v: &[f32],
    (kv_dim, off): (usize, usize),
    (lo, pos): (usize, usize),
    scale: f32,
    scores: &mut Vec<f32>,
    o: &mut [f32],
) {
    use std::arch::x86_64::*;
    let mut qv = [_mm512_setzero_ps(); NC];
    for (c, r) in qv.iter_mut().enumerate() {
        *r = _mm512_loadu_ps(qh.as_ptr().add(16 * c));
    }
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for j in lo..=pos {
        let kp = k.as_ptr().add(j * kv_dim + off);
        let mut acc = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kp));
        for (c, r) in qv.iter().enumerate().skip(1) {
            acc = _mm512_fmadd_ps(*r, _mm512_loadu_ps(kp.add(16 * c)), acc);
        }
        let s = _mm512_reduce_add_ps(acc) * scale;
        max = max.max(s);
        scores.push(s);
    }
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let mut acc = [_mm512_setzero_ps(); NC];
    for (j, &p) in (lo..=pos).zip(scores.iter()) {
        let pv = _mm512_set1_ps(p);
        let vp = v.as_ptr().add(j * kv_dim + off);
        for (c, r) in acc.iter_mut().enumerate() {
            *r = _mm512_fmadd_ps(pv, _mm512_loadu_ps(vp.add(16 * c)), *r);
        }
    }
    let inv = _mm512_set1_ps(1.0 / sum);
    for (c, r) in acc.iter().enumerate() {
        _mm512_storeu_ps(o.as_mut_ptr().add(16 * c), _mm512_mul_ps(*r, inv));
    }
}
