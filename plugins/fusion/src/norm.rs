//! Layer normalization fusions of ONNX Runtime's transformers optimizer (onnxruntime/python/tools/transformers
//! fusion_layernorm.py, fusion_skiplayernorm.py):
//! ```text
//! x ─ReduceMean(-1)─Sub(x, ·)─Pow(·, 2)─ReduceMean(-1)─Add(eps)─Sqrt─Div(sub, ·)─Mul(gamma)─Add(beta)
//!   => LayerNormalization(x, gamma, beta; axis -1, epsilon eps)
//! Add(a, b) ─LayerNormalization  (one of a, b a MatMul's output, maybe through Add(·, bias[N]))
//!   => com.microsoft SkipLayerNormalization(input, skip, gamma, beta[, bias]; epsilon)
//! ```

use olive_onnx::graph::{attr_float, node};

use crate::graph::{attr_i, attr_ints, find_attr, Rewriter, MS_DOMAIN};

/// Whether ReduceMean node `i` averages over the last axis only (axes as attribute, or as a constant input
/// from opset 18).
fn reduces_last_axis(r: &Rewriter, i: usize) -> bool {
    let n = r.node(i);
    let axes = match n.input.get(1) {
        Some(a) => r.constant(a).and_then(|v| v.as_i64()),
        None => attr_ints(n, "axes"),
    };
    // keepdims defaults to 1, which the broadcasting Sub needs.
    axes.as_deref() == Some(&[-1]) && attr_i(n, "keepdims").unwrap_or(1) == 1
}

/// Fuses the decomposed layer norm; returns how many.
pub fn fuse_layer_norm(r: &mut Rewriter) -> usize {
    let mut count = 0;
    for rm1 in 0..r.node_count() {
        if !r.is(rm1, "ReduceMean") || !reduces_last_axis(r, rm1) {
            continue;
        }
        let Some(m) = match_layer_norm(r, rm1) else {
            continue;
        };
        if !r.removable(&m.nodes, &[&m.output]) {
            continue;
        }
        let name = r.fresh("LayerNorm");
        let ln = node(
            "",
            "LayerNormalization",
            &name,
            &[&m.x, &m.gamma, &m.beta],
            &[&m.output],
            vec![
                olive_onnx::graph::attr_int("axis", -1),
                attr_float("epsilon", m.epsilon),
            ],
        );
        r.replace(&m.nodes, ln);
        count += 1;
    }
    count
}

struct LayerNormMatch {
    nodes: Vec<usize>,
    x: String,
    gamma: String,
    beta: String,
    epsilon: f32,
    output: String,
}

fn match_layer_norm(r: &Rewriter, rm1: usize) -> Option<LayerNormMatch> {
    let x = r.node(rm1).input.first()?.clone();
    let mean = r.node(rm1).output.first()?.clone();
    let sub = *r.consumers(&mean).first().filter(|&&s| r.is(s, "Sub"))?;
    let sub_node = r.node(sub);
    if sub_node.input != [x.clone(), mean.clone()] || r.consumers(&mean).len() != 1 {
        return None;
    }
    let centered = sub_node.output.first()?.clone();
    let children = r.consumers(&centered);
    if children.len() != 2 {
        return None;
    }
    let pow = *children.iter().find(|&&c| r.is(c, "Pow"))?;
    let div = *children.iter().find(|&&c| r.is(c, "Div"))?;
    let (k, _) = r.scalar_input(pow, 2.0, 0.0)?;
    if k != 1 || r.node(div).input.first() != Some(&centered) {
        return None;
    }
    let rm2 = r.only_child(pow, "ReduceMean")?;
    if !reduces_last_axis(r, rm2) {
        return None;
    }
    let add_eps = r.only_child(rm2, "Add")?;
    let epsilon = r.node(add_eps).input.iter().find_map(|i| r.scalar(i))?;
    let sqrt = r.only_child(add_eps, "Sqrt")?;
    if r.only_child(sqrt, "Div") != Some(div) {
        return None;
    }
    let mul = r.only_child(div, "Mul")?;
    let gamma = other_input(r, mul, r.node(div).output.first()?)?;
    let add = r.only_child(mul, "Add")?;
    let beta = other_input(r, add, r.node(mul).output.first()?)?;
    let one_d = |name: &str| r.constant(name).is_some_and(|v| v.dims.len() == 1);
    if !one_d(&gamma) || !one_d(&beta) {
        return None;
    }
    Some(LayerNormMatch {
        nodes: vec![rm1, sub, pow, rm2, add_eps, sqrt, div, mul, add],
        x,
        gamma,
        beta,
        epsilon: epsilon as f32,
        output: r.node(add).output.first()?.clone(),
    })
}

/// Of a two-input node, the input that is not `this`.
fn other_input(r: &Rewriter, i: usize, this: &str) -> Option<String> {
    match r.node(i).input.as_slice() {
        [a, b] if a == this => Some(b.clone()),
        [a, b] if b == this => Some(a.clone()),
        _ => None,
    }
}

/// `value` as (MatMul output, bias) when it is `Add(MatMul(·, W[K, N]), bias[N])` with the Add used once; else
/// `None`. The second item is the Add node.
fn matmul_bias(r: &Rewriter, value: &str) -> Option<(String, String, usize)> {
    let add = r.producer(value).filter(|&a| r.is(a, "Add"))?;
    let n = r.node(add);
    let (k, bias) = (0..2).find_map(|k| {
        let v = r.constant(n.input.get(k)?)?;
        (v.dims.len() == 1).then(|| (k, n.input[k].clone()))
    })?;
    let mm_out = n.input.get(1 - k)?.clone();
    let mm = r.producer(&mm_out).filter(|&m| r.is(m, "MatMul"))?;
    let w = r.constant(r.node(mm).input.get(1)?)?;
    let bias_len = r.constant(&bias)?.dims[0];
    (w.dims.len() == 2
        && w.dims[1] == bias_len
        && r.consumers(value).len() == 1
        && !r.is_output(value))
    .then_some((mm_out, bias, add))
}

/// Whether `value` is a MatMul's output.
fn from_matmul(r: &Rewriter, value: &str) -> bool {
    r.producer(value).is_some_and(|p| r.is(p, "MatMul"))
}

/// Fuses Add + LayerNormalization into SkipLayerNormalization (with the bias of a MatMul+Add folded in when
/// `with_bias`); returns how many.
pub fn fuse_skip_layer_norm(r: &mut Rewriter, with_bias: bool) -> usize {
    let mut count = 0;
    for ln in 0..r.node_count() {
        if !r.is(ln, "LayerNormalization")
            || r.node(ln).input.len() != 3
            || r.node(ln).output.len() != 1
        {
            continue;
        }
        if attr_i(r.node(ln), "axis").unwrap_or(-1) != -1 {
            continue;
        }
        let Some(add) = r.parent(ln, 0, "Add") else {
            continue;
        };
        let (a, b) = match r.node(add).input.as_slice() {
            [a, b] if !r.is_initializer(a) && !r.is_initializer(b) && a != b => {
                (a.clone(), b.clone())
            }
            _ => continue,
        };
        // The MatMul side is the input (its bias may fold in); the other is the skip (residual).
        let a_mm = with_bias.then(|| matmul_bias(r, &a)).flatten();
        let b_mm = with_bias.then(|| matmul_bias(r, &b)).flatten();
        let (input, skip, bias) = match (a_mm, b_mm) {
            (Some((mm, bias, badd)), _) => (mm, b, Some((bias, badd))),
            (None, Some((mm, bias, badd))) => (mm, a, Some((bias, badd))),
            _ if from_matmul(r, &a) => (a, b, None),
            _ if from_matmul(r, &b) => (b, a, None),
            _ => continue,
        };
        let sum = r.node(add).output[0].clone();
        let mut nodes = vec![add, ln];
        if let Some((_, badd)) = &bias {
            nodes.push(*badd);
        }
        let sum_used_elsewhere = r.is_output(&sum) || r.consumers(&sum).len() > 1;
        let out = r.node(ln).output[0].clone();
        let kept: Vec<&str> = if sum_used_elsewhere {
            vec![&out, &sum]
        } else {
            vec![&out]
        };
        if !r.removable(&nodes, &kept) {
            continue;
        }
        let ln_node = r.node(ln);
        let epsilon = find_attr(ln_node, "epsilon")
            .and_then(|a| a.f)
            .unwrap_or(1e-5);
        let (gamma, beta) = (ln_node.input[1].clone(), ln_node.input[2].clone());
        let mut inputs = vec![input.as_str(), skip.as_str(), gamma.as_str(), beta.as_str()];
        if let Some((bias, _)) = &bias {
            inputs.push(bias);
        }
        let outputs: Vec<&str> = if sum_used_elsewhere {
            vec![&out, "", "", &sum]
        } else {
            vec![&out]
        };
        let name = r.fresh("SkipLayerNorm");
        let fused = node(
            MS_DOMAIN,
            "SkipLayerNormalization",
            &name,
            &inputs,
            &outputs,
            vec![attr_float("epsilon", epsilon)],
        );
        r.replace(&nodes, fused);
        count += 1;
    }
    count
}
