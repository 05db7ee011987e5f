//! AWQ and GPTQ calibration time on a CUDA GPU against the CPU run in the same process, on a random hidden-2048,
//! 4-layer model (GQA 16/4, head_dim 128, intermediate 5632; 32 windows of 256 tokens, more than down_proj's 5632
//! inputs, so every Hessian has full rank), with how far the two outputs agree. Prints "skipped: no CUDA device"
//! where there is none. With `--num_gpus N` it times one GPU against the layers spread over GPUs 0..N instead
//! (the same model with 8 layers, so each GPU holds a block; no CPU run) and checks the outputs are
//! byte-identical: AWQ's blocks run concurrently, GPTQ's and RTN's layers one after another. With `--awq_phi3 N`
//! it times AWQ on one GPU on a random model of Phi-3.5-mini's shapes (hidden 3072, intermediate 8192, 32 heads of
//! 96, vocab 32064) with N decoder layers and the calibration `quantize --algorithm awq` uses by default (16
//! windows of 512 tokens), prints each layer's time and the projection to Phi-3.5-mini's 32 layers, and with
//! `--full_if_under S` then runs all 32 layers when that projection is at most S seconds. Build here, run on a GPU machine:
//!   cargo bench -p olive-quant --bench gpu_calibration --no-run   (then run the binary there, e.g.
//!   .gpu/gpu-calibration-bench --num_gpus 2)

#[path = "../tests/gpu_support/mod.rs"]
mod gpu_support;

use gpu_support::{
    agreement, different_files, gpu_count, linears, methods, options, perplexity, quantize,
    windows, write_model, Shape,
};
use olive_kernels::cuda::test_gpu;
use olive_quant::awq::AwqOptions;
use olive_quant::{quantize_model, Device, Event, Method};

/// `--num_gpus N` among the arguments (cargo bench adds its own, such as `--bench`).
fn num_gpus() -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == "--num_gpus")?;
    match args.get(i + 1).map(|v| v.parse::<usize>()) {
        Some(Ok(n)) if n >= 1 => Some(n),
        _ => panic!(
            "--num_gpus: expected a number of GPUs (1 or more), got {:?}",
            args.get(i + 1)
        ),
    }
}

fn main() {
    let Some(gpu) = test_gpu("gpu_calibration") else {
        return;
    };
    if let Some(n) = num_gpus() {
        over_gpus(n, gpu.name());
        return;
    }
    if let Some(layers) = flag("--awq_phi3") {
        let projected = awq_phi3(layers, gpu.name());
        if let Some(limit) = flag("--full_if_under") {
            if layers < PHI3_LAYERS && projected <= limit as f64 {
                awq_phi3(PHI3_LAYERS, gpu.name());
            } else {
                eprintln!(
                    "full {PHI3_LAYERS}-layer run skipped: projected {projected:.0} s > {limit} s"
                );
            }
        }
        return;
    }
    let s = Shape {
        hidden: 2048,
        heads: 16,
        kv_heads: 4,
        inter: 5632,
        layers: 4,
        vocab: 1024,
    };
    let dir = tempfile::tempdir().unwrap();
    let fp = dir.path().join("fp");
    write_model(&fp, s);
    let cal = windows(32, 256, s.vocab, 3);
    let eval = windows(4, 256, s.vocab, 5);
    let p_fp = perplexity(&fp, &eval);
    for (name, method) in methods() {
        let (cpu, gpu_out) = (
            dir.path().join(format!("{name}-cpu")),
            dir.path().join(format!("{name}-gpu")),
        );
        let (t_gpu, gpu_lines) = quantize(&fp, &gpu_out, method, Device::GPU, &cal);
        let (t_cpu, cpu_lines) = quantize(&fp, &cpu, method, Device::Cpu, &cal);
        eprintln!("{name} gpu: {gpu_lines:?}\n{name} cpu: {cpu_lines:?}");
        let (lc, lg) = (linears(&cpu, s), linears(&gpu_out, s));
        let a = agreement(&lc, &lg);
        let per_layer: Vec<String> = lc
            .chunks(7)
            .zip(lg.chunks(7))
            .map(|(c, g)| format!("{:.2e}", agreement(c, g).levels_different))
            .collect();
        let (p_cpu, p_gpu) = (perplexity(&cpu, &eval), perplexity(&gpu_out, &eval));
        eprintln!(
            "{name}: levels different per layer {per_layer:?}; perplexity fp {p_fp:.3}, cpu {p_cpu:.3}, \
             gpu {p_gpu:.3} (gpu/cpu − 1 = {:.2e})",
            p_gpu / p_cpu - 1.0
        );
        eprintln!(
            "TIMING {name} hidden 2048 x4 layers, {} calibration tokens, on {} ({} CPU threads): \
             cpu {t_cpu:.2} s, gpu {t_gpu:.2} s ({:.1}x); {a:?}",
            cal.len() * cal[0].len(),
            gpu.name(),
            rayon::current_num_threads(),
            t_cpu / t_gpu
        );
    }
}

/// One GPU against GPUs 0..n on an 8-layer model of the same shape: seconds of each, and whether the outputs are
/// byte-identical.
fn over_gpus(n: usize, name: &str) {
    let found = gpu_count();
    assert!(
        n <= found,
        "--num_gpus {n}: the driver reports {found} CUDA device(s)"
    );
    let s = Shape {
        hidden: 2048,
        heads: 16,
        kv_heads: 4,
        inter: 5632,
        layers: 8,
        vocab: 1024,
    };
    let dir = tempfile::tempdir().unwrap();
    let fp = dir.path().join("fp");
    write_model(&fp, s);
    let cal = windows(32, 256, s.vocab, 3);
    let all = [("rtn", Method::Rtn)].into_iter().chain(methods());
    for (method_name, method) in all {
        let (one, many) = (
            dir.path().join(format!("{method_name}-1")),
            dir.path().join(format!("{method_name}-{n}")),
        );
        let (t1, lines1) = quantize(&fp, &one, method, Device::GPU, &cal);
        let (tn, lines) = quantize(&fp, &many, method, Device::Gpu { count: n }, &cal);
        eprintln!("{method_name} 1 GPU: {lines1:?}\n{method_name} {n} GPUs: {lines:?}");
        let differ = different_files(&one, &many);
        eprintln!(
            "TIMING {method_name} hidden 2048 x8 layers, {} calibration tokens, on {name}: 1 GPU {t1:.2} s, \
             {n} GPUs {tn:.2} s ({:.2}x); outputs {}",
            cal.len() * cal[0].len(),
            t1 / tn,
            if differ.is_empty() {
                "byte-identical".to_string()
            } else {
                format!("DIFFER in {differ:?}")
            }
        );
        for d in [one, many] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}

/// Phi-3.5-mini's decoder layers.
const PHI3_LAYERS: usize = 32;

/// The number after `name` among the arguments.
fn flag(name: &str) -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == name)?;
    match args.get(i + 1).map(|v| v.parse::<usize>()) {
        Some(Ok(n)) if n >= 1 => Some(n),
        _ => panic!(
            "{name}: expected a positive number, got {:?}",
            args.get(i + 1)
        ),
    }
}

/// AWQ (default options, 4-bit groups of 128) on one GPU over a random `layers`-layer model of Phi-3.5-mini's
/// shapes with `quantize --algorithm awq`'s default calibration (olive_quant::pass DEFAULT_SAMPLES 16 windows of
/// DEFAULT_SEQ_LEN 512 tokens); prints each layer's seconds and returns the projected seconds for 32 layers.
fn awq_phi3(layers: usize, name: &str) -> f64 {
    let s = Shape {
        hidden: 3072,
        heads: 32,
        kv_heads: 32,
        inter: 8192,
        layers,
        vocab: 32064,
    };
    let dir = tempfile::tempdir().unwrap();
    let fp = dir.path().join("fp");
    let t0 = std::time::Instant::now();
    write_model(&fp, s);
    eprintln!(
        "phi3-shaped model of {layers} layers written in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let cal = windows(16, 512, s.vocab, 3);
    let out = dir.path().join("awq");
    let mut per_layer = Vec::new();
    let mut lines = Vec::new();
    let t0 = std::time::Instant::now();
    quantize_model(
        &fp,
        &out,
        &options(Method::Awq(AwqOptions::default()), Device::GPU),
        &cal,
        &mut |e| {
            match e {
                Event::Layer(r) => per_layer.push(r.seconds),
                Event::Log(l) => lines.push(l.to_string()),
            }
            true
        },
    )
    .unwrap();
    let total = t0.elapsed().as_secs_f64();
    for l in lines
        .iter()
        .filter(|l| l.starts_with("layer ") || l.starts_with("AWQ "))
    {
        eprintln!("{l}");
    }
    let sum: f64 = per_layer.iter().sum();
    // Layer 0 carries one-time costs (NVRTC compiles, cuBLAS handles): the projection uses the later layers.
    let steady = if per_layer.len() > 1 {
        per_layer[1..].iter().sum::<f64>() / (per_layer.len() - 1) as f64
    } else {
        sum
    };
    let projected =
        total - sum + per_layer.first().copied().unwrap_or(0.0) + steady * (PHI3_LAYERS - 1) as f64;
    eprintln!(
        "TIMING awq phi3.5-mini shapes x{layers} layers, {} calibration tokens, on {name} ({} CPU threads): \
         total {total:.1} s, per layer {per_layer:.2?} s (steady {steady:.2} s), outside layers {:.1} s; \
         projected {PHI3_LAYERS} layers {projected:.0} s (target 180 s)",
        cal.len() * cal[0].len(),
        rayon::current_num_threads(),
        total - sum
    );
    projected
}
