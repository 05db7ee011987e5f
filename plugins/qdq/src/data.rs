//! Calibration samples from Olive's `data_config` for OnnxStaticQuantization (olive/passes/onnx/quantization.py
//! `get_calibration_dataloader`: the data config's dataset, tokenized by `huggingface_pre_process` /
//! `tokenizer_pre_process` in olive/data/component/pre_process_data.py — the tokenizer's special tokens added,
//! truncation to the model's sequence length — one sample per row, its tensors fed to the inputs of the same name).
//! The data config arrives as olive-data's [`DataConfig`] (the host maps Olive's `load_dataset_config` /
//! `pre_process_data_config` onto it: local json/text files, `text_cols`/`text_template`, `max_samples`, `strategy`).
//!
//! The model's inputs are static (DynamicToFixedShape first), `[batch, seq]`; each sample fills them from `batch`
//! rows of `seq` tokens:
//! - layout `pad` (Olive's `strategy: line-by-line`, or huggingface_pre_process with `padding: max_length`): one
//!   text per row, truncated to `seq` and right-padded with the tokenizer's pad token (attention mask 0 there);
//! - layout `pack` (the default, Olive's `join`): the texts' tokens, each text with its special tokens, joined and
//!   cut into consecutive rows of `seq` (attention mask all ones).
//!
//! Inputs are matched by name: `*mask*` the attention mask, `*token_type*` the token type ids, `*position*`
//! 0..seq, other integer inputs the token ids. At most `max_samples` samples (else the pass's
//! `calibration_samples`).

use std::path::Path;

use olive_data::{DataConfig, Layout, TokenizerConfig};
use olive_onnx::proto::tensor_shape_proto::dimension;
use olive_onnx::proto::GraphProto;
use olive_pass_sdk::Error;
use ort::value::{DynValue, Tensor};
use tokenizers::{PaddingParams, PaddingStrategy, TruncationParams};

use crate::calibrate::{self, Sample};
use crate::types;

/// One tokenized row: ids, attention mask, token type ids, each `seq` long.
struct Row {
    ids: Vec<i64>,
    mask: Vec<i64>,
    types: Vec<i64>,
}

/// A graph input to feed: name, element type, [batch, seq].
struct Input {
    name: String,
    elem: i32,
    batch: usize,
    seq: usize,
}

fn inputs(graph: &GraphProto) -> Result<Vec<Input>, Error> {
    let mut out = Vec::new();
    for (name, t) in calibrate::fed_inputs(graph)? {
        let dims: Vec<Option<usize>> = t
            .shape
            .iter()
            .flat_map(|s| &s.dim)
            .map(|d| match d.value {
                Some(dimension::Value::DimValue(v)) if v > 0 => Some(v as usize),
                _ => None,
            })
            .collect();
        let elem = t.elem_type.unwrap_or(0);
        match (dims.as_slice(), elem) {
            ([Some(batch), Some(seq)], types::INT64 | types::INT32) => out.push(Input {
                name,
                elem,
                batch: *batch,
                seq: *seq,
            }),
            (_, types::INT64 | types::INT32) => {
                return Err(Error::UnsupportedModel(format!(
                    "input `{name}`: calibration from a data_config needs static [batch, sequence] token inputs \
                     (run DynamicToFixedShape first); its shape is {dims:?}"
                )))
            }
            _ => {
                return Err(Error::UnsupportedModel(format!(
                    "input `{name}` has element type {elem}: a data_config's text feeds int64/int32 token inputs \
                     only"
                )))
            }
        }
    }
    match out.first() {
        Some(first) if out.iter().all(|i| (i.batch, i.seq) == (first.batch, first.seq)) => Ok(out),
        Some(_) => Err(Error::UnsupportedModel(
            "the token inputs differ in shape; calibration from a data_config needs one [batch, sequence]".into(),
        )),
        None => Err(Error::UnsupportedModel(
            "the model has no token input for a data_config's text".into(),
        )),
    }
}

/// Tokenized rows of `seq` tokens from `data` (see the module docs), at most `rows`.
fn rows(data: &DataConfig, dir: &Path, seq: usize, rows: usize) -> Result<Vec<Row>, Error> {
    let failed = |what: String| Error::Failed(format!("calibration data_config: {what}"));
    let mut tokenizer = olive_model::tokenizer::load(dir).map_err(|e| {
        failed(format!(
            "a data_config needs the model's tokenizer: {e} (set tokenizer_dir to the folder with tokenizer.json)"
        ))
    })?;
    let config = if dir.join("tokenizer_config.json").is_file() {
        TokenizerConfig::load(dir).map_err(|e| failed(e.to_string()))?
    } else {
        TokenizerConfig::default()
    };
    let texts = data.texts(&config).map_err(|e| failed(e.to_string()))?;
    let pad = data.layout == Layout::Pad;
    let truncation = pad.then(|| TruncationParams {
        max_length: seq,
        ..Default::default()
    });
    tokenizer
        .with_truncation(truncation)
        .map_err(|e| failed(format!("truncation to {seq}: {e}")))?;
    let padding = if pad {
        let token = config
            .pad_token
            .clone()
            .or_else(|| tokenizer.get_padding().map(|p| p.pad_token.clone()))
            .ok_or_else(|| {
                failed(format!(
                    "layout pad: the tokenizer in {} has no pad token",
                    dir.display()
                ))
            })?;
        let pad_id = tokenizer.token_to_id(&token).ok_or_else(|| {
            failed(format!(
                "pad token {token:?} is not in the vocabulary of {}",
                dir.display()
            ))
        })?;
        Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(seq),
            pad_id,
            pad_token: token,
            ..Default::default()
        })
    } else {
        None
    };
    tokenizer.with_padding(padding);
    let wanted = if pad {
        texts.len().min(rows)
    } else {
        texts.len()
    };
    let encodings = tokenizer
        .encode_batch(texts[..wanted].to_vec(), true)
        .map_err(|e| failed(format!("tokenizing: {e}")))?;
    let widen = |v: &[u32]| v.iter().map(|&x| x as i64).collect::<Vec<i64>>();
    if pad {
        return Ok(encodings
            .iter()
            .map(|e| Row {
                ids: widen(e.get_ids()),
                mask: widen(e.get_attention_mask()),
                types: widen(e.get_type_ids()),
            })
            .collect());
    }
    let (mut ids, mut kinds) = (Vec::new(), Vec::new());
    for e in &encodings {
        ids.extend(widen(e.get_ids()));
        kinds.extend(widen(e.get_type_ids()));
    }
    if ids.len() < seq {
        return Err(failed(format!(
            "{} has {} tokens, fewer than one row of {seq} (layout pack); give more text or layout pad",
            data.data_files.join(", "),
            ids.len()
        )));
    }
    Ok(ids
        .chunks_exact(seq)
        .zip(kinds.chunks_exact(seq))
        .take(rows)
        .map(|(i, t)| Row {
            ids: i.to_vec(),
            mask: vec![1; seq],
            types: t.to_vec(),
        })
        .collect())
}

/// Calibration samples for `graph` from `data` tokenized with `tokenizer_dir`'s tokenizer: at most
/// `data.max_samples` (else `count`).
pub fn samples(
    graph: &GraphProto,
    data: &DataConfig,
    tokenizer_dir: &Path,
    count: usize,
) -> Result<Vec<Sample>, Error> {
    let inputs = inputs(graph)?;
    let (batch, seq) = (inputs[0].batch, inputs[0].seq);
    let count = data.max_samples.unwrap_or(count).max(1);
    let rows = rows(data, tokenizer_dir, seq, count * batch)?;
    let mut out = Vec::new();
    for group in rows.chunks_exact(batch) {
        let mut sample = Sample::new();
        for input in &inputs {
            let lower = input.name.to_ascii_lowercase();
            let values: Vec<i64> = group
                .iter()
                .flat_map(|r| {
                    if lower.contains("mask") {
                        r.mask.clone()
                    } else if lower.contains("token_type") {
                        r.types.clone()
                    } else if lower.contains("position") {
                        (0..seq as i64).collect()
                    } else {
                        r.ids.clone()
                    }
                })
                .collect();
            let fail =
                |e: ort::Error| Error::Failed(format!("calibration input `{}`: {e}", input.name));
            let dims = vec![batch, seq];
            let value: DynValue = if input.elem == types::INT32 {
                let v: Vec<i32> = values.into_iter().map(|x| x as i32).collect();
                Tensor::from_array((dims, v)).map_err(fail)?.into_dyn()
            } else {
                Tensor::from_array((dims, values)).map_err(fail)?.into_dyn()
            };
            sample.push((input.name.clone(), value));
        }
        out.push(sample);
    }
    if out.is_empty() {
        return Err(Error::Failed(format!(
            "calibration data_config: {} gave fewer than {batch} rows (one sample)",
            data.data_files.join(", ")
        )));
    }
    Ok(out)
}
