//! CPU int4 decode-step bench (issue 12): the batch-1 int4 products of one decode step of the default model
//! (SmolLM2-135M: 30 layers of qkv 960×576, o 576×576, gate_up 3072×576 in blocks of 64 (group 128 over
//! K = 576), down 576×1536 in blocks of 128, then the int4 lm_head 49152×576 in blocks of 32), random levels,
//! in the order `generate` runs them, ~80 MB a step (more than the L3 holds). Prints ms per step, GB/s of the
//! packed bytes and a plain memory-read loop's GB/s measured in the same run, at 1 and 2 threads: the
//! kernel-only part of `benches/cpu_decode_vs_genai.py`'s tokens/s.
//! Run: `cargo bench -p olive-kernels --bench cpu_int4_decode [-- --steps N] [--l3]` (`--l3`: the layers
//! share one matrix of each shape, ~21 MB a step, so the products run from the L3 cache).

mod support;

use std::time::Instant;

use olive_kernels::cpu::int4::{int4_matmul_into, Activations, Int4Matrix};
use olive_kernels::cpu::w4a16::W4Levels;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// (n, k, group) of each product of a decode step, in order.
fn shapes() -> Vec<(usize, usize, usize)> {
    let mut v = Vec::new();
    for _ in 0..30 {
        v.extend([
            (960, 576, 128),
            (576, 576, 128),
            (3072, 576, 128),
            (576, 1536, 128),
        ]);
    }
    v.push((49152, 576, 32));
    v
}

fn matrix(n: usize, k: usize, group: usize, seed: u64) -> Res<Int4Matrix> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let groups = k.div_ceil(group);
    let levels = W4Levels {
        n,
        k,
        group_size: group,
        q: (0..n * k).map(|_| (next() >> 60) as u8).collect(),
        scales: (0..n * groups)
            .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 * 0.02 + 1e-3)
            .collect(),
        zeros: (0..n * groups).map(|_| (next() >> 60) as u8).collect(),
        g_idx: None,
    };
    Ok(Int4Matrix::from_levels(&levels)?)
}

/// GB/s of a sum over a 512 MiB buffer of u64, split over the pool's threads (best of 5).
fn read_bandwidth(buf: &[u64]) -> f64 {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(support::read_sum(buf));
            (buf.len() * 8) as f64 / start.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// CPU seconds of this thread (per-kind figures at 1 thread: time the shared machine took away not counted).
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let steps = args
        .iter()
        .position(|a| a == "--steps")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(50usize);
    // `--l3`: the 30 layers share one matrix of each shape (~21 MB a step, within a 32 MiB L3): what the
    // kernels reach when DRAM is not the limit.
    let shared = args.iter().any(|a| a == "--l3");
    let mut mats: Vec<Int4Matrix> = Vec::new();
    for (i, (n, k, g)) in shapes().into_iter().enumerate() {
        mats.push(match i {
            4..120 if shared => mats[i % 4].clone(),
            _ => matrix(n, k, g, i as u64)?,
        });
    }
    let bytes: usize = mats.iter().map(Int4Matrix::bytes).sum(); // read a step
    let x: Vec<f32> = (0..1536)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut out = vec![0f32; 49152];
    let buf = support::read_buffer();
    println!(
        "{} products, {:.1} MB a step",
        mats.len(),
        bytes as f64 / 1e6
    );
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let read = pool.install(|| read_bandwidth(&buf));
        // Seconds per product kind (qkv, o, gate_up, down, lm_head) of each step.
        let kind = |i: usize| if i == mats.len() - 1 { 4 } else { i % 4 };
        let mut per_kind = vec![Vec::new(); 5];
        let mut times = pool.install(|| {
            (0..steps + 2)
                .map(|_| {
                    let start = Instant::now();
                    let mut kinds = [0f64; 5];
                    for (i, m) in mats.iter().enumerate() {
                        let t = thread_cpu();
                        int4_matmul_into(&x[..m.k()], 1, m, Activations::Int8, &mut out[..m.n()]);
                        kinds[kind(i)] += thread_cpu() - t;
                    }
                    std::hint::black_box(&out);
                    for (v, t) in per_kind.iter_mut().zip(kinds) {
                        v.push(t);
                    }
                    start.elapsed().as_secs_f64()
                })
                .collect::<Vec<_>>()
        });
        times.drain(..2);
        let names = ["qkv", "o", "gate_up", "down", "lm_head"];
        let kind_bytes = |j: usize| -> usize {
            mats.iter()
                .enumerate()
                .filter(|(i, _)| kind(*i) == j)
                .map(|(_, m)| m.bytes())
                .sum()
        };
        let kinds: Vec<String> = per_kind
            .iter_mut()
            .enumerate()
            .map(|(j, v)| {
                v.drain(..2);
                v.sort_by(f64::total_cmp);
                let t = v[v.len() / 2];
                format!(
                    "{} {:.3} ms {:.1} GB/s",
                    names[j],
                    t * 1e3,
                    kind_bytes(j) as f64 / t / 1e9
                )
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let (med, best) = (times[times.len() / 2], times[0]);
        println!(
            "{threads} thread(s): {:.3} ms a step median ({:.3} best), {:.1} GB/s ({:.0}% of the read loop's {read:.1} GB/s)",
            med * 1e3,
            best * 1e3,
            bytes as f64 / med / 1e9,
            100.0 * bytes as f64 / med / 1e9 / read
        );
        // The calling thread's CPU time: all of a step at 1 thread, its own share at 2.
        println!("  calling thread's CPU time: {}", kinds.join(", "));
    }
    Ok(())
}
