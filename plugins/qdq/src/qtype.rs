//! Quantized element types and their parameters as onnxruntime.quantization computes them (quant_utils.py:
//! `get_qmin_qmax_for_qType`, `compute_scale_zp`, `quantize_nparray`, `pack_bytes_to_4bit`): ranges per type
//! (symmetric int8/int16 restricted to [-qmax, qmax], 4-bit types never), scale in float64 stored as float32, zero
//! point rounded half to even, values rounded half to even and clipped; 4-bit values packed two to a byte, the
//! first in the low nibble (ONNX INT4/UINT4 layout).

use olive_onnx::proto::TensorProto;
use olive_pass_sdk::Error;

use crate::types;

/// ONNX uint4.
pub const UINT4: i32 = 21;
/// ONNX int4.
pub const INT4: i32 = 22;

/// A quantized element type: ONNX code, qmin, qmax.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QType {
    /// ONNX TensorProto.DataType.
    pub code: i32,
    /// Smallest value.
    pub qmin: f32,
    /// Largest value.
    pub qmax: f32,
}

/// int32 (biases).
pub const INT32: QType = QType {
    code: types::INT32,
    qmin: i32::MIN as f32,
    qmax: i32::MAX as f32,
};

impl QType {
    /// The type ORT calls `name` (QUInt8, QInt8, QUInt16, QInt16, QUInt4, QInt4), if it is among `allowed`;
    /// `key` names the config field in the error.
    pub fn parse(name: &str, key: &str, allowed: &[&str]) -> Result<QType, Error> {
        let (code, qmin, qmax) = match name {
            "QUInt8" => (types::UINT8, 0.0, 255.0),
            "QInt8" => (types::INT8, -128.0, 127.0),
            "QUInt16" => (types::UINT16, 0.0, 65535.0),
            "QInt16" => (types::INT16, -32768.0, 32767.0),
            "QUInt4" => (UINT4, 0.0, 15.0),
            "QInt4" => (INT4, -8.0, 7.0),
            _ => (0, 0.0, 0.0),
        };
        if code == 0 || !allowed.contains(&name) {
            return Err(Error::InvalidConfig(format!(
                "{key} `{name}`: olive-rs takes {}",
                allowed.join(", ")
            )));
        }
        Ok(QType { code, qmin, qmax })
    }

    /// 16-bit types (com.microsoft Q/DQ below opset 21).
    pub fn bits16(self) -> bool {
        matches!(self.code, types::UINT16 | types::INT16)
    }

    /// 4-bit types (com.microsoft Q/DQ below opset 21; packed two to a byte).
    pub fn bits4(self) -> bool {
        matches!(self.code, UINT4 | INT4)
    }

    /// The range quantization uses: ORT restricts symmetric int8 and int16 to [-qmax, qmax].
    fn range(self, symmetric: bool) -> (f32, f32) {
        if symmetric && matches!(self.code, types::INT8 | types::INT16) {
            (-self.qmax, self.qmax)
        } else {
            (self.qmin, self.qmax)
        }
    }

    /// `(scale, zero point)` of `[rmin, rmax]` as quant_utils.compute_scale_zp computes it.
    pub fn params(self, rmin: f32, rmax: f32, symmetric: bool) -> (f32, f32) {
        let (qmin, qmax) = self.range(symmetric);
        let (mut rmin, mut rmax) = (rmin.min(0.0), rmax.max(0.0));
        if symmetric {
            let absmax = rmin.abs().max(rmax.abs());
            (rmin, rmax) = (-absmax, absmax);
        }
        let scale = (rmax as f64 - rmin as f64) / (qmax as f64 - qmin as f64);
        if !scale.is_finite() || scale < f32::MIN_POSITIVE as f64 {
            return (1.0, 0.0);
        }
        let zp = if symmetric {
            ((qmin as f64 + qmax as f64) / 2.0).round_ties_even()
        } else {
            (qmin as f64 - rmin as f64 / scale).round_ties_even()
        };
        (scale as f32, zp as f32)
    }

    /// `values` quantized with `(scale, zp)`, clipped to the type's full range.
    pub fn quantize(self, values: &[f32], scale: f32, zp: f32) -> Vec<i32> {
        values
            .iter()
            .map(|&v| ((v / scale).round_ties_even() + zp).clamp(self.qmin, self.qmax) as i32)
            .collect()
    }

    /// The bytes of quantized values (little endian; 4-bit packed, first value in the low nibble).
    pub fn bytes(self, values: &[i32]) -> Vec<u8> {
        match self.code {
            types::UINT8 | types::INT8 => values.iter().map(|&x| x as u8).collect(),
            types::UINT16 | types::INT16 => values
                .iter()
                .flat_map(|&x| (x as u16).to_le_bytes())
                .collect(),
            UINT4 | INT4 => values
                .chunks(2)
                .map(|p| (p[0] as u8 & 0xF) | ((p.get(1).copied().unwrap_or(0) as u8 & 0xF) << 4))
                .collect(),
            _ => values.iter().flat_map(|&x| x.to_le_bytes()).collect(),
        }
    }

    /// A tensor of this type holding `values`.
    pub fn tensor(self, name: &str, dims: &[i64], values: &[i32]) -> TensorProto {
        TensorProto {
            name: Some(name.into()),
            data_type: Some(self.code),
            dims: dims.to_vec(),
            raw_data: Some(self.bytes(values)),
            ..Default::default()
        }
    }
}

/// A float32 tensor of `values` (a scalar when `dims` is empty).
pub fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        data_type: Some(types::FLOAT),
        dims: dims.to_vec(),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ort_ranges_zero_points_and_packing() {
        let int4 = QType::parse("QInt4", "w", &["QInt4"]).unwrap();
        // symmetric int4 keeps [-8, 7]: scale 2·absmax/15, zero point round(-0.5) = 0
        let (s, z) = int4.params(-1.5, 0.75, true);
        assert_eq!((s, z), (3.0 / 15.0, 0.0));
        assert_eq!(int4.quantize(&[-1.5, 1.5, 0.2], s, z), [-8, 7, 1]);
        assert_eq!(int4.bytes(&[-8, 7, 1]), [0x78, 0x01]);
        let int8 = QType::parse("QInt8", "w", &["QInt8"]).unwrap();
        assert_eq!(
            int8.params(-1.0, 2.54, true),
            ((2.54f32 as f64 * 2.0 / 254.0) as f32, 0.0)
        );
        let uint8 = QType::parse("QUInt8", "w", &["QUInt8"]).unwrap();
        assert_eq!(uint8.params(-1.0, 1.0, true).1, 128.0);
        assert_eq!(uint8.params(0.0, 0.0, false), (1.0, 0.0));
        assert!(QType::parse("QInt4", "weight_type", &["QInt8"])
            .unwrap_err()
            .to_string()
            .contains("weight_type `QInt4`: olive-rs takes QInt8"));
    }
}
