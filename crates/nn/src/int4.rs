//! Round-to-nearest int4 of a float matrix for the CPU int4 kernels (`olive_kernels::cpu::int4`), as ONNX
//! Runtime's MatMul4BitsQuantizer does asymmetrically (blocks of 32 inputs, range widened to hold 0,
//! scale = (max − min) / 15, zero = round(−min / scale)): the lm_head of an int4 model, which
//! onnxruntime-genai's builder quantizes the same way for its int4 exports.

use olive_kernels::cpu::int4::{Int4Matrix, Int4PackError};
use olive_kernels::cpu::w4a16::W4Levels;
use rayon::prelude::*;

/// Inputs per quantization block (onnxruntime-genai's default int4 block size).
pub const RTN_BLOCK: usize = 32;

/// w: [n, k] rounded to int4 per block of [`RTN_BLOCK`] inputs; k must be a positive multiple of it.
pub fn rtn_int4(w: &[f32], n: usize, k: usize) -> Result<Int4Matrix, Int4PackError> {
    if k == 0 || !k.is_multiple_of(RTN_BLOCK) {
        return Err(Int4PackError::Shape {
            k,
            group_size: RTN_BLOCK,
        });
    }
    if w.len() != n * k {
        return Err(Int4PackError::Length {
            tensor: "w",
            expected: n * k,
            got: w.len(),
        });
    }
    let blocks = k / RTN_BLOCK;
    let mut levels = W4Levels {
        n,
        k,
        group_size: RTN_BLOCK,
        q: vec![0; n * k],
        scales: vec![0.0; n * blocks],
        zeros: vec![0; n * blocks],
        g_idx: None,
    };
    // Rows in parallel: [k] weights -> [k] levels, [blocks] scales and zeros each.
    levels
        .q
        .par_chunks_mut(k)
        .zip(levels.scales.par_chunks_mut(blocks))
        .zip(levels.zeros.par_chunks_mut(blocks))
        .zip(w.par_chunks(k))
        .for_each(|(((q, scales), zeros), row)| {
            for (b, block) in row.chunks_exact(RTN_BLOCK).enumerate() {
                let lo = block.iter().fold(0f32, |m, &v| m.min(v));
                let hi = block.iter().fold(0f32, |m, &v| m.max(v));
                let scale = (hi - lo) / 15.0;
                let zero = if scale > 0.0 {
                    (-lo / scale).round().clamp(0.0, 15.0)
                } else {
                    0.0
                };
                let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                scales[b] = scale;
                zeros[b] = zero as u8;
                for (q, &v) in q[b * RTN_BLOCK..(b + 1) * RTN_BLOCK].iter_mut().zip(block) {
                    *q = (v * inv + zero).round().clamp(0.0, 15.0) as u8;
                }
            }
        });
    Int4Matrix::from_levels(&levels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_within_half_a_step() {
        let (n, k) = (5, 96);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * (1.0 + (i / k) as f32))
            .collect();
        let m = rtn_int4(&w, n, k).unwrap();
        let back = m.dequantize(); // [n, k]
        for (b, (block, got)) in w
            .chunks_exact(RTN_BLOCK)
            .zip(back.chunks_exact(RTN_BLOCK))
            .enumerate()
        {
            let lo = block.iter().fold(0f32, |m, &v| m.min(v));
            let hi = block.iter().fold(0f32, |m, &v| m.max(v));
            // Half a level, plus the f32 rounding of the scale and the level arithmetic.
            let tol = (hi - lo) / 15.0 * 0.5 * (1.0 + 1e-5) + 1e-6;
            for (a, g) in block.iter().zip(got) {
                assert!((a - g).abs() <= tol, "block {b}: {a} vs {g} (tol {tol})");
            }
        }
        let zeros = vec![0f32; 2 * 32];
        assert!(rtn_int4(&zeros, 2, 32)
            .unwrap()
            .dequantize()
            .iter()
            .all(|v| *v == 0.0));
        assert!(matches!(
            rtn_int4(&w[..n * 40], n, 40),
            Err(Int4PackError::Shape { k: 40, .. })
        ));
        assert!(matches!(
            rtn_int4(&w, n + 1, k),
            Err(Int4PackError::Length { tensor: "w", .. })
        ));
    }
}
