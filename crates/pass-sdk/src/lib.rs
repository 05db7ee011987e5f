//! What a pass plugin author uses: the [`Pass`] trait, the [`export_plugin!`] macro, a typed
//! [`Context`], and an in-process [`testing::TestHost`].
//!
//! A plugin is plain Rust plus a few lines of glue:
//! ```
//! use olive_pass_sdk::{kinds, Context, Error, Model, Pass};
//! use schemars::JsonSchema;
//! use serde::Deserialize;
//!
//! /// The config of `Touch`.
//! #[derive(Deserialize, JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! pub struct TouchConfig {
//!     /// The file to create in the output folder.
//!     #[serde(default = "default_file")]
//!     pub file: String,
//! }
//! fn default_file() -> String { "touched".into() }
//!
//! pub struct Touch;
//!
//! impl Pass for Touch {
//!     const NAME: &'static str = "Touch";
//!     const VERSION: &'static str = "1.0.0";
//!     const DESCRIPTION: &'static str = "Writes one empty file.";
//!     const ACCEPTS: &'static [&'static str] = &[kinds::HF];
//!     const PRODUCES: &'static [&'static str] = &[kinds::HF];
//!     const DEVICES: &'static [&'static str] = &["cpu"];
//!     type Config = TouchConfig;
//!
//!     fn run(_model: Model, config: TouchConfig, ctx: &Context<'_>) -> Result<Model, Error> {
//!         let path = ctx.output_dir().join(&config.file);
//!         std::fs::write(&path, b"").map_err(|e| Error::io(&path, e))?;
//!         Ok(Model::new(kinds::HF, ctx.output_dir()))
//!     }
//! }
//!
//! olive_pass_sdk::export_plugin! {
//!     name: "touch",
//!     version: env!("CARGO_PKG_VERSION"),
//!     passes: [Touch],
//! }
//! ```
//! The crate is built as a `cdylib`; its manifest is written with
//! `olive-host plugins manifest <library>` (see [`olive_pass_api::manifest`]).
//!
//! Panics in a pass are caught at the boundary and returned as [`ErrorKind::PANICKED`] errors
//! naming the pass and the panic's location; an abort or a crash is caught by the host, which runs
//! every pass in a worker process.

mod context;
pub mod ep;
mod error;
mod onnx_file;
mod plugin;
pub mod testing;

pub use context::Context;
pub use error::Error;
pub use onnx_file::onnx_model_file;
pub use plugin::{PassEntry, Plugin};

pub use olive_pass_api::{kinds, ErrorKind, LogLevel, Manifest, Model, PassError};

/// The ABI crate, for plugins that need its types directly.
pub use olive_pass_api as api;

#[doc(hidden)]
pub use abi_stable;

/// A pass: a typed config, a model in, a model out (written into the context's output folder).
pub trait Pass {
    /// The pass name, Olive's pass type name where one exists (e.g. `GptqQuantizer`).
    const NAME: &'static str;
    /// The pass version (semver); bump it when outputs change, it is part of the cache key.
    const VERSION: &'static str;
    /// One line saying what the pass does.
    const DESCRIPTION: &'static str;
    /// The model kinds the pass accepts (see [`kinds`]).
    const ACCEPTS: &'static [&'static str];
    /// The model kinds the pass can produce.
    const PRODUCES: &'static [&'static str];
    /// The devices the pass runs on (`cpu`, `gpu`, `npu`).
    const DEVICES: &'static [&'static str];
    /// The typed config: `#[serde(deny_unknown_fields)]`, each field's doc comment its description.
    type Config: serde::de::DeserializeOwned + schemars::JsonSchema;

    /// Runs the pass on `model`, writing into `ctx.output_dir()`; returns the model written.
    fn run(model: Model, config: Self::Config, ctx: &Context<'_>) -> Result<Model, Error>;
}

/// Exports a plugin's root module and a `pub static OLIVE_PLUGIN: Plugin` for in-process tests.
///
/// `export_plugin! { name: "my-plugin", version: env!("CARGO_PKG_VERSION"), passes: [A, B] }`; an EP plugin adds
/// `execution_providers: f` with `fn f() -> Vec<ExecutionProvider>` (see [`ep`]).
#[macro_export]
macro_rules! export_plugin {
    (name: $name:expr, version: $version:expr, passes: [$($pass:ty),* $(,)?] $(,)?) => {
        $crate::export_plugin! {
            name: $name,
            version: $version,
            passes: [$($pass),*],
            execution_providers: $crate::ep::none,
        }
    };
    (name: $name:expr, version: $version:expr, passes: [$($pass:ty),* $(,)?],
     execution_providers: $eps:expr $(,)?) => {
        /// This plugin's passes and providers, for in-process tests (see `olive_pass_sdk::testing`).
        pub static OLIVE_PLUGIN: $crate::Plugin = $crate::Plugin {
            name: $name,
            version: $version,
            passes: &[$($crate::PassEntry::of::<$pass>()),*],
            execution_providers: $eps,
        };

        // What `abi_stable::export_root_module` expands to, with paths through this crate so a
        // plugin needs no direct `abi_stable` dependency.
        #[doc(hidden)]
        #[export_name = $crate::__root_module_symbol!()]
        pub static __OLIVE_LIB_HEADER: $crate::abi_stable::library::LibHeader = {
            extern "C" fn passes() -> $crate::api::RVec<$crate::api::PassDescriptor> {
                OLIVE_PLUGIN.ffi_descriptors()
            }
            extern "C" fn run_pass(
                pass: $crate::api::RStr<'_>,
                model: $crate::api::ModelRef,
                config_json: $crate::api::RStr<'_>,
                ctx: $crate::api::PassContext<'_>,
            ) -> $crate::api::RResult<$crate::api::ModelRef, $crate::PassError> {
                OLIVE_PLUGIN.ffi_run_pass(pass, model, config_json, ctx)
            }
            fn root_module() -> $crate::api::PluginModRef {
                OLIVE_PLUGIN.root_module(passes, run_pass)
            }
            extern "C" fn erased() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(root_module)
            }
            // SAFETY: `erased` returns the `PluginModRef` that the header is declared for.
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::api::PluginModRef>(
                    erased,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };

        /// The execution providers this plugin serves, as JSON (`olive_pass_api::ep`, api 1.1).
        #[doc(hidden)]
        #[export_name = $crate::__execution_providers_symbol!()]
        pub extern "C" fn __olive_plugin_execution_providers() -> $crate::api::RString {
            OLIVE_PLUGIN.ffi_execution_providers()
        }
    };
}

/// `olive_pass_api::ep::EXECUTION_PROVIDERS_SYMBOL`, spelled out because attributes need a literal (a test keeps
/// the two equal).
#[doc(hidden)]
#[macro_export]
macro_rules! __execution_providers_symbol {
    () => {
        "olive_plugin_execution_providers_v1"
    };
}

/// The symbol `abi_stable` looks up in a library (`abi_stable::library::ROOT_MODULE_LOADER_NAME`,
/// spelled out because attributes need a literal; a test keeps the two equal).
#[doc(hidden)]
#[macro_export]
macro_rules! __root_module_symbol {
    () => {
        "_1as_0lib_1header_0root_bmodule_bloader"
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn execution_providers_symbol_is_the_apis() {
        assert_eq!(
            crate::__execution_providers_symbol!(),
            olive_pass_api::ep::EXECUTION_PROVIDERS_SYMBOL
        );
    }

    #[test]
    fn root_module_symbol_is_abi_stables() {
        assert_eq!(
            __root_module_symbol!(),
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }
}
