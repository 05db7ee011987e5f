//! Weight-only block-wise RTN quantization of any ONNX model's MatMuls: Olive's `OnnxBlockWiseRtnQuantization`
//! (olive/passes/onnx/rtn_quantization.py; block size 128 by default) and its predecessor `OnnxMatMul4Quantizer`
//! (block size 32). Each `MatMul(A, B)` whose B is a float32 2-D initializer `[K, N]` becomes
//! `com.microsoft::MatMulNBits(A, B_q, scales[, zero_points])`, quantized to the bytes ONNX Runtime's
//! MatMulNBitsQuantizer writes (`olive_onnx::matmul_nbits::quantize`). A weight shared by several MatMuls is
//! quantized once. `OnnxBlockWiseRtnQuantization` also turns Gathers of float32 tables into GatherBlockQuantized as
//! Olive 0.13 does (`gather_quant`).

use std::collections::{HashMap, HashSet};

use olive_onnx::graph::{inline_tensor, node};
use olive_onnx::matmul_nbits::{quantize, NBitsConfig, NBitsError};
use olive_onnx::proto::GraphProto;
use olive_onnx::rewrite::{Elements, Value};
use olive_onnx::tensor::{transpose, DataType};

use olive_pass_sdk::{kinds, Context, Error, Model, Pass};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::graph::{Rewriter, MS_DOMAIN};
use crate::{graph_of, rewrite_model, ExternalDataKeys};

/// Which MatMuls to quantize and how.
#[derive(Debug, Clone)]
pub struct BlockwiseOptions {
    pub config: NBitsConfig,
    pub nodes_to_exclude: HashSet<String>,
    /// Empty: every MatMul with a constant weight.
    pub nodes_to_include: HashSet<String>,
}

/// Quantizes the MatMuls of `graph`; returns how many became MatMulNBits.
pub fn quantize_matmuls(graph: &mut GraphProto, o: &BlockwiseOptions) -> Result<usize, String> {
    let inputs: HashSet<String> = graph.input.iter().filter_map(|i| i.name.clone()).collect();
    let mut r = Rewriter::new(graph);
    // weight name -> (the MatMulNBits initializers made for it, K, N)
    let mut done: HashMap<String, (Vec<String>, usize, usize)> = HashMap::new();
    let mut new_tensors = Vec::new();
    let mut count = 0;
    for i in 0..r.node_count() {
        if !r.is(i, "MatMul") {
            continue;
        }
        let n = r.node(i).clone();
        let name = n.name.clone().unwrap_or_default();
        if o.nodes_to_exclude.contains(&name)
            || (!o.nodes_to_include.is_empty() && !o.nodes_to_include.contains(&name))
        {
            continue;
        }
        let (Some(a), Some(b), Some(y)) = (n.input.first(), n.input.get(1), n.output.first())
        else {
            continue;
        };
        if inputs.contains(b) {
            continue; // an overridable initializer is not a constant
        }
        let made = match done.get(b) {
            Some(made) => made.clone(),
            None => {
                let Some(Value {
                    dims,
                    elements: Elements::F32(w),
                }) = r.constant(b)
                else {
                    continue;
                };
                let [k, nn] = dims.as_slice() else {
                    continue;
                };
                let (k, nn) = (*k as usize, *nn as usize);
                // B: [K, N] -> W: [N, K]
                let wt = transpose(&w, k, nn);
                let q = quantize(&wt, nn, k, &o.config)
                    .map_err(|e| format!("MatMul {name} weight {b}: {e}"))?;
                let base = r.fresh(&format!("{b}_Q{}", o.config.bits));
                let scales = r.fresh(&format!("{b}_scales"));
                new_tensors.push(inline_tensor(
                    &base,
                    DataType::Uint8,
                    &q.b_dims(),
                    q.b.clone(),
                ));
                new_tensors.push(inline_tensor(
                    &scales,
                    o.config.scale_type,
                    &q.scales_dims(),
                    q.scales_bytes(),
                ));
                let mut made = vec![base, scales];
                if let Some(zp) = &q.zero_points {
                    let zname = r.fresh(&format!("{b}_zero_points"));
                    new_tensors.push(inline_tensor(
                        &zname,
                        DataType::Uint8,
                        &q.zero_points_dims(),
                        zp.clone(),
                    ));
                    made.push(zname);
                }
                done.insert(b.clone(), (made.clone(), k, nn));
                (made, k, nn)
            }
        };
        let (tensors, k, nn) = made;
        let mut ins = vec![a.as_str()];
        ins.extend(tensors.iter().map(String::as_str));
        let mut attrs = vec![
            olive_onnx::graph::attr_int("K", k as i64),
            olive_onnx::graph::attr_int("N", nn as i64),
            olive_onnx::graph::attr_int("bits", o.config.bits as i64),
            olive_onnx::graph::attr_int("block_size", o.config.block_size as i64),
        ];
        if let Some(level) = o.config.accuracy_level {
            attrs.push(olive_onnx::graph::attr_int("accuracy_level", level));
        }
        let node_name = r.fresh(&format!("{name}_Q{}", o.config.bits));
        r.replace(
            &[i],
            node(MS_DOMAIN, "MatMulNBits", &node_name, &ins, &[y], attrs),
        );
        count += 1;
    }
    r.finish()?;
    graph.initializer.extend(new_tensors);
    Ok(count)
}

/// The config of `OnnxBlockWiseRtnQuantization` (Olive 0.13's keys and defaults).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockwiseRtnConfig {
    /// Bits per weight: 4 or 8.
    #[serde(default = "four")]
    pub bits: u32,
    /// Weights along K sharing a scale: a power of two >= 16.
    #[serde(default = "block_128")]
    pub block_size: usize,
    /// The axis quantized: 0 (along K, the only one MatMulNBits takes).
    #[serde(default)]
    pub axis: i64,
    /// Symmetric (no zero points).
    #[serde(default = "yes")]
    pub is_symmetric: bool,
    /// MatMulNBits accuracy_level: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8.
    #[serde(default)]
    pub accuracy_level: i64,
    /// MatMul / Gather node names left in float.
    #[serde(default)]
    pub nodes_to_exclude: Option<Vec<String>>,
    /// Only these MatMul / Gather node names (all when absent).
    #[serde(default)]
    pub nodes_to_include: Option<Vec<String>>,
    #[serde(flatten)]
    pub external: ExternalDataKeys,
}

/// The config of `OnnxMatMul4Quantizer` (Olive 0.4–0.9's int4 pass; RTN only).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatMul4Config {
    /// Weights along K sharing a scale: a power of two >= 16.
    #[serde(default = "block_32")]
    pub block_size: usize,
    /// Symmetric (no zero points).
    #[serde(default = "yes")]
    pub is_symmetric: bool,
    /// MatMulNBits accuracy_level: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8.
    #[serde(default)]
    pub accuracy_level: Option<i64>,
    /// MatMul node names left in float.
    #[serde(default)]
    pub nodes_to_exclude: Option<Vec<String>>,
    /// Only these MatMul node names (all when absent).
    #[serde(default)]
    pub nodes_to_include: Option<Vec<String>>,
    /// The algorithm: absent, DEFAULT or RTN (HQQ and GPTQ are refused).
    #[serde(default)]
    pub algorithm: Option<String>,
    #[serde(flatten)]
    pub external: ExternalDataKeys,
}

fn four() -> u32 {
    4
}
fn block_128() -> usize {
    128
}
fn block_32() -> usize {
    32
}
fn yes() -> bool {
    true
}

impl BlockwiseOptions {
    fn new(
        bits: u32,
        block_size: usize,
        symmetric: bool,
        accuracy_level: i64,
        exclude: &Option<Vec<String>>,
        include: &Option<Vec<String>>,
    ) -> Result<Self, Error> {
        if !(0..=4).contains(&accuracy_level) {
            return Err(Error::InvalidConfig(format!(
                "accuracy_level {accuracy_level}: expected 0 (unset), 1 (fp32), 2 (fp16), 3 (bf16) or 4 (int8)"
            )));
        }
        let config = NBitsConfig {
            bits,
            block_size,
            symmetric,
            scale_type: DataType::Float,
            accuracy_level: (accuracy_level > 0).then_some(accuracy_level),
        };
        if bits != 4 && bits != 8 {
            return Err(Error::InvalidConfig(format!(
                "bits: {}",
                NBitsError::Bits(bits)
            )));
        }
        if block_size < 16 || !block_size.is_power_of_two() {
            return Err(Error::InvalidConfig(format!(
                "block_size: {}",
                NBitsError::BlockSize(block_size)
            )));
        }
        let set = |v: &Option<Vec<String>>| v.iter().flatten().cloned().collect();
        Ok(BlockwiseOptions {
            config,
            nodes_to_exclude: set(exclude),
            nodes_to_include: set(include),
        })
    }
}

/// Quantizes the MatMuls, and the Gathers when `gathers` is on.
fn run_blockwise(
    model: Model,
    o: BlockwiseOptions,
    gathers: bool,
    ctx: &Context<'_>,
) -> Result<Model, Error> {
    rewrite_model(model, ctx, |onnx| {
        let graph = graph_of(onnx)?;
        let before = graph.node.len();
        let count = quantize_matmuls(graph, &o).map_err(Error::Failed)?;
        let gather_count = if gathers {
            crate::gather_quant::quantize_gathers(graph, &o).map_err(Error::Failed)?
        } else {
            0
        };
        crate::peephole::remove_dead(graph);
        let after = graph.node.len();
        if count + gather_count > 0
            && !onnx
                .opset_import
                .iter()
                .any(|s| s.domain.as_deref() == Some(MS_DOMAIN))
        {
            onnx.opset_import
                .push(olive_onnx::proto::OperatorSetIdProto {
                    domain: Some(MS_DOMAIN.into()),
                    version: Some(1),
                });
        }
        ctx.info(&format!(
            "{count} MatMuls to MatMulNBits, {gather_count} Gathers to GatherBlockQuantized ({} bits, block {})",
            o.config.bits, o.config.block_size
        ));
        Ok(
            serde_json::json!({"matmul_nbits": count, "gather_block_quantized": gather_count,
            "nodes_before": before, "nodes_after": after}),
        )
    })
}

/// Olive's OnnxBlockWiseRtnQuantization: MatMul weights to int4/int8 MatMulNBits.
pub struct OnnxBlockWiseRtnQuantization;

impl Pass for OnnxBlockWiseRtnQuantization {
    const NAME: &'static str = "OnnxBlockWiseRtnQuantization";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "Weight-only block-wise RTN quantization of an ONNX model's MatMuls to com.microsoft MatMulNBits and Gathers of float tables to GatherBlockQuantized.";
    const ACCEPTS: &'static [&'static str] = &[kinds::ONNX];
    const PRODUCES: &'static [&'static str] = &[kinds::ONNX];
    const DEVICES: &'static [&'static str] = &["cpu", "gpu"];
    type Config = BlockwiseRtnConfig;

    fn run(model: Model, c: BlockwiseRtnConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        if c.axis != 0 {
            return Err(Error::InvalidConfig(format!(
                "axis {}: MatMulNBits quantizes along K, axis 0",
                c.axis
            )));
        }
        let o = BlockwiseOptions::new(
            c.bits,
            c.block_size,
            c.is_symmetric,
            c.accuracy_level,
            &c.nodes_to_exclude,
            &c.nodes_to_include,
        )?;
        run_blockwise(model, o, true, ctx)
    }
}

/// Olive's OnnxMatMul4Quantizer (RTN): MatMul weights to int4 MatMulNBits.
pub struct OnnxMatMul4Quantizer;

impl Pass for OnnxMatMul4Quantizer {
    const NAME: &'static str = "OnnxMatMul4Quantizer";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "int4 RTN quantization of an ONNX model's MatMuls to com.microsoft MatMulNBits.";
    const ACCEPTS: &'static [&'static str] = &[kinds::ONNX];
    const PRODUCES: &'static [&'static str] = &[kinds::ONNX];
    const DEVICES: &'static [&'static str] = &["cpu", "gpu"];
    type Config = MatMul4Config;

    fn run(model: Model, c: MatMul4Config, ctx: &Context<'_>) -> Result<Model, Error> {
        match c.algorithm.as_deref() {
            None | Some("DEFAULT") | Some("RTN") => {}
            Some(other) => {
                return Err(Error::InvalidConfig(format!(
                    "algorithm `{other}`: olive-rs's OnnxMatMul4Quantizer does RTN only (DEFAULT or RTN)"
                )))
            }
        }
        let o = BlockwiseOptions::new(
            4,
            c.block_size,
            c.is_symmetric,
            c.accuracy_level.unwrap_or(0),
            &c.nodes_to_exclude,
            &c.nodes_to_include,
        )?;
        run_blockwise(model, o, false, ctx)
    }
}
