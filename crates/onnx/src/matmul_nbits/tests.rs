//! Unit tests of MatMulNBits packing against reference bytes from ONNX Runtime's quantizer.

use super::*;

// Reference bytes from ONNX Runtime 1.32's quantizer (`onnxruntime.capi._pybind_state.quantize_matmul_4bits`
// / `_8bits`, as `MatMulNBitsQuantizer` calls them) on `test_weight()`, N 2, K 40, block 16 (3 blocks, the
// last one ragged). Regenerate: W = test_weight() transposed to [K, N], padded to 48 rows, then
// `quantize_matmul_Nbits(packed, W, scales, zp, 16, 2, 40, symmetric)`.
const N: usize = 2;
const K: usize = 40;
const REF_Q4_SYM_B: [u8; 48] = [
    0xa0, 0xe4, 0x17, 0x4b, 0x8f, 0xc1, 0xf5, 0x29, 0x6c, 0x9f, 0xd3, 0x07, 0x4a, 0x7e, 0xb1, 0xf4,
    0xf8, 0xb4, 0x70, 0x3e, 0x00, 0x00, 0x00, 0x00, 0xf6, 0x39, 0x7d, 0xa0, 0xe4, 0x17, 0x4b, 0x8f,
    0xc1, 0xf5, 0x29, 0x6c, 0x9f, 0xd3, 0x07, 0x4a, 0x7e, 0xb0, 0xf4, 0x18, 0x00, 0x00, 0x00, 0x00,
];
const REF_Q4_SYM_SCALES: [u32; 6] = [
    0x3e300000, 0x3e300000, 0xbe200000, 0x3e300000, 0x3e300000, 0x3e200000,
];
const REF_Q4_ASYM_B: [u8; 48] = [
    0xa0, 0xe4, 0x17, 0x4b, 0x8e, 0xc2, 0xf5, 0x29, 0x6c, 0x9f, 0xd3, 0x17, 0x4a, 0x7d, 0xb1, 0xe5,
    0x07, 0x4b, 0x8f, 0xc1, 0x00, 0x00, 0x00, 0x00, 0xf6, 0x39, 0x7d, 0xa1, 0xd4, 0x17, 0x5b, 0x8e,
    0xb2, 0xf5, 0x39, 0x6c, 0x9f, 0xd3, 0x17, 0x4a, 0x7e, 0xb0, 0xf4, 0x18, 0x00, 0x00, 0x00, 0x00,
];
const REF_Q4_ASYM_SCALES: [u32; 6] = [
    0x3e333333, 0x3e3bbbbc, 0x3e222222, 0x3e3bbbbc, 0x3e3bbbbc, 0x3e222222,
];
const REF_Q4_ASYM_ZP: [u8; 4] = [0x88, 0x87, 0x88, 0x88];
const REF_Q8_ASYM_B: [u8; 96] = [
    0x00, 0xaa, 0x3d, 0xe7, 0x7a, 0x0d, 0xb7, 0x49, 0xf3, 0x86, 0x19, 0xc3, 0x55, 0xff, 0x92, 0x25,
    0xc6, 0x5d, 0xff, 0x97, 0x2f, 0xd1, 0x69, 0x01, 0xa3, 0x3a, 0xdd, 0x74, 0x0c, 0xae, 0x46, 0xe8,
    0x79, 0x00, 0xbc, 0x43, 0xff, 0x86, 0x0e, 0xca, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x5d, 0xff, 0x97, 0x2f, 0xd1, 0x69, 0x01, 0xa3, 0x3a, 0xdd, 0x74, 0x0c, 0xae, 0x46, 0xe8, 0x80,
    0x18, 0xba, 0x52, 0xf4, 0x8c, 0x23, 0xc6, 0x5d, 0xff, 0x97, 0x2f, 0xd1, 0x69, 0x01, 0xa3, 0x3a,
    0xf1, 0x79, 0x00, 0xbc, 0x43, 0xff, 0x86, 0x0d, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];
const REF_Q8_ASYM_SCALES: [u32; 6] = [
    0x3c28a8a9, 0x3c30b0b1, 0x3c189899, 0x3c30b0b1, 0x3c30b0b1, 0x3c189899,
];
const REF_Q8_ASYM_ZP: [u8; 6] = [0x86, 0x80, 0x79, 0x80, 0x80, 0x86];

/// W: [2, 40], exact eighths in [-11/8, 11/8].
fn test_weight() -> Vec<f32> {
    (0..N * K)
        .map(|i| ((i * 37 % 23) as f32 - 11.0) / 8.0)
        .collect()
}

fn scale_bits(w: &MatMulNBitsWeights) -> Vec<u32> {
    w.scales.iter().map(|s| s.to_bits()).collect()
}

fn config(bits: u32, symmetric: bool) -> NBitsConfig {
    NBitsConfig {
        bits,
        ..NBitsConfig::int4(16, symmetric)
    }
}

#[test]
fn int4_symmetric_matches_onnxruntime_bytes() {
    let q = quantize(&test_weight(), N, K, &config(4, true)).unwrap();
    assert_eq!(q.b, REF_Q4_SYM_B);
    assert_eq!(scale_bits(&q), REF_Q4_SYM_SCALES);
    assert_eq!(q.zero_points, None);
    assert_eq!((q.b_dims(), q.scales_dims()), ([2, 3, 8], [2, 3]));
}

#[test]
fn int4_asymmetric_matches_onnxruntime_bytes() {
    let q = quantize(&test_weight(), N, K, &config(4, false)).unwrap();
    assert_eq!(q.b, REF_Q4_ASYM_B);
    assert_eq!(scale_bits(&q), REF_Q4_ASYM_SCALES);
    assert_eq!(q.zero_points.as_deref(), Some(&REF_Q4_ASYM_ZP[..]));
    assert_eq!(q.zero_points_dims(), [2, 2]);
}

#[test]
fn int8_asymmetric_matches_onnxruntime_bytes() {
    let q = quantize(&test_weight(), N, K, &config(8, false)).unwrap();
    assert_eq!(q.b, REF_Q8_ASYM_B);
    assert_eq!(scale_bits(&q), REF_Q8_ASYM_SCALES);
    assert_eq!(q.zero_points.as_deref(), Some(&REF_Q8_ASYM_ZP[..]));
    assert_eq!((q.b_dims(), q.zero_points_dims()), ([2, 3, 16], [2, 3]));
}

#[test]
fn dequantized_weights_are_within_one_step() {
    // Half a step of rounding, except at the range's far end, clipped by up to one step (symmetric: the
    // positive end +2^(bits-1) is not representable; asymmetric: the rounded zero point shifts the grid).
    let w = test_weight();
    for (bits, symmetric) in [(4, true), (4, false), (8, true), (8, false)] {
        let q = quantize(&w, N, K, &config(bits, symmetric)).unwrap();
        let d = q.dequantize();
        for (i, (a, b)) in w.iter().zip(&d).enumerate() {
            let step = q.scales[(i / K) * q.n_blocks() + (i % K) / 16].abs();
            assert!(
                (a - b).abs() <= step + 1e-6,
                "bits {bits} sym {symmetric} [{i}]: {a} vs {b}"
            );
        }
    }
}

#[test]
fn prequantized_values_pack_to_the_same_bytes() {
    for (bits, symmetric) in [(4, true), (4, false), (8, false)] {
        let cfg = config(bits, symmetric);
        let q = quantize(&test_weight(), N, K, &cfg).unwrap();
        let values: Vec<u8> = (0..N * K).map(|i| q.value(i / K, i % K)).collect();
        let zps: Vec<u8> = (0..N * 3).map(|i| q.zero_point(i / 3, i % 3)).collect();
        let zps = (!symmetric).then_some(&zps[..]);
        let packed = pack_prequantized(&values, &q.scales, zps, N, K, 16, &cfg).unwrap();
        assert_eq!(packed, q, "bits {bits} symmetric {symmetric}");
    }
}

#[test]
fn float16_scales_are_rounded_and_written_as_halves() {
    let cfg = NBitsConfig {
        scale_type: DataType::Float16,
        ..config(4, false)
    };
    let q = quantize(&test_weight(), N, K, &cfg).unwrap();
    for s in &q.scales {
        assert_eq!(half::f16::from_f32(*s).to_f32(), *s);
    }
    assert_eq!(q.scales_bytes().len(), 2 * q.scales.len());
    // 0.175 (f32 0x3e333333) → f16 0x319a.
    assert_eq!(&q.scales_bytes()[..2], &0x319au16.to_le_bytes());
}

#[test]
fn attributes_name_k_n_bits_block_and_accuracy() {
    let cfg = NBitsConfig {
        accuracy_level: Some(4),
        ..config(4, true)
    };
    let q = quantize(&test_weight(), N, K, &cfg).unwrap();
    let attrs: Vec<(String, i64)> = q
        .attributes()
        .into_iter()
        .map(|a| (a.name.unwrap_or_default(), a.i.unwrap_or_default()))
        .collect();
    let expected = [
        ("K", 40),
        ("N", 2),
        ("bits", 4),
        ("block_size", 16),
        ("accuracy_level", 4),
    ];
    assert_eq!(attrs, expected.map(|(k, v)| (k.to_string(), v)));
    let none = quantize(&test_weight(), N, K, &config(4, true)).unwrap();
    assert_eq!(none.attributes().len(), 4);
}

#[test]
fn bad_input_is_named() {
    let w = test_weight();
    let err = |r: Result<MatMulNBitsWeights, NBitsError>| r.unwrap_err().to_string();
    assert!(err(quantize(&w, N, K, &config(3, true))).contains("bits must be 4 or 8, got 3"));
    let cfg = NBitsConfig::int4(48, true);
    assert!(err(quantize(&w, N, K, &cfg)).contains("power of two >= 16"));
    let cfg = NBitsConfig {
        scale_type: DataType::Int64,
        ..config(4, true)
    };
    assert!(err(quantize(&w, N, K, &cfg)).contains("float or float16"));
    assert!(err(quantize(&w, N, K + 1, &config(4, true)))
        .contains("expected 82 values for [N 2, K 41], got 80"));
    let mut nan = w.clone();
    nan[K + 3] = f32::NAN;
    assert!(err(quantize(&nan, N, K, &config(4, true))).contains("weight[1, 3] is NaN"));
    let values = vec![3u8; N * K];
    let scales = vec![0.5f32; N * 3];
    let mut zps = vec![8u8; N * 3];
    let pre = |q: &[u8], s: &[f32], zp: Option<&[u8]>, group: usize, cfg: NBitsConfig| {
        err(pack_prequantized(q, s, zp, N, K, group, &cfg))
    };
    assert!(pre(&values, &scales, Some(&zps), 16, config(4, true)).contains("zero_points"));
    assert!(pre(&values, &scales, None, 16, config(4, false)).contains("zero_points"));
    let msg = pre(&values, &scales, None, 24, config(4, true));
    assert!(
        msg.contains("group size 24 is not a multiple of MatMulNBits block_size 16"),
        "{msg}"
    );
    zps[4] = 16;
    let msg = pre(&values, &scales, Some(&zps), 16, config(4, false));
    assert!(
        msg.contains("zero_points[1, 1] = 16 does not fit in 4 bits (max 15)"),
        "{msg}"
    );
    let mut big = values.clone();
    big[5] = 200;
    let msg = pre(&big, &scales, None, 16, config(4, true));
    assert!(msg.contains("quantized weight[0, 5] = 200"), "{msg}");
    let msg = pre(&values, &scales[1..], None, 16, config(4, true));
    assert!(
        msg.contains("scales: expected 6 values for [N 2, n_groups 3] (group size 16), got 5"),
        "{msg}"
    );
}

#[test]
fn groups_larger_than_blocks_repeat_their_scale_and_zero_point() {
    // K 40 in groups of 32 (one full, one ragged of 8), packed with block 16: blocks 0, 1 share group 0.
    let values: Vec<u8> = (0..N * K).map(|i| (i % 16) as u8).collect();
    let scales = [0.5f32, 0.25, 2.0, 4.0];
    let zps = [1u8, 2, 3, 4];
    let cfg = config(4, false);
    let q = pack_prequantized(&values, &scales, Some(&zps), N, K, 32, &cfg).unwrap();
    assert_eq!(q.scales, [0.5, 0.5, 0.25, 2.0, 2.0, 4.0]);
    assert_eq!(
        (0..3).map(|b| q.zero_point(1, b)).collect::<Vec<_>>(),
        [3, 3, 4]
    );
    let w = q.dequantize();
    for (i, v) in w.iter().enumerate() {
        let (row, col) = (i / K, i % K);
        let g = row * 2 + col / 32;
        assert_eq!(*v, (values[i] as f32 - zps[g] as f32) * scales[g]);
    }
    // Per channel (group = K = 40) with block 16 (40 is not a multiple of 16) is refused; 8 | 40 but < 16.
    assert!(pack_prequantized(&values, &[1.0; 2], None, N, K, K, &config(4, true)).is_err());
}

#[test]
fn block_size_for_a_group() {
    assert_eq!(block_size_for_group(128, 128), Some(128));
    assert_eq!(block_size_for_group(128, 32), Some(32));
    // Per-channel groups of the default model: K 576 = 9 * 64, K 1536 = 3 * 512.
    assert_eq!(block_size_for_group(576, 128), Some(64));
    assert_eq!(block_size_for_group(1536, 128), Some(128));
    assert_eq!(block_size_for_group(40, 128), None);
    assert_eq!(block_size_for_group(0, 128), None);
    assert_eq!(block_size_for_group(64, 8), None);
}

#[test]
fn odd_k_and_all_zero_blocks() {
    // K 33: two blocks of 16 and one of a single value; a zero row quantizes to scale 0.
    let (n, k) = (2, 33);
    let mut w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.37).sin()).collect();
    w[k..].iter_mut().for_each(|v| *v = 0.0);
    for symmetric in [true, false] {
        let q = quantize(&w, n, k, &config(4, symmetric)).unwrap();
        assert_eq!(q.b_dims(), [2, 3, 8]);
        // The lone value of block 2 sits in the low nibble; the rest of the block is 0.
        assert_eq!(q.b[16] & 0x0f, q.value(0, 32));
        assert!(q.b[17..24].iter().all(|&b| b == 0) && q.b[16] >> 4 == 0);
        assert!(q.scales[3..].iter().all(|&s| s == 0.0));
        assert!(q.dequantize()[k..].iter().all(|&v| v == 0.0));
    }
}
