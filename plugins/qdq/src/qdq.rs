//! Static QDQ quantization: Olive's `OnnxStaticQuantization` and `OnnxQuantization` with `quant_mode: static`
//! (olive/passes/onnx/quantization.py), which run onnxruntime.quantization.quantize_static in QDQ format. Followed
//! (onnxruntime/python/tools/quantization: qdq_quantizer.py, quant_utils.py `compute_scale_zp`/`quantize_data`,
//! registry.py): the default op list is ORT's QDQ + QLinear registries; every float input and output of a node of
//! those ops is quantized once per tensor —
//! - activations: MinMax ranges from [`calibrate`], widened to include 0 (symmetric: [-absmax, absmax]);
//!   scale = (rmax - rmin) / (qmax - qmin) and zero point = round_half_even(qmin - rmin / scale) in float64,
//!   the scale stored as float32 (see [`crate::qtype`]); `QuantizeLinear` -> `DequantizeLinear` after the producer, every consumer reading the DQ output (a
//!   graph output keeps its name on the DQ); Softmax outputs take the fixed range [0, 1]; the outputs of the
//!   data-movement ops (Reshape, Transpose, Squeeze, Unsqueeze, Flatten, Slice, Gather, ...) share their input's
//!   scale and zero point (ORT's `quantize_output_same_as_input`);
//! - float initializers at a weight input (MatMul's, Gemm/Conv's B/W, a normalization's scale; any other constant
//!   such as an Add's bias or a Gather's table is quantized per tensor as an activation, as ORT's QDQ operators
//!   do): `weight_type` (uint8/int8/uint16/int16,
//!   uint4/int4 packed two to a byte) per tensor (unsigned asymmetric, signed symmetric unless `weight_symmetric`
//!   says otherwise), or with `per_channel` per channel along ORT's axis for the op (see [`weights`]) +
//!   `DequantizeLinear`; the bias of Gemm, Conv and LayerNormalization (input 2) as int32 with scale = input scale ·
//!   weight scale (per channel when the weight is) and zero point 0;
//! - below opset 21, every Q/DQ is com.microsoft's when a 16-bit or 4-bit type is in use (ORT's
//!   `UseQDQContribOps`; for 16-bit types ORT's quantize_static converts the model to opset 21 instead).
//!
//! Calibration data: `data_config` (Olive's, as the host resolves a workflow's `data_configs` entry: text files
//! tokenized to the model's inputs, see [`data`]); without one, random valid token ids made from the graph (see
//! [`calibrate`]) with a warning — a static-KV LLM with a tokenizer beside it runs the project's calibration text.
//!
//! Attention-mask fills are kept (see [`mask`]; onnxruntime loses them).
//!
//! Calibration methods: MinMax, Entropy and Percentile with ORT's `Calib*` extra options (see [`methods`]).
//!
//! Not done (refused by name): QOperator format, reduce_range, Distribution calibration (float8), block-wise
//! weights (ORT's `BlockSize`). ORT's removal of Relu/Clip (`QDQRemovableActivation`) is not done: they are
//! quantized like other ops.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use olive_onnx::graph::{attr_int, node};
use olive_onnx::proto::{GraphProto, ModelProto, OperatorSetIdProto, TensorProto};
use olive_pass_sdk::{kinds, Context, Error, Model, Pass};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::qtype::{f32_tensor, QType, INT32};
use crate::types::{self, element_types};
use crate::{calibrate, data, graph_of, mask, methods, residual, rewrite_model, weights};

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
    /// ORT's weight type: QUInt8, QInt8, QUInt16, QInt16, QUInt4 or QInt4.
    #[serde(default = "qint8")]
    pub weight_type: String,
    /// Olive: MinMax, Entropy or Percentile (see [`methods`]; Distribution, float8 only, is refused).
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
    /// Olive: per-channel weights (symmetric, along ORT's axis for the op).
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
    /// Olive: the calibration data (a workflow's data config, resolved by the host to olive-data's form).
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub data_config: Option<olive_data::DataConfig>,
    /// olive-rs: the folder with tokenizer.json for `data_config` (Olive: pre_process_data_config.model_name);
    /// default: the input model's folder.
    #[serde(default)]
    pub tokenizer_dir: Option<PathBuf>,
    /// olive-rs: the number of calibration samples (a data_config's max_samples takes precedence).
    #[serde(default = "eight")]
    pub calibration_samples: usize,
    /// olive-rs: attention-mask fills (-3.4e38) quantize to -100 instead of being lost (see [`mask`]); false:
    /// onnxruntime's plain MinMax ranges. Default: on for 16-bit activations (8-bit ones have too few steps to
    /// span the floor and keep the scores' resolution: the HTP drifts from the CPU).
    #[serde(default)]
    pub keep_attention_mask: Option<bool>,
    /// olive-rs: the seed of the random token ids (no data_config).
    #[serde(default)]
    pub seed: u64,
    /// Olive: the target provider; with `QNNExecutionProvider` a normalization's scale stays uint8 when
    /// `weight_type` is signed or 4-bit (the HTP simulator refuses a signed LayerNorm scale), and 16-bit Sigmoid/Tanh
    /// outputs take QNN's fixed params (ORT's get_qnn_qdq_config).
    #[serde(default)]
    pub execution_provider: Option<String>,
    /// olive-rs: the residual stream's Adds stay float and read the previous sum unquantized (see [`residual`]).
    #[serde(default)]
    pub float_residual: bool,
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

/// What the pass decided, before any rewriting.
struct Plan {
    /// Activation tensors to quantize, in graph order.
    activations: Vec<String>,
    /// Activation tensor -> the tensor whose params it shares.
    shared: HashMap<String, String>,
    /// Softmax outputs (fixed range [0, 1]).
    fixed: HashSet<String>,
    /// Sigmoid and Tanh outputs -> their op (QNN's fixed 16-bit params).
    squashed: HashMap<String, &'static str>,
    /// Float initializers to quantize as weights.
    weights: Vec<String>,
    /// Weights quantized per channel (per_channel on) -> their channel axis.
    axes: HashMap<String, usize>,
    /// Float initializers read by an input that is no weight input of its op (an Add's bias, a Gather's table):
    /// ORT quantizes them as activations (activation type and symmetry, per tensor).
    constants: HashSet<String>,
    /// The scales of normalization ops (input 1).
    norm_scales: HashSet<String>,
    /// Bias initializer -> (input activation, weight) whose scales multiply.
    biases: Vec<(String, String, String)>,
    /// Where's float constant inputs -> the Where output whose type and params they take (a -3.4e38 mask
    /// constant as an 8-bit weight of its own range, beside a 16-bit output, fails QNN's finalize).
    selected: Vec<(String, String)>,
}

/// `residual`: the residual Adds' outputs left float; `per_tensor`: weights kept per tensor (see [`residual`]).
fn plan(
    graph: &GraphProto,
    ops: &HashSet<String>,
    c: &StaticConfig,
    residual: &HashSet<String>,
    per_tensor: &HashSet<String>,
) -> Plan {
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
        squashed: HashMap::new(),
        weights: Vec::new(),
        axes: HashMap::new(),
        constants: HashSet::new(),
        norm_scales: HashSet::new(),
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
            || (op == "Add" && node.output.first().is_some_and(|o| residual.contains(o)))
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
            if initializers.contains(input.as_str())
                && !seen.contains(input)
                && !weights::is_weight_input(op, k)
            {
                p.constants.insert(input.clone());
            }
            if k == 1 && op.ends_with("Normalization") && initializers.contains(input.as_str()) {
                p.norm_scales.insert(input.clone());
            }
            if c.per_channel
                && initializers.contains(input.as_str())
                && !seen.contains(input)
                && !per_tensor.contains(input)
            {
                let rank = graph
                    .initializer
                    .iter()
                    .find(|t| t.name.as_deref() == Some(input.as_str()))
                    .map_or(0, |t| t.dims.len());
                if let Some(axis) = weights::channel_axis(node, k, rank) {
                    p.axes.insert(input.clone(), axis);
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
            match op {
                "Softmax" => {
                    p.fixed.insert(output.clone());
                }
                "Sigmoid" => {
                    p.squashed.insert(output.clone(), "Sigmoid");
                }
                "Tanh" => {
                    p.squashed.insert(output.clone(), "Tanh");
                }
                _ => {}
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
    scratch: &Path,
    model_dir: &Path,
    pass: &str,
    warn: &dyn Fn(&str),
) -> Result<serde_json::Value, Error> {
    let bad = |m: String| Err(Error::InvalidConfig(m));
    if c.quant_format != "QDQ" {
        return bad(format!(
            "quant_format `{}`: olive-rs writes QDQ only",
            c.quant_format
        ));
    }
    let calibration =
        methods::Calibration::parse(pass, &c.calibrate_method, c.extra_options.as_ref())?;
    for (key, on) in [
        ("reduce_range", c.reduce_range),
        ("quant_preprocess", c.quant_preprocess),
    ] {
        if on {
            return bad(format!(
                "{key}: not supported by olive-rs's static quantization; leave it false"
            ));
        }
    }
    if c.calibration_samples == 0 {
        return bad("calibration_samples: at least 1".into());
    }
    let act = QType::parse(
        &c.activation_type,
        "activation_type",
        &["QUInt8", "QInt8", "QUInt16", "QInt16"],
    )?;
    let wt = QType::parse(
        &c.weight_type,
        "weight_type",
        &["QUInt8", "QInt8", "QUInt16", "QInt16", "QUInt4", "QInt4"],
    )?;
    let mut act_sym = c.activation_symmetric.unwrap_or(false);
    let mut w_sym = c.weight_symmetric.unwrap_or(wt.qmin < 0.0);
    for (key, value) in c.extra_options.iter().flatten() {
        match (key.as_str(), value.as_bool()) {
            ("ActivationSymmetric", Some(v)) => act_sym = v,
            ("WeightSymmetric", Some(v)) => w_sym = v,
            ("TensorQuantOverrides", _) => {}
            (k, _) if methods::EXTRA_OPTIONS.contains(&k) => {}
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
    let per_tensor = residual::per_tensor_overrides(c.extra_options.as_ref(), &c.weight_type)?;
    let graph = graph_of(model)?;
    let residual = residual::residual_adds(graph, c.float_residual);
    let plan = plan(graph, &ops, c, &residual, &per_tensor);
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
    let (samples, calibration_data) = match &c.data_config {
        Some(data) => {
            let dir = c.tokenizer_dir.as_deref().unwrap_or(model_dir);
            let samples = data::samples(graph, data, dir, c.calibration_samples)?;
            (samples, "data_config")
        }
        None => calibrate::graph_samples(graph, c.calibration_samples, c.seed, model_dir, warn)?,
    };
    let samples_used = samples.len();
    let mut ranges = calibration.ranges(pass, model, &calibrated, &samples, scratch)?;
    let graph = graph_of(model)?;
    let floored = if c.keep_attention_mask.unwrap_or(act.bits16()) {
        mask::floor_ranges(&mut ranges, &mask::fill_paths(graph))
    } else {
        0
    };
    // QNN: 16-bit Sigmoid/Tanh outputs take QNN's fixed params; the HTP refuses a LayerNormalization whose scale is
    // signed (int8/int4) beside 16-bit activations, so such a scale is uint8 (asymmetric) whatever weight_type says.
    let qnn = c.execution_provider.as_deref() == Some("QNNExecutionProvider");
    // Activation params (shared ones resolved along the chain).
    let mut params: HashMap<String, (String, String)> = HashMap::new();
    let mut new_inits: Vec<TensorProto> = Vec::new();
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
        let (scale, zp) = match (qnn && act.bits16(), plan.squashed.get(t), act.qmin < 0.0) {
            // ORT's get_qnn_qdq_config (QnnCompatibilityOverrides): QNN's fixed 16-bit Sigmoid/Tanh outputs
            (true, Some(&"Sigmoid"), false) => (1.0 / 65536.0, 0.0),
            (true, Some(&"Tanh"), false) => (1.0 / 32768.0, 32768.0),
            (true, Some(_), true) => (1.0 / 32768.0, 0.0),
            _ => act.params(lo, hi, act_sym),
        };
        let (s, z) = (format!("{t}_scale"), format!("{t}_zero_point"));
        new_inits.push(f32_tensor(&s, &[], &[scale]));
        new_inits.push(act.tensor(&z, &[], &[zp as i32]));
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
    let mut weight_scales: HashMap<String, Vec<f32>> = HashMap::new();
    // ORT (opset < 21): every Q/DQ in the com.microsoft domain when a 16-bit or 4-bit type is in use.
    let opset = model_opset(model);
    let graph = graph_of(model)?;
    let domain = if opset < 21 && (act.bits16() || wt.bits16() || wt.bits4()) {
        "com.microsoft"
    } else {
        ""
    };
    let mut weights_done = 0;
    for w in &plan.weights {
        let axis = plan.axes.get(w).copied();
        let (ty, symmetric) = if plan.constants.contains(w) {
            (act, act_sym)
        } else if qnn && plan.norm_scales.contains(w) && (wt.qmin < 0.0 || wt.bits4()) {
            (QType::parse("QUInt8", "weight_type", &["QUInt8"])?, false)
        } else {
            (wt, w_sym)
        };
        let q = weights::quantize(
            &graph.initializer[init_index[w]],
            ty,
            symmetric,
            axis,
            domain,
        )?;
        let out = q.dq.output[0].clone();
        if axis.is_none() {
            // A data-movement output of a weight (Gather of an embedding table) shares the weight's params.
            let (s, z) = (q.dq.input[1].clone(), q.dq.input[2].clone());
            params.insert(w.clone(), (s, z));
            values.insert(w.clone(), (q.scales[0], q.zero_points[0]));
        }
        new_inits.extend(q.initializers);
        dq_nodes.push(q.dq);
        rename.insert(w.clone(), out);
        weight_scales.insert(w.clone(), q.scales);
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
        let data = weights::values(t)?;
        let q = format!("{w}_quantized");
        new_inits.push(act.tensor(&q, &t.dims, &act.quantize(&data, scale, zp)));
        let dq = format!("{w}_DequantizeLinear_Output");
        dq_nodes.push(node(
            domain,
            "DequantizeLinear",
            &format!("{w}_DequantizeLinear"),
            &[&q, &s, &z],
            &[&dq],
            vec![],
        ));
        rename.insert(w.clone(), dq);
    }
    for (b, x, w) in &plan.biases {
        let (Some(&(xs, _)), Some(ws)) = (values.get(x), weight_scales.get(w)) else {
            continue;
        };
        let t = &graph.initializer[init_index[b]];
        let data = weights::values(t)?;
        // ORT: scale = input scale · weight scale (per channel: one per output channel, DQ axis 0)
        let scales: Vec<f32> = ws.iter().map(|&ws| xs * ws).collect();
        if scales.len() != 1 && scales.len() != data.len() {
            return Err(Error::UnsupportedModel(format!(
                "bias `{b}` has {} elements but its weight `{w}` {} channels",
                data.len(),
                scales.len()
            )));
        }
        let q: Vec<i32> = data
            .iter()
            .enumerate()
            .map(|(i, &v)| (v / scales[i % scales.len()]).round_ties_even() as i32)
            .collect();
        let (qn, s, z) = (
            format!("{b}_quantized"),
            format!("{b}_quantized_scale"),
            format!("{b}_quantized_zero_point"),
        );
        let (dims, attrs) = if scales.len() == 1 {
            (vec![], vec![])
        } else {
            (vec![scales.len() as i64], vec![attr_int("axis", 0)])
        };
        new_inits.push(INT32.tensor(&qn, &t.dims, &q));
        new_inits.push(f32_tensor(&s, &dims, &scales));
        new_inits.push(INT32.tensor(&z, &dims, &vec![0; scales.len()]));
        let out = format!("{b}_DequantizeLinear_Output");
        dq_nodes.push(node(
            domain,
            "DequantizeLinear",
            &format!("{b}_DequantizeLinear"),
            &[&qn, &s, &z],
            &[&out],
            attrs,
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
                domain,
                "QuantizeLinear",
                &format!("{t}_QuantizeLinear"),
                &[&source, s, z],
                &[&qout],
                vec![],
            ),
            node(
                domain,
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
        // A residual Add reads the previous sum's float tensor (float_residual).
        let float_sum = n.op_type.as_deref() == Some("Add")
            && n.output.first().is_some_and(|o| residual.contains(o));
        for input in n.input.iter_mut() {
            if float_sum && residual.contains(input) {
                continue;
            }
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
    if !domain.is_empty()
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
        "per_channel": c.per_channel,
        "per_tensor_overrides": per_tensor.len(),
        "float_residual_adds": residual.len(),
        "mask_ranges_floored": floored,
        "calibration_samples": samples_used,
        "calibrate_method": c.calibrate_method,
        "calibration_data": calibration_data,
    }))
}

/// The model's default-domain opset.
fn model_opset(model: &ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .and_then(|o| o.version)
        .unwrap_or(0)
}

fn run_static(
    model: Model,
    c: StaticConfig,
    ctx: &Context<'_>,
    pass: &str,
) -> Result<Model, Error> {
    let scratch = tempfile::tempdir()
        .map_err(|e| Error::Failed(format!("cannot create a scratch folder: {e}")))?;
    rewrite_model(model, ctx, "static_quantization", |onnx, file| {
        let dir = file.parent().unwrap_or(Path::new("."));
        quantize(onnx, &c, scratch.path(), dir, pass, &|m| ctx.warn(m))
    })
}

/// Olive's OnnxStaticQuantization.
pub struct OnnxStaticQuantization;

impl Pass for OnnxStaticQuantization {
    const NAME: &'static str = "OnnxStaticQuantization";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "Static QDQ quantization of an ONNX model (MinMax, Entropy or Percentile calibration through ONNX Runtime; uint8/uint16 activations, uint8/int8 weights), as onnxruntime's quantize_static.";
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
        run_static(model, c, ctx, Self::NAME)
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
            Some("static") => run_static(model, c, ctx, Self::NAME),
            other => Err(Error::InvalidConfig(format!(
                "quant_mode {other:?}: olive-rs's OnnxQuantization runs `static` (for dynamic use OnnxDynamicQuantization)"
            ))),
        }
    }
}
