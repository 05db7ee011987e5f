//! Tests of the GGUF reader on files built here: metadata types, every dequantizer against the block
//! formulas of ggml-quants.c written out element by element, and malformed files.

use half::{bf16, f16};

use super::test_writer::GgufBuilder;
use super::*;

fn open(b: &GgufBuilder) -> (tempfile::TempDir, Result<GgufFile>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = b.write(dir.path(), "t.gguf");
    let file = GgufFile::open(&path);
    (dir, file)
}

fn reason(e: ModelError) -> String {
    match e {
        ModelError::Gguf { reason, .. } => reason,
        other => panic!("expected a Gguf error, got {other}"),
    }
}

/// A deterministic byte pattern.
fn pattern(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        })
        .collect()
}

fn f16_bytes(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_bits().to_le_bytes()
}

#[test]
fn metadata_of_every_type() {
    let mut b = GgufBuilder::new();
    b.kv_raw("u8", 0, vec![200])
        .kv_raw("i8", 1, vec![0xff])
        .kv_raw("u16", 2, 60000u16.to_le_bytes().to_vec())
        .kv_raw("i16", 3, (-300i16).to_le_bytes().to_vec())
        .kv_u32("u32", 4_000_000_000)
        .kv_raw("i32", 5, (-5i32).to_le_bytes().to_vec())
        .kv_f32("f32", 1.5)
        .kv_bool("bool", true)
        .kv_str("str", "héllo")
        .kv_raw("u64", 10, u64::MAX.to_le_bytes().to_vec())
        .kv_raw("i64", 11, (-7i64).to_le_bytes().to_vec())
        .kv_raw("f64", 12, 0.25f64.to_le_bytes().to_vec())
        .kv_str_array("strs", &["a", "bc"])
        .kv_i32_array("ints", &[1, -2, 3]);
    // An array of arrays: [[1u8, 2u8]].
    let inner = [
        0u32.to_le_bytes().to_vec(),
        2u64.to_le_bytes().to_vec(),
        vec![1, 2],
    ]
    .concat();
    let outer = [
        9u32.to_le_bytes().to_vec(),
        1u64.to_le_bytes().to_vec(),
        inner,
    ]
    .concat();
    b.kv_raw("nested", 9, outer);
    let (_dir, f) = open(&b);
    let f = f.expect("open");
    assert_eq!(f.version(), 3);
    assert_eq!(f.get::<u32>("u8").unwrap(), 200);
    assert_eq!(f.get::<i32>("i8").unwrap(), -1);
    assert_eq!(f.get::<u32>("u16").unwrap(), 60000);
    assert_eq!(f.get::<i32>("i16").unwrap(), -300);
    assert_eq!(f.get::<u64>("u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get::<i32>("i32").unwrap(), -5);
    assert_eq!(f.get::<f32>("f32").unwrap(), 1.5);
    assert!(f.get::<bool>("bool").unwrap());
    assert_eq!(f.get::<&str>("str").unwrap(), "héllo");
    assert_eq!(f.get::<u64>("u64").unwrap(), u64::MAX);
    assert_eq!(f.metadata()["i64"], MetaValue::I64(-7));
    assert_eq!(f.get::<f32>("f64").unwrap(), 0.25);
    assert_eq!(f.get::<Vec<&str>>("strs").unwrap(), ["a", "bc"]);
    assert_eq!(f.get::<Vec<i32>>("ints").unwrap(), [1, -2, 3]);
    assert_eq!(
        f.metadata()["nested"],
        MetaValue::Array(vec![MetaValue::Array(vec![
            MetaValue::U8(1),
            MetaValue::U8(2)
        ])])
    );
    // Out of range, wrong type, missing: errors naming the key.
    assert!(f.get::<u32>("u64").is_err());
    assert!(f.get::<u32>("i32").is_err());
    let e = f.get::<u32>("str").unwrap_err().to_string();
    assert!(e.contains("`str`") && e.contains("found string"), "{e}");
    let e = f.get::<u32>("absent").unwrap_err().to_string();
    assert!(e.contains("`absent`") && e.contains("missing"), "{e}");
    assert_eq!(f.opt::<u32>("absent").unwrap(), None);
}

/// Builds a file with one tensor of `ty` and dims `[ne0, 2]`, returns its dequantization.
fn dequantized(ty: GgmlType, ne0: u64, data: Vec<u8>) -> Vec<f32> {
    let mut b = GgufBuilder::new();
    b.tensor("w", &[ne0, 2], ty.id(), data);
    let (_dir, f) = open(&b);
    let f = f.expect("open");
    let t = f.tensor("w").expect("tensor");
    assert_eq!(t.shape(), [2, ne0 as usize]);
    f.dequantize(t).expect("dequantize")
}

#[test]
fn float_types_round_trip() {
    let values: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) * 0.375).collect();
    let f32_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(dequantized(GgmlType::F32, 32, f32_data), values);
    let f16_data = values
        .iter()
        .flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes())
        .collect();
    assert_eq!(dequantized(GgmlType::F16, 32, f16_data), values);
    let bf16_data = values
        .iter()
        .flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes())
        .collect();
    assert_eq!(dequantized(GgmlType::BF16, 32, bf16_data), values);
}

#[test]
fn q8_0_blocks() {
    // Two blocks of 32: f16 d, then 32 signed bytes.
    let mut data = Vec::new();
    let mut expected = Vec::new();
    for (blk, d) in [0.5f32, -0.125].into_iter().enumerate() {
        data.extend_from_slice(&f16_bytes(d));
        for j in 0..32 {
            let q = (j as i8 - 16) * 3 + blk as i8;
            data.push(q as u8);
            expected.push(f32::from(q) * d);
        }
    }
    assert_eq!(dequantized(GgmlType::Q8_0, 32, data), expected);
}

#[test]
fn q4_0_and_q4_1_blocks() {
    // Block 32: element j < 16 is the low nibble of byte j, element j + 16 its high nibble.
    let qs = pattern(16, 1);
    let nibble = |j: usize| {
        if j < 16 {
            qs[j] & 0x0f
        } else {
            qs[j - 16] >> 4
        }
    };
    let (d, m) = (0.25f32, -1.5f32);

    let mut q4_0 = f16_bytes(d).to_vec();
    q4_0.extend_from_slice(&qs);
    let q4_0 = [q4_0.clone(), q4_0].concat();
    let expected: Vec<f32> = (0..64)
        .map(|j| (i32::from(nibble(j % 32)) - 8) as f32 * d)
        .collect();
    assert_eq!(dequantized(GgmlType::Q4_0, 32, q4_0), expected);

    let mut q4_1 = [f16_bytes(d), f16_bytes(m)].concat();
    q4_1.extend_from_slice(&qs);
    let q4_1 = [q4_1.clone(), q4_1].concat();
    let expected: Vec<f32> = (0..64).map(|j| f32::from(nibble(j % 32)) * d + m).collect();
    assert_eq!(dequantized(GgmlType::Q4_1, 32, q4_1), expected);
}

#[test]
fn q5_0_and_q5_1_blocks() {
    // The 5th bit of element j is bit j of the 32-bit qh.
    let qs = pattern(16, 2);
    let qh = 0xa5c3_0f96u32;
    let q = |j: usize| {
        let lo = if j < 16 {
            qs[j] & 0x0f
        } else {
            qs[j - 16] >> 4
        };
        u32::from(lo) | (((qh >> j) & 1) << 4)
    };
    let (d, m) = (0.5f32, 2.0f32);
    let q5_0 = [f16_bytes(d).to_vec(), qh.to_le_bytes().to_vec(), qs.clone()].concat();
    let expected: Vec<f32> = (0..64)
        .map(|j| (q(j % 32) as i32 - 16) as f32 * d)
        .collect();
    assert_eq!(
        dequantized(GgmlType::Q5_0, 32, [q5_0.clone(), q5_0].concat()),
        expected
    );

    let q5_1 = [
        f16_bytes(d).to_vec(),
        f16_bytes(m).to_vec(),
        qh.to_le_bytes().to_vec(),
        qs.clone(),
    ]
    .concat();
    let expected: Vec<f32> = (0..64).map(|j| q(j % 32) as f32 * d + m).collect();
    assert_eq!(
        dequantized(GgmlType::Q5_1, 32, [q5_1.clone(), q5_1].concat()),
        expected
    );
}

#[test]
fn q4_k_block() {
    // Scales 1..8 and mins 0..7 (all < 16, so only the low 6-bit fields are used).
    let mut scales = [0u8; 12];
    for j in 0..4 {
        scales[j] = j as u8 + 1;
        scales[j + 4] = j as u8;
        scales[j + 8] = (j as u8 + 5) | ((j as u8 + 4) << 4);
    }
    let qs = pattern(128, 3);
    let (d, dmin) = (0.5f32, 0.25f32);
    let block = [
        f16_bytes(d).to_vec(),
        f16_bytes(dmin).to_vec(),
        scales.to_vec(),
        qs.clone(),
    ]
    .concat();
    let expected: Vec<f32> = (0..256)
        .map(|i| {
            let (chunk, hi, l) = (i / 64, (i % 64) / 32, i % 32);
            let sub = 2 * chunk + hi;
            let q = qs[32 * chunk + l] >> (4 * hi) & 0x0f;
            (d * (sub + 1) as f32) * f32::from(q) - dmin * sub as f32
        })
        .collect();
    let got = dequantized(GgmlType::Q4_K, 256, [block.clone(), block].concat());
    assert_eq!(&got[..256], &expected[..]);
    assert_eq!(&got[256..], &expected[..]);
}

#[test]
fn unsupported_type_names_tensor_and_type() {
    let mut b = GgufBuilder::new();
    b.tensor(
        "blk.0.ffn_up.weight",
        &[256, 1],
        GgmlType::Q2_K.id(),
        vec![0; GgmlType::Q2_K.type_size()],
    );
    let (_dir, f) = open(&b);
    let f = f.expect("a Q2_K tensor is listed; only dequantizing it fails");
    let t = f.tensor("blk.0.ffn_up.weight").expect("tensor");
    let e = reason(f.dequantize(t).unwrap_err());
    assert!(
        e.contains("blk.0.ffn_up.weight") && e.contains("Q2_K") && e.contains("unsupported"),
        "{e}"
    );

    let mut b = GgufBuilder::new();
    b.tensor("w", &[32], 99, vec![0; 32]);
    let e = reason(open(&b).1.unwrap_err());
    assert!(e.contains("`w`") && e.contains("99"), "{e}");
}

#[test]
fn bad_magic_and_version() {
    let mut b = GgufBuilder::new();
    b.magic = *b"GGML";
    let (dir, f) = open(&b);
    let e = f.unwrap_err().to_string();
    assert!(
        e.contains(&dir.path().join("t.gguf").display().to_string()),
        "{e}"
    );
    assert!(
        e.contains("bad magic \"GGML\"") && e.contains("expected \"GGUF\""),
        "{e}"
    );

    let mut b = GgufBuilder::new();
    b.version = 1;
    assert!(reason(open(&b).1.unwrap_err()).contains("version 1"));
}

#[test]
fn alignment_is_honoured() {
    let mut b = GgufBuilder::new();
    b.alignment = 64;
    b.kv_u32("general.alignment", 64);
    b.tensor_f32("a", &[3], &[1.0, 2.0, 3.0])
        .tensor_f32("b", &[2], &[4.0, 5.0]);
    let (_dir, f) = open(&b);
    let f = f.expect("open");
    assert_eq!(f.alignment(), 64);
    let b_tensor = f.tensor("b").expect("b");
    assert_eq!(f.dequantize(b_tensor).unwrap(), [4.0, 5.0]);

    let mut b = GgufBuilder::new();
    b.kv_u32("general.alignment", 24);
    assert!(reason(open(&b).1.unwrap_err()).contains("power of two"));
}

fn small_file() -> Vec<u8> {
    let mut b = GgufBuilder::new();
    b.kv_str("general.architecture", "llama")
        .kv_str_array("tokenizer.ggml.tokens", &["a", "b", "c"])
        .tensor_f32("x", &[2, 4], &[1.0; 8])
        .tensor("q", &[32], GgmlType::Q8_0.id(), vec![1; 34]);
    b.bytes()
}

#[test]
fn every_truncation_is_an_error() {
    let full = small_file();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cut.gguf");
    // The last tensor's 34 bytes are followed by padding up to the alignment of 32.
    let needed = full.len() - (34usize.next_multiple_of(32) - 34);
    for len in 0..needed {
        std::fs::write(&path, &full[..len]).expect("write");
        let e =
            GgufFile::open(&path).expect_err(&format!("a file cut at {len} bytes must not open"));
        let reason = reason(e);
        assert!(
            reason.contains("truncated") || reason.contains("magic"),
            "cut at {len}: {reason}"
        );
    }
}

#[test]
fn corrupt_bytes_never_panic() {
    let full = small_file();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.gguf");
    for at in 0..full.len() {
        for value in [0x00, 0x7f, 0xff] {
            let mut bytes = full.clone();
            bytes[at] = value;
            std::fs::write(&path, &bytes).expect("write");
            if let Ok(f) = GgufFile::open(&path) {
                for t in f.tensors() {
                    let _ = f.dequantize(t);
                }
            }
        }
    }
}
