//! Unit tests: each pattern on a small hand-built graph, and the passes through the test host (outputs' numerics
//! are checked against ONNX Runtime by tests/python/test_fusion.py).

use olive_onnx::graph::{attr_int, attr_ints, attr_tensor, node, value_info, Dim};
use olive_onnx::proto::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto};
use olive_onnx::rewrite::Value;
use olive_onnx::tensor::DataType;
use olive_pass_sdk::testing::TestHost;
use olive_pass_sdk::{kinds, ErrorKind, Model};

use crate::graph::Rewriter;
use crate::transformers::{optimize, Options};

fn graph(
    inputs: &[(&str, &[i64])],
    inits: Vec<(&str, Value)>,
    nodes: Vec<NodeProto>,
    outputs: &[&str],
) -> GraphProto {
    let dims = |d: &[i64]| -> Vec<Dim> {
        d.iter()
            .map(|&v| if v < 0 { Dim::sym("b") } else { Dim::Fixed(v) })
            .collect()
    };
    GraphProto {
        name: Some("g".into()),
        input: inputs
            .iter()
            .map(|(n, d)| value_info(n, DataType::Float, &dims(d)))
            .collect(),
        initializer: inits.into_iter().map(|(n, v)| v.to_tensor(n)).collect(),
        node: nodes,
        output: outputs
            .iter()
            .map(|n| value_info(n, DataType::Float, &[]))
            .collect(),
        ..Default::default()
    }
}

fn n(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    node("", op, output, inputs, &[output], vec![])
}

fn scalar(v: f32) -> Value {
    Value::f32(vec![], vec![v])
}

fn ops(g: &GraphProto) -> Vec<String> {
    g.node
        .iter()
        .map(|n| n.op_type.clone().unwrap_or_default())
        .collect()
}

fn model(g: GraphProto) -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(14),
        }],
        graph: Some(g),
        ..Default::default()
    }
}

#[test]
fn peephole_folds_constants_and_removes_identity_cast_and_dead_nodes() {
    let shape_const = node(
        "",
        "Constant",
        "c",
        &[],
        &["c"],
        vec![attr_tensor(
            "value",
            Value::i64(vec![1], vec![0]).to_tensor(""),
        )],
    );
    let mut g = graph(
        &[("x", &[2, 3])],
        vec![
            ("w", Value::f32(vec![3], vec![1.0, 2.0, 3.0])),
            ("minus1", Value::i64(vec![1], vec![-1])),
        ],
        vec![
            shape_const,
            n("Shape", &["x"], "s"),               // [2, 3], static
            n("Gather", &["s", "c"], "s0"),        // [2]
            n("Concat", &["s0", "minus1"], "cat"), // [2, -1]
            n("Identity", &["x"], "xi"),
            node(
                "",
                "Cast",
                "cast",
                &["xi"],
                &["xc"],
                vec![attr_int("to", 1)],
            ), // float -> float
            n("Add", &["xc", "w"], "sum"),
            n("Reshape", &["sum", "cat"], "y0"),
            n("Identity", &["y0"], "y"),
            n("Neg", &["x"], "unused"),
        ],
        &["y"],
    );
    g.node[3].attribute.push(attr_int("axis", 0));
    let done = crate::peephole::optimize(&mut g).unwrap();
    assert_eq!(ops(&g), ["Add", "Reshape"], "{done:?}");
    assert_eq!(g.node[0].input, ["x", "w"]);
    assert_eq!(g.node[1].output, ["y"], "the graph output keeps its name");
    let cat = g
        .initializer
        .iter()
        .find(|t| Some(&g.node[1].input[1]) == t.name.as_ref())
        .unwrap();
    assert_eq!(
        Value::from_tensor(cat),
        Some(Value::i64(vec![2], vec![2, -1]))
    );
    assert_eq!(done.dead, 1);
    assert_eq!((done.folded, done.bypassed), (4, 3), "{done:?}");
}

fn layer_norm_nodes(x: &str, out: &str) -> Vec<NodeProto> {
    vec![
        node(
            "",
            "ReduceMean",
            "rm1",
            &[x],
            &["m"],
            vec![attr_ints("axes", &[-1])],
        ),
        n("Sub", &[x, "m"], "d"),
        n("Pow", &["d", "two"], "d2"),
        node(
            "",
            "ReduceMean",
            "rm2",
            &["d2"],
            &["v"],
            vec![attr_ints("axes", &[-1])],
        ),
        n("Add", &["v", "eps"], "ve"),
        n("Sqrt", &["ve"], "sd"),
        n("Div", &["d", "sd"], "nrm"),
        n("Mul", &["nrm", "gamma"], "sc"),
        n("Add", &["sc", "beta"], out),
    ]
}

fn norm_inits() -> Vec<(&'static str, Value)> {
    vec![
        ("two", scalar(2.0)),
        ("eps", scalar(1e-12)),
        ("gamma", Value::f32(vec![4], vec![1.0; 4])),
        ("beta", Value::f32(vec![4], vec![0.5; 4])),
        ("w", Value::f32(vec![4, 4], vec![0.1; 16])),
        ("bias", Value::f32(vec![4], vec![0.2; 4])),
    ]
}

#[test]
fn layer_norm_and_skip_layer_norm_with_bias() {
    let mut nodes = vec![
        n("MatMul", &["x", "w"], "mm"),
        n("Add", &["bias", "mm"], "dense"),
        n("Add", &["dense", "res"], "sum"),
    ];
    nodes.extend(layer_norm_nodes("sum", "y"));
    let mut m = model(graph(
        &[("x", &[-1, 5, 4]), ("res", &[-1, 5, 4])],
        norm_inits(),
        nodes,
        &["y"],
    ));
    let counts = optimize(&mut m, &Options::default()).unwrap();
    let g = m.graph.as_ref().unwrap();
    assert_eq!((counts.layer_norm, counts.skip_layer_norm), (1, 1));
    assert_eq!(ops(g), ["MatMul", "SkipLayerNormalization"]);
    let sln = &g.node[1];
    assert_eq!(sln.domain.as_deref(), Some("com.microsoft"));
    assert_eq!(sln.input, ["mm", "res", "gamma", "beta", "bias"]);
    assert_eq!(sln.output, ["y"]);
    assert!((sln.attribute[0].f.unwrap() - 1e-12).abs() < 1e-15);
    assert!(m
        .opset_import
        .iter()
        .any(|o| o.domain.as_deref() == Some("com.microsoft")));

    // The centred value is also a graph output: the layer norm cannot be fused.
    let mut g = graph(
        &[("x", &[-1, 5, 4])],
        norm_inits(),
        layer_norm_nodes("x", "y"),
        &["y", "d"],
    );
    let mut r = Rewriter::new(&mut g);
    assert_eq!(crate::norm::fuse_layer_norm(&mut r), 0);

    // A plain LayerNormalization raises an opset-14 model to 17.
    let mut m = model(graph(
        &[("x", &[-1, 5, 4])],
        norm_inits(),
        layer_norm_nodes("x", "y"),
        &["y"],
    ));
    optimize(&mut m, &Options::default()).unwrap();
    assert_eq!(ops(m.graph.as_ref().unwrap()), ["LayerNormalization"]);
    assert_eq!(m.opset_import[0].version, Some(17));
}

#[test]
fn gelu_forms_bias_gelu_and_fast_gelu() {
    let inits = || {
        vec![
            ("sqrt2", scalar(std::f32::consts::SQRT_2)),
            ("one", scalar(1.0)),
            ("half", scalar(0.5)),
            ("three", scalar(3.0)),
            ("k", scalar(0.044715)),
            ("c", scalar(0.797_884_6)),
            ("w", Value::f32(vec![4, 4], vec![0.1; 16])),
            ("bias", Value::f32(vec![4], vec![0.2; 4])),
        ]
    };
    // Form 1 on a MatMul + bias: BiasGelu.
    let nodes = vec![
        n("MatMul", &["x", "w"], "mm"),
        n("Add", &["mm", "bias"], "h"),
        n("Div", &["h", "sqrt2"], "a"),
        n("Erf", &["a"], "e"),
        n("Add", &["e", "one"], "p"),
        n("Mul", &["h", "p"], "q"),
        n("Mul", &["q", "half"], "y"),
    ];
    let mut m = model(graph(&[("x", &[-1, 4])], inits(), nodes, &["y"]));
    optimize(
        &mut m,
        &Options {
            gemm: false,
            ..Options::default()
        },
    )
    .unwrap();
    let g = m.graph.as_ref().unwrap();
    assert_eq!(ops(g), ["MatMul", "BiasGelu"]);
    assert_eq!(g.node[1].input, ["mm", "bias"]);

    // Form 2 (0.5 * x first) on a plain input: Gelu.
    let nodes = vec![
        n("Div", &["x", "sqrt2"], "a"),
        n("Erf", &["a"], "e"),
        n("Add", &["one", "e"], "p"),
        n("Mul", &["x", "half"], "hx"),
        n("Mul", &["hx", "p"], "y"),
    ];
    let mut m = model(graph(&[("x", &[-1, 4])], inits(), nodes, &["y"]));
    optimize(&mut m, &Options::default()).unwrap();
    assert_eq!(ops(m.graph.as_ref().unwrap()), ["Gelu"]);

    // tanh form: FastGelu.
    let nodes = vec![
        n("Pow", &["x", "three"], "x3"),
        n("Mul", &["k", "x3"], "kx3"),
        n("Add", &["x", "kx3"], "s"),
        n("Mul", &["c", "s"], "cs"),
        n("Tanh", &["cs"], "t"),
        n("Add", &["one", "t"], "p"),
        n("Mul", &["half", "x"], "hx"),
        n("Mul", &["hx", "p"], "y"),
    ];
    let mut m = model(graph(&[("x", &[-1, 4])], inits(), nodes, &["y"]));
    let counts = optimize(&mut m, &Options::default()).unwrap();
    assert_eq!(counts.fast_gelu, 1);
    assert_eq!(ops(m.graph.as_ref().unwrap()), ["FastGelu"]);

    // A wrong constant (Erf of x / 2) is left alone.
    let nodes = vec![
        n("Div", &["x", "two"], "a"),
        n("Erf", &["a"], "e"),
        n("Add", &["e", "one"], "p"),
        n("Mul", &["x", "p"], "q"),
        n("Mul", &["q", "half"], "y"),
    ];
    let mut inits2 = inits();
    inits2.push(("two", scalar(2.0)));
    let mut m = model(graph(&[("x", &[-1, 4])], inits2, nodes, &["y"]));
    optimize(&mut m, &Options::default()).unwrap();
    assert_eq!(ops(m.graph.as_ref().unwrap()).len(), 5);
}

#[test]
fn gemm_only_for_two_dimensional_inputs() {
    let inits = || {
        vec![
            ("w", Value::f32(vec![4, 3], vec![0.1; 12])),
            ("bias", Value::f32(vec![3], vec![0.2; 3])),
        ]
    };
    let nodes = || {
        vec![
            n("MatMul", &["x", "w"], "mm"),
            n("Add", &["mm", "bias"], "y"),
        ]
    };
    let mut m = model(graph(&[("x", &[-1, 4])], inits(), nodes(), &["y"]));
    assert_eq!(optimize(&mut m, &Options::default()).unwrap().gemm, 1);
    let g = m.graph.as_ref().unwrap();
    assert_eq!(ops(g), ["Gemm"]);
    assert_eq!(g.node[0].input, ["x", "w", "bias"]);
    let mut m = model(graph(&[("x", &[-1, 5, 4])], inits(), nodes(), &["y"]));
    assert_eq!(optimize(&mut m, &Options::default()).unwrap().gemm, 0);
}

/// One BERT self-attention block (hidden 4, 2 heads of 2) with the classic additive mask.
fn attention_graph() -> GraphProto {
    let mut inits = vec![
        ("one", scalar(1.0)),
        ("neg", scalar(-10000.0)),
        ("scale", scalar(std::f32::consts::SQRT_2)),
        ("ax1", Value::i64(vec![1], vec![1])),
        ("ax2", Value::i64(vec![1], vec![2])),
        ("shape", Value::i64(vec![4], vec![0, 0, 2, 2])),
        ("shape_out", Value::i64(vec![3], vec![0, 0, 4])),
    ];
    let mut nodes = vec![
        n("Unsqueeze", &["mask", "ax1"], "m1"),
        n("Unsqueeze", &["m1", "ax2"], "m2"),
        node("", "Cast", "mc", &["m2"], &["m3"], vec![attr_int("to", 1)]),
        n("Sub", &["one", "m3"], "inv"),
        n("Mul", &["inv", "neg"], "additive"),
    ];
    for (p, perm) in [
        ("q", [0, 2, 1, 3]),
        ("k", [0, 2, 3, 1]),
        ("v", [0, 2, 1, 3]),
    ] {
        let w: &'static str = Box::leak(format!("w{p}").into_boxed_str());
        let b: &'static str = Box::leak(format!("b{p}").into_boxed_str());
        let base = match p {
            "q" => 0.0,
            "k" => 1.0,
            _ => 2.0,
        };
        inits.push((
            w,
            Value::f32(vec![4, 4], (0..16).map(|i| base + i as f32).collect()),
        ));
        inits.push((b, Value::f32(vec![4], vec![base; 4])));
        let o = |s: &str| format!("{p}_{s}");
        nodes.push(n("MatMul", &["x", w], &o("mm")));
        nodes.push(n("Add", &[&o("mm"), b], &o("add")));
        nodes.push(n("Reshape", &[&o("add"), "shape"], &o("r")));
        nodes.push(node(
            "",
            "Transpose",
            &o("t"),
            &[&o("r")],
            &[&o("t")],
            vec![attr_ints("perm", &perm)],
        ));
    }
    nodes.extend([
        n("MatMul", &["q_t", "k_t"], "qk"),
        n("Div", &["qk", "scale"], "qks"),
        n("Add", &["qks", "additive"], "masked"),
        node(
            "",
            "Softmax",
            "sm",
            &["masked"],
            &["probs"],
            vec![attr_int("axis", -1)],
        ),
        n("MatMul", &["probs", "v_t"], "ctx"),
        node(
            "",
            "Transpose",
            "ct",
            &["ctx"],
            &["ctx_t"],
            vec![attr_ints("perm", &[0, 2, 1, 3])],
        ),
        n("Reshape", &["ctx_t", "shape_out"], "y"),
    ]);
    let mut g = graph(&[("x", &[-1, 3, 4])], inits, nodes, &["y"]);
    g.input.push(value_info(
        "mask",
        DataType::Int64,
        &[Dim::sym("b"), Dim::Fixed(3)],
    ));
    g
}

#[test]
fn attention_with_a_classic_mask() {
    let mut m = model(attention_graph());
    let counts = optimize(&mut m, &Options::default()).unwrap();
    assert_eq!(counts.attention, 1);
    let g = m.graph.as_ref().unwrap();
    assert_eq!(ops(g), ["Cast", "Attention"]);
    let att = &g.node[1];
    assert_eq!(att.input[0], "x");
    assert_eq!(att.input[3], g.node[0].output[0]);
    assert_eq!(g.node[0].input, ["mask"]);
    let heads = att
        .attribute
        .iter()
        .find(|a| a.name.as_deref() == Some("num_heads"))
        .unwrap();
    assert_eq!(heads.i, Some(2));
    assert!(
        att.attribute
            .iter()
            .all(|a| a.name.as_deref() != Some("scale")),
        "1/sqrt(2) is the default scale"
    );
    let w = g
        .initializer
        .iter()
        .find(|t| Some(&att.input[1]) == t.name.as_ref())
        .unwrap();
    let w = Value::from_tensor(w).unwrap();
    assert_eq!(w.dims, [4, 12]);
    // Row 0: q's row 0 (0..4), k's (1..5), v's (2..6).
    assert_eq!(
        &w.as_f64()[..12],
        &[0., 1., 2., 3., 1., 2., 3., 4., 2., 3., 4., 5.]
    );

    // Another scale is written; enable_attention false leaves the block alone.
    let mut g = attention_graph();
    g.initializer
        .iter_mut()
        .find(|t| t.name.as_deref() == Some("scale"))
        .unwrap()
        .raw_data = Some(4.0f32.to_le_bytes().to_vec());
    let mut m = model(g);
    optimize(&mut m, &Options::default()).unwrap();
    let att = m
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .find(|n| n.op_type.as_deref() == Some("Attention"))
        .unwrap()
        .clone();
    let scale = att
        .attribute
        .iter()
        .find(|a| a.name.as_deref() == Some("scale"))
        .unwrap();
    assert_eq!(scale.f, Some(0.25));
    let mut m = model(attention_graph());
    assert_eq!(
        optimize(
            &mut m,
            &Options {
                attention: false,
                ..Options::default()
            }
        )
        .unwrap()
        .attention,
        0
    );
}

#[test]
fn passes_run_through_the_host_and_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let mut m = model(attention_graph());
    m.graph
        .as_mut()
        .unwrap()
        .node
        .push(n("Identity", &["y"], "y2"));
    m.graph.as_mut().unwrap().output[0].name = Some("y2".into());
    olive_onnx::rewrite::save(m, &input, "model.onnx").unwrap();
    std::fs::write(input.join("notes.txt"), "kept").unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let host = TestHost::new(&out);
    let result = host
        .run_plugin(
            &crate::OLIVE_PLUGIN,
            "OrtTransformersOptimization",
            &Model::new(kinds::ONNX, &input),
            r#"{"model_type": "bert", "num_heads": 2}"#,
        )
        .unwrap();
    assert_eq!(result.metadata["fusion"]["attention"], 1);
    assert_eq!(result.metadata["fusion"]["nodes_after"], 2);
    let written = olive_onnx::rewrite::load(&out.join("model.onnx")).unwrap();
    assert_eq!(written.graph.unwrap().output[0].name.as_deref(), Some("y2"));
    assert!(out.join("notes.txt").is_file());

    let out2 = dir.path().join("out2");
    std::fs::create_dir(&out2).unwrap();
    let host = TestHost::new(&out2);
    let peep = host
        .run_plugin(
            &crate::OLIVE_PLUGIN,
            "OnnxPeepholeOptimizer",
            &Model::new(kinds::ONNX, input.join("model.onnx")),
            "{}",
        )
        .unwrap();
    assert!(
        peep.metadata["fusion"]["nodes_after"].as_u64()
            < peep.metadata["fusion"]["nodes_before"].as_u64()
    );

    for (config, kind, expect) in [
        (
            r#"{"only_onnxruntime": true}"#,
            ErrorKind::INVALID_CONFIG,
            "only_onnxruntime",
        ),
        (
            r#"{"model_type": "llama9"}"#,
            ErrorKind::INVALID_CONFIG,
            "model_type `llama9`",
        ),
        (
            r#"{"optimization_options": {"enable_magic": true}}"#,
            ErrorKind::INVALID_CONFIG,
            "enable_magic",
        ),
        (r#"{"num_head": 2}"#, ErrorKind::INVALID_CONFIG, "num_head"),
    ] {
        let err = host
            .run_plugin(
                &crate::OLIVE_PLUGIN,
                "OrtTransformersOptimization",
                &Model::new(kinds::ONNX, &input),
                config,
            )
            .unwrap_err();
        assert_eq!(err.kind, kind, "{config}: {}", err.message);
        assert!(err.message.contains(expect), "{config}: {}", err.message);
    }
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, "not a model at all").unwrap();
    let err = host
        .run_plugin(
            &crate::OLIVE_PLUGIN,
            "OnnxPeepholeOptimizer",
            &Model::new(kinds::ONNX, &junk),
            "{}",
        )
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::UNSUPPORTED_MODEL, "{}", err.message);
    assert!(
        err.message.contains("junk.onnx") && err.message.contains("not an ONNX model"),
        "{}",
        err.message
    );
}

#[test]
fn blockwise_rtn_quantizes_constant_matmul_weights_once() {
    use crate::blockwise::{quantize_matmuls, BlockwiseOptions};
    use olive_onnx::matmul_nbits::NBitsConfig;

    let w = Value::f32(
        vec![32, 8],
        (0..256).map(|i| (i as f32 * 0.37).sin()).collect(),
    );
    let nodes = vec![
        node("", "MatMul", "mm1", &["x", "w"], &["a"], vec![]),
        node("", "MatMul", "mm2", &["a2", "w"], &["b"], vec![]),
        node("", "MatMul", "skip_me", &["x", "w"], &["c"], vec![]),
        node("", "MatMul", "act", &["x", "y"], &["d"], vec![]),
        n("Relu", &["a"], "a2"),
    ];
    let mut g = graph(
        &[("x", &[-1, 32]), ("y", &[32, 8])],
        vec![("w", w)],
        nodes,
        &["b", "c", "d"],
    );
    let o = BlockwiseOptions {
        config: NBitsConfig::int4(16, false),
        nodes_to_exclude: ["skip_me".to_string()].into(),
        nodes_to_include: Default::default(),
    };
    assert_eq!(quantize_matmuls(&mut g, &o).unwrap(), 2);
    let q: Vec<&NodeProto> = g
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("MatMulNBits"))
        .collect();
    assert_eq!(q.len(), 2);
    assert_eq!(
        q[0].input[1..],
        q[1].input[1..],
        "a shared weight is quantized once"
    );
    assert_eq!(q[0].input.len(), 4, "asymmetric: zero points");
    let b = g
        .initializer
        .iter()
        .find(|t| Some(&q[0].input[1]) == t.name.as_ref())
        .unwrap();
    assert_eq!(b.dims, [8, 2, 8], "[N, blocks, block_size / 2]");
    assert_eq!(
        ops(&g).iter().filter(|o| *o == "MatMul").count(),
        2,
        "excluded and activation MatMuls stay"
    );
}

#[test]
fn reshape_chains_fuse_unless_the_outer_shape_copies_a_dimension() {
    let inits = || {
        vec![
            ("s1", Value::i64(vec![2], vec![4, 6])),
            ("s2", Value::i64(vec![3], vec![2, 2, 6])),
            ("s0", Value::i64(vec![3], vec![0, 2, 3])),
        ]
    };
    let chain = |outer: &str| {
        vec![
            n("Reshape", &["x", "s1"], "r1"),
            n("Reshape", &["r1", outer], "y"),
        ]
    };
    let mut g = graph(&[("x", &[-1, 24])], inits(), chain("s2"), &["y"]);
    crate::peephole::optimize(&mut g).unwrap();
    assert_eq!(ops(&g), ["Reshape"]);
    assert_eq!(g.node[0].input, ["x", "s2"]);
    let mut g = graph(&[("x", &[-1, 24])], inits(), chain("s0"), &["y"]);
    crate::peephole::optimize(&mut g).unwrap();
    assert_eq!(
        ops(&g),
        ["Reshape", "Reshape"],
        "0 copies r1's first dimension"
    );
    let mut g = graph(&[("x", &[-1, 24])], inits(), chain("s2"), &["y"]);
    crate::peephole::optimize_with(&mut g, false).unwrap();
    assert_eq!(ops(&g).len(), 2, "fuse_reshape_operations off");
}

#[test]
fn dynamic_weight_quantization_follows_onnxruntime_quantize_data() {
    use crate::dynamic::quantize_weight;
    // int8 symmetric: absmax 2.54 -> scale 0.02 on [-127, 127], zero point 0; 0.01 / 0.02 = 0.5 rounds to even 0.
    let (q, scale, zp) = quantize_weight(&[-2.54, 0.01, 1.27, 0.03], true, true, false);
    assert_eq!(zp, 0);
    assert!((scale - 0.02).abs() < 1e-9, "{scale}");
    assert_eq!(
        q.iter().map(|&b| b as i8).collect::<Vec<_>>(),
        [-127, 0, 64, 2]
    );
    // uint8 asymmetric on [0, 255]: range [-1, 1.55] -> scale 0.01, zero point 100.
    let (q, scale, zp) = quantize_weight(&[-1.0, 0.0, 1.55], false, false, false);
    assert!((scale - 0.01).abs() < 1e-8, "{scale}");
    assert_eq!(zp, 100);
    assert_eq!(q, [0, 100, 255]);
    // reduce_range int8: [-64, 64]; all-zero weights: scale 1, zero point 0.
    let (q, _, _) = quantize_weight(&[-1.0, 1.0], true, true, true);
    assert_eq!(q.iter().map(|&b| b as i8).collect::<Vec<_>>(), [-64, 64]);
    assert_eq!(
        quantize_weight(&[0.0, 0.0], true, true, false),
        (vec![0, 0], 1.0, 0)
    );
}

/// BERT embeddings: word + segment + position (an arange buffer sliced to the ids' length), then LayerNormalization.
fn embeddings_graph(buffer: Vec<i64>) -> GraphProto {
    let inits = vec![
        (
            "word",
            Value::f32(vec![10, 4], (0..40).map(|i| i as f32).collect()),
        ),
        ("segment", Value::f32(vec![2, 4], vec![0.5; 8])),
        ("position", Value::f32(vec![6, 4], vec![0.25; 24])),
        ("buffer", Value::i64(vec![1, 6], buffer)),
        ("one", Value::i64(vec![], vec![1])),
        ("zero", Value::i64(vec![1], vec![0])),
        ("ax0", Value::i64(vec![1], vec![0])),
        ("ax1", Value::i64(vec![1], vec![1])),
        ("gamma", Value::f32(vec![4], vec![1.0; 4])),
        ("beta", Value::f32(vec![4], vec![0.0; 4])),
    ];
    let nodes = vec![
        n("Shape", &["ids"], "shape"),
        n("Gather", &["shape", "one"], "len"),
        n("Unsqueeze", &["len", "ax0"], "end"),
        n("Slice", &["buffer", "zero", "end", "ax1"], "pos"),
        n("Gather", &["word", "ids"], "w"),
        n("Gather", &["segment", "seg"], "s"),
        n("Add", &["w", "s"], "ws"),
        n("Gather", &["position", "pos"], "p"),
        n("Add", &["ws", "p"], "e"),
        node(
            "",
            "LayerNormalization",
            "ln",
            &["e", "gamma", "beta"],
            &["y"],
            vec![attr_int("axis", -1)],
        ),
    ];
    let mut g = graph(&[], inits, nodes, &["y"]);
    for name in ["ids", "seg"] {
        g.input.push(value_info(
            name,
            DataType::Int64,
            &[Dim::sym("b"), Dim::sym("s")],
        ));
    }
    g
}

#[test]
fn embed_layer_norm_needs_default_positions() {
    let mut m = model(embeddings_graph((0..6).collect()));
    let counts = optimize(&mut m, &Options::default()).unwrap();
    assert_eq!(counts.embed_layer_norm, 1);
    let g = m.graph.as_ref().unwrap();
    assert_eq!(ops(g), ["Cast", "Cast", "EmbedLayerNormalization"]);
    let e = &g.node[2];
    assert_eq!(
        e.input[2..],
        ["word", "position", "segment", "gamma", "beta"]
    );
    assert_eq!(e.output[0], "y");
    // Positions that are not 0..S-1 keep the graph as it was.
    let mut m = model(embeddings_graph(vec![0, 2, 4, 6, 8, 10]));
    assert_eq!(
        optimize(&mut m, &Options::default())
            .unwrap()
            .embed_layer_norm,
        0
    );
}
