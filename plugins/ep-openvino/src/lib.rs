//! EP plugin `ep-openvino`: OpenVINOExecutionProvider from the `onnxruntime-openvino` 1.24.1 wheel, whose own
//! libonnxruntime 1.24.1 (with the OpenVINO runtime and its CPU plugin beside it) scripts/install.sh names in
//! OLIVE_ORT_OPENVINO_DYLIB. Devices: OpenVINO's CPU, GPU and NPU (`device_type`); `precision=ACCURACY` because
//! OpenVINO CPU otherwise quantizes MatMulNBits activations to int8 (~3e-2 off the CPU provider, 1.9e-6 with it).
//! The recipe exports with ModelBuilder for this provider.

use olive_pass_sdk::ep::{self, ExecutionProvider, ExecutionProviderExt};

/// The provider's name in ONNX Runtime.
pub const PROVIDER: &str = "OpenVINOExecutionProvider";
/// The wheel whose libonnxruntime has the provider, and its version.
pub const PACKAGE: (&str, &str) = ("onnxruntime-openvino", "1.24.1");
/// The variable holding that library's path.
pub const LIBRARY_ENV: &str = "OLIVE_ORT_OPENVINO_DYLIB";

/// The provider on one of our devices, as OpenVINO names it (`CPU`, `GPU`, `NPU`).
fn on(device: &str, device_type: &str) -> ExecutionProvider {
    ep::provider(device, PROVIDER)
        .option("device_type", device_type)
        .option("precision", "ACCURACY")
        .runtime(PACKAGE.0, PACKAGE.1, LIBRARY_ENV)
        .tolerance(1e-4, 1e-3)
        .with_model_builder_recipes(&["fp32", "fp16", "int4"])
}

/// OpenVINO on devices `cpu`, `gpu` and `npu`.
pub fn providers() -> Vec<ExecutionProvider> {
    vec![on("cpu", "CPU"), on("gpu", "GPU"), on("npu", "NPU")]
}

olive_pass_sdk::export_plugin! {
    name: "ep-openvino",
    version: env!("CARGO_PKG_VERSION"),
    passes: [],
    execution_providers: providers,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_a_valid_manifest() {
        let manifest = OLIVE_PLUGIN.manifest("olive_ep_openvino").unwrap();
        let npu = manifest.execution_provider("npu", PROVIDER).unwrap();
        assert_eq!(npu.provider_options["device_type"], "NPU");
        assert_eq!(npu.provider_options["precision"], "ACCURACY");
        assert!(npu.runtime.accepts_version("1.24.1"));
        assert!(!npu.runtime.accepts_version("1.32.0"));
        assert!(manifest.execution_provider("cpu", PROVIDER).is_some());
    }
}
