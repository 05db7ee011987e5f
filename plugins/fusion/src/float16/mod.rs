//! Float32 -> float16 conversion of an ONNX model, the algorithm of ONNX Runtime's transformers float16.py
//! (`convert_float_to_float16`, itself onnxconverter-common's float16.py) as `OnnxModel.convert_float_to_float16`
//! runs it: element types of all values inferred first ([`crate::dtypes`], stored as shape-less value_info);
//! float initializers used by a converted node and float attribute tensors to fp16, values clamped to
//! ±[min_positive_val, max_finite_val] (NaN, ±inf and 0 kept); float graph inputs/outputs/value_info to fp16, or
//! fp32 graph io kept behind `graph_input_cast{i}` / `graph_output_cast{i}` Casts (keep_io_types); `Cast(to=float)`
//! to fp16; ops of the block list (default [`DEFAULT_OP_BLOCK_LIST`]) and blocked nodes kept in fp32 between
//! `<x>_cast_to_fp32` / `<y>_cast_to_fp16` Casts; Resize/GroupNorm inputs that must stay float get a Cast back.
//! After it, as OnnxModel does: cascaded Casts collapsed (`Cast(Cast(x))` reads x), dead nodes pruned, and Casts
//! to the type their input already has removed. Olive's pass `OnnxFloatToFloat16` (olive/passes/onnx/
//! float16_conversion.py) is [`OnnxFloatToFloat16`].

use std::collections::{BTreeMap, HashMap, HashSet};

use half::f16;
use olive_onnx::proto::{
    attribute_proto::AttributeType, tensor_shape_proto::dimension, type_proto, AttributeProto,
    ModelProto, NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::dtypes::{self, FLOAT, FLOAT16};
use crate::graph::topo_sort;

mod pass;
pub use pass::{Float16Config, OnnxFloatToFloat16};

/// float16.py's DEFAULT_OP_BLOCK_LIST: ops kept in fp32 unless op_block_list is given.
pub const DEFAULT_OP_BLOCK_LIST: &[&str] = &[
    "ArrayFeatureExtractor",
    "Binarizer",
    "CastMap",
    "CategoryMapper",
    "DictVectorizer",
    "FeatureVectorizer",
    "Imputer",
    "LabelEncoder",
    "LinearClassifier",
    "LinearRegressor",
    "Normalizer",
    "OneHotEncoder",
    "RandomUniformLike",
    "SVMClassifier",
    "SVMRegressor",
    "Scaler",
    "TreeEnsembleClassifier",
    "TreeEnsembleRegressor",
    "TreeEnsemble",
    "ZipMap",
    "NonMaxSuppression",
    "TopK",
    "RoiAlign",
    "Range",
    "CumSum",
    "Min",
    "Max",
    "Upsample",
];

/// The smallest positive fp16 (subnormal) and the largest finite one: the limits float16.py asserts.
pub const FP16_MIN_POSITIVE: f64 = 5.96e-08;
pub const FP16_MAX: f64 = 65504.0;

/// Ops whose `dtype` attribute float16.py switches to fp16.
const DTYPE_OPS: &[&str] = &[
    "EyeLike",
    "Multinomial",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "SequenceEmpty",
    "Bernoulli",
];

/// keep_io_types: all fp32 graph inputs/outputs, or those named.
#[derive(Debug, Clone, PartialEq, JsonSchema)]
#[schemars(untagged)]
pub enum KeepIoTypes {
    /// true: every fp32 graph input and output stays fp32; false: they become fp16.
    All(bool),
    /// The fp32 graph inputs/outputs that stay fp32.
    Names(Vec<String>),
}

impl<'de> Deserialize<'de> for KeepIoTypes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(on) => Ok(KeepIoTypes::All(on)),
            serde_json::Value::Array(items) => items
                .into_iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()
                .map(KeepIoTypes::Names)
                .ok_or_else(|| serde::de::Error::custom("keep_io_types: expected a list of graph input/output names")),
            other => Err(serde::de::Error::custom(format!(
                "keep_io_types: expected true, false or a list of graph input/output names, not {other}"
            ))),
        }
    }
}

/// What to convert.
#[derive(Debug, Clone)]
pub struct Float16Options {
    pub min_positive_val: f64,
    pub max_finite_val: f64,
    pub keep_io_types: KeepIoTypes,
    /// None: [`DEFAULT_OP_BLOCK_LIST`].
    pub op_block_list: Option<Vec<String>>,
    pub node_block_list: Vec<String>,
    /// op type -> input indices converted to fp16 although float16.py keeps them fp32 (Resize, GroupNorm).
    pub force_fp16_inputs: BTreeMap<String, Vec<i64>>,
}

impl Default for Float16Options {
    /// float16.py's defaults with keep_io_types as OnnxModel.convert_float_to_float16 sets it (true).
    fn default() -> Self {
        Float16Options {
            min_positive_val: FP16_MIN_POSITIVE,
            max_finite_val: FP16_MAX,
            keep_io_types: KeepIoTypes::All(true),
            op_block_list: None,
            node_block_list: Vec::new(),
            force_fp16_inputs: BTreeMap::new(),
        }
    }
}

impl Float16Options {
    /// float16.py's checks of the clamping limits.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_positive_val.is_nan() || self.min_positive_val < FP16_MIN_POSITIVE {
            return Err(format!(
                "min_positive_val {}: expected at least {FP16_MIN_POSITIVE} (the smallest positive float16)",
                self.min_positive_val
            ));
        }
        if !(self.max_finite_val <= FP16_MAX && self.max_finite_val > self.min_positive_val) {
            return Err(format!(
                "max_finite_val {}: expected above min_positive_val and at most {FP16_MAX} (the largest float16)",
                self.max_finite_val
            ));
        }
        Ok(())
    }
}

/// What the conversion did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Float16Report {
    /// Float initializers converted to fp16.
    pub initializers_fp16: usize,
    /// Float initializers left fp32 (only blocked nodes read them).
    pub initializers_fp32: usize,
    /// Nodes kept in fp32 (op or node block list).
    pub nodes_blocked: usize,
    /// Cast nodes added (graph io, blocked nodes, fp32-only inputs).
    pub casts_added: usize,
    /// Cast nodes removed after (cascaded or to the same type).
    pub casts_removed: usize,
}

fn tensor_info(name: &str, elem: i32, shape: Option<TensorShapeProto>) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Sets a tensor value info's element type (true) or a sequence-of-tensor's (true); false for other types.
fn set_float_type(v: &mut ValueInfoProto, from: i32, to: i32) -> bool {
    let Some(value) = v.r#type.as_mut().and_then(|t| t.value.as_mut()) else {
        return false;
    };
    let tensor = match value {
        type_proto::Value::TensorType(t) => Some(t),
        type_proto::Value::SequenceType(s) => s
            .elem_type
            .as_mut()
            .and_then(|e| e.value.as_mut())
            .and_then(|e| match e {
                type_proto::Value::TensorType(t) => Some(t),
                _ => None,
            }),
        _ => None,
    };
    match tensor {
        Some(t) if t.elem_type == Some(from) => {
            t.elem_type = Some(to);
            true
        }
        _ => false,
    }
}

fn cast_node(name: &str, input: &str, output: &str, to: i32) -> NodeProto {
    NodeProto {
        name: Some(name.to_string()),
        op_type: Some("Cast".into()),
        input: vec![input.to_string()],
        output: vec![output.to_string()],
        attribute: vec![AttributeProto {
            name: Some("to".into()),
            i: Some(to as i64),
            r#type: Some(AttributeType::Int as i32),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// float16.py's convert_np_to_float16 for one value: magnitudes below min_positive_val raised to it, finite
/// magnitudes above max_finite_val lowered to it (0, NaN and ±inf unchanged), then rounded to nearest even.
fn clamp<T: PartialOrd + Copy + std::ops::Neg<Output = T>>(
    x: T,
    min: T,
    max: T,
    zero: T,
    inf: T,
) -> T {
    if zero < x && x < min {
        min
    } else if -min < x && x < zero {
        -min
    } else if max < x && x < inf {
        max
    } else if -inf < x && x < -max {
        -max
    } else {
        x
    }
}

/// float16.py's convert_tensor_float_to_float16: a float tensor (raw_data compared in f32, float_data in f64
/// as numpy does) becomes fp16; returns whether it was float.
pub fn tensor_to_f16(t: &mut TensorProto, min: f64, max: f64) -> Result<bool, String> {
    if t.data_type != Some(FLOAT) {
        return Ok(false);
    }
    let name = t.name.clone().unwrap_or_default();
    if !t.external_data.is_empty() {
        return Err(format!("tensor `{name}`: its external data is not loaded"));
    }
    t.data_type = Some(FLOAT16);
    if !t.float_data.is_empty() {
        t.int32_data = t
            .float_data
            .iter()
            .map(|&v| {
                let c = clamp(v as f64, min, max, 0.0, f64::INFINITY);
                i32::from(f16::from_f64(c).to_bits())
            })
            .collect();
        t.float_data.clear();
    }
    if let Some(raw) = t.raw_data.as_mut().filter(|r| !r.is_empty()) {
        if raw.len() % 4 != 0 {
            return Err(format!(
                "tensor `{name}`: raw_data of {} bytes is not a whole number of float32s",
                raw.len()
            ));
        }
        let (min, max) = (min as f32, max as f32);
        *raw = raw
            .chunks_exact(4)
            .flat_map(|b| {
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                f16::from_f32(clamp(v, min, max, 0.0, f32::INFINITY)).to_le_bytes()
            })
            .collect();
    }
    Ok(true)
}

/// Names in use (values and nodes): the Casts' names are float16.py's unless taken (a model converted before
/// already has `graph_output_cast_0`), then suffixed `_1`, `_2`, ...
struct Fresh(HashSet<String>);

impl Fresh {
    fn of(graph: &olive_onnx::proto::GraphProto) -> Self {
        let values = graph
            .input
            .iter()
            .chain(&graph.output)
            .chain(&graph.value_info)
            .filter_map(|v| v.name.clone());
        let inits = graph.initializer.iter().filter_map(|t| t.name.clone());
        let nodes = graph
            .node
            .iter()
            .flat_map(|n| n.output.iter().cloned().chain(n.name.clone()));
        Fresh(values.chain(inits).chain(nodes).collect())
    }

    fn take(&mut self, base: String) -> String {
        let mut name = base.clone();
        let mut k = 0;
        while self.0.contains(&name) {
            k += 1;
            name = format!("{base}_{k}");
        }
        self.0.insert(name.clone());
        name
    }
}

/// The values float16.py knows to be fp16 (its value_info_list): the first value info seen for each name.
#[derive(Default)]
struct Fp16Values {
    infos: HashMap<String, ValueInfoProto>,
}

impl Fp16Values {
    fn add(&mut self, v: &ValueInfoProto) {
        if let Some(name) = &v.name {
            self.infos.entry(name.clone()).or_insert_with(|| v.clone());
        }
    }
}

/// Converts `model` to float16 in place.
pub fn convert(model: &mut ModelProto, o: &Float16Options) -> Result<Float16Report, String> {
    o.validate()?;
    let opset = model
        .opset_import
        .iter()
        .filter(|s| matches!(s.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .filter_map(|s| s.version)
        .max()
        .unwrap_or(11);
    let graph = model.graph.as_mut().ok_or("the model has no graph")?;
    if let Some(n) = graph.node.iter().find(|n| {
        n.attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty())
    }) {
        return Err(format!(
            "node `{}` ({}) has a subgraph: olive-rs converts models without subgraphs (If/Loop/Scan) to float16",
            n.name.as_deref().unwrap_or(""),
            n.op_type.as_deref().unwrap_or("")
        ));
    }
    graph.node = topo_sort(std::mem::take(&mut graph.node))?;
    // The inferred element types as shape-less value_info (OnnxModel merges symbolic shape inference's types).
    let types = dtypes::infer(graph);
    let mut known: HashSet<String> = graph
        .input
        .iter()
        .chain(&graph.output)
        .chain(&graph.value_info)
        .filter_map(|v| v.name.clone())
        .chain(graph.initializer.iter().filter_map(|t| t.name.clone()))
        .collect();
    let mut inferred = Vec::new();
    for n in &graph.node {
        for out in n.output.iter().filter(|s| !s.is_empty()) {
            if let Some(&t) = types.get(out) {
                if known.insert(out.clone()) {
                    inferred.push(tensor_info(out, t, None));
                }
            }
        }
    }
    graph.value_info.extend(inferred);

    let op_block: HashSet<String> = match &o.op_block_list {
        Some(list) => list.iter().cloned().collect(),
        None => DEFAULT_OP_BLOCK_LIST
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let node_block: HashSet<&str> = o.node_block_list.iter().map(String::as_str).collect();
    let mut always_float: HashMap<&str, Vec<i64>> = HashMap::from([
        ("Resize", vec![2]),
        ("GroupNorm", vec![1, 2]),
        ("SkipGroupNorm", vec![1, 2]),
    ]);
    if opset <= 10 {
        always_float.insert("Resize", vec![1]);
    }
    let forced = |op: &str, i: usize| {
        o.force_fp16_inputs
            .get(op)
            .is_some_and(|l| l.contains(&(i as i64)))
    };
    let stays_fp32 = |op: &str, i: usize| {
        always_float
            .get(op)
            .is_some_and(|l| l.contains(&(i as i64)))
            && !forced(op, i)
    };

    let mut report = Float16Report::default();
    let mut fp16 = Fp16Values::default();
    let mut rename: HashMap<String, String> = HashMap::new();
    let mut io_skip: HashSet<String> = HashSet::new();
    let keeps = |name: &str| match &o.keep_io_types {
        KeepIoTypes::All(on) => *on,
        KeepIoTypes::Names(names) => names.iter().any(|n| n == name),
    };
    let original = graph.node.len();
    let mut fresh = Fresh::of(graph);
    let mut io_casts = Vec::new();
    for (i, v) in graph.input.iter().enumerate() {
        let name = v.name.clone().unwrap_or_default();
        if dtypes::declared(v) != Some(FLOAT) || !keeps(&name) {
            continue;
        }
        let out = fresh.take(format!("graph_input_cast_{i}"));
        let mut info = v.clone();
        info.name = Some(out.clone());
        set_float_type(&mut info, FLOAT, FLOAT16);
        graph.value_info.push(info.clone());
        fp16.add(&info);
        io_casts.push(cast_node(
            &fresh.take(format!("graph_input_cast{i}")),
            &name,
            &out,
            FLOAT16,
        ));
        rename.insert(name.clone(), out);
        io_skip.insert(name);
    }
    for (i, v) in graph.output.iter().enumerate() {
        let name = v.name.clone().unwrap_or_default();
        if dtypes::declared(v) != Some(FLOAT) || !keeps(&name) {
            continue;
        }
        let inner = fresh.take(format!("graph_output_cast_{i}"));
        let mut info = v.clone();
        info.name = Some(inner.clone());
        set_float_type(&mut info, FLOAT, FLOAT16);
        graph.value_info.push(info.clone());
        fp16.add(&info);
        io_casts.push(cast_node(
            &fresh.take(format!("graph_output_cast{i}")),
            &inner,
            &name,
            FLOAT,
        ));
        rename.insert(name.clone(), inner);
        io_skip.insert(name);
    }
    report.casts_added += io_casts.len();
    graph.node.extend(io_casts);

    // Float initializers: (read by an fp32 use, read by an fp16 use).
    let mut uses: HashMap<String, (usize, usize)> = graph
        .initializer
        .iter()
        .filter(|t| t.data_type == Some(FLOAT))
        .filter_map(|t| t.name.clone())
        .map(|n| (n, (0, 0)))
        .collect();
    let mut blocked = Vec::new();
    let mut mixed = Vec::new();
    for idx in 0..original {
        let n = &mut graph.node[idx];
        for s in n.input.iter_mut().chain(n.output.iter_mut()) {
            if let Some(to) = rename.get(s.as_str()) {
                *s = to.clone();
            }
        }
        let op = n.op_type.clone().unwrap_or_default();
        let is_blocked =
            op_block.contains(&op) || node_block.contains(n.name.as_deref().unwrap_or(""));
        for (i, input) in n.input.iter().enumerate() {
            if let Some(u) = uses.get_mut(input) {
                if is_blocked || stays_fp32(&op, i) {
                    u.0 += 1;
                } else {
                    u.1 += 1;
                }
            }
        }
        if is_blocked {
            blocked.push(idx);
            continue;
        }
        to_fp16_node(n, &op, o)?;
        if always_float.contains_key(op.as_str()) && !o.force_fp16_inputs.contains_key(&op) {
            mixed.push(idx);
        }
    }
    report.nodes_blocked = blocked.len();
    for v in graph
        .input
        .iter_mut()
        .chain(graph.output.iter_mut())
        .chain(graph.value_info.iter_mut())
    {
        if !io_skip.contains(v.name.as_deref().unwrap_or("")) && set_float_type(v, FLOAT, FLOAT16) {
            fp16.add(v);
        }
    }
    for t in &mut graph.initializer {
        let Some((_, fp16_uses)) = t.name.as_ref().and_then(|n| uses.get(n)) else {
            continue;
        };
        if *fp16_uses == 0 {
            report.initializers_fp32 += 1;
            continue;
        }
        tensor_to_f16(t, o.min_positive_val, o.max_finite_val)?;
        report.initializers_fp16 += 1;
        let dim = t.dims.iter().map(|&d| tensor_shape_proto_dim(d)).collect();
        fp16.add(&tensor_info(
            t.name.as_deref().unwrap_or(""),
            FLOAT16,
            Some(TensorShapeProto { dim }),
        ));
    }

    // fp32 inputs of mixed-type nodes and of blocked nodes read through one shared Cast each.
    let mut casts: Vec<NodeProto> = Vec::new();
    let mut to_fp32: HashMap<String, String> = HashMap::new();
    let mut cast_in = |graph_vi: &mut Vec<ValueInfoProto>,
                       casts: &mut Vec<NodeProto>,
                       fresh: &mut Fresh,
                       name: &str| {
        let info = fp16.infos.get(name)?;
        if let Some(out) = to_fp32.get(name) {
            return Some(out.clone());
        }
        let out = fresh.take(format!("{name}_cast_to_fp32"));
        let mut vi = info.clone();
        vi.name = Some(out.clone());
        set_float_type(&mut vi, FLOAT16, FLOAT);
        graph_vi.push(vi);
        casts.push(cast_node(
            &fresh.take(format!("{name}_cast_to_fp32_node")),
            name,
            &out,
            FLOAT,
        ));
        to_fp32.insert(name.to_string(), out.clone());
        Some(out)
    };
    for &idx in &mixed {
        let op = graph.node[idx].op_type.clone().unwrap_or_default();
        for i in 0..graph.node[idx].input.len() {
            if !stays_fp32(&op, i) {
                continue;
            }
            let name = graph.node[idx].input[i].clone();
            if let Some(out) = cast_in(&mut graph.value_info, &mut casts, &mut fresh, &name) {
                graph.node[idx].input[i] = out;
            }
        }
    }
    for &idx in &blocked {
        for i in 0..graph.node[idx].input.len() {
            let name = graph.node[idx].input[i].clone();
            if let Some(out) = cast_in(&mut graph.value_info, &mut casts, &mut fresh, &name) {
                graph.node[idx].input[i] = out;
            }
        }
        for i in 0..graph.node[idx].output.len() {
            let name = graph.node[idx].output[i].clone();
            let Some(info) = fp16.infos.get(&name) else {
                continue;
            };
            let inner = fresh.take(format!("{name}_cast_to_fp16"));
            let mut vi = info.clone();
            vi.name = Some(inner.clone());
            set_float_type(&mut vi, FLOAT16, FLOAT);
            graph.value_info.push(vi);
            casts.push(cast_node(
                &fresh.take(format!("{name}_cast_to_fp16_node")),
                &inner,
                &name,
                FLOAT16,
            ));
            graph.node[idx].output[i] = inner;
        }
    }
    report.casts_added += casts.len();
    graph.node.extend(casts);

    let before = graph.node.len();
    if collapse_cascaded_casts(&mut graph.node) > 0 {
        crate::peephole::remove_dead(graph);
    }
    remove_same_type_casts(graph);
    report.casts_removed = before - graph.node.len();
    graph.node = topo_sort(std::mem::take(&mut graph.node))?;
    // value_info only for values nodes still produce.
    let produced: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .collect();
    let outputs: HashSet<String> = graph.output.iter().filter_map(|v| v.name.clone()).collect();
    graph.value_info.retain(|v| {
        v.name
            .as_deref()
            .is_some_and(|n| produced.contains(n) && !outputs.contains(n))
    });
    Ok(report)
}

fn tensor_shape_proto_dim(d: i64) -> olive_onnx::proto::tensor_shape_proto::Dimension {
    olive_onnx::proto::tensor_shape_proto::Dimension {
        value: Some(dimension::Value::DimValue(d)),
        ..Default::default()
    }
}

/// A node float16.py converts: Cast to float -> fp16, random ops' dtype, ConstantOfShape's default value, and
/// float attribute tensors (except on ops with always-float inputs).
fn to_fp16_node(n: &mut NodeProto, op: &str, o: &Float16Options) -> Result<(), String> {
    if op == "Cast" {
        if let Some(a) = n
            .attribute
            .iter_mut()
            .find(|a| a.name.as_deref() == Some("to"))
        {
            if a.i == Some(FLOAT as i64) {
                a.i = Some(FLOAT16 as i64);
            }
        }
    }
    if DTYPE_OPS.contains(&op) {
        let mut has = false;
        for a in n
            .attribute
            .iter_mut()
            .filter(|a| a.name.as_deref() == Some("dtype"))
        {
            has = true;
            if a.i == Some(FLOAT as i64) {
                a.i = Some(FLOAT16 as i64);
            }
        }
        if !has && matches!(op, "RandomNormal" | "RandomUniform" | "SequenceEmpty") {
            n.attribute.push(AttributeProto {
                name: Some("dtype".into()),
                i: Some(FLOAT16 as i64),
                r#type: Some(AttributeType::Int as i32),
                ..Default::default()
            });
        }
    }
    let default_domain = matches!(n.domain.as_deref(), None | Some("") | Some("ai.onnx"));
    if default_domain
        && op == "ConstantOfShape"
        && !n
            .attribute
            .iter()
            .any(|a| a.name.as_deref() == Some("value"))
    {
        n.attribute.push(AttributeProto {
            name: Some("value".into()),
            t: Some(TensorProto {
                name: Some("value".into()),
                data_type: Some(FLOAT16),
                dims: vec![1],
                int32_data: vec![0],
                ..Default::default()
            }),
            r#type: Some(AttributeType::Tensor as i32),
            ..Default::default()
        });
    }
    let always_float = matches!(op, "Resize" | "GroupNorm" | "SkipGroupNorm");
    if !always_float || o.force_fp16_inputs.contains_key(op) {
        for a in &mut n.attribute {
            if let Some(t) = a.t.as_mut() {
                tensor_to_f16(t, o.min_positive_val, o.max_finite_val)?;
            }
            for t in &mut a.tensors {
                tensor_to_f16(t, o.min_positive_val, o.max_finite_val)?;
            }
        }
    }
    Ok(())
}

/// OnnxModel.remove_cascaded_cast_nodes: a Cast reading a Cast reads that Cast's input instead; returns how many.
fn collapse_cascaded_casts(nodes: &mut [NodeProto]) -> usize {
    let producer: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.clone(), i)))
        .collect();
    let mut count = 0;
    for i in 0..nodes.len() {
        if nodes[i].op_type.as_deref() != Some("Cast") {
            continue;
        }
        let Some(&p) = nodes[i].input.first().and_then(|x| producer.get(x)) else {
            continue;
        };
        if p != i && nodes[p].op_type.as_deref() == Some("Cast") {
            if let Some(source) = nodes[p].input.first().cloned() {
                nodes[i].input[0] = source;
                count += 1;
            }
        }
    }
    count
}

/// OnnxModel.remove_useless_cast_nodes: Casts to the type their input has are removed (one feeding a graph
/// output only when its input is no graph input and has no other reader: the producer then writes the output).
fn remove_same_type_casts(graph: &mut olive_onnx::proto::GraphProto) {
    let types = dtypes::infer(graph);
    let outputs: HashSet<String> = graph.output.iter().filter_map(|v| v.name.clone()).collect();
    let inputs: HashSet<String> = graph.input.iter().filter_map(|v| v.name.clone()).collect();
    let useless: Vec<String> = graph
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("Cast"))
        .filter_map(|n| {
            let (x, y) = (n.input.first()?, n.output.first()?);
            let from = types.get(x)?;
            (types.get(y) == Some(from)).then(|| y.clone())
        })
        .collect();
    for y in useless {
        let Some(i) = graph.node.iter().position(|n| n.output.first() == Some(&y)) else {
            continue;
        };
        let x = graph.node[i].input[0].clone();
        if outputs.contains(&y) {
            let readers = graph.node.iter().filter(|n| n.input.contains(&x)).count();
            if inputs.contains(&x) || readers != 1 {
                continue;
            }
            for n in &mut graph.node {
                for o in n.output.iter_mut().filter(|o| **o == x) {
                    o.clone_from(&y);
                }
            }
        } else {
            for n in &mut graph.node {
                for s in n.input.iter_mut().filter(|s| **s == y) {
                    s.clone_from(&x);
                }
            }
        }
        graph.node.remove(i);
    }
}

#[cfg(test)]
mod tests;
