//! EP plugin `ep-cuda`: CUDAExecutionProvider from the `onnxruntime-gpu` wheel (1.31.1, CUDA 13; it needs cuBLAS
//! and cuDNN), whose libonnxruntime the variable OLIVE_ORT_CUDA_DYLIB names. The recipe is Olive's
//! `auto-opt --device gpu`: ModelBuilder at the asked precision for CUDA.

use olive_pass_sdk::ep::{self, ExecutionProvider, ExecutionProviderExt};

/// The provider's name in ONNX Runtime.
pub const PROVIDER: &str = "CUDAExecutionProvider";
/// The variable holding the onnxruntime-gpu library's path.
pub const LIBRARY_ENV: &str = "OLIVE_ORT_CUDA_DYLIB";

/// CUDA on device `gpu` (the first GPU).
pub fn providers() -> Vec<ExecutionProvider> {
    vec![ep::provider("gpu", PROVIDER)
        .option("device_id", "0")
        .runtime("onnxruntime-gpu", "1.31", LIBRARY_ENV)
        .tolerance(1e-2, 1e-2)
        .with_model_builder_recipes(&["fp32", "fp16", "int4"])]
}

olive_pass_sdk::export_plugin! {
    name: "ep-cuda",
    version: env!("CARGO_PKG_VERSION"),
    passes: [],
    execution_providers: providers,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_a_valid_manifest() {
        let manifest = OLIVE_PLUGIN.manifest("olive_ep_cuda").unwrap();
        let cuda = manifest.execution_provider("gpu", PROVIDER).unwrap();
        assert_eq!(cuda.runtime.library_env, LIBRARY_ENV);
        assert!(cuda.recipe("fp16").is_some());
    }
}
