//! A quantized linear kept in compact form for training over a quantized base (QLoRA, Dettmers et al.
//! 2023: the frozen int4 base stays int4 and is dequantized on the fly): integer levels packed two per
//! byte (bits ≤ 4) or one per byte, with per-group f32 scales, u8 zero points and the optional
//! act-order g_idx of `olive_model::quantized::QuantizedLinear`, whose `dequantize` it reproduces
//! bit for bit: w[o, i] = (q[o, i] − z[o, g(i)]) · s[o, g(i)].

use std::cell::RefCell;
use std::fmt;

use olive_model::quantized::QuantizedLinear;
use rayon::prelude::*;

/// Integer weight levels with their group scales and zero points: [out, in] after dequantization.
#[derive(Clone, PartialEq)]
pub struct PackedWeight {
    bits: u8,
    /// Inputs per group; the last group may be shorter.
    group_size: usize,
    in_features: usize,
    out_features: usize,
    /// [out, row_bytes]: input 2j in the low nibble of byte j, 2j + 1 in the high one (bits ≤ 4),
    /// else one level a byte.
    levels: Vec<u8>,
    /// [out, groups]
    scales: Vec<f32>,
    /// [out, groups] (GPTQ v1's 2^bits zero fits a u8 too).
    zeros: Vec<u8>,
    /// Group of each input when it is not i / group_size (GPTQ act-order): [in].
    g_idx: Option<Vec<u32>>,
}

thread_local! {
    /// Each thread's dequantization scratch: it grows to the largest matrix and is reused.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl PackedWeight {
    /// Packs `q`'s levels (each below 2^bits, as its readers produce them).
    pub fn new(q: &QuantizedLinear) -> Self {
        let k = q.in_features;
        let levels = if q.bits <= 4 {
            q.q.chunks_exact(k.max(1))
                .flat_map(|row| row.chunks(2).map(|p| p[0] | p.get(1).map_or(0, |h| h << 4)))
                .collect()
        } else {
            q.q.clone()
        };
        PackedWeight {
            bits: q.bits,
            group_size: q.group_size,
            in_features: k,
            out_features: q.out_features,
            levels,
            scales: q.scales.clone(),
            zeros: q.zeros.clone(),
            g_idx: q.g_idx.clone(),
        }
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Bytes held (levels, scales, zero points, g_idx).
    pub fn bytes(&self) -> usize {
        self.levels.len()
            + 4 * self.scales.len()
            + self.zeros.len()
            + 4 * self.g_idx.as_ref().map_or(0, Vec::len)
    }

    fn groups(&self) -> usize {
        self.in_features.div_ceil(self.group_size.max(1))
    }

    fn row_bytes(&self) -> usize {
        if self.bits <= 4 {
            self.in_features.div_ceil(2)
        } else {
            self.in_features
        }
    }

    /// Level of input i in a row's packed bytes.
    fn level(&self, row: &[u8], i: usize) -> u8 {
        if self.bits <= 4 {
            (row[i / 2] >> (4 * (i % 2))) & 0xF
        } else {
            row[i]
        }
    }

    /// The levels, scales and zero points as the int4 kernels take them, for weights of at most 4 bits
    /// (levels of 2 and 3 bits are int4 levels too); None for 8-bit weights.
    pub fn to_w4_levels(&self) -> Option<olive_kernels::cpu::w4a16::W4Levels> {
        if self.bits > 4 {
            return None;
        }
        let (k, rb) = (self.in_features, self.row_bytes());
        let q = (0..self.out_features)
            .flat_map(|o| {
                let row = &self.levels[o * rb..(o + 1) * rb];
                (0..k).map(move |i| self.level(row, i))
            })
            .collect();
        Some(olive_kernels::cpu::w4a16::W4Levels {
            n: self.out_features,
            k,
            group_size: self.group_size,
            q,
            scales: self.scales.clone(),
            zeros: self.zeros.clone(),
            g_idx: self.g_idx.clone(),
        })
    }

    /// out: [out, in] = the float weight, rows dequantized in parallel.
    pub fn dequantize_into(&self, out: &mut [f32]) {
        let k = self.in_features;
        assert_eq!(
            out.len(),
            self.out_features * k,
            "dequantize_into: out must be [out, in]"
        );
        if k == 0 {
            return;
        }
        out.par_chunks_mut(k)
            .enumerate()
            .for_each(|(o, row)| self.dequantize_row(o, row));
    }

    /// Row `o` of the float weight: [in].
    fn dequantize_row(&self, o: usize, out: &mut [f32]) {
        let (groups, rb) = (self.groups(), self.row_bytes());
        let levels = &self.levels[o * rb..(o + 1) * rb];
        let scales = &self.scales[o * groups..(o + 1) * groups];
        let zeros = &self.zeros[o * groups..(o + 1) * groups];
        match &self.g_idx {
            Some(g_idx) => {
                for (i, (w, &g)) in out.iter_mut().zip(g_idx).enumerate() {
                    let g = g as usize;
                    *w = (self.level(levels, i) as f32 - zeros[g] as f32) * scales[g];
                }
            }
            // Groups of even size start on a byte: a 16-entry table per group decodes a byte at a time.
            None if self.bits <= 4 && self.group_size.is_multiple_of(2) => {
                let mut table = [0f32; 16];
                for (g, chunk) in out.chunks_mut(self.group_size).enumerate() {
                    let (z, s) = (zeros[g] as f32, scales[g]);
                    for (q, t) in table.iter_mut().enumerate() {
                        *t = (q as f32 - z) * s;
                    }
                    let bytes = &levels[g * self.group_size / 2..];
                    for (pair, &b) in chunk.chunks_mut(2).zip(bytes) {
                        pair[0] = table[usize::from(b & 0xF)];
                        if let Some(hi) = pair.get_mut(1) {
                            *hi = table[usize::from(b >> 4)];
                        }
                    }
                }
            }
            None => {
                for (i, w) in out.iter_mut().enumerate() {
                    let g = i / self.group_size;
                    *w = (self.level(levels, i) as f32 - zeros[g] as f32) * scales[g];
                }
            }
        }
    }

    /// Calls `f` with the float weight ([out, in]) dequantized into this thread's scratch, which
    /// then holds one matrix for the next call; a nested call (work stealing inside `f`) takes a
    /// scratch of its own.
    pub fn with_dequantized<R>(&self, f: impl FnOnce(&[f32]) -> R) -> R {
        let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        let n = self.out_features * self.in_features;
        buf.resize(n, 0.0);
        self.dequantize_into(&mut buf[..n]);
        let r = f(&buf[..n]);
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < buf.len() {
                *s = buf;
            }
        });
        r
    }
}

impl fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PackedWeight({} bits, [{}, {}], group {}{})",
            self.bits,
            self.out_features,
            self.in_features,
            self.group_size,
            if self.g_idx.is_some() { ", g_idx" } else { "" }
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A quantized linear with every level and zero in range, scales of mixed sign.
    pub(crate) fn sample(
        bits: u8,
        out: usize,
        k: usize,
        group: usize,
        act_order: bool,
    ) -> QuantizedLinear {
        let groups = k.div_ceil(group);
        let max = 1u32 << bits;
        let g_idx = act_order.then(|| (0..k).map(|i| ((i * 7 + 3) % groups) as u32).collect());
        QuantizedLinear {
            bits,
            group_size: group,
            in_features: k,
            out_features: out,
            q: (0..out * k)
                .map(|i| ((i * 5 + i / 3) as u32 % max) as u8)
                .collect(),
            scales: (0..out * groups)
                .map(|i| (i as f32 * 0.37).sin() / 16.0)
                .collect(),
            zeros: (0..out * groups)
                .map(|i| (i as u32 % (max + 1)) as u8)
                .collect(),
            g_idx,
        }
    }

    #[test]
    fn dequantizes_as_quantized_linear() {
        for (bits, out, k, group, act_order) in [
            (4, 6, 64, 16, false),
            (4, 5, 37, 8, false), // odd inputs: the last byte half empty, a ragged last group
            (4, 4, 40, 7, false), // odd group: groups straddle bytes
            (4, 3, 50, 16, true), // act-order, ragged last group
            (2, 3, 30, 8, false),
            (8, 3, 30, 8, true),
        ] {
            let q = sample(bits, out, k, group, act_order);
            let p = PackedWeight::new(&q);
            let mut w = vec![f32::NAN; out * k];
            p.dequantize_into(&mut w);
            let want = q.dequantize();
            let same = w.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "bits {bits} [{out}, {k}] group {group} act-order {act_order}"
            );
            assert_eq!(p.with_dequantized(|w| w.to_vec()), want);
            let level_bytes = if bits <= 4 {
                out * k.div_ceil(2)
            } else {
                out * k
            };
            assert!(p.bytes() < level_bytes + 5 * out * k.div_ceil(group) + 4 * k + 1);
        }
    }
}
