//! Static QDQ quantization: Olive's `OnnxStaticQuantization` and `OnnxQuantization` with `quant_mode: static`
//! (olive/passes/onnx/quantization.py), which run onnxruntime.quantization.quantize_static in QDQ format. Followed
//! (onnxruntime/python/tools/quantization: qdq_quantizer.py, quant_utils.py `compute_scale_zp`/`quantize_data`,
//! registry.py): the default op list is ORT's QDQ + QLinear registries; every float input and output of a node of
//! those ops is quantized once per tensor —
//! - activations: MinMax ranges from [`calibrate`], widened to include 0 (symmetric: [-absmax, absmax]);
//!   scale = (rmax - rmin) / (qmax - qmin) and zero point = round_half_even(qmin - rmin / scale) in float32 as
//!   numpy does; `QuantizeLinear` -> `DequantizeLinear` after the producer, every consumer reading the DQ output (a
//!   graph output keeps its name on the DQ); Softmax outputs take the fixed range [0, 1]; the outputs of the
//!   data-movement ops (Reshape, Transpose, Squeeze, Unsqueeze, Flatten, Slice, Gather, ...) share their input's
//!   scale and zero point (ORT's `quantize_output_same_as_input`);
//! - float initializers (weights, and constants such as an Add's bias): quantized per tensor with `weight_type`
//!   (uint8 asymmetric on [0, 255], int8 symmetric on [-127, 127]) + `DequantizeLinear`; the bias of Gemm, Conv and
//!   LayerNormalization (input 2) as int32 with scale = input scale · weight scale and zero point 0;
//! - 16-bit activations use com.microsoft QuantizeLinear/DequantizeLinear below opset 21, as ORT does.
//!
//! Not done (refused by name): QOperator format, per_channel, reduce_range, calibration methods other than MinMax,
//! int4 weights, Olive's `data_config` (the samples come from the graph; see [`calibrate`]). ORT's removal of
//! Relu/Clip (`QDQRemovableActivation`) is not done: they are quantized like other ops.

use std::collections::{HashMap, HashSet};

use olive_onnx::graph::node;
use olive_onnx::proto::{GraphProto, ModelProto, OperatorSetIdProto, TensorProto};
use olive_pass_sdk::{kinds, Context, Error, Model, Pass};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::types::{self, element_types};
use crate::{calibrate, graph_of, rewrite_model};

/// ORT's default op types for QDQ (registry.py: QDQRegistry and QLinearOpsRegistry keys).
pub const DEFAULT_OPS: &[&str] = &[
    "Add",
    "ArgMax",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Conv",
    "ConvTranspose",
    "CumSum",
    "Flatten",
    "Gather",
    "GatherElements",
    "Gemm",
    "GlobalAveragePool",
    "InstanceNormalization",
    "LayerNormalization",
    "LeakyRelu",
    "MatMul",
    "MaxPool",
    "Mul",
    "Pad",
    "Relu",
    "Reshape",
    "Resize",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Split",
    "Squeeze",
    "TopK",
    "Transpose",
    "Unsqueeze",
    "Where",
];

/// Ops whose output shares its (first) input's scale and zero point.
const SAME_AS_INPUT: &[&str] = &[
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "Slice",
    "AveragePool",
    "TopK",
    "MaxPool",
    "Gather",
    "GatherElements",
];

/// The config of `OnnxStaticQuantization` / `OnnxQuantization` (Olive's keys).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// Olive: `static` or `dynamic` (`OnnxQuantization`); olive-rs does static here.
    #[serde(default)]
    pub quant_mode: Option<String>,
    /// Olive: `QDQ` or `QOperator`; olive-rs writes QDQ.
    #[serde(default = "qdq")]
    pub quant_format: String,
    /// Olive: QUInt8, QInt8, QUInt16 or QInt16 activations.
    #[serde(default = "quint8")]
    pub activation_type: String,
    /// Olive: QInt8 or QUInt8 weights.
    #[serde(default = "qint8")]
    pub weight_type: String,
    /// Olive: MinMax (olive-rs), Entropy, Percentile, Distribution.
    #[serde(default = "minmax")]
    pub calibrate_method: String,
    /// Olive: the op types to quantize (default: ORT's QDQ list, [`DEFAULT_OPS`]).
    #[serde(default)]
    pub op_types_to_quantize: Option<Vec<String>>,
    /// Olive: op types left float.
    #[serde(default)]
    pub op_types_to_exclude: Option<Vec<String>>,
    /// Olive: node names to quantize (all by default).
    #[serde(default)]
    pub nodes_to_quantize: Option<Vec<String>>,
    /// Olive: node names left float.
    #[serde(default)]
    pub nodes_to_exclude: Option<Vec<String>>,
    /// Olive: per-channel weights (not done by olive-rs: true is refused).
    #[serde(default)]
    pub per_channel: bool,
    /// Olive: 7-bit weights (not done by olive-rs: true is refused).
    #[serde(default)]
    pub reduce_range: bool,
    /// Olive: onnxruntime's quant_pre_process first (olive-rs: run OnnxPeepholeOptimizer; true is refused).
    #[serde(default)]
    pub quant_preprocess: bool,
    /// Olive: symmetric activations (ORT extra option ActivationSymmetric).
    #[serde(default)]
    pub activation_symmetric: Option<bool>,
    /// Olive: symmetric weights (default: true for signed weight types, as ORT).
    #[serde(default)]
    pub weight_symmetric: Option<bool>,
    /// Olive: ORT extra options; olive-rs reads ActivationSymmetric and WeightSymmetric.
    #[serde(default)]
    pub extra_options: Option<serde_json::Map<String, serde_json::Value>>,
    /// Olive: the calibration data config (olive-rs makes the samples from the graph; a data_config is refused).
    #[serde(default)]
    pub data_config: Option<serde_json::Value>,
    /// olive-rs: the number of calibration samples made from the graph.
    #[serde(default = "eight")]
    pub calibration_samples: usize,
    /// olive-rs: the seed of the calibration samples.
    #[serde(default)]
    pub seed: u64,
    /// Olive's auto-opt flag `precision` (ignored: the types above decide).
    #[serde(default)]
    pub precision: Option<String>,
}

fn qdq() -> String {
    "QDQ".into()
}
fn quint8() -> String {
    "QUInt8".into()
}
fn qint8() -> String {
    "QInt8".into()
}
fn minmax() -> String {
    "MinMax".into()
}
fn eight() -> usize {
    8
}

/// A quantized element type: ONNX code, qmin, qmax.
#[derive(Debug, Clone, Copy)]
struct QType {
    code: i32,
    qmin: f32,
    qmax: f32,
}

fn qtype(name: &str, key: &str, allowed: &[&str]) -> Result<QType, Error> {
    let q = match name {
        "QUInt8" => QType {
            code: types::UINT8,
            qmin: 0.0,
            qmax: 255.0,
        },
        "QInt8" => QType {
            code: types::INT8,
            qmin: -128.0,
            qmax: 127.0,
        },
        "QUInt16" => QType {
            code: types::UINT16,
            qmin: 0.0,
            qmax: 65535.0,
        },
        "QInt16" => QType {
            code: types::INT16,
            qmin: -32768.0,
            qmax: 32767.0,
        },
        _ => QType {
            code: 0,
            qmin: 0.0,
            qmax: 0.0,
        },
    };
    if q.code == 0 || !allowed.contains(&name) {
        return Err(Error::InvalidConfig(format!(
            "{key} `{name}`: olive-rs takes {}",
            allowed.join(", ")
        )));
    }
    Ok(q)
}

impl QType {
    fn bits16(self) -> bool {
        matches!(self.code, types::UINT16 | types::INT16)
    }

    /// The range symmetric quantization uses: ORT restricts signed types to [-qmax, qmax].
    fn range(self, symmetric: bool) -> (f32, f32) {
        if symmetric && self.qmin < 0.0 {
            (-self.qmax, self.qmax)
        } else {
            (self.qmin, self.qmax)
        }
    }

    /// `(scale, zero point)` of `[rmin, rmax]` as quant_utils.compute_scale_zp computes it (float32).
    fn params(self, rmin: f32, rmax: f32, symmetric: bool) -> (f32, f32) {
        let (qmin, qmax) = self.range(symmetric);
        let (mut rmin, mut rmax) = (rmin.min(0.0), rmax.max(0.0));
        if symmetric {
            let absmax = rmin.abs().max(rmax.abs());
            (rmin, rmax) = (-absmax, absmax);
        }
        if rmax - rmin <= 0.0 || !(rmax - rmin).is_finite() {
            return (1.0, 0.0);
        }
        let scale = (rmax - rmin) / (qmax - qmin);
        if symmetric {
            return (scale, ((qmin + qmax) / 2.0).round_ties_even());
        }
        (scale, (qmin - rmin / scale).round_ties_even())
    }

    /// The bytes of `values` quantized with `(scale, zp)` (clipped to the type's full range).
    fn quantize(self, values: &[f32], scale: f32, zp: f32) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * if self.bits16() { 2 } else { 1 });
        for &v in values {
            let x = ((v / scale).round_ties_even() + zp).clamp(self.qmin, self.qmax);
            match self.code {
                types::UINT8 => out.push(x as u8),
                types::INT8 => out.push(x as i8 as u8),
                types::UINT16 => out.extend_from_slice(&(x as u16).to_le_bytes()),
                _ => out.extend_from_slice(&(x as i16).to_le_bytes()),
            }
        }
        out
    }

    fn tensor(self, name: &str, dims: &[i64], bytes: Vec<u8>) -> TensorProto {
        TensorProto {
            name: Some(name.into()),
            data_type: Some(self.code),
            dims: dims.to_vec(),
            raw_data: Some(bytes),
            ..Default::default()
        }
    }
}

fn f32_scalar(name: &str, v: f32) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        data_type: Some(types::FLOAT),
        raw_data: Some(v.to_le_bytes().to_vec()),
        ..Default::default()
    }
}

/// What the pass decided, before any rewriting.
struct Plan {
    /// Activation tensors to quantize, in graph order.
    activations: Vec<String>,
    /// Activation tensor -> the tensor whose params it shares.
    shared: HashMap<String, String>,
    /// Softmax outputs (fixed range [0, 1]).
    fixed: HashSet<String>,
    /// Float initializers to quantize as weights.
    weights: Vec<String>,
    /// Bias initializer -> (input activation, weight) whose scales multiply.
    biases: Vec<(String, String, String)>,
    /// Where's float constant inputs -> the Where output whose type and params they take (a -3.4e38 mask
    /// constant as an 8-bit weight of its own range, beside a 16-bit output, fails QNN's finalize).
    selected: Vec<(String, String)>,
}

fn plan(graph: &GraphProto, ops: &HashSet<String>, c: &StaticConfig) -> Plan {
    let types = element_types(graph);
    let initializers: HashSet<&str> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    let float = |n: &str| !n.is_empty() && types.get(n) == Some(&types::FLOAT);
    let include: Option<HashSet<&str>> = c
        .nodes_to_quantize
        .as_ref()
        .map(|v| v.iter().map(String::as_str).collect());
    let exclude: HashSet<&str> = c
        .nodes_to_exclude
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    let mut p = Plan {
        activations: Vec::new(),
        shared: HashMap::new(),
        fixed: HashSet::new(),
        weights: Vec::new(),
        biases: Vec::new(),
        selected: Vec::new(),
    };
    let mut seen: HashSet<String> = HashSet::new();
    let add = |p: &mut Plan, name: &str, seen: &mut HashSet<String>| {
        if !seen.insert(name.to_owned()) {
            return;
        }
        if initializers.contains(name) {
            p.weights.push(name.to_owned());
        } else {
            p.activations.push(name.to_owned());
        }
    };
    for node in &graph.node {
        let op = node.op_type.as_deref().unwrap_or("");
        let name = node.name.as_deref().unwrap_or("");
        if !ops.contains(op)
            || exclude.contains(name)
            || include.as_ref().is_some_and(|i| !i.contains(name))
        {
            continue;
        }
        let data_inputs: Vec<usize> = match op {
            "Gather" | "GatherElements" => vec![0],
            "Where" => vec![1, 2],
            "Reshape" | "Slice" | "Squeeze" | "Unsqueeze" | "TopK" | "Split" | "Pad" | "Resize"
            | "Clip" => {
                vec![0]
            }
            _ => (0..node.input.len()).collect(),
        };
        let bias_slot =
            matches!(op, "Gemm" | "Conv" | "ConvTranspose" | "LayerNormalization").then_some(2);
        for k in data_inputs {
            let Some(input) = node.input.get(k).filter(|n| float(n)) else {
                continue;
            };
            if Some(k) == bias_slot && initializers.contains(input.as_str()) {
                if let (Some(x), Some(w)) = (node.input.first(), node.input.get(1)) {
                    if seen.insert(input.clone()) {
                        p.biases.push((input.clone(), x.clone(), w.clone()));
                    }
                }
                continue;
            }
            if op == "Where" && initializers.contains(input.as_str()) {
                if let Some(output) = node.output.first().filter(|n| float(n)) {
                    if seen.insert(input.clone()) {
                        p.selected.push((input.clone(), output.clone()));
                    }
                    continue;
                }
            }
            add(&mut p, input, &mut seen);
        }
        for (j, output) in node.output.iter().enumerate() {
            if !float(output) {
                continue;
            }
            if j == 0 && SAME_AS_INPUT.contains(&op) {
                if let Some(input) = node.input.first().filter(|n| float(n)) {
                    p.shared.insert(output.clone(), input.clone());
                }
            }
            if op == "Softmax" {
                p.fixed.insert(output.clone());
            }
            add(&mut p, output, &mut seen);
        }
    }
    p
}

/// Quantizes `model` in place; returns the report.
pub fn quantize(
    model: &mut ModelProto,
    c: &StaticConfig,
    scratch: &std::path::Path,
) -> Result<serde_json::Value, Error> {
    let bad = |m: String| Err(Error::InvalidConfig(m));
    if c.quant_format != "QDQ" {
        return bad(format!(
            "quant_format `{}`: olive-rs writes QDQ only",
            c.quant_format
        ));
    }
    if c.calibrate_method != "MinMax" {
        return bad(format!(
            "calibrate_method `{}`: olive-rs calibrates with MinMax only",
            c.calibrate_method
        ));
    }
    for (key, on) in [
        ("per_channel", c.per_channel),
        ("reduce_range", c.reduce_range),
        ("quant_preprocess", c.quant_preprocess),
    ] {
        if on {
            return bad(format!(
                "{key}: not supported by olive-rs's static quantization; leave it false"
            ));
        }
    }
    if c.data_config.is_some() {
        return bad("data_config: olive-rs makes the calibration samples from the graph (calibration_samples, \
                    seed); leave data_config out"
            .into());
    }
    if c.calibration_samples == 0 {
        return bad("calibration_samples: at least 1".into());
    }
    let act = qtype(
        &c.activation_type,
        "activation_type",
        &["QUInt8", "QInt8", "QUInt16", "QInt16"],
    )?;
    let wt = qtype(&c.weight_type, "weight_type", &["QUInt8", "QInt8"])?;
    let mut act_sym = c.activation_symmetric.unwrap_or(false);
    let mut w_sym = c.weight_symmetric.unwrap_or(wt.qmin < 0.0);
    for (key, value) in c.extra_options.iter().flatten() {
        match (key.as_str(), value.as_bool()) {
            ("ActivationSymmetric", Some(v)) => act_sym = v,
            ("WeightSymmetric", Some(v)) => w_sym = v,
            _ => {
                return bad(format!(
                    "extra_options: `{key}` is not supported by olive-rs"
                ))
            }
        }
    }
    let mut ops: HashSet<String> = match &c.op_types_to_quantize {
        Some(list) => list.iter().cloned().collect(),
        None => DEFAULT_OPS.iter().map(|s| s.to_string()).collect(),
    };
    for op in c.op_types_to_exclude.iter().flatten() {
        ops.remove(op);
    }
    let graph = graph_of(model)?;
    let plan = plan(graph, &ops, c);
    if plan.activations.is_empty() && plan.weights.is_empty() {
        return Err(Error::UnsupportedModel(format!(
            "no float tensor of the op types {:?} to quantize",
            {
                let mut v: Vec<&String> = ops.iter().collect();
                v.sort();
                v
            }
        )));
    }
    // Calibration.
    let calibrated: Vec<String> = plan
        .activations
        .iter()
        .filter(|t| !plan.fixed.contains(*t) && !plan.shared.contains_key(*t))
        .cloned()
        .collect();
    let samples = calibrate::samples(graph, c.calibration_samples, c.seed)?;
    let ranges = calibrate::min_max(model, &calibrated, &samples, scratch)?;
    let graph = graph_of(model)?;
    // Activation params (shared ones resolved along the chain).
    let mut params: HashMap<String, (String, String)> = HashMap::new();
    let mut new_inits: Vec<TensorProto> = Vec::new();
    let zp_tensor =
        |q: QType, name: &str, zp: f32| q.tensor(name, &[], q.quantize(&[zp], 1.0, 0.0));
    let mut values: HashMap<String, (f32, f32)> = HashMap::new();
    for t in &plan.activations {
        if plan.shared.contains_key(t) {
            continue;
        }
        let (lo, hi) = if plan.fixed.contains(t) {
            (0.0, 1.0)
        } else {
            *ranges
                .get(t)
                .ok_or_else(|| Error::Failed(format!("calibration gave no range for `{t}`")))?
        };
        let (scale, zp) = act.params(lo, hi, act_sym);
        let (s, z) = (format!("{t}_scale"), format!("{t}_zero_point"));
        new_inits.push(f32_scalar(&s, scale));
        new_inits.push(zp_tensor(act, &z, zp));
        params.insert(t.clone(), (s, z));
        values.insert(t.clone(), (scale, zp));
    }
    // Weights.
    let mut init_index: HashMap<String, usize> = HashMap::new();
    for (i, t) in graph.initializer.iter().enumerate() {
        if let Some(n) = &t.name {
            init_index.insert(n.clone(), i);
        }
    }
    let mut dq_nodes = Vec::new();
    let mut rename: HashMap<String, String> = HashMap::new();
    let mut weight_scales: HashMap<String, f32> = HashMap::new();
    let domain = |q: QType| if q.bits16() { "com.microsoft" } else { "" };
    let mut weights_done = 0;
    for w in &plan.weights {
        let t = &graph.initializer[init_index[w]];
        let value = olive_onnx::rewrite::Value::from_tensor(t)
            .ok_or_else(|| Error::UnsupportedModel(format!("initializer `{w}` cannot be read")))?;
        let data: Vec<f32> = value.as_f64().into_iter().map(|v| v as f32).collect();
        let lo = data.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let (lo, hi) = if data.is_empty() {
            (0.0, 0.0)
        } else {
            (lo, hi)
        };
        let (scale, zp) = wt.params(lo, hi, w_sym);
        let q = format!("{w}_quantized");
        let (s, z) = (format!("{w}_scale"), format!("{w}_zero_point"));
        new_inits.push(wt.tensor(&q, &t.dims, wt.quantize(&data, scale, zp)));
        new_inits.push(f32_scalar(&s, scale));
        new_inits.push(zp_tensor(wt, &z, zp));
        let out = format!("{w}_DequantizeLinear_Output");
        dq_nodes.push(node(
            "",
            "DequantizeLinear",
            &format!("{w}_DequantizeLinear"),
            &[&q, &s, &z],
            &[&out],
            vec![],
        ));
        rename.insert(w.clone(), out);
        weight_scales.insert(w.clone(), scale);
        // A data-movement output of a weight (Gather of an embedding table) shares the weight's params.
        params.insert(w.clone(), (s.clone(), z.clone()));
        values.insert(w.clone(), (scale, zp));
        weights_done += 1;
    }
    for t in &plan.activations {
        let mut root = t;
        let mut hops = 0;
        while let Some(next) = plan.shared.get(root) {
            root = next;
            hops += 1;
            if hops > plan.activations.len() {
                break;
            }
        }
        if root != t {
            let found = params.get(root).cloned().zip(values.get(root).copied());
            match found {
                Some((p, v)) => {
                    params.insert(t.clone(), p);
                    values.insert(t.clone(), v);
                }
                None => {
                    return Err(Error::Failed(format!(
                        "`{t}` shares the quantization of `{root}`, which is not quantized"
                    )));
                }
            }
        }
    }
    // Where constants: quantized with the Where output's params (a mask constant beyond the output's calibrated
    // range saturates, as the output's own Q would saturate it).
    for (w, out) in &plan.selected {
        let (Some((s, z)), Some(&(scale, zp))) = (params.get(out).cloned(), values.get(out)) else {
            return Err(Error::Failed(format!(
                "`{w}` takes the quantization of `{out}`, which is not quantized"
            )));
        };
        let t = &graph.initializer[init_index[w]];
        let value = olive_onnx::rewrite::Value::from_tensor(t)
            .ok_or_else(|| Error::UnsupportedModel(format!("initializer `{w}` cannot be read")))?;
        let data: Vec<f32> = value.as_f64().into_iter().map(|v| v as f32).collect();
        let q = format!("{w}_quantized");
        new_inits.push(act.tensor(&q, &t.dims, act.quantize(&data, scale, zp)));
        let dq = format!("{w}_DequantizeLinear_Output");
        dq_nodes.push(node(
            domain(act),
            "DequantizeLinear",
            &format!("{w}_DequantizeLinear"),
            &[&q, &s, &z],
            &[&dq],
            vec![],
        ));
        rename.insert(w.clone(), dq);
    }
    let int32 = QType {
        code: types::INT32,
        qmin: i32::MIN as f32,
        qmax: i32::MAX as f32,
    };
    for (b, x, w) in &plan.biases {
        let (Some(&(xs, _)), Some(&ws)) = (values.get(x), weight_scales.get(w)) else {
            continue;
        };
        let t = &graph.initializer[init_index[b]];
        let value = olive_onnx::rewrite::Value::from_tensor(t)
            .ok_or_else(|| Error::UnsupportedModel(format!("initializer `{b}` cannot be read")))?;
        let scale = xs * ws;
        let q: Vec<u8> = value
            .as_f64()
            .into_iter()
            .flat_map(|v| (((v as f32) / scale).round_ties_even() as i32).to_le_bytes())
            .collect();
        let (qn, s, z) = (
            format!("{b}_quantized"),
            format!("{b}_quantized_scale"),
            format!("{b}_quantized_zero_point"),
        );
        new_inits.push(int32.tensor(&qn, &t.dims, q));
        new_inits.push(f32_scalar(&s, scale));
        new_inits.push(int32.tensor(&z, &[], 0i32.to_le_bytes().to_vec()));
        let out = format!("{b}_DequantizeLinear_Output");
        dq_nodes.push(node(
            "",
            "DequantizeLinear",
            &format!("{b}_DequantizeLinear"),
            &[&qn, &s, &z],
            &[&out],
            vec![],
        ));
        rename.insert(b.clone(), out);
    }
    // Activations: Q -> DQ after the producer (graph inputs: first).
    let outputs: HashSet<String> = graph.output.iter().filter_map(|o| o.name.clone()).collect();
    let mut qdq_after: HashMap<String, Vec<olive_onnx::proto::NodeProto>> = HashMap::new();
    let mut producer_rename: HashMap<String, String> = HashMap::new();
    for t in &plan.activations {
        let (s, z) = &params[t];
        let is_output = outputs.contains(t);
        let source = if is_output {
            format!("{t}_QuantizeLinear_Input")
        } else {
            t.clone()
        };
        let qout = format!("{t}_QuantizeLinear_Output");
        let dqout = if is_output {
            t.clone()
        } else {
            format!("{t}_DequantizeLinear_Output")
        };
        let pair = vec![
            node(
                domain(act),
                "QuantizeLinear",
                &format!("{t}_QuantizeLinear"),
                &[&source, s, z],
                &[&qout],
                vec![],
            ),
            node(
                domain(act),
                "DequantizeLinear",
                &format!("{t}_DequantizeLinear"),
                &[&qout, s, z],
                &[&dqout],
                vec![],
            ),
        ];
        qdq_after.insert(t.clone(), pair);
        if is_output {
            producer_rename.insert(t.clone(), source);
        } else {
            rename.insert(t.clone(), dqout);
        }
    }
    let inputs: Vec<String> = graph.input.iter().filter_map(|i| i.name.clone()).collect();
    let mut nodes = dq_nodes;
    for i in &inputs {
        if let Some(pair) = qdq_after.remove(i) {
            nodes.extend(pair);
        }
    }
    let old = std::mem::take(&mut graph.node);
    let activations = plan.activations.len();
    for mut n in old {
        for input in n.input.iter_mut() {
            if let Some(r) = rename.get(input) {
                *input = r.clone();
            }
        }
        let mut after = Vec::new();
        for output in n.output.iter_mut() {
            if let Some(pair) = qdq_after.remove(output) {
                after.extend(pair);
            }
            if let Some(r) = producer_rename.get(output) {
                *output = r.clone();
            }
        }
        nodes.push(n);
        nodes.extend(after);
    }
    graph.node = nodes;
    let quantized: HashSet<&String> = plan
        .weights
        .iter()
        .chain(plan.biases.iter().map(|b| &b.0))
        .chain(plan.selected.iter().map(|s| &s.0))
        .collect();
    graph
        .initializer
        .retain(|t| t.name.as_ref().is_none_or(|n| !quantized.contains(n)));
    graph.initializer.extend(new_inits);
    if act.bits16()
        && !model
            .opset_import
            .iter()
            .any(|o| o.domain.as_deref() == Some("com.microsoft"))
    {
        model.opset_import.push(OperatorSetIdProto {
            domain: Some("com.microsoft".into()),
            version: Some(1),
        });
    }
    Ok(serde_json::json!({
        "activations": activations,
        "weights": weights_done,
        "biases": plan.biases.len(),
        "activation_type": c.activation_type,
        "weight_type": c.weight_type,
        "calibration_samples": c.calibration_samples,
    }))
}

fn run_static(model: Model, c: StaticConfig, ctx: &Context<'_>) -> Result<Model, Error> {
    let scratch = tempfile::tempdir()
        .map_err(|e| Error::Failed(format!("cannot create a scratch folder: {e}")))?;
    rewrite_model(model, ctx, "static_quantization", |onnx, _| {
        quantize(onnx, &c, scratch.path())
    })
}

/// Olive's OnnxStaticQuantization.
pub struct OnnxStaticQuantization;

impl Pass for OnnxStaticQuantization {
    const NAME: &'static str = "OnnxStaticQuantization";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "Static QDQ quantization of an ONNX model (MinMax calibration through ONNX Runtime; uint8/uint16 activations, uint8/int8 weights), as onnxruntime's quantize_static.";
    const ACCEPTS: &'static [&'static str] = &[kinds::ONNX];
    const PRODUCES: &'static [&'static str] = &[kinds::ONNX];
    const DEVICES: &'static [&'static str] = &["cpu", "npu"];
    type Config = StaticConfig;

    fn run(model: Model, c: StaticConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        if c.quant_mode.as_deref().is_some_and(|m| m != "static") {
            return Err(Error::InvalidConfig(
                "quant_mode: OnnxStaticQuantization is static".into(),
            ));
        }
        run_static(model, c, ctx)
    }
}

/// Olive's OnnxQuantization umbrella; olive-rs runs its static mode (dynamic: the fusion plugin's
/// OnnxDynamicQuantization).
pub struct OnnxQuantization;

impl Pass for OnnxQuantization {
    const NAME: &'static str = "OnnxQuantization";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "Olive's OnnxQuantization with quant_mode static: static QDQ quantization (see OnnxStaticQuantization).";
    const ACCEPTS: &'static [&'static str] = &[kinds::ONNX];
    const PRODUCES: &'static [&'static str] = &[kinds::ONNX];
    const DEVICES: &'static [&'static str] = &["cpu", "npu"];
    type Config = StaticConfig;

    fn run(model: Model, c: StaticConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        match c.quant_mode.as_deref() {
            Some("static") => run_static(model, c, ctx),
            other => Err(Error::InvalidConfig(format!(
                "quant_mode {other:?}: olive-rs's OnnxQuantization runs `static` (for dynamic use OnnxDynamicQuantization)"
            ))),
        }
    }
}
