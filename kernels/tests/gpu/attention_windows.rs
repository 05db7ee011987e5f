//! attention_windows_f32 against its CPU reference: `rope_apply` on the q and k heads of each fused qkv row, then
//! `attention` per window (f32 both sides, different summation order).

use olive_kernels::cpu::{attention, rope_apply, rope_tables, AttentionDims, RopeLayout};
use olive_kernels::cuda::attention_windows::{attention_windows_f32, WindowShape};
use olive_kernels::cuda::test_gpu;

use super::common::{random, rel_error};

/// f32 on both sides, summed in different orders (the kernel's online softmax, the CPU's blocked products): a few
/// float roundings apart, far below this.
const F32_REL: f64 = 1e-5;

/// The CPU reference of one shape on qkv: [windows · seq, width].
fn reference(s: &WindowShape, qkv: &[f32], cos: &[f32], sin: &[f32]) -> Vec<f32> {
    let (q, kv) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let width = q + 2 * kv;
    let layout = RopeLayout {
        row_stride: width,
        heads: s.heads + s.kv_heads,
        head_dim: s.head_dim,
        rotary_dim: s.rotary_dim,
    };
    let dims = AttentionDims {
        heads: s.heads,
        kv_heads: s.kv_heads,
        head_dim: s.head_dim,
        q_stride: width,
    };
    let mut rotated = qkv.to_vec();
    let mut out = vec![0f32; s.windows * s.seq * q];
    for (w, o) in rotated
        .chunks_exact_mut(s.seq * width)
        .zip(out.chunks_exact_mut(s.seq * q))
    {
        rope_apply(w, layout, cos, sin);
        let rows = w.chunks_exact(width);
        let k: Vec<f32> = rows.clone().flat_map(|r| r[q..q + kv].to_vec()).collect();
        let v: Vec<f32> = rows.flat_map(|r| r[q + kv..].to_vec()).collect();
        attention(w, &k, &v, dims, s.window, s.scale, o);
    }
    out
}

#[test]
fn windows_match_rope_then_attention_on_the_cpu() {
    let Some(gpu) =
        test_gpu("gpu::attention_windows::windows_match_rope_then_attention_on_the_cpu")
    else {
        return;
    };
    // (windows, seq, heads, kv_heads, head_dim, rotary_dim, window)
    let cases = [
        (2, 64, 4, 4, 64, 64, None),       // MHA, whole tiles
        (3, 200, 6, 2, 96, 96, None),      // GQA, a partial last tile (Phi-3's head_dim)
        (1, 130, 8, 2, 128, 64, Some(50)), // partial rotary, sliding window shorter than a tile span
        (2, 37, 9, 3, 64, 64, Some(1000)), // SmolLM2's heads, a window past the sequence
        (1, 48, 2, 1, 256, 256, None),     // the largest head_dim
        (1, 1, 4, 2, 80, 80, None),        // one token, head_dim not a multiple of 32
    ];
    for (i, (windows, seq, heads, kv_heads, head_dim, rotary_dim, window)) in
        cases.into_iter().enumerate()
    {
        let shape = WindowShape {
            windows,
            seq,
            heads,
            kv_heads,
            head_dim,
            rotary_dim,
            window,
            scale: (head_dim as f32).powf(-0.5),
        };
        let width = (heads + 2 * kv_heads) * head_dim;
        let qkv = random(windows * seq * width, 500 + i as u64, 2.0);
        let inv_freq: Vec<f32> = (0..rotary_dim / 2)
            .map(|f| 10000f32.powf(-2.0 * f as f32 / rotary_dim as f32))
            .collect();
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        rope_tables(&inv_freq, 0, seq, 1.0, &mut cos, &mut sin);
        let want = reference(&shape, &qkv, &cos, &sin);
        let d_qkv = gpu.upload(&qkv).expect("upload qkv");
        let (d_cos, d_sin) = (
            gpu.upload(&cos).expect("cos"),
            gpu.upload(&sin).expect("sin"),
        );
        let mut d_out = gpu.upload(&vec![f32::NAN; want.len()]).expect("out");
        attention_windows_f32(&gpu, &shape, &d_qkv, (&d_cos, &d_sin), &mut d_out)
            .expect("attention_windows_f32");
        let got = gpu.download(&d_out).expect("download");
        let err = rel_error(&got, &want);
        assert!(
            err <= F32_REL,
            "case {i} {:?}: rel error {err:.2e} > {F32_REL:.0e}",
            shape
        );
    }
}

#[test]
fn refuses_shapes_it_cannot_take() {
    let Some(gpu) = test_gpu("gpu::attention_windows::refuses_shapes_it_cannot_take") else {
        return;
    };
    let shape = WindowShape {
        windows: 1,
        seq: 4,
        heads: 3,
        kv_heads: 2,
        head_dim: 64,
        rotary_dim: 64,
        window: None,
        scale: 0.125,
    };
    let buf = gpu.upload(&vec![0f32; 4 * 7 * 64]).expect("upload");
    let tab = gpu.upload(&vec![0f32; 4 * 32]).expect("upload");
    let mut out = gpu.upload(&vec![0f32; 4 * 3 * 64]).expect("upload");
    let err = attention_windows_f32(&gpu, &shape, &buf, (&tab, &tab), &mut out)
        .expect_err("kv_heads 2 of 3 heads");
    assert!(err.to_string().contains("kv_heads"), "{err}");
    let big = WindowShape {
        heads: 2,
        kv_heads: 1,
        head_dim: 512,
        rotary_dim: 512,
        ..shape
    };
    let err =
        attention_windows_f32(&gpu, &big, &buf, (&tab, &tab), &mut out).expect_err("head_dim 512");
    assert!(err.to_string().contains("head_dim"), "{err}");
}
