//! ONNX Runtime's `SkipSimplifiedLayerNormalization` (com.microsoft, docs/ContribOperators.md; CPU kernel
//! contrib_ops/cpu/skip_layer_norm.cc with `simplified`) split into `Add` + `SimplifiedLayerNormalization` (the
//! RMSNorm op ONNX Runtime registers in the default domain, which QNN's HTP maps to its RmsNorm), and optionally
//! every `SimplifiedLayerNormalization` further into elementwise ops, as Olive's `SimplifiedLayerNormToRMSNorm`
//! surgeon (olive/passes/onnx/graph_surgeries.py) writes it:
//! ```text
//! s = input + skip (+ bias)                      -> output 3 (input_skip_bias_sum) when it is read
//! y = s / Sqrt(ReduceMean(s * s, axis=-1) + epsilon) * gamma
//! ```
//! Outputs 1 and 2 (mean, inv_std_var) have no plain form here: a node whose are read is refused by name.

use olive_onnx::graph::{attr_float, attr_int, inline_tensor, node};
use olive_onnx::proto::{ModelProto, NodeProto, TensorProto};
use olive_onnx::tensor::{float_bytes, DataType};
use olive_pass_sdk::{kinds, Context, Error, Model, Pass};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::graph::{find_attr, topo_sort, MS_DOMAIN};
use crate::ExternalDataKeys;

/// The config of `DecomposeSkipSimplifiedLayerNormalization`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SkipRmsConfig {
    /// Also write every SimplifiedLayerNormalization (the split ones included) as Mul/ReduceMean/Add/Sqrt/Div/Mul
    /// (Olive's SimplifiedLayerNormToRMSNorm); false keeps the SimplifiedLayerNormalization op.
    #[serde(default)]
    pub decompose_simplified: bool,
    #[serde(flatten)]
    pub external: ExternalDataKeys,
}

/// SkipSimplifiedLayerNormalization to Add + SimplifiedLayerNormalization (or elementwise RMSNorm).
pub struct DecomposeSkipSimplifiedLayerNormalization;

impl Pass for DecomposeSkipSimplifiedLayerNormalization {
    const NAME: &'static str = "DecomposeSkipSimplifiedLayerNormalization";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "com.microsoft SkipSimplifiedLayerNormalization as Add + SimplifiedLayerNormalization (RMSNorm), optionally \
         as elementwise ops, for execution providers without the contrib op (QNN).";
    const ACCEPTS: &'static [&'static str] = &[kinds::ONNX];
    const PRODUCES: &'static [&'static str] = &[kinds::ONNX];
    const DEVICES: &'static [&'static str] = &["cpu", "gpu", "npu"];
    type Config = SkipRmsConfig;

    fn run(model: Model, c: SkipRmsConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        crate::rewrite_counted(model, ctx, |onnx| {
            let (skip, simplified) =
                decompose(onnx, c.decompose_simplified).map_err(Error::UnsupportedModel)?;
            Ok((
                format!(
                    "SkipSimplifiedLayerNormalization: {skip} split; SimplifiedLayerNormalization: \
                     {simplified} decomposed"
                ),
                serde_json::json!({
                    "skip_simplified_layer_norm": skip, "simplified_layer_norm_decomposed": simplified
                }),
            ))
        })
    }
}

fn is_op(n: &NodeProto, op: &str, domain: &str) -> bool {
    let have = match n.domain.as_deref().unwrap_or("") {
        "ai.onnx" => "",
        d => d,
    };
    n.op_type.as_deref() == Some(op) && have == domain
}

/// The element type of `name` if known (graph input/value_info/initializer), else float.
fn elem_type(model: &ModelProto, name: &str) -> DataType {
    let Some(g) = model.graph.as_ref() else {
        return DataType::Float;
    };
    let code = g
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
        .and_then(|t| t.data_type)
        .or_else(|| {
            g.input.iter().chain(&g.value_info).find_map(|v| {
                if v.name.as_deref() != Some(name) {
                    return None;
                }
                match v.r#type.as_ref()?.value.as_ref()? {
                    olive_onnx::proto::type_proto::Value::TensorType(t) => t.elem_type,
                    _ => None,
                }
            })
        });
    match code {
        Some(10) => DataType::Float16,
        _ => DataType::Float,
    }
}

/// Rewrites the graph; returns (SkipSimplifiedLayerNormalization split, SimplifiedLayerNormalization decomposed).
pub fn decompose(model: &mut ModelProto, elementwise: bool) -> Result<(usize, usize), String> {
    let opset = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .and_then(|o| o.version)
        .unwrap_or(0);
    let mut names = olive_onnx::rewrite::used_names(model);
    let dtype = model
        .graph
        .as_ref()
        .and_then(|g| {
            g.node
                .iter()
                .find(|n| is_op(n, "SkipSimplifiedLayerNormalization", MS_DOMAIN))
        })
        .map(|n| elem_type(model, n.input.get(2).map(String::as_str).unwrap_or("")))
        .unwrap_or(DataType::Float);
    let graph = model.graph.as_mut().ok_or("the ONNX model has no graph")?;
    let read: std::collections::HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .chain(graph.output.iter().filter_map(|o| o.name.clone()))
        .collect();
    let mut fresh = |base: &str| {
        let mut name = base.to_string();
        let mut k = 0;
        while names.contains(&name) {
            k += 1;
            name = format!("{base}_{k}");
        }
        names.insert(name.clone());
        name
    };
    let mut initializers: Vec<TensorProto> = Vec::new();
    let mut nodes = Vec::with_capacity(graph.node.len() * 2);
    let (mut skips, mut simplified) = (0, 0);
    for n in std::mem::take(&mut graph.node) {
        if !is_op(&n, "SkipSimplifiedLayerNormalization", MS_DOMAIN) {
            nodes.push(n);
            continue;
        }
        let name = n
            .name
            .clone()
            .unwrap_or_else(|| "SkipSimplifiedLayerNormalization".into());
        if let Some(k) = (1..3).find(|&k| {
            n.output
                .get(k)
                .is_some_and(|o| !o.is_empty() && read.contains(o))
        }) {
            return Err(format!(
                "{name}: output {k} ({}) is read; only the normalized output and the sum (output 3) are decomposed",
                ["", "mean", "inv_std_var"][k]
            ));
        }
        let at = |k: usize| n.input.get(k).cloned().unwrap_or_default();
        if at(0).is_empty() || at(1).is_empty() || at(2).is_empty() {
            return Err(format!(
                "{name}: SkipSimplifiedLayerNormalization needs input, skip and gamma"
            ));
        }
        let epsilon = find_attr(&n, "epsilon").and_then(|a| a.f).unwrap_or(1e-12);
        let sum_out = match n.output.get(3).filter(|o| !o.is_empty()) {
            Some(o) => o.clone(),
            None => fresh(&format!("{name}/Add/output_0")),
        };
        let bias = at(3);
        let first_sum = if bias.is_empty() {
            sum_out.clone()
        } else {
            fresh(&format!("{name}/Add/output_0"))
        };
        nodes.push(node(
            "",
            "Add",
            &fresh(&format!("{name}/Add")),
            &[&at(0), &at(1)],
            &[&first_sum],
            vec![],
        ));
        if !bias.is_empty() {
            nodes.push(node(
                "",
                "Add",
                &fresh(&format!("{name}/AddBias")),
                &[&first_sum, &bias],
                &[&sum_out],
                vec![],
            ));
        }
        let out = n.output.first().cloned().unwrap_or_default();
        let out = if out.is_empty() {
            fresh(&format!("{name}/output_0"))
        } else {
            out
        };
        nodes.push(node(
            "",
            "SimplifiedLayerNormalization",
            &fresh(&format!("{name}/SimplifiedLayerNorm")),
            &[&sum_out, &at(2)],
            &[&out],
            vec![
                attr_int("axis", -1),
                attr_float("epsilon", epsilon),
                attr_int("stash_type", 1),
            ],
        ));
        skips += 1;
    }
    if elementwise {
        let mut out = Vec::with_capacity(nodes.len() * 3);
        for n in nodes {
            if !is_op(&n, "SimplifiedLayerNormalization", "") {
                out.push(n);
                continue;
            }
            let name = n
                .name
                .clone()
                .unwrap_or_else(|| "SimplifiedLayerNormalization".into());
            let axis = find_attr(&n, "axis").and_then(|a| a.i).unwrap_or(-1);
            if axis != -1 {
                return Err(format!(
                    "{name}: axis {axis}; only the last axis (-1) is decomposed"
                ));
            }
            if n.output
                .iter()
                .skip(1)
                .any(|o| !o.is_empty() && read.contains(o))
            {
                return Err(format!("{name}: its inv_std_var output is read; only the normalized output is decomposed"));
            }
            let epsilon = find_attr(&n, "epsilon").and_then(|a| a.f).unwrap_or(1e-5);
            let (x, gamma) = (
                n.input[0].clone(),
                n.input.get(1).cloned().unwrap_or_default(),
            );
            let axes = fresh(&format!("{name}/axes"));
            let eps = fresh(&format!("{name}/epsilon"));
            initializers.push(inline_tensor(
                &eps,
                dtype,
                &[],
                float_bytes(&[epsilon], dtype).unwrap_or_default(),
            ));
            let y = n.output.first().cloned().unwrap_or_default();
            let mut op = |op: &str, inputs: &[&str], attrs, output: Option<&str>| {
                let node_name = fresh(&format!("{name}/{op}"));
                let o =
                    output.map_or_else(|| fresh(&format!("{node_name}/output_0")), str::to_string);
                out.push(node("", op, &node_name, inputs, &[&o], attrs));
                o
            };
            let sq = op("Mul", &[&x, &x], vec![], None);
            let mean = if opset >= 18 {
                initializers.push(inline_tensor(
                    &axes,
                    DataType::Int64,
                    &[1],
                    (-1i64).to_le_bytes().to_vec(),
                ));
                op(
                    "ReduceMean",
                    &[&sq, &axes],
                    vec![attr_int("keepdims", 1)],
                    None,
                )
            } else {
                let attrs = vec![
                    olive_onnx::graph::attr_ints("axes", &[-1]),
                    attr_int("keepdims", 1),
                ];
                op("ReduceMean", &[&sq], attrs, None)
            };
            let var = op("Add", &[&mean, &eps], vec![], None);
            let rms = op("Sqrt", &[&var], vec![], None);
            let normed = op("Div", &[&x, &rms], vec![], None);
            op("Mul", &[&normed, &gamma], vec![], Some(&y));
            simplified += 1;
        }
        nodes = out;
    }
    graph.initializer.extend(initializers);
    graph.node = topo_sort(nodes)?;
    Ok((skips, simplified))
}

#[cfg(test)]
mod tests {
    use super::*;
    use olive_onnx::proto::{GraphProto, OperatorSetIdProto};

    fn skip_model(outputs: &[&str]) -> ModelProto {
        let mut n = node(
            MS_DOMAIN,
            "SkipSimplifiedLayerNormalization",
            "/l/SkipLayerNorm",
            &["x", "skip", "gamma"],
            outputs,
            vec![attr_float("epsilon", 1e-5)],
        );
        n.domain = Some(MS_DOMAIN.into());
        let reader = node(
            "",
            "Relu",
            "reader",
            &[outputs[outputs.len() - 1]],
            &["r"],
            vec![],
        );
        ModelProto {
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(GraphProto {
                node: vec![n, reader],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ops(m: &ModelProto) -> Vec<String> {
        m.graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .map(|n| n.op_type.clone().unwrap_or_default())
            .collect()
    }

    #[test]
    fn splits_into_add_and_simplified_layer_norm_keeping_the_sum() {
        let mut m = skip_model(&["y", "", "", "sum"]);
        assert_eq!(decompose(&mut m, false).unwrap(), (1, 0));
        assert_eq!(ops(&m), ["Add", "SimplifiedLayerNormalization", "Relu"]);
        let g = m.graph.as_ref().unwrap();
        assert_eq!(g.node[0].output, ["sum"]);
        assert_eq!(
            (g.node[1].input.clone(), g.node[1].output.clone()),
            (
                vec!["sum".to_string(), "gamma".into()],
                vec!["y".to_string()]
            )
        );
        let mut m = skip_model(&["y", "", "", "sum"]);
        assert_eq!(decompose(&mut m, true).unwrap(), (1, 1));
        assert_eq!(
            ops(&m),
            [
                "Add",
                "Mul",
                "ReduceMean",
                "Add",
                "Sqrt",
                "Div",
                "Mul",
                "Relu"
            ]
        );
        assert_eq!(m.graph.as_ref().unwrap().node[6].output, ["y"]);
    }

    #[test]
    fn a_read_mean_output_is_refused_by_name() {
        let mut m = skip_model(&["y", "mean"]);
        let e = decompose(&mut m, false).unwrap_err();
        assert!(
            e.contains("/l/SkipLayerNorm: output 1 (mean) is read"),
            "{e}"
        );
    }
}
