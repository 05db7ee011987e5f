//! The typed configs of the `LoRA` and `QLoRA` passes, after Olive's (olive/passes/pytorch/lora.py: `r`, `alpha`,
//! `lora_dropout`, `target_modules`, `torch_dtype`, `train_data_config`, `training_args` with the fields of
//! transformers' `TrainingArguments` that apply here, Olive's defaults).

use olive_data::DataConfig;
use olive_model::adapter::WeightDtype;
use olive_model::Architecture;
use olive_nn::train::{Schedule, TrainConfig};
use olive_pass_sdk::Error;
use schemars::JsonSchema;
use serde::Deserialize;

/// `torch_dtype`: training computes in f32 on CPU whatever it is; it sets the float type the adapter is saved in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TorchDtype {
    Float32,
    Bfloat16,
    Float16,
}

impl TorchDtype {
    pub fn weight_dtype(self) -> WeightDtype {
        match self {
            TorchDtype::Float32 => WeightDtype::F32,
            TorchDtype::Bfloat16 => WeightDtype::BF16,
            TorchDtype::Float16 => WeightDtype::F16,
        }
    }
}

/// `lr_scheduler_type` of transformers' `TrainingArguments` (each with linear warm-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LrScheduler {
    Constant,
    ConstantWithWarmup,
    Linear,
    Cosine,
}

/// The training arguments: transformers' `TrainingArguments` names, Olive's defaults (`HFTrainingArguments`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingArgs {
    /// Peak learning rate of AdamW.
    pub learning_rate: f64,
    /// Learning-rate schedule after warm-up: constant (Olive's default), linear or cosine decay to 0.
    pub lr_scheduler_type: LrScheduler,
    /// Fraction of the steps spent warming up linearly from 0 (used when warmup_steps is 0).
    pub warmup_ratio: f64,
    /// Warm-up steps; overrides warmup_ratio when positive.
    pub warmup_steps: usize,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// AdamW beta1.
    pub adam_beta1: f64,
    /// AdamW beta2.
    pub adam_beta2: f64,
    /// AdamW epsilon.
    pub adam_epsilon: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_grad_norm: f64,
    /// Optimizer steps to run; -1 runs num_train_epochs over the training rows.
    pub max_steps: i64,
    /// Epochs over the training rows, when max_steps is -1.
    pub num_train_epochs: f64,
    /// Rows per micro-batch.
    pub per_device_train_batch_size: usize,
    /// Rows per evaluation batch.
    pub per_device_eval_batch_size: usize,
    /// Micro-batches per optimizer step.
    pub gradient_accumulation_steps: usize,
    /// Seed of the LoRA initialization, dropout and the row order.
    pub seed: u64,
    /// Recompute activations in the backward pass instead of keeping them (less memory, ~1/3 more compute).
    pub gradient_checkpointing: bool,
    /// Evaluate on the held-out rows every this many steps (and after the last); 0: ten times over the run.
    pub eval_steps: usize,
}

impl Default for TrainingArgs {
    fn default() -> Self {
        Self {
            learning_rate: 2e-4,
            lr_scheduler_type: LrScheduler::Constant,
            warmup_ratio: 0.03,
            warmup_steps: 0,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            max_steps: -1,
            num_train_epochs: 3.0,
            per_device_train_batch_size: 8,
            per_device_eval_batch_size: 8,
            gradient_accumulation_steps: 1,
            seed: 42,
            gradient_checkpointing: true,
            eval_steps: 0,
        }
    }
}

impl TrainingArgs {
    /// Optimizer steps for `train_rows` rows over `ranks` data-parallel ranks: max_steps, else the epochs' worth
    /// (transformers rounds a partial last step up).
    pub fn total_steps(&self, train_rows: usize, ranks: usize) -> Result<usize, Error> {
        if self.max_steps == 0 || self.max_steps < -1 {
            return Err(Error::InvalidConfig(format!(
                "training_args.max_steps: a positive number of steps (or -1 for num_train_epochs), found {}",
                self.max_steps
            )));
        }
        if self.max_steps > 0 {
            return Ok(self.max_steps as usize);
        }
        if !(self.num_train_epochs.is_finite() && self.num_train_epochs > 0.0) {
            return Err(Error::InvalidConfig(format!(
                "training_args.num_train_epochs: a positive number, found {}",
                self.num_train_epochs
            )));
        }
        let rows_per_step =
            self.per_device_train_batch_size * self.gradient_accumulation_steps * ranks;
        let per_epoch = train_rows.div_ceil(rows_per_step.max(1)).max(1);
        Ok(((per_epoch as f64) * self.num_train_epochs).ceil() as usize)
    }

    /// Steps between evaluations for a run of `total` steps.
    pub fn eval_every(&self, total: usize) -> usize {
        if self.eval_steps > 0 {
            self.eval_steps
        } else {
            total.div_ceil(10).max(1)
        }
    }

    /// The trainer's config for a run of `total` steps; checks every value.
    pub fn train_config(&self, total: usize) -> Result<TrainConfig, Error> {
        let bad = |field: &str, expected: &str, found: String| {
            Error::InvalidConfig(format!("training_args.{field}: {expected}, found {found}"))
        };
        let positive = |field: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(bad(field, "a positive number", v.to_string()))
            }
        };
        positive("learning_rate", self.learning_rate)?;
        positive("adam_epsilon", self.adam_epsilon)?;
        for (field, v) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(bad(field, "a number in [0, 1)", v.to_string()));
            }
        }
        for (field, v) in [
            ("weight_decay", self.weight_decay),
            ("max_grad_norm", self.max_grad_norm),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(field, "a number >= 0", v.to_string()));
            }
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err(bad(
                "warmup_ratio",
                "a fraction in [0, 1)",
                self.warmup_ratio.to_string(),
            ));
        }
        for (field, v) in [
            (
                "per_device_train_batch_size",
                self.per_device_train_batch_size,
            ),
            (
                "per_device_eval_batch_size",
                self.per_device_eval_batch_size,
            ),
            (
                "gradient_accumulation_steps",
                self.gradient_accumulation_steps,
            ),
        ] {
            if v == 0 {
                return Err(bad(field, "a positive integer", "0".into()));
            }
        }
        let warmup_steps = if self.warmup_steps > 0 {
            self.warmup_steps
        } else {
            (self.warmup_ratio * total as f64).ceil() as usize
        };
        let schedule = match self.lr_scheduler_type {
            LrScheduler::Constant | LrScheduler::ConstantWithWarmup => Schedule::Constant,
            LrScheduler::Linear => Schedule::Linear,
            LrScheduler::Cosine => Schedule::Cosine,
        };
        Ok(TrainConfig {
            learning_rate: self.learning_rate as f32,
            weight_decay: self.weight_decay as f32,
            adam_beta1: self.adam_beta1 as f32,
            adam_beta2: self.adam_beta2 as f32,
            adam_epsilon: self.adam_epsilon as f32,
            warmup_steps,
            schedule,
            max_grad_norm: self.max_grad_norm as f32,
            gradient_accumulation_steps: self.gradient_accumulation_steps,
            max_steps: total,
            seed: self.seed,
            gradient_checkpointing: self.gradient_checkpointing,
        })
    }
}

/// Defines a pass config: the LoRA fields every LoRA pass has, then `$extra` fields.
macro_rules! lora_pass_config {
    ($(#[$meta:meta])* $name:ident { $($extra:tt)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// LoRA rank (Olive's `r`; the CLI's --lora_r).
            #[serde(default = "default_r", alias = "lora_r")]
            pub r: usize,
            /// LoRA alpha: the update is scaled by alpha / r (Olive's `alpha`; the CLI's --lora_alpha).
            #[serde(default = "default_alpha", alias = "lora_alpha")]
            pub alpha: f64,
            /// Dropout on the LoRA branch's input during training.
            #[serde(default = "default_dropout")]
            pub lora_dropout: f64,
            /// Linears to adapt (q_proj, v_proj, ... or "all-linear"); by default PEFT's choice for the architecture
            /// (q_proj, v_proj; Olive's o_proj, qkv_proj for Phi-3).
            #[serde(default)]
            pub target_modules: Option<Vec<String>>,
            /// Scale by alpha / sqrt(r) (rank-stabilized LoRA).
            #[serde(default)]
            pub use_rslora: bool,
            /// The float type the adapter is saved in (training computes in f32 on CPU).
            #[serde(default = "default_dtype")]
            pub torch_dtype: TorchDtype,
            /// The training data (olive-data's dataset config: files, text template, max_seq_len, eval_ratio, ...).
            #[schemars(with = "serde_json::Value")]
            pub train_data_config: DataConfig,
            /// Training arguments (transformers' names).
            #[serde(default)]
            pub training_args: TrainingArgs,
            $($extra)*
        }
    };
}

lora_pass_config! {
    /// The config of `LoRA`.
    LoraConfig {}
}

lora_pass_config! {
    /// The config of `QLoRA`: `LoRA`'s, and how a float base is quantized before training.
    QLoraConfig {
        /// Bits of the round-to-nearest quantization of a float base (Olive's bitsandbytes nf4 is 4 bits too);
        /// a base that is already quantized (AWQ, GPTQ) is trained over as it is.
        #[serde(default = "default_bits")]
        pub bits: u8,
        /// Weights per quantization group along the input dim (64, the block size of bitsandbytes' nf4).
        #[serde(default = "default_group")]
        pub group_size: usize,
    }
}

impl QLoraConfig {
    /// The LoRA part, and (bits, group_size).
    pub fn split(self) -> (LoraConfig, u8, usize) {
        let lora = LoraConfig {
            r: self.r,
            alpha: self.alpha,
            lora_dropout: self.lora_dropout,
            target_modules: self.target_modules,
            use_rslora: self.use_rslora,
            torch_dtype: self.torch_dtype,
            train_data_config: self.train_data_config,
            training_args: self.training_args,
        };
        (lora, self.bits, self.group_size)
    }
}

fn default_r() -> usize {
    64
}
fn default_alpha() -> f64 {
    16.0
}
fn default_dropout() -> f64 {
    0.05
}
fn default_dtype() -> TorchDtype {
    TorchDtype::Float32
}

impl LoraConfig {
    /// The target modules: as given, else the architecture's default.
    pub fn targets(&self, architecture: Architecture) -> Vec<String> {
        match &self.target_modules {
            Some(t) => t.clone(),
            None => default_targets(architecture)
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    /// Checks the LoRA fields (the trainer checks the module names against the model).
    pub fn check(&self) -> Result<(), Error> {
        if self.r == 0 {
            return Err(Error::InvalidConfig("r: a positive rank, found 0".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::InvalidConfig(format!(
                "alpha: a positive number, found {}",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(Error::InvalidConfig(format!(
                "lora_dropout: a probability in [0, 1), found {}",
                self.lora_dropout
            )));
        }
        if let Some(t) = &self.target_modules {
            if t.is_empty() || t.iter().any(|m| m.trim().is_empty()) {
                return Err(Error::InvalidConfig(format!(
                    "target_modules: a list of module names, found {t:?}"
                )));
            }
        }
        Ok(())
    }
}

/// PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, with Olive's entry for Phi-3.
pub fn default_targets(architecture: Architecture) -> &'static [&'static str] {
    match architecture {
        Architecture::Phi3 => &["o_proj", "qkv_proj"],
        Architecture::Llama | Architecture::Mistral | Architecture::Qwen2 => &["q_proj", "v_proj"],
    }
}

fn default_bits() -> u8 {
    4
}
fn default_group() -> usize {
    64
}
