//! attention.cu against the f64 references `cpu::attention_ref` (forward) and `cpu::attention_backward_ref`
//! (log-sum-exp, key mask, dq/dk/dv): prefill tiles, the split-KV decode path, GQA, a KV-cache offset, sliding
//! windows, fused-qkv strides, odd lengths (1, 7, 130, 1000), bf16 and f16, head_dim 64/96/128; a captured
//! decode step's rotation and cache append against `cpu::rope_apply_ref`.

use olive_kernels::cpu::{
    attention_backward_ref, attention_ref, rope_apply_ref, rope_tables, AttentionBatch,
    AttentionDims, RopeLayout,
};
use olive_kernels::cuda::attention::{
    backward, decode_part_len, decode_scratch_len, forward, forward_after, AttentionShape, Grads,
    Inputs, Operand, Rows, Step,
};
use olive_kernels::cuda::float::Half;
use olive_kernels::cuda::rope::RopeFreqs;
use olive_kernels::cuda::{bf16, f16, test_gpu, CachedLen, CudaSlice, Gpu};

use super::common::{random, rel_error};
use super::rope::HostFreqs;

/// bf16 operands (8-bit mantissa), probabilities rounded to bf16 before P·V, fp32 accumulation, a bf16 output:
/// a few 2⁻⁹ relative roundings per element.
const BF16_TOL: f64 = 1e-2;
/// The same with f16's 11-bit mantissa.
const F16_TOL: f64 = 2e-3;
/// Gradients also round P, dS and dO to 16 bits before their products and sum dK/dV over up to 1000 queries.
const BF16_GRAD_TOL: f64 = 3e-2;
/// The same with f16.
const F16_GRAD_TOL: f64 = 5e-3;
/// log-sum-exp in fp32 from fp32-accumulated scores of 16-bit operands (absolute, on values of order log kv_len).
const LSE_ABS_TOL: f32 = 2e-3;

/// A 16-bit float the kernels take, with its tolerances.
pub(super) trait Dtype: Half {
    const TOL: f64;
    const GRAD_TOL: f64;
}

impl Dtype for bf16 {
    const TOL: f64 = BF16_TOL;
    const GRAD_TOL: f64 = BF16_GRAD_TOL;
}

impl Dtype for f16 {
    const TOL: f64 = F16_TOL;
    const GRAD_TOL: f64 = F16_GRAD_TOL;
}

/// Random values in [-1, 1) rounded to `T`: the 16-bit copy and the f32 values the reference takes.
pub(super) fn rounded<T: Dtype>(n: usize, seed: u64) -> (Vec<T>, Vec<f32>) {
    let h: Vec<T> = random(n, seed, 1.0).into_iter().map(T::from_f32).collect();
    let f = h.iter().map(|x| x.to_f32()).collect();
    (h, f)
}

pub(super) fn widen<T: Dtype>(gpu: &Gpu, dev: &CudaSlice<T>) -> Vec<f32> {
    gpu.download(dev)
        .unwrap()
        .into_iter()
        .map(T::to_f32)
        .collect()
}

/// One problem: (batch, tokens, kv_len, heads, kv_heads, window).
type Case = (usize, usize, usize, usize, usize, Option<usize>);

/// Columns of k (and v) of head group g in a [rows, kv_heads·head_dim] matrix, taken from a fused qkv matrix.
fn columns(m: &[f32], width: usize, from: usize, n: usize) -> Vec<f32> {
    m.chunks(width)
        .flat_map(|r| r[from..from + n].to_vec())
        .collect()
}

/// Forward of every case on the GPU against `attention_ref` per sequence; q, k, v live in one fused
/// [rows, (heads + 2·kv_heads)·head_dim] buffer when `fused`, with new tokens' keys at the end of the cache
/// (so k/v rows are kv_len per sequence and q rows tokens per sequence: two buffers then).
fn check_forward<T: Dtype>(gpu: &Gpu, case: Case, head_dim: usize, seed: u64) {
    let (batch, tokens, kv_len, heads, kv_heads, window) = case;
    let (qw, kvw) = (heads * head_dim, kv_heads * head_dim);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let fused = tokens == kv_len;
    let (q_h, q_f, kv_h, kv_f, q_rows, k_rows, v_rows);
    if fused {
        // One qkv buffer [batch·tokens, qw + 2·kvw], as the trainer's fused projection writes it.
        let width = qw + 2 * kvw;
        (q_h, q_f) = rounded::<T>(batch * tokens * width, seed);
        (kv_h, kv_f) = (Vec::new(), Vec::new());
        q_rows = Rows {
            offset: 0,
            stride: width,
        };
        k_rows = Rows {
            offset: qw,
            stride: width,
        };
        v_rows = Rows {
            offset: qw + kvw,
            stride: width,
        };
    } else {
        (q_h, q_f) = rounded::<T>(batch * tokens * qw, seed);
        // k and v side by side in one [batch·kv_len, 2·kvw] cache buffer.
        (kv_h, kv_f) = rounded::<T>(batch * kv_len * 2 * kvw, seed + 1);
        q_rows = Rows::packed(qw);
        k_rows = Rows::packed(2 * kvw);
        v_rows = Rows {
            offset: kvw,
            stride: 2 * kvw,
        };
    }
    let q_dev = gpu.upload(&q_h).unwrap();
    let kv_dev = if fused {
        None
    } else {
        Some(gpu.upload(&kv_h).unwrap())
    };
    let kv_buf = kv_dev.as_ref().unwrap_or(&q_dev);
    let inputs = Inputs {
        q: Operand {
            data: &q_dev,
            rows: q_rows,
        },
        k: Operand {
            data: kv_buf,
            rows: k_rows,
        },
        v: Operand {
            data: kv_buf,
            rows: v_rows,
        },
        key_mask: None,
    };
    let shape = AttentionShape {
        batch,
        tokens,
        kv_len,
        heads,
        kv_heads,
        head_dim,
        window,
        scale,
    };
    let mut out = gpu
        .upload(&vec![T::from_f32(f32::NAN); batch * tokens * qw])
        .unwrap();
    forward(gpu, &shape, &inputs, (&mut out, Rows::packed(qw)), None).unwrap();
    let got = widen(gpu, &out);
    let mut want = Vec::with_capacity(got.len());
    let kv_src = if fused { &q_f } else { &kv_f };
    let (kv_width, kv_rows_per_seq) = if fused {
        (qw + 2 * kvw, tokens)
    } else {
        (2 * kvw, kv_len)
    };
    for b in 0..batch {
        let rows = &kv_src[b * kv_rows_per_seq * kv_width..(b + 1) * kv_rows_per_seq * kv_width];
        let k = columns(rows, kv_width, k_rows.offset, kvw);
        let v = columns(rows, kv_width, v_rows.offset, kvw);
        let q = &q_f[b * tokens * q_rows.stride..(b + 1) * tokens * q_rows.stride];
        let dims = AttentionDims {
            heads,
            kv_heads,
            head_dim,
            q_stride: q_rows.stride,
        };
        want.extend(attention_ref(q, &k, &v, dims, window, scale, tokens));
    }
    let e = rel_error(&got, &want);
    assert!(
        e <= T::TOL,
        "{} head_dim {head_dim} case {case:?}: relative error {e}",
        T::SUFFIX
    );
}

#[test]
fn forward_matches_reference_over_lengths_heads_and_dtypes() {
    let Some(gpu) =
        test_gpu("gpu::attention::forward_matches_reference_over_lengths_heads_and_dtypes")
    else {
        return;
    };
    let cases: [Case; 9] = [
        (1, 1, 1, 4, 2, None),            // one token
        (1, 7, 7, 4, 4, None),            // MHA, a partial tile
        (2, 130, 130, 6, 2, None),        // GQA, two sequences, three query tiles
        (1, 1000, 1000, 4, 1, Some(256)), // MQA, sliding window
        (1, 1, 1000, 8, 2, None),         // decode over a cache: split-KV path
        (2, 5, 300, 12, 4, Some(100)),    // 15 rows per KV head: split-KV path, windowed
        (1, 20, 530, 4, 2, None),         // prefill after a cache: tiled with an offset
        (3, 1, 77, 9, 3, None),           // SmolLM2's heads, decode, three sequences
        (4, 1, 9000, 16, 8, None),        // decode, several 128-key tiles a split (under 281 SMs)
    ];
    for (i, case) in cases.into_iter().enumerate() {
        for head_dim in [64, 96, 128] {
            let seed = 100 + i as u64 * 10 + head_dim as u64;
            check_forward::<bf16>(&gpu, case, head_dim, seed);
            check_forward::<f16>(&gpu, case, head_dim, seed);
        }
    }
}

/// Forward with lse, then backward, against `attention_backward_ref`: out, lse, dq, dk, dv. The gradients go to
/// one fused [rows, width] f32 buffer (dq, dk, dv side by side) poisoned with NaN.
fn check_backward<T: Dtype>(
    gpu: &Gpu,
    case: Case,
    head_dim: usize,
    mask: Option<&[u8]>,
    seed: u64,
) {
    let (batch, tokens, kv_len, heads, kv_heads, window) = case;
    let (qw, kvw) = (heads * head_dim, kv_heads * head_dim);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let (q_h, q_f) = rounded::<T>(batch * tokens * qw, seed);
    let (k_h, k_f) = rounded::<T>(batch * kv_len * kvw, seed + 1);
    let (v_h, v_f) = rounded::<T>(batch * kv_len * kvw, seed + 2);
    let (do_h, do_f) = rounded::<T>(batch * tokens * qw, seed + 3);
    let (q_d, k_d, v_d, do_d) = (
        gpu.upload(&q_h).unwrap(),
        gpu.upload(&k_h).unwrap(),
        gpu.upload(&v_h).unwrap(),
        gpu.upload(&do_h).unwrap(),
    );
    let mask_d = mask.map(|m| gpu.upload(m).unwrap());
    let inputs = Inputs {
        q: Operand {
            data: &q_d,
            rows: Rows::packed(qw),
        },
        k: Operand {
            data: &k_d,
            rows: Rows::packed(kvw),
        },
        v: Operand {
            data: &v_d,
            rows: Rows::packed(kvw),
        },
        key_mask: mask_d.as_ref(),
    };
    let shape = AttentionShape {
        batch,
        tokens,
        kv_len,
        heads,
        kv_heads,
        head_dim,
        window,
        scale,
    };
    let mut out = gpu
        .upload(&vec![T::from_f32(f32::NAN); batch * tokens * qw])
        .unwrap();
    let mut lse = gpu.upload(&vec![f32::NAN; batch * heads * tokens]).unwrap();
    forward(
        gpu,
        &shape,
        &inputs,
        (&mut out, Rows::packed(qw)),
        Some(&mut lse),
    )
    .unwrap();
    // dq: [batch·tokens, qw] in rows of qw + 8 from offset 8.
    let mut dq = gpu
        .upload(&vec![f32::NAN; batch * tokens * (qw + 8)])
        .unwrap();
    let mut dkv = gpu
        .upload(&vec![f32::NAN; batch * kv_len * 2 * kvw])
        .unwrap();
    // dk goes to the left half of dkv's rows (the right half must stay NaN), dv to its own buffer.
    let mut dv = gpu.upload(&vec![f32::NAN; batch * kv_len * kvw]).unwrap();
    backward(
        gpu,
        &shape,
        &inputs,
        Operand {
            data: &out,
            rows: Rows::packed(qw),
        },
        Operand {
            data: &do_d,
            rows: Rows::packed(qw),
        },
        &lse,
        Grads {
            dq: (
                &mut dq,
                Rows {
                    offset: 8,
                    stride: qw + 8,
                },
            ),
            dk: (&mut dkv, Rows::packed(2 * kvw)),
            dv: (&mut dv, Rows::packed(kvw)),
        },
    )
    .unwrap();
    let dims = AttentionDims {
        heads,
        kv_heads,
        head_dim,
        q_stride: qw,
    };
    let batch_shape = AttentionBatch {
        batch,
        tokens,
        kv_len,
        window,
        scale,
        key_mask: mask,
    };
    let want = attention_backward_ref(&q_f, &k_f, &v_f, dims, batch_shape, &do_f);
    let what = format!(
        "{} head_dim {head_dim} case {case:?} mask {}",
        T::SUFFIX,
        mask.is_some()
    );
    let e = rel_error(&widen(gpu, &out), &want.out);
    assert!(e <= T::TOL, "{what}: out error {e}");
    let lse = gpu.download(&lse).unwrap();
    for (i, (g, w)) in lse.iter().zip(&want.lse).enumerate() {
        let ok = if w.is_finite() {
            (g - w).abs() <= LSE_ABS_TOL
        } else {
            *g == f32::NEG_INFINITY
        };
        assert!(ok, "{what}: lse[{i}] = {g}, expected {w}");
    }
    let dq = gpu.download(&dq).unwrap();
    let dq: Vec<f32> = dq.chunks(qw + 8).flat_map(|r| r[8..].to_vec()).collect();
    let dkv = gpu.download(&dkv).unwrap();
    // dk wrote the left half of each row; the right half stays NaN.
    assert!(
        dkv.chunks(2 * kvw)
            .all(|r| r[kvw..].iter().all(|x| x.is_nan())),
        "{what}: dk wrote outside its rows"
    );
    let dk = columns(&dkv, 2 * kvw, 0, kvw);
    let dv = gpu.download(&dv).unwrap();
    for (name, got, want) in [
        ("dq", dq, &want.dq),
        ("dk", dk, &want.dk),
        ("dv", dv, &want.dv),
    ] {
        let e = rel_error(&got, want);
        assert!(e <= T::GRAD_TOL, "{what}: {name} error {e}");
    }
}

#[test]
fn backward_and_lse_match_reference_with_gqa_mask_window_and_cache_offset() {
    let Some(gpu) = test_gpu(
        "gpu::attention::backward_and_lse_match_reference_with_gqa_mask_window_and_cache_offset",
    ) else {
        return;
    };
    // Two right-padded sequences of 130 (the second hides its last 30 keys) and one left-padded.
    let mut mask = vec![1u8; 2 * 130];
    mask[130 + 100..].fill(0);
    mask[..3].fill(0);
    let cases: [(Case, usize, Option<&[u8]>); 6] = [
        ((2, 130, 130, 6, 2, None), 64, Some(&mask)),
        ((1, 7, 7, 4, 4, None), 128, None),
        ((1, 100, 100, 4, 2, Some(32)), 96, None),
        ((1, 20, 90, 4, 1, None), 64, None), // queries after a cache
        ((1, 1, 3, 2, 1, None), 128, None), // one query (with one key its gradients vanish: dS = dP − rowsum)
        ((1, 1, 300, 8, 2, None), 64, None), // decode forward (split-KV lse), then backward
    ];
    for (i, (case, head_dim, mask)) in cases.into_iter().enumerate() {
        check_backward::<bf16>(&gpu, case, head_dim, mask, 500 + i as u64);
        check_backward::<f16>(&gpu, case, head_dim, mask, 600 + i as u64);
    }
}

#[test]
fn forward_with_key_mask_matches_reference_on_both_paths() {
    let Some(gpu) =
        test_gpu("gpu::attention::forward_with_key_mask_matches_reference_on_both_paths")
    else {
        return;
    };
    // Decode over a padded cache (keys 0..40 hidden in sequence 0) through the split-KV path; the tiled path is
    // covered with a mask by the backward test.
    let (batch, kv_len) = (2, 700);
    let mut mask = vec![1u8; batch * kv_len];
    mask[..40].fill(0);
    mask[kv_len + 650..kv_len + 660].fill(0);
    check_backward::<bf16>(&gpu, (batch, 1, kv_len, 8, 2, None), 128, Some(&mask), 900);
}

#[test]
fn refuses_shapes_it_cannot_take() {
    let Some(gpu) = test_gpu("gpu::attention::refuses_shapes_it_cannot_take") else {
        return;
    };
    let q = gpu.upload(&vec![bf16::ZERO; 8 * 80]).unwrap();
    let mut out = gpu.upload(&vec![bf16::ZERO; 8 * 80]).unwrap();
    let op = Operand {
        data: &q,
        rows: Rows::packed(80),
    };
    let inputs = Inputs {
        q: op,
        k: op,
        v: op,
        key_mask: None,
    };
    let mut shape = AttentionShape {
        batch: 1,
        tokens: 8,
        kv_len: 8,
        heads: 1,
        kv_heads: 1,
        head_dim: 80,
        window: None,
        scale: 0.1,
    };
    let err = forward(&gpu, &shape, &inputs, (&mut out, Rows::packed(80)), None).unwrap_err();
    assert!(err.to_string().contains("head_dim 80"), "{err}");
    shape.head_dim = 64;
    shape.tokens = 9;
    let err = forward(&gpu, &shape, &inputs, (&mut out, Rows::packed(80)), None).unwrap_err();
    assert!(err.to_string().contains("9 queries over 8 keys"), "{err}");
}

/// A captured decode step (`forward_after`): the KV length read from device memory, the splits sized for a cache
/// of `capacity` positions, the live keys spread over as many as they fill, the rest writing nothing; the step's
/// rows in one unrotated qkv row, rotated by the kernel (`rotary_dim` of each head; LongRoPE's sets, the long one
/// past 64 positions, and its attention factor) and its keys and values appended to the cache. Against rope then
/// `attention_ref` on the CPU over the live keys, and the cache's rows against the rotated ones (rows past the step
/// untouched), twice through the same scratch, then through one of 3 splits (`decode_scratch_len`: the caller's
/// choice of splits).
/// (tokens, keys before the step, capacity, heads, kv_heads, window).
fn check_after<T: Dtype>(gpu: &Gpu, case: Case, head_dim: usize, rotary_dim: usize, seed: u64) {
    let (tokens, past, capacity, heads, kv_heads, window) = case;
    let (qw, kvw) = (heads * head_dim, kv_heads * head_dim);
    let width = qw + 2 * kvw;
    let kv_len = past + tokens;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let (qkv_h, qkv_f) = rounded::<T>(tokens * width, seed);
    // The cache: the keys and values before the step random, the rest NaN (the step's rows are the kernel's to write).
    let (k_live, k_f) = rounded::<T>(past * kvw, seed + 1);
    let (v_live, v_f) = rounded::<T>(past * kvw, seed + 2);
    let cache = |live: Vec<T>| {
        let mut rows = live;
        rows.resize(capacity * kvw, T::from_f32(f32::NAN));
        gpu.upload(&rows).unwrap()
    };
    let (qkv_dev, mut k_dev, mut v_dev) =
        (gpu.upload(&qkv_h).unwrap(), cache(k_live), cache(v_live));
    let host = HostFreqs::new(rotary_dim, Some((seed, 64, 1.19)));
    let freqs = host.upload(gpu);
    // The step's rows rotated on the CPU and rounded to T, as the kernel keeps them.
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    rope_tables(
        host.inv_freq(kv_len),
        past,
        tokens,
        host.scaling,
        &mut cos,
        &mut sin,
    );
    let layout = RopeLayout {
        row_stride: width,
        heads: heads + kv_heads,
        head_dim,
        rotary_dim,
    };
    let rotated: Vec<f32> = rope_apply_ref(&qkv_f, layout, &cos, &sin)
        .into_iter()
        .map(|x| T::from_f32(x).to_f32())
        .collect();
    let (new_k, new_v) = (
        columns(&rotated, width, qw, kvw),
        columns(&qkv_f, width, qw + kvw, kvw),
    );
    let (k_all, v_all) = (
        [k_f.as_slice(), &new_k].concat(),
        [v_f.as_slice(), &new_v].concat(),
    );
    let shape = AttentionShape {
        batch: 1,
        tokens,
        kv_len: capacity,
        heads,
        kv_heads,
        head_dim,
        window,
        scale,
    };
    let len = gpu.upload(&[past as u32]).unwrap();
    let past_dev = CachedLen {
        len: &len.slice(..),
        max: capacity - tokens,
    };
    let mut default = gpu.alloc::<f32>(decode_part_len(gpu, &shape)).unwrap();
    let mut three = gpu.alloc::<f32>(decode_scratch_len(&shape, 3)).unwrap();
    let dims = AttentionDims {
        heads,
        kv_heads,
        head_dim,
        q_stride: width,
    };
    let want = attention_ref(&rotated, &k_all, &v_all, dims, window, scale, tokens);
    let what = format!(
        "{} head_dim {head_dim} rotary {rotary_dim} after {case:?}",
        T::SUFFIX
    );
    for call in 0..3 {
        let part = if call < 2 { &mut default } else { &mut three };
        let mut out = gpu
            .upload(&vec![T::from_f32(f32::NAN); tokens * qw])
            .unwrap();
        let step = Step {
            qkv: Operand {
                data: &qkv_dev,
                rows: Rows::packed(width),
            },
            k_column: qw,
            keys: &mut k_dev,
            values: &mut v_dev,
            freqs: &freqs,
            rotary_dim,
        };
        forward_after(
            gpu,
            &shape,
            step,
            (&mut out, Rows::packed(qw)),
            past_dev,
            part,
        )
        .unwrap();
        let e = rel_error(&widen(gpu, &out), &want);
        assert!(e <= T::TOL, "{what}, call {call}: relative error {e}");
        let (keys, values) = (widen(gpu, &k_dev), widen(gpu, &v_dev));
        let e = rel_error(&keys[past * kvw..kv_len * kvw], &new_k);
        assert!(
            e <= T::TOL,
            "{what}, call {call}: the step's keys, relative error {e}"
        );
        assert_eq!(keys[..past * kvw], k_f, "{what}: the keys before the step");
        assert_eq!(values[..kv_len * kvw], v_all, "{what}: the values");
        assert!(
            keys[kv_len * kvw..]
                .iter()
                .chain(&values[kv_len * kvw..])
                .all(|x| x.is_nan()),
            "{what}: the cache past the step written"
        );
    }
}

#[test]
fn decode_after_a_cache_length_on_the_device_matches_reference() {
    let Some(gpu) =
        test_gpu("gpu::attention::decode_after_a_cache_length_on_the_device_matches_reference")
    else {
        return;
    };
    // Splits as `decode_splits` makes them on an H200 (132 multiprocessors).
    let cases: [Case; 10] = [
        (1, 0, 64, 4, 2, None), // the first position of a small cache: one split, written directly
        (1, 299, 9000, 8, 2, None), // 3 live splits of 71: combined
        (1, 600, 1000, 4, 4, Some(300)), // the window's 300 keys in 3 splits from key 301
        (1, 5000, 8000, 4, 4, None), // 40 live splits of 128 keys of 63: combined
        (1, 2800, 3000, 3, 3, None), // 22 live splits of 24: combined
        (1, 8999, 9000, 9, 3, None), // the cache's last position
        (4, 126, 1000, 8, 2, None), // 16 rows a KV head, the step's keys across two splits
        (4, 126, 1000, 8, 2, Some(50)), // 16 rows a KV head, windowed: one split from key 77, written directly
        (4, 600, 1000, 8, 2, Some(255)), // the window's 258 keys in 3 splits, the step's keys across two
        (1, 20000, 40000, 32, 8, None), // Llama-3-8B's heads, 16 live splits of 1280 keys: combined
    ];
    for (i, case) in cases.into_iter().enumerate() {
        for head_dim in [64, 128] {
            let seed = 1000 + i as u64 * 10 + head_dim as u64;
            // Whole heads; Phi-2's half; 40, whose halves are not whole 16-byte pieces.
            let rotary_dim = [head_dim, head_dim / 2, 40][i % 3];
            check_after::<bf16>(&gpu, case, head_dim, rotary_dim, seed);
            check_after::<f16>(&gpu, case, head_dim, rotary_dim, seed);
        }
    }
    // Refused: kv_len other than the bound, a scratch of another size, a rotary_dim the frequencies do not make.
    let qkv = gpu.upload(&vec![bf16::ZERO; 3 * 64]).unwrap();
    let mut keys = gpu.upload(&vec![bf16::ZERO; 64 * 64]).unwrap();
    let mut values = keys.clone();
    let mut out = gpu.upload(&[bf16::ZERO; 64]).unwrap();
    let freqs = HostFreqs::new(64, None).upload(&gpu);
    // A step of one 64-wide head each of q, k and v.
    fn step<'a>(
        qkv: &'a CudaSlice<bf16>,
        cache: (&'a mut CudaSlice<bf16>, &'a mut CudaSlice<bf16>),
        freqs: &'a RopeFreqs,
        rotary_dim: usize,
    ) -> Step<'a, bf16> {
        Step {
            qkv: Operand {
                data: qkv,
                rows: Rows::packed(3 * 64),
            },
            k_column: 64,
            keys: cache.0,
            values: cache.1,
            freqs,
            rotary_dim,
        }
    }
    let shape = AttentionShape {
        batch: 1,
        tokens: 1,
        kv_len: 64,
        heads: 1,
        kv_heads: 1,
        head_dim: 64,
        window: None,
        scale: 0.1,
    };
    let len = gpu.upload(&[0u32]).unwrap();
    let past = CachedLen {
        len: &len.slice(..),
        max: 10,
    };
    let mut part = gpu.alloc::<f32>(decode_part_len(&gpu, &shape)).unwrap();
    let out_rows = (&mut out, Rows::packed(64));
    let s64 = step(&qkv, (&mut keys, &mut values), &freqs, 64);
    let err = forward_after(&gpu, &shape, s64, out_rows, past, &mut part).unwrap_err();
    assert!(err.to_string().contains("kv_len 64 for 10 + 1"), "{err}");
    let past = CachedLen {
        len: &len.slice(..),
        max: 63,
    };
    let out_rows = (&mut out, Rows::packed(64));
    let s32 = step(&qkv, (&mut keys, &mut values), &freqs, 32);
    let err = forward_after(&gpu, &shape, s32, out_rows, past, &mut part).unwrap_err();
    assert!(err.to_string().contains("rotary_dim 32"), "{err}");
    let mut small = gpu.alloc::<f32>(decode_part_len(&gpu, &shape) - 1).unwrap();
    let out_rows = (&mut out, Rows::packed(64));
    let s64 = step(&qkv, (&mut keys, &mut values), &freqs, 64);
    let err = forward_after(&gpu, &shape, s64, out_rows, past, &mut small).unwrap_err();
    assert!(err.to_string().contains("decode scratch"), "{err}");
}
