//! Evaluation of ONNX ops on constant inputs (semantics per onnx/docs/Operators.md, opsets 1–21) for constant
//! folding: Cast, Shape (of a constant), Unsqueeze, Squeeze, Concat, Gather, Reshape, Identity, ConstantOfShape,
//! Range and the elementwise Add/Sub/Mul/Div/Sqrt/Neg with numpy broadcasting. An op or type outside these gives
//! `None` (the node stays).

use olive_onnx::proto::NodeProto;
use olive_onnx::rewrite::{Elements, Value};

use crate::graph::{attr_i, attr_ints, find_attr};

/// Largest folded tensor kept as a constant (elements): bigger results stay computed at run time.
pub const MAX_FOLDED_ELEMENTS: usize = 1 << 20;

/// The outputs of `node` given its constant inputs (`None` for an empty optional slot), or `None` when it cannot
/// be folded.
pub fn evaluate(node: &NodeProto, inputs: &[Option<Value>]) -> Option<Vec<Value>> {
    let op = node.op_type.as_deref()?;
    let input = |k: usize| inputs.get(k).and_then(Option::as_ref);
    let out = match op {
        "Identity" => input(0)?.clone(),
        "Cast" => cast(input(0)?, attr_i(node, "to")?)?,
        "Shape" => {
            let dims = &input(0)?.dims;
            let rank = dims.len() as i64;
            let norm = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
            let start = norm(attr_i(node, "start").unwrap_or(0));
            let end = norm(attr_i(node, "end").unwrap_or(rank));
            let d = dims.get(start..end.max(start))?.to_vec();
            Value::i64(vec![d.len() as i64], d)
        }
        "Unsqueeze" | "Squeeze" => {
            let x = input(0)?;
            let axes = match input(1) {
                Some(a) => a.as_i64()?,
                None => attr_ints(node, "axes").unwrap_or_default(),
            };
            let dims = if op == "Unsqueeze" {
                unsqueeze_dims(&x.dims, &axes)?
            } else {
                squeeze_dims(&x.dims, &axes)?
            };
            Value {
                dims,
                elements: x.elements.clone(),
            }
        }
        "Reshape" => {
            let x = input(0)?;
            let shape = input(1)?.as_i64()?;
            let allow_zero = attr_i(node, "allowzero").unwrap_or(0) == 1;
            Value {
                dims: reshape_dims(&x.dims, &shape, allow_zero, x.len())?,
                elements: x.elements.clone(),
            }
        }
        "Concat" => {
            let parts: Vec<&Value> = inputs.iter().map(Option::as_ref).collect::<Option<_>>()?;
            concat(&parts, attr_i(node, "axis")?)?
        }
        "Gather" => gather(input(0)?, input(1)?, attr_i(node, "axis").unwrap_or(0))?,
        "ConstantOfShape" => {
            let dims = input(0)?.as_i64()?;
            let count: i64 = dims.iter().product();
            let count = usize::try_from(count).ok()?;
            let fill = match find_attr(node, "value").and_then(|a| a.t.as_ref()) {
                Some(t) => Value::from_tensor(t)?,
                None => Value::f32(vec![1], vec![0.0]),
            };
            if count > MAX_FOLDED_ELEMENTS || fill.len() != 1 {
                return None;
            }
            Value {
                dims,
                elements: repeat(&fill.elements, count),
            }
        }
        "Range" => {
            let (s, l, d) = (
                input(0)?.scalar()?,
                input(1)?.scalar()?,
                input(2)?.scalar()?,
            );
            if d == 0.0 {
                return None;
            }
            let n = ((l - s) / d).ceil().max(0.0) as usize;
            if n > MAX_FOLDED_ELEMENTS {
                return None;
            }
            let v: Vec<f64> = (0..n).map(|i| s + d * i as f64).collect();
            from_f64(vec![n as i64], &v, input(0)?.data_type())?
        }
        "Add" | "Sub" | "Mul" | "Div" => binary(op, input(0)?, input(1)?)?,
        "Sqrt" | "Neg" => {
            let x = input(0)?;
            let v: Vec<f64> = x
                .as_f64()
                .into_iter()
                .map(|a| if op == "Sqrt" { a.sqrt() } else { -a })
                .collect();
            from_f64(x.dims.clone(), &v, x.data_type())?
        }
        _ => return None,
    };
    (out.len() <= MAX_FOLDED_ELEMENTS).then(|| vec![out])
}

fn repeat(e: &Elements, n: usize) -> Elements {
    match e {
        Elements::F32(v) => Elements::F32(vec![v[0]; n]),
        Elements::I32(v) => Elements::I32(vec![v[0]; n]),
        Elements::I64(v) => Elements::I64(vec![v[0]; n]),
        Elements::Bool(v) => Elements::Bool(vec![v[0]; n]),
        _ => Elements::F32(Vec::new()),
    }
}

/// `values` as a tensor of ONNX type `to` (float, int32, int64, bool), C-style casts.
fn from_f64(dims: Vec<i64>, values: &[f64], to: i32) -> Option<Value> {
    let elements = match to {
        1 => Elements::F32(values.iter().map(|&v| v as f32).collect()),
        6 => Elements::I32(values.iter().map(|&v| v as i32).collect()),
        7 => Elements::I64(values.iter().map(|&v| v as i64).collect()),
        9 => Elements::Bool(values.iter().map(|&v| v != 0.0).collect()),
        _ => return None,
    };
    Some(Value { dims, elements })
}

fn cast(x: &Value, to: i64) -> Option<Value> {
    let to = i32::try_from(to).ok()?;
    if to == x.data_type() {
        return Some(x.clone());
    }
    if let (Elements::I64(v), 6) = (&x.elements, to) {
        return Some(Value {
            dims: x.dims.clone(),
            elements: Elements::I32(v.iter().map(|&a| a as i32).collect()),
        });
    }
    if let (Some(v), 7) = (x.as_i64(), to) {
        return Some(Value::i64(x.dims.clone(), v));
    }
    from_f64(x.dims.clone(), &x.as_f64(), to)
}

fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

fn unsqueeze_dims(dims: &[i64], axes: &[i64]) -> Option<Vec<i64>> {
    let rank = dims.len() + axes.len();
    let mut axes: Vec<usize> = axes
        .iter()
        .map(|&a| norm_axis(a, rank))
        .collect::<Option<_>>()?;
    axes.sort_unstable();
    axes.dedup();
    if axes.len() + dims.len() != rank {
        return None;
    }
    let mut rest = dims.iter();
    (0..rank)
        .map(|d| {
            if axes.contains(&d) {
                Some(1)
            } else {
                rest.next().copied()
            }
        })
        .collect()
}

fn squeeze_dims(dims: &[i64], axes: &[i64]) -> Option<Vec<i64>> {
    if axes.is_empty() {
        return Some(dims.iter().copied().filter(|&d| d != 1).collect());
    }
    let axes: Vec<usize> = axes
        .iter()
        .map(|&a| norm_axis(a, dims.len()))
        .collect::<Option<_>>()?;
    if axes.iter().any(|&a| dims[a] != 1) {
        return None;
    }
    Some(
        dims.iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, &d)| d)
            .collect(),
    )
}

fn reshape_dims(dims: &[i64], shape: &[i64], allow_zero: bool, count: usize) -> Option<Vec<i64>> {
    let mut out: Vec<i64> = shape
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            if s == 0 && !allow_zero {
                dims.get(i).copied()
            } else {
                Some(s)
            }
        })
        .collect::<Option<_>>()?;
    let known: i64 = out.iter().filter(|&&d| d != -1).product();
    match out.iter().filter(|&&d| d == -1).count() {
        0 => {}
        1 if known > 0 && count as i64 % known == 0 => {
            let fill = count as i64 / known;
            out.iter_mut().filter(|d| **d == -1).for_each(|d| *d = fill);
        }
        _ => return None,
    }
    (out.iter().product::<i64>() == count as i64).then_some(out)
}

fn concat(parts: &[&Value], axis: i64) -> Option<Value> {
    let first = parts.first()?;
    let rank = first.dims.len();
    let axis = norm_axis(axis, rank)?;
    let dtype = first.data_type();
    if parts
        .iter()
        .any(|p| p.data_type() != dtype || p.dims.len() != rank)
    {
        return None;
    }
    let outer: i64 = first.dims[..axis].iter().product();
    let inner: i64 = first.dims[axis + 1..].iter().product();
    let mut dims = first.dims.clone();
    dims[axis] = parts.iter().map(|p| p.dims[axis]).sum();
    let mut values = Vec::new();
    for o in 0..outer as usize {
        for p in parts {
            let block = (p.dims[axis] * inner) as usize;
            let v = p.as_f64();
            values.extend_from_slice(v.get(o * block..(o + 1) * block)?);
        }
    }
    match parts.iter().map(|p| p.as_i64()).collect::<Option<Vec<_>>>() {
        // Integers are concatenated exactly (int64 shapes can exceed f64's 2^53).
        Some(ints) if dtype == 7 => {
            let mut out = Vec::new();
            for o in 0..outer as usize {
                for (p, v) in parts.iter().zip(&ints) {
                    let block = (p.dims[axis] * inner) as usize;
                    out.extend_from_slice(v.get(o * block..(o + 1) * block)?);
                }
            }
            Some(Value::i64(dims, out))
        }
        _ => from_f64(dims, &values, dtype),
    }
}

fn gather(data: &Value, indices: &Value, axis: i64) -> Option<Value> {
    let axis = norm_axis(axis, data.dims.len())?;
    let idx = indices.as_i64()?;
    let n = data.dims[axis];
    let outer: i64 = data.dims[..axis].iter().product();
    let inner: i64 = data.dims[axis + 1..].iter().product();
    let mut picks = Vec::with_capacity(outer as usize * idx.len() * inner as usize);
    for o in 0..outer {
        for &i in &idx {
            let i = if i < 0 { i + n } else { i };
            if !(0..n).contains(&i) {
                return None;
            }
            let base = (o * n + i) * inner;
            picks.extend((base..base + inner).map(|p| p as usize));
        }
    }
    let mut dims = data.dims[..axis].to_vec();
    dims.extend_from_slice(&indices.dims);
    dims.extend_from_slice(&data.dims[axis + 1..]);
    let elements = match &data.elements {
        Elements::F32(v) => Elements::F32(picks.iter().map(|&p| v[p]).collect()),
        Elements::I32(v) => Elements::I32(picks.iter().map(|&p| v[p]).collect()),
        Elements::I64(v) => Elements::I64(picks.iter().map(|&p| v[p]).collect()),
        Elements::Bool(v) => Elements::Bool(picks.iter().map(|&p| v[p]).collect()),
        _ => return None,
    };
    Some(Value { dims, elements })
}

/// Numpy broadcasting of two shapes.
fn broadcast(a: &[i64], b: &[i64]) -> Option<Vec<i64>> {
    let rank = a.len().max(b.len());
    (0..rank)
        .map(|i| {
            let da = if i + a.len() >= rank {
                a[i + a.len() - rank]
            } else {
                1
            };
            let db = if i + b.len() >= rank {
                b[i + b.len() - rank]
            } else {
                1
            };
            match (da, db) {
                (x, y) if x == y => Some(x),
                (1, y) => Some(y),
                (x, 1) => Some(x),
                _ => None,
            }
        })
        .collect()
}

/// The flat index into a tensor of `dims` for the output position `pos` of `out` dims (broadcast).
fn source_index(pos: usize, out: &[i64], dims: &[i64]) -> usize {
    let mut rem = pos;
    let mut index = 0usize;
    let mut stride = 1usize;
    for (k, &od) in out.iter().enumerate().rev() {
        let coord = rem % od as usize;
        rem /= od as usize;
        let off = out.len() - dims.len();
        if k >= off {
            let d = dims[k - off] as usize;
            if d != 1 {
                index += coord * stride;
            }
            stride *= d;
        }
    }
    index
}

fn binary(op: &str, a: &Value, b: &Value) -> Option<Value> {
    if a.data_type() != b.data_type() {
        return None;
    }
    let dims = broadcast(&a.dims, &b.dims)?;
    let count = dims.iter().product::<i64>() as usize;
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        let v: Vec<i64> = (0..count)
            .map(|p| {
                let (x, y) = (
                    x[source_index(p, &dims, &a.dims)],
                    y[source_index(p, &dims, &b.dims)],
                );
                match op {
                    "Add" => Some(x.wrapping_add(y)),
                    "Sub" => Some(x.wrapping_sub(y)),
                    "Mul" => Some(x.wrapping_mul(y)),
                    // ONNX integer Div truncates toward zero, as C does.
                    _ => x.checked_div(y),
                }
            })
            .collect::<Option<_>>()?;
        let v: Vec<f64> = v.iter().map(|&x| x as f64).collect();
        return match a.data_type() {
            7 => Some(Value::i64(dims, v.iter().map(|&x| x as i64).collect())),
            t => from_f64(dims, &v, t),
        };
    }
    let (Elements::F32(x), Elements::F32(y)) = (&a.elements, &b.elements) else {
        return None;
    };
    let v: Vec<f32> = (0..count)
        .map(|p| {
            let (x, y) = (
                x[source_index(p, &dims, &a.dims)],
                y[source_index(p, &dims, &b.dims)],
            );
            match op {
                "Add" => x + y,
                "Sub" => x - y,
                "Mul" => x * y,
                _ => x / y,
            }
        })
        .collect();
    Some(Value::f32(dims, v))
}
