//! Olive's `DynamicToFixedShape` (olive/passes/onnx/dynamic_to_fixed_shape.py): symbolic dims to fixed values, as
//! onnxruntime.tools.onnx_model_utils does — `make_dim_param_fixed` (every `dim_param` named in `dim_param` becomes
//! the matching `dim_value`, in the graph's inputs, outputs and value_info) or `make_input_shape_fixed` (the inputs
//! named in `input_name` get `input_shape`). A graph input left with a symbolic dim is an error naming it (an NPU
//! such as QNN's HTP takes static shapes only); an output dim still symbolic afterwards is cleared to unknown, as
//! `fix_output_shapes` leaves it for the runtime to infer.

use std::collections::BTreeMap;

use olive_onnx::proto::tensor_shape_proto::{dimension, Dimension};
use olive_onnx::proto::{type_proto, ValueInfoProto};
use olive_pass_sdk::{kinds, Context, Error, Model, Pass};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::{graph_of, rewrite_model};

/// The config of `DynamicToFixedShape` (Olive's keys: either `dim_param` + `dim_value` or `input_name` +
/// `input_shape`).
#[derive(Debug, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct FixedShapeConfig {
    /// Symbolic dim names to fix (a name absent from the model is skipped, as onnxruntime does).
    #[serde(default)]
    pub dim_param: Option<Vec<String>>,
    /// The values of `dim_param`, one each (positive).
    #[serde(default)]
    pub dim_value: Option<Vec<i64>>,
    /// Graph inputs whose whole shape is fixed.
    #[serde(default)]
    pub input_name: Option<Vec<String>>,
    /// The shapes of `input_name`, one each.
    #[serde(default)]
    pub input_shape: Option<Vec<Vec<i64>>>,
}

/// Olive's DynamicToFixedShape.
pub struct DynamicToFixedShape;

fn dims_of(vi: &mut ValueInfoProto) -> Option<&mut Vec<Dimension>> {
    match vi.r#type.as_mut()?.value.as_mut()? {
        type_proto::Value::TensorType(t) => t.shape.as_mut().map(|s| &mut s.dim),
        _ => None,
    }
}

fn name_of(vi: &ValueInfoProto) -> &str {
    vi.name.as_deref().unwrap_or("")
}

/// Applies the config to the graph; returns the number of dims fixed.
pub fn fix_shapes(
    graph: &mut olive_onnx::proto::GraphProto,
    c: &FixedShapeConfig,
) -> Result<usize, Error> {
    let bad = |m: String| Error::InvalidConfig(m);
    let mut params: BTreeMap<String, i64> = BTreeMap::new();
    let mut inputs: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    match (&c.dim_param, &c.dim_value, &c.input_name, &c.input_shape) {
        (Some(p), Some(v), None, None) => {
            if p.len() != v.len() || p.is_empty() {
                return Err(bad(format!(
                    "dim_param has {} names and dim_value {} values: give one value per name",
                    p.len(),
                    v.len()
                )));
            }
            if let Some(x) = v.iter().find(|&&x| x <= 0) {
                return Err(bad(format!("dim_value {x}: values must be positive")));
            }
            params = p.iter().cloned().zip(v.iter().copied()).collect();
        }
        (None, None, Some(n), Some(s)) => {
            if n.len() != s.len() || n.is_empty() {
                return Err(bad(format!(
                    "input_name has {} names and input_shape {} shapes: give one shape per input",
                    n.len(),
                    s.len()
                )));
            }
            if let Some(shape) = s.iter().find(|s| s.iter().any(|&x| x <= 0)) {
                return Err(bad(format!("input_shape {shape:?}: dims must be positive")));
            }
            inputs = n.iter().cloned().zip(s.iter().cloned()).collect();
        }
        _ => {
            return Err(bad(
                "give either dim_param and dim_value, or input_name and input_shape".into(),
            ))
        }
    }
    let mut fixed = 0;
    for (name, shape) in &inputs {
        let Some(vi) = graph.input.iter_mut().find(|i| name_of(i) == name) else {
            return Err(bad(format!(
                "input_name `{name}`: the graph has no such input"
            )));
        };
        let Some(dims) = dims_of(vi) else {
            return Err(bad(format!("input `{name}` is not a tensor with a shape")));
        };
        if dims.len() != shape.len() {
            return Err(bad(format!(
                "input_shape {shape:?} of `{name}`: the input has rank {}",
                dims.len()
            )));
        }
        for (d, &v) in dims.iter_mut().zip(shape) {
            if let Some(dimension::Value::DimValue(have)) = d.value {
                if have != v {
                    return Err(bad(format!(
                        "input_shape {shape:?} of `{name}`: its dim {have} is already fixed"
                    )));
                }
            }
            d.value = Some(dimension::Value::DimValue(v));
            fixed += 1;
        }
    }
    let all = graph
        .input
        .iter_mut()
        .chain(graph.output.iter_mut())
        .chain(graph.value_info.iter_mut());
    for vi in all {
        for d in dims_of(vi).into_iter().flatten() {
            if let Some(dimension::Value::DimParam(p)) = &d.value {
                if let Some(&v) = params.get(p) {
                    d.value = Some(dimension::Value::DimValue(v));
                    fixed += 1;
                }
            }
        }
    }
    for vi in graph.input.iter_mut() {
        let name = name_of(vi).to_owned();
        if let Some(p) = dims_of(vi)
            .into_iter()
            .flatten()
            .find_map(|d| match &d.value {
                Some(dimension::Value::DimParam(p)) => Some(p.clone()),
                None => Some("?".into()),
                _ => None,
            })
        {
            return Err(Error::InvalidConfig(format!(
                "input `{name}` keeps the symbolic dim `{p}`: add it to dim_param/dim_value (or fix the input with \
                 input_name/input_shape)"
            )));
        }
    }
    for vi in graph.output.iter_mut().chain(graph.value_info.iter_mut()) {
        for d in dims_of(vi).into_iter().flatten() {
            if matches!(d.value, Some(dimension::Value::DimParam(_))) {
                d.value = None;
            }
        }
    }
    Ok(fixed)
}

impl Pass for DynamicToFixedShape {
    const NAME: &'static str = "DynamicToFixedShape";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "Fixes an ONNX model's symbolic dims (dim_param -> dim_value, or whole input shapes) for NPUs that take static shapes.";
    const ACCEPTS: &'static [&'static str] = &[kinds::ONNX];
    const PRODUCES: &'static [&'static str] = &[kinds::ONNX];
    const DEVICES: &'static [&'static str] = &["cpu", "npu"];
    type Config = FixedShapeConfig;

    fn run(model: Model, c: FixedShapeConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        rewrite_model(model, ctx, "fixed_shape", |onnx, _| {
            let fixed = fix_shapes(graph_of(onnx)?, &c)?;
            Ok(serde_json::json!({ "dims_fixed": fixed }))
        })
    }
}
