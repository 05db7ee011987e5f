//! W4A16 (kernels/cuda/w4a16.cu) on Phi-3.5-mini and Llama-3-8B linear shapes with random int4 weights (group
//! 128, bf16 activations): the GEMV's bandwidth against the plain read kernel on the same bytes, and every
//! product against cuBLAS bf16 (on the same weights, dequantized) at batch 1, 16, 64 and 128, one launch at a time
//! and, for the picked configuration, cuBLAS and the read, as CUDA graphs of back-to-back calls (no launch gaps and
//! timing events between them: an empty kernel costs ~3.9 µs a launch the first way, ~0.9 µs the second). Weights
//! rotate over copies totalling more than twice the L2, so no timing reads from the cache. At batch 1 also the
//! product with the RMSNorm before it folded in (the decode step's qkv and gate_up kernels; a line on stderr).

use cudarc::cublas::{sys::cublasOperation_t, Gemm, GemmConfig};
use olive_kernels::cpu::w4a16::W4Levels;
use olive_kernels::cpu::w4a16_tiles::W4Tiles;
use olive_kernels::cuda::rmsnorm::InputNorm;
use olive_kernels::cuda::w4a16::{
    dequantize, w4a16_normed, w4a16_normed_swiglu, w4a16_with, MmConfig, W4Weight, CONFIGS,
};
use olive_kernels::cuda::{bf16, CudaSlice, Gpu, GpuError};

use crate::random::{bf16_values, Xorshift};
use crate::timing::{both_us, empty_call, median_us, read_call, read_tiles_call, rotated_copies};

const GROUP: usize = 128;
const BATCHES: [usize; 4] = [1, 16, 64, 128];

/// (model, linear, K in, N out)
const SHAPES: [(&str, &str, usize, usize); 8] = [
    ("Phi-3.5-mini", "qkv", 3072, 9216),
    ("Phi-3.5-mini", "o", 3072, 3072),
    ("Phi-3.5-mini", "gate_up", 3072, 16384),
    ("Phi-3.5-mini", "down", 8192, 3072),
    ("Llama-3-8B", "qkv", 4096, 6144),
    ("Llama-3-8B", "o", 4096, 4096),
    ("Llama-3-8B", "gate_up", 4096, 28672),
    ("Llama-3-8B", "down", 14336, 4096),
];

fn random_levels(n: usize, k: usize, seed: u64) -> W4Levels {
    let mut rng = Xorshift::new(seed);
    let groups = k / GROUP;
    let mut q = vec![0u8; n * k];
    for chunk in q.chunks_mut(16) {
        let r = rng.next();
        for (i, v) in chunk.iter_mut().enumerate() {
            *v = ((r >> (4 * i)) & 0xF) as u8;
        }
    }
    W4Levels {
        n,
        k,
        group_size: GROUP,
        q,
        scales: (0..n * groups)
            .map(|_| 0.002 + (rng.next() % 1000) as f32 * 1e-5)
            .collect(),
        zeros: (0..n * groups).map(|_| (rng.next() % 16) as u8).collect(),
        g_idx: None,
    }
}

/// cuBLAS bf16 y [batch, n] = x [batch, k] · Wᵀ (W [n, k] row-major), fp32 compute.
fn cublas(
    gpu: &Gpu,
    w: &CudaSlice<bf16>,
    x: &CudaSlice<bf16>,
    y: &mut CudaSlice<bf16>,
    (batch, k, n): (usize, usize, usize),
) -> Result<(), GpuError> {
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_T,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: n as i32,
        n: batch as i32,
        k: k as i32,
        alpha: bf16::ONE,
        lda: k as i32,
        ldb: k as i32,
        beta: bf16::ZERO,
        ldc: n as i32,
    };
    // SAFETY: w is [n, k], x [batch, k], y [batch, n], as the column-major view above reads them.
    unsafe { gpu.blas().gemm(cfg, w, x, y) }?;
    Ok(())
}

fn rel_error(a: &[bf16], b: &[bf16]) -> f64 {
    let (mut d, mut r) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x.to_f32()), f64::from(y.to_f32()));
        d += (x - y).powi(2);
        r += y * y;
    }
    if d.is_nan() {
        f64::INFINITY
    } else {
        (d / r).sqrt()
    }
}

/// The configurations worth timing at `batch` on `gpu`: batch tiles from the batch (at least 8) up to twice it.
fn candidates(gpu: &Gpu, batch: usize) -> Vec<MmConfig> {
    let lo = batch.clamp(8, 128);
    CONFIGS
        .iter()
        .copied()
        .filter(|c| c.cols() >= lo && c.cols() <= 2 * lo && c.runs_on(gpu.arch()))
        .collect()
}

/// `rt,nb8,wk,wn,wb` for the split-K kernel (`c<cluster>` added for clusters), `pipe rt,nb8,wn,wb s<stages>
/// b<min blocks>` for the pipelined one, `ws <warpgroups>x<rows each>x<cols> s<stages>x<chunks a stage> b<min
/// blocks>` for Hopper's warp-specialised wgmma one.
fn label(c: &MmConfig) -> String {
    if c.producer {
        format!(
            "ws{} {}x{}x{} s{}x{} b{}{}",
            if c.natural_x { " nx" } else { "" },
            c.wn / 4,
            64 * c.rt,
            c.cols(),
            c.stages,
            c.stage_chunks,
            c.min_blocks,
            if c.cluster > 1 {
                format!(" c{}", c.cluster)
            } else {
                String::new()
            }
        )
    } else if c.stages == 0 {
        let pf = if c.prefetch > 1 {
            format!(" p{}", c.prefetch)
        } else {
            String::new()
        };
        let cl = if c.cluster > 1 {
            format!(" c{}", c.cluster)
        } else {
            String::new()
        };
        format!("{},{},{},{},{}{pf}{cl}", c.rt, c.nb8, c.wk, c.wn, c.wb)
    } else {
        format!(
            "pipe {},{},{},{} s{} b{}",
            c.rt, c.nb8, c.wn, c.wb, c.stages, c.min_blocks
        )
    }
}

/// One token's product with the RMSNorm before it folded in (`w4a16_normed`; for gate_up `w4a16_normed_swiglu`,
/// SwiGLU's gating in the write-out, as the decode step runs them), from a CUDA graph, against the plain product's
/// `plain_graph` µs: what the fold costs.
fn normed_line(
    gpu: &Gpu,
    (model, linear, k, n): (&str, &str, usize, usize),
    x: &CudaSlice<bf16>,
    weights: &[W4Weight<bf16>],
    plain_graph: f64,
) -> Result<(), GpuError> {
    let swiglu = linear == "gate_up";
    let norm_weight = gpu.upload(&bf16_values(k, 11))?;
    let mut y = gpu.alloc::<bf16>(if swiglu { n / 2 } else { n })?;
    let mut declined = false;
    let (_, graph) = both_us(gpu, |i| {
        let norm = InputNorm {
            weight: &norm_weight,
            eps: 1e-5,
        };
        let w = &weights[i % weights.len()];
        let ran = if swiglu {
            w4a16_normed_swiglu(gpu, x, norm, 1, w, &mut y)?
        } else {
            w4a16_normed(gpu, x, norm, 1, w, &mut y)?
        };
        declined |= !ran;
        Ok(())
    })?;
    let what = if swiglu { "normed + SwiGLU" } else { "normed" };
    if declined {
        eprintln!("{model} {linear} batch 1: {what} declined");
    } else {
        eprintln!(
            "{model} {linear} batch 1: {what} graph {graph:.1} µs against the plain product's {plain_graph:.1} \
             (+{:.1})",
            graph - plain_graph
        );
    }
    Ok(())
}

pub fn run(gpu: &Gpu) -> Result<(), GpuError> {
    println!(
        "\n## W4A16 int4 (group {GROUP}, bf16 activations) vs cuBLAS bf16; times are medians in µs"
    );
    // A word a thread of the read kernels: the plain read's 8 blocks of 256 a multiprocessor, read_tiles' 512 a
    // 16-row tile.
    let most_tiles = SHAPES.iter().map(|s| s.3 / 16).max().unwrap_or(0);
    let mut sink = gpu.alloc::<u32>((gpu.sm_count() as usize * 8 * 256).max(most_tiles * 512))?;
    let big: Vec<CudaSlice<u32>> = vec![gpu.alloc::<u32>(1 << 28)?];
    let t = median_us(gpu, read_call(gpu, &big, &mut sink)?)?;
    println!(
        "plain read kernel, 1 GiB buffer: {:.0} GB/s",
        (1u64 << 30) as f64 / t / 1e3
    );
    drop(big);
    let (empty, empty_graph) = both_us(gpu, empty_call(gpu)?)?;
    println!("empty kernel: {empty:.2} µs a launch, {empty_graph:.2} µs a call from a graph");
    println!(
        "(\"graph\": the picked configuration and cuBLAS each as a CUDA graph of back-to-back calls, µs a call)"
    );
    let mut summary = Vec::new();
    println!("| model | linear | K | N | batch | int4 µs (config) | picked µs | cuBLAS bf16 µs | speed-up | graph: picked µs | graph: cuBLAS µs | graph speed-up | int4 GB/s | read GB/s (same bytes) | % of read | graph: % of read | rel err vs cuBLAS |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    // W4A16_SHAPE="Llama-3-8B gate_up" and W4A16_BATCHES="1,128" narrow the run (for a profiler); W4A16_VERBOSE=1
    // prints every configuration's time to stderr.
    let verbose = std::env::var_os("W4A16_VERBOSE").is_some();
    let only = std::env::var("W4A16_SHAPE").ok();
    let batches: Vec<usize> = match std::env::var("W4A16_BATCHES") {
        Ok(list) => list
            .split(',')
            .filter_map(|b| b.trim().parse().ok())
            .collect(),
        Err(_) => BATCHES.to_vec(),
    };
    for (si, &(model, linear, k, n)) in SHAPES.iter().enumerate() {
        if only
            .as_ref()
            .is_some_and(|o| *o != format!("{model} {linear}"))
        {
            continue;
        }
        let tiles = W4Tiles::from_levels(&random_levels(n, k, 1000 + si as u64))
            .map_err(|e| GpuError::Shape(e.to_string()))?;
        let first = W4Weight::<bf16>::upload(gpu, &tiles)?;
        let wbytes = first.bytes();
        let mut weights = vec![first];
        for _ in 1..rotated_copies(wbytes) {
            weights.push(W4Weight::<bf16>::upload(gpu, &tiles)?);
        }
        drop(tiles);
        let dense: Vec<CudaSlice<bf16>> = (0..rotated_copies(2 * n * k))
            .map(|i| dequantize(gpu, &weights[i % weights.len()]))
            .collect::<Result<_, _>>()?;
        let reads: Vec<CudaSlice<u32>> = (0..weights.len())
            .map(|_| gpu.alloc::<u32>(wbytes.div_ceil(16) * 4))
            .collect::<Result<_, _>>()?;
        let (read, read_graph) = both_us(gpu, read_call(gpu, &reads, &mut sink)?)?;
        let (tiles, tiles_graph) =
            both_us(gpu, read_tiles_call(gpu, &reads, &mut sink, (n, k), false)?)?;
        let (major, major_graph) =
            both_us(gpu, read_tiles_call(gpu, &reads, &mut sink, (n, k), true)?)?;
        eprintln!(
            "{model} {linear}: the GEMV's reads alone (16 warps a tile): {tiles:.1} µs (graph {tiles_graph:.1}); \
             chunk-major {major:.1} (graph {major_graph:.1}); the plain read of those bytes {read:.1} (graph \
             {read_graph:.1})"
        );
        drop(reads);
        for &batch in &batches {
            let x = gpu.upload(&bf16_values(batch * k, 7 + batch as u64))?;
            let mut y = gpu.alloc::<bf16>(batch * n)?;
            let mut y_ref = gpu.alloc::<bf16>(batch * n)?;
            let mut best = (f64::INFINITY, CONFIGS[0]);
            for c in candidates(gpu, batch) {
                let t = median_us(gpu, |i| {
                    w4a16_with(gpu, c, &x, batch, &weights[i % weights.len()], &mut y)
                })?;
                if verbose {
                    eprintln!("{model} {linear} batch {batch}: {} {t:.1} µs", label(&c));
                }
                if t < best.0 {
                    best = (t, c);
                }
            }
            let picked = MmConfig::pick(batch, n, k, gpu.sm_count(), gpu.arch());
            let (t_pick, g_pick) = both_us(gpu, |i| {
                w4a16_with(gpu, picked, &x, batch, &weights[i % weights.len()], &mut y)
            })?;
            let (t_blas, g_blas) = both_us(gpu, |i| {
                cublas(gpu, &dense[i % dense.len()], &x, &mut y_ref, (batch, k, n))
            })?;
            // Same weights (dense[0] is weights[0] dequantized): the outputs agree up to summation order.
            w4a16_with(gpu, best.1, &x, batch, &weights[0], &mut y)?;
            cublas(gpu, &dense[0], &x, &mut y_ref, (batch, k, n))?;
            let err = rel_error(&gpu.download(&y)?, &gpu.download(&y_ref)?);
            let bytes = (wbytes + 2 * batch * (k + n)) as f64;
            let gbs = bytes / best.0 / 1e3;
            let read_gbs = wbytes as f64 / read / 1e3;
            let graph_of_read = (bytes / g_pick) / (wbytes as f64 / read_graph);
            let c = best.1;
            println!(
                "| {model} | {linear} | {k} | {n} | {batch} | {:.1} ({}) | {t_pick:.1} | {t_blas:.1} | {:.2}x | {g_pick:.1} | {g_blas:.1} | {:.2}x | {gbs:.0} | {read_gbs:.0} | {:.0}% | {:.0}% | {err:.1e} |",
                best.0, label(&c), t_blas / best.0, g_blas / g_pick, 100.0 * gbs / read_gbs, 100.0 * graph_of_read
            );
            if batch == 1 {
                normed_line(gpu, (model, linear, k, n), &x, &weights, g_pick)?;
            }
            summary.push((
                batch,
                [
                    t_blas / best.0,
                    gbs / read_gbs,
                    g_blas / g_pick,
                    graph_of_read,
                ],
            ));
        }
    }
    for &batch in &BATCHES {
        let rows: Vec<_> = summary.iter().filter(|r| r.0 == batch).collect();
        if rows.is_empty() {
            continue; // a batch W4A16_BATCHES left out
        }
        let min = |m: usize| rows.iter().map(|r| r.1[m]).fold(f64::INFINITY, f64::min);
        println!(
            "batch {batch}: speed-up vs cuBLAS bf16 min {:.2}x over the {} shapes (graph {:.2}x); GB/s vs read \
             min {:.0}% (graph {:.0}%)",
            min(0),
            rows.len(),
            min(2),
            100.0 * min(1),
            100.0 * min(3)
        );
    }
    Ok(())
}
