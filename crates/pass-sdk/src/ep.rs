//! Declaring the execution providers an EP plugin serves (the descriptions of [`olive_pass_api::ep`]).
//!
//! ```
//! use olive_pass_sdk::ep::{self, ExecutionProvider, ExecutionProviderExt};
//!
//! fn providers() -> Vec<ExecutionProvider> {
//!     vec![ep::provider("npu", "ExampleExecutionProvider")
//!         .option("device_type", "NPU")
//!         .with_recipe("fp32", &[("ModelBuilder", serde_json::json!({"precision": "fp32"}))])]
//! }
//!
//! olive_pass_sdk::export_plugin! {
//!     name: "ep-example",
//!     version: env!("CARGO_PKG_VERSION"),
//!     passes: [],
//!     execution_providers: providers,
//! }
//! ```

pub use olive_pass_api::ep::DEFAULT_LIBRARY_ENV;
pub use olive_pass_api::{EpLibrary, ExecutionProvider, Recipe, RecipePass, Runtime, Tolerance};

/// No execution providers: what a plugin of passes only serves.
pub fn none() -> Vec<ExecutionProvider> {
    Vec::new()
}

/// A provider on `device` named `provider`, served by the plain `onnxruntime` library, with the default
/// tolerance and no recipes yet.
pub fn provider(device: &str, provider: &str) -> ExecutionProvider {
    ExecutionProvider {
        device: device.into(),
        provider: provider.into(),
        provider_options: Default::default(),
        runtime: Runtime::default(),
        tolerance: Tolerance::default(),
        recipes: Vec::new(),
    }
}

/// Builder methods for [`ExecutionProvider`].
pub trait ExecutionProviderExt: Sized {
    /// Adds a provider option.
    fn option(self, key: &str, value: &str) -> Self;
    /// The library serving the provider: the `package` wheel's libonnxruntime of `version`, found through the
    /// environment variable `library_env`.
    fn runtime(self, package: &str, version: &str, library_env: &str) -> Self;
    /// The plugin-EP library that has the provider (`RegisterExecutionProviderLibrary`): the package (wheel)
    /// shipping it, the package version, and the variable holding the library's path.
    fn ep_library(self, package: &str, version: &str, library_env: &str) -> Self;
    /// The tolerance of the provider's outputs against the CPU provider's.
    fn tolerance(self, atol: f64, rtol: f64) -> Self;
    /// Adds the recipe for `precision`: (pass type, config object) in order.
    fn with_recipe(self, precision: &str, passes: &[(&str, serde_json::Value)]) -> Self;
    /// Adds the recipe for `precision` from a model of kind `input` (`hf`, `onnx`; see [`Recipe::input`]).
    fn with_recipe_for(
        self,
        precision: &str,
        input: &str,
        passes: &[(&str, serde_json::Value)],
    ) -> Self;
    /// Adds, for each of `precisions`, the recipe of the one ModelBuilder pass at that precision.
    fn with_model_builder_recipes(self, precisions: &[&str]) -> Self {
        precisions.iter().fold(self, |ep, precision| {
            ep.with_recipe(
                precision,
                &[(
                    "ModelBuilder",
                    serde_json::json!({ "precision": precision }),
                )],
            )
        })
    }
}

impl ExecutionProviderExt for ExecutionProvider {
    fn option(mut self, key: &str, value: &str) -> Self {
        self.provider_options.insert(key.into(), value.into());
        self
    }

    fn runtime(mut self, package: &str, version: &str, library_env: &str) -> Self {
        self.runtime = Runtime {
            package: package.into(),
            version: Some(version.into()),
            library_env: library_env.into(),
            ep_library: self.runtime.ep_library.take(),
        };
        self
    }

    fn ep_library(mut self, package: &str, version: &str, library_env: &str) -> Self {
        self.runtime.ep_library = Some(EpLibrary {
            package: package.into(),
            version: Some(version.into()),
            library_env: library_env.into(),
        });
        self
    }

    fn tolerance(mut self, atol: f64, rtol: f64) -> Self {
        self.tolerance = Tolerance { atol, rtol };
        self
    }

    fn with_recipe(mut self, precision: &str, passes: &[(&str, serde_json::Value)]) -> Self {
        self.recipes.push(Recipe {
            precision: precision.into(),
            passes: passes
                .iter()
                .map(|(pass_type, config)| RecipePass {
                    pass_type: (*pass_type).into(),
                    config: config.clone(),
                })
                .collect(),
            input: None,
        });
        self
    }

    fn with_recipe_for(
        mut self,
        precision: &str,
        input: &str,
        passes: &[(&str, serde_json::Value)],
    ) -> Self {
        self = self.with_recipe(precision, passes);
        if let Some(recipe) = self.recipes.last_mut() {
            recipe.input = Some(input.into());
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_valid_description() {
        let ep = provider("cpu", "OpenVINOExecutionProvider")
            .option("precision", "ACCURACY")
            .runtime("onnxruntime-openvino", "1.24.1", "X")
            .tolerance(1e-3, 0.0)
            .with_recipe("int4", &[("ModelBuilder", serde_json::json!({}))]);
        assert_eq!(ep.problem(), None);
        assert_eq!(ep.provider_options["precision"], "ACCURACY");
        assert!(ep.runtime.accepts_version("1.24.1"));
        assert_eq!(
            ep.recipe("int4").unwrap().passes[0].pass_type,
            "ModelBuilder"
        );
    }
}
