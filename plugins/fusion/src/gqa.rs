//! ONNX Runtime's com.microsoft `GroupQueryAttention` (docs/ContribOperators.md; CPU kernel
//! contrib_ops/cpu/bert/group_query_attention.cc, gqa_attention_base.h, group_query_attention_helper.h) rewritten
//! into plain ONNX ops, for execution providers that refuse the contrib op (OpenVINO 1.24 takes none of GQA,
//! MultiHeadAttention, RotaryEmbedding or opset-23 Attention). Per batch row b, with total_b = seqlens_k[b] + 1 and
//! S the query length:
//! ```text
//! past_b = max(total_b - S, 0)            (0 on the first prompt, also when right-padded)
//! pos[b, s] = past_b + s                  (rotary reads the cos/sin caches at pos, or at 1 past total_b, as ORT does)
//! present = ScatterElements(Concat(past, zeros up to total_sequence_length), pos, new k/v, axis 2)
//!           -> [B, kv_heads, max(P, total), D]: Concat(past, new) for a growing cache, in place for a shared buffer
//! key j visible to (b, s) iff j <= pos[b, s] (and j > pos[b, s] - local_window_size when it is set: the window
//!   holds local_window_size keys, the query's own included, as ORT 1.32's CPU kernel and Mistral's sliding window)
//! out = Softmax(scale * Q K^T + mask) V   over present[:, :, :total_sequence_length]
//! ```
//! Query heads are grouped [B, kv_heads, heads / kv_heads, S, D] against K and V unsqueezed at axis 2 (MatMul
//! broadcasting), so the kv heads are never copied. Graph outputs (`present.N.key` / `.value`, the attention output)
//! keep their names and shapes, so onnxruntime-genai's KV cache (shared buffer or not) works unchanged.

use std::collections::{HashMap, HashSet};

use olive_onnx::graph::{attr_int, attr_ints, attr_tensor, inline_tensor, node};
use olive_onnx::proto::{
    tensor_shape_proto::dimension, type_proto, GraphProto, ModelProto, NodeProto, TensorProto,
    ValueInfoProto,
};
use olive_onnx::tensor::{float_bytes, DataType};
use olive_pass_sdk::{kinds, Context, Error, Model, Pass};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::graph::{attr_i, find_attr, topo_sort, MS_DOMAIN};
use crate::ExternalDataKeys;

/// The config of `DecomposeGroupQueryAttention` (olive-rs keys + the external-data keys of Olive's ONNX passes).
#[derive(Debug, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct DecomposeConfig {
    /// The static KV layout of fixed-shape models (NPUs such as QNN's HTP; see [`static_kv`]): present =
    /// Concat(past, new), the mask from `attention_mask`, rotary positions from a `position_ids` input (added when
    /// absent). Needs fixed `attention_mask` and past shapes (run DynamicToFixedShape first).
    #[serde(default)]
    pub static_kv: bool,
    /// static_kv: the score of a hidden key (default: the element type's lowest value). A QDQ model wants a
    /// moderate value such as -100: the masked scores' quantization range includes it.
    #[serde(default)]
    pub mask_value: Option<f32>,
    #[serde(flatten)]
    pub external: ExternalDataKeys,
}

/// GroupQueryAttention to MatMul/Softmax attention with rotary, KV cache and masks in standard ONNX ops.
pub struct DecomposeGroupQueryAttention;

impl Pass for DecomposeGroupQueryAttention {
    const NAME: &'static str = "DecomposeGroupQueryAttention";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "com.microsoft GroupQueryAttention (rotary, KV cache, causal/window mask, grouped kv heads) as standard ONNX \
         ops, for execution providers without the contrib op (OpenVINO); KV cache inputs/outputs unchanged.";
    const ACCEPTS: &'static [&'static str] = &[kinds::ONNX];
    const PRODUCES: &'static [&'static str] = &[kinds::ONNX];
    const DEVICES: &'static [&'static str] = &["cpu", "gpu", "npu"];
    type Config = DecomposeConfig;

    fn run(model: Model, c: DecomposeConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        if c.mask_value.is_some() && !c.static_kv {
            return Err(Error::InvalidConfig(
                "mask_value goes with static_kv: true".into(),
            ));
        }
        crate::rewrite_counted(model, ctx, |onnx| {
            let count = decompose_with(onnx, &c).map_err(Error::UnsupportedModel)?;
            Ok((
                format!("GroupQueryAttention: {count} decomposed"),
                serde_json::json!({ "group_query_attention": count }),
            ))
        })
    }
}

/// Rewrites every GroupQueryAttention of the main graph; returns how many. Errors name the node and what it uses
/// that has no plain-op form here.
pub fn decompose(model: &mut ModelProto) -> Result<usize, String> {
    decompose_with(model, &DecomposeConfig::default())
}

/// [`decompose`] with the config's layout (`static_kv`: see [`static_kv`]).
pub fn decompose_with(model: &mut ModelProto, c: &DecomposeConfig) -> Result<usize, String> {
    let opset = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .and_then(|o| o.version)
        .unwrap_or(0);
    let mut names = olive_onnx::rewrite::used_names(model);
    let graph = model.graph.as_mut().ok_or("the ONNX model has no graph")?;
    let is_gqa = |n: &NodeProto| {
        n.op_type.as_deref() == Some("GroupQueryAttention")
            && n.domain.as_deref() == Some(MS_DOMAIN)
    };
    let count = graph.node.iter().filter(|n| is_gqa(n)).count();
    if count == 0 {
        return Ok(0);
    }
    if opset < 13 {
        return Err(format!(
            "the model imports ONNX opset {opset}; decomposing GroupQueryAttention needs opset 13 or newer \
             (Split/Squeeze with axes inputs)"
        ));
    }
    let info = Shapes::of(graph);
    let layout = match c.static_kv {
        true => Some(static_kv::Layout::of(graph, &graph.node, c.mask_value)?),
        false => None,
    };
    let old = std::mem::take(&mut graph.node);
    let mut e = Emit {
        nodes: Vec::with_capacity(old.len() + count * 80),
        initializers: Vec::new(),
        names: &mut names,
        consts: HashMap::new(),
    };
    let mut shared: HashMap<SharedKey, Shared> = HashMap::new();
    let mut static_shared = HashMap::new();
    for n in old {
        if let (true, Some(layout)) = (is_gqa(&n), &layout) {
            let gqa = Gqa::read(&n, &info)?;
            e.static_attention(&gqa, layout, &mut static_shared)?;
        } else if is_gqa(&n) {
            let gqa = Gqa::read(&n, &info)?;
            let key = gqa.shared_key();
            let s = match shared.get(&key) {
                Some(s) => s.clone(),
                None => {
                    let s = e.shared(&gqa)?;
                    shared.insert(key, s.clone());
                    s
                }
            };
            e.attention(&gqa, &s)?;
        } else {
            e.nodes.push(n);
        }
    }
    graph.initializer.extend(e.initializers);
    graph.node = topo_sort(e.nodes)?;
    if let Some(layout) = layout {
        layout.add_inputs(graph);
    }
    Ok(count)
}

/// What is known statically about values: element types and dims (graph inputs, value_info, initializers, and the
/// outputs of `If` nodes from their then-branch).
struct Shapes {
    types: HashMap<String, i32>,
    dims: HashMap<String, Vec<Option<i64>>>,
}

impl Shapes {
    fn of(graph: &GraphProto) -> Self {
        let mut s = Shapes {
            types: HashMap::new(),
            dims: HashMap::new(),
        };
        let add_info = |s: &mut Shapes, name: &str, v: &ValueInfoProto| {
            let Some(type_proto::Value::TensorType(t)) =
                v.r#type.as_ref().and_then(|t| t.value.as_ref())
            else {
                return;
            };
            if let Some(e) = t.elem_type {
                s.types.insert(name.to_string(), e);
            }
            if let Some(shape) = &t.shape {
                let dims = shape
                    .dim
                    .iter()
                    .map(|d| match d.value {
                        Some(dimension::Value::DimValue(v)) => Some(v),
                        _ => None,
                    })
                    .collect();
                s.dims.insert(name.to_string(), dims);
            }
        };
        for v in graph.input.iter().chain(&graph.value_info) {
            if let Some(name) = &v.name {
                add_info(&mut s, name, v);
            }
        }
        for n in &graph.node {
            let then = n
                .attribute
                .iter()
                .find(|a| a.name.as_deref() == Some("then_branch"))
                .and_then(|a| a.g.as_ref());
            if let (Some("If"), Some(then)) = (n.op_type.as_deref(), then) {
                for (out, v) in n.output.iter().zip(&then.output) {
                    add_info(&mut s, out, v);
                }
            }
        }
        for t in &graph.initializer {
            if let Some(name) = &t.name {
                s.types.insert(name.clone(), t.data_type.unwrap_or(0));
                s.dims
                    .insert(name.clone(), t.dims.iter().map(|&d| Some(d)).collect());
            }
        }
        s
    }

    fn dim(&self, name: &str, axis: usize) -> Option<i64> {
        self.dims.get(name)?.get(axis).copied().flatten()
    }
}

/// One GroupQueryAttention node, checked.
struct Gqa {
    name: String,
    /// query (or packed qkv), key, value, past_key, past_value, seqlens_k, total_sequence_length, cos, sin
    inputs: [String; 9],
    outputs: [String; 3],
    heads: i64,
    kv_heads: i64,
    head_size: i64,
    /// Rotary: half the rotated dims (cos_cache's second dim), and whether pairs are interleaved.
    rotary: Option<(i64, bool)>,
    scale: f32,
    window: Option<i64>,
    dtype: DataType,
}

type SharedKey = (String, String, String, String, Option<i64>, bool);

impl Gqa {
    fn read(n: &NodeProto, info: &Shapes) -> Result<Gqa, String> {
        let name = n
            .name
            .clone()
            .unwrap_or_else(|| "GroupQueryAttention".into());
        let at = |k: usize| n.input.get(k).cloned().unwrap_or_default();
        if let Some(k) = (9..n.input.len()).find(|&k| !at(k).is_empty()) {
            let what = ["position_ids", "attention_bias", "head_sink"]
                .get(k - 9)
                .copied()
                .unwrap_or("an extra input");
            return Err(format!(
                "{name}: GroupQueryAttention input {k} ({what}) is set; only the inputs up to sin_cache are decomposed"
            ));
        }
        for (attr, default) in [
            ("softcap", 0.0f32),
            ("smooth_softmax", 0.0),
            ("qk_output", 0.0),
        ] {
            if let Some(a) = find_attr(n, attr) {
                let v = a.f.unwrap_or(a.i.unwrap_or(0) as f32);
                if v != default {
                    return Err(format!(
                        "{name}: GroupQueryAttention attribute {attr} = {v} is not decomposed (only {default})"
                    ));
                }
            }
        }
        let heads = attr_i(n, "num_heads").filter(|&h| h > 0).ok_or_else(|| {
            format!("{name}: GroupQueryAttention has no positive num_heads attribute")
        })?;
        let kv_heads = attr_i(n, "kv_num_heads")
            .filter(|&h| h > 0 && heads % h == 0)
            .ok_or_else(|| {
                format!("{name}: kv_num_heads must be positive and divide num_heads ({heads})")
            })?;
        let inputs: [String; 9] = std::array::from_fn(at);
        if inputs[0].is_empty() || inputs[5].is_empty() || inputs[6].is_empty() {
            return Err(format!(
                "{name}: GroupQueryAttention needs query, seqlens_k and total_sequence_length"
            ));
        }
        if inputs[1].is_empty() != inputs[2].is_empty()
            || inputs[3].is_empty() != inputs[4].is_empty()
        {
            return Err(format!(
                "{name}: key/value and past_key/past_value must be given in pairs"
            ));
        }
        let outputs: [String; 3] =
            std::array::from_fn(|k| n.output.get(k).cloned().unwrap_or_default());
        if outputs[0].is_empty() {
            return Err(format!("{name}: GroupQueryAttention has no output"));
        }
        // Head size: past_key's last dim, else the query's hidden size over the heads.
        let head_size = info
            .dim(&inputs[3], 3)
            .or_else(|| {
                let hidden = info.dim(&inputs[0], 2)?;
                let heads_in = if inputs[1].is_empty() { heads + 2 * kv_heads } else { heads };
                (hidden % heads_in == 0).then_some(hidden / heads_in)
            })
            .ok_or_else(|| {
                format!(
                    "{name}: the head size is unknown (no static last dim on {} nor hidden size on {})",
                    inputs[3], inputs[0]
                )
            })?;
        let dtype_code = [&inputs[3], &inputs[0], &inputs[7]]
            .iter()
            .find_map(|v| info.types.get(v.as_str()).copied())
            .ok_or_else(|| format!("{name}: the element type of {} is unknown", inputs[0]))?;
        let dtype = match dtype_code {
            1 => DataType::Float,
            10 => DataType::Float16,
            other => {
                return Err(format!(
                    "{name}: element type {other} (TensorProto.DataType) is not decomposed; float or float16 expected"
                ))
            }
        };
        let rotary = if attr_i(n, "do_rotary") == Some(1) {
            if inputs[7].is_empty() || inputs[8].is_empty() {
                return Err(format!(
                    "{name}: do_rotary = 1 without cos_cache and sin_cache"
                ));
            }
            let half = info.dim(&inputs[7], 1).ok_or_else(|| {
                format!(
                    "{name}: the second dim of {} (rotary dims / 2) is unknown",
                    inputs[7]
                )
            })?;
            if half <= 0 || 2 * half > head_size {
                return Err(format!(
                    "{name}: {} has {half} columns; expected at most head size / 2 = {}",
                    inputs[7],
                    head_size / 2
                ));
            }
            Some((half, attr_i(n, "rotary_interleaved") == Some(1)))
        } else {
            None
        };
        let scale = find_attr(n, "scale")
            .and_then(|a| a.f)
            .filter(|&s| s != 0.0)
            .unwrap_or(1.0 / (head_size as f32).sqrt());
        let window = attr_i(n, "local_window_size").filter(|&w| w > 0);
        Ok(Gqa {
            name,
            inputs,
            outputs,
            heads,
            kv_heads,
            head_size,
            rotary,
            scale,
            window,
            dtype,
        })
    }

    fn shared_key(&self) -> SharedKey {
        let i = &self.inputs;
        (
            i[5].clone(),
            i[6].clone(),
            i[7].clone(),
            i[8].clone(),
            self.window,
            self.dtype == DataType::Float16,
        )
    }
}

/// Values computed once for all layers that share seqlens_k, total_sequence_length, the caches and the window.
#[derive(Clone)]
struct Shared {
    /// [B, 1, S, R/2] cos and sin at the rotary positions (when rotary).
    cos_sin: Option<(String, String)>,
    /// [B, 1, 1, S, T] 0 where visible, the type's lowest value elsewhere.
    mask: String,
    /// [B, 1, S, 1] the cache position of each new token.
    index: String,
    /// [1] total_sequence_length as int64.
    total: String,
}

/// The nodes and constants being written.
struct Emit<'a> {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    names: &'a mut HashSet<String>,
    consts: HashMap<String, String>,
}

const INT64: i64 = 7;

impl Emit<'_> {
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 0;
        while self.names.contains(&name) {
            k += 1;
            name = format!("{base}_{k}");
        }
        self.names.insert(name.clone());
        name
    }

    /// A node `op` named under `scope` with one output; returns the output.
    fn op(
        &mut self,
        scope: &str,
        op: &str,
        inputs: &[&str],
        attrs: Vec<olive_onnx::proto::AttributeProto>,
    ) -> String {
        let name = self.fresh(&format!("{scope}/{op}"));
        let out = self.fresh(&format!("{name}/output_0"));
        self.nodes.push(node("", op, &name, inputs, &[&out], attrs));
        out
    }

    /// A node `op` with the given outputs.
    fn op_to(
        &mut self,
        scope: &str,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<olive_onnx::proto::AttributeProto>,
    ) {
        let name = self.fresh(&format!("{scope}/{op}"));
        self.nodes.push(node("", op, &name, inputs, outputs, attrs));
    }

    /// An int64 constant (`dims` empty: a scalar), one initializer per value.
    fn ints(&mut self, dims: &[i64], v: &[i64]) -> String {
        let key = format!("i64{dims:?}{v:?}");
        if let Some(name) = self.consts.get(&key) {
            return name.clone();
        }
        let name = self.fresh("/gqa_decomposed/constants/INT64");
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.initializers
            .push(inline_tensor(&name, DataType::Int64, dims, bytes));
        self.consts.insert(key, name.clone());
        name
    }

    /// A scalar of `dtype` (float or float16).
    fn float(&mut self, dtype: DataType, v: f32) -> String {
        let key = format!("f{dtype:?}{v}");
        if let Some(name) = self.consts.get(&key) {
            return name.clone();
        }
        let name = self.fresh(&format!("/gqa_decomposed/constants/{dtype:?}"));
        let bytes = float_bytes(&[v], dtype).unwrap_or_default();
        self.initializers
            .push(inline_tensor(&name, dtype, &[], bytes));
        self.consts.insert(key, name.clone());
        name
    }

    fn unsqueeze(&mut self, scope: &str, x: &str, axes: &[i64]) -> String {
        let a = self.ints(&[axes.len() as i64], axes);
        self.op(scope, "Unsqueeze", &[x, &a], vec![])
    }

    /// `x[..., start:end]` along `axis`.
    fn slice(&mut self, scope: &str, x: &str, start: i64, end: i64, axis: i64) -> String {
        let (s, e, a) = (
            self.ints(&[1], &[start]),
            self.ints(&[1], &[end]),
            self.ints(&[1], &[axis]),
        );
        self.op(scope, "Slice", &[x, &s, &e, &a], vec![])
    }

    /// Positions, rotary tables, mask and cache indices (see the module doc).
    fn shared(&mut self, g: &Gqa) -> Result<Shared, String> {
        let scope = format!("{}/shared", g.name);
        let sc = scope.as_str();
        let [query, _, _, _, _, seqlens, total, cos, sin] = &g.inputs;
        let one = self.ints(&[], &[1]);
        let zero = self.ints(&[], &[0]);
        let seqlens64 = self.op(sc, "Cast", &[seqlens], vec![attr_int("to", INT64)]);
        let total_b = self.op(sc, "Add", &[&seqlens64, &one], vec![]); // [B]
        let shape = self.op(sc, "Shape", &[query], vec![]);
        let axis1 = self.ints(&[1], &[1]);
        let s = self.op(sc, "Gather", &[&shape, &axis1], vec![]); // [1]
        let behind = self.op(sc, "Sub", &[&total_b, &s], vec![]);
        let past_b = self.op(sc, "Max", &[&behind, &zero], vec![]); // [B]
        let axis0 = self.ints(&[1], &[0]);
        let s0 = self.op(sc, "Squeeze", &[&s, &axis0], vec![]);
        let steps = self.op(sc, "Range", &[&zero, &s0, &one], vec![]); // [S]
        let past_col = self.unsqueeze(sc, &past_b, &[1]);
        let pos = self.op(sc, "Add", &[&past_col, &steps], vec![]); // [B, S]
        let cos_sin = if g.rotary.is_some() {
            // ORT reads position 1 for padding tokens past total_b (GeneratePositionIds).
            let total_col = self.unsqueeze(sc, &total_b, &[1]);
            let inside = self.op(sc, "Less", &[&pos, &total_col], vec![]);
            let rot_pos = self.op(sc, "Where", &[&inside, &pos, &one], vec![]);
            let mut table = |t: &str| {
                let rows = self.op(sc, "Gather", &[t, &rot_pos], vec![]); // [B, S, R/2]
                self.unsqueeze(sc, &rows, &[1]) // [B, 1, S, R/2]
            };
            Some((table(cos), table(sin)))
        } else {
            None
        };
        let total64 = self.op(sc, "Cast", &[total], vec![attr_int("to", INT64)]);
        let shape1 = self.ints(&[1], &[1]);
        let total1 = self.op(sc, "Reshape", &[&total64, &shape1], vec![]); // [1]
        let t0 = self.op(sc, "Squeeze", &[&total1, &axis0], vec![]);
        let keys = self.op(sc, "Range", &[&zero, &t0, &one], vec![]); // [T]
        let pos_col = self.unsqueeze(sc, &pos, &[2]); // [B, S, 1]
        let mut visible = self.op(sc, "LessOrEqual", &[&keys, &pos_col], vec![]); // [B, S, T]
        if let Some(w) = g.window {
            let w = self.ints(&[], &[w - 1]);
            let low = self.op(sc, "Sub", &[&pos_col, &w], vec![]);
            let recent = self.op(sc, "GreaterOrEqual", &[&keys, &low], vec![]);
            visible = self.op(sc, "And", &[&visible, &recent], vec![]);
        }
        let lowest = match g.dtype {
            DataType::Float16 => -65504.0,
            _ => f32::MIN,
        };
        let (open, shut) = (self.float(g.dtype, 0.0), self.float(g.dtype, lowest));
        let mask = self.op(sc, "Where", &[&visible, &open, &shut], vec![]);
        let mask = self.unsqueeze(sc, &mask, &[1, 2]); // [B, 1, 1, S, T]
        let index = self.unsqueeze(sc, &pos, &[1, 3]); // [B, 1, S, 1]
        Ok(Shared {
            cos_sin,
            mask,
            index,
            total: total1,
        })
    }

    /// [B, S, N*D] -> [B, N, S, D]
    fn heads(&mut self, scope: &str, x: &str, n: i64, d: i64) -> String {
        let shape = self.ints(&[4], &[0, 0, n, d]);
        let r = self.op(scope, "Reshape", &[x, &shape], vec![]);
        self.op(
            scope,
            "Transpose",
            &[&r],
            vec![attr_ints("perm", &[0, 2, 1, 3])],
        )
    }

    /// The inverse of [`Self::heads`]: attention's per-head result `x` (reshaped to [B, H, `seq`, D]; -1: the
    /// remaining dim) as [B, S, H*D], written to the node output `out`.
    fn merge_heads(&mut self, scope: &str, x: &str, (h, seq, d): (i64, i64, i64), out: &str) {
        let bnsd = self.ints(&[4], &[0, h, seq, d]);
        let out4 = self.op(scope, "Reshape", &[x, &bnsd], vec![]); // [B, H, S, D]
        let bsnd = self.op(
            scope,
            "Transpose",
            &[&out4],
            vec![attr_ints("perm", &[0, 2, 1, 3])],
        );
        let flat = self.ints(&[3], &[0, 0, h * d]);
        self.op_to(scope, "Reshape", &[&bsnd, &flat], &[out], vec![]);
    }

    /// Rotary embedding of [B, N, S, D] with cos/sin [B, 1, S, R/2] on the first R dims.
    fn rotate(&mut self, scope: &str, x: &str, g: &Gqa, cos: &str, sin: &str) -> String {
        let Some((half, interleaved)) = g.rotary else {
            return x.to_string();
        };
        let d = g.head_size;
        let partial = 2 * half < d;
        let rot = if partial {
            self.slice(scope, x, 0, 2 * half, 3)
        } else {
            x.to_string()
        };
        let (x1, x2, c, s) = if interleaved {
            let shape = self.ints(&[5], &[0, 0, 0, half, 2]);
            let pairs = self.op(scope, "Reshape", &[&rot, &shape], vec![]); // [B, N, S, R/2, 2]
            let x1 = self.slice(scope, &pairs, 0, 1, 4);
            let x2 = self.slice(scope, &pairs, 1, 2, 4);
            (
                x1,
                x2,
                self.unsqueeze(scope, cos, &[4]),
                self.unsqueeze(scope, sin, &[4]),
            )
        } else {
            let x1 = self.slice(scope, &rot, 0, half, 3);
            let x2 = self.slice(scope, &rot, half, 2 * half, 3);
            (x1, x2, cos.to_string(), sin.to_string())
        };
        let (a, b) = (
            self.op(scope, "Mul", &[&x1, &c], vec![]),
            self.op(scope, "Mul", &[&x2, &s], vec![]),
        );
        let first = self.op(scope, "Sub", &[&a, &b], vec![]);
        let (a, b) = (
            self.op(scope, "Mul", &[&x2, &c], vec![]),
            self.op(scope, "Mul", &[&x1, &s], vec![]),
        );
        let second = self.op(scope, "Add", &[&a, &b], vec![]);
        let mut out = if interleaved {
            let both = self.op(
                scope,
                "Concat",
                &[&first, &second],
                vec![attr_int("axis", 4)],
            );
            let shape = self.ints(&[4], &[0, 0, 0, 2 * half]);
            self.op(scope, "Reshape", &[&both, &shape], vec![])
        } else {
            self.op(
                scope,
                "Concat",
                &[&first, &second],
                vec![attr_int("axis", 3)],
            )
        };
        if partial {
            let rest = self.slice(scope, x, 2 * half, d, 3);
            out = self.op(scope, "Concat", &[&out, &rest], vec![attr_int("axis", 3)]);
        }
        out
    }

    /// present = the past buffer grown to total_sequence_length with `new` ([B, KV, S, D]) written at each token's
    /// position; named `output` (a fresh name when the node leaves it empty).
    fn present(
        &mut self,
        scope: &str,
        g: &Gqa,
        past: &str,
        new: &str,
        output: &str,
        s: &Shared,
    ) -> String {
        let shape = self.op(scope, "Shape", &[new], vec![]);
        let lead = self.slice(scope, &shape, 0, 2, 0); // [B, KV]
        let d = self.ints(&[1], &[g.head_size]);
        let zero1 = self.ints(&[1], &[0]);
        let (grown, extra) = if past.is_empty() {
            (None, s.total.clone())
        } else {
            let past_shape = self.op(scope, "Shape", &[past], vec![]);
            let p = self.slice(scope, &past_shape, 2, 3, 0);
            let missing = self.op(scope, "Sub", &[&s.total, &p], vec![]);
            (
                Some(past.to_string()),
                self.op(scope, "Max", &[&missing, &zero1], vec![]),
            )
        };
        let zeros_shape = self.op(
            scope,
            "Concat",
            &[&lead, &extra, &d],
            vec![attr_int("axis", 0)],
        );
        let zero = inline_tensor(
            "value",
            g.dtype,
            &[1],
            float_bytes(&[0.0], g.dtype).unwrap_or_default(),
        );
        let zeros = self.op(
            scope,
            "ConstantOfShape",
            &[&zeros_shape],
            vec![attr_tensor("value", zero)],
        );
        let buffer = match grown {
            Some(past) => self.op(scope, "Concat", &[&past, &zeros], vec![attr_int("axis", 2)]),
            None => zeros,
        };
        let index = self.op(scope, "Expand", &[&s.index, &shape], vec![]);
        let out = if output.is_empty() {
            self.fresh(&format!("{scope}/present"))
        } else {
            output.to_string()
        };
        self.op_to(
            scope,
            "ScatterElements",
            &[&buffer, &index, new],
            &[&out],
            vec![attr_int("axis", 2)],
        );
        out
    }

    /// Q, K and V of one node as [B, N, S, D], Q and K rotated with `cos_sin` ([B, 1, S, R/2] each).
    fn project(&mut self, g: &Gqa, cos_sin: Option<&(String, String)>) -> (String, String, String) {
        let scope = g.name.clone();
        let sc = scope.as_str();
        let (h, kv, d) = (g.heads, g.kv_heads, g.head_size);
        let [query, key, value, ..] = &g.inputs;
        let (q, k, v) = if key.is_empty() {
            let shape = self.ints(&[4], &[0, 0, h + 2 * kv, d]);
            let packed = self.op(sc, "Reshape", &[query, &shape], vec![]); // [B, S, H+2KV, D]
            let sizes = self.ints(&[3], &[h, kv, kv]);
            let outs: Vec<String> = ["q", "k", "v"]
                .iter()
                .map(|p| self.fresh(&format!("{sc}/{p}")))
                .collect();
            let refs: Vec<&str> = outs.iter().map(String::as_str).collect();
            self.op_to(
                sc,
                "Split",
                &[&packed, &sizes],
                &refs,
                vec![attr_int("axis", 2)],
            );
            let perm = || vec![attr_ints("perm", &[0, 2, 1, 3])];
            (
                self.op(sc, "Transpose", &[&outs[0]], perm()),
                self.op(sc, "Transpose", &[&outs[1]], perm()),
                self.op(sc, "Transpose", &[&outs[2]], perm()),
            )
        } else {
            (
                self.heads(sc, query, h, d),
                self.heads(sc, key, kv, d),
                self.heads(sc, value, kv, d),
            )
        };
        match cos_sin {
            Some((cos, sin)) => (
                self.rotate(sc, &q, g, cos, sin),
                self.rotate(sc, &k, g, cos, sin),
                v,
            ),
            None => (q, k, v),
        }
    }

    /// The whole attention of one node, writing its three outputs.
    fn attention(&mut self, g: &Gqa, s: &Shared) -> Result<(), String> {
        let scope = g.name.clone();
        let sc = scope.as_str();
        let (h, kv, d) = (g.heads, g.kv_heads, g.head_size);
        let [_, _, _, past_k, past_v, ..] = &g.inputs;
        let (q, k, v) = self.project(g, s.cos_sin.as_ref());
        let present_k = self.present(sc, g, past_k, &k, &g.outputs[1], s);
        let present_v = self.present(sc, g, past_v, &v, &g.outputs[2], s);
        let zero1 = self.ints(&[1], &[0]);
        let axis2 = self.ints(&[1], &[2]);
        let keys = self.op(sc, "Slice", &[&present_k, &zero1, &s.total, &axis2], vec![]); // [B, KV, T, D]
        let values = self.op(sc, "Slice", &[&present_v, &zero1, &s.total, &axis2], vec![]);
        let grouped = self.ints(&[5], &[0, kv, h / kv, -1, d]);
        let q5 = self.op(sc, "Reshape", &[&q, &grouped], vec![]); // [B, KV, H/KV, S, D]
        let k5 = self.unsqueeze(sc, &keys, &[2]); // [B, KV, 1, T, D]
        let kt = self.op(
            sc,
            "Transpose",
            &[&k5],
            vec![attr_ints("perm", &[0, 1, 2, 4, 3])],
        );
        let v5 = self.unsqueeze(sc, &values, &[2]);
        let qk = self.op(sc, "MatMul", &[&q5, &kt], vec![]); // [B, KV, H/KV, S, T]
        let scale = self.float(g.dtype, g.scale);
        let scaled = self.op(sc, "Mul", &[&qk, &scale], vec![]);
        let masked = self.op(sc, "Add", &[&scaled, &s.mask], vec![]);
        let probs = self.op(sc, "Softmax", &[&masked], vec![attr_int("axis", -1)]);
        let out5 = self.op(sc, "MatMul", &[&probs, &v5], vec![]); // [B, KV, H/KV, S, D]
        self.merge_heads(sc, &out5, (h, -1, d), &g.outputs[0]);
        Ok(())
    }
}

#[path = "gqa_static.rs"]
pub mod static_kv;

#[cfg(test)]
#[path = "gqa_tests.rs"]
mod tests;
