//! EP plugin `ep-openvino`: OpenVINOExecutionProvider from the `onnxruntime-openvino` 1.24.1 wheel, whose own
//! libonnxruntime 1.24.1 (with the OpenVINO runtime and its CPU plugin beside it) scripts/install.sh names in
//! OLIVE_ORT_OPENVINO_DYLIB. Devices: OpenVINO's CPU, GPU and NPU (`device_type`); `precision=ACCURACY` because
//! OpenVINO CPU otherwise quantizes MatMulNBits activations to int8 (~3e-2 off the CPU provider, 1.9e-6 with it).
//! The recipes export with ModelBuilder for this provider (fp32 activations for int4, as Olive's ModelBuilder exports
//! for any provider it does not know as "cpu"; MatMulNBits accuracy_level 1 = fp32, what OpenVINO computes with
//! ACCURACY, so the CPU provider's reference agrees) and then run fusion's `DecomposeGroupQueryAttention`: OpenVINO
//! 1.24 takes none of com.microsoft GroupQueryAttention, MultiHeadAttention, RotaryEmbedding or ONNX Attention-23.

use olive_pass_sdk::ep::{self, ExecutionProvider, ExecutionProviderExt};
use serde_json::json;

/// The provider's name in ONNX Runtime.
pub const PROVIDER: &str = "OpenVINOExecutionProvider";
/// The wheel whose libonnxruntime has the provider, and its version.
pub const PACKAGE: (&str, &str) = ("onnxruntime-openvino", "1.24.1");
/// The variable holding that library's path.
pub const LIBRARY_ENV: &str = "OLIVE_ORT_OPENVINO_DYLIB";

/// The provider on one of our devices, as OpenVINO names it (`CPU`, `GPU`, `NPU`).
fn on(device: &str, device_type: &str) -> ExecutionProvider {
    let mut ep = ep::provider(device, PROVIDER)
        .option("device_type", device_type)
        .option("precision", "ACCURACY")
        .runtime(PACKAGE.0, PACKAGE.1, LIBRARY_ENV)
        // The default model (SmolLM2-135M, 30 layers) on OpenVINO CPU vs the CPU provider, a 4-token prompt: logits
        // (|x| up to 36) differ by up to 2.7e-4 in fp32 and 6.8e-4 in int4 (fp32 summation order over 30 layers;
        // same argmax); tiny models stay under 1e-5.
        .tolerance(1e-3, 1e-3)
        .with_recipe("fp32", &recipe(json!({"precision": "fp32"})));
    // fp16 only off the CPU, as Olive's ModelBuilder refuses fp16 on a CPU device (fp16 logits on OpenVINO CPU
    // differ from the CPU provider's by a few fp16 ulps, ~1.5e-3, past the tolerance).
    if device != "cpu" {
        ep = ep.with_recipe("fp16", &recipe(json!({"precision": "fp16"})));
    }
    ep.with_recipe(
        "int4",
        &recipe(json!({"precision": "int4", "int4_accuracy_level": 1})),
    )
}

/// ModelBuilder with `model_builder`'s config, then the attention in standard ops; with an adapter, ExtractAdapters
/// with required LoRA inputs (the OpenVINO EP ignores values fed to an input that has a default initializer and
/// computes with the empty default: NaN logits).
fn recipe(model_builder: serde_json::Value) -> [(&'static str, serde_json::Value); 3] {
    [
        ("ModelBuilder", model_builder),
        ("DecomposeGroupQueryAttention", json!({})),
        ("ExtractAdapters", json!({"optional_inputs": false})),
    ]
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
        let cpu = manifest.execution_provider("cpu", PROVIDER).unwrap();
        for recipe in &cpu.recipes {
            let passes: Vec<&str> = recipe.passes.iter().map(|p| p.pass_type.as_str()).collect();
            assert_eq!(
                passes,
                [
                    "ModelBuilder",
                    "DecomposeGroupQueryAttention",
                    "ExtractAdapters"
                ]
            );
        }
        assert!(cpu.recipe("fp16").is_none());
        assert!(npu.recipe("fp16").is_some());
        let int4 = cpu.recipe("int4").unwrap();
        assert_eq!(int4.passes[0].config["int4_accuracy_level"], 1);
    }
}
