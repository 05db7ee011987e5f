//! The captured decode step's attention (`attention::forward_after`: kernels/cuda/attention.cu's decode kernel, and
//! its combine where there is more than one split) on model shapes at several cache lengths,
//! against the number of KV splits: the step after a full cache (the length the splits are sized for), bf16, each
//! figure a CUDA graph of back-to-back calls as in a captured model step, the calls going round copies of the
//! caches larger than the L2 together so that their keys come from DRAM, as a model's layer finds them. `*` marks
//! the default splits (`attention::decode_splits`); "merge" says whether the decode kernel writes the output itself
//! (one split) or the combine kernel merges the splits; GB/s is the cache's bytes over the time.

use olive_kernels::cuda::attention::{
    decode_chunk, decode_scratch_len, decode_splits, forward_after, AttentionShape, Operand, Rows,
    Step, DECODE_KEYS,
};
use olive_kernels::cuda::rope::RopeFreqs;
use olive_kernels::cuda::{bf16, CachedLen, CudaSlice, Gpu, GpuError};

use crate::timing::{graph_calls_us, ROTATE_BYTES};

/// (model, heads, KV heads, head_dim)
const SHAPES: [(&str, usize, usize, usize); 4] = [
    ("SmolLM2-135M", 9, 3, 64),
    ("TinyLlama-1.1B", 32, 4, 64),
    ("Phi-3.5-mini", 32, 32, 96),
    ("Llama-3-8B", 32, 8, 128),
];
/// Cache lengths (keys the step attends to, its own included).
const KV_LENS: [usize; 7] = [1024, 2048, 3072, 4096, 8192, 16384, 65536];
/// Keys a split (in [`DECODE_KEYS`]) the sweep tries: every split count whose splits take these.
const CHUNKS: [usize; 20] = [
    1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512,
];
/// The fewest calls a graph.
const GRAPH_CALLS: usize = 8;

pub fn run(gpu: &Gpu) -> Result<(), GpuError> {
    println!("\n## Decode attention after a full cache (bf16) against its KV splits; µs a call from a CUDA graph");
    println!("| model | keys | splits | live splits × keys | merge | µs | cache GB/s |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (model, heads, kv_heads, head_dim) in SHAPES {
        for kv_len in KV_LENS {
            let shape = AttentionShape {
                batch: 1,
                tokens: 1,
                kv_len,
                heads,
                kv_heads,
                head_dim,
                window: None,
                scale: 1.0 / (head_dim as f32).sqrt(),
            };
            let default = decode_splits(gpu, &shape);
            let mut splits: Vec<usize> = CHUNKS
                .iter()
                .map(|&c| kv_len.div_ceil(c * DECODE_KEYS))
                .chain([default])
                .collect();
            splits.sort_unstable();
            splits.dedup();
            let mut step = StepBuffers::new(gpu, &shape)?;
            let cache_bytes = 2 * kv_len * kv_heads * head_dim * std::mem::size_of::<bf16>();
            for s in splits {
                let t = step.time(gpu, &shape, s)?;
                let chunk = decode_chunk(kv_len, s);
                println!(
                    "| {model} | {kv_len} | {s}{} | {} × {chunk} | {} | {t:.2} | {:.0} |",
                    if s == default { " *" } else { "" },
                    kv_len.div_ceil(chunk),
                    if s == 1 { "direct" } else { "combine" },
                    cache_bytes as f64 / t / 1e3
                );
            }
        }
    }
    Ok(())
}

/// One step's operands: its qkv row, the caches' copies, the output, the rotary frequencies and the cache length
/// (kv_len - 1 positions before the step) on the device.
struct StepBuffers {
    qkv: CudaSlice<bf16>,
    keys: Vec<CudaSlice<bf16>>,
    values: Vec<CudaSlice<bf16>>,
    out: CudaSlice<bf16>,
    freqs: RopeFreqs,
    past: CudaSlice<u32>,
}

impl StepBuffers {
    fn new(gpu: &Gpu, shape: &AttentionShape) -> Result<Self, GpuError> {
        let (q_w, kv_w) = (
            shape.heads * shape.head_dim,
            shape.kv_heads * shape.head_dim,
        );
        let cache_len = shape.kv_len * kv_w;
        let copies = ROTATE_BYTES
            .div_ceil(2 * cache_len * std::mem::size_of::<bf16>())
            .max(1);
        // Values in [-1, 1]; every copy of the caches the same (the timing does not depend on them).
        let pattern = |len: usize, seed: usize| -> Vec<bf16> {
            (0..len)
                .map(|i| bf16::from_f32(((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0))
                .collect()
        };
        let (key_rows, value_rows) = (pattern(cache_len, 1), pattern(cache_len, 2));
        let half = shape.head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 10_000f32.powf(-(i as f32) / half as f32))
            .collect();
        Ok(Self {
            qkv: gpu.upload(&pattern(q_w + 2 * kv_w, 0))?,
            keys: (0..copies)
                .map(|_| gpu.upload(&key_rows))
                .collect::<Result<_, _>>()?,
            values: (0..copies)
                .map(|_| gpu.upload(&value_rows))
                .collect::<Result<_, _>>()?,
            out: gpu.alloc::<bf16>(q_w)?,
            freqs: RopeFreqs::new(gpu, &inv_freq, None, 1.0)?,
            past: gpu.upload(&[(shape.kv_len - 1) as u32])?,
        })
    }

    /// µs a call with the KV length split `splits` ways (call i on the caches' copy i % copies).
    fn time(&mut self, gpu: &Gpu, shape: &AttentionShape, splits: usize) -> Result<f64, GpuError> {
        let mut part = gpu.alloc::<f32>(decode_scratch_len(shape, splits))?;
        let (q_w, kv_w) = (
            shape.heads * shape.head_dim,
            shape.kv_heads * shape.head_dim,
        );
        let Self {
            qkv,
            keys,
            values,
            out,
            freqs,
            past,
        } = self;
        let past = past.slice(..);
        graph_calls_us(gpu, keys.len().max(GRAPH_CALLS), |i| {
            let copy = i % keys.len();
            let step = Step {
                qkv: Operand {
                    data: &*qkv,
                    rows: Rows::packed(q_w + 2 * kv_w),
                },
                k_column: q_w,
                keys: &mut keys[copy],
                values: &mut values[copy],
                freqs,
                rotary_dim: shape.head_dim,
            };
            let cached = CachedLen {
                len: &past,
                max: shape.kv_len - 1,
            };
            forward_after(
                gpu,
                shape,
                step,
                (&mut *out, Rows::packed(q_w)),
                cached,
                &mut part,
            )
        })
    }
}
