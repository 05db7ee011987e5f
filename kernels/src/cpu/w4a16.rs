//! W4A16 CPU reference: int4 weights as stored on disk — AutoAWQ GEMM (`awq/utils/packing_utils.py`), GPTQ v1
//! (AutoGPTQ `QuantLinear.pack`, with `g_idx` / act-order) and ONNX Runtime's MatMulNBits (which Olive's own
//! `quant_method: "olive"` 4-bit layout equals when the group divides K) — unpacked to levels, dequantized to f32
//! (`w = (q − z) · s`) and multiplied in f64. The same bit layouts as crates/model/src/quantized.rs and
//! crates/onnx/src/matmul_nbits.rs (which these unpackers are tested against by example), kept here because
//! olive-model does not depend on this crate. `kernels/cuda/w4a16.cu` is checked against [`w4a16_ref`].

/// AutoAWQ's nibble order within an int32: nibble i holds column ORDER[i] of the 8.
const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// Why packed int4 tensors could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum W4Error {
    /// A tensor's length does not match the shape the layout gives it.
    #[error("{layout} {tensor}: expected {expected} elements for {shape}, got {got}")]
    Length {
        /// The layout being read (AutoAWQ GEMM, GPTQ v1, MatMulNBits).
        layout: &'static str,
        /// Which tensor (qweight, qzeros, scales, g_idx, B, zero_points).
        tensor: &'static str,
        /// Its expected shape.
        shape: String,
        /// Its expected element count.
        expected: usize,
        /// Its element count.
        got: usize,
    },
    /// Dimensions or a group size the layout cannot hold.
    #[error("{layout}: {reason}")]
    Shape {
        /// The layout.
        layout: &'static str,
        /// What is wrong, with the numbers.
        reason: String,
    },
}

/// An int4 linear unpacked: `W[n, i] = (q[n, i] − zeros[n, g]) · scales[n, g]`, g = `group_of(i)`.
#[derive(Debug, Clone, PartialEq)]
pub struct W4Levels {
    /// Output features N.
    pub n: usize,
    /// Input features K.
    pub k: usize,
    /// Inputs per group (K for one group per output channel).
    pub group_size: usize,
    /// Levels 0..=15, [n, k].
    pub q: Vec<u8>,
    /// [n, groups], groups = ceil(k / group_size).
    pub scales: Vec<f32>,
    /// Zero points (0..=16: GPTQ v1 stores zero − 1 in 4 bits), [n, groups].
    pub zeros: Vec<u8>,
    /// GPTQ act-order: the group of each input; `None` means `i / group_size`.
    pub g_idx: Option<Vec<u32>>,
}

impl W4Levels {
    /// Number of groups along K.
    pub fn groups(&self) -> usize {
        self.k.div_ceil(self.group_size)
    }

    /// The group of input `i`.
    pub fn group_of(&self, i: usize) -> usize {
        match &self.g_idx {
            Some(g) => g[i] as usize,
            None => i / self.group_size,
        }
    }

    /// Dense f32 weights [n, k].
    pub fn dequantize(&self) -> Vec<f32> {
        let groups = self.groups();
        let group: Vec<usize> = (0..self.k).map(|i| self.group_of(i)).collect();
        let mut w = Vec::with_capacity(self.n * self.k);
        for o in 0..self.n {
            for (i, &g) in group.iter().enumerate() {
                let z = f32::from(self.zeros[o * groups + g]);
                w.push((f32::from(self.q[o * self.k + i]) - z) * self.scales[o * groups + g]);
            }
        }
        w
    }
}

/// Reference W4A16 product: y [batch, n] = x [batch, k] · dequantize(w)ᵀ, accumulated in f64.
pub fn w4a16_ref(x: &[f32], batch: usize, w: &W4Levels) -> Vec<f32> {
    assert_eq!(x.len(), batch * w.k, "w4a16_ref: x must be [batch, k]");
    let dense = w.dequantize(); // [n, k]
    let mut y = Vec::with_capacity(batch * w.n);
    for b in 0..batch {
        let xb = &x[b * w.k..(b + 1) * w.k];
        for row in dense.chunks_exact(w.k) {
            let s: f64 = xb.iter().zip(row).map(|(&a, &v)| a as f64 * v as f64).sum();
            y.push(s as f32);
        }
    }
    y
}

fn check_len(
    layout: &'static str,
    tensor: &'static str,
    shape: [usize; 2],
    got: usize,
) -> Result<(), W4Error> {
    let expected = shape[0] * shape[1];
    if got == expected {
        return Ok(());
    }
    Err(W4Error::Length {
        layout,
        tensor,
        shape: format!("[{}, {}]", shape[0], shape[1]),
        expected,
        got,
    })
}

fn check_group(layout: &'static str, k: usize, group_size: usize) -> Result<(), W4Error> {
    if group_size == 0 || group_size > k {
        return Err(W4Error::Shape {
            layout,
            reason: format!("group size {group_size} must be in 1..={k} (in_features)"),
        });
    }
    Ok(())
}

/// AutoAWQ GEMM: `qweight` int32 [k, n/8], `qzeros` int32 [groups, n/8] (nibble i of word c = column
/// 8c + [0,2,4,6,1,3,5,7][i]), `scales` [groups, n] (fp16 on disk, given as f32).
pub fn unpack_awq_gemm(
    qweight: &[i32],
    qzeros: &[i32],
    scales: &[f32],
    k: usize,
    n: usize,
    group_size: usize,
) -> Result<W4Levels, W4Error> {
    const L: &str = "AutoAWQ GEMM";
    if !n.is_multiple_of(8) {
        return Err(W4Error::Shape {
            layout: L,
            reason: format!("out_features {n} is not a multiple of 8"),
        });
    }
    check_group(L, k, group_size)?;
    let (n8, groups) = (n / 8, k.div_ceil(group_size));
    check_len(L, "qweight", [k, n8], qweight.len())?;
    check_len(L, "qzeros", [groups, n8], qzeros.len())?;
    check_len(L, "scales", [groups, n], scales.len())?;
    let nibble = |word: i32, i: usize| ((word as u32 >> (4 * i)) & 0xF) as u8;
    let mut q = vec![0u8; n * k];
    for i in 0..k {
        for c in 0..n8 {
            for (nib, &col) in AWQ_ORDER.iter().enumerate() {
                q[(c * 8 + col) * k + i] = nibble(qweight[i * n8 + c], nib);
            }
        }
    }
    let mut zeros = vec![0u8; n * groups];
    let mut sc = vec![0f32; n * groups];
    for g in 0..groups {
        for c in 0..n8 {
            for (nib, &col) in AWQ_ORDER.iter().enumerate() {
                zeros[(c * 8 + col) * groups + g] = nibble(qzeros[g * n8 + c], nib);
            }
        }
        for o in 0..n {
            sc[o * groups + g] = scales[g * n + o];
        }
    }
    Ok(W4Levels {
        n,
        k,
        group_size,
        q,
        scales: sc,
        zeros,
        g_idx: None,
    })
}

/// GPTQ v1, 4 bits: `qweight` int32 [k/8, n] (input 8r + e at bits 4e of word r), `qzeros` int32
/// [groups, n/8] (column 8c + e at bits 4e, storing zero − 1), `scales` [groups, n], `g_idx` int32 [k]
/// (`None` for `i / group_size`; a g_idx equal to that is dropped).
pub fn unpack_gptq_v1(
    qweight: &[i32],
    qzeros: &[i32],
    scales: &[f32],
    g_idx: Option<&[i32]>,
    k: usize,
    n: usize,
    group_size: usize,
) -> Result<W4Levels, W4Error> {
    const L: &str = "GPTQ v1";
    if !k.is_multiple_of(8) || !n.is_multiple_of(8) {
        return Err(W4Error::Shape {
            layout: L,
            reason: format!(
                "in_features {k} and out_features {n} must be multiples of 8 for 4 bits"
            ),
        });
    }
    check_group(L, k, group_size)?;
    let groups = k.div_ceil(group_size);
    check_len(L, "qweight", [k / 8, n], qweight.len())?;
    check_len(L, "qzeros", [groups, n / 8], qzeros.len())?;
    check_len(L, "scales", [groups, n], scales.len())?;
    let mut q = vec![0u8; n * k];
    for r in 0..k / 8 {
        for o in 0..n {
            let w = qweight[r * n + o] as u32;
            for e in 0..8 {
                q[o * k + 8 * r + e] = ((w >> (4 * e)) & 0xF) as u8;
            }
        }
    }
    let mut zeros = vec![0u8; n * groups];
    let mut sc = vec![0f32; n * groups];
    for g in 0..groups {
        for o in 0..n {
            let w = qzeros[g * (n / 8) + o / 8] as u32;
            zeros[o * groups + g] = ((w >> (4 * (o % 8))) & 0xF) as u8 + 1;
            sc[o * groups + g] = scales[g * n + o];
        }
    }
    let g_idx = match g_idx {
        None => None,
        Some(gi) => {
            if gi.len() != k {
                return Err(W4Error::Length {
                    layout: L,
                    tensor: "g_idx",
                    shape: format!("[{k}]"),
                    expected: k,
                    got: gi.len(),
                });
            }
            if let Some((i, &g)) = gi
                .iter()
                .enumerate()
                .find(|&(_, &g)| g < 0 || g as usize >= groups)
            {
                return Err(W4Error::Shape {
                    layout: L,
                    reason: format!("g_idx[{i}] = {g} is not a group in 0..{groups}"),
                });
            }
            let trivial = gi
                .iter()
                .enumerate()
                .all(|(i, &g)| g as usize == i / group_size);
            (!trivial).then(|| gi.iter().map(|&g| g as u32).collect())
        }
    };
    Ok(W4Levels {
        n,
        k,
        group_size,
        q,
        scales: sc,
        zeros,
        g_idx,
    })
}

/// ONNX Runtime MatMulNBits, 4 bits (and Olive's 4-bit layout when the group divides K): `b` uint8
/// [n, blocks, block_size/2] (input 2j in the low nibble of byte j, the last block padded), `scales` [n, blocks],
/// `zero_points` uint8 [n, ceil(blocks/2)] (block 2j low nibble) or `None` for symmetric (zero point 8).
pub fn unpack_matmul_nbits(
    b: &[u8],
    scales: &[f32],
    zero_points: Option<&[u8]>,
    k: usize,
    n: usize,
    block_size: usize,
) -> Result<W4Levels, W4Error> {
    const L: &str = "MatMulNBits";
    if block_size < 2 || !block_size.is_multiple_of(2) {
        return Err(W4Error::Shape {
            layout: L,
            reason: format!("block_size {block_size} must be even"),
        });
    }
    let blocks = k.div_ceil(block_size);
    let blob = block_size / 2;
    check_len(L, "B", [n, blocks * blob], b.len())?;
    check_len(L, "scales", [n, blocks], scales.len())?;
    let zp_cols = blocks.div_ceil(2);
    if let Some(zp) = zero_points {
        check_len(L, "zero_points", [n, zp_cols], zp.len())?;
    }
    let mut q = vec![0u8; n * k];
    for o in 0..n {
        let row = &b[o * blocks * blob..];
        for i in 0..k {
            q[o * k + i] = (row[i / 2] >> (4 * (i % 2))) & 0xF;
        }
    }
    let zeros = (0..n * blocks)
        .map(|idx| match zero_points {
            None => 8,
            Some(zp) => {
                let (o, blk) = (idx / blocks, idx % blocks);
                (zp[o * zp_cols + blk / 2] >> (4 * (blk % 2))) & 0xF
            }
        })
        .collect();
    Ok(W4Levels {
        n,
        k,
        group_size: block_size,
        q,
        scales: scales.to_vec(),
        zeros,
        g_idx: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awq_word_unpacks_in_autoawq_nibble_order() {
        // One input row, 8 columns: column c holds level c + 1; AutoAWQ puts column ORDER[i] in nibble i,
        // so the word reads 0x8642_7531 (nibble 0 = col 0 -> 1, nibble 1 = col 2 -> 3, ...).
        let l =
            unpack_awq_gemm(&[0x8642_7531u32 as i32], &[0x1111_1111], &[0.5; 8], 1, 8, 1).unwrap();
        assert_eq!(l.q, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(l.zeros, vec![1; 8]);
        assert_eq!(l.dequantize(), vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]);
    }

    #[test]
    fn gptq_v1_word_unpacks_along_inputs_and_adds_one_to_zeros() {
        // 8 inputs x 8 outputs; output o's word holds inputs 0..8 as levels (o + e) % 16; zero word 0x7654_3210
        // stores zero − 1, so output o has zero point o + 1.
        let qweight: Vec<i32> = (0..8u32)
            .map(|o| (0..8).fold(0u32, |w, e| w | ((o + e) % 16) << (4 * e)) as i32)
            .collect();
        let l = unpack_gptq_v1(&qweight, &[0x7654_3210], &[1.0; 8], None, 8, 8, 8).unwrap();
        for o in 0..8 {
            for e in 0..8 {
                assert_eq!(l.q[o * 8 + e] as usize, (o + e) % 16);
            }
            assert_eq!(l.zeros[o], o as u8 + 1);
        }
        let trivial: Vec<i32> = vec![0; 8];
        let l2 =
            unpack_gptq_v1(&qweight, &[0x7654_3210], &[1.0; 8], Some(&trivial), 8, 8, 8).unwrap();
        assert_eq!(l2.g_idx, None, "a g_idx of i / group_size is no act-order");
    }

    #[test]
    fn matmul_nbits_unpacks_low_nibble_first_with_default_zero_point() {
        // K = 3 in one block of 16 (padded), N = 1: bytes 0x21, 0x03 -> levels 1, 2, 3.
        let mut b = vec![0u8; 8];
        b[0] = 0x21;
        b[1] = 0x03;
        let l = unpack_matmul_nbits(&b, &[2.0], None, 3, 1, 16).unwrap();
        assert_eq!(l.q, vec![1, 2, 3]);
        assert_eq!(l.dequantize(), vec![-14.0, -12.0, -10.0]);
        let l = unpack_matmul_nbits(&b, &[2.0], Some(&[0x05]), 3, 1, 16).unwrap();
        assert_eq!(l.dequantize(), vec![-8.0, -6.0, -4.0]);
    }

    #[test]
    fn wrong_lengths_and_groups_are_refused_by_name() {
        let e = unpack_awq_gemm(&[0; 3], &[0; 1], &[0.0; 8], 4, 8, 4).unwrap_err();
        assert!(e.to_string().contains("qweight"), "{e}");
        let e = unpack_gptq_v1(
            &[0; 8],
            &[0; 1],
            &[0.0; 8],
            Some(&[0, 0, 0, 0, 0, 0, 0, 5]),
            8,
            8,
            8,
        )
        .unwrap_err();
        assert!(e.to_string().contains("g_idx[7] = 5"), "{e}");
        let e = unpack_matmul_nbits(&[0; 8], &[0.0; 1], None, 16, 1, 15).unwrap_err();
        assert!(e.to_string().contains("block_size 15"), "{e}");
    }

    #[test]
    fn reference_product_uses_g_idx_groups() {
        // K = 4, two groups of 2 permuted by g_idx [1, 0, 1, 0]: inputs 0 and 2 take group 1's scale.
        let l = W4Levels {
            n: 1,
            k: 4,
            group_size: 2,
            q: vec![9, 9, 9, 9],
            scales: vec![1.0, 10.0],
            zeros: vec![8, 8],
            g_idx: Some(vec![1, 0, 1, 0]),
        };
        assert_eq!(l.dequantize(), vec![10.0, 1.0, 10.0, 1.0]);
        assert_eq!(
            w4a16_ref(&[1.0, 2.0, 3.0, 4.0], 1, &l),
            vec![10.0 + 2.0 + 30.0 + 4.0]
        );
    }
}
