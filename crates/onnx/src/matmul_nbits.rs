//! Block-wise int4/int8 weights for ONNX Runtime's `com.microsoft::MatMulNBits` (onnxruntime
//! docs/ContribOperators.md), quantized round-to-nearest exactly as ONNX Runtime's own quantizer does it
//! (`MatMulNBitsQuantizer` → MLAS `BlockwiseQuantizer::quantizeAndTranspose`, core/mlas/lib/q4_dq.cpp), so
//! the bytes are identical; or packed from integers that are already quantized (AWQ / GPTQ checkpoints).
//!
//! Layout, for a linear weight `W: [N out, K in]` (`y = x · Wᵀ`, i.e. the MatMul's `B: [K, N]`):
//! - `B: uint8 [N, n_blocks, blob_size]`, `n_blocks = ceil(K / block_size)`, `blob_size = block_size · bits / 8`;
//!   the values of one block along K, two 4-bit values a byte (element `k` even in the low nibble). The
//!   last block is padded with 0 values past K (as ONNX Runtime's quantizer leaves it).
//! - `scales: [N, n_blocks]` in the activations' type (float or float16).
//! - `zero_points: uint8 [N, ceil(n_blocks · bits / 8)]` (asymmetric only; 4-bit ones packed two a byte, a
//!   missing last one padded with the default 2^(bits-1)); symmetric weights omit it (default 2^(bits-1)).
//!
//! Dequantized: `W[n, k] = (q[n, k] - zp[n, k / block_size]) · scale[n, k / block_size]`.

use crate::error::Result;
use crate::graph::{attr_int, GraphBuilder};
use crate::proto::AttributeProto;
use crate::tensor::DataType;

/// Why weights could not be quantized or packed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NBitsError {
    /// `bits` is not 4 or 8.
    #[error("MatMulNBits bits must be 4 or 8, got {0}")]
    Bits(u32),
    /// The block size is not a power of two of at least 16.
    #[error(
        "MatMulNBits block_size must be a power of two >= 16 (16, 32, 64, 128, 256, ...), got {0}"
    )]
    BlockSize(usize),
    /// The scale type is neither float nor float16.
    #[error("MatMulNBits scales must be float or float16 (the activations' type), got {0:?}")]
    ScaleType(DataType),
    /// A buffer's length does not match the shape it was given with.
    #[error("{what}: expected {expected} values for {shape}, got {got}")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// The shape it should have.
        shape: String,
        /// Its expected length.
        expected: usize,
        /// Its length.
        got: usize,
    },
    /// A weight or a scale is NaN or infinite.
    #[error("{what}[{row}, {col}] is {value}: cannot quantize non-finite values")]
    NonFinite {
        /// Which buffer.
        what: &'static str,
        /// Row (output feature n).
        row: usize,
        /// Column (k for weights, block for scales).
        col: usize,
        /// The value.
        value: f32,
    },
    /// A pre-quantized integer does not fit in `bits`.
    #[error("{what}[{row}, {col}] = {value} does not fit in {bits} bits (max {max})")]
    Range {
        /// Which buffer.
        what: &'static str,
        /// Row (output feature n).
        row: usize,
        /// Column (k for values, block for zero points).
        col: usize,
        /// The value.
        value: u8,
        /// Bits per value.
        bits: u32,
        /// The largest value allowed.
        max: u8,
    },
}

/// How to quantize: bits, block size along K, symmetry, scale type, the node's accuracy level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NBitsConfig {
    /// Bits per weight: 4 or 8.
    pub bits: u32,
    /// Weights along K sharing one scale (and zero point): a power of two >= 16.
    pub block_size: usize,
    /// Symmetric: scale only, zero point fixed at 2^(bits-1) and not stored.
    pub symmetric: bool,
    /// Type of the scales, the activations' type: `Float` or `Float16`.
    pub scale_type: DataType,
    /// The node's `accuracy_level` (0 unset .. 4 int8 compute); `None` leaves the attribute off.
    pub accuracy_level: Option<i64>,
}

impl NBitsConfig {
    /// int4, symmetric or not, `block_size`, float scales, no accuracy level.
    pub fn int4(block_size: usize, symmetric: bool) -> Self {
        NBitsConfig {
            bits: 4,
            block_size,
            symmetric,
            scale_type: DataType::Float,
            accuracy_level: None,
        }
    }

    fn check(&self) -> Result<(), NBitsError> {
        if self.bits != 4 && self.bits != 8 {
            return Err(NBitsError::Bits(self.bits));
        }
        if self.block_size < 16 || !self.block_size.is_power_of_two() {
            return Err(NBitsError::BlockSize(self.block_size));
        }
        if !matches!(self.scale_type, DataType::Float | DataType::Float16) {
            return Err(NBitsError::ScaleType(self.scale_type));
        }
        Ok(())
    }

    /// Largest quantized value, 2^bits - 1.
    fn max_q(&self) -> u8 {
        ((1u32 << self.bits) - 1) as u8
    }

    /// The default (symmetric) zero point, 2^(bits-1).
    fn mid(&self) -> u8 {
        (1u32 << (self.bits - 1)) as u8
    }
}

/// One linear's weights in MatMulNBits layout (see the module docs), with the node's attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct MatMulNBitsWeights {
    /// Input features (K).
    pub k: usize,
    /// Output features (N).
    pub n: usize,
    /// How they were quantized.
    pub config: NBitsConfig,
    /// Packed values, `[N, n_blocks, blob_size]`.
    pub b: Vec<u8>,
    /// Scales `[N, n_blocks]`, already rounded to float16 when `config.scale_type` is `Float16`.
    pub scales: Vec<f32>,
    /// Packed zero points `[N, zero_point_row_bytes]`; `None` for symmetric weights.
    pub zero_points: Option<Vec<u8>>,
}

impl MatMulNBitsWeights {
    /// Blocks along K per output feature.
    pub fn n_blocks(&self) -> usize {
        self.k.div_ceil(self.config.block_size)
    }

    /// Bytes of one block of values.
    pub fn blob_size(&self) -> usize {
        self.config.block_size * self.config.bits as usize / 8
    }

    /// Bytes of one output feature's zero points.
    pub fn zero_point_row_bytes(&self) -> usize {
        (self.n_blocks() * self.config.bits as usize).div_ceil(8)
    }

    /// Dims of input B: `[N, n_blocks, blob_size]`.
    pub fn b_dims(&self) -> [i64; 3] {
        [
            self.n as i64,
            self.n_blocks() as i64,
            self.blob_size() as i64,
        ]
    }

    /// Dims of the scales: `[N, n_blocks]`.
    pub fn scales_dims(&self) -> [i64; 2] {
        [self.n as i64, self.n_blocks() as i64]
    }

    /// Dims of the zero points: `[N, zero_point_row_bytes]`.
    pub fn zero_points_dims(&self) -> [i64; 2] {
        [self.n as i64, self.zero_point_row_bytes() as i64]
    }

    /// The scales as little-endian bytes of `config.scale_type`.
    pub fn scales_bytes(&self) -> Vec<u8> {
        match self.config.scale_type {
            DataType::Float16 => crate::tensor::f32_to_f16_bytes(&self.scales),
            _ => crate::tensor::f32_bytes(&self.scales),
        }
    }

    /// The node's attributes: K, N, bits, block_size and accuracy_level when set.
    pub fn attributes(&self) -> Vec<AttributeProto> {
        let mut attrs = vec![
            attr_int("K", self.k as i64),
            attr_int("N", self.n as i64),
            attr_int("bits", self.config.bits as i64),
            attr_int("block_size", self.config.block_size as i64),
        ];
        if let Some(level) = self.config.accuracy_level {
            attrs.push(attr_int("accuracy_level", level));
        }
        attrs
    }

    /// The quantized value of `W[n, k]`.
    pub fn value(&self, n: usize, k: usize) -> u8 {
        let bs = self.config.block_size;
        let byte = self.b[(n * self.n_blocks() + k / bs) * self.blob_size()
            + (k % bs) * self.config.bits as usize / 8];
        match self.config.bits {
            4 if k % 2 == 1 => byte >> 4,
            4 => byte & 0x0f,
            _ => byte,
        }
    }

    /// The zero point of block `block` of output feature `n`.
    pub fn zero_point(&self, n: usize, block: usize) -> u8 {
        let Some(zp) = &self.zero_points else {
            return self.config.mid();
        };
        let row = &zp[n * self.zero_point_row_bytes()..];
        match self.config.bits {
            4 if block % 2 == 1 => row[block / 2] >> 4,
            4 => row[block / 2] & 0x0f,
            _ => row[block],
        }
    }

    /// `W: [N, K]` as ONNX Runtime computes it from these weights (f32).
    pub fn dequantize(&self) -> Vec<f32> {
        let (bs, nb) = (self.config.block_size, self.n_blocks());
        let mut w = Vec::with_capacity(self.n * self.k);
        for n in 0..self.n {
            for k in 0..self.k {
                let q = self.value(n, k) as i32 - self.zero_point(n, k / bs) as i32;
                w.push(q as f32 * self.scales[n * nb + k / bs]);
            }
        }
        w
    }

    /// Adds the initializers `<weight>_Q{bits}`, `<weight>_scales`, `<weight>_zero_points` (asymmetric only)
    /// and the MatMulNBits node `node_name` reading `input` (`[..., K]`); returns its output (`[..., N]`).
    pub fn add_to_graph(
        &self,
        g: &mut GraphBuilder,
        weight: &str,
        node_name: &str,
        input: &str,
    ) -> Result<String> {
        let b = g.initializer(
            &format!("{weight}_Q{}", self.config.bits),
            DataType::Uint8,
            &self.b_dims(),
            &self.b,
        )?;
        let scales = g.initializer(
            &format!("{weight}_scales"),
            self.config.scale_type,
            &self.scales_dims(),
            &self.scales_bytes(),
        )?;
        let mut inputs = vec![input.to_string(), b, scales];
        if let Some(zp) = &self.zero_points {
            inputs.push(g.initializer(
                &format!("{weight}_zero_points"),
                DataType::Uint8,
                &self.zero_points_dims(),
                zp,
            )?);
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        g.node(
            "com.microsoft",
            "MatMulNBits",
            node_name,
            &inputs,
            self.attributes(),
        )
    }
}

fn check_len(
    what: &'static str,
    shape: String,
    expected: usize,
    got: usize,
) -> Result<(), NBitsError> {
    if expected != got {
        return Err(NBitsError::Length {
            what,
            shape,
            expected,
            got,
        });
    }
    Ok(())
}

/// Rounds to float16 and back when the scales are float16 (ONNX Runtime stores `ScaleT(scale_f)`).
fn to_scale_type(v: f32, dtype: DataType) -> f32 {
    match dtype {
        DataType::Float16 => half::f16::from_f32(v).to_f32(),
        _ => v,
    }
}

/// Quantizes `w: [N, K]` (row n = output feature n) round-to-nearest, block-wise along K, to the same bytes
/// as ONNX Runtime's `MatMulNBitsQuantizer` (RTN). With float16 scales the weights are first rounded to
/// float16, as that quantizer sees an fp16 model's weights.
pub fn quantize(
    w: &[f32],
    n: usize,
    k: usize,
    config: &NBitsConfig,
) -> Result<MatMulNBitsWeights, NBitsError> {
    config.check()?;
    check_len("weight", format!("[N {n}, K {k}]"), n * k, w.len())?;
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        let (row, col) = (i / k, i % k);
        return Err(NBitsError::NonFinite {
            what: "weight",
            row,
            col,
            value: w[i],
        });
    }
    let (bs, max_q) = (config.block_size, config.max_q());
    let n_blocks = k.div_ceil(bs);
    let mut q = vec![0u8; n * k];
    let mut scales = Vec::with_capacity(n * n_blocks);
    let mut zps = Vec::with_capacity(n * n_blocks);
    let mut block = Vec::with_capacity(bs);
    for row in 0..n {
        for blk in 0..n_blocks {
            let (k0, k1) = (blk * bs, ((blk + 1) * bs).min(k));
            // block: [k1 - k0] values of W[row, k0..k1], as the quantizer sees them (fp16 for fp16 models).
            block.clear();
            block.extend(
                w[row * k + k0..row * k + k1]
                    .iter()
                    .map(|&v| to_scale_type(v, config.scale_type)),
            );
            let (mut min, mut max) = (f32::MAX, -f32::MAX);
            for &v in &block {
                if v < min {
                    min = v;
                }
                if v > max {
                    max = v;
                }
            }
            let (scale, zp) = if config.symmetric {
                // range2scale: the larger magnitude maps to -2^(bits-1).
                let m = if max.abs() > min.abs() { max } else { min };
                (
                    to_scale_type(-m / config.mid() as f32, config.scale_type),
                    config.mid(),
                )
            } else {
                // range2scalezp: the range always holds 0.
                let (min, max) = (min.min(0.0), max.max(0.0));
                let s = (max - min) / max_q as f32;
                let zp_f = if s != 0.0 { 0.0 - min / s } else { min };
                let zp = if zp_f < 0.0 {
                    0
                } else if zp_f > max_q as f32 {
                    max_q
                } else {
                    zp_f.round() as u8
                };
                (to_scale_type(s, config.scale_type), zp)
            };
            let recip = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            for (i, &v) in block.iter().enumerate() {
                q[row * k + k0 + i] =
                    (v * recip + zp as f32).round().clamp(0.0, max_q as f32) as u8;
            }
            scales.push(scale);
            zps.push(zp);
        }
    }
    Ok(pack_values(
        &q,
        scales,
        (!config.symmetric).then_some(&zps[..]),
        n,
        k,
        config,
    ))
}

/// Packs weights that are already quantized — `q: [N, K]` unsigned integers < 2^bits, `scales: [N, n_blocks]`
/// and, unless symmetric, `zero_points: [N, n_blocks]` (one unpacked integer a block), with
/// `n_blocks = ceil(K / block_size)` — into MatMulNBits layout without dequantizing. This is how AWQ / GPTQ
/// checkpoints (group size = `block_size`, no activation reordering) go in once their int32 words are unpacked
/// and transposed to `[N, K]`. Symmetric means the checkpoint's zero point is 2^(bits-1) everywhere.
pub fn pack_prequantized(
    q: &[u8],
    scales: &[f32],
    zero_points: Option<&[u8]>,
    n: usize,
    k: usize,
    config: &NBitsConfig,
) -> Result<MatMulNBitsWeights, NBitsError> {
    config.check()?;
    if config.symmetric != zero_points.is_none() {
        return Err(NBitsError::Length {
            what: "zero_points",
            shape: format!("[N {n}, n_blocks] (given exactly when the config is asymmetric)"),
            expected: if config.symmetric {
                0
            } else {
                n * k.div_ceil(config.block_size)
            },
            got: zero_points.map_or(0, <[u8]>::len),
        });
    }
    let n_blocks = k.div_ceil(config.block_size);
    check_len(
        "quantized weight",
        format!("[N {n}, K {k}]"),
        n * k,
        q.len(),
    )?;
    let blocks_shape = format!("[N {n}, n_blocks {n_blocks}]");
    check_len("scales", blocks_shape.clone(), n * n_blocks, scales.len())?;
    let max = config.max_q();
    let in_range = |what: &'static str, values: &[u8], cols: usize| -> Result<(), NBitsError> {
        match values.iter().position(|&v| v > max) {
            Some(i) => Err(NBitsError::Range {
                what,
                row: i / cols,
                col: i % cols,
                value: values[i],
                bits: config.bits,
                max,
            }),
            None => Ok(()),
        }
    };
    in_range("quantized weight", q, k)?;
    if let Some(zp) = zero_points {
        check_len("zero_points", blocks_shape, n * n_blocks, zp.len())?;
        in_range("zero_points", zp, n_blocks)?;
    }
    if let Some(i) = scales.iter().position(|v| !v.is_finite()) {
        let (row, col) = (i / n_blocks, i % n_blocks);
        return Err(NBitsError::NonFinite {
            what: "scales",
            row,
            col,
            value: scales[i],
        });
    }
    let scales = scales
        .iter()
        .map(|&s| to_scale_type(s, config.scale_type))
        .collect();
    Ok(pack_values(q, scales, zero_points, n, k, config))
}

/// Packs checked values `q: [N, K]`, scales and unpacked zero points `[N, n_blocks]` into the layout.
fn pack_values(
    q: &[u8],
    scales: Vec<f32>,
    zero_points: Option<&[u8]>,
    n: usize,
    k: usize,
    config: &NBitsConfig,
) -> MatMulNBitsWeights {
    let (bs, bits) = (config.block_size, config.bits as usize);
    let n_blocks = k.div_ceil(bs);
    let row_bytes = n_blocks * bs * bits / 8;
    // b: [N, n_blocks * blob_size]; values past K stay 0.
    let mut b = vec![0u8; n * row_bytes];
    for (dst, src) in b.chunks_mut(row_bytes).zip(q.chunks(k)) {
        match bits {
            4 => {
                for (i, pair) in src.chunks(2).enumerate() {
                    dst[i] = pair[0] | pair.get(1).map_or(0, |hi| hi << 4);
                }
            }
            _ => dst[..k].copy_from_slice(src),
        }
    }
    let zero_points = zero_points.map(|zp| {
        let zp_row = (n_blocks * bits).div_ceil(8);
        let mut packed = vec![0u8; n * zp_row];
        for (dst, src) in packed.chunks_mut(zp_row).zip(zp.chunks(n_blocks)) {
            match bits {
                // A missing odd last zero point is the default one, as ONNX Runtime's quantizer writes it.
                4 => {
                    for (i, pair) in src.chunks(2).enumerate() {
                        dst[i] = pair[0] | (pair.get(1).copied().unwrap_or(config.mid()) << 4);
                    }
                }
                _ => dst.copy_from_slice(src),
            }
        }
        packed
    });
    MatMulNBitsWeights {
        k,
        n,
        config: *config,
        b,
        scales,
        zero_points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference bytes from ONNX Runtime 1.32's quantizer (`onnxruntime.capi._pybind_state.quantize_matmul_4bits`
    // / `_8bits`, as `MatMulNBitsQuantizer` calls them) on `test_weight()`, N 2, K 40, block 16 (3 blocks, the
    // last one ragged). Regenerate: W = test_weight() transposed to [K, N], padded to 48 rows, then
    // `quantize_matmul_Nbits(packed, W, scales, zp, 16, 2, 40, symmetric)`.
    const N: usize = 2;
    const K: usize = 40;
    const REF_Q4_SYM_B: [u8; 48] = [
        0xa0, 0xe4, 0x17, 0x4b, 0x8f, 0xc1, 0xf5, 0x29, 0x6c, 0x9f, 0xd3, 0x07, 0x4a, 0x7e, 0xb1,
        0xf4, 0xf8, 0xb4, 0x70, 0x3e, 0x00, 0x00, 0x00, 0x00, 0xf6, 0x39, 0x7d, 0xa0, 0xe4, 0x17,
        0x4b, 0x8f, 0xc1, 0xf5, 0x29, 0x6c, 0x9f, 0xd3, 0x07, 0x4a, 0x7e, 0xb0, 0xf4, 0x18, 0x00,
        0x00, 0x00, 0x00,
    ];
    const REF_Q4_SYM_SCALES: [u32; 6] = [
        0x3e300000, 0x3e300000, 0xbe200000, 0x3e300000, 0x3e300000, 0x3e200000,
    ];
    const REF_Q4_ASYM_B: [u8; 48] = [
        0xa0, 0xe4, 0x17, 0x4b, 0x8e, 0xc2, 0xf5, 0x29, 0x6c, 0x9f, 0xd3, 0x17, 0x4a, 0x7d, 0xb1,
        0xe5, 0x07, 0x4b, 0x8f, 0xc1, 0x00, 0x00, 0x00, 0x00, 0xf6, 0x39, 0x7d, 0xa1, 0xd4, 0x17,
        0x5b, 0x8e, 0xb2, 0xf5, 0x39, 0x6c, 0x9f, 0xd3, 0x17, 0x4a, 0x7e, 0xb0, 0xf4, 0x18, 0x00,
        0x00, 0x00, 0x00,
    ];
    const REF_Q4_ASYM_SCALES: [u32; 6] = [
        0x3e333333, 0x3e3bbbbc, 0x3e222222, 0x3e3bbbbc, 0x3e3bbbbc, 0x3e222222,
    ];
    const REF_Q4_ASYM_ZP: [u8; 4] = [0x88, 0x87, 0x88, 0x88];
    const REF_Q8_ASYM_B: [u8; 96] = [
        0x00, 0xaa, 0x3d, 0xe7, 0x7a, 0x0d, 0xb7, 0x49, 0xf3, 0x86, 0x19, 0xc3, 0x55, 0xff, 0x92,
        0x25, 0xc6, 0x5d, 0xff, 0x97, 0x2f, 0xd1, 0x69, 0x01, 0xa3, 0x3a, 0xdd, 0x74, 0x0c, 0xae,
        0x46, 0xe8, 0x79, 0x00, 0xbc, 0x43, 0xff, 0x86, 0x0e, 0xca, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x5d, 0xff, 0x97, 0x2f, 0xd1, 0x69, 0x01, 0xa3, 0x3a, 0xdd, 0x74, 0x0c,
        0xae, 0x46, 0xe8, 0x80, 0x18, 0xba, 0x52, 0xf4, 0x8c, 0x23, 0xc6, 0x5d, 0xff, 0x97, 0x2f,
        0xd1, 0x69, 0x01, 0xa3, 0x3a, 0xf1, 0x79, 0x00, 0xbc, 0x43, 0xff, 0x86, 0x0d, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    const REF_Q8_ASYM_SCALES: [u32; 6] = [
        0x3c28a8a9, 0x3c30b0b1, 0x3c189899, 0x3c30b0b1, 0x3c30b0b1, 0x3c189899,
    ];
    const REF_Q8_ASYM_ZP: [u8; 6] = [0x86, 0x80, 0x79, 0x80, 0x80, 0x86];

    /// W: [2, 40], exact eighths in [-11/8, 11/8].
    fn test_weight() -> Vec<f32> {
        (0..N * K)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 8.0)
            .collect()
    }

    fn scale_bits(w: &MatMulNBitsWeights) -> Vec<u32> {
        w.scales.iter().map(|s| s.to_bits()).collect()
    }

    fn config(bits: u32, symmetric: bool) -> NBitsConfig {
        NBitsConfig {
            bits,
            ..NBitsConfig::int4(16, symmetric)
        }
    }

    #[test]
    fn int4_symmetric_matches_onnxruntime_bytes() {
        let q = quantize(&test_weight(), N, K, &config(4, true)).unwrap();
        assert_eq!(q.b, REF_Q4_SYM_B);
        assert_eq!(scale_bits(&q), REF_Q4_SYM_SCALES);
        assert_eq!(q.zero_points, None);
        assert_eq!((q.b_dims(), q.scales_dims()), ([2, 3, 8], [2, 3]));
    }

    #[test]
    fn int4_asymmetric_matches_onnxruntime_bytes() {
        let q = quantize(&test_weight(), N, K, &config(4, false)).unwrap();
        assert_eq!(q.b, REF_Q4_ASYM_B);
        assert_eq!(scale_bits(&q), REF_Q4_ASYM_SCALES);
        assert_eq!(q.zero_points.as_deref(), Some(&REF_Q4_ASYM_ZP[..]));
        assert_eq!(q.zero_points_dims(), [2, 2]);
    }

    #[test]
    fn int8_asymmetric_matches_onnxruntime_bytes() {
        let q = quantize(&test_weight(), N, K, &config(8, false)).unwrap();
        assert_eq!(q.b, REF_Q8_ASYM_B);
        assert_eq!(scale_bits(&q), REF_Q8_ASYM_SCALES);
        assert_eq!(q.zero_points.as_deref(), Some(&REF_Q8_ASYM_ZP[..]));
        assert_eq!((q.b_dims(), q.zero_points_dims()), ([2, 3, 16], [2, 3]));
    }

    #[test]
    fn dequantized_weights_are_within_one_step() {
        // Half a step of rounding, except at the range's far end, clipped by up to one step (symmetric: the
        // positive end +2^(bits-1) is not representable; asymmetric: the rounded zero point shifts the grid).
        let w = test_weight();
        for (bits, symmetric) in [(4, true), (4, false), (8, true), (8, false)] {
            let q = quantize(&w, N, K, &config(bits, symmetric)).unwrap();
            let d = q.dequantize();
            for (i, (a, b)) in w.iter().zip(&d).enumerate() {
                let step = q.scales[(i / K) * q.n_blocks() + (i % K) / 16].abs();
                assert!(
                    (a - b).abs() <= step + 1e-6,
                    "bits {bits} sym {symmetric} [{i}]: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn prequantized_values_pack_to_the_same_bytes() {
        for (bits, symmetric) in [(4, true), (4, false), (8, false)] {
            let cfg = config(bits, symmetric);
            let q = quantize(&test_weight(), N, K, &cfg).unwrap();
            let values: Vec<u8> = (0..N * K).map(|i| q.value(i / K, i % K)).collect();
            let zps: Vec<u8> = (0..N * 3).map(|i| q.zero_point(i / 3, i % 3)).collect();
            let zps = (!symmetric).then_some(&zps[..]);
            let packed = pack_prequantized(&values, &q.scales, zps, N, K, &cfg).unwrap();
            assert_eq!(packed, q, "bits {bits} symmetric {symmetric}");
        }
    }

    #[test]
    fn float16_scales_are_rounded_and_written_as_halves() {
        let cfg = NBitsConfig {
            scale_type: DataType::Float16,
            ..config(4, false)
        };
        let q = quantize(&test_weight(), N, K, &cfg).unwrap();
        for s in &q.scales {
            assert_eq!(half::f16::from_f32(*s).to_f32(), *s);
        }
        assert_eq!(q.scales_bytes().len(), 2 * q.scales.len());
        // 0.175 (f32 0x3e333333) → f16 0x319a.
        assert_eq!(&q.scales_bytes()[..2], &0x319au16.to_le_bytes());
    }

    #[test]
    fn attributes_name_k_n_bits_block_and_accuracy() {
        let cfg = NBitsConfig {
            accuracy_level: Some(4),
            ..config(4, true)
        };
        let q = quantize(&test_weight(), N, K, &cfg).unwrap();
        let attrs: Vec<(String, i64)> = q
            .attributes()
            .into_iter()
            .map(|a| (a.name.unwrap_or_default(), a.i.unwrap_or_default()))
            .collect();
        let expected = [
            ("K", 40),
            ("N", 2),
            ("bits", 4),
            ("block_size", 16),
            ("accuracy_level", 4),
        ];
        assert_eq!(attrs, expected.map(|(k, v)| (k.to_string(), v)));
        let none = quantize(&test_weight(), N, K, &config(4, true)).unwrap();
        assert_eq!(none.attributes().len(), 4);
    }

    #[test]
    fn bad_input_is_named() {
        let w = test_weight();
        let err = |r: Result<MatMulNBitsWeights, NBitsError>| r.unwrap_err().to_string();
        assert!(err(quantize(&w, N, K, &config(3, true))).contains("bits must be 4 or 8, got 3"));
        let cfg = NBitsConfig::int4(48, true);
        assert!(err(quantize(&w, N, K, &cfg)).contains("power of two >= 16"));
        let cfg = NBitsConfig {
            scale_type: DataType::Int64,
            ..config(4, true)
        };
        assert!(err(quantize(&w, N, K, &cfg)).contains("float or float16"));
        assert!(err(quantize(&w, N, K + 1, &config(4, true)))
            .contains("expected 82 values for [N 2, K 41], got 80"));
        let mut nan = w.clone();
        nan[K + 3] = f32::NAN;
        assert!(err(quantize(&nan, N, K, &config(4, true))).contains("weight[1, 3] is NaN"));
        let values = vec![3u8; N * K];
        let scales = vec![0.5f32; N * 3];
        let mut zps = vec![8u8; N * 3];
        assert!(err(pack_prequantized(
            &values,
            &scales,
            Some(&zps),
            N,
            K,
            &config(4, true)
        ))
        .contains("zero_points"));
        assert!(err(pack_prequantized(
            &values,
            &scales,
            None,
            N,
            K,
            &config(4, false)
        ))
        .contains("zero_points"));
        zps[4] = 16;
        let msg = err(pack_prequantized(
            &values,
            &scales,
            Some(&zps),
            N,
            K,
            &config(4, false),
        ));
        assert!(
            msg.contains("zero_points[1, 1] = 16 does not fit in 4 bits (max 15)"),
            "{msg}"
        );
        let mut big = values.clone();
        big[5] = 200;
        let msg = err(pack_prequantized(
            &big,
            &scales,
            None,
            N,
            K,
            &config(4, true),
        ));
        assert!(msg.contains("quantized weight[0, 5] = 200"), "{msg}");
        assert!(err(pack_prequantized(
            &values,
            &scales[1..],
            None,
            N,
            K,
            &config(4, true)
        ))
        .contains("scales"));
    }

    #[test]
    fn odd_k_and_all_zero_blocks() {
        // K 33: two blocks of 16 and one of a single value; a zero row quantizes to scale 0.
        let (n, k) = (2, 33);
        let mut w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.37).sin()).collect();
        w[k..].iter_mut().for_each(|v| *v = 0.0);
        for symmetric in [true, false] {
            let q = quantize(&w, n, k, &config(4, symmetric)).unwrap();
            assert_eq!(q.b_dims(), [2, 3, 8]);
            // The lone value of block 2 sits in the low nibble; the rest of the block is 0.
            assert_eq!(q.b[16] & 0x0f, q.value(0, 32));
            assert!(q.b[17..24].iter().all(|&b| b == 0) && q.b[16] >> 4 == 0);
            assert!(q.scales[3..].iter().all(|&s| s == 0.0));
            assert!(q.dequantize()[k..].iter().all(|&v| v == 0.0));
        }
    }
}
