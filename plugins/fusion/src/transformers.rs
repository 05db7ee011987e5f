//! The fusion sequence of ONNX Runtime's transformers optimizer for BERT-like models
//! (onnxruntime/python/tools/transformers onnx_model_bert.py `optimize`, FusionOptions in fusion_options.py):
//! peephole clean-ups, LayerNormalization, Gelu/FastGelu (with bias), SkipLayerNormalization (with bias),
//! EmbedLayerNormalization, Attention, Gemm.
//! Opset imports are fixed up after: com.microsoft version 1 when its ops appear, the default domain raised to 17
//! when a LayerNormalization (ONNX op from opset 17) is left unfused into SkipLayerNormalization. With `float16`
//! the fused model is then converted as the optimizer's `convert_float_to_float16` does ([`crate::float16`]); with
//! `input_int32` its int64 inputs become int32 after (`int32_inputs`).

use std::collections::BTreeMap;

use olive_onnx::proto::{ModelProto, OperatorSetIdProto};
use serde::Serialize;

use crate::attention::fuse_attention;
use crate::embed::fuse_embed_layer_norm;
use crate::float16::{Float16Options, Float16Report, KeepIoTypes};
use crate::gelu::{fuse_fast_gelu, fuse_gelu};
use crate::gemm::{fuse_gemm, known_ranks};
use crate::graph::{Rewriter, MS_DOMAIN};
use crate::int32_inputs::{inputs_to_int32, Int32Report};
use crate::norm::{fuse_layer_norm, fuse_skip_layer_norm};
use crate::TransformersConfig;

/// onnxruntime.transformers.optimizer's model types (MODEL_TYPES) olive-rs accepts; the fusions above apply to all.
pub const MODEL_TYPES: &[&str] = &[
    "bart",
    "bert",
    "bert_tf",
    "bert_keras",
    "clip",
    "gpt2",
    "gpt2_tf",
    "gpt_neox",
    "phi",
    "sam2",
    "swin",
    "t5",
    "tnlr",
    "unet",
    "vae",
    "vit",
    "conformer",
    "mmdit",
];

/// FusionOptions keys (fusion_options.py) accepted in `optimization_options`.
const FUSION_OPTION_KEYS: &[&str] = &[
    "enable_gelu",
    "enable_layer_norm",
    "enable_attention",
    "enable_rotary_embeddings",
    "use_multi_head_attention",
    "disable_multi_head_attention_bias",
    "enable_skip_layer_norm",
    "enable_embed_layer_norm",
    "enable_bias_skip_layer_norm",
    "enable_bias_gelu",
    "enable_gelu_approximation",
    "enable_qordered_matmul",
    "enable_shape_inference",
    "enable_gemm_fast_gelu",
    "group_norm_channels_last",
    "enable_nhwc_conv",
    "enable_group_norm",
    "enable_skip_group_norm",
    "enable_bias_splitgelu",
    "enable_packed_qkv",
    "enable_packed_kv",
    "enable_bias_add",
    "attention_mask_format",
    "use_raw_attention_mask",
];

/// Which fusions run.
#[derive(Debug, Clone)]
pub struct Options {
    pub gelu: bool,
    pub layer_norm: bool,
    pub skip_layer_norm: bool,
    pub bias_skip_layer_norm: bool,
    pub bias_gelu: bool,
    pub gemm: bool,
    pub attention: bool,
    pub embed_layer_norm: bool,
    /// Attention heads (0: from the graph's Reshapes).
    pub num_heads: i64,
    /// Convert to float16 after the fusions.
    pub float16: Option<Float16Options>,
    /// int64 graph inputs to int32 at the end.
    pub input_int32: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            gelu: true,
            layer_norm: true,
            skip_layer_norm: true,
            bias_skip_layer_norm: true,
            bias_gelu: true,
            gemm: true,
            attention: true,
            embed_layer_norm: true,
            num_heads: 0,
            float16: None,
            input_int32: false,
        }
    }
}

impl Options {
    /// The options of a pass config; what olive-rs cannot do is refused with the key's name.
    pub fn from_config(c: &TransformersConfig) -> Result<Self, String> {
        if let Some(t) = &c.model_type {
            if !MODEL_TYPES.contains(&t.as_str()) {
                return Err(format!(
                    "model_type `{t}`: expected one of {}",
                    MODEL_TYPES.join(", ")
                ));
            }
        }
        for (key, on) in [
            ("only_onnxruntime", c.only_onnxruntime),
            ("use_gqa", c.use_gqa),
        ] {
            if on {
                return Err(format!(
                    "{key}: not supported by olive-rs's OrtTransformersOptimization yet; leave it false"
                ));
            }
        }
        if c.num_heads < 0 {
            return Err(format!(
                "num_heads {}: expected 0 (detect) or a positive count",
                c.num_heads
            ));
        }
        // Olive passes keep_io_types, force_fp32_ops (op_block_list) and force_fp32_nodes; float16.py's
        // defaults for the rest.
        let float16 = c.float16.then(|| Float16Options {
            keep_io_types: KeepIoTypes::All(c.keep_io_types),
            op_block_list: c.force_fp32_ops.clone(),
            node_block_list: c.force_fp32_nodes.clone().unwrap_or_default(),
            force_fp16_inputs: c.force_fp16_inputs.clone().unwrap_or_default(),
            ..Float16Options::default()
        });
        let mut o = Options {
            num_heads: c.num_heads,
            float16,
            input_int32: c.input_int32,
            ..Options::default()
        };
        let flags: BTreeMap<String, serde_json::Value> =
            c.optimization_options.clone().unwrap_or_default();
        for (key, value) in &flags {
            if !FUSION_OPTION_KEYS.contains(&key.as_str()) {
                return Err(format!(
                    "optimization_options: unknown key `{key}` (FusionOptions has {})",
                    FUSION_OPTION_KEYS.join(", ")
                ));
            }
            let Some(on) = value.as_bool() else {
                // attention_mask_format is a number; it only matters for attention fusion.
                continue;
            };
            match key.as_str() {
                "enable_gelu" => o.gelu = on,
                "enable_layer_norm" => o.layer_norm = on,
                "enable_skip_layer_norm" => o.skip_layer_norm = on,
                "enable_bias_skip_layer_norm" => o.bias_skip_layer_norm = on,
                "enable_bias_gelu" => o.bias_gelu = on,
                "enable_attention" => o.attention = on,
                "enable_embed_layer_norm" => o.embed_layer_norm = on,
                _ => {}
            }
        }
        Ok(o)
    }
}

/// How many of each fusion.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub folded: usize,
    pub removed: usize,
    pub layer_norm: usize,
    pub gelu: usize,
    pub fast_gelu: usize,
    pub skip_layer_norm: usize,
    pub gemm: usize,
    pub attention: usize,
    pub embed_layer_norm: usize,
    /// What the float16 conversion did (with `float16`).
    pub float16: Option<Float16Report>,
    /// What the int32 input change did (with `input_int32`).
    pub input_int32: Option<Int32Report>,
}

fn step(model: &mut ModelProto, f: impl FnOnce(&mut Rewriter) -> usize) -> Result<usize, String> {
    let graph = model.graph.as_mut().ok_or("the model has no graph")?;
    let mut r = Rewriter::new(graph);
    let n = f(&mut r);
    r.finish()?;
    Ok(n)
}

/// Runs the clean-ups and fusions on `model`.
pub fn optimize(model: &mut ModelProto, o: &Options) -> Result<Counts, String> {
    let graph = model.graph.as_mut().ok_or("the model has no graph")?;
    let clean = crate::peephole::optimize(graph)?;
    let mut c = Counts {
        folded: clean.folded,
        removed: clean.bypassed + clean.dead,
        ..Counts::default()
    };
    if o.layer_norm {
        c.layer_norm = step(model, fuse_layer_norm)?;
    }
    if o.gelu {
        c.gelu = step(model, |r| fuse_gelu(r, o.bias_gelu))?;
        c.fast_gelu = step(model, |r| fuse_fast_gelu(r, o.bias_gelu))?;
    }
    if o.skip_layer_norm {
        c.skip_layer_norm = step(model, |r| fuse_skip_layer_norm(r, o.bias_skip_layer_norm))?;
    }
    if o.embed_layer_norm && o.layer_norm {
        let inputs: Vec<String> = model
            .graph
            .as_ref()
            .ok_or("the model has no graph")?
            .input
            .iter()
            .filter_map(|i| i.name.clone())
            .collect();
        c.embed_layer_norm = step(model, |r| fuse_embed_layer_norm(r, &inputs))?;
    }
    if o.attention {
        c.attention = step(model, |r| fuse_attention(r, o.num_heads))?;
    }
    if o.gemm {
        let ranks = known_ranks(model.graph.as_ref().ok_or("the model has no graph")?);
        c.gemm = step(model, |r| fuse_gemm(r, &ranks))?;
    }
    let graph = model.graph.as_mut().ok_or("the model has no graph")?;
    c.removed += crate::peephole::optimize(graph)?.dead;
    fix_opsets(model);
    if let Some(f) = &o.float16 {
        c.float16 = Some(crate::float16::convert(model, f)?);
    }
    if o.input_int32 {
        let graph = model.graph.as_mut().ok_or("the model has no graph")?;
        c.input_int32 = Some(inputs_to_int32(graph)?);
    }
    Ok(c)
}

/// com.microsoft version 1 when its ops are used; default domain 17 when LayerNormalization is used.
fn fix_opsets(model: &mut ModelProto) {
    let Some(graph) = model.graph.as_ref() else {
        return;
    };
    let uses_ms = graph
        .node
        .iter()
        .any(|n| n.domain.as_deref() == Some(MS_DOMAIN));
    let uses_ln = graph.node.iter().any(|n| {
        n.op_type.as_deref() == Some("LayerNormalization")
            && matches!(n.domain.as_deref(), None | Some(""))
    });
    if uses_ms
        && !model
            .opset_import
            .iter()
            .any(|o| o.domain.as_deref() == Some(MS_DOMAIN))
    {
        model.opset_import.push(OperatorSetIdProto {
            domain: Some(MS_DOMAIN.into()),
            version: Some(1),
        });
    }
    if uses_ln {
        for o in &mut model.opset_import {
            if matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx"))
                && o.version.unwrap_or(0) < 17
            {
                o.version = Some(17);
            }
        }
    }
}
