//! Decoding from int4 weights (`QuantizedWeights::Int4`: the CPU int4 kernels, activations quantized to int8 per
//! weight block as ONNX Runtime's MatMulNBits accuracy level 4) against the same checkpoint dequantized at load:
//! tiny models whose shapes the kernels take (inputs and groups multiples of 32), quantized in-test to AutoAWQ
//! GEMM and to GPTQ v1 with an act-order g_idx, separate and fused (Phi-3) projections; and the tiny models of
//! tests/packed.rs (groups of 16 and 20), which the kernels cannot take and which load dense.

#[allow(dead_code)]
mod common;
mod int4;
#[allow(dead_code)]
mod quantized_tiny;

use common::{max_abs_diff, Rng};
use int4::Layout;
use olive_nn::{Linear, QuantizedWeights, Transformer};
use quantized_tiny::{write_int4_model, write_tiny_quantized, CASES, HIDDEN, VOCAB};

const GROUP: usize = 32;

/// f32 summation-order slack of a dot product, relative to Σ|x·w| (the kernels' own tests use 1e-5).
const F32_REL: f32 = 1e-5;

/// Model-level tolerance of the int4 path's logits against the dense path's, as a fraction of the dense logits'
/// largest magnitude (f32 lm_head). Each linear is within half an int8 step per input of the dense product, about
/// 1/254 of Σ|x·w| per block (checked exactly below, `assert_within_int8_bound`); a token passes 8 such linears
/// (2 layers × qkv, o, gate_up, down) with RMSNorm, attention and SwiGLU between them, and these models measure
/// 0.87e-2 (AWQ) to 1.23e-2 (act-order GPTQ): twice the worst measured.
const LOGITS_REL: f32 = 0.025;
/// The same with the int4 lm_head, whose RTN rounding (up to half a level per weight) comes on top: measured
/// 3.5e-2 to 3.7e-2, twice that.
const LOGITS_REL_INT4_HEAD: f32 = 0.075;

/// |int4 − dense| per output of `x` [tokens, k]: within half an int8 step per input (the activations of each
/// weight block quantized with scale max|x_block| / 127) times the dense weights, plus the f32 slack.
fn assert_within_int8_bound(int4: &Linear, dense: &Linear, x: &[f32], what: &str) {
    let m = int4.int4.as_ref().expect("an int4 linear");
    let (k, n) = (dense.in_features, dense.out_features);
    let tokens = x.len() / k;
    let (mut got, mut want) = (vec![0f32; tokens * n], vec![0f32; tokens * n]);
    int4.forward(x, &mut got);
    dense.forward(x, &mut want);
    let original = |j: usize| m.perm().map_or(j, |p| p[j] as usize);
    let bs = m.block_size();
    for t in 0..tokens {
        let xt = &x[t * k..(t + 1) * k];
        for o in 0..n {
            let w = &dense.weight[o * k..(o + 1) * k];
            let (mut bound, mut abs) = (0f32, 0f32);
            for b in 0..k / bs {
                let idx = (b * bs..(b + 1) * bs).map(original);
                let xmax = idx.clone().fold(0f32, |a, i| a.max(xt[i].abs()));
                bound += xmax / 254.0 * idx.clone().map(|i| w[i].abs()).sum::<f32>();
                abs += idx.map(|i| (xt[i] * w[i]).abs()).sum::<f32>();
            }
            let tol = bound + F32_REL * abs + 1e-6;
            let (g, e) = (got[t * n + o], want[t * n + o]);
            assert!(
                (g - e).abs() <= tol,
                "{what} token {t} out {o}: {g} vs {e} (bound {tol})"
            );
        }
    }
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |a, x| a.max(x.abs()))
}

const PROMPT: [u32; 9] = [5, 17, 42, 8, 91, 33, 60, 12, 77];

#[test]
fn int4_decoding_stays_within_the_int8_activation_bound() {
    for (layout, fused) in CASES {
        let case = format!("{layout:?} fused {fused}");
        let dir = tempfile::tempdir().unwrap();
        write_int4_model(dir.path(), layout, fused, GROUP, 7);
        let dense = Transformer::load(dir.path()).unwrap();
        let mut int4 = Transformer::load_with(dir.path(), QuantizedWeights::Int4).unwrap();

        // Every decoder linear is held as int4 only: a quarter of f32 or less.
        for l in int4.layers() {
            for lin in [&l.qkv_proj, &l.o_proj, &l.gate_up_proj, &l.down_proj] {
                assert!(
                    lin.int4.is_some() && lin.packed.is_none() && lin.weight.is_empty(),
                    "{case}"
                );
            }
        }
        assert!(
            4 * int4.linear_weight_bytes() < dense.linear_weight_bytes(),
            "{case}"
        );
        // Each linear: the exact int8-activation bound; its dequantized weight is the dense one, bit for bit
        // (what the backward pass and adapter merging see).
        let mut rng = Rng::new(11);
        for (i, (a, b)) in int4.layers().iter().zip(dense.layers()).enumerate() {
            for (name, x, y) in [
                ("qkv", &a.qkv_proj, &b.qkv_proj),
                ("o", &a.o_proj, &b.o_proj),
                ("gate_up", &a.gate_up_proj, &b.gate_up_proj),
                ("down", &a.down_proj, &b.down_proj),
            ] {
                let what = format!("{case} layer {i} {name}");
                assert_within_int8_bound(x, y, &rng.vec(3 * y.in_features, 2.0), &what);
                let same = x.with_weight(|w| {
                    w.iter()
                        .zip(&y.weight[..])
                        .all(|(p, q)| p.to_bits() == q.to_bits())
                });
                assert!(
                    same,
                    "{what}: dequantized int4 weight differs from the dense one"
                );
            }
        }

        // Whole model, prefill and decode steps: logits within the model-level tolerance.
        let (mut dc, mut ic) = (dense.new_cache(16), int4.new_cache(16));
        let mut worst = 0f32;
        for step in [&PROMPT[..], &[3], &[44], &[90]] {
            let d = dense.forward(step, &mut dc).unwrap();
            let q = int4.forward(step, &mut ic).unwrap();
            worst = worst.max(max_abs_diff(&q, &d) / max_abs(&d));
        }
        assert!(
            worst <= LOGITS_REL,
            "{case}: logits off by {worst} of their scale"
        );
        assert!(
            worst > 0.0,
            "{case}: the int4 path gave the dense logits exactly"
        );

        // Greedy tokens where the dense model's choice is clear stay the same.
        let want = dense
            .generate(&PROMPT, PROMPT.len() + 8, &[], |_| true)
            .unwrap();
        let got = int4
            .generate(&PROMPT, PROMPT.len() + 8, &[], |_| true)
            .unwrap();
        assert_eq!(got, want, "{case}: greedy tokens");

        // Rounding the lm_head to int4 (as genai's int4 exports do) keeps the logits within the looser tolerance.
        assert!(
            int4.lm_head_int4().is_none(),
            "{case}: int4 lm_head by default"
        );
        assert!(int4.round_lm_head_int4(), "{case}");
        let head = int4.lm_head_int4().expect("an int4 lm_head");
        assert!(4 * head.bytes() < 4 * VOCAB * HIDDEN, "{case}");
        let dense_logits = dense.forward(&PROMPT, &mut dense.new_cache(16)).unwrap();
        let int4_logits = int4.forward(&PROMPT, &mut int4.new_cache(16)).unwrap();
        let scale = max_abs(&dense_logits);
        let err = max_abs_diff(&int4_logits, &dense_logits);
        assert!(
            err <= LOGITS_REL_INT4_HEAD * scale,
            "{case}: int4 lm_head logits off by {err} (scale {scale})"
        );
        eprintln!(
            "{case}: worst logits error {worst:.2e} of their scale, int4 lm_head {:.2e}",
            err / scale
        );
    }
}

#[test]
fn shapes_the_kernels_cannot_take_load_dense() {
    // Inputs of 48 and groups of 16: not multiples of 32.
    let dir = tempfile::tempdir().unwrap();
    write_tiny_quantized(dir.path(), Layout::Awq, false);

    let dense = Transformer::load(dir.path()).unwrap();
    let mut int4 = Transformer::load_with(dir.path(), QuantizedWeights::Int4).unwrap();
    assert!(int4.layers().iter().all(|l| l.qkv_proj.int4.is_none()
        && l.down_proj.int4.is_none()
        && !l.qkv_proj.weight.is_empty()));
    assert!(!int4.round_lm_head_int4());
    let ids = [5u32, 9, 14, 3];
    let a = dense.forward(&ids, &mut dense.new_cache(4)).unwrap();
    let b = int4.forward(&ids, &mut int4.new_cache(4)).unwrap();
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
}
