//! The input model of `stream::quantize_model`: a model already quantized is refused, and each decoder layer's
//! linears are listed under the checkpoint's own names (Phi-3's fused qkv_proj / gate_up_proj, or separate
//! projections) with the rows of the fused buffer of `olive_nn::DecoderLayer` they occupy.

use std::ops::Range;
use std::path::Path;

use olive_model::{Checkpoint, ModelConfig};
use serde_json::Value;

use crate::error::{QuantError, Result};
use crate::stream::{Module, Selected, Slot};

/// An input whose config.json already has `quantization_config` is refused.
pub(crate) fn refuse_quantized_config(input: &Path) -> Result<()> {
    let path = input.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| QuantError::io(&path, e))?;
    let json: Value = serde_json::from_str(&text).map_err(|source| QuantError::Json {
        path: path.clone(),
        source,
    })?;
    match json.get("quantization_config") {
        None | Some(Value::Null) => Ok(()),
        Some(q) => Err(QuantError::AlreadyQuantized {
            path,
            what: format!(
                "config.json has quantization_config, quant_method {}",
                q.get("quant_method").unwrap_or(&Value::Null)
            ),
        }),
    }
}

/// The linears of layer `i` under the checkpoint's own names (fused Phi-3 projections or separate ones).
pub(crate) fn layer_modules(
    ckpt: &Checkpoint,
    config: &ModelConfig,
    i: usize,
    sel: Selected,
) -> Result<Vec<Module>> {
    let (h, q, kv, inter) = (
        config.hidden_size,
        config.num_attention_heads * config.head_dim,
        config.num_key_value_heads * config.head_dim,
        config.intermediate_size,
    );
    let attn = format!("model.layers.{i}.self_attn");
    let mlp = format!("model.layers.{i}.mlp");
    let module = |name: String, slot, rows: Range<usize>, in_features, quantized| Module {
        name,
        slot,
        rows,
        in_features,
        quantized,
    };
    let mut out = Vec::new();
    if ckpt.contains(&format!("{attn}.qkv_proj.weight")) {
        if !(sel.q == sel.k && sel.k == sel.v) {
            return Err(QuantError::Unsupported(format!(
                "modules: {attn}.qkv_proj holds q, k and v fused; select all three (qkv_proj) or none"
            )));
        }
        out.push(module(
            format!("{attn}.qkv_proj"),
            Slot::Qkv,
            0..q + 2 * kv,
            h,
            sel.q,
        ));
    } else {
        out.push(module(format!("{attn}.q_proj"), Slot::Qkv, 0..q, h, sel.q));
        out.push(module(
            format!("{attn}.k_proj"),
            Slot::Qkv,
            q..q + kv,
            h,
            sel.k,
        ));
        out.push(module(
            format!("{attn}.v_proj"),
            Slot::Qkv,
            q + kv..q + 2 * kv,
            h,
            sel.v,
        ));
    }
    out.push(module(format!("{attn}.o_proj"), Slot::O, 0..h, q, sel.o));
    if ckpt.contains(&format!("{mlp}.gate_up_proj.weight")) {
        if sel.gate != sel.up {
            return Err(QuantError::Unsupported(format!(
                "modules: {mlp}.gate_up_proj holds gate and up fused; select both (gate_up_proj) or neither"
            )));
        }
        out.push(module(
            format!("{mlp}.gate_up_proj"),
            Slot::GateUp,
            0..2 * inter,
            h,
            sel.gate,
        ));
    } else {
        out.push(module(
            format!("{mlp}.gate_proj"),
            Slot::GateUp,
            0..inter,
            h,
            sel.gate,
        ));
        out.push(module(
            format!("{mlp}.up_proj"),
            Slot::GateUp,
            inter..2 * inter,
            h,
            sel.up,
        ));
    }
    out.push(module(
        format!("{mlp}.down_proj"),
        Slot::Down,
        0..h,
        inter,
        sel.down,
    ));
    Ok(out)
}
