//! Writing a static QDQ [`Plan`] into the graph (see [`crate::qdq`]): the scale and zero point of each
//! activation, the quantized initializers (weights, Where constants, int32 biases) with their `DequantizeLinear`,
//! and a `QuantizeLinear` -> `DequantizeLinear` pair after each activation's producer, as ORT's qdq_quantizer.py
//! places them.

use std::collections::{HashMap, HashSet};

use olive_onnx::graph::{attr_int, node};
use olive_onnx::proto::{AttributeProto, GraphProto, NodeProto, TensorProto};
use olive_pass_sdk::Error;

use crate::qdq::{Plan, Settings};
use crate::qtype::{f32_tensor, QType, INT32};
use crate::weights;

/// What the rewrite adds to the graph, built phase by phase before its nodes are rewritten.
pub(crate) struct Edits {
    /// Tensor -> the names of its scale and zero-point initializers.
    params: HashMap<String, (String, String)>,
    /// Tensor -> its scale and zero point.
    values: HashMap<String, (f32, f32)>,
    /// The new initializers (quantized data, scales, zero points).
    initializers: Vec<TensorProto>,
    /// The DequantizeLinear nodes of the quantized initializers (first in the graph).
    dq_nodes: Vec<NodeProto>,
    /// Tensor -> the tensor its consumers read instead.
    rename: HashMap<String, String>,
}

/// Activation params of the activations that do not share another tensor's (from `ranges`, Softmax's [0, 1] or
/// QNN's fixed ones); the shared ones are resolved along the chain by [`Edits::share_params`].
pub(crate) fn activation_params(
    plan: &Plan,
    ranges: &HashMap<String, (f32, f32)>,
    s: &Settings,
) -> Result<Edits, Error> {
    let act = s.act;
    let mut edits = Edits {
        params: HashMap::new(),
        values: HashMap::new(),
        initializers: Vec::new(),
        dq_nodes: Vec::new(),
        rename: HashMap::new(),
    };
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
        let (scale, zp) = match (s.qnn && act.bits16(), plan.squashed.get(t), act.qmin < 0.0) {
            // ORT's get_qnn_qdq_config (QnnCompatibilityOverrides): QNN's fixed 16-bit Sigmoid/Tanh outputs
            (true, Some(&"Sigmoid"), false) => (1.0 / 65536.0, 0.0),
            (true, Some(&"Tanh"), false) => (1.0 / 32768.0, 32768.0),
            (true, Some(_), true) => (1.0 / 32768.0, 0.0),
            _ => act.params(lo, hi, s.act_sym),
        };
        let (sn, zn) = (format!("{t}_scale"), format!("{t}_zero_point"));
        edits.initializers.push(f32_tensor(&sn, &[], &[scale]));
        edits.initializers.push(act.tensor(&zn, &[], &[zp as i32]));
        edits.params.insert(t.clone(), (sn, zn));
        edits.values.insert(t.clone(), (scale, zp));
    }
    Ok(edits)
}

impl Edits {
    /// Weights: each planned initializer quantized (constants as activations) with its DequantizeLinear in
    /// `domain`; returns each weight's scales (one per channel).
    pub(crate) fn weights(
        &mut self,
        initializers: &HashMap<&str, &TensorProto>,
        plan: &Plan,
        s: &Settings,
        domain: &str,
    ) -> Result<HashMap<String, Vec<f32>>, Error> {
        let mut weight_scales = HashMap::new();
        for w in &plan.weights {
            let axis = plan.axes.get(w).copied();
            let (ty, symmetric) = if plan.constants.contains(w) {
                (s.act, s.act_sym)
            } else if s.qnn && plan.norm_scales.contains(w) && (s.wt.qmin < 0.0 || s.wt.bits4()) {
                (QType::parse("QUInt8", "weight_type", &["QUInt8"])?, false)
            } else {
                (s.wt, s.w_sym)
            };
            let q = weights::quantize(initializers[w.as_str()], ty, symmetric, axis, domain)?;
            let out = q.dq.output[0].clone();
            if axis.is_none() {
                // A data-movement output of a weight (Gather of an embedding table) shares the weight's params.
                let (sn, zn) = (q.dq.input[1].clone(), q.dq.input[2].clone());
                self.params.insert(w.clone(), (sn, zn));
                self.values
                    .insert(w.clone(), (q.scales[0], q.zero_points[0]));
            }
            self.initializers.extend(q.initializers);
            self.dq_nodes.push(q.dq);
            self.rename.insert(w.clone(), out);
            weight_scales.insert(w.clone(), q.scales);
        }
        Ok(weight_scales)
    }

    /// Gives each activation that shares another tensor's params (along the chain) those params.
    pub(crate) fn share_params(&mut self, plan: &Plan) -> Result<(), Error> {
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
                let found = self
                    .params
                    .get(root)
                    .cloned()
                    .zip(self.values.get(root).copied());
                match found {
                    Some((p, v)) => {
                        self.params.insert(t.clone(), p);
                        self.values.insert(t.clone(), v);
                    }
                    None => {
                        return Err(Error::Failed(format!(
                            "`{t}` shares the quantization of `{root}`, which is not quantized"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Where constants: quantized to `act` with the Where output's params (a mask constant beyond the output's
    /// calibrated range saturates, as the output's own Q would saturate it).
    pub(crate) fn where_constants(
        &mut self,
        initializers: &HashMap<&str, &TensorProto>,
        plan: &Plan,
        act: QType,
        domain: &str,
    ) -> Result<(), Error> {
        for (w, out) in &plan.selected {
            let (Some((s, z)), Some(&(scale, zp))) =
                (self.params.get(out).cloned(), self.values.get(out))
            else {
                return Err(Error::Failed(format!(
                    "`{w}` takes the quantization of `{out}`, which is not quantized"
                )));
            };
            let t = initializers[w.as_str()];
            let data = weights::values(t)?;
            let q = format!("{w}_quantized");
            self.initializers
                .push(act.tensor(&q, &t.dims, &act.quantize(&data, scale, zp)));
            self.dequantize(w, [&q, &s, &z], vec![], domain);
        }
        Ok(())
    }

    /// `<name>_DequantizeLinear` (in `domain`) of its quantized tensor, scale and zero point, whose output replaces
    /// `name` in the graph.
    fn dequantize(
        &mut self,
        name: &str,
        inputs: [&str; 3],
        attrs: Vec<AttributeProto>,
        domain: &str,
    ) {
        let out = format!("{name}_DequantizeLinear_Output");
        self.dq_nodes.push(node(
            domain,
            "DequantizeLinear",
            &format!("{name}_DequantizeLinear"),
            &inputs,
            &[&out],
            attrs,
        ));
        self.rename.insert(name.to_owned(), out);
    }

    /// Biases as int32 with scale = input scale · weight scale (`weight_scales`) and zero point 0; a bias whose
    /// input or weight is not quantized stays float.
    pub(crate) fn biases(
        &mut self,
        initializers: &HashMap<&str, &TensorProto>,
        plan: &Plan,
        weight_scales: &HashMap<String, Vec<f32>>,
        domain: &str,
    ) -> Result<(), Error> {
        for (b, x, w) in &plan.biases {
            let (Some(&(xs, _)), Some(ws)) = (self.values.get(x), weight_scales.get(w)) else {
                continue;
            };
            let t = initializers[b.as_str()];
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
            self.initializers.push(INT32.tensor(&qn, &t.dims, &q));
            self.initializers.push(f32_tensor(&s, &dims, &scales));
            self.initializers
                .push(INT32.tensor(&z, &dims, &vec![0; scales.len()]));
            self.dequantize(b, [&qn, &s, &z], attrs, domain);
        }
        Ok(())
    }

    /// Rewrites `graph`: each activation's Q -> DQ pair and the nodes spliced (see [`splice`]), the quantized
    /// initializers replaced by the new ones. `residual`: the residual Adds' outputs left float.
    pub(crate) fn apply(
        mut self,
        graph: &mut GraphProto,
        plan: &Plan,
        residual: &HashSet<String>,
        domain: &str,
    ) {
        let pairs = self.activation_pairs(graph, plan, domain);
        splice(graph, self.dq_nodes, pairs, &self.rename, residual);
        let quantized: HashSet<&String> = plan
            .weights
            .iter()
            .chain(plan.biases.iter().map(|b| &b.0))
            .chain(plan.selected.iter().map(|s| &s.0))
            .collect();
        graph
            .initializer
            .retain(|t| t.name.as_ref().is_none_or(|n| !quantized.contains(n)));
        graph.initializer.extend(self.initializers);
    }

    /// Activations: the Q -> DQ pair that follows each activation's producer (in `domain`), its consumers reading
    /// the DQ output; a graph output keeps its name on the DQ and its producer writes `<t>_QuantizeLinear_Input`.
    fn activation_pairs(&mut self, graph: &GraphProto, plan: &Plan, domain: &str) -> Pairs {
        let outputs: HashSet<String> = graph.output.iter().filter_map(|o| o.name.clone()).collect();
        let mut pairs = Pairs {
            after: HashMap::new(),
            producer_rename: HashMap::new(),
        };
        for t in &plan.activations {
            let (s, z) = &self.params[t];
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
            pairs.after.insert(t.clone(), pair);
            if is_output {
                pairs.producer_rename.insert(t.clone(), source);
            } else {
                self.rename.insert(t.clone(), dqout);
            }
        }
        pairs
    }
}

/// The activations' Q -> DQ pairs, from [`Edits::activation_pairs`].
struct Pairs {
    /// Activation -> its Q and DQ nodes, placed after its producer.
    after: HashMap<String, Vec<NodeProto>>,
    /// Graph output -> the name its producer writes instead.
    producer_rename: HashMap<String, String>,
}

/// Rewrites `graph`'s nodes: the initializers' `dq_nodes` first, then the pairs of the graph inputs, then each node
/// followed by the pairs of its outputs; inputs read their `rename`d tensor, except that a residual Add (in
/// `residual`) reads the previous sum's float tensor.
fn splice(
    graph: &mut GraphProto,
    dq_nodes: Vec<NodeProto>,
    mut pairs: Pairs,
    rename: &HashMap<String, String>,
    residual: &HashSet<String>,
) {
    let inputs: Vec<String> = graph.input.iter().filter_map(|i| i.name.clone()).collect();
    let mut nodes = dq_nodes;
    for i in &inputs {
        if let Some(pair) = pairs.after.remove(i) {
            nodes.extend(pair);
        }
    }
    let old = std::mem::take(&mut graph.node);
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
            if let Some(pair) = pairs.after.remove(output) {
                after.extend(pair);
            }
            if let Some(r) = pairs.producer_rename.get(output) {
                *output = r.clone();
            }
        }
        nodes.push(n);
        nodes.extend(after);
    }
    graph.node = nodes;
}
