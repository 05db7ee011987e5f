//! The converter on a hand-built graph: clamping, an initializer only a blocked op reads kept fp32, Casts around the
//! blocked op and at the fp32 graph io, and the element types declared after (ONNX Runtime's results are compared by
//! tests/python/test_float16.py).

use olive_onnx::graph::{node, value_info, Dim};
use olive_onnx::proto::{GraphProto, ModelProto, OperatorSetIdProto};
use olive_onnx::rewrite::Value;
use olive_onnx::tensor::DataType;

use super::{convert, Float16Options, KeepIoTypes};
use crate::dtypes::{self, FLOAT, FLOAT16};

fn model(keep_io: bool) -> (ModelProto, Float16Options) {
    let x = [Dim::Fixed(2)];
    let graph = GraphProto {
        name: Some("g".into()),
        input: vec![value_info("x", DataType::Float, &x)],
        output: vec![value_info("y", DataType::Float, &x)],
        initializer: vec![
            Value::f32(vec![2], vec![1e-9, 1e5]).to_tensor("w"),
            Value::f32(vec![2], vec![0.0, -2e5]).to_tensor("c"),
            Value::f32(vec![2], vec![f32::NAN, -3e-8]).to_tensor("b"),
        ],
        node: vec![
            node("", "Mul", "mul", &["x", "w"], &["a"], vec![]),
            node("", "Max", "max", &["a", "c"], &["m"], vec![]),
            node("", "Add", "add", &["m", "b"], &["y"], vec![]),
        ],
        ..Default::default()
    };
    let m = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(14),
        }],
        graph: Some(graph),
        ..Default::default()
    };
    let o = Float16Options {
        min_positive_val: 1e-7,
        max_finite_val: 1e4,
        keep_io_types: KeepIoTypes::All(keep_io),
        ..Float16Options::default()
    };
    (m, o)
}

fn f16_bits(g: &GraphProto, name: &str) -> Vec<u16> {
    let t = g
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
        .unwrap();
    assert_eq!(t.data_type, Some(FLOAT16), "{name}");
    t.raw_data
        .as_ref()
        .unwrap()
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
}

#[test]
fn blocked_op_and_io_casts_and_clamped_initializers() {
    let (mut m, o) = model(true);
    let report = convert(&mut m, &o).unwrap();
    let g = m.graph.as_ref().unwrap();
    // 1e-9 -> 1e-7 (fp16 subnormal 2 * 2^-24), 1e5 -> 1e4; NaN stays NaN, -3e-8 -> -1e-7.
    let want = |v: f32| half::f16::from_f32(v).to_bits();
    assert_eq!(f16_bits(g, "w"), vec![want(1e-7), want(1e4)]);
    let b = f16_bits(g, "b");
    assert!(half::f16::from_bits(b[0]).is_nan() && b[1] == want(-1e-7));
    // c is read by the blocked Max only: it stays fp32.
    let c = g
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some("c"))
        .unwrap();
    assert_eq!(c.data_type, Some(FLOAT));
    let casts: Vec<(String, String, String, i64)> = g
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("Cast"))
        .map(|n| {
            let to = n.attribute[0].i.unwrap();
            (
                n.name.clone().unwrap(),
                n.input[0].clone(),
                n.output[0].clone(),
                to,
            )
        })
        .collect();
    let mut casts = casts;
    casts.sort();
    let s =
        |a: &str, b: &str, c: &str, t: i32| (a.to_string(), b.to_string(), c.to_string(), t as i64);
    assert_eq!(
        casts,
        vec![
            s("a_cast_to_fp32_node", "a", "a_cast_to_fp32", FLOAT),
            s("graph_input_cast0", "x", "graph_input_cast_0", FLOAT16),
            s("graph_output_cast0", "graph_output_cast_0", "y", FLOAT),
            s("m_cast_to_fp16_node", "m_cast_to_fp16", "m", FLOAT16),
        ]
    );
    assert_eq!(report.casts_added, 4);
    assert_eq!(
        (
            report.nodes_blocked,
            report.initializers_fp16,
            report.initializers_fp32
        ),
        (1, 2, 1)
    );
    let max = g
        .node
        .iter()
        .find(|n| n.name.as_deref() == Some("max"))
        .unwrap();
    assert_eq!(max.input, vec!["a_cast_to_fp32", "c"]);
    let types = dtypes::infer(g);
    for (name, t) in [
        ("a", FLOAT16),
        ("m_cast_to_fp16", FLOAT),
        ("m", FLOAT16),
        ("y", FLOAT),
        ("x", FLOAT),
    ] {
        assert_eq!(types.get(name), Some(&t), "{name}");
    }
    // Sorted: each node after its inputs' producers.
    let pos = |name: &str| {
        g.node
            .iter()
            .position(|n| n.name.as_deref() == Some(name))
            .unwrap()
    };
    assert!(pos("graph_input_cast0") < pos("mul") && pos("max") < pos("m_cast_to_fp16_node"));
}

#[test]
fn without_io_casts_the_graph_io_becomes_fp16() {
    let (mut m, o) = model(false);
    convert(&mut m, &o).unwrap();
    let g = m.graph.as_ref().unwrap();
    assert_eq!(dtypes::declared(&g.input[0]), Some(FLOAT16));
    assert_eq!(dtypes::declared(&g.output[0]), Some(FLOAT16));
    assert_eq!(
        g.node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some("Cast"))
            .count(),
        2
    );
    let bad = Float16Options {
        min_positive_val: 1e-9,
        ..o
    };
    let err = convert(&mut model(false).0, &bad).unwrap_err();
    assert!(err.contains("min_positive_val"), "{err}");
}

#[test]
fn converting_twice_keeps_names_unique() {
    let (mut m, o) = model(true);
    convert(&mut m, &o).unwrap();
    convert(&mut m, &o).unwrap();
    let g = m.graph.as_ref().unwrap();
    let mut names: Vec<&str> = g.node.iter().filter_map(|n| n.name.as_deref()).collect();
    let mut outputs: Vec<&str> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .collect();
    let (n, v) = (names.len(), outputs.len());
    names.sort();
    names.dedup();
    outputs.sort();
    outputs.dedup();
    assert_eq!(
        (names.len(), outputs.len()),
        (n, v),
        "{names:?} {outputs:?}"
    );
    // y is still the fp32 Cast of the fp16 Add.
    let types = dtypes::infer(g);
    let cast = g.node.iter().find(|n| n.output[0] == "y").unwrap();
    assert_eq!(cast.op_type.as_deref(), Some("Cast"));
    let add = g
        .node
        .iter()
        .find(|n| n.name.as_deref() == Some("add"))
        .unwrap();
    assert_eq!(cast.input[0], add.output[0]);
    assert_eq!(types.get(&cast.input[0]), Some(&FLOAT16));
    assert_eq!(types.get("y"), Some(&FLOAT));
}
