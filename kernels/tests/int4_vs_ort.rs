//! Parity of `cpu::int4` with ONNX Runtime's com.microsoft MatMulNBits (accuracy_level 4) on the same RTN
//! bytes (olive_onnx's port of ORT's quantizer), in the same process: every available instruction set, fp32
//! and int8 activations, block 32 and 128, batch 1, 3 and 20 (the GEMM path); and `Int8Matrix` against
//! MatMulNBits with bits = 8. Needs ORT_DYLIB_PATH (target/olive-env.sh).

use olive_kernels::cpu::int4::{
    int4_matmul_with, int8_matmul_with, Activations, Int4Matrix, Int8Matrix, Isa,
};
use olive_kernels::cpu::w4a16::unpack_matmul_nbits;
use olive_onnx::graph::{Dim, GraphBuilder};
use olive_onnx::matmul_nbits::{quantize, NBitsConfig};
use olive_onnx::tensor::DataType;
use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor;

/// Our fp32 path vs ORT's level 4: ORT rounds each input to the int8 grid of scale max|x_b|/127, at most
/// half a step (max|x_b| / 254) off, so |ours − ORT| ≤ Σ_b max|x_b|/254 · Σ_{i∈b}|w_i| (+ fp32 slack).
/// Our int8 path quantizes exactly as ORT does (same blocks, scale, round half to even): what differs is the
/// fp32 summation order and our half scales (INT4_SCALE_REL below).
const INT8_HALF_STEP: f64 = 1.0 / 254.0;
/// fp32 summation-order slack relative to Σ|x·w|.
const F32_REL: f64 = 1e-5;
/// Int4Matrix keeps its scales as halves (`SCALE_REL`, 2^-11, of each scale) where ORT keeps f32: each block's
/// term moves by at most SCALE_REL of its size, Σ_b |s_b| Σ_{i∈b} |(q_i − z_b) x'_i| with x' the activation
/// ORT used (int8 grid: |x'_i| ≤ |x_i| + max|x_b| / 254), so |ours − ORT| gains SCALE_REL · (Σ|x·w| + the
/// half-step term). Int8Matrix keeps f32 scales (0).
const INT4_SCALE_REL: f64 = olive_kernels::cpu::int4::SCALE_REL;

fn ort_output(
    env: &Environment,
    dir: &std::path::Path,
    q: &olive_onnx::matmul_nbits::MatMulNBitsWeights,
    x: &[f32],
    batch: usize,
) -> Vec<f32> {
    let mut g = GraphBuilder::create(dir, "m.onnx").expect("graph");
    let m = Dim::Symbolic("M".into());
    g.input("x", DataType::Float, &[m.clone(), Dim::Fixed(q.k as i64)]);
    let y = q
        .add_to_graph(&mut g, "w", "MatMulNBits_0", "x")
        .expect("node");
    g.output(&y, DataType::Float, &[m, Dim::Fixed(q.n as i64)]);
    let model = g
        .finish(&[("", 21), ("com.microsoft", 1)], "test")
        .expect("model");
    let mut s = Session::builder(env)
        .and_then(|mut b| b.commit_from_file(&model))
        .expect("session");
    let t = Tensor::from_array(([batch, q.k], x.to_vec())).expect("tensor");
    let out = s.run(ort::inputs!["x" => t]).expect("run");
    let (_, data) = out[0].try_extract_tensor::<f32>().expect("f32 output");
    data.to_vec()
}

/// |ours − ORT| within the fp32 slack (int8 activations: ORT's level 4 exactly) or the half-step bound
/// (fp32 activations), for each output of x [batch, k] · dense [n, k]ᵀ.
fn check(
    x: &[f32],
    dense: &[f32],
    (n, k, block): (usize, usize, usize),
    (got, want): (&[f32], &[f32]),
    (act, scale_rel): (Activations, f64),
    what: &str,
) {
    let batch = x.len() / k;
    assert_eq!((got.len(), want.len()), (batch * n, batch * n), "{what}");
    for b in 0..batch {
        let xb = &x[b * k..(b + 1) * k];
        for (o, row) in dense.chunks_exact(k).enumerate() {
            let l1: f64 = xb
                .iter()
                .zip(row)
                .map(|(&a, &v)| (a as f64 * v as f64).abs())
                .sum();
            let q8: f64 = xb
                .chunks_exact(block)
                .zip(row.chunks_exact(block))
                .map(|(xc, wc)| {
                    let amax = xc.iter().fold(0f64, |a, v| a.max(v.abs() as f64));
                    amax * INT8_HALF_STEP * wc.iter().map(|v| v.abs() as f64).sum::<f64>()
                })
                .sum();
            let grid = if act == Activations::Int8 { 0.0 } else { q8 };
            let tol = grid + F32_REL * l1 + scale_rel * (l1 + q8) + 1e-5;
            let (g, e) = (got[b * n + o], want[b * n + o]);
            assert!(
                ((g - e) as f64).abs() <= tol,
                "{what} [{b}, {o}]: ours {g}, ORT {e}, tol {tol:.3e}"
            );
        }
    }
}

#[test]
fn int4_matches_ort_matmul_nbits() {
    let (n, k) = (48usize, 384usize);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let w: Vec<f32> = (0..n * k).map(|_| rand()).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = std::env::var("ORT_DYLIB_PATH").unwrap_or_else(|_| {
        panic!("ORT_DYLIB_PATH is not set: run `source target/olive-env.sh` (scripts/install.sh writes it) first")
    });
    let env = ort::init_from(&path)
        .expect("load ORT")
        .with_name("int4-vs-ort")
        .build()
        .expect("env");
    for (block, symmetric) in [(32usize, false), (128, false), (32, true)] {
        let cfg = NBitsConfig {
            accuracy_level: Some(4),
            ..NBitsConfig::int4(block, symmetric)
        };
        let q = quantize(&w, n, k, &cfg).expect("quantize");
        let levels = unpack_matmul_nbits(&q.b, &q.scales, q.zero_points.as_deref(), k, n, block)
            .expect("unpack");
        let m = Int4Matrix::from_levels(&levels).expect("pack");
        let dense = m.dequantize(); // [n, k]
        for batch in [1usize, 3, 20] {
            let x: Vec<f32> = (0..batch * k).map(|_| 2.0 * rand()).collect();
            let sub = dir.path().join(format!("b{block}_s{symmetric}_m{batch}"));
            std::fs::create_dir_all(&sub).expect("dir");
            let want = ort_output(&env, &sub, &q, &x, batch);
            assert_eq!(want.len(), batch * n);
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512]
                .into_iter()
                .filter(|i| i.available())
            {
                for act in [Activations::F32, Activations::Int8] {
                    let got = int4_matmul_with(&x, batch, &m, act, isa).expect("int4");
                    let what =
                        format!("{isa:?} {act:?} block {block} sym {symmetric} batch {batch}");
                    check(
                        &x,
                        &dense,
                        (n, k, m.block_size()),
                        (&got, &want),
                        (act, INT4_SCALE_REL),
                        &what,
                    );
                }
            }
        }
    }
    // int8 weights (MatMulNBits bits = 8): B [n, blocks, block] is the levels row by row.
    for (block, symmetric) in [(32usize, false), (128, true)] {
        let cfg = NBitsConfig {
            bits: 8,
            accuracy_level: Some(4),
            ..NBitsConfig::int4(block, symmetric)
        };
        let q = quantize(&w, n, k, &cfg).expect("quantize 8 bits");
        let m = Int8Matrix::new(
            n,
            k,
            block,
            q.b.clone(),
            q.scales.clone(),
            q.zero_points.clone(),
        )
        .expect("int8 matrix");
        let dense = m.dequantize(); // [n, k]
        for batch in [1usize, 5] {
            let x: Vec<f32> = (0..batch * k).map(|_| 2.0 * rand()).collect();
            let sub = dir
                .path()
                .join(format!("w8_b{block}_s{symmetric}_m{batch}"));
            std::fs::create_dir_all(&sub).expect("dir");
            let want = ort_output(&env, &sub, &q, &x, batch);
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512]
                .into_iter()
                .filter(|i| i.available())
            {
                for act in [Activations::F32, Activations::Int8] {
                    let got = int8_matmul_with(&x, batch, &m, act, isa).expect("int8 weights");
                    let what = format!(
                        "int8 weights {isa:?} {act:?} block {block} sym {symmetric} batch {batch}"
                    );
                    check(&x, &dense, (n, k, block), (&got, &want), (act, 0.0), &what);
                }
            }
        }
    }
}
