//! The CPU int4 packed layout: per output row, K/32 sub-blocks of 16 bytes (byte j = input j in the low
//! nibble, input j + 16 in the high one, so one zero-extending load feeds two 16-lane halves), one f32
//! scale and one u8 zero point per block of 32/64/128 inputs; GPTQ act-order inputs sorted by group once.

use super::SUB;
use crate::cpu::w4a16::W4Levels;

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

/// An int4 matrix W [n, k] in the CPU layout: `W[o, i] = (q − z[o, b]) · s[o, b]`, b = i / block_size,
/// inputs in packed order (`perm` maps packed input j to original input `perm[j]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Int4Matrix {
    n: usize,
    k: usize,
    block_size: usize,
    /// [n, k / 2], sub-block interleaved.
    nibbles: Vec<u8>,
    /// [n, k / block_size]
    scales: Vec<f32>,
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
        let mut scales = Vec::with_capacity(n * blocks);
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
            for b in 0..blocks {
                let g = b * block_size / gs;
                scales.push(l.scales[o * groups + g]);
                zeros.push(l.zeros[o * groups + g]);
            }
        }
        Ok(Int4Matrix {
            n,
            k,
            block_size,
            nibbles,
            scales,
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

    /// Bytes of the layout a full product reads (nibbles, scales, zero points).
    pub fn bytes(&self) -> usize {
        self.nibbles.len() + self.scales.len() * 4 + self.zeros.len()
    }

    /// Act-order input permutation, if any.
    pub fn perm(&self) -> Option<&[u32]> {
        self.perm.as_deref()
    }

    /// Row `o`: (nibbles [k / 2], scales [blocks], zeros [blocks]).
    pub(crate) fn row(&self, o: usize) -> (&[u8], &[f32], &[u8]) {
        let blocks = self.k / self.block_size;
        (
            &self.nibbles[o * self.k / 2..(o + 1) * self.k / 2],
            &self.scales[o * blocks..(o + 1) * blocks],
            &self.zeros[o * blocks..(o + 1) * blocks],
        )
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
        for (r, row) in out.chunks_exact_mut(k).enumerate() {
            let (nib, scales, zeros) = self.row(first + r);
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

    /// The whole layout: (nibbles [n, k / 2], scales [n, blocks], zeros [n, blocks]), rows contiguous.
    pub(crate) fn parts(&self) -> (&[u8], &[f32], &[u8]) {
        (&self.nibbles, &self.scales, &self.zeros)
    }

    /// Dense f32 weights [n, k] in the ORIGINAL input order.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.n * self.k];
        for o in 0..self.n {
            let (nib, scales, zeros) = self.row(o);
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
