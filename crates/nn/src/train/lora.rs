//! LoRA (Hu et al. 2021) on the frozen decoder's fused linears, as PEFT's `lora.Linear` computes it:
//! `y = x·Wᵀ + b + scale · dropout(x)·Aᵀ·Bᵀ`, A: [r, in] kaiming-uniform(a=√5), B: [out, r] zeros.
//! A module adapts a row range of a fused projection (q_proj = the first rows of our qkv_proj);
//! targets resolve by PEFT's rule (`key == t` or `key` ends with `.t`). Dropout masks come from a
//! counter-based hash of (seed, step, micro-batch, module, element), so a recomputed forward
//! (gradient checkpointing) draws the same mask.

use std::ops::Range;

use olive_kernels::cpu::{matmul, matmul_strided, View};
use olive_model::adapter::{LoraModule, LoraWeights, Projection};
use olive_model::ModelConfig;
use rayon::prelude::*;

use super::error::{Result, TrainError};

/// The fused linear of a decoder layer a module adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Site {
    Qkv,
    O,
    GateUp,
    Down,
}

/// The linear and its output rows that a projection is in our fused layout.
pub(crate) fn site_of(p: Projection, config: &ModelConfig) -> (Site, Range<usize>) {
    let q = config.num_attention_heads * config.head_dim;
    let kv = config.num_key_value_heads * config.head_dim;
    let (h, i) = (config.hidden_size, config.intermediate_size);
    match p {
        Projection::Q => (Site::Qkv, 0..q),
        Projection::K => (Site::Qkv, q..q + kv),
        Projection::V => (Site::Qkv, q + kv..q + 2 * kv),
        Projection::Qkv => (Site::Qkv, 0..q + 2 * kv),
        Projection::O => (Site::O, 0..h),
        Projection::Gate => (Site::GateUp, 0..i),
        Projection::Up => (Site::GateUp, i..2 * i),
        Projection::GateUp => (Site::GateUp, 0..2 * i),
        Projection::Down => (Site::Down, 0..h),
    }
}

/// The modules of every layer that `targets` select (PEFT names, `block.name` suffixes, or
/// `all-linear`), sorted by layer and projection; an error names a target that matches nothing.
pub(crate) fn resolve_targets(targets: &[String], config: &ModelConfig) -> Result<Vec<LoraModule>> {
    let projections = Projection::of(config.architecture);
    let all_linear = targets.len() == 1 && targets[0] == "all-linear";
    let mut chosen: Vec<Projection> = Vec::new();
    for t in targets {
        let hits: Vec<Projection> = projections
            .iter()
            .copied()
            .filter(|p| {
                let key = LoraModule {
                    layer: 0,
                    projection: *p,
                }
                .hf_key();
                all_linear || key == *t || key.ends_with(&format!(".{t}"))
            })
            .collect();
        if hits.is_empty() {
            return Err(TrainError::UnknownTarget {
                module: t.clone(),
                architecture: format!("{:?}", config.architecture).to_lowercase(),
                available: projections
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        chosen.extend(hits);
    }
    if chosen.is_empty() {
        return Err(TrainError::Setting {
            field: "target_modules",
            expected: "at least one module name".into(),
        });
    }
    chosen.sort();
    chosen.dedup();
    Ok((0..config.num_hidden_layers)
        .flat_map(|layer| {
            chosen
                .iter()
                .map(move |&projection| LoraModule { layer, projection })
        })
        .collect())
}

/// A trainable module: its weights, gradients and AdamW moments.
#[derive(Debug, Clone)]
pub(crate) struct Adapted {
    pub module: LoraModule,
    pub site: Site,
    /// Output rows of the site's fused linear.
    pub rows: Range<usize>,
    pub rank: usize,
    pub in_features: usize,
    pub scale: f32,
    /// a: [rank, in], b: [out, rank] (PEFT layouts); grads and moments alike.
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub grad_a: Vec<f32>,
    pub grad_b: Vec<f32>,
    pub moments: [Vec<f32>; 4],
}

impl Adapted {
    pub(crate) fn new(w: LoraWeights, config: &ModelConfig) -> Result<Self> {
        let (site, rows) = site_of(w.module.projection, config);
        let (in_features, out_features) = w.module.projection.features(config);
        let name = w.module.hf_key();
        let bad = |reason: String| TrainError::Adapter {
            module: name.clone(),
            reason,
        };
        if !Projection::of(config.architecture).contains(&w.module.projection)
            || w.module.layer >= config.num_hidden_layers
        {
            return Err(bad("the model has no such module".into()));
        }
        if (w.in_features, w.out_features) != (in_features, out_features) {
            return Err(bad(format!(
                "[out, in] = [{}, {}], the model's is [{out_features}, {in_features}]",
                w.out_features, w.in_features
            )));
        }
        if w.rank == 0 || w.a.len() != w.rank * in_features || w.b.len() != out_features * w.rank {
            return Err(bad(format!(
                "lora_A has {} and lora_B {} floats, expected [{r}, {in_features}] and [{out_features}, {r}]",
                w.a.len(),
                w.b.len(),
                r = w.rank
            )));
        }
        let zeros = |n: usize| vec![0.0f32; n];
        Ok(Adapted {
            module: w.module,
            site,
            rows,
            rank: w.rank,
            in_features,
            scale: w.scale,
            grad_a: zeros(w.a.len()),
            grad_b: zeros(w.b.len()),
            moments: [
                zeros(w.a.len()),
                zeros(w.a.len()),
                zeros(w.b.len()),
                zeros(w.b.len()),
            ],
            a: w.a,
            b: w.b,
        })
    }

    pub(crate) fn weights(&self) -> LoraWeights {
        LoraWeights {
            module: self.module,
            rank: self.rank,
            in_features: self.in_features,
            out_features: self.rows.len(),
            a: self.a.clone(),
            b: self.b.clone(),
            scale: self.scale,
        }
    }
}

/// Separates the initial weights' random stream from the dropout masks' ("LoRA" in ASCII).
const INIT_STREAM: u64 = 0x4C6F_5241;

/// PEFT's initial weights: A ~ kaiming_uniform(a=√5) = U(−1/√in, 1/√in), B = 0.
pub(crate) fn init_weights(
    module: LoraModule,
    rank: usize,
    scale: f32,
    config: &ModelConfig,
    seed: u64,
) -> LoraWeights {
    let (in_features, out_features) = module.projection.features(config);
    let bound = 1.0 / (in_features as f64).sqrt();
    let key = mix(&[
        seed,
        INIT_STREAM,
        module.layer as u64,
        module.projection as u64,
    ]);
    let a = (0..rank * in_features)
        .map(|i| ((2.0 * unit(key, i as u64) - 1.0) * bound) as f32)
        .collect();
    LoraWeights {
        module,
        rank,
        in_features,
        out_features,
        a,
        b: vec![0.0; out_features * rank],
        scale,
    }
}

/// splitmix64's finalizer.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A key from several counters.
pub(crate) fn mix(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x5EED, |acc, p| splitmix(acc ^ splitmix(*p)))
}

/// A uniform value in [0, 1) for element `i` of stream `key`.
fn unit(key: u64, i: u64) -> f64 {
    (splitmix(key ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93)) >> 11) as f64 / (1u64 << 53) as f64
}

/// A drawn dropout mask: bit i of `bits` is set when element i is kept; kept elements are scaled
/// by 1/(1−p) (inverted dropout, as torch). Drawn once in the forward pass and kept for the backward.
#[derive(Debug, Clone)]
pub(crate) struct Mask {
    bits: Vec<u64>,
    keep: f32,
}

impl Mask {
    /// The mask of `n` elements from stream `key`: one 64-bit hash gives four elements 16 bits
    /// each (p resolved to 1/65536).
    fn draw(n: usize, p: f32, key: u64) -> Mask {
        const WORDS: usize = 64;
        let threshold = (p as f64 * 65536.0).round() as u64;
        let mut bits = vec![0u64; n.div_ceil(64)];
        bits.par_chunks_mut(WORDS)
            .enumerate()
            .for_each(|(c, words)| {
                for (w, word) in words.iter_mut().enumerate() {
                    let first = ((c * WORDS + w) * 16) as u64;
                    for q in 0..16u64 {
                        let h = splitmix(key ^ (first + q).wrapping_mul(0xD6E8_FEB8_6659_FD93));
                        for j in 0..4 {
                            let kept = (h >> (16 * j)) & 0xFFFF >= threshold;
                            *word |= u64::from(kept) << (4 * q + j);
                        }
                    }
                }
            });
        Mask {
            bits,
            keep: 1.0 / (1.0 - p),
        }
    }

    /// out = x with dropped elements zeroed and kept ones scaled.
    fn apply(&self, x: &[f32], out: &mut Vec<f32>) {
        out.resize(x.len(), 0.0);
        for ((o, x), word) in out.chunks_mut(64).zip(x.chunks(64)).zip(&self.bits) {
            for (i, (o, x)) in o.iter_mut().zip(x).enumerate() {
                *o = if (word >> i) & 1 == 1 {
                    x * self.keep
                } else {
                    0.0
                };
            }
        }
    }
}

/// The dropout of one forward: probability and the stream of each module (None in eval).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dropout {
    pub p: f32,
    /// Key of this (seed, step, micro-batch); each module mixes in its index.
    pub key: u64,
}

impl Dropout {
    fn stream(&self, module: usize) -> u64 {
        mix(&[self.key, module as u64])
    }
}

/// y[:, rows] += scale · dropout(x)·Aᵀ·Bᵀ for module `index`; returns u = dropout(x)·Aᵀ: [tokens,
/// rank] and the dropout mask (what the backward pass needs). x: [tokens, in], y: [tokens, width].
pub(crate) fn forward(
    m: &Adapted,
    index: usize,
    x: &[f32],
    y: &mut [f32],
    width: usize,
    dropout: Option<Dropout>,
) -> (Vec<f32>, Option<Mask>) {
    let tokens = x.len() / m.in_features;
    let mask = dropout
        .filter(|d| d.p > 0.0)
        .map(|d| Mask::draw(x.len(), d.p, d.stream(index)));
    let mut buf = Vec::new();
    let xd = match &mask {
        Some(mask) => {
            mask.apply(x, &mut buf);
            &buf[..]
        }
        None => x,
    };
    let mut u = vec![0.0; tokens * m.rank]; // [tokens, rank]
    matmul(xd, &m.a, &mut u, tokens, m.in_features, m.rank);
    matmul_strided(
        tokens,
        m.rows.len(),
        m.rank,
        View::rows(&u, m.rank),
        View::transposed(&m.b, m.rank),
        &mut y[m.rows.start..],
        width,
        m.scale,
        true,
    );
    (u, mask)
}

/// Backward of one module: grad_b += scale·dy[:, rows]ᵀ·u, grad_a += gᵀ·dropout(x) and
/// dx += dropout'(g·A) with g = scale·dy[:, rows]·B. x: [tokens, in], dy: [tokens, width],
/// u and mask from [`forward`].
pub(crate) fn backward(
    m: &mut Adapted,
    x: &[f32],
    (u, mask): (&[f32], Option<&Mask>),
    dy: &[f32],
    width: usize,
    dx: &mut [f32],
) {
    let tokens = x.len() / m.in_features;
    let (r, n_in, n_out) = (m.rank, m.in_features, m.rows.len());
    let dy_rows = &dy[m.rows.start..];
    matmul_strided(
        n_out,
        r,
        tokens,
        View::transposed(dy_rows, width),
        View::rows(u, r),
        &mut m.grad_b,
        r,
        m.scale,
        true,
    );
    let mut g = vec![0.0; tokens * r]; // [tokens, rank]
    matmul_strided(
        tokens,
        r,
        n_out,
        View::rows(dy_rows, width),
        View::rows(&m.b, r),
        &mut g,
        r,
        m.scale,
        false,
    );
    let mut buf = Vec::new();
    let xd = match mask {
        Some(mask) => {
            mask.apply(x, &mut buf);
            &buf[..]
        }
        None => x,
    };
    matmul_strided(
        r,
        n_in,
        tokens,
        View::transposed(&g, r),
        View::rows(xd, n_in),
        &mut m.grad_a,
        n_in,
        1.0,
        true,
    );
    match mask {
        Some(mask) => {
            let mut dxd = vec![0.0; tokens * n_in]; // [tokens, in]
            matmul_strided(
                tokens,
                n_in,
                r,
                View::rows(&g, r),
                View::rows(&m.a, n_in),
                &mut dxd,
                n_in,
                1.0,
                false,
            );
            // The same mask and scaling as the forward: dropout is linear in its input.
            mask.apply(&dxd, &mut buf);
            for (o, v) in dx.iter_mut().zip(&buf) {
                *o += v;
            }
        }
        None => matmul_strided(
            tokens,
            n_in,
            r,
            View::rows(&g, r),
            View::rows(&m.a, n_in),
            dx,
            n_in,
            1.0,
            true,
        ),
    }
}
