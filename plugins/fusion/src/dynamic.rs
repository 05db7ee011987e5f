//! Dynamic int8 quantization of any ONNX model's MatMuls: Olive's `OnnxDynamicQuantization`
//! (olive/passes/onnx/quantization.py, which calls onnxruntime.quantization.quantize_dynamic), QOperator format as
//! ONNX Runtime writes it (onnxruntime/python/tools/quantization/operators/matmul.py `MatMulInteger`):
//! ```text
//! MatMul(A, B[K, N] float)  =>  DynamicQuantizeLinear(A) -> (a_q uint8, a_scale, a_zp)
//!                               MatMulInteger(a_q, B_q, a_zp, B_zp) -> Cast(float) -> Mul(·, a_scale · B_scale)
//! ```
//! B is quantized per tensor as quant_utils.py `quantize_data` does: range widened to include 0 (symmetric for
//! int8 weights: [-absmax, absmax] on [-127, 127]; uint8: asymmetric on [0, 255]; reduce_range: [-64, 64] /
//! [0, 127]), scale = range / (qmax - qmin) computed in f64 and stored as f32, q = clip(round_half_even(w / scale) +
//! zp). Only MatMuls with a constant float weight are quantized (ORT's default list also takes Attention, Gather,
//! Conv, ...: those are refused in op_types_to_quantize).

use std::collections::{BTreeMap, HashMap, HashSet};

use olive_onnx::graph::{attr_int, node};
use olive_onnx::proto::TensorProto;
use olive_onnx::rewrite::{Elements, Value};
use olive_pass_sdk::{kinds, Context, Error, Model, Pass};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::graph::Rewriter;
use crate::{graph_of, rewrite_model, ExternalDataKeys};

/// Per-tensor quantization of a weight: (quantized bytes, scale, zero point byte).
pub fn quantize_weight(
    w: &[f32],
    signed: bool,
    symmetric: bool,
    reduce_range: bool,
) -> (Vec<u8>, f32, u8) {
    let (qmin, qmax): (f64, f64) = match (signed, reduce_range, symmetric) {
        (true, true, _) => (-64.0, 64.0),
        (true, false, true) => (-127.0, 127.0),
        (true, false, false) => (-128.0, 127.0),
        (false, true, _) => (0.0, 127.0),
        (false, false, _) => (0.0, 255.0),
    };
    let mut rmin = w.iter().copied().fold(f32::INFINITY, f32::min).min(0.0);
    let mut rmax = w.iter().copied().fold(f32::NEG_INFINITY, f32::max).max(0.0);
    if w.is_empty() {
        (rmin, rmax) = (0.0, 0.0);
    }
    if symmetric {
        let absmax = rmin.abs().max(rmax.abs());
        (rmin, rmax) = (-absmax, absmax);
    }
    let scale64 = (rmax as f64 - rmin as f64) / (qmax - qmin);
    let (scale, zp) = if scale64 < f32::MIN_POSITIVE as f64 {
        (1.0f32, 0.0f64)
    } else if symmetric {
        (scale64 as f32, ((qmin + qmax) / 2.0).round_ties_even())
    } else {
        (
            scale64 as f32,
            (qmin - rmin as f64 / scale64).round_ties_even(),
        )
    };
    // Clipped to the type's full range, as quantize_nparray does.
    let (lo, hi) = if signed {
        (-128.0f32, 127.0f32)
    } else {
        (0.0, 255.0)
    };
    let zpf = zp as f32;
    let q = w
        .iter()
        .map(|&v| {
            let x = ((v / scale).round_ties_even() + zpf).clamp(lo, hi);
            if signed {
                (x as i8) as u8
            } else {
                x as u8
            }
        })
        .collect();
    let zp_byte = if signed { (zp as i8) as u8 } else { zp as u8 };
    (q, scale, zp_byte)
}

/// The config of `OnnxDynamicQuantization` (Olive's keys).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DynamicConfig {
    /// Olive's quant_mode: dynamic.
    #[serde(default)]
    pub quant_mode: Option<String>,
    /// Weight type: int8 (default) or uint8.
    #[serde(default)]
    pub precision: Option<String>,
    /// Op types to quantize: MatMul only (absent: MatMul).
    #[serde(default)]
    pub op_types_to_quantize: Option<Vec<String>>,
    /// Op types left in float.
    #[serde(default)]
    pub op_types_to_exclude: Option<Vec<String>>,
    /// Only these node names.
    #[serde(default)]
    pub nodes_to_quantize: Option<Vec<String>>,
    /// Node names left in float.
    #[serde(default)]
    pub nodes_to_exclude: Option<Vec<String>>,
    /// Per-channel weights (not done by olive-rs: true is refused).
    #[serde(default)]
    pub per_channel: bool,
    /// 7-bit weights ([-64, 64] / [0, 127]).
    #[serde(default)]
    pub reduce_range: bool,
    /// Olive runs ORT's pre-processing; olive-rs runs its peephole clean-ups instead.
    #[serde(default = "yes")]
    pub quant_preprocess: bool,
    /// Symmetric activations (DynamicQuantizeLinear is asymmetric uint8: true is refused).
    #[serde(default)]
    pub activation_symmetric: bool,
    /// Symmetric weights (default: true for int8, false for uint8).
    #[serde(default)]
    pub weight_symmetric: Option<bool>,
    /// ORT's extra_options (only WeightSymmetric is read; others are refused).
    #[serde(default)]
    pub extra_options: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(flatten)]
    pub external: ExternalDataKeys,
}

fn yes() -> bool {
    true
}

/// Olive's OnnxDynamicQuantization for MatMuls with constant weights.
pub struct OnnxDynamicQuantization;

impl Pass for OnnxDynamicQuantization {
    const NAME: &'static str = "OnnxDynamicQuantization";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "Dynamic int8 quantization (QOperator MatMulInteger, per-tensor weights) of an ONNX model's MatMuls.";
    const ACCEPTS: &'static [&'static str] = &[kinds::ONNX];
    const PRODUCES: &'static [&'static str] = &[kinds::ONNX];
    const DEVICES: &'static [&'static str] = &["cpu"];
    type Config = DynamicConfig;

    fn run(model: Model, c: DynamicConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if c.quant_mode.as_deref().is_some_and(|m| m != "dynamic") {
            return bad("quant_mode: OnnxDynamicQuantization is dynamic".into());
        }
        let signed = match c.precision.as_deref() {
            None | Some("int8") => true,
            Some("uint8") => false,
            Some(other) => return bad(format!("precision `{other}`: expected int8 or uint8")),
        };
        if let Some(ops) = &c.op_types_to_quantize {
            if let Some(op) = ops.iter().find(|o| *o != "MatMul") {
                return bad(format!(
                    "op_types_to_quantize: `{op}` is not quantized by olive-rs (MatMul only)"
                ));
            }
        }
        for (key, on) in [
            ("per_channel", c.per_channel),
            ("activation_symmetric", c.activation_symmetric),
        ] {
            if on {
                return bad(format!(
                    "{key}: not supported by olive-rs's OnnxDynamicQuantization; leave it false"
                ));
            }
        }
        let mut symmetric = c.weight_symmetric.unwrap_or(signed);
        for (key, value) in c.extra_options.iter().flatten() {
            match (key.as_str(), value.as_bool()) {
                ("WeightSymmetric", Some(v)) => symmetric = v,
                _ => {
                    return bad(format!(
                        "extra_options: `{key}` is not supported by olive-rs"
                    ))
                }
            }
        }
        let excluded_ops = c
            .op_types_to_exclude
            .iter()
            .flatten()
            .any(|o| o == "MatMul");
        let include: HashSet<String> = c.nodes_to_quantize.iter().flatten().cloned().collect();
        let exclude: HashSet<String> = c.nodes_to_exclude.iter().flatten().cloned().collect();
        rewrite_model(model, ctx, |onnx| {
            let graph = graph_of(onnx)?;
            if c.quant_preprocess {
                crate::peephole::optimize(graph).map_err(Error::Failed)?;
            }
            let before = graph.node.len();
            let inputs: HashSet<String> =
                graph.input.iter().filter_map(|i| i.name.clone()).collect();
            let mut r = Rewriter::new(graph);
            let mut tensors: Vec<TensorProto> = Vec::new();
            let mut weights: HashMap<String, (String, String, String)> = HashMap::new();
            let mut activations: HashMap<String, (String, String, String)> = HashMap::new();
            let mut count = 0;
            for i in 0..r.node_count() {
                if excluded_ops || !r.is(i, "MatMul") {
                    continue;
                }
                let n = r.node(i).clone();
                let name = n.name.clone().unwrap_or_default();
                if exclude.contains(&name) || (!include.is_empty() && !include.contains(&name)) {
                    continue;
                }
                let (Some(a), Some(b), Some(y)) =
                    (n.input.first(), n.input.get(1), n.output.first())
                else {
                    continue;
                };
                if inputs.contains(b) {
                    continue;
                }
                let (bq, bs, bz) = match weights.get(b) {
                    Some(w) => w.clone(),
                    None => {
                        let Some(Value {
                            dims,
                            elements: Elements::F32(w),
                        }) = r.constant(b)
                        else {
                            continue;
                        };
                        if dims.len() != 2 {
                            continue;
                        }
                        let (q, scale, zp) = quantize_weight(&w, signed, symmetric, c.reduce_range);
                        let qt = if signed { 3 } else { 2 };
                        let names = (
                            r.fresh(&format!("{b}_quantized")),
                            r.fresh(&format!("{b}_scale")),
                            r.fresh(&format!("{b}_zero_point")),
                        );
                        let t =
                            |name: &str, dtype: i32, dims: Vec<i64>, raw: Vec<u8>| TensorProto {
                                name: Some(name.to_string()),
                                data_type: Some(dtype),
                                dims,
                                raw_data: Some(raw),
                                ..Default::default()
                            };
                        tensors.push(t(&names.0, qt, dims, q));
                        tensors.push(t(&names.1, 1, vec![], scale.to_le_bytes().to_vec()));
                        tensors.push(t(&names.2, qt, vec![], vec![zp]));
                        weights.insert(b.clone(), names.clone());
                        names
                    }
                };
                let (aq, a_scale, azp) = match activations.get(a) {
                    Some(v) => v.clone(),
                    None => {
                        let names = (
                            r.fresh(&format!("{a}_quantized")),
                            r.fresh(&format!("{a}_scale")),
                            r.fresh(&format!("{a}_zero_point")),
                        );
                        let dq = r.fresh(&format!("{a}_QuantizeLinear"));
                        let dql = node(
                            "",
                            "DynamicQuantizeLinear",
                            &dq,
                            &[a],
                            &[&names.0, &names.1, &names.2],
                            vec![],
                        );
                        r.replace(&[], dql);
                        activations.insert(a.clone(), names.clone());
                        names
                    }
                };
                let base = if name.is_empty() {
                    r.fresh("MatMul_quant")
                } else {
                    r.fresh(&format!("{name}_quant"))
                };
                let (mi, cast, scales, out_mul) = (
                    r.fresh(&format!("{y}_output_quantized")),
                    r.fresh(&format!("{y}_output_quantized_cast_output")),
                    r.fresh(&format!("{base}_scales_mul:0")),
                    r.fresh(&format!("{base}_output_scale_mul")),
                );
                let mm = node(
                    "",
                    "MatMulInteger",
                    &base,
                    &[&aq, &bq, &azp, &bz],
                    &[&mi],
                    vec![],
                );
                let cast_node = node(
                    "",
                    "Cast",
                    &format!("{mi}_cast"),
                    &[&mi],
                    &[&cast],
                    vec![attr_int("to", 1)],
                );
                let smul = node(
                    "",
                    "Mul",
                    &format!("{base}_scales_mul"),
                    &[&a_scale, &bs],
                    &[&scales],
                    vec![],
                );
                let omul = node("", "Mul", &out_mul, &[&cast, &scales], &[y], vec![]);
                r.replace(&[], mm);
                r.replace(&[], cast_node);
                r.replace(&[], smul);
                r.replace(&[i], omul);
                count += 1;
            }
            r.finish().map_err(Error::Failed)?;
            graph.initializer.extend(tensors);
            crate::peephole::remove_dead(graph);
            let after = graph.node.len();
            ctx.info(&format!(
                "{count} MatMuls to MatMulInteger ({})",
                if signed { "int8" } else { "uint8" }
            ));
            Ok(
                serde_json::json!({"matmul_integer": count, "nodes_before": before, "nodes_after": after}),
            )
        })
    }
}
