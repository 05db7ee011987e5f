//! Unit tests of the GroupQueryAttention decomposition: plain ops with the outputs' names, refusals naming the node.

use super::*;
use olive_onnx::graph::attr_float;
use olive_onnx::proto::OperatorSetIdProto;

fn model(attrs: Vec<olive_onnx::proto::AttributeProto>, opset: i64) -> ModelProto {
    let mut gqa = node(
        MS_DOMAIN,
        "GroupQueryAttention",
        "/attn/GroupQueryAttention",
        &[
            "qkv",
            "",
            "",
            "past_key",
            "past_value",
            "seqlens_k",
            "total",
            "",
            "",
        ],
        &["out", "present_key", "present_value"],
        attrs,
    );
    gqa.domain = Some(MS_DOMAIN.into());
    let past = olive_onnx::graph::value_info(
        "past_key",
        DataType::Float,
        &[
            olive_onnx::graph::Dim::sym("b"),
            2.into(),
            olive_onnx::graph::Dim::sym("p"),
            16.into(),
        ],
    );
    ModelProto {
        ir_version: Some(10),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(GraphProto {
            node: vec![gqa],
            input: vec![past],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn heads() -> Vec<olive_onnx::proto::AttributeProto> {
    vec![attr_int("num_heads", 4), attr_int("kv_num_heads", 2)]
}

#[test]
fn writes_plain_ops_keeping_the_output_names() {
    let mut m = model(heads(), 17);
    assert_eq!(decompose(&mut m).unwrap(), 1);
    let g = m.graph.unwrap();
    assert!(g
        .node
        .iter()
        .all(|n| n.domain.as_deref().unwrap_or("").is_empty()));
    let outputs: HashSet<&str> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .collect();
    assert!(["out", "present_key", "present_value"]
        .iter()
        .all(|o| outputs.contains(o)));
    assert_eq!(
        g.node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some("ScatterElements"))
            .count(),
        2
    );
}

#[test]
fn refuses_what_it_cannot_write_naming_the_node() {
    let mut attrs = heads();
    attrs.push(attr_float("softcap", 30.0));
    let err = decompose(&mut model(attrs, 17)).unwrap_err();
    assert!(
        err.contains("/attn/GroupQueryAttention: GroupQueryAttention attribute softcap = 30"),
        "{err}"
    );
    let err = decompose(&mut model(heads(), 11)).unwrap_err();
    assert!(err.contains("opset 11"), "{err}");
    let err = decompose(&mut model(
        vec![attr_int("num_heads", 4), attr_int("kv_num_heads", 3)],
        17,
    ))
    .unwrap_err();
    assert!(
        err.contains("kv_num_heads must be positive and divide num_heads (4)"),
        "{err}"
    );
}

fn fixed_input(name: &str, dtype: DataType, dims: &[i64]) -> ValueInfoProto {
    let dims: Vec<olive_onnx::graph::Dim> = dims
        .iter()
        .map(|&d| olive_onnx::graph::Dim::Fixed(d))
        .collect();
    olive_onnx::graph::value_info(name, dtype, &dims)
}

#[test]
fn static_kv_concats_the_cache_masks_with_attention_mask_and_adds_position_ids() {
    let mut m = model(heads(), 17);
    let g = m.graph.as_mut().unwrap();
    g.input = vec![
        fixed_input("past_key", DataType::Float, &[1, 2, 6, 16]),
        fixed_input("past_value", DataType::Float, &[1, 2, 6, 16]),
        fixed_input(static_kv::ATTENTION_MASK, DataType::Int64, &[1, 8]),
    ];
    let c = DecomposeConfig {
        static_kv: true,
        mask_value: Some(-100.0),
        ..Default::default()
    };
    assert_eq!(decompose_with(&mut m, &c).unwrap(), 1);
    let g = m.graph.unwrap();
    let ops: Vec<&str> = g.node.iter().filter_map(|n| n.op_type.as_deref()).collect();
    for op in ["Concat", "And", "Where", "Softmax"] {
        assert!(ops.contains(&op), "{op} missing from {ops:?}");
    }
    for op in [
        "ScatterElements",
        "Range",
        "ConstantOfShape",
        "GroupQueryAttention",
    ] {
        assert!(!ops.contains(&op), "{op} in {ops:?}");
    }
    let concat = g.node.iter().find(|n| n.output == ["present_key"]).unwrap();
    assert_eq!(concat.op_type.as_deref(), Some("Concat"));
    // Causal part: 2 query rows per kv head group x 2 new tokens, 8 keys; row 0 (token 0 at slot 6) sees 0..=6.
    let causal = g
        .initializer
        .iter()
        .find(|t| t.name.as_deref().unwrap_or("").contains("causal"))
        .unwrap();
    assert_eq!(causal.dims, [4, 8]);
    let raw = causal.raw_data.as_deref().unwrap();
    assert_eq!(&raw[..8], &[1, 1, 1, 1, 1, 1, 1, 0]);
    assert_eq!(&raw[8..16], &[1; 8]);
    assert_eq!(&raw[16..24], &[1, 1, 1, 1, 1, 1, 1, 0]);
    let positions = g
        .input
        .iter()
        .find(|i| i.name.as_deref() == Some(static_kv::POSITION_IDS));
    assert!(positions.is_some());
}

#[test]
fn static_kv_needs_fixed_shapes() {
    let mut m = model(heads(), 17);
    let c = DecomposeConfig {
        static_kv: true,
        ..Default::default()
    };
    let e = decompose_with(&mut m, &c).unwrap_err();
    assert!(
        e.contains("static_kv needs the graph input `attention_mask`"),
        "{e}"
    );
    m.graph
        .as_mut()
        .unwrap()
        .input
        .push(olive_onnx::graph::value_info(
            static_kv::ATTENTION_MASK,
            DataType::Int64,
            &[olive_onnx::graph::Dim::sym("batch"), 8.into()],
        ));
    let e = decompose_with(&mut m, &c).unwrap_err();
    assert!(
        e.contains("graph input `attention_mask` has a symbolic dim (run DynamicToFixedShape"),
        "{e}"
    );
}
