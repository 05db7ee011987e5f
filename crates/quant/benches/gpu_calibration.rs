//! AWQ and GPTQ calibration time on a CUDA GPU against the CPU run in the same process, on a random hidden-2048,
//! 4-layer model (GQA 16/4, head_dim 128, intermediate 5632; 32 windows of 256 tokens, more than down_proj's 5632
//! inputs, so every Hessian has full rank), with how far the two outputs agree. Prints "skipped: no CUDA device"
//! where there is none. Build here, run on a GPU machine:
//!   cargo bench -p olive-quant --bench gpu_calibration --no-run   (then run the binary there)

#[path = "../tests/gpu_support/mod.rs"]
mod gpu_support;

use gpu_support::{agreement, linears, methods, perplexity, quantize, windows, write_model, Shape};
use olive_kernels::cuda::test_gpu;
use olive_quant::Device;

fn main() {
    let Some(gpu) = test_gpu("gpu_calibration") else {
        return;
    };
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
        let (t_gpu, gpu_lines) = quantize(&fp, &gpu_out, method, Device::Gpu, &cal);
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
