//! The stable ABI between `olive-host` and pass plugins, built on `abi_stable`.
//!
//! A plugin is a `cdylib` that exports one root module, [`PluginMod`], plus a static manifest file
//! beside the library ([`Manifest`]) that the host reads without loading the library.
//!
//! # The root module
//! [`PluginMod`] is an `abi_stable` prefix type: its fields are only ever appended, never removed or
//! reordered, so a host and a plugin built against different minor versions of this crate still
//! agree on the common prefix. Fields added after `run_pass` are read through accessors that return
//! `Option` (a plugin built before the field existed returns `None`).
//!
//! The host loads a plugin in three checks, each a clear error naming the library file:
//! 1. the exported `abi_stable` root symbol exists (a library without it is not a plugin);
//! 2. the library's `abi_stable` version strings and the layout of every type reachable from
//!    [`PluginMod`] match this crate's (`abi_stable` walks the type layouts);
//! 3. [`PluginMod::api_version`] has the same major version as [`API_VERSION`].
//!
//! # Calling a pass
//! `run_pass(pass, model, config_json, ctx)`: the model crosses as an on-disk artifact
//! ([`ModelRef`]: kind, path, adapter paths, metadata JSON), the config as JSON text that the plugin
//! parses into its own typed config, and the host lends a [`PassContext`] (output folder, device,
//! log, progress, cancellation) that is valid only for the duration of the call. The pass returns
//! the model it wrote (inside the context's output folder) or a [`PassError`].
//!
//! # Growing the ABI
//! - [`PluginMod`] and [`HostVTable`] grow by appending fields after their last prefix field.
//! - [`ModelRef`], [`PassDescriptor`], [`PassError`] and [`PassContext`] are plain `repr(C)` structs:
//!   changing them changes the layout and is a new major [`API_VERSION`]. Extra model data goes
//!   into [`ModelRef::metadata_json`]; new host services go into [`HostVTable`].
//! - [`ErrorKind`] and model kinds are open sets: unknown values are carried, not rejected.
//!
//! # Execution providers
//! An EP plugin describes the targets it serves ([`ExecutionProvider`]: device, provider, options,
//! ONNX Runtime library, tolerance, `auto-opt` recipes) as JSON through one more exported function,
//! [`ep::EXECUTION_PROVIDERS_SYMBOL`] (api 1.1), and the manifest's `execution_providers` section; see
//! [`ep`]. It is a symbol of its own rather than a field appended to [`PluginMod`]: `abi_stable`'s layout
//! check refuses a library whose prefix type has fewer fields than the host's, so an appended field
//! would stop every plugin built against api 1.0 from loading.
//!
//! # The manifest
//! See [`manifest`] for the file format (`<library>.olive-plugin.json` beside the library).

mod context;
mod descriptor;
pub mod ep;
mod error;
pub mod manifest;
mod model;
mod module;
mod version;

pub use context::{HostCallbacks, HostHandle, HostVTable, HostVTableRef, LogLevel, PassContext};
pub use descriptor::PassDescriptor;
pub use ep::{EpLibrary, ExecutionProvider, Recipe, RecipePass, Runtime, Tolerance};
pub use error::{ErrorKind, PassError};
pub use manifest::{Manifest, ManifestError, PassManifest};
pub use model::{kinds, Model, ModelError, ModelRef};
pub use module::{PluginMod, PluginModRef};
pub use version::{ApiVersion, ApiVersionError, API_VERSION};

/// `abi_stable`'s FFI-safe types used in this ABI, re-exported so plugins need no other import.
pub use abi_stable::std_types::{RResult, RStr, RString, RVec};

/// `abi_stable` itself, for a plugin that exports its root module without `olive-pass-sdk` (see
/// tests/third_party/ep-example).
#[doc(hidden)]
pub use abi_stable;
