//! Tests of the LoRA branch emission and the ExtractAdapters transformation on small hand-built models.

use prost::Message;

use super::*;
use crate::graph::node;
use crate::proto::{
    tensor_shape_proto::dimension::Value as DimValue, type_proto, GraphProto, ValueInfoProto,
};
use crate::tensor::f32_bytes;

const PATH: &str = "/model/layers.0/attn/q_proj";

fn a() -> Vec<f32> {
    // [rank 2, in 4]
    (0..8).map(|i| i as f32 * 0.5).collect()
}

fn b() -> Vec<f32> {
    // [out 3, rank 2]
    (0..6).map(|i| 1.0 - i as f32 * 0.25).collect()
}

fn branch<'a>(a: &'a [f32], b: &'a [f32]) -> LoraBranch<'a> {
    LoraBranch {
        path: PATH,
        in_features: 4,
        out_features: 3,
        rank: 2,
        a,
        b,
        scale: 2.0,
    }
}

/// x [batch, 4] · W [4, 3] + LoRA, written through GraphBuilder (weights in external data), read back.
fn built_model(dir: &Path) -> ModelProto {
    let mut g = GraphBuilder::create(dir, "model.onnx").expect("builder");
    g.input("x", DataType::Float, &[Dim::sym("batch"), Dim::from(4)]);
    let w = g
        .initializer(
            &format!("{}.MatMul.weight", &PATH[1..].replace('/', ".")),
            DataType::Float,
            &[4, 3],
            &f32_bytes(&[0.1; 12]),
        )
        .expect("w");
    let base = g
        .node("", "MatMul", &format!("{PATH}/MatMul"), &["x", &w], vec![])
        .expect("base");
    let (a, b) = (a(), b());
    let out = emit_lora(&mut g, &branch(&a, &b), DataType::Float, "x", &base).expect("lora");
    assert_eq!(out, format!("{PATH}/lora/Add/output_0"));
    g.node_outputs("", "Identity", "/y", &[&out], &["y"], vec![])
        .expect("y");
    g.output("y", DataType::Float, &[Dim::sym("batch"), Dim::from(3)]);
    let path = g.finish(&[("", 21)], "test").expect("finish");
    ModelProto::decode(&*std::fs::read(path).expect("read")).expect("decode")
}

fn dims_of(input: &ValueInfoProto) -> Vec<String> {
    let Some(type_proto::Value::TensorType(t)) =
        input.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        panic!("not a tensor input");
    };
    t.shape
        .as_ref()
        .expect("shape")
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(DimValue::DimValue(v)) => v.to_string(),
            Some(DimValue::DimParam(p)) => p.clone(),
            None => "?".into(),
        })
        .collect()
}

#[test]
fn parameters_fold_the_scale_into_transposed_b() {
    let (a, b) = (a(), b());
    let [pa, pb] = branch(&a, &b).parameters(DataType::Float).expect("params");
    assert_eq!(pa.name, "model.layers.0.attn.q_proj.lora_A.weight");
    assert_eq!(pb.name, "model.layers.0.attn.q_proj.lora_B.weight");
    assert_eq!((pa.dims.clone(), pb.dims.clone()), (vec![4, 2], vec![2, 3]));
    // a_t[i][k] = a[k][i]; b_t[k][o] = scale * b[o][k]
    assert_eq!(pa.raw_data, f32_bytes(&transpose(&a, 2, 4)));
    let b_t: Vec<f32> = transpose(&b, 3, 2).iter().map(|v| v * 2.0).collect();
    assert_eq!(pb.raw_data, f32_bytes(&b_t));
    let [ha, _] = branch(&a, &b).parameters(DataType::Float16).expect("fp16");
    assert_eq!((ha.data_type, ha.raw_data.len()), (10, 16));
    let short = &a[..7];
    assert!(branch(short, &b).parameters(DataType::Float).is_err());
}

#[test]
fn extract_makes_optional_inputs_with_lora_r() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut model = built_model(dir.path());
    let (a, b) = (a(), b());
    let expected = branch(&a, &b).parameters(DataType::Float).expect("params");

    let params = extract_adapters(&mut model, dir.path()).expect("extract");
    assert_eq!(
        params,
        expected.to_vec(),
        "values read back from external data"
    );

    let graph = model.graph.as_ref().expect("graph");
    let inputs: Vec<(&str, Vec<String>)> = graph
        .input
        .iter()
        .map(|i| (i.name.as_deref().unwrap_or(""), dims_of(i)))
        .collect();
    assert_eq!(
        inputs,
        [
            ("x", vec!["batch".to_string(), "4".into()]),
            (
                "model.layers.0.attn.q_proj.lora_A.weight",
                vec!["4".into(), LORA_R.into()]
            ),
            (
                "model.layers.0.attn.q_proj.lora_B.weight",
                vec![LORA_R.into(), "3".into()]
            ),
        ]
    );
    let default = |name: &str| {
        graph
            .initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(name))
            .expect(name)
    };
    let da = default("model.layers.0.attn.q_proj.lora_A.weight");
    let db = default("model.layers.0.attn.q_proj.lora_B.weight");
    assert_eq!((da.dims.clone(), db.dims.clone()), (vec![4, 0], vec![0, 3]));
    assert_eq!(
        (da.raw_data.as_deref(), da.data_location),
        (Some(&[][..]), None)
    );
    assert_eq!(graph.initializer.len(), 3, "the base weight stays");

    // Running it again finds the weights already inputs: nothing extracted, nothing listed twice.
    assert!(extract_adapters(&mut model, dir.path())
        .expect("again")
        .is_empty());
    assert_eq!(model.graph.as_ref().expect("graph").input.len(), 3);
}

/// A graph with LoRA nodes named as genai's builder names them, weights inline (float_data).
fn named_model(a_node: &str, b_node: &str, a_init: &str, b_init: &str) -> ModelProto {
    let init = |name: &str, dims: &[i64], values: &[f32]| TensorProto {
        name: Some(name.into()),
        data_type: Some(1),
        dims: dims.to_vec(),
        float_data: values.to_vec(),
        ..Default::default()
    };
    ModelProto {
        graph: Some(GraphProto {
            node: vec![
                node("", "MatMul", a_node, &["x", a_init], &["xa"], vec![]),
                node("", "MatMul", b_node, &["xa", b_init], &["y"], vec![]),
                node(
                    "",
                    "MatMul",
                    "/model/layers.0/mlp/down_proj/MatMul",
                    &["x", "other"],
                    &["z"],
                    vec![],
                ),
            ],
            initializer: vec![
                init(a_init, &[4, 2], &[1.0; 8]),
                init(b_init, &[2, 3], &[2.0; 6]),
                init("other", &[4, 4], &[0.0; 16]),
            ],
            input: vec![value_info(
                "x",
                DataType::Float,
                &[Dim::from(1), Dim::from(4)],
            )],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn extract_renames_genai_names_and_keeps_final_ones() {
    for (a_node, b_node, a_init, b_init, prefix) in [
        (
            "/model/layers.1/mlp/up_proj/lora_A/MatMul",
            "/model/layers.1/mlp/up_proj/lora_B/MatMul",
            "model.layers.1.mlp.up_proj.lora_A.MatMul.weight",
            "model.layers.1.mlp.up_proj.lora_B.MatMul.weight",
            "model.layers.1.mlp.up_proj",
        ),
        (
            "/model/layers.0/attn/o_proj/lora_A/MatMul",
            "/model/layers.0/attn/o_proj/lora_B/MatMul",
            "model.layers.0.attn.o_proj.lora_A.weight",
            "model.layers.0.attn.o_proj.lora_B.weight",
            "model.layers.0.attn.o_proj",
        ),
    ] {
        let mut model = named_model(a_node, b_node, a_init, b_init);
        let params = extract_adapters(&mut model, Path::new(".")).expect("extract");
        let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
        let (want_a, want_b) = (
            format!("{prefix}.lora_A.weight"),
            format!("{prefix}.lora_B.weight"),
        );
        assert_eq!(names, [want_a.as_str(), want_b.as_str()]);
        assert_eq!(params[0].raw_data, f32_bytes(&[1.0; 8]), "float_data read");
        let graph = model.graph.as_ref().expect("graph");
        assert_eq!(graph.node[0].input[1], want_a, "node input renamed");
        assert_eq!(graph.node[1].input[1], want_b);
        assert_eq!(
            graph.node[2].input[1], "other",
            "a plain MatMul is left alone"
        );
        assert_eq!(graph.input.len(), 3);
    }
}

#[test]
fn external_data_that_is_missing_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut model = built_model(dir.path());
    std::fs::remove_file(dir.path().join("model.onnx.data")).expect("rm");
    let text = extract_adapters(&mut model, dir.path())
        .expect_err("no data")
        .to_string();
    assert!(text.contains("model.onnx.data"), "{text}");
}

#[test]
fn extract_folder_links_files_and_writes_the_adapter() {
    let src = tempfile::tempdir().expect("src");
    let out = tempfile::tempdir().expect("out");
    built_model(src.path());
    std::fs::write(src.path().join("genai_config.json"), "{}").expect("config");
    let n =
        extract_adapters_folder(src.path(), "model.onnx", &out.path().join("m")).expect("extract");
    assert_eq!(n, 2);
    let dir = out.path().join("m");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ADAPTER_FILE,
            "genai_config.json",
            "model.onnx",
            "model.onnx.data"
        ]
    );
    let adapter = Adapter::read(&dir.join(ADAPTER_FILE)).expect("adapter");
    assert_eq!(adapter.parameters.len(), 2);
    let model =
        ModelProto::decode(&*std::fs::read(dir.join("model.onnx")).expect("read")).expect("decode");
    assert_eq!(model.graph.expect("graph").input.len(), 3);
    assert!(
        extract_adapters_folder(src.path(), "model.onnx", src.path()).is_err(),
        "never in place"
    );
    // the source model is untouched
    let source = ModelProto::decode(&*std::fs::read(src.path().join("model.onnx")).expect("read"))
        .expect("decode");
    assert_eq!(source.graph.expect("graph").input.len(), 1);
}
