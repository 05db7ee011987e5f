//! Criterion bench of GPU decode speed: tokens/s of greedy single-token steps with the KV cache
//! (`GpuTransformer::next_token`, the loop of `generate --device gpu`: bf16, the chosen token back to
//! the host each step), on the Hugging Face folder named by OLIVE_BENCH_MODEL, on GPU 0: `graph` replays the
//! step captured as a CUDA graph whose kernels overlap their neighbours (the default),
//! `graph_in_order` the same graph with each kernel after the previous one's end, `launches` queues
//! its kernels one launch at a time (the baselines, same process). Skipped, saying why, without the
//! variable or a CUDA device. OLIVE_BENCH_PROMPT sets the prompt's length (16 by default; a long one
//! times decode over a long KV cache), OLIVE_BENCH_MAX_LENGTH the cache's capacity (generate's
//! --max_length; by default just what the timed steps reach).
//!
//! Run: `OLIVE_BENCH_MODEL=<model folder> cargo bench -p olive-nn --bench gpu_decode`

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use olive_kernels::cuda::{Edges, Gpu};
use olive_nn::GpuTransformer;

/// Prompt tokens before the timed decode steps, unless OLIVE_BENCH_PROMPT says otherwise.
const PROMPT_LEN: usize = 16;
/// Decode steps timed per iteration (the throughput unit).
const STEPS: usize = 32;

fn gpu_decode(c: &mut Criterion) {
    let Some(dir) = std::env::var_os("OLIVE_BENCH_MODEL").map(PathBuf::from) else {
        eprintln!("gpu_decode bench skipped: set OLIVE_BENCH_MODEL to a Hugging Face model folder");
        return;
    };
    let prompt_len = match std::env::var("OLIVE_BENCH_PROMPT") {
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => panic!("OLIVE_BENCH_PROMPT={v}: expected a number of tokens above 0"),
        },
        Err(_) => PROMPT_LEN,
    };
    let capacity = prompt_len + STEPS + 1;
    let capacity = match std::env::var("OLIVE_BENCH_MAX_LENGTH") {
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n >= capacity => n,
            _ => panic!("OLIVE_BENCH_MAX_LENGTH={v}: expected a number of positions >= {capacity}"),
        },
        Err(_) => capacity,
    };
    let gpu = match Gpu::get(0) {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("gpu_decode bench skipped: {e}");
            return;
        }
    };
    let model = match GpuTransformer::load(&dir, gpu) {
        Ok(m) => m,
        Err(e) => panic!("OLIVE_BENCH_MODEL={}: {e}", dir.display()),
    };
    let vocab = model.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..prompt_len as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let mut group = c.benchmark_group("gpu_decode");
    group.throughput(Throughput::Elements(STEPS as u64));
    group.sample_size(20);
    let modes = [
        ("graph", Some(Edges::Overlapped)),
        ("graph_in_order", Some(Edges::InOrder)),
        ("launches", None),
    ];
    for (mode, graphs) in modes {
        let mut cache = match model.new_cache(capacity) {
            Ok(cache) => cache,
            Err(e) => panic!("KV cache: {e}"),
        };
        cache.set_graphs(graphs);
        let first = match model.next_token(&prompt, &mut cache) {
            Ok(token) => token,
            Err(e) => panic!("prefill failed: {e}"),
        };
        let name = format!("{mode}/{STEPS}_tokens_after_{prompt_len}");
        group.bench_function(name, |b| {
            b.iter(|| {
                cache.truncate(prompt_len);
                let mut token = first;
                for _ in 0..STEPS {
                    match model.next_token(&[token], &mut cache) {
                        Ok(next) => token = next,
                        Err(e) => panic!("decode step failed: {e}"),
                    }
                }
                token
            })
        });
    }
    group.finish();
}

criterion_group!(benches, gpu_decode);
criterion_main!(benches);
