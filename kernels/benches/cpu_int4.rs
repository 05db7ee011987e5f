//! CPU int4 matmul bench (issue 12): Phi-3-mini-shaped layers (K = 3072, N = 3072 / 8192 / 9216), weights
//! rotated over enough copies to exceed 3× the L3 cache. Measured in one process: a plain memory-read loop
//! (GB/s), our kernels (`olive_kernels::cpu::int4`, GB/s of the packed layout at batch 1) and ONNX Runtime's
//! MatMulNBits (one-node model, accuracy_level 4, same RTN weights) at batch 1/16/128, 1 and 2 threads.
//! Interleaved: each row runs rounds of (ours int8, ours fp32 at batch 1, ORT, read loop), the order rotated
//! each round, so every side sees the same machine (a shared VM's bandwidth drifts between blocks); the table
//! gives each side's median and the median (min–max) of the per-round ratios; 20 ms untimed before each side
//! lets the last side's spinning workers go idle. ORT runs with the same thread
//! count: 1 thread = its own session pool of 1, 2 threads = the environment's global pool of 2 with spinning
//! on (ORT's default; one pool for all the rotated sessions, as rayon is one pool for ours).
//! Run: `source target/olive-env.sh && cargo bench -p olive-kernels --bench cpu_int4 [-- FLAGS]`, or the
//! binary `cargo bench --no-run` prints, standalone, with `ORT_DYLIB_PATH=.../libonnxruntime.so.1.32.0`.
//! FLAGS: `--quick` (N = 3072 only), `--batch B` / `--threads T` (only those rows), `--in-cache` (kernel
//! throughput on one 3072 × 384 matrix in L2 instead: no ORT, no memory traffic), `--rotate_mib M` (weights
//! rotated over more than M MiB instead of 96, for machines with larger caches), `--rounds R` (rounds per row
//! instead of 11 / 7 / 5 for batch 1 / 16 / 128).

mod support;

use std::path::Path;
use std::time::Instant;

use olive_kernels::cpu::int4::{int4_matmul_with, Activations, Int4Matrix, Isa};
use olive_kernels::cpu::w4a16::unpack_matmul_nbits;
use olive_onnx::graph::{Dim, GraphBuilder};
use olive_onnx::matmul_nbits::{quantize, NBitsConfig};
use olive_onnx::tensor::DataType;
use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::session::Session;
use ort::value::Tensor;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// MiB of weights one rotation must exceed by default (3× a 32 MiB L3).
const ROTATE_MIB: usize = 96;
const K: usize = 3072;

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Seconds per call of `iters` calls.
fn time_once(iters: usize, mut f: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    (0..iters).for_each(&mut f);
    start.elapsed().as_secs_f64() / iters as f64
}

/// What one round of a row times, in the order of the first round (later rounds rotate it).
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Ours,
    Ours32,
    Ort,
    Read,
}

/// Seconds per call: the fastest of `reps` timed rounds of `iters` calls each, after one warm-up round.
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

/// `copies` sessions of `model` running on `threads` threads: 1 = each its own pool of 1 (no workers); 2 = the
/// environment's global pool of 2, spinning on (one worker shared by all the copies, as ours share rayon's).
fn ort_sessions(
    env: &Environment,
    model: &Path,
    copies: usize,
    threads: usize,
) -> Res<Vec<Session>> {
    (0..copies)
        .map(|_| {
            let b = Session::builder(env)?;
            let mut b = if threads == ORT_GLOBAL_THREADS {
                b
            } else {
                b.with_independent_thread_pool()?
                    .with_intra_threads(threads)?
            };
            Ok(b.commit_from_file(model)?)
        })
        .collect()
}

/// Pause before each side of a round, untimed: the previous side's spinning workers (rayon's or ORT's) would
/// otherwise hold a core while the next side runs (2 threads on 2 cores).
const SETTLE: std::time::Duration = std::time::Duration::from_millis(20);

/// Threads of the environment's global ORT pool (the 2-thread rows run on it).
const ORT_GLOBAL_THREADS: usize = 2;

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
    let rounds = only("--rounds");
    let rotate_bytes = only("--rotate_mib").unwrap_or(ROTATE_MIB) << 20;
    let dylib = std::env::var("ORT_DYLIB_PATH")
        .map_err(|_| "ORT_DYLIB_PATH is not set (source target/olive-env.sh)")?;
    let env = ort::init_from(&dylib)?
        .with_name("cpu-int4-bench")
        .with_global_thread_pool(
            GlobalThreadPoolOptions::default()
                .with_intra_threads(ORT_GLOBAL_THREADS)?
                .with_spin_control(true)?,
        )
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
    let read_gbs = || {
        let s = time_once(1, |_| {
            std::hint::black_box(support::read_sum(&buf));
        });
        (buf.len() * 8) as f64 / s / 1e9
    };
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
        let mut reads = Vec::new();
        println!("\n## {threads} thread(s)");
        println!("| N | block | batch | ours int8 ms | ours fp32 ms | ORT ms | read GB/s | ours GB/s (% read, min–max) | ORT GB/s | ORT / ours (int8, min–max) |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
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
                    let rounds = rounds.unwrap_or(match (quick, batch) {
                        (true, _) => 5,
                        (false, 1) => 11,
                        (false, 16) => 7,
                        _ => 5,
                    });
                    let mut sides = vec![Side::Ours, Side::Ort, Side::Read];
                    if batch == 1 {
                        sides.insert(1, Side::Ours32);
                    }
                    // Seconds per call (read: GB/s) per side, one entry per round; round 0 is a warm-up.
                    let mut t: Vec<Vec<f64>> = vec![Vec::new(); sides.len()];
                    let mut err = None;
                    for r in 0..=rounds {
                        for j in 0..sides.len() {
                            let side = (j + r) % sides.len();
                            // Both pools spin a while after their work (rayon's and ORT's, each its
                            // default): let the last side's workers go idle before timing the next.
                            std::thread::sleep(SETTLE);
                            let ours = |act| {
                                time_once(iters, |i| {
                                    let y =
                                        int4_matmul_with(&x, batch, &mats[i % copies], act, isa);
                                    std::hint::black_box(y.map(|v| v.len()).unwrap_or(0));
                                })
                            };
                            let v = match sides[side] {
                                Side::Ours => pool.install(|| ours(Activations::Int8)),
                                Side::Ours32 => pool.install(|| ours(Activations::F32)),
                                Side::Read => pool.install(read_gbs),
                                Side::Ort => time_once(iters, |i| {
                                    if let Err(e) = ort_run(&mut sessions[i % copies], &x, batch) {
                                        err = Some(e.to_string());
                                    }
                                }),
                            };
                            if r > 0 {
                                t[side].push(v);
                            }
                        }
                    }
                    if let Some(e) = err {
                        return Err(format!("ORT run failed: {e}").into());
                    }
                    let of = |s: Side| sides.iter().position(|&x| x == s).map(|i| &t[i]);
                    let (ours, ort, read) = (
                        of(Side::Ours).ok_or("no ours")?,
                        of(Side::Ort).ok_or("no ORT")?,
                        of(Side::Read).ok_or("no read")?,
                    );
                    reads.extend_from_slice(read);
                    let gbs: Vec<f64> = ours.iter().map(|s| m.bytes() as f64 / s / 1e9).collect();
                    let pct: Vec<f64> = gbs.iter().zip(read).map(|(g, r)| 100.0 * g / r).collect();
                    let ratio: Vec<f64> = ort.iter().zip(ours).map(|(o, s)| o / s).collect();
                    let lo_hi = |v: &[f64]| {
                        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                        let hi = v.iter().copied().fold(0.0, f64::max);
                        (lo, hi)
                    };
                    let ((rlo, rhi), (plo, phi)) = (lo_hi(&ratio), lo_hi(&pct));
                    let ours32 = of(Side::Ours32)
                        .map_or("–".to_string(), |v| format!("{:.3}", median(v) * 1e3));
                    println!(
                        "| {n} | {block} | {batch} | {:.3} | {ours32} | {:.3} | {:.1} | {:.1} ({:.0}%, {plo:.0}–{phi:.0}) | {:.1} | {:.2}× ({rlo:.2}–{rhi:.2}) |",
                        median(ours) * 1e3,
                        median(ort) * 1e3,
                        median(read),
                        median(&gbs),
                        median(&pct),
                        ort_bytes as f64 / median(ort) / 1e9,
                        median(&ratio),
                    );
                }
            }
        }
        println!(
            "\n{threads} thread(s): memory read {:.1} GB/s (median of all rows' rounds)",
            median(&reads)
        );
    }
    Ok(())
}
