//! Tests of the AWQ GEMM, GPTQ v1 and Olive layouts: known words, pack → safetensors → read round trips, errors.

use super::*;
use safetensors::tensor::TensorView;
use serde_json::json;

/// A deterministic linear: levels and zeros < 2^bits (zeros ≥ 1), fp16-exact scales.
fn linear(bits: u8, group_size: usize, k: usize, n: usize) -> QuantizedLinear {
    let groups = k.div_ceil(group_size);
    let levels = 1u32 << bits;
    let mut seed = 12345u32;
    let mut next = || {
        seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
        seed >> 8
    };
    QuantizedLinear {
        bits,
        group_size,
        in_features: k,
        out_features: n,
        q: (0..n * k).map(|_| (next() % levels) as u8).collect(),
        scales: (0..n * groups)
            .map(|_| (next() % 64 + 1) as f32 / 256.0)
            .collect(),
        zeros: (0..n * groups)
            .map(|_| (next() % (levels - 1) + 1) as u8)
            .collect(),
        g_idx: None,
    }
}

/// Writes `prefix.<tensor>` into model.safetensors of a fresh folder and opens it.
fn checkpoint(prefix: &str, tensors: &[PackedTensor]) -> (tempfile::TempDir, Checkpoint) {
    let dir = tempfile::tempdir().unwrap();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                format!("{prefix}.{n}"),
                TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    (dir, ckpt)
}

fn config(q: Value) -> QuantizationConfig {
    QuantizationConfig::from_value(Path::new("config.json"), &q).unwrap()
}

fn awq(group: usize) -> QuantizationConfig {
    config(
        json!({"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": true, "version": "gemm"}),
    )
}

fn gptq(bits: u8, group: i64, desc_act: bool) -> QuantizationConfig {
    config(
        json!({"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": desc_act, "sym": false}),
    )
}

#[test]
fn awq_nibble_order_is_autoawq_interleaved() {
    // one input row, 8 outputs with levels 0..7, 1 group of 1 input
    let l = QuantizedLinear {
        bits: 4,
        group_size: 1,
        in_features: 1,
        out_features: 8,
        q: (0..8).collect(),
        scales: vec![1.0; 8],
        zeros: (1..9).collect(),
        g_idx: None,
    };
    let packed = pack_awq_gemm(&l).unwrap();
    // nibble i holds column [0, 2, 4, 6, 1, 3, 5, 7][i]
    assert_eq!(packed[0].3, 0x7531_6420u32.to_le_bytes());
    assert_eq!(packed[1].3, 0x8642_7531u32.to_le_bytes());
}

#[test]
fn awq_round_trip() {
    let l = linear(4, 8, 32, 24);
    let (_d, ckpt) = checkpoint("m.q_proj", &pack_awq_gemm(&l).unwrap());
    let back = quantized_linear(&ckpt, "m.q_proj", &awq(8)).unwrap();
    assert_eq!(back, l);
    let w = back.dequantize();
    let (o, i) = (5, 17);
    let g = o * 4 + i / 8;
    assert_eq!(
        w[o * 32 + i],
        (l.q[o * 32 + i] as f32 - l.zeros[g] as f32) * l.scales[g]
    );
}

#[test]
fn awq_writer_refuses_ragged_group_reader_accepts_ceil_rows() {
    let l = linear(4, 16, 24, 8);
    let err = pack_awq_gemm(&l).unwrap_err().to_string();
    assert!(err.contains("does not divide in_features 24"), "{err}");
    // a ragged AWQ folder has ceil(24/16) = 2 scale rows: qweight from a one-group packing of the same
    // levels, qzeros/scales from a 32-input packing of the same 2 groups
    let mut tensors = pack_awq_gemm(&QuantizedLinear {
        group_size: 24,
        scales: vec![1.0; 8],
        zeros: vec![1; 8],
        ..l.clone()
    })
    .unwrap();
    let groups = pack_awq_gemm(&QuantizedLinear {
        in_features: 32,
        q: vec![0; 8 * 32],
        ..l.clone()
    })
    .unwrap();
    tensors[1] = groups[1].clone();
    tensors[2] = groups[2].clone();
    let (_d, ckpt) = checkpoint("m.o", &tensors);
    let back = quantized_linear(&ckpt, "m.o", &awq(16)).unwrap();
    assert_eq!(back, l);
    assert_eq!(back.n_groups(), 2);
}

#[test]
fn gptq_v1_stores_zero_minus_one_packed_along_input() {
    // 8 inputs x 8 outputs, per channel; level of (o, i) = i, zero 8
    let l = QuantizedLinear {
        bits: 4,
        group_size: 8,
        in_features: 8,
        out_features: 8,
        q: (0..64).map(|x| (x % 8) as u8).collect(),
        scales: vec![0.5; 8],
        zeros: vec![8; 8],
        g_idx: None,
    };
    let packed = pack_gptq_v1(&l).unwrap();
    assert_eq!(packed[0].2, vec![1, 8]);
    assert_eq!(packed[0].3[..4], 0x7654_3210u32.to_le_bytes());
    assert_eq!(packed[1].3, 0x7777_7777u32.to_le_bytes());
}

#[test]
fn gptq_round_trips_bits_ragged_and_act_order() {
    for bits in [2u8, 4, 8] {
        // ragged: 48 inputs in groups of 32 -> 2 groups, the last of 16
        let l = linear(bits, 32, 48, 16);
        let (_d, ckpt) = checkpoint("m.down", &pack_gptq_v1(&l).unwrap());
        let back = quantized_linear(&ckpt, "m.down", &gptq(bits, 32, false)).unwrap();
        assert_eq!(back, l, "bits {bits}");
    }
    // 3 bits: 32 inputs in 3 words, 32 outputs' zero points in 3 words; ragged group 48 over 64 inputs
    let l = linear(3, 48, 64, 32);
    let (_d, ckpt) = checkpoint("m.gate", &pack_gptq_v1(&l).unwrap());
    let back = quantized_linear(&ckpt, "m.gate", &gptq(3, 48, false)).unwrap();
    assert_eq!(back, l, "bits 3");
    let mut l = linear(4, 16, 32, 8);
    l.g_idx = Some((0..32).map(|i| (i % 2) as u32).collect());
    let (_d, ckpt) = checkpoint("m.up", &pack_gptq_v1(&l).unwrap());
    let back = quantized_linear(&ckpt, "m.up", &gptq(4, 16, true)).unwrap();
    assert_eq!(back, l);
    let w = back.dequantize();
    assert_eq!(
        w[3 * 32 + 5],
        (l.q[3 * 32 + 5] as f32 - l.zeros[3 * 2 + 1] as f32) * l.scales[3 * 2 + 1]
    );
}

/// AutoGPTQ's `QuantLinear.pack` for 3 bits (qlinear_cuda_old.py), transcribed loop for loop: 32 values
/// into 3 words, value 10 split 2 + 1 bits over words 0/1, value 21 split 1 + 2 bits over words 1/2.
#[allow(clippy::needless_range_loop)] // transcribed loop for loop
fn autogptq_pack3(v: &[u32]) -> Vec<u32> {
    let mut out = vec![0u32; v.len() / 32 * 3];
    let (mut i, mut row) = (0, 0);
    while row < out.len() {
        for j in i..i + 10 {
            out[row] |= v[j] << (3 * (j - i));
        }
        i += 10;
        out[row] |= v[i] << 30;
        row += 1;
        out[row] |= (v[i] >> 2) & 1;
        i += 1;
        for j in i..i + 10 {
            out[row] |= v[j] << (3 * (j - i) + 1);
        }
        i += 10;
        out[row] |= v[i] << 31;
        row += 1;
        out[row] |= (v[i] >> 1) & 0x3;
        i += 1;
        for j in i..i + 10 {
            out[row] |= v[j] << (3 * (j - i) + 2);
        }
        i += 10;
        row += 1;
    }
    out
}

#[test]
fn gptq_3bit_stream_is_autogptq_pack() {
    let l = linear(3, 32, 64, 32);
    let packed = pack_gptq_v1(&l).unwrap();
    let words = |b: &[u8]| -> Vec<u32> {
        b.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    assert_eq!(packed[0].2, vec![6, 32]);
    let qw = words(&packed[0].3);
    for o in 0..32 {
        let column: Vec<u32> = (0..64).map(|i| u32::from(l.q[o * 64 + i])).collect();
        let want = autogptq_pack3(&column);
        let got: Vec<u32> = (0..6).map(|r| qw[r * 32 + o]).collect();
        assert_eq!(got, want, "column {o}");
    }
    // qzeros [groups, 32·3/32]: AutoGPTQ packs zero − 1 along the outputs the same way
    assert_eq!(packed[1].2, vec![2, 3]);
    let qz = words(&packed[1].3);
    for g in 0..2 {
        let row: Vec<u32> = (0..32).map(|o| u32::from(l.zeros[o * 2 + g]) - 1).collect();
        assert_eq!(qz[g * 3..g * 3 + 3], autogptq_pack3(&row)[..], "group {g}");
    }
    // streams of any width round trip
    for bits in [2usize, 3, 4, 8] {
        let values: Vec<u8> = (0..96).map(|t| ((t * 7 + 3) % (1 << bits)) as u8).collect();
        let mut w = vec![0u32; 96 * bits / 32];
        pack_stream(&values, bits, &mut w);
        let mut back = vec![0u8; 96];
        unpack_stream(&w, bits, &mut back);
        assert_eq!(back, values, "bits {bits}");
    }
    // 3 bits needs multiples of 32
    let err = pack_gptq_v1(&linear(3, 16, 48, 32))
        .unwrap_err()
        .to_string();
    assert!(err.contains("multiples of 32"), "{err}");
}

#[test]
fn gptq_per_channel_and_v2() {
    let l = linear(4, 32, 32, 8);
    let (_d, ckpt) = checkpoint("m.k", &pack_gptq_v1(&l).unwrap());
    assert_eq!(
        quantized_linear(&ckpt, "m.k", &gptq(4, -1, false)).unwrap(),
        l
    );
    let v2 = config(
        json!({"quant_method": "gptq", "bits": 4, "group_size": -1, "checkpoint_format": "gptq_v2"}),
    );
    let back = quantized_linear(&ckpt, "m.k", &v2).unwrap();
    assert_eq!(
        back.zeros,
        l.zeros.iter().map(|z| z - 1).collect::<Vec<_>>()
    );
}

#[test]
fn concat_and_rows_split_outputs() {
    let (a, b) = (linear(4, 8, 16, 8), linear(4, 8, 16, 16));
    let ab = QuantizedLinear::concat(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(ab.out_features, 24);
    assert_eq!(ab.rows(0, 8), a);
    assert_eq!(ab.rows(8, 24), b);
    assert!(QuantizedLinear::concat(&[a, linear(4, 4, 16, 8)]).is_none());
}

#[test]
fn writer_errors() {
    let mut l = linear(4, 8, 16, 8);
    l.zeros[0] = 0;
    assert!(pack_gptq_v1(&l)
        .unwrap_err()
        .to_string()
        .contains("zero point 0"));
    assert!(pack_awq_gemm(&linear(4, 8, 16, 4))
        .unwrap_err()
        .to_string()
        .contains("multiple of 8"));
    let mut l = linear(4, 8, 16, 8);
    l.q[3] = 16;
    assert!(pack_awq_gemm(&l)
        .unwrap_err()
        .to_string()
        .contains("does not fit 4 bits"));
}

#[test]
fn reader_errors_name_tensor_and_expectation() {
    let mut tensors = pack_awq_gemm(&linear(4, 8, 16, 8)).unwrap();
    tensors[0].1 = Dtype::F32;
    let (_d, ckpt) = checkpoint("m.q", &tensors);
    let err = quantized_linear(&ckpt, "m.q", &awq(8))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("m.q.qweight") && err.contains("expected I32 [16, 1]"),
        "{err}"
    );
    let tensors = pack_awq_gemm(&linear(4, 8, 16, 8)).unwrap();
    let (_d, ckpt) = checkpoint("m.q", &tensors);
    let err = quantized_linear(&ckpt, "m.q", &awq(4))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("m.q.scales") && err.contains("expected shape [4, 8]"),
        "{err}"
    );
}

#[test]
fn config_errors_and_fields() {
    let bad = |q: Value| {
        QuantizationConfig::from_value(Path::new("config.json"), &q)
            .unwrap_err()
            .to_string()
    };
    assert!(
        bad(json!({"quant_method": "bitsandbytes", "bits": 4})).contains("not \"bitsandbytes\"")
    );
    assert!(
        bad(json!({"quant_method": "gptq", "bits": 5, "group_size": 128}))
            .contains("quantization_config.bits")
    );
    assert!(
        bad(json!({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"}))
            .contains("version")
    );
    assert!(bad(json!({"quant_method": "awq", "bits": 4})).contains("group_size"));
    let c = config(
        json!({"quant_method": "awq", "w_bit": 4, "q_group_size": 64, "zero_point": false,
                          "modules_to_not_convert": ["lm_head"]}),
    );
    assert_eq!(
        (c.method, c.bits, c.group_size, c.sym),
        (QuantMethod::AwqGemm, 4, Some(64), true)
    );
    assert_eq!(c.modules_to_not_convert, vec!["lm_head".to_string()]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, r#"{"model_type": "llama"}"#).unwrap();
    assert_eq!(QuantizationConfig::from_config_json(&path).unwrap(), None);
}

/// Olive's pack_to_uint8 (olive-ai 0.13 olive/common/quant/utils.py), written here from its Python: levels
/// [rows, cols] → uint8 [rows, ceil(cols / per)], value c at bits (c % per)·bits of byte c / per, zero-padded.
fn pack_u8(levels: &[u8], rows: usize, cols: usize, bits: usize) -> Vec<u8> {
    let per = 8 / bits;
    let width = cols.div_ceil(per);
    let mut out = vec![0u8; rows * width];
    for r in 0..rows {
        for c in 0..cols {
            out[r * width + c / per] |= levels[r * cols + c] << (bits * (c % per));
        }
    }
    out
}

/// Olive QuantLinear tensors of `l`: qweight/qzeros uint8, scales F32 [out, groups]; no qzeros when `sym`.
fn olive_tensors(l: &QuantizedLinear, sym: bool) -> Vec<PackedTensor> {
    let (k, n, groups, bits) = (
        l.in_features,
        l.out_features,
        l.n_groups(),
        usize::from(l.bits),
    );
    let per = 8 / bits;
    let scales: Vec<u8> = l.scales.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut t = vec![
        (
            "qweight".to_string(),
            Dtype::U8,
            vec![n, k.div_ceil(per)],
            pack_u8(&l.q, n, k, bits),
        ),
        ("scales".to_string(), Dtype::F32, vec![n, groups], scales),
    ];
    if !sym {
        t.push((
            "qzeros".to_string(),
            Dtype::U8,
            vec![n, groups.div_ceil(per)],
            pack_u8(&l.zeros, n, groups, bits),
        ));
    }
    t
}

fn olive(bits: u8, group: i64, sym: bool) -> QuantizationConfig {
    config(
        json!({"quant_method": "olive", "bits": bits, "group_size": group, "symmetric": sym,
               "embeds": false, "lm_head": false, "overrides": null}),
    )
}

#[test]
fn olive_known_bytes_low_nibble_first_zero_itself() {
    // 2 outputs, 4 inputs, one group of 4: row 0 levels [1, 2, 3, 4], row 1 [15, 0, 7, 8]
    let tensors: Vec<PackedTensor> = vec![
        (
            "qweight".into(),
            Dtype::U8,
            vec![2, 2],
            vec![0x21, 0x43, 0x0F, 0x87],
        ),
        // zeros 5 and 9, each row padded to one byte
        ("qzeros".into(), Dtype::U8, vec![2, 1], vec![0x05, 0x09]),
        (
            "scales".into(),
            Dtype::F32,
            vec![2, 1],
            [0.5f32, 2.0].iter().flat_map(|s| s.to_le_bytes()).collect(),
        ),
    ];
    let (_d, ckpt) = checkpoint("p", &tensors);
    let l = quantized_linear(&ckpt, "p", &olive(4, -1, false)).unwrap();
    assert_eq!(l.q, vec![1, 2, 3, 4, 15, 0, 7, 8]);
    assert_eq!(l.zeros, vec![5, 9]);
    assert_eq!(
        l.dequantize(),
        vec![-2.0, -1.5, -1.0, -0.5, 12.0, -18.0, -4.0, -2.0]
    );
}

#[test]
fn olive_round_trips_bits_padded_groups_symmetric_and_overrides() {
    // 3 groups: qzeros padded to 2 bytes (4 bits) and 1 byte (2 bits)
    for (bits, group, k) in [
        (4u8, 16usize, 48usize),
        (2, 16, 48),
        (8, 32, 64),
        (4, 64, 64),
    ] {
        let l = linear(bits, group, k, 6);
        let (_d, ckpt) = checkpoint("m", &olive_tensors(&l, false));
        let back = quantized_linear(&ckpt, "m", &olive(bits, group as i64, false)).unwrap();
        assert_eq!(back, l, "bits {bits} group {group}");
    }
    // per channel, K = 6 at 4 bits: 3 bytes a row
    let l = linear(4, 6, 6, 4);
    let (_d, ckpt) = checkpoint("m", &olive_tensors(&l, false));
    assert_eq!(
        quantized_linear(&ckpt, "m", &olive(4, -1, false)).unwrap(),
        l
    );
    // symmetric: no qzeros, zero point 2^(bits - 1)
    for bits in [2u8, 4, 8] {
        let mut l = linear(bits, 16, 32, 4);
        l.zeros.fill(1 << (bits - 1));
        let tensors = olive_tensors(&l, true);
        assert!(tensors.iter().all(|t| t.0 != "qzeros"));
        let (_d, ckpt) = checkpoint("m", &tensors);
        assert_eq!(
            quantized_linear(&ckpt, "m", &olive(bits, 16, true)).unwrap(),
            l
        );
    }
    // overrides by full module name (Olive writes `group_size`)
    let (a, b) = (linear(4, 16, 32, 8), linear(8, 32, 32, 8));
    let mut tensors: Vec<PackedTensor> = Vec::new();
    for (prefix, l) in [("m.a", &a), ("m.b", &b)] {
        for (n, d, s, bytes) in olive_tensors(l, false) {
            tensors.push((format!("{prefix}.{n}"), d, s, bytes));
        }
    }
    let (_d, ckpt) = checkpoint("x", &tensors);
    let cfg = config(
        json!({"quant_method": "olive", "bits": 4, "symmetric": false, "group_size": 16,
               "overrides": {"x.m.b": {"bits": 8, "group_size": -1}}}),
    );
    assert_eq!(quantized_linear(&ckpt, "x.m.a", &cfg).unwrap(), a);
    let back = quantized_linear(&ckpt, "x.m.b", &cfg).unwrap();
    assert_eq!((back.bits, back.group_size), (8, 32));
    assert_eq!(back, b);
}

#[test]
fn olive_errors_name_tensor_and_expectation() {
    let l = linear(4, 16, 32, 8);
    // GPTQ v1 int32 tensors under quant_method olive
    let (_d, ckpt) = checkpoint("m", &pack_gptq_v1(&l).unwrap());
    let err = quantized_linear(&ckpt, "m", &olive(4, 16, false))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("m.qweight") && err.contains("found I32 [4, 8]"),
        "{err}"
    );
    let mut tensors = olive_tensors(&l, false);
    tensors[2].1 = Dtype::I8; // qzeros
    let (_d, ckpt) = checkpoint("m", &tensors);
    let err = quantized_linear(&ckpt, "m", &olive(4, 16, false))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("m.qzeros") && err.contains("expected U8 [8, 1], found I8"),
        "{err}"
    );
    // asymmetric without qzeros
    let (_d, ckpt) = checkpoint("m", &olive_tensors(&l, true));
    let err = quantized_linear(&ckpt, "m", &olive(4, 16, false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("m.qzeros"), "{err}");
    // the config's group does not match the scales' columns
    let (_d, ckpt) = checkpoint("m", &olive_tensors(&l, false));
    let err = quantized_linear(&ckpt, "m", &olive(4, 32, false))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("m.qweight") && err.contains("expected U8 [8, 32]"),
        "{err}"
    );
    let bad = |q: Value| {
        QuantizationConfig::from_value(Path::new("config.json"), &q)
            .unwrap_err()
            .to_string()
    };
    assert!(
        bad(json!({"quant_method": "olive", "bits": 4, "symmetric": true, "block_size": 0}))
            .contains("per tensor 0 is not read")
    );
    assert!(
        bad(json!({"quant_method": "olive", "bits": 3, "group_size": 16}))
            .contains("quantization_config.bits")
    );
}

#[test]
fn olive_writer_equals_olive_packing_and_reads_back() {
    for (bits, group, sym) in [
        (4u8, 16usize, false),
        (2, 32, false),
        (8, 64, true),
        (4, 64, true),
    ] {
        let mut l = linear(bits, group, 64, 6);
        if sym {
            l.zeros.fill(1 << (bits - 1));
        }
        let ours = pack_olive(&l, sym, Dtype::F32).unwrap();
        let mut want = olive_tensors(&l, sym);
        let mut got = ours.clone();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, want, "bits {bits} group {group} sym {sym}");
        let (_d, ckpt) = checkpoint("model.embed_tokens", &ours);
        let back =
            quantized_linear(&ckpt, "model.embed_tokens", &olive(bits, group as i64, sym)).unwrap();
        assert_eq!(back, l, "bits {bits} group {group} sym {sym}");
    }
    let err = pack_olive(&linear(4, 48, 64, 6), false, Dtype::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not divide in_features 64"), "{err}");
    assert!(pack_olive(&linear(3, 32, 64, 6), false, Dtype::F32).is_err());
    let embeds =
        config(json!({"quant_method": "olive", "bits": 4, "group_size": 16, "embeds": true}));
    assert_eq!(embeds.method, QuantMethod::Olive);
}
