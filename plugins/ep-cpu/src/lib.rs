//! EP plugin `ep-cpu`: ONNX Runtime's CPUExecutionProvider from the plain `onnxruntime` wheel (ORT_DYLIB_PATH).
//! Its `auto-opt` recipe is Olive's `auto-opt --use_ort_genai` on CPU: the ModelBuilder pass (plugins/onnx-builder)
//! at the asked precision.

use olive_pass_sdk::ep::{self, ExecutionProvider, ExecutionProviderExt};

/// The precisions ModelBuilder writes, each a recipe of that one pass.
pub const PRECISIONS: &[&str] = &["fp32", "fp16", "int4"];

/// `CPUExecutionProvider` on device `cpu`.
pub fn providers() -> Vec<ExecutionProvider> {
    vec![ep::provider("cpu", "CPUExecutionProvider").with_model_builder_recipes(PRECISIONS)]
}

olive_pass_sdk::export_plugin! {
    name: "ep-cpu",
    version: env!("CARGO_PKG_VERSION"),
    passes: [],
    execution_providers: providers,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_a_valid_manifest() {
        let manifest = OLIVE_PLUGIN.manifest("olive_ep_cpu").unwrap();
        let cpu = manifest
            .execution_provider("cpu", "CPUExecutionProvider")
            .unwrap();
        assert_eq!(cpu.runtime.library_env, ep::DEFAULT_LIBRARY_ENV);
        for precision in PRECISIONS {
            let recipe = cpu.recipe(precision).unwrap();
            assert_eq!(recipe.passes[0].pass_type, "ModelBuilder");
            assert_eq!(recipe.passes[0].config["precision"], *precision);
        }
    }
}
