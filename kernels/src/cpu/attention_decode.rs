//! Attention of a few query tokens over the KV cache (decoding), the same `softmax(q·kᵀ · scale) · v` per
//! query head as `attention`'s row loop, on AVX-512 for head_dim a multiple of 16 up to 128: the query head held
//! in registers for the scores (head_dim / 16 FMAs and one reduction per key), the max-subtracted softmax with
//! a vectorized exp (Cephes' expf polynomial, 16 scores a step), then the value mix with the head's output in
//! registers (two keys a step into two sets of head_dim / 16 accumulators, normalized once at the end). One
//! call runs all heads in a loop at 1 thread (one scores buffer), else one rayon task a head. Other shapes or
//! CPUs: `attention`'s portable loop.

#[cfg(target_arch = "x86_64")]
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
    // exp(s − max) 16 scores at a time, and their sum.
    let (n, m) = (scores.len(), _mm512_set1_ps(max));
    let mut sums = _mm512_setzero_ps();
    for i in (0..n).step_by(16) {
        let lanes: __mmask16 = if n - i >= 16 {
            !0
        } else {
            ((1u32 << (n - i)) - 1) as u16
        };
        let sp = scores.as_mut_ptr().add(i);
        let e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, sp), m));
        let e = _mm512_maskz_mov_ps(lanes, e);
        _mm512_mask_storeu_ps(sp, lanes, e);
        sums = _mm512_add_ps(sums, e);
    }
    let sum = _mm512_reduce_add_ps(sums);
    // The value mix two keys a step (two sets of accumulators: the FMA chains of one key at a time bound it).
    let (mut acc, mut acc2) = ([_mm512_setzero_ps(); NC], [_mm512_setzero_ps(); NC]);
    let mut pairs = scores.chunks_exact(2);
    let mut j = lo;
    for p in pairs.by_ref() {
        let (p0, p1) = (_mm512_set1_ps(p[0]), _mm512_set1_ps(p[1]));
        let (v0, v1) = (
            v.as_ptr().add(j * kv_dim + off),
            v.as_ptr().add((j + 1) * kv_dim + off),
        );
        for c in 0..NC {
            acc[c] = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0.add(16 * c)), acc[c]);
            acc2[c] = _mm512_fmadd_ps(p1, _mm512_loadu_ps(v1.add(16 * c)), acc2[c]);
        }
        j += 2;
    }
    if let [p] = pairs.remainder() {
        let pv = _mm512_set1_ps(*p);
        let vp = v.as_ptr().add(j * kv_dim + off);
        for (c, r) in acc.iter_mut().enumerate() {
            *r = _mm512_fmadd_ps(pv, _mm512_loadu_ps(vp.add(16 * c)), *r);
        }
    }
    for (r, r2) in acc.iter_mut().zip(acc2) {
        *r = _mm512_add_ps(*r, r2);
    }
    let inv = _mm512_set1_ps(1.0 / sum);
    for (c, r) in acc.iter().enumerate() {
        _mm512_storeu_ps(o.as_mut_ptr().add(16 * c), _mm512_mul_ps(*r, inv));
    }
}

/// e^x for x ≤ 0 (scores minus their max), Cephes' expf: x = n ln 2 + r (ln 2 in two parts), a degree-5
/// polynomial in r, times 2^n by `vscalefps`; relative error ~1e-7 (below x = −88 the result underflows to
/// ~0 as the f32 exp does).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn exp_nonpositive(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_max_ps(x, _mm512_set1_ps(-88.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let y = _mm512_fmadd_ps(
        p,
        _mm512_mul_ps(r, r),
        _mm512_add_ps(r, _mm512_set1_ps(1.0)),
    );
    _mm512_scalef_ps(y, n)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Cephes' expf polynomial after range reduction: a few ulps relative (f32 ulp 1.2e-7).
    const EXP_REL: f64 = 4e-7;
    /// Below e^−87 the f32 result is denormal or 0: absolute.
    const EXP_ABS: f64 = 1e-37;

    #[test]
    fn exp_matches_f64_exp_on_nonpositive_inputs() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("attention_decode: no AVX-512 on this CPU, its exp is not exercised here");
            return;
        }
        let xs: Vec<f32> = (0..=20_000)
            .map(|i| -(i as f32) * 0.0051)
            .chain([0.0, -1e-8, -0.5, -87.0, -88.5, -1e4, f32::NEG_INFINITY])
            .collect();
        for c in xs.chunks(16) {
            let mut buf = [0f32; 16];
            buf[..c.len()].copy_from_slice(c);
            let mut got = [0f32; 16];
            // SAFETY: AVX-512F checked above; 16-float buffers.
            unsafe {
                use std::arch::x86_64::*;
                let e = exp_nonpositive(_mm512_loadu_ps(buf.as_ptr()));
                _mm512_storeu_ps(got.as_mut_ptr(), e);
            }
            for (&x, &g) in c.iter().zip(&got) {
                let want = (x as f64).exp();
                assert!(
                    (g as f64 - want).abs() <= EXP_REL * want + EXP_ABS,
                    "exp({x}) = {g}, f64 {want}"
                );
            }
        }
    }
}
