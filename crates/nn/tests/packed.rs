//! Training over a quantized base kept packed (`QuantizedWeights::Packed`, on-the-fly dequantization: what
//! the GPU trainer uploads from, and the CPU QLoRA fallback for linears the int4 kernels cannot take; the CPU's
//! int4 path is tests/int4_train.rs) against the same base dequantized at load: tiny models quantized in-test
//! to AutoAWQ GEMM and to GPTQ v1 with an act-order g_idx and a ragged last group, separate and fused (Phi-3)
//! projections. Logits, loss, LoRA gradients, optimizer steps and the merged model must agree bit for bit.

#[allow(dead_code)]
mod common;
mod int4;
#[allow(dead_code)]
mod quantized_tiny;

use common::VOCAB;
use olive_nn::{QuantizedWeights, Transformer};
use quantized_tiny::{batch, trainers, write_tiny_quantized, CASES};

fn bits_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn packed_base_trains_exactly_as_the_dequantized_one() {
    for (layout, fused) in CASES {
        let case = format!("{layout:?} fused {fused}");
        let dir = tempfile::tempdir().unwrap();
        write_tiny_quantized(dir.path(), layout, fused);
        let dense = Transformer::load(dir.path()).unwrap();
        let packed = Transformer::load_with(dir.path(), QuantizedWeights::Packed).unwrap();
        assert!(
            packed
                .layers()
                .iter()
                .all(|l| l.qkv_proj.packed.is_some() && l.down_proj.packed.is_some()),
            "{case}"
        );
        assert!(
            dense.layers().iter().all(|l| l.qkv_proj.packed.is_none()),
            "{case}"
        );
        // 4-bit levels plus a scale and a zero point per group: under a quarter of f32.
        assert!(
            4 * packed.linear_weight_bytes() < dense.linear_weight_bytes(),
            "{case}"
        );

        let ids = &batch(12, 3, VOCAB)[0].input_ids;
        let want = dense.forward(ids, &mut dense.new_cache(ids.len())).unwrap();
        let got = packed
            .forward(ids, &mut packed.new_cache(ids.len()))
            .unwrap();
        assert!(bits_equal(&got, &want), "{case}: logits differ");

        for checkpointing in [false, true] {
            let (mut a, mut b) = trainers(&dense, &packed, fused, checkpointing);
            let steps = [batch(12, 3, VOCAB)];
            let (la, ga) = a.loss_and_gradients(&steps).unwrap();
            let (lb, gb) = b.loss_and_gradients(&steps).unwrap();
            assert_eq!(la.to_bits(), lb.to_bits(), "{case}: loss");
            assert!(
                ga.iter().any(|g| g.b.iter().any(|v| *v != 0.0)),
                "{case}: no gradient"
            );
            for (x, y) in ga.iter().zip(&gb) {
                assert!(
                    bits_equal(&x.a, &y.a) && bits_equal(&x.b, &y.b),
                    "{case}: gradients"
                );
            }
            for _ in 0..3 {
                let (sa, sb) = (a.train_step(&steps).unwrap(), b.train_step(&steps).unwrap());
                assert_eq!(sa.loss.to_bits(), sb.loss.to_bits(), "{case}: step loss");
            }
            let (ea, eb) = (
                a.eval_loss(&steps[0]).unwrap(),
                b.eval_loss(&steps[0]).unwrap(),
            );
            assert_eq!(ea.to_bits(), eb.to_bits(), "{case}: eval loss");
            let (ma, mb) = (a.merged_model().unwrap(), b.merged_model().unwrap());
            let la = ma.forward(ids, &mut ma.new_cache(ids.len())).unwrap();
            let lb = mb.forward(ids, &mut mb.new_cache(ids.len())).unwrap();
            assert!(bits_equal(&la, &lb), "{case}: merged logits");
        }
    }
}
