//! Olive's `OnnxPeepholeOptimizer` clean-ups (olive/passes/onnx/peephole_optimizer.py, which runs onnxscript's
//! optimizer and onnxoptimizer): `Constant` nodes become initializers, constant-only subgraphs are folded
//! (`fold`), `Identity` nodes and `Cast`s to the type a value already has are removed, and nodes and
//! initializers nothing uses are dropped. Graph outputs keep their names.

use std::collections::{HashMap, HashSet};

use olive_onnx::proto::{type_proto, GraphProto, NodeProto, TensorProto, ValueInfoProto};
use olive_onnx::rewrite::Value;

use crate::fold::evaluate;
use crate::graph::{attr_i, find_attr, topo_sort};

/// What the clean-ups did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleanup {
    /// Nodes folded into constants (Constant nodes included).
    pub folded: usize,
    /// Identity and no-op Cast nodes removed.
    pub bypassed: usize,
    /// Nodes removed because nothing used their outputs.
    pub dead: usize,
}

/// Runs every clean-up until nothing changes.
pub fn optimize(graph: &mut GraphProto) -> Result<Cleanup, String> {
    optimize_with(graph, true)
}

/// [`optimize`], with Reshape chains fused when `fuse_reshapes` is on (counted as bypassed nodes).
pub fn optimize_with(graph: &mut GraphProto, reshapes: bool) -> Result<Cleanup, String> {
    let mut total = Cleanup::default();
    loop {
        let folded = fold_constants(graph);
        let bypassed = bypass(graph) + if reshapes { fuse_reshapes(graph) } else { 0 };
        let dead = remove_dead(graph);
        total.folded += folded;
        total.bypassed += bypassed;
        total.dead += dead;
        if folded + bypassed + dead == 0 {
            break;
        }
    }
    graph.node = topo_sort(std::mem::take(&mut graph.node))?;
    Ok(total)
}

/// A `Constant` node's value as a tensor named `name`.
fn constant_tensor(node: &NodeProto, name: &str) -> Option<TensorProto> {
    let a = node.attribute.first()?;
    let mut t = match a.name.as_deref()? {
        "value" => a.t.clone()?,
        "value_float" => Value::f32(vec![], vec![a.f?]).to_tensor(name),
        "value_floats" => Value::f32(vec![a.floats.len() as i64], a.floats.clone()).to_tensor(name),
        "value_int" => Value::i64(vec![], vec![a.i?]).to_tensor(name),
        "value_ints" => Value::i64(vec![a.ints.len() as i64], a.ints.clone()).to_tensor(name),
        _ => return None,
    };
    t.name = Some(name.to_string());
    Some(t)
}

/// Folds Constant nodes and nodes whose inputs are all constant; returns how many went.
fn fold_constants(graph: &mut GraphProto) -> usize {
    let overridable: HashSet<String> = graph.input.iter().filter_map(|i| i.name.clone()).collect();
    let mut constants: HashMap<String, Option<Value>> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.clone().map(|n| (n, t)))
        .filter(|(n, _)| !overridable.contains(n))
        .map(|(n, t)| (n, Value::from_tensor(t)))
        .collect();
    let shapes = static_shapes(graph);
    let outputs: HashSet<String> = graph.output.iter().filter_map(|o| o.name.clone()).collect();
    let mut folded = 0;
    let mut kept = Vec::with_capacity(graph.node.len());
    for node in std::mem::take(&mut graph.node) {
        let out = node.output.first().cloned().unwrap_or_default();
        let default_domain = matches!(node.domain.as_deref(), None | Some("") | Some("ai.onnx"));
        // A graph output produced by a Constant stays a node (an initializer cannot be a graph output everywhere).
        if !default_domain || node.output.len() != 1 || outputs.contains(&out) {
            kept.push(node);
            continue;
        }
        if node.op_type.as_deref() == Some("Constant") {
            if let Some(t) = constant_tensor(&node, &out) {
                constants.insert(out, Value::from_tensor(&t));
                graph.initializer.push(t);
                folded += 1;
                continue;
            }
        }
        let inputs: Option<Vec<Option<Value>>> = node
            .input
            .iter()
            .map(|name| {
                if name.is_empty() {
                    return Some(None);
                }
                if node.op_type.as_deref() == Some("Shape") {
                    if let Some(dims) = shapes.get(name) {
                        // Only the shape is read: a stand-in value of that shape.
                        return Some(Some(Value::f32(dims.clone(), Vec::new())));
                    }
                }
                constants.get(name).cloned().flatten().map(Some)
            })
            .collect();
        let result = inputs.and_then(|inputs| evaluate(&node, &inputs));
        match result {
            Some(mut values) if values.len() == 1 => {
                let value = values.remove(0);
                graph.initializer.push(value.to_tensor(&out));
                constants.insert(out, Some(value));
                folded += 1;
            }
            _ => kept.push(node),
        }
    }
    graph.node = kept;
    folded
}

/// Values whose shape is fully static: graph inputs and value_info with fixed dims.
fn static_shapes(graph: &GraphProto) -> HashMap<String, Vec<i64>> {
    let fixed = |v: &ValueInfoProto| -> Option<(String, Vec<i64>)> {
        let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref()?.value.as_ref() else {
            return None;
        };
        let dims = t
            .shape
            .as_ref()?
            .dim
            .iter()
            .map(|d| match d.value {
                Some(olive_onnx::proto::tensor_shape_proto::dimension::Value::DimValue(v)) => {
                    Some(v)
                }
                _ => None,
            })
            .collect::<Option<Vec<i64>>>()?;
        Some((v.name.clone()?, dims))
    };
    graph
        .input
        .iter()
        .chain(&graph.value_info)
        .filter_map(fixed)
        .collect()
}

/// The element type of each value where known: initializers, graph inputs, value_info, and outputs of ops whose
/// type follows from their inputs.
fn element_types(graph: &GraphProto) -> HashMap<String, i32> {
    let mut types: HashMap<String, i32> = HashMap::new();
    for v in graph.input.iter().chain(&graph.value_info) {
        if let Some(type_proto::Value::TensorType(t)) =
            v.r#type.as_ref().and_then(|t| t.value.as_ref())
        {
            if let (Some(name), Some(e)) = (&v.name, t.elem_type) {
                types.insert(name.clone(), e);
            }
        }
    }
    for t in &graph.initializer {
        if let (Some(name), Some(d)) = (&t.name, t.data_type) {
            types.insert(name.clone(), d);
        }
    }
    // In graph order (sorted): ops whose output type is their first input's, comparisons (bool), Shape (int64).
    for n in &graph.node {
        let Some(o) = n.output.first() else {
            continue;
        };
        let first = n.input.first().and_then(|x| types.get(x)).copied();
        let t = match n.op_type.as_deref().unwrap_or("") {
            "Cast" => attr_i(n, "to").map(|t| t as i32),
            "Reshape" | "Flatten" | "Gather" | "Transpose" | "Squeeze" | "Unsqueeze" | "Expand"
            | "Identity" | "Slice" | "Concat" | "Neg" | "Abs" => first,
            "Equal" | "Greater" | "Less" | "GreaterOrEqual" | "LessOrEqual" | "And" | "Or"
            | "Not" | "Xor" => Some(9),
            "Shape" | "Size" => Some(7),
            _ => None,
        };
        if let Some(t) = t {
            types.insert(o.clone(), t);
        }
    }
    types
}

/// Removes Identity nodes and Casts to the type their input already has; returns how many.
fn bypass(graph: &mut GraphProto) -> usize {
    let types = element_types(graph);
    let outputs: HashSet<String> = graph.output.iter().filter_map(|o| o.name.clone()).collect();
    let inputs: HashSet<String> = graph
        .input
        .iter()
        .filter_map(|o| o.name.clone())
        .chain(graph.initializer.iter().filter_map(|t| t.name.clone()))
        .collect();
    let mut rename: HashMap<String, String> = HashMap::new();
    let mut keep = vec![true; graph.node.len()];
    for (i, n) in graph.node.iter().enumerate() {
        let default_domain = matches!(n.domain.as_deref(), None | Some("") | Some("ai.onnx"));
        let noop = match n.op_type.as_deref() {
            Some("Identity") => true,
            Some("Cast") => {
                let to = attr_i(n, "to").map(|t| t as i32);
                let from = n.input.first().and_then(|x| types.get(x)).copied();
                to.is_some() && to == from && find_attr(n, "saturate").is_none()
            }
            _ => false,
        };
        let (Some(x), Some(y)) = (n.input.first(), n.output.first()) else {
            continue;
        };
        if !default_domain || !noop || n.output.len() != 1 {
            continue;
        }
        let x = rename.get(x).cloned().unwrap_or_else(|| x.clone());
        if outputs.contains(y) {
            // The output keeps its name: the producer of x is renamed to y instead, when x is no graph
            // input/initializer/output and nothing else reads it.
            let readers = graph.node.iter().filter(|m| m.input.contains(&x)).count();
            if inputs.contains(&x) || outputs.contains(&x) || readers != 1 {
                continue;
            }
            if !graph.node.iter().any(|m| m.output.contains(&x)) {
                continue;
            }
            rename.insert(x.clone(), y.clone());
            keep[i] = false;
            continue;
        }
        rename.insert(y.clone(), x);
        keep[i] = false;
    }
    if rename.is_empty() {
        return 0;
    }
    // Resolve chains (a -> b -> c).
    let resolve = |s: &str| {
        let mut cur = s.to_string();
        let mut hops = 0;
        while let Some(next) = rename.get(&cur) {
            cur = next.clone();
            hops += 1;
            if hops > rename.len() {
                break;
            }
        }
        cur
    };
    let removed = keep.iter().filter(|k| !**k).count();
    let mut nodes = Vec::with_capacity(graph.node.len());
    for (n, k) in std::mem::take(&mut graph.node).into_iter().zip(keep) {
        if !k {
            continue;
        }
        let mut n = n;
        for s in n.input.iter_mut().chain(n.output.iter_mut()) {
            if !s.is_empty() {
                *s = resolve(s);
            }
        }
        nodes.push(n);
    }
    graph.node = nodes;
    removed
}

/// Fuses `Reshape(Reshape(x, s1), s2)` into `Reshape(x, s2)` when s2 is a constant without 0 entries (so it does
/// not copy a dimension of the inner result) and the inner result has no other use (Olive's fuse_reshape_operations,
/// onnxscript's rewrite rule); returns how many.
pub(crate) fn fuse_reshapes(graph: &mut GraphProto) -> usize {
    let constants: HashMap<String, Option<Value>> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.clone().map(|n| (n, Value::from_tensor(t))))
        .collect();
    let outputs: HashSet<String> = graph.output.iter().filter_map(|o| o.name.clone()).collect();
    let mut uses: HashMap<String, usize> = HashMap::new();
    for n in &graph.node {
        for i in &n.input {
            *uses.entry(i.clone()).or_default() += 1;
        }
    }
    let producer: HashMap<String, usize> = graph
        .node
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.output.first().map(|o| (o.clone(), i)))
        .collect();
    let is_reshape = |n: &NodeProto| {
        n.op_type.as_deref() == Some("Reshape")
            && matches!(n.domain.as_deref(), None | Some("") | Some("ai.onnx"))
    };
    let mut rewired = Vec::new();
    for (i, n) in graph.node.iter().enumerate() {
        let (Some(inner_out), Some(shape)) = (n.input.first(), n.input.get(1)) else {
            continue;
        };
        let fixed = constants
            .get(shape)
            .cloned()
            .flatten()
            .and_then(|v| v.as_i64())
            .is_some_and(|s| !s.contains(&0));
        let Some(&p) = producer.get(inner_out) else {
            continue;
        };
        if !is_reshape(n)
            || !fixed
            || !is_reshape(&graph.node[p])
            || outputs.contains(inner_out)
            || uses[inner_out] != 1
        {
            continue;
        }
        if let Some(x) = graph.node[p].input.first() {
            rewired.push((i, x.clone()));
        }
    }
    for (i, x) in &rewired {
        graph.node[*i].input[0] = x.clone();
    }
    rewired.len()
}

/// Drops nodes none of whose outputs is used and unused initializers; returns the node count dropped.
pub(crate) fn remove_dead(graph: &mut GraphProto) -> usize {
    let mut removed = 0;
    loop {
        let mut used: HashSet<String> =
            graph.output.iter().filter_map(|o| o.name.clone()).collect();
        for n in &graph.node {
            used.extend(n.input.iter().cloned());
            for a in &n.attribute {
                for g in a.g.iter().chain(a.graphs.iter()) {
                    used.extend(crate::graph::subgraph_inputs(g));
                }
            }
        }
        let before = graph.node.len();
        graph
            .node
            .retain(|n| n.output.iter().any(|o| !o.is_empty() && used.contains(o)));
        graph
            .initializer
            .retain(|t| t.name.as_ref().is_some_and(|n| used.contains(n)));
        if graph.node.len() == before {
            break;
        }
        removed += before - graph.node.len();
    }
    removed
}
