//! QLoRA's frozen base (Dettmers et al. 2023 train LoRA over a 4-bit base). A base that is already quantized (AWQ
//! GEMM, GPTQ, Olive layouts in config.json's `quantization_config`) is trained over as it is. A float base is
//! rounded to nearest on a symmetric grid (olive-quant's RTN) in groups of 64 inputs — bitsandbytes' nf4 uses blocks
//! of 64 with absmax scaling too, but normal-quantile levels instead of uniform ones — and written as a GPTQ v1
//! folder that the trainer loads int4 (the CPU int4 kernels; packed for the GPU trainer), so training sees the int4
//! weights.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use olive_model::quantized::{pack_gptq_v1, QuantizationConfig};
use olive_model::Checkpoint;
use olive_pass_sdk::{Context, Error};
use olive_quant::{rtn, QuantSpec};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};

/// A tensor of the int4 copy: name, dtype, shape, bytes.
type OutTensor<'a> = (String, Dtype, Vec<usize>, Cow<'a, [u8]>);

/// The decoder linears quantized: `model.layers.N.<self_attn|mlp>.<name>.weight`.
fn is_decoder_linear(name: &str) -> Option<&str> {
    let prefix = name.strip_suffix(".weight")?;
    let parts: Vec<&str> = prefix.split('.').collect();
    match parts.as_slice() {
        ["model", "layers", layer, "self_attn" | "mlp", proj]
            if layer.parse::<usize>().is_ok() && proj.ends_with("_proj") =>
        {
            Some(prefix)
        }
        _ => None,
    }
}

/// The folder whose weights QLoRA trains over: `dir` itself when it is quantized, else an RTN copy written into
/// `scratch` (config.json with a GPTQ `quantization_config` and model.safetensors).
pub fn quantized_base(
    dir: &Path,
    bits: u8,
    group_size: usize,
    scratch: &Path,
    ctx: &Context<'_>,
) -> Result<PathBuf, Error> {
    let config_path = dir.join("config.json");
    if QuantizationConfig::from_config_json(&config_path)
        .map_err(|e| Error::UnsupportedModel(e.to_string()))?
        .is_some()
    {
        ctx.info("the base is already quantized: training over its weights as they are");
        return Ok(dir.to_path_buf());
    }
    if bits != 4 && bits != 8 && bits != 2 {
        return Err(Error::InvalidConfig(format!(
            "bits: 2, 4 or 8 (what a GPTQ v1 folder stores), found {bits}"
        )));
    }
    if group_size == 0 {
        return Err(Error::InvalidConfig(
            "group_size: a positive number of weights, found 0".into(),
        ));
    }
    let spec = QuantSpec {
        bits,
        group_size: Some(group_size),
        sym: true,
    };
    let ckpt = Checkpoint::open(dir).map_err(|e| Error::UnsupportedModel(e.to_string()))?;
    let mut names: Vec<String> = ckpt.names().map(str::to_string).collect();
    names.sort();
    let linears = names
        .iter()
        .filter(|n| is_decoder_linear(n).is_some())
        .count();
    ctx.info(&format!(
        "QLoRA: rounding {linears} linears to {bits} bits (symmetric, groups of {group_size})"
    ));
    // Packed linears are owned; the other tensors borrow the mapped file, so memory holds the int4 model once.
    let mut tensors: Vec<OutTensor> = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        ctx.check_cancelled()?;
        let failed = |reason: String| {
            Error::UnsupportedModel(format!("{}: tensor `{name}`: {reason}", dir.display()))
        };
        if let Some(prefix) = is_decoder_linear(name) {
            let t = ckpt.tensor_f32(name).map_err(|e| failed(e.to_string()))?;
            let [out_f, in_f] = t.shape[..] else {
                return Err(failed(format!("shape {:?}, expected [out, in]", t.shape)));
            };
            let q = rtn(&t.data, out_f, in_f, &spec).map_err(|e| failed(e.to_string()))?;
            // The float weight's mapped pages are not read again.
            ckpt.release(name);
            for (suffix, dtype, shape, bytes) in
                pack_gptq_v1(&q).map_err(|e| failed(e.to_string()))?
            {
                tensors.push((
                    format!("{prefix}.{suffix}"),
                    dtype,
                    shape,
                    Cow::Owned(bytes),
                ));
            }
            ctx.progress(
                i as u64 + 1,
                names.len() as u64,
                &format!("quantizing {prefix}"),
            );
        } else {
            let raw = ckpt.raw(name).map_err(|e| failed(e.to_string()))?;
            tensors.push((
                name.clone(),
                raw.dtype,
                raw.shape.to_vec(),
                Cow::Borrowed(raw.bytes),
            ));
        }
    }
    std::fs::create_dir_all(scratch).map_err(|e| Error::io(scratch, e))?;
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes.as_ref()).map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Failed(format!("laying out the quantized base: {e}")))?;
    let weights = scratch.join("model.safetensors");
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::serialize_to_file(views, metadata, &weights)
        .map_err(|e| Error::Failed(format!("{}: {e}", weights.display())))?;
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let mut config: Value = serde_json::from_str(&text)
        .map_err(|e| Error::UnsupportedModel(format!("{}: {e}", config_path.display())))?;
    let Some(map) = config.as_object_mut() else {
        return Err(Error::UnsupportedModel(format!(
            "{}: not a JSON object",
            config_path.display()
        )));
    };
    map.insert(
        "quantization_config".into(),
        json!({"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": false,
               "sym": true, "checkpoint_format": "gptq"}),
    );
    let out_config = scratch.join("config.json");
    std::fs::write(&out_config, config.to_string()).map_err(|e| Error::io(&out_config, e))?;
    Ok(scratch.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_decoder_linears_are_quantized() {
        assert_eq!(
            is_decoder_linear("model.layers.3.self_attn.q_proj.weight"),
            Some("model.layers.3.self_attn.q_proj")
        );
        assert_eq!(
            is_decoder_linear("model.layers.0.mlp.gate_up_proj.weight"),
            Some("model.layers.0.mlp.gate_up_proj")
        );
        for name in [
            "model.embed_tokens.weight",
            "lm_head.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.self_attn.q_proj.bias",
            "model.norm.weight",
        ] {
            assert_eq!(is_decoder_linear(name), None, "{name}");
        }
    }
}
