//! Golden tests of LoRA training against PyTorch (transformers + peft), written by
//! tests/golden/train_reference.py (through gen_golden.py, `make golden`) under
//! tests/golden/out/train_<arch>/: the same loss and LoRA gradients for one micro-batch, and the
//! same losses, learning rates and gradient norms over ten AdamW steps with gradient accumulation,
//! clipping and a linear warm-up schedule; on tiny models of four architectures and on the default
//! model. OLIVE_GOLDEN_DIR points the test at another folder.

use std::path::{Path, PathBuf};

use olive_data::Sample;
use olive_model::adapter::LoraAdapter;
use olive_nn::train::{LoraTrainer, Schedule, TrainConfig};
use olive_nn::Transformer;
use safetensors::{Dtype, SafeTensors};

/// LoRA gradients, relative Frobenius error per tensor. The bar is 1e-3; these 2-layer fp32
/// cases land near 1e-6 (summation order only), so hold them tighter: a wrong mask or rope table
/// shifts gradients by far more than 1e-5 but could hide under 1e-3.
const GRAD_TOL: f64 = 1e-5;
/// Losses of one micro-batch and over ten optimizer steps (the bar is 1e-3; they land
/// within ~1e-6).
const STEP_LOSS_TOL: f32 = 1e-5;
/// The default model (30 layers, real weights): the bars for gradients and losses.
const GRAD_TOL_DEFAULT: f64 = 1e-3;
const DEFAULT_MODEL_TOL: f32 = 1e-3;

fn case_dir(case: &str) -> PathBuf {
    let root = std::env::var_os("OLIVE_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/out"));
    let dir = root.join(case);
    assert!(
        dir.join("reference.safetensors").is_file(),
        "golden case `{case}` is missing at {}: run `make golden` (tests/golden/gen_golden.py) first",
        dir.display()
    );
    dir
}

struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("reference.safetensors parses")
    }

    fn floats(&self, name: &str) -> Vec<f32> {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("`{name}`: {e}"));
        assert_eq!(t.dtype(), Dtype::F32, "`{name}` dtype");
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    fn ints(&self, name: &str) -> Vec<i64> {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("`{name}`: {e}"));
        assert_eq!(t.dtype(), Dtype::I64, "`{name}` dtype");
        t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    /// The micro-batches: [4][2 rows of 16 tokens].
    fn micro_batches(&self) -> Vec<Vec<Sample>> {
        let (ids, mask, labels) = (self.ints("ids"), self.ints("mask"), self.ints("labels"));
        let seq = 16;
        let rows: Vec<Sample> = (0..ids.len() / seq)
            .map(|r| Sample {
                input_ids: ids[r * seq..(r + 1) * seq]
                    .iter()
                    .map(|&v| v as u32)
                    .collect(),
                attention_mask: mask[r * seq..(r + 1) * seq]
                    .iter()
                    .map(|&v| v as u8)
                    .collect(),
                labels: labels[r * seq..(r + 1) * seq].to_vec(),
            })
            .collect();
        rows.chunks(2).map(|c| c.to_vec()).collect()
    }
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// The reference run's optimizer settings.
fn config(gradient_checkpointing: bool) -> TrainConfig {
    TrainConfig {
        learning_rate: 1e-3,
        weight_decay: 0.01,
        warmup_steps: 2,
        schedule: Schedule::Linear,
        max_grad_norm: 1.0,
        gradient_accumulation_steps: 2,
        max_steps: 10,
        gradient_checkpointing,
        ..TrainConfig::default()
    }
}

fn trainer(dir: &Path, model_dir: &Path, gradient_checkpointing: bool) -> LoraTrainer {
    let model = Transformer::load(model_dir).unwrap();
    let adapter = LoraAdapter::open(&dir.join("adapter")).unwrap();
    LoraTrainer::with_adapter(
        model,
        adapter.weights().to_vec(),
        0.0,
        config(gradient_checkpointing),
    )
    .unwrap()
}

/// Loss, gradients and ten steps of case `train_{arch}` over the model in `model_dir` (the case's
/// own `model/` when None), gradients within `grad_tol` and losses within `loss_tol`.
fn check_case(arch: &str, model_dir: Option<PathBuf>, grad_tol: f64, loss_tol: f32) {
    let case = format!("train_{arch}");
    let dir = case_dir(&case);
    let model_dir = model_dir.unwrap_or_else(|| dir.join("model"));
    let r = Reference {
        bytes: std::fs::read(dir.join("reference.safetensors")).unwrap(),
    };
    let micro = r.micro_batches();

    // Loss and gradients of micro-batch 0, with and without checkpointing.
    for checkpointing in [false, true] {
        let mut t = trainer(&dir, &model_dir, checkpointing);
        let (loss, grads) = t.loss_and_gradients(&micro[..1]).unwrap();
        let want = r.floats("loss")[0];
        assert!(
            (loss - want).abs() <= loss_tol,
            "{case}: loss {loss}, PyTorch {want}"
        );
        let mut worst = 0.0f64;
        for g in &grads {
            let key = g.module.hf_key();
            let ea = rel_err(&g.a, &r.floats(&format!("grad.{key}.lora_A")));
            let eb = rel_err(&g.b, &r.floats(&format!("grad.{key}.lora_B")));
            assert!(
                ea <= grad_tol,
                "{case}: {key}.lora_A gradient off by {ea:.2e}"
            );
            assert!(
                eb <= grad_tol,
                "{case}: {key}.lora_B gradient off by {eb:.2e}"
            );
            worst = worst.max(ea).max(eb);
        }
        println!("{case} (checkpointing {checkpointing}): loss {loss} vs {want}, worst gradient rel err {worst:.2e} over {} modules", grads.len());
    }

    // Ten optimizer steps.
    let mut t = trainer(&dir, &model_dir, false);
    let (losses, lrs, norms) = (
        r.floats("step_loss"),
        r.floats("step_lr"),
        r.floats("step_grad_norm"),
    );
    for step in 0..losses.len() {
        let batches = [
            micro[(2 * step) % micro.len()].clone(),
            micro[(2 * step + 1) % micro.len()].clone(),
        ];
        let s = t.train_step(&batches).unwrap();
        println!(
            "{case} step {}: loss {} vs {}, lr {} vs {}, grad norm {} vs {}",
            s.step, s.loss, losses[step], s.learning_rate, lrs[step], s.grad_norm, norms[step]
        );
        assert!(
            (s.loss - losses[step]).abs() <= loss_tol,
            "{case} step {step}: loss {}, PyTorch {}",
            s.loss,
            losses[step]
        );
        assert!(
            (s.learning_rate - lrs[step]).abs() <= 1e-9,
            "{case} step {step}: lr"
        );
        assert!(
            ((s.grad_norm - norms[step]) / norms[step]).abs() <= 1e-3,
            "{case} step {step}: grad norm {}, PyTorch {}",
            s.grad_norm,
            norms[step]
        );
        assert_eq!(s.tokens, 64);
    }
}

#[test]
fn llama_matches_peft() {
    check_case("llama", None, GRAD_TOL, STEP_LOSS_TOL);
}

#[test]
fn qwen2_with_qkv_bias_matches_peft() {
    check_case("qwen2", None, GRAD_TOL, STEP_LOSS_TOL);
}

#[test]
fn mistral_with_sliding_window_matches_peft() {
    check_case("mistral", None, GRAD_TOL, STEP_LOSS_TOL);
}

#[test]
fn phi3_fused_partial_rotary_longrope_matches_peft() {
    check_case("phi3", None, GRAD_TOL, STEP_LOSS_TOL);
}

#[test]
fn default_model_matches_peft() {
    let model = case_dir("train_smollm2").join("../smollm2/model");
    check_case("smollm2", Some(model), GRAD_TOL_DEFAULT, DEFAULT_MODEL_TOL);
}
