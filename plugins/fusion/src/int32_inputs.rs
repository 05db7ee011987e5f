//! `input_int32` of OrtTransformersOptimization: int64 graph inputs become int32, as onnxruntime's
//! `BertOnnxModel.change_graph_inputs_to_int32` / `OnnxModel.change_graph_input_type` do: a Cast of the input to
//! int32 is dropped (its readers read the input), other readers get one `Cast(to=int64)` of the input. Unlike
//! onnxruntime, only int64 inputs change (it retypes every input, floats included) and Casts of the input to other
//! types stay (it drops them without rewiring their readers).

use std::collections::HashSet;

use olive_onnx::proto::{type_proto, GraphProto, NodeProto};

use crate::dtypes::{INT32, INT64};
use crate::graph::{attr_i, topo_sort};

/// What changed: inputs retyped, Casts removed, Casts added.
#[derive(Debug, Default, Clone, serde::Serialize, PartialEq, Eq)]
pub struct Int32Report {
    pub inputs: usize,
    pub casts_removed: usize,
    pub casts_added: usize,
}

fn is_cast_to(n: &NodeProto, to: i32) -> bool {
    n.op_type.as_deref() == Some("Cast")
        && matches!(n.domain.as_deref(), None | Some("") | Some("ai.onnx"))
        && attr_i(n, "to") == Some(to as i64)
}

/// Retypes the int64 inputs of `graph` to int32.
pub fn inputs_to_int32(graph: &mut GraphProto) -> Result<Int32Report, String> {
    let mut report = Int32Report::default();
    let outputs: HashSet<String> = graph.output.iter().filter_map(|o| o.name.clone()).collect();
    let mut names: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().cloned().chain(n.name.clone()))
        .collect();
    for k in 0..graph.input.len() {
        let input = graph.input[k].clone();
        let Some(name) = input.name.clone() else {
            continue;
        };
        let Some(type_proto::Value::TensorType(t)) =
            input.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            continue;
        };
        if t.elem_type != Some(INT64) {
            continue;
        }
        // Casts to int32 of the input: their readers read the input itself.
        let mut removed = HashSet::new();
        for (i, n) in graph.node.iter().enumerate() {
            let reads = n.input.first() == Some(&name);
            if reads && is_cast_to(n, INT32) && !n.output.iter().any(|o| outputs.contains(o)) {
                removed.insert(i);
            }
        }
        let dropped: Vec<String> = removed
            .iter()
            .filter_map(|&i| graph.node[i].output.first().cloned())
            .collect();
        // Other readers (Casts to other types included) keep reading an int64 value.
        let others: Vec<usize> = (0..graph.node.len())
            .filter(|i| !removed.contains(i) && graph.node[*i].input.contains(&name))
            .filter(|&i| graph.node[i].op_type.as_deref() != Some("Cast"))
            .collect();
        if !others.is_empty() {
            let mut cast_name = format!("Cast_{name}");
            let mut j = 0;
            while names.contains(&cast_name) {
                j += 1;
                cast_name = format!("Cast_{name}_{j}");
            }
            names.insert(cast_name.clone());
            let out = format!("{cast_name}_int64");
            names.insert(out.clone());
            for &i in &others {
                for s in graph.node[i].input.iter_mut().filter(|s| **s == name) {
                    s.clone_from(&out);
                }
            }
            graph.node.push(olive_onnx::graph::node(
                "",
                "Cast",
                &cast_name,
                &[&name],
                &[&out],
                vec![olive_onnx::graph::attr_int("to", INT64 as i64)],
            ));
            report.casts_added += 1;
        }
        for n in &mut graph.node {
            for s in n.input.iter_mut().filter(|s| dropped.contains(s)) {
                s.clone_from(&name);
            }
        }
        let mut i = 0;
        graph.node.retain(|_| {
            i += 1;
            !removed.contains(&(i - 1))
        });
        graph
            .value_info
            .retain(|v| !v.name.as_ref().is_some_and(|n| dropped.contains(n)));
        report.casts_removed += removed.len();
        if let Some(type_proto::Value::TensorType(t)) = graph.input[k]
            .r#type
            .as_mut()
            .and_then(|t| t.value.as_mut())
        {
            t.elem_type = Some(INT32);
        }
        report.inputs += 1;
    }
    graph.node = topo_sort(std::mem::take(&mut graph.node))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use olive_onnx::graph::{attr_int, node, value_info, Dim};
    use olive_onnx::proto::GraphProto;
    use olive_onnx::tensor::DataType;

    use super::inputs_to_int32;
    use crate::dtypes::{declared, INT32};

    #[test]
    fn int32_casts_go_other_readers_get_one_cast_back() {
        let d = [Dim::Fixed(2)];
        let mut g = GraphProto {
            input: vec![
                value_info("ids", DataType::Int64, &d),
                value_info("x", DataType::Float, &d),
            ],
            output: vec![value_info("y", DataType::Float, &d)],
            node: vec![
                node(
                    "",
                    "Cast",
                    "c32",
                    &["ids"],
                    &["ids32"],
                    vec![attr_int("to", 6)],
                ),
                node(
                    "",
                    "Cast",
                    "cb",
                    &["ids"],
                    &["idsb"],
                    vec![attr_int("to", 9)],
                ),
                node("", "Gather", "g", &["x", "ids32"], &["a"], vec![]),
                node("", "Gather", "g2", &["x", "ids"], &["b"], vec![]),
                node("", "Where", "w", &["idsb", "a", "b"], &["y"], vec![]),
            ],
            ..Default::default()
        };
        let r = inputs_to_int32(&mut g).unwrap();
        assert_eq!((r.inputs, r.casts_removed, r.casts_added), (1, 1, 1));
        assert_eq!(declared(&g.input[0]), Some(INT32));
        let by = |name: &str| {
            g.node
                .iter()
                .find(|n| n.name.as_deref() == Some(name))
                .unwrap()
        };
        assert_eq!(by("g").input, vec!["x", "ids"]);
        assert_eq!(by("g2").input, vec!["x", "Cast_ids_int64"]);
        assert_eq!(by("cb").input, vec!["ids"]);
        assert_eq!(by("Cast_ids").input, vec!["ids"]);
        assert!(g.node.iter().all(|n| n.name.as_deref() != Some("c32")));
    }
}
