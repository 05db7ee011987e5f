//! The dense one-token product (kernels/cuda/matmul.cu's `matvec`: a bf16 model's every decode product, and an int4
//! model's lm_head) on TinyLlama-1.1B, Phi-3.5-mini and Llama-3-8B linear shapes, lm_heads included, with random
//! bf16 weights: plain (`gemm::linear` at one row), with the RMSNorm folded in (`linear_normed`; for gate_up the
//! SwiGLU kernel, `linear_normed_swiglu`, whose output is half the rows), against cuBLAS bf16 (`gemm::matmul`, which
//! `linear` skips at one row) and the plain read kernel on the same bytes. µs a call from a CUDA graph of back-to-back
//! calls (as in a captured decode step), the plain product also one launch at a time; weights rotate over copies
//! larger than the L2 together.

use olive_kernels::cuda::gemm::{linear, linear_normed, linear_normed_swiglu, matmul, Operand};
use olive_kernels::cuda::rmsnorm::InputNorm;
use olive_kernels::cuda::{bf16, CudaSlice, Gpu, GpuError};

use crate::random::bf16_values;
use crate::timing::{both_us, read_call, rotated_copies};

/// (model, linear, K in, N out)
const SHAPES: [(&str, &str, usize, usize); 15] = [
    ("TinyLlama-1.1B", "qkv", 2048, 2560),
    ("TinyLlama-1.1B", "o", 2048, 2048),
    ("TinyLlama-1.1B", "gate_up", 2048, 11264),
    ("TinyLlama-1.1B", "down", 5632, 2048),
    ("TinyLlama-1.1B", "lm_head", 2048, 32000),
    ("Phi-3.5-mini", "qkv", 3072, 9216),
    ("Phi-3.5-mini", "o", 3072, 3072),
    ("Phi-3.5-mini", "gate_up", 3072, 16384),
    ("Phi-3.5-mini", "down", 8192, 3072),
    ("Phi-3.5-mini", "lm_head", 3072, 32064),
    ("Llama-3-8B", "qkv", 4096, 6144),
    ("Llama-3-8B", "o", 4096, 4096),
    ("Llama-3-8B", "gate_up", 4096, 28672),
    ("Llama-3-8B", "down", 14336, 4096),
    ("Llama-3-8B", "lm_head", 4096, 128256),
];

pub fn run(gpu: &Gpu) -> Result<(), GpuError> {
    println!("\n## Dense bf16 one-token product (matmul.cu matvec) vs cuBLAS bf16 and the plain read; µs");
    println!("(graph: µs a call from a CUDA graph of back-to-back calls; normed: the RMSNorm folded in, for gate_up");
    println!("with SwiGLU's gating in the write-out; % of read: the weight bytes' rate against the read's, graph)");
    println!("| model | linear | K | N | MB | ours µs | graph: ours | graph: normed | graph: cuBLAS | graph: read | ours GB/s | % of read | vs cuBLAS |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut sink = gpu.alloc::<u32>(gpu.sm_count() as usize * 8 * 256)?;
    for (si, &(model, linear_name, k, n)) in SHAPES.iter().enumerate() {
        let bytes = 2 * n * k;
        let copies = rotated_copies(bytes);
        let host = bf16_values(n * k, 100 + si as u64);
        let weights: Vec<CudaSlice<bf16>> = (0..copies)
            .map(|_| gpu.upload(&host))
            .collect::<Result<_, _>>()?;
        drop(host);
        let x = gpu.upload(&bf16_values(k, 7))?;
        let norm_weight = gpu.upload(&bf16_values(k, 11))?;
        let mut y = gpu.alloc::<bf16>(n)?;
        let (t, g) = both_us(gpu, |i| {
            linear(gpu, &x, &weights[i % copies], &mut y, (1, n, k), false)
        })?;
        let (_, g_blas) = both_us(gpu, |i| {
            let a = Operand {
                data: &x,
                transposed: false,
            };
            let b = Operand {
                data: &weights[i % copies],
                transposed: true,
            };
            matmul(gpu, a, b, &mut y, (1, n, k), 1.0, 0.0)
        })?;
        let swiglu = linear_name == "gate_up";
        let mut declined = false;
        let (_, g_norm) = both_us(gpu, |i| {
            let norm = InputNorm {
                weight: &norm_weight,
                eps: 1e-5,
            };
            let w = &weights[i % copies];
            let ran = if swiglu {
                linear_normed_swiglu(gpu, &x, norm, w, &mut y, (n / 2, k))?
            } else {
                linear_normed(gpu, &x, norm, w, &mut y, (n, k))?
            };
            declined |= !ran;
            Ok(())
        })?;
        let reads: Vec<CudaSlice<u32>> = (0..copies)
            .map(|_| gpu.alloc::<u32>(bytes.div_ceil(16) * 4))
            .collect::<Result<_, _>>()?;
        let (_, g_read) = both_us(gpu, read_call(gpu, &reads, &mut sink)?)?;
        drop(reads);
        let gbs = bytes as f64 / g / 1e3;
        println!(
            "| {model} | {linear_name} | {k} | {n} | {:.1} | {t:.1} | {g:.1} | {} | {g_blas:.1} | {g_read:.1} | {gbs:.0} | {:.0}% | {:.2}x |",
            bytes as f64 / 1e6,
            if declined { "declined".to_string() } else { format!("{g_norm:.1}") },
            100.0 * g_read / g,
            g_blas / g
        );
    }
    Ok(())
}
