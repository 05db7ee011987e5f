//! Execution-provider descriptions: what an EP plugin (`ep-cpu`, `ep-openvino`, ...) tells the host about the
//! target it serves — device, ONNX Runtime provider name and options, the ONNX Runtime library that has the
//! provider, the tolerance of its outputs against the CPU reference, and the `auto-opt` recipe per precision.
//!
//! The description crosses the ABI as JSON text, returned by the function a plugin exports as
//! [`EXECUTION_PROVIDERS_SYMBOL`] (api 1.1; a plugin built against api 1.0 has none and serves no provider),
//! and is copied into the manifest's optional `execution_providers` section, so the host chooses a plugin for
//! `--device X --provider Y` from manifests alone. Unknown fields are ignored (a newer plugin's description
//! still reads in an older host).
//!
//! ```json
//! {
//!   "device": "cpu",
//!   "provider": "OpenVINOExecutionProvider",
//!   "provider_options": {"device_type": "CPU", "precision": "ACCURACY"},
//!   "runtime": {"package": "onnxruntime-openvino", "version": "1.24.1", "library_env": "OLIVE_ORT_OPENVINO_DYLIB"},
//!   "tolerance": {"atol": 1e-4, "rtol": 1e-3},
//!   "recipes": [{"precision": "int4", "passes": [{"type": "ModelBuilder", "config": {"precision": "int4"}}]}]
//! }
//! ```
//!
//! A plugin-EP library (ONNX Runtime's `RegisterExecutionProviderLibrary`, e.g. the `onnxruntime-qnn` wheel's
//! `libonnxruntime_providers_qnn.so`, which has no libonnxruntime of its own) is named in the optional
//! `runtime.ep_library`; the session then appends the provider through the library's devices
//! (`SessionOptionsAppendExecutionProvider_V2`). A `version` starting with `>=` is a minimum:
//!
//! ```json
//! {
//!   "runtime": {"package": "onnxruntime", "version": ">=1.24.2", "library_env": "ORT_DYLIB_PATH",
//!               "ep_library": {"package": "onnxruntime-qnn", "version": "2.7.0", "library_env": "OLIVE_ORT_QNN_DYLIB"}},
//! }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The symbol of the function ([`ExecutionProvidersFn`]) an EP plugin exports beside its root module.
pub const EXECUTION_PROVIDERS_SYMBOL: &str = "olive_plugin_execution_providers_v1";

/// What [`EXECUTION_PROVIDERS_SYMBOL`] is: returns a JSON array of [`ExecutionProvider`]; never unwinds.
pub type ExecutionProvidersFn = extern "C" fn() -> abi_stable::std_types::RString;

/// The environment variable naming the plain `onnxruntime` wheel's library (the `ort` crate's own variable).
pub const DEFAULT_LIBRARY_ENV: &str = "ORT_DYLIB_PATH";

/// One device/provider pair an EP plugin serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionProvider {
    /// The device as `auto-opt --device` names it (`cpu`, `gpu`, `npu`, or a vendor's own).
    pub device: String,
    /// The ONNX Runtime provider name (`OpenVINOExecutionProvider`).
    pub provider: String,
    /// The provider options a session appends the provider with.
    #[serde(default)]
    pub provider_options: BTreeMap<String, String>,
    /// The ONNX Runtime library that has this provider.
    #[serde(default)]
    pub runtime: Runtime,
    /// How far the provider's outputs may be from the CPU provider's on the same library.
    #[serde(default)]
    pub tolerance: Tolerance,
    /// What `auto-opt` runs for each precision.
    #[serde(default)]
    pub recipes: Vec<Recipe>,
}

/// Which ONNX Runtime shared library serves a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Runtime {
    /// The PyPI package whose `libonnxruntime` it is (`onnxruntime`, `onnxruntime-openvino`).
    pub package: String,
    /// The version the library must report: `1.24.1`, or a prefix such as `1.24`; any when absent.
    #[serde(default)]
    pub version: Option<String>,
    /// The environment variable holding the library's path (scripts/install.sh writes it to olive-env.sh).
    pub library_env: String,
    /// The plugin-EP library that has the provider, registered into that ONNX Runtime; absent for a provider
    /// built into the library.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ep_library: Option<EpLibrary>,
}

/// A plugin-EP shared library (`RegisterExecutionProviderLibrary`) and the wheel that ships it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpLibrary {
    /// The PyPI package whose library it is (`onnxruntime-qnn`).
    pub package: String,
    /// The package version wanted (as [`Runtime::version`]), read from the `<package>-<version>.dist-info`
    /// folder the wheel unpacks beside the library's folder; any when absent.
    #[serde(default)]
    pub version: Option<String>,
    /// The environment variable holding the library's path.
    pub library_env: String,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            package: "onnxruntime".into(),
            version: None,
            library_env: DEFAULT_LIBRARY_ENV.into(),
            ep_library: None,
        }
    }
}

/// Whether `version` is what `wanted` asks for: equal, or `wanted` is a prefix followed by a dot
/// (`1.24` takes `1.24.1`), or `wanted` is `>=X` and `version` is X or later (numeric dotted parts).
pub fn version_accepted(wanted: Option<&str>, version: &str) -> bool {
    let Some(wanted) = wanted else {
        return true;
    };
    if let Some(minimum) = wanted.strip_prefix(">=") {
        let parts = |v: &str| -> Option<Vec<u64>> {
            v.trim().split('.').map(|p| p.parse::<u64>().ok()).collect()
        };
        return match (parts(version), parts(minimum)) {
            (Some(have), Some(min)) => have >= min,
            _ => false,
        };
    }
    version == wanted
        || version
            .strip_prefix(wanted)
            .is_some_and(|rest| rest.starts_with('.'))
}

impl Runtime {
    /// Whether a library reporting `version` is the one asked for ([`version_accepted`]).
    pub fn accepts_version(&self, version: &str) -> bool {
        version_accepted(self.version.as_deref(), version)
    }
}

impl EpLibrary {
    /// Whether the package version found is the one asked for ([`version_accepted`]).
    pub fn accepts_version(&self, version: &str) -> bool {
        version_accepted(self.version.as_deref(), version)
    }
}

/// Element-wise bound on `|ep - cpu|`: `atol + rtol * |cpu|`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    /// Absolute part.
    pub atol: f64,
    /// Relative part.
    pub rtol: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            atol: 1e-4,
            rtol: 1e-3,
        }
    }
}

/// The passes `auto-opt` runs for one precision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// The `--precision` value (`fp32`, `fp16`, `int4`, ...).
    pub precision: String,
    /// The passes, in order; each found among the installed plugins by its type.
    pub passes: Vec<RecipePass>,
    /// The model kind the recipe starts from (`hf` or `onnx`); absent: whatever the input. A provider may give one
    /// precision a recipe per input kind (auto-opt takes the one for its input, else the one without `input`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
}

/// One pass of a [`Recipe`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecipePass {
    /// The pass type (`ModelBuilder`).
    #[serde(rename = "type")]
    pub pass_type: String,
    /// The pass config; `auto-opt` adds its own flags for keys this leaves out.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

impl ExecutionProvider {
    /// The recipe for `precision` (the first one, whatever its input kind).
    pub fn recipe(&self, precision: &str) -> Option<&Recipe> {
        self.recipes.iter().find(|r| r.precision == precision)
    }

    /// The recipe for `precision` starting from a model of kind `input` (`hf`, `onnx`): the one naming that input,
    /// else the one naming none.
    pub fn recipe_for(&self, precision: &str, input: &str) -> Option<&Recipe> {
        let of = |want: Option<&str>| {
            self.recipes
                .iter()
                .find(|r| r.precision == precision && r.input.as_deref() == want)
        };
        of(Some(input)).or_else(|| of(None))
    }

    /// Parses the JSON array a plugin's `execution_providers` returns.
    pub fn list_from_json(text: &str) -> Result<Vec<ExecutionProvider>, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The first thing wrong with this description, naming the field.
    pub fn problem(&self) -> Option<String> {
        let name = format!(
            "execution provider `{}` (device `{}`)",
            self.provider, self.device
        );
        if self.provider.trim().is_empty() {
            return Some("an execution provider has an empty field `provider`".into());
        }
        let device_ok = !self.device.is_empty()
            && self
                .device
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !device_ok {
            return Some(format!(
                "{name}: field `device` must be a lowercase name such as `cpu`, `gpu` or `npu`"
            ));
        }
        if self.runtime.package.trim().is_empty() || self.runtime.library_env.trim().is_empty() {
            return Some(format!(
                "{name}: fields `runtime.package` and `runtime.library_env` must not be empty"
            ));
        }
        if let Some(library) = &self.runtime.ep_library {
            if library.package.trim().is_empty() || library.library_env.trim().is_empty() {
                return Some(format!(
                    "{name}: fields `runtime.ep_library.package` and `runtime.ep_library.library_env` must not be empty"
                ));
            }
        }
        let bad = |x: f64| !x.is_finite() || x < 0.0;
        if bad(self.tolerance.atol) || bad(self.tolerance.rtol) {
            return Some(format!(
                "{name}: fields `tolerance.atol` and `tolerance.rtol` must be finite and not negative"
            ));
        }
        for (i, recipe) in self.recipes.iter().enumerate() {
            if self.recipes[..i]
                .iter()
                .any(|r| r.precision == recipe.precision && r.input == recipe.input)
            {
                return Some(format!(
                    "{name}: precision `{}` has two recipes{}",
                    recipe.precision,
                    recipe
                        .input
                        .as_ref()
                        .map(|k| format!(" for input `{k}`"))
                        .unwrap_or_default()
                ));
            }
            if recipe.passes.is_empty() {
                return Some(format!(
                    "{name}: the recipe for precision `{}` has no passes",
                    recipe.precision
                ));
            }
            if let Some(pass) = recipe.passes.iter().find(|p| !p.config.is_object()) {
                return Some(format!(
                    "{name}: recipe `{}` pass `{}`: field `config` must be a JSON object",
                    recipe.precision, pass.pass_type
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENVINO: &str = r#"[{"device": "cpu", "provider": "OpenVINOExecutionProvider",
        "provider_options": {"precision": "ACCURACY"}, "future": 1,
        "runtime": {"package": "onnxruntime-openvino", "version": "1.24", "library_env": "X"},
        "recipes": [{"precision": "int4", "passes": [{"type": "ModelBuilder"}]}]}]"#;

    #[test]
    fn reads_with_defaults_and_ignores_unknown_fields() {
        let eps = ExecutionProvider::list_from_json(OPENVINO).unwrap();
        let ep = &eps[0];
        assert_eq!(ep.problem(), None);
        assert_eq!(ep.tolerance, Tolerance::default());
        assert_eq!(ep.recipe("int4").unwrap().passes[0].config, empty_object());
        assert!(ep.recipe("fp32").is_none());
        assert!(ep.runtime.accepts_version("1.24.1"));
        assert!(!ep.runtime.accepts_version("1.240.0"));
        assert!(!ep.runtime.accepts_version("1.32.0"));
        assert!(Runtime::default().accepts_version("9.9"));
        assert!(ep.runtime.ep_library.is_none());
    }

    #[test]
    fn reads_a_plugin_ep_library_and_minimum_versions() {
        let text = r#"[{"device": "npu", "provider": "QNNExecutionProvider",
            "runtime": {"package": "onnxruntime", "version": ">=1.24.2", "library_env": "ORT_DYLIB_PATH",
                "ep_library": {"package": "onnxruntime-qnn", "version": "2.7.0", "library_env": "Q"}}}]"#;
        let ep = ExecutionProvider::list_from_json(text).unwrap().remove(0);
        assert_eq!(ep.problem(), None);
        assert!(ep.runtime.accepts_version("1.32.0"));
        assert!(ep.runtime.accepts_version("1.24.2"));
        assert!(ep.runtime.accepts_version("2.0"));
        assert!(!ep.runtime.accepts_version("1.24.1"));
        assert!(!ep.runtime.accepts_version("1.9.x"));
        let library = ep.runtime.ep_library.as_ref().unwrap();
        assert!(library.accepts_version("2.7.0") && !library.accepts_version("2.6.0"));
        let round_trip = serde_json::to_string(&ep).unwrap();
        assert!(round_trip.contains("\"ep_library\""), "{round_trip}");
        let plain = serde_json::to_string(&Runtime::default()).unwrap();
        assert!(!plain.contains("ep_library"), "{plain}");
    }

    #[test]
    fn picks_the_recipe_for_the_input_kind() {
        let text = r#"[{"device": "npu", "provider": "P", "runtime": {"package": "p", "library_env": "E"},
            "recipes": [{"precision": "uint16", "passes": [{"type": "A"}], "input": "onnx"},
                        {"precision": "uint16", "passes": [{"type": "B"}], "input": "hf"},
                        {"precision": "fp32", "passes": [{"type": "C"}]}]}]"#;
        let mut ep = ExecutionProvider::list_from_json(text).unwrap().remove(0);
        assert_eq!(ep.problem(), None);
        let first = |r: Option<&Recipe>| r.map(|r| r.passes[0].pass_type.clone());
        assert_eq!(first(ep.recipe_for("uint16", "hf")), Some("B".into()));
        assert_eq!(first(ep.recipe_for("uint16", "onnx")), Some("A".into()));
        assert_eq!(first(ep.recipe_for("fp32", "hf")), Some("C".into()));
        assert_eq!(first(ep.recipe_for("uint8", "hf")), None);
        let plain = serde_json::to_string(&ep.recipes[2]).unwrap();
        assert!(!plain.contains("input"), "{plain}");
        ep.recipes[1].input = Some("onnx".into());
        let problem = ep.problem().unwrap();
        assert!(
            problem.contains("precision `uint16` has two recipes for input `onnx`"),
            "{problem}"
        );
    }

    #[test]
    fn problems_name_the_field() {
        let mut ep = ExecutionProvider::list_from_json(OPENVINO)
            .unwrap()
            .remove(0);
        ep.device = "NPU".into();
        assert!(ep.problem().unwrap().contains("field `device`"));
        ep.device = "npu".into();
        ep.recipes.push(ep.recipes[0].clone());
        assert!(ep
            .problem()
            .unwrap()
            .contains("precision `int4` has two recipes"));
    }
}
