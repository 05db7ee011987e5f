//! What the GPU calibration tests (tests/gpu.rs) and the GPU calibration bench (benches/gpu_calibration.rs) share:
//! random Llama-family models of GPU-friendly shapes, calibration windows, a quantization on either device, the
//! packed levels read back through crates/model, and the agreement and perplexity of two outputs. Each of the two
//! uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::time::Instant;

use olive_model::quantized::{quantized_linear, QuantizationConfig, QuantizedLinear};
use olive_model::Checkpoint;
use olive_nn::Transformer;
use olive_quant::awq::AwqOptions;
use olive_quant::{
    quantize_model, Device, Event, GptqOptions, Method, OutputFormat, QuantSpec, QuantizeOptions,
    Selected,
};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

/// Relative difference allowed between the scales of the devices (float noise of the calibration products
/// through AWQ's x_mean and GPTQ's updated weights), for all but `SCALES_OFF` (tests/gpu.rs) of the groups.
pub const SCALE_REL: f32 = 1e-5;

/// A random Llama-family model's shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub inter: usize,
    pub layers: usize,
    pub vocab: usize,
}

/// splitmix64 → uniform in [−1, 1).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// Writes a random F32 llama model (separate q/k/v and gate/up, untied lm_head) into `dir`.
pub fn write_model(dir: &Path, s: Shape) {
    std::fs::create_dir_all(dir).unwrap();
    let head_dim = s.hidden / s.heads;
    let config = json!({
        "model_type": "llama", "hidden_size": s.hidden, "intermediate_size": s.inter,
        "num_hidden_layers": s.layers, "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads,
        "head_dim": head_dim, "vocab_size": s.vocab, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": false, "hidden_act": "silu", "bos_token_id": 1,
        "eos_token_id": 2
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut rng = Rng(11);
    let (q, kv, h) = (s.heads * head_dim, s.kv_heads * head_dim, s.hidden);
    let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let norm = |rng: &mut Rng| -> Vec<f32> {
        (0..h)
            .map(|i| {
                if i % 29 == 3 {
                    5.0
                } else {
                    1.0 + 0.2 * rng.next()
                }
            })
            .collect()
    };
    t.push((
        "model.embed_tokens.weight".into(),
        vec![s.vocab, h],
        rng.vec(s.vocab * h, 1.0),
    ));
    for i in 0..s.layers {
        let p = format!("model.layers.{i}");
        for n in ["input_layernorm", "post_attention_layernorm"] {
            t.push((format!("{p}.{n}.weight"), vec![h], norm(&mut rng)));
        }
        for (name, out, inp) in [
            ("self_attn.q_proj", q, h),
            ("self_attn.k_proj", kv, h),
            ("self_attn.v_proj", kv, h),
            ("self_attn.o_proj", h, q),
            ("mlp.gate_proj", s.inter, h),
            ("mlp.up_proj", s.inter, h),
            ("mlp.down_proj", h, s.inter),
        ] {
            let w = rng.vec(out * inp, 1.7 / (inp as f32).sqrt());
            t.push((format!("{p}.{name}.weight"), vec![out, inp], w));
        }
    }
    t.push(("model.norm.weight".into(), vec![h], norm(&mut rng)));
    t.push((
        "lm_head.weight".into(),
        vec![s.vocab, h],
        rng.vec(s.vocab * h, 1.0 / (h as f32).sqrt()),
    ));
    // Each tensor's f32 buffer is dropped as its bytes are made (a Phi-3.5-mini-shaped model is ~15 GB).
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = t
        .into_iter()
        .map(|(n, shape, v)| {
            let mut b = Vec::with_capacity(v.len() * 4);
            for x in v {
                b.extend_from_slice(&x.to_le_bytes());
            }
            (n, shape, b)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, shape, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

/// `n` windows of `len` seeded tokens.
pub fn windows(n: usize, len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| {
            (0..len)
                .map(|_| ((rng.next() + 1.0) * 0.5 * vocab as f32) as u32 % vocab as u32)
                .collect()
        })
        .collect()
}

pub fn options(method: Method, device: Device) -> QuantizeOptions {
    QuantizeOptions {
        method,
        spec: QuantSpec {
            bits: 4,
            group_size: Some(128),
            sym: false,
        },
        modules: Selected::ALL,
        lm_head: false,
        embeds: false,
        format: OutputFormat::Auto,
        device,
    }
}

/// Quantizes `input` into `output` on `device`; returns the seconds taken and the per-layer time lines.
pub fn quantize(
    input: &Path,
    output: &Path,
    method: Method,
    device: Device,
    cal: &[Vec<u32>],
) -> (f64, Vec<String>) {
    let t0 = Instant::now();
    let mut lines = Vec::new();
    let o = options(method, device);
    quantize_model(input, output, &o, cal, &mut |e| {
        if let Event::Log(l) = e {
            if l.contains("calibration products") {
                lines.push(l.to_string());
            }
        }
        true
    })
    .unwrap();
    (t0.elapsed().as_secs_f64(), lines)
}

/// Every quantized linear of a quantized model folder, by name.
pub fn linears(dir: &Path, s: Shape) -> Vec<(String, QuantizedLinear)> {
    let cfg = QuantizationConfig::from_config_json(&dir.join("config.json"))
        .unwrap()
        .expect("quantization_config");
    let ckpt = Checkpoint::open(dir).unwrap();
    let mut out = Vec::new();
    for i in 0..s.layers {
        for m in [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            let name = format!("model.layers.{i}.{m}");
            let l = quantized_linear(&ckpt, &name, &cfg).unwrap();
            out.push((name, l));
        }
    }
    out
}

/// How far two quantizations of one model agree.
#[derive(Debug)]
pub struct Agreement {
    pub levels_different: f64,
    pub scales_off: f64,
    pub max_scale_rel: f32,
    pub zeros_different: f64,
    /// The linear with the most differing levels, and that fraction.
    pub worst: (String, f64),
}

pub fn agreement(a: &[(String, QuantizedLinear)], b: &[(String, QuantizedLinear)]) -> Agreement {
    let (mut levels, mut level_diff) = (0usize, 0usize);
    let (mut groups, mut scales_off, mut zeros_diff) = (0usize, 0usize, 0usize);
    let mut max_scale_rel = 0f32;
    let mut worst = (String::new(), 0f64);
    for ((na, la), (nb, lb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        assert_eq!(
            (la.q.len(), la.scales.len(), la.g_idx.as_ref()),
            (lb.q.len(), lb.scales.len(), lb.g_idx.as_ref()),
            "{na}"
        );
        levels += la.q.len();
        let diff = la.q.iter().zip(&lb.q).filter(|(x, y)| x != y).count();
        level_diff += diff;
        if diff as f64 / la.q.len() as f64 > worst.1 {
            worst = (na.clone(), diff as f64 / la.q.len() as f64);
        }
        groups += la.scales.len();
        zeros_diff += la
            .zeros
            .iter()
            .zip(&lb.zeros)
            .filter(|(x, y)| x != y)
            .count();
        for (x, y) in la.scales.iter().zip(&lb.scales) {
            let rel = (x - y).abs() / x.abs().max(f32::MIN_POSITIVE);
            assert!(rel.is_finite(), "{na}: scale {x} vs {y}");
            max_scale_rel = max_scale_rel.max(rel);
            if rel > SCALE_REL {
                scales_off += 1;
            }
        }
    }
    Agreement {
        levels_different: level_diff as f64 / levels as f64,
        scales_off: scales_off as f64 / groups as f64,
        max_scale_rel,
        zeros_different: zeros_diff as f64 / groups as f64,
        worst,
    }
}

/// exp(mean next-token NLL) of the model in `dir` over `windows`, on the CPU transformer.
pub fn perplexity(dir: &Path, windows: &[Vec<u32>]) -> f64 {
    let m = Transformer::load(dir).unwrap();
    let (mut nll, mut n) = (0f64, 0usize);
    for w in windows {
        let logits = m.forward(w, &mut m.new_cache(w.len())).unwrap();
        let vocab = logits.len() / w.len();
        for (t, row) in logits.chunks_exact(vocab).enumerate().take(w.len() - 1) {
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let lse = f64::from(max)
                + row
                    .iter()
                    .map(|&v| f64::from(v - max).exp())
                    .sum::<f64>()
                    .ln();
            nll += lse - f64::from(row[w[t + 1] as usize]);
            n += 1;
        }
    }
    (nll / n as f64).exp()
}

/// The files of `a` and `b` whose bytes differ, and the names only one of them has.
pub fn different_files(a: &Path, b: &Path) -> Vec<String> {
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let (na, nb) = (names(a), names(b));
    let mut out: Vec<String> = na
        .iter()
        .chain(&nb)
        .filter(|n| !(na.contains(n) && nb.contains(n)))
        .cloned()
        .collect();
    out.extend(
        na.iter()
            .filter(|n| nb.contains(n))
            .filter(|n| std::fs::read(a.join(n)).unwrap() != std::fs::read(b.join(n)).unwrap())
            .cloned(),
    );
    out
}

/// The GPUs the driver reports (0 without a driver).
pub fn gpu_count() -> usize {
    olive_kernels::cuda::Gpu::count().unwrap_or(0)
}

pub fn methods() -> [(&'static str, Method); 2] {
    [
        ("awq", Method::Awq(AwqOptions::default())),
        ("gptq", Method::Gptq(GptqOptions::default())),
    ]
}
