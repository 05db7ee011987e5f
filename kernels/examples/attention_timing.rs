//! Times attention.cu's forward (causal, GQA, bf16, head_dim 128) with CUDA events, median of 20 runs after 3
//! warm-ups, on random inputs: prefill shapes (tiled path) and decode over a 4096-key cache (split-KV path); and
//! the backward (training) of the prefill shapes.
//! Prints a table to compare with `attention_timing_torch.py` (torch's scaled_dot_product_attention) run on the
//! same GPU in the same call:
//!   cargo build --release -p olive-kernels --example attention_timing   (then run the binary on the GPU machine)

use olive_kernels::cuda::attention::{
    backward, forward, AttentionShape, Grads, Inputs, Operand, Rows,
};
use olive_kernels::cuda::timing::{median_us, Reps};
use olive_kernels::cuda::{bf16, Gpu, GpuError};

/// (batch, tokens, kv_len, heads, kv_heads).
const SHAPES: [(usize, usize, usize, usize, usize); 5] = [
    (1, 4096, 4096, 32, 8),
    (4, 1024, 1024, 32, 8),
    (1, 16384, 16384, 32, 8),
    (1, 1, 4096, 32, 8),
    (16, 1, 4096, 32, 8),
];
const HEAD_DIM: usize = 128;

fn random(n: usize, seed: u64) -> Vec<bf16> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            bf16::from_f32((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
        })
        .collect()
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
    println!("batch tokens kv_len heads kv_heads  median_ms  TFLOP/s  GB/s(K,V read)");
    for (batch, tokens, kv_len, heads, kv_heads) in SHAPES {
        let (qw, kvw) = (heads * HEAD_DIM, kv_heads * HEAD_DIM);
        let q = gpu.upload(&random(batch * tokens * qw, 1))?;
        let k = gpu.upload(&random(batch * kv_len * kvw, 2))?;
        let v = gpu.upload(&random(batch * kv_len * kvw, 3))?;
        let mut out = gpu.alloc::<bf16>(batch * tokens * qw)?;
        let shape = AttentionShape {
            batch,
            tokens,
            kv_len,
            heads,
            kv_heads,
            head_dim: HEAD_DIM,
            window: None,
            scale: 1.0 / (HEAD_DIM as f32).sqrt(),
        };
        let inputs = Inputs {
            q: Operand {
                data: &q,
                rows: Rows::packed(qw),
            },
            k: Operand {
                data: &k,
                rows: Rows::packed(kvw),
            },
            v: Operand {
                data: &v,
                rows: Rows::packed(kvw),
            },
            key_mask: None,
        };
        let ms = time(&gpu, &mut || {
            forward(&gpu, &shape, &inputs, (&mut out, Rows::packed(qw)), None)
        })?;
        // Causal: each query sees (kv_len − tokens + t + 1) keys; 4·head_dim flops per (query, key, head).
        let pairs: f64 = (0..tokens).map(|t| (kv_len - tokens + t + 1) as f64).sum();
        let flops = 4.0 * HEAD_DIM as f64 * pairs * (batch * heads) as f64;
        let tflops = flops / (ms * 1e-3) / 1e12;
        let gbs = (2 * batch * kv_len * kvw * 2) as f64 / (ms * 1e-3) / 1e9;
        println!(
            "{batch:5} {tokens:6} {kv_len:6} {heads:5} {kv_heads:8}  {ms:9.4}  {tflops:7.1}  {gbs:8.0}"
        );
        if tokens == kv_len && tokens <= 4096 {
            let mut lse = gpu.alloc::<f32>(batch * heads * tokens)?;
            forward(
                &gpu,
                &shape,
                &inputs,
                (&mut out, Rows::packed(qw)),
                Some(&mut lse),
            )?;
            let d_out = gpu.upload(&random(batch * tokens * qw, 4))?;
            let mut dq = gpu.alloc::<f32>(batch * tokens * qw)?;
            let (mut dk, mut dv) = (
                gpu.alloc::<f32>(batch * kv_len * kvw)?,
                gpu.alloc::<f32>(batch * kv_len * kvw)?,
            );
            let ms_b = time(&gpu, &mut || {
                backward(
                    &gpu,
                    &shape,
                    &inputs,
                    Operand {
                        data: &out,
                        rows: Rows::packed(qw),
                    },
                    Operand {
                        data: &d_out,
                        rows: Rows::packed(qw),
                    },
                    &lse,
                    Grads {
                        dq: (&mut dq, Rows::packed(qw)),
                        dk: (&mut dk, Rows::packed(kvw)),
                        dv: (&mut dv, Rows::packed(kvw)),
                    },
                )
            })?;
            // The backward's five products against the forward's two: 2.5× the flops.
            println!(
                "  backward {ms_b:9.4} ms  {:7.1} TFLOP/s",
                2.5 * flops / (ms_b * 1e-3) / 1e12
            );
        }
    }
    Ok(())
}
