//! The devices `--device` names, and the GPU behind `gpu`.

use std::sync::Arc;

use anyhow::Context;
use clap::ValueEnum;
use olive_kernels::cuda::Gpu;

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Device {
    /// The CPU (olive-nn's transformer, ONNX Runtime's CPU execution provider).
    #[default]
    Cpu,
    /// The first CUDA GPU (olive-nn's GPU transformer on our kernels).
    Gpu,
}

impl Device {
    /// Its name in Olive's configs.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
        }
    }
}

/// The first CUDA GPU, or an error saying why there is none.
pub fn first_gpu() -> anyhow::Result<Arc<Gpu>> {
    Gpu::get(0).context("--device gpu")
}
