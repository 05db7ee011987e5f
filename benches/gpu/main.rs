//! gpu-bench: timings of our CUDA kernels against the device's ceilings and cuBLAS, measured in one run on the
//! same GPU (CUDA events around each launch, after a warm-up, median of many, the GPU kept busy by a spin kernel
//! while the launches are queued; w4a16 also from CUDA graphs of back-to-back calls). Builds without CUDA; run on a
//! GPU machine:
//! `gpu-bench [section...]` (sections: w4a16, wgmma, attention, gemv; none = all).

mod attention;
mod gemv;
mod random;
mod timing;
mod w4a16;
mod wgmma;

use std::process::ExitCode;

use olive_kernels::cuda::Gpu;

fn main() -> ExitCode {
    let sections: Vec<String> = std::env::args().skip(1).collect();
    let wants = |name: &str| sections.is_empty() || sections.iter().any(|s| s == name);
    let gpu = match Gpu::get(0) {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("gpu-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "GPU: {} (sm_{}{}, {} SMs)",
        gpu.name(),
        gpu.arch().0,
        gpu.arch().1,
        gpu.sm_count()
    );
    if wants("w4a16") {
        if let Err(e) = w4a16::run(&gpu) {
            eprintln!("gpu-bench w4a16: {e}");
            return ExitCode::FAILURE;
        }
    }
    if wants("wgmma") {
        if let Err(e) = wgmma::run(&gpu) {
            eprintln!("gpu-bench wgmma: {e}");
            return ExitCode::FAILURE;
        }
    }
    if wants("attention") {
        if let Err(e) = attention::run(&gpu) {
            eprintln!("gpu-bench attention: {e}");
            return ExitCode::FAILURE;
        }
    }
    if wants("gemv") {
        if let Err(e) = gemv::run(&gpu) {
            eprintln!("gpu-bench gemv: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
