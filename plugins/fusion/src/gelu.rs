//! GELU fusions of ONNX Runtime's transformers optimizer (onnxruntime/python/tools/transformers fusion_gelu.py,
//! fusion_fastgelu.py, fusion_biasgelu.py), to com.microsoft ops:
//! ```text
//! erf form:  0.5 * x * (1 + Erf(x / sqrt(2)))                              => Gelu(x)
//! tanh form: 0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))        => FastGelu(x)
//! x = Add(MatMul(·, W[K, N]), bias[N]) used only there                      => BiasGelu(mm, bias) / FastGelu(mm, bias)
//! ```
//! The `0.5 * x * (...)` tail is matched in the three orders exporters write it (fusion_gelu.py's patterns 1–3).

use olive_onnx::graph::node;

use crate::graph::{Rewriter, MS_DOMAIN};

/// sqrt(2/pi), FastGelu's constant.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
/// Tolerance on the pattern constants (exporters write them in f32, some rounded).
const TOLERANCE: f64 = 1e-4;

/// Fuses erf-form GELUs (with their MatMul bias when `with_bias`); returns how many.
pub fn fuse_gelu(r: &mut Rewriter, with_bias: bool) -> usize {
    let mut count = 0;
    for erf in 0..r.node_count() {
        if !r.is(erf, "Erf") {
            continue;
        }
        // x / sqrt(2) or x * (1 / sqrt(2))
        let scaled = r.node(erf).input[0].clone();
        let Some(pre) = r.producer(&scaled) else {
            continue;
        };
        let x = if r.is(pre, "Div") {
            match r.scalar_input(pre, std::f64::consts::SQRT_2, TOLERANCE) {
                Some((1, x)) => x,
                _ => continue,
            }
        } else if r.is(pre, "Mul") {
            match r.scalar_input(pre, std::f64::consts::FRAC_1_SQRT_2, TOLERANCE) {
                Some((_, x)) => x,
                _ => continue,
            }
        } else {
            continue;
        };
        let Some((tail, output)) = match_tail(r, erf, &x) else {
            continue;
        };
        let mut nodes = vec![pre, erf];
        nodes.extend(tail);
        if emit(r, nodes, &x, &output, "Gelu", "BiasGelu", with_bias) {
            count += 1;
        }
    }
    count
}

/// Fuses tanh-form GELUs into FastGelu (with the MatMul bias as its second input when `with_bias`); returns how
/// many.
pub fn fuse_fast_gelu(r: &mut Rewriter, with_bias: bool) -> usize {
    let mut count = 0;
    for tanh in 0..r.node_count() {
        if !r.is(tanh, "Tanh") {
            continue;
        }
        let Some(mul_c) = r.parent(tanh, 0, "Mul") else {
            continue;
        };
        let Some((_, inner)) = r.scalar_input(mul_c, SQRT_2_OVER_PI, TOLERANCE) else {
            continue;
        };
        // inner = x + 0.044715 * x^3
        let Some(add) = r.producer(&inner).filter(|&a| r.is(a, "Add")) else {
            continue;
        };
        let Some((x, cube_nodes)) = (0..2).find_map(|k| {
            let n = r.node(add);
            let (x, term) = (n.input.get(k)?, n.input.get(1 - k)?);
            let mul = r.producer(term).filter(|&m| r.is(m, "Mul"))?;
            let (_, pow_out) = r.scalar_input(mul, 0.044715, 1e-6)?;
            let pow = r.producer(&pow_out).filter(|&p| r.is(p, "Pow"))?;
            let (pk, px) = r.scalar_input(pow, 3.0, 0.0)?;
            (pk == 1 && &px == x).then(|| (x.clone(), vec![pow, mul]))
        }) else {
            continue;
        };
        let Some((tail, output)) = match_tail(r, tanh, &x) else {
            continue;
        };
        let mut nodes = cube_nodes;
        nodes.extend([add, mul_c, tanh]);
        nodes.extend(tail);
        if emit(r, nodes, &x, &output, "FastGelu", "FastGelu", with_bias) {
            count += 1;
        }
    }
    count
}

/// From the Erf/Tanh node `t`: `Add(t, 1)` then `0.5 * x * (...)` in one of three orders; returns the tail's
/// nodes and its output.
fn match_tail(r: &Rewriter, t: usize, x: &str) -> Option<(Vec<usize>, String)> {
    let add1 = r.only_child(t, "Add")?;
    r.scalar_input(add1, 1.0, 0.0)?;
    let m1 = r.only_child(add1, "Mul")?;
    let add1_out = r.node(add1).output.first()?.clone();
    let other = r.node(m1).input.iter().find(|i| **i != add1_out)?.clone();
    let out = |i: usize| r.node(i).output.first().cloned();
    // 1: Mul(x, 1 + erf) then Mul(·, 0.5)
    if other == x {
        let m2 = r.only_child(m1, "Mul")?;
        r.scalar_input(m2, 0.5, 0.0)?;
        return Some((vec![add1, m1, m2], out(m2)?));
    }
    // 2: Mul(Mul(x, 0.5), 1 + erf)
    if let Some(half) = r.producer(&other).filter(|&h| r.is(h, "Mul")) {
        if let Some((_, hx)) = r.scalar_input(half, 0.5, 0.0) {
            if hx == x {
                return Some((vec![add1, half, m1], out(m1)?));
            }
        }
    }
    // 3: Mul(1 + erf, 0.5) then Mul(x, ·)
    if r.scalar(&other).is_some_and(|v| v == 0.5) {
        let m2 = r.only_child(m1, "Mul")?;
        let m1_out = out(m1)?;
        let n = r.node(m2);
        if n.input.len() == 2 && n.input.contains(&m1_out) && n.input.iter().any(|i| i == x) {
            return Some((vec![add1, m1, m2], out(m2)?));
        }
    }
    None
}

/// Replaces `nodes` by `op(x)`, or `bias_op(mm, bias)` when `with_bias` and `x` is a MatMul+bias used only
/// inside the pattern.
fn emit(
    r: &mut Rewriter,
    mut nodes: Vec<usize>,
    x: &str,
    output: &str,
    op: &str,
    bias_op: &str,
    with_bias: bool,
) -> bool {
    let biased = with_bias
        .then(|| matmul_bias_of(r, x))
        .flatten()
        .filter(|(_, _, add)| {
            let mut with = nodes.clone();
            with.push(*add);
            r.removable(&with, &[output])
        });
    let (inputs, base) = match &biased {
        Some((mm, bias, add)) => {
            nodes.push(*add);
            (vec![mm.clone(), bias.clone()], bias_op)
        }
        None => (vec![x.to_string()], op),
    };
    if !r.removable(&nodes, &[output]) {
        return false;
    }
    let name = r.fresh(base);
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    r.replace(
        &nodes,
        node(MS_DOMAIN, base, &name, &inputs, &[output], vec![]),
    );
    true
}

/// `x` as (MatMul output, bias name, Add node) when it is `Add(MatMul(·, W[K, N]), bias[N])`.
fn matmul_bias_of(r: &Rewriter, x: &str) -> Option<(String, String, usize)> {
    let add = r.producer(x).filter(|&a| r.is(a, "Add"))?;
    let n = r.node(add);
    let k = (0..2).find(|&k| {
        n.input
            .get(k)
            .and_then(|i| r.constant(i))
            .is_some_and(|v| v.dims.len() == 1)
    })?;
    let (mm_out, bias) = (n.input.get(1 - k)?.clone(), n.input[k].clone());
    let mm = r.producer(&mm_out).filter(|&m| r.is(m, "MatMul"))?;
    let w = r.constant(r.node(mm).input.get(1)?)?;
    let b = r.constant(&bias)?;
    (w.dims.len() == 2 && w.dims[1] == b.dims[0]).then_some((mm_out, bias, add))
}
