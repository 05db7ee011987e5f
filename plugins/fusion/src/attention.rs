//! Self-attention fusion of ONNX Runtime's transformers optimizer (onnxruntime/python/tools/transformers
//! fusion_attention.py, BERT paths 1, 2 and 5) into com.microsoft `Attention` (packed QKV weight [H, 3·Hq], bias
//! [3·Hq], the 2-D 0/1 attention mask as int32, attributes num_heads and scale):
//! ```text
//! q = Transpose(0,2,1,3)(Reshape(Add(MatMul(x, Wq), bq), [B, S, N, D]))
//! k = Transpose(0,2,3,1)(Reshape(Add(MatMul(x, Wk), bk)))   (or Transpose(0,1,3,2) of Transpose(0,2,1,3))
//! v = Transpose(0,2,1,3)(Reshape(Add(MatMul(x, Wv), bv)))
//! y = Reshape(Transpose(0,2,1,3)(MatMul(Softmax(Add(Mul|Div(MatMul(q, k), scale), mask)), v)), [B, S, Hq])
//! ```
//! The additive mask is matched as ORT matches it: `Mul(Sub(1, Cast?(Unsqueeze(Unsqueeze(m)))), c < 0)` (BERT
//! exports) or transformers 5's eager mask `Where(Expand(And(·, Reshape(Reshape(Gather(Flatten(m)))))), 0, c < 0)`;
//! `m` (the [B, S] 0/1 mask) becomes Attention's raw 2-D mask input, which masks exactly the same keys.

use std::collections::HashMap;

use olive_onnx::graph::{attr_float, attr_int, node};
use olive_onnx::rewrite::{Elements, Value};

use crate::graph::{attr_i, attr_ints, Rewriter, MS_DOMAIN};

/// One projection: (MatMul, Add, Reshape, Transpose nodes, weight [H, Hq], bias [Hq], head size from the Reshape).
struct Projection {
    nodes: Vec<usize>,
    x: String,
    weight: Vec<f32>,
    bias: Vec<f32>,
    rows: usize,
    cols: usize,
    head_size: Option<i64>,
}

fn perm(r: &Rewriter, i: usize) -> Option<Vec<i64>> {
    attr_ints(r.node(i), "perm")
}

/// From the Transpose node `t` (already checked): Reshape ← Add(bias) ← MatMul(x, W).
fn projection(r: &Rewriter, t: usize) -> Option<Projection> {
    let reshape = r.parent(t, 0, "Reshape")?;
    let add = r.parent(reshape, 0, "Add")?;
    let n = r.node(add);
    let (mm, bias) = (0..2).find_map(|k| {
        let mm = r.parent(add, k, "MatMul")?;
        let b = r.constant(n.input.get(1 - k)?)?;
        Some((mm, b))
    })?;
    let x = r.node(mm).input.first()?.clone();
    let w = r.constant(r.node(mm).input.get(1)?)?;
    let (Elements::F32(weight), Elements::F32(bias)) = (w.elements, bias.elements) else {
        return None;
    };
    let [rows, cols] = w.dims.as_slice() else {
        return None;
    };
    let (rows, cols) = (*rows as usize, *cols as usize);
    if bias.len() != cols {
        return None;
    }
    Some(Projection {
        nodes: vec![mm, add, reshape, t],
        x,
        weight,
        bias,
        rows,
        cols,
        head_size: head_size_of(r, reshape),
    })
}

/// The last entry of a Reshape's target shape: a constant, or the constant last input of the Concat building it.
fn head_size_of(r: &Rewriter, reshape: usize) -> Option<i64> {
    let shape = r.node(reshape).input.get(1)?;
    if let Some(v) = r.constant(shape).and_then(|v| v.as_i64()) {
        return v.last().copied().filter(|&d| d > 0);
    }
    let concat = r.producer(shape).filter(|&c| r.is(c, "Concat"))?;
    let last = r.node(concat).input.last()?;
    r.constant(last)?
        .as_i64()?
        .last()
        .copied()
        .filter(|&d| d > 0)
}

/// The [B, S] mask behind an additive attention mask value, as ORT's fusion_attention.py finds it.
fn mask_2d(r: &Rewriter, additive: &str) -> Option<String> {
    let p = r.producer(additive)?;
    let negative = |name: &str| r.scalar(name).is_some_and(|v| v < 0.0);
    if r.is(p, "Mul") {
        let n = r.node(p);
        let (k, _) = (0..2).find_map(|k| negative(n.input.get(k)?).then_some((k, ())))?;
        let sub = r.parent(p, 1 - k, "Sub")?;
        if r.scalar(r.node(sub).input.first()?) != Some(1.0) {
            return None;
        }
        let mut cur = r.node(sub).input.get(1)?.clone();
        if let Some(c) = r.producer(&cur).filter(|&c| r.is(c, "Cast")) {
            cur = r.node(c).input.first()?.clone();
        }
        for _ in 0..2 {
            let u = r.producer(&cur).filter(|&u| r.is(u, "Unsqueeze"))?;
            cur = r.node(u).input.first()?.clone();
        }
        return Some(cur);
    }
    if r.is(p, "Where") {
        let n = r.node(p);
        if r.scalar(n.input.get(1)?) != Some(0.0) || !negative(n.input.get(2)?) {
            return None;
        }
        let expand = r.parent(p, 0, "Expand")?;
        let and = r.parent(expand, 0, "And")?;
        let mut reshape = r.parent(and, 1, "Reshape");
        if reshape.is_none() {
            // A Cast to bool of the bool mask may still be there when its input type was unknown.
            let cast = r.parent(and, 1, "Cast")?;
            reshape = r.parent(cast, 0, "Reshape");
        }
        let reshape = reshape?;
        let reshape = r.parent(reshape, 0, "Reshape")?;
        let gather = r.parent(reshape, 0, "Gather")?;
        let flatten = r.parent(gather, 0, "Flatten")?;
        return r.node(flatten).input.first().cloned();
    }
    None
}

/// Fuses self-attention blocks; `num_heads` 0 means: from the Reshape's head size. Returns how many.
pub fn fuse_attention(r: &mut Rewriter, num_heads: i64) -> usize {
    let mut count = 0;
    let mut casts: HashMap<String, String> = HashMap::new();
    for sm in 0..r.node_count() {
        if !r.is(sm, "Softmax") || attr_i(r.node(sm), "axis").is_some_and(|a| a != -1 && a != 3) {
            continue;
        }
        let Some(m) = match_attention(r, sm, num_heads) else {
            continue;
        };
        if !r.removable(&m.nodes, &[&m.output]) {
            continue;
        }
        let mask = m.mask.as_ref().map(|mask| match casts.get(mask) {
            Some(c) => c.clone(),
            None => {
                let out = r.fresh(&format!("{mask}_int32"));
                let name = r.fresh("MaskCast");
                let cast = node("", "Cast", &name, &[mask], &[&out], vec![attr_int("to", 6)]);
                // Placed by the topological sort after its input, before the first Attention.
                r.replace(&[], cast);
                casts.insert(mask.clone(), out.clone());
                out
            }
        });
        let w = r.add_initializer("Attention_qkv_weight", &m.weight);
        let b = r.add_initializer("Attention_qkv_bias", &m.bias);
        let mut inputs = vec![m.x.as_str(), w.as_str(), b.as_str()];
        if let Some(mask) = &mask {
            inputs.push(mask);
        }
        let mut attrs = vec![attr_int("num_heads", m.num_heads)];
        let default_scale = 1.0 / (m.head_size as f64).sqrt();
        if (m.scale - default_scale).abs() > 1e-6 * default_scale {
            attrs.push(attr_float("scale", m.scale as f32));
        }
        let name = r.fresh("Attention");
        let fused = node(MS_DOMAIN, "Attention", &name, &inputs, &[&m.output], attrs);
        r.replace(&m.nodes, fused);
        count += 1;
    }
    count
}

struct AttentionMatch {
    nodes: Vec<usize>,
    x: String,
    weight: Value,
    bias: Value,
    mask: Option<String>,
    num_heads: i64,
    head_size: i64,
    scale: f64,
    output: String,
}

fn match_attention(r: &Rewriter, sm: usize, num_heads: i64) -> Option<AttentionMatch> {
    // Softmax ← Add(scaled, mask) | scaled
    let (scaled_node, add_qk, mask) = match r.parent(sm, 0, "Add") {
        Some(add) => {
            let n = r.node(add);
            let k = (0..2).find(|&k| {
                r.producer(&n.input[k])
                    .is_some_and(|p| r.is(p, "Mul") || r.is(p, "Div"))
            })?;
            let mask = mask_2d(r, n.input.get(1 - k)?)?;
            (r.producer(&n.input[k])?, Some(add), Some(mask))
        }
        None => {
            let p = r.producer(&r.node(sm).input[0])?;
            (p, None, None)
        }
    };
    let is_div = r.is(scaled_node, "Div");
    if !is_div && !r.is(scaled_node, "Mul") {
        return None;
    }
    let sn = r.node(scaled_node);
    let (k, _) = (0..2).find_map(|k| r.scalar(sn.input.get(k)?).map(|c| (k, c)))?;
    if is_div && k != 1 {
        return None;
    }
    let c = r.scalar(&sn.input[k])?;
    let scale = if is_div { 1.0 / c } else { c };
    let mm_qk = r.parent(scaled_node, 1 - k, "MatMul")?;
    // q
    let tq = r.parent(mm_qk, 0, "Transpose")?;
    if perm(r, tq)? != [0, 2, 1, 3] {
        return None;
    }
    let q = projection(r, tq)?;
    // k: Transpose(0,2,3,1), or Transpose(0,1,3,2) of Transpose(0,2,1,3)
    let tk = r.parent(mm_qk, 1, "Transpose")?;
    let (k_proj, extra) = match perm(r, tk)?.as_slice() {
        [0, 2, 3, 1] => (projection(r, tk)?, None),
        [0, 1, 3, 2] => {
            let inner = r.parent(tk, 0, "Transpose")?;
            if perm(r, inner)? != [0, 2, 1, 3] {
                return None;
            }
            (projection(r, inner)?, Some(tk))
        }
        _ => return None,
    };
    // v and the output
    let mm_v = r.only_child(sm, "MatMul")?;
    if r.node(mm_v).input.first() != r.node(sm).output.first() {
        return None;
    }
    let tv = r.parent(mm_v, 1, "Transpose")?;
    if perm(r, tv)? != [0, 2, 1, 3] {
        return None;
    }
    let v = projection(r, tv)?;
    let t_out = r.only_child(mm_v, "Transpose")?;
    if perm(r, t_out)? != [0, 2, 1, 3] {
        return None;
    }
    let reshape_out = r.only_child(t_out, "Reshape")?;
    if q.x != k_proj.x || q.x != v.x || q.rows != k_proj.rows || q.rows != v.rows {
        return None;
    }
    if q.cols != k_proj.cols || q.cols != v.cols {
        return None;
    }
    let head_size = q
        .head_size
        .filter(|&d| Some(d) == k_proj.head_size && Some(d) == v.head_size)?;
    let heads = if num_heads > 0 {
        num_heads
    } else {
        q.cols as i64 / head_size
    };
    if heads * head_size != q.cols as i64 {
        return None;
    }
    // Packed weight [H, 3·Hq]: each row is q's row, k's row, v's row.
    let (rows, cols) = (q.rows, q.cols);
    let mut weight = Vec::with_capacity(rows * cols * 3);
    for row in 0..rows {
        for p in [&q, &k_proj, &v] {
            weight.extend_from_slice(&p.weight[row * cols..(row + 1) * cols]);
        }
    }
    let bias: Vec<f32> = [&q.bias, &k_proj.bias, &v.bias]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    let mut nodes = q.nodes.clone();
    nodes.extend(&k_proj.nodes);
    nodes.extend(&v.nodes);
    nodes.extend([mm_qk, scaled_node, sm, mm_v, t_out, reshape_out]);
    nodes.extend(add_qk);
    nodes.extend(extra);
    Some(AttentionMatch {
        nodes,
        x: q.x.clone(),
        weight: Value::f32(vec![rows as i64, 3 * cols as i64], weight),
        bias: Value::f32(vec![3 * cols as i64], bias),
        mask,
        num_heads: heads,
        head_size,
        scale,
        output: r.node(reshape_out).output.first()?.clone(),
    })
}
