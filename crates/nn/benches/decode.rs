//! Criterion bench of CPU decode speed: tokens/s of greedy single-token steps with the KV cache,
//! on the Hugging Face folder named by OLIVE_BENCH_MODEL (the default model: SmolLM2-135M-Instruct
//! converted by `olive-host convert`). transformers' figure for the same model and thread count
//! comes from benches/decode_vs_transformers.py.
//!
//! Threads: rayon's default (every core) unless RAYON_NUM_THREADS says otherwise.
//!
//! Run: `OLIVE_BENCH_MODEL=tests/golden/out/smollm2/model cargo bench -p olive-nn --bench decode`

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use olive_nn::{argmax, Transformer};

/// Prompt tokens before the timed decode steps.
const PROMPT_LEN: usize = 16;
/// Decode steps timed per iteration (the throughput unit).
const STEPS: usize = 32;

fn decode(c: &mut Criterion) {
    let Some(dir) = std::env::var_os("OLIVE_BENCH_MODEL").map(PathBuf::from) else {
        eprintln!("decode bench skipped: set OLIVE_BENCH_MODEL to a Hugging Face model folder");
        return;
    };
    let model = match Transformer::load(&dir) {
        Ok(m) => m,
        Err(e) => panic!("OLIVE_BENCH_MODEL={}: {e}", dir.display()),
    };
    let vocab = model.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..PROMPT_LEN as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let mut cache = model.new_cache(PROMPT_LEN + STEPS + 1);
    let first = match model.forward_last(&prompt, &mut cache) {
        Ok(logits) => argmax(logits),
        Err(e) => panic!("prefill failed: {e}"),
    };

    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(STEPS as u64));
    group.sample_size(10);
    group.bench_function(format!("{}_tokens_after_{}", STEPS, PROMPT_LEN), |b| {
        b.iter(|| {
            cache.truncate(PROMPT_LEN);
            let mut token = first;
            for _ in 0..STEPS {
                match model.forward_last(&[token], &mut cache) {
                    Ok(logits) => token = argmax(logits),
                    Err(e) => panic!("decode step failed: {e}"),
                }
            }
            token
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
