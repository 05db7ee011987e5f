//! Token sequences into training rows (Olive's `join` strategy with an eos between documents, or one padded
//! row per document with labels -100 on padding), seeded train/eval splits, and calibration windows drawn at
//! random over the joined corpus as AutoAWQ and GPTQ sample them.

use crate::error::{DataError, Result};

/// The label that the loss ignores (PyTorch's `CrossEntropyLoss` default `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// One training row; all three vectors have the same length.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Sample {
    /// Token ids, [seq_len].
    pub input_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding, [seq_len].
    pub attention_mask: Vec<u8>,
    /// The ids again (the model shifts them), -100 on padding, [seq_len].
    pub labels: Vec<i64>,
}

/// Concatenates the documents with `eos` after each and cuts the stream into full blocks of `seq_len`
/// (the tail shorter than a block is dropped); at most `max_samples` blocks.
pub fn pack(
    docs: &[Vec<u32>],
    eos: u32,
    seq_len: usize,
    max_samples: Option<usize>,
) -> Result<Vec<Sample>> {
    check_len(seq_len)?;
    let stream = join(docs, eos);
    if stream.len() < seq_len {
        return Err(DataError::TooShort {
            tokens: stream.len(),
            needed: seq_len,
        });
    }
    let limit = max_samples.unwrap_or(usize::MAX);
    Ok(stream
        .chunks_exact(seq_len)
        .take(limit)
        .map(|ids| Sample {
            input_ids: ids.to_vec(),
            attention_mask: vec![1; seq_len],
            labels: ids.iter().map(|&t| i64::from(t)).collect(),
        })
        .collect())
}

/// One row per document: truncated to `seq_len`, right-padded with `pad`, mask 0 and label -100 on padding.
pub fn pad(
    docs: &[Vec<u32>],
    pad: u32,
    seq_len: usize,
    max_samples: Option<usize>,
) -> Result<Vec<Sample>> {
    check_len(seq_len)?;
    let rows: Vec<Sample> = docs
        .iter()
        .filter(|d| !d.is_empty())
        .take(max_samples.unwrap_or(usize::MAX))
        .map(|doc| {
            let n = doc.len().min(seq_len);
            let mut input_ids = doc[..n].to_vec();
            input_ids.resize(seq_len, pad);
            let mut attention_mask = vec![1u8; n];
            attention_mask.resize(seq_len, 0);
            let mut labels: Vec<i64> = doc[..n].iter().map(|&t| i64::from(t)).collect();
            labels.resize(seq_len, IGNORE_INDEX);
            Sample {
                input_ids,
                attention_mask,
                labels,
            }
        })
        .collect();
    if rows.is_empty() {
        return Err(DataError::Empty("no document has any token".into()));
    }
    Ok(rows)
}

/// Splits items into (train, eval) with `round(len * eval_ratio)` eval items chosen by a seeded shuffle; both
/// keep their original order. A ratio that would leave train empty is an error.
pub fn split<T: Clone>(items: &[T], eval_ratio: f64, seed: u64) -> Result<(Vec<T>, Vec<T>)> {
    if !(0.0..1.0).contains(&eval_ratio) {
        return Err(DataError::BadOption {
            option: "eval_ratio",
            reason: format!("{eval_ratio} is not in [0, 1)"),
        });
    }
    let n_eval = (items.len() as f64 * eval_ratio).round() as usize;
    if n_eval >= items.len() {
        return Err(DataError::Empty(format!(
            "eval ratio {eval_ratio} leaves no training record of {}",
            items.len()
        )));
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    let mut rng = Rng::new(seed);
    rng.shuffle(&mut order);
    let mut is_eval = vec![false; items.len()];
    for &i in &order[..n_eval] {
        is_eval[i] = true;
    }
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (item, e) in items.iter().zip(is_eval) {
        if e {
            eval.push(item.clone())
        } else {
            train.push(item.clone())
        }
    }
    Ok((train, eval))
}

/// `n` windows of `seq_len` tokens at seeded random offsets in the documents joined with `eos`, [n][seq_len].
pub fn calibration(
    docs: &[Vec<u32>],
    eos: u32,
    n: usize,
    seq_len: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    check_len(seq_len)?;
    if n == 0 {
        return Err(DataError::BadOption {
            option: "--max_samples",
            reason: "need at least one calibration sample".into(),
        });
    }
    let stream = join(docs, eos);
    if stream.len() < seq_len {
        return Err(DataError::TooShort {
            tokens: stream.len(),
            needed: seq_len,
        });
    }
    let starts = (stream.len() - seq_len + 1) as u64;
    let mut rng = Rng::new(seed);
    Ok((0..n)
        .map(|_| {
            let s = rng.below(starts) as usize;
            stream[s..s + seq_len].to_vec()
        })
        .collect())
}

fn join(docs: &[Vec<u32>], eos: u32) -> Vec<u32> {
    let mut stream = Vec::with_capacity(docs.iter().map(|d| d.len() + 1).sum());
    for d in docs.iter().filter(|d| !d.is_empty()) {
        stream.extend_from_slice(d);
        stream.push(eos);
    }
    stream
}

fn check_len(seq_len: usize) -> Result<()> {
    if seq_len == 0 {
        return Err(DataError::BadOption {
            option: "--max_seq_len",
            reason: "must be at least 1".into(),
        });
    }
    Ok(())
}

/// SplitMix64: small, seeded and the same on every platform and version (no dependency on `rand`'s streams).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift; `n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}
