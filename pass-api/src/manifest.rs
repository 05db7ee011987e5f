//! The static plugin manifest: what the host reads before (and instead of) loading a library.
//!
//! # File
//! A plugin ships `<library>.olive-plugin.json` in the same folder as its library, where
//! `<library>` is the library's base name: the crate's lib name, without the platform's prefix
//! and extension (`quant_gptq` for `libquant_gptq.so`, `libquant_gptq.dylib`, `quant_gptq.dll`).
//! The manifest is the same file on every platform, so it can be checked in beside the plugin's
//! source. The host finds plugins by these files; a library without one is not a plugin.
//!
//! # Format
//! ```json
//! {
//!   "name": "fixture-copy",
//!   "version": "0.1.0",
//!   "api_version": "1.0",
//!   "library": "fixture_copy",
//!   "passes": [
//!     {
//!       "name": "CopyModel",
//!       "version": "1.0.0",
//!       "description": "Copies the input model folder to the output.",
//!       "config_schema": { "type": "object", "properties": {} },
//!       "accepts": ["hf", "onnx"],
//!       "produces": ["hf", "onnx"],
//!       "devices": ["cpu"]
//!     }
//!   ]
//! }
//! ```
//! An EP plugin (api 1.1) adds an optional `"execution_providers": [...]` section, a list of
//! [`crate::ExecutionProvider`] (see [`crate::ep`]); a manifest without it serves no provider.
//!
//! `api_version` is the [`crate::API_VERSION`] the plugin was built against (`major.minor`);
//! `config_schema` is the JSON schema of the pass's typed config. Unknown fields are ignored, so a
//! newer manifest still reads in an older host.
//!
//! # Producing it
//! The manifest is generated from the library itself, so the two cannot drift apart by hand:
//! `olive-host plugins manifest <library file>` loads the library, asks it for its passes and
//! writes the file beside it. When a library is loaded to run a pass, the host checks that the
//! library still agrees with its manifest and refuses to run it otherwise.

use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};

use serde::{Deserialize, Serialize};

use crate::{ApiVersion, ExecutionProvider, PassDescriptor};

/// What a manifest's file name ends with.
pub const MANIFEST_SUFFIX: &str = ".olive-plugin.json";

/// A plugin manifest (see the [module docs](self) for the file format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The plugin name, unique among installed plugins.
    pub name: String,
    /// The plugin version (semver).
    pub version: String,
    /// The api version the plugin was built against.
    pub api_version: ApiVersion,
    /// The library's base name, resolved in the manifest's folder.
    pub library: String,
    /// The plugin's passes.
    pub passes: Vec<PassManifest>,
    /// The execution providers the plugin serves (api 1.1; absent: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub execution_providers: Vec<ExecutionProvider>,
}

/// One pass in a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassManifest {
    /// The pass name, unique within the plugin.
    pub name: String,
    /// The pass version (semver).
    pub version: String,
    /// One line saying what the pass does.
    #[serde(default)]
    pub description: String,
    /// The JSON schema of the pass's config.
    pub config_schema: serde_json::Value,
    /// The model kinds the pass accepts.
    pub accepts: Vec<String>,
    /// The model kinds the pass can produce.
    pub produces: Vec<String>,
    /// The devices the pass runs on.
    pub devices: Vec<String>,
}

/// A manifest that cannot be read or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The text is not JSON of the manifest's shape.
    #[error("not a valid plugin manifest: {0}")]
    Json(serde_json::Error),
    /// The JSON has the right shape but a wrong value.
    #[error("{0}")]
    Invalid(String),
    /// A library's execution-provider description is not the JSON of a list of providers.
    #[error("the execution_providers the library describes are not valid: {0}")]
    ExecutionProviders(serde_json::Error),
    /// A library's pass descriptor carries a config schema that is not JSON.
    #[error("the config schema of pass `{pass}` is not JSON: {error}")]
    Schema {
        /// The pass whose schema is broken.
        pass: String,
        /// Why it does not parse.
        error: serde_json::Error,
    },
}

impl Manifest {
    /// The manifest file name for a library base name: `<library>.olive-plugin.json`.
    pub fn file_name_for(library: &str) -> String {
        format!("{library}{MANIFEST_SUFFIX}")
    }

    /// The library base name of a library file name on this platform (`libx.so` → `x`).
    pub fn library_base_name(file_name: &str) -> Option<&str> {
        file_name
            .strip_prefix(DLL_PREFIX)?
            .strip_suffix(DLL_SUFFIX)
            .filter(|base| !base.is_empty())
    }

    /// The library's file name on this platform (`x` → `libx.so`).
    pub fn library_file_name(&self) -> String {
        format!("{DLL_PREFIX}{}{DLL_SUFFIX}", self.library)
    }

    /// Parses and checks a manifest.
    pub fn from_json(text: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest = serde_json::from_str(text).map_err(ManifestError::Json)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The manifest as pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// The manifest a loaded library describes; `execution_providers_json` is what its
    /// `execution_providers` returned (`None` for a plugin built against api 1.0).
    pub fn describe(
        name: &str,
        version: &str,
        api_version: ApiVersion,
        library: &str,
        passes: &[PassDescriptor],
        execution_providers_json: Option<&str>,
    ) -> Result<Self, ManifestError> {
        let execution_providers = match execution_providers_json {
            Some(text) => ExecutionProvider::list_from_json(text)
                .map_err(ManifestError::ExecutionProviders)?,
            None => Vec::new(),
        };
        let passes = passes
            .iter()
            .map(|pass| {
                let config_schema =
                    serde_json::from_str(&pass.config_schema_json).map_err(|error| {
                        ManifestError::Schema {
                            pass: pass.name.to_string(),
                            error,
                        }
                    })?;
                let strings = |list: &[abi_stable::std_types::RString]| {
                    list.iter().map(|s| s.to_string()).collect()
                };
                Ok(PassManifest {
                    name: pass.name.to_string(),
                    version: pass.version.to_string(),
                    description: pass.description.to_string(),
                    config_schema,
                    accepts: strings(&pass.accepts),
                    produces: strings(&pass.produces),
                    devices: strings(&pass.devices),
                })
            })
            .collect::<Result<_, ManifestError>>()?;
        let manifest = Manifest {
            name: name.to_owned(),
            version: version.to_owned(),
            api_version,
            library: library.to_owned(),
            passes,
            execution_providers,
        };
        manifest.validate()?;
        Ok(manifest)
    }

    /// The pass named `name`.
    pub fn pass(&self, name: &str) -> Option<&PassManifest> {
        self.passes.iter().find(|pass| pass.name == name)
    }

    /// The first way `library` (what the loaded library says) differs from this manifest, if any.
    pub fn disagreement(&self, library: &Manifest) -> Option<String> {
        let differ = |what: &str, ours: &dyn std::fmt::Debug, theirs: &dyn std::fmt::Debug| {
            Some(format!(
                "the manifest says {what} {ours:?}, the library says {theirs:?}"
            ))
        };
        if self.name != library.name {
            return differ("name", &self.name, &library.name);
        }
        if self.version != library.version {
            return differ("version", &self.version, &library.version);
        }
        if self.api_version != library.api_version {
            return differ(
                "api_version",
                &self.api_version.to_string(),
                &library.api_version.to_string(),
            );
        }
        let names = |m: &Manifest| m.passes.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        if names(self) != names(library) {
            return differ("passes", &names(self), &names(library));
        }
        for (ours, theirs) in self.passes.iter().zip(&library.passes) {
            let field = |f: &str| format!("pass `{}` {f}", ours.name);
            if ours.version != theirs.version {
                return differ(&field("version"), &ours.version, &theirs.version);
            }
            if ours.accepts != theirs.accepts {
                return differ(&field("accepts"), &ours.accepts, &theirs.accepts);
            }
            if ours.produces != theirs.produces {
                return differ(&field("produces"), &ours.produces, &theirs.produces);
            }
            if ours.devices != theirs.devices {
                return differ(&field("devices"), &ours.devices, &theirs.devices);
            }
            if ours.config_schema != theirs.config_schema {
                return Some(format!(
                    "pass `{}` has a different config_schema in the manifest and the library",
                    ours.name
                ));
            }
        }
        if self.execution_providers != library.execution_providers {
            return Some(
                "the manifest and the library describe different execution_providers".to_owned(),
            );
        }
        None
    }

    /// The provider serving `device` and `provider`, if this plugin has it.
    pub fn execution_provider(&self, device: &str, provider: &str) -> Option<&ExecutionProvider> {
        self.execution_providers
            .iter()
            .find(|ep| ep.device == device && ep.provider == provider)
    }

    fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |message: String| Err(ManifestError::Invalid(message));
        if self.name.trim().is_empty() {
            return invalid("field `name` is empty".into());
        }
        if self.library.is_empty()
            || self.library.contains(['/', '\\'])
            || self.library.starts_with('.')
        {
            return invalid(format!(
                "field `library` must be a library base name such as `quant_gptq`, got {:?}",
                self.library
            ));
        }
        for (i, pass) in self.passes.iter().enumerate() {
            if pass.name.trim().is_empty() {
                return invalid(format!("passes[{i}]: field `name` is empty"));
            }
            if self.passes[..i].iter().any(|other| other.name == pass.name) {
                return invalid(format!("pass `{}` is listed twice", pass.name));
            }
        }
        for (i, ep) in self.execution_providers.iter().enumerate() {
            if let Some(problem) = ep.problem() {
                return invalid(problem);
            }
            let before = &self.execution_providers[..i];
            if before
                .iter()
                .any(|o| o.device == ep.device && o.provider == ep.provider)
            {
                return invalid(format!(
                    "execution provider `{}` for device `{}` is listed twice",
                    ep.provider, ep.device
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
        "name": "fixture-copy", "version": "0.1.0", "api_version": "1.0", "library": "fixture_copy",
        "future_field": true,
        "passes": [{"name": "CopyModel", "version": "1.0.0", "config_schema": {"type": "object"},
                    "accepts": ["hf"], "produces": ["hf"], "devices": ["cpu"]}]
    }"#;

    #[test]
    fn reads_the_documented_format_and_ignores_unknown_fields() {
        let manifest = Manifest::from_json(EXAMPLE).unwrap();
        assert_eq!(manifest.api_version, ApiVersion { major: 1, minor: 0 });
        assert_eq!(manifest.pass("CopyModel").unwrap().description, "");
        assert!(manifest.execution_providers.is_empty());
        assert!(!manifest.to_json().contains("execution_providers"));
        assert_eq!(Manifest::from_json(&manifest.to_json()).unwrap(), manifest);
    }

    #[test]
    fn reads_execution_providers_and_checks_them() {
        let with_ep = EXAMPLE.replace(
            r#""future_field": true,"#,
            r#""execution_providers": [{"device": "npu", "provider": "XExecutionProvider",
                "recipes": [{"precision": "fp32", "passes": [{"type": "CopyModel"}]}]}],"#,
        );
        let manifest = Manifest::from_json(&with_ep).unwrap();
        let ep = manifest
            .execution_provider("npu", "XExecutionProvider")
            .unwrap();
        assert_eq!(ep.runtime.library_env, "ORT_DYLIB_PATH");
        assert!(manifest
            .execution_provider("cpu", "XExecutionProvider")
            .is_none());
        assert_eq!(Manifest::from_json(&manifest.to_json()).unwrap(), manifest);
        let twice = with_ep.replace(
            r#""execution_providers": [{"#,
            r#""execution_providers": [{"device": "npu", "provider": "XExecutionProvider"}, {"#,
        );
        assert_eq!(
            Manifest::from_json(&twice).unwrap_err().to_string(),
            "execution provider `XExecutionProvider` for device `npu` is listed twice"
        );
    }

    #[test]
    fn library_names_follow_the_platform() {
        let manifest = Manifest::from_json(EXAMPLE).unwrap();
        let file = manifest.library_file_name();
        assert_eq!(Manifest::library_base_name(&file), Some("fixture_copy"));
        assert_eq!(
            Manifest::file_name_for("fixture_copy"),
            "fixture_copy.olive-plugin.json"
        );
    }

    #[test]
    fn rejects_bad_values_with_the_field_named() {
        let bad_version = EXAMPLE.replace(r#""api_version": "1.0""#, r#""api_version": "one""#);
        assert!(Manifest::from_json(&bad_version)
            .unwrap_err()
            .to_string()
            .contains("api version `one`"));
        let bad_library = EXAMPLE.replace(r#""library": "fixture_copy""#, r#""library": "../x""#);
        assert_eq!(
            Manifest::from_json(&bad_library).unwrap_err().to_string(),
            r#"field `library` must be a library base name such as `quant_gptq`, got "../x""#
        );
        let missing = EXAMPLE.replace(r#""version": "0.1.0","#, "");
        assert!(Manifest::from_json(&missing)
            .unwrap_err()
            .to_string()
            .contains("missing field `version`"));
    }

    #[test]
    fn names_the_first_disagreement() {
        let manifest = Manifest::from_json(EXAMPLE).unwrap();
        let mut library = manifest.clone();
        assert_eq!(manifest.disagreement(&library), None);
        library.passes[0].version = "2.0.0".into();
        assert_eq!(
            manifest.disagreement(&library).unwrap(),
            r#"the manifest says pass `CopyModel` version "1.0.0", the library says "2.0.0""#
        );
    }
}
