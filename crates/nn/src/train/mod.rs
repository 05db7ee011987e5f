//! LoRA fine-tuning of the frozen decoder on CPU, following PEFT (adapters) and transformers' Trainer
//! (loss normalisation over gradient accumulation, AdamW as torch.optim.AdamW, global-norm clipping,
//! learning-rate schedules with linear warm-up): forward over padded sequences, hand-written backward
//! passes, optional gradient checkpointing (one layer's activations kept at a time).

mod attention;
mod backward;
pub mod error;
mod layer;
pub(crate) mod lora;
pub(crate) mod loss;
pub(crate) mod trainer;

pub use error::{Result, TrainError};
pub use trainer::LoraTrainer;

/// Which modules get adapters and how (PEFT's LoraConfig).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f32,
    pub dropout: f32,
    /// PEFT names (`q_proj` ... `down_proj`; Phi-3: `qkv_proj`, `gate_up_proj`), `block.name`
    /// suffixes, or the single entry `all-linear`.
    pub target_modules: Vec<String>,
    pub use_rslora: bool,
}

impl LoraSpec {
    /// The factor on B·A: alpha / r, or alpha / √r with rsLoRA.
    pub fn scale(&self) -> f32 {
        if self.use_rslora {
            self.alpha / (self.r as f32).sqrt()
        } else {
            self.alpha / self.r as f32
        }
    }
}

/// Learning-rate decay after the linear warm-up (transformers' `get_*_schedule_with_warmup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// `constant_with_warmup`.
    Constant,
    /// `linear`: down to 0 at `max_steps`.
    Linear,
    /// `cosine` with half a cycle: down to 0 at `max_steps`.
    Cosine,
}

/// Optimizer and loop settings (transformers' TrainingArguments names).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub learning_rate: f32,
    pub weight_decay: f32,
    pub adam_beta1: f32,
    pub adam_beta2: f32,
    pub adam_epsilon: f32,
    pub warmup_steps: usize,
    pub schedule: Schedule,
    /// Global gradient-norm clip; 0 turns it off.
    pub max_grad_norm: f32,
    /// Micro-batches a step takes (the caller passes them to `train_step`).
    pub gradient_accumulation_steps: usize,
    /// Steps of the whole run: where Linear and Cosine reach 0 (0 = unset; only Constant allows it).
    pub max_steps: usize,
    pub seed: u64,
    /// Keep only each layer's input during the forward pass and recompute the rest in the backward.
    pub gradient_checkpointing: bool,
}

impl Default for TrainConfig {
    /// transformers' defaults, with Olive's LoRA pass overrides (HFTrainingArguments): learning
    /// rate 2e-4, constant schedule, gradient checkpointing on.
    fn default() -> Self {
        TrainConfig {
            learning_rate: 2e-4,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            warmup_steps: 0,
            schedule: Schedule::Constant,
            max_grad_norm: 1.0,
            gradient_accumulation_steps: 1,
            max_steps: 0,
            seed: 42,
            gradient_checkpointing: true,
        }
    }
}

impl TrainConfig {
    /// The learning rate of optimizer step `step` (0-based), as torch's LambdaLR with transformers'
    /// lambdas gives it: the first warm-up step has rate 0.
    pub fn learning_rate_at(&self, step: usize) -> f32 {
        let (s, w, total) = (step as f64, self.warmup_steps as f64, self.max_steps as f64);
        let factor = if step < self.warmup_steps {
            s / w.max(1.0)
        } else {
            let progress = (s - w) / (total - w).max(1.0);
            match self.schedule {
                Schedule::Constant => 1.0,
                Schedule::Linear => ((total - s) / (total - w).max(1.0)).max(0.0),
                Schedule::Cosine => {
                    (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
                }
            }
        };
        (self.learning_rate as f64 * factor) as f32
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Optimizer steps done, this one included (1-based).
    pub step: usize,
    /// Mean cross-entropy over the step's label tokens (transformers' logged loss).
    pub loss: f32,
    /// The learning rate this step used.
    pub learning_rate: f32,
    /// Global L2 norm of the LoRA gradients before clipping.
    pub grad_norm: f32,
    /// Input tokens of the step (all rows of all micro-batches).
    pub tokens: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_transformers() {
        let cfg = |schedule| TrainConfig {
            learning_rate: 1.0,
            warmup_steps: 2,
            max_steps: 10,
            schedule,
            ..TrainConfig::default()
        };
        let lin = cfg(Schedule::Linear);
        let got: Vec<f32> = (0..11).map(|s| lin.learning_rate_at(s)).collect();
        let want = [
            0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0,
        ];
        assert_eq!(got, want);
        let cos = cfg(Schedule::Cosine);
        assert_eq!(cos.learning_rate_at(2), 1.0);
        assert!((cos.learning_rate_at(6) - 0.5).abs() < 1e-6);
        assert!(cos.learning_rate_at(10).abs() < 1e-6);
        let constant = cfg(Schedule::Constant);
        assert_eq!(constant.learning_rate_at(1), 0.5);
        assert_eq!(constant.learning_rate_at(50), 1.0);
        assert_eq!(TrainConfig::default().learning_rate_at(0), 2e-4);
    }

    #[test]
    fn rslora_scales_by_square_root() {
        let mut spec = LoraSpec {
            r: 16,
            alpha: 32.0,
            dropout: 0.0,
            target_modules: vec!["q_proj".into()],
            use_rslora: false,
        };
        assert_eq!(spec.scale(), 2.0);
        spec.use_rslora = true;
        assert_eq!(spec.scale(), 8.0);
    }
}
