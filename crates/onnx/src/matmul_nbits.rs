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
    /// The checkpoint's group size is not a multiple of the block size.
    #[error("group size {group_size} is not a multiple of MatMulNBits block_size {block_size}: pick a block size dividing it (block_size_for_group)")]
    GroupSize {
        /// Weights per group along K in the checkpoint.
        group_size: usize,
        /// The MatMulNBits block size asked for.
        block_size: usize,
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

/// Packs weights that are already quantized — `q: [N, K]` unsigned integers < 2^bits, `scales: [N, n_groups]`
/// and, unless symmetric, `zero_points: [N, n_groups]` (one unpacked integer a group), with
/// `n_groups = ceil(K / group_size)` — into MatMulNBits layout without dequantizing. This is how AWQ / GPTQ
/// checkpoints (no activation reordering) go in once their int32 words are unpacked and transposed to
/// `[N, K]`; a per-channel checkpoint has `group_size = K`. `config.block_size` must divide `group_size` (see
/// [`block_size_for_group`]): each group's scale and zero point are repeated over its blocks, so the ragged
/// last group stays exact. Symmetric means the checkpoint's zero point is 2^(bits-1) everywhere.
pub fn pack_prequantized(
    q: &[u8],
    scales: &[f32],
    zero_points: Option<&[u8]>,
    n: usize,
    k: usize,
    group_size: usize,
    config: &NBitsConfig,
) -> Result<MatMulNBitsWeights, NBitsError> {
    config.check()?;
    if group_size == 0 || !group_size.is_multiple_of(config.block_size) {
        return Err(NBitsError::GroupSize {
            group_size,
            block_size: config.block_size,
        });
    }
    let n_groups = k.div_ceil(group_size);
    let groups_shape = format!("[N {n}, n_groups {n_groups}] (group size {group_size})");
    if config.symmetric != zero_points.is_none() {
        return Err(NBitsError::Length {
            what: "zero_points",
            shape: format!("{groups_shape}, given exactly when the config is asymmetric"),
            expected: if config.symmetric { 0 } else { n * n_groups },
            got: zero_points.map_or(0, <[u8]>::len),
        });
    }
    check_len(
        "quantized weight",
        format!("[N {n}, K {k}]"),
        n * k,
        q.len(),
    )?;
    check_len("scales", groups_shape.clone(), n * n_groups, scales.len())?;
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
        check_len("zero_points", groups_shape, n * n_groups, zp.len())?;
        in_range("zero_points", zp, n_groups)?;
    }
    if let Some(i) = scales.iter().position(|v| !v.is_finite()) {
        let (row, col) = (i / n_groups, i % n_groups);
        return Err(NBitsError::NonFinite {
            what: "scales",
            row,
            col,
            value: scales[i],
        });
    }
    // Per block: the group holding block b of row r is b * block_size / group_size.
    let n_blocks = k.div_ceil(config.block_size);
    let group_of =
        |i: usize| (i / n_blocks) * n_groups + (i % n_blocks) * config.block_size / group_size;
    let block_scales = (0..n * n_blocks)
        .map(|i| to_scale_type(scales[group_of(i)], config.scale_type))
        .collect();
    let block_zps: Option<Vec<u8>> =
        zero_points.map(|zp| (0..n * n_blocks).map(|i| zp[group_of(i)]).collect());
    Ok(pack_values(
        q,
        block_scales,
        block_zps.as_deref(),
        n,
        k,
        config,
    ))
}

/// The block size for a checkpoint's `group_size` (K for per-channel): the largest power of two from 16 to
/// `max_block` dividing it, so that [`pack_prequantized`] keeps the groups exact; `None` when there is none.
pub fn block_size_for_group(group_size: usize, max_block: usize) -> Option<usize> {
    if group_size == 0 {
        return None;
    }
    let top = max_block.checked_ilog2()?;
    (4..=top)
        .rev()
        .map(|e| 1usize << e)
        .find(|b| group_size.is_multiple_of(*b))
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
mod tests;
