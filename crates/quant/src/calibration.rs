//! The calibration windows of `stream::quantize_model`: their checks (one length, tokens inside the vocabulary;
//! none only for RTN) and their embedding rows, the first decoder layer's input (only those rows of the
//! embedding table are read).

use olive_model::checkpoint::to_f32;
use olive_model::{Checkpoint, ModelConfig};

use crate::error::{QuantError, Result};
use crate::stream::Method;

/// The common length of the calibration windows (0 when there are none, for RTN).
pub(crate) fn check_calibration(
    method: &Method,
    calibration: &[Vec<u32>],
    vocab: usize,
) -> Result<usize> {
    let Some(first) = calibration.first() else {
        return match method {
            Method::Rtn => Ok(0),
            _ => Err(QuantError::Calibration(
                "no calibration samples; AWQ and GPTQ need at least one window of tokens".into(),
            )),
        };
    };
    let seq_len = first.len();
    if seq_len == 0 {
        return Err(QuantError::Calibration("sample 0 is empty".into()));
    }
    for (i, s) in calibration.iter().enumerate() {
        if s.len() != seq_len {
            return Err(QuantError::Calibration(format!(
                "sample {i} has {} tokens, sample 0 has {seq_len}; all windows must have one length",
                s.len()
            )));
        }
        if let Some(t) = s.iter().find(|&&t| t as usize >= vocab) {
            return Err(QuantError::Calibration(format!(
                "sample {i}: token id {t} is outside the model's vocabulary of {vocab}"
            )));
        }
    }
    Ok(seq_len)
}

/// The embedding rows of the calibration tokens: [sequences · seq_len, hidden] (nothing else of the table is read).
pub(crate) fn embed(
    ckpt: &Checkpoint,
    config: &ModelConfig,
    calibration: &[Vec<u32>],
) -> Result<Vec<f32>> {
    if calibration.is_empty() {
        return Ok(Vec::new());
    }
    let name = "model.embed_tokens.weight";
    let raw = ckpt.raw(name)?;
    let h = config.hidden_size;
    if raw.shape != [config.vocab_size, h] {
        return Err(olive_model::ModelError::BadTensor {
            path: ckpt.file_of(name).unwrap_or(ckpt.folder()).to_path_buf(),
            name: name.into(),
            reason: format!(
                "shape {:?}, expected [{}, {h}]",
                raw.shape, config.vocab_size
            ),
        }
        .into());
    }
    let row_bytes = raw.bytes.len() / config.vocab_size;
    let mut out = Vec::with_capacity(calibration.len() * calibration[0].len() * h);
    for &t in calibration.iter().flatten() {
        let t = t as usize;
        let row =
            to_f32(raw.dtype, &raw.bytes[t * row_bytes..(t + 1) * row_bytes]).ok_or_else(|| {
                olive_model::ModelError::BadTensor {
                    path: ckpt.file_of(name).unwrap_or(ckpt.folder()).to_path_buf(),
                    name: name.into(),
                    reason: format!("dtype {:?}, expected F32, F16 or BF16", raw.dtype),
                }
            })?;
        out.extend_from_slice(&row);
    }
    ckpt.release(name);
    Ok(out)
}
