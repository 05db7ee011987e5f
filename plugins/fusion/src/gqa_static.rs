//! The static KV layout of GroupQueryAttention for fixed-shape models (QNN's HTP and other NPUs take static shapes
//! only; the growing-cache decomposition's Concat-with-zeros / ScatterElements / Slice by total_sequence_length have
//! data-dependent shapes). The layout is the one of onnxruntime-genai's static (sliding-window) models and Olive's
//! `StaticLLM` (olive/passes/onnx/static_llm.py: fixed batch, sequence and past lengths): with B, S, P the fixed batch,
//! query and past lengths and T = P + S,
//! ```text
//! slots 0..P hold the past (unused slots are masked by attention_mask = 0), slots P..T the S new tokens
//! present = Concat(past, new k/v, axis 2)                     -> [B, kv_heads, T, D]
//! key j visible to query s iff attention_mask[b, j] = 1 and j <= P + s (and j > P + s - local_window_size)
//! rotary reads the cos/sin caches at position_ids[b, s]     (a graph input, [B, S] int64, added when absent)
//! out = Softmax(Where(visible, scale * Q K^T, mask_value)) V
//! ```
//! Q is grouped [B, kv_heads, (heads / kv_heads) * S, D] against K^T [B, kv_heads, D, T] (4-D MatMuls, no copies of
//! the kv heads); the visibility is one bool [B, 1, (heads / kv_heads) * S, T] per group size for all layers (a
//! constant causal part And the cast attention_mask). seqlens_k and total_sequence_length are not read: the dead
//! subgraph making them is left for OnnxPeepholeOptimizer. On the first prompt (past slots masked) this equals the
//! GroupQueryAttention of a model without past; positions are then 0..S-1 (genai computes position_ids from the mask).

use std::collections::HashMap;

use olive_onnx::graph::{attr_int, attr_ints, inline_tensor};
use olive_onnx::proto::tensor_shape_proto::dimension;
use olive_onnx::proto::{type_proto, GraphProto, NodeProto};
use olive_onnx::tensor::DataType;

use super::{Emit, Gqa};

/// The graph's mask input.
pub const ATTENTION_MASK: &str = "attention_mask";
/// The rotary positions input.
pub const POSITION_IDS: &str = "position_ids";

/// The fixed sizes every GroupQueryAttention shares.
pub struct Layout {
    batch: i64,
    /// Past length P.
    past: i64,
    /// Query length S.
    query: i64,
    mask_value: Option<f32>,
    /// Whether position_ids must be added as a graph input.
    add_positions: bool,
}

/// The fixed dims of graph input `name`, or an error saying what is missing.
fn fixed_dims(graph: &GraphProto, name: &str) -> Result<Vec<i64>, String> {
    let vi = graph
        .input
        .iter()
        .find(|i| i.name.as_deref() == Some(name))
        .ok_or_else(|| format!("static_kv needs the graph input `{name}`"))?;
    let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(format!("graph input `{name}` is not a tensor"));
    };
    t.shape
        .iter()
        .flat_map(|s| &s.dim)
        .map(|d| match d.value {
            Some(dimension::Value::DimValue(v)) if v >= 0 => Ok(v),
            _ => Err(format!(
                "static_kv needs fixed shapes: graph input `{name}` has a symbolic dim (run DynamicToFixedShape \
                 first)"
            )),
        })
        .collect()
}

impl Layout {
    /// Reads B, P, S from `attention_mask` [B, T] and the first GroupQueryAttention's past_key [B, KV, P, D].
    pub(super) fn of(
        graph: &GraphProto,
        nodes: &[NodeProto],
        mask_value: Option<f32>,
    ) -> Result<Layout, String> {
        let mask = fixed_dims(graph, ATTENTION_MASK)?;
        let [batch, total] = mask[..] else {
            return Err(format!(
                "graph input `{ATTENTION_MASK}` has shape {mask:?}; [batch, total_sequence_length] expected"
            ));
        };
        let gqa = nodes
            .iter()
            .find(|n| n.op_type.as_deref() == Some("GroupQueryAttention"));
        let past_name = gqa.and_then(|n| n.input.get(3)).filter(|p| !p.is_empty());
        let past = match past_name {
            Some(p) => {
                let dims = fixed_dims(graph, p)?;
                *dims.get(2).ok_or_else(|| {
                    format!("graph input `{p}` has shape {dims:?}; [batch, kv_heads, past, head_size] expected")
                })?
            }
            None => 0,
        };
        let query = total - past;
        if query <= 0 {
            return Err(format!(
                "`{ATTENTION_MASK}` covers {total} positions and the past {past}: no room for the query"
            ));
        }
        let add_positions = match graph
            .input
            .iter()
            .any(|i| i.name.as_deref() == Some(POSITION_IDS))
        {
            true => {
                let dims = fixed_dims(graph, POSITION_IDS)?;
                if dims != [batch, query] {
                    return Err(format!(
                        "graph input `{POSITION_IDS}` has shape {dims:?}; [{batch}, {query}] expected"
                    ));
                }
                false
            }
            false => true,
        };
        Ok(Layout {
            batch,
            past,
            query,
            mask_value,
            add_positions,
        })
    }

    /// Adds the `position_ids` input [B, S] int64 when the graph had none.
    pub(super) fn add_inputs(&self, graph: &mut GraphProto) {
        if self.add_positions {
            graph.input.push(olive_onnx::graph::value_info(
                POSITION_IDS,
                DataType::Int64,
                &[
                    olive_onnx::graph::Dim::Fixed(self.batch),
                    olive_onnx::graph::Dim::Fixed(self.query),
                ],
            ));
        }
    }
}

/// What all layers of one group size share: key (cos, sin, window, group), value (cos/sin rows, visibility).
pub(super) type StaticShared =
    HashMap<(String, String, Option<i64>, i64), (Option<(String, String)>, String)>;

impl Emit<'_> {
    /// Rotary rows at position_ids and the visibility [B, 1, G * S, T] for `g`'s group size.
    fn static_shared(&mut self, g: &Gqa, l: &Layout) -> (Option<(String, String)>, String) {
        let scope = format!("{}/static_shared", g.name);
        let sc = scope.as_str();
        let cos_sin = g.rotary.map(|_| {
            let mut table = |t: &str| {
                let rows = self.op(sc, "Gather", &[t, POSITION_IDS], vec![]); // [B, S, R/2]
                self.unsqueeze(sc, &rows, &[1]) // [B, 1, S, R/2]
            };
            (table(&g.inputs[7]), table(&g.inputs[8]))
        });
        let group = g.heads / g.kv_heads;
        let total = l.past + l.query;
        let causal: Vec<u8> = (0..group * l.query)
            .flat_map(|r| {
                let pos = l.past + r % l.query;
                (0..total).map(move |j| {
                    let recent = g.window.is_none_or(|w| j > pos - w);
                    u8::from(j <= pos && recent)
                })
            })
            .collect();
        let name = self.fresh("/gqa_decomposed/constants/causal");
        self.initializers.push(inline_tensor(
            &name,
            DataType::Bool,
            &[group * l.query, total],
            causal,
        ));
        let present = self.op(sc, "Cast", &[ATTENTION_MASK], vec![attr_int("to", 9)]); // [B, T] bool
        let present = self.unsqueeze(sc, &present, &[1, 2]); // [B, 1, 1, T]
        let visible = self.op(sc, "And", &[&present, &name], vec![]); // [B, 1, G*S, T]
        (cos_sin, visible)
    }

    /// One node in the static layout (see the module doc), writing its three outputs.
    pub(super) fn static_attention(
        &mut self,
        g: &Gqa,
        l: &Layout,
        shared: &mut StaticShared,
    ) -> Result<(), String> {
        let key = (
            g.inputs[7].clone(),
            g.inputs[8].clone(),
            g.window,
            g.heads / g.kv_heads,
        );
        let (cos_sin, visible) = match shared.get(&key) {
            Some(s) => s.clone(),
            None => {
                let s = self.static_shared(g, l);
                shared.insert(key, s.clone());
                s
            }
        };
        let scope = g.name.clone();
        let sc = scope.as_str();
        let (h, kv, d) = (g.heads, g.kv_heads, g.head_size);
        let group = h / kv;
        let (q, k, v) = self.project(g, cos_sin.as_ref());
        let present = |this: &mut Self, past: &str, new: &str, out: &str| {
            let out = match out.is_empty() {
                true => this.fresh(&format!("{sc}/present")),
                false => out.to_string(),
            };
            match past.is_empty() {
                true => this.op_to(sc, "Identity", &[new], &[&out], vec![]),
                false => this.op_to(
                    sc,
                    "Concat",
                    &[past, new],
                    &[&out],
                    vec![attr_int("axis", 2)],
                ),
            }
            out
        };
        let keys = present(self, &g.inputs[3], &k, &g.outputs[1]); // [B, KV, T, D]
        let values = present(self, &g.inputs[4], &v, &g.outputs[2]);
        let grouped = self.ints(&[4], &[0, kv, group * l.query, d]);
        let q4 = self.op(sc, "Reshape", &[&q, &grouped], vec![]); // [B, KV, G*S, D]
        let kt = self.op(
            sc,
            "Transpose",
            &[&keys],
            vec![attr_ints("perm", &[0, 1, 3, 2])],
        );
        let qk = self.op(sc, "MatMul", &[&q4, &kt], vec![]); // [B, KV, G*S, T]
        let scale = self.float(g.dtype, g.scale);
        let scaled = self.op(sc, "Mul", &[&qk, &scale], vec![]);
        let lowest = match g.dtype {
            DataType::Float16 => -65504.0,
            _ => f32::MIN,
        };
        let hidden = self.float(g.dtype, l.mask_value.unwrap_or(lowest));
        let masked = self.op(sc, "Where", &[&visible, &scaled, &hidden], vec![]);
        let probs = self.op(sc, "Softmax", &[&masked], vec![attr_int("axis", -1)]);
        let out = self.op(sc, "MatMul", &[&probs, &values], vec![]); // [B, KV, G*S, D]
        self.merge_heads(sc, &out, (h, l.query, d), &g.outputs[0]);
        Ok(())
    }
}
