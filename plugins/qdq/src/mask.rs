//! Attention-mask fills kept through QDQ. transformers' eager attention adds `Where(mask, 0, finfo(float32).min)`
//! to the scores before Softmax. Quantized as calibrated, the fill is lost both ways: calibration without padding
//! sees the Where output as [0, 0], so -3.4e38 saturates to 0 and padded positions are attended; calibration with
//! padding stretches the ranges to 3.4e38, so every real score quantizes to one value. Instead, the tensors from
//! such a Where to the Softmax inputs (through Add/Sub/Expand/Reshape/... , see [`PATH_OPS`]) get the range
//! floor [`MASK_FLOOR`]: their minimum is `-MASK_FLOOR` (or below, if calibration saw finite values below it);
//! a fill then saturates to `-MASK_FLOOR`, ~100 below the real scores, so padded positions get a Softmax weight of
//! ~e^-100 (none), while the real scores keep a fine resolution (uint16: ~110 / 65535). onnxruntime's
//! quantize_static has no such step; OnnxStaticQuantization does it by default for 16-bit activations
//! (`keep_attention_mask`).
//! A calibrated minimum below -1e30 anywhere else (a fill reaching another tensor) is floored the same way.

use std::collections::{HashMap, HashSet};

use olive_onnx::proto::GraphProto;

use crate::weights;

/// The magnitude a mask fill is quantized to.
pub const MASK_FLOOR: f32 = 100.0;

/// Values at or below this are fills (float32's lowest is -3.4e38), not data.
const FILL: f32 = -1e30;

/// Ops a mask passes through on its way to the Softmax.
pub const PATH_OPS: &[&str] = &[
    "Add",
    "Sub",
    "Expand",
    "Reshape",
    "Unsqueeze",
    "Squeeze",
    "Transpose",
    "Slice",
    "Cast",
    "Where",
    "Concat",
];

/// The tensors from each Where with a fill constant (an initializer holding a value <= -1e30) up to (and
/// including) the Softmax inputs.
pub fn fill_paths(graph: &GraphProto) -> HashSet<String> {
    let fills: HashSet<&str> = graph
        .initializer
        .iter()
        .filter(|t| {
            t.data_type == Some(crate::types::FLOAT)
                && weights::values(t).is_ok_and(|v| v.iter().any(|&x| x <= FILL))
        })
        .filter_map(|t| t.name.as_deref())
        .collect();
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for input in &n.input {
            consumers.entry(input.as_str()).or_default().push(i);
        }
    }
    let mut paths = HashSet::new();
    let mut todo: Vec<String> = graph
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("Where"))
        .filter(|n| n.input.iter().skip(1).any(|i| fills.contains(i.as_str())))
        .filter_map(|n| n.output.first().cloned())
        .collect();
    while let Some(t) = todo.pop() {
        if !paths.insert(t.clone()) {
            continue;
        }
        for &i in consumers.get(t.as_str()).into_iter().flatten() {
            let n = &graph.node[i];
            if PATH_OPS.contains(&n.op_type.as_deref().unwrap_or("")) {
                todo.extend(n.output.first().cloned());
            }
        }
    }
    paths
}

/// Floors the calibrated ranges: tensors on a fill path reach down to `-MASK_FLOOR`; any minimum below -1e30 is
/// `-MASK_FLOOR`. Returns how many ranges changed.
pub fn floor_ranges(ranges: &mut HashMap<String, (f32, f32)>, paths: &HashSet<String>) -> usize {
    let mut changed = 0;
    for (t, (lo, _)) in ranges.iter_mut() {
        let floored = if *lo <= FILL {
            -MASK_FLOOR
        } else if paths.contains(t) {
            lo.min(-MASK_FLOOR)
        } else {
            *lo
        };
        if floored != *lo {
            *lo = floored;
            changed += 1;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qtype::f32_tensor;
    use olive_onnx::graph::node;

    #[test]
    fn the_fill_path_reaches_the_softmax_inputs_only() {
        let graph = GraphProto {
            node: vec![
                node("", "Where", "w", &["c", "zero", "fill"], &["m"], vec![]),
                node("", "MatMul", "qk", &["q", "k"], &["s"], vec![]),
                node("", "Add", "add", &["s", "m"], &["sm"], vec![]),
                node("", "Softmax", "sm", &["sm"], &["p"], vec![]),
                node("", "MatMul", "pv", &["p", "v"], &["o"], vec![]),
            ],
            initializer: vec![
                f32_tensor("zero", &[], &[0.0]),
                f32_tensor("fill", &[], &[f32::MIN]),
            ],
            ..Default::default()
        };
        let paths = fill_paths(&graph);
        let mut want: Vec<&str> = paths.iter().map(String::as_str).collect();
        want.sort();
        assert_eq!(want, ["m", "sm"]);
        let mut ranges: HashMap<String, (f32, f32)> = [
            ("m".to_string(), (0.0, 0.0)),
            ("sm".to_string(), (-12.0, 9.0)),
            ("s".to_string(), (-12.0, 9.0)),
            ("x".to_string(), (f32::MIN, 3.0)),
        ]
        .into_iter()
        .collect();
        assert_eq!(floor_ranges(&mut ranges, &paths), 3);
        assert_eq!(ranges["m"], (-MASK_FLOOR, 0.0));
        assert_eq!(ranges["sm"], (-MASK_FLOOR, 9.0));
        assert_eq!(ranges["s"], (-12.0, 9.0));
        assert_eq!(ranges["x"], (-MASK_FLOOR, 3.0));
    }
}
