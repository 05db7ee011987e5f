//! Weight (float initializer) quantization as onnxruntime's QDQ quantizer writes it (qdq_quantizer.py
//! `calc_initializer_quant_params`, base_quantizer.py `quantize_initializer_impl` /
//! `quantize_weight_per_channel_impl`): per tensor with the config's symmetry, or per channel — always symmetric —
//! along the axis ORT's QDQ operator gives the weight (operators/matmul.py: MatMul axis 1; gemm.py: Gemm's B axis 0
//! when transB else 1; conv.py: Conv's W axis 0, ConvTranspose's 1; norm.py: the scale of Layer/Instance/
//! BatchNormalization axis 1; an axis beyond the weight's rank falls back to per tensor, as ORT's
//! `is_tensor_per_channel`). The weight becomes `<w>_quantized`, `<w>_scale`, `<w>_zero_point` (shape [C] per
//! channel) and one `DequantizeLinear` (with `axis` per channel) whose output replaces the weight.

use olive_onnx::graph::{attr_int, node};
use olive_onnx::proto::{NodeProto, TensorProto};
use olive_pass_sdk::Error;

use crate::qtype::{f32_tensor, QType};

/// A quantized initializer: its new tensors, its DequantizeLinear and the scales (one per channel).
pub struct Quantized {
    /// `<w>_quantized`, `<w>_scale`, `<w>_zero_point`.
    pub initializers: Vec<TensorProto>,
    /// `<w>_DequantizeLinear` -> `<w>_DequantizeLinear_Output`.
    pub dq: NodeProto,
    /// The scale of each channel (one for per tensor).
    pub scales: Vec<f32>,
    /// The zero point of each channel (one for per tensor).
    pub zero_points: Vec<f32>,
}

/// The channel axis ORT's QDQ operator gives the initializer at input `slot` of `node` when per_channel is on
/// (`None`: per tensor), for a weight of `rank` dims.
pub fn channel_axis(node: &NodeProto, slot: usize, rank: usize) -> Option<usize> {
    let trans_b = node
        .attribute
        .iter()
        .any(|a| a.name.as_deref() == Some("transB") && a.i == Some(1));
    let axis = match (node.op_type.as_deref().unwrap_or(""), slot) {
        ("MatMul", _) => 1,
        ("Gemm", 1) => usize::from(!trans_b),
        ("Conv", 1) => 0,
        ("ConvTranspose", 1) => 1,
        ("LayerNormalization" | "InstanceNormalization" | "BatchNormalization", 1) => 1,
        _ => return None,
    };
    (axis < rank).then_some(axis)
}

/// Whether ORT's QDQ operator for `op` quantizes an initializer at input `slot` as a weight (`weight_type`); the
/// other initializer inputs it quantizes as activations (operators/matmul.py, gemm.py, conv.py, norm.py).
pub fn is_weight_input(op: &str, slot: usize) -> bool {
    match op {
        "MatMul" => true,
        "Gemm"
        | "Conv"
        | "ConvTranspose"
        | "LayerNormalization"
        | "InstanceNormalization"
        | "BatchNormalization" => slot == 1,
        _ => false,
    }
}

/// The float values of initializer `t`.
pub fn values(t: &TensorProto) -> Result<Vec<f32>, Error> {
    let name = t.name.as_deref().unwrap_or("");
    let value = olive_onnx::rewrite::Value::from_tensor(t)
        .ok_or_else(|| Error::UnsupportedModel(format!("initializer `{name}` cannot be read")))?;
    Ok(value.as_f64().into_iter().map(|v| v as f32).collect())
}

fn min_max(values: impl Iterator<Item = f32>) -> (f32, f32) {
    let (lo, hi) = values.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        (0.0, 0.0)
    } else {
        (lo, hi)
    }
}

/// Quantizes initializer `t` to `wt` (per channel along `axis` when given, else per tensor with `symmetric`), its
/// DequantizeLinear in `domain`.
pub fn quantize(
    t: &TensorProto,
    wt: QType,
    symmetric: bool,
    axis: Option<usize>,
    domain: &str,
) -> Result<Quantized, Error> {
    let w = t.name.clone().unwrap_or_default();
    let data = values(t)?;
    let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    let (q, scales, zero_points, param_dims, attrs) = match axis {
        None => {
            let (lo, hi) = min_max(data.iter().copied());
            let (scale, zp) = wt.params(lo, hi, symmetric);
            (
                wt.quantize(&data, scale, zp),
                vec![scale],
                vec![zp],
                vec![],
                vec![],
            )
        }
        Some(a) => {
            // [outer, channels, inner]
            let (outer, channels) = (dims[..a].iter().product::<usize>(), dims[a]);
            let inner: usize = dims[a + 1..].iter().product();
            let at = |o: usize, c: usize, j: usize| (o * channels + c) * inner + j;
            let mut q = vec![0; data.len()];
            let (mut scales, mut zps) = (Vec::with_capacity(channels), Vec::new());
            for c in 0..channels {
                let channel = || (0..outer).flat_map(move |o| (0..inner).map(move |j| at(o, c, j)));
                let (lo, hi) = min_max(channel().map(|i| data[i]));
                let (scale, zp) = wt.params(lo, hi, true);
                for i in channel() {
                    q[i] = wt.quantize(&[data[i]], scale, zp)[0];
                }
                scales.push(scale);
                zps.push(zp);
            }
            let n = [channels as i64];
            (q, scales, zps, n.to_vec(), vec![attr_int("axis", a as i64)])
        }
    };
    let (qn, s, z) = (
        format!("{w}_quantized"),
        format!("{w}_scale"),
        format!("{w}_zero_point"),
    );
    let zp_values: Vec<i32> = zero_points.iter().map(|&z| z as i32).collect();
    let initializers = vec![
        wt.tensor(&qn, &t.dims, &q),
        f32_tensor(&s, &param_dims, &scales),
        wt.tensor(&z, &param_dims, &zp_values),
    ];
    let out = format!("{w}_DequantizeLinear_Output");
    let dq = node(
        domain,
        "DequantizeLinear",
        &format!("{w}_DequantizeLinear"),
        &[&qn, &s, &z],
        &[&out],
        attrs,
    );
    Ok(Quantized {
        initializers,
        dq,
        scales,
        zero_points,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types;

    #[test]
    fn per_channel_along_the_axis_symmetric() {
        // [2, 3] MatMul weight, axis 1: three channels of two values
        let t = f32_tensor("w", &[2, 3], &[1.0, -3.0, 0.5, -1.0, 4.0, 0.125]);
        let int8 = QType::parse("QInt8", "w", &["QInt8"]).unwrap();
        let q = quantize(&t, int8, false, Some(1), "").unwrap();
        assert_eq!(q.scales, [1.0 / 127.0, 4.0 / 127.0, 0.5 / 127.0]);
        assert_eq!(q.zero_points, [0.0; 3]);
        assert_eq!(
            q.initializers[0].raw_data.as_deref(),
            Some(&[127u8, 161, 127, 129, 127, 32][..])
        );
        assert_eq!(q.initializers[1].dims, [3]);
        assert_eq!(q.dq.attribute[0].i, Some(1));
        let matmul = node("", "MatMul", "m", &["x", "w"], &["y"], vec![]);
        assert_eq!(channel_axis(&matmul, 1, 2), Some(1));
        assert_eq!(channel_axis(&matmul, 1, 1), None);
        let ln = node(
            "",
            "LayerNormalization",
            "n",
            &["x", "g", "b"],
            &["y"],
            vec![],
        );
        assert_eq!(channel_axis(&ln, 1, 1), None);
        let gemm = node(
            "",
            "Gemm",
            "g",
            &["x", "w"],
            &["y"],
            vec![attr_int("transB", 1)],
        );
        assert_eq!(channel_axis(&gemm, 1, 2), Some(0));
        let add = node("", "Add", "a", &["x", "b"], &["y"], vec![]);
        assert_eq!(channel_axis(&add, 1, 2), None);
        // per tensor uint8 asymmetric
        let uint8 = QType::parse("QUInt8", "w", &["QUInt8"]).unwrap();
        let q = quantize(&t, uint8, false, None, "com.microsoft").unwrap();
        assert_eq!(q.initializers[2].data_type, Some(types::UINT8));
        assert!(q.initializers[1].dims.is_empty());
        assert_eq!(q.dq.domain.as_deref(), Some("com.microsoft"));
    }
}
