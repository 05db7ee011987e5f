//! A third-party EP plugin written against `olive-pass-api` only (no pass-sdk), as a vendor would ship one: it
//! exports the plugin root module by hand (what `abi_stable::export_root_module` expands to) with no passes, and
//! the execution-provider function (`olive_pass_api::ep::EXECUTION_PROVIDERS_SYMBOL`) describing device `example`
//! served by ONNX Runtime's CPUExecutionProvider, whose auto-opt recipe is ModelBuilder at fp32.

use olive_pass_api::abi_stable::library::{LibHeader, RootModuleResult, __call_root_module_loader};
use olive_pass_api::abi_stable::prefix_type::PrefixTypeTrait;
use olive_pass_api::{
    ErrorKind, ModelRef, PassContext, PassDescriptor, PassError, PluginMod, PluginModRef, RResult,
    RStr, RString, RVec, API_VERSION,
};

/// What this plugin serves, in the JSON of `olive_pass_api::ExecutionProvider`.
const EXECUTION_PROVIDERS: &str = r#"[{
    "device": "example",
    "provider": "CPUExecutionProvider",
    "tolerance": {"atol": 0.0, "rtol": 0.0},
    "recipes": [{"precision": "fp32", "passes": [
        {"type": "ModelBuilder", "config": {"precision": "fp32", "execution_provider": "CPUExecutionProvider"}}
    ]}]
}]"#;

extern "C" fn passes() -> RVec<PassDescriptor> {
    RVec::new()
}

extern "C" fn run_pass(
    pass: RStr<'_>,
    _model: ModelRef,
    _config_json: RStr<'_>,
    _ctx: PassContext<'_>,
) -> RResult<ModelRef, PassError> {
    RResult::RErr(PassError::new(
        ErrorKind::UNKNOWN_PASS,
        format!("ep-example has no passes (asked for `{pass}`)"),
    ))
}

/// The execution providers, as olive-host reads them.
#[export_name = "olive_plugin_execution_providers_v1"]
pub extern "C" fn execution_providers() -> RString {
    EXECUTION_PROVIDERS.into()
}

fn root_module() -> PluginModRef {
    PluginMod {
        api_version: API_VERSION,
        name: RStr::from_str("ep-example"),
        version: RStr::from_str(env!("CARGO_PKG_VERSION")),
        passes,
        run_pass,
    }
    .leak_into_prefix()
}

extern "C" fn erased() -> RootModuleResult {
    __call_root_module_loader(root_module)
}

/// The root module header `abi_stable` looks up (`abi_stable::library::ROOT_MODULE_LOADER_NAME`).
#[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
pub static OLIVE_LIB_HEADER: LibHeader = unsafe {
    // SAFETY: `erased` returns the `PluginModRef` the header is declared for.
    LibHeader::from_constructor::<PluginModRef>(
        erased,
        olive_pass_api::abi_stable::library::CheckTypeLayout::Yes,
    )
};
