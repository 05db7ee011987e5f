//! GPTQ on a 1536×576 linear (SmolLM2's gate_proj shape) with a Hessian of 8192 calibration tokens;
//! RTN of the same weight is the baseline measured in the same run. Also a 576×1536 linear (down_proj:
//! the factorization grows with the inputs) and the Hessian's accumulation.
//! Run: `cargo bench -p olive-quant --bench gptq`.

use criterion::{criterion_group, criterion_main, Criterion};
use olive_quant::{gptq, rtn, GptqOptions, Hessian, QuantSpec};

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
    let (out, inn, tokens) = (1536, 576, 8192);
    let w = noise(out * inn, 1);
    let x = noise(tokens * inn, 2);
    let mut h = Hessian::new(inn);
    h.add(&x);
    let spec = QuantSpec {
        bits: 4,
        group_size: Some(128),
        sym: false,
    };
    let mut g = c.benchmark_group("quant_1536x576");
    g.sample_size(10);
    g.bench_function("rtn", |b| b.iter(|| rtn(&w, out, inn, &spec).unwrap()));
    g.bench_function("gptq", |b| {
        b.iter(|| gptq(&w, out, inn, &h, &spec, &GptqOptions::default()).unwrap())
    });
    g.bench_function("gptq_act_order", |b| {
        let opts = GptqOptions {
            act_order: true,
            ..GptqOptions::default()
        };
        b.iter(|| gptq(&w, out, inn, &h, &spec, &opts).unwrap())
    });
    g.bench_function("hessian_8192_tokens", |b| {
        b.iter(|| {
            let mut h = Hessian::new(inn);
            h.add(&x);
            h
        })
    });
    let (out2, in2) = (576, 1536);
    let w2 = noise(out2 * in2, 3);
    let mut h2 = Hessian::new(in2);
    h2.add(&noise(4096 * in2, 4));
    g.bench_function("gptq_576x1536", |b| {
        b.iter(|| gptq(&w2, out2, in2, &h2, &spec, &GptqOptions::default()).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
