//! MinMax calibration as onnxruntime.quantization's `MinMaxCalibrater` (calibrate.py) does it without moving
//! average: the tensors to quantize become extra graph outputs, the model runs through ONNX Runtime's CPU provider
//! on every calibration sample, and each tensor's range is the min of the samples' minima and the max of their
//! maxima.
//!
//! Calibration data: Olive passes a `data_config`; an ONNX file alone has no tokenizer, so olive-rs makes the
//! samples from the graph, seeded and documented here — integer inputs named `*mask*` are ones, `*token_type*`
//! zeros, other integer inputs (token ids) uniform over `[0, vocab)` where `vocab` is the row count of the
//! embedding table (a Gather initializer) they index (random-but-valid ids), float inputs a uniform [-1, 1] noise.
//! Inputs must have static shapes (run DynamicToFixedShape first).
//!
//! A static-KV LLM (past_key_values.N.key/value inputs of P slots, present.N.key/value outputs of P + S, an
//! attention mask of P + S and S new tokens: DecomposeGroupQueryAttention's `static_kv` layout) is calibrated as
//! onnxruntime-genai's sliding window runs it: the first sample is a first prompt (past zeros and masked,
//! `*position*` inputs 0..S-1), each next sample continues the previous one — its past is the last P slots of the
//! previous presents, the mask opens the slots filled so far, positions go on — so the KV cache inputs, the mask
//! and the attention see the ranges they have in use, not a uniform noise.
//! Its token ids are the project's calibration text when the model's folder has a tokenizer ([`with_text_ids`]).

use std::collections::HashMap;
use std::path::Path;

use olive_onnx::proto::tensor_shape_proto::dimension;
use olive_onnx::proto::{type_proto, GraphProto, ModelProto, TypeProto, ValueInfoProto};
use olive_pass_sdk::Error;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};

use crate::types;

/// One calibration sample: (input name, value).
pub type Sample = Vec<(String, DynValue)>;

/// A deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The row count of the initializer that a Gather indexes with `input`, if any.
fn vocab(graph: &GraphProto, input: &str) -> Option<i64> {
    let gather = graph.node.iter().find(|n| {
        n.op_type.as_deref() == Some("Gather") && n.input.get(1).map(String::as_str) == Some(input)
    })?;
    let table = gather.input.first()?;
    graph
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(table.as_str()))
        .and_then(|t| t.dims.first().copied())
}

/// The present output matching a past input (`past_key_values.N.key` -> `present.N.key`).
fn past_of(input: &str) -> Option<String> {
    input
        .strip_prefix("past_key_values.")
        .map(|rest| format!("present.{rest}"))
}

/// The static fixed dims of graph input `name`, if all are known.
fn input_dims(graph: &GraphProto, name: &str) -> Option<Vec<usize>> {
    let vi = graph
        .input
        .iter()
        .find(|i| i.name.as_deref() == Some(name))?;
    let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return None;
    };
    t.shape
        .iter()
        .flat_map(|s| &s.dim)
        .map(|d| match d.value {
            Some(dimension::Value::DimValue(v)) if v >= 0 => Some(v as usize),
            _ => None,
        })
        .collect()
}

/// (P, S) when the graph is a static-KV LLM (see the module docs): past inputs of P slots with present outputs, an
/// `attention_mask` of P + S.
fn static_kv(graph: &GraphProto) -> Option<(usize, usize)> {
    let outputs: Vec<&str> = graph
        .output
        .iter()
        .filter_map(|o| o.name.as_deref())
        .collect();
    let past = graph
        .input
        .iter()
        .filter_map(|i| i.name.as_deref())
        .find(|n| past_of(n).is_some_and(|p| outputs.contains(&p.as_str())))?;
    let p = *input_dims(graph, past)?.get(2)?;
    let total = *input_dims(graph, "attention_mask")?.last()?;
    (total > p).then_some((p, total - p))
}

/// The graph inputs a calibration run feeds (those that are not initializers), by name, with their tensor types.
pub(crate) fn fed_inputs(graph: &GraphProto) -> Result<Vec<(String, &type_proto::Tensor)>, Error> {
    let initializers: Vec<&str> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    let mut out = Vec::new();
    for vi in &graph.input {
        let name = vi.name.clone().unwrap_or_default();
        if initializers.contains(&name.as_str()) {
            continue;
        }
        let Some(type_proto::Value::TensorType(t)) =
            vi.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Err(Error::UnsupportedModel(format!(
                "input `{name}` is not a tensor"
            )));
        };
        out.push((name, t));
    }
    Ok(out)
}

/// `count` calibration samples for the graph's inputs (see the module docs), from `seed`.
pub fn samples(graph: &GraphProto, count: usize, seed: u64) -> Result<Vec<Sample>, Error> {
    let inputs = fed_inputs(graph)?;
    let mut rng = Rng(seed);
    let kv = static_kv(graph);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut sample = Sample::new();
        for (name, t) in &inputs {
            let (name, t) = (name.clone(), *t);
            let mut dims = Vec::new();
            for d in t.shape.iter().flat_map(|s| &s.dim) {
                match d.value {
                    Some(dimension::Value::DimValue(v)) if v > 0 => dims.push(v as usize),
                    _ => {
                        return Err(Error::UnsupportedModel(format!(
                        "input `{name}` has a symbolic dim: calibration needs static shapes (run \
                             DynamicToFixedShape first)"
                    )))
                    }
                }
            }
            let n: usize = dims.iter().product();
            let lower = name.to_ascii_lowercase();
            let last = dims.last().copied().unwrap_or(1);
            let new_tokens = kv.map(|(_, s)| s);
            let ids = |rng: &mut Rng| -> Vec<i64> {
                if lower.contains("mask") {
                    match new_tokens {
                        // A first prompt: the past slots masked.
                        Some(s) if s < last => {
                            (0..n).map(|i| i64::from(i % last >= last - s)).collect()
                        }
                        _ => vec![1; n],
                    }
                } else if lower.contains("token_type") {
                    vec![0; n]
                } else if lower.contains("position") && new_tokens.is_some() {
                    (0..n).map(|i| (i % last) as i64).collect()
                } else {
                    let v = vocab(graph, &name).unwrap_or(100).max(1) as f64;
                    (0..n).map(|_| (rng.unit() * v) as i64).collect()
                }
            };
            let fail = |e: ort::Error| Error::Failed(format!("calibration input `{name}`: {e}"));
            let value: DynValue = match t.elem_type.unwrap_or(0) {
                types::FLOAT if kv.is_some() && past_of(&name).is_some() => {
                    Tensor::from_array((dims, vec![0f32; n])).map_err(fail)?.into_dyn()
                }
                types::FLOAT => {
                    let v: Vec<f32> = (0..n).map(|_| (rng.unit() * 2.0 - 1.0) as f32).collect();
                    Tensor::from_array((dims, v)).map_err(fail)?.into_dyn()
                }
                types::INT64 => Tensor::from_array((dims, ids(&mut rng)))
                    .map_err(fail)?
                    .into_dyn(),
                types::INT32 => {
                    let v: Vec<i32> = ids(&mut rng).into_iter().map(|x| x as i32).collect();
                    Tensor::from_array((dims, v)).map_err(fail)?.into_dyn()
                }
                other => {
                    return Err(Error::UnsupportedModel(format!(
                        "input `{name}` has element type {other}; calibration feeds float32, int64 and int32"
                    )))
                }
            };
            sample.push((name, value));
        }
        out.push(sample);
    }
    Ok(out)
}

/// A static-KV LLM's calibration on text (module docs): `samples`' token ids replaced by consecutive windows of the
/// project's calibration text (olive-data's `DEFAULT_CALIBRATION_TEXT`, its paragraphs tokenized with the special
/// tokens of `model_dir`'s tokenizer and joined), so the sliding window runs over real text. False (nothing
/// changed) when the graph is no static-KV LLM or `model_dir` has no tokenizer.json. Random ids give SmolLM2 activation
/// ranges far wider than text does: cosine to fp32 on the HTP 0.990 -> 0.997 with text.
pub fn with_text_ids(
    graph: &GraphProto,
    samples: &mut [Sample],
    model_dir: &Path,
) -> Result<bool, Error> {
    if static_kv(graph).is_none() {
        return Ok(false);
    }
    let Ok(tokenizer) = olive_model::tokenizer::load(model_dir) else {
        return Ok(false);
    };
    let mut ids: Vec<i64> = Vec::new();
    for text in olive_data::paragraphs(olive_data::DEFAULT_CALIBRATION_TEXT) {
        let e = tokenizer
            .encode(text, true)
            .map_err(|e| Error::Failed(format!("calibration text: tokenizing: {e}")))?;
        ids.extend(e.get_ids().iter().map(|&x| i64::from(x)));
    }
    if ids.is_empty() {
        return Ok(false);
    }
    let mut next = 0;
    for sample in samples.iter_mut() {
        for (name, value) in sample.iter_mut() {
            let lower = name.to_ascii_lowercase();
            if ["mask", "token_type", "position"]
                .iter()
                .any(|k| lower.contains(k))
            {
                continue;
            }
            let shape: Vec<usize> = value.shape().iter().map(|&d| d.max(0) as usize).collect();
            let n: usize = shape.iter().product();
            let fail = |e: ort::Error| Error::Failed(format!("calibration input `{name}`: {e}"));
            let window: Vec<i64> = (next..next + n).map(|i| ids[i % ids.len()]).collect();
            *value = match value.dtype().tensor_type() {
                Some(ort::value::TensorElementType::Int64) => Tensor::from_array((shape, window))
                    .map_err(fail)?
                    .into_dyn(),
                Some(ort::value::TensorElementType::Int32) => {
                    let w: Vec<i32> = window.into_iter().map(|x| x as i32).collect();
                    Tensor::from_array((shape, w)).map_err(fail)?.into_dyn()
                }
                _ => continue,
            };
            next += n;
        }
    }
    Ok(true)
}

/// Samples without a data_config: [`samples`], with a static-KV LLM's ids from the project's calibration text when
/// `model_dir` has a tokenizer ([`with_text_ids`]), else random ids and a `warn`ing; with what they are.
pub fn graph_samples(
    graph: &GraphProto,
    count: usize,
    seed: u64,
    model_dir: &Path,
    warn: &dyn Fn(&str),
) -> Result<(Vec<Sample>, &'static str), Error> {
    let mut out = samples(graph, count, seed)?;
    if with_text_ids(graph, &mut out, model_dir)? {
        return Ok((out, "the project's calibration text"));
    }
    warn(&format!(
        "OnnxStaticQuantization: no data_config; calibrating on {count} samples of random valid token ids (seed \
         {seed}), which represent no real text: pass a data_config for calibration on a dataset"
    ));
    Ok((out, "random token ids"))
}

/// The sliding window between calibration runs: the presents of the last run by output name ([B, KV, P + S, D]
/// dims, data), the past slots filled so far, the next position.
type Window = (HashMap<String, (Vec<usize>, Vec<f32>)>, usize, usize);

/// What [`Runner::run`] calls with each calibrated tensor of each run: (sample index, tensor, values).
pub type Visit<'a> = dyn FnMut(usize, &str, &[f32]) -> Result<(), Error> + 'a;

/// The calibration model: `model` with the tensors to calibrate as extra graph outputs, open in ONNX Runtime's CPU
/// provider.
pub struct Runner {
    session: Session,
    /// The static-KV layout (P, S), when the model has one (see the module docs).
    kv: Option<(usize, usize)>,
    tensors: Vec<String>,
}

impl Runner {
    /// Extends `model`'s graph outputs with `tensors` and opens it; `scratch` holds the extended model.
    pub fn open(model: &ModelProto, tensors: &[String], scratch: &Path) -> Result<Runner, Error> {
        let mut extended = model.clone();
        let graph = extended
            .graph
            .as_mut()
            .ok_or_else(|| Error::UnsupportedModel("the ONNX model has no graph".into()))?;
        let outputs: Vec<String> = graph.output.iter().filter_map(|o| o.name.clone()).collect();
        for name in tensors.iter().filter(|t| !outputs.contains(t)) {
            graph.output.push(ValueInfoProto {
                name: Some(name.clone()),
                r#type: Some(TypeProto {
                    value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                        elem_type: Some(types::FLOAT),
                        shape: None,
                    })),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let file = olive_onnx::rewrite::save(extended, scratch, "calibration.onnx")
            .map_err(|e| Error::Failed(e.to_string()))?;
        let environment = olive_runtime::env::environment()
            .map_err(|e| Error::Failed(format!("calibration needs ONNX Runtime: {e}")))?;
        let session = Session::builder(environment)
            .and_then(|mut b| b.commit_from_file(&file))
            .map_err(|e| {
                Error::Failed(format!(
                    "calibration: ONNX Runtime cannot open the model: {e}"
                ))
            })?;
        Ok(Runner {
            session,
            kv: model.graph.as_ref().and_then(static_kv),
            tensors: tensors.to_vec(),
        })
    }

    /// Runs every sample in order (a static-KV LLM's samples as one sliding window) and calls `visit(sample index,
    /// tensor, values)` for each calibrated tensor of each run.
    pub fn run(&mut self, samples: &[Sample], visit: &mut Visit<'_>) -> Result<(), Error> {
        let kv = self.kv;
        // The sliding window so far: the presents of the last run, the past slots filled, the next position.
        let mut window: Option<Window> = None;
        for (index, sample) in samples.iter().enumerate() {
            let mut rolled: Vec<(String, DynValue)> = Vec::new();
            if let (Some((p, s)), Some((presents, filled, position))) = (kv, &window) {
                for (name, value) in sample {
                    let lower = name.to_ascii_lowercase();
                    let shape: Vec<usize> =
                        value.shape().iter().map(|&d| d.max(0) as usize).collect();
                    let n: usize = shape.iter().product();
                    let last = shape.last().copied().unwrap_or(1).max(1);
                    let fail =
                        |e: ort::Error| Error::Failed(format!("calibration input `{name}`: {e}"));
                    let new = if let Some((dims, data)) =
                        past_of(name).and_then(|o| presents.get(&o))
                    {
                        // present [B, KV, P + S, D] -> its last P slots.
                        let (rows, d) = (dims[2], dims[3]);
                        let past: Vec<f32> = data
                            .chunks(rows * d)
                            .flat_map(|block| block[(rows - p) * d..].iter().copied())
                            .collect();
                        Tensor::from_array((shape, past)).map_err(fail)?.into_dyn()
                    } else if lower.contains("mask") && last == p + s {
                        let open = (*filled).min(p) + s;
                        let mask: Vec<i64> =
                            (0..n).map(|i| i64::from(i % last >= last - open)).collect();
                        Tensor::from_array((shape, mask)).map_err(fail)?.into_dyn()
                    } else if lower.contains("position") {
                        let ids: Vec<i64> = (0..n).map(|i| (position + i % last) as i64).collect();
                        Tensor::from_array((shape, ids)).map_err(fail)?.into_dyn()
                    } else {
                        continue;
                    };
                    rolled.push((name.clone(), new));
                }
            }
            let feeds: Vec<(&str, SessionInputValue<'_>)> = sample
                .iter()
                .map(|(n, v)| match rolled.iter().find(|(r, _)| r == n) {
                    Some((_, r)) => (n.as_str(), SessionInputValue::from(r)),
                    None => (n.as_str(), SessionInputValue::from(v)),
                })
                .collect();
            let result = self
                .session
                .run(feeds)
                .map_err(|e| Error::Failed(format!("calibration run: {e}")))?;
            if let Some((_, s)) = kv {
                let mut presents = HashMap::new();
                for (name, _) in sample {
                    let Some(out) = past_of(name) else { continue };
                    let (shape, data) = result[out.as_str()]
                        .try_extract_tensor::<f32>()
                        .map_err(|e| Error::Failed(format!("calibration output `{out}`: {e}")))?;
                    let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
                    if dims.len() == 4 {
                        presents.insert(out, (dims, data.to_vec()));
                    }
                }
                let (filled, position) = window.as_ref().map_or((0, 0), |w| (w.1, w.2));
                window = Some((presents, filled + s, position + s));
            }
            for name in &self.tensors {
                let (_, data) = result[name.as_str()]
                    .try_extract_tensor::<f32>()
                    .map_err(|e| Error::Failed(format!("calibration tensor `{name}`: {e}")))?;
                visit(index, name, data)?;
            }
        }
        Ok(())
    }
}

/// The [min, max] of each of `tensors` over `samples`, running `model` (its graph outputs extended) through ONNX
/// Runtime's CPU provider; `scratch` holds the extended model.
pub fn min_max(
    model: &ModelProto,
    tensors: &[String],
    samples: &[Sample],
    scratch: &Path,
) -> Result<HashMap<String, (f32, f32)>, Error> {
    let mut ranges: HashMap<String, (f32, f32)> = HashMap::new();
    Runner::open(model, tensors, scratch)?.run(samples, &mut |_, name, data| {
        let lo = data.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let entry = ranges.entry(name.to_owned()).or_insert((lo, hi));
        *entry = (entry.0.min(lo), entry.1.max(hi));
        Ok(())
    })?;
    Ok(ranges)
}
