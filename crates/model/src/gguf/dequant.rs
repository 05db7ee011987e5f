//! ggml tensor types and their dequantization to f32 (block layouts of ggml's ggml-common.h /
//! ggml-quants.c `dequantize_row_*`, checked against the `gguf` Python package's `gguf/quants.py`).
//!
//! Results are bit-identical to `gguf.quants.dequantize`: every value is computed with the same f32
//! operations in the same order (no fused multiply-add).

use half::f16;
use rayon::prelude::*;

/// Elements per super-block of the k-quants.
const QK_K: usize = 256;
/// Elements dequantized per rayon task.
const ELEMS_PER_TASK: usize = 1 << 16;

macro_rules! ggml_types {
    ($($variant:ident = $id:literal, $name:literal, $block:expr, $size:expr;)*) => {
        /// A ggml tensor type (ggml.h `enum ggml_type`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        pub enum GgmlType { $($variant),* }

        impl GgmlType {
            /// The type with ggml id `id`, if it is one ggml defines.
            pub fn from_id(id: u32) -> Option<Self> {
                match id { $($id => Some(GgmlType::$variant),)* _ => None }
            }
            /// ggml's numeric id.
            pub fn id(self) -> u32 {
                match self { $(GgmlType::$variant => $id),* }
            }
            /// ggml's name, e.g. `Q4_K`.
            pub fn name(self) -> &'static str {
                match self { $(GgmlType::$variant => $name),* }
            }
            /// Elements per block.
            pub fn block_size(self) -> usize {
                match self { $(GgmlType::$variant => $block),* }
            }
            /// Bytes per block.
            pub fn type_size(self) -> usize {
                match self { $(GgmlType::$variant => $size),* }
            }
        }
    };
}

// Sizes from gguf-py's GGML_QUANT_SIZES (block elements, block bytes).
ggml_types! {
    F32 = 0, "F32", 1, 4;
    F16 = 1, "F16", 1, 2;
    Q4_0 = 2, "Q4_0", 32, 2 + 16;
    Q4_1 = 3, "Q4_1", 32, 2 + 2 + 16;
    Q5_0 = 6, "Q5_0", 32, 2 + 4 + 16;
    Q5_1 = 7, "Q5_1", 32, 2 + 2 + 4 + 16;
    Q8_0 = 8, "Q8_0", 32, 2 + 32;
    Q8_1 = 9, "Q8_1", 32, 4 + 4 + 32;
    Q2_K = 10, "Q2_K", QK_K, 2 + 2 + QK_K / 16 + QK_K / 4;
    Q3_K = 11, "Q3_K", QK_K, 2 + QK_K / 4 + QK_K / 8 + 12;
    Q4_K = 12, "Q4_K", QK_K, 2 + 2 + QK_K / 2 + 12;
    Q5_K = 13, "Q5_K", QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12;
    Q6_K = 14, "Q6_K", QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16;
    Q8_K = 15, "Q8_K", QK_K, 4 + QK_K + QK_K / 8;
    IQ2_XXS = 16, "IQ2_XXS", QK_K, 2 + QK_K / 4;
    IQ2_XS = 17, "IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32;
    IQ3_XXS = 18, "IQ3_XXS", QK_K, 2 + QK_K / 4 + QK_K / 8;
    IQ1_S = 19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16;
    IQ4_NL = 20, "IQ4_NL", 32, 2 + 16;
    IQ3_S = 21, "IQ3_S", QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4;
    IQ2_S = 22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16;
    IQ4_XS = 23, "IQ4_XS", QK_K, 2 + 2 + QK_K / 2 + QK_K / 64;
    I8 = 24, "I8", 1, 1;
    I16 = 25, "I16", 1, 2;
    I32 = 26, "I32", 1, 4;
    I64 = 27, "I64", 1, 8;
    F64 = 28, "F64", 1, 8;
    IQ1_M = 29, "IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32;
    BF16 = 30, "BF16", 1, 2;
    TQ1_0 = 34, "TQ1_0", QK_K, 2 + 4 * 13;
    TQ2_0 = 35, "TQ2_0", QK_K, 2 + 64;
    MXFP4 = 39, "MXFP4", 32, 1 + 16;
    NVFP4 = 40, "NVFP4", 64, 4 + 32;
    Q1_0 = 41, "Q1_0", 128, 2 + 16;
}

/// One block: `bytes` is `type_size` long, `out` is `block_size` long.
type BlockFn = fn(bytes: &[u8], out: &mut [f32]);

impl GgmlType {
    fn block_fn(self) -> Option<BlockFn> {
        Some(match self {
            GgmlType::F32 => f32_block,
            GgmlType::F16 => f16_block,
            GgmlType::BF16 => bf16_block,
            GgmlType::Q4_0 => q4_0_block,
            GgmlType::Q4_1 => q4_1_block,
            GgmlType::Q5_0 => q5_0_block,
            GgmlType::Q5_1 => q5_1_block,
            GgmlType::Q8_0 => q8_0_block,
            GgmlType::Q4_K => q4_k_block,
            GgmlType::Q5_K => q5_k_block,
            GgmlType::Q6_K => q6_k_block,
            _ => return None,
        })
    }

    /// Whether tensors of this type can be dequantized to f32 here.
    pub fn can_dequantize(self) -> bool {
        self.block_fn().is_some()
    }

    /// Names of the types that can be dequantized, for error messages.
    pub fn supported_names() -> &'static str {
        "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K"
    }

    /// Bytes taken by a tensor of this type with GGUF dims `dims` (`dims[0]` contiguous).
    pub(crate) fn n_bytes(self, dims: &[u64]) -> Result<u64, String> {
        let block = self.block_size() as u64;
        let ne0 = dims.first().copied().unwrap_or(1);
        if !ne0.is_multiple_of(block) {
            return Err(format!(
                "first dimension {ne0} is not a multiple of the block size {block}"
            ));
        }
        dims.iter()
            .skip(1)
            .try_fold(
                (ne0 / block).checked_mul(self.type_size() as u64),
                |acc, &d| Some(acc?.checked_mul(d)),
            )
            .flatten()
            .ok_or_else(|| format!("size of {dims:?} overflows"))
    }
}

/// Dequantizes `bytes` (whole blocks of `ty`) into `out` (one f32 per element).
pub(crate) fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let block_fn = ty.block_fn().ok_or_else(|| {
        format!(
            "no dequantizer for this type (supported: {})",
            GgmlType::supported_names()
        )
    })?;
    let (block, size) = (ty.block_size(), ty.type_size());
    let n_blocks = out.len() / block;
    if !out.len().is_multiple_of(block) || bytes.len() != n_blocks * size {
        return Err(format!(
            "{} bytes do not hold {} elements of this type",
            bytes.len(),
            out.len()
        ));
    }
    let blocks_per_task = (ELEMS_PER_TASK / block).max(1);
    bytes
        .par_chunks(blocks_per_task * size)
        .zip(out.par_chunks_mut(blocks_per_task * block))
        .for_each(|(bytes, out)| {
            for (b, o) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(block)) {
                block_fn(b, o);
            }
        });
    Ok(())
}

fn le_f16(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

fn f32_block(b: &[u8], out: &mut [f32]) {
    out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
}

fn f16_block(b: &[u8], out: &mut [f32]) {
    out[0] = le_f16(b, 0);
}

fn bf16_block(b: &[u8], out: &mut [f32]) {
    out[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
}

// block_q4_0 { f16 d; u8 qs[16] }: x[j] = (lo(qs[j]) - 8) * d, x[j + 16] = (hi(qs[j]) - 8) * d.
fn q4_0_block(b: &[u8], out: &mut [f32]) {
    let d = le_f16(b, 0);
    let (lo, hi) = out.split_at_mut(16);
    for ((q, l), h) in b[2..18].iter().zip(lo).zip(hi) {
        *l = d * (i32::from(q & 0x0f) - 8) as f32;
        *h = d * (i32::from(q >> 4) - 8) as f32;
    }
}

// block_q4_1 { f16 d; f16 m; u8 qs[16] }: x = q * d + m.
fn q4_1_block(b: &[u8], out: &mut [f32]) {
    let (d, m) = (le_f16(b, 0), le_f16(b, 2));
    let (lo, hi) = out.split_at_mut(16);
    for ((q, l), h) in b[4..20].iter().zip(lo).zip(hi) {
        *l = d * f32::from(q & 0x0f) + m;
        *h = d * f32::from(q >> 4) + m;
    }
}

// block_q5_0 { f16 d; u8 qh[4]; u8 qs[16] }: 5th bit of element j is bit j of qh; x = (q - 16) * d.
fn q5_0_block(b: &[u8], out: &mut [f32]) {
    let d = le_f16(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let (lo, hi) = out.split_at_mut(16);
    for (j, ((q, l), h)) in b[6..22].iter().zip(lo).zip(hi).enumerate() {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        *l = d * ((u32::from(q & 0x0f) | h0) as i32 - 16) as f32;
        *h = d * ((u32::from(q >> 4) | h1) as i32 - 16) as f32;
    }
}

// block_q5_1 { f16 d; f16 m; u8 qh[4]; u8 qs[16] }: x = q * d + m.
fn q5_1_block(b: &[u8], out: &mut [f32]) {
    let (d, m) = (le_f16(b, 0), le_f16(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let (lo, hi) = out.split_at_mut(16);
    for (j, ((q, l), h)) in b[8..24].iter().zip(lo).zip(hi).enumerate() {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        *l = d * (u32::from(q & 0x0f) | h0) as f32 + m;
        *h = d * (u32::from(q >> 4) | h1) as f32 + m;
    }
}

// block_q8_0 { f16 d; i8 qs[32] }: x = q * d.
fn q8_0_block(b: &[u8], out: &mut [f32]) {
    let d = le_f16(b, 0);
    for (q, o) in b[2..34].iter().zip(out) {
        *o = f32::from(*q as i8) * d;
    }
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed 6-bit bytes of Q4_K/Q5_K
/// (ggml-quants.c `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (f32::from(sc), f32::from(m))
}

// block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }: 8 sub-blocks of 32;
// x = (d * sc) * q - (dmin * m).
fn q4_k_block(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (le_f16(b, 0), le_f16(b, 2));
    let scales = &b[4..16];
    // Each 64 outputs: 32 low nibbles (sub-block 2i), then 32 high nibbles (2i + 1) of 32 bytes.
    for (i, (qs, out)) in b[16..144]
        .chunks_exact(32)
        .zip(out.chunks_exact_mut(64))
        .enumerate()
    {
        let (sc1, m1) = scale_min_k4(2 * i, scales);
        let (sc2, m2) = scale_min_k4(2 * i + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let (lo, hi) = out.split_at_mut(32);
        for ((q, l), h) in qs.iter().zip(lo).zip(hi) {
            *l = d1 * f32::from(q & 0x0f) - m1;
            *h = d2 * f32::from(q >> 4) - m2;
        }
    }
}

// block_q5_K { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }: like Q4_K with a 5th bit,
// bit (2i) of qh[l] for the low nibbles of chunk i and bit (2i + 1) for the high ones.
fn q5_k_block(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (le_f16(b, 0), le_f16(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    for (i, (qs, out)) in b[48..176]
        .chunks_exact(32)
        .zip(out.chunks_exact_mut(64))
        .enumerate()
    {
        let (sc1, m1) = scale_min_k4(2 * i, scales);
        let (sc2, m2) = scale_min_k4(2 * i + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let (lo, hi) = out.split_at_mut(32);
        for (((q, h5), l), h) in qs.iter().zip(qh).zip(lo).zip(hi) {
            let bit_lo = ((h5 >> (2 * i)) & 1) << 4;
            let bit_hi = ((h5 >> (2 * i + 1)) & 1) << 4;
            *l = d1 * f32::from((q & 0x0f) | bit_lo) - m1;
            *h = d2 * f32::from((q >> 4) | bit_hi) - m2;
        }
    }
}

// block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }: two halves of 128 elements, each from
// 64 ql bytes and 32 qh bytes; x = (d * scale) * (q - 32) with one scale per 16 elements.
fn q6_k_block(b: &[u8], out: &mut [f32]) {
    let d = le_f16(b, 208);
    let scales = &b[192..208];
    for (half, out) in out.chunks_exact_mut(128).enumerate() {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &scales[8 * half..8 * half + 8];
        for l in 0..32 {
            let is = l / 16;
            let q1 = i32::from((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
            let q2 = i32::from((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            let s = |k: usize| d * f32::from(sc[is + k] as i8);
            out[l] = s(0) * q1 as f32;
            out[l + 32] = s(2) * q2 as f32;
            out[l + 64] = s(4) * q3 as f32;
            out[l + 96] = s(6) * q4 as f32;
        }
    }
}
