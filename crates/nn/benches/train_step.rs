//! Criterion bench of CPU LoRA training speed: seconds per optimizer step and tokens/s of
//! `LoraTrainer::train_step` on one micro-batch of OLIVE_BENCH_ROWS × OLIVE_BENCH_SEQ tokens
//! (default 1 × 512), rank 8 on all seven projections of every layer, with and without gradient
//! checkpointing, on the Hugging Face folder named by OLIVE_BENCH_MODEL (the default model:
//! models/smollm2). Peak RSS of one configuration:
//! `/usr/bin/time -f %M target/release/deps/train_step-* --bench --exact --profile-time 3
//! train_step/checkpointing/1x512` (the peak is the model load's: mmap plus copy of the weights).
//!
//! Threads: rayon's default (every core) unless RAYON_NUM_THREADS says otherwise.
//!
//! Run: `OLIVE_BENCH_MODEL=models/smollm2 cargo bench -p olive-nn --bench train_step`

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use olive_data::Sample;
use olive_nn::train::{LoraSpec, LoraTrainer, TrainConfig};
use olive_nn::Transformer;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: expected a count")),
        Err(_) => default,
    }
}

fn train_step(c: &mut Criterion) {
    let Some(dir) = std::env::var_os("OLIVE_BENCH_MODEL").map(PathBuf::from) else {
        eprintln!("train_step bench skipped: set OLIVE_BENCH_MODEL to a Hugging Face model folder");
        return;
    };
    let (rows, seq) = (
        env_usize("OLIVE_BENCH_ROWS", 1),
        env_usize("OLIVE_BENCH_SEQ", 512),
    );
    // One copy of the model at a time: each configuration loads its own (peak RSS stays that of
    // one training run).
    let load = || match Transformer::load(&dir) {
        Ok(m) => m,
        Err(e) => panic!("OLIVE_BENCH_MODEL={}: {e}", dir.display()),
    };
    let vocab = load().config().vocab_size as u32;
    let batch: Vec<Sample> = (0..rows as u32)
        .map(|r| {
            let ids: Vec<u32> = (0..seq as u32)
                .map(|i| (i * 7919 + r * 104_729 + 13) % vocab)
                .collect();
            Sample {
                attention_mask: vec![1; seq],
                labels: ids.iter().map(|&t| i64::from(t)).collect(),
                input_ids: ids,
            }
        })
        .collect();
    let spec = LoraSpec {
        r: 8,
        alpha: 16.0,
        dropout: 0.05,
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
    };

    let mut group = c.benchmark_group("train_step");
    group.throughput(Throughput::Elements((rows * seq) as u64));
    group.sample_size(10);
    for checkpointing in [true, false] {
        let cfg = TrainConfig {
            gradient_checkpointing: checkpointing,
            ..TrainConfig::default()
        };
        let mut trainer = match LoraTrainer::new(load(), &spec, cfg) {
            Ok(t) => t,
            Err(e) => panic!("LoraTrainer::new: {e}"),
        };
        let name = if checkpointing {
            "checkpointing"
        } else {
            "no_checkpointing"
        };
        group.bench_function(format!("{name}/{rows}x{seq}"), |b| {
            b.iter(|| match trainer.train_step(std::slice::from_ref(&batch)) {
                Ok(stats) => stats.loss,
                Err(e) => panic!("train_step failed: {e}"),
            })
        });
    }
    group.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);
