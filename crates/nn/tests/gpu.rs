//! The GPU transformer against the CPU one on the same checkpoint: random-weight models of each architecture
//! (Llama tied, Qwen2 with q/k/v biases, Mistral with a sliding window, Phi-3 with fused projections and
//! LongRoPE past its original context) and int4 checkpoints (AutoAWQ GEMM, GPTQ v1 act-order), prefilled then
//! decoded a token at a time. Where there is no CUDA device each test prints `skipped: no CUDA device: <name>`.

mod gpu_model;
mod int4;

use gpu_model::{arch, write_model, Arch, Weights, VOCAB};
use std::sync::Arc;

use olive_kernels::cuda::{test_gpu, Edges, Gpu};
use olive_nn::{GpuKvCache, GpuTransformer, NnError, Transformer};

/// The GPU runs bf16 activations and weights (8-bit mantissa, 2^-9 relative per rounding) with fp32
/// accumulation; its roundings through two layers and the lm_head measured 4–5e-3 of the f32 CPU
/// logits on an H200 (relative L2 over all logits); twice that is the bound.
const BF16_LOGITS_REL: f64 = 1e-2;

fn rel_error(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    if a.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (diff / norm).sqrt()
}

/// A random-weight f32 model of architecture `a`, written to a temporary folder and loaded onto `gpu`.
fn f32_model(a: &Arch, gpu: Arc<Gpu>) -> GpuTransformer {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), a, Weights::F32);
    GpuTransformer::load(dir.path(), gpu).unwrap()
}

/// Prefill 40 tokens, then decode: single tokens through `forward` and `forward_last` (the cache's workspace
/// reused step after step), two tokens at once (the workspace regrown), single tokens again; every logit compared.
fn compare(name: &str, a: &Arch, weights: Weights) {
    let Some(gpu) = test_gpu(name) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), a, weights);
    let cpu = Transformer::load(dir.path()).unwrap();
    let gpu_model = GpuTransformer::load(dir.path(), gpu.clone()).unwrap();
    if weights == Weights::F32 {
        // A copy of the model in host memory uploads to the same weights.
        let copy = GpuTransformer::from_cpu(&cpu, gpu).unwrap();
        let ids = [7, 8, 9];
        let a = copy.forward(&ids, &mut copy.new_cache(3).unwrap()).unwrap();
        let b = gpu_model
            .forward(&ids, &mut gpu_model.new_cache(3).unwrap())
            .unwrap();
        assert_eq!(a, b, "from_cpu and load give the same model");
    }
    let prompt: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % VOCAB as u32).collect();
    let (mut cpu_cache, mut gpu_cache) = (cpu.new_cache(64), gpu_model.new_cache(64).unwrap());
    // (tokens, last_only)
    let mut steps = vec![(prompt, false)];
    steps.extend(
        [
            (&[5][..], false),
            (&[250], true),
            (&[17], true),
            (&[3, 9], false),
            (&[42], true),
            (&[7], false),
        ]
        .map(|(t, last)| (t.to_vec(), last)),
    );
    for (i, (tokens, last_only)) in steps.iter().enumerate() {
        let want = cpu.forward(tokens, &mut cpu_cache).unwrap();
        let got = if *last_only {
            gpu_model.forward_last(tokens, &mut gpu_cache).unwrap()
        } else {
            gpu_model.forward(tokens, &mut gpu_cache).unwrap()
        };
        let want = &want[want.len() - got.len()..];
        let err = rel_error(&got, want);
        println!(
            "{name}: step {i} ({} tokens, last only {last_only}): rel error {err:.2e}",
            tokens.len()
        );
        assert!(
            err <= BF16_LOGITS_REL,
            "{name}: step {i}: rel error {err:.2e}"
        );
    }
    assert_eq!(gpu_cache.len(), 47);
    let mut fresh = gpu_model.new_cache(4).unwrap();
    let all = gpu_model.forward(&[3, 4], &mut fresh).unwrap();
    fresh.truncate(0);
    let last = gpu_model.forward_last(&[3, 4], &mut fresh).unwrap();
    // The same row, through a product of one row instead of two (cuBLAS may sum in another order).
    let err = rel_error(&last, &all[VOCAB..]);
    assert!(
        err <= 1e-5,
        "forward_last is the last row of forward: rel error {err:.2e}"
    );
}

#[test]
fn llama_on_the_gpu_matches_the_cpu() {
    compare(
        "gpu::llama_on_the_gpu_matches_the_cpu",
        &arch("llama"),
        Weights::F32,
    );
}

#[test]
fn qwen2_with_biases_on_the_gpu_matches_the_cpu() {
    compare(
        "gpu::qwen2_with_biases_on_the_gpu_matches_the_cpu",
        &arch("qwen2"),
        Weights::F32,
    );
}

#[test]
fn mistral_with_a_sliding_window_on_the_gpu_matches_the_cpu() {
    compare(
        "gpu::mistral_with_a_sliding_window_on_the_gpu_matches_the_cpu",
        &arch("mistral"),
        Weights::F32,
    );
}

#[test]
fn phi3_fused_with_longrope_on_the_gpu_matches_the_cpu() {
    compare(
        "gpu::phi3_fused_with_longrope_on_the_gpu_matches_the_cpu",
        &arch("phi3"),
        Weights::F32,
    );
}

#[test]
fn int4_awq_and_act_order_gptq_run_as_int4_on_the_gpu() {
    let name = "gpu::int4_awq_and_act_order_gptq_run_as_int4_on_the_gpu";
    compare(name, &arch("llama"), Weights::Awq);
    compare(name, &arch("phi3"), Weights::GptqActOrder);
}

/// On a new cache of `capacity` positions with `graphs`: a prompt of `prompt_len` tokens, then `steps` single tokens;
/// the cache and the last logits of each call.
fn prefill_and_step(
    model: &GpuTransformer,
    prompt_len: u32,
    steps: u32,
    capacity: usize,
    graphs: Option<Edges>,
) -> (GpuKvCache, Vec<Vec<f32>>) {
    let mut cache = model.new_cache(capacity).unwrap();
    cache.set_graphs(graphs);
    let prompt: Vec<u32> = (0..prompt_len)
        .map(|i| (i * 37 + 11) % VOCAB as u32)
        .collect();
    let mut logits = vec![model.forward_last(&prompt, &mut cache).unwrap()];
    for i in 0..steps {
        let token = (i * 13 + 5) % VOCAB as u32;
        logits.push(model.forward_last(&[token], &mut cache).unwrap());
    }
    (cache, logits)
}

/// Single-token steps replay a CUDA graph captured on the cache's first one, reading the token and the cache's
/// length from device memory: its logits are bit for bit those of the same steps queued launch by launch (the same
/// kernels and launch shapes at a 64-position cache), through Phi-3's LongRoPE switching to its long factors as
/// the positions pass its original context of 32, a prefill between steps (which refits the cache's own buffers,
/// not the graph's), and another model taking over the cache (its weights, so its own capture).
#[test]
fn captured_decode_steps_match_steps_launched_one_by_one() {
    let Some(gpu) = test_gpu("gpu::captured_decode_steps_match_steps_launched_one_by_one") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &arch("phi3"), Weights::F32);
    let model = GpuTransformer::load(dir.path(), gpu.clone()).unwrap();
    let copy = GpuTransformer::from_cpu(&Transformer::load(dir.path()).unwrap(), gpu).unwrap();
    let run = |graphs: Option<Edges>| -> Vec<Vec<f32>> {
        let (mut cache, mut logits) = prefill_and_step(&model, 20, 16, 64, graphs);
        logits.push(model.forward(&[1, 2, 3], &mut cache).unwrap());
        for token in [4, 9] {
            logits.push(model.forward(&[token], &mut cache).unwrap());
            logits.push(copy.forward_last(&[token + 1], &mut cache).unwrap());
        }
        assert_eq!(cache.len(), 43);
        logits
    };
    let launched = run(None);
    for edges in [Edges::Overlapped, Edges::InOrder] {
        let captured = run(Some(edges));
        for (i, (a, b)) in captured.iter().zip(&launched).enumerate() {
            assert!(
                a == b,
                "{edges:?} step {i}: replayed logits differ (rel {:.2e})",
                rel_error(a, b)
            );
        }
    }
}

/// Captured steps from a 100-token prompt to 330 positions go through three graphs (bounds of 128, 256 and the
/// 400-position capacity, each attention sized for its bound): their logits match the steps launched one by one
/// within bf16's tolerance (a graph's attention splits the keys for its bound, the launched step's for its own
/// length: their sums run in another order).
#[test]
fn captured_steps_past_a_graphs_bound_run_the_next_graph() {
    let Some(gpu) = test_gpu("gpu::captured_steps_past_a_graphs_bound_run_the_next_graph") else {
        return;
    };
    let model = f32_model(&arch("llama"), gpu);
    let prompt_len = 100;
    let run = |graphs| prefill_and_step(&model, prompt_len, 230, 400, graphs).1;
    let launched = run(None);
    let captured = run(Some(Edges::Overlapped));
    for (i, (a, b)) in captured.iter().zip(&launched).enumerate() {
        let err = rel_error(a, b);
        assert!(
            err <= BF16_LOGITS_REL,
            "step {i} (after {} positions): rel {err:.2e} > {BF16_LOGITS_REL:.0e}",
            prompt_len as usize + i
        );
    }
}

/// `next_token` (the argmax on the device, in the captured step too) is the argmax of `forward_last`'s logits for
/// the same steps, launched one by one and replayed, switching between the two on one cache (which recaptures).
#[test]
fn next_token_is_the_argmax_of_the_last_logits() {
    let Some(gpu) = test_gpu("gpu::next_token_is_the_argmax_of_the_last_logits") else {
        return;
    };
    let model = f32_model(&arch("llama"), gpu);
    let prompt: Vec<u32> = (0..9).map(|i| (i * 29 + 3) % VOCAB as u32).collect();
    for graphs in [None, Some(Edges::Overlapped)] {
        let (mut by_logits, mut on_device) =
            (model.new_cache(32).unwrap(), model.new_cache(32).unwrap());
        by_logits.set_graphs(graphs);
        on_device.set_graphs(graphs);
        let mut token = olive_nn::argmax(&model.forward_last(&prompt, &mut by_logits).unwrap());
        assert_eq!(
            model.next_token(&prompt, &mut on_device).unwrap(),
            token,
            "{graphs:?} prefill"
        );
        for step in 0..12 {
            let want = olive_nn::argmax(&model.forward_last(&[token], &mut by_logits).unwrap());
            let got = if step % 4 == 3 {
                olive_nn::argmax(&model.forward_last(&[token], &mut on_device).unwrap())
            } else {
                model.next_token(&[token], &mut on_device).unwrap()
            };
            assert_eq!(got, want, "{graphs:?} step {step}");
            token = want;
        }
    }
    let mut cache = model.new_cache(4).unwrap();
    assert!(matches!(
        model.next_token(&[], &mut cache),
        Err(NnError::EmptyPrompt)
    ));
}

#[test]
fn bad_tokens_a_full_cache_and_another_models_cache_are_errors() {
    let Some(gpu) = test_gpu("gpu::bad_tokens_a_full_cache_and_another_models_cache_are_errors")
    else {
        return;
    };
    let model = f32_model(&arch("llama"), gpu);
    let mut cache = model.new_cache(4).unwrap();
    let err = model.forward(&[VOCAB as u32], &mut cache).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    let err = model.forward(&[1, 2, 3, 4, 5], &mut cache).unwrap_err();
    assert!(
        matches!(
            err,
            NnError::CacheFull {
                capacity: 4,
                needed: 5
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("room for 4 positions, but 5"),
        "{err}"
    );
    assert!(cache.is_empty());
    model.forward(&[1, 2, 3], &mut cache).unwrap();
    let err = model.forward(&[4, 5], &mut cache).unwrap_err();
    assert!(
        matches!(
            err,
            NnError::CacheFull {
                capacity: 4,
                needed: 5
            }
        ),
        "{err}"
    );
    assert_eq!(cache.len(), 3);

    // A cache made for a model with wider keys (Phi-3's head_dim 96 against Llama's 64).
    let other = f32_model(&arch("phi3"), model.gpu().clone());
    let err = model
        .forward(&[1], &mut other.new_cache(4).unwrap())
        .unwrap_err();
    assert!(
        matches!(
            err,
            NnError::CacheMismatch {
                found_width: 192,
                width: 128,
                ..
            }
        ),
        "{err}"
    );
}
