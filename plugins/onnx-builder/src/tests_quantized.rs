//! Tests of pre-quantized checkpoints (AutoAWQ GEMM, GPTQ v1; `olive_model::quantized`) in ModelBuilder: the
//! MatMulNBits initializers are exactly `pack_prequantized` of the checkpoint's levels (no requantization),
//! fused qkv and ragged groups included, act-order through a Gather into group order. The logits check against
//! numpy is in tests/python/test_quantized_layouts.py (act-order: tests/python/test_quantize.py).

use std::path::Path;

use olive_model::quantized::{pack_awq_gemm, pack_gptq_v1, PackedTensor, QuantizedLinear};
use olive_model::Checkpoint;
use olive_onnx::matmul_nbits::{pack_prequantized, NBitsConfig};
use olive_onnx::proto::ModelProto;
use safetensors::tensor::TensorView;
use serde_json::json;

use crate::tests::{export, nodes, tiny_model, HIDDEN, INTER, LAYERS};

/// Asymmetric 4-bit RTN of w [out, in] with a ragged last group.
fn rtn(w: &[f32], out: usize, k: usize, group: usize) -> QuantizedLinear {
    let groups = k.div_ceil(group);
    let (mut q, mut scales, mut zeros) = (
        vec![0u8; out * k],
        vec![0f32; out * groups],
        vec![0u8; out * groups],
    );
    for o in 0..out {
        for g in 0..groups {
            let cols = g * group..(g * group + group).min(k);
            let row = &w[o * k..(o + 1) * k];
            let lo = cols.clone().map(|i| row[i]).fold(0f32, f32::min);
            let hi = cols.clone().map(|i| row[i]).fold(0f32, f32::max);
            // a multiple of 1/1024 below 2: exact in the checkpoint's fp16
            let s = ((hi - lo) / 15.0 * 1024.0).round().max(1.0) / 1024.0;
            let z = (-lo / s).round().clamp(1.0, 15.0);
            scales[o * groups + g] = s;
            zeros[o * groups + g] = z as u8;
            for i in cols {
                q[o * k + i] = (row[i] / s + z).round().clamp(0.0, 15.0) as u8;
            }
        }
    }
    QuantizedLinear {
        bits: 4,
        group_size: group,
        in_features: k,
        out_features: out,
        q,
        scales,
        zeros,
        g_idx: None,
    }
}

/// Decoder linears of the tiny llama: (prefix, out, in).
fn linears() -> Vec<(String, usize, usize)> {
    let mut v = Vec::new();
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        for (name, out) in [("q_proj", 32), ("k_proj", 16), ("v_proj", 16)] {
            v.push((format!("{p}.self_attn.{name}"), out, HIDDEN));
        }
        v.push((format!("{p}.self_attn.o_proj"), HIDDEN, 32));
        v.push((format!("{p}.mlp.gate_proj"), INTER, HIDDEN));
        v.push((format!("{p}.mlp.up_proj"), INTER, HIDDEN));
        v.push((format!("{p}.mlp.down_proj"), HIDDEN, INTER));
    }
    v
}

/// Rewrites the tiny llama at `dir` as a quantized checkpoint; returns the quantized linears by prefix.
fn quantize_folder(
    dir: &Path,
    group: usize,
    qcfg: serde_json::Value,
    pack: fn(&QuantizedLinear) -> Result<Vec<PackedTensor>, olive_model::quantized::PackError>,
    edit: impl Fn(&mut QuantizedLinear),
) -> Vec<(String, QuantizedLinear)> {
    let ckpt = Checkpoint::open(dir).unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut quantized = Vec::new();
    let lin = linears();
    for name in ckpt.names() {
        if lin.iter().any(|(p, _, _)| name == format!("{p}.weight")) {
            continue;
        }
        let raw = ckpt.raw(name).unwrap();
        tensors.push((
            name.to_string(),
            raw.dtype,
            raw.shape.to_vec(),
            raw.bytes.to_vec(),
        ));
    }
    for (prefix, out, k) in lin {
        let w = ckpt.tensor_f32(&format!("{prefix}.weight")).unwrap().data;
        let mut q = rtn(&w, out, k, group);
        edit(&mut q);
        for (suffix, dtype, shape, bytes) in pack(&q).unwrap() {
            tensors.push((format!("{prefix}.{suffix}"), dtype, shape, bytes));
        }
        quantized.push((prefix, q));
    }
    drop(ckpt);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["quantization_config"] = qcfg;
    std::fs::write(&path, config.to_string()).unwrap();
    quantized
}

/// An initializer's bytes, inline or in the external data file.
fn initializer(m: &ModelProto, dir: &Path, name: &str) -> Vec<u8> {
    let t = m
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(name));
    let t = t.unwrap_or_else(|| panic!("no initializer {name}"));
    if let Some(raw) = &t.raw_data {
        return raw.clone();
    }
    let get = |k: &str| {
        t.external_data
            .iter()
            .find(|e| e.key.as_deref() == Some(k))
            .and_then(|e| e.value.clone())
            .unwrap()
    };
    let data = std::fs::read(dir.join(get("location"))).unwrap();
    let (off, len): (usize, usize) = (
        get("offset").parse().unwrap(),
        get("length").parse().unwrap(),
    );
    data[off..off + len].to_vec()
}

/// Checks the MatMulNBits initializers of `module` (ONNX path) against `pack_prequantized(q)`.
fn check_prequantized(m: &ModelProto, out: &Path, module: &str, q: &QuantizedLinear, block: usize) {
    let cfg = NBitsConfig {
        block_size: block,
        accuracy_level: Some(4),
        ..NBitsConfig::int4(block, false)
    };
    let want = pack_prequantized(
        &q.q,
        &q.scales,
        Some(&q.zeros),
        q.out_features,
        q.in_features,
        q.group_size,
        &cfg,
    )
    .unwrap();
    let base = format!("{module}.MatMul.weight");
    assert_eq!(
        initializer(m, out, &format!("{base}_Q4")),
        want.b,
        "{module} B"
    );
    assert_eq!(
        initializer(m, out, &format!("{base}_scales")),
        want.scales_bytes(),
        "{module} scales"
    );
    assert_eq!(
        initializer(m, out, &format!("{base}_zero_points")),
        want.zero_points.clone().unwrap(),
        "{module} zero points"
    );
}

#[test]
fn awq_checkpoint_goes_into_matmulnbits_without_requantizing() {
    let (input, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    tiny_model(input.path(), "llama", json!({}));
    let qcfg = json!({"quant_method": "awq", "bits": 4, "group_size": 16, "zero_point": true, "version": "gemm"});
    let q = quantize_folder(input.path(), 16, qcfg, pack_awq_gemm, |_| {});
    let m = export(
        input.path(),
        out.path(),
        r#"{"precision": "int4", "int4_block_size": 32}"#,
    )
    .unwrap();
    assert_eq!(nodes(&m, "MatMulNBits").len(), LAYERS * 5 + 1);
    // block 16: the largest power of two <= 32 dividing the group size 16
    let qkv = QuantizedLinear::concat(&[q[0].1.clone(), q[1].1.clone(), q[2].1.clone()]).unwrap();
    check_prequantized(&m, out.path(), "model.layers.0.attn.qkv_proj", &qkv, 16);
    check_prequantized(&m, out.path(), "model.layers.1.attn.o_proj", &q[10].1, 16);
    check_prequantized(&m, out.path(), "model.layers.1.mlp.down_proj", &q[13].1, 16);
}

#[test]
fn gptq_ragged_group_and_act_order() {
    let (input, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    tiny_model(input.path(), "llama", json!({}));
    let qcfg = json!({"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": false, "sym": false});
    let q = quantize_folder(input.path(), 32, qcfg, pack_gptq_v1, |_| {});
    let m = export(input.path(), out.path(), r#"{"precision": "int4"}"#).unwrap();
    // down_proj: 48 inputs in groups of 32, the last one ragged (16)
    assert_eq!(q[6].1.n_groups(), 2);
    check_prequantized(&m, out.path(), "model.layers.0.mlp.down_proj", &q[6].1, 32);
    check_prequantized(&m, out.path(), "model.layers.0.mlp.gate_proj", &q[4].1, 32);

    // act-order (a permuted g_idx): the input is gathered into group order and the levels go in in that order;
    // linears in one order share a MatMulNBits (gate/up); q beside k/v in another order get one each (Concat)
    let (input, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    tiny_model(input.path(), "llama", json!({}));
    let qcfg = json!({"quant_method": "gptq", "bits": 4, "group_size": 16, "desc_act": true, "sym": false});
    let q = quantize_folder(input.path(), 16, qcfg, pack_gptq_v1, |q| {
        let shift = if q.out_features == 16 { 2 } else { 1 }; // k_proj and v_proj in another order than q_proj
        q.g_idx = Some(
            (0..q.in_features)
                .map(|i| ((i + shift) % q.n_groups()) as u32)
                .collect(),
        );
    });
    let m = export(input.path(), out.path(), r#"{"precision": "int4"}"#).unwrap();
    let o_proj = &q[3].1;
    let (_, sorted) = crate::linear::in_group_order(o_proj, "o").unwrap();
    check_prequantized(&m, out.path(), "model.layers.0.attn.o_proj", &sorted, 16);
    let perm = initializer(
        &m,
        out.path(),
        "model.layers.0.attn.o_proj.MatMul.weight_perm",
    );
    let perm: Vec<i64> = perm
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let g_idx = o_proj.g_idx.as_ref().unwrap();
    assert!(
        perm.windows(2)
            .all(|w| g_idx[w[0] as usize] <= g_idx[w[1] as usize]),
        "{perm:?}"
    );
    assert!(
        nodes(&m, "Gather").len() > LAYERS * 4,
        "one Gather per act-order MatMulNBits"
    );
    assert_eq!(
        nodes(&m, "Concat").len(),
        LAYERS,
        "qkv: q in one order, k/v in another"
    );

    // a GPTQ v1 zero point of 16 (stored 15) has no 4-bit MatMulNBits zero point
    let (input, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    tiny_model(input.path(), "llama", json!({}));
    let qcfg = json!({"quant_method": "gptq", "bits": 4, "group_size": 16, "sym": false});
    quantize_folder(input.path(), 16, qcfg, pack_gptq_v1, |q| {
        if q.out_features == HIDDEN && q.in_features == 32 {
            q.zeros[0] = 16;
        }
    });
    let err = export(input.path(), out.path(), r#"{"precision": "int4"}"#).unwrap_err();
    assert!(
        err.contains("model.layers.0.attn") && err.contains("zero point 16"),
        "{err}"
    );
}

#[test]
fn fp32_export_of_a_quantized_checkpoint_dequantizes() {
    let (input, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    tiny_model(input.path(), "llama", json!({}));
    let qcfg = json!({"quant_method": "awq", "bits": 4, "group_size": 16, "zero_point": true, "version": "gemm"});
    let q = quantize_folder(input.path(), 16, qcfg, pack_awq_gemm, |_| {});
    let m = export(input.path(), out.path(), r#"{"precision": "fp32"}"#).unwrap();
    assert!(nodes(&m, "MatMulNBits").is_empty());
    let o = &q[3].1;
    let want =
        olive_onnx::tensor::f32_bytes(&olive_onnx::tensor::transpose(&o.dequantize(), HIDDEN, 32));
    assert_eq!(
        initializer(&m, out.path(), "model.layers.0.attn.o_proj.MatMul.weight"),
        want
    );
}

#[test]
fn three_and_two_bit_levels_go_into_4_bit_matmulnbits_unchanged() {
    for bits in [2u8, 3] {
        let (k, n, group) = (64, 8, 32);
        let top = (1u32 << bits) as usize;
        let q = QuantizedLinear {
            bits,
            group_size: group,
            in_features: k,
            out_features: n,
            q: (0..n * k).map(|i| ((i * 5 + 1) % top) as u8).collect(),
            scales: (0..n * 2).map(|i| (i + 1) as f32 / 64.0).collect(),
            // GPTQ v1 reads a stored 2^bits − 1 back as 2^bits: still a 4-bit zero point
            zeros: (0..n * 2).map(|i| (i % top + 1) as u8).collect(),
            g_idx: None,
        };
        let cfg = NBitsConfig::int4(32, true);
        let got = crate::linear::prequantized(&q, &cfg, "w").unwrap();
        assert_eq!(got.config.bits, 4);
        assert_eq!(got.dequantize(), q.dequantize(), "bits {bits}");
        for (o, i) in [(0, 0), (3, 40), (7, 63)] {
            assert_eq!(got.value(o, i), q.q[o * k + i], "bits {bits} ({o}, {i})");
        }
    }
}
