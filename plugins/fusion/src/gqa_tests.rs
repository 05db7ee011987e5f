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
