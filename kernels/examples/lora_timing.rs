//! Times lora.cu (bf16 activations, fp32 A/B) with CUDA events, median of 20 after 3 warm-ups, on random inputs,
//! beside the frozen base product it rides on (cuBLAS bf16 `x·Wᵀ`) measured in the same run: the LoRA forward
//! (`y += scale·x·Aᵀ·Bᵀ`) and backward (grad_A, grad_B, dx) as a fraction of the base's time.
//!   cargo build --release -p olive-kernels --example lora_timing   (then run the binary on the GPU machine)

use olive_kernels::cpu::LoraDims;
use olive_kernels::cuda::attention::{Operand, Rows};
use olive_kernels::cuda::gemm::{matmul, Operand as GemmOperand};
use olive_kernels::cuda::lora::{backward, forward, Adapter, LoraGrads};
use olive_kernels::cuda::timing::{median_us, Reps};
use olive_kernels::cuda::{bf16, Gpu, GpuError};

/// (tokens, in, out, rank): Llama-3-8B's q_proj and down_proj, Phi-3.5-mini's qkv_proj, at 4096 tokens.
const SHAPES: [(usize, usize, usize, usize); 4] = [
    (4096, 4096, 4096, 16),
    (4096, 14336, 4096, 16),
    (4096, 3072, 9216, 64),
    (512, 4096, 4096, 16),
];

fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn half(v: Vec<f32>) -> Vec<bf16> {
    v.into_iter().map(bf16::from_f32).collect()
}

/// Median milliseconds of `f` over 20 runs after 3 warm-ups.
fn time(gpu: &Gpu, f: &mut dyn FnMut() -> Result<(), GpuError>) -> Result<f64, GpuError> {
    let reps = Reps {
        warmup: 3,
        timed: 20,
    };
    Ok(median_us(gpu, reps, |_| f())? / 1e3)
}

fn main() -> Result<(), GpuError> {
    let gpu = Gpu::get(0)?;
    println!("{}", gpu.name());
    println!("tokens    in   out rank  base_ms  lora_fwd_ms (x base)  lora_bwd_ms (x base)");
    for (tokens, n_in, n_out, rank) in SHAPES {
        let x = gpu.upload(&half(random(tokens * n_in, 1, 1.0)))?;
        let w = gpu.upload(&half(random(n_out * n_in, 2, 0.02)))?;
        let mut y = gpu.alloc::<bf16>(tokens * n_out)?;
        let base = time(&gpu, &mut || {
            matmul::<bf16, _, _, _>(
                &gpu,
                GemmOperand {
                    data: &x,
                    transposed: false,
                },
                GemmOperand {
                    data: &w,
                    transposed: true,
                },
                &mut y,
                (tokens, n_out, n_in),
                1.0,
                0.0,
            )
        })?;
        let a = gpu.upload(&random(rank * n_in, 3, 0.02))?;
        let b = gpu.upload(&random(n_out * rank, 4, 0.02))?;
        let d = LoraDims {
            tokens,
            in_features: n_in,
            out_features: n_out,
            rank,
            scale: 2.0,
        };
        let mut u = gpu.alloc::<f32>(tokens * rank)?;
        let x_op = Operand {
            data: &x,
            rows: Rows::packed(n_in),
        };
        let ad = Adapter { a: &a, b: &b };
        let fwd = time(&gpu, &mut || {
            forward(&gpu, &d, x_op, ad, (&mut y, Rows::packed(n_out)), &mut u)
        })?;
        let dy = gpu.upload(&half(random(tokens * n_out, 5, 1.0)))?;
        let (mut ga, mut gb) = (
            gpu.alloc::<f32>(rank * n_in)?,
            gpu.alloc::<f32>(n_out * rank)?,
        );
        let mut dx = gpu.alloc::<bf16>(tokens * n_in)?;
        let bwd = time(&gpu, &mut || {
            backward(
                &gpu,
                &d,
                x_op,
                Operand {
                    data: &dy,
                    rows: Rows::packed(n_out),
                },
                &u,
                ad,
                LoraGrads {
                    grad_a: &mut ga,
                    grad_b: &mut gb,
                    dx: Some((&mut dx, Rows::packed(n_in))),
                },
            )
        })?;
        println!(
            "{tokens:6} {n_in:5} {n_out:5} {rank:4} {base:8.4}  {fwd:11.4} ({:4.2})  {bwd:11.4} ({:4.2})",
            fwd / base,
            bwd / base
        );
    }
    Ok(())
}
