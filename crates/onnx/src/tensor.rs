//! ONNX tensor element types (onnx-ml.proto `TensorProto.DataType`) and the little-endian byte layouts
//! of `raw_data` / external data for them; fp32 → fp16 (IEEE 754 binary16, round to nearest even).

/// The element types olive-rs writes (values of `TensorProto.DataType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DataType {
    /// 32-bit IEEE float.
    Float = 1,
    /// Unsigned byte.
    Uint8 = 2,
    /// Signed byte.
    Int8 = 3,
    /// 32-bit signed integer.
    Int32 = 6,
    /// 64-bit signed integer.
    Int64 = 7,
    /// Boolean, one byte each.
    Bool = 9,
    /// 16-bit IEEE float.
    Float16 = 10,
    /// 4-bit unsigned, two a byte, the first in the low nibble (ONNX's packing; GatherBlockQuantized data).
    Uint4 = 21,
}

impl DataType {
    /// The `TensorProto.DataType` number.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// Bytes of `count` elements (4-bit ones packed two a byte, the last byte padded).
    pub fn byte_len(self, count: u128) -> u128 {
        match self {
            DataType::Uint4 => count.div_ceil(2),
            DataType::Uint8 | DataType::Int8 | DataType::Bool => count,
            DataType::Float16 => count * 2,
            DataType::Float | DataType::Int32 => count * 4,
            DataType::Int64 => count * 8,
        }
    }
}

/// f32 values as little-endian bytes.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// i64 values as little-endian bytes.
pub fn i64_bytes(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// f32 values converted to fp16 (round to nearest even), as little-endian bytes.
pub fn f32_to_f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect()
}

/// `values` in `dtype` (Float or Float16) as little-endian bytes.
pub fn float_bytes(values: &[f32], dtype: DataType) -> Option<Vec<u8>> {
    match dtype {
        DataType::Float => Some(f32_bytes(values)),
        DataType::Float16 => Some(f32_to_f16_bytes(values)),
        _ => None,
    }
}

/// Transposes a row-major `[rows, cols]` matrix into `[cols, rows]`.
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    debug_assert_eq!(values.len(), rows * cols);
    let mut out = vec![0.0f32; values.len()];
    // Blocked so both sides stay in cache for large weights.
    const B: usize = 32;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    out[c * rows + r] = values[r * cols + c];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_a_non_square_matrix() {
        // [2, 3] -> [3, 2]
        let m = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(transpose(&m, 2, 3), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let big: Vec<f32> = (0..70 * 45).map(|i| i as f32).collect();
        let t = transpose(&big, 70, 45);
        assert_eq!(t[7 * 70 + 69], big[69 * 45 + 7]);
        assert_eq!(transpose(&t, 45, 70), big);
    }

    #[test]
    fn fp16_rounds_to_nearest_even() {
        let b = f32_to_f16_bytes(&[1.0, -2.5, 65504.0, 1.0 + 1.0 / 4096.0]);
        let halves: Vec<u16> = b
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        // 1 + 2^-12 is a quarter of fp16 spacing (2^-10) above 1.0: rounds to 1.0 (0x3C00).
        assert_eq!(halves, vec![0x3C00, 0xC100, 0x7BFF, 0x3C00]);
        assert_eq!(DataType::Float16.byte_len(3), 6);
        assert_eq!(DataType::Uint4.byte_len(3), 2);
        assert!(float_bytes(&[1.0], DataType::Int64).is_none());
    }
}
