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

use olive_onnx::proto::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto};
use olive_pass_sdk::{kinds, Context, Error, Model, Pass};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::qtype::QType;
use crate::types::{self, element_types};
use crate::{calibrate, data, graph_of, mask, methods, place, residual, rewrite_model, weights};

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

/// What the pass decided, before any rewriting.
pub(crate) struct Plan {
    /// Activation tensors to quantize, in graph order.
    pub(crate) activations: Vec<String>,
    /// Activation tensor -> the tensor whose params it shares.
    pub(crate) shared: HashMap<String, String>,
    /// Softmax outputs (fixed range [0, 1]).
    pub(crate) fixed: HashSet<String>,
    /// Sigmoid and Tanh outputs -> their op (QNN's fixed 16-bit params).
    pub(crate) squashed: HashMap<String, &'static str>,
    /// Float initializers to quantize as weights.
    pub(crate) weights: Vec<String>,
    /// Weights quantized per channel (per_channel on) -> their channel axis.
    pub(crate) axes: HashMap<String, usize>,
    /// Float initializers read by an input that is no weight input of its op (an Add's bias, a Gather's table):
    /// ORT quantizes them as activations (activation type and symmetry, per tensor).
    pub(crate) constants: HashSet<String>,
    /// The scales of normalization ops (input 1).
    pub(crate) norm_scales: HashSet<String>,
    /// Bias initializer -> (input activation, weight) whose scales multiply.
    pub(crate) biases: Vec<(String, String, String)>,
    /// Where's float constant inputs -> the Where output whose type and params they take (a -3.4e38 mask
    /// constant as an 8-bit weight of its own range, beside a 16-bit output, fails QNN's finalize).
    pub(crate) selected: Vec<(String, String)>,
}

/// The plan for `graph`, quantizing the nodes of `ops` that `c`'s node lists select. `residual`: the residual Adds'
/// outputs left float; `per_tensor`: weights kept per tensor (see [`residual`]).
fn plan(
    graph: &GraphProto,
    ops: &HashSet<String>,
    c: &StaticConfig,
    residual: &HashSet<String>,
    per_tensor: &HashSet<String>,
) -> Plan {
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
    let mut planner = Planner {
        graph,
        types: element_types(graph),
        initializers: graph
            .initializer
            .iter()
            .filter_map(|t| t.name.as_deref())
            .collect(),
        per_channel: c.per_channel,
        per_tensor,
        seen: HashSet::new(),
        p: Plan {
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
        },
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
        for k in data_inputs(op, node.input.len()) {
            planner.input(node, op, k);
        }
        for (j, output) in node.output.iter().enumerate() {
            planner.output(node, op, j, output);
        }
    }
    planner.p
}

/// The input slots of `op` (of `count` inputs) that carry data, not shapes, indices or bounds.
fn data_inputs(op: &str, count: usize) -> Vec<usize> {
    match op {
        "Gather" | "GatherElements" => vec![0],
        "Where" => vec![1, 2],
        "Reshape" | "Slice" | "Squeeze" | "Unsqueeze" | "TopK" | "Split" | "Pad" | "Resize"
        | "Clip" => {
            vec![0]
        }
        _ => (0..count).collect(),
    }
}

/// The state of [`plan`]'s walk over the graph's nodes.
struct Planner<'g> {
    graph: &'g GraphProto,
    /// Tensor -> its ONNX element type.
    types: HashMap<String, i32>,
    /// The names of the graph's initializers.
    initializers: HashSet<&'g str>,
    per_channel: bool,
    per_tensor: &'g HashSet<String>,
    /// Tensors already planned (each is quantized once).
    seen: HashSet<String>,
    p: Plan,
}

impl Planner<'_> {
    /// Whether `n` names a float tensor.
    fn float(&self, n: &str) -> bool {
        !n.is_empty() && self.types.get(n) == Some(&types::FLOAT)
    }

    /// Plans `name` as a weight (an initializer) or an activation, unless it is planned already.
    fn add(&mut self, name: &str) {
        if !self.seen.insert(name.to_owned()) {
            return;
        }
        if self.initializers.contains(name) {
            self.p.weights.push(name.to_owned());
        } else {
            self.p.activations.push(name.to_owned());
        }
    }

    /// Plans input `k` of `node` (of op `op`) when it is float.
    fn input(&mut self, node: &NodeProto, op: &str, k: usize) {
        let Some(input) = node.input.get(k).filter(|n| self.float(n)) else {
            return;
        };
        let initializer = self.initializers.contains(input.as_str());
        let bias_slot =
            matches!(op, "Gemm" | "Conv" | "ConvTranspose" | "LayerNormalization").then_some(2);
        if Some(k) == bias_slot && initializer {
            if let (Some(x), Some(w)) = (node.input.first(), node.input.get(1)) {
                if self.seen.insert(input.clone()) {
                    self.p.biases.push((input.clone(), x.clone(), w.clone()));
                }
            }
            return;
        }
        if op == "Where" && initializer {
            if let Some(output) = node.output.first().filter(|n| self.float(n)) {
                if self.seen.insert(input.clone()) {
                    self.p.selected.push((input.clone(), output.clone()));
                }
                return;
            }
        }
        if initializer && !self.seen.contains(input) && !weights::is_weight_input(op, k) {
            self.p.constants.insert(input.clone());
        }
        if k == 1 && op.ends_with("Normalization") && initializer {
            self.p.norm_scales.insert(input.clone());
        }
        if self.per_channel
            && initializer
            && !self.seen.contains(input)
            && !self.per_tensor.contains(input)
        {
            let rank = self
                .graph
                .initializer
                .iter()
                .find(|t| t.name.as_deref() == Some(input.as_str()))
                .map_or(0, |t| t.dims.len());
            if let Some(axis) = weights::channel_axis(node, k, rank) {
                self.p.axes.insert(input.clone(), axis);
            }
        }
        self.add(input);
    }

    /// Plans output `j` of `node` (of op `op`), `output`, when it is float.
    fn output(&mut self, node: &NodeProto, op: &str, j: usize, output: &str) {
        if !self.float(output) {
            return;
        }
        if j == 0 && SAME_AS_INPUT.contains(&op) {
            if let Some(input) = node.input.first().filter(|n| self.float(n)) {
                self.p.shared.insert(output.to_owned(), input.clone());
            }
        }
        match op {
            "Softmax" => {
                self.p.fixed.insert(output.to_owned());
            }
            "Sigmoid" => {
                self.p.squashed.insert(output.to_owned(), "Sigmoid");
            }
            "Tanh" => {
                self.p.squashed.insert(output.to_owned(), "Tanh");
            }
            _ => {}
        }
        self.add(output);
    }
}

/// The checked settings of a [`StaticConfig`].
pub(crate) struct Settings {
    calibration: methods::Calibration,
    /// The activation type and symmetry.
    pub(crate) act: QType,
    pub(crate) act_sym: bool,
    /// The weight type and symmetry.
    pub(crate) wt: QType,
    pub(crate) w_sym: bool,
    /// The op types to quantize.
    ops: HashSet<String>,
    /// Weights kept per tensor (see [`residual`]).
    per_tensor: HashSet<String>,
    /// QNN: 16-bit Sigmoid/Tanh outputs take QNN's fixed params; the HTP refuses a LayerNormalization whose scale is
    /// signed (int8/int4) beside 16-bit activations, so such a scale is uint8 (asymmetric) whatever weight_type says.
    pub(crate) qnn: bool,
}

/// The settings of `c`, refusing by name what olive-rs does not do; `pass` names the pass in errors.
fn settings(c: &StaticConfig, pass: &str) -> Result<Settings, Error> {
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
    Ok(Settings {
        calibration,
        act,
        act_sym,
        wt,
        w_sym,
        ops,
        per_tensor,
        qnn: c.execution_provider.as_deref() == Some("QNNExecutionProvider"),
    })
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
    let s = settings(c, pass)?;
    let graph = graph_of(model)?;
    let residual = residual::residual_adds(graph, c.float_residual);
    let plan = plan(graph, &s.ops, c, &residual, &s.per_tensor);
    if plan.activations.is_empty() && plan.weights.is_empty() {
        return Err(Error::UnsupportedModel(format!(
            "no float tensor of the op types {:?} to quantize",
            {
                let mut v: Vec<&String> = s.ops.iter().collect();
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
    let mut ranges = s
        .calibration
        .ranges(pass, model, &calibrated, &samples, scratch)?;
    let graph = graph_of(model)?;
    let floored = if c.keep_attention_mask.unwrap_or(s.act.bits16()) {
        mask::floor_ranges(&mut ranges, &mask::fill_paths(graph))
    } else {
        0
    };
    let mut edits = place::activation_params(&plan, &ranges, &s)?;
    // ORT (opset < 21): every Q/DQ in the com.microsoft domain when a 16-bit or 4-bit type is in use.
    let opset = model_opset(model);
    let graph = graph_of(model)?;
    let domain = if opset < 21 && (s.act.bits16() || s.wt.bits16() || s.wt.bits4()) {
        "com.microsoft"
    } else {
        ""
    };
    let initializers: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .filter_map(|t| Some((t.name.as_deref()?, t)))
        .collect();
    let weight_scales = edits.weights(&initializers, &plan, &s, domain)?;
    edits.share_params(&plan)?;
    edits.where_constants(&initializers, &plan, s.act, domain)?;
    edits.biases(&initializers, &plan, &weight_scales, domain)?;
    edits.apply(graph, &plan, &residual, domain);
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
        "activations": plan.activations.len(),
        "weights": plan.weights.len(),
        "biases": plan.biases.len(),
        "activation_type": c.activation_type,
        "weight_type": c.weight_type,
        "per_channel": c.per_channel,
        "per_tensor_overrides": s.per_tensor.len(),
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
