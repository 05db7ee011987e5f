//! Round-to-nearest int4 of a float matrix for the CPU int4 kernels (`olive_kernels::cpu::int4`), as ONNX
//! Runtime's MatMul4BitsQuantizer does asymmetrically (blocks of 32 inputs, range widened to hold 0,
//! scale = (max − min) / 15, zero = round(−min / scale)): the lm_head of an int4 model, which
//! onnxruntime-genai's builder quantizes the same way for its int4 exports. And products over tiles of an int4
//! matrix's rows dequantized into a reused scratch (never the whole matrix): the input gradient dx = dy · W
//! (QLoRA's backward through a frozen int4 base) and the fp32-activation forward of a batch of tokens.

use std::cell::RefCell;

use olive_kernels::cpu::int4::{Int4Matrix, Int4PackError};
use olive_kernels::cpu::w4a16::W4Levels;
use olive_kernels::cpu::{matmul_strided, View};
use rayon::prelude::*;

/// Dequantized weights a backward tile holds: 1 MiB of f32 (e.g. 455 rows of 576 inputs).
const TILE_FLOATS: usize = 1 << 18;
/// Fewest rows in a tile (the reduction length of each tile's GEMM).
const TILE_MIN_ROWS: usize = 32;
/// Rows each rayon task dequantizes.
const DEQUANT_ROWS: usize = 8;

thread_local! {
    /// Each thread's tile scratch, reused across calls.
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Calls `f(r0, w)` for each tile of W's rows `r0 .. r0 + w.len() / k`, `w` the tile dequantized (exactly the
/// values of `Int4Matrix::dequantize`, inputs in packed order) into this thread's scratch of [`TILE_FLOATS`].
fn for_each_tile(m: &Int4Matrix, mut f: impl FnMut(usize, &[f32])) {
    let (n, k) = (m.n(), m.k());
    let rows = (TILE_FLOATS / k).max(TILE_MIN_ROWS).min(n);
    let mut tile = TILE.with(|t| std::mem::take(&mut *t.borrow_mut()));
    tile.resize(rows * k, 0.0);
    for r0 in (0..n).step_by(rows) {
        let w = &mut tile[..rows.min(n - r0) * k]; // [rows, k]
        w.par_chunks_mut(DEQUANT_ROWS * k)
            .enumerate()
            .for_each(|(c, part)| m.dequantize_rows_packed(r0 + c * DEQUANT_ROWS, part));
        f(r0, w);
    }
    TILE.with(|t| {
        let mut t = t.borrow_mut();
        if t.len() < tile.len() {
            *t = tile;
        }
    });
}

/// out: [tokens, n] = x: [tokens, k] · Wᵀ with fp32 activations, as dense GEMMs over tiles of W's rows: the
/// dequantize-at-load product up to f32 summation order, at the dense kernels' speed for a batch of tokens
/// (the int4 kernels' fp32 path has no GEMM).
pub(crate) fn forward_f32_tiles(m: &Int4Matrix, x: &[f32], tokens: usize, out: &mut [f32]) {
    let (n, k) = (m.n(), m.k());
    assert!(
        x.len() == tokens * k && out.len() == tokens * n,
        "int4 forward: x must be [tokens, {k}] and out [tokens, {n}]"
    );
    if tokens == 0 || k == 0 {
        return;
    }
    // Act-order: the inputs in packed order once, [tokens, k].
    let permuted: Option<Vec<f32>> = m.perm().map(|perm| {
        x.chunks_exact(k)
            .flat_map(|row| perm.iter().map(move |&i| row[i as usize]))
            .collect()
    });
    let x = permuted.as_deref().unwrap_or(x);
    for_each_tile(m, |r0, w| {
        let nr = w.len() / k;
        matmul_strided(
            tokens,
            nr,
            k,
            View::rows(x, k),
            View::transposed(w, k),
            &mut out[r0..],
            n,
            1.0,
            false,
        );
    });
}

/// dx: [tokens, k] = dy: [tokens, n] · W in tiles of rows: dx = Σ_tiles dy[:, tile] · W[tile, :], act-order
/// inputs put back in their original order at the end.
pub(crate) fn backward_input(m: &Int4Matrix, dy: &[f32], tokens: usize, dx: &mut [f32]) {
    let (n, k) = (m.n(), m.k());
    assert!(
        dy.len() == tokens * n && dx.len() == tokens * k,
        "int4 backward_input: dy must be [tokens, {n}] and dx [tokens, {k}]"
    );
    if tokens == 0 || k == 0 {
        return;
    }
    // Act-order: accumulate in packed input order, permute once.
    let mut packed_order = m.perm().map(|_| vec![0f32; tokens * k]); // [tokens, k]
    {
        let acc: &mut [f32] = packed_order.as_deref_mut().unwrap_or(dx);
        for_each_tile(m, |r0, w| {
            matmul_strided(
                tokens,
                k,
                w.len() / k,
                View::rows(&dy[r0..], n),
                View::rows(w, k),
                acc,
                k,
                1.0,
                r0 > 0,
            );
        });
    }
    if let (Some(acc), Some(perm)) = (packed_order, m.perm()) {
        for (d, a) in dx.chunks_exact_mut(k).zip(acc.chunks_exact(k)) {
            for (&i, &v) in perm.iter().zip(a) {
                d[i as usize] = v;
            }
        }
    }
}

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

    /// The tiles' forward and backward against f64 products over the dequantized matrix: the same f32
    /// products summed in another order, within 1e-5 of Σ|x · w| per element.
    #[test]
    fn tiled_products_match_the_dense_ones() {
        let values = |seed: usize, len: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0)
                .collect()
        };
        // Several tiles with a ragged last one (k = 8192: 32 rows a tile), act-order, and one tile.
        for (n, k, act_order) in [(70, 8192, false), (70, 8192, true), (48, 96, true)] {
            let groups = k / 32;
            let levels = W4Levels {
                n,
                k,
                group_size: 32,
                q: (0..n * k).map(|i| ((i * 5 + i / 3) % 16) as u8).collect(),
                scales: values(1, n * groups).iter().map(|v| v / 16.0).collect(),
                zeros: (0..n * groups).map(|i| (i % 17) as u8).collect(),
                g_idx: act_order.then(|| (0..k).map(|i| ((i * 7 + 3) % groups) as u32).collect()),
            };
            let m = Int4Matrix::from_levels(&levels).unwrap();
            assert_eq!(m.perm().is_some(), act_order);
            let tokens = 5;
            let dy = values(2, tokens * n);
            let w = m.dequantize(); // [n, k]
            let x = values(3, tokens * k);
            let mut y = vec![f32::NAN; tokens * n];
            forward_f32_tiles(&m, &x, tokens, &mut y);
            for t in 0..tokens {
                for o in 0..n {
                    let (mut want, mut abs) = (0f64, 0f64);
                    for i in 0..k {
                        let p = f64::from(x[t * k + i]) * f64::from(w[o * k + i]);
                        want += p;
                        abs += p.abs();
                    }
                    let g = f64::from(y[t * n + o]);
                    assert!(
                        (g - want).abs() <= 1e-5 * abs + 1e-7,
                        "[{n}, {k}] act-order {act_order} y[{t}, {o}]: {g} vs {want}"
                    );
                }
            }
            let mut got = vec![f32::NAN; tokens * k];
            backward_input(&m, &dy, tokens, &mut got);
            for t in 0..tokens {
                for i in 0..k {
                    let (mut want, mut abs) = (0f64, 0f64);
                    for o in 0..n {
                        let p = f64::from(dy[t * n + o]) * f64::from(w[o * k + i]);
                        want += p;
                        abs += p.abs();
                    }
                    let g = f64::from(got[t * k + i]);
                    assert!(
                        (g - want).abs() <= 1e-5 * abs + 1e-7,
                        "[{n}, {k}] act-order {act_order} dx[{t}, {i}]: {g} vs {want}"
                    );
                }
            }
        }
    }

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
            // Half a level, plus the packed matrix's half-precision scale (SCALE_REL of the scale on each of up
            // to 15 levels from the zero point), the f32 rounding of the scale and the level arithmetic.
            let rel = olive_kernels::cpu::int4::SCALE_REL as f32;
            let tol = (hi - lo) / 15.0 * (0.5 * (1.0 + 1e-5) + 15.0 * rel) + 1e-6;
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
