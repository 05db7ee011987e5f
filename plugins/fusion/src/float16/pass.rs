//! Olive's `OnnxFloatToFloat16` pass (olive/passes/onnx/float16_conversion.py): its config keys, turned into the
//! converter's [`Float16Options`] (include lists into block lists of the model's other ops / nodes).

use std::collections::BTreeMap;

use olive_onnx::proto::ModelProto;
use olive_pass_sdk::{kinds, Context, Error, Model, Pass};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{convert, Float16Options, KeepIoTypes};
use crate::{graph_of, rewrite_model, ExternalDataKeys};

/// The config of `OnnxFloatToFloat16` (Olive's keys).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Float16Config {
    /// Positive constants below this become it (default 1e-7).
    #[serde(default = "default_min_positive")]
    pub min_positive_val: f64,
    /// Finite constants above this (in magnitude) become it (default 1e4).
    #[serde(default = "default_max_finite")]
    pub max_finite_val: f64,
    /// Keep the model's fp32 inputs/outputs (true) or those named (a list) in fp32 behind Casts; default false.
    #[serde(default = "keep_none")]
    pub keep_io_types: KeepIoTypes,
    /// Olive: type inference by ONNX Runtime's symbolic shape inference (true) or ONNX's; olive-rs infers the
    /// element types itself, contrib ops included, either way.
    #[serde(default = "crate::yes")]
    pub use_symbolic_shape_infer: bool,
    /// Op types kept in fp32 (default: float16.py's DEFAULT_OP_BLOCK_LIST).
    #[serde(default)]
    pub op_block_list: Option<Vec<String>>,
    /// Op types converted; every other op type of the model is kept in fp32 (exclusive with op_block_list).
    #[serde(default)]
    pub op_include_list: Option<Vec<String>>,
    /// Node names kept in fp32.
    #[serde(default)]
    pub node_block_list: Option<Vec<String>>,
    /// Node names converted; every other node is kept in fp32 (exclusive with node_block_list).
    #[serde(default)]
    pub node_include_list: Option<Vec<String>>,
    #[serde(flatten)]
    pub external: ExternalDataKeys,
}

fn default_min_positive() -> f64 {
    1e-7
}

fn default_max_finite() -> f64 {
    1e4
}

fn keep_none() -> KeepIoTypes {
    KeepIoTypes::All(false)
}

impl Float16Config {
    /// The converter's options for `model` (include lists turn into block lists of the model's other ops/nodes).
    pub fn options(&self, model: &ModelProto) -> Result<Float16Options, String> {
        let nodes = model
            .graph
            .as_ref()
            .map(|g| g.node.as_slice())
            .unwrap_or(&[]);
        let op_block_list = match (&self.op_include_list, &self.op_block_list) {
            (Some(_), Some(_)) => {
                return Err("op_include_list and op_block_list are mutually exclusive".into())
            }
            (Some(keep), None) => {
                let mut ops: Vec<String> = nodes
                    .iter()
                    .filter_map(|n| n.op_type.clone())
                    .filter(|op| !keep.contains(op))
                    .collect();
                ops.sort();
                ops.dedup();
                Some(ops)
            }
            (None, block) => block.clone(),
        };
        let node_block_list = match (&self.node_include_list, &self.node_block_list) {
            (Some(_), Some(_)) => {
                return Err("node_include_list and node_block_list are mutually exclusive".into())
            }
            (Some(keep), None) => nodes
                .iter()
                .filter_map(|n| n.name.clone())
                .filter(|name| !keep.contains(name))
                .collect(),
            (None, block) => block.clone().unwrap_or_default(),
        };
        let o = Float16Options {
            min_positive_val: self.min_positive_val,
            max_finite_val: self.max_finite_val,
            keep_io_types: self.keep_io_types.clone(),
            op_block_list,
            node_block_list,
            force_fp16_inputs: BTreeMap::new(),
        };
        o.validate()?;
        Ok(o)
    }
}

/// Olive's OnnxFloatToFloat16: converts a model to float16.
pub struct OnnxFloatToFloat16;

impl Pass for OnnxFloatToFloat16 {
    const NAME: &'static str = "OnnxFloatToFloat16";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "Float32 to float16 conversion of any ONNX model (ONNX Runtime's float16 converter: clamped fp16 initializers, fp32 op/node block lists behind Casts, optional fp32 graph io).";
    const ACCEPTS: &'static [&'static str] = &[kinds::ONNX];
    const PRODUCES: &'static [&'static str] = &[kinds::ONNX];
    const DEVICES: &'static [&'static str] = &["cpu", "gpu", "npu"];
    type Config = Float16Config;

    fn run(model: Model, c: Float16Config, ctx: &Context<'_>) -> Result<Model, Error> {
        // The limits are checked before the model is read.
        Float16Options {
            min_positive_val: c.min_positive_val,
            max_finite_val: c.max_finite_val,
            ..Float16Options::default()
        }
        .validate()
        .map_err(Error::InvalidConfig)?;
        rewrite_model(model, ctx, |onnx| {
            let o = c.options(onnx).map_err(Error::InvalidConfig)?;
            let before = graph_of(onnx)?.node.len();
            let done = convert(onnx, &o).map_err(Error::Failed)?;
            let after = graph_of(onnx)?.node.len();
            ctx.info(&format!("float16: {done:?}; {before} -> {after} nodes"));
            let mut report =
                serde_json::to_value(&done).map_err(|e| Error::Failed(e.to_string()))?;
            report["nodes_before"] = before.into();
            report["nodes_after"] = after.into();
            Ok(report)
        })
    }
}
