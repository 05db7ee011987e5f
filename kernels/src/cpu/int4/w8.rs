//! CPU int8 weight-only matmul `y = x · Wᵀ` (W [n, k] u8 levels with a per-block f32 scale and u8 zero point,
//! `W = (q − z) · s`, as ONNX Runtime's MatMulNBits with bits = 8): the same two activation modes as the
//! int4 kernels — fp32, or int8 per weight block as ORT's accuracy level 4 (scale max|x| / 127, round half
//! to even) with integer dot products (AVX-512 VNNI `vpdpbusd`, u8 levels × s8 activations; AVX2 and the
//! scalar reference sum the same integers exactly in f32/i32) — rayon over rows, ISA chosen at run time.

use rayon::prelude::*;

use super::{scalar::quantize_activations_ref, Activations, Int4RunError, Isa, SUB};

/// Why int8 levels could not be taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Int8PackError {
    /// The block size is not a multiple of 32 or does not divide K.
    #[error("int8 CPU layout: block size {block_size} must be a multiple of 32 dividing in_features {k}")]
    Shape {
        /// Input features.
        k: usize,
        /// Inputs per block.
        block_size: usize,
    },
    /// A tensor's length disagrees with n, k and the blocks.
    #[error("int8 CPU layout: {tensor} has {got} elements, expected {expected}")]
    Length {
        /// Which of q, scales, zeros.
        tensor: &'static str,
        /// Its expected length.
        expected: usize,
        /// Its length.
        got: usize,
    },
}

/// An int8 matrix W [n, k]: `W[o, i] = (q[o, i] − z[o, b]) · s[o, b]`, b = i / block_size.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Matrix {
    n: usize,
    k: usize,
    block_size: usize,
    /// [n, k]
    q: Vec<u8>,
    /// [n, k / block_size]
    scales: Vec<f32>,
    /// [n, k / block_size]
    zeros: Vec<u8>,
}

impl Int8Matrix {
    /// Levels q [n, k], scales and zero points [n, k / block_size]; `zeros` None = symmetric (128 each, as
    /// MatMulNBits' default for 8 bits). MatMulNBits' 8-bit `B` [n, blocks, block_size] is q as it is.
    pub fn new(
        n: usize,
        k: usize,
        block_size: usize,
        q: Vec<u8>,
        scales: Vec<f32>,
        zeros: Option<Vec<u8>>,
    ) -> Result<Self, Int8PackError> {
        if block_size == 0 || !block_size.is_multiple_of(SUB) || !k.is_multiple_of(block_size) {
            return Err(Int8PackError::Shape { k, block_size });
        }
        let blocks = k / block_size;
        let zeros = zeros.unwrap_or_else(|| vec![128; n * blocks]);
        for (tensor, expected, got) in [
            ("q", n * k, q.len()),
            ("scales", n * blocks, scales.len()),
            ("zeros", n * blocks, zeros.len()),
        ] {
            if expected != got {
                return Err(Int8PackError::Length {
                    tensor,
                    expected,
                    got,
                });
            }
        }
        Ok(Int8Matrix {
            n,
            k,
            block_size,
            q,
            scales,
            zeros,
        })
    }

    /// Output features.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Inputs per scale/zero block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Bytes a full product reads (levels, scales, zero points).
    pub fn bytes(&self) -> usize {
        self.q.len() + self.scales.len() * 4 + self.zeros.len()
    }

    /// Row `o`: (q [k], scales [blocks], zeros [blocks]).
    fn row(&self, o: usize) -> (&[u8], &[f32], &[u8]) {
        let blocks = self.k / self.block_size;
        (
            &self.q[o * self.k..(o + 1) * self.k],
            &self.scales[o * blocks..(o + 1) * blocks],
            &self.zeros[o * blocks..(o + 1) * blocks],
        )
    }

    /// Dense f32 weights [n, k].
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = Vec::with_capacity(self.n * self.k);
        for o in 0..self.n {
            let (q, s, z) = self.row(o);
            for (i, &v) in q.iter().enumerate() {
                let b = i / self.block_size;
                w.push((f32::from(v) - f32::from(z[b])) * s[b]);
            }
        }
        w
    }
}

/// One activation row prepared for a matrix.
struct Act {
    /// [k]: fp32 path x; int8 path the quantized values as f32 (exact integers), for the non-VNNI kernels.
    x: Vec<f32>,
    /// int8 path: [k] quantized activations.
    xq: Vec<i8>,
    /// int8 path: [k / 4] activation scale of each group of 4 inputs (one VNNI lane).
    lane_scale: Vec<f32>,
    /// [blocks] per-block activation scale (fp32 path: 1).
    scale: Vec<f32>,
    /// [blocks] Σ x over each block (int8 path: scale · Σ xq).
    block_sum: Vec<f32>,
}

fn prepare(x: &[f32], bs: usize, act: Activations) -> Act {
    match act {
        Activations::F32 => Act {
            x: x.to_vec(),
            xq: Vec::new(),
            lane_scale: Vec::new(),
            scale: vec![1.0; x.len() / bs],
            block_sum: x.chunks_exact(bs).map(|c| c.iter().sum()).collect(),
        },
        Activations::Int8 => {
            let (xq, scale) = quantize_activations_ref(x, bs);
            let block_sum = xq
                .chunks_exact(bs)
                .zip(&scale)
                .map(|(c, &s)| s * c.iter().map(|&q| i32::from(q)).sum::<i32>() as f32)
                .collect();
            Act {
                x: xq.iter().map(|&v| f32::from(v)).collect(),
                lane_scale: (0..x.len() / 4).map(|l| scale[4 * l / bs]).collect(),
                xq,
                scale,
                block_sum,
            }
        }
    }
}

/// `y [batch, n] = x [batch, k] · Wᵀ` for int8 weights on the fastest instruction set.
pub fn int8_matmul(x: &[f32], batch: usize, w: &Int8Matrix, act: Activations) -> Vec<f32> {
    match int8_matmul_with(x, batch, w, act, Isa::detect()) {
        Ok(y) => y,
        // detect() only returns what the CPU has; a wrong x length is the caller's bug.
        Err(e) => panic!("{e}"),
    }
}

/// [`int8_matmul`] on a forced instruction set (tests, benches).
pub fn int8_matmul_with(
    x: &[f32],
    batch: usize,
    w: &Int8Matrix,
    act: Activations,
    isa: Isa,
) -> Result<Vec<f32>, Int4RunError> {
    if !isa.available() {
        return Err(Int4RunError::Unavailable(isa));
    }
    let (n, k, bs) = (w.n, w.k, w.block_size);
    if x.len() != batch * k {
        return Err(Int4RunError::Input {
            batch,
            k,
            got: x.len(),
        });
    }
    let acts: Vec<Act> = (0..batch)
        .into_par_iter()
        .map(|b| prepare(&x[b * k..(b + 1) * k], bs, act))
        .collect();
    // [n, batch], rows in tasks, each row against batch items 4 at a time.
    let mut yt = vec![0f32; n * batch];
    let rows_per_task = (n / (rayon::current_num_threads() * 8)).clamp(4, 64);
    yt.par_chunks_mut(rows_per_task * batch)
        .enumerate()
        .for_each(|(t, out)| {
            for (r, out) in out.chunks_exact_mut(batch).enumerate() {
                let (q, s, z) = w.row(t * rows_per_task + r);
                for (g, out) in out.chunks_mut(4).enumerate() {
                    let a = &acts[4 * g..4 * g + out.len()];
                    row_dots(q, s, bs, a, act, isa, out);
                    for (d, a) in out.iter_mut().zip(a) {
                        // Zero points: Σ_b s_b · z_b · block_sum_b.
                        *d -= s
                            .iter()
                            .zip(z)
                            .zip(&a.block_sum)
                            .map(|((&s, &z), &xs)| s * f32::from(z) * xs)
                            .sum::<f32>();
                    }
                }
            }
        });
    let mut y = vec![0f32; n * batch];
    for (o, row) in yt.chunks_exact(batch).enumerate() {
        for (b, v) in row.iter().enumerate() {
            y[b * n + o] = *v;
        }
    }
    Ok(y)
}

/// `out[i] = Σ_b s_b · scale_b · Σ_{j∈b} q_j · x_j` for each of `acts` (1..=4), zero points excluded.
fn row_dots(
    q: &[u8],
    s: &[f32],
    bs: usize,
    acts: &[Act],
    act: Activations,
    isa: Isa,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    match (isa, act) {
        (Isa::Avx512, Activations::Int8) => return avx512::rows_i8(q, s, bs, acts, out),
        (Isa::Avx512 | Isa::Avx2, _) if Isa::Avx2.available() => {
            return avx2::rows(q, s, bs, acts, out)
        }
        _ => {}
    }
    let _ = (isa, act);
    for (d, a) in out.iter_mut().zip(acts) {
        *d = q
            .chunks_exact(bs)
            .zip(a.x.chunks_exact(bs))
            .enumerate()
            .map(|(b, (qb, xb))| {
                let dot: f32 = qb.iter().zip(xb).map(|(&v, &x)| f32::from(v) * x).sum();
                s[b] * a.scale[b] * dot
            })
            .sum();
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2 + FMA: per block, Σ q · x in 8 f32 lanes (int8 path: exact integers, < 2^24 per block).
    use std::arch::x86_64::*;

    use super::Act;

    pub(super) fn rows(q: &[u8], s: &[f32], bs: usize, acts: &[Act], out: &mut [f32]) {
        assert!(q.len() == s.len() * bs && bs.is_multiple_of(8) && out.len() == acts.len());
        assert!(acts
            .iter()
            .all(|a| a.x.len() == q.len() && a.scale.len() == s.len()));
        // SAFETY: the caller checked AVX2 + FMA are available; lengths are asserted above.
        unsafe { rows_impl(q, s, bs, acts, out) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_impl(q: &[u8], s: &[f32], bs: usize, acts: &[Act], out: &mut [f32]) {
        for (a, d) in acts.iter().zip(out.iter_mut()) {
            let mut acc = _mm256_setzero_ps();
            for (b, &sb) in s.iter().enumerate() {
                let mut t = _mm256_setzero_ps();
                for j in (b * bs..(b + 1) * bs).step_by(8) {
                    let v = _mm_loadl_epi64(q.as_ptr().add(j).cast());
                    let qf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
                    t = _mm256_fmadd_ps(qf, _mm256_loadu_ps(a.x.as_ptr().add(j)), t);
                }
                acc = _mm256_fmadd_ps(t, _mm256_set1_ps(sb * a.scale[b]), acc);
            }
            let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            *d = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! AVX-512 VNNI: 64 levels (u8) × 64 activations (s8) per `vpdpbusd`, each 4-input lane scaled by its
    //! block's weight × activation scale; one row against up to 4 activation rows.
    use std::arch::x86_64::*;

    use super::Act;

    pub(super) fn rows_i8(q: &[u8], s: &[f32], bs: usize, acts: &[Act], out: &mut [f32]) {
        let k = q.len();
        assert!(q.len() == s.len() * bs && bs.is_multiple_of(32) && out.len() == acts.len());
        assert!(acts
            .iter()
            .all(|a| a.xq.len() == k && a.lane_scale.len() == k / 4));
        // SAFETY: the caller checked AVX-512 F/BW/VL/VNNI; lengths are asserted above.
        unsafe {
            match acts.len() {
                1 => rows_n::<1>(q, s, bs, acts, out),
                2 => rows_n::<2>(q, s, bs, acts, out),
                3 => rows_n::<3>(q, s, bs, acts, out),
                _ => rows_n::<4>(q, s, bs, acts, out),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
    unsafe fn rows_n<const NB: usize>(
        q: &[u8],
        s: &[f32],
        bs: usize,
        acts: &[Act],
        out: &mut [f32],
    ) {
        let k = q.len();
        let mut acc = [_mm512_setzero_ps(); NB];
        for c in (0..k).step_by(64) {
            let bytes = (k - c).min(64);
            let m: __mmask64 = if bytes == 64 { !0 } else { (1u64 << bytes) - 1 };
            // SAFETY: masked loads stay within the row / activations; lane scales cover k / 4.
            let w = _mm512_maskz_loadu_epi8(m, q.as_ptr().add(c).cast());
            _mm_prefetch::<_MM_HINT_T1>(q.as_ptr().wrapping_add(c + 8192).cast());
            // Lanes 0..7 hold inputs c..c + 32, lanes 8..15 the next 32: one block, or two of 32.
            let (b0, b1) = (c / bs, (c + 32).min(k - 1) / bs);
            let ws = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(s[b0]), _mm512_set1_ps(s[b1]));
            let lm: __mmask16 = if bytes == 64 { !0 } else { 0xFF };
            for i in 0..NB {
                let a = &acts[i];
                let x = _mm512_maskz_loadu_epi8(m, a.xq.as_ptr().add(c).cast());
                let d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
                let xs = _mm512_maskz_loadu_ps(lm, a.lane_scale.as_ptr().add(c / 4));
                let t = _mm512_mul_ps(_mm512_cvtepi32_ps(d), xs);
                acc[i] = _mm512_fmadd_ps(t, ws, acc[i]);
            }
        }
        for i in 0..NB {
            out[i] = _mm512_reduce_add_ps(acc[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::Rng;

    fn matrix(rng: &mut Rng, n: usize, k: usize, bs: usize, sym: bool) -> Int8Matrix {
        let blocks = k / bs;
        let byte = |r: &mut Rng| ((r.next_f32() * 0.5 + 0.5) * 255.99).clamp(0.0, 255.0) as u8;
        let q = (0..n * k).map(|_| byte(rng)).collect();
        let scales = (0..n * blocks)
            .map(|_| 0.001 + 0.004 * (rng.next_f32() * 0.5 + 0.5))
            .collect();
        let zeros = (!sym).then(|| (0..n * blocks).map(|_| byte(rng)).collect());
        Int8Matrix::new(n, k, bs, q, scales, zeros).expect("matrix")
    }

    /// f64 reference from the dequantized weights, with Σ|x·w| and the int8 half-step bound
    /// Σ_b max|x_b| / 254 · Σ_{i∈b} |w_i| (as the int4 tests).
    fn reference(x: &[f32], batch: usize, m: &Int8Matrix) -> Vec<(f64, f64, f64)> {
        let (n, k, bs) = (m.n(), m.k(), m.block_size());
        let w = m.dequantize();
        let mut r = Vec::new();
        for xb in x.chunks_exact(k).take(batch) {
            for o in 0..n {
                let row = &w[o * k..(o + 1) * k];
                let y: f64 = xb.iter().zip(row).map(|(&a, &b)| a as f64 * b as f64).sum();
                let l1: f64 = xb
                    .iter()
                    .zip(row)
                    .map(|(&a, &b)| (a as f64 * b as f64).abs())
                    .sum();
                let q8: f64 = xb
                    .chunks_exact(bs)
                    .zip(row.chunks_exact(bs))
                    .map(|(xc, wc)| {
                        let amax = xc.iter().fold(0f64, |a, v| a.max(v.abs() as f64));
                        amax / 254.0 * wc.iter().map(|v| v.abs() as f64).sum::<f64>()
                    })
                    .sum();
                r.push((y, l1, q8));
            }
        }
        r
    }

    #[test]
    fn every_isa_matches_the_reference() {
        let mut rng = Rng::new(11);
        for (n, k, bs, sym) in [(7, 96, 32, false), (9, 256, 128, true), (5, 192, 64, false)] {
            let m = matrix(&mut rng, n, k, bs, sym);
            for batch in [1, 3, 6] {
                let x = rng.vec(batch * k);
                let want = reference(&x, batch, &m);
                let int8_ref = int8_matmul_with(&x, batch, &m, Activations::Int8, Isa::Scalar)
                    .expect("scalar");
                for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                    if !isa.available() {
                        eprintln!(
                            "int8 weights: no {isa:?} on this CPU, its path is not exercised"
                        );
                        continue;
                    }
                    let what = format!("{isa:?} n {n} k {k} block {bs} sym {sym} batch {batch}");
                    let f = int8_matmul_with(&x, batch, &m, Activations::F32, isa).expect("f32");
                    let q = int8_matmul_with(&x, batch, &m, Activations::Int8, isa).expect("int8");
                    for (i, &(y, l1, q8)) in want.iter().enumerate() {
                        let tol = 1e-5 * l1 + 1e-6;
                        assert!(
                            ((f[i] as f64) - y).abs() <= tol,
                            "fp32 {what} [{i}]: {} vs {y}",
                            f[i]
                        );
                        let e = (q[i] - int8_ref[i]) as f64;
                        assert!(
                            e.abs() <= tol,
                            "int8 {what} [{i}]: {} vs scalar {}",
                            q[i],
                            int8_ref[i]
                        );
                        assert!(
                            ((q[i] as f64) - y).abs() <= q8 + tol,
                            "int8 {what} [{i}]: {} vs f64 {y}, bound {q8}",
                            q[i]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let e = Int8Matrix::new(2, 96, 64, vec![0; 192], vec![1.0; 2], None);
        assert_eq!(
            e,
            Err(Int8PackError::Shape {
                k: 96,
                block_size: 64
            })
        );
        let e = Int8Matrix::new(2, 64, 32, vec![0; 127], vec![1.0; 4], None);
        assert!(matches!(e, Err(Int8PackError::Length { tensor: "q", .. })));
        let m = Int8Matrix::new(2, 64, 32, vec![0; 128], vec![1.0; 4], None).expect("matrix");
        let r = int8_matmul_with(&[0.0; 63], 1, &m, Activations::Int8, Isa::Scalar);
        assert_eq!(
            r,
            Err(Int4RunError::Input {
                batch: 1,
                k: 64,
                got: 63
            })
        );
    }
}
