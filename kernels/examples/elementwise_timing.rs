//! Times the element-wise and reduction kernels (rmsnorm, rope, silu_mul, cross_entropy, adamw) with CUDA events,
//! median of 20 runs after 3 warm-ups, at Llama-3-8B training shapes in bf16 (AdamW in f32), against a
//! device-to-device copy measured in the same run (bytes read + written per second): each kernel's GB/s counts
//! the fewest bytes it must move (each input read once, each output written once).
//!   cargo build --release -p olive-kernels --example elementwise_timing   (then run the binary on the GPU machine)

use olive_kernels::cpu::{AdamW, RopeLayout};
use olive_kernels::cuda::adamw::adamw;
use olive_kernels::cuda::cross_entropy::{cross_entropy, cross_entropy_backward};
use olive_kernels::cuda::rmsnorm::{rmsnorm, rmsnorm_backward};
use olive_kernels::cuda::rope::{rope, Positions, RopeFreqs};
use olive_kernels::cuda::silu_mul::{silu_mul, silu_mul_backward};
use olive_kernels::cuda::timing::{self, Reps};
use olive_kernels::cuda::{bf16, CudaSlice, Gpu, GpuError};

const WARMUP: usize = 3;
const REPS: usize = 20;
/// Tokens of a training micro-batch (8 × 2048).
const TOKENS: usize = 16384;
const HIDDEN: usize = 4096;
const INTER: usize = 14336;
const VOCAB: usize = 128_256;
/// Rows of logits timed at once (the loss is computed a block of positions at a time).
const LOGIT_ROWS: usize = 4096;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

fn bf16s(gpu: &Gpu, n: usize, seed: u64) -> Result<CudaSlice<bf16>, GpuError> {
    gpu.upload(
        &random(n, seed)
            .into_iter()
            .map(bf16::from_f32)
            .collect::<Vec<_>>(),
    )
}

/// Median device microseconds of `f`.
fn median_us(gpu: &Gpu, mut f: impl FnMut() -> Result<(), GpuError>) -> Result<f64, GpuError> {
    let reps = Reps {
        warmup: WARMUP,
        timed: REPS,
    };
    timing::median_us(gpu, reps, |_| f())
}

fn row(name: &str, us: f64, bytes: usize, copy_gbs: f64) {
    let gbs = bytes as f64 / us / 1e3;
    println!(
        "{name:<44} {us:>10.1} {gbs:>8.0} {:>6.0}%",
        100.0 * gbs / copy_gbs
    );
}

fn main() -> Result<(), GpuError> {
    let gpu = Gpu::get(0)?;
    println!("{}", gpu.name());
    let (src, mut dst) = (gpu.alloc::<u8>(1 << 30)?, gpu.alloc::<u8>(1 << 30)?);
    let copy_us = median_us(&gpu, || Ok(gpu.stream().memcpy_dtod(&src, &mut dst)?))?;
    let copy_gbs = 2.0 * (1u64 << 30) as f64 / copy_us / 1e3;
    drop((src, dst));
    println!(
        "{:<44} {:>10} {:>8} {:>7}",
        "kernel (shape)", "median_us", "GB/s", "of copy"
    );
    row("device-to-device copy (1 GiB)", copy_us, 2 << 30, copy_gbs);

    let n = TOKENS * HIDDEN;
    let (x, w, dy) = (
        bf16s(&gpu, n, 1)?,
        bf16s(&gpu, HIDDEN, 2)?,
        bf16s(&gpu, n, 3)?,
    );
    let mut out = gpu.alloc::<bf16>(n)?;
    let us = median_us(&gpu, || rmsnorm(&gpu, &x, &w, 1e-5, &mut out))?;
    row("rmsnorm bf16 [16384, 4096]", us, 2 * n * 2, copy_gbs);
    let us = median_us(&gpu, || {
        rmsnorm_backward(&gpu, &x, &w, 1e-5, &dy, &mut out, false)
    })?;
    row(
        "rmsnorm_backward bf16 [16384, 4096]",
        us,
        3 * n * 2,
        copy_gbs,
    );
    drop((x, dy, out));

    // Llama-3-8B's fused qkv row: 32 q, 8 k, 8 v heads of 128; q and k rotate.
    let layout = RopeLayout {
        row_stride: 48 * 128,
        heads: 40,
        head_dim: 128,
        rotary_dim: 128,
    };
    let inv: Vec<f32> = (0..64)
        .map(|i| 500_000f32.powf(-(2 * i) as f32 / 128.0))
        .collect();
    let freqs = RopeFreqs::new(&gpu, &inv, None, 1.0)?;
    let mut qkv = bf16s(&gpu, TOKENS * layout.row_stride, 4)?;
    let pos = Positions {
        seq: 2048,
        offset: 0,
    };
    let us = median_us(&gpu, || rope(&gpu, &mut qkv, layout, &freqs, pos))?;
    row(
        "rope bf16 [16384 tokens, 40 heads x 128]",
        us,
        2 * TOKENS * 40 * 128 * 2,
        copy_gbs,
    );
    drop(qkv);

    let m = TOKENS * INTER;
    let gate_up = bf16s(&gpu, 2 * m, 5)?;
    let mut act = bf16s(&gpu, m, 6)?;
    let us = median_us(&gpu, || silu_mul(&gpu, &gate_up, INTER, &mut act))?;
    row("silu_mul bf16 [16384, 2 x 14336]", us, 3 * m * 2, copy_gbs);
    let mut d_gate_up = gpu.alloc::<bf16>(2 * m)?;
    let us = median_us(&gpu, || {
        silu_mul_backward(&gpu, &gate_up, &act, INTER, &mut d_gate_up)
    })?;
    row(
        "silu_mul_backward bf16 [16384, 2 x 14336]",
        us,
        5 * m * 2,
        copy_gbs,
    );
    drop((gate_up, act, d_gate_up));

    let v = LOGIT_ROWS * VOCAB;
    let mut logits = bf16s(&gpu, v, 7)?;
    let labels: Vec<i32> = (0..LOGIT_ROWS)
        .map(|i| ((i * 7919) % VOCAB) as i32)
        .collect();
    let labels = gpu.upload(&labels)?;
    let us = median_us(&gpu, || {
        cross_entropy(&gpu, &logits, &labels, VOCAB).map(drop)
    })?;
    row("cross_entropy bf16 [4096, 128256]", us, v * 2, copy_gbs);
    // In place: the gradient overwrites the logits, so later runs see gradients; the time does not depend on it.
    let us = median_us(&gpu, || {
        cross_entropy_backward(&gpu, &mut logits, &labels, VOCAB, 1e-3).map(drop)
    })?;
    row(
        "cross_entropy_backward bf16 [4096, 128256]",
        us,
        2 * v * 2,
        copy_gbs,
    );
    drop(logits);

    let p_len = 64 << 20;
    let step = AdamW {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    }
    .at_step(1);
    let g = gpu.upload(&random(p_len, 8))?;
    let (mut p, mut mo, mut ve) = (
        gpu.upload(&random(p_len, 9))?,
        gpu.alloc::<f32>(p_len)?,
        gpu.alloc::<f32>(p_len)?,
    );
    let us = median_us(&gpu, || {
        adamw(&gpu, &mut p, &g, &mut mo, &mut ve, &step, 1.0)
    })?;
    row("adamw f32 [64 Mi params]", us, 7 * p_len * 4, copy_gbs);
    Ok(())
}
