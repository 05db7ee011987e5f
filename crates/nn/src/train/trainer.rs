//! The training loop's step as transformers' Trainer runs it for a PEFT model: the loss of each
//! micro-batch is its summed cross-entropy over `num_items_in_batch` (label tokens of the whole step,
//! counted after the shift), gradients add up over the micro-batches, then global-norm clipping
//! (torch's `clip_grad_norm_`), the scheduled learning rate and torch.optim.AdamW (decoupled weight
//! decay, bias correction) update the LoRA weights; the base model stays frozen.

use std::ops::Range;

use olive_data::Sample;
use olive_kernels::cpu::{
    adamw_update, clip_coefficient, matmul_strided, rmsnorm, sum_squares, AdamW, View,
};
use olive_model::adapter::LoraWeights;
use rayon::prelude::*;

use super::backward::rmsnorm_backward;
use super::error::{Result, TrainError};
use super::layer::{self, Batch, Saved};
use super::lora::{self, Adapted, Dropout, Site};
use super::loss::{cross_entropy, targets};
use super::{LoraSpec, Schedule, StepStats, TrainConfig};
use crate::model::Transformer;

/// LoRA adapters being trained on a frozen [`Transformer`].
#[derive(Debug, Clone)]
pub struct LoraTrainer {
    model: Transformer,
    spec: LoraSpec,
    cfg: TrainConfig,
    /// Sorted by layer, then projection.
    adapters: Vec<Adapted>,
    /// Indices into `adapters` of each layer's modules.
    by_layer: Vec<Range<usize>>,
    steps: usize,
}

/// A micro-batch as flat arrays: rows of `seq` tokens.
pub(crate) struct Flat {
    pub seq: usize,
    pub ids: Vec<u32>,
    pub mask: Vec<u8>,
    pub labels: Vec<i64>,
}

fn setting(field: &'static str, expected: &str) -> TrainError {
    TrainError::Setting {
        field,
        expected: expected.into(),
    }
}

fn check_config(cfg: &TrainConfig) -> Result<()> {
    let unit = |v: f32| (0.0..1.0).contains(&v);
    if !(cfg.learning_rate.is_finite() && cfg.learning_rate >= 0.0) {
        return Err(setting("learning_rate", "a finite number ≥ 0"));
    }
    if !(cfg.weight_decay.is_finite() && cfg.weight_decay >= 0.0) {
        return Err(setting("weight_decay", "a finite number ≥ 0"));
    }
    if !unit(cfg.adam_beta1) || !unit(cfg.adam_beta2) {
        return Err(setting("adam_beta1/adam_beta2", "in [0, 1)"));
    }
    if !(cfg.adam_epsilon.is_finite() && cfg.adam_epsilon > 0.0) {
        return Err(setting("adam_epsilon", "a finite number > 0"));
    }
    if !(cfg.max_grad_norm.is_finite() && cfg.max_grad_norm >= 0.0) {
        return Err(setting(
            "max_grad_norm",
            "a finite number ≥ 0 (0 = no clipping)",
        ));
    }
    if cfg.gradient_accumulation_steps == 0 {
        return Err(setting("gradient_accumulation_steps", "at least 1"));
    }
    if cfg.schedule != Schedule::Constant && cfg.max_steps == 0 {
        return Err(setting(
            "max_steps",
            "> 0: the linear and cosine schedules decay to 0 at max_steps",
        ));
    }
    Ok(())
}

impl LoraTrainer {
    /// Fresh adapters on `lora.target_modules` of every layer, initialised as PEFT does (A
    /// kaiming-uniform seeded by `cfg.seed`, B zeros).
    pub fn new(model: Transformer, lora: &LoraSpec, cfg: TrainConfig) -> Result<Self> {
        if lora.r == 0 {
            return Err(setting("r", "at least 1"));
        }
        if !lora.alpha.is_finite() {
            return Err(setting("alpha", "a finite number"));
        }
        let modules = lora::resolve_targets(&lora.target_modules, model.config())?;
        let weights = modules
            .into_iter()
            .map(|m| lora::init_weights(m, lora.r, lora.scale(), model.config(), cfg.seed))
            .collect();
        Self::build(model, lora.clone(), weights, cfg)
    }

    /// Training that starts from given adapter weights (PEFT layouts; fused Phi-3 modules stay
    /// fused). `spec()` then reports the largest rank, alpha = scale · rank and the module names.
    pub fn with_adapter(
        model: Transformer,
        weights: Vec<LoraWeights>,
        dropout: f32,
        cfg: TrainConfig,
    ) -> Result<Self> {
        let r = weights.iter().map(|w| w.rank).max().unwrap_or(0);
        let first = weights
            .first()
            .ok_or_else(|| setting("weights", "at least one module"))?;
        let mut names: Vec<String> = weights
            .iter()
            .map(|w| w.module.projection.name().to_string())
            .collect();
        names.sort();
        names.dedup();
        let spec = LoraSpec {
            r,
            alpha: first.scale * r as f32,
            dropout,
            target_modules: names,
            use_rslora: false,
        };
        Self::build(model, spec, weights, cfg)
    }

    fn build(
        model: Transformer,
        spec: LoraSpec,
        mut weights: Vec<LoraWeights>,
        cfg: TrainConfig,
    ) -> Result<Self> {
        check_config(&cfg)?;
        if !(0.0..1.0).contains(&spec.dropout) {
            return Err(setting("dropout", "in [0, 1)"));
        }
        weights.sort_by_key(|w| w.module);
        let config = model.config().clone();
        let adapters = weights
            .into_iter()
            .map(|w| Adapted::new(w, &config))
            .collect::<Result<Vec<_>>>()?;
        // Two modules may not cover the same output rows (q_proj and qkv_proj, or a duplicate).
        for pair in adapters.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let overlap = a.rows.start < b.rows.end && b.rows.start < a.rows.end;
            if a.module.layer == b.module.layer && a.site == b.site && overlap {
                return Err(TrainError::Adapter {
                    module: b.module.hf_key(),
                    reason: format!("overlaps {}", a.module.hf_key()),
                });
            }
        }
        let by_layer = (0..config.num_hidden_layers)
            .map(|i| {
                let start = adapters.partition_point(|a| a.module.layer < i);
                let end = adapters.partition_point(|a| a.module.layer <= i);
                start..end
            })
            .collect();
        Ok(LoraTrainer {
            model,
            spec,
            cfg,
            adapters,
            by_layer,
            steps: 0,
        })
    }

    /// The frozen base model.
    pub fn model(&self) -> &Transformer {
        &self.model
    }

    /// The LoRA settings (for adapter_config.json).
    pub fn spec(&self) -> &LoraSpec {
        &self.spec
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Optimizer steps done.
    pub fn steps_done(&self) -> usize {
        self.steps
    }

    /// The adapters as PEFT stores them: one per adapted module, a: [r, in], b: [out, r].
    pub fn adapter(&self) -> Vec<LoraWeights> {
        self.adapters.iter().map(Adapted::weights).collect()
    }

    /// The base with the adapters merged in (W += scale · B·A), e.g. for greedy generation; packed
    /// weights that get an adapter are dequantized first.
    pub fn merged_model(&self) -> Result<Transformer> {
        let mut model = self.model.clone();
        for (layer, range) in model.layers_mut().iter_mut().zip(&self.by_layer) {
            for m in &self.adapters[range.clone()] {
                let lin = match m.site {
                    Site::Qkv => &mut layer.qkv_proj,
                    Site::O => &mut layer.o_proj,
                    Site::GateUp => &mut layer.gate_up_proj,
                    Site::Down => &mut layer.down_proj,
                };
                lin.densify()?;
                let n_in = lin.in_features;
                matmul_strided(
                    m.rows.len(),
                    n_in,
                    m.rank,
                    View::rows(&m.b, m.rank),
                    View::rows(&m.a, n_in),
                    &mut lin.weight[m.rows.start * n_in..],
                    n_in,
                    m.scale,
                    true,
                );
            }
        }
        Ok(model)
    }

    /// One optimizer step over the micro-batches of a gradient-accumulation step (each a batch of
    /// rows of one length).
    pub fn train_step(&mut self, micro_batches: &[Vec<Sample>]) -> Result<StepStats> {
        let (loss, tokens) = self.accumulate(micro_batches)?;
        let grad_norm = self.grad_norm();
        if self.cfg.max_grad_norm > 0.0 {
            let coef = clip_coefficient(grad_norm, self.cfg.max_grad_norm);
            if coef < 1.0 {
                self.adapters.par_iter_mut().for_each(|m| {
                    m.grad_a
                        .iter_mut()
                        .chain(m.grad_b.iter_mut())
                        .for_each(|g| *g *= coef);
                });
            }
        }
        let learning_rate = self.cfg.learning_rate_at(self.steps);
        self.adamw(learning_rate);
        self.steps += 1;
        Ok(StepStats {
            step: self.steps,
            loss: loss as f32,
            learning_rate,
            grad_norm: grad_norm as f32,
            tokens,
        })
    }

    /// The mean loss of a step's micro-batches and the LoRA gradients (in the `a` and `b` of each
    /// returned module), without updating anything: what `train_step` would apply.
    pub fn loss_and_gradients(
        &mut self,
        micro_batches: &[Vec<Sample>],
    ) -> Result<(f32, Vec<LoraWeights>)> {
        let (loss, _) = self.accumulate(micro_batches)?;
        let grads = self
            .adapters
            .iter()
            .map(|m| LoraWeights {
                a: m.grad_a.clone(),
                b: m.grad_b.clone(),
                ..m.weights()
            })
            .collect();
        Ok((loss as f32, grads))
    }

    /// Mean cross-entropy of `batch` over its label tokens (no dropout, nothing kept).
    pub fn eval_loss(&self, batch: &[Sample]) -> Result<f32> {
        let flat = self.flatten(batch)?;
        let n = targets(&flat.labels, flat.seq).len();
        if n == 0 {
            return Err(TrainError::Batch("no label token to evaluate".into()));
        }
        let hidden = self.run_layers(&flat, None, &mut |_, _| {})?;
        let (loss, _) = self.head(&hidden, &flat, None);
        Ok((loss / n as f64) as f32)
    }

    /// Zeroes the gradients and adds those of every micro-batch; returns the step's mean loss and
    /// its input tokens.
    fn accumulate(&mut self, micro_batches: &[Vec<Sample>]) -> Result<(f64, usize)> {
        if micro_batches.is_empty() {
            return Err(TrainError::Batch(
                "a step needs at least one micro-batch".into(),
            ));
        }
        let flats = micro_batches
            .iter()
            .map(|b| self.flatten(b))
            .collect::<Result<Vec<_>>>()?;
        let n: usize = flats.iter().map(|f| targets(&f.labels, f.seq).len()).sum();
        if n == 0 {
            return Err(TrainError::Batch(
                "no label token in the step (every label after the first of a row is -100)".into(),
            ));
        }
        for m in &mut self.adapters {
            m.grad_a.fill(0.0);
            m.grad_b.fill(0.0);
        }
        let inv_n = 1.0 / n as f32;
        let mut loss = 0.0;
        for (micro, flat) in flats.iter().enumerate() {
            loss += self.forward_backward(flat, micro, inv_n)?;
        }
        let tokens = flats.iter().map(|f| f.ids.len()).sum();
        Ok((loss / n as f64, tokens))
    }

    /// Checks a micro-batch and lays it out flat.
    pub(crate) fn flatten(&self, batch: &[Sample]) -> Result<Flat> {
        let vocab = self.model.config().vocab_size;
        let seq = batch.first().map_or(0, |s| s.input_ids.len());
        if seq == 0 {
            return Err(TrainError::Batch(
                "an empty micro-batch or an empty row".into(),
            ));
        }
        let mut flat = Flat {
            seq,
            ids: Vec::with_capacity(batch.len() * seq),
            mask: Vec::with_capacity(batch.len() * seq),
            labels: Vec::with_capacity(batch.len() * seq),
        };
        for (i, s) in batch.iter().enumerate() {
            if s.input_ids.len() != seq || s.attention_mask.len() != seq || s.labels.len() != seq {
                return Err(TrainError::Batch(format!(
                    "row {i} has {} ids, {} mask values and {} labels; the batch's rows have {seq}",
                    s.input_ids.len(),
                    s.attention_mask.len(),
                    s.labels.len()
                )));
            }
            if let Some(l) = s
                .labels
                .iter()
                .find(|&&l| l != -100 && !(0..vocab as i64).contains(&l))
            {
                return Err(TrainError::Batch(format!(
                    "row {i} has label {l}, neither -100 nor below the vocabulary size {vocab}"
                )));
            }
            flat.ids.extend_from_slice(&s.input_ids);
            flat.mask.extend_from_slice(&s.attention_mask);
            flat.labels.extend_from_slice(&s.labels);
        }
        Ok(flat)
    }

    /// Embeds the batch and runs every layer, calling `keep(layer, saved)` with what each layer's
    /// backward needs; returns the last layer's output [tokens, hidden].
    fn run_layers(
        &self,
        flat: &Flat,
        dropout: Option<Dropout>,
        keep: &mut dyn FnMut(usize, Saved),
    ) -> Result<Vec<f32>> {
        let mut h = Vec::new();
        self.model.embed(&flat.ids, &mut h)?; // [tokens, hidden]
        let tables = self.model.rope().tables(0, flat.seq);
        let neg_sin: Vec<f32> = tables.sin().iter().map(|s| -s).collect();
        let batch = Batch {
            seq: flat.seq,
            key_mask: &flat.mask,
            cos: tables.cos(),
            sin: tables.sin(),
            neg_sin: &neg_sin,
        };
        for (i, l) in self.model.layers().iter().enumerate() {
            let r = self.by_layer[i].clone();
            let (out, saved) =
                layer::forward(l, &self.adapters[r.clone()], r.start, &batch, h, dropout);
            keep(i, saved);
            h = out;
        }
        Ok(h)
    }

    /// Final norm and fused lm_head cross-entropy: the summed loss and, with `inv_n`, the
    /// gradient of (loss · inv_n) with respect to the last layer's output.
    fn head(&self, hidden: &[f32], flat: &Flat, inv_n: Option<f32>) -> (f64, Vec<f32>) {
        let config = self.model.config();
        let (h, eps) = (config.hidden_size, config.rms_norm_eps as f32);
        let mut normed = vec![0.0; hidden.len()]; // [tokens, hidden]
        rmsnorm(hidden, self.model.final_norm(), eps, &mut normed);
        let t = targets(&flat.labels, flat.seq);
        let Some(inv_n) = inv_n else {
            return (
                cross_entropy(&normed, self.model.lm_head(), h, &t, None),
                Vec::new(),
            );
        };
        let mut d_normed = vec![0.0; hidden.len()];
        let loss = cross_entropy(
            &normed,
            self.model.lm_head(),
            h,
            &t,
            Some((inv_n, &mut d_normed)),
        );
        let mut dh = vec![0.0; hidden.len()];
        rmsnorm_backward(hidden, self.model.final_norm(), eps, &d_normed, &mut dh);
        (loss, dh)
    }

    /// Forward and backward of one micro-batch; adds its LoRA gradients (scaled by inv_n) and
    /// returns its summed loss.
    fn forward_backward(&mut self, flat: &Flat, micro: usize, inv_n: f32) -> Result<f64> {
        let dropout = (self.spec.dropout > 0.0).then(|| Dropout {
            p: self.spec.dropout,
            key: lora::mix(&[self.cfg.seed, self.steps as u64, micro as u64]),
        });
        // Without checkpointing every layer's activations; with it each layer's input, and the
        // last layer's activations (its backward comes first: recomputing them would gain nothing).
        let last = self.model.layers().len().saturating_sub(1);
        let recompute = |i: usize| self.cfg.gradient_checkpointing && i != last;
        let mut saved: Vec<Saved> = Vec::new();
        let mut inputs: Vec<Vec<f32>> = Vec::new();
        let hidden = self.run_layers(flat, dropout, &mut |i, s| {
            if recompute(i) {
                inputs.push(s.x);
            } else {
                saved.push(s);
            }
        })?;
        let (loss, mut dh) = self.head(&hidden, flat, Some(inv_n));
        drop(hidden);
        let tables = self.model.rope().tables(0, flat.seq);
        let neg_sin: Vec<f32> = tables.sin().iter().map(|s| -s).collect();
        let batch = Batch {
            seq: flat.seq,
            key_mask: &flat.mask,
            cos: tables.cos(),
            sin: tables.sin(),
            neg_sin: &neg_sin,
        };
        for (i, l) in self.model.layers().iter().enumerate().rev() {
            let r = self.by_layer[i].clone();
            let s = if recompute(i) {
                let x = inputs.pop().expect("run_layers keeps one input per layer");
                layer::forward(l, &self.adapters[r.clone()], r.start, &batch, x, dropout).1
            } else {
                saved.pop().expect("run_layers keeps one Saved per layer")
            };
            dh = layer::backward(l, &mut self.adapters[r.clone()], &batch, &s, &dh);
        }
        Ok(loss)
    }

    /// Global L2 norm of all LoRA gradients.
    fn grad_norm(&self) -> f64 {
        self.adapters
            .iter()
            .map(|m| sum_squares(&m.grad_a) + sum_squares(&m.grad_b))
            .sum::<f64>()
            .sqrt()
    }

    /// torch.optim.AdamW's step (`_single_tensor_adamw`, not amsgrad, not maximize).
    fn adamw(&mut self, lr: f32) {
        let c = &self.cfg;
        let step = AdamW {
            lr,
            beta1: c.adam_beta1,
            beta2: c.adam_beta2,
            eps: c.adam_epsilon,
            weight_decay: c.weight_decay,
        }
        .at_step((self.steps + 1) as i32);
        self.adapters.par_iter_mut().for_each(|a| {
            let [ma, va, mb, vb] = &mut a.moments;
            adamw_update(&mut a.a, &a.grad_a, ma, va, &step);
            adamw_update(&mut a.b, &a.grad_b, mb, vb, &step);
        });
    }
}
