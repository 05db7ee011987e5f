//! LoRA training on tiny random models written in-test: gradient checkpointing and dropout give the
//! same gradients, a seed reproduces a run, training lowers the loss, the merged model computes what
//! the adapted one does, and bad targets, batches and settings are refused with clear errors.

mod common;

use common::{max_abs_diff, write_tiny, Tiny, LAYERS, VOCAB};
use olive_data::Sample;
use olive_nn::train::{LoraSpec, LoraTrainer, Schedule, TrainConfig, TrainError};
use olive_nn::Transformer;

fn model(t: &Tiny) -> (tempfile::TempDir, Transformer) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny(dir.path(), t);
    let model = Transformer::load(dir.path()).unwrap();
    (dir, model)
}

fn spec(dropout: f32) -> LoraSpec {
    LoraSpec {
        r: 4,
        alpha: 8.0,
        dropout,
        target_modules: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        .map(String::from)
        .to_vec(),
        use_rslora: false,
    }
}

fn config(seed: u64, gradient_checkpointing: bool) -> TrainConfig {
    TrainConfig {
        learning_rate: 1e-2,
        seed,
        gradient_checkpointing,
        ..TrainConfig::default()
    }
}

/// `n` rows of `seq` tokens; row 1 (when present) right-padded by 3 tokens.
fn rows(seed: u32, n: usize, seq: usize) -> Vec<Sample> {
    (0..n)
        .map(|r| {
            let ids: Vec<u32> = (0..seq)
                .map(|t| {
                    (seed + 7 * r as u32 + 13 * t as u32 * (t as u32 + seed)) % (VOCAB as u32 - 3)
                        + 3
                })
                .collect();
            let pad = if r == 1 { 3 } else { 0 };
            Sample {
                attention_mask: (0..seq).map(|t| u8::from(t < seq - pad)).collect(),
                labels: ids
                    .iter()
                    .enumerate()
                    .map(|(t, &id)| if t < seq - pad { i64::from(id) } else { -100 })
                    .collect(),
                input_ids: ids,
            }
        })
        .collect()
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn checkpointing_recomputes_the_same_gradients_with_dropout() {
    let (_dir, m) = model(&Tiny::llama());
    let batches = [rows(1, 2, 12), rows(2, 2, 12)];
    let mut grads = Vec::new();
    for checkpointing in [false, true] {
        let mut t = LoraTrainer::new(m.clone(), &spec(0.2), config(5, checkpointing)).unwrap();
        // One step first so that B is not zero and every gradient flows.
        t.train_step(&batches).unwrap();
        grads.push(t.loss_and_gradients(&batches).unwrap());
    }
    let ((l0, g0), (l1, g1)) = (&grads[0], &grads[1]);
    assert_eq!(l0, l1);
    assert_eq!(g0.len(), LAYERS * 7);
    for (a, b) in g0.iter().zip(g1) {
        assert!(
            a.a.iter().any(|v| *v != 0.0),
            "{}: zero gradient",
            a.module.hf_key()
        );
        assert!(rel_err(&a.a, &b.a) < 1e-6 && rel_err(&a.b, &b.b) < 1e-6);
    }
}

#[test]
fn a_seed_reproduces_a_run_and_another_seed_does_not() {
    let (_dir, m) = model(&Tiny::llama());
    let run = |seed: u64| {
        let mut t = LoraTrainer::new(m.clone(), &spec(0.1), config(seed, true)).unwrap();
        let losses: Vec<f32> = (0..3)
            .map(|i| t.train_step(&[rows(i, 2, 10)]).unwrap().loss)
            .collect();
        (losses, t.adapter())
    };
    let (l1, a1) = run(7);
    let (l2, a2) = run(7);
    let (_, a3) = run(8);
    assert_eq!(l1, l2);
    assert!(a1.iter().zip(&a2).all(|(x, y)| x.a == y.a && x.b == y.b));
    assert!(a1.iter().zip(&a3).any(|(x, y)| x.a != y.a));
}

#[test]
fn training_lowers_the_loss_and_the_merged_model_agrees() {
    let (_dir, m) = model(&Tiny::llama());
    let batch = rows(3, 2, 16);
    let mut t = LoraTrainer::new(m, &spec(0.0), config(1, false)).unwrap();
    let before = t.eval_loss(&batch).unwrap();
    let mut last = None;
    for _ in 0..30 {
        last = Some(t.train_step(std::slice::from_ref(&batch)).unwrap());
    }
    let last = last.unwrap();
    let after = t.eval_loss(&batch).unwrap();
    assert_eq!(last.step, 30);
    assert_eq!(last.tokens, 32);
    assert!(after < 0.7 * before, "loss {before} -> {after}");
    // B was zero at the start (PEFT's init) and has moved.
    assert!(t.adapter().iter().all(|w| w.b.iter().any(|v| *v != 0.0)));

    // The merged weights compute the adapted model: same logits on an unpadded row.
    let merged = t.merged_model().unwrap();
    let ids = &batch[0].input_ids;
    let logits = merged
        .forward(ids, &mut merged.new_cache(ids.len()))
        .unwrap();
    let zero_b: Vec<_> = t
        .adapter()
        .into_iter()
        .map(|mut w| {
            w.b.fill(0.0);
            w
        })
        .collect();
    let plain = LoraTrainer::with_adapter(merged.clone(), zero_b, 0.0, config(1, false)).unwrap();
    assert!((plain.eval_loss(&batch).unwrap() - after).abs() < 1e-4);
    let base = t.model();
    let base_logits = base.forward(ids, &mut base.new_cache(ids.len())).unwrap();
    assert!(
        max_abs_diff(&logits, &base_logits) > 1e-2,
        "merge changed nothing"
    );
}

#[test]
fn unknown_targets_and_bad_settings_are_named() {
    let (_dir, m) = model(&Tiny::llama());
    let mut s = spec(0.0);
    s.target_modules = vec!["q_proj".into(), "qkv_proj".into()];
    let err = LoraTrainer::new(m.clone(), &s, config(1, false)).unwrap_err();
    assert!(matches!(err, TrainError::UnknownTarget { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("`qkv_proj`") && msg.contains("gate_proj"),
        "{msg}"
    );

    // PEFT suffixes and all-linear resolve.
    s.target_modules = vec!["self_attn.v_proj".into()];
    let t = LoraTrainer::new(m.clone(), &s, config(1, false)).unwrap();
    assert_eq!(t.adapter().len(), LAYERS);
    s.target_modules = vec!["all-linear".into()];
    let t = LoraTrainer::new(m.clone(), &s, config(1, false)).unwrap();
    assert_eq!(t.adapter().len(), LAYERS * 7);

    let linear = TrainConfig {
        schedule: Schedule::Linear,
        max_steps: 0,
        ..config(1, false)
    };
    let err = LoraTrainer::new(m.clone(), &spec(0.0), linear)
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_steps"), "{err}");
    let err = LoraTrainer::new(m.clone(), &spec(1.0), config(1, false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("dropout"), "{err}");
    let mut zero_r = spec(0.0);
    zero_r.r = 0;
    let err = LoraTrainer::new(m.clone(), &zero_r, config(1, false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`r`"), "{err}");

    // Initial weights of the wrong shape name the module.
    let mut w = LoraTrainer::new(m.clone(), &spec(0.0), config(1, false))
        .unwrap()
        .adapter();
    w[3].b.pop();
    let err = LoraTrainer::with_adapter(m, w, 0.0, config(1, false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.layers.0.self_attn.o_proj"), "{err}");
}

#[test]
fn bad_batches_are_refused() {
    let (_dir, m) = model(&Tiny::llama());
    let mut t = LoraTrainer::new(m, &spec(0.0), config(1, false)).unwrap();
    let mut uneven = rows(1, 2, 8);
    uneven[1].input_ids.pop();
    let mut bad_label = rows(1, 1, 8);
    bad_label[0].labels[4] = VOCAB as i64;
    let mut no_labels = rows(1, 1, 8);
    no_labels[0].labels[1..].fill(-100);
    let mut bad_id = rows(1, 1, 8);
    bad_id[0].input_ids[2] = VOCAB as u32;
    for (name, batch, want) in [
        ("uneven", vec![uneven], "row 1"),
        ("label", vec![bad_label], "label 50"),
        ("no labels", vec![no_labels], "no label token"),
        ("token", vec![bad_id], "token id 50"),
        ("empty", vec![], "at least one micro-batch"),
        ("empty row", vec![vec![]], "empty"),
    ] {
        let err = t.train_step(&batch).unwrap_err().to_string();
        assert!(err.contains(want), "{name}: {err}");
    }
    assert_eq!(t.steps_done(), 0);
}

#[test]
fn dropout_gradients_match_finite_differences_of_the_loss() {
    let (_dir, m) = model(&Tiny::llama());
    let batches = [rows(4, 2, 10)];
    let mut t = LoraTrainer::new(m.clone(), &spec(0.3), config(9, true)).unwrap();
    t.train_step(&batches).unwrap();
    let weights = t.adapter();
    // The masks depend on (seed, step, micro-batch): a fresh trainer at step 0 draws the same ones
    // for every perturbed copy of the weights.
    let loss_with = |w: Vec<_>| {
        let mut t = LoraTrainer::with_adapter(m.clone(), w, 0.3, config(9, true)).unwrap();
        t.loss_and_gradients(&batches).unwrap()
    };
    let (_, grads) = loss_with(weights.clone());
    for module in [0, 6, 9, 13] {
        for in_b in [false, true] {
            let g = if in_b {
                &grads[module].b
            } else {
                &grads[module].a
            };
            let (i, &want) = g
                .iter()
                .enumerate()
                .max_by(|x, y| x.1.abs().total_cmp(&y.1.abs()))
                .unwrap();
            let h = 1e-2;
            let at = |d: f32| {
                let mut w = weights.clone();
                let v = if in_b {
                    &mut w[module].b
                } else {
                    &mut w[module].a
                };
                v[i] += d;
                loss_with(w).0 as f64
            };
            let numeric = ((at(h) - at(-h)) / (2.0 * h as f64)) as f32;
            assert!(
                (numeric - want).abs() <= 2e-2 * want.abs() + 1e-4,
                "module {module} {}[{i}]: analytic {want}, numeric {numeric}",
                if in_b { "B" } else { "A" }
            );
        }
    }
}
