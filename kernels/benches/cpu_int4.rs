//! CPU int4 matmul bench (issue 12): Phi-3-mini-shaped layers (K = 3072, N = 3072 / 8192 / 9216), weights
//! rotated over enough copies to exceed 3× the L3 cache. Measured in one process: a plain memory-read loop
//! (GB/s), our kernels (`olive_kernels::cpu::int4`, GB/s of the packed layout at batch 1) and ONNX Runtime's
//! MatMulNBits (one-node model, accuracy_level 4, same RTN weights) at batch 1/16/128, 1 and 2 threads.
//! Run: `source target/olive-env.sh && cargo bench -p olive-kernels --bench cpu_int4 [-- FLAGS]`, or the
//! binary `cargo bench --no-run` prints, standalone, with `ORT_DYLIB_PATH=.../libonnxruntime.so.1.32.0`.
//! FLAGS: `--quick` (N = 3072 only), `--batch B` / `--threads T` (only those rows), `--in-cache` (kernel
//! throughput on one 3072 × 384 matrix in L2 instead: no ORT, no memory traffic), `--rotate_mib M` (weights
//! rotated over more than M MiB instead of 96, for machines with larger caches).

mod support;

use std::path::Path;
use std::time::Instant;

use olive_kernels::cpu::int4::{int4_matmul_with, Activations, Int4Matrix, Isa};
use olive_kernels::cpu::w4a16::unpack_matmul_nbits;
use olive_onnx::graph::{Dim, GraphBuilder};
use olive_onnx::matmul_nbits::{quantize, NBitsConfig};
use olive_onnx::tensor::DataType;
use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// MiB of weights one rotation must exceed by default (3× a 32 MiB L3).
const ROTATE_MIB: usize = 96;
const K: usize = 3072;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Seconds per call: `reps` timed rounds of `iters` calls each (after one warm-up round), median.
fn time(reps: usize, iters: usize, mut f: impl FnMut(usize)) -> f64 {
    (0..iters).for_each(&mut f);
    let mut t = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        (0..iters).for_each(&mut f);
        t.push(start.elapsed().as_secs_f64() / iters as f64);
    }
    median(t)
}

/// Seconds per call as `time`, but the fastest round (in-cache figures on a shared machine).
fn time_min(reps: usize, iters: usize, mut f: impl FnMut(usize)) -> f64 {
    (0..iters).for_each(&mut f);
    (0..reps)
        .map(|_| {
            let start = Instant::now();
            (0..iters).for_each(&mut f);
            start.elapsed().as_secs_f64() / iters as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// GB/s of a sum over a 512 MiB buffer of u64, split over the pool's threads.
fn read_bandwidth(buf: &[u64]) -> f64 {
    let s = time(5, 1, |_| {
        std::hint::black_box(support::read_sum(buf));
    });
    (buf.len() * 8) as f64 / s / 1e9
}

/// Random weights [n, K] quantized RTN (asymmetric) by olive_onnx's byte-exact port of ORT's quantizer.
fn weights(n: usize, block: usize) -> Res<olive_onnx::matmul_nbits::MatMulNBitsWeights> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ n as u64;
    let w: Vec<f32> = (0..n * K)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let cfg = NBitsConfig {
        accuracy_level: Some(4),
        ..NBitsConfig::int4(block, false)
    };
    Ok(quantize(&w, n, K, &cfg)?)
}

/// A one-node MatMulNBits model `y [M, n] = x [M, K] · Wᵀ` in `dir`.
fn ort_model(
    dir: &Path,
    q: &olive_onnx::matmul_nbits::MatMulNBitsWeights,
) -> Res<std::path::PathBuf> {
    let mut g = GraphBuilder::create(dir, "matmul_nbits.onnx")?;
    let m = Dim::Symbolic("M".into());
    g.input("x", DataType::Float, &[m.clone(), Dim::Fixed(K as i64)]);
    let y = q.add_to_graph(&mut g, "w", "MatMulNBits_0", "x")?;
    g.output(&y, DataType::Float, &[m, Dim::Fixed(q.n as i64)]);
    Ok(g.finish(&[("", 21), ("com.microsoft", 1)], "olive-rs bench")?)
}

fn ort_sessions(
    env: &Environment,
    model: &Path,
    copies: usize,
    threads: usize,
) -> Res<Vec<Session>> {
    (0..copies)
        .map(|_| {
            Ok(Session::builder(env)?
                .with_intra_threads(threads)?
                .with_intra_op_spinning(false)?
                .commit_from_file(model)?)
        })
        .collect()
}

fn ort_run(s: &mut Session, x: &[f32], batch: usize) -> Res<()> {
    let t = Tensor::from_array(([batch, K], x.to_vec()))?;
    let out = s.run(ort::inputs!["x" => t])?;
    std::hint::black_box(&out);
    Ok(())
}

/// Kernel throughput with the weights in cache (one 3072 × 384 matrix, 0.6 MiB, in L2, 1 thread): what the
/// kernels reach when memory is not the limit.
fn kernel_in_cache(isa: Isa, only: Option<usize>) -> Res<()> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    println!("| block | batch | int8 µs | GB/s | fp32 µs |");
    println!("|---|---|---|---|---|");
    for block in [32usize, 128] {
        let n = 384;
        let q = weights(n, block)?;
        let levels = unpack_matmul_nbits(&q.b, &q.scales, q.zero_points.as_deref(), K, n, block)?;
        let m = Int4Matrix::from_levels(&levels)?;
        for batch in [1usize, 4, 16, 128] {
            if only.is_some_and(|b| b != batch) {
                continue;
            }
            let x: Vec<f32> = (0..batch * K)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let iters = (2000 / batch).max(10);
            let run = |act| {
                pool.install(|| {
                    time_min(7, iters, |_| {
                        let y = int4_matmul_with(&x, batch, &m, act, isa);
                        std::hint::black_box(y.map(|v| v.len()).unwrap_or(0));
                    })
                })
            };
            let t8 = run(Activations::Int8);
            let t32 = run(Activations::F32);
            println!(
                "| {block} | {batch} | {:.1} | {:.1} | {:.1} |",
                t8 * 1e6,
                m.bytes() as f64 / t8 / 1e9,
                t32 * 1e6
            );
        }
    }
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let in_cache = args.iter().any(|a| a == "--in-cache");
    // `--batch B` / `--threads T`: only those rows of the tables.
    let only = |flag: &str| -> Option<usize> {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1)?.parse().ok()
    };
    let (only_batch, only_threads) = (only("--batch"), only("--threads"));
    let rotate_bytes = only("--rotate_mib").unwrap_or(ROTATE_MIB) << 20;
    let dylib = std::env::var("ORT_DYLIB_PATH")
        .map_err(|_| "ORT_DYLIB_PATH is not set (source target/olive-env.sh)")?;
    let env = ort::init_from(&dylib)?
        .with_name("cpu-int4-bench")
        .build()?;
    let isa = Isa::detect();
    println!(
        "isa {isa:?}; ORT {dylib}; K {K}; rotation > {} MiB",
        rotate_bytes >> 20
    );
    if in_cache {
        return kernel_in_cache(isa, only_batch);
    }
    let buf = support::read_buffer();
    let dir = tempfile::tempdir()?;
    let ns: &[usize] = if quick { &[3072] } else { &[3072, 8192, 9216] };
    let batches: &[usize] = &[1, 16, 128];
    for threads in [1usize, 2] {
        if only_threads.is_some_and(|t| t != threads) {
            continue;
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let read = pool.install(|| read_bandwidth(&buf));
        println!("\n## {threads} thread(s): memory read {read:.1} GB/s");
        println!("| N | block | batch | ours int8 ms | ours fp32 ms | ORT ms | ours GB/s (% read) | ORT GB/s | ORT / ours (int8) |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for &n in ns {
            for block in [32usize, 128] {
                let q = weights(n, block)?;
                let levels =
                    unpack_matmul_nbits(&q.b, &q.scales, q.zero_points.as_deref(), K, n, block)?;
                let m = Int4Matrix::from_levels(&levels)?;
                let ort_bytes =
                    q.b.len() + q.scales.len() * 4 + q.zero_points.as_ref().map_or(0, Vec::len);
                let copies = rotate_bytes.div_ceil(m.bytes()).max(2);
                let mats: Vec<Int4Matrix> = (0..copies).map(|_| m.clone()).collect();
                let sub = dir.path().join(format!("n{n}_b{block}_t{threads}"));
                std::fs::create_dir_all(&sub)?;
                let model = ort_model(&sub, &q)?;
                let mut sessions = ort_sessions(&env, &model, copies, threads)?;
                for &batch in batches {
                    if only_batch.is_some_and(|b| b != batch) {
                        continue;
                    }
                    let x: Vec<f32> = (0..batch * K)
                        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                        .collect();
                    let iters = if batch == 128 { copies } else { 4 * copies };
                    let reps = if quick { 3 } else { 7 };
                    let run = |act| {
                        pool.install(|| {
                            time(reps, iters, |i| {
                                let y = int4_matmul_with(&x, batch, &mats[i % copies], act, isa);
                                std::hint::black_box(y.map(|v| v.len()).unwrap_or(0));
                            })
                        })
                    };
                    let ours8 = run(Activations::Int8);
                    let ours32 = if batch == 1 {
                        run(Activations::F32)
                    } else {
                        f64::NAN
                    };
                    let mut err = None;
                    let ort = time(reps, iters, |i| {
                        if let Err(e) = ort_run(&mut sessions[i % copies], &x, batch) {
                            err = Some(e.to_string());
                        }
                    });
                    if let Some(e) = err {
                        return Err(format!("ORT run failed: {e}").into());
                    }
                    let gbs = m.bytes() as f64 / ours8 / 1e9;
                    let ort_gbs = ort_bytes as f64 / ort / 1e9;
                    println!(
                        "| {n} | {block} | {batch} | {:.3} | {} | {:.3} | {gbs:.1} ({:.0}%) | {ort_gbs:.1} | {:.2}× |",
                        ours8 * 1e3,
                        if ours32.is_nan() { "–".to_string() } else { format!("{:.3}", ours32 * 1e3) },
                        ort * 1e3,
                        100.0 * gbs / read,
                        ort / ours8
                    );
                }
            }
        }
    }
    Ok(())
}
