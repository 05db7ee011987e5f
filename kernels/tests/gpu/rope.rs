//! rope.cu against kernels/src/cpu/rope.rs: the rotation of q/k heads in a fused qkv row, a partial
//! rotary layout and an odd row stride (the one-element path), for a training batch of rows, a prefill
//! and a decode step after a KV cache, with default frequencies and LongRoPE's short/long sets and
//! attention factor; the tables built on the CPU by `rope_tables` exactly as nn's Rope builds them, the
//! rotation by the f64 reference. Forward and backward (the opposite angle), in f32/bf16/f16.

use olive_kernels::cpu::{rope_apply_ref, rope_tables, RopeLayout};
use olive_kernels::cuda::float::Float;
use olive_kernels::cuda::rope::{
    rope, rope_append, rope_backward, CacheAppend, Positions, RopeFreqs,
};
use olive_kernels::cuda::{bf16, f16, test_gpu, Gpu};

use super::common::{random, rel_error};
use super::floats::{download_f32, tol, upload_as};

/// A model's frequencies on the host: inv_freq = 1 / (factor · base^(2i / rotary_dim)) as transformers.
pub(super) struct HostFreqs {
    pub(super) short: Vec<f32>,
    pub(super) long: Option<(Vec<f32>, usize)>,
    pub(super) scaling: f32,
}

impl HostFreqs {
    pub(super) fn new(rotary_dim: usize, longrope: Option<(u64, usize, f32)>) -> Self {
        let half = rotary_dim / 2;
        let inv = |factors: &[f32]| -> Vec<f32> {
            (0..half)
                .map(|i| 1.0 / (factors[i] * 10000f32.powf((2 * i) as f32 / rotary_dim as f32)))
                .collect()
        };
        match longrope {
            None => HostFreqs {
                short: inv(&vec![1.0; half]),
                long: None,
                scaling: 1.0,
            },
            Some((seed, original, scaling)) => {
                // Short factors in [1, 2), long in [2, 8): LongRoPE's searched factors are of this kind.
                let short: Vec<f32> = random(half, seed, 0.5).iter().map(|v| 1.5 + v).collect();
                let long: Vec<f32> = random(half, seed + 1, 3.0)
                    .iter()
                    .map(|v| 5.0 + v)
                    .collect();
                HostFreqs {
                    short: inv(&short),
                    long: Some((inv(&long), original)),
                    scaling,
                }
            }
        }
    }

    /// The same sets on the device.
    pub(super) fn upload(&self, gpu: &Gpu) -> RopeFreqs {
        let long = self.long.as_ref().map(|(l, o)| (l.as_slice(), *o));
        RopeFreqs::new(gpu, &self.short, long, self.scaling).unwrap()
    }

    pub(super) fn inv_freq(&self, seq_len: usize) -> &[f32] {
        match &self.long {
            Some((long, original)) if seq_len > *original => long,
            _ => &self.short,
        }
    }
}

/// The CPU result: each row of `seq` tokens rotated with the tables of positions offset .. offset + seq.
fn reference(
    x: &[f32],
    layout: RopeLayout,
    freqs: &HostFreqs,
    pos: Positions,
    sign: f32,
) -> Vec<f32> {
    let inv_freq = freqs.inv_freq(pos.offset + pos.seq);
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    rope_tables(
        inv_freq,
        pos.offset,
        pos.seq,
        freqs.scaling,
        &mut cos,
        &mut sin,
    );
    let sin: Vec<f32> = sin.iter().map(|s| sign * s).collect();
    x.chunks(pos.seq * layout.row_stride)
        .flat_map(|row| rope_apply_ref(row, layout, &cos, &sin))
        .collect()
}

fn check<T: Float>(
    gpu: &Gpu,
    layout: RopeLayout,
    freqs: &HostFreqs,
    pos: Positions,
    rows: usize,
    seed: u64,
) {
    let dev_freqs = freqs.upload(gpu);
    let n = rows * pos.seq * layout.row_stride;
    let (mut x, xh) = upload_as::<T>(gpu, &random(n, seed, 1.0));
    rope(gpu, &mut x, layout, &dev_freqs, pos).unwrap();
    let fwd = rel_error(
        &download_f32(gpu, &x),
        &reference(&xh, layout, freqs, pos, 1.0),
    );
    let (mut dx, dxh) = upload_as::<T>(gpu, &random(n, seed + 1, 1.0));
    rope_backward(gpu, &mut dx, layout, &dev_freqs, pos).unwrap();
    let bwd = rel_error(
        &download_f32(gpu, &dx),
        &reference(&dxh, layout, freqs, pos, -1.0),
    );
    eprintln!(
        "rope {} {layout:?} long={} {pos:?} x{rows}: forward {fwd:.2e}, backward {bwd:.2e} (tol {:.0e})",
        T::SUFFIX,
        freqs.long.as_ref().is_some_and(|(_, o)| pos.offset + pos.seq > *o),
        tol::<T>()
    );
    assert!(
        fwd <= tol::<T>() && bwd <= tol::<T>(),
        "{} {pos:?}",
        T::SUFFIX
    );
}

fn all_types(
    gpu: &Gpu,
    layout: RopeLayout,
    freqs: &HostFreqs,
    pos: Positions,
    rows: usize,
    seed: u64,
) {
    check::<f32>(gpu, layout, freqs, pos, rows, seed);
    check::<bf16>(gpu, layout, freqs, pos, rows, seed);
    check::<f16>(gpu, layout, freqs, pos, rows, seed);
}

#[test]
fn rope_matches_the_cpu_with_default_frequencies() {
    let Some(gpu) = test_gpu("gpu::rope::rope_matches_the_cpu_with_default_frequencies") else {
        return;
    };
    // SmolLM2's fused qkv row: 9 q heads and 3 k heads rotate, 3 v heads pass.
    let qkv = RopeLayout {
        row_stride: 15 * 64,
        heads: 12,
        head_dim: 64,
        rotary_dim: 64,
    };
    let freqs = HostFreqs::new(64, None);
    all_types(&gpu, qkv, &freqs, Positions { seq: 40, offset: 0 }, 3, 300);
    all_types(
        &gpu,
        qkv,
        &freqs,
        Positions {
            seq: 1,
            offset: 517,
        },
        1,
        310,
    );
    // Partial rotary (Phi-4-mini: 3/4 of each head), a row wider than its heads.
    let partial = RopeLayout {
        row_stride: 4 * 128 + 8,
        heads: 4,
        head_dim: 128,
        rotary_dim: 96,
    };
    let freqs = HostFreqs::new(96, None);
    all_types(
        &gpu,
        partial,
        &freqs,
        Positions { seq: 24, offset: 5 },
        2,
        320,
    );
    // An odd row stride: the one-element path.
    let odd = RopeLayout {
        row_stride: 4 * 64 + 3,
        heads: 4,
        head_dim: 64,
        rotary_dim: 64,
    };
    let freqs = HostFreqs::new(64, None);
    all_types(&gpu, odd, &freqs, Positions { seq: 7, offset: 2 }, 3, 330);
}

#[test]
fn longrope_picks_its_factor_set_by_length_and_scales() {
    let Some(gpu) = test_gpu("gpu::rope::longrope_picks_its_factor_set_by_length_and_scales")
    else {
        return;
    };
    // Phi-3.5-mini's heads: 32 q and 32 k of 96 (q | k | v rows), an original context of 64 here.
    let qkv = RopeLayout {
        row_stride: 96 * 96,
        heads: 64,
        head_dim: 96,
        rotary_dim: 96,
    };
    let freqs = HostFreqs::new(96, Some((400, 64, 1.19)));
    // Short: a batch of rows within the original context.
    all_types(&gpu, qkv, &freqs, Positions { seq: 48, offset: 0 }, 2, 410);
    // Long: a decode step past it, and a prefill chunk far out (angles ~1e4 rad).
    all_types(
        &gpu,
        qkv,
        &freqs,
        Positions {
            seq: 1,
            offset: 100,
        },
        1,
        420,
    );
    all_types(
        &gpu,
        qkv,
        &freqs,
        Positions {
            seq: 16,
            offset: 131_000,
        },
        1,
        430,
    );
}

/// `rope_append`: the rotation of a step of one sequence and its keys and values written to a KV cache in one
/// launch is `rope` at that offset bit for bit, with the cache rows those of the rotated row; LongRoPE's set short
/// up to the original context (64 here) and long past it. Prefills of 5 rows (the 16-byte path) and decode steps,
/// some with an odd row stride (one element at a time).
#[test]
fn rope_append_rotates_and_fills_the_cache_as_rope_then_copies() {
    let Some(gpu) =
        test_gpu("gpu::rope::rope_append_rotates_and_fills_the_cache_as_rope_then_copies")
    else {
        return;
    };
    // Phi-3.5-mini's 32 q heads of 96 and 8 kv heads: the q | k | v row, rotated over q and k.
    let (head_dim, kv_w) = (96, 8 * 96);
    let fused = |row_stride| RopeLayout {
        row_stride,
        heads: 40,
        head_dim,
        rotary_dim: head_dim,
    };
    let host = HostFreqs::new(head_dim, Some((400, 64, 1.19)));
    let freqs = host.upload(&gpu);
    let capacity = 600;
    for (past, tokens, row_stride) in [
        (0, 5, 48 * 96),
        (58, 5, 48 * 96),
        (63, 1, 48 * 96 + 1),
        (64, 1, 48 * 96),
        (500, 1, 48 * 96 + 1),
    ] {
        let layout = fused(row_stride);
        let x = random(tokens * row_stride, 440 + past as u64, 1.0);
        let (mut by_rope, _) = upload_as::<bf16>(&gpu, &x);
        rope(
            &gpu,
            &mut by_rope,
            layout,
            &freqs,
            Positions {
                seq: tokens,
                offset: past,
            },
        )
        .unwrap();
        let rotated = download_f32(&gpu, &by_rope);
        let (mut x_dev, _) = upload_as::<bf16>(&gpu, &x);
        let (mut keys, _) = upload_as::<bf16>(&gpu, &vec![0.5; capacity * kv_w]);
        let (mut values, _) = upload_as::<bf16>(&gpu, &vec![0.5; capacity * kv_w]);
        let cache = CacheAppend {
            keys: &mut keys,
            values: &mut values,
            k_column: 32 * head_dim,
            width: kv_w,
        };
        rope_append(&gpu, &mut x_dev, layout, &freqs, past, cache).unwrap();
        let what = format!("{tokens} tokens after {past}, row stride {row_stride}");
        assert_eq!(download_f32(&gpu, &x_dev), rotated, "{what}: rows");
        let mut want_k = vec![0.5; capacity * kv_w];
        let mut want_v = want_k.clone();
        for (t, row) in rotated.chunks(row_stride).enumerate() {
            let at = (past + t) * kv_w;
            want_k[at..at + kv_w].copy_from_slice(&row[32 * head_dim..32 * head_dim + kv_w]);
            want_v[at..at + kv_w]
                .copy_from_slice(&row[32 * head_dim + kv_w..32 * head_dim + 2 * kv_w]);
        }
        assert_eq!(download_f32(&gpu, &keys), want_k, "{what}: keys");
        assert_eq!(download_f32(&gpu, &values), want_v, "{what}: values");
    }
}
