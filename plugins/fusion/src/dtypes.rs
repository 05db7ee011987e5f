//! Element-type inference over an ONNX graph (the type half of ONNX shape inference and of ONNX Runtime's
//! symbolic_shape_infer.py, which the fp16 converter needs): each node output gets its `TensorProto.DataType` from
//! the op's type rule (Cast's `to`, comparisons -> bool, Shape -> int64, com.microsoft ops such as
//! EmbedLayerNormalization's int32 mask index, ...), and otherwise, for ops of the ONNX and com.microsoft domains,
//! the type of its first input, as most of them (elementwise, MatMul, Reshape, Softmax, the fused transformer ops)
//! have. Ops of other domains (ai.onnx.ml: maps, labels) and sequence/optional ops stay unknown.

use std::collections::HashMap;

use olive_onnx::proto::{type_proto, GraphProto, NodeProto, ValueInfoProto};

use crate::graph::{attr_i, find_attr};

/// `TensorProto.DataType` codes used here.
pub const FLOAT: i32 = 1;
pub const UINT8: i32 = 2;
pub const INT32: i32 = 6;
pub const INT64: i32 = 7;
pub const BOOL: i32 = 9;
pub const FLOAT16: i32 = 10;

/// The tensor element type a value info declares.
pub fn declared(v: &ValueInfoProto) -> Option<i32> {
    match v.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => t.elem_type.filter(|&e| e != 0),
        _ => None,
    }
}

/// The element type of every value of `graph` that can be told: graph inputs, outputs, value_info and
/// initializers as declared, node outputs by their op's rule (declared types win).
pub fn infer(graph: &GraphProto) -> HashMap<String, i32> {
    let mut types: HashMap<String, i32> = HashMap::new();
    for v in graph
        .input
        .iter()
        .chain(&graph.output)
        .chain(&graph.value_info)
    {
        if let (Some(name), Some(t)) = (&v.name, declared(v)) {
            types.insert(name.clone(), t);
        }
    }
    for t in &graph.initializer {
        if let (Some(name), Some(d)) = (&t.name, t.data_type) {
            types.insert(name.clone(), d);
        }
    }
    // Rounds until nothing new: one round when the nodes are sorted.
    loop {
        let mut learned = false;
        for n in &graph.node {
            for (k, o) in n.output.iter().enumerate() {
                if o.is_empty() || types.contains_key(o) {
                    continue;
                }
                if let Some(t) = output_type(n, k, &types) {
                    types.insert(o.clone(), t);
                    learned = true;
                }
            }
        }
        if !learned {
            return types;
        }
    }
}

/// The element type of output `k` of `n`, given the types known so far.
fn output_type(n: &NodeProto, k: usize, types: &HashMap<String, i32>) -> Option<i32> {
    let input = |i: usize| {
        n.input
            .get(i)
            .filter(|s| !s.is_empty())
            .and_then(|s| types.get(s))
            .copied()
    };
    let dtype_or = |default: Option<i32>| attr_i(n, "dtype").map(|t| t as i32).or(default);
    let ms = n.domain.as_deref() == Some(crate::graph::MS_DOMAIN);
    let onnx = matches!(n.domain.as_deref(), None | Some("") | Some("ai.onnx"));
    let op = n.op_type.as_deref().unwrap_or("");
    if !(ms || onnx)
        || op.starts_with("Sequence")
        || op.starts_with("Optional")
        || op.ends_with("Sequence")
    {
        return None;
    }
    match (op, k) {
        ("If" | "Loop" | "Scan", _) => None,
        ("Cast", _) => attr_i(n, "to").map(|t| t as i32),
        ("CastLike", _) => input(1),
        ("Constant", _) => constant_type(n),
        ("ConstantOfShape", _) => Some(
            find_attr(n, "value")
                .and_then(|a| a.t.as_ref())
                .and_then(|t| t.data_type)
                .unwrap_or(FLOAT),
        ),
        ("Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" | "NonMaxSuppression", _) => {
            Some(INT64)
        }
        (
            "Equal" | "Greater" | "Less" | "GreaterOrEqual" | "LessOrEqual" | "And" | "Or" | "Not"
            | "Xor" | "IsNaN" | "IsInf" | "RegexFullMatch",
            _,
        ) => Some(BOOL),
        ("StringSplit", 1) => Some(INT64),
        ("BlackmanWindow" | "HannWindow" | "HammingWindow" | "MelWeightMatrix", _) => {
            Some(attr_i(n, "output_datatype").map_or(FLOAT, |t| t as i32))
        }
        ("TopK" | "MaxPool", 1) => Some(INT64),
        ("Unique", 1..) => Some(INT64),
        ("Dropout", 1) => Some(BOOL),
        ("Where", _) => input(1),
        ("OneHot", _) => input(2),
        ("QuantizeLinear", _) => input(2)
            .or_else(|| attr_i(n, "output_dtype").map(|t| t as i32))
            .or(Some(UINT8)),
        ("DequantizeLinear", _) => input(1),
        ("DynamicQuantizeLinear", 1) => Some(FLOAT),
        ("DynamicQuantizeLinear", _) => Some(UINT8),
        ("MatMulInteger" | "ConvInteger", _) => Some(INT32),
        ("QLinearMatMul" | "QLinearConv", _) => input(7),
        ("LayerNormalization" | "SimplifiedLayerNormalization", 1..) => {
            Some(attr_i(n, "stash_type").map_or(FLOAT, |t| t as i32))
        }
        ("SkipLayerNormalization" | "SkipSimplifiedLayerNormalization", 1 | 2) if ms => Some(FLOAT),
        ("EmbedLayerNormalization", 1) if ms => Some(INT32),
        ("EmbedLayerNormalization", _) if ms => input(2),
        ("MatMulIntegerToFloat", _) if ms => input(2),
        ("GatherBlockQuantized", _) if ms => input(2),
        ("RandomNormal" | "RandomUniform", _) => dtype_or(Some(FLOAT)),
        ("Multinomial", _) => dtype_or(Some(INT32)),
        ("RandomNormalLike" | "RandomUniformLike" | "EyeLike" | "Bernoulli", _) => {
            dtype_or(input(0))
        }
        _ => input(0),
    }
}

/// A Constant node's element type from its value attribute.
fn constant_type(n: &NodeProto) -> Option<i32> {
    let a = n.attribute.first()?;
    match a.name.as_deref()? {
        "value" => a.t.as_ref()?.data_type,
        "value_float" | "value_floats" => Some(FLOAT),
        "value_int" | "value_ints" => Some(INT64),
        "value_string" | "value_strings" => Some(8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use olive_onnx::graph::{attr_int, node, value_info, Dim};
    use olive_onnx::proto::GraphProto;
    use olive_onnx::tensor::DataType;

    use super::{infer, BOOL, FLOAT, INT32, INT64};
    use crate::graph::MS_DOMAIN;

    #[test]
    fn rules_defaults_and_unknown_domains() {
        let g = GraphProto {
            input: vec![
                value_info("x", DataType::Float, &[Dim::Fixed(2)]),
                value_info("ids", DataType::Int64, &[Dim::Fixed(2)]),
            ],
            node: vec![
                node("", "Shape", "s", &["x"], &["shape"], vec![]),
                node("", "Less", "l", &["x", "x"], &["less"], vec![]),
                node(
                    "",
                    "Cast",
                    "c",
                    &["less"],
                    &["as_int"],
                    vec![attr_int("to", 6)],
                ),
                node("", "Where", "w", &["less", "x", "x"], &["picked"], vec![]),
                node("", "Softmax", "sm", &["picked"], &["soft"], vec![]),
                node(
                    MS_DOMAIN,
                    "EmbedLayerNormalization",
                    "e",
                    &["ids", "ids", "x"],
                    &["emb", "mask"],
                    vec![],
                ),
                node(
                    "",
                    "LayerNormalization",
                    "ln",
                    &["x", "x", "x"],
                    &["y", "mean"],
                    vec![],
                ),
                node(
                    "ai.onnx.ml",
                    "LabelEncoder",
                    "le",
                    &["ids"],
                    &["labels"],
                    vec![],
                ),
                node("", "Shape", "after", &["late"], &["late_shape"], vec![]),
                node("", "Identity", "late", &["soft"], &["late"], vec![]),
            ],
            ..Default::default()
        };
        let t = infer(&g);
        let get = |n: &str| t.get(n).copied();
        assert_eq!(get("shape"), Some(INT64));
        assert_eq!(get("less"), Some(BOOL));
        assert_eq!(get("as_int"), Some(INT32));
        assert_eq!(get("picked"), Some(FLOAT));
        assert_eq!(get("soft"), Some(FLOAT));
        assert_eq!((get("emb"), get("mask")), (Some(FLOAT), Some(INT32)));
        assert_eq!((get("y"), get("mean")), (Some(FLOAT), Some(FLOAT)));
        assert_eq!(get("labels"), None, "ai.onnx.ml ops are not guessed");
        // Unsorted graphs settle in more rounds.
        assert_eq!((get("late"), get("late_shape")), (Some(FLOAT), Some(INT64)));
    }
}
