//! QLoRA over an int4 base on the CPU (`QuantizedWeights::Int4Training`: the frozen linears' forward through the
//! int4 kernels with activations quantized to int8 per weight block, the backward's dx = dy · W from tiles of
//! dequantized rows) against the same checkpoint dequantized at load: tiny models the kernels take (inputs and
//! groups multiples of 32), quantized in-test to AutoAWQ GEMM and to GPTQ v1 with an act-order g_idx, separate
//! and fused (Phi-3) projections. Losses of several optimizer steps and the LoRA gradients agree within named
//! tolerances; the base stays int4 (a quarter of f32 or less); what the kernels cannot take stays packed.

#[allow(dead_code)]
mod common;
mod int4;
#[allow(dead_code)]
mod quantized_tiny;

use common::Rng;
use int4::Layout;
use olive_nn::train::{LoraTrainer, TrainConfig};
use olive_nn::{Linear, QuantizedWeights, Transformer};
use quantized_tiny::{batch, spec, trainers, write_int4_model, CASES, VOCAB};

/// Loss (mean cross-entropy) of the int4 path against the dense one, relative, over 5 optimizer steps at
/// learning rate 1e-2 and the evaluation after them. Each int4 product is within half an int8 step per input
/// of the dense one (crates/nn/tests/int4_decode.rs checks that bound per output); these random models
/// (losses 21 → 10) measure at most 6.1e-4 on the first step and 3.4e-3 by the fifth (the two runs' adapters
/// drift apart): twice the worst.
const LOSS_REL: f32 = 7e-3;
/// The LoRA gradients of the first step, relative Frobenius error per module (‖g − g_dense‖ / ‖g_dense‖):
/// measured at most 2.0e-2 (AWQ, separate projections); twice. (Later steps compare runs whose adapters have
/// already drifted apart, so their gradients are not a parity measure.)
const GRAD_REL: f64 = 4e-2;

fn linears(t: &Transformer) -> impl Iterator<Item = &Linear> {
    t.layers()
        .iter()
        .flat_map(|l| [&l.qkv_proj, &l.o_proj, &l.gate_up_proj, &l.down_proj])
}

/// ‖a − b‖ / ‖b‖ in f64.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn assert_loss_close(got: f32, want: f32, what: &str) {
    let rel = (got - want).abs() / want.abs();
    assert!(
        rel <= LOSS_REL,
        "{what}: int4 {got} vs dense {want} (rel {rel:.2e} > {LOSS_REL:e})"
    );
}

#[test]
fn int4_base_trains_within_tolerance_of_the_dequantized_one() {
    for (layout, fused) in CASES {
        let case = format!("{layout:?} fused {fused}");
        let dir = tempfile::tempdir().unwrap();
        write_int4_model(dir.path(), layout, fused, 32, 11);
        let dense = Transformer::load(dir.path()).unwrap();
        let int4 = Transformer::load_with(dir.path(), QuantizedWeights::Int4Training).unwrap();
        assert!(
            linears(&int4).all(|l| l.int4.is_some() && l.packed.is_none() && l.weight.is_empty()),
            "{case}: every linear int4"
        );
        // 4-bit levels plus a scale and a zero point per block: under a quarter of f32.
        assert!(
            4 * int4.linear_weight_bytes() < dense.linear_weight_bytes(),
            "{case}"
        );
        // The backward's dx = dy · W of every linear: f32 products in tiles, against the dense weight.
        for (a, b) in linears(&int4).zip(linears(&dense)) {
            let tokens = 7;
            let dy = Rng::new(3).vec(tokens * a.out_features, 1.0);
            let (mut got, mut want) = (
                vec![0f32; tokens * a.in_features],
                vec![0f32; tokens * a.in_features],
            );
            a.backward_input(&dy, &mut got);
            b.backward_input(&dy, &mut want);
            assert!(rel_err(&got, &want) < 1e-5, "{case}: dx of a linear");
        }

        let mut worst = (0f32, 0f64);
        for checkpointing in [false, true] {
            let (mut a, mut b) = trainers(&dense, &int4, fused, checkpointing);
            let steps = [batch(24, 5, VOCAB)];
            let (la, ga) = a.loss_and_gradients(&steps).unwrap();
            let (lb, gb) = b.loss_and_gradients(&steps).unwrap();
            assert_loss_close(lb, la, &format!("{case}: first loss"));
            worst.0 = worst.0.max((lb - la).abs() / la);
            assert!(
                ga.iter().any(|g| g.b.iter().any(|v| *v != 0.0)),
                "{case}: no gradient"
            );
            for (x, y) in ga.iter().zip(&gb) {
                let what = format!("{case}: gradient of {}", x.module.hf_key());
                // B starts at zero: A's gradient is zero too on the first step.
                let e = rel_err(&y.b, &x.b);
                worst.1 = worst.1.max(e);
                assert!(e <= GRAD_REL, "{what}: B rel err {e:.2e} > {GRAD_REL:e}");
                assert!(y.a.iter().chain(&x.a).all(|v| *v == 0.0), "{what}: A");
            }
            for s in 0..5 {
                let (sa, sb) = (a.train_step(&steps).unwrap(), b.train_step(&steps).unwrap());
                assert_loss_close(sb.loss, sa.loss, &format!("{case}: step {s} loss"));
                worst.0 = worst.0.max((sb.loss - sa.loss).abs() / sa.loss);
            }
            let (ea, eb) = (
                a.eval_loss(&steps[0]).unwrap(),
                b.eval_loss(&steps[0]).unwrap(),
            );
            assert_loss_close(eb, ea, &format!("{case}: eval loss"));
            // The merged model of the int4 run holds its adapters in dense copies of the adapted linears.
            let merged = b.merged_model().unwrap();
            assert!(linears(&merged).all(|l| l.int4.is_none()), "{case}: merged");
        }
        println!(
            "{case}: worst loss rel {:.2e}, worst gradient rel {:.2e}",
            worst.0, worst.1
        );
    }
}

#[test]
fn what_the_kernels_cannot_take_stays_packed() {
    // Groups of 16: not a multiple of the kernels' 32.
    let dir = tempfile::tempdir().unwrap();
    write_int4_model(dir.path(), Layout::Awq, false, 16, 11);
    let t = Transformer::load_with(dir.path(), QuantizedWeights::Int4Training).unwrap();
    assert!(linears(&t).all(|l| l.int4.is_none() && l.packed.is_some() && l.weight.is_empty()));
    let dense = Transformer::load(dir.path()).unwrap();
    let cfg = TrainConfig::default();
    let mut a = LoraTrainer::new(dense, &spec(false), cfg.clone()).unwrap();
    let mut b = LoraTrainer::new(t, &spec(false), cfg).unwrap();
    let (la, _) = a.loss_and_gradients(&[batch(24, 5, VOCAB)]).unwrap();
    let (lb, _) = b.loss_and_gradients(&[batch(24, 5, VOCAB)]).unwrap();
    // Packed: the dequantize-at-load values, the same products.
    assert_eq!(la.to_bits(), lb.to_bits());
}
