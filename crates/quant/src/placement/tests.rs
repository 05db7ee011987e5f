//! The layer placement (a pure function) and the layer stream: run over "GPUs" that are checking CPU computes
//! (`Compute::checking`: every product compares each held operand with the snapshot a GPU would hold), every
//! method writes the same bytes as the plain CPU run, so each change the quantizer makes to a held weight reaches
//! the device copy, and the background loading changes nothing.

use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

use super::*;
use crate::awq::AwqOptions;
use crate::grid::QuantSpec;
use crate::stream::{quantize_placed, Event, Method, OutputFormat, QuantizeOptions, Selected};
use crate::GptqOptions;

#[test]
fn layers_go_to_gpus_in_contiguous_blocks() {
    let place = |layers: usize, gpus: usize| -> Vec<usize> {
        (0..layers).map(|l| layer_gpu(l, layers, gpus)).collect()
    };
    assert_eq!(place(4, 1), [0, 0, 0, 0]);
    assert_eq!(place(4, 2), [0, 0, 1, 1]);
    assert_eq!(place(5, 2), [0, 0, 0, 1, 1]);
    assert_eq!(place(3, 2), [0, 0, 1]);
    for (layers, gpus) in [(30, 2), (30, 4), (7, 3), (80, 8), (8, 8)] {
        let p = place(layers, gpus);
        assert!(
            p.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1),
            "{p:?}"
        );
        assert_eq!((p[0], p[layers - 1]), (0, gpus - 1), "{p:?}");
        for g in 0..gpus {
            let n = p.iter().filter(|&&x| x == g).count();
            assert!(
                n == layers / gpus || n == layers.div_ceil(gpus),
                "{layers} layers over {gpus}: GPU {g} has {n}"
            );
        }
    }
    // More GPUs than layers: one layer each, spread out.
    assert_eq!(place(2, 8), [0, 4]);
}

#[test]
fn zero_gpus_is_a_clear_error() {
    let err = Placement::open(Device::Gpu { count: 0 }, 2).unwrap_err();
    assert!(err.to_string().contains("0 GPUs"), "{err}");
}

/// A random 3-layer llama (hidden 64, 4 heads of 16, `kv_heads` KV heads, intermediate 128, vocab 48) with a few
/// large norm channels.
fn write_model(dir: &Path, kv_heads: usize) {
    let (h, heads, hd, inter, layers, vocab) = (64, 4, 16, 128, 3, 48);
    std::fs::create_dir_all(dir).unwrap();
    let config = json!({
        "model_type": "llama", "hidden_size": h, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "hidden_act": "silu"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut state = 5u64;
    let mut uniform = move |scale: f32| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
    };
    let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, norm: bool| {
        let (n, k) = (shape[0], *shape.last().unwrap_or(&1));
        let v = (0..shape.iter().product::<usize>())
            .map(|i| match norm {
                true if i % 13 == 5 => 6.0,
                true => 1.0 + 0.2 * uniform(1.0),
                false => uniform(1.7 / (k as f32).sqrt()),
            })
            .collect();
        let _ = n;
        t.push((name, shape, v));
    };
    add("model.embed_tokens.weight".into(), vec![vocab, h], false);
    let (q, kv) = (heads * hd, kv_heads * hd);
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        add(format!("{p}.input_layernorm.weight"), vec![h], true);
        add(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            true,
        );
        for (name, shape) in [
            ("self_attn.q_proj", vec![q, h]),
            ("self_attn.k_proj", vec![kv, h]),
            ("self_attn.v_proj", vec![kv, h]),
            ("self_attn.o_proj", vec![h, q]),
            ("mlp.gate_proj", vec![inter, h]),
            ("mlp.up_proj", vec![inter, h]),
            ("mlp.down_proj", vec![h, inter]),
        ] {
            add(format!("{p}.{name}.weight"), shape, false);
        }
    }
    add("model.norm.weight".into(), vec![h], true);
    add("lm_head.weight".into(), vec![vocab, h], false);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = t
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

/// Every file of `a` has the same bytes in `b`, and `b` has no other.
fn same_files(a: &Path, b: &Path) {
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(a), names(b));
    for n in names(a) {
        let same = std::fs::read(a.join(&n)).unwrap() == std::fs::read(b.join(&n)).unwrap();
        assert!(
            same,
            "{n} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// Each method, over two checking "GPUs" (layers 0, 1 on the first, 2 on the second, loaded in the background),
/// writes the plain CPU run's bytes: no held weight is used stale.
#[test]
fn held_weights_follow_every_change_and_the_output_matches_the_cpu_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let windows: Vec<Vec<u32>> = (0..4u32)
        .map(|w| (0..32).map(|t| (w * 31 + t * 7 + t * t) % 48).collect())
        .collect();
    let methods = [
        ("rtn", Method::Rtn),
        ("gptq", Method::Gptq(GptqOptions::default())),
        (
            "gptq-together",
            Method::Gptq(GptqOptions {
                true_sequential: false,
                ..GptqOptions::default()
            }),
        ),
        ("awq", Method::Awq(AwqOptions::default())),
    ];
    // Every linear, and a part (v and o scaled by AWQ, up and down not; GPTQ's v_proj on its own Hessian).
    let parts = [
        ("all", Selected::ALL),
        (
            "part",
            Selected::from_names(&["v_proj".into(), "o_proj".into(), "gate_proj".into()])
                .unwrap()
                .0,
        ),
    ];
    for (kv_heads, (part, modules)) in [(2, parts[0]), (4, parts[0]), (4, parts[1])] {
        let fp = dir.path().join(format!("fp-{kv_heads}"));
        write_model(&fp, kv_heads);
        for (name, method) in methods {
            let name = format!("{name}-{part}");
            let options = QuantizeOptions {
                method,
                spec: QuantSpec {
                    bits: 4,
                    group_size: Some(32),
                    sym: false,
                },
                modules,
                lm_head: false,
                embeds: false,
                format: OutputFormat::Auto,
                device: Device::Cpu,
            };
            let run = |out: &Path, open: &dyn Fn(usize) -> Result<Placement>| {
                let (mut lines, mut reports) = (Vec::new(), Vec::new());
                let mut events = |e: Event<'_>| {
                    match e {
                        Event::Log(l) => lines.push(l.to_string()),
                        Event::Layer(r) => reports.push(r.index),
                    }
                    true
                };
                quantize_placed(&fp, out, &options, &windows, &mut events, open).unwrap();
                assert_eq!(reports, [0, 1, 2], "{name}: layer reports out of order");
                lines
            };
            let (cpu, gpus) = (
                dir.path().join(format!("{name}-{kv_heads}-cpu")),
                dir.path().join(format!("{name}-{kv_heads}-gpus")),
            );
            let lines = run(&cpu, &|layers| Placement::open(Device::Cpu, layers));
            assert!(
                lines.contains(&"devices: layers 0-2 on cpu".to_string()),
                "{lines:?}"
            );
            let lines = run(&gpus, &|layers| Ok(Placement::checking(2, layers)));
            let want = "devices: layers 0-1 on checking:0, layer 2 on checking:1".to_string();
            assert!(lines.contains(&want), "{lines:?}");
            for (i, c) in [(0, 0), (1, 0), (2, 1)] {
                let on = format!("layer {i}: ");
                let device = format!("calibration products on checking:{c}");
                assert!(
                    lines
                        .iter()
                        .any(|l| l.starts_with(&on) && l.ends_with(&device)),
                    "{name}: layer {i} not on checking:{c}: {lines:?}"
                );
            }
            same_files(&cpu, &gpus);
        }
    }
}

/// Stopping AWQ over two "GPUs" after the first layer's report (the later block may be further on) fails with
/// Cancelled and leaves no output folder.
#[test]
fn a_stop_during_the_awq_pipeline_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fp = dir.path().join("fp");
    write_model(&fp, 2);
    let windows: Vec<Vec<u32>> = (0..2u32)
        .map(|w| (0..32).map(|t| (w * 17 + t * 5) % 48).collect())
        .collect();
    let options = QuantizeOptions {
        method: Method::Awq(AwqOptions::default()),
        spec: QuantSpec {
            bits: 4,
            group_size: Some(32),
            sym: false,
        },
        modules: Selected::ALL,
        lm_head: false,
        embeds: false,
        format: OutputFormat::Auto,
        device: Device::Cpu,
    };
    let out = dir.path().join("out");
    let mut events = |e: Event<'_>| !matches!(e, Event::Layer(_));
    let open = |layers| Ok(Placement::checking(2, layers));
    let err = quantize_placed(&fp, &out, &options, &windows, &mut events, &open).unwrap_err();
    assert!(matches!(err, QuantError::Cancelled), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["fp"], "{left:?}");
}
