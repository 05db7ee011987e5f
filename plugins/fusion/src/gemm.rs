//! MatMul + Add → Gemm (ONNX Runtime's MatMulAddFusion, onnxruntime/core/optimizer/matmul_add_fusion.cc, for a
//! 2-D input): `Add(MatMul(A[M, K], B[K, N]), C)` with B a constant matrix and C a constant of shape [N] or [1, N] becomes `Gemm(A, B, C)`. A's rank must be known to be 2 (a graph input or value_info with two dims).

use std::collections::HashMap;

use olive_onnx::graph::node;
use olive_onnx::proto::{type_proto, GraphProto};

use crate::graph::Rewriter;

/// The rank of every value whose shape the graph records (inputs, value_info, outputs).
pub fn known_ranks(graph: &GraphProto) -> HashMap<String, usize> {
    graph
        .input
        .iter()
        .chain(&graph.value_info)
        .chain(&graph.output)
        .filter_map(|v| {
            let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref()?.value.as_ref() else {
                return None;
            };
            Some((v.name.clone()?, t.shape.as_ref()?.dim.len()))
        })
        .collect()
}

/// Fuses MatMul + Add of 2-D inputs into Gemm; returns how many.
pub fn fuse_gemm(r: &mut Rewriter, ranks: &HashMap<String, usize>) -> usize {
    let mut count = 0;
    for mm in 0..r.node_count() {
        if !r.is(mm, "MatMul") {
            continue;
        }
        let n = r.node(mm);
        let (Some(a), Some(b)) = (n.input.first().cloned(), n.input.get(1).cloned()) else {
            continue;
        };
        if ranks.get(&a) != Some(&2) {
            continue;
        }
        let Some(w) = r.constant(&b).filter(|w| w.dims.len() == 2) else {
            continue;
        };
        let Some(add) = r.only_child(mm, "Add") else {
            continue;
        };
        let mm_out = r.node(mm).output[0].clone();
        let Some(c) = r.node(add).input.iter().find(|i| **i != mm_out).cloned() else {
            continue;
        };
        let fits = r.constant(&c).is_some_and(|v| match v.dims.as_slice() {
            [n] | [1, n] => *n == w.dims[1],
            _ => false,
        });
        let out = r.node(add).output[0].clone();
        if !fits || !r.removable(&[mm, add], &[&out]) {
            continue;
        }
        let name = r.fresh("Gemm");
        r.replace(
            &[mm, add],
            node("", "Gemm", &name, &[&a, &b, &c], &[&out], vec![]),
        );
        count += 1;
    }
    count
}
