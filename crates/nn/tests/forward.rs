//! Forward-pass properties on tiny random models written in-test: decoding with the KV cache
//! gives the logits of one full prefill, fused (Phi-3) and split projections agree, the hook and
//! the per-layer API reproduce the model, and greedy generation stops where it should.

mod common;

use common::{max_abs_diff, write_tiny, Tiny, HIDDEN, LAYERS, VOCAB};
use olive_nn::{argmax, LayerCache, NnError, ProbePoint, Transformer, Workspace};
use serde_json::json;

/// Cached decoding and one prefill compute the same sums in different row groupings (GEMV vs
/// gemm's blocked kernels): f32 reassociation on logits of size ~5 stays near 1e-6.
const CACHE_TOL: f32 = 1e-4;

const SEQ: [u32; 12] = [3, 17, 42, 8, 8, 29, 1, 49, 0, 33, 21, 5];

fn load(t: &Tiny) -> (tempfile::TempDir, Transformer) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny(dir.path(), t);
    let model = Transformer::load(dir.path()).unwrap();
    (dir, model)
}

/// Prefill `SEQ[..split]`, then feed the rest one token at a time; compare with one prefill.
fn check_cache_matches_prefill(t: &Tiny, split: usize) {
    let (_dir, model) = load(t);
    let mut full_cache = model.new_cache(SEQ.len());
    let full = model.forward(&SEQ, &mut full_cache).unwrap();
    assert_eq!(full.len(), SEQ.len() * VOCAB);
    assert_eq!(full_cache.len(), SEQ.len());

    let mut cache = model.new_cache(4);
    let mut rows = model.forward(&SEQ[..split], &mut cache).unwrap();
    for tok in &SEQ[split..] {
        rows.extend(model.forward(&[*tok], &mut cache).unwrap());
    }
    let d = max_abs_diff(&full, &rows);
    assert!(d <= CACHE_TOL, "{}: max abs diff {d}", t.model_type);
    // The last-row path gives the last row.
    cache.truncate(SEQ.len() - 1);
    let last = model
        .forward_last(&SEQ[SEQ.len() - 1..], &mut cache)
        .unwrap();
    assert!(max_abs_diff(last, &full[(SEQ.len() - 1) * VOCAB..]) <= CACHE_TOL);
}

#[test]
fn llama_cache_matches_prefill() {
    check_cache_matches_prefill(&Tiny::llama(), 5);
    check_cache_matches_prefill(&Tiny::llama(), 1);
}

#[test]
fn mistral_sliding_window_cache_matches_prefill() {
    let t = Tiny {
        model_type: "mistral",
        tie: false,
        sliding_window: Some(5),
        seed: 2,
        ..Tiny::llama()
    };
    check_cache_matches_prefill(&t, 3);
    // The window matters: without it the logits differ.
    let (_d1, windowed) = load(&t);
    let (_d2, full) = load(&Tiny {
        sliding_window: None,
        ..t
    });
    let a = windowed.forward(&SEQ, &mut windowed.new_cache(12)).unwrap();
    let b = full.forward(&SEQ, &mut full.new_cache(12)).unwrap();
    assert!(max_abs_diff(&a[..5 * VOCAB], &b[..5 * VOCAB]) <= CACHE_TOL);
    assert!(max_abs_diff(&a, &b) > 1e-2);
}

#[test]
fn qwen2_bias_cache_matches_prefill() {
    let t = Tiny {
        model_type: "qwen2",
        bias: true,
        tie: false,
        seed: 3,
        ..Tiny::llama()
    };
    check_cache_matches_prefill(&t, 4);
}

#[test]
fn scaled_rope_cache_matches_prefill() {
    for rope_scaling in [
        json!({"rope_type": "linear", "factor": 4.0}),
        json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}),
    ] {
        let t = Tiny {
            rope_scaling: Some(rope_scaling),
            ..Tiny::llama()
        };
        check_cache_matches_prefill(&t, 6);
    }
}

fn phi3(fused: bool) -> Tiny {
    Tiny {
        model_type: "phi3",
        fused,
        tie: false,
        // All positions within the original context: the short factors throughout.
        rope_scaling: Some(json!({
            "type": "longrope",
            "short_factor": [1.0, 1.1, 1.2, 1.3],
            "long_factor": [2.0, 3.0, 4.0, 5.0],
            "original_max_position_embeddings": 32,
        })),
        seed: 4,
        ..Tiny::llama()
    }
}

#[test]
fn phi3_fused_and_split_weights_agree() {
    check_cache_matches_prefill(&phi3(true), 5);
    let (_d1, fused) = load(&phi3(true));
    let (_d2, split) = load(&phi3(false));
    let a = fused.forward(&SEQ, &mut fused.new_cache(12)).unwrap();
    let b = split.forward(&SEQ, &mut split.new_cache(12)).unwrap();
    assert_eq!(
        a, b,
        "fused and split checkpoints of the same weights must give the same logits"
    );
}

#[test]
fn hook_and_single_layers_reproduce_the_model() {
    let (_dir, model) = load(&Tiny::llama());
    let mut inputs: Vec<Vec<f32>> = Vec::new();
    let mut cache = model.new_cache(12);
    let logits = model
        .forward_with_hook(&SEQ, &mut cache, &mut |i, h| {
            assert_eq!(i, inputs.len());
            inputs.push(h.to_vec());
        })
        .unwrap();
    assert_eq!(inputs.len(), LAYERS);
    let mut embedded = Vec::new();
    model.embed(&SEQ, &mut embedded).unwrap();
    assert_eq!(inputs[0], embedded);

    // Layer by layer, as a quantizer runs them: each output is the next layer's captured input.
    let tables = model.rope().tables(0, SEQ.len());
    let mut ws = Workspace::default();
    let mut hidden = embedded;
    for (i, layer) in model.layers().iter().enumerate() {
        assert_eq!(hidden, inputs[i]);
        let mut lc = LayerCache::new(layer.dims.kv_width(), SEQ.len());
        let mut seen = Vec::new();
        layer
            .forward_probed(&mut hidden, &tables, &mut lc, &mut ws, &mut |p, x| {
                seen.push((p, x.len()))
            })
            .unwrap();
        let (n, d) = (SEQ.len(), layer.dims);
        assert_eq!(
            seen,
            vec![
                (ProbePoint::Qkv, n * HIDDEN),
                (ProbePoint::O, n * d.q_width()),
                (ProbePoint::GateUp, n * HIDDEN),
                (ProbePoint::Down, n * d.intermediate)
            ]
        );
        assert_eq!(lc.len(), SEQ.len());
    }
    // Positions must match the cache.
    let mut lc = LayerCache::new(model.layers()[0].dims.kv_width(), 1);
    let err = model.layers()[0]
        .forward(
            &mut hidden[..HIDDEN],
            &model.rope().tables(3, 1),
            &mut lc,
            &mut ws,
        )
        .unwrap_err();
    assert!(matches!(err, NnError::PositionMismatch { .. }), "{err}");
    assert_eq!(logits.len(), SEQ.len() * VOCAB);
}

#[test]
fn generate_is_greedy_and_stops() {
    let (_dir, model) = load(&Tiny::llama());
    let prompt = &SEQ[..4];
    // Reference: greedy by hand with full recomputation.
    let mut seq = prompt.to_vec();
    for _ in 0..5 {
        let logits = model.forward(&seq, &mut model.new_cache(16)).unwrap();
        seq.push(argmax(&logits[(seq.len() - 1) * VOCAB..]));
    }
    let want = &seq[4..];

    let mut streamed = Vec::new();
    let got = model
        .generate(prompt, prompt.len() + 5, &[], |t| {
            streamed.push(t);
            true
        })
        .unwrap();
    assert_eq!(got, want);
    assert_eq!(streamed, want);

    let eos = want[1];
    let first_eos = want.iter().position(|t| *t == eos).unwrap();
    let got = model.generate(prompt, 100, &[eos], |_| true).unwrap();
    assert_eq!(got, &want[..=first_eos]);
    assert_eq!(
        model.generate(prompt, 100, &[], |_| false).unwrap(),
        &want[..1]
    );
    assert!(model.generate(prompt, 4, &[], |_| true).unwrap().is_empty());
    assert!(matches!(
        model.generate(&[], 10, &[], |_| true),
        Err(NnError::EmptyPrompt)
    ));
}

#[test]
fn bad_inputs_are_errors() {
    let (_dir, model) = load(&Tiny::llama());
    let err = model
        .forward(&[3, VOCAB as u32], &mut model.new_cache(2))
        .unwrap_err();
    assert!(
        matches!(err, NnError::TokenOutOfRange { token, .. } if token == VOCAB as u32),
        "{err}"
    );
    let err = model
        .forward(&[3], &mut olive_nn::KvCache::new(LAYERS + 1, 16, 1))
        .unwrap_err();
    assert!(matches!(err, NnError::CacheMismatch { .. }), "{err}");

    // A config with more layers than the checkpoint names the first missing tensor.
    let dir = tempfile::tempdir().unwrap();
    write_tiny(dir.path(), &Tiny::llama());
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["num_hidden_layers"] = json!(LAYERS + 1);
    std::fs::write(&path, config.to_string()).unwrap();
    let err = Transformer::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains(&format!("model.layers.{LAYERS}.input_layernorm.weight")),
        "{err}"
    );
}
