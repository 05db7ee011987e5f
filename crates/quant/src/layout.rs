//! The output layouts of the stream (`stream`): which layout a run writes and whether every quantized tensor fits
//! it (AutoAWQ GEMM, GPTQ v1, Olive), a finished layer's tensors packed in it (`olive_model::quantized` writers),
//! and the `quantization_config` of config.json as transformers / AutoAWQ / AutoGPTQ / GPTQModel / olive-ai write
//! it.

use std::collections::BTreeSet;

use olive_model::quantized::{pack_awq_gemm, pack_gptq_v1, pack_olive, QuantizedLinear};
use olive_model::Checkpoint;
use olive_nn::DecoderLayer;
use serde_json::{json, Value};

use crate::error::{QuantError, Result};
use crate::head::Tables;
use crate::stream::{
    slot_linear, slot_rows, Event, Method, Module, OutputFormat, QuantizeOptions, Quantized,
};
use crate::writer::OutTensor;

/// The layout to write, checked against every quantized linear before anything is written.
pub(crate) fn resolve_format(
    options: &QuantizeOptions,
    plan: &[Vec<Module>],
    tables: &Tables,
    events: &mut dyn FnMut(Event<'_>) -> bool,
) -> Result<OutputFormat> {
    let heads = || tables.head.iter().chain(&tables.embeds);
    let spec = options.spec;
    let act_order = matches!(options.method, Method::Gptq(g) if g.act_order);
    let quantized = || plan.iter().flatten().filter(|m| m.quantized);
    let awq_misfit = || -> Option<String> {
        if spec.bits != 4 {
            return Some(format!("bits {} (AutoAWQ GEMM packs 4)", spec.bits));
        }
        if act_order {
            return Some("act-order (a permuted g_idx has no AWQ layout)".into());
        }
        if tables.head.is_some() {
            return Some("lm_head (AutoAWQ GEMM has no quantized lm_head)".into());
        }
        quantized().find_map(|m| {
            let g = spec.group_len(m.in_features);
            if m.in_features % g != 0 {
                Some(format!(
                    "group_size {g} does not divide {}'s {} inputs (AutoAWQ has no ragged last group)",
                    m.name, m.in_features
                ))
            } else if m.rows.len() % 8 != 0 {
                Some(format!("{}'s {} outputs are not a multiple of 8", m.name, m.rows.len()))
            } else {
                None
            }
        })
    };
    let format = match (options.format, &options.method) {
        (OutputFormat::Auto, Method::Awq(_)) => match awq_misfit() {
            None => OutputFormat::AwqGemm,
            Some(why) => {
                let line = format!(
                    "AutoAWQ GEMM layout does not fit ({why}): writing the AWQ-searched weights in the GPTQ v1 layout \
                     (quant_method gptq)"
                );
                if !events(Event::Log(&line)) {
                    return Err(QuantError::Cancelled);
                }
                OutputFormat::GptqV1
            }
        },
        (OutputFormat::Auto, _) if tables.embeds.is_some() => OutputFormat::Olive,
        (OutputFormat::Auto, _) => OutputFormat::GptqV1,
        (f, _) => f,
    };
    if tables.embeds.is_some() && format != OutputFormat::Olive {
        return Err(QuantError::Unsupported(format!(
            "embeds: quantized embeddings exist only in Olive's layout (format olive), not {format:?}"
        )));
    }
    match format {
        OutputFormat::Olive => {
            if !matches!(spec.bits, 2 | 4 | 8) {
                return Err(QuantError::Unsupported(format!(
                    "bits {}: the Olive layout packs 2, 4 or 8 bits",
                    spec.bits
                )));
            }
            if act_order {
                return Err(QuantError::Unsupported(
                    "act-order (a permuted g_idx) has no Olive layout".into(),
                ));
            }
            let sizes = quantized()
                .map(|m| (m.name.as_str(), m.in_features))
                .chain(heads().map(|h| (h.prefix, h.hidden)));
            for (name, k) in sizes {
                let g = spec.group_len(k);
                if k % g != 0 {
                    return Err(QuantError::Unsupported(format!(
                        "{name}: group_size {g} does not divide its {k} inputs (Olive's layout has no ragged last \
                         group)"
                    )));
                }
            }
        }
        OutputFormat::AwqGemm => {
            if let Some(why) = awq_misfit() {
                return Err(QuantError::Unsupported(format!(
                    "AutoAWQ GEMM output: {why}"
                )));
            }
        }
        _ => {
            if !matches!(spec.bits, 2 | 3 | 4 | 8) {
                return Err(QuantError::Unsupported(format!(
                    "bits {}: the GPTQ v1 layout packs 2, 3, 4 or 8 bits (AWQ GEMM 4)",
                    spec.bits
                )));
            }
            let bits = usize::from(spec.bits);
            if let Some(h) = heads().find(|h| h.hidden * bits % 32 != 0 || h.vocab * bits % 32 != 0)
            {
                return Err(QuantError::Unsupported(format!(
                    "{}: [{}, {}] does not fit the GPTQ v1 layout at {bits} bits (both sizes times {bits} \
                     must be multiples of 32)",
                    h.prefix, h.vocab, h.hidden
                )));
            }
            if let Some(m) = quantized()
                .find(|m| m.in_features * bits % 32 != 0 || m.rows.len() * bits % 32 != 0)
            {
                return Err(QuantError::Unsupported(format!(
                    "{}: [{}, {}] does not fit the GPTQ v1 layout at {bits} bits (both sizes times {bits} must be \
                     multiples of 32)",
                    m.name,
                    m.rows.len(),
                    m.in_features,
                )));
            }
        }
    }
    Ok(format)
}

/// GPTQ v1 stores zero − 1, so a zero point of 0 (a group with no negative weight) cannot be written: such a
/// group gets zero 1 and its levels move up by one (clamped at the top level, which then loses one step).
pub(crate) fn fit_gptq_v1_zeros(q: &mut QuantizedLinear) {
    let (k, groups, maxq) = (q.in_features, q.n_groups(), (1u16 << q.bits) - 1);
    for o in 0..q.out_features {
        for g in 0..groups {
            if q.zeros[o * groups + g] != 0 {
                continue;
            }
            q.zeros[o * groups + g] = 1;
            for i in 0..k {
                if q.group_of(i) == g {
                    let v = &mut q.q[o * k + i];
                    *v = (u16::from(*v) + 1).min(maxq) as u8;
                }
            }
        }
    }
}

/// The tensors of one finished layer: packed quantized linears, the other linears, biases and norms in the
/// input's dtypes, and any other tensor of the layer copied as stored.
pub(crate) fn layer_tensors<'c>(
    ckpt: &'c Checkpoint,
    layer: &DecoderLayer,
    modules: &[Module],
    linears: &Quantized,
    layer_names: &[String],
    (format, sym): (OutputFormat, bool),
) -> Result<Vec<OutTensor<'c>>> {
    let mut out = Vec::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let dtype_of = |name: &str| ckpt.raw(name).map(|r| r.dtype);
    let prefix = modules
        .first()
        .and_then(|m| m.name.split(".self_attn").next())
        .unwrap_or("")
        .to_string();
    for (name, values) in [
        (
            format!("{prefix}.input_layernorm.weight"),
            &layer.input_layernorm,
        ),
        (
            format!("{prefix}.post_attention_layernorm.weight"),
            &layer.post_attention_layernorm,
        ),
    ] {
        let dtype = dtype_of(&name)?;
        out.push(OutTensor::from_f32(
            name.clone(),
            dtype,
            vec![values.len()],
            values,
        )?);
        done.insert(name);
    }
    for (i, m) in modules.iter().enumerate() {
        let weight_name = format!("{}.weight", m.name);
        let dtype = dtype_of(&weight_name)?;
        match linears.iter().find(|(j, _)| *j == i) {
            Some((_, q)) => {
                let packed = match format {
                    OutputFormat::AwqGemm => pack_awq_gemm(q),
                    OutputFormat::Olive => pack_olive(q, sym, dtype),
                    _ => pack_gptq_v1(q),
                }
                .map_err(|source| QuantError::Pack {
                    module: m.name.clone(),
                    source,
                })?;
                for (suffix, dtype, shape, bytes) in packed {
                    out.push(OutTensor {
                        name: format!("{}.{suffix}", m.name),
                        dtype,
                        shape,
                        bytes: bytes.into(),
                    });
                }
            }
            None => {
                let w = slot_rows(layer, m.slot, m.rows.clone());
                out.push(OutTensor::from_f32(
                    weight_name.clone(),
                    dtype,
                    vec![m.rows.len(), m.in_features],
                    w,
                )?);
            }
        }
        done.insert(weight_name);
        let bias_name = format!("{}.bias", m.name);
        if ckpt.contains(&bias_name) {
            let bias = slot_linear(layer, m.slot).bias.as_deref().unwrap_or(&[]);
            let values = bias.get(m.rows.clone()).ok_or_else(|| {
                QuantError::Unsupported(format!(
                    "{bias_name}: the loaded layer has no bias rows {:?}",
                    m.rows
                ))
            })?;
            out.push(OutTensor::from_f32(
                bias_name.clone(),
                dtype_of(&bias_name)?,
                vec![m.rows.len()],
                values,
            )?);
            done.insert(bias_name);
        }
    }
    for name in layer_names.iter().filter(|n| !done.contains(*n)) {
        let raw = ckpt.raw(name)?;
        out.push(OutTensor {
            name: name.clone(),
            dtype: raw.dtype,
            shape: raw.shape.to_vec(),
            bytes: raw.bytes.into(),
        });
    }
    Ok(out)
}

/// `quantization_config` of the output's config.json, as transformers / AutoAWQ / AutoGPTQ write it.
pub(crate) fn quantization_config(
    options: &QuantizeOptions,
    format: OutputFormat,
    plan: &[Vec<Module>],
    tables: &Tables,
    tied: bool,
) -> Value {
    let spec = options.spec;
    let group: i64 = spec.group_size.map_or(-1, |g| g as i64);
    let not_converted: Vec<&str> = plan
        .iter()
        .flatten()
        .filter(|m| !m.quantized)
        .map(|m| m.name.as_str())
        .collect();
    match format {
        OutputFormat::AwqGemm => json!({
            "quant_method": "awq",
            "version": "gemm",
            "bits": spec.bits,
            "group_size": group,
            "zero_point": !spec.sym,
            "modules_to_not_convert": if not_converted.is_empty() { Value::Null } else { json!(not_converted) },
        }),
        // as olive-ai 0.13 writes it (OliveHfQuantizationConfig.to_dict)
        OutputFormat::Olive => json!({
            "quant_method": "olive",
            "bits": spec.bits,
            "group_size": group,
            "symmetric": spec.sym,
            "lm_head": tables.lm_head_quantized(),
            "embeds": tables.embeds.is_some(),
            "modules_to_not_convert": if not_converted.is_empty() { Value::Null } else { json!(not_converted) },
            "overrides": Value::Null,
            "tie_word_embeddings": tied,
        }),
        _ => {
            let mut q = json!({
                "quant_method": "gptq",
                "bits": spec.bits,
                "group_size": group,
                "desc_act": matches!(options.method, Method::Gptq(g) if g.act_order),
                "sym": spec.sym,
                "checkpoint_format": "gptq",
            });
            if tables.lm_head_quantized() {
                // GPTQModel's key for a quantized lm_head (transformers' GPTQ loader skips lm_head otherwise).
                q["lm_head"] = json!(true);
            }
            if let Method::Gptq(g) = options.method {
                q["true_sequential"] = json!(g.true_sequential);
                q["damp_percent"] = json!(g.damp_percent);
                q["static_groups"] = json!(g.static_groups);
            }
            if !not_converted.is_empty() {
                // transformers' GPTQ loader: the linears of each block that are quantized.
                let per_block: Vec<&str> = plan
                    .first()
                    .map(|ms| {
                        ms.iter()
                            .filter(|m| m.quantized)
                            .filter_map(|m| m.name.splitn(4, '.').nth(3))
                            .collect()
                    })
                    .unwrap_or_default();
                q["modules_in_block_to_quantize"] = json!([per_block]);
            }
            q
        }
    }
}
