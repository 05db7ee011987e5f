//! Element types of a graph's tensors without shape inference: graph inputs, initializers and value_info as
//! declared, then each node's outputs by the ONNX operator's type rule (Cast's `to`, Shape → int64, comparisons
//! and logic → bool, Where → its second input's, QuantizeLinear → its zero point's, DequantizeLinear → float, and for
//! the rest the type of the first input known), in graph order (ONNX requires topological order).

use std::collections::HashMap;

use olive_onnx::proto::{type_proto, GraphProto, TensorProto, ValueInfoProto};

/// ONNX TensorProto.DataType codes used here.
pub const FLOAT: i32 = 1;
/// uint8.
pub const UINT8: i32 = 2;
/// int8.
pub const INT8: i32 = 3;
/// uint16.
pub const UINT16: i32 = 4;
/// int16.
pub const INT16: i32 = 5;
/// int32.
pub const INT32: i32 = 6;
/// int64.
pub const INT64: i32 = 7;
/// bool.
pub const BOOL: i32 = 9;

fn declared(vi: &ValueInfoProto) -> Option<i32> {
    match vi.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => t.elem_type.filter(|&e| e != 0),
        _ => None,
    }
}

fn attr_type(node: &olive_onnx::proto::NodeProto, name: &str) -> Option<i32> {
    let a = node
        .attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))?;
    if let Some(t) = &a.t {
        return t.data_type;
    }
    a.i.map(|v| v as i32)
}

/// The element type of every tensor whose type is known or follows from the rules above.
pub fn element_types(graph: &GraphProto) -> HashMap<String, i32> {
    let mut types: HashMap<String, i32> = HashMap::new();
    let tensor = |t: &TensorProto| Some((t.name.clone()?, t.data_type?));
    types.extend(graph.initializer.iter().filter_map(tensor));
    for vi in graph
        .input
        .iter()
        .chain(&graph.value_info)
        .chain(&graph.output)
    {
        if let (Some(name), Some(t)) = (&vi.name, declared(vi)) {
            types.insert(name.clone(), t);
        }
    }
    for node in &graph.node {
        let op = node.op_type.as_deref().unwrap_or("");
        let input = |k: usize| {
            node.input
                .get(k)
                .filter(|n| !n.is_empty())
                .and_then(|n| types.get(n).copied())
        };
        let out = match op {
            "Cast" => attr_type(node, "to"),
            "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" => Some(INT64),
            "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or"
            | "Not" | "Xor" | "IsNaN" | "IsInf" => Some(BOOL),
            "ConstantOfShape" => attr_type(node, "value").or(Some(FLOAT)),
            "Constant" => attr_type(node, "value"),
            "Where" => input(1).or(input(2)),
            "QuantizeLinear" => input(2).or(Some(UINT8)),
            "DequantizeLinear" => Some(FLOAT),
            _ => (0..node.input.len()).find_map(input),
        };
        if let Some(t) = out {
            for name in node.output.iter().filter(|n| !n.is_empty()) {
                types.entry(name.clone()).or_insert(t);
            }
        }
    }
    types
}

#[cfg(test)]
mod tests {
    use super::*;
    use olive_onnx::graph::{attr_int, node, value_info, Dim};
    use olive_onnx::tensor::DataType;

    #[test]
    fn follows_casts_shapes_and_comparisons() {
        let graph = GraphProto {
            input: vec![value_info("ids", DataType::Int64, &[Dim::Fixed(4)])],
            node: vec![
                node("", "Cast", "c", &["ids"], &["f"], vec![attr_int("to", 1)]),
                node("", "Shape", "s", &["f"], &["shape"], vec![]),
                node("", "Mul", "m", &["shape", "shape"], &["m"], vec![]),
                node("", "Equal", "e", &["m", "m"], &["b"], vec![]),
                node("", "Relu", "r", &["f"], &["y"], vec![]),
            ],
            ..Default::default()
        };
        let t = element_types(&graph);
        assert_eq!(
            (t["f"], t["shape"], t["m"], t["b"], t["y"]),
            (FLOAT, INT64, INT64, BOOL, FLOAT)
        );
    }
}
