//! The CPU int4 packed layout: per output row, K/32 sub-blocks of 16 bytes (byte j = input j in the low
//! nibble, input j + 16 in the high one, so one zero-extending load feeds two 16-lane halves), one f16
//! scale and one u8 zero point per block of 32/64/128 inputs; GPTQ act-order inputs sorted by group once.
//! Scales are stored as IEEE half of s · 2^e_o with a per-row power of two 2^e_o (the row's largest |s|
//! lands in [2^14, 2^15)): 2 bytes a block instead of 4, the batch-1 products being bound by the bytes they
//! read; the row's exponent keeps every scale a normal half (11 significant bits, relative rounding ≤ 2^-11)
//! whatever the checkpoint's magnitudes. The kernels use ŝ = half(s · 2^e_o) · 2^-e_o (exact in f32).

use std::cell::RefCell;

use half::f16;

use super::SUB;
use crate::cpu::w4a16::W4Levels;

/// |ŝ − s| ≤ SCALE_REL · |s| for every stored scale (round to nearest half; scales a row's largest |s| over
/// 2^28 or more fall into half's subnormals and keep less).
pub const SCALE_REL: f64 = 1.0 / 2048.0;

thread_local! {
    /// [`Int4Matrix::with_scales`]'s buffer (the row kernels decode a row or two per call).
    static SCALES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Why levels could not be packed for the CPU kernels.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Int4PackError {
    /// K or the group size is not a multiple of 32.
    #[error(
        "int4 CPU layout: in_features {k} and group size {group_size} must be multiples of 32"
    )]
    Shape {
        /// Input features.
        k: usize,
        /// Inputs per group.
        group_size: usize,
    },
    /// A tensor's length disagrees with n, k and the groups.
    #[error("int4 CPU layout: {tensor} has {got} elements, expected {expected}")]
    Length {
        /// Which of q, scales, zeros, g_idx.
        tensor: &'static str,
        /// Its expected length.
        expected: usize,
        /// Its length.
        got: usize,
    },
    /// A level above 15 or a zero point above 16.
    #[error("int4 CPU layout: {tensor} value {value} at {index} is out of range (levels ≤ 15, zeros ≤ 16)")]
    Range {
        /// q or zeros.
        tensor: &'static str,
        /// Flat index.
        index: usize,
        /// The value.
        value: u8,
    },
    /// g_idx does not give each group exactly group_size inputs (the last one may be shorter).
    #[error("int4 CPU layout: g_idx puts {got} inputs in group {group}, expected {expected}")]
    GIdx {
        /// The group.
        group: usize,
        /// Inputs g_idx assigns to it.
        got: usize,
        /// group_size (or the ragged rest for the last group).
        expected: usize,
    },
}

/// An int4 matrix W [n, k] in the CPU layout: `W[o, i] = (q − z[o, b]) · ŝ[o, b]`, b = i / block_size, ŝ the
/// scale s kept to 11 significant bits (module doc; exact for checkpoints whose scales are fp16, as AWQ and
/// GPTQ store them), inputs in packed order (`perm` maps packed input j to original input `perm[j]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Int4Matrix {
    n: usize,
    k: usize,
    block_size: usize,
    /// [n, k / 2], sub-block interleaved.
    nibbles: Vec<u8>,
    /// [n, k / block_size] + 1 (padding: the GEMM gathers dwords at half positions): half(s · 2^e_o).
    scales: Vec<f16>,
    /// [n]: 2^-e_o, what row o's stored scales are multiplied by.
    row_scale: Vec<f32>,
    /// [n, k / block_size]
    zeros: Vec<u8>,
    /// Act-order: [k], packed input j is original input perm[j].
    perm: Option<Vec<u32>>,
}

impl Int4Matrix {
    /// Packs unpacked levels (AWQ, GPTQ v1 with g_idx, MatMulNBits via `cpu::w4a16`'s unpackers).
    pub fn from_levels(l: &W4Levels) -> Result<Self, Int4PackError> {
        let (n, k, gs) = (l.n, l.k, l.group_size);
        if k % SUB != 0 || gs % SUB != 0 || gs == 0 {
            return Err(Int4PackError::Shape { k, group_size: gs });
        }
        let groups = k.div_ceil(gs);
        let want = |tensor, expected: usize, got: usize| {
            if expected == got {
                Ok(())
            } else {
                Err(Int4PackError::Length {
                    tensor,
                    expected,
                    got,
                })
            }
        };
        want("q", n * k, l.q.len())?;
        want("scales", n * groups, l.scales.len())?;
        want("zeros", n * groups, l.zeros.len())?;
        if let Some((index, &value)) = l.q.iter().enumerate().find(|(_, &v)| v > 15) {
            return Err(Int4PackError::Range {
                tensor: "q",
                index,
                value,
            });
        }
        if let Some((index, &value)) = l.zeros.iter().enumerate().find(|(_, &v)| v > 16) {
            return Err(Int4PackError::Range {
                tensor: "zeros",
                index,
                value,
            });
        }
        let perm = match &l.g_idx {
            Some(g) => act_order_perm(g, k, gs)?,
            None => None,
        };
        // The largest of 128/64/32 dividing the group and K: blocks never straddle groups.
        let block_size = [128, 64, 32]
            .into_iter()
            .find(|b| gs % b == 0 && k % b == 0)
            .unwrap_or(SUB);
        let blocks = k / block_size;
        let mut nibbles = vec![0u8; n * k / 2];
        let mut scales = Vec::with_capacity(n * blocks + 1);
        let mut row_scale = Vec::with_capacity(n);
        let mut zeros = Vec::with_capacity(n * blocks);
        for o in 0..n {
            let q = &l.q[o * k..(o + 1) * k];
            let level = |j: usize| match &perm {
                Some(p) => q[p[j] as usize],
                None => q[j],
            };
            let row = &mut nibbles[o * k / 2..(o + 1) * k / 2];
            for (s, sub) in row.chunks_exact_mut(16).enumerate() {
                for (j, byte) in sub.iter_mut().enumerate() {
                    *byte = level(SUB * s + j) | (level(SUB * s + 16 + j) << 4);
                }
            }
            let row = &l.scales[o * groups..(o + 1) * groups];
            let e = row_exponent(row);
            row_scale.push(2f32.powi(-e));
            for b in 0..blocks {
                let g = b * block_size / gs;
                scales.push(f16::from_f64(f64::from(row[g]) * 2f64.powi(e)));
                zeros.push(l.zeros[o * groups + g]);
            }
        }
        scales.push(f16::ZERO);
        Ok(Int4Matrix {
            n,
            k,
            block_size,
            nibbles,
            scales,
            row_scale,
            zeros,
            perm,
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

    /// Inputs per scale/zero block (32, 64 or 128).
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Bytes of the layout a full product reads (nibbles, f16 scales, zero points, the rows' exponents).
    pub fn bytes(&self) -> usize {
        self.nibbles.len()
            + (self.scales.len() - 1) * 2
            + self.zeros.len()
            + self.row_scale.len() * 4
    }

    /// Act-order input permutation, if any.
    pub fn perm(&self) -> Option<&[u32]> {
        self.perm.as_deref()
    }

    /// Row `o`: (nibbles [k / 2], zeros [blocks]); its scales come from [`Int4Matrix::decode_scales`].
    pub(crate) fn row(&self, o: usize) -> (&[u8], &[u8]) {
        let blocks = self.k / self.block_size;
        (
            &self.nibbles[o * self.k / 2..(o + 1) * self.k / 2],
            &self.zeros[o * blocks..(o + 1) * blocks],
        )
    }

    /// The f32 scales ŝ of rows `first .. first + out.len() / blocks` into `out` [rows, blocks].
    pub(crate) fn decode_scales(&self, first: usize, out: &mut [f32]) {
        let blocks = self.k / self.block_size;
        assert!(blocks > 0 && out.len().is_multiple_of(blocks));
        assert!(first + out.len() / blocks <= self.n);
        for (r, out) in out.chunks_exact_mut(blocks).enumerate() {
            let o = first + r;
            let h = &self.scales[o * blocks..(o + 1) * blocks];
            decode_row(h, self.row_scale[o], out);
        }
    }

    /// `f` on the f32 scales [rows, blocks] of rows `first .. first + rows`, decoded into this thread's
    /// scratch (a fresh buffer when `f` itself asks again on the same thread).
    pub(crate) fn with_scales<R>(
        &self,
        first: usize,
        rows: usize,
        f: impl FnOnce(&[f32]) -> R,
    ) -> R {
        let len = rows * (self.k / self.block_size);
        SCALES.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => {
                if buf.len() < len {
                    buf.resize(len, 0.0);
                }
                self.decode_scales(first, &mut buf[..len]);
                f(&buf[..len])
            }
            Err(_) => {
                let mut buf = vec![0f32; len];
                self.decode_scales(first, &mut buf);
                f(&buf)
            }
        })
    }

    /// Rows `first .. first + out.len() / k` of the dense f32 weights into `out` ([rows, k]) in the PACKED input
    /// order (apply [`Int4Matrix::perm`] to map column j to input `perm[j]`): the values of
    /// [`Int4Matrix::dequantize`], (q − z) · s in f32, a 16-entry table per block. For products that dequantize
    /// a tile of rows at a time (the backward pass's dx = dy · W).
    pub fn dequantize_rows_packed(&self, first: usize, out: &mut [f32]) {
        let k = self.k;
        assert!(
            k > 0 && out.len().is_multiple_of(k) && first + out.len() / k <= self.n,
            "dequantize_rows_packed: out must be [rows, {k}] within the {} rows",
            self.n
        );
        let mut table = [0f32; 16];
        let mut scales = vec![0f32; k / self.block_size];
        for (r, row) in out.chunks_exact_mut(k).enumerate() {
            let (nib, zeros) = self.row(first + r);
            self.decode_scales(first + r, &mut scales);
            for (b, block) in row.chunks_exact_mut(self.block_size).enumerate() {
                let (z, s) = (f32::from(zeros[b]), scales[b]);
                for (q, t) in table.iter_mut().enumerate() {
                    *t = (q as f32 - z) * s;
                }
                let bytes = &nib[b * self.block_size / 2..(b + 1) * self.block_size / 2];
                for (sub, bytes) in block.chunks_exact_mut(SUB).zip(bytes.chunks_exact(16)) {
                    let (lo, hi) = sub.split_at_mut(16);
                    for ((l, h), &byte) in lo.iter_mut().zip(hi).zip(bytes) {
                        *l = table[usize::from(byte & 0xF)];
                        *h = table[usize::from(byte >> 4)];
                    }
                }
            }
        }
    }

    /// The whole layout: (nibbles [n, k / 2], stored scales [n, blocks] + 1 padding, zeros [n, blocks], row
    /// multipliers [n]), rows contiguous; row o's scale b is `scales[o · blocks + b] · row_scale[o]`.
    pub(crate) fn parts(&self) -> (&[u8], &[f16], &[u8], &[f32]) {
        (&self.nibbles, &self.scales, &self.zeros, &self.row_scale)
    }

    /// Dense f32 weights [n, k] in the ORIGINAL input order.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.n * self.k];
        let mut scales = vec![0f32; self.k / self.block_size];
        for o in 0..self.n {
            let (nib, zeros) = self.row(o);
            self.decode_scales(o, &mut scales);
            for j in 0..self.k {
                let (s, e) = (j / SUB, j % SUB);
                let byte = nib[16 * s + e % 16];
                let q = if e < 16 { byte & 0xF } else { byte >> 4 };
                let b = j / self.block_size;
                let i = self.perm.as_ref().map_or(j, |p| p[j] as usize);
                w[o * self.k + i] = (f32::from(q) - f32::from(zeros[b])) * scales[b];
            }
        }
        w
    }
}

/// e with the row's largest finite |s| · 2^e in [2^14, 2^15) (0 for an all-zero row), within ±126 so that
/// 2^-e is a normal f32.
fn row_exponent(scales: &[f32]) -> i32 {
    let m = scales
        .iter()
        .filter(|s| s.is_finite())
        .fold(0f32, |m, s| m.max(s.abs()));
    if m == 0.0 {
        return 0;
    }
    (14 - f64::from(m).log2().floor() as i32).clamp(-126, 126)
}

/// `out[b] = f32(h[b]) · mul`: F16C eight at a time where the CPU has it.
fn decode_row(h: &[f16], mul: f32, out: &mut [f32]) {
    assert_eq!(h.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: F16C and AVX checked just above; lengths equal (asserted).
        return unsafe { decode_row_f16c(h, mul, out) };
    }
    for (o, h) in out.iter_mut().zip(h) {
        *o = h.to_f32() * mul;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn decode_row_f16c(h: &[f16], mul: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let m = _mm256_set1_ps(mul);
    let whole = h.len() / 8 * 8;
    for i in (0..whole).step_by(8) {
        let v = _mm_loadu_si128(h.as_ptr().add(i).cast());
        _mm256_storeu_ps(
            out.as_mut_ptr().add(i),
            _mm256_mul_ps(_mm256_cvtph_ps(v), m),
        );
    }
    for i in whole..h.len() {
        out[i] = h[i].to_f32() * mul;
    }
}

/// Inputs sorted by g_idx (stable); None when that is the identity. Each group must hold group_size
/// inputs (the last one the rest), so packed groups are contiguous.
fn act_order_perm(g: &[u32], k: usize, gs: usize) -> Result<Option<Vec<u32>>, Int4PackError> {
    if g.len() != k {
        return Err(Int4PackError::Length {
            tensor: "g_idx",
            expected: k,
            got: g.len(),
        });
    }
    let groups = k.div_ceil(gs);
    let mut count = vec![0usize; groups];
    for &gi in g {
        let gi = gi as usize;
        if gi >= groups {
            return Err(Int4PackError::GIdx {
                group: gi,
                got: 1,
                expected: 0,
            });
        }
        count[gi] += 1;
    }
    for (group, &got) in count.iter().enumerate() {
        let expected = gs.min(k - group * gs);
        if got != expected {
            return Err(Int4PackError::GIdx {
                group,
                got,
                expected,
            });
        }
    }
    let mut perm: Vec<u32> = (0..k as u32).collect();
    perm.sort_by_key(|&i| g[i as usize]);
    if perm.iter().enumerate().all(|(j, &i)| j == i as usize) {
        return Ok(None);
    }
    Ok(Some(perm))
}
