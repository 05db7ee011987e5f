//! Two olive-rs additions to static QDQ for decoder LLMs on an NPU:
//!
//! - `float_residual`: the residual stream stays float. A pre-norm transformer adds every block's output to one
//!   running sum; in SmolLM2-135M that sum reaches |x| ~21000 in one channel from layer 12 on ("massive
//!   activations"), so one 16-bit scale per tensor gives every other channel (|x| ~1) a step of ~0.3 and the
//!   stream's error compounds over the layers. The Adds of the stream (an `Add` reading another `Add`'s output, or
//!   whose output another `Add` reads — the `DecomposeSkipSimplifiedLayerNormalization` chain) are left
//!   unquantized and read the previous sum's float tensor instead of its DequantizeLinear, so the sum is carried in
//!   float (float16 on the QNN HTP, which runs a float Add between quantized ops); the stream is still quantized
//!   where its consumers (the normalizations) read it. onnxruntime's quantize_static has no such mode (its
//!   excluded nodes read the shared DequantizeLinear output too).
//! - onnxruntime's `extra_options.TensorQuantOverrides` (quantization/tensor_quant_overrides.py), the per-tensor
//!   form only: an initializer listed with `[{}]` (or `[{"quant_type": <weight_type>}]`) is quantized per tensor
//!   even with `per_channel` on, as onnxruntime's `is_tensor_per_channel` decides. The QNN HTP refuses a
//!   per-channel MatMul weight of [576, 49152] (the LLM's lm_head) and takes the others.

use std::collections::{HashMap, HashSet};

use olive_onnx::proto::GraphProto;
use olive_pass_sdk::Error;

/// The first outputs of the residual stream's Adds (see the module docs); none unless `float_residual`.
pub fn residual_adds(graph: &GraphProto, float_residual: bool) -> HashSet<String> {
    if !float_residual {
        return HashSet::new();
    }
    let adds: HashMap<&str, &[String]> = graph
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("Add"))
        .filter_map(|n| Some((n.output.first()?.as_str(), n.input.as_slice())))
        .collect();
    let mut out = HashSet::new();
    for (output, inputs) in &adds {
        for input in inputs.iter().filter(|i| adds.contains_key(i.as_str())) {
            out.insert(output.to_string());
            out.insert(input.clone());
        }
    }
    out
}

/// The initializers `extra_options.TensorQuantOverrides` keeps per tensor; `weight_type` is the pass's. Keys other
/// than the per-tensor `quant_type` (scale, zero_point, axis, rmin/rmax, convert, ...) are refused by name.
pub fn per_tensor_overrides(
    extra_options: Option<&serde_json::Map<String, serde_json::Value>>,
    weight_type: &str,
) -> Result<HashSet<String>, Error> {
    let Some(overrides) = extra_options.and_then(|o| o.get("TensorQuantOverrides")) else {
        return Ok(HashSet::new());
    };
    let bad = |m: String| Error::InvalidConfig(format!("extra_options TensorQuantOverrides: {m}"));
    let map = overrides
        .as_object()
        .ok_or_else(|| bad("expected an object {tensor name: [{...}]}".into()))?;
    let mut out = HashSet::new();
    for (tensor, list) in map {
        let entries = list
            .as_array()
            .filter(|l| l.len() == 1)
            .ok_or_else(|| bad(format!("`{tensor}`: expected a list of one object")))?;
        let entry = entries[0]
            .as_object()
            .ok_or_else(|| bad(format!("`{tensor}`: expected a list of one object")))?;
        for (key, value) in entry {
            match (key.as_str(), value.as_str()) {
                ("quant_type", Some(t)) if t == weight_type => {}
                ("quant_type", _) => {
                    return Err(bad(format!(
                        "`{tensor}`: quant_type {value}: olive-rs takes the pass's weight_type ({weight_type}) only"
                    )))
                }
                _ => {
                    return Err(bad(format!(
                        "`{tensor}`: key `{key}` is not supported by olive-rs (per-tensor entries only: \
                         [{{}}] or [{{\"quant_type\": ...}}])"
                    )))
                }
            }
        }
        out.insert(tensor.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use olive_onnx::graph::node;
    use serde_json::json;

    #[test]
    fn finds_the_add_chain_and_not_other_adds() {
        let graph = GraphProto {
            node: vec![
                node("", "Add", "eps", &["mean", "e"], &["var"], vec![]),
                node("", "Add", "r1", &["embed", "attn"], &["h1"], vec![]),
                node("", "Add", "r2", &["h1", "mlp"], &["h2"], vec![]),
                node("", "Add", "rot", &["a", "b"], &["q"], vec![]),
            ],
            ..Default::default()
        };
        assert!(residual_adds(&graph, false).is_empty());
        let adds = residual_adds(&graph, true);
        let mut v: Vec<&str> = adds.iter().map(String::as_str).collect();
        v.sort();
        assert_eq!(v, ["h1", "h2"]);
    }

    #[test]
    fn reads_per_tensor_overrides_and_refuses_the_rest() {
        let w = "QUInt8";
        let of = |v: serde_json::Value| json!({"TensorQuantOverrides": v}).as_object().cloned();
        assert!(per_tensor_overrides(None, w).unwrap().is_empty());
        let ok = of(json!({"lm": [{}], "x": [{"quant_type": "QUInt8"}]}));
        let set = per_tensor_overrides(ok.as_ref(), w).unwrap();
        assert!(set.contains("lm") && set.contains("x"));
        for bad in [
            json!({"lm": [{"axis": 1}]}),
            json!({"lm": [{"quant_type": "QInt8"}]}),
            json!({"lm": []}),
            json!(["lm"]),
        ] {
            let e = per_tensor_overrides(of(bad).as_ref(), w)
                .unwrap_err()
                .to_string();
            assert!(e.contains("TensorQuantOverrides"), "{e}");
        }
    }
}
