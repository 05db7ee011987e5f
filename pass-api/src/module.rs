//! The root module a plugin library exports: who it is, its passes, and how to run one.

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RResult, RStr, RVec};
use abi_stable::StableAbi;

use crate::version::ABI_VERSION_STRING;
use crate::{ApiVersion, ModelRef, PassContext, PassDescriptor, PassError};

/// The root module of a plugin. Fields are only ever appended after `run_pass`; the host reads
/// those through accessors returning `Option`.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
pub struct PluginMod {
    /// The api version the plugin was built against ([`crate::API_VERSION`] of its pass-api).
    pub api_version: ApiVersion,
    /// The plugin name, as in its manifest (e.g. `quant-gptq`).
    pub name: RStr<'static>,
    /// The plugin version (semver).
    pub version: RStr<'static>,
    /// Describes the plugin's passes.
    pub passes: extern "C" fn() -> RVec<PassDescriptor>,
    /// Runs the pass named `pass` on `model` with `config_json` (a JSON object), writing into
    /// the context's output folder; returns the model written. Never unwinds.
    #[sabi(last_prefix_field)]
    pub run_pass: extern "C" fn(
        pass: RStr<'_>,
        model: ModelRef,
        config_json: RStr<'_>,
        ctx: PassContext<'_>,
    ) -> RResult<ModelRef, PassError>,
}

impl RootModule for PluginModRef {
    abi_stable::declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "olive_plugin";
    const NAME: &'static str = "olive plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new(ABI_VERSION_STRING);
}
