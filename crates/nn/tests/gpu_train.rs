//! LoRA training on the GPU against the CPU trainer: the same random-weight model (head_dim 64), adapters, seed and
//! batches, 10 optimizer steps of two micro-batches each (gradient accumulation, clipping, padded rows) on both;
//! the per-step losses and the final adapters must agree within bf16 tolerances. A QLoRA run on an int4 (AWQ) base
//! and a run with LoRA dropout (the GPU draws the CPU trainer's masks) likewise. Where there is no CUDA device each test prints `skipped: no CUDA device: <name>`.

mod gpu_model;
mod int4;

use std::time::Instant;

use gpu_model::{arch, write_model, Weights, VOCAB};
use olive_data::Sample;
use olive_kernels::cuda::test_gpu;
use olive_nn::gpu::train::GpuLoraTrainer;
use olive_nn::train::{LoraSpec, LoraTrainer, TrainConfig, TrainError};
use olive_nn::{QuantizedWeights, Transformer};

/// Per-step loss, |gpu − cpu| / cpu. The GPU runs bf16 activations and weights (2^-9 relative per rounding, fp32
/// accumulation): its logits are within 5e-3 of the CPU's (tests/gpu.rs), which moves a mean cross-entropy by
/// well under that relative; the adapters' trajectories then differ by the bf16 gradients' rounding. Measured on
/// an H200: at most 4.7e-4 (dense base), 6.6e-4 (int4 base) and 2.8e-4 (dropout 0.1) over the 10 steps.
const BF16_LOSS_REL: f64 = 5e-3;
/// Final adapters, ‖gpu − cpu‖ / ‖cpu‖ over every module's B (trained up from zero, so all of it is the
/// trajectory): AdamW's first steps are ±lr per element whatever the gradient's size, so elements whose gradient
/// is near zero may step either way under bf16 rounding; most of B still has to match. Measured on an H200:
/// 3.8e-2 (B) and 4.2e-2 (A, whose 10 steps of 5e-3 are as large as its initial values); with dropout 4.4e-2
/// and 4.8e-2.
const BF16_ADAPTER_REL: f64 = 0.1;

const STEPS: usize = 10;

fn spec(dropout: f32) -> LoraSpec {
    LoraSpec {
        r: 8,
        alpha: 16.0,
        dropout,
        target_modules: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        .map(String::from)
        .to_vec(),
        use_rslora: false,
    }
}

fn config() -> TrainConfig {
    TrainConfig {
        learning_rate: 5e-3,
        gradient_accumulation_steps: 2,
        max_grad_norm: 1.0,
        seed: 3,
        ..TrainConfig::default()
    }
}

/// A micro-batch of `n` rows of `seq` tokens; row 1 right-padded by 5 tokens, labels of each row's first 4
/// tokens ignored (a prompt).
fn rows(seed: u32, n: usize, seq: usize) -> Vec<Sample> {
    (0..n)
        .map(|r| {
            let ids: Vec<u32> = (0..seq)
                .map(|t| {
                    (seed * 31 + 7 * r as u32 + 13 * t as u32 * (t as u32 + seed))
                        % (VOCAB as u32 - 3)
                        + 3
                })
                .collect();
            let pad = if r == 1 { 5 } else { 0 };
            Sample {
                attention_mask: (0..seq).map(|t| u8::from(t < seq - pad)).collect(),
                labels: ids
                    .iter()
                    .enumerate()
                    .map(|(t, &id)| {
                        if t >= 4 && t < seq - pad {
                            i64::from(id)
                        } else {
                            -100
                        }
                    })
                    .collect(),
                input_ids: ids,
            }
        })
        .collect()
}

/// The micro-batches of step `s`.
fn step_batches(s: usize) -> Vec<Vec<Sample>> {
    vec![rows(2 * s as u32 + 1, 2, 48), rows(2 * s as u32 + 2, 3, 32)]
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn compare(name: &str, weights: Weights, dropout: f32) {
    let Some(gpu) = test_gpu(name) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &arch("llama"), weights);
    let load = || Transformer::load_with(dir.path(), QuantizedWeights::Packed).unwrap();
    let mut cpu = LoraTrainer::new(load(), &spec(dropout), config()).unwrap();
    let mut dev = GpuLoraTrainer::new(load(), &spec(dropout), config(), gpu).unwrap();
    let eval = rows(99, 2, 40);
    let (cpu_eval, gpu_eval) = (cpu.eval_loss(&eval).unwrap(), dev.eval_loss(&eval).unwrap());
    println!("{name}: eval loss before training: cpu {cpu_eval:.6}, gpu {gpu_eval:.6}");
    assert!(((gpu_eval - cpu_eval) / cpu_eval).abs() as f64 <= BF16_LOSS_REL);
    let (mut cpu_s, mut gpu_s) = (0.0, 0.0);
    let mut worst = 0f64;
    for s in 0..STEPS {
        let batches = step_batches(s);
        let t0 = Instant::now();
        let c = cpu.train_step(&batches).unwrap();
        let t1 = Instant::now();
        let g = dev.train_step(&batches).unwrap();
        let t2 = Instant::now();
        cpu_s += (t1 - t0).as_secs_f64();
        gpu_s += (t2 - t1).as_secs_f64();
        let rel = ((g.loss - c.loss) / c.loss).abs() as f64;
        worst = worst.max(rel);
        println!(
            "{name}: step {}: loss cpu {:.6} gpu {:.6} (rel {rel:.2e}); grad norm cpu {:.5} gpu {:.5}",
            c.step, c.loss, g.loss, c.grad_norm, g.grad_norm
        );
        assert_eq!((g.step, g.tokens), (c.step, c.tokens));
        assert_eq!(g.learning_rate, c.learning_rate);
        assert!(
            rel <= BF16_LOSS_REL,
            "{name}: step {}: GPU loss {} vs CPU {}",
            c.step,
            g.loss,
            c.loss
        );
    }
    let (want, got) = (cpu.adapter(), dev.adapter().unwrap());
    assert_eq!(want.len(), got.len());
    let (mut b_cpu, mut b_gpu, mut a_cpu, mut a_gpu) = (vec![], vec![], vec![], vec![]);
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w.module, g.module);
        assert_eq!(
            (w.rank, w.in_features, w.out_features),
            (g.rank, g.in_features, g.out_features)
        );
        assert_eq!(w.scale, g.scale);
        b_cpu.extend_from_slice(&w.b);
        b_gpu.extend_from_slice(&g.b);
        a_cpu.extend_from_slice(&w.a);
        a_gpu.extend_from_slice(&g.a);
    }
    let (b_err, a_err) = (rel_err(&b_gpu, &b_cpu), rel_err(&a_gpu, &a_cpu));
    println!(
        "{name}: {STEPS} steps, worst loss rel {worst:.2e}; adapters rel B {b_err:.2e}, A {a_err:.2e}; \
         step time cpu {:.1} ms, gpu {:.1} ms",
        cpu_s * 1e3 / STEPS as f64,
        gpu_s * 1e3 / STEPS as f64
    );
    assert!(b_err <= BF16_ADAPTER_REL && a_err <= BF16_ADAPTER_REL);
    let (cpu_eval, gpu_eval) = (cpu.eval_loss(&eval).unwrap(), dev.eval_loss(&eval).unwrap());
    println!("{name}: eval loss after training: cpu {cpu_eval:.6}, gpu {gpu_eval:.6}");
    assert!(((gpu_eval - cpu_eval) / cpu_eval).abs() as f64 <= BF16_LOSS_REL);
}

#[test]
fn lora_training_on_the_gpu_matches_the_cpu() {
    compare(
        "lora_training_on_the_gpu_matches_the_cpu",
        Weights::F32,
        0.0,
    );
}

#[test]
fn qlora_training_on_an_int4_base_matches_the_cpu() {
    compare(
        "qlora_training_on_an_int4_base_matches_the_cpu",
        Weights::Awq,
        0.0,
    );
}

#[test]
fn lora_training_with_dropout_on_the_gpu_matches_the_cpu() {
    compare(
        "lora_training_with_dropout_on_the_gpu_matches_the_cpu",
        Weights::F32,
        0.1,
    );
}

#[test]
fn ranks_above_the_kernels_are_refused_on_the_gpu() {
    let name = "ranks_above_the_kernels_are_refused_on_the_gpu";
    let Some(gpu) = test_gpu(name) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &arch("llama"), Weights::F32);
    let big = LoraSpec {
        r: 128,
        ..spec(0.0)
    };
    let model = Transformer::load(dir.path()).unwrap();
    let err = GpuLoraTrainer::new(model, &big, config(), gpu)
        .err()
        .unwrap();
    assert!(
        matches!(err, TrainError::Setting { field: "r", .. }),
        "{err}"
    );
}
