//! AWQ's search (`awq_layer`: scale grid forwards and clip search) on layer 0 of the default model
//! (SmolLM2-135M at `models/smollm2`, or the folder in `OLIVE_BENCH_MODEL`) with the default calibration's size,
//! 16 windows of 512 tokens of pseudo-random inputs; and the blocked causal attention of those windows.
//! Run: `cargo bench -p olive-quant --bench awq`.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use olive_kernels::cpu::{attention, AttentionDims};
use olive_model::{Checkpoint, ModelConfig};
use olive_nn::{DecoderLayer, Rope};
use olive_quant::awq::{awq_layer, AwqOptions, InputOf, LayerInputs};
use olive_quant::device::Compute;
use olive_quant::{QuantSpec, Selected};

const WINDOWS: usize = 16;
const SEQ_LEN: usize = 512;

fn noise(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let dir = std::env::var_os("OLIVE_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/smollm2"));
    let config = ModelConfig::from_folder(&dir).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (set OLIVE_BENCH_MODEL to a model folder)",
            dir.display()
        )
    });
    let ckpt = Checkpoint::open(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let layer = DecoderLayer::load(&ckpt, &config, 0).unwrap_or_else(|e| panic!("layer 0: {e}"));
    let d = layer.dims;
    let tokens = WINDOWS * SEQ_LEN;
    let rope = Rope::new(&config).tables(0, SEQ_LEN);
    let opts = AwqOptions::default();
    let mut inputs = LayerInputs::new(d, SEQ_LEN, &opts);
    for (group, width, seed) in [
        (InputOf::Qkv, d.hidden, 1),
        (InputOf::O, d.q_width(), 2),
        (InputOf::GateUp, d.hidden, 3),
        (InputOf::Down, d.intermediate, 4),
    ] {
        inputs
            .record(group, &noise(tokens * width, seed))
            .unwrap_or_else(|e| panic!("recording {group:?}: {e}"));
    }
    let spec = QuantSpec {
        bits: 4,
        group_size: Some(128),
        sym: false,
    };
    let mut g = c.benchmark_group("awq_smollm2_layer0");
    g.sample_size(10);
    g.bench_function("awq_layer_16x512", |b| {
        b.iter(|| {
            let (mut l, mut i) = (layer.clone(), inputs.clone());
            awq_layer(
                &Compute::cpu(),
                &mut l,
                &rope,
                &mut i,
                &spec,
                Selected::ALL,
                &opts,
            )
            .unwrap()
        })
    });
    let dims = AttentionDims {
        heads: d.heads,
        kv_heads: d.kv_heads,
        head_dim: d.head_dim,
        q_stride: d.q_width(),
    };
    let q = noise(SEQ_LEN * d.q_width(), 5);
    let (k, v) = (
        noise(SEQ_LEN * d.kv_width(), 6),
        noise(SEQ_LEN * d.kv_width(), 7),
    );
    let mut out = vec![0f32; SEQ_LEN * d.q_width()];
    let scale = (d.head_dim as f32).powf(-0.5);
    g.bench_function("causal_attention_16x512", |b| {
        b.iter(|| {
            for _ in 0..WINDOWS {
                attention(&q, &k, &v, dims, None, scale, &mut out);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
