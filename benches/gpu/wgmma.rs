//! The wgmma issue rate with no data moving (benches/gpu/wgmma_rate.cu): cycles a chunk (4 k16 steps of RT m64
//! tiles, one commit group) each warpgroup takes, against the tensor-core cycles the multiprocessor's chunk needs
//! (m64nNk16 at N / 2 cycles). One block a multiprocessor (its shared memory reserved), every multiprocessor busy.

use cudarc::driver::sys::CUfunction_attribute;
use olive_kernels::cuda::{Gpu, GpuError, KernelSource, LaunchConfig, PushKernelArg};

const SOURCE: KernelSource = KernelSource {
    file: "../../benches/gpu/wgmma_rate.cu",
    code: concat!(
        include_str!("../../kernels/cuda/w4a16.cu"),
        include_str!("../../kernels/cuda/w4a16_sm90.cu"),
        include_str!("wgmma_rate.cu")
    ),
    arch_specific: true,
};
const CHUNKS: i32 = 4000;
/// Dynamic shared memory a block asks for: more than half the multiprocessor's, so one block each.
const SMEM_BYTES: u32 = 200 << 10;

/// (warpgroups, m64 tiles each, N, mode, groups left in flight): the instances wgmma_rate.cu compiles.
const CASES: [(u32, u32, u32, u32, u32); 28] = [
    (1, 1, 64, 0, 1),
    (1, 1, 64, 1, 1),
    (1, 1, 64, 2, 1),
    (2, 1, 64, 0, 1),
    (2, 1, 64, 1, 1),
    (2, 1, 64, 2, 1),
    (3, 1, 64, 0, 1),
    (3, 1, 64, 1, 1),
    (3, 1, 64, 2, 1),
    (4, 1, 64, 0, 1),
    (4, 1, 64, 1, 1),
    (4, 1, 64, 2, 1),
    (1, 2, 64, 0, 1),
    (1, 2, 64, 1, 1),
    (1, 2, 64, 2, 1),
    (2, 2, 64, 0, 1),
    (2, 2, 64, 1, 1),
    (2, 2, 64, 2, 1),
    (3, 2, 64, 0, 1),
    (3, 2, 64, 1, 1),
    (3, 2, 64, 2, 1),
    (1, 1, 64, 0, 0),
    (2, 1, 64, 0, 0),
    (1, 1, 128, 0, 1),
    (2, 1, 128, 0, 1),
    (3, 1, 128, 0, 1),
    (1, 2, 128, 0, 1),
    (2, 2, 128, 0, 1),
];

pub fn run(gpu: &Gpu) -> Result<(), GpuError> {
    if gpu.arch() != (9, 0) {
        println!(
            "\n## wgmma issue rate: skipped (wgmma needs sm_90, this GPU is sm_{}{})",
            gpu.arch().0,
            gpu.arch().1
        );
        return Ok(());
    }
    println!("\n## wgmma issue rate, no data moving ({CHUNKS} chunks a warpgroup, median over the warpgroups)");
    println!("| warpgroups | m64 tiles each | N | A operand | groups in flight | cycles a chunk | tensor cycles a chunk (SM) | tensor busy |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let sms = gpu.sm_count() as usize;
    for (nwg, rt, n, mode, depth) in CASES {
        let f = gpu.function(
            &SOURCE,
            &format!("wgmma_rate_{nwg}_{rt}_{n}_{mode}_{depth}"),
        )?;
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            SMEM_BYTES as i32,
        )?;
        let mut cycles = gpu.alloc::<i64>(sms * nwg as usize)?;
        let mut sink = gpu.alloc::<f32>(sms * 128 * nwg as usize)?;
        let launch = LaunchConfig {
            grid_dim: (sms as u32, 1, 1),
            block_dim: (128 * nwg, 1, 1),
            shared_mem_bytes: SMEM_BYTES,
        };
        // The first launch warms up (module load, clocks).
        for _ in 0..2 {
            let mut b = gpu.stream().launch_builder(&f);
            b.arg(&mut cycles).arg(&mut sink).arg(&CHUNKS);
            // SAFETY: cycles holds a value per warpgroup, sink one per thread; the block fits its shared memory.
            unsafe { b.launch(launch) }?;
        }
        let mut per_wg = gpu.download(&cycles)?;
        per_wg.sort_unstable();
        let chunk = per_wg[per_wg.len() / 2] as f64 / f64::from(CHUNKS);
        let tensor = f64::from(nwg * rt * 4 * n / 2);
        let a = ["registers, rewritten", "registers, kept", "shared memory"][mode as usize];
        println!(
            "| {nwg} | {rt} | {n} | {a} | {} | {chunk:.0} | {tensor:.0} | {:.0}% |",
            depth + 1,
            100.0 * tensor / chunk
        );
    }
    Ok(())
}
