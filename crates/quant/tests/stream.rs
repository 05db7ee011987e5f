//! quantize_model end to end on tiny random llama / phi3 (fused projections) / qwen2 (q/k/v bias) models written
//! here: every method's output reads back through crates/model and olive_nn::Transformer (which dequantizes
//! AWQ GEMM / GPTQ on load), logits stay near the float model's, AWQ and GPTQ beat RTN on the calibration
//! tokens, one shard per layer, and bad inputs leave no output folder.

use std::path::{Path, PathBuf};

use olive_model::quantized::{is_quantized, QuantMethod, QuantizationConfig};
use olive_model::Checkpoint;
use olive_nn::Transformer;
use olive_quant::awq::AwqOptions;
use olive_quant::stream::ErrorMetric;
use olive_quant::{
    quantize_model, Event, GptqOptions, LayerReport, Method, OutputFormat, QuantSpec,
    QuantizeOptions, Selected,
};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const INTER: usize = 128;
const LAYERS: usize = 2;
const VOCAB: usize = 96;
/// Relative logit error (MSE over the float logits' variance) allowed at 4 bits: these random 2-layer models with
/// 6× norm channels lose 6-10% with RTN at group 32 (trained models lose far less).
const INT4_LOGIT_ERROR: f64 = 0.2;
/// The same at 8 bits.
const INT8_LOGIT_ERROR: f64 = 0.01;

#[derive(Clone, Copy, PartialEq)]
enum Arch {
    Llama,
    Phi3,
    Qwen2,
}

/// Deterministic uniform numbers in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// A tiny random model of `arch` in `dir` (F32, or BF16 for the non-norm weights when `bf16`). Norm weights carry
/// a few large channels, as trained models' activations do (what AWQ's scales are for).
fn write_model(dir: &Path, arch: Arch, bf16: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let model_type = match arch {
        Arch::Llama => "llama",
        Arch::Phi3 => "phi3",
        Arch::Qwen2 => "qwen2",
    };
    let config = json!({
        "model_type": model_type, "hidden_size": HIDDEN, "intermediate_size": INTER,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "vocab_size": VOCAB, "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"max_new_tokens": 4}"#,
    )
    .unwrap();
    let mut rng = Lcg(7);
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let lin = |rng: &mut Lcg, out: usize, inp: usize| rng.vec(out * inp, 1.7 / (inp as f32).sqrt());
    let norm = |rng: &mut Lcg| -> Vec<f32> {
        (0..HIDDEN)
            .map(|i| {
                if i % 13 == 5 {
                    6.0
                } else {
                    1.0 + 0.2 * rng.next()
                }
            })
            .collect()
    };
    tensors.push((
        "model.embed_tokens.weight".into(),
        vec![VOCAB, HIDDEN],
        rng.vec(VOCAB * HIDDEN, 1.0),
    ));
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        tensors.push((
            format!("{p}.input_layernorm.weight"),
            vec![HIDDEN],
            norm(&mut rng),
        ));
        tensors.push((
            format!("{p}.post_attention_layernorm.weight"),
            vec![HIDDEN],
            norm(&mut rng),
        ));
        if arch == Arch::Phi3 {
            let n = q + 2 * kv;
            tensors.push((
                format!("{p}.self_attn.qkv_proj.weight"),
                vec![n, HIDDEN],
                lin(&mut rng, n, HIDDEN),
            ));
            let n = 2 * INTER;
            tensors.push((
                format!("{p}.mlp.gate_up_proj.weight"),
                vec![n, HIDDEN],
                lin(&mut rng, n, HIDDEN),
            ));
        } else {
            for (name, n) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                tensors.push((
                    format!("{p}.self_attn.{name}.weight"),
                    vec![n, HIDDEN],
                    lin(&mut rng, n, HIDDEN),
                ));
                if arch == Arch::Qwen2 {
                    tensors.push((
                        format!("{p}.self_attn.{name}.bias"),
                        vec![n],
                        rng.vec(n, 0.1),
                    ));
                }
            }
            for name in ["gate_proj", "up_proj"] {
                tensors.push((
                    format!("{p}.mlp.{name}.weight"),
                    vec![INTER, HIDDEN],
                    lin(&mut rng, INTER, HIDDEN),
                ));
            }
        }
        tensors.push((
            format!("{p}.self_attn.o_proj.weight"),
            vec![HIDDEN, q],
            lin(&mut rng, HIDDEN, q),
        ));
        tensors.push((
            format!("{p}.mlp.down_proj.weight"),
            vec![HIDDEN, INTER],
            lin(&mut rng, HIDDEN, INTER),
        ));
    }
    tensors.push(("model.norm.weight".into(), vec![HIDDEN], vec![1.0; HIDDEN]));
    tensors.push((
        "lm_head.weight".into(),
        vec![VOCAB, HIDDEN],
        lin(&mut rng, VOCAB, HIDDEN),
    ));
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, v)| {
            if bf16 && !n.contains("norm") {
                let b = v
                    .iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect();
                (n, Dtype::BF16, s, b)
            } else {
                (
                    n,
                    Dtype::F32,
                    s,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            }
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

/// Seeded calibration windows: `n` windows of `len` tokens.
fn calibration(n: usize, len: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = Lcg(seed);
    (0..n)
        .map(|_| {
            (0..len)
                .map(|_| ((rng.next() + 1.0) * 0.5 * VOCAB as f32) as u32 % VOCAB as u32)
                .collect()
        })
        .collect()
}

fn opts(method: Method, bits: u8, group: Option<usize>) -> QuantizeOptions {
    QuantizeOptions {
        method,
        spec: QuantSpec {
            bits,
            group_size: group,
            sym: false,
        },
        modules: Selected::ALL,
        lm_head: false,
        embeds: false,
        format: OutputFormat::Auto,
        device: olive_quant::Device::Cpu,
    }
}

fn awq() -> Method {
    Method::Awq(AwqOptions::default())
}

fn gptq_method() -> Method {
    Method::Gptq(GptqOptions::default())
}

/// Runs the quantizer, collecting layer reports and log lines.
fn run(
    input: &Path,
    output: &Path,
    o: &QuantizeOptions,
    cal: &[Vec<u32>],
) -> olive_quant::Result<(olive_quant::Summary, Vec<LayerReport>, Vec<String>)> {
    let (mut reports, mut logs) = (Vec::new(), Vec::new());
    let s = quantize_model(input, output, o, cal, &mut |e| {
        match e {
            Event::Layer(r) => reports.push(r.clone()),
            Event::Log(l) => logs.push(l.to_string()),
        }
        true
    })?;
    Ok((s, reports, logs))
}

/// Mean squared difference of the two models' logits over the windows, relative to the float logits' variance.
fn logit_error(fp: &Path, quant: &Path, windows: &[Vec<u32>]) -> f64 {
    let a = Transformer::load(fp).unwrap();
    let b = Transformer::load(quant).unwrap();
    let (mut num, mut den) = (0f64, 0f64);
    for w in windows {
        let la = a.forward(w, &mut a.new_cache(w.len())).unwrap();
        let lb = b.forward(w, &mut b.new_cache(w.len())).unwrap();
        let mean = la.iter().map(|v| f64::from(*v)).sum::<f64>() / la.len() as f64;
        for (x, y) in la.iter().zip(&lb) {
            num += f64::from(x - y).powi(2);
            den += (f64::from(*x) - mean).powi(2);
        }
    }
    num / den
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("out"))
        })
        .collect()
}

#[test]
fn each_method_reads_back_close_to_fp_and_awq_gptq_beat_rtn() {
    let dir = tmp();
    let fp = dir.path().join("fp");
    write_model(&fp, Arch::Llama, false);
    let cal = calibration(8, 32, 1);
    let held_out = calibration(3, 24, 99);
    let mut errors = Vec::new();
    for (name, method) in [
        ("rtn", Method::Rtn),
        ("awq", awq()),
        ("gptq", gptq_method()),
    ] {
        let out = dir.path().join(format!("out-{name}"));
        let (summary, reports, _) = run(&fp, &out, &opts(method, 4, Some(32)), &cal).unwrap();
        assert_eq!(reports.len(), LAYERS, "{name}");
        assert!(reports
            .iter()
            .all(|r| r.metric == ErrorMetric::Output && r.error.is_finite()));
        assert_eq!(summary.quantized_linears, LAYERS * 7, "{name}");
        let expect = if name == "awq" {
            OutputFormat::AwqGemm
        } else {
            OutputFormat::GptqV1
        };
        assert_eq!(summary.format, expect, "{name}");
        let qc = QuantizationConfig::from_config_json(&out.join("config.json"))
            .unwrap()
            .unwrap();
        let method_read = if name == "awq" {
            QuantMethod::AwqGemm
        } else {
            QuantMethod::Gptq { v2: false }
        };
        assert_eq!(
            (qc.method, qc.bits, qc.group_size, qc.sym),
            (method_read, 4, Some(32), false)
        );
        let ckpt = Checkpoint::open(&out).unwrap();
        for i in 0..LAYERS {
            for m in [
                "self_attn.q_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ] {
                assert!(
                    is_quantized(&ckpt, &format!("model.layers.{i}.{m}")),
                    "{name} {m}"
                );
            }
            // One shard per layer, the last one for the rest.
            let file = ckpt
                .file_of(&format!("model.layers.{i}.mlp.down_proj.qweight"))
                .unwrap();
            assert!(file.ends_with(format!(
                "model-{:05}-of-{:05}.safetensors",
                i + 1,
                LAYERS + 1
            )));
        }
        assert!(ckpt
            .file_of("lm_head.weight")
            .unwrap()
            .ends_with("model-00003-of-00003.safetensors"));
        assert!(out.join("generation_config.json").is_file());
        let err_cal = logit_error(&fp, &out, &cal);
        let err_held = logit_error(&fp, &out, &held_out);
        eprintln!(
            "{name}: logit error {err_cal} / {err_held}, layers {:?}",
            reports.iter().map(|r| r.error).collect::<Vec<_>>()
        );
        assert!(
            err_cal < INT4_LOGIT_ERROR && err_held < INT4_LOGIT_ERROR,
            "{name}: logit error {err_cal} / {err_held}"
        );
        let layer_sum: f64 = reports.iter().map(|r| r.error).sum();
        errors.push((name, err_cal, layer_sum));
    }
    let (rtn, awq, gptq) = (errors[0].1, errors[1].1, errors[2].1);
    eprintln!("{errors:?}");
    assert!(
        awq < rtn && gptq < rtn,
        "logit errors on the calibration tokens: {errors:?}"
    );
}

#[test]
fn fused_phi3_and_biased_qwen2_round_trip() {
    let dir = tmp();
    let cal = calibration(4, 32, 3);
    for (arch, bf16) in [(Arch::Phi3, false), (Arch::Qwen2, true)] {
        let fp = dir
            .path()
            .join(if arch == Arch::Phi3 { "phi3" } else { "qwen2" });
        write_model(&fp, arch, bf16);
        for (name, method) in [
            ("rtn", Method::Rtn),
            ("awq", awq()),
            ("gptq", gptq_method()),
        ] {
            let out = dir.path().join(format!(
                "out-{}-{name}",
                fp.file_name().unwrap().to_string_lossy()
            ));
            run(&fp, &out, &opts(method, 4, Some(16)), &cal).unwrap();
            let ckpt = Checkpoint::open(&out).unwrap();
            if arch == Arch::Phi3 {
                assert!(is_quantized(&ckpt, "model.layers.1.self_attn.qkv_proj"));
                assert!(is_quantized(&ckpt, "model.layers.1.mlp.gate_up_proj"));
                assert!(!ckpt.contains("model.layers.1.self_attn.q_proj.qweight"));
            } else {
                // Biases stay in the input's dtype.
                let raw = ckpt.raw("model.layers.0.self_attn.v_proj.bias").unwrap();
                assert_eq!(raw.dtype, Dtype::BF16);
                assert_eq!(ckpt.raw("lm_head.weight").unwrap().dtype, Dtype::BF16);
            }
            let err = logit_error(&fp, &out, &cal);
            eprintln!("{name} {}: {err}", fp.display());
            assert!(
                err < INT4_LOGIT_ERROR,
                "{name} on {}: logit error {err}",
                fp.display()
            );
        }
    }
}

#[test]
fn awq_ragged_or_int8_falls_back_to_gptq_layout_and_rtn_runs_without_calibration() {
    let dir = tmp();
    let fp = dir.path().join("fp");
    write_model(&fp, Arch::Llama, false);
    let cal = calibration(4, 32, 5);
    // Group 48 does not divide 64 (ragged last group); int8 has no AWQ GEMM layout.
    for (bits, group) in [(4, Some(48)), (8, Some(32))] {
        let out = dir.path().join(format!("out-{bits}-{group:?}"));
        let (summary, _, logs) = run(&fp, &out, &opts(awq(), bits, group), &cal).unwrap();
        assert_eq!(summary.format, OutputFormat::GptqV1);
        assert!(logs.iter().any(|l| l.contains("GPTQ v1")), "{logs:?}");
        let qc = QuantizationConfig::from_config_json(&out.join("config.json"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (qc.method, qc.bits),
            (QuantMethod::Gptq { v2: false }, bits)
        );
        let err = logit_error(&fp, &out, &cal);
        eprintln!("awq {bits} {group:?}: {err}");
        assert!(
            err < if bits == 8 {
                INT8_LOGIT_ERROR
            } else {
                INT4_LOGIT_ERROR
            },
            "{err}"
        );
    }
    let out = dir.path().join("out-rtn-nocal");
    let o = QuantizeOptions {
        modules: Selected::from_names(&["down_proj".into(), "o_proj".into()])
            .unwrap()
            .0,
        ..opts(Method::Rtn, 4, None)
    };
    let (_, reports, _) = run(&fp, &out, &o, &[]).unwrap();
    eprintln!("{reports:?}");
    assert!(reports
        .iter()
        .all(|r| r.metric == ErrorMetric::Weight && r.error > 0.0 && r.error < 0.05));
    let ckpt = Checkpoint::open(&out).unwrap();
    assert!(is_quantized(&ckpt, "model.layers.0.mlp.down_proj"));
    assert!(ckpt.contains("model.layers.0.mlp.up_proj.weight"));
    let qc = QuantizationConfig::from_config_json(&out.join("config.json"))
        .unwrap()
        .unwrap();
    assert_eq!(qc.group_size, None);
    let err = logit_error(&fp, &out, &cal);
    eprintln!("rtn o/down per-channel: {err}");
    assert!(err < INT4_LOGIT_ERROR, "{err}");
}

#[test]
fn bad_inputs_fail_clearly_and_leave_nothing() {
    let dir = tmp();
    let fp = dir.path().join("fp");
    write_model(&fp, Arch::Llama, false);
    let cal = calibration(2, 16, 9);
    let quantized = dir.path().join("q");
    run(&fp, &quantized, &opts(Method::Rtn, 4, Some(32)), &[]).unwrap();
    let unknown = dir.path().join("gpt2");
    std::fs::create_dir(&unknown).unwrap();
    std::fs::copy(
        fp.join("model.safetensors"),
        unknown.join("model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fp.join("config.json")).unwrap()).unwrap();
    config["model_type"] = json!("gpt2");
    std::fs::write(unknown.join("config.json"), config.to_string()).unwrap();

    let cases: Vec<(&Path, QuantizeOptions, Vec<Vec<u32>>, &str)> = vec![
        (
            &quantized,
            opts(Method::Rtn, 4, Some(32)),
            vec![],
            "already quantized",
        ),
        (
            &fp,
            QuantizeOptions {
                format: OutputFormat::AwqGemm,
                device: olive_quant::Device::Cpu,
                ..opts(gptq_method(), 3, Some(32))
            },
            cal.clone(),
            "bits 3 (AutoAWQ GEMM packs 4)",
        ),
        (&fp, opts(Method::Rtn, 5, Some(32)), vec![], "bits 5"),
        (&fp, opts(Method::Rtn, 4, Some(0)), vec![], "group_size 0"),
        (
            &fp,
            opts(gptq_method(), 4, Some(32)),
            vec![],
            "no calibration samples",
        ),
        (
            &fp,
            opts(awq(), 4, Some(32)),
            vec![vec![]],
            "sample 0 is empty",
        ),
        (
            &fp,
            opts(awq(), 4, Some(32)),
            vec![vec![1, 2], vec![3]],
            "one length",
        ),
        (
            &fp,
            opts(awq(), 4, Some(32)),
            vec![vec![1, 500]],
            "vocabulary",
        ),
        (&unknown, opts(Method::Rtn, 4, Some(32)), vec![], "gpt2"),
        (
            &fp,
            QuantizeOptions {
                format: OutputFormat::AwqGemm,
                device: olive_quant::Device::Cpu,
                ..opts(awq(), 4, Some(48))
            },
            cal.clone(),
            "does not divide",
        ),
    ];
    for (input, o, cal, expect) in cases {
        let out = dir.path().join("out");
        let err = run(input, &out, &o, &cal).expect_err(expect).to_string();
        assert!(err.contains(expect), "expected `{expect}` in: {err}");
        assert!(
            leftovers(dir.path()).is_empty(),
            "{expect}: {:?}",
            leftovers(dir.path())
        );
    }
    assert!(Selected::from_names(&["lm_heads".into()])
        .unwrap_err()
        .to_string()
        .contains("unknown module `lm_heads`"));

    // A stop request after the first layer removes the partial output.
    let out = dir.path().join("out");
    let err = quantize_model(&fp, &out, &opts(Method::Rtn, 4, Some(32)), &[], &mut |e| {
        !matches!(e, Event::Layer(_))
    })
    .unwrap_err();
    assert!(matches!(err, olive_quant::QuantError::Cancelled));
    assert!(leftovers(dir.path()).is_empty());
}
