//! Scalar int4 kernels: the f64 reference `y = x · Wᵀ` over the dequantized packed matrix, ORT level-4
//! style per-block int8 activation quantization, and the one-row loops the SIMD paths are checked against.

use super::{ActRow, Int4Matrix, SUB};

/// Reference `y [batch, n] = x [batch, k] · dequantize(w)ᵀ`, accumulated in f64 (x in original input order).
pub fn int4_matmul_ref(x: &[f32], batch: usize, w: &Int4Matrix) -> Vec<f32> {
    let (n, k) = (w.n(), w.k());
    assert_eq!(x.len(), batch * k, "int4_matmul_ref: x must be [batch, k]");
    let dense = w.dequantize(); // [n, k]
    let mut y = Vec::with_capacity(batch * n);
    for xb in x.chunks_exact(k) {
        for row in dense.chunks_exact(k) {
            let s: f64 = xb.iter().zip(row).map(|(&a, &v)| a as f64 * v as f64).sum();
            y.push(s as f32);
        }
    }
    y
}

/// Per-block int8 quantization of one activation row (ORT MLAS `QuantizeARow`, accuracy level 4):
/// scale = max|x| / 127, q = round_half_even(x · 127 / max|x|); a zero block has scale 0.
/// Returns (q [k], scales [k / block]).
pub fn quantize_activations_ref(x: &[f32], block: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(x.len());
    let mut scales = Vec::with_capacity(x.len().div_ceil(block));
    for c in x.chunks(block) {
        let amax = c.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        scales.push(scale);
        q.extend(
            c.iter()
                .map(|&v| (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8),
        );
    }
    (q, scales)
}

/// The level of packed input j of a row.
fn level(nib: &[u8], j: usize) -> u8 {
    let byte = nib[16 * (j / SUB) + j % 16];
    if j % SUB < 16 {
        byte & 0xF
    } else {
        byte >> 4
    }
}

/// Σ_b s_b · Σ_{i∈b} x_i · q_i for one row (zero points are the caller's).
pub(crate) fn row_f32(nib: &[u8], scales: &[f32], bs: usize, x: &[f32]) -> f32 {
    scales
        .iter()
        .enumerate()
        .map(|(b, &s)| {
            let d: f32 = (b * bs..(b + 1) * bs)
                .map(|j| x[j] * f32::from(level(nib, j)))
                .sum();
            s * d
        })
        .sum()
}

/// Σ_b s_b · xs_b · Σ_{i∈b} xq_i · q_i for one row, with exact integer block dots.
pub(crate) fn row_i8(nib: &[u8], scales: &[f32], bs: usize, a: &ActRow) -> f32 {
    let xq = |j: usize| {
        let (s, e) = (j / SUB, j % SUB);
        i32::from(if e < 16 {
            a.lo[16 * s + e]
        } else {
            a.hi[16 * s + e - 16]
        })
    };
    scales
        .iter()
        .enumerate()
        .map(|(b, &s)| {
            let d: i32 = (b * bs..(b + 1) * bs)
                .map(|j| xq(j) * i32::from(level(nib, j)))
                .sum();
            s * a.lane_scale[b * bs / 8] * d as f32
        })
        .sum()
}
